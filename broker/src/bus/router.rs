//! Routing: method calls to their callee, answers back to their caller
//! (only from the callee of an outstanding call, once), call timeouts, and
//! signals to every peer whose match rule fits.

use crate::bus::ids::{IdMap, IdSet};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidbus_protocol::match_rule::{MessageKind, SignalFields};
use pidbus_protocol::{
    Call, Destination, ErrorCode, ErrorReply, IncomingCall, Message, PeerId, Return, Signal, names,
};
use tracing::debug;

use crate::bus::activation::Launch;
use crate::bus::match_index::SignalKeys;
use crate::bus::outbox::{EncodeError, Outgoing, QueueFull, SharedEncodings};
use crate::bus::over_quota;
use crate::bus::quotas::{Charge, Resource};
use crate::bus::{Bus, Leaving, State};
use crate::policy::MessageFields;

/// Longest timeout a call may ask for; longer requests are clamped.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A call delivered to its callee and not yet answered.
#[derive(Debug)]
pub(crate) struct PendingCall {
    caller: PeerId,
    serial: u64,
    callee: PeerId,
    deadline: Instant,
    timeout: Duration,
    /// The caller's user's quota of pending calls, given back with the call.
    _charge: Option<Charge>,
}

/// Every outstanding call, by the call id the callee was given.
#[derive(Debug, Default)]
pub(crate) struct PendingCalls {
    last_id: u64,
    calls: IdMap<u64, PendingCall>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// Call ids each peer takes part in (as caller or callee), so a leaving
    /// peer's calls are found without a scan.
    involving: IdMap<PeerId, IdSet<u64>>,
    /// Outstanding calls per caller, for the per-peer limit.
    outstanding: IdMap<PeerId, usize>,
    /// Call ids by (callee, caller, caller's serial): how a D-Bus callee's
    /// answer, which names the caller and its serial, finds its call.
    by_serial: HashMap<(PeerId, PeerId, u64), u64>,
    /// When the timeouts task wakes next (`None`: it waits to be told).
    armed: Option<Instant>,
}

impl PendingCalls {
    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// Tracks call `id`; true if the timeouts task must be told: its
    /// deadline comes before the one the task sleeps until. (A call after
    /// an answered one is due later than the task's wake-up, which
    /// then finds it: no wake-up per call.)
    fn insert(&mut self, id: u64, call: PendingCall) -> bool {
        let earliest = self.armed.is_none_or(|armed| call.deadline < armed);
        if earliest {
            self.armed = Some(call.deadline);
        }
        self.deadlines.insert((call.deadline, id));
        for peer in [call.caller, call.callee] {
            self.involving.entry(peer).or_default().insert(id);
        }
        *self.outstanding.entry(call.caller).or_default() += 1;
        // A caller reusing a serial still waiting at the same callee keeps
        // the first call findable; the second is answered by call id only.
        self.by_serial
            .entry((call.callee, call.caller, call.serial))
            .or_insert(id);
        self.calls.insert(id, call);
        earliest
    }

    fn remove(&mut self, id: u64) -> Option<PendingCall> {
        let call = self.calls.remove(&id)?;
        self.deadlines.remove(&(call.deadline, id));
        let key = (call.callee, call.caller, call.serial);
        if self.by_serial.get(&key) == Some(&id) {
            self.by_serial.remove(&key);
        }
        // An emptied set stays until its peer leaves (`take_involving`):
        // dropping it made every next call allocate and grow a new one.
        for peer in [call.caller, call.callee] {
            if let Some(ids) = self.involving.get_mut(&peer) {
                ids.remove(&id);
            }
        }
        if let Some(n) = self.outstanding.get_mut(&call.caller) {
            *n -= 1;
            if *n == 0 {
                self.outstanding.remove(&call.caller);
            }
        }
        Some(call)
    }

    /// Removes and returns call `id` if `callee` is the one it was
    /// delivered to; a reply from anyone else leaves it outstanding.
    fn take_answered(&mut self, id: u64, callee: PeerId) -> Option<PendingCall> {
        if self.calls.get(&id)?.callee != callee {
            return None;
        }
        self.remove(id)
    }

