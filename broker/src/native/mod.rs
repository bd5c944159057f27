//! The native socket: `SOCK_SEQPACKET`, one D-Bus message per record from
//! a peer (the broker packs several into the records it sends, see
//! [`crate::dbus::wire`]), descriptors in the record of their message, no
//! SASL (the kernel said who connected).
//! [`listener`] binds and accepts, [`peer`] admits a connection (or tells
//! it why not) and hands it to the connection loop both sockets share,
//! [`records`] reads and proves its records.

pub mod listener;
pub mod peer;
pub mod records;
