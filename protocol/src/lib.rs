//! # pidbus-protocol
//!
//! The protocol of [pidbus](https://example.invalid/pidbus), a Linux
//! message bus whose broker authenticates every peer by its pidfd. Every
//! message on pidbus is a D-Bus message, on both of its sockets: this
//! crate holds the D-Bus wire format ([`dbus`]: signatures, bodies,
//! headers, values, error names, pidbus's caller header field), the bus
//! core's message types ([`message`]), match rules, names, size limits,
//! bus addresses, and (feature `os`, on by default) the `SOCK_SEQPACKET`
//! and stream transports and the pidfd helpers shared by the broker and
//! the client SDK.
//!
//! On the native socket a message is one record, written as D-Bus
//! specifies it:
//!
//! ```
//! use pidbus_protocol::dbus::header::{self, Header, MessageType};
//! use pidbus_protocol::dbus::value::{Value, marshal};
//!
//! let (signature, body) = marshal(&[Value::string("org.example.Music"), Value::UInt32(0)])?;
//! let request = Header {
//!     destination: Some("org.freedesktop.DBus".into()),
//!     path: Some("/org/freedesktop/DBus".into()),
//!     interface: Some("org.freedesktop.DBus".into()),
//!     member: Some("RequestName".into()),
//!     signature,
//!     ..Header::new(MessageType::MethodCall, 2)
//! };
//! let record = header::encode(&request, &body);
//! let (back, _, body_at) = header::parse(&record)?;
//! assert_eq!(back.member.as_deref(), Some("RequestName"));
//! assert_eq!(body_at + body.len(), record.len());
//!
//! // Bad input is an error, never a panic.
//! assert!(header::parse(&record[..record.len() - 1]).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod dbus;
pub mod identity;
pub mod limits;
pub mod match_rule;
pub mod message;
pub mod names;
pub mod process;

#[cfg(feature = "os")]
pub mod address;
#[cfg(feature = "os")]
pub mod pidfd;
#[cfg(feature = "os")]
mod sys;
#[cfg(feature = "os")]
pub mod transport;

#[cfg(feature = "os")]
pub use sys::{
    adopt_activation_fds, exec_as_user, exec_without_stray_fds, peer_credentials, peer_groups,
    peer_pidfd, peer_security_label, pidfd_real_ids, register_async,
};

pub use identity::ProcessIdentity;
pub use match_rule::MatchRule;
pub use message::*;
pub use names::Destination;
pub use process::{ExitStatus, ProcessEvent, ProcessHandle};
