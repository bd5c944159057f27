//! The broker's shared state: connected peers, their names, match rules and
//! outstanding calls, and how messages reach them.
//!
//! One mutex guards it all. Every operation holds it for a bounded amount
//! of in-memory work plus non-blocking sends (see [`outbox`]); no lock is
//! held across an `await`. Routing of calls, replies and signals lives in
//! [`router`].
//!
//! This is the core of the broker, and it is wire-agnostic: it holds
//! messages as [`Message`] values and queues each peer's records in that
//! peer's [`outbox`]; how a record is written for the peer's face (native
//! or D-Bus) is the one thing it asks of the face, through the peer's
//! [`Wire`](outbox::Wire).

pub mod activation;
pub mod admission;
pub mod authority;
pub mod ids;
pub mod match_index;
pub mod names;
pub mod outbox;
pub mod process_handles;
pub mod quotas;
pub mod router;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pidbus_protocol::dbus::header::{Header, MessageType, NO_REPLY_EXPECTED};
use pidbus_protocol::dbus::value::{Value, marshal};
use pidbus_protocol::{
    BrokerReply, BusEvent, Caller, Destination, ErrorCode, ErrorReply, IncomingCall, MatchRule,
    Message, Monitored, NameFlags, NameInfo, PeerId, PeerInfo, ProcessIdentity, ReleaseNameReply,
    Return, Signal, names as naming,
};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::bus::match_index::MatchIndex;
use crate::bus::match_index::SignalKeys;
use crate::bus::names::{NameRegistry, OwnerChange};
use crate::bus::outbox::{EncodeError, Outbox, Outgoing, QueueFull, SharedEncodings};
use crate::bus::process_handles::ProcessWatches;
use crate::bus::quotas::{Accounts, QuotaExceeded, Resource, UidAccount, UidLimits};
use crate::bus::router::PendingCalls;
use crate::os::exits::ExitWatcher;
use crate::os::identity::{PidNamespace, Shown};
use crate::policy::{ActionKind, Policy, PolicySource, Request};

/// The bus's own name, as the sender of its signals and the destination of
/// its methods (the D-Bus driver).
pub const DRIVER_NAME: &str = pidbus_protocol::dbus::BUS_NAME;

/// The object path of the bus's own object.
pub const DRIVER_PATH: &str = "/org/freedesktop/DBus";

/// One of the bus's own objects, as the sender of its signals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BusObject<'a> {
    /// Its path.
    pub path: &'a str,
    /// The interface of its signals.
    pub interface: &'a str,
    /// The well-known names it answers to besides the bus's own (match
    /// rules name a sender by them).
    pub names: &'a [&'a str],
}

/// Per-connection limits (per-uid accounting comes with quotas).
#[derive(Debug, Clone)]
pub struct PeerLimits {
    /// Bytes the broker queues towards a peer that is not reading.
    pub max_queued_bytes: usize,
    /// Calls a peer may have waiting for an answer.
    pub max_pending_calls: usize,
    /// Well-known names a peer may own or queue for.
    pub max_names: usize,
    /// Match rules a peer may hold.
    pub max_match_rules: usize,
    /// Descriptors (passed with messages, or handed-out pidfds) the broker
    /// holds for a peer that has not read them yet.
    pub max_queued_fds: usize,
    /// Processes a peer may watch at once.
    pub max_process_watches: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_queued_bytes: 8 << 20,
            max_pending_calls: 4096,
            max_names: 512,
            max_match_rules: 512,
            max_queued_fds: 256,
            max_process_watches: 512,
        }
    }
}

/// Which bus an instance is (named in the config file as `system` or
/// `session`); picks the default socket path and policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// A user's session bus.
    #[default]
    Session,
    /// The system bus: well-known names belong to system services, whose
    /// process handles are readable by all.
    System,
}

/// Settings every connection needs.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// System or session bus.
    pub kind: BusKind,
    /// The kernel boot id, part of every identity.
    pub boot_id: String,
    /// The bus's id: 32 hex digits, new at every start (D-Bus's server
    /// GUID, `GetId`).
    pub bus_id: String,
    /// Largest record accepted from (and sent to) a peer.
    pub max_record_size: usize,
    /// Largest message on the D-Bus socket, from a peer or to one.
    pub max_message_size: usize,
    /// How long a new connection may take to send its Hello.
    pub hello_timeout: Duration,
    /// What happens to a message sent by a process other than the
    /// connection's.
    pub sender_check: crate::os::sender::SenderCheckMode,
    /// Timeout of calls that do not name one.
    pub default_call_timeout: Duration,
    /// Per-connection limits.
    pub limits: PeerLimits,
    /// Per-uid quotas, over all of a user's connections.
    pub uid_limits: UidLimits,
    /// The broker's own pid and user namespaces: to tell services the pid
    /// of their callers as they see it, and to know which peers administer
    /// their own pid namespace.
    pub namespaces: crate::os::identity::BrokerNamespaces,
    /// Where the policy comes from (re-read on reload).
    pub policy: PolicySource,
    /// Where service files come from, how long a start may take.
    pub activation: crate::bus::activation::ActivationSettings,
    /// The bus serves the polkit authority `org.freedesktop.PolicyKit1`
    /// itself (no peer may own that name).
    pub polkit_authority: bool,
}

