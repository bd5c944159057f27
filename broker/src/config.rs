//! The broker's configuration: [`Config`] (what `run` needs) and the TOML
//! file `pidbusd --config FILE` reads into it. Command-line flags are
//! applied after the file, so they override it.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::bus::quotas::UidLimits;
use crate::bus::{BusKind, PeerLimits};
use crate::os::sender::SenderCheckMode;
use crate::os::socket_file::Parent;
use crate::policy::PolicySource;

/// How a broker instance is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// System or session bus.
    pub kind: BusKind,
    /// Socket paths to listen on (unless systemd passes the sockets).
    pub listen: Vec<PathBuf>,
    /// Socket paths of the D-Bus face (`SOCK_STREAM`; none: no D-Bus face).
    pub dbus_listen: Vec<PathBuf>,
    /// Print the D-Bus address on stdout once listening.
    pub print_address: bool,
    /// What to do about the native sockets' directory.
    pub listen_parent: Parent,
    /// What to do about the D-Bus sockets' directory.
    pub dbus_parent: Parent,
    /// Largest record accepted, in bytes.
    pub max_record_size: usize,
    /// Largest message on the D-Bus socket, in bytes (`None`: the bus
    /// kind's default, [`Config::max_message_size`]).
    pub max_message_size: Option<usize>,
    /// How long a connection may take to send Hello.
    pub hello_timeout: Duration,
    /// What happens to a message sent on a connection by a process other
    /// than the connection's.
    pub sender_check: SenderCheckMode,
    /// Timeout of calls that do not name one.
    pub default_call_timeout: Duration,
    /// Per-connection limits.
    pub limits: PeerLimits,
    /// Per-uid quotas over all of a user's connections.
    pub uid_limits: UidLimits,
    /// Where the policy comes from.
    pub policy: PolicySource,
    /// Directories of D-Bus `.service` files (`None`: the bus kind's
    /// standard directories).
    pub service_dirs: Option<Vec<PathBuf>>,
    /// How long an activated service has to take its name.
    pub activation_timeout: Duration,
    /// Serve the polkit authority `org.freedesktop.PolicyKit1` (off: the
    /// name is free for polkitd).
    pub polkit_authority: bool,
}

/// The sizes `max_message_size` may have.
pub const MAX_MESSAGE_SIZE_RANGE: RangeInclusive<usize> =
    512..=pidbus_protocol::dbus::header::MAX_MESSAGE_LEN;

/// dbus-daemon's default largest message on the system bus (its
/// `max_message_size`).
pub const SYSTEM_MAX_MESSAGE_SIZE: usize = 32 << 20;

impl Config {
    /// The largest message the D-Bus socket carries, and why it is
    /// smaller than asked if it is: what was set, else dbus-daemon's
    /// default for the bus kind (32 MiB on the system bus; on a session
    /// bus the D-Bus maximum, 128 MiB, as its `session.conf` allows), at
    /// most the per-user `queued_bytes` quota, which a message's bytes
    /// count against while they arrive and while they wait for their
    /// receiver (a larger one could never pass).
    pub fn max_message_size(&self) -> (usize, Option<String>) {
        let wanted = self.max_message_size.unwrap_or(match self.kind {
            BusKind::System => SYSTEM_MAX_MESSAGE_SIZE,
            BusKind::Session => pidbus_protocol::dbus::header::MAX_MESSAGE_LEN,
        });
        let quota = self.uid_limits.queued_bytes;
        if wanted > quota {
            let why = format!(
                "messages are limited to the per-user queued_bytes quota ({quota} bytes), \
                 below the {wanted} bytes of max_message_size"
            );
            return (quota, Some(why));
        }
        (wanted, None)
    }

