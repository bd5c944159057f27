//! Process handles: peers' pidfds handed to authorized clients, and watches
//! on peers' *processes* that report how they ended.
//!
//! The broker holds every peer's pidfd from connect time. That is what lets
//! a client wait for a process that is not its child: the broker gives it a
//! duplicate ([`Bus::get_pidfd`]), or watches the process itself and sends
//! [`ProcessEvent`]s ([`Bus::watch_process`]). Holding the pidfd across the
//! exit is also what keeps the exit status available (`PIDFD_INFO_EXIT`).
//!
//! Who may have a handle is the policy's `pidfd` action.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use pidbus_protocol::pidfd::{self, AsyncPidfd};
use pidbus_protocol::{
    BrokerReply, Destination, ErrorCode, ErrorReply, ExitStatus, Message, PeerId, ProcessEvent,
    ProcessHandle,
};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::bus::quotas::{Charge, Resource};
use crate::bus::router::no_such_destination;
use crate::bus::{Bus, PeerEntry, State, over_quota};
use crate::policy::{ActionKind, Request};

/// The process watches on the bus.
///
/// Keyed by *process* (its pidfs id): however many connections of one
/// process are watched, by however many watchers, the broker holds one
/// pidfd and one task for it, and both end when the process is reaped or
/// its last watcher leaves. Every watch is charged to its watcher's user.
#[derive(Debug, Default)]
pub(crate) struct ProcessWatches {
    /// Watched processes.
    targets: BTreeMap<ProcessKey, WatchedProcess>,
    /// Which process each (watcher, watch id) watches.
    by_watcher: BTreeMap<(PeerId, u64), ProcessKey>,
}

/// What identifies a watched process: its pidfs id, or on kernels without
/// pidfs the connection it was found through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ProcessKey {
    Pidfs(u64),
    Connection(PeerId),
}

impl ProcessKey {
    fn of(peer: PeerId, entry: &PeerEntry) -> Self {
        match entry.identity.pidfs_id {
            Some(id) => ProcessKey::Pidfs(id),
            None => ProcessKey::Connection(peer),
        }
    }
}

/// One watched process and who watches it.
#[derive(Debug)]
struct WatchedProcess {
    handle: ProcessHandle,
    /// Each watch, with the charge its watcher's user pays for it.
    watchers: BTreeMap<(PeerId, u64), Charge>,
    /// The task waiting for the exit and the reap; aborted (closing the
    /// broker's duplicate of the pidfd) when the last watcher leaves.
    task: AbortHandle,
    /// The exit was seen; later watchers are told at once.
    exited: bool,
}

impl ProcessWatches {
    /// Watches held by `watcher`.
    fn count_of(&self, watcher: PeerId) -> usize {
        self.by_watcher
            .range((watcher, 0)..=(watcher, u64::MAX))
            .count()
    }

    /// Removes one watch; returns the task to stop if it was the process's
    /// last watcher.
    fn remove(&mut self, key: (PeerId, u64)) -> Option<Option<AbortHandle>> {
        let target = self.by_watcher.remove(&key)?;
        let Some(process) = self.targets.get_mut(&target) else {
            return Some(None);
        };
        process.watchers.remove(&key);
        if !process.watchers.is_empty() {
            return Some(None);
        }
        Some(self.targets.remove(&target).map(|process| process.task))
    }

    /// Removes every watch `watcher` holds (it is leaving the bus).
    pub(crate) fn remove_watcher(&mut self, watcher: PeerId) {
        let keys: Vec<_> = self
            .by_watcher
            .range((watcher, 0)..=(watcher, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            if let Some(Some(task)) = self.remove(key) {
                task.abort();
            }
        }
    }

    /// Ends the watch of `target`, returning its handle and watchers.
    fn finish(&mut self, target: ProcessKey) -> Option<WatchedProcess> {
        let process = self.targets.remove(&target)?;
        for key in process.watchers.keys() {
            self.by_watcher.remove(key);
        }
        Some(process)
    }
}

impl Bus {
    /// A duplicate of the pidfd of `target`'s process for `requester`, if
    /// the rule allows; the reply to send and the descriptor to attach.
    pub fn get_pidfd(
        &self,
        requester: PeerId,
        target: &Destination,
    ) -> Result<(BrokerReply, OwnedFd), ErrorReply> {
        let state = self.lock();
        let (target, entry) = self.allowed_target(&state, requester, target, "GetProcessFD")?;
        let pidfd = entry.pidfd.as_fd().try_clone_to_owned().map_err(|e| {
            warn!(peer = %requester, error = %e, "cannot duplicate a pidfd to hand out");
            ErrorReply::broker(
                None,
                ErrorCode::Unavailable,
                format!("the broker cannot duplicate the pidfd now ({e}); try again later"),
            )
        })?;
        let handle = ProcessHandle {
            peer: target,
            pidfs_id: entry.identity.pidfs_id,
        };
        Ok((BrokerReply::Pidfd(handle), pidfd))
    }

