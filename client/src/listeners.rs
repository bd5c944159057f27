//! Broadcasting one kind of event to every stream that wants it (name
//! events, monitor copies).

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::signals::STREAM_BUFFER;

/// The open streams of one kind of event on a connection.
#[derive(Debug)]
pub(crate) struct Listeners<T> {
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    senders: Vec<mpsc::Sender<T>>,
    /// The connection is gone: no stream is added any more.
    closed: bool,
}

impl<T> Default for Listeners<T> {
    fn default() -> Self {
        Listeners {
            inner: Mutex::new(Inner {
                senders: Vec::new(),
                closed: false,
            }),
        }
    }
}

impl<T: Clone> Listeners<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Single vector operations only.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new stream; fails once the connection is closed.
    pub(crate) fn add(&self) -> Result<mpsc::Receiver<T>> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Error::Disconnected { reason: None });
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        inner.senders.push(tx);
        Ok(rx)
    }

    /// Hands `item` to every open stream, dropping it (with a warning) for
    /// a stream whose buffer is full: the connection's reader never waits.
    pub(crate) fn dispatch(&self, item: T, what: &str) {
        let mut inner = self.lock();
        inner.senders.retain(|s| !s.is_closed());
        for sender in &inner.senders {
            if sender.try_send(item.clone()).is_err() {
                tracing::warn!("{what} stream is full; dropped");
            }
        }
    }

    /// Whether any stream is still open.
    pub(crate) fn has_streams(&self) -> bool {
        self.lock().senders.iter().any(|s| !s.is_closed())
    }

    /// Ends every stream (the connection is gone).
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.senders.clear();
    }
}
