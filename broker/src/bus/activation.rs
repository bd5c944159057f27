//! Bus activation: starting the service that provides a well-known name
//! when the name is first called (or `StartServiceByName`), holding the
//! calls meanwhile, and answering them once the name is owned or the start
//! failed.
//!
//! What no other bus does: while a name is being activated, only the
//! process the broker started (compared by pidfs id), or for a systemd
//! unit only a process of that unit, may take it. Between "start" and
//! "owned" nobody else can squat the name and receive the calls queued
//! for it; attempts are refused and logged.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidbus_protocol::{Call, Destination, ErrorCode, ErrorReply, PeerId, ProcessIdentity};
use tracing::{debug, info, warn};

use crate::bus::quotas::{Charge, Resource};
use crate::bus::{Bus, BusKind, DRIVER_NAME, State, authority, gone, over_quota};
use crate::os::launch::{self, BusAddresses, LaunchError, Launched};
use crate::policy::MessageFields;
use crate::service_files::{self, ServiceFile};

/// Where services come from and how long a start may take.
#[derive(Debug, Clone)]
pub struct ActivationSettings {
    /// Directories of `.service` files, in order of precedence.
    pub directories: Vec<PathBuf>,
    /// How long a started service has to take its name.
    pub timeout: Duration,
    /// Where a started service finds the bus.
    pub addresses: BusAddresses,
}

impl ActivationSettings {
    /// The standard directories of a bus of `kind`, 25 s to start (as
    /// dbus-daemon's `service_start_timeout`), no addresses yet.
    pub fn standard(kind: BusKind) -> Self {
        ActivationSettings {
            directories: service_files::default_directories(kind),
            timeout: Duration::from_secs(25),
            addresses: BusAddresses::default(),
        }
    }
}

/// D-Bus error names of failed starts (as dbus-daemon gives them).
pub mod errors {
    /// The started program exited before it owned the name.
    pub const CHILD_EXITED: &str = "org.freedesktop.DBus.Error.Spawn.ChildExited";
    /// The started program was killed by a signal before it owned the name.
    pub const CHILD_SIGNALED: &str = "org.freedesktop.DBus.Error.Spawn.ChildSignaled";
    /// The program could not be run.
    pub const EXEC_FAILED: &str = "org.freedesktop.DBus.Error.Spawn.ExecFailed";
    /// The service file cannot be acted on (its user does not exist).
    pub const FAILED_TO_SETUP: &str = "org.freedesktop.DBus.Error.Spawn.FailedToSetup";
    /// systemd could not start the unit.
    pub const SPAWN_FAILED: &str = "org.freedesktop.DBus.Error.Spawn.Failed";
    /// The service did not take its name in time.
    pub const TIMED_OUT: &str = "org.freedesktop.DBus.Error.TimedOut";
}

/// Told how a start ended: `Ok` once the name is owned.
pub(crate) struct Waiter(Box<dyn Answer>);

