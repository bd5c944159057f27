//! `pidbusd`: the pidbus broker daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pidbus_broker::cli::DaemonArgs;
use pidbus_broker::config::{ConfigError, ConfigFile, LogFormat};
use pidbus_broker::os::sender::SenderCheckMode;
use tracing_subscriber::EnvFilter;

/// Reads `--config`, or an empty one without it.
fn config_file(args: &DaemonArgs) -> Result<ConfigFile, ConfigError> {
    match &args.config {
        Some(path) => ConfigFile::load(path),
        None => Ok(ConfigFile::default()),
    }
}

/// `--check-config`: the file, then the policy it selects (every error
/// in it, not only the first).
fn check_config(args: &DaemonArgs) -> ExitCode {
    let file = match config_file(args) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("pidbusd: invalid config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = args.config(&file);
    match config
        .policy
        .check(|note| eprintln!("pidbusd: warning: D-Bus XML policy: {note}"))
    {
        Ok(_) => {
            println!(
                "config ok: listen {}, policy {}",
                pidbus_broker::config::display_paths(config.listen.iter().map(PathBuf::as_path)),
                config.policy
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("pidbusd: invalid policy: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
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
        let activated = pidbus_broker::os::systemd::activated_sockets()?;
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
