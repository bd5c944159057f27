//! Starting a service for activation: either the broker runs the service
//! file's `Exec=` itself, as its `User=`, with a clean environment, holding
//! the child's pidfd from the spawn on; or it asks systemd to start the
//! `SystemdService=` unit.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::bus::BusKind;
use crate::service_files::ServiceFile;

/// `PATH` for a started service unless the activation environment sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a started service finds the bus, for its environment.
#[derive(Debug, Clone, Default)]
pub struct BusAddresses {
    /// The native socket (`PIDBUS_ADDRESS`).
    pub native: Option<PathBuf>,
    /// The D-Bus socket (`DBUS_STARTER_ADDRESS` and the bus kind's
    /// `DBUS_*_BUS_ADDRESS`).
    pub dbus: Option<PathBuf>,
}

/// A service being started.
#[derive(Debug)]
pub enum Launched {
    /// The broker's own child, running `Exec=`.
    Process {
        /// The child, to wait for.
        child: Child,
        /// Its pidfd, opened before anything could reap it.
        pidfd: OwnedFd,
        /// Its pidfs id: the one process that may take the name.
        pidfs_id: u64,
    },
    /// A systemd unit: `systemctl start` of the service file's
    /// `SystemdService=`, running until systemd has started it (or failed
    /// to); or `systemd-run --wait` of `Exec=` as a transient unit,
    /// running as long as the service does.
    Unit {
        /// The unit.
        unit: String,
        /// The `systemctl` or `systemd-run` process.
        manager: Child,
        /// `systemd-run --wait`: the manager ends when the service does,
        /// with its exit status.
        ends_with_service: bool,
    },
}

/// Why a service could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `User=` names nobody.
    #[error("the service file's User={0} is not a user on this system")]
    NoSuchUser(String),
    /// The system bus starts nothing without `User=`.
    #[error("a system bus service file must name its User=")]
    NoUser,
    /// The program could not be run.
    #[error("cannot run {program}: {source}")]
    Exec {
        /// `Exec=`'s program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The child's pidfd could not be opened or read.
    #[error("cannot hold the started process: {0}")]
    Pidfd(std::io::Error),
    /// pidfds without pidfs ids (Linux < 6.9): the started process could
    /// not be told apart from a squatter, so nothing is started.
    #[error("this kernel gives pidfds no pidfs id, needed to know the started process")]
    NoPidfsId,
}

/// Whether systemd runs this machine (sd_booted(3)).
pub fn systemd_running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Starts `service`. Where systemd runs the machine: its
/// `SystemdService=` unit, or else `Exec=` as a transient unit (as
/// dbus-broker does), so the service runs in a unit of its own rather than
/// inside the broker's sandbox. Elsewhere: `Exec=` as `User=`, the
/// broker's own child. `attempt` tells transient units apart.
pub fn start(
    service: &ServiceFile,
    kind: BusKind,
    environment: &BTreeMap<String, String>,
    addresses: &BusAddresses,
    attempt: u64,
) -> Result<Launched, LaunchError> {
    match (&service.systemd_service, systemd_running()) {
        (Some(unit), true) => start_unit(unit, kind),
        (None, true) => start_transient(service, kind, environment, addresses, attempt),
        _ => spawn(service, kind, environment, addresses),
    }
}

/// `systemd-run --wait` of `Exec=` as `pidbus-activation-NAME-N.service`,
/// as `User=`, with the activation environment and the bus addresses
/// (systemd adds the user's own variables).
fn start_transient(
    service: &ServiceFile,
    kind: BusKind,
    environment: &BTreeMap<String, String>,
    addresses: &BusAddresses,
    attempt: u64,
) -> Result<Launched, LaunchError> {
    if kind == BusKind::System && service.user.is_none() {
        return Err(LaunchError::NoUser);
    }
    let unit = format!("pidbus-activation-{}-{attempt}.service", service.name);
    let mut command = transient_command(service, &unit, kind, environment, addresses);
    command.stdin(Stdio::null()).kill_on_drop(true);
    let manager = command.spawn().map_err(|source| LaunchError::Exec {
        program: "systemd-run".to_owned(),
        source,
    })?;
    Ok(Launched::Unit {
        unit,
        manager,
        ends_with_service: true,
    })
}

