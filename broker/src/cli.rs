//! The command line of `pidbusd`, here rather than in the binary so that
//! `pidbusctl man` can write its man page from the same definitions.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::TypedValueParser;
use pidbus_protocol::address;

use crate::Config;
use crate::bus::BusKind;
use crate::config::{ConfigFile, LogFormat};
use crate::os::sender::SenderCheckMode;
use crate::os::socket_file::Parent;
use crate::policy::PolicySource;

/// The pidbus broker: a message bus that authenticates every peer by its pidfd.
///
/// Signals: SIGHUP re-reads the policy (an invalid one is refused and the
/// old one stays); SIGTERM and SIGINT stop the broker. Under systemd it
/// takes its listening sockets from the socket unit (LISTEN_FDS) and
/// reports READY, RELOADING, STOPPING and a STATUS line (Type=notify).
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the
/// level. Exit status: 0 after a clean stop or a valid --check-config; 1
/// when the config, the policy or the socket is unusable; 2 on a usage
/// error.
#[derive(Debug, Parser)]
#[command(name = "pidbusd", version)]
pub struct DaemonArgs {
    /// Broker config file (TOML): bus, listen, policy, limits, sender_check,
    /// hello_timeout_secs, default_call_timeout_secs, max_record_size,
    /// max_message_size,
    /// log_format. Flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the config file and the policy it selects, print what is wrong
    /// (file:line:column), and exit: 0 if both are valid, 1 if not.
    #[arg(long)]
    pub check_config: bool,
    /// Log format: `auto` (journald priority prefixes under systemd, else
    /// human), `human`, or `journald`. Default: the config file's, else auto.
    #[arg(long, value_name = "FORMAT",
          value_parser = clap::builder::PossibleValuesParser::new(["auto", "human", "journald"])
              .try_map(|format| format.parse::<LogFormat>()))]
    pub log_format: Option<LogFormat>,
    /// Listen on this socket path instead of the bus's default one; repeat
    /// to listen on several. Ignored when systemd passes the listening
    /// sockets (socket activation: LISTEN_FDS).
    #[arg(long, value_name = "PATH")]
    pub listen: Vec<PathBuf>,
    /// Serve the D-Bus protocol on this socket path (busctl, gdbus,
    /// dbus-send, sd-bus, GLib and zbus programs connect here, as
    /// `unix:path=PATH`); repeat for several. Default: the bus's own D-Bus
    /// socket ($XDG_RUNTIME_DIR/pidbus-dbus.sock, or
    /// /run/pidbus/dbus-system.sock with --system) unless --listen is given.
    /// Pass /run/dbus/system_bus_socket to take the system bus's place.
    #[arg(long, value_name = "PATH")]
    pub dbus_listen: Vec<PathBuf>,
    /// Print the D-Bus address (`unix:path=…`) on stdout once listening,
    /// as `dbus-daemon --print-address` does.
    #[arg(long)]
    pub print_address: bool,
    /// Run the session bus of the current user ($XDG_RUNTIME_DIR/pidbus.sock,
    /// else /run/user/UID/pidbus.sock, else /tmp/pidbus-UID/pidbus.sock). The default.
    #[arg(long, conflicts_with = "system")]
    pub session: bool,
    /// Run the system bus (/run/pidbus/system.sock), with the shipped
    /// system policy unless --policy is given.
    #[arg(long)]
    pub system: bool,
    /// Policy file (TOML), replacing the built-in policy; drop-ins in
    /// FILE.d/*.toml are read after it, in name order. Default: the shipped
    /// system policy with --system, the session policy for the session bus
    /// (each followed by the drop-ins of /usr/share/pidbus/{system,session}.d
    /// and /etc/pidbus/{system,session}.d, and for the session bus
    /// $XDG_CONFIG_HOME/pidbus/session.d), and with only --listen an open
    /// policy for development (anyone may connect, own, call and receive).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// A directory of policy drop-ins (*.toml), read after the others, in
    /// file-name order; repeat for several. The normal way to add to the
    /// built-in policy (an action, a rule) without replacing it.
    #[arg(long = "policy-dir", value_name = "DIR")]
    pub policy_dirs: Vec<PathBuf>,
    /// The D-Bus bus configuration (dbus-daemon's XML) whose policy
    /// elements — and those of the files it includes, such as the
    /// system.d files packages ship — are read after the base policy and
    /// before the drop-ins; `none` reads none. Default: with the built-in
    /// policy, /usr/share/dbus-1/system.conf (or session.conf) if it exists.
    #[arg(long, value_name = "FILE")]
    pub dbus_config: Option<PathBuf>,
    /// Largest message accepted from a peer, in bytes [default: 65536].
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(512..=pidbus_protocol::limits::MAX_CONFIGURABLE_RECORD_SIZE as u64))]
    pub max_record_size: Option<u64>,
    /// Largest message on the D-Bus socket, in bytes [default: 33554432
    /// (32 MiB) on the system bus, 134217728 (128 MiB, the D-Bus maximum)
    /// on a session bus, as dbus-daemon's; at most the per-user
    /// queued_bytes quota].
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(512..=pidbus_protocol::dbus::header::MAX_MESSAGE_LEN as u64))]
    pub max_message_size: Option<u64>,
    /// Seconds a new connection has to send its Hello before it is closed
    /// [default: 10].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hello_timeout: Option<u64>,
    /// What to do with a message sent on a connection by a process other than
    /// the one that opened it (socket passed on or inherited): `reject` answers
    /// it with a SenderMismatch error and logs it; `strict` also disconnects;
    /// `off` checks nothing (only to measure what the check costs: a socket
    /// passed on then speaks with its opener's identity) [default: reject].
    #[arg(long, value_name = "MODE",
          value_parser = clap::builder::PossibleValuesParser::new(["reject", "strict", "off"])
              .try_map(|mode| mode.parse::<SenderCheckMode>()))]
    pub sender_check: Option<SenderCheckMode>,
    /// A directory of D-Bus `.service` files for bus activation; repeat
    /// for several, earlier ones first. Default: the standard directories
    /// of the system or session bus (with only --listen: none).
    #[arg(long = "service-dir", value_name = "DIR")]
    pub service_dirs: Vec<PathBuf>,
    /// Seconds an activated service has to take its name before the calls
    /// waiting for it fail [default: 25].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub activation_timeout: Option<u64>,
    /// Do not serve the polkit authority (`org.freedesktop.PolicyKit1`):
    /// leave the name to polkitd.
    #[arg(long)]
    pub no_polkit_authority: bool,
}