/// The bus.
#[derive(Debug)]
pub struct Bus {
    settings: BusSettings,
    next_id: AtomicU64,
    state: Mutex<State>,
    exits: Arc<ExitWatcher>,
    /// Per-uid usage.
    accounts: Accounts,
    /// Wakes the timeout sweeper when a call with an earlier deadline
    /// arrives.
    pub(crate) deadline_changed: Notify,
    /// Wakes every task waiting for some peer to leave.
    pub(crate) peer_left: Notify,
}

/// Everything behind the bus lock.
#[derive(Debug)]
pub(crate) struct State {
    /// Largest record a peer is sent.
    max_record_size: usize,
    pub(crate) peers: BTreeMap<PeerId, PeerEntry>,
    pub(crate) names: NameRegistry,
    pub(crate) calls: PendingCalls,
    monitors: BTreeSet<PeerId>,
    name_watchers: BTreeSet<PeerId>,
    pub(crate) process_watches: ProcessWatches,
    /// Every peer's match rules, indexed for signal routing.
    pub(crate) match_index: MatchIndex,
    /// The policy in force (swapped whole on reload).
    pub(crate) policy: Arc<Policy>,
    /// The uid the broker runs as (for `broker_user` rules).
    pub(crate) broker_uid: u32,
    /// Activatable services and the starts under way.
    pub(crate) activations: crate::bus::activation::Activations,
}

/// One connected peer as the router sees it.
#[derive(Debug)]
pub(crate) struct PeerEntry {
    pub(crate) identity: Arc<ProcessIdentity>,
    pub(crate) namespace: PidNamespace,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) rules: Vec<(u64, MatchRule)>,
    /// The peer's pidfd, shared with its connection task; duplicated for
    /// handouts and process watches (which outlive the connection).
    pub(crate) pidfd: Arc<OwnedFd>,
}

impl PeerEntry {
    /// The peer's process, for decisions that look at it now.
    pub(crate) fn live(&self) -> crate::policy::LiveProcess<'_> {
        use std::os::fd::AsFd;
        crate::policy::LiveProcess {
            pid: self.identity.pid,
            pidfd: self.pidfd.as_fd(),
        }
    }
}

/// What a peer brings when it joins the bus.
#[derive(Debug)]
pub struct Joining {
    /// Its verified identity.
    pub identity: Arc<ProcessIdentity>,
    /// Its pid namespace.
    pub namespace: PidNamespace,
    /// Its outgoing side.
    pub outbox: Arc<Outbox>,
    /// Its pidfd.
    pub pidfd: Arc<OwnedFd>,
    /// The serial of its `Hello`, shown to monitors with the reply.
    pub hello_serial: u32,
}

/// Why a peer leaves, for the log of the calls it leaves unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// The connection closed or failed.
    Disconnected,
    /// The peer's process exited (the socket may still be open elsewhere).
    ProcessExited,
}