    /// Defaults for listening on `listen`.
    pub fn new(listen: PathBuf) -> Self {
        Config {
            kind: BusKind::Session,
            listen: vec![listen],
            dbus_listen: Vec::new(),
            print_address: false,
            listen_parent: Parent::Existing,
            dbus_parent: Parent::Existing,
            max_record_size: pidbus_protocol::limits::DEFAULT_MAX_RECORD_SIZE,
            max_message_size: None,
            hello_timeout: Duration::from_secs(10),
            sender_check: SenderCheckMode::Reject,
            default_call_timeout: Duration::from_secs(25),
            limits: PeerLimits::default(),
            uid_limits: UidLimits::default(),
            policy: PolicySource::open(),
            service_dirs: None,
            activation_timeout: Duration::from_secs(25),
            polkit_authority: true,
        }
    }
}

/// Why a config or policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is wrong at this place.
    #[error("{file}:{line}:{column}: {message}")]
    At {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// Why the config file could not be used.
pub type ConfigError = FileError;

/// The broker config file. Every key is optional; what is absent keeps
/// its default (or what the bus kind implies).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `"system"` or `"session"`.
    pub bus: Option<BusKind>,
    /// Socket path, or a list of them.
    pub listen: Option<ListenPaths>,
    /// D-Bus socket path, or a list of them.
    pub dbus_listen: Option<ListenPaths>,
    /// Policy file.
    pub policy: Option<PathBuf>,
    /// More directories of policy drop-ins, read after the standard ones
    /// (relative paths from the config file's directory).
    pub policy_dirs: Option<Vec<PathBuf>>,
    /// The D-Bus bus configuration whose XML policy is read (`"none"`:
    /// none).
    pub dbus_config: Option<PathBuf>,
    /// `reject`, `strict` or `off`.
    pub sender_check: Option<SenderCheckMode>,
    /// Seconds to send Hello.
    pub hello_timeout_secs: Option<u64>,
    /// Seconds a call without its own timeout waits.
    pub default_call_timeout_secs: Option<u64>,
    /// Largest record, in bytes.
    pub max_record_size: Option<usize>,
    /// Largest message on the D-Bus socket, in bytes.
    pub max_message_size: Option<usize>,
    /// `auto`, `human` or `journald`.
    pub log_format: Option<LogFormat>,
    /// Directories of D-Bus `.service` files, in order of precedence
    /// (relative paths from the config file's directory).
    pub service_dirs: Option<Vec<PathBuf>>,
    /// Seconds an activated service has to take its name.
    pub activation_timeout_secs: Option<u64>,
    /// Whether the bus is the polkit authority (default: true).
    pub polkit_authority: Option<bool>,
    /// `[limits.connection]` and `[limits.uid]`.
    #[serde(default)]
    pub limits: LimitsModel,
}

/// `listen = "/path"` or `listen = ["/a", "/b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ListenPaths {
    /// One path.
    One(PathBuf),
    /// Several paths, all serving the same bus.
    Many(Vec<PathBuf>),
}

