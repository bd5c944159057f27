//! The D-Bus wire format, as the bus needs it: signatures, bodies checked
//! against them, dynamic values, and message headers.
//!
//! Both faces of pidbus carry bodies in this format (little-endian), with
//! their signature beside them, so a body crosses between a native peer and
//! a D-Bus peer unchanged. The broker checks every body once, where it
//! enters the bus ([`body::check`]), and reads only what routing needs (the
//! string arguments match rules name, [`body::string_args`]).
//!
//! ```
//! use pidbus_protocol::dbus::{body, value::{Value, marshal, unmarshal}};
//!
//! let (signature, bytes) = marshal(&[Value::string("org.example.Music"), Value::UInt32(3)])?;
//! assert_eq!(signature, "su");
//! body::check(&signature, &bytes, body::Endian::Little, 0)?;
//! assert_eq!(unmarshal(&signature, &bytes)?[1], Value::UInt32(3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod body;
pub mod caller;
pub mod errors;
pub mod header;
pub mod record;
pub mod signature;
pub mod value;

/// The bus's own name: the destination of calls to the bus, the sender of
/// what the bus itself sends.
pub const BUS_NAME: &str = "org.freedesktop.DBus";
