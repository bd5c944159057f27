//! Opt-in reconnecting ([`Connection::connect_reconnecting`]): after the
//! broker goes away, connect again to the same address, then ask again for
//! the names held before and add the match rules and event subscriptions
//! again, telling the app through [`ConnectionEvent`]s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::{NameFlags, PeerId, RequestNameReply};
use tokio::sync::mpsc;

use crate::connection::{BUS_NAME, Connection, Shared, join};
use crate::error::{Error, Result};
use crate::listeners::Listeners;
use crate::wire::Reader;

/// What happened to a reconnecting connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The broker went away; reconnecting has begun. Calls in flight failed.
    Lost {
        /// Why the connection ended.
        reason: String,
    },
    /// Connected again, and what was held before was asked for again.
    Reconnected {
        /// The new unique id.
        unique_id: PeerId,
        /// Each name held or queued for before, with the broker's answer
        /// now (another peer may have taken it meanwhile).
        names: Vec<(String, RequestNameReply)>,
        /// How many signal match rules were added again.
        match_rules: usize,
    },
    /// Something could not be restored after reconnecting (the new
    /// broker's policy may forbid it); the connection itself is up.
    RestoreFailed {
        /// What was being restored (`name org.example.X`, `match rule 3`, …).
        what: String,
        /// The broker's answer.
        error: String,
    },
}

/// Longest pause between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First pause after losing the broker.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// What a reconnecting connection keeps to restore, and its event streams.
#[derive(Debug, Default)]
pub(crate) struct Restore {
    names: Mutex<BTreeMap<String, NameFlags>>,
    events: Listeners<ConnectionEvent>,
}

impl Restore {
    fn lock_names(&self) -> MutexGuard<'_, BTreeMap<String, NameFlags>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `name` is owned or queued for, with `flags`.
    pub(crate) fn claimed(&self, name: &str, flags: NameFlags) {
        self.lock_names().insert(name.to_owned(), flags);
    }

    /// `name` was given up.
    pub(crate) fn released(&self, name: &str) {
        self.lock_names().remove(name);
    }

    /// The connection is closed for good: end the event streams.
    pub(crate) fn close(&self) {
        self.events.close();
    }
}

/// Reconnects until it succeeds (or every handle is gone, which aborts the
/// reader task running this), then restores in a task of its own: the
/// restoring requests need the reader to be reading the new socket.
pub(crate) async fn reconnect(shared: &Arc<Shared>, reason: String) -> Option<Reader> {
    let restore = shared.reconnect.as_ref()?;
    shared.fail_pending(&reason);
    restore
        .events
        .dispatch(ConnectionEvent::Lost { reason }, "connection event");
    let mut pause = FIRST_BACKOFF;
    let (unique_id, reader) = loop {
        tokio::time::sleep(pause).await;
        match join(shared.address(), shared.endpoints()).await {
            Ok(joined) => {
                let unique_id = joined.unique_id;
                shared
                    .monitoring
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                shared
                    .watching_owners
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                break (unique_id, shared.replace_socket(joined));
            }
            Err(e) => {
                tracing::debug!(error = %e, "reconnecting to the broker");
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    };
    tracing::info!(%unique_id, "reconnected to the bus");
    tokio::spawn(restore_state(Arc::clone(shared), unique_id));
    Some(reader)
}

/// Asks again for names, match rules and event subscriptions, then reports.
async fn restore_state(shared: Arc<Shared>, unique_id: PeerId) {
    let Some(restore) = &shared.reconnect else {
        return;
    };
    let failed = |what: String, error: Error| {
        restore.events.dispatch(
            ConnectionEvent::RestoreFailed {
                what,
                error: error.to_string(),
            },
            "connection event",
        );
    };
    let claimed: Vec<(String, NameFlags)> = restore
        .lock_names()
        .iter()
        .map(|(name, flags)| (name.clone(), *flags))
        .collect();
    if let Err(e) = shared.learn_the_bus().await {
        failed("the verified caller on every call".to_owned(), e);
    }
    let mut names = Vec::new();
    for (name, flags) in claimed {
        match shared.request_name(&name, flags).await {
            Ok(reply) => names.push((name, reply)),
            Err(e) => failed(format!("name {name}"), e),
        }
    }
    let mut match_rules = 0;
    for (id, rule) in shared.subscriptions.rules() {
        let text = Value::string(rule.to_string());
        match shared.bus_call(BUS_NAME, "AddMatch", &[text]).await {
            Ok(_) => match_rules += 1,
            Err(e) => failed(format!("match rule {id}"), e),
        }
    }
    if (shared.name_listeners.has_streams() || shared.subscriptions.follows_owners())
        && let Err(e) = shared.watch_name_owners().await
    {
        failed("name events".to_owned(), e);
    }
    if shared.monitors.has_streams() {
        let args = [
            Value::Array {
                element: "s".into(),
                items: Vec::new(),
            },
            Value::UInt32(0),
        ];
        if let Err(e) = shared.become_monitor(&args).await {
            failed("monitoring".to_owned(), e);
        }
    }
    restore.events.dispatch(
        ConnectionEvent::Reconnected {
            unique_id,
            names,
            match_rules,
        },
        "connection event",
    );
}

impl Connection {
    /// A stream of [`ConnectionEvent`]s: when the broker goes away and when
    /// the connection is back. Only connections made with
    /// [`connect_reconnecting`](Self::connect_reconnecting) have them; for
    /// others this fails with [`Error::Protocol`] saying so.
    pub fn connection_events(&self) -> Result<ConnectionEvents> {
        let restore = self.shared.reconnect.as_ref().ok_or_else(|| {
            Error::Protocol(
                "connection events need a connection made with connect_reconnecting".into(),
            )
        })?;
        Ok(ConnectionEvents {
            rx: restore.events.add()?,
            _conn: self.clone(),
        })
    }
}

/// The events of a reconnecting connection; see
/// [`Connection::connection_events`].
#[derive(Debug)]
pub struct ConnectionEvents {
    rx: mpsc::Receiver<ConnectionEvent>,
    _conn: Connection,
}

impl ConnectionEvents {
    /// The next event; `None` once the connection is closed for good.
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for ConnectionEvents {
    type Item = ConnectionEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ConnectionEvent>> {
        self.rx.poll_recv(cx)
    }
}
