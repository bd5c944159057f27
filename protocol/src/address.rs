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