    /// Starts watch `id` of `watcher` on `target`'s process (replacing a
    /// watch with the same id). The watch follows the process: it lasts
    /// after the target disconnects, until the process is reaped.
    pub fn watch_process(
        self: &Arc<Self>,
        watcher: PeerId,
        id: u64,
        target: &Destination,
    ) -> Result<BrokerReply, ErrorReply> {
        let mut state = self.lock();
        let (target, entry) = self.allowed_target(&state, watcher, target, "WatchProcess")?;
        let handle = ProcessHandle {
            peer: target,
            pidfs_id: entry.identity.pidfs_id,
        };
        let key = ProcessKey::of(target, entry);
        let pidfd = Arc::clone(&entry.pidfd);
        let account = state
            .peers
            .get(&watcher)
            .map(|w| Arc::clone(w.outbox.account()))
            .ok_or_else(closing)?;
        let watches = &mut state.process_watches;
        if let Some(Some(task)) = watches.remove((watcher, id)) {
            task.abort();
        }
        let limit = self.settings().limits.max_process_watches;
        if watches.count_of(watcher) >= limit {
            return Err(ErrorReply::broker(
                None,
                ErrorCode::LimitsExceeded,
                format!("this connection already watches {limit} processes, the limit"),
            ));
        }
        let charge = account
            .try_charge(Resource::ProcessWatches, 1)
            .map_err(over_quota)?;
        let process = match watches.targets.entry(key) {
            std::collections::btree_map::Entry::Occupied(watched) => watched.into_mut(),
            std::collections::btree_map::Entry::Vacant(place) => {
                // The broker's own duplicate, taken now: a watch that could
                // not be set up is an error to the watcher, never a silent
                // drop.
                let pidfd = duplicate_for_watch(&pidfd)?;
                let task = tokio::spawn(Arc::clone(self).run_process_watch(key, target, pidfd));
                place.insert(WatchedProcess {
                    handle,
                    watchers: BTreeMap::new(),
                    task: task.abort_handle(),
                    exited: false,
                })
            }
        };
        process.watchers.insert((watcher, id), charge);
        let (handle, already_exited) = (process.handle, process.exited);
        watches.by_watcher.insert((watcher, id), key);
        if already_exited {
            let event = ProcessEvent::Exited {
                watch: id,
                process: handle,
            };
            tell(&state, watcher, event);
        }
        debug!(%watcher, id, %target, "process watched");
        Ok(BrokerReply::ProcessWatched(handle))
    }

    /// Removes watch `id` of `watcher`.
    pub fn unwatch_process(&self, watcher: PeerId, id: u64) -> Result<BrokerReply, ErrorReply> {
        match self.lock().process_watches.remove((watcher, id)) {
            Some(task) => {
                if let Some(task) = task {
                    task.abort();
                }
                Ok(BrokerReply::Done)
            }
            None => Err(ErrorReply::broker(
                None,
                ErrorCode::NoSuchName,
                format!("this connection has no process watch {id}"),
            )),
        }
    }

    /// The target peer, if it exists and the rule lets `requester` have its
    /// process handle; denials are logged with both identities and the rule.
    fn allowed_target<'s>(
        &self,
        state: &'s State,
        requester: PeerId,
        target: &Destination,
        what: &str,
    ) -> Result<(PeerId, &'s crate::bus::PeerEntry), ErrorReply> {
        target
            .validate()
            .map_err(|e| ErrorReply::broker(None, ErrorCode::InvalidName, e.to_string()))?;
        let requester_entry = state.peers.get(&requester).ok_or_else(|| {
            ErrorReply::broker(None, ErrorCode::Unavailable, "this connection is closing")
        })?;
        let (id, entry) = state
            .resolve(target)
            .and_then(|id| Some((id, state.peers.get(&id)?)))
            .ok_or_else(|| {
                ErrorReply::broker(None, ErrorCode::NoSuchName, no_such_destination(target))
            })?;
        let names = state.names_of(id);
        let request = Request {
            names: &names,
            target: Some(&entry.identity),
            ..Request::new(ActionKind::Pidfd, &requester_entry.identity)
        }
        .live(requester_entry.live());
        state.authorize(Some(requester), &request, format_args!("{what} of {id}"))?;
        debug!(peer = %requester, %target, "{what} allowed");
        Ok((id, entry))
    }

