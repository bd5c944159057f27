//! The async connection to a bus: connecting (pidbus's native socket, or
//! a D-Bus socket of pidbus, dbus-broker or dbus-daemon), `Hello`, the
//! reader task that dispatches every message that comes, and matching
//! answers to calls.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use pidbus_protocol::address::{self, Endpoint};
use pidbus_protocol::dbus::header::{self, Header, MessageType, NO_REPLY_EXPECTED};
use pidbus_protocol::dbus::value::{Value, marshal, unmarshal};
use pidbus_protocol::{BusEvent, Monitored, PeerId, PeerInfo, ProcessIdentity, limits};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::listeners::Listeners;
use crate::process::ProcessWatches;
use crate::serve::Handlers;
use crate::signals::Subscriptions;
use crate::wire::{Reader, Received, Socket};

/// The bus itself, as D-Bus names it.
pub(crate) const BUS_NAME: &str = pidbus_protocol::dbus::BUS_NAME;
/// The bus's object.
pub(crate) const BUS_PATH: &str = "/org/freedesktop/DBus";
/// pidbus's own interface on the bus's object.
pub(crate) const PIDBUS_INTERFACE: &str = "org.pidbus.Bus1";

/// How long a call waits for its answer unless told otherwise (as
/// libdbus, sd-bus and zbus wait).
pub(crate) const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// A successful answer: the return values' signature and body, and the
/// descriptors that came with them.
#[derive(Debug)]
pub(crate) struct Answered {
    pub signature: String,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// An answer, or the error that came instead.
pub(crate) type Outcome = Result<Answered>;

/// A connection to a bus.
///
/// Cheap to clone; all clones share one socket. Calls may be made
/// concurrently from many tasks: answers are matched by serial. Calls to
/// objects this connection [serves](Connection::serve) are handled
/// concurrently, each in its own task. The connection closes when the last
/// clone is dropped.
///
/// It speaks D-Bus on every bus: on pidbus (its native socket or its D-Bus
/// socket) it also gets each caller's verified identity and process
/// handles; on dbus-broker and dbus-daemon what needs pidbus fails with
/// [`Error::NotSupported`], and what those buses offer another way (a
/// caller's uid and pid, `ProcessFD`) is used.
#[derive(Debug, Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
    _reader: Arc<ReaderTask>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Replaced when an opt-in reconnect succeeds.
    socket: RwLock<Arc<Socket>>,
    /// The address as given (a path or a D-Bus address), for messages.
    address: PathBuf,
    /// Where to connect, in order.
    endpoints: Vec<Endpoint>,
    unique_id: AtomicU64,
    identity: OnceLock<ProcessIdentity>,
    /// The bus is pidbus: `org.pidbus.Bus1` answers, and calls carry their
    /// caller's verified identity.
    on_pidbus: AtomicBool,
    /// Descriptors may be passed on this connection.
    fd_passing: AtomicBool,
    /// Largest message the bus accepts from this connection.
    max_message: AtomicU64,
    /// This connection is a monitor: everything it receives is a copy.
    pub(crate) monitoring: AtomicBool,
    /// The serial of this connection's `BecomeMonitor` (0: none): from its
    /// answer on, everything that comes is a copy.
    monitor_serial: AtomicU32,
    /// The bus sends this connection every `NameOwnerChanged`.
    pub(crate) watching_owners: AtomicBool,
    /// What to restore after a broker restart, and who hears about it;
    /// `None` unless the connection was made with reconnecting on.
    pub(crate) reconnect: Option<crate::reconnect::Restore>,
    next_serial: AtomicU32,
    pending: Mutex<Pending>,
    /// Why the connection ended for good (`None` while it lives).
    ended: tokio::sync::watch::Sender<Option<String>>,
    pub(crate) handlers: Handlers,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) name_listeners: Listeners<BusEvent>,
    pub(crate) monitors: Listeners<Monitored>,
    pub(crate) process_watches: ProcessWatches,
    /// The task reading this connection, so that a handler can be handed
    /// a [`Connection`] of its own (a weak reference: the connection still
    /// ends with its last handle).
    reader: OnceLock<std::sync::Weak<ReaderTask>>,
    /// Callers' identities on a bus that does not attach them, by unique
    /// name (never reused on a bus).
    pub(crate) callers: crate::serve::CallerCache,
}

/// Calls waiting for their answer. Once `closed` is set no call is added,
/// so none can wait forever.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u32, oneshot::Sender<Outcome>>,
    closed: Option<String>,
}

