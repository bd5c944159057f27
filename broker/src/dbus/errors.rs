//! D-Bus error names and the bus's error codes, both ways: the protocol
//! crate's, shared with the SDK.

pub use pidbus_protocol::dbus::errors::*;
