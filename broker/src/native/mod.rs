//! The native face: pidbus's own protocol on `SOCK_SEQPACKET`, one
//! MessagePack record per message. [`listener`] binds and accepts, [`peer`]
//! serves one connection (handshake, per-record sender check, requests,
//! calls and signals handed to the [core](crate::bus)).

pub mod listener;
pub mod peer;
pub mod records;
pub mod wire;