impl Pending {
    /// Fails every waiting call as disconnected for `reason`.
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

/// A connection that said `Hello`.
pub(crate) struct Joined {
    pub socket: Socket,
    pub reader: Reader,
    pub unique_id: PeerId,
    pub fd_passing: bool,
}

impl Connection {
    /// Connects to the bus at `address` and says `Hello`. Must be called
    /// inside a tokio runtime.
    ///
    /// `address` is a socket path — pidbus's native socket, or any D-Bus
    /// socket (pidbus's, dbus-broker's, dbus-daemon's): the kernel tells
    /// which — or a D-Bus address as `DBUS_SESSION_BUS_ADDRESS` holds one
    /// (`unix:path=…`, `unix:abstract=…`, several separated by `;`, tried
    /// in order).
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
    /// Calls in flight when the broker went away fail with
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
        let endpoints = endpoints_of(address)?;
        let joined = join(address, &endpoints).await?;
        let shared = Arc::new(Shared {
            socket: RwLock::new(Arc::new(joined.socket)),
            address: address.to_owned(),
            endpoints,
            unique_id: AtomicU64::new(joined.unique_id.0),
            identity: OnceLock::new(),
            on_pidbus: AtomicBool::new(false),
            fd_passing: AtomicBool::new(joined.fd_passing),
            max_message: AtomicU64::new(limits::DEFAULT_MAX_RECORD_SIZE as u64),
            monitoring: AtomicBool::new(false),
            watching_owners: AtomicBool::new(false),
            monitor_serial: AtomicU32::new(0),
            reconnect,
            next_serial: AtomicU32::new(1),
            pending: Mutex::new(Pending::default()),
            ended: tokio::sync::watch::Sender::new(None),
            handlers: Handlers::default(),
            subscriptions: Subscriptions::default(),
            name_listeners: Listeners::default(),
            monitors: Listeners::default(),
            process_watches: ProcessWatches::default(),
            callers: crate::serve::CallerCache::default(),
            reader: OnceLock::new(),
        });
        // Aborted (releasing its reference) when the last handle is dropped.
        let reader = tokio::spawn(read_messages(Arc::clone(&shared), joined.reader));
        let reader = Arc::new(ReaderTask(reader));
        let _ = shared.reader.set(Arc::downgrade(&reader));
        let connection = Connection {
            shared,
            _reader: reader,
        };
        let identity = connection.shared.learn_the_bus().await?;
        let _ = connection.shared.identity.set(identity);
        Ok(connection)
    }

    /// Connects to the session bus: `$PIDBUS_ADDRESS` if set, else pidbus's
    /// native session socket if it exists, else `$DBUS_SESSION_BUS_ADDRESS`,
    /// else `$XDG_RUNTIME_DIR/bus` — the first that answers.
    pub async fn connect_default() -> Result<Self> {
        first_that_answers(address::session_candidates()).await
    }

    /// Connects to the session bus of the current user (as
    /// [`connect_default`](Self::connect_default)).
    pub async fn session() -> Result<Self> {
        Self::connect_default().await
    }

    /// Connects to the system bus: pidbus's native system socket if it
    /// exists, else `$DBUS_SYSTEM_BUS_ADDRESS`, else
    /// `/run/dbus/system_bus_socket` — the first that answers.
    pub async fn system() -> Result<Self> {
        first_that_answers(address::system_candidates()).await
    }

    /// The address this connection was made to.
    pub fn address(&self) -> &Path {
        &self.shared.address
    }