impl Bus {
    /// An empty bus enforcing `policy` (loaded from `settings.policy`);
    /// `exits` tells peers' tasks when their process exits.
    pub fn new(settings: BusSettings, policy: Policy, exits: Arc<ExitWatcher>) -> Arc<Self> {
        let max_record_size = settings.max_record_size;
        let activations = crate::bus::activation::Activations::for_bus(settings.kind);
        Arc::new(Bus {
            accounts: Accounts::new(settings.uid_limits),
            settings,
            exits,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State {
                max_record_size,
                peers: BTreeMap::new(),
                names: NameRegistry::default(),
                calls: PendingCalls::default(),
                monitors: BTreeSet::new(),
                name_watchers: BTreeSet::new(),
                process_watches: ProcessWatches::default(),
                match_index: MatchIndex::default(),
                policy: Arc::new(policy),
                broker_uid: rustix::process::geteuid().as_raw(),
                activations,
            }),
            deadline_changed: Notify::new(),
            peer_left: Notify::new(),
        })
    }

    /// The bus's settings.
    pub fn settings(&self) -> &BusSettings {
        &self.settings
    }

    /// Per-uid usage and quotas.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The set of peer processes watched for their exit.
    pub fn exits(&self) -> &Arc<ExitWatcher> {
        &self.exits
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock is a broker bug; the state is still better
        // served than abandoned, and every update keeps the maps consistent
        // between statements.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a peer under a fresh unique id and sends it the record
    /// `welcome` makes for that id, before anything else can reach it. The
    /// peer leaves when the returned registration is dropped (or
    /// [`Registration::leave`] is called).
    pub fn register<E>(
        self: &Arc<Self>,
        joining: Joining,
        welcome: impl FnOnce(PeerId) -> Result<Vec<u8>, E>,
    ) -> Result<Registration, E> {
        let id = PeerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let bytes = welcome(id)?;
        // The outbox is empty, so the welcome always fits.
        let _ = joining.outbox.push(Outgoing {
            bytes,
            fds: Vec::new(),
        });
        let entry = PeerEntry {
            identity: joining.identity,
            namespace: joining.namespace,
            outbox: joining.outbox,
            rules: Vec::new(),
            pidfd: joining.pidfd,
        };
        let mut state = self.lock();
        state.peers.insert(id, entry);
        state.show_hello_to_monitors(
            id,
            joining.hello_serial,
            self.settings().namespaces.pid,
            || {
                state.announce_owner(&id.to_string(), None, Some(id));
            },
        );
        drop(state);
        Ok(Registration {
            bus: Arc::clone(self),
            id,
            left: false,
        })
    }

    /// Connected peers after `after`, ordered by unique id, each as
    /// `render` writes it, as many as fit in one message of the broker's
    /// record size when each takes `size` bytes, and whether more are
    /// left; `viewer` sees another user's `/proc`-only facts only if it is
    /// root or the broker's user.
    pub fn peers<T>(
        &self,
        viewer: PeerId,
        after: Option<PeerId>,
        render: impl Fn(PeerInfo) -> T,
        size: impl Fn(&T) -> usize,
    ) -> (Vec<T>, bool) {
        let state = self.lock();
        let start = after.map_or(PeerId(0), |id| PeerId(id.0.saturating_add(1)));
        let listed = state.peers.range(start..).map(|(id, entry)| {
            render(PeerInfo {
                id: *id,
                identity: state.identity_seen_by(viewer, &entry.identity),
            })
        });
        fill_page(state.max_record_size, listed, size)
    }

    /// The verified identity of the peer `destination` names, as `viewer`
    /// may see it (another user's `/proc`-only facts only for root or the
    /// broker's user, as [`peers`](Self::peers) shows them).
    pub fn identity_seen_by(
        &self,
        viewer: PeerId,
        destination: &Destination,
    ) -> Option<(PeerId, ProcessIdentity)> {
        let state = self.lock();
        let id = state.resolve(destination)?;
        let identity = state.identity_seen_by(viewer, &state.peers.get(&id)?.identity);
        Some((id, identity))
    }

    /// Number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.lock().peers.len()
    }

    /// Whether `peer` is root or runs as the broker's user.
    pub fn is_trusted_peer(&self, peer: PeerId) -> bool {
        let state = self.lock();
        state
            .peers
            .get(&peer)
            .is_some_and(|entry| state.is_trusted(entry.identity.uid))
    }

    /// Every connected peer's id and every well-known name with its owner
    /// and queue, in one consistent look.
    pub fn all_names(&self) -> (Vec<PeerId>, Vec<NameInfo>) {
        let state = self.lock();
        let peers = state.peers.keys().copied().collect();
        (peers, state.names.list_after(None).collect())
    }

    /// The peer `name` names now (a unique id, or a well-known name's
    /// owner) and its verified identity.
    pub fn identity_of(&self, name: &Destination) -> Option<(PeerId, Arc<ProcessIdentity>)> {
        let state = self.lock();
        let id = state.resolve(name)?;
        let entry = state.peers.get(&id)?;
        Some((id, Arc::clone(&entry.identity)))
    }

    /// Refuses to let a peer `verb` (own or release) a name the bus
    /// answers itself, whichever socket asks: `org.freedesktop.DBus`
    /// (`InvalidArgs`, as dbus-daemon answers) and, while the bus serves
    /// it, the polkit authority's name (`AccessDenied`: polkitd may have
    /// it when the bus does not).
    fn refuse_reserved(&self, name: &str, verb: &str) -> Result<(), ErrorReply> {
        if name == DRIVER_NAME {
            return Err(ErrorReply::broker(
                None,
                ErrorCode::InvalidArgs,
                format!("{name} is reserved for the bus itself: no connection may {verb} it"),
            ));
        }
        if self.settings.polkit_authority && name == authority::POLKIT_NAME {
            return Err(ErrorReply::broker(
                None,
                ErrorCode::AccessDenied,
                format!(
                    "the bus itself is the polkit authority {name}, so no connection may \
                     {verb} it; start pidbusd with --no-polkit-authority to let polkitd own it"
                ),
            ));
        }
        Ok(())
    }

    /// `peer` asks for `name`.
    pub fn request_name(
        &self,
        peer: PeerId,
        name: &str,
        flags: NameFlags,
    ) -> Result<BrokerReply, ErrorReply> {
        naming::validate_well_known_name(name).map_err(invalid_name)?;
        self.refuse_reserved(name, "own")?;
        let mut state = self.lock();
        let entry = state.peers.get(&peer).ok_or_else(gone)?;
        let names = [name];
        let request = Request {
            names: &names,
            ..Request::new(ActionKind::Own, &entry.identity)
        }
        .live(entry.live());
        state.authorize(Some(peer), &request, format_args!("owning {name}"))?;
        if let Some(refusal) = state.activations.refuses_claim(name, &entry.identity) {
            warn!(peer = %peer, uid = entry.identity.uid, pid = entry.identity.pid, name = %name, reason = %refusal, "refused to own a name being activated");
            return Err(ErrorReply::broker(None, ErrorCode::AccessDenied, refusal));
        }
        if state.names.owner(name) != Some(peer)
            && state.names.count_of(peer) >= self.settings.limits.max_names
        {
            return Err(limits_exceeded(format!(
                "this connection already owns or queues for {} names, the limit",
                self.settings.limits.max_names
            )));
        }
        // Charged before, so a user at its quota gets nothing; settled
        // after, as a request may not end up holding the name.
        let before = state.names.count_of(peer);
        let new_claim = !state.names.is_claimed_by(name, peer);
        if new_claim {
            let account = entry.outbox.account();
            account.try_add(Resource::Names, 1).map_err(over_quota)?;
        }
        let (reply, change) = state.names.request(name, peer, flags);
        if let Some(change) = change {
            state.give_back_lost_claim(&change);
            state.announce(&change);
        }
        state.settle_names(peer, before + usize::from(new_claim));
        if state.names.owner(name) == Some(peer) {
            self.name_acquired(&mut state, name);
        }
        Ok(BrokerReply::NameRequested(reply))
    }

    /// `peer` gives up `name`.
    pub fn release_name(&self, peer: PeerId, name: &str) -> Result<BrokerReply, ErrorReply> {
        naming::validate_well_known_name(name).map_err(invalid_name)?;
        self.refuse_reserved(name, "release")?;
        let mut state = self.lock();
        let before = state.names.count_of(peer);
        let (reply, change) = state.names.release(name, peer);
        if let Some(change) = change {
            state.announce(&change);
        }
        state.settle_names(peer, before);
        debug_assert!(reply != ReleaseNameReply::Released || state.names.owner(name) != Some(peer));
        Ok(BrokerReply::NameReleased(reply))
    }

    /// The primary owner of `name`.
    pub fn name_owner(&self, name: &str) -> Result<BrokerReply, ErrorReply> {
        naming::validate_well_known_name(name).map_err(invalid_name)?;
        self.lock()
            .names
            .owner(name)
            .map(BrokerReply::NameOwner)
            .ok_or_else(|| {
                ErrorReply::broker(None, ErrorCode::NoSuchName, format!("nobody owns {name}"))
            })
    }

    /// Adds match rule `id` for `peer` (replacing a rule with the same id).
    /// A rule is charged to the peer's user by count and by size.
    pub fn add_match(
        &self,
        peer: PeerId,
        id: u64,
        rule: MatchRule,
    ) -> Result<BrokerReply, ErrorReply> {
        rule.validate().map_err(invalid_name)?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let entry = state.peers.get_mut(&peer).ok_or_else(gone)?;
        let position = entry.rules.iter().position(|(existing, _)| *existing == id);
        if position.is_none() && entry.rules.len() >= self.settings.limits.max_match_rules {
            return Err(limits_exceeded(format!(
                "this connection already has {} match rules, the limit",
                self.settings.limits.max_match_rules
            )));
        }
        let account = entry.outbox.account();
        let replaced_size = position.map_or(0, |at| rule_cost(&entry.rules[at].1));
        // A replaced rule's place is taken by the new one: its count stays
        // charged, its size is traded for the new rule's.
        account
            .try_add(Resource::MatchRuleBytes, rule_cost(&rule))
            .map_err(over_quota)?;
        if position.is_none()
            && let Err(quota) = account.try_add(Resource::MatchRules, 1)
        {
            account.sub(Resource::MatchRuleBytes, rule_cost(&rule));
            return Err(over_quota(quota));
        }
        account.sub(Resource::MatchRuleBytes, replaced_size);
        if let Some(at) = position {
            let (_, old) = entry.rules.swap_remove(at);
            state.match_index.remove(peer, id, &old);
        }
        state.match_index.insert(peer, id, &rule);
        entry.rules.push((id, rule));
        Ok(BrokerReply::Done)
    }

    /// Removes match rule `id` of `peer`.
    pub fn remove_match(&self, peer: PeerId, id: u64) -> Result<BrokerReply, ErrorReply> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let entry = state.peers.get_mut(&peer).ok_or_else(gone)?;
        let Some(at) = entry.rules.iter().position(|(existing, _)| *existing == id) else {
            return Err(ErrorReply::broker(
                None,
                ErrorCode::NoSuchName,
                format!("this connection has no match rule {id}"),
            ));
        };
        let (_, rule) = entry.rules.swap_remove(at);
        let account = Arc::clone(entry.outbox.account());
        state.forget_rule(peer, &account, id, &rule);
        Ok(BrokerReply::Done)
    }

    /// Turns name-owner events on or off for `peer`.
    pub fn watch_name_owners(&self, peer: PeerId, enabled: bool) -> BrokerReply {
        let mut state = self.lock();
        if enabled {
            state.name_watchers.insert(peer);
        } else {
            state.name_watchers.remove(&peer);
        }
        BrokerReply::Done
    }

    /// Makes `peer` a monitor: it receives a copy of every delivered
    /// message. Root only until the policy engine decides.
    pub fn become_monitor(&self, peer: PeerId) -> Result<BrokerReply, ErrorReply> {
        let mut state = self.lock();
        let entry = state.peers.get(&peer).ok_or_else(gone)?;
        let request = Request::new(ActionKind::Monitor, &entry.identity).live(entry.live());
        state.authorize(Some(peer), &request, format_args!("monitoring the bus"))?;
        state.monitors.insert(peer);
        Ok(BrokerReply::Done)
    }

    /// Shows monitors a call `peer` made to the bus itself (the driver
    /// answers those without the router, which copies everything else).
    pub fn monitor_bus_call(&self, peer: PeerId, header: &Header, body: &[u8]) {
        let state = self.lock();
        if state.monitors.is_empty() {
            return;
        }
        let Some(caller) = state.caller_for(peer, peer, self.settings().namespaces.pid) else {
            return;
        };
        let call = call_to_the_bus(caller, header, body);
        state.copy_to_monitors(Some(peer), None, &Message::Incoming(call));
    }

    /// Shows monitors the bus's own answer to `peer`, made only if one
    /// watches.
    pub fn monitor_bus_answer(&self, peer: PeerId, answer: impl FnOnce() -> Message) {
        let state = self.lock();
        if !state.monitors.is_empty() {
            state.copy_to_monitors(None, Some(peer), &answer());
        }
    }

    /// A monitor takes no part in the bus any more: its well-known names
    /// are released and its unique name is announced as gone, as D-Bus
    /// monitors are (it stays connected, receiving copies).
    pub fn retire_as_monitor(&self, peer: PeerId) {
        let mut state = self.lock();
        let account = state
            .peers
            .get(&peer)
            .map(|e| Arc::clone(e.outbox.account()));
        if let Some(account) = account {
            account.sub(Resource::Names, state.names.count_of(peer));
        }
        for change in state.names.release_all(peer) {
            state.announce(&change);
        }
        state.announce_owner(&peer.to_string(), Some(peer), None);
    }

    /// Queues `record`, already written in `peer`'s protocol, as the
    /// answer to its request `serial` (see `State::deliver_answer`): for
    /// a face that answers some requests itself (the D-Bus driver).
    pub fn answer_raw(&self, peer: PeerId, serial: u64, record: Outgoing, what: &str) {
        self.lock().deliver_answer(peer, serial, record, &what);
    }

    /// Sends an error answering `serial` (or about the connection) to
    /// `peer`.
    pub fn send_error(&self, peer: PeerId, error: ErrorReply) {
        self.lock().send_error(peer, error);
    }

    fn remove_peer(&self, id: PeerId, why: Leaving) {
        let mut state = self.lock();
        let Some(entry) = state.peers.remove(&id) else {
            return;
        };
        entry.outbox.close();
        let account = entry.outbox.account();
        for (rule_id, rule) in &entry.rules {
            state.forget_rule(id, account, *rule_id, rule);
        }
        account.sub(Resource::Names, state.names.count_of(id));
        state.monitors.remove(&id);
        state.name_watchers.remove(&id);
        state.process_watches.remove_watcher(id);
        for change in state.names.release_all(id) {
            state.announce(&change);
        }
        state.fail_calls_of_leaving_peer(id, why);
        state.announce_owner(&id.to_string(), Some(id), None);
        drop(state);
        self.peer_left.notify_waiters();
    }

    /// Returns once `peer` is no longer on the bus.
    pub(crate) async fn peer_gone(&self, peer: PeerId) {
        loop {
            let left = self.peer_left.notified();
            tokio::pin!(left);
            // Registered before the check, so a departure in between wakes us.
            left.as_mut().enable();
            if !self.lock().peers.contains_key(&peer) {
                return;
            }
            left.await;
        }
    }
}