    /// The id of the call `caller` made with `serial` to `callee`, if it
    /// waits for an answer.
    pub(crate) fn id_by_serial(&self, callee: PeerId, caller: PeerId, serial: u64) -> Option<u64> {
        self.by_serial.get(&(callee, caller, serial)).copied()
    }

    fn outstanding_of(&self, caller: PeerId) -> usize {
        self.outstanding.get(&caller).copied().unwrap_or(0)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// The timeouts task's next wake-up: the earliest deadline.
    fn arm(&mut self) -> Option<Instant> {
        self.armed = self.next_deadline();
        self.armed
    }

    fn take_expired(&mut self, now: Instant) -> Vec<PendingCall> {
        let due: Vec<u64> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| *id)
            .collect();
        due.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    fn take_involving(&mut self, peer: PeerId) -> Vec<PendingCall> {
        let ids = self.involving.remove(&peer).unwrap_or_default();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// The caller of pending call `call_id`, if `callee` is its callee.
    pub(crate) fn caller_of(&self, call_id: u64, callee: PeerId) -> Option<PeerId> {
        self.calls
            .get(&call_id)
            .filter(|call| call.callee == callee)
            .map(|call| call.caller)
    }

    /// Number of outstanding calls.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }
}

impl Bus {
    /// Routes a call from `from` to its destination.
    ///
    /// A call to an unowned name that a service file provides starts that
    /// service and waits for it (unless the caller said `no_auto_start`).
    pub fn route_call(self: &Arc<Self>, from: PeerId, call: Call, fds: Vec<OwnedFd>) {
        if let Err(e) = validate_call(&call) {
            let error =
                ErrorReply::broker(Some(call.serial), ErrorCode::InvalidName, e.to_string());
            return self.send_error(from, error);
        }
        let mut state = self.lock();
        let launch = self.route_call_in(&mut state, from, call, fds);
        drop(state);
        if let Some(launch) = launch {
            self.launch(launch);
        }
    }

    /// Routes a validated call under the bus lock; a service to start once
    /// the lock is released, if the call is held for one.
    pub(crate) fn route_call_in(
        &self,
        state: &mut State,
        from: PeerId,
        call: Call,
        fds: Vec<OwnedFd>,
    ) -> Option<Launch> {
        if let Some(callee) = state.resolve(&call.destination) {
            self.deliver_call(state, from, callee, call, fds);
            return None;
        }
        match &call.destination {
            Destination::Name(name) if !call.no_auto_start && state.activations.provides(name) => {
                state.queue_for_activation(from, call, fds)
            }
            destination => {
                let error = ErrorReply::broker(
                    Some(call.serial),
                    ErrorCode::NoSuchName,
                    no_such_destination(destination),
                );
                state.send_error(from, error);
                None
            }
        }
    }

    /// Delivers a call to `callee`, which its destination names now.
    fn deliver_call(
        &self,
        state: &mut State,
        from: PeerId,
        callee: PeerId,
        call: Call,
        fds: Vec<OwnedFd>,
    ) {
        let serial = call.serial;
        let fail = |code, message: String| ErrorReply::broker(Some(serial), code, message);
        let timeout = call
            .timeout_ms
            .map_or(self.settings().default_call_timeout, Duration::from_millis)
            .min(MAX_CALL_TIMEOUT);
        let fields = MessageFields {
            kind: crate::policy::MessageType::MethodCall,
            path: &call.path,
            interface: &call.interface,
            member: &call.member,
        };
        let checked = state
            .authorize_send(from, Some(callee), fields)
            .and_then(|()| state.authorize_receive(callee, from, &state.names_of(from), fields));
        if let Err(denied) = checked {
            let error = ErrorReply {
                reply_to: Some(serial),
                ..denied
            };
            return state.send_error(from, error);
        }
        let limit = self.settings().limits.max_pending_calls;
        if !call.no_reply && state.calls.outstanding_of(from) >= limit {
            let error = fail(
                ErrorCode::LimitsExceeded,
                format!("this connection already has {limit} calls waiting for an answer"),
            );
            return state.send_error(from, error);
        }
        let charge = match (call.no_reply, state.peers.get(&from)) {
            (false, Some(entry)) => {
                match entry.outbox.account().try_charge(Resource::PendingCalls, 1) {
                    Ok(charge) => Some(charge),
                    Err(quota) => {
                        let error = ErrorReply {
                            reply_to: Some(serial),
                            ..over_quota(quota)
                        };
                        return state.send_error(from, error);
                    }
                }
            }
            _ => None,
        };
        let Some(caller) = state.caller_for(from, callee, self.settings().namespaces.pid) else {
            return;
        };
        let call_id = state.calls.next_id();
        let incoming = Message::Incoming(IncomingCall {
            call_id,
            caller,
            destination: call.destination,
            path: call.path,
            interface: call.interface,
            member: call.member,
            signature: call.signature,
            body: call.body,
            no_reply: call.no_reply,
            caller_serial: serial,
        });
        let bytes = match state.encode_for(callee, &incoming, fds.len()) {
            Ok(bytes) => bytes,
            Err(EncodeError::TooLarge(e)) => {
                let error = fail(
                    ErrorCode::RecordTooLarge,
                    format!(
                        "the call does not fit in a record once the caller's identity is added: {e}"
                    ),
                );
                return state.send_error(from, error);
            }
            Err(e) => {
                let error = fail(
                    ErrorCode::InvalidArgs,
                    format!("{callee} cannot be given this call: {e}"),
                );
                return state.send_error(from, error);
            }
        };
        let (Some(callee_entry), Some(caller_entry)) =
            (state.peers.get(&callee), state.peers.get(&from))
        else {
            return;
        };
        // The caller pays for what waits at the callee: a peer flooding a
        // slow service uses up its own quota, not the service's user's.
        let payer = caller_entry.outbox.account();
        if let Err(full) = callee_entry
            .outbox
            .offer(Outgoing { bytes, fds }, Some(payer))
        {
            return state.send_error(
                from,
                fail(ErrorCode::LimitsExceeded, not_queued(callee, &full)),
            );
        }
        debug!(caller = %from, %callee, call_id, "call delivered");
        if !call.no_reply {
            let now = Instant::now();
            let pending = PendingCall {
                caller: from,
                serial,
                callee,
                deadline: now.checked_add(timeout).unwrap_or(now + MAX_CALL_TIMEOUT),
                timeout,
                _charge: charge,
            };
            if state.calls.insert(call_id, pending) {
                self.deadline_changed.notify_one();
            }
        }
        state.copy_to_monitors(Some(from), Some(callee), &incoming);
    }

    /// Forwards a callee's successful answer to its caller.
    pub fn route_return(&self, from: PeerId, answer: Return, fds: Vec<OwnedFd>) {
        let mut state = self.lock();
        let Some(call) = state.calls.take_answered(answer.reply_to, from) else {
            return state.refuse_unexpected_reply(from, answer.reply_to);
        };
        let message = Message::Return(Return {
            reply_to: call.serial,
            signature: answer.signature,
            body: answer.body,
            sender: Some(from),
        });
        state.forward_answer(from, &call, &message, fds, "a reply");
    }

    /// Forwards the answer of a callee that names its call as D-Bus does
    /// (the caller and the caller's serial) rather than by call id.
    /// `false`: no such call waits for this callee's answer.
    pub fn route_return_to(
        &self,
        from: PeerId,
        caller: PeerId,
        serial: u64,
        mut answer: Return,
        fds: Vec<OwnedFd>,
    ) -> bool {
        let Some(call_id) = self.lock().calls.id_by_serial(from, caller, serial) else {
            return false;
        };
        answer.reply_to = call_id;
        self.route_return(from, answer, fds);
        true
    }

    /// [`route_error`](Self::route_error) for a callee that names its
    /// call as D-Bus does; `false`: no such call waits for its answer.
    pub fn route_error_to(
        &self,
        from: PeerId,
        caller: PeerId,
        serial: u64,
        mut error: ErrorReply,
    ) -> bool {
        let Some(call_id) = self.lock().calls.id_by_serial(from, caller, serial) else {
            return false;
        };
        error.reply_to = Some(call_id);
        self.route_error(from, error);
        true
    }

    /// Forwards a callee's error answer to its caller.
    pub fn route_error(&self, from: PeerId, error: ErrorReply) {
        let Some(call_id) = error.reply_to else {
            return debug!(peer = %from, "error answering no call dropped");
        };
        let mut state = self.lock();
        let Some(call) = state.calls.take_answered(call_id, from) else {
            return state.refuse_unexpected_reply(from, call_id);
        };
        let message = Message::Error(ErrorReply {
            reply_to: Some(call.serial),
            code: error.code,
            message: error.message,
            name: error.name,
            sender: Some(from),
        });
        state.forward_answer(from, &call, &message, Vec::new(), "an error");
    }

    /// Delivers a signal from `from` to its unicast destination, or to
    /// every peer with a matching rule.
    pub fn route_signal(&self, from: PeerId, signal: Signal, fds: Vec<OwnedFd>) {
        if let Err(e) = validate_signal(&signal) {
            return debug!(peer = %from, reason = %e, "signal dropped");
        }
        let state = self.lock();
        let destination = match &signal.destination {
            None => None,
            Some(dest) => match state.resolve(dest) {
                Some(id) => Some(id),
                None => {
                    let reason = no_such_destination(dest);
                    return debug!(peer = %from, %reason, "signal dropped");
                }
            },
        };
        let fields = MessageFields {
            kind: crate::policy::MessageType::Signal,
            path: &signal.path,
            interface: &signal.interface,
            member: &signal.member,
        };
        if let Err(denied) = state.authorize_send(from, destination, fields) {
            return debug!(peer = %from, reason = %denied.message, "signal dropped");
        }
        let from_names = state.names_of(from);
        let mut recipients = state.signal_recipients(from, &from_names, &signal, destination);
        recipients.retain(|(peer, _)| {
            state
                .authorize_receive(*peer, from, &from_names, fields)
                .is_ok()
        });
        let message = Message::Signal(Signal {
            sender: Some(from),
            matched: Vec::new(),
            ..signal
        });
        let mut shared = SharedEncodings::default();
        for (peer, matched) in recipients {
            let Some(fds) = clone_fds(&fds) else {
                tracing::warn!(peer = %peer, "cannot duplicate the signal's descriptors; not delivered");
                continue;
            };
            let bytes =
                match state.encode_copy_for(peer, &message, &matched, fds.len(), &mut shared) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        crate::bus::not_encoded(peer, &e, "a signal");
                        continue;
                    }
                };
            let record = Outgoing { bytes, fds };
            match destination {
                // A unicast signal is like a call: its sender pays. A signal has
                // no answer in D-Bus, so one that does not fit is dropped.
                Some(_) => {
                    let Some(sender) = state.peers.get(&from) else {
                        break;
                    };
                    let payer = sender.outbox.account();
                    let refused = state
                        .peers
                        .get(&peer)
                        .and_then(|entry| entry.outbox.offer(record, Some(payer)).err());
                    if let Some(full) = refused {
                        let reason = not_queued(peer, &full);
                        debug!(peer = %from, %reason, "signal dropped");
                    }
                }
                // A broadcast copy goes to whoever asked for it with a rule,
                // while its queue and its user's quota have room.
                None => {
                    state.deliver_or_drop(peer, record, "a signal");
                }
            }
        }
        state.copy_to_monitors(Some(from), destination, &message);
    }

