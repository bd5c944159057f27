//! The polkit authority's decisions: "may this subject do action A?",
//! where the subject is named the ways polkit's clients name it (a bus
//! name, a process by pidfd, a process by pid and start time), decided by
//! the same policy rules and the same verified identities as the native
//! `CheckAuthorization` and `pidbusctl authorize`.
//!
//! How a subject becomes an identity:
//! - a bus name: the identity the broker verified for that connection;
//! - a process by pidfd: if a connected peer is that process (same pidfs
//!   id), the peer's verified identity; else the process's identity read
//!   through the pidfd now ([`crate::os::identity::capture_process`]);
//! - a process by pid and start time (what polkit before 124 sends): a
//!   pidfd opened for the pid and kept only if the process behind it has
//!   that start time and is still alive after the check, then as above.
//!   This is polkit's own check, and logged as the weaker form.

use std::os::fd::{AsFd, OwnedFd};

use pidbus_protocol::{Destination, ErrorCode, ErrorReply, PeerId, ProcessIdentity};
use tracing::info;

use crate::bus::{Bus, BusObject, State};
use crate::log_limit::{AUTHORIZED, DENIALS, WEAK_SUBJECTS};
use crate::os::identity::{self, IdentityError};
use crate::policy::{ActionKind, AppAction, LiveProcess, Request, log_denial};

/// The well-known name of the polkit authority.
pub const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";
/// The authority's object.
pub const AUTHORITY_PATH: &str = "/org/freedesktop/PolicyKit1/Authority";
/// The authority's interface.
pub const AUTHORITY_INTERFACE: &str = "org.freedesktop.PolicyKit1.Authority";

impl State {
    /// Tells polkit clients that the answers may have changed (polkit's
    /// `Changed` signal), after a policy reload.
    pub(crate) fn announce_authority_changed(&self) {
        let object = BusObject {
            path: AUTHORITY_PATH,
            interface: AUTHORITY_INTERFACE,
            names: &[POLKIT_NAME],
        };
        self.emit_bus_signal(object, "Changed", &[]);
    }
}

/// Whom a check is about.
#[derive(Debug)]
pub enum Subject {
    /// polkit's `system-bus-name`: a connection on this bus.
    BusName(String),
    /// polkit's `unix-process`.
    Process {
        /// The process's pidfd (polkit ≥ 124 sends one).
        pidfd: Option<OwnedFd>,
        /// Its pid, as the asker sees it.
        pid: Option<u32>,
        /// Its start time (clock ticks after boot), as the asker read it.
        start_time: Option<u64>,
        /// The uid the asker says it runs as (`-1`: unknown).
        uid: Option<i64>,
    },
}

/// A check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Whether the subject may.
    pub allowed: bool,
    /// What decided: the rule (`file:line`), the default, or why the
    /// subject could not be decided for.
    pub rule: String,
    /// The subject as the broker resolved it, for the answer's details.
    pub subject: String,
}

/// What a subject resolved to.
enum Resolved {
    /// A connected peer.
    Peer(PeerId),
    /// A process that is not a peer, with its identity read now.
    Process(Box<identity::VerifiedPeer>),
    /// A process that is gone: nothing may be decided for it.
    Gone(String),
}

impl Bus {
    /// The declared application actions (polkit's `EnumerateActions`).
    pub fn actions(&self) -> Vec<AppAction> {
        self.lock().policy.actions().to_vec()
    }