/// What a [`Waiter`] does with the end of a start.
trait Answer: FnOnce(&State, StartResult<'_>) + Send {}

impl<F: FnOnce(&State, StartResult<'_>) + Send> Answer for F {}

/// How a start ended, as a [`Waiter`] hears it.
pub(crate) type StartResult<'a> = Result<(), &'a ErrorReply>;

impl Waiter {
    /// Calls `answer` when the start ends.
    pub(crate) fn new(
        answer: impl FnOnce(&State, Result<(), &ErrorReply>) + Send + 'static,
    ) -> Self {
        Waiter(Box::new(answer))
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Waiter")
    }
}

/// Who may take a name being activated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claimant {
    /// Nobody yet: the program is being spawned.
    Spawning,
    /// The process the broker started.
    Process(u64),
    /// Any process of this systemd unit.
    Unit(String),
}

/// A call held until its destination is owned, with what it is charged.
#[derive(Debug)]
struct Queued {
    from: PeerId,
    call: Call,
    fds: Vec<OwnedFd>,
    _charges: [Charge; 2],
}

/// A `StartServiceByName` waiting for its start to end, with what it is
/// charged (a pending call of its caller's user).
#[derive(Debug)]
struct Waiting {
    from: PeerId,
    waiter: Waiter,
    _charge: Charge,
}

/// One start in progress.
#[derive(Debug)]
struct Starting {
    attempt: u64,
    claimant: Claimant,
    queued: Vec<Queued>,
    waiters: Vec<Waiting>,
}

/// How long a service whose start failed is not started again: the
/// first failure's back-off, doubled with each failure in a row up to
/// [`MAX_BACKOFF`]. Calls meanwhile get the failure's error at once.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest back-off after failed starts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The last failed start of a name, while it is backed off.
#[derive(Debug)]
struct Failure {
    error: ErrorReply,
    /// Failures in a row, since the name was last owned.
    in_a_row: u32,
    retry_at: Instant,
}

impl Failure {
    fn backoff(in_a_row: u32) -> Duration {
        let doublings = in_a_row.saturating_sub(1).min(16);
        FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
    }
}

/// The bus's services and the starts in progress (behind the bus lock).
#[derive(Debug, Default)]
pub(crate) struct Activations {
    services: BTreeMap<String, ServiceFile>,
    /// `UpdateActivationEnvironment`'s variables, for every later start.
    environment: BTreeMap<String, String>,
    starting: BTreeMap<String, Starting>,
    /// Names whose last start failed (one entry per service file at most).
    failures: BTreeMap<String, Failure>,
    next_attempt: u64,
}

/// What a start request found.
#[derive(Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// The name is owned already.
    AlreadyRunning,
    /// A start is under way; the waiter will be told.
    Starting,
}

/// A start to launch once the bus lock is released.
pub(crate) struct Launch {
    name: String,
    attempt: u64,
    service: ServiceFile,
    environment: BTreeMap<String, String>,
}

impl Activations {
    /// No services yet; the activation environment a bus of `kind`
    /// starts with (the session's on a session bus, none on the system
    /// bus, whose services get a clean one).
    pub(crate) fn for_bus(kind: BusKind) -> Self {
        let environment = match kind {
            BusKind::Session => launch::session_environment(),
            BusKind::System => BTreeMap::new(),
        };
        Activations {
            environment,
            ..Activations::default()
        }
    }