    /// Fails calls whose deadline passed; runs for the broker's life.
    pub async fn run_call_timeouts(self: Arc<Self>) {
        loop {
            let next = {
                let mut state = self.lock();
                state.expire_calls(Instant::now());
                state.calls.arm()
            };
            match next {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = self.deadline_changed.notified() => {}
                    }
                }
                None => self.deadline_changed.notified().await,
            }
        }
    }
}

impl State {
    /// The connection a destination names right now.
    pub(crate) fn resolve(&self, destination: &Destination) -> Option<PeerId> {
        match destination {
            Destination::Unique(id) => self.peers.contains_key(id).then_some(*id),
            Destination::Name(name) => self.names.owner(name),
        }
    }

    /// Who receives a signal, with the ids of each recipient's matching
    /// rules: a unicast signal its destination, a broadcast every peer the
    /// match index finds.
    fn signal_recipients(
        &self,
        from: PeerId,
        sender_names: &[&str],
        signal: &Signal,
        destination: Option<PeerId>,
    ) -> Vec<(PeerId, Vec<u64>)> {
        let sender_id = from.to_string();
        if let Some(dest) = destination {
            let dest_id = dest.to_string();
            let fields = SignalFields {
                kind: MessageKind::Signal,
                path: &signal.path,
                interface: &signal.interface,
                member: &signal.member,
                signature: &signal.signature,
                body: &signal.body,
                destination: Some(&dest_id),
            };
            let sender_is = |name: &str| match name.parse::<PeerId>() {
                Ok(id) => id == from,
                Err(_) => sender_names.contains(&name),
            };
            let matched = self.peers.get(&dest).map_or_else(Vec::new, |entry| {
                entry
                    .rules
                    .iter()
                    .filter(|(_, rule)| rule.matches(&fields, sender_is))
                    .map(|(id, _)| *id)
                    .collect()
            });
            return vec![(dest, matched)];
        }
        let keys = SignalKeys {
            member: &signal.member,
            interface: &signal.interface,
            path: &signal.path,
            signature: &signal.signature,
            body: &signal.body,
            sender_id: &sender_id,
            sender_names,
        };
        self.match_index.matching(&keys).into_iter().collect()
    }

