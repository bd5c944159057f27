//! The async connection to a pidbus broker: handshake, the reader task that
//! dispatches everything the broker sends, and request/answer matching.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use pidbus_protocol::transport::{RecvError, SeqPacket};
use pidbus_protocol::{
    BrokerReply, BrokerRequest, BusEvent, Hello, Message, Monitored, PROTOCOL_VERSION, PeerId,
    PeerInfo, ProcessIdentity, Request, Welcome, address, codec, limits,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::listeners::Listeners;
use crate::process::ProcessWatches;
use crate::serve::Handlers;
use crate::signals::Subscriptions;

/// What answered a request or call.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The broker's reply to a broker request.
    Broker(Box<BrokerReply>),
    /// A callee's return value: its signature and body.
    Return(String, Vec<u8>),
}

/// An answer with the descriptors that came with it.
pub(crate) type Outcome = Result<(Answer, Vec<OwnedFd>)>;

/// An authenticated connection to a pidbus broker.
///
/// Cheap to clone; all clones share one socket. Requests and calls may be
/// issued concurrently from many tasks: answers are matched by serial.
/// Calls to objects this connection [serves](Connection::serve) are handled
/// concurrently, each in its own task. The connection closes when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
    _reader: Arc<ReaderTask>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Replaced when an opt-in reconnect succeeds.
    socket: RwLock<Arc<SeqPacket>>,
    address: PathBuf,
    unique_id: AtomicU64,
    identity: ProcessIdentity,
    /// What to restore after a broker restart, and who hears about it;
    /// `None` unless the connection was made with reconnecting on.
    pub(crate) reconnect: Option<crate::reconnect::Restore>,
    pub(crate) max_record_size: usize,
    next_serial: AtomicU64,
    pending: Mutex<Pending>,
    pub(crate) handlers: Handlers,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) name_listeners: Listeners<BusEvent>,
    pub(crate) monitors: Listeners<Monitored>,
    pub(crate) process_watches: ProcessWatches,
}

/// Requests waiting for their answer. Once `closed` is set no request is
/// added, so none can wait forever.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Outcome>>,
    closed: Option<String>,
}

impl Pending {
    /// Fails every waiting request as disconnected for `reason`.
    fn fail_waiting(&mut self, reason: &str) {
        for (_, tx) in self.waiting.drain() {
            let _ = tx.send(Err(Error::Disconnected {
                reason: Some(reason.to_owned()),
            }));
        }
    }
}

/// Aborts the reader when the last connection handle is dropped.
#[derive(Debug)]
struct ReaderTask(JoinHandle<()>);