    /// Whether a call to `name` would start a service.
    pub(crate) fn provides(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// Why `identity` may not take `name` now, if it may not: the name is
    /// being activated and `identity` is not what was started.
    pub(crate) fn refuses_claim(&self, name: &str, identity: &ProcessIdentity) -> Option<String> {
        let starting = self.starting.get(name)?;
        let allowed = match &starting.claimant {
            Claimant::Spawning => false,
            Claimant::Process(id) => identity.pidfs_id == Some(*id),
            Claimant::Unit(unit) => identity.unit.as_deref() == Some(unit.as_str()),
        };
        (!allowed).then(|| match &starting.claimant {
            Claimant::Spawning => format!("{name} is being activated; its service is starting"),
            Claimant::Process(id) => format!(
                "{name} is being activated: only the process the bus started (pidfs id {id}) may own it"
            ),
            Claimant::Unit(unit) => format!(
                "{name} is being activated: only a process of {unit} may own it"
            ),
        })
    }

    /// Notes a start of `name` unless one is under way; what to launch.
    fn begin(&mut self, name: &str) -> Option<Launch> {
        if self.starting.contains_key(name) {
            return None;
        }
        let service = self.services.get(name)?.clone();
        self.next_attempt += 1;
        let attempt = self.next_attempt;
        self.starting.insert(
            name.to_owned(),
            Starting {
                attempt,
                claimant: Claimant::Spawning,
                queued: Vec::new(),
                waiters: Vec::new(),
            },
        );
        Some(Launch {
            name: name.to_owned(),
            attempt,
            service,
            environment: self.environment.clone(),
        })
    }

    /// Drops the calls and start requests `caller` made that wait for a
    /// start, with their charges (it left the bus: nobody would get their
    /// answers).
    pub(crate) fn forget_caller(&mut self, caller: PeerId) {
        for starting in self.starting.values_mut() {
            starting.queued.retain(|queued| queued.from != caller);
            starting.waiters.retain(|waiting| waiting.from != caller);
        }
    }

    /// The error of `name`'s last failed start while its back-off lasts
    /// (a start now would fail the same way, and a service that fails at
    /// once would otherwise be restarted for every call).
    fn backing_off(&self, name: &str, now: Instant) -> Option<ErrorReply> {
        let failure = self.failures.get(name).filter(|f| now < f.retry_at)?;
        let wait = failure
            .retry_at
            .saturating_duration_since(now)
            .as_secs_f64();
        Some(ErrorReply {
            message: format!(
                "{} (its last start failed; the bus tries again in {wait:.1} s)",
                failure.error.message
            ),
            ..failure.error.clone()
        })
    }

    /// Notes that `name`'s start failed with `error`; how long it is now
    /// backed off.
    fn note_failure(&mut self, name: &str, error: &ErrorReply, now: Instant) -> Duration {
        let in_a_row = self.failures.get(name).map_or(0, |f| f.in_a_row) + 1;
        let backoff = Failure::backoff(in_a_row);
        self.failures.insert(
            name.to_owned(),
            Failure {
                error: error.clone(),
                in_a_row,
                retry_at: now + backoff,
            },
        );
        backoff
    }

    /// Takes the start of `name` if it is `attempt` (or any, for `None`).
    fn take(&mut self, name: &str, attempt: Option<u64>) -> Option<Starting> {
        match self.starting.get(name) {
            Some(s) if attempt.is_none_or(|a| a == s.attempt) => self.starting.remove(name),
            _ => None,
        }
    }
}

impl State {
    /// Holds a call to the unowned activatable name it is for until the
    /// name is owned; the start to launch once the bus lock is released,
    /// unless one is under way. The caller must be allowed to send to the
    /// name, and the held call is charged to it (a pending call, its
    /// bytes) while it waits.
    pub(crate) fn queue_for_activation(
        &mut self,
        from: PeerId,
        call: Call,
        fds: Vec<OwnedFd>,
    ) -> Option<Launch> {
        let Destination::Name(name) = &call.destination else {
            return None;
        };
        let name = name.clone();
        let serial = call.serial;
        let refuse = |error: ErrorReply| ErrorReply {
            reply_to: Some(serial),
            ..error
        };
        let fields = MessageFields {
            kind: crate::policy::MessageType::MethodCall,
            path: &call.path,
            interface: &call.interface,
            member: &call.member,
        };
        if let Err(denied) = self.authorize_send_to_name(from, &name, fields) {
            self.send_error(from, refuse(denied));
            return None;
        }
        if let Some(failed) = self.activations.backing_off(&name, Instant::now()) {
            if !call.no_reply {
                self.send_error(from, refuse(failed));
            }
            return None;
        }
        let account = Arc::clone(self.peers.get(&from)?.outbox.account());
        let size = call.body.len() + call.member.len() + call.path.len() + call.interface.len();
        let charges = account
            .try_charge(Resource::PendingCalls, 1)
            .and_then(|calls| Ok([calls, account.try_charge(Resource::QueuedBytes, size)?]));
        let charges = match charges {
            Ok(charges) => charges,
            Err(quota) => {
                self.send_error(from, refuse(over_quota(quota)));
                return None;
            }
        };
        let launch = self.activations.begin(&name);
        debug!(caller = %from, name = %name, "call held until its service owns the name");
        if let Some(starting) = self.activations.starting.get_mut(&name) {
            starting.queued.push(Queued {
                from,
                call,
                fds,
                _charges: charges,
            });
        }
        launch
    }
}

impl Bus {
    /// The names a call can start, sorted.
    pub fn activatable_names(&self) -> Vec<String> {
        self.lock().activations.services.keys().cloned().collect()
    }