    /// Sends `message`, callee `from`'s answer (`what`: "a reply", "an
    /// error") to `call`, to its caller, who pays for it (see
    /// [`deliver_answer`](Self::deliver_answer)); monitors get a copy.
    fn forward_answer(
        &self,
        from: PeerId,
        call: &PendingCall,
        message: &Message,
        fds: Vec<OwnedFd>,
        what: &str,
    ) {
        match self.encode_for(call.caller, message, fds.len()) {
            Ok(bytes) => {
                // Formatted only if the answer is refused.
                let what = format_args!("{what} from {from}");
                self.deliver_answer(call.caller, call.serial, Outgoing { bytes, fds }, &what);
            }
            Err(e) => self.send_error(
                call.caller,
                ErrorReply::broker(
                    Some(call.serial),
                    ErrorCode::RecordTooLarge,
                    format!("{from} answered with {what} too large to deliver: {e}"),
                ),
            ),
        }
        self.copy_to_monitors(Some(from), Some(call.caller), message);
    }

    fn refuse_unexpected_reply(&self, from: PeerId, call_id: u64) {
        // D-Bus has no answer to an answer: a reply no call waits for (already
        // answered, timed out, never made, or made to another peer) is dropped.
        debug!(peer = %from, call_id, "unexpected reply dropped");
    }