    /// Resolves once the connection has ended for good, with why: the
    /// broker went away (or closed it) and, for a connection made with
    /// [`connect_reconnecting`](Self::connect_reconnecting), it was closed
    /// rather than restored. By then its calls have failed with
    /// [`Error::Disconnected`] and its streams have ended; a program that
    /// cannot work without the bus waits on this beside its work.
    ///
    /// ```no_run
    /// # async fn demo() -> pidbus::Result<()> {
    /// let bus = pidbus::Connection::connect_default().await?;
    /// let lost = bus.closed().await;
    /// eprintln!("lost the bus: {lost}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn closed(&self) -> Error {
        let mut ended = self.shared.ended.subscribe();
        let reason = match ended.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives in `shared`, which `self` holds.
            Err(_) => None,
        };
        Error::Disconnected { reason }
    }

    /// The unique id the bus gave this connection.
    pub fn unique_id(&self) -> PeerId {
        self.shared.unique_id()
    }

    /// Whether the bus is pidbus (verified callers, process handles,
    /// authorization), not another D-Bus bus.
    pub fn is_pidbus(&self) -> bool {
        self.shared.on_pidbus()
    }

    /// This process's identity as the bus verified it at connect time (on
    /// another bus than pidbus: what `GetConnectionCredentials` says).
    pub fn identity(&self) -> &ProcessIdentity {
        self.shared.identity()
    }

    /// Sends `payload` and `fds` to the broker, which echoes both back
    /// (`org.pidbus.Bus1.Ping`): checks liveness and end-to-end descriptor
    /// passing. On another bus: [`Error::NotSupported`].
    pub async fn ping(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        self.shared.needs_pidbus("Ping")?;
        let args = [crate::driver::bytes(payload)];
        let (values, fds) = self
            .shared
            .call_bus(PIDBUS_INTERFACE, "Ping", &args, fds)
            .await?;
        Ok((crate::driver::bytes_of(values.first()), fds))
    }

    /// Asks the bus who this connection is (same as [`identity`](Self::identity),
    /// fetched anew).
    pub async fn whoami(&self) -> Result<PeerInfo> {
        let id = self.unique_id();
        let identity = self.shared.identity_of(&id.to_string()).await?;
        Ok(PeerInfo { id, identity })
    }

    /// Every peer connected to the bus, with its verified identity (asked
    /// for page by page, so a peer joining or leaving meanwhile may be
    /// missed or listed; another user's `/proc`-only facts are left out
    /// unless this process is root or the broker's user). pidbus only.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.shared.needs_pidbus("ListPeers")?;
        let mut all: Vec<PeerInfo> = Vec::new();
        loop {
            let after = all.last().map(|p| p.id.to_string()).unwrap_or_default();
            let values = self
                .shared
                .bus_call(PIDBUS_INTERFACE, "ListPeers", &[Value::string(after)])
                .await?;
            let (page, more) = crate::driver::peers_page(&values)?;
            let empty = page.is_empty();
            all.extend(page);
            if !more || empty {
                return Ok(all);
            }
        }
    }
}

/// The sockets `address` names.
fn endpoints_of(address: &Path) -> Result<Vec<Endpoint>> {
    let text = address.to_string_lossy();
    if address::is_dbus_address(&text) {
        return address::parse_dbus_address(&text).map_err(|e| Error::Connect {
            address: address.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        });
    }
    Ok(vec![Endpoint::Path(address.to_owned())])
}