    /// Reads the service directories again; starts under way go on.
    ///
    /// When the set of files changed, D-Bus peers hear it as
    /// `ActivatableServicesChanged` (as from dbus-daemon 1.15).
    pub fn reload_services(&self) {
        let mut services =
            service_files::load(&self.settings.activation.directories, self.settings().kind);
        // A name the bus answers for itself is never started (polkitd's
        // own service file, say, where the bus is the authority).
        services.retain(|name, service| {
            let own = name == DRIVER_NAME
                || (self.settings().polkit_authority && name == authority::POLKIT_NAME);
            if own {
                info!(name = %name, file = %service.path.display(), "service file ignored: the bus provides this name itself");
            }
            !own
        });
        let count = services.len();
        let mut state = self.lock();
        let changed = state.activations.services != services;
        state.activations.services = services;
        // A service file may have been mended: its next call tries again.
        state.activations.failures.clear();
        if changed {
            state.emit_driver_signal("ActivatableServicesChanged", &[]);
        }
        drop(state);
        info!(services = count, "service files read");
    }

    /// Sets variables for every service started from now on (root and the
    /// bus's user only, as on dbus-daemon and dbus-broker).
    pub fn update_activation_environment(
        &self,
        peer: PeerId,
        variables: Vec<(String, String)>,
    ) -> Result<(), ErrorReply> {
        let mut state = self.lock();
        let trusted = state
            .peers
            .get(&peer)
            .is_some_and(|e| state.is_trusted(e.identity.uid));
        if !trusted {
            return Err(ErrorReply::broker(
                None,
                ErrorCode::AccessDenied,
                "only root and the bus's own user may change the activation environment",
            ));
        }
        for (key, _) in &variables {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(ErrorReply::broker(
                    None,
                    ErrorCode::InvalidArgs,
                    format!("{key:?} is not an environment variable name"),
                ));
            }
        }
        state.activations.environment.extend(variables);
        Ok(())
    }

    /// `StartServiceByName`: starts `name`'s service unless it is owned;
    /// `waiter` hears how the start ends.
    pub(crate) fn start_service(
        self: &Arc<Self>,
        peer: PeerId,
        name: &str,
        waiter: Waiter,
    ) -> Result<StartOutcome, ErrorReply> {
        let mut state = self.lock();
        if state.names.owner(name).is_some() {
            return Ok(StartOutcome::AlreadyRunning);
        }
        if !state.activations.provides(name) {
            return Err(not_activatable(name));
        }
        // Starting a service is calling it: whoever may not call the name
        // may not start what provides it.
        let fields = MessageFields {
            kind: crate::policy::MessageType::MethodCall,
            path: "",
            interface: "",
            member: "",
        };
        state.authorize_send_to_name(peer, name, fields)?;
        if let Some(failed) = state.activations.backing_off(name, Instant::now()) {
            return Err(failed);
        }
        // A waiting request is a pending call of its caller's user.
        let account = state
            .peers
            .get(&peer)
            .map(|p| Arc::clone(p.outbox.account()));
        let charge = account
            .ok_or_else(gone)?
            .try_charge(Resource::PendingCalls, 1)
            .map_err(over_quota)?;
        let launch = state.activations.begin(name);
        if let Some(starting) = state.activations.starting.get_mut(name) {
            starting.waiters.push(Waiting {
                from: peer,
                waiter,
                _charge: charge,
            });
        }
        drop(state);
        if let Some(launch) = launch {
            self.launch(launch);
        }
        Ok(StartOutcome::Starting)
    }