impl DaemonArgs {
    /// The config: defaults, then the file, then the flags.
    pub fn config(&self, file: &ConfigFile) -> Config {
        let system = match (self.system, self.session, file.bus) {
            (true, _, _) => true,
            (_, true, _) => false,
            (_, _, kind) => kind == Some(BusKind::System),
        };
        let listen = match (&self.listen[..], &file.listen) {
            ([], Some(paths)) => Some(paths.clone().into_vec()),
            ([], None) => None,
            (paths, _) => Some(paths.to_vec()),
        };
        // Only the default paths' directories are made: an explicit path
        // with a typo must not create directories.
        let default_parent = |private: bool| match private {
            true => Parent::CreatePrivate,
            false => Parent::Create,
        };
        let (paths, listen_parent) = match (&listen, system) {
            (Some(paths), _) => (paths.clone(), Parent::Existing),
            (None, true) => (
                vec![PathBuf::from(address::SYSTEM_BUS_PATH)],
                Parent::Create,
            ),
            (None, false) => {
                let session = address::session_bus();
                (vec![session.path], default_parent(session.private_dir))
            }
        };
        let (dbus_listen, dbus_parent) = match (&self.dbus_listen[..], &file.dbus_listen) {
            ([], Some(paths)) => (paths.clone().into_vec(), Parent::Existing),
            ([], None) if listen.is_some() => (Vec::new(), Parent::Existing),
            ([], None) if system => (
                vec![PathBuf::from(address::SYSTEM_DBUS_PATH)],
                Parent::Create,
            ),
            ([], None) => {
                let session = address::session_dbus();
                (vec![session.path], default_parent(session.private_dir))
            }
            (paths, _) => (paths.to_vec(), Parent::Existing),
        };
        let mut config = Config::new(PathBuf::new());
        config.listen = paths;
        config.dbus_listen = dbus_listen;
        config.print_address = self.print_address;
        if system {
            config.kind = BusKind::System;
        }
        config.listen_parent = listen_parent;
        config.dbus_parent = dbus_parent;
        file.apply(&mut config);
        if let Some(size) = self.max_record_size {
            config.max_record_size = size as usize;
        }
        if let Some(size) = self.max_message_size {
            config.max_message_size = Some(size as usize);
        }
        if let Some(secs) = self.hello_timeout {
            config.hello_timeout = std::time::Duration::from_secs(secs);
        }
        if let Some(mode) = self.sender_check {
            config.sender_check = mode;
        }
        if self.no_polkit_authority {
            config.polkit_authority = false;
        }
        if let Some(secs) = self.activation_timeout {
            config.activation_timeout = std::time::Duration::from_secs(secs);
        }
        let policy = self.policy.clone().or_else(|| file.policy.clone());
        let session = self.session || (!system && listen.is_none());
        if !self.service_dirs.is_empty() {
            config.service_dirs = Some(self.service_dirs.clone());
        } else if config.service_dirs.is_none() && !system && !session && file.bus.is_none() {
            // A development broker (only --listen) starts nothing it was
            // not told about, as its open policy admits everyone.
            config.service_dirs = Some(Vec::new());
        }
        let base = match (policy, system, session) {
            (Some(path), _, _) => PolicySource::file(path),
            (None, true, _) => PolicySource::system(),
            (None, false, true) => PolicySource::session(),
            (None, false, false) => PolicySource::open(),
        };
        let extra_dirs = file.policy_dirs.iter().flatten().chain(&self.policy_dirs);
        let mut policy = base.with_drop_in_dirs(extra_dirs.cloned());
        if let Some(dbus_config) = self
            .dbus_config
            .clone()
            .or_else(|| file.dbus_config.clone())
        {
            policy = policy.with_dbus_config_arg(dbus_config);
        }
        config.policy = policy;
        config
    }

    /// The log format: the flag, else the file's, else auto.
    pub fn log_format(&self, file: &ConfigFile) -> LogFormat {
        self.log_format.or(file.log_format).unwrap_or_default()
    }
}