impl ListenPaths {
    /// The paths, in order.
    pub fn into_vec(self) -> Vec<PathBuf> {
        match self {
            ListenPaths::One(path) => vec![path],
            ListenPaths::Many(paths) => paths,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `journald` under systemd (`JOURNAL_STREAM` set), else `human`.
    #[default]
    Auto,
    /// Timestamped lines, coloured on a terminal.
    Human,
    /// `<N>` priority prefixes that journald turns into log levels; no
    /// timestamps (the journal adds its own).
    Journald,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "human" => Ok(LogFormat::Human),
            "journald" => Ok(LogFormat::Journald),
            other => Err(format!(
                "unknown log format {other:?}; use auto, human or journald"
            )),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsModel {
    /// Per connection.
    #[serde(default)]
    pub connection: ConnectionLimitsModel,
    /// Per uid.
    #[serde(default)]
    pub uid: UidLimitsModel,
}

/// `[limits.connection]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimitsModel {
    /// Bytes queued towards a connection that does not read.
    pub queued_bytes: Option<usize>,
    /// Descriptors queued towards it.
    pub queued_fds: Option<usize>,
    /// Its calls waiting for an answer.
    pub pending_calls: Option<usize>,
    /// Names it owns or queues for.
    pub names: Option<usize>,
    /// Its match rules.
    pub match_rules: Option<usize>,
    /// Processes it watches.
    pub process_watches: Option<usize>,
}

/// `[limits.uid]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UidLimitsModel {
    /// Connections.
    pub connections: Option<usize>,
    /// Connections still in their handshake.
    pub handshakes: Option<usize>,
    /// Bytes queued towards the uid's connections.
    pub queued_bytes: Option<usize>,
    /// Descriptors held for them.
    pub fds: Option<usize>,
    /// Names.
    pub names: Option<usize>,
    /// Match rules.
    pub match_rules: Option<usize>,
    /// Bytes of match rules.
    pub match_rule_bytes: Option<usize>,
    /// Calls waiting for an answer.
    pub pending_calls: Option<usize>,
    /// Process watches.
    pub process_watches: Option<usize>,
}

impl ConfigFile {
    /// Reads and checks the file at `path`.
    /// A relative `policy =` path is taken from the file's directory, not
    /// from wherever the broker was started.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut file = Self::parse(&path.display().to_string(), &text)?;
        if let (Some(policy), Some(dir)) = (&file.policy, path.parent())
            && policy.is_relative()
        {
            file.policy = Some(dir.join(policy));
        }
        if let Some(dir) = path.parent() {
            for dirs in [&mut file.service_dirs, &mut file.policy_dirs]
                .into_iter()
                .flatten()
            {
                for relative in dirs.iter_mut().filter(|d| d.is_relative()) {
                    *relative = dir.join(&*relative);
                }
            }
        }
        Ok(file)
    }

