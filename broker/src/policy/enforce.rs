//! Applying the policy on the bus: one place decides, logs every denial
//! with the subject's identity, the action and the deciding rule, and
//! phrases the error the peer gets. Also answers services'
//! `CheckAuthorization` and reloads the policy.

use std::fmt;
use std::sync::Arc;

use crate::os::identity::Shown;
use pidbus_protocol::{
    AuthSubject, Authorization, BrokerReply, ErrorCode, ErrorReply, PeerId, ProcessIdentity,
};
use tracing::{info, warn};

use super::{ActionKind, PolicyError, Request, Verdict};
use crate::bus::{Bus, State};
use crate::log_limit::{DENIALS, OTHER_USERS_PROCESSES};

/// How a request's object appears in log lines.
fn describe(request: &Request<'_>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !request.names.is_empty() {
        parts.push(format!("name={}", request.names.join(",")));
    }
    for (key, value) in [
        ("path", request.path),
        ("interface", request.interface),
        ("member", request.member),
    ] {
        if let Some(value) = value {
            parts.push(format!("{key}={value}"));
        }
    }
    if let Some(target) = request.target {
        parts.push(format!("target_uid={}", target.uid));
    }
    parts.join(" ")
}

/// Logs a denial: who (verified identity), what, and the deciding rule.
pub(crate) fn log_denial(
    peer: Option<PeerId>,
    request: &Request<'_>,
    verdict: &Verdict,
    what: fmt::Arguments<'_>,
) {
    let who = request.subject;
    // A user can have itself denied as often as it likes.
    let Some(admitted) = DENIALS.admit(who.uid) else {
        return;
    };
    let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
    warn!(%peer, uid = who.uid, gid = who.gid, pid = who.pid, pidfs_id = %Shown(&who.pidfs_id),
          exe = %Shown(&who.exe), unit = %Shown(&who.unit), action = %request.kind, object = %describe(request),
          rule = %verdict.origin, suppressed = admitted.suppressed, "denied {}: {what}", request.kind);
}

/// The error a peer gets for a denied action.
fn denied_error(request: &Request<'_>, verdict: &Verdict, what: fmt::Arguments<'_>) -> ErrorReply {
    ErrorReply::broker(
        None,
        ErrorCode::AccessDenied,
        format!(
            "{what}: denied by the bus policy ({}; action {})",
            verdict.origin, request.kind
        ),
    )
}

impl State {
    /// Decides `request` by `peer`: `Err` (logged) when the policy denies.
    /// `what` is only formatted for a denial: this runs for every call and
    /// every signal delivery.
    pub(crate) fn authorize(
        &self,
        peer: Option<PeerId>,
        request: &Request<'_>,
        what: fmt::Arguments<'_>,
    ) -> Result<(), ErrorReply> {
        let verdict = self.policy.decide(request, self.broker_uid);
        if verdict.allowed() {
            return Ok(());
        }
        log_denial(peer, request, &verdict, what);
        Err(denied_error(request, &verdict, what))
    }

    /// The names a peer goes by in rules: the well-known names it owns.
    /// Unique ids are not names to rules (they change with every
    /// connection), so `name = "*"` means "owns some well-known name".
    pub(crate) fn names_of(&self, peer: PeerId) -> Vec<&str> {
        self.names.owned_by(peer).collect()
    }

    /// May `from` send this call or signal to `to` (`None`: a broadcast)?
    pub(crate) fn authorize_send(
        &self,
        from: PeerId,
        to: Option<PeerId>,
        message: MessageFields<'_>,
    ) -> Result<(), ErrorReply> {
        let to_names = to.map(|to| self.names_of(to)).unwrap_or_default();
        let what = format_args!("sending");
        self.authorize_transfer(ActionKind::Call, from, to, &to_names, message, what)
    }

    /// May `from` send this call to the well-known `name`, which nobody
    /// owns yet (a call that would start its service)?
    pub(crate) fn authorize_send_to_name(
        &self,
        from: PeerId,
        name: &str,
        message: MessageFields<'_>,
    ) -> Result<(), ErrorReply> {
        let what = format_args!("sending");
        self.authorize_transfer(ActionKind::Call, from, None, &[name], message, what)
    }

    /// May `to` receive this call or signal from `from`, which owns
    /// `from_names` ([`names_of`](Self::names_of); a signal's fan-out
    /// computes them once for all its recipients)?
    pub(crate) fn authorize_receive(
        &self,
        to: PeerId,
        from: PeerId,
        from_names: &[&str],
        message: MessageFields<'_>,
    ) -> Result<(), ErrorReply> {
        let what = format_args!("not delivered: {to} may not receive it");
        self.authorize_transfer(
            ActionKind::Receive,
            to,
            Some(from),
            from_names,
            message,
            what,
        )
    }

