//! # pidbus
//!
//! The client SDK of pidbus, a Linux message bus whose broker knows which
//! *process* is on the other end of every connection: it identifies each peer
//! by its pidfd (`SO_PEERPIDFD`) — uid, groups, executable, systemd unit and a
//! pidfs id that, unlike a PID, is never reused.
//!
//! [`Connection`] is async (tokio); [`blocking::Connection`] is the same API
//! for programs without async. Both connect to an explicit socket path, to
//! `$PIDBUS_ADDRESS`, or to the session bus by default.
//!
//! ```no_run
//! // Needs a running broker: `pidbusd --session`.
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), pidbus::Error> {
//!     let bus = pidbus::Connection::connect_default().await?;
//!     let me = bus.identity();
//!     println!("I am {} (pid {}, uid {}, pidfs id {:?})",
//!              bus.unique_id(), me.pid, me.uid, me.pidfs_id);
//!     for peer in bus.peers().await? {
//!         println!("{} runs {}", peer.id, peer.identity.exe.as_deref().unwrap_or("?"));
//!     }
//!     Ok(())
//! }
//! ```

pub mod blocking;
mod connection;
mod error;

pub use connection::Connection;
pub use error::{Error, Result};
pub use pidbus_protocol::{ErrorCode, PeerId, PeerInfo, ProcessIdentity};
