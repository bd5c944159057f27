//! Errors of the client SDK.

use std::path::PathBuf;

use pidbus_protocol::{ErrorCode, ErrorReply, PeerId};

/// Everything that can go wrong talking to the bus.
///
/// Errors a call can end with have their own variants, so callers can
/// match on them: [`NoSuchName`](Error::NoSuchName),
/// [`AccessDenied`](Error::AccessDenied), [`Timeout`](Error::Timeout),
/// [`PeerGone`](Error::PeerGone), [`InvalidArgs`](Error::InvalidArgs),
/// [`UnknownMethod`](Error::UnknownMethod), [`Failed`](Error::Failed), …
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No broker could be reached at the address.
    #[error(
        "cannot connect to the bus at {address}: {source}{}",
        connect_hint(address, source)
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
    /// The destination does not exist: no connection has that unique id,
    /// or nobody owns that name.
    #[error("no such name: {message}")]
    NoSuchName {
        /// The broker's explanation.
        message: String,
    },
    /// The broker's policy, or the service, refused the caller.
    #[error("access denied: {message}")]
    AccessDenied {
        /// The explanation.
        message: String,
    },
    /// No answer arrived within the call's timeout.
    #[error("timed out: {message}")]
    Timeout {
        /// The broker's explanation.
        message: String,
    },
    /// The callee disconnected or its process exited before answering.
    #[error("the peer is gone: {message}")]
    PeerGone {
        /// The broker's explanation.
        message: String,
    },
    /// The service could not use the arguments (wrong type or shape).
    #[error("invalid arguments: {message}")]
    InvalidArgs {
        /// The service's explanation.
        message: String,
    },
    /// The service has no such object, interface or method.
    #[error("{code}: {message}")]
    UnknownMethod {
        /// [`ErrorCode::UnknownObject`], [`ErrorCode::UnknownInterface`] or
        /// [`ErrorCode::UnknownMethod`].
        code: ErrorCode,
        /// The service's explanation.
        message: String,
    },
    /// A name, path, interface, member or match rule breaks the naming
    /// rules.
    #[error("{message}")]
    InvalidName {
        /// What is wrong with it.
        message: String,
    },
    /// This connection already serves `interface` at `path`; serve it once
    /// (or `unserve` it first).
    #[error("{interface} at {path} is already served on this connection; unserve it first")]
    AlreadyServed {
        /// The object path.
        path: String,
        /// The interface.
        interface: String,
    },
    /// A limit of the broker was hit (queue of a slow peer, calls in
    /// flight, names, match rules); retry later.
    #[error("limits exceeded: {message}")]
    LimitsExceeded {
        /// The broker's explanation.
        message: String,
    },
    /// The service answered the call with an error of its own.
    #[error("the service failed the call{}: {message}", name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default())]
    Failed {
        /// The service's error name, e.g. `org.example.Error.NotFound`.
        name: Option<String>,
        /// The service's explanation.
        message: String,
        /// The service that answered.
        sender: Option<PeerId>,
    },
    /// The broker answered with another error.
    #[error("the broker answered ({code}): {message}")]
    Broker {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// A reply or signal body does not decode as the requested type.
    #[error("cannot decode the {what} as the expected type: {reason}")]
    Decode {
        /// What was decoded ("reply", "signal arguments").
        what: &'static str,
        /// The decoder's explanation.
        reason: String,
    },
    /// The connection to the broker is gone.
    #[error("the connection to the bus was closed{}", match .reason { Some(r) => format!(": {r}"), None => String::new() })]
    Disconnected {
        /// What the broker said before closing, if anything.
        reason: Option<String>,
    },
    /// The bus cannot do this: a feature of pidbus asked of another bus
    /// (dbus-broker, dbus-daemon), or something the connection did not
    /// set up (descriptor passing).
    #[error("{feature} is not supported here: {reason}")]
    NotSupported {
        /// What was asked for.
        feature: &'static str,
        /// Why it cannot be had.
        reason: String,
    },
    /// The broker sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A value could not be marshalled as a D-Bus body.
    #[error("cannot marshal the arguments: {0}")]
    Body(#[from] crate::body::BodyError),
    /// The socket failed.
    #[error("bus socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The protocol error code behind this error, if it came from the bus.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::Refused { code, .. }
            | Error::UnknownMethod { code, .. }
            | Error::Broker { code, .. } => *code,
            Error::NoSuchName { .. } => ErrorCode::NoSuchName,
            Error::AccessDenied { .. } => ErrorCode::AccessDenied,
            Error::Timeout { .. } => ErrorCode::Timeout,
            Error::PeerGone { .. } => ErrorCode::PeerGone,
            Error::InvalidArgs { .. } => ErrorCode::InvalidArgs,
            Error::InvalidName { .. } => ErrorCode::InvalidName,
            Error::AlreadyServed { .. } => ErrorCode::InvalidName,
            Error::LimitsExceeded { .. } => ErrorCode::LimitsExceeded,
            Error::Failed { .. } => ErrorCode::Failed,
            _ => return None,
        })
    }
}