    /// Starts a service (outside the bus lock: spawning forks) and watches
    /// the start until the name is owned, the program exits, or time runs
    /// out.
    pub(crate) fn launch(self: &Arc<Self>, launch: Launch) {
        let Launch {
            name,
            attempt,
            service,
            environment,
        } = launch;
        let kind = self.settings().kind;
        let started = launch::start(
            &service,
            kind,
            &environment,
            &self.settings.activation.addresses,
            attempt,
        );
        let launched = match started {
            Ok(launched) => launched,
            Err(e) => {
                warn!(name = %name, file = %service.path.display(), error = %e, "activation failed");
                let code = match e {
                    LaunchError::Exec { .. } => errors::EXEC_FAILED,
                    _ => errors::FAILED_TO_SETUP,
                };
                let message = format!("cannot start the service providing {name}: {e}");
                return self.fail_start(&name, Some(attempt), code, message);
            }
        };
        let claimant = match &launched {
            Launched::Process { pidfs_id, .. } => Claimant::Process(*pidfs_id),
            Launched::Unit { unit, .. } => Claimant::Unit(unit.clone()),
        };
        match &claimant {
            Claimant::Process(id) => {
                info!(name = %name, program = %service.exec.first().map_or("", String::as_str), pidfs_id = id, "activating: service started")
            }
            Claimant::Unit(unit) => {
                info!(name = %name, unit = %unit, "activating: asked systemd to start the unit")
            }
            Claimant::Spawning => {}
        }
        if let Some(starting) = self.lock().activations.starting.get_mut(&name)
            && starting.attempt == attempt
        {
            starting.claimant = claimant;
        }
        let bus = Arc::clone(self);
        let timeout = self.settings.activation.timeout;
        tokio::spawn(async move { bus.watch_start(name, attempt, launched, timeout).await });
    }

    /// Fails a start that has not ended yet, after the program ended or the
    /// time ran out; then reaps the program if it is the broker's child.
    async fn watch_start(
        self: Arc<Self>,
        name: String,
        attempt: u64,
        launched: Launched,
        timeout: Duration,
    ) {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        match launched {
            Launched::Process {
                mut child, pidfd, ..
            } => {
                tokio::select! {
                    status = child.wait() => {
                        let (code, message) = match status {
                            Ok(status) => ended_early(&name, status),
                            Err(e) => (errors::SPAWN_FAILED, format!("cannot wait for the service providing {name}: {e}")),
                        };
                        self.fail_start(&name, Some(attempt), code, message);
                        return;
                    }
                    () = &mut deadline => self.time_out(&name, attempt),
                }
                // Kept until the reap, so the pidfs id stays this process's.
                let status = child.wait().await;
                drop(pidfd);
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                debug!(name = %name, status = %status, "activated service exited");
            }
            Launched::Unit {
                unit,
                mut manager,
                ends_with_service,
            } => {
                tokio::select! {
                    status = manager.wait() => {
                        let failed = !status.as_ref().is_ok_and(|s| s.success());
                        if ends_with_service || failed {
                            let message = match (&status, ends_with_service) {
                                (Ok(status), true) => format!(
                                    "{unit}, which provides {name}, ended ({status}) before it owned the name"
                                ),
                                _ => format!(
                                    "systemd could not start {unit}, which provides {name} (see systemctl status {unit})"
                                ),
                            };
                            let code = if ends_with_service { errors::CHILD_EXITED } else { errors::SPAWN_FAILED };
                            self.fail_start(&name, Some(attempt), code, message);
                            return;
                        }
                        deadline.await;
                        self.time_out(&name, attempt);
                    }
                    () = &mut deadline => {
                        self.time_out(&name, attempt);
                        // Reaped once the transient service ends.
                        let _ = manager.wait().await;
                    }
                }
            }
        }
    }

    fn time_out(&self, name: &str, attempt: u64) {
        let secs = self.settings.activation.timeout.as_secs_f64();
        let message = format!("the service providing {name} did not take the name within {secs} s");
        self.fail_start(name, Some(attempt), errors::TIMED_OUT, message);
    }