/// The call `header` and `body` from `caller` to the bus itself, as the
/// core carries calls (for monitors, which see every call).
fn call_to_the_bus(caller: Caller, header: &Header, body: &[u8]) -> IncomingCall {
    IncomingCall {
        call_id: u64::from(header.serial),
        caller,
        destination: Destination::Name(DRIVER_NAME.to_owned()),
        path: header.path.clone().unwrap_or_default(),
        interface: header.interface.clone().unwrap_or_default(),
        member: header.member.clone().unwrap_or_default(),
        signature: header.signature.clone(),
        body: body.to_vec(),
        no_reply: header.flags & NO_REPLY_EXPECTED != 0,
        caller_serial: u64::from(header.serial),
    }
}

impl State {
    /// Whether `uid` sees and asks about every peer: root, or the user the
    /// broker runs as.
    pub(crate) fn is_trusted(&self, uid: u32) -> bool {
        uid == 0 || uid == self.broker_uid
    }

    /// `identity` as peer `viewer` may see it: another user's
    /// `/proc`-only facts only for root or the broker's user.
    fn identity_seen_by(&self, viewer: PeerId, identity: &ProcessIdentity) -> ProcessIdentity {
        let mut identity = identity.clone();
        let viewer_uid = self.peers.get(&viewer).map(|e| e.identity.uid);
        let sees_all = viewer_uid.is_some_and(|uid| self.is_trusted(uid));
        if !sees_all && viewer_uid != Some(identity.uid) {
            hide_proc_facts(&mut identity);
        }
        identity
    }