    /// Answers "may `subject` do `action`?" for `asker`. A subject of
    /// another user than the asker's may only be asked about by root or
    /// the broker's user, as polkit allows only trusted callers to.
    pub fn check_subject(
        &self,
        asker: PeerId,
        action: &str,
        subject: Subject,
    ) -> Result<Checked, ErrorReply> {
        pidbus_protocol::names::validate_well_known_name(action).map_err(|e| {
            ErrorReply::broker(
                None,
                ErrorCode::InvalidArgs,
                format!("invalid action id {action:?}: {e}"),
            )
        })?;
        let (resolved, claimed_uid) = self.resolve_subject(asker, subject)?;
        let state = self.lock();
        let asker_uid = state.peers.get(&asker).map_or(u32::MAX, |e| e.identity.uid);
        let gone = |rule: String, subject: String| {
            if let Some(admitted) = DENIALS.admit(asker_uid) {
                info!(asker = %asker, action, subject = %subject, reason = %rule,
                      suppressed = admitted.suppressed, "authorization denied");
            }
            Checked {
                allowed: false,
                rule,
                subject,
            }
        };
        let (described, identity, live) = match &resolved {
            Resolved::Gone(why) => return Ok(gone(why.clone(), "the subject process".to_owned())),
            Resolved::Peer(peer) => match state.peers.get(peer) {
                Some(entry) => (format!("peer {peer}"), &*entry.identity, entry.live()),
                None => {
                    let why = "the subject has left the bus".to_owned();
                    return Ok(gone(why, format!("peer {peer}")));
                }
            },
            Resolved::Process(process) => (
                describe_process(&process.identity),
                &process.identity,
                LiveProcess {
                    pid: process.identity.pid,
                    pidfd: process.pidfd.as_fd(),
                },
            ),
        };
        state.may_ask_about(asker, identity)?;
        if let Some(claimed) = claimed_uid.filter(|&uid| uid >= 0)
            && claimed != i64::from(identity.uid)
        {
            let why = format!(
                "the subject was said to run as uid {claimed}, but runs as uid {}",
                identity.uid
            );
            return Ok(gone(why, described));
        }
        let names = [action];
        let request = Request {
            names: &names,
            ..Request::new(ActionKind::Action, identity)
        }
        .live(live);
        let verdict = state.policy.decide(&request, state.broker_uid);
        let subject_peer = match resolved {
            Resolved::Peer(peer) => Some(peer),
            _ => None,
        };
        if verdict.allowed() {
            if let Some(admitted) = AUTHORIZED.admit(asker_uid) {
                info!(asker = %asker, subject = %described, action, rule = %verdict.origin,
                      suppressed = admitted.suppressed, "authorized");
            }
        } else {
            log_denial(
                subject_peer,
                &request,
                &verdict,
                format_args!("asked by {asker} through the polkit authority"),
            );
        }
        Ok(Checked {
            allowed: verdict.allowed(),
            rule: verdict.origin.to_string(),
            subject: described,
        })
    }

    /// Finds the peer or process `subject` names, and the uid the asker
    /// claimed for it.
    fn resolve_subject(
        &self,
        asker: PeerId,
        subject: Subject,
    ) -> Result<(Resolved, Option<i64>), ErrorReply> {
        let (pidfd, pid, start_time, uid) = match subject {
            Subject::BusName(name) => {
                let destination: Destination = name.parse().map_err(|e| {
                    ErrorReply::broker(None, ErrorCode::InvalidArgs, format!("{name:?}: {e}"))
                })?;
                let peer = self.lock().resolve(&destination).ok_or_else(|| {
                    ErrorReply::broker(
                        None,
                        ErrorCode::NoSuchName,
                        format!("no connection named {name} is on the bus"),
                    )
                })?;
                return Ok((Resolved::Peer(peer), None));
            }
            Subject::Process {
                pidfd,
                pid,
                start_time,
                uid,
            } => (pidfd, pid, start_time, uid),
        };
        let pidfd = match pidfd {
            Some(pidfd) => check_pidfd(pidfd, pid)?,
            None => {
                let pid = pid.ok_or_else(|| {
                    ErrorReply::broker(
                        None,
                        ErrorCode::InvalidArgs,
                        "a unix-process subject needs a pidfd or a pid",
                    )
                })?;
                let asker_uid = self.lock().peers.get(&asker).map(|e| e.identity.uid);
                if let Some(admitted) = asker_uid.and_then(|uid| WEAK_SUBJECTS.admit(uid)) {
                    info!(asker = %asker, pid, suppressed = admitted.suppressed,
                          "polkit subject given by pid and start time, the weaker form (a pidfd names a process race-free)");
                }
                match self.pidfd_by_pid(asker, pid, start_time)? {
                    Ok(pidfd) => pidfd,
                    Err(why) => return Ok((Resolved::Gone(why), uid)),
                }
            }
        };
        let Ok(Some(id)) = pidbus_protocol::pidfd::pidfs_id(pidfd.as_fd()) else {
            return Err(ErrorReply::broker(
                None,
                ErrorCode::Unavailable,
                "this kernel gives pidfds no pidfs id: the process cannot be told apart from a later one",
            ));
        };
        if let Some(peer) = self.peer_with_pidfs_id(id) {
            return Ok((Resolved::Peer(peer), uid));
        }
        // Before reading anything of another user's process.
        match pidbus_protocol::pidfd_real_ids(pidfd.as_fd()) {
            Ok(Some((owner, _))) => self.lock().may_ask_about_uid(asker, owner)?,
            _ => {
                let why = "the subject process has exited".to_owned();
                return Ok((Resolved::Gone(why), uid));
            }
        }
        let settings = self.settings();
        match identity::capture_process(pidfd, &settings.boot_id, &settings.namespaces) {
            Ok(process) => Ok((Resolved::Process(Box::new(process)), uid)),
            Err(IdentityError::ProcessExited { .. }) => Ok((
                Resolved::Gone("the subject process has exited".to_owned()),
                uid,
            )),
            Err(e) => Err(ErrorReply::broker(
                None,
                ErrorCode::Unavailable,
                format!("cannot read the subject process: {e}"),
            )),
        }
    }

