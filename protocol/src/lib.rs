//! # pidbus-protocol
//!
//! The wire protocol of [pidbus](https://example.invalid/pidbus), a Linux
//! message bus whose broker authenticates every peer by its pidfd: message
//! types, the codec, size limits, default addresses, and (feature `os`, on by
//! default) the `SOCK_SEQPACKET` transport and pidfd helpers shared by the
//! broker and the client SDK.
//!
//! Every record on a pidbus socket is one [`Message`], encoded as MessagePack
//! with named fields by [`codec::encode`] and read back by [`codec::decode`].
//!
//! ```
//! use pidbus_protocol::{Hello, Message, PROTOCOL_VERSION, codec, limits};
//!
//! let hello = Message::Hello(Hello { version: PROTOCOL_VERSION });
//! let bytes = codec::encode(&hello, limits::DEFAULT_MAX_RECORD_SIZE)?;
//! let back = codec::decode(&bytes, limits::DEFAULT_MAX_RECORD_SIZE)?;
//! assert_eq!(back, hello);
//!
//! // Bad input is an error, never a panic.
//! assert!(codec::decode(&bytes[..bytes.len() - 1], 1024).is_err());
//! # Ok::<(), pidbus_protocol::codec::CodecError>(())
//! ```

pub mod codec;
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
