//! Errors of the client SDK.

use std::path::PathBuf;

use pidbus_protocol::ErrorCode;

/// Everything that can go wrong talking to the bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No broker could be reached at the address.
    #[error(
        "cannot connect to the bus at {address}: {source} (is pidbusd running? \
         start it with `pidbusd --session`, or set PIDBUS_ADDRESS to its socket)"
    )]
    Connect {
        /// The address tried.
        address: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The broker refused the connection during the handshake.
    #[error("the broker at {address} refused the connection ({code}): {message}")]
    Refused {
        /// The address connected to.
        address: PathBuf,
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The broker answered a request with an error.
    #[error("the broker answered ({code}): {message}")]
    Broker {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The connection to the broker is gone.
    #[error("the connection to the bus was closed{}", match .reason { Some(r) => format!(": {r}"), None => String::new() })]
    Disconnected {
        /// What the broker said before closing, if anything.
        reason: Option<String>,
    },
    /// The broker sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A message could not be encoded (e.g. larger than the broker's limit).
    #[error(transparent)]
    Codec(#[from] pidbus_protocol::codec::CodecError),
    /// The socket failed.
    #[error("bus socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