    /// Takes match rule `id` of `peer` out of the index and gives its
    /// charges (one rule, its size) back to `account`.
    fn forget_rule(&mut self, peer: PeerId, account: &UidAccount, id: u64, rule: &MatchRule) {
        account.sub(Resource::MatchRules, 1);
        account.sub(Resource::MatchRuleBytes, rule_cost(rule));
        self.match_index.remove(peer, id, rule);
    }

    /// Gives back to `peer`'s user the names it was charged for
    /// (`charged`) beyond those it now owns or queues for.
    pub(crate) fn settle_names(&self, peer: PeerId, charged: usize) {
        let held = self.names.count_of(peer);
        if let Some(entry) = self.peers.get(&peer) {
            entry
                .outbox
                .account()
                .sub(Resource::Names, charged.saturating_sub(held));
        }
    }

    /// Writes `message` as `peer`'s face has it read; a peer never
    /// receives more than the record limit it was told.
    pub(crate) fn encode_for(
        &self,
        peer: PeerId,
        message: &Message,
        fds: usize,
    ) -> Result<Vec<u8>, EncodeError> {
        match self.peers.get(&peer) {
            Some(entry) => entry
                .outbox
                .wire()
                .encode(message, fds, self.max_record_size),
            None => Err(EncodeError::NotForThisFace("the peer has left")),
        }
    }

