//! Other peers' processes: getting their pidfds from the broker, and having
//! the broker watch them for exit.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use std::os::fd::OwnedFd;

use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::{Destination, ExitStatus, PeerId, ProcessEvent, ProcessHandle};
use tokio::sync::watch;

use crate::connection::{BUS_NAME, Connection, PIDBUS_INTERFACE};
use crate::error::{Error, Result};
use crate::pidfd::{PidFd, ProcessState};

impl Connection {
    /// A [`PidFd`] of the process behind `target` (a unique id `:17` or a
    /// well-known name).
    ///
    /// The broker decides who may have it: root may have any peer's, others
    /// those of peers running under their own uid, and on the system bus
    /// also those of well-known name owners ([`Error::AccessDenied`]
    /// otherwise). The descriptor counts against this connection's bound on
    /// descriptors waiting in the broker ([`Error::LimitsExceeded`] when
    /// unread messages already hold too many).
    pub async fn pidfd(&self, target: &str) -> Result<PidFd> {
        let target: Destination = target.parse()?;
        let peer = self.unique_of(&target).await?;
        let name = peer.to_string();
        let mut fds = if self.shared.on_pidbus() {
            let args = [Value::string(name)];
            let (_, fds) = self
                .shared
                .call_bus(PIDBUS_INTERFACE, "GetProcessFD", &args, &[])
                .await?;
            fds
        } else {
            self.process_fd_from_credentials(&name).await?
        };
        if fds.len() != 1 {
            return Err(Error::Protocol(format!(
                "the bus answered with {} descriptors instead of one pidfd",
                fds.len()
            )));
        }
        PidFd::from_broker(fds.remove(0), peer, None)
    }

    /// The unique id of `target`'s owner now.
    async fn unique_of(&self, target: &Destination) -> Result<PeerId> {
        match target {
            Destination::Unique(id) => Ok(*id),
            Destination::Name(name) => self.name_owner(name).await,
        }
    }

    /// `ProcessFD` of `GetConnectionCredentials`, where the bus offers it
    /// (dbus-broker ≥ 34, dbus-daemon ≥ 1.15.8).
    async fn process_fd_from_credentials(&self, name: &str) -> Result<Vec<OwnedFd>> {
        if !self.shared.fd_passing() {
            return Err(Error::NotSupported {
                feature: "process handles",
                reason: "the bus did not agree to descriptor passing".into(),
            });
        }
        let args = [Value::string(name)];
        let (values, fds) = self
            .shared
            .call_bus(BUS_NAME, "GetConnectionCredentials", &args, &[])
            .await?;
        let offered = matches!(values.first(), Some(Value::Array { items, .. })
            if items.iter().any(|entry| matches!(entry,
                Value::DictEntry(key, _) if key.as_str() == Some("ProcessFD"))));
        if !offered || fds.is_empty() {
            return Err(Error::NotSupported {
                feature: "process handles",
                reason: "this bus's GetConnectionCredentials has no ProcessFD (dbus-broker ≥ 34 \
                         and dbus-daemon ≥ 1.15.8 give it)"
                    .into(),
            });
        }
        Ok(fds)
    }

    /// Has the broker watch the process behind `target` and report when it
    /// exits and how it ended. The watch follows the process, not its
    /// connection. Same access rule as [`pidfd`](Self::pidfd).
    ///
    /// Unlike a [`PidFd`], this tells how the process ended even when it
    /// lives in a pid namespace this process cannot see into: the broker
    /// reads the status, not the client.
    pub async fn watch_process(&self, target: &str) -> Result<ProcessWatch> {
        self.shared.needs_pidbus("process watches")?;
        let target: Destination = target.parse()?;
        let args = [Value::string(target.to_string())];
        let values = self
            .shared
            .bus_call(PIDBUS_INTERFACE, "WatchProcess", &args)
            .await?;
        let (Some(watch), Some(peer)) = (
            values.first().and_then(Value::as_u32),
            values
                .get(1)
                .and_then(Value::as_str)
                .and_then(|p| p.parse().ok()),
        ) else {
            return Err(Error::Protocol(
                "WatchProcess answered something else than (ust)".into(),
            ));
        };
        let pidfs_id = match values.get(2) {
            Some(Value::UInt64(id)) if *id != 0 => Some(*id),
            _ => None,
        };
        let id = u64::from(watch);
        let state = self.shared.process_watches.add(id)?;
        Ok(ProcessWatch {
            id,
            state,
            process: ProcessHandle { peer, pidfs_id },
            conn: self.clone(),
        })
    }
}

/// A watch on another peer's process (see [`Connection::watch_process`]).
/// Dropping it ends the watch.
#[derive(Debug)]
pub struct ProcessWatch {
    id: u64,
    state: watch::Receiver<Watched>,
    process: ProcessHandle,
    conn: Connection,
}

