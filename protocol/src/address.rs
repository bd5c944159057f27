//! Where the broker listens by default, and how clients find it.
//!
//! Resolution order for clients: an explicit address, then the
//! [`ADDRESS_ENV`] environment variable, then the session bus default.

use std::path::PathBuf;

/// Environment variable naming the bus socket a client connects to.
pub const ADDRESS_ENV: &str = "PIDBUS_ADDRESS";

/// Socket path of the system bus.
pub const SYSTEM_BUS_PATH: &str = "/run/pidbus/system.sock";

/// File name of the session bus socket inside the session's runtime directory.
pub const SESSION_BUS_FILE: &str = "pidbus.sock";

/// Socket path of the system bus's D-Bus face. Not dbus-daemon's
/// `/run/dbus/system_bus_socket`, so that pidbus runs beside a system bus
/// unless told to take its place.
pub const SYSTEM_DBUS_PATH: &str = "/run/pidbus/dbus-system.sock";

/// File name of the session bus's D-Bus socket, next to [`SESSION_BUS_FILE`]
/// (not dbus-daemon's `bus`, for the same reason).
pub const SESSION_DBUS_FILE: &str = "pidbus-dbus.sock";

/// Where dbus-daemon and dbus-broker put the system bus: where pidbus
/// listens when it replaces them.
pub const DBUS_SYSTEM_BUS_PATH: &str = "/run/dbus/system_bus_socket";

/// Where the session bus of the current user lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBus {
    /// The socket path.
    pub path: PathBuf,
    /// The path is the `/tmp/pidbus-<uid>` fallback: its directory must be
    /// created private (0700) and must belong to this user, since anyone can
    /// create directories in `/tmp`.
    pub private_dir: bool,
}

/// Locates the session bus of the current user.
///
/// `$XDG_RUNTIME_DIR/pidbus.sock` when `XDG_RUNTIME_DIR` is set (the normal case
/// under a login session). Otherwise `/run/user/<uid>/pidbus.sock` if that
/// directory exists, and finally `/tmp/pidbus-<uid>/pidbus.sock` (bare
/// machines and containers without a login session).
pub fn session_bus() -> SessionBus {
    let shared = |path: PathBuf| SessionBus {
        path,
        private_dir: false,
    };
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return shared(PathBuf::from(dir).join(SESSION_BUS_FILE));
    }
    let uid = rustix::process::getuid().as_raw();
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return shared(run_user.join(SESSION_BUS_FILE));
    }
    SessionBus {
        path: PathBuf::from(format!("/tmp/pidbus-{uid}")).join(SESSION_BUS_FILE),
        private_dir: true,
    }
}

/// The session bus's D-Bus socket: [`SESSION_DBUS_FILE`] in the
/// directory of [`session_bus`]'s socket.
pub fn session_dbus() -> SessionBus {
    let native = session_bus();
    SessionBus {
        path: native.path.with_file_name(SESSION_DBUS_FILE),
        private_dir: native.private_dir,
    }
}

/// Socket path of the session bus for the current user (see [`session_bus`]).
pub fn session_bus_path() -> PathBuf {
    session_bus().path
}

/// The address a client uses when it was given none: [`ADDRESS_ENV`] if set
/// and non-empty, else [`session_bus_path`].
pub fn default_client_address() -> PathBuf {
    match std::env::var_os(ADDRESS_ENV).filter(|a| !a.is_empty()) {
        Some(addr) => PathBuf::from(addr),
        None => session_bus_path(),
    }
}

/// One socket a client may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A socket file: pidbus's native socket (`SOCK_SEQPACKET`) or a D-Bus
    /// stream socket, told apart when connecting.
    Path(PathBuf),
    /// A socket in the abstract namespace (`unix:abstract=`), bytes after
    /// the leading NUL.
    Abstract(Vec<u8>),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Path(path) => write!(f, "{}", path.display()),
            Endpoint::Abstract(name) => {
                write!(f, "unix:abstract={}", String::from_utf8_lossy(name))
            }
        }
    }
}