    /// Ends a start of `name` (that attempt, if it is still under way) with
    /// an error for every held call and waiter; the next call starts anew.
    fn fail_start(&self, name: &str, attempt: Option<u64>, code: &'static str, message: String) {
        let mut state = self.lock();
        let Some(starting) = state.activations.take(name, attempt) else {
            return;
        };
        let error = ErrorReply {
            name: Some(code.to_owned()),
            ..ErrorReply::broker(None, ErrorCode::Failed, message)
        };
        let backoff = state.activations.note_failure(name, &error, Instant::now());
        // Once per failed start: calls during the back-off start nothing.
        warn!(name = %name, error = code, reason = %error.message,
              retry_after_secs = backoff.as_secs_f64(), "activation failed");
        for waiting in starting.waiters {
            (waiting.waiter.0)(&state, Err(&error));
        }
        for queued in starting.queued {
            if !queued.call.no_reply {
                let error = ErrorReply {
                    reply_to: Some(queued.call.serial),
                    ..error.clone()
                };
                state.send_error(queued.from, error);
            }
        }
    }

    /// After `name` got an owner (under the bus lock, so no call to the
    /// name overtakes those held for it): ends its start, telling the
    /// waiters, and routes the held calls in the order they came.
    pub(crate) fn name_acquired(&self, state: &mut State, name: &str) {
        state.activations.failures.remove(name);
        let Some(starting) = state.activations.take(name, None) else {
            return;
        };
        info!(name = %name, calls = starting.queued.len(), "activated: the service owns its name");
        for waiting in starting.waiters {
            (waiting.waiter.0)(state, Ok(()));
        }
        for queued in starting.queued {
            // The name is owned now: routing holds nothing, starts nothing.
            let _ = self.route_call_in(state, queued.from, queued.call, queued.fds);
        }
    }
}

/// Why a program that was started exited before it owned its name.
fn ended_early(name: &str, status: std::process::ExitStatus) -> (&'static str, String) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (
            errors::CHILD_EXITED,
            format!(
                "the service providing {name} exited with status {code} before it owned the name"
            ),
        ),
        (None, Some(signal)) => (
            errors::CHILD_SIGNALED,
            format!(
                "the service providing {name} was killed by signal {signal} before it owned the name"
            ),
        ),
        (None, None) => (
            errors::CHILD_EXITED,
            format!("the service providing {name} ended before it owned the name"),
        ),
    }
}

