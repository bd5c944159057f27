//! Other peers' processes: getting their pidfds from the broker, and having
//! the broker watch them for exit.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pidbus_protocol::{
    BrokerReply, BrokerRequest, Destination, ExitStatus, ProcessEvent, ProcessHandle,
};
use tokio::sync::watch;

use crate::connection::{Connection, unexpected};
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
        let (reply, mut fds) = self
            .shared
            .request_with_fds(BrokerRequest::GetPidfd { target }, &[])
            .await?;
        let BrokerReply::Pidfd(handle) = reply else {
            return Err(unexpected("GetPidfd", &reply));
        };
        if fds.len() != 1 {
            return Err(Error::Protocol(format!(
                "the broker answered GetPidfd with {} descriptors instead of one",
                fds.len()
            )));
        }
        let fd = fds.remove(0);
        PidFd::from_broker(fd, handle.peer, handle.pidfs_id)
    }

    /// Has the broker watch the process behind `target` and report when it
    /// exits and how it ended. The watch follows the process, not its
    /// connection. Same access rule as [`pidfd`](Self::pidfd).
    ///
    /// Unlike a [`PidFd`], this tells how the process ended even when it
    /// lives in a pid namespace this process cannot see into: the broker
    /// reads the status, not the client.
    pub async fn watch_process(&self, target: &str) -> Result<ProcessWatch> {
        let target: Destination = target.parse()?;
        // Registered before the broker knows the watch: no event is missed.
        // If the request fails or is cancelled, dropping `watch` undoes it.
        let (id, state) = self.shared.process_watches.add()?;
        let mut watch = ProcessWatch {
            id,
            state,
            // Replaced by the broker's answer before anyone sees it.
            process: ProcessHandle {
                peer: pidbus_protocol::PeerId(0),
                pidfs_id: None,
            },
            conn: self.clone(),
        };
        match self
            .shared
            .request(BrokerRequest::WatchProcess { id, target })
            .await?
        {
            BrokerReply::ProcessWatched(handle) => {
                watch.process = handle;
                Ok(watch)
            }
            other => Err(unexpected("WatchProcess", &other)),
        }
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
            self.conn
                .request_and_forget(BrokerRequest::UnwatchProcess { id: self.id });
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
    last_id: u64,
    watches: HashMap<u64, watch::Sender<Watched>>,
    closed: bool,
}

impl ProcessWatches {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Single map operations only.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self) -> Result<(u64, watch::Receiver<Watched>)> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Error::Disconnected { reason: None });
        }
        inner.last_id += 1;
        let id = inner.last_id;
        let (tx, rx) = watch::channel(Watched::Process(ProcessState::Running));
        inner.watches.insert(id, tx);
        Ok((id, rx))
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
        let inner = self.lock();
        let Some(tx) = inner.watches.get(&event.watch()) else {
            tracing::debug!(
                watch = event.watch(),
                "event of a process watch nobody holds"
            );
            return;
        };
        let state = match event {
            ProcessEvent::Exited { .. } => ProcessState::Exited,
            ProcessEvent::Reaped { status, .. } => ProcessState::Reaped(status),
        };
        tx.send_replace(Watched::Process(state));
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