/// The first of `candidates` (addresses) that a connection can be made
/// to; the last one's error if none.
async fn first_that_answers(candidates: Vec<String>) -> Result<Connection> {
    let mut last = None;
    for candidate in candidates {
        match Connection::connect(&candidate).await {
            Ok(connection) => return Ok(connection),
            Err(e @ Error::Connect { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Connect {
        address: address::session_bus_path(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no bus address is known (set DBUS_SESSION_BUS_ADDRESS or PIDBUS_ADDRESS)",
        ),
    }))
}

/// Connects to the first of `endpoints` that accepts, and says `Hello`.
pub(crate) async fn join(address: &Path, endpoints: &[Endpoint]) -> Result<Joined> {
    let mut failure = None;
    for endpoint in endpoints {
        match Socket::open(endpoint).await {
            Ok((socket, fd_passing, reader)) => {
                return hello(address, socket, fd_passing, reader).await;
            }
            Err(e) => failure = Some(e),
        }
    }
    Err(Error::Connect {
        address: address.to_owned(),
        source: failure
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no socket")),
    })
}

/// Says `Hello` and waits for the unique name.
async fn hello(
    address: &Path,
    socket: Socket,
    fd_passing: bool,
    mut reader: Reader,
) -> Result<Joined> {
    let header = Header {
        path: Some(BUS_PATH.into()),
        interface: Some(BUS_NAME.into()),
        member: Some("Hello".into()),
        destination: Some(BUS_NAME.into()),
        ..Header::new(MessageType::MethodCall, 1)
    };
    let refused = |message: String| Error::Refused {
        address: address.to_owned(),
        code: pidbus_protocol::ErrorCode::Unavailable,
        message,
    };
    // A broker refusing the connection may close before the Hello is
    // sent: what it said is still there to read, and says more.
    let sent = socket.send(&header::encode(&header, &[]), &[]).await;
    loop {
        let received = socket.receive(&mut reader).await.map_err(refused)?;
        let Some(received) = received else {
            if let Err(e) = sent {
                return Err(e.into());
            }
            return Err(Error::Disconnected {
                reason: Some("the bus closed the connection during Hello".into()),
            });
        };
        if received.header.reply_serial != Some(1) {
            continue;
        }
        if received.header.kind == MessageType::Error {
            let error = crate::driver::error_of(&received);
            return Err(Error::Refused {
                address: address.to_owned(),
                code: error.code().unwrap_or(pidbus_protocol::ErrorCode::Failed),
                message: error.to_string(),
            });
        }
        let values = unmarshal(&received.header.signature, &received.body)
            .map_err(|e| Error::Protocol(format!("the bus's Hello reply: {e}")))?;
        let name = values.first().and_then(Value::as_str).unwrap_or_default();
        let unique_id = name.parse::<PeerId>().map_err(|_| {
            Error::Protocol(format!("the bus named this connection {name:?}, not :1.N"))
        })?;
        return Ok(Joined {
            socket,
            reader,
            unique_id,
            fd_passing,
        });
    }
}

impl Shared {
    /// After `Hello`: asks whether the bus is pidbus (then asks for the
    /// verified caller on every call, and this connection's identity and
    /// limits, in one round trip), and else reads what the bus tells of
    /// this connection.
    pub(crate) async fn learn_the_bus(&self) -> Result<ProcessIdentity> {
        let me = self.unique_id().to_string();
        let (yes, mine) = ([Value::Bool(true)], [Value::string(me.clone())]);
        let attach = self.bus_call(PIDBUS_INTERFACE, "AttachCaller", &yes);
        let identity = self.bus_call(PIDBUS_INTERFACE, "GetConnectionIdentity", &mine);
        let limits_asked = self.bus_call(PIDBUS_INTERFACE, "GetLimits", &[]);
        let (attached, identity, limits_given) = tokio::join!(attach, identity, limits_asked);
        match attached {
            Ok(_) => {
                self.on_pidbus.store(true, Ordering::Relaxed);
                if let Some(max) = crate::driver::max_message(&limits_given?) {
                    self.max_message.store(max, Ordering::Relaxed);
                }
                crate::driver::identity_from_dict(identity?.first())
            }
            Err(e) if crate::driver::is_not_there(&e) => {
                let max = crate::wire::MAX_STREAM_MESSAGE as u64;
                self.max_message.store(max, Ordering::Relaxed);
                let values = self
                    .bus_call(BUS_NAME, "GetConnectionCredentials", &[Value::string(me)])
                    .await?;
                Ok(crate::driver::identity_from_credentials(values.first()))
            }
            Err(e) => Err(e),
        }
    }

    /// The identity of the connection `name` names: pidbus's verified one,
    /// or on another bus what `GetConnectionCredentials` says.
    pub(crate) async fn identity_of(&self, name: &str) -> Result<ProcessIdentity> {
        if self.on_pidbus() {
            let values = self
                .bus_call(
                    PIDBUS_INTERFACE,
                    "GetConnectionIdentity",
                    &[Value::string(name)],
                )
                .await?;
            return crate::driver::identity_from_dict(values.first());
        }
        let values = self
            .bus_call(BUS_NAME, "GetConnectionCredentials", &[Value::string(name)])
            .await?;
        Ok(crate::driver::identity_from_credentials(values.first()))
    }

    /// Whether the bus is pidbus.
    pub(crate) fn on_pidbus(&self) -> bool {
        self.on_pidbus.load(Ordering::Relaxed)
    }

    /// `Err(NotSupported)` naming `feature` unless the bus is pidbus.
    pub(crate) fn needs_pidbus(&self, feature: &'static str) -> Result<()> {
        if self.on_pidbus() {
            return Ok(());
        }
        Err(Error::NotSupported {
            feature,
            reason: "the bus is not pidbus (dbus-broker and dbus-daemon do not offer it)".into(),
        })
    }

    /// Whether descriptors may be passed.
    pub(crate) fn fd_passing(&self) -> bool {
        self.fd_passing.load(Ordering::Relaxed)
    }

    pub(crate) fn identity(&self) -> &ProcessIdentity {
        static UNKNOWN: OnceLock<ProcessIdentity> = OnceLock::new();
        self.identity.get().unwrap_or_else(|| {
            UNKNOWN.get_or_init(|| crate::driver::identity_from_credentials(None))
        })
    }

    /// Calls `member` of the bus's `interface` with `args`; its return
    /// values.
    pub(crate) async fn bus_call(
        &self,
        interface: &str,
        member: &str,
        args: &[Value],
    ) -> Result<Vec<Value>> {
        self.call_bus(interface, member, args, &[])
            .await
            .map(|(values, _)| values)
    }

    /// [`bus_call`](Self::bus_call) passing and getting descriptors.
    pub(crate) async fn call_bus(
        &self,
        interface: &str,
        member: &str,
        args: &[Value],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<Value>, Vec<OwnedFd>)> {
        let (signature, body) =
            marshal(args).map_err(|e| Error::Protocol(format!("{member}: {e}")))?;
        let mut header = Header {
            path: Some(BUS_PATH.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            destination: Some(BUS_NAME.into()),
            signature,
            ..Header::new(MessageType::MethodCall, 0)
        };
        header.unix_fds = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        let answered = self
            .exchange(header, &body, fds, DEFAULT_CALL_TIMEOUT)
            .await?;
        let values = unmarshal(&answered.signature, &answered.body).map_err(|e| {
            Error::Protocol(format!("the bus's answer to {member} does not decode: {e}"))
        })?;
        Ok((values, answered.fds))
    }

    /// Calls a method of the bus without waiting for its answer (from a
    /// destructor): sent from a task of its own if a runtime runs.
    pub(crate) fn bus_call_and_forget(
        self: &Arc<Self>,
        interface: &'static str,
        member: &'static str,
        args: Vec<Value>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            let Ok((signature, body)) = marshal(&args) else {
                return;
            };
            let mut header = Header {
                path: Some(BUS_PATH.into()),
                interface: Some(interface.into()),
                member: Some(member.into()),
                destination: Some(BUS_NAME.into()),
                signature,
                ..Header::new(MessageType::MethodCall, 0)
            };
            header.flags |= NO_REPLY_EXPECTED;
            let _ = shared.send_message(header, &body, &[]).await;
        });
    }

    /// Gives `header` this connection's next serial, writes the message
    /// and sends it, unless the connection is known to be closed.
    pub(crate) async fn send_message(
        &self,
        mut header: Header,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<u32> {
        if let Some(reason) = &self.lock_pending().closed {
            return Err(Error::Disconnected {
                reason: Some(reason.clone()),
            });
        }
        header.serial = self.next_serial();
        self.send_with_serial(&header, body, fds).await?;
        Ok(header.serial)
    }

    /// Writes and sends a message whose serial is set.
    async fn send_with_serial(
        &self,
        header: &Header,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        if !fds.is_empty() && !self.fd_passing() {
            return Err(Error::NotSupported {
                feature: "passing file descriptors",
                reason: "the bus did not agree to descriptor passing".into(),
            });
        }
        let bytes = header::encode(header, body);
        let limit = usize::try_from(self.max_message.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        if bytes.len() > limit {
            return Err(Error::LimitsExceeded {
                message: format!(
                    "a message of {} bytes; the bus accepts at most {limit} from this connection",
                    bytes.len()
                ),
            });
        }
        Ok(self.socket().send(&bytes, fds).await?)
    }

    pub(crate) fn next_serial(&self) -> u32 {
        loop {
            let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
            if serial != 0 {
                return serial;
            }
        }
    }

    /// `BecomeMonitor` with `args`: once the bus agreed, every message
    /// that comes is read as a monitor's copy.
    pub(crate) async fn become_monitor(&self, args: &[Value]) -> Result<()> {
        let (signature, body) = marshal(args).map_err(|e| Error::Protocol(e.to_string()))?;
        let serial = self.next_serial();
        self.monitor_serial.store(serial, Ordering::Relaxed);
        let header = Header {
            path: Some(BUS_PATH.into()),
            interface: Some("org.freedesktop.DBus.Monitoring".into()),
            member: Some("BecomeMonitor".into()),
            destination: Some(BUS_NAME.into()),
            signature,
            ..Header::new(MessageType::MethodCall, serial)
        };
        self.exchange(header, &body, &[], DEFAULT_CALL_TIMEOUT)
            .await
            .map(drop)
    }

    /// Sends a method call and waits for its answer, at most `timeout`
    /// (its serial is given here unless the header has one).
    pub(crate) async fn exchange(
        &self,
        mut header: Header,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Outcome {
        let (tx, rx) = oneshot::channel();
        if header.serial == 0 {
            header.serial = self.next_serial();
        }
        let serial = header.serial;
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
        let member = header.member.clone().unwrap_or_default();
        self.send_with_serial(&header, body, fds).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(answer) => answer.unwrap_or_else(|_| Err(Error::Disconnected { reason: None })),
            Err(_) => Err(Error::Timeout {
                message: format!("no answer to {member} within {timeout:?}"),
            }),
        }
    }
}

/// Drops a pending entry when the call's future ends.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    serial: u32,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.lock_pending().waiting.remove(&self.serial);
    }
}

impl Shared {
    /// A handle of the connection, while it has one (a handler runs only
    /// while it does).
    pub(crate) fn connection(self: &Arc<Self>) -> Result<Connection> {
        let reader = self.reader.get().and_then(std::sync::Weak::upgrade);
        match reader {
            Some(reader) => Ok(Connection {
                shared: Arc::clone(self),
                _reader: reader,
            }),
            None => Err(Error::Disconnected {
                reason: Some("the connection's last handle was dropped".into()),
            }),
        }
    }

    /// The current socket (a reconnect replaces it).
    pub(crate) fn socket(&self) -> Arc<Socket> {
        Arc::clone(&self.socket.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The unique id the bus gave the current connection.
    pub(crate) fn unique_id(&self) -> PeerId {
        PeerId(self.unique_id.load(Ordering::Relaxed))
    }

    /// Switches to a new connection to the bus.
    pub(crate) fn replace_socket(&self, joined: Joined) -> Reader {
        *self.socket.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(joined.socket);
        self.unique_id.store(joined.unique_id.0, Ordering::Relaxed);
        self.fd_passing.store(joined.fd_passing, Ordering::Relaxed);
        joined.reader
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

    pub(crate) fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // Every critical section is a single map operation: still consistent
        // after a panic elsewhere.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails every waiting call, ends every stream, and refuses new calls.
    fn close(&self, reason: String) {
        if let Some(restore) = &self.reconnect {
            restore.close();
        }
        let mut pending = self.lock_pending();
        pending.fail_waiting(&reason);
        pending.closed = Some(reason.clone());
        drop(pending);
        self.subscriptions.close();
        self.name_listeners.close();
        self.monitors.close();
        self.process_watches.close();
        self.ended.send_replace(Some(reason));
    }

    fn answer(&self, serial: u32, outcome: Outcome) {
        let waiter = self.lock_pending().waiting.remove(&serial);
        match waiter {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => tracing::debug!(serial, "answer to a call nobody waits for any more"),
        }
    }
}

/// Reads everything the bus sends and hands each message to whoever
/// waits for it, until the connection ends or the last handle is dropped.
async fn read_messages(shared: Arc<Shared>, mut reader: Reader) {
    loop {
        let reason = read_until_closed(&shared, &mut reader).await;
        tracing::debug!(%reason, "bus connection closed");
        if shared.reconnect.is_none() {
            return shared.close(reason);
        }
        match crate::reconnect::reconnect(&shared, reason).await {
            Some(next) => reader = next,
            None => return,
        }
    }
}

/// Dispatches what the bus sends on the current socket until it closes;
/// returns why.
async fn read_until_closed(shared: &Arc<Shared>, reader: &mut Reader) -> String {
    let socket = shared.socket();
    loop {
        let received = match socket.receive(reader).await {
            Ok(Some(received)) => received,
            Ok(None) => return "the bus closed the connection".to_owned(),
            Err(reason) => return reason,
        };
        dispatch(shared, received);
    }
}

/// Routes one message from the bus.
fn dispatch(shared: &Arc<Shared>, received: Received) {
    if shared.monitoring.load(Ordering::Relaxed) {
        if let Some(copy) = crate::driver::monitored(received) {
            shared.monitors.dispatch(copy, "monitor");
        }
        return;
    }
    let header = &received.header;
    match header.kind {
        MessageType::MethodReturn => {
            if let Some(serial) = header.reply_serial {
                if serial == shared.monitor_serial.load(Ordering::Relaxed) {
                    shared.monitoring.store(true, Ordering::Relaxed);
                }
                let Received { header, body, fds } = received;
                let answered = Answered {
                    signature: header.signature,
                    body,
                    fds,
                };
                shared.answer(serial, Ok(answered));
            }
        }
        MessageType::Error => {
            if let Some(serial) = header.reply_serial {
                shared.answer(serial, Err(crate::driver::error_of(&received)));
            }
        }
        MessageType::MethodCall => crate::serve::dispatch_call(shared, received),
        MessageType::Signal => {
            if header.sender.as_deref() == Some(BUS_NAME) {
                crate::driver::bus_signal(shared, &received);
            }
            shared.subscriptions.dispatch(received);
        }
    }
}

/// The descriptors of `fds`, borrowed.
pub(crate) fn borrowed(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}
