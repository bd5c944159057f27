//! # pidbus-broker
//!
//! The pidbus broker: it accepts `SOCK_SEQPACKET` connections, learns who
//! each connecting *process* is from its pidfd (`SO_PEERPIDFD`), and serves
//! it. The `pidbusd` binary is a thin argument parser around [`run`].
//!
//! Module map, as DESIGN.md splits it:
//! - [`bus`], the wire-agnostic core: peers, names ([`bus::names`]),
//!   routing ([`bus::router`]), the match index, outboxes, quotas,
//!   process handles, bus activation ([`bus::activation`]) and the polkit
//!   authority's decisions ([`bus::authority`]);
//! - [`native`] and [`dbus`], the two faces (the D-Bus face also serves
//!   the driver `org.freedesktop.DBus` and the polkit authority
//!   `org.freedesktop.PolicyKit1`);
//! - [`os`], what talks to the kernel and systemd: identity capture,
//!   sender proof, exit watches, socket files, socket activation, starting
//!   activated services;
//! - [`policy`], [`config`], [`cli`], [`service_files`] (D-Bus
//!   `.service` files) and [`log_limit`] (per-user limits on the log lines
//!   a user can cause).
//!
//! ```no_run
//! # async fn start() -> Result<(), pidbus_broker::BrokerError> {
//! let config = pidbus_broker::Config::new("/tmp/example.sock".into());
//! pidbus_broker::run(config, std::future::pending()).await
//! # }
//! ```