    /// `subject` acts on a message whose other end is `other`, owning
    /// `other_names`.
    fn authorize_transfer(
        &self,
        kind: ActionKind,
        subject: PeerId,
        other: Option<PeerId>,
        other_names: &[&str],
        message: MessageFields<'_>,
        what: fmt::Arguments<'_>,
    ) -> Result<(), ErrorReply> {
        let Some(entry) = self.peers.get(&subject) else {
            return Ok(());
        };
        let target = other.and_then(|o| self.peers.get(&o)).map(|e| &*e.identity);
        let request = Request {
            names: other_names,
            path: Some(message.path),
            interface: Some(message.interface),
            member: Some(message.member),
            message: Some(message.kind),
            target,
            ..Request::new(kind, &entry.identity)
        }
        .live(entry.live());
        self.authorize(Some(subject), &request, what)
    }
}

impl State {
    /// May `asker` ask the policy about `subject`, a peer it names (not the
    /// caller of its own call)? As polkit: only about a process of its own
    /// user, unless it is root or the broker's user; otherwise the answer
    /// (and its deciding rule) would tell one user about another's rights.
    pub(crate) fn may_ask_about(
        &self,
        asker: PeerId,
        subject: &ProcessIdentity,
    ) -> Result<(), ErrorReply> {
        self.may_ask_about_uid(asker, subject.uid)
    }

    /// [`may_ask_about`](Self::may_ask_about) for a subject running as
    /// `subject_uid`, before anything else of it is read.
    pub(crate) fn may_ask_about_uid(
        &self,
        asker: PeerId,
        subject_uid: u32,
    ) -> Result<(), ErrorReply> {
        let asker_uid = self.peers.get(&asker).map(|e| e.identity.uid);
        let trusted = asker_uid.is_some_and(|uid| self.is_trusted(uid));
        if trusted || asker_uid == Some(subject_uid) {
            return Ok(());
        }
        Err(self.refuse_other_users_process(asker, asker_uid, Some(subject_uid)))
    }

    /// The refusal of a subject process the asker did not name well (no
    /// such process): the same as for another user's process, so an asker
    /// cannot tell the two apart.
    pub(crate) fn refuse_unknown_process(&self, asker: PeerId) -> ErrorReply {
        let asker_uid = self.peers.get(&asker).map(|e| e.identity.uid);
        self.refuse_other_users_process(asker, asker_uid, None)
    }

    fn refuse_other_users_process(
        &self,
        asker: PeerId,
        asker_uid: Option<u32>,
        subject_uid: Option<u32>,
    ) -> ErrorReply {
        if let Some(admitted) = asker_uid.and_then(|uid| OTHER_USERS_PROCESSES.admit(uid)) {
            warn!(asker = %asker, asker_uid = %Shown(&asker_uid), subject_uid = %Shown(&subject_uid),
                  rule = "built-in: authorization of another user's process",
                  suppressed = admitted.suppressed,
                  "denied CheckAuthorization about another user's process (or no process)");
        }
        ErrorReply::broker(
            None,
            ErrorCode::AccessDenied,
            "only root, the broker's user or the subject's own user may check the \
             authorization of another user's process; a service asks about the sender \
             of a call it is handling instead (CheckAuthorization with the call's serial)",
        )
    }
}

/// The fields of a call or signal that rules match.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageFields<'a> {
    /// A method call or a signal.
    pub kind: super::MessageType,
    /// Object path.
    pub path: &'a str,
    /// Interface.
    pub interface: &'a str,
    /// Member.
    pub member: &'a str,
}

impl Bus {
    /// May this process connect? Decided before the peer joins.
    pub fn authorize_connect(
        &self,
        identity: &ProcessIdentity,
        pidfd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), ErrorReply> {
        let process = crate::policy::LiveProcess {
            pid: identity.pid,
            pidfd,
        };
        self.lock().authorize(
            None,
            &Request::new(ActionKind::Connect, identity).live(process),
            format_args!("connection refused"),
        )
    }