/// The error for a name no service file provides.
pub(crate) fn not_activatable(name: &str) -> ErrorReply {
    ErrorReply::broker(
        None,
        ErrorCode::NoSuchName,
        format!("The name {name} was not provided by any .service files"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activations_with(name: &str) -> Activations {
        let mut activations = Activations::default();
        let service = ServiceFile {
            name: name.to_owned(),
            exec: vec!["/bin/true".to_owned()],
            user: None,
            systemd_service: None,
            path: PathBuf::from("/x.service"),
        };
        activations.services.insert(name.to_owned(), service);
        activations
    }

    fn process(pidfs_id: u64, unit: Option<&str>) -> ProcessIdentity {
        ProcessIdentity {
            pidfs_id: Some(pidfs_id),
            unit: unit.map(str::to_owned),
            ..ProcessIdentity::default()
        }
    }

    #[test]
    fn a_failed_start_is_not_tried_again_until_its_backoff_ends() {
        let mut activations = activations_with("org.example.A");
        let error = ErrorReply::broker(None, ErrorCode::Failed, "it exited with status 1");
        let start = Instant::now();
        assert!(activations.backing_off("org.example.A", start).is_none());
        assert_eq!(
            activations.note_failure("org.example.A", &error, start),
            FIRST_BACKOFF
        );
        let held = activations.backing_off("org.example.A", start).unwrap();
        assert!(
            held.message
                .starts_with("it exited with status 1 (its last start failed"),
            "{}",
            held.message
        );
        assert!(
            activations
                .backing_off("org.example.A", start + FIRST_BACKOFF)
                .is_none()
        );
        // Each failure in a row doubles the wait, up to the most.
        let mut backoff = FIRST_BACKOFF;
        for _ in 0..10 {
            backoff = activations.note_failure("org.example.A", &error, start);
        }
        assert_eq!(backoff, MAX_BACKOFF);
        assert!(activations.backing_off("org.example.B", start).is_none());
    }

    #[test]
    fn only_the_started_process_or_unit_may_claim_a_name_being_activated() {
        let mut activations = activations_with("org.example.A");
        let anyone = process(7, None);
        assert_eq!(
            activations.refuses_claim("org.example.A", &anyone),
            None,
            "not being activated"
        );

        let launch = activations.begin("org.example.A").expect("a start");
        assert!(
            activations.begin("org.example.A").is_none(),
            "one start at a time"
        );
        assert!(
            activations
                .refuses_claim("org.example.A", &anyone)
                .is_some(),
            "while spawning nobody may"
        );

        let starting = activations
            .starting
            .get_mut("org.example.A")
            .expect("under way");
        starting.claimant = Claimant::Process(42);
        assert!(
            activations
                .refuses_claim("org.example.A", &anyone)
                .is_some()
        );
        assert_eq!(
            activations.refuses_claim("org.example.A", &process(42, None)),
            None
        );

        let starting = activations
            .starting
            .get_mut("org.example.A")
            .expect("under way");
        starting.claimant = Claimant::Unit("a.service".to_owned());
        assert!(
            activations
                .refuses_claim("org.example.A", &process(42, None))
                .is_some()
        );
        assert_eq!(
            activations.refuses_claim("org.example.A", &process(9, Some("a.service"))),
            None
        );

        assert!(
            activations
                .take("org.example.A", Some(launch.attempt + 1))
                .is_none(),
            "another attempt's end"
        );
        assert!(
            activations
                .take("org.example.A", Some(launch.attempt))
                .is_some()
        );
        assert_eq!(
            activations.refuses_claim("org.example.A", &anyone),
            None,
            "ended: free again"
        );
        assert!(
            activations
                .begin("org.example.A")
                .is_some_and(|l| l.attempt > launch.attempt)
        );
        assert!(activations.begin("org.example.Unknown").is_none());
    }

    #[test]
    fn a_caller_that_leaves_takes_its_held_calls_and_their_charges_with_it() {
        use crate::bus::quotas::{Accounts, UidLimits};
        let mut activations = activations_with("org.example.A");
        activations.begin("org.example.A").expect("a start");
        let accounts = Accounts::new(UidLimits::default());
        let account = accounts.of(1000);
        let call = |serial| Call {
            serial,
            destination: Destination::Name("org.example.A".into()),
            path: "/".into(),
            interface: "org.example.A".into(),
            member: "M".into(),
            signature: String::new(),
            body: vec![0; 100],
            no_reply: false,
            timeout_ms: None,
            no_auto_start: false,
        };
        for (from, serial) in [(PeerId(1), 1), (PeerId(2), 2), (PeerId(1), 3)] {
            let charges = [
                account.try_charge(Resource::PendingCalls, 1).expect("room"),
                account
                    .try_charge(Resource::QueuedBytes, 100)
                    .expect("room"),
            ];
            let queued = Queued {
                from,
                call: call(serial),
                fds: Vec::new(),
                _charges: charges,
            };
            activations
                .starting
                .get_mut("org.example.A")
                .expect("under way")
                .queued
                .push(queued);
        }
        assert_eq!(account.used(Resource::PendingCalls), 3);
        activations.forget_caller(PeerId(1));
        let left: Vec<u64> = activations.starting["org.example.A"]
            .queued
            .iter()
            .map(|q| q.call.serial)
            .collect();
        assert_eq!(left, [2], "only the other caller's call waits");
        assert_eq!(
            account.used(Resource::PendingCalls),
            1,
            "the charges went with the calls"
        );
        assert_eq!(account.used(Resource::QueuedBytes), 100);
    }
}
