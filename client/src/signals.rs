//! Signals: emitting them, subscribing with match rules, and monitoring.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use pidbus_protocol::dbus::header::{Header, MessageType};
use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::match_rule::{MessageKind, SignalFields};
use pidbus_protocol::{Destination, MatchRule, Monitored, PeerId, names};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use zvariant::{DynamicType, Type};

use crate::connection::{BUS_NAME, Connection, borrowed};
use crate::error::{Error, Result, decode_body};
use crate::wire::Received;

/// How many undelivered signals a stream buffers before it drops new ones:
/// the connection's reader never waits for a slow consumer, because
/// answers to calls arrive through the same reader. A dropped signal is
/// logged (WARN) and counted: [`SignalStream::dropped`] says how many a
/// stream lost, so an application can resynchronise (re-read the state the
/// signals describe) when it is not zero.
pub const STREAM_BUFFER: usize = 1024;

/// A signal as a subscriber receives it.
#[derive(Debug)]
pub struct Signal {
    /// The emitter (stamped by the broker; cannot be forged).
    pub sender: PeerId,
    /// The destination of a unicast signal, `None` for a broadcast.
    pub destination: Option<Destination>,
    /// Object path.
    pub path: String,
    /// Interface.
    pub interface: String,
    /// Signal name.
    pub member: String,
    /// The D-Bus signature of the arguments.
    pub signature: String,
    /// The arguments, marshalled as `signature` says.
    pub body: Vec<u8>,
    /// Descriptors passed with the signal.
    pub fds: Vec<OwnedFd>,
}

impl Signal {
    /// Decodes the arguments as `T` (a tuple for several).
    pub fn args<T: DeserializeOwned + Type>(&self) -> Result<T> {
        decode_body("signal arguments", &self.signature, &self.body, &self.fds)
    }
}

/// The signal streams of a connection, by match rule id.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last_id: u64,
    streams: HashMap<u64, (mpsc::Sender<Signal>, Arc<AtomicU64>)>,
    /// Each stream's rule, to add again after a reconnect.
    rules: HashMap<u64, MatchRule>,
    /// The owner of each well-known name a rule names as its sender (the
    /// bus matches a rule's well-known sender by its owner at emission;
    /// so does the demultiplexing here), kept by `NameOwnerChanged`.
    owners: HashMap<String, String>,
    closed: bool,
}

impl Subscriptions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Single map operations only.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a signal to every stream whose rule it matched.
    /// Hands a signal to every stream whose rule it matches (the bus sent
    /// it because one of this connection's rules did).
    pub(crate) fn dispatch(&self, received: Received) {
        let Received { header, body, fds } = received;
        let Some(sender_name) = header.sender.clone() else {
            tracing::debug!("signal without a sender from the bus; dropped");
            return;
        };
        let sender = sender_name.parse::<PeerId>().unwrap_or(PeerId(0));
        let (path, interface, member) = (
            header.path.unwrap_or_default(),
            header.interface.unwrap_or_default(),
            header.member.unwrap_or_default(),
        );
        let fields = SignalFields {
            kind: MessageKind::Signal,
            path: &path,
            interface: &interface,
            member: &member,
            signature: &header.signature,
            body: &body,
            destination: header.destination.as_deref(),
        };
        let inner = self.lock();
        let sender_is = |name: &str| {
            name == sender_name
                || inner
                    .owners
                    .get(name)
                    .is_some_and(|owner| *owner == sender_name)
        };
        for (id, rule) in &inner.rules {
            if !rule.matches(&fields, sender_is) {
                continue;
            }
            let Some((stream, dropped)) = inner.streams.get(id) else {
                continue;
            };
            // Each stream gets its own duplicates; the originals close
            // when this function returns.
            let fds = fds.iter().filter_map(|fd| fd.try_clone().ok()).collect();
            let copy = Signal {
                sender,
                destination: header.destination.as_deref().and_then(|d| d.parse().ok()),
                path: path.clone(),
                interface: interface.clone(),
                member: member.clone(),
                signature: header.signature.clone(),
                body: body.clone(),
                fds,
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = stream.try_send(copy) {
                let lost = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    rule = id,
                    lost,
                    "signal stream is full ({STREAM_BUFFER} unread); signal dropped"
                );
            }
        }
    }

    /// `name` is now owned by `owner` (empty: nobody), as the bus said.
    pub(crate) fn owner_changed(&self, name: &str, owner: &str) {
        let mut inner = self.lock();
        if let Some(known) = inner.owners.get_mut(name) {
            owner.clone_into(known);
        }
    }

    /// Whether some rule names a well-known sender.
    pub(crate) fn follows_owners(&self) -> bool {
        !self.lock().owners.is_empty()
    }

    /// Follows the owner of `name`, a rule's well-known sender.
    fn follow_owner(&self, name: &str, owner: String) {
        self.lock().owners.insert(name.to_owned(), owner);
    }

    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.streams.clear();
        inner.rules.clear();
    }

    /// Every open stream's rule id and rule.
    pub(crate) fn rules(&self) -> Vec<(u64, MatchRule)> {
        let inner = self.lock();
        inner
            .rules
            .iter()
            .map(|(id, rule)| (*id, rule.clone()))
            .collect()
    }

    fn add(&self, rule: &MatchRule) -> Result<(u64, mpsc::Receiver<Signal>, Arc<AtomicU64>)> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Error::Disconnected { reason: None });
        }
        inner.last_id += 1;
        let id = inner.last_id;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        inner.streams.insert(id, (tx, Arc::clone(&dropped)));
        inner.rules.insert(id, rule.clone());
        Ok((id, rx, dropped))
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        inner.streams.remove(&id);
        inner.rules.remove(&id);
    }
}