    /// The connected peer whose process has pidfs id `id`.
    fn peer_with_pidfs_id(&self, id: u64) -> Option<PeerId> {
        let state = self.lock();
        state
            .peers
            .iter()
            .find(|(_, entry)| entry.identity.pidfs_id == Some(id))
            .map(|(peer, _)| *peer)
    }
}

fn describe_process(identity: &ProcessIdentity) -> String {
    match identity.pidfs_id {
        Some(id) => format!("process {} (pidfs id {id})", identity.pid),
        None => format!("process {}", identity.pid),
    }
}

/// A descriptor a client passed as a subject's pidfd: it must be one, and
/// name the pid the client gave with it, if any.
fn check_pidfd(pidfd: OwnedFd, pid: Option<u32>) -> Result<OwnedFd, ErrorReply> {
    let invalid = |message: String| ErrorReply::broker(None, ErrorCode::InvalidArgs, message);
    let state = pidbus_protocol::pidfd::pidfd_state(pidfd.as_fd())
        .map_err(|e| invalid(format!("the subject's pidfd is not a pidfd: {e}")))?;
    if let (Some(given), pidbus_protocol::pidfd::PidfdState::Visible(actual)) = (pid, state)
        && given != 0
        && given != actual
    {
        return Err(invalid(format!(
            "the subject's pidfd is process {actual}, not the pid {given} given with it"
        )));
    }
    Ok(pidfd)
}

impl Bus {
    /// A pidfd for `pid`, kept only if its process has `start_time` (when
    /// given) and is still alive once that was read, so it is the process
    /// the asker meant; else (`Ok(Err)`) why not.
    ///
    /// An asker who may ask only about its own user's processes learns
    /// nothing of anyone else's: a pid that names no process and a pid of
    /// another user's process get the same refusal, given before any start
    /// time is read, and no answer says what a start time is.
    fn pidfd_by_pid(
        &self,
        asker: PeerId,
        pid: u32,
        start_time: Option<u64>,
    ) -> Result<Result<OwnedFd, String>, ErrorReply> {
        let gone = || format!("process {pid} has exited");
        let trusted = self.is_trusted_peer(asker);
        let pidfd = match pidbus_protocol::pidfd::pidfd_open(pid) {
            Ok(pidfd) => pidfd,
            Err(_) if trusted => return Ok(Err(gone())),
            Err(_) => return Err(self.lock().refuse_unknown_process(asker)),
        };
        if !trusted {
            match pidbus_protocol::pidfd_real_ids(pidfd.as_fd()) {
                Ok(Some((owner, _))) => self.lock().may_ask_about_uid(asker, owner)?,
                _ => return Err(self.lock().refuse_unknown_process(asker)),
            }
        }
        if let Some(expected) = start_time.filter(|&t| t != 0) {
            let actual = identity::start_time_of(pid).map_err(|_| gone());
            match actual {
                Ok(Some(actual)) if actual == expected => {}
                Ok(_) => {
                    return Ok(Err(format!(
                        "process {pid} is not the one meant: it did not start at {expected}"
                    )));
                }
                Err(why) => return Ok(Err(why)),
            }
        }
        if !matches!(pidbus_protocol::pidfd::has_exited(pidfd.as_fd()), Ok(false)) {
            return Ok(Err(gone()));
        }
        Ok(Ok(pidfd))
    }
}