/// Why a D-Bus address cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unusable bus address {address:?}: {reason}")]
pub struct AddressError {
    /// The address as given.
    pub address: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Whether `text` is a D-Bus address (`unix:path=…`, `tcp:host=…;…`)
/// rather than a socket path.
pub fn is_dbus_address(text: &str) -> bool {
    text.split_once(':').is_some_and(|(transport, rest)| {
        !transport.is_empty()
            && transport
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-')
            && (rest.is_empty() || rest.contains('='))
    })
}

/// The unix sockets a D-Bus address names, in its order, as D-Bus
/// libraries read it: entries separated by `;`, each `transport:key=value,…`
/// with `%XX` escapes. `unix:path=` and `unix:abstract=` are used; other
/// transports (`tcp:`, `unixexec:`, …) are skipped, and an address with
/// none usable is an error that says so.
pub fn parse_dbus_address(address: &str) -> Result<Vec<Endpoint>, AddressError> {
    let error = |reason: String| AddressError {
        address: address.to_owned(),
        reason,
    };
    let mut endpoints = Vec::new();
    let mut skipped = Vec::new();
    for entry in address.split(';').filter(|e| !e.is_empty()) {
        let (transport, keys) = entry
            .split_once(':')
            .ok_or_else(|| error(format!("{entry:?} has no transport (as in unix:path=…)")))?;
        if transport != "unix" {
            skipped.push(transport.to_owned());
            continue;
        }
        let mut endpoint = None;
        for pair in keys.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| error(format!("{pair:?} is not key=value")))?;
            let value = unescape(value).map_err(error)?;
            match key {
                "path" => endpoint = Some(Endpoint::Path(PathBuf::from(bytes_to_os(value)))),
                "abstract" => endpoint = Some(Endpoint::Abstract(value)),
                // A server's guid, and keys for listening only.
                _ => {}
            }
        }
        match endpoint {
            Some(endpoint) => endpoints.push(endpoint),
            None => skipped.push("unix without path or abstract".to_owned()),
        }
    }
    if endpoints.is_empty() {
        let reason = if skipped.is_empty() {
            "it names no socket".to_owned()
        } else {
            format!(
                "no unix:path= or unix:abstract= entry (only {})",
                skipped.join(", ")
            )
        };
        return Err(error(reason));
    }
    Ok(endpoints)
}

fn unescape(value: &str) -> Result<Vec<u8>, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = value
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {value:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn bytes_to_os(bytes: Vec<u8>) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(bytes)
}

/// Environment variable D-Bus libraries read the session bus from.
pub const DBUS_SESSION_ENV: &str = "DBUS_SESSION_BUS_ADDRESS";

/// Environment variable D-Bus libraries read the system bus from.
pub const DBUS_SYSTEM_ENV: &str = "DBUS_SYSTEM_BUS_ADDRESS";

/// Where a client looks for the session bus, in order: [`ADDRESS_ENV`];
/// pidbus's native session socket if it exists; `$DBUS_SESSION_BUS_ADDRESS`;
/// `$XDG_RUNTIME_DIR/bus` (where dbus-daemon and dbus-broker put it).
pub fn session_candidates() -> Vec<String> {
    let mut candidates: Vec<String> = env_address(ADDRESS_ENV).into_iter().collect();
    let native = session_bus_path();
    if native.exists() {
        candidates.push(native.display().to_string());
    }
    candidates.extend(env_address(DBUS_SESSION_ENV));
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(dir).join("bus").display().to_string());
    }
    candidates
}

/// Where a client looks for the system bus, in order: pidbus's native
/// system socket if it exists; `$DBUS_SYSTEM_BUS_ADDRESS`; the standard
/// system bus socket [`DBUS_SYSTEM_BUS_PATH`].
pub fn system_candidates() -> Vec<String> {
    let mut candidates = Vec::new();
    if std::path::Path::new(SYSTEM_BUS_PATH).exists() {
        candidates.push(SYSTEM_BUS_PATH.to_owned());
    }
    candidates.extend(env_address(DBUS_SYSTEM_ENV));
    candidates.push(DBUS_SYSTEM_BUS_PATH.to_owned());
    candidates
}

fn env_address(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|a| !a.is_empty())
}

#[cfg(test)]
mod dbus_address_tests {
    use super::*;

    #[test]
    fn dbus_addresses_are_read_as_d_bus_libraries_read_them() {
        assert_eq!(
            parse_dbus_address("unix:path=/run/user/1000/bus").unwrap(),
            vec![Endpoint::Path("/run/user/1000/bus".into())]
        );
        assert_eq!(
            parse_dbus_address("tcp:host=x,port=1;unix:abstract=/tmp/dbus-X%2cY,guid=ab").unwrap(),
            vec![Endpoint::Abstract(b"/tmp/dbus-X,Y".to_vec())]
        );
        assert_eq!(
            parse_dbus_address("unix:path=/a%20b;unix:path=/c").unwrap(),
            vec![Endpoint::Path("/a b".into()), Endpoint::Path("/c".into())]
        );
        for bad in [
            "",
            "tcp:host=x,port=1",
            "unix:path",
            "nothing",
            "unix:path=%zz",
        ] {
            assert!(parse_dbus_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_and_addresses_are_told_apart() {
        assert!(is_dbus_address("unix:path=/run/dbus/system_bus_socket"));
        assert!(is_dbus_address("unix-exec:path=x"));
        assert!(!is_dbus_address("/run/pidbus/system.sock"));
        assert!(!is_dbus_address("relative/dir:with=colon"));
    }
}