impl Connection {
    /// Emits a signal to every peer whose match rule fits.
    ///
    /// ```no_run
    /// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
    /// bus.emit("/org/example/Player", "org.example.Player", "Playing", &("Blue in Green", 337_u32)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn emit<A: Serialize + DynamicType + ?Sized>(
        &self,
        path: &str,
        interface: &str,
        member: &str,
        args: &A,
    ) -> Result<()> {
        self.send_signal(None, path, interface, member, args).await
    }

    /// Emits a signal to one peer only (a unique id or a well-known name).
    pub async fn emit_to<A: Serialize + DynamicType + ?Sized>(
        &self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: &A,
    ) -> Result<()> {
        let destination = destination.parse()?;
        self.send_signal(Some(destination), path, interface, member, args)
            .await
    }

    /// Emits a signal whose arguments are already marshalled
    /// (little-endian) as `signature` says, to `destination` only if one
    /// is given; the body is checked against the signature here.
    pub async fn emit_body(
        &self,
        destination: Option<&str>,
        path: &str,
        interface: &str,
        member: &str,
        signature: &str,
        body: Vec<u8>,
    ) -> Result<()> {
        use pidbus_protocol::dbus::body;
        body::check(signature, &body, body::Endian::Little, 0)
            .map_err(|e| crate::body::BodyError::Marshalling(e.to_string()))?;
        let destination = destination.map(str::parse).transpose()?;
        let encoded = crate::body::Encoded {
            signature: signature.to_owned(),
            bytes: body,
            fds: Vec::new(),
        };
        self.shared
            .send_signal(destination, path, interface, member, encoded)
            .await
    }

    async fn send_signal<A: Serialize + DynamicType + ?Sized>(
        &self,
        destination: Option<Destination>,
        path: &str,
        interface: &str,
        member: &str,
        args: &A,
    ) -> Result<()> {
        let body = crate::body::encode(args)?;
        self.shared
            .send_signal(destination, path, interface, member, body)
            .await
    }

    /// Subscribes to the signals `rule` matches; they arrive on the
    /// returned stream until it is dropped.
    ///
    /// ```no_run
    /// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
    /// let rule = pidbus::MatchRule { interface: Some("org.example.Player".into()), ..Default::default() };
    /// let mut signals = bus.subscribe(rule).await?;
    /// while let Some(signal) = signals.next().await {
    ///     println!("{} from {}", signal.member, signal.sender);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, rule: MatchRule) -> Result<SignalStream> {
        rule.validate()?;
        if let Some(sender) = rule.sender.as_deref().filter(|s| !s.starts_with(':')) {
            self.follow_owner(sender).await?;
        }
        // Registered before the bus knows the rule: no signal is missed.
        let (id, rx, dropped) = self.shared.subscriptions.add(&rule)?;
        let stream = SignalStream {
            id,
            rule: rule.to_string(),
            rx,
            dropped,
            conn: self.clone(),
        };
        self.shared
            .bus_call(BUS_NAME, "AddMatch", &[Value::string(stream.rule.clone())])
            .await?;
        Ok(stream)
    }

    /// Keeps track of who owns the well-known name `name`, so that
    /// signals a rule selects by that sender reach its stream.
    async fn follow_owner(&self, name: &str) -> Result<()> {
        self.shared.watch_name_owners().await?;
        let owner = match self.name_owner(name).await {
            Ok(owner) => owner.to_string(),
            Err(crate::Error::NoSuchName { .. }) => String::new(),
            Err(e) => return Err(e),
        };
        self.shared.subscriptions.follow_owner(name, owner);
        Ok(())
    }

    /// Makes this connection a monitor: from now on it gets a copy of every
    /// message on the bus, and can do nothing else (as D-Bus's
    /// `BecomeMonitor`; the policy's `monitor` action decides on pidbus).
    pub async fn monitor(&self) -> Result<MonitorStream> {
        let rx = self.shared.monitors.add()?;
        let args = [
            Value::Array {
                element: "s".into(),
                items: Vec::new(),
            },
            Value::UInt32(0),
        ];
        self.shared
            .become_monitor(&args)
            .await
            .map(|()| MonitorStream {
                rx,
                _conn: self.clone(),
            })
    }
}