impl Drop for ReaderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Connection {
    /// Connects to the broker listening at `address` and performs the
    /// handshake. Must be called inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> pidbus::Result<()> {
    /// let bus = pidbus::Connection::connect("/run/pidbus/system.sock").await?;
    /// let me = bus.whoami().await?;
    /// println!("{} is uid {}", me.id, me.identity.uid);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(address: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(address.as_ref(), None).await
    }

    /// Connects like [`connect`](Self::connect), and when the broker goes
    /// away (restart, crash) keeps reconnecting to the same address, then
    /// asks again for the names this connection held or queued for and
    /// re-adds its match rules and event subscriptions.
    ///
    /// Calls and requests in flight when the broker went away fail with
    /// [`Error::Disconnected`], as do those made while it is away; signal,
    /// name-event and monitor streams stay open across the gap. Process
    /// watches end (the processes were watched through the old broker).
    /// [`connection_events`](Self::connection_events) tells the app when the
    /// connection is lost and when (and with what) it is back. The unique
    /// id changes with every reconnect.
    ///
    /// ```no_run
    /// use pidbus::{Connection, ConnectionEvent, NameFlags};
    /// # async fn demo() -> pidbus::Result<()> {
    /// let bus = Connection::connect_reconnecting("/run/pidbus/system.sock").await?;
    /// bus.request_name("org.example.App", NameFlags::default()).await?;
    /// let mut events = bus.connection_events()?;
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         ConnectionEvent::Lost { reason } => eprintln!("bus lost: {reason}"),
    ///         ConnectionEvent::Reconnected { unique_id, names, .. } => {
    ///             eprintln!("back as {unique_id}: {names:?}")
    ///         }
    ///         other => eprintln!("{other:?}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_reconnecting(address: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(address.as_ref(), Some(crate::reconnect::Restore::default())).await
    }

    async fn connect_with(
        address: &Path,
        reconnect: Option<crate::reconnect::Restore>,
    ) -> Result<Self> {
        let address = address.to_owned();
        let (socket, welcome) = open_and_handshake(&address).await?;
        let max_record_size = usize::try_from(welcome.max_record_size)
            .unwrap_or(limits::MAX_CONFIGURABLE_RECORD_SIZE)
            .min(limits::MAX_CONFIGURABLE_RECORD_SIZE);
        let shared = Arc::new(Shared {
            socket: RwLock::new(Arc::new(socket)),
            address,
            unique_id: AtomicU64::new(welcome.unique_id.0),
            identity: welcome.identity,
            reconnect,
            max_record_size,
            next_serial: AtomicU64::new(1),
            pending: Mutex::new(Pending::default()),
            handlers: Handlers::default(),
            subscriptions: Subscriptions::default(),
            name_listeners: Listeners::default(),
            monitors: Listeners::default(),
            process_watches: ProcessWatches::default(),
        });
        // Aborted (releasing its reference) when the last handle is dropped.
        let reader = tokio::spawn(read_messages(Arc::clone(&shared)));
        Ok(Connection {
            shared,
            _reader: Arc::new(ReaderTask(reader)),
        })
    }

    /// Connects to `$PIDBUS_ADDRESS`, or to the session bus if it is unset.
    pub async fn connect_default() -> Result<Self> {
        Self::connect(address::default_client_address()).await
    }

    /// Connects to the session bus of the current user.
    pub async fn session() -> Result<Self> {
        Self::connect(address::session_bus_path()).await
    }

    /// Connects to the system bus.
    pub async fn system() -> Result<Self> {
        Self::connect(address::SYSTEM_BUS_PATH).await
    }

    /// The socket path this connection uses.
    pub fn address(&self) -> &Path {
        &self.shared.address
    }

    /// The unique id the broker gave this connection.
    pub fn unique_id(&self) -> PeerId {
        self.shared.unique_id()
    }

    /// This process's identity as the broker verified it at connect time.
    pub fn identity(&self) -> &ProcessIdentity {
        &self.shared.identity
    }

    /// Sends `payload` and `fds` to the broker, which echoes both back.
    ///
    /// Checks liveness and end-to-end descriptor passing.
    pub async fn ping(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        let request = BrokerRequest::Ping {
            payload: payload.to_vec(),
        };
        match self.shared.request_with_fds(request, fds).await? {
            (BrokerReply::Pong { payload }, fds) => Ok((payload, fds)),
            (other, _) => Err(unexpected("Ping", &other)),
        }
    }

    /// Asks the broker who this connection is (same as [`identity`](Self::identity),
    /// fetched anew).
    pub async fn whoami(&self) -> Result<PeerInfo> {
        match self.shared.request(BrokerRequest::GetIdentity).await? {
            BrokerReply::Identity(info) => Ok(info),
            other => Err(unexpected("GetIdentity", &other)),
        }
    }

    /// Every peer connected to the bus, with its verified identity (asked
    /// for page by page, so a peer joining or leaving meanwhile may be
    /// missed or listed; another user's `/proc`-only facts are left out
    /// unless this process is root or the broker's user).
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.all_pages(
            |last: Option<&PeerInfo>| BrokerRequest::ListPeers {
                after: last.map(|peer| peer.id),
            },
            |reply| match reply {
                BrokerReply::Peers { peers, more } => Ok((peers, more)),
                other => Err(unexpected("ListPeers", &other)),
            },
        )
        .await
    }

    /// Asks for a listing page by page: `request` asks for the page after
    /// the last entry so far, `page` takes the entries and the "more
    /// follow" flag out of the reply. Ends when no more follow, or at an
    /// empty page.
    pub(crate) async fn all_pages<T>(
        &self,
        request: impl Fn(Option<&T>) -> BrokerRequest,
        page: impl Fn(BrokerReply) -> Result<(Vec<T>, bool)>,
    ) -> Result<Vec<T>> {
        let mut all = Vec::new();
        loop {
            let reply = self.shared.request(request(all.last())).await?;
            let (entries, more) = page(reply)?;
            let empty = entries.is_empty();
            all.extend(entries);
            if !more || empty {
                return Ok(all);
            }
        }
    }

    /// Sends a request from a destructor, without waiting: neither for
    /// room in the socket nor for the answer (which the reader drops). If
    /// it cannot be sent now, the broker keeps what it would have undone
    /// until the connection closes.
    pub(crate) fn request_and_forget(&self, body: BrokerRequest) {
        let request = Message::Request(Request {
            serial: self.shared.next_serial(),
            body,
        });
        if let Ok(bytes) = self.shared.encode(&request) {
            let _ = self.shared.socket().try_send(&bytes, &[]);
        }
    }

    /// Sends a record that expects no answer.
    pub(crate) async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        self.shared.send(bytes, fds).await
    }
}

