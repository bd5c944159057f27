//! pidbus as a rival: a private `pidbusd` (release build) on its native
//! socket, driven by the thin D-Bus client of [`crate::dbus`] in its
//! records framing (one D-Bus message per SEQPACKET record, no SASL): the
//! same writer, parser and echo service as on pidbus's D-Bus socket and on
//! the D-Bus brokers, so the numbers compare sockets and brokers, not
//! client code.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::dbus::{self, Connection};
use crate::{Client, Rival, wire};

/// `pidbusd` listening on `socket` (native), configured as every pidbus
/// rival is: quotas stay on (their accounting is measured); only the
/// per-user connection count is raised, as the D-Bus rivals' limits are,
/// for conn_memory's 2 000 connections of one user and match_scale's
/// 10 000 rules.
pub fn pidbusd(
    binary: &Path,
    dir: &Path,
    socket: &Path,
    policy: Option<&Path>,
) -> io::Result<Command> {
    let config = dir.join("pidbusd.toml");
    std::fs::write(
        &config,
        "[limits.uid]\nconnections = 4096\nmatch_rules = 65536\nmatch_rule_bytes = 67108864\n",
    )?;
    let mut command = Command::new(binary);
    command
        .arg("--listen")
        .arg(socket)
        .arg("--config")
        .arg(&config);
    if let Some(policy) = policy {
        command.arg("--policy").arg(policy);
    }
    Ok(command)
}

/// A private `pidbusd` with its echo service, both on the native socket.
pub struct PidbusRival {
    key: &'static str,
    socket: PathBuf,
    child: wire::Server,
}

impl PidbusRival {
    /// Starts `pidbusd` from `binary`; `checked: false` runs it with
    /// `--sender-check off` (the `pidbus_unchecked` rival).
    pub fn start(
        binary: &Path,
        dir: &Path,
        checked: bool,
        policy: Option<&Path>,
    ) -> io::Result<Self> {
        let key = if checked {
            "pidbus"
        } else {
            "pidbus_unchecked"
        };
        let socket = dir.join(format!("{key}.sock"));
        let mut command = pidbusd(binary, dir, &socket, policy)?;
        if !checked {
            command.args(["--sender-check", "off"]);
        }
        let child = wire::Server(
            command
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
        let rival = PidbusRival { key, socket, child };
        let service = wire::retry(|| Connection::connect_native(&rival.socket))?;
        dbus::start_echo(service, Connection::connect_native(&rival.socket)?)?;
        Ok(rival)
    }
}

impl Rival for PidbusRival {
    fn socket_path(&self) -> Option<&Path> {
        Some(&self.socket)
    }

    fn key(&self) -> &'static str {
        self.key
    }

    fn broker_pid(&self) -> u32 {
        self.child.pid()
    }

    fn connect(&self) -> io::Result<Box<dyn Client>> {
        Ok(Box::new(Connection::connect_native(&self.socket)?))
    }
}
