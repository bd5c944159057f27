//! `pidbusd`: the pidbus broker daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::builder::TypedValueParser;
use pidbus_broker::Config;
use pidbus_broker::bus::BusKind;
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
    /// Listen on this socket path instead of the bus's default one.
    #[arg(long, value_name = "PATH")]
    listen: Option<PathBuf>,
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
    /// Largest message accepted from a peer, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = pidbus_protocol::limits::DEFAULT_MAX_RECORD_SIZE as u64,
          value_parser = clap::value_parser!(u64).range(512..=pidbus_protocol::limits::MAX_CONFIGURABLE_RECORD_SIZE as u64))]
    max_record_size: u64,
    /// Seconds a new connection has to send its Hello before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    hello_timeout: u64,
    /// What to do with a message sent on a connection by a process other than
    /// the one that opened it (socket passed on or inherited): `reject` answers
    /// it with a SenderMismatch error and logs it; `strict` also disconnects;
    /// `off` checks nothing (only to measure what the check costs: a socket
    /// passed on then speaks with its opener's identity).
    #[arg(long, value_name = "MODE", default_value = "reject",
          value_parser = clap::builder::PossibleValuesParser::new(["reject", "strict", "off"])
              .try_map(|mode| mode.parse::<SenderCheckMode>()))]
    sender_check: SenderCheckMode,
}

impl Args {
    fn config(&self) -> Config {
        let (listen, private_dir) = match (&self.listen, self.system) {
            (Some(path), _) => (path.clone(), false),
            (None, true) => (PathBuf::from(address::SYSTEM_BUS_PATH), false),
            (None, false) => {
                let session = address::session_bus();
                (session.path, session.private_dir)
            }
        };
        let mut config = Config::new(listen);
        if self.system {
            config.kind = BusKind::System;
        }
        config.private_dir = private_dir;
        config.max_record_size = self.max_record_size as usize;
        config.hello_timeout = std::time::Duration::from_secs(self.hello_timeout);
        config.sender_check = self.sender_check;
        config.policy = self.policy_source();
        config
    }

    fn policy_source(&self) -> PolicySource {
        match (
            &self.policy,
            self.system,
            self.session || self.listen.is_none(),
        ) {
            (Some(path), _, _) => PolicySource::File(path.clone()),
            (None, true, _) => PolicySource::system(),
            (None, false, true) => PolicySource::session(),
            (None, false, false) => PolicySource::open(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let unchecked = args.sender_check == SenderCheckMode::Off;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    if unchecked {
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
    match runtime.block_on(pidbus_broker::run(args.config(), shutdown)) {
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