impl Shared {
    /// Sends a record, unless the connection is known to be closed.
    pub(crate) async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        if let Some(reason) = &self.lock_pending().closed {
            return Err(Error::Disconnected {
                reason: Some(reason.clone()),
            });
        }
        Ok(self.socket().send(bytes, fds).await?)
    }
}

/// Drops a pending entry when the request future ends.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    serial: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.lock_pending().waiting.remove(&self.serial);
    }
}

impl Shared {
    /// Sends a broker request without descriptors and waits for the reply.
    pub(crate) async fn request(&self, body: BrokerRequest) -> Result<BrokerReply> {
        self.request_with_fds(body, &[])
            .await
            .map(|(reply, _)| reply)
    }

    pub(crate) async fn request_with_fds(
        &self,
        body: BrokerRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(BrokerReply, Vec<OwnedFd>)> {
        let serial = self.next_serial();
        let bytes = self.encode(&Message::Request(Request { serial, body }))?;
        match self.exchange(serial, &bytes, fds).await? {
            (Answer::Broker(reply), fds) => Ok((*reply, fds)),
            (Answer::Return(..), _) => Err(Error::Protocol(
                "the broker answered a request with a call's return".into(),
            )),
        }
    }

    pub(crate) fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Encodes a message within the broker's record limit.
    pub(crate) fn encode(&self, message: &Message) -> Result<Vec<u8>> {
        Ok(codec::encode(message, self.max_record_size)?)
    }

    /// Sends a record and waits for the answer carrying `serial`.
    pub(crate) async fn exchange(
        &self,
        serial: u64,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Outcome {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock_pending();
            if let Some(reason) = &pending.closed {
                return Err(Error::Disconnected {
                    reason: Some(reason.clone()),
                });
            }
            pending.waiting.insert(serial, tx);
        }
        // Removes the entry however this future ends: error, answer, or
        // being dropped while the send or the answer is still awaited.
        let _forget = ForgetOnDrop {
            shared: self,
            serial,
        };
        self.socket().send(bytes, fds).await?;
        rx.await
            .unwrap_or_else(|_| Err(Error::Disconnected { reason: None }))
    }
}

impl Shared {
    /// The current socket (a reconnect replaces it).
    pub(crate) fn socket(&self) -> Arc<SeqPacket> {
        Arc::clone(&self.socket.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The unique id the broker gave the current connection.
    pub(crate) fn unique_id(&self) -> PeerId {
        PeerId(self.unique_id.load(Ordering::Relaxed))
    }

    /// Switches to a new connection to the broker.
    pub(crate) fn replace_socket(&self, socket: SeqPacket, welcome: &Welcome) {
        *self.socket.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(socket);
        self.unique_id.store(welcome.unique_id.0, Ordering::Relaxed);
    }

    /// The broker went away and a reconnect follows: what waited for an
    /// answer fails now, streams stay open.
    pub(crate) fn fail_pending(&self, reason: &str) {
        self.lock_pending().fail_waiting(reason);
        self.process_watches.disconnect_all();
    }

    pub(crate) fn address(&self) -> &Path {
        &self.address
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // Every critical section is a single map operation: still consistent
        // after a panic elsewhere.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails every waiting request, ends every stream, and refuses new
    /// requests.
    fn close(&self, reason: String) {
        if let Some(restore) = &self.reconnect {
            restore.close();
        }
        let mut pending = self.lock_pending();
        pending.fail_waiting(&reason);
        pending.closed = Some(reason);
        drop(pending);
        self.subscriptions.close();
        self.name_listeners.close();
        self.monitors.close();
        self.process_watches.close();
    }

    fn answer(&self, serial: u64, outcome: Outcome) {
        let waiter = self.lock_pending().waiting.remove(&serial);
        match waiter {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => tracing::debug!(serial, "answer to a request nobody waits for any more"),
        }
    }
}

pub(crate) fn unexpected(request: &str, reply: &BrokerReply) -> Error {
    Error::Protocol(format!(
        "the broker answered {request} with an unrelated reply: {reply:?}"
    ))
}

/// Connects to `address` and performs the handshake.
pub(crate) async fn open_and_handshake(address: &Path) -> Result<(SeqPacket, Welcome)> {
    let socket = SeqPacket::connect(address).map_err(|source| Error::Connect {
        address: address.to_owned(),
        source,
    })?;
    let welcome = handshake(&socket, address).await?;
    Ok((socket, welcome))
}

async fn handshake(socket: &SeqPacket, address: &Path) -> Result<Welcome> {
    let hello = codec::encode(
        &Message::Hello(Hello {
            version: PROTOCOL_VERSION,
        }),
        limits::DEFAULT_MAX_RECORD_SIZE,
    )?;
    // A broker refusing the connection (quota, descriptor limit) may say
    // why and close before our Hello is sent: its notice is still there to
    // read, and says more than the failed send.
    let sent = socket.send(&hello, &[]).await;
    let mut received = socket.recv(limits::MAX_CONFIGURABLE_RECORD_SIZE).await;
    if let Err(RecvError::Io(e)) = &received
        && e.kind() == std::io::ErrorKind::ConnectionReset
    {
        // The reset was reported first; the notice may still be queued.
        received = socket.recv(limits::MAX_CONFIGURABLE_RECORD_SIZE).await;
    }
    let received = received.map_err(|e| Error::Protocol(e.to_string()));
    let received = match (sent, received) {
        (_, Ok(Some(received))) => received,
        (Err(e), _) => return Err(e.into()),
        (Ok(()), Err(e)) => return Err(e),
        (Ok(()), Ok(None)) => {
            return Err(Error::Disconnected {
                reason: Some("the broker closed the connection during the handshake".into()),
            });
        }
    };
    match codec::decode(&received.data, limits::MAX_CONFIGURABLE_RECORD_SIZE)? {
        Message::Welcome(welcome) => Ok(welcome),
        Message::Error(e) => Err(Error::Refused {
            address: address.to_owned(),
            code: e.code,
            message: e.message,
        }),
        other => Err(Error::Protocol(format!(
            "expected Welcome from the broker, got {}",
            other.kind()
        ))),
    }
}

/// Reads everything the broker sends and hands each message to whoever
/// waits for it, until the connection ends or the last handle is dropped.
async fn read_messages(shared: Arc<Shared>) {
    loop {
        let reason = read_until_closed(&shared).await;
        tracing::debug!(%reason, "pidbus connection closed");
        if shared.reconnect.is_none() {
            return shared.close(reason);
        }
        crate::reconnect::reconnect(&shared, reason).await;
    }
}

/// Dispatches what the broker sends on the current socket until it
/// closes; returns why.
async fn read_until_closed(shared: &Arc<Shared>) -> String {
    let socket = shared.socket();
    loop {
        let received = match socket.recv(shared.max_record_size).await {
            Ok(Some(received)) => received,
            Ok(None) => return "the broker closed the connection".to_owned(),
            Err(e) => return format!("cannot read from the broker: {e}"),
        };
        let message = match codec::decode(&received.data, shared.max_record_size) {
            Ok(message) => message,
            Err(e) => return format!("the broker sent an undecodable message: {e}"),
        };
        if let Err(reason) = dispatch(shared, message, received.fds) {
            return reason;
        }
    }
}

/// Routes one message from the broker; `Err` ends the connection.
fn dispatch(shared: &Arc<Shared>, message: Message, fds: Vec<OwnedFd>) -> Result<(), String> {
    match message {
        Message::Reply(reply) => shared.answer(
            reply.reply_to,
            Ok((Answer::Broker(Box::new(reply.body)), fds)),
        ),
        Message::Return(ret) => shared.answer(
            ret.reply_to,
            Ok((Answer::Return(ret.signature, ret.body), fds)),
        ),
        Message::Error(e) => match e.reply_to {
            Some(serial) => shared.answer(serial, Err(Error::from(e))),
            None => return Err(format!("{} ({})", e.message, e.code)),
        },
        Message::Incoming(call) => crate::serve::dispatch_call(shared, call, fds),
        Message::Signal(signal) => shared.subscriptions.dispatch(signal, fds),
        Message::Event(event) => shared.name_listeners.dispatch(event, "name event"),
        Message::Monitored(copy) => shared.monitors.dispatch(copy, "monitor"),
        Message::Process(event) => shared.process_watches.dispatch(event),
        Message::Notice(notice) => {
            tracing::warn!(code = %notice.code, message = %notice.message, "the broker refused a message");
        }
        other => return Err(format!("the broker sent an unexpected {}", other.kind())),
    }
    Ok(())
}