    /// `peer`'s copy of broadcast `signal`, selected by its rules
    /// `matched` (see [`Wire::encode_copy`](crate::bus::outbox::Wire::encode_copy)).
    pub(crate) fn encode_copy_for(
        &self,
        peer: PeerId,
        signal: &Message,
        matched: &[u64],
        fds: usize,
        shared: &mut SharedEncodings,
    ) -> Result<Vec<u8>, EncodeError> {
        match self.peers.get(&peer) {
            Some(entry) => {
                entry
                    .outbox
                    .wire()
                    .encode_copy(signal, matched, fds, self.max_record_size, shared)
            }
            None => Err(EncodeError::NotForThisFace("the peer has left")),
        }
    }

    /// Queues `record`, an answer `peer` asked for (to its request or call
    /// `serial`): when its queue or its user's quota cannot take it, the
    /// peer gets a short `LimitsExceeded` error instead, so a peer that
    /// does not read cannot make the broker hold big answers for it.
    pub(crate) fn deliver_answer(
        &self,
        peer: PeerId,
        serial: u64,
        record: Outgoing,
        what: &dyn std::fmt::Display,
    ) {
        let Some(entry) = self.peers.get(&peer) else {
            return;
        };
        if let Err(full) = entry.outbox.offer(record, None) {
            debug!(peer = %peer, serial, reason = %full, "answer refused; an error goes in its place");
            let error = ErrorReply::broker(
                Some(serial),
                ErrorCode::LimitsExceeded,
                format!("{what} cannot be queued: {full}; read your messages, then retry"),
            );
            self.send_error(peer, error);
        }
    }

    /// Queues `record` for `peer` if its queue and its user's quota have
    /// room, else drops it: for copies nobody asked to be told about
    /// (broadcast signals, name-owner events, monitor copies), so that a
    /// flood from someone else never disconnects a receiver.
    pub(crate) fn deliver_or_drop(&self, peer: PeerId, record: Outgoing, what: &str) -> bool {
        let Some(entry) = self.peers.get(&peer) else {
            return false;
        };
        match entry.outbox.offer(record, None) {
            Ok(()) => true,
            Err(full) => {
                debug!(peer = %peer, reason = %full, "{what} dropped: the receiver's queue is full");
                false
            }
        }
    }

    /// Encodes `message` and queues it for `peer` if there is room (see
    /// [`deliver_or_drop`](Self::deliver_or_drop)).
    pub(crate) fn encode_or_drop(&self, peer: PeerId, message: &Message, what: &str) {
        match self.encode_for(peer, message, 0) {
            Ok(bytes) => {
                let fds = Vec::new();
                self.deliver_or_drop(peer, Outgoing { bytes, fds }, what);
            }
            Err(e) => not_encoded(peer, &e, what),
        }
    }

    /// A name changed hands away from an owner that does not queue for
    /// it: that owner's user is no longer charged for it.
    pub(crate) fn give_back_lost_claim(&self, change: &OwnerChange) {
        let Some(old) = change.old_owner else {
            return;
        };
        if change.new_owner == Some(old) || self.names.is_claimed_by(&change.name, old) {
            return;
        }
        if let Some(entry) = self.peers.get(&old) {
            entry.outbox.account().sub(Resource::Names, 1);
        }
    }

    /// Queues `record` for `peer`; a peer whose queue is full is
    /// disconnected (it must receive this and cannot).
    pub(crate) fn push_or_kill(&self, peer: PeerId, record: Outgoing, what: &str) {
        let Some(entry) = self.peers.get(&peer) else {
            return;
        };
        if let Err(full) = entry.outbox.push(record) {
            kill_slow_peer(peer, entry, full, what);
        }
    }

    /// Encodes and queues `message` for `peer`, disconnecting it if it
    /// cannot take it.
    pub(crate) fn deliver_or_kill(&self, peer: PeerId, message: &Message, what: &str) {
        match self.encode_for(peer, message, 0) {
            Ok(bytes) => self.push_or_kill(
                peer,
                Outgoing {
                    bytes,
                    fds: Vec::new(),
                },
                what,
            ),
            Err(e) => not_encoded(peer, &e, what),
        }
    }

    /// Sends the broker's own error to `peer`; an answer (one naming a
    /// serial) is shown to monitors too, so that a refused or failed call
    /// can be seen with its cause.
    pub(crate) fn send_error(&self, peer: PeerId, error: ErrorReply) {
        let message = Message::Error(error);
        self.deliver_or_kill(peer, &message, "an error reply");
        if matches!(&message, Message::Error(e) if e.reply_to.is_some()) {
            self.copy_to_monitors(None, Some(peer), &message);
        }
    }