    /// Answers a service's `CheckAuthorization`.
    pub fn check_authorization(
        &self,
        asker: PeerId,
        action: &str,
        subject: AuthSubject,
    ) -> Result<BrokerReply, ErrorReply> {
        pidbus_protocol::names::validate_well_known_name(action).map_err(|e| {
            ErrorReply::broker(
                None,
                ErrorCode::InvalidName,
                format!("invalid action id {action:?}: {e}"),
            )
        })?;
        let state = self.lock();
        let subject_peer = match subject {
            AuthSubject::Peer { peer } => Some(peer),
            AuthSubject::CallerOf { call_id } => state.calls.caller_of(call_id, asker),
            AuthSubject::Call { caller, serial } => state
                .calls
                .id_by_serial(asker, caller, serial)
                .map(|_| caller),
        };
        let Some(entry) = subject_peer.and_then(|p| Some((p, state.peers.get(&p)?))) else {
            let subject = match subject {
                AuthSubject::Peer { peer } => format!("peer {peer}"),
                AuthSubject::CallerOf { call_id } => format!("the caller of call {call_id}"),
                AuthSubject::Call { caller, serial } => format!("{caller}'s call {serial}"),
            };
            info!(asker = %asker, action, %subject, "authorization denied: the subject has left the bus");
            return Ok(BrokerReply::Authorization(Authorization {
                allowed: false,
                rule: "the subject is not on the bus (it left, or the call is no longer pending)"
                    .into(),
                subject: None,
            }));
        };
        let (peer, entry) = entry;
        if let AuthSubject::Peer { .. } = subject {
            state.may_ask_about(asker, &entry.identity)?;
        }
        let names = [action];
        let request = Request {
            names: &names,
            ..Request::new(ActionKind::Action, &entry.identity)
        }
        .live(entry.live());
        let verdict = state.policy.decide(&request, state.broker_uid);
        if verdict.allowed() {
            info!(asker = %asker, subject = %peer, action, rule = %verdict.origin, "authorized");
        } else {
            log_denial(
                Some(peer),
                &request,
                &verdict,
                format_args!("asked by {asker}"),
            );
        }
        Ok(BrokerReply::Authorization(Authorization {
            allowed: verdict.allowed(),
            rule: verdict.origin.to_string(),
            subject: Some(peer),
        }))
    }

    /// Re-reads the policy from its source and swaps it in atomically; an
    /// invalid policy leaves the old one in force. Owners whose names the
    /// new policy forbids lose them (and the next in each queue that may
    /// own it gets it); other established state is re-checked only when
    /// its action happens again.
    ///
    /// The service manager sees `RELOADING=1`, then `READY=1` with a status
    /// saying how the reload went.
    pub fn reload_policy(&self) -> Result<(), PolicyError> {
        crate::os::systemd::notify_reloading();
        let source = &self.settings().policy;
        let policy = match source.load() {
            Ok(policy) => policy,
            Err(e) => {
                warn!(source = %source, error = %e, "policy reload refused; the old policy stays");
                crate::os::systemd::notify_ready(&format!(
                    "policy reload refused, the old policy stays: {e}"
                ));
                return Err(e);
            }
        };
        let mut state = self.lock();
        state.policy = Arc::new(policy);
        state.drop_forbidden_names();
        if self.settings().polkit_authority {
            state.announce_authority_changed();
        }
        let rules = state.policy.rules().len();
        drop(state);
        info!(source = %source, rules, "policy reloaded");
        crate::os::systemd::notify_ready(&format!("policy reloaded: {rules} rules from {source}"));
        Ok(())
    }

    /// `ReloadPolicy` from a peer: root only.
    pub fn reload_policy_for(&self, peer: PeerId) -> Result<BrokerReply, ErrorReply> {
        let uid = self.lock().peers.get(&peer).map(|e| e.identity.uid);
        if uid != Some(0) {
            warn!(peer = %peer, uid = %Shown(&uid), rule = "built-in: reloading the policy is root-only",
                  "denied ReloadPolicy");
            return Err(ErrorReply::broker(
                None,
                ErrorCode::AccessDenied,
                "only root may reload the policy",
            ));
        }
        self.reload_policy()
            .map(|()| {
                // The one reload request re-reads everything the broker
                // reads at start, as SIGHUP does.
                self.reload_services();
                BrokerReply::Done
            })
            .map_err(|e| {
                ErrorReply::broker(
                    None,
                    ErrorCode::Failed,
                    format!("the new policy is invalid, the old one stays: {e}"),
                )
            })
    }
}

impl State {
    /// After a reload: every name owned (or queued for) by a peer the
    /// policy no longer lets own it is released.
    fn drop_forbidden_names(&mut self) {
        let mut forbidden = Vec::new();
        for (peer, entry) in &self.peers {
            for name in self.names.claimed_by(*peer) {
                let names = [name];
                let request = Request {
                    names: &names,
                    ..Request::new(ActionKind::Own, &entry.identity)
                }
                .live(entry.live());
                let verdict = self.policy.decide(&request, self.broker_uid);
                if !verdict.allowed() {
                    let what = format_args!("name released on reload");
                    log_denial(Some(*peer), &request, &verdict, what);
                    forbidden.push((*peer, name.to_owned()));
                }
            }
        }
        for (peer, name) in forbidden {
            let before = self.names.count_of(peer);
            let (_, change) = self.names.release(&name, peer);
            if let Some(change) = change {
                self.announce(&change);
            }
            self.settle_names(peer, before);
        }
    }
}