    fn expire_calls(&mut self, now: Instant) {
        for call in self.calls.take_expired(now) {
            debug!(callee = %call.callee, caller = %call.caller, timeout_ms = call.timeout.as_millis(),
                   "a call was not answered in time");
            let error = ErrorReply::broker(Some(call.serial), ErrorCode::Timeout, CALL_TIMED_OUT);
            self.send_error(call.caller, error);
        }
    }

    /// A peer left: its callers get `PeerGone`, in the words dbus-daemon
    /// uses (programs and its test suite compare them; the caller knows
    /// whom it called, and the log says whether its process exited); calls
    /// it made are forgotten (a late answer is refused).
    pub(crate) fn fail_calls_of_leaving_peer(&mut self, peer: PeerId, why: Leaving) {
        for call in self.calls.take_involving(peer) {
            if call.callee == peer && call.caller != peer {
                let how = match why {
                    Leaving::Disconnected => "disconnected",
                    Leaving::ProcessExited => "its process exited",
                };
                debug!(callee = %peer, caller = %call.caller, how, "a call lost its callee");
                let error = ErrorReply::broker(
                    Some(call.serial),
                    ErrorCode::PeerGone,
                    CALLEE_LEFT.to_owned(),
                );
                self.send_error(call.caller, error);
            }
        }
        // Its calls held for a start would only be dropped when routed:
        // give back what they are charged now.
        self.activations.forget_caller(peer);
    }
}