    /// Tells owners and watchers about an ownership change, in
    /// dbus-daemon's order: the old owner's `NameLost`, then
    /// `NameOwnerChanged`, then the new owner's `NameAcquired`.
    pub(crate) fn announce(&self, change: &OwnerChange) {
        debug!(name = %change.name, old = %Shown(&change.old_owner), new = %Shown(&change.new_owner),
               "name owner changed");
        if let Some(old) = change.old_owner {
            let lost = Message::Event(BusEvent::NameLost {
                name: change.name.clone(),
            });
            self.deliver_or_kill(old, &lost, "a name event");
            self.copy_driver_signal_to_monitors(old, "NameLost", &change.name);
        }
        self.announce_owner(&change.name, change.old_owner, change.new_owner);
        if let Some(new) = change.new_owner {
            let acquired = Message::Event(BusEvent::NameAcquired {
                name: change.name.clone(),
            });
            self.deliver_or_kill(new, &acquired, "a name event");
            self.copy_driver_signal_to_monitors(new, "NameAcquired", &change.name);
        }
    }

    /// Tells name watchers, and every peer whose match rule selects the
    /// bus's `NameOwnerChanged` signal, that `name` went from `old` to
    /// `new` (for a unique name: the peer joined or left).
    pub(crate) fn announce_owner(&self, name: &str, old: Option<PeerId>, new: Option<PeerId>) {
        if !self.name_watchers.is_empty() {
            let changed = Message::Event(BusEvent::NameOwnerChanged {
                name: name.to_owned(),
                old_owner: old,
                new_owner: new,
            });
            for watcher in &self.name_watchers {
                self.encode_or_drop(*watcher, &changed, "a name-owner event");
            }
        }
        let text =
            |id: Option<PeerId>| Value::String(id.map(|id| id.to_string()).unwrap_or_default());
        let args = [Value::string(name), text(old), text(new)];
        self.emit_driver_signal("NameOwnerChanged", &args);
    }

    /// Sends a signal of the bus itself (`org.freedesktop.DBus` on
    /// `/org/freedesktop/DBus`) to every peer whose match rules select it,
    /// and to monitors.
    pub(crate) fn emit_driver_signal(&self, member: &str, args: &[Value]) {
        let object = BusObject {
            path: DRIVER_PATH,
            interface: DRIVER_NAME,
            names: &[],
        };
        self.emit_bus_signal(object, member, args);
    }

    /// Broadcasts a signal of one of the bus's own objects (sent by the
    /// bus, `org.freedesktop.DBus`) to the peers whose rules match it.
    pub(crate) fn emit_bus_signal(&self, object: BusObject<'_>, member: &str, args: &[Value]) {
        let no_rules = self.match_index.is_empty();
        if no_rules && self.monitors.is_empty() {
            return;
        }
        let Ok((signature, body)) = marshal(args) else {
            return;
        };
        let mut signal = Signal {
            sender: None,
            destination: None,
            path: object.path.into(),
            interface: object.interface.into(),
            member: member.into(),
            signature,
            body,
            matched: Vec::new(),
        };
        if !no_rules {
            let keys = SignalKeys {
                member,
                interface: object.interface,
                path: object.path,
                signature: &signal.signature,
                body: &signal.body,
                sender_id: DRIVER_NAME,
                sender_names: object.names,
            };
            for (peer, matched) in self.match_index.matching(&keys) {
                signal.matched = matched;
                self.encode_or_drop(peer, &Message::Signal(signal.clone()), "a bus signal");
            }
            signal.matched.clear();
        }
        self.copy_to_monitors(None, None, &Message::Signal(signal));
    }

    /// Shows monitors a new peer's `Hello` around `announce` (which makes
    /// its unique name known), as dbus-daemon's monitors see it: the call,
    /// the name's `NameOwnerChanged`, the reply, and `NameAcquired`.
    fn show_hello_to_monitors(
        &self,
        peer: PeerId,
        serial: u32,
        broker_ns: Option<u64>,
        announce: impl FnOnce(),
    ) {
        let caller = (!self.monitors.is_empty())
            .then(|| self.caller_for(peer, peer, broker_ns))
            .flatten();
        let Some(caller) = caller else {
            return announce();
        };
        let header = Header {
            path: Some(DRIVER_PATH.to_owned()),
            interface: Some(DRIVER_NAME.to_owned()),
            member: Some("Hello".to_owned()),
            ..Header::new(MessageType::MethodCall, serial)
        };
        let hello = call_to_the_bus(caller, &header, &[]);
        self.copy_to_monitors(Some(peer), None, &Message::Incoming(hello));
        announce();
        if let Ok((signature, body)) = marshal(&[Value::string(peer.to_string())]) {
            let reply = Return {
                reply_to: u64::from(serial),
                signature,
                body,
                sender: None,
            };
            self.copy_to_monitors(None, Some(peer), &Message::Return(reply));
        }
        self.copy_driver_signal_to_monitors(peer, "NameAcquired", &peer.to_string());
    }

    /// Shows monitors the bus's signal `member` about `name`, sent to
    /// `peer` alone (`NameAcquired`, `NameLost`), as D-Bus programs see it.
    fn copy_driver_signal_to_monitors(&self, peer: PeerId, member: &str, name: &str) {
        if self.monitors.is_empty() {
            return;
        }
        let Ok((signature, body)) = marshal(&[Value::string(name)]) else {
            return;
        };
        let signal = Signal {
            sender: None,
            destination: Some(Destination::Unique(peer)),
            path: DRIVER_PATH.into(),
            interface: DRIVER_NAME.into(),
            member: member.into(),
            signature,
            body,
            matched: Vec::new(),
        };
        self.copy_to_monitors(None, Some(peer), &Message::Signal(signal));
    }