/// The signals matching one subscription. Dropping it removes the match
/// rule from the broker.
#[derive(Debug)]
pub struct SignalStream {
    id: u64,
    /// The rule as the bus was given it.
    rule: String,
    rx: mpsc::Receiver<Signal>,
    dropped: Arc<AtomicU64>,
    conn: Connection,
}

impl SignalStream {
    /// The next signal; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }

    /// How many signals this stream dropped because [`STREAM_BUFFER`]
    /// of them were waiting unread.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl futures_core::Stream for SignalStream {
    type Item = Signal;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Signal>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for SignalStream {
    fn drop(&mut self) {
        // This side drops what the rule still matches until the broker
        // has removed it.
        self.conn.shared.subscriptions.remove(self.id);
        let rule = Value::string(std::mem::take(&mut self.rule));
        self.conn
            .shared
            .bus_call_and_forget(BUS_NAME, "RemoveMatch", vec![rule]);
    }
}

/// Copies of every message the broker delivers, for monitors.
#[derive(Debug)]
pub struct MonitorStream {
    rx: mpsc::Receiver<Monitored>,
    _conn: Connection,
}

impl MonitorStream {
    /// The next copy; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Monitored> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for MonitorStream {
    type Item = Monitored;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Monitored>> {
        self.rx.poll_recv(cx)
    }
}

impl crate::connection::Shared {
    /// Sends a signal with an already marshalled body.
    pub(crate) async fn send_signal(
        &self,
        destination: Option<Destination>,
        path: &str,
        interface: &str,
        member: &str,
        body: crate::body::Encoded,
    ) -> Result<()> {
        names::validate_object_path(path)?;
        names::validate_interface(interface)?;
        names::validate_member(member)?;
        let header = Header {
            path: Some(path.to_owned()),
            interface: Some(interface.to_owned()),
            member: Some(member.to_owned()),
            destination: destination.map(|d| d.to_string()),
            signature: body.signature,
            unix_fds: u32::try_from(body.fds.len()).unwrap_or(u32::MAX),
            ..Header::new(MessageType::Signal, 0)
        };
        self.send_message(header, &body.bytes, &borrowed(&body.fds))
            .await
            .map(drop)
    }

    /// Emits a broadcast signal with `args` (see [`Connection::emit`]).
    pub(crate) async fn emit<A: Serialize + DynamicType + ?Sized>(
        &self,
        path: &str,
        interface: &str,
        member: &str,
        args: &A,
    ) -> Result<()> {
        let body = crate::body::encode(args)?;
        self.send_signal(None, path, interface, member, body).await
    }
}