pub mod bus;
pub mod cli;
pub mod config;
pub mod dbus;
pub mod log_limit;
pub mod native;
pub mod os;
pub mod policy;
pub mod service_files;

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::bus::activation::ActivationSettings;
use crate::bus::{Bus, BusKind, BusSettings};
pub use crate::config::Config;
use crate::os::exits::ExitWatcher;
use crate::os::launch::BusAddresses;
use crate::os::socket_file::{BoundSocket, ListenError};
use crate::os::{identity, systemd};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The kernel lacks `SO_PEERPIDFD`.
    #[error(
        "this kernel does not support SO_PEERPIDFD (Linux 6.5 or newer is required): \
         without it the broker cannot identify peers race-free, and it will not fall back \
         to pidfd_open(pid), which races with PID reuse"
    )]
    NoPeerPidfd,
    /// A startup step failed.
    #[error("{what}: {source}")]
    Startup {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The policy is invalid.
    #[error("invalid policy: {0}")]
    Policy(#[from] policy::PolicyError),
    /// The sockets systemd passed cannot be served.
    #[error(transparent)]
    Activation(#[from] systemd::ActivationError),
}

/// Runs a broker on the socket paths of `config` until `shutdown`
/// completes, then removes its socket files.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BrokerError> {
    serve(config, None, shutdown).await
}

/// Runs a broker on sockets already listening (socket activation, see
/// [`systemd::activated_sockets`]) until `shutdown` completes; the paths in
/// `config.listen` are not used.
pub async fn run_activated(
    config: Config,
    sockets: Vec<BoundSocket>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BrokerError> {
    serve(config, Some(sockets), shutdown).await
}

/// Says at start what the broker cannot prove without `CAP_SYS_PTRACE`:
/// the system bus serves every user and should have it (its unit keeps
/// it); a session bus serves its own user, whose processes it may read
/// anyway (but for non-dumpable ones).
fn report_privilege(kind: BusKind) {
    let uid = rustix::process::geteuid().as_raw();
    match identity::can_read_every_process() {
        Ok(true) => {}
        Ok(false) if kind == BusKind::System => warn!(
            uid,
            "running without CAP_SYS_PTRACE: other users' processes' executables and pid \
             namespaces cannot be read, so they are served with what the kernel proves \
             (uid, gid, groups, pidfs id, cgroup, unit) and policy rules on exe and \
             sender_proof fail closed for them; run the system bus as root, as the shipped \
             unit does (CapabilityBoundingSet=CAP_SYS_PTRACE)"
        ),
        Ok(false) => info!(
            uid,
            "running without CAP_SYS_PTRACE: other users' (and non-dumpable) processes' \
             executables and pid namespaces cannot be read; they are served with what the \
             kernel proves, and policy rules on exe and sender_proof fail closed for them"
        ),
        Err(e) => warn!(error = %e, "cannot tell whether this broker may read every process"),
    }
}

/// Checks the kernel, loads the policy, then listens (`activated`, else
/// binds the configured paths) and serves until `shutdown`.
async fn serve(
    config: Config,
    activated: Option<Vec<BoundSocket>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BrokerError> {
    let supported = pidbus_protocol::transport::kernel_supports_peer_pidfd().map_err(|source| {
        BrokerError::Startup {
            what: "cannot probe the kernel for SO_PEERPIDFD",
            source,
        }
    })?;
    if !supported {
        return Err(BrokerError::NoPeerPidfd);
    }
    raise_fd_limit();
    let boot_id = identity::read_boot_id().map_err(|source| BrokerError::Startup {
        what: "cannot read /proc/sys/kernel/random/boot_id",
        source,
    })?;
    let bus_id = identity::new_bus_id().map_err(|source| BrokerError::Startup {
        what: "cannot read /proc/sys/kernel/random/uuid for the bus id",
        source,
    })?;
    let policy = config.policy.load()?;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|source| BrokerError::Startup {
            what: "cannot install the SIGHUP (reload) handler",
            source,
        })?;
    info!(source = %config.policy, rules = policy.rules().len(), "policy loaded");
    report_privilege(config.kind);
    let sockets = match activated {
        Some(sockets) => sockets,
        None => bind_all(&config)?,
    };
    let exits = ExitWatcher::new().map_err(|source| BrokerError::Startup {
        what: "cannot create the epoll set that watches peers' processes",
        source,
    })?;
    let activation = activation_settings(&config, &sockets);
    let (max_message_size, smaller) = config.max_message_size();
    if let Some(why) = smaller {
        info!(max_message_size, "{why}");
    }
    let bus = Bus::new(
        BusSettings {
            kind: config.kind,
            boot_id,
            bus_id,
            max_record_size: config.max_record_size,
            max_message_size,
            hello_timeout: config.hello_timeout,
            sender_check: config.sender_check,
            default_call_timeout: config.default_call_timeout,
            limits: config.limits,
            uid_limits: config.uid_limits,
            namespaces: identity::BrokerNamespaces::own(),
            policy: config.policy.clone(),
            activation,
            polkit_authority: config.polkit_authority,
        },
        policy,
        Arc::clone(&exits),
    );
    bus.reload_services();
    let timeouts = tokio::spawn(Arc::clone(&bus).run_call_timeouts());
    let reloads = tokio::spawn({
        let bus = Arc::clone(&bus);
        async move {
            while hangups.recv().await.is_some() {
                info!("SIGHUP received: reloading the policy and the service files");
                // A bad file is logged and keeps the old policy.
                let _ = bus.reload_policy();
                bus.reload_services();
            }
        }
    });
    let exit_reports = tokio::spawn(async move {
        let e = exits.run().await;
        error!(error = %e, "the epoll set of peers' processes failed: exits go unnoticed");
    });
    let addresses = addresses(&sockets);
    let dbus_address = dbus_address(&sockets);
    let shown = if dbus_address.is_empty() {
        "none"
    } else {
        &dbus_address
    };
    info!(address = %addresses, dbus_address = %shown, "pidbusd listening");
    if config.print_address && !dbus_address.is_empty() {
        println!("{dbus_address}");
    }
    systemd::notify_ready(&format!("serving {addresses}"));
    accept_loop(sockets, bus, shutdown).await;
    systemd::notify_stopping("shutting down");
    timeouts.abort();
    exit_reports.abort();
    reloads.abort();
    info!(address = %addresses, "pidbusd shutting down");
    Ok(())
}

/// Accepts connections on every socket until `shutdown` completes, each
/// socket by its face's accept loop. Returns once every accept task has
/// ended and dropped its socket (which removes the socket files the broker
/// made).
async fn accept_loop(
    sockets: Vec<BoundSocket>,
    bus: Arc<Bus>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use pidbus_protocol::transport::SocketKind;
    let mut acceptors = tokio::task::JoinSet::new();
    for socket in sockets {
        let bus = Arc::clone(&bus);
        match socket.kind() {
            SocketKind::SeqPacket => acceptors.spawn(native::listener::accept_on(socket, bus)),
            SocketKind::Stream => acceptors.spawn(dbus::listener::accept_on(socket, bus)),
        };
    }
    shutdown.await;
    acceptors.abort_all();
    while acceptors.join_next().await.is_some() {}
}

/// Where service files are read from (the configured directories, else
/// the bus kind's standard ones), and the addresses a started service is
/// given: the first native and the first D-Bus socket.
fn activation_settings(config: &Config, sockets: &[BoundSocket]) -> ActivationSettings {
    use pidbus_protocol::transport::SocketKind;
    let first = |kind| {
        sockets
            .iter()
            .find(|s| s.kind() == kind)
            .map(|s| s.path().to_owned())
    };
    let mut settings = ActivationSettings::standard(config.kind);
    if let Some(directories) = &config.service_dirs {
        settings.directories.clone_from(directories);
    }
    settings.timeout = config.activation_timeout;
    settings.addresses = BusAddresses {
        native: first(SocketKind::SeqPacket),
        dbus: first(SocketKind::Stream),
    };
    settings
}

/// Binds every configured path, native and D-Bus; a failure releases
/// those already bound.
fn bind_all(config: &Config) -> Result<Vec<BoundSocket>, ListenError> {
    use pidbus_protocol::transport::SocketKind;
    let native = config
        .listen
        .iter()
        .map(|path| (path, SocketKind::SeqPacket, config.listen_parent));
    let dbus = config
        .dbus_listen
        .iter()
        .map(|path| (path, SocketKind::Stream, config.dbus_parent));
    native
        .chain(dbus)
        .map(|(path, kind, parent)| BoundSocket::bind(path, kind, parent))
        .collect()
}

/// The sockets' paths, for logs and the service status line.
/// The D-Bus address of the D-Bus sockets (`unix:path=…`, `;` between
/// several), as clients take it in `DBUS_SESSION_BUS_ADDRESS`; empty
/// without a D-Bus face.
fn dbus_address(sockets: &[BoundSocket]) -> String {
    use pidbus_protocol::transport::SocketKind;
    sockets
        .iter()
        .filter(|s| s.kind() == SocketKind::Stream)
        .map(|s| format!("unix:path={}", escape_address_value(s.path())))
        .collect::<Vec<_>>()
        .join(";")
}

/// A path as a D-Bus address value: bytes outside `[-0-9A-Za-z_/.\\*]`
/// are written `%XX`.
fn escape_address_value(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| match b {
            b'-' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'_' | b'/' | b'.' | b'\\' | b'*' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02x}"),
        })
        .collect()
}

fn addresses(sockets: &[BoundSocket]) -> String {
    config::display_paths(sockets.iter().map(BoundSocket::path))
}

/// Every peer holds a socket and a pidfd open in the broker: raise the soft
/// descriptor limit to the hard limit so the bus does not die of EMFILE.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            warn!(error = %e, "cannot raise RLIMIT_NOFILE to its hard limit");
        }
    }
}