    /// The settings the file sets to 0, where 0 means a broker that cannot
    /// work (no connection admitted, every Hello timed out at once).
    fn zero_settings(&self) -> Vec<&'static str> {
        let c = &self.limits.connection;
        let u = &self.limits.uid;
        [
            (
                "hello_timeout_secs",
                self.hello_timeout_secs.map(|v| v as usize),
            ),
            (
                "default_call_timeout_secs",
                self.default_call_timeout_secs.map(|v| v as usize),
            ),
            (
                "activation_timeout_secs",
                self.activation_timeout_secs.map(|v| v as usize),
            ),
            ("queued_bytes", c.queued_bytes),
            ("queued_fds", c.queued_fds),
            ("pending_calls", c.pending_calls),
            ("names", c.names),
            ("match_rules", c.match_rules),
            ("process_watches", c.process_watches),
            ("connections", u.connections),
            ("handshakes", u.handshakes),
            ("queued_bytes", u.queued_bytes),
            ("fds", u.fds),
            ("names", u.names),
            ("match_rules", u.match_rules),
            ("match_rule_bytes", u.match_rule_bytes),
            ("pending_calls", u.pending_calls),
            ("process_watches", u.process_watches),
        ]
        .into_iter()
        .filter(|(_, value)| *value == Some(0))
        .map(|(key, _)| key)
        .collect()
    }

    /// Parses `text`, naming `file` in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let at = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            ConfigError::At {
                file: file.to_owned(),
                line,
                column,
                message,
            }
        };
        let parsed: ConfigFile = toml::from_str(text)
            .map_err(|e| at(e.span().map_or(0, |s| s.start), e.message().to_owned()))?;
        // A size outside its range is refused, pointing at its key.
        let check_size =
            |key: &str, size: Option<usize>, range: RangeInclusive<usize>, why: &str| match size {
                Some(size) if !range.contains(&size) => Err(at(
                    text.find(key).unwrap_or(0),
                    format!(
                        "{key} must be between {} and {} bytes{why}",
                        range.start(),
                        range.end()
                    ),
                )),
                _ => Ok(()),
            };
        let record_sizes = 512..=pidbus_protocol::limits::MAX_CONFIGURABLE_RECORD_SIZE;
        check_size("max_record_size", parsed.max_record_size, record_sizes, "")?;
        check_size(
            "max_message_size",
            parsed.max_message_size,
            MAX_MESSAGE_SIZE_RANGE,
            " (the D-Bus maximum)",
        )?;
        if let Some(key) = parsed.zero_settings().first() {
            let offset = zero_offset(text, key);
            let message = format!("{key} must be at least 1 (0 would refuse everything it bounds)");
            return Err(at(offset, message));
        }
        if matches!(&parsed.listen, Some(ListenPaths::Many(paths)) if paths.is_empty()) {
            let offset = text.find("listen").unwrap_or(0);
            return Err(at(offset, "listen needs at least one socket path".into()));
        }
        Ok(parsed)
    }

    /// Writes what the file sets into `config` (bus kind, listen path and
    /// policy are chosen by the caller, which knows the flags).
    pub fn apply(&self, config: &mut Config) {
        if let Some(mode) = self.sender_check {
            config.sender_check = mode;
        }
        if let Some(secs) = self.hello_timeout_secs {
            config.hello_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = self.default_call_timeout_secs {
            config.default_call_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = self.activation_timeout_secs {
            config.activation_timeout = Duration::from_secs(secs);
        }
        if let Some(serve) = self.polkit_authority {
            config.polkit_authority = serve;
        }
        if let Some(dirs) = &self.service_dirs {
            config.service_dirs = Some(dirs.clone());
        }
        if let Some(size) = self.max_message_size {
            config.max_message_size = Some(size);
        }
        if let Some(size) = self.max_record_size {
            config.max_record_size = size;
        }
        self.limits.connection.apply(&mut config.limits);
        self.limits.uid.apply(&mut config.uid_limits);
    }
}

impl ConnectionLimitsModel {
    fn apply(&self, limits: &mut PeerLimits) {
        set(&mut limits.max_queued_bytes, self.queued_bytes);
        set(&mut limits.max_queued_fds, self.queued_fds);
        set(&mut limits.max_pending_calls, self.pending_calls);
        set(&mut limits.max_names, self.names);
        set(&mut limits.max_match_rules, self.match_rules);
        set(&mut limits.max_process_watches, self.process_watches);
    }
}

impl UidLimitsModel {
    fn apply(&self, limits: &mut UidLimits) {
        set(&mut limits.connections, self.connections);
        set(&mut limits.handshakes, self.handshakes);
        set(&mut limits.queued_bytes, self.queued_bytes);
        set(&mut limits.fds, self.fds);
        set(&mut limits.names, self.names);
        set(&mut limits.match_rules, self.match_rules);
        set(&mut limits.match_rule_bytes, self.match_rule_bytes);
        set(&mut limits.pending_calls, self.pending_calls);
        set(&mut limits.process_watches, self.process_watches);
    }
}

fn set(field: &mut usize, value: Option<usize>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// Socket paths as one line, `a, b`, for logs and messages.
pub fn display_paths<'a>(paths: impl IntoIterator<Item = &'a Path>) -> String {
    let paths: Vec<String> = paths
        .into_iter()
        .map(|path| path.display().to_string())
        .collect();
    paths.join(", ")
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where `key = 0` is written in `text` (the first such line).
fn zero_offset(text: &str, key: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest
                .trim_start()
                .strip_prefix('=')
                .is_some_and(|v| v.trim() == "0")
        {
            return offset + (line.len() - trimmed.len());
        }
        offset += line.len();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_settings_from_the_file_replace_the_defaults() {
        let file = ConfigFile::parse(
            "pidbusd.toml",
            "sender_check = \"strict\"\nhello_timeout_secs = 3\n\
             [limits.connection]\nqueued_bytes = 1000\n[limits.uid]\nconnections = 5\n",
        )
        .unwrap();
        let mut config = Config::new("/tmp/x.sock".into());
        file.apply(&mut config);
        assert_eq!(config.sender_check, SenderCheckMode::Strict);
        assert_eq!(config.hello_timeout, Duration::from_secs(3));
        assert_eq!(config.limits.max_queued_bytes, 1000);
        assert_eq!(config.uid_limits.connections, 5);
        assert_eq!(config.uid_limits.names, UidLimits::default().names);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_place() {
        let e = ConfigFile::parse("c.toml", "[limits.uid]\nconections = 5\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml:2:1: unknown field `conections`"),
            "{e}"
        );
        let e = ConfigFile::parse("c.toml", "\nmax_record_size = 10\n").unwrap_err();
        assert!(
            e.to_string().starts_with("c.toml:2:1: max_record_size"),
            "{e}"
        );
        let e = ConfigFile::parse("c.toml", "sender_check = \"lax\"\n").unwrap_err();
        assert!(e.to_string().starts_with("c.toml:1:16:"), "{e}");
        let e = ConfigFile::parse("c.toml", "bus = \"system\"\nlisten = []\n").unwrap_err();
        assert!(e.to_string().starts_with("c.toml:2:1: listen needs"), "{e}");
    }

    #[test]
    fn zero_limits_and_timeouts_are_refused_where_they_are_written() {
        let e = ConfigFile::parse("c.toml", "hello_timeout_secs = 0\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml:1:1: hello_timeout_secs must be at least 1"),
            "{e}"
        );
        let e =
            ConfigFile::parse("c.toml", "[limits.uid]\nnames = 3\nconnections = 0\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml:3:1: connections must be at least 1"),
            "{e}"
        );
        assert!(ConfigFile::parse("c.toml", "[limits.uid]\nconnections = 1\n").is_ok());
    }

    #[test]
    fn the_largest_message_follows_dbus_daemon_within_the_users_quota() {
        let mut config = Config::new(PathBuf::from("/x"));
        config.kind = BusKind::System;
        assert_eq!(config.max_message_size(), (32 << 20, None));
        config.kind = BusKind::Session;
        let (size, why) = config.max_message_size();
        assert_eq!(size, config.uid_limits.queued_bytes, "the quota bounds it");
        assert!(why.unwrap().contains("queued_bytes"));
        config.uid_limits.queued_bytes = 1 << 30;
        assert_eq!(config.max_message_size(), (128 << 20, None));
        config.max_message_size = Some(4096);
        assert_eq!(config.max_message_size(), (4096, None));
        let file = ConfigFile::parse("c.toml", "max_message_size = 200000000\n").unwrap_err();
        assert!(
            file.to_string()
                .starts_with("c.toml:1:1: max_message_size must be between"),
            "{file}"
        );
        let file = ConfigFile::parse("c.toml", "max_message_size = 4096\n").unwrap();
        assert_eq!(file.max_message_size, Some(4096));
    }

    #[test]
    fn a_record_size_outside_its_range_is_refused_at_its_key() {
        let text = "# sizes\nmax_record_size = 100\n";
        let error = ConfigFile::parse("c.toml", text).unwrap_err().to_string();
        let expected = format!(
            "c.toml:2:1: max_record_size must be between 512 and {} bytes",
            pidbus_protocol::limits::MAX_CONFIGURABLE_RECORD_SIZE
        );
        assert_eq!(error, expected);
        let file = ConfigFile::parse("c.toml", "max_record_size = 512\n").unwrap();
        assert_eq!(file.max_record_size, Some(512));
    }

    #[test]
    fn a_relative_policy_is_found_beside_the_config_file() {
        let dir = std::env::temp_dir().join(format!("pidbus-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pidbusd.toml");
        std::fs::write(&path, "policy = \"policy.toml\"\n").unwrap();
        let file = ConfigFile::load(&path).unwrap();
        assert_eq!(file.policy, Some(dir.join("policy.toml")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listen_takes_one_path_or_a_list() {
        let one = ConfigFile::parse("c.toml", "listen = \"/run/a.sock\"\n").unwrap();
        assert_eq!(
            one.listen.unwrap().into_vec(),
            [PathBuf::from("/run/a.sock")]
        );
        let many = ConfigFile::parse("c.toml", "listen = [\"/a\", \"/b\"]\n").unwrap();
        assert_eq!(
            many.listen.unwrap().into_vec(),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }
}
