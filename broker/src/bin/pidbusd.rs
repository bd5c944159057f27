//! `pidbusd`: the pidbus broker daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::builder::TypedValueParser;
use pidbus_broker::Config;
use pidbus_broker::bus::BusKind;
use pidbus_broker::config::{ConfigError, ConfigFile, LogFormat};
use pidbus_broker::policy::PolicySource;
use pidbus_broker::sender::SenderCheckMode;
use pidbus_protocol::address;
use tracing_subscriber::EnvFilter;

/// The pidbus broker: a message bus that authenticates every peer by its pidfd.
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Broker config file (TOML): bus, listen, policy, limits, sender_check,
    /// hello_timeout_secs, default_call_timeout_secs, max_record_size,
    /// log_format. Flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config file and the policy it selects, print what is wrong
    /// (file:line:column), and exit: 0 if both are valid, 1 if not.
    #[arg(long)]
    check_config: bool,
    /// Log format: `auto` (journald priority prefixes under systemd, else
    /// human), `human`, or `journald`. Default: the config file's, else auto.
    #[arg(long, value_name = "FORMAT",
          value_parser = clap::builder::PossibleValuesParser::new(["auto", "human", "journald"])
              .try_map(|format| format.parse::<LogFormat>()))]
    log_format: Option<LogFormat>,
    /// Listen on this socket path instead of the bus's default one; repeat
    /// to listen on several. Ignored when systemd passes the listening
    /// sockets (socket activation: LISTEN_FDS).
    #[arg(long, value_name = "PATH")]
    listen: Vec<PathBuf>,
    /// Run the session bus of the current user ($XDG_RUNTIME_DIR/pidbus.sock,
    /// else /run/user/UID/pidbus.sock, else /tmp/pidbus-UID/pidbus.sock). The default.
    #[arg(long, conflicts_with = "system")]
    session: bool,
    /// Run the system bus (/run/pidbus/system.sock), with the shipped
    /// system policy unless --policy is given.
    #[arg(long)]
    system: bool,
    /// Policy file (TOML); drop-ins in FILE.d/*.toml are read after it, in
    /// name order. Default: the shipped system policy with --system, the
    /// session policy for the session bus, and with only --listen an open
    /// policy for development (anyone may connect, own, call and receive).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Largest message accepted from a peer, in bytes [default: 65536].
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(512..=pidbus_protocol::limits::MAX_CONFIGURABLE_RECORD_SIZE as u64))]
    max_record_size: Option<u64>,
    /// Seconds a new connection has to send its Hello before it is closed
    /// [default: 10].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    hello_timeout: Option<u64>,
    /// What to do with a message sent on a connection by a process other than
    /// the one that opened it (socket passed on or inherited): `reject` answers
    /// it with a SenderMismatch error and logs it; `strict` also disconnects;
    /// `off` checks nothing (only to measure what the check costs: a socket
    /// passed on then speaks with its opener's identity) [default: reject].
    #[arg(long, value_name = "MODE",
          value_parser = clap::builder::PossibleValuesParser::new(["reject", "strict", "off"])
              .try_map(|mode| mode.parse::<SenderCheckMode>()))]
    sender_check: Option<SenderCheckMode>,
}

impl Args {
    /// The config: defaults, then the file, then the flags.
    fn config(&self, file: &ConfigFile) -> Config {
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
        let (paths, private_dir) = match (&listen, system) {
            (Some(paths), _) => (paths.clone(), false),
            (None, true) => (vec![PathBuf::from(address::SYSTEM_BUS_PATH)], false),
            (None, false) => {
                let session = address::session_bus();
                (vec![session.path], session.private_dir)
            }
        };
        let mut config = Config::new(PathBuf::new());
        config.listen = paths;
        if system {
            config.kind = BusKind::System;
        }
        config.private_dir = private_dir;
        file.apply(&mut config);
        if let Some(size) = self.max_record_size {
            config.max_record_size = size as usize;
        }
        if let Some(secs) = self.hello_timeout {
            config.hello_timeout = std::time::Duration::from_secs(secs);
        }
        if let Some(mode) = self.sender_check {
            config.sender_check = mode;
        }
        let policy = self.policy.clone().or_else(|| file.policy.clone());
        let session = self.session || (!system && listen.is_none());
        config.policy = match (policy, system, session) {
            (Some(path), _, _) => PolicySource::File(path),
            (None, true, _) => PolicySource::system(),
            (None, false, true) => PolicySource::session(),
            (None, false, false) => PolicySource::open(),
        };
        config
    }

    fn log_format(&self, file: &ConfigFile) -> LogFormat {
        self.log_format.or(file.log_format).unwrap_or_default()
    }
}

/// Reads `--config`, or an empty one without it.
fn config_file(args: &Args) -> Result<ConfigFile, ConfigError> {
    match &args.config {
        Some(path) => ConfigFile::load(path),
        None => Ok(ConfigFile::default()),
    }
}

/// `--check-config`: the file, then the policy it selects.
fn check_config(args: &Args) -> ExitCode {
    let file = match config_file(args) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("pidbusd: invalid config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = args.config(&file);
    match config.policy.load() {
        Ok(_) => {
            let listen: Vec<String> = config
                .listen
                .iter()
                .map(|path| path.display().to_string())
                .collect();
            println!(
                "config ok: listen {}, policy {}",
                listen.join(", "),
                config.policy
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pidbusd: invalid policy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check_config {
        return check_config(&args);
    }
    let file = match config_file(&args) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("pidbusd: invalid config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = args.config(&file);
    init_logging(args.log_format(&file));
    if config.sender_check == SenderCheckMode::Off {
        tracing::warn!(
            "--sender-check off: messages are not checked for their sender; \
             a socket passed to another process speaks with its opener's identity"
        );
    }
    // One thread, like dbus-broker: every handler is short and never
    // blocks, so a second worker buys no throughput, only cross-thread
    // wake-ups and lock traffic (measured: roundtrip, pipelined and connect
    // all faster, see the README's Benchmarks).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pidbusd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Handlers are installed before the socket exists, so a SIGTERM sent as
    // soon as the broker is reachable already shuts it down cleanly.
    let shutdown = {
        let _runtime_context = runtime.enter();
        match termination() {
            Ok(shutdown) => shutdown,
            Err(e) => {
                eprintln!("pidbusd: cannot install SIGTERM/SIGINT handlers: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let served = runtime.block_on(async {
        // Taken inside the runtime: the sockets register with its reactor.
        let activated = pidbus_broker::systemd::activated_sockets()?;
        if activated.is_empty() {
            pidbus_broker::run(config, shutdown).await
        } else {
            pidbus_broker::run_activated(config, activated, shutdown).await
        }
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pidbusd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs SIGTERM and SIGINT handlers now; the returned future completes
/// when either arrives.
fn termination() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Logs to stderr: human lines (coloured only on a terminal without
/// `NO_COLOR`), or under systemd lines with `<N>` priority prefixes that
/// journald turns into levels.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = match format {
        LogFormat::Journald => true,
        LogFormat::Human => false,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    if journald {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .event_format(JournaldFormat)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .init();
    }
}

/// One line per event: `<priority>target: message fields`, the syslog
/// priority prefix journald reads from a service's stderr (sd-daemon(3)).
struct JournaldFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournaldFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>{}: ", event.metadata().target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