/// What a watch knows, as its events arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watched {
    /// An event moved the process on.
    Process(ProcessState),
    /// The connection closed first.
    Disconnected,
}

impl ProcessWatch {
    /// The watched process: the peer it was found through and its pidfs id.
    pub fn process(&self) -> ProcessHandle {
        self.process
    }

    /// What is known so far.
    pub fn state(&self) -> Result<ProcessState> {
        match *self.state.borrow() {
            Watched::Process(state) => Ok(state),
            Watched::Disconnected => Err(Error::Disconnected { reason: None }),
        }
    }

    /// Resolves once the process has exited. By then the broker has taken
    /// its names away and failed the calls waiting on it.
    pub async fn exited(&self) -> Result<()> {
        self.wait_for(|state| state != ProcessState::Running)
            .await
            .map(drop)
    }

    /// Resolves once the process has been reaped, with how it ended
    /// (`None` when the kernel cannot say, before Linux 6.15).
    pub async fn reaped(&self) -> Result<Option<ExitStatus>> {
        match self
            .wait_for(|state| matches!(state, ProcessState::Reaped(_)))
            .await?
        {
            ProcessState::Reaped(status) => Ok(status),
            _ => Err(Error::Protocol("process watch ended early".into())),
        }
    }

    async fn wait_for(&self, done: impl Fn(ProcessState) -> bool) -> Result<ProcessState> {
        let mut state = self.state.clone();
        let seen = state
            .wait_for(|watched| match watched {
                Watched::Process(state) => done(*state),
                Watched::Disconnected => true,
            })
            .await
            .map(|watched| *watched);
        match seen {
            Ok(Watched::Process(state)) => Ok(state),
            Ok(Watched::Disconnected) | Err(_) => Err(Error::Disconnected { reason: None }),
        }
    }
}

impl Drop for ProcessWatch {
    fn drop(&mut self) {
        // This side ignores the watch's events from now on.
        let finished = self.conn.shared.process_watches.remove(self.id);
        if !finished {
            let watch = Value::UInt32(u32::try_from(self.id).unwrap_or(u32::MAX));
            self.conn
                .shared
                .bus_call_and_forget(PIDBUS_INTERFACE, "UnwatchProcess", vec![watch]);
        }
    }
}

/// The process watches of a connection, by watch id.
#[derive(Debug, Default)]
pub(crate) struct ProcessWatches {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    watches: HashMap<u64, watch::Sender<Watched>>,
    /// The last state of watches whose id the bus's answer has not told
    /// yet (the bus reports a process that exited already at once, ahead
    /// of its answer).
    early: HashMap<u64, ProcessState>,
    closed: bool,
}

/// Most events of watches not yet known that are kept.
const EARLY_EVENTS: usize = 256;

impl ProcessWatches {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Single map operations only.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, id: u64) -> Result<watch::Receiver<Watched>> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Error::Disconnected { reason: None });
        }
        let state = inner.early.remove(&id).unwrap_or(ProcessState::Running);
        let (tx, rx) = watch::channel(Watched::Process(state));
        inner.watches.insert(id, tx);
        Ok(rx)
    }

    /// Forgets watch `id`; `true` if the broker had already ended it (the
    /// process was reaped), so there is nothing to remove there.
    fn remove(&self, id: u64) -> bool {
        match self.lock().watches.remove(&id) {
            Some(tx) => matches!(*tx.borrow(), Watched::Process(ProcessState::Reaped(_))),
            None => true,
        }
    }

    /// Moves a watch on with an event from the broker.
    pub(crate) fn dispatch(&self, event: ProcessEvent) {
        let mut inner = self.lock();
        let watch = event.watch();
        let state = match event {
            ProcessEvent::Exited { .. } => ProcessState::Exited,
            ProcessEvent::Reaped { status, .. } => ProcessState::Reaped(status),
        };
        match inner.watches.get(&watch) {
            Some(tx) => {
                tx.send_replace(Watched::Process(state));
            }
            None => {
                if inner.early.len() >= EARLY_EVENTS {
                    inner.early.clear();
                }
                inner.early.insert(watch, state);
            }
        }
    }

    /// Ends every watch (the connection is gone).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.disconnect_all();
    }

    /// Ends every watch as disconnected (unless already reaped); new
    /// watches may still be made (on a reconnected connection).
    pub(crate) fn disconnect_all(&self) {
        let mut inner = self.lock();
        inner.early.clear();
        for (_, tx) in inner.watches.drain() {
            tx.send_if_modified(|watched| {
                let reaped = matches!(watched, Watched::Process(ProcessState::Reaped(_)));
                if !reaped {
                    *watched = Watched::Disconnected;
                }
                !reaped
            });
        }
    }
}