/// The text of the error a caller gets when its call timed out:
/// dbus-daemon's, word for word.
pub(crate) const CALL_TIMED_OUT: &str = "Message did not receive a reply (timeout by message bus)";

/// The text of the error a caller gets when the callee left before
/// answering: dbus-daemon's, word for word.
pub(crate) const CALLEE_LEFT: &str =
    "Message recipient disconnected from message bus without replying";

fn validate_call(call: &Call) -> Result<(), names::NameError> {
    call.destination.validate()?;
    names::validate_object_path(&call.path)?;
    // D-Bus lets a call name no interface (empty here): the callee picks.
    if !call.interface.is_empty() {
        names::validate_interface(&call.interface)?;
    }
    names::validate_member(&call.member)
}

fn validate_signal(signal: &Signal) -> Result<(), names::NameError> {
    if let Some(dest) = &signal.destination {
        dest.validate()?;
    }
    names::validate_object_path(&signal.path)?;
    names::validate_interface(&signal.interface)?;
    names::validate_member(&signal.member)
}

/// Why a call or unicast signal could not be queued for `receiver`.
fn not_queued(receiver: PeerId, full: &QueueFull) -> String {
    match full {
        QueueFull::Connection { .. } => {
            format!("{receiver} is not reading its messages ({full}); try again later")
        }
        QueueFull::Uid(quota) => {
            format!("{quota}: what your user sent is still waiting to be read; try again later")
        }
    }
}

pub(crate) fn no_such_destination(destination: &Destination) -> String {
    match destination {
        Destination::Unique(id) => format!("no connection {id} is on the bus"),
        Destination::Name(name) => format!("nobody owns the name {name}"),
    }
}

/// Duplicates a signal's descriptors for one more recipient.
fn clone_fds(fds: &[OwnedFd]) -> Option<Vec<OwnedFd>> {
    fds.iter().map(|fd| fd.try_clone().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(caller: u64, callee: u64, deadline: Instant) -> PendingCall {
        PendingCall {
            caller: PeerId(caller),
            serial: 1,
            callee: PeerId(callee),
            deadline,
            timeout: Duration::from_secs(1),
            _charge: None,
        }
    }

    #[test]
    fn only_the_callee_may_answer_and_only_once() {
        let mut calls = PendingCalls::default();
        let now = Instant::now();
        let id = calls.next_id();
        calls.insert(id, pending(1, 2, now));
        assert!(calls.take_answered(id, PeerId(3)).is_none(), "a third peer");
        assert!(
            calls.take_answered(id + 1, PeerId(2)).is_none(),
            "unknown id"
        );
        assert!(calls.take_answered(id, PeerId(2)).is_some());
        assert!(
            calls.take_answered(id, PeerId(2)).is_none(),
            "second answer"
        );
        assert_eq!(calls.len(), 0);
        assert!(calls.involving.values().all(|ids| ids.is_empty()));
        assert!(calls.outstanding.is_empty());
        // A peer's set goes when the peer does.
        assert!(calls.take_involving(PeerId(1)).is_empty());
        assert!(calls.take_involving(PeerId(2)).is_empty());
        assert!(calls.involving.is_empty());
    }

    #[test]
    fn deadlines_expire_in_order_and_leaving_peers_take_their_calls() {
        let mut calls = PendingCalls::default();
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let a = calls.next_id();
        assert!(calls.insert(a, pending(1, 2, now + 2 * second)));
        let b = calls.next_id();
        assert!(
            calls.insert(b, pending(1, 3, now + second)),
            "earlier deadline"
        );
        let c = calls.next_id();
        assert!(!calls.insert(c, pending(4, 2, now + 3 * second)));
        assert_eq!(calls.outstanding_of(PeerId(1)), 2);
        assert_eq!(calls.next_deadline(), Some(now + second));
        let expired = calls.take_expired(now + second);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].callee, PeerId(3));
        let gone = calls.take_involving(PeerId(2));
        assert_eq!(gone.len(), 2);
        assert_eq!(calls.len(), 0);
        assert_eq!(calls.outstanding_of(PeerId(1)), 0);
    }
}