/// The `systemd-run` command line that runs `service` as `unit`.
fn transient_command(
    service: &ServiceFile,
    unit: &str,
    kind: BusKind,
    environment: &BTreeMap<String, String>,
    addresses: &BusAddresses,
) -> Command {
    let mut command = Command::new("systemd-run");
    pidbus_protocol::exec_without_stray_fds(command.as_std_mut());
    if kind == BusKind::Session {
        command.arg("--user");
    }
    command.args([
        "--quiet",
        "--wait",
        "--collect",
        "--service-type=exec",
        &format!("--unit={unit}"),
    ]);
    if let (Some(user), BusKind::System) = (&service.user, kind) {
        command.arg(format!("--uid={user}"));
    }
    for (key, value) in bus_environment(kind, environment, addresses) {
        command.arg(format!("--setenv={key}={value}"));
    }
    command.arg("--").args(&service.exec);
    command
}

/// Variables of the broker's own environment that describe the broker's
/// process, not the session: a started service must not inherit them.
const BROKER_ONLY: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "MANAGERPID",
    "SYSTEMD_EXEC_PID",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// The activation environment a session bus starts with, as dbus-daemon's
/// session bus has it: the broker's own environment, which is the
/// session's (its desktop, or systemd --user's variables when the user
/// manager runs it) — `DISPLAY`, `WAYLAND_DISPLAY`, `XDG_RUNTIME_DIR`,
/// `LANG` and the rest — without what only describes the broker's
/// process, and with `HOME`, `USER`, `LOGNAME` and `SHELL` of the broker's
/// user where the environment lacks them. `UpdateActivationEnvironment`
/// adds to it later.
pub fn session_environment() -> BTreeMap<String, String> {
    let mut environment: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !BROKER_ONLY.contains(&k.as_str()))
        .collect();
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten();
    if let Some(me) = me {
        let facts = [
            ("HOME", me.dir.display().to_string()),
            ("USER", me.name.clone()),
            ("LOGNAME", me.name),
            ("SHELL", me.shell.display().to_string()),
        ];
        for (key, value) in facts {
            environment.entry(key.to_owned()).or_insert(value);
        }
    }
    environment
}

/// What a started service is given beyond its user's own variables: the
/// activation environment, then where the bus is.
fn bus_environment(
    kind: BusKind,
    environment: &BTreeMap<String, String>,
    addresses: &BusAddresses,
) -> Vec<(String, String)> {
    let mut variables: Vec<(String, String)> = environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bus_type = match kind {
        BusKind::System => "system",
        BusKind::Session => "session",
    };
    variables.push(("DBUS_STARTER_BUS_TYPE".to_owned(), bus_type.to_owned()));
    if let Some(dbus) = &addresses.dbus {
        let address = format!("unix:path={}", dbus.display());
        let own = match kind {
            BusKind::System => "DBUS_SYSTEM_BUS_ADDRESS",
            BusKind::Session => "DBUS_SESSION_BUS_ADDRESS",
        };
        variables.push(("DBUS_STARTER_ADDRESS".to_owned(), address.clone()));
        variables.push((own.to_owned(), address));
    }
    if let Some(native) = &addresses.native {
        let native = native.display().to_string();
        variables.push((pidbus_protocol::address::ADDRESS_ENV.to_owned(), native));
    }
    variables
}

fn start_unit(unit: &str, kind: BusKind) -> Result<Launched, LaunchError> {
    let mut command = Command::new("systemctl");
    pidbus_protocol::exec_without_stray_fds(command.as_std_mut());
    if kind == BusKind::Session {
        command.arg("--user");
    }
    command
        .args(["start", "--", unit])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let manager = command.spawn().map_err(|source| LaunchError::Exec {
        program: "systemctl".to_owned(),
        source,
    })?;
    Ok(Launched::Unit {
        unit: unit.to_owned(),
        manager,
        ends_with_service: false,
    })
}

/// The account a service runs as.
struct Account {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    name: String,
    home: PathBuf,
    shell: PathBuf,
}

/// Who a service runs as: `User=` on the system bus (where it is
/// required); on a session bus always the bus's own user, as dbus-daemon
/// has it (a session bus may not switch users, and `User=` there is
/// ignored).
fn account_of(service: &ServiceFile, kind: BusKind) -> Result<Option<Account>, LaunchError> {
    let name = match (&service.user, kind) {
        (_, BusKind::Session) => return Ok(None),
        (None, BusKind::System) => return Err(LaunchError::NoUser),
        (Some(name), BusKind::System) => name,
    };
    let user = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| LaunchError::NoSuchUser(name.clone()))?;
    let groups = CString::new(name.as_str())
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
        .map(|groups| groups.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![user.gid.as_raw()]);
    Ok(Some(Account {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        name: user.name,
        home: user.dir,
        shell: user.shell,
    }))
}