impl From<ErrorReply> for Error {
    fn from(e: ErrorReply) -> Self {
        let message = e.message;
        match e.code {
            ErrorCode::NoSuchName => Error::NoSuchName { message },
            ErrorCode::AccessDenied => Error::AccessDenied { message },
            ErrorCode::Timeout => Error::Timeout { message },
            ErrorCode::PeerGone => Error::PeerGone { message },
            ErrorCode::InvalidArgs => Error::InvalidArgs { message },
            ErrorCode::InvalidName => Error::InvalidName { message },
            ErrorCode::LimitsExceeded => Error::LimitsExceeded { message },
            code @ (ErrorCode::UnknownObject
            | ErrorCode::UnknownInterface
            | ErrorCode::UnknownMethod) => Error::UnknownMethod { code, message },
            ErrorCode::Failed => Error::Failed {
                name: e.name,
                message,
                sender: e.sender,
            },
            code if e.sender.is_some() => Error::Failed {
                name: e.name.or_else(|| Some(code.to_string())),
                message,
                sender: e.sender,
            },
            code => Error::Broker { code, message },
        }
    }
}

impl From<pidbus_protocol::names::NameError> for Error {
    fn from(e: pidbus_protocol::names::NameError) -> Self {
        Error::InvalidName {
            message: e.to_string(),
        }
    }
}

/// Decodes a body of `signature` received from the bus as `T`; `what`
/// names it in the error ("reply", "signal arguments").
pub(crate) fn decode_body<T: serde::de::DeserializeOwned + zvariant::Type>(
    what: &'static str,
    signature: &str,
    body: &[u8],
    fds: &[std::os::fd::OwnedFd],
) -> Result<T> {
    crate::body::decode(signature, body, fds).map_err(|e| Error::Decode {
        what,
        reason: e.to_string(),
    })
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to start the broker that should be listening at `address`.
/// What to do about a failed connect, by why it failed: a bus that is not
/// there is started; a socket this user may not open is not a bus that
/// is down.
fn connect_hint(address: &std::path::Path, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            format!(" (is pidbusd running? {})", start_hint(address))
        }
        ErrorKind::PermissionDenied => " (this user may not open that socket: its \
             permissions, or its directory's, keep it out; use a bus this user may \
             reach, or ask its administrator)"
            .to_owned(),
        _ => String::new(),
    }
}

fn start_hint(address: &std::path::Path) -> &'static str {
    if address == std::path::Path::new(pidbus_protocol::address::SYSTEM_BUS_PATH) {
        "start the system bus with `systemctl start pidbus.socket` (or `pidbusd --system`), \
         or set PIDBUS_ADDRESS to another bus's socket"
    } else {
        "start the session bus with `systemctl --user start pidbus.socket` (or \
         `pidbusd --session`), or set PIDBUS_ADDRESS to its socket"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_error(kind: std::io::ErrorKind) -> String {
        Error::Connect {
            address: PathBuf::from("/run/pidbus/system.sock"),
            source: kind.into(),
        }
        .to_string()
    }

    #[test]
    fn a_failed_connect_hints_by_why_it_failed() {
        let missing = connect_error(std::io::ErrorKind::NotFound);
        assert!(missing.contains("is pidbusd running?"), "{missing}");
        assert!(
            missing.contains("systemctl start pidbus.socket"),
            "{missing}"
        );
        let denied = connect_error(std::io::ErrorKind::PermissionDenied);
        assert!(!denied.contains("is pidbusd running"), "{denied}");
        assert!(
            denied.contains("this user may not open that socket"),
            "{denied}"
        );
        let other = connect_error(std::io::ErrorKind::Other);
        assert!(!other.contains('('), "{other}");
    }
}