    /// Waits for the exit and then the reap of a watched process, telling
    /// its watchers each time. Aborted when the last watcher goes.
    async fn run_process_watch(
        self: Arc<Self>,
        key: ProcessKey,
        through: PeerId,
        pidfd: AsyncPidfd,
    ) {
        if let Err(e) = pidfd.exited().await {
            self.fail_watch(key, &format!("cannot wait for the watched process: {e}"));
            return;
        }
        // The peer's own task notices the exit too, routes what the process
        // sent before dying and removes it; watchers hear of the exit after
        // that, so its names and pending calls are gone by then.
        self.peer_gone(through).await;
        self.tell_exited(key);
        let status = match pidfd.reaped().await {
            Ok(()) => exit_status_of(&pidfd, through),
            Err(e) => {
                warn!(target = %through, error = %e, "cannot wait for the reap of a watched process");
                None
            }
        };
        let mut state = self.lock();
        let Some(process) = state.process_watches.finish(key) else {
            return;
        };
        let how = match &status {
            Some(pidbus_protocol::ExitStatus::Code(code)) => format!("exit code {code}"),
            Some(pidbus_protocol::ExitStatus::Signal(signal)) => format!("signal {signal}"),
            None => "unknown".to_owned(),
        };
        debug!(target = %through, status = %how, watchers = process.watchers.len(), "watched process reaped");
        for (watcher, watch) in process.watchers.into_keys() {
            let event = ProcessEvent::Reaped {
                watch,
                process: process.handle,
                status,
            };
            tell(&state, watcher, event);
        }
    }

    /// A watch that cannot go on ends, logged: its watchers get no
    /// `Reaped` event, which without a status would claim too much.
    fn fail_watch(&self, key: ProcessKey, reason: &str) {
        let mut state = self.lock();
        let Some(process) = state.process_watches.finish(key) else {
            return;
        };
        let watchers = process.watchers.len();
        warn!(target = %process.handle.peer, %reason, watchers, "process watch ended");
    }

    /// Tells every watcher of `key` that the process exited, and
    /// remembers it for watchers that come later.
    fn tell_exited(&self, key: ProcessKey) {
        let mut state = self.lock();
        let Some(process) = state.process_watches.targets.get_mut(&key) else {
            return;
        };
        process.exited = true;
        let handle = process.handle;
        let watchers: Vec<_> = process.watchers.keys().copied().collect();
        for (watcher, watch) in watchers {
            let event = ProcessEvent::Exited {
                watch,
                process: handle,
            };
            tell(&state, watcher, event);
        }
    }
}

/// The broker's own duplicate of a peer's pidfd for a process watch,
/// registered with the reactor.
fn duplicate_for_watch(pidfd: &OwnedFd) -> Result<AsyncPidfd, ErrorReply> {
    pidfd.try_clone().and_then(AsyncPidfd::new).map_err(|e| {
        warn!(error = %e, "cannot duplicate a pidfd to watch its process");
        ErrorReply::broker(
            None,
            ErrorCode::Unavailable,
            format!("the broker cannot watch the process now ({e}); try again later"),
        )
    })
}

fn closing() -> ErrorReply {
    ErrorReply::broker(None, ErrorCode::Unavailable, "this connection is closing")
}

/// Sends `event` to `watcher` (a watcher that cannot take it is cut, like
/// any peer that must receive an event and cannot).
fn tell(state: &State, watcher: PeerId, event: ProcessEvent) {
    state.deliver_or_kill(watcher, &Message::Process(event), "a process event");
}

fn exit_status_of(pidfd: &AsyncPidfd, target: PeerId) -> Option<ExitStatus> {
    pidfd::exit_status(pidfd.as_fd()).unwrap_or_else(|e| {
        warn!(%target, error = %e, "cannot read the exit status of a watched process");
        None
    })
}
