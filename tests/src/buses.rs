//! The reference buses, started for one test: dbus-daemon and dbus-broker
//! (Debian's), as session buses on a socket of their own, so that the SDK
//! and pidbusctl can be run against another bus than pidbus.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{PATIENCE, PublicDir};

/// A reference bus run for one test, killed (its whole process group)
/// when dropped.
#[derive(Debug)]
pub struct ReferenceBus {
    child: Child,
    socket: PathBuf,
    // Removed on drop, after the bus is stopped.
    _dir: PublicDir,
}

impl ReferenceBus {
    /// dbus-daemon (Debian package `dbus-daemon`) as a session bus.
    pub fn dbus_daemon() -> Self {
        let dir = PublicDir::new("dbus-daemon");
        let socket = dir.path().join("bus");
        let child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address=unix:path={}", socket.display()))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("dbus-daemon (Debian package dbus-daemon) runs");
        Self::up(child, dir, socket)
    }

    /// dbus-broker (Debian package `dbus-broker`) as a session bus, through
    /// `tests/scripts/run-dbus-broker`. Needs root (a private mount
    /// namespace for its journal socket).
    pub fn dbus_broker() -> Self {
        let dir = PublicDir::new("dbus-broker");
        let socket = dir.path().join("bus");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/run-dbus-broker");
        let child = Command::new(script)
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("run dbus-broker");
        Self::up(child, dir, socket)
    }

    /// Waits until the bus's socket exists (both create it before they
    /// serve, so a connection then succeeds or waits in the backlog).
    fn up(mut child: Child, dir: PublicDir, socket: PathBuf) -> Self {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the bus for {} exited: {status}", socket.display());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never listened",
                socket.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        ReferenceBus {
            child,
            socket,
            _dir: dir,
        }
    }

    /// The bus's D-Bus address, `unix:path=…`.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// The bus's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for ReferenceBus {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
    }
}
