//! Noticing that peers' processes exit: every peer's pidfd goes into one
//! epoll set of the broker's own, and only that set is registered with tokio.
//!
//! Why not one tokio registration per pidfd: tokio gives every registered
//! descriptor a 128-byte-aligned readiness slot, about 300 bytes of heap
//! once aligned, which was a tenth of the broker's memory per idle
//! connection (bench `conn_memory`). Here a connection's exit watch is one
//! map entry; the kernel's epoll item is not charged to the broker's RSS.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use rustix::event::{Timespec, epoll};
use tokio::io::unix::AsyncFd;

/// How many exits one wake-up delivers before looking again.
const EVENTS_PER_WAKE: usize = 64;

/// The broker's set of watched processes.
#[derive(Debug)]
pub struct ExitWatcher {
    epoll: AsyncFd<OwnedFd>,
    state: Mutex<Watches>,
}

#[derive(Debug, Default)]
struct Watches {
    next_key: u64,
    entries: HashMap<u64, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    exited: bool,
    waker: Option<Waker>,
}

impl ExitWatcher {
    /// A new, empty set. Must be called inside a tokio runtime.
    pub fn new() -> io::Result<Arc<Self>> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(Arc::new(ExitWatcher {
            epoll: pidbus_protocol::register_async(fd)?,
            state: Mutex::new(Watches::default()),
        }))
    }

    /// Starts watching the process behind `pidfd`. The watch ends when the
    /// returned handle is dropped.
    pub fn watch(self: &Arc<Self>, pidfd: Arc<OwnedFd>) -> io::Result<ExitWatch> {
        let key = {
            let mut state = self.lock();
            state.next_key += 1;
            let key = state.next_key;
            state.entries.insert(key, Entry::default());
            key
        };
        // One-shot: a zombie stays readable, and one report is all a watch
        // needs. An exit before this call is reported at once.
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        if let Err(e) = epoll::add(
            self.epoll.get_ref(),
            &*pidfd,
            epoll::EventData::new_u64(key),
            flags,
        ) {
            self.lock().entries.remove(&key);
            return Err(e.into());
        }
        Ok(ExitWatch {
            watcher: Arc::clone(self),
            key,
            pidfd,
        })
    }

    /// Delivers exits to their watches for the broker's life; returns only
    /// if the epoll set fails.
    pub async fn run(&self) -> io::Error {
        loop {
            let mut ready = match self.epoll.readable().await {
                Ok(ready) => ready,
                Err(e) => return e,
            };
            match self.deliver_ready() {
                // Cleared only if nothing new arrived since `readable`.
                Ok(count) if count < EVENTS_PER_WAKE => ready.clear_ready(),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return e.into(),
            }
        }
    }

    /// Marks the processes the set reports as exited and wakes their
    /// watches; how many it reported.
    fn deliver_ready(&self) -> rustix::io::Result<usize> {
        let mut buffer = [MaybeUninit::<epoll::Event>::uninit(); EVENTS_PER_WAKE];
        let (events, _) = epoll::wait(
            self.epoll.get_ref(),
            &mut buffer,
            Some(&Timespec::default()),
        )?;
        let mut state = self.lock();
        for event in events.iter() {
            if let Some(entry) = state.entries.get_mut(&event.data.u64()) {
                entry.exited = true;
                if let Some(waker) = entry.waker.take() {
                    waker.wake();
                }
            }
        }
        Ok(events.len())
    }

    fn lock(&self) -> MutexGuard<'_, Watches> {
        // Every critical section leaves the map consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One watched process; dropping it stops the watch.
#[derive(Debug)]
pub struct ExitWatch {
    watcher: Arc<ExitWatcher>,
    key: u64,
    pidfd: Arc<OwnedFd>,
}

impl ExitWatch {
    /// Resolves once the process has exited (a zombie counts as exited).
    pub async fn exited(&self) {
        poll_fn(|cx| {
            let mut state = self.watcher.lock();
            match state.entries.get_mut(&self.key) {
                Some(entry) if !entry.exited => {
                    entry.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        })
        .await;
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.watcher.lock().entries.remove(&self.key);
        // The pidfd may outlive the watch (process watches, handouts): take
        // it out of the set explicitly.
        let _ = epoll::delete(self.watcher.epoll.get_ref(), &*self.pidfd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn an_exit_is_reported_to_its_watch_only() {
        let watcher = ExitWatcher::new().unwrap();
        let run = tokio::spawn({
            let watcher = Arc::clone(&watcher);
            async move { watcher.run().await }
        });
        let mut short = std::process::Command::new("true").spawn().unwrap();
        let mut long = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let short_fd = Arc::new(pidbus_protocol::pidfd::pidfd_open(short.id()).unwrap());
        let long_fd = Arc::new(pidbus_protocol::pidfd::pidfd_open(long.id()).unwrap());
        let short_watch = watcher.watch(Arc::clone(&short_fd)).unwrap();
        let long_watch = watcher.watch(Arc::clone(&long_fd)).unwrap();
        short_watch.exited().await;
        assert!(!pidbus_protocol::pidfd::has_exited(long_fd.as_fd()).unwrap());
        long.kill().unwrap();
        long_watch.exited().await;
        drop((short_watch, long_watch));
        assert!(
            watcher.lock().entries.is_empty(),
            "dropped watches leave no entry"
        );
        short.wait().unwrap();
        long.wait().unwrap();
        run.abort();
    }
}