/// Runs `Exec=` with only the activation environment, the bus addresses
/// and the user's own variables; stdin from /dev/null, output to the
/// broker's (its log), in a session of its own so signals aimed at the
/// broker's process group do not reach it.
fn spawn(
    service: &ServiceFile,
    kind: BusKind,
    environment: &BTreeMap<String, String>,
    addresses: &BusAddresses,
) -> Result<Launched, LaunchError> {
    let account = account_of(service, kind)?;
    let (program, args) = service
        .exec
        .split_first()
        .ok_or_else(|| LaunchError::Exec {
            program: String::new(),
            source: std::io::Error::other("Exec= names no program"),
        })?;
    let mut command = Command::new(program);
    // The service gets its stdio and the bus's address, not whatever the
    // broker itself was started with.
    pidbus_protocol::exec_without_stray_fds(command.as_std_mut());
    command
        .args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .stdin(Stdio::null())
        .current_dir("/")
        .kill_on_drop(false);
    if let Some(account) = &account {
        command
            .env("USER", &account.name)
            .env("LOGNAME", &account.name)
            .env("HOME", &account.home)
            .env("SHELL", &account.shell);
        pidbus_protocol::exec_as_user(
            command.as_std_mut(),
            account.uid,
            account.gid,
            account.groups.clone(),
        );
    }
    command.envs(bus_environment(kind, environment, addresses));
    command.process_group(0);
    let child = command.spawn().map_err(|source| LaunchError::Exec {
        program: program.clone(),
        source,
    })?;
    hold(child)
}

/// Opens the pidfd of a child just spawned. Race-free: the child is not
/// reaped before its `Child` is waited for, so its pid cannot have been
/// reused, even if it already exited (a zombie keeps its pid).
/// A child that cannot be held is killed: nothing may run that the bus
/// could not tell from a squatter.
fn hold(mut child: Child) -> Result<Launched, LaunchError> {
    let held = child
        .id()
        .ok_or_else(|| LaunchError::Pidfd(std::io::Error::other("the child has no pid")))
        .and_then(|pid| pidbus_protocol::pidfd::pidfd_open(pid).map_err(LaunchError::Pidfd))
        .and_then(|pidfd| {
            let id = pidbus_protocol::pidfd::pidfs_id(pidfd.as_fd()).map_err(LaunchError::Pidfd)?;
            Ok((pidfd, id.ok_or(LaunchError::NoPidfsId)?))
        });
    match held {
        Ok((pidfd, pidfs_id)) => Ok(Launched::Process {
            child,
            pidfd,
            pidfs_id,
        }),
        Err(e) => {
            let _ = child.start_kill();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_unit_runs_exec_as_user_with_the_bus_environment() {
        let service = ServiceFile {
            name: "org.example.Echo".to_owned(),
            exec: vec!["/usr/libexec/echo".to_owned(), "--bus".to_owned()],
            user: Some("echo".to_owned()),
            systemd_service: None,
            path: PathBuf::from("/x/org.example.Echo.service"),
        };
        let environment = BTreeMap::from([("LANG".to_owned(), "C.UTF-8".to_owned())]);
        let addresses = BusAddresses {
            native: Some(PathBuf::from("/run/pidbus/system.sock")),
            dbus: Some(PathBuf::from("/run/dbus/system_bus_socket")),
        };
        let unit = "pidbus-activation-org.example.Echo-7.service";
        let command = transient_command(&service, unit, BusKind::System, &environment, &addresses);
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(command.as_std().get_program(), "systemd-run");
        assert_eq!(
            args,
            [
                "--quiet",
                "--wait",
                "--collect",
                "--service-type=exec",
                "--unit=pidbus-activation-org.example.Echo-7.service",
                "--uid=echo",
                "--setenv=LANG=C.UTF-8",
                "--setenv=DBUS_STARTER_BUS_TYPE=system",
                "--setenv=DBUS_STARTER_ADDRESS=unix:path=/run/dbus/system_bus_socket",
                "--setenv=DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket",
                "--setenv=PIDBUS_ADDRESS=/run/pidbus/system.sock",
                "--",
                "/usr/libexec/echo",
                "--bus",
            ]
        );
        let session = transient_command(&service, unit, BusKind::Session, &environment, &addresses);
        let session: Vec<_> = session.as_std().get_args().collect();
        assert_eq!(session.first().copied(), Some("--user".as_ref()));
        assert!(
            !session.contains(&"--uid=echo".as_ref()),
            "a session bus ignores User="
        );
    }
}