    /// Sends monitors a copy of a delivered message (without its fds),
    /// with the names sender and recipient own, which their rules may use.
    pub(crate) fn copy_to_monitors(
        &self,
        sender: Option<PeerId>,
        destination: Option<PeerId>,
        message: &Message,
    ) {
        if self.monitors.is_empty() {
            return;
        }
        let owned = |peer: Option<PeerId>| -> Vec<String> {
            peer.map(|id| self.names.owned_by(id).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let copy = Message::Monitored(Monitored {
            sender_names: owned(sender),
            destination_names: owned(destination),
            ..Monitored::new(sender, destination, message.clone())
        });
        for monitor in &self.monitors {
            if Some(*monitor) != destination {
                self.encode_or_drop(*monitor, &copy, "a monitor copy");
            }
        }
    }

    /// The identity of `caller` as a callee in `viewer`'s namespace sees it.
    pub(crate) fn caller_for(
        &self,
        caller: PeerId,
        viewer: PeerId,
        broker_ns: Option<u64>,
    ) -> Option<Caller> {
        let from = self.peers.get(&caller)?;
        let to = self.peers.get(&viewer)?;
        let identity = &from.identity;
        Some(Caller {
            id: caller,
            pid: from.namespace.pid_seen_from(&to.namespace, broker_ns),
            uid: identity.uid,
            gid: identity.gid,
            groups: identity.groups.clone(),
            pidfs_id: identity.pidfs_id,
            exe: identity.exe.clone(),
            unit: identity.unit.clone(),
            label: identity.label.clone(),
        })
    }
}

/// Logs a message that could not be written for `peer` (quietly when its
/// face simply has no such message).
pub(crate) fn not_encoded(peer: PeerId, error: &EncodeError, what: &str) {
    match error {
        EncodeError::NotForThisFace(_) => debug!(peer = %peer, "{what} not sent: {error}"),
        _ => warn!(peer = %peer, error = %error, "cannot encode {what}; dropped"),
    }
}

fn kill_slow_peer(peer: PeerId, entry: &PeerEntry, full: QueueFull, what: &str) {
    let reason = format!("{what} could not be queued: {full}");
    warn!(peer = %peer, uid = entry.identity.uid, pidfs_id = %Shown(&entry.identity.pidfs_id),
          %reason, "disconnecting a peer that does not read");
    entry.outbox.kill(reason);
}

/// What a match rule is charged by size: its strings, plus what the
/// broker spends to hold and index it.
/// What a match rule costs the broker, as charged to its owner's
/// `match_rule_bytes`: measured (RSS of pidbusd, 2 000 rules added over
/// the D-Bus face, each with distinct member, interface, path and arg0)
/// at about 5.3 KiB a rule plus 4 bytes per byte of its strings, which
/// the rule list, the match index's keys and nodes, and the D-Bus face's
/// table for `RemoveMatch` each hold.
fn rule_cost(rule: &MatchRule) -> usize {
    const HELD_PER_RULE: usize = 5 << 10;
    const COPIES: usize = 4;
    COPIES * rule.size() + HELD_PER_RULE
}

fn invalid_name(e: naming::NameError) -> ErrorReply {
    ErrorReply::broker(None, ErrorCode::InvalidName, e.to_string())
}

/// A per-uid quota refusal, as the peer is told it.
pub(crate) fn over_quota(quota: QuotaExceeded) -> ErrorReply {
    limits_exceeded(quota.to_string())
}

fn limits_exceeded(message: String) -> ErrorReply {
    ErrorReply::broker(None, ErrorCode::LimitsExceeded, message)
}

pub(crate) fn gone() -> ErrorReply {
    ErrorReply::broker(None, ErrorCode::Unavailable, "this connection is closing")
}

/// One message's worth of a listing: the entries of `entries` that fit in
/// a message of `max_message` bytes, each taking `size`, and whether more
/// are left.
fn fill_page<T>(
    max_message: usize,
    entries: impl Iterator<Item = T>,
    size: impl Fn(&T) -> usize,
) -> (Vec<T>, bool) {
    /// What the message's header and the rest of its body (the `more`
    /// flag, the array's length) may take beyond the entries.
    const ENVELOPE: usize = 256;
    let mut room = max_message.saturating_sub(ENVELOPE);
    let mut page = Vec::new();
    for entry in entries {
        let bytes = size(&entry);
        if bytes > room {
            return (page, true);
        }
        room -= bytes;
        page.push(entry);
    }
    (page, false)
}

/// Removes what `/proc` would hide from another user: the executable,
/// cgroup, units, groups and label of someone else's process.
fn hide_proc_facts(identity: &mut ProcessIdentity) {
    identity.exe = None;
    identity.exe_unverified = None;
    identity.cgroup = None;
    identity.unit = None;
    identity.user_unit = None;
    identity.groups.clear();
    identity.label = None;
}

/// A peer's place on the bus; dropping it removes the peer.
#[derive(Debug)]
pub struct Registration {
    bus: Arc<Bus>,
    id: PeerId,
    left: bool,
}

impl Registration {
    /// The peer's unique id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// Removes the peer, telling its callers why.
    pub fn leave(mut self, why: Leaving) {
        self.left = true;
        self.bus.remove_peer(self.id, why);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.left {
            self.bus.remove_peer(self.id, Leaving::Disconnected);
        }
    }
}
