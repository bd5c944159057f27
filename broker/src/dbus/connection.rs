//! One connection, on either socket: identity capture at accept, the SASL
//! handshake (on the D-Bus socket; the native socket has none, the kernel
//! said who connected), `Hello`, then every message read, proven, checked
//! against the specification and handed to the core or the driver. How
//! the bytes are read is the socket's: [`crate::dbus::stream`] for the
//! D-Bus socket, [`crate::native::records`] for the native one.
//!
//! **Sender proof on a stream.** With `SO_PASSCRED` the kernel never joins
//! bytes of two senders in one read, and attaches the sender's credentials
//! (or, for a peer outside the broker's pid namespace, its pidfd) to each
//! read. Every read is checked as a native record is; a message is routed
//! only if every read that carried a byte of it was proven. On the native
//! socket each record is one message, proven on its own.
//!
//! **Bad input.** A message that breaks the specification (its header,
//! its body against its signature, descriptors it did not announce or
//! negotiate, a length past the limit) ends this connection alone, with
//! the reason logged: D-Bus has no way to refuse a message and go on.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use pidbus_protocol::dbus::body;
use pidbus_protocol::dbus::header::{self, Header, MessageType, NO_AUTO_START, NO_REPLY_EXPECTED};
use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::transport::{self, RecvError, SeqPacket, Stream};
use pidbus_protocol::{Call, Destination, ErrorReply, PeerId, ProcessIdentity, Return, Signal};
use tracing::{debug, info, warn};

use crate::bus::admission::{self, Admitted, Refused};
use crate::bus::authority::POLKIT_NAME;
use crate::bus::outbox::{Cork, Outbox, Outgoing, QueueLimits};
use crate::bus::quotas::Charge;
use crate::bus::{Bus, DRIVER_NAME, Joining, Leaving, Registration};
use crate::dbus::driver::{Driver, DriverCall};
use crate::dbus::errors;
use crate::dbus::polkit::{AUTHORITY_PATH, AuthorityCall};
use crate::dbus::stream::{StreamRead, StreamReader};
use crate::dbus::wire::{self, DbusWire, Socket};
use crate::log_limit::FOREIGN_SENDERS;
use crate::native::records::{self, RecordReader, RecordsRead};
use crate::os::exits::ExitWatch;
use crate::os::identity::{PidNamespace, Who};
use crate::os::sender::{SenderCheck, SenderCheckMode, SenderMismatch};

/// How many reads (records on the native socket) of an exited process are
/// still routed before its connection is closed.
const MAX_READS_DRAINED_AFTER_EXIT: usize = 256;

/// Why the broker ends a connection.
#[derive(Debug)]
pub(crate) enum Disconnect {
    /// The peer closed its end.
    Closed,
    /// The peer broke the protocol or a rule; logged, then closed.
    Violation(String),
    /// The socket failed.
    Io(std::io::Error),
    /// The peer's process exited.
    ProcessExited,
}

pub(crate) fn violation(reason: impl Into<String>) -> Disconnect {
    Disconnect::Violation(reason.into())
}

impl From<RecvError> for Disconnect {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Io(io) => Disconnect::Io(io),
            other => violation(other.to_string()),
        }
    }
}

/// What proves who sent what a connection reads.
pub(crate) struct Proof<'a> {
    /// How each read's sender is checked.
    pub sender_check: &'a SenderCheck,
    /// The connection's process.
    pub pidfd: &'a OwnedFd,
}

/// One complete message as read.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The whole message.
    pub bytes: Vec<u8>,
    /// The descriptors of its record (native socket); on the D-Bus socket
    /// they come in the stream, and are taken by the count the header
    /// announces.
    pub fds: Option<Vec<OwnedFd>>,
    /// Whether its sender was proven to be the connection's process.
    pub sender: Result<(), SenderMismatch>,
}

/// How a connection's messages are read: from the D-Bus socket's stream
/// (after SASL) or the native socket's records.
#[derive(Debug)]
enum Reader {
    Stream(StreamReader),
    Records(RecordReader),
}

/// One read of either socket, waiting to be taken.
enum Read {
    Stream(StreamRead),
    Records(RecordsRead),
}

impl Reader {
    /// The socket's name in log lines.
    fn face(&self) -> &'static str {
        match self {
            Reader::Stream(_) => "dbus",
            Reader::Records(_) => "native",
        }
    }

    /// Longest message this socket carries: the bus's setting on the
    /// D-Bus socket; on the native socket a message is one record, of at
    /// most the record size.
    fn max_message(&self, bus: &Bus) -> usize {
        match self {
            Reader::Stream(_) => bus.settings().max_message_size,
            Reader::Records(_) => bus.settings().max_record_size,
        }
    }

    fn socket(&self) -> Socket {
        match self {
            Reader::Stream(reader) => Socket::Stream(Arc::clone(reader.stream())),
            Reader::Records(reader) => Socket::Records(Arc::clone(reader.socket())),
        }
    }

    async fn wait(&self, proof: &Proof<'_>) -> Result<Read, Disconnect> {
        match self {
            Reader::Stream(reader) => reader.wait(proof).await.map(Read::Stream),
            Reader::Records(reader) => reader.wait(proof).await.map(Read::Records),
        }
    }

    fn take(&mut self, read: Read, proof: &Proof<'_>, fd_passing: bool) -> Result<(), Disconnect> {
        match (self, read) {
            (Reader::Stream(reader), Read::Stream(read)) => reader.take(read, proof, fd_passing),
            (Reader::Records(reader), Read::Records(read)) => reader.take(read, proof),
            _ => Err(violation("a read of the other socket (a bug)")),
        }
    }

    /// What waits, read without waiting (after the peer left); false once
    /// nothing does.
    fn take_waiting(&mut self, proof: &Proof<'_>, fd_passing: bool) -> Result<bool, Disconnect> {
        match self {
            Reader::Stream(reader) => reader.take_waiting(proof, fd_passing),
            Reader::Records(reader) => reader.take_waiting(proof),
        }
    }

    fn next_frame(&mut self, max: usize) -> Result<Option<Frame>, Disconnect> {
        match self {
            Reader::Stream(reader) => reader.next_frame(max),
            Reader::Records(reader) => reader.next_frame(),
        }
    }

    /// The `count` descriptors `frame` announces.
    fn fds_for(&mut self, frame: &mut Frame, count: usize) -> Result<Vec<OwnedFd>, Disconnect> {
        match self {
            Reader::Stream(reader) => reader.take_fds(count).ok_or_else(|| {
                violation(format!(
                    "a message announces {count} file descriptors that were not sent with it"
                ))
            }),
            Reader::Records(_) => records::record_fds(frame, count),
        }
    }

    /// After routing what was framed.
    fn settle(&mut self) -> Result<(), Disconnect> {
        match self {
            Reader::Stream(reader) => reader.settle(),
            Reader::Records(_) => Ok(()),
        }
    }

    /// From now on the kernel attaches the writer's pidfd to each read.
    fn attach_pidfds(&self, sender_check: &SenderCheck) -> std::io::Result<()> {
        match self {
            Reader::Stream(reader) => sender_check.attach_pidfds(&**reader.stream()),
            Reader::Records(reader) => sender_check.attach_pidfds(&**reader.socket()),
        }
    }

    /// The connection ends: nothing it holds stays charged.
    fn release(&mut self) {
        if let Reader::Stream(reader) = self {
            reader.release();
        }
    }

    /// Sends a short message at once, if there is room (the connection is
    /// about to close).
    fn send_now(&self, bytes: &[u8]) {
        let _ = match self {
            Reader::Stream(reader) => reader.stream().try_send(bytes, &[]).map(drop),
            Reader::Records(reader) => reader.socket().try_send(bytes, &[]),
        };
    }

    fn shutdown(&self) {
        let _ = match self {
            Reader::Stream(reader) => reader.stream().shutdown(),
            Reader::Records(reader) => reader.socket().shutdown(),
        };
    }
}

/// Serves one accepted connection of the D-Bus socket to completion,
/// admitting it first (waiting for a process in the middle of exiting).
pub fn serve(bus: Arc<Bus>, stream: Stream) -> impl Future<Output = ()> {
    once_admitted(async move {
        match admission::admit_when_settled(&bus, &stream, "dbus").await {
            Ok(admitted) => Some(serve_stream(bus, stream, admitted)),
            Err(refused) => {
                let name = match &refused {
                    Refused::OverQuota { .. } => errors::LIMITS_EXCEEDED,
                    Refused::Unidentified(_) => errors::ACCESS_DENIED,
                };
                let reason = format!("pidbus refused this connection: {refused}");
                log_refusal(refused);
                super::refusal::tell(&stream, &bus.settings().bus_id, name, &reason).await;
                None
            }
        }
    })
}

/// A connection's task: `admitting`, then the connection loop it hands
/// back (`None`: the connection was refused).
///
/// The task's future lives as long as the connection, so it holds as
/// little as it can: admission (with the socket and bus it needs) lives
/// in a box freed once it is done, and the loop is pinned where it lands
/// and awaited through a reference (moving it into the `.await` would
/// take a second slot of its size).
pub(crate) fn once_admitted<F: Future<Output = ()>>(
    admitting: impl Future<Output = Option<F>>,
) -> impl Future<Output = ()> {
    let admitting = Box::pin(admitting);
    async move {
        let mut serving = std::pin::pin!(admitting.await);
        if let Some(serving) = serving.as_mut().as_pin_mut() {
            serving.await;
        }
    }
}

/// Logs why a D-Bus client was refused before authentication.
fn log_refusal(refused: Refused) {
    match refused {
        Refused::Unidentified(e) => info!(reason = %e, face = "dbus", "refused connection"),
        Refused::OverQuota { quota, identity } => {
            warn!(peer = %Who::new(None, &identity, "dbus"), reason = %quota,
                  "refused connection: per-user quota");
        }
    }
}

/// Serves a connection of the D-Bus socket that [`admission`] admitted.
fn serve_stream(bus: Arc<Bus>, stream: Stream, admitted: Admitted) -> impl Future<Output = ()> {
    let reader = StreamReader::new(Arc::new(stream), Arc::clone(admitted.connection.account()));
    let (peer, connection) = Peer::new(bus, Reader::Stream(reader), admitted);
    peer.run_owned(connection)
}

/// Serves a connection of the native socket that [`admission`] admitted,
/// to completion: D-Bus messages in records.
pub fn serve_records(
    bus: Arc<Bus>,
    socket: SeqPacket,
    admitted: Admitted,
) -> impl Future<Output = ()> {
    let limit = bus.settings().max_record_size;
    let reader = RecordReader::new(Arc::new(socket), limit);
    let (peer, connection) = Peer::new(bus, Reader::Records(reader), admitted);
    peer.run_owned(connection)
}

struct Peer {
    reader: Reader,
    identity: Arc<ProcessIdentity>,
    namespace: PidNamespace,
    bus: Arc<Bus>,
    /// Held for the connection's life (and by process watches beyond): it
    /// keeps the identity's pidfs id meaningful, proves senders, tells the
    /// broker when the process exits, and is what clients get handed.
    pidfd: Arc<OwnedFd>,
    exit: ExitWatch,
    sender_check: SenderCheck,
    driver: Driver,
}

/// A registered connection's outgoing side.
struct OnBus {
    id: PeerId,
    wire: Arc<DbusWire>,
    outbox: Arc<Outbox>,
}

impl Peer {
    fn new(bus: Arc<Bus>, reader: Reader, admitted: Admitted) -> (Peer, Charge) {
        let peer = Peer {
            reader,
            identity: Arc::new(admitted.identity),
            namespace: admitted.namespace,
            bus,
            pidfd: admitted.pidfd,
            exit: admitted.exit,
            sender_check: admitted.sender_check,
            driver: Driver::default(),
        };
        (peer, admitted.connection)
    }

    fn who(&self, id: Option<PeerId>) -> Who<'_> {
        Who::new(id, &self.identity, self.reader.face())
    }

    /// [`run`](Self::run), owning the peer: the future an idle
    /// connection's task is. The peer is built before it, and the block
    /// borrows it where it was captured: what an `async fn` takes as
    /// arguments (the admitted identity the peer is built from), or moves
    /// into a local of its own, would take room beside every later state
    /// for the connection's whole life.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would move `self` into a second slot of its future"
    )]
    fn run_owned(mut self, connection: Charge) -> impl Future<Output = ()> {
        async move { self.run(connection).await }
    }

    async fn run(&mut self, connection: Charge) {
        let timeout = self.bus.settings().hello_timeout;
        // Boxed: SASL, the Hello and their timer last only until the
        // connection joins, while the task's future, which holds the
        // largest of its states inline, lives as long as the connection.
        let outcome = Box::pin(tokio::time::timeout(timeout, self.join(connection))).await;
        admission::handshake_done(&self.bus, self.identity.uid);
        let (registration, on_bus) = match outcome {
            Ok(Ok(joined)) => joined,
            Ok(Err(end)) => return self.end(None, None, end),
            Err(_elapsed) => {
                let awaited = match self.reader {
                    Reader::Stream(_) => "authentication and Hello",
                    Reader::Records(_) => "Hello",
                };
                let end = violation(format!("no {awaited} within {timeout:?} of connecting"));
                return self.end(None, None, end);
            }
        };
        let id = on_bus.id;
        debug!(peer = %self.who(Some(id)), "peer connected");
        self.log_weak_facts(id);
        let end = self.serve_messages(&on_bus).await;
        let why = match end {
            Disconnect::ProcessExited => Leaving::ProcessExited,
            _ => Leaving::Disconnected,
        };
        // Leave before closing the socket: the peer's callers learn at once.
        registration.leave(why);
        self.end(Some(id), Some(&on_bus.outbox), end);
    }

    /// Says, once, which of the peer's facts prove less than they seem.
    fn log_weak_facts(&self, id: PeerId) {
        let who = self.who(Some(id));
        if self.identity.sender_proof_forgeable {
            warn!(peer = %who, "peer administers its own pid and user namespace: \
                  it can forge per-message sender credentials within it, so the broker \
                  cannot tell which of its processes sends on this connection \
                  (policy: sender_proof = \"forgeable\")");
        }
        if let Some(claimed) = &self.identity.exe_unverified {
            warn!(peer = %who, %claimed, "peer's executable path names another file in the \
                  broker's mount namespace: exe not reported, exe rules compare the file");
        }
    }

    /// SASL (on the D-Bus socket), then `Hello`: registers the connection.
    async fn join(&mut self, connection: Charge) -> Result<(Registration, OnBus), Disconnect> {
        let fd_passing = match &mut self.reader {
            Reader::Stream(reader) => {
                let proof = Proof {
                    sender_check: &self.sender_check,
                    pidfd: &self.pidfd,
                };
                let bus_id = &self.bus.settings().bus_id;
                reader
                    .authenticate(&proof, self.identity.uid, bus_id)
                    .await?
            }
            // The native socket passes descriptors in every record.
            Reader::Records(_) => true,
        };
        let max_message = self.reader.max_message(&self.bus);
        let wire = Arc::new(DbusWire::new(self.reader.socket(), fd_passing, max_message));
        let limits = &self.bus.settings().limits;
        let queue_limits = QueueLimits {
            bytes: limits.max_queued_bytes,
            fds: limits.max_queued_fds,
        };
        let outbox = Arc::new(Outbox::new(
            Arc::clone(&wire) as Arc<_>,
            queue_limits,
            connection,
        ));
        let hello = loop {
            if let Some(frame) = self.reader.next_frame(max_message)? {
                break frame;
            }
            self.read(fd_passing).await?;
        };
        let serial = self.check_hello(hello)?;
        if let Err(denied) = self
            .bus
            .authorize_connect(&self.identity, self.pidfd.as_fd())
        {
            let why = format!("connection denied: {}", denied.message);
            self.reader
                .send_now(&wire.driver_error(serial, errors::ACCESS_DENIED, &why));
            return Err(violation(why));
        }
        let joining = Joining {
            identity: Arc::clone(&self.identity),
            namespace: self.namespace.clone(),
            outbox: Arc::clone(&outbox),
            pidfd: Arc::clone(&self.pidfd),
            hello_serial: serial,
        };
        // The reply and `NameAcquired` leave together: one system call
        // (one record on the native socket) instead of two per connection.
        let cork = Cork::hold();
        let registration = self.bus.register(joining, |id| {
            wire.set_id(id);
            wire.driver_reply(serial, &[Value::string(id.to_string())], 0)
        });
        let registration = registration.map_err(|e| violation(e.to_string()))?;
        let id = registration.id();
        // As dbus-daemon does: the unique name is announced to its owner.
        let acquired = wire.driver_signal("NameAcquired", &[Value::string(id.to_string())]);
        let _ = outbox.push(Outgoing {
            bytes: acquired,
            fds: Vec::new(),
        });
        drop(cork);
        Ok((registration, OnBus { id, wire, outbox }))
    }

    /// The serial of the peer's first message, which must be a `Hello` to
    /// the bus, proven to come from the connecting process. On the native
    /// socket it may lack proof (see `SenderMismatch::proof_missing`: it
    /// can be sent before the broker accepted), never prove another sender.
    fn check_hello(&mut self, frame: Frame) -> Result<u32, Disconnect> {
        let records = matches!(self.reader, Reader::Records(_));
        if let Err(mismatch) = frame.sender
            && !(records && mismatch.proof_missing)
        {
            return Err(violation(format!("Hello: {mismatch}")));
        }
        let (header, _, _) = header::parse(&frame.bytes).map_err(|e| violation(e.to_string()))?;
        let is_hello = header.kind == MessageType::MethodCall
            && header.destination.as_deref() == Some(DRIVER_NAME)
            && header.member.as_deref() == Some("Hello")
            && header.interface.as_deref().is_none_or(|i| i == DRIVER_NAME)
            && header.unix_fds == 0
            && frame.fds.is_none_or(|fds| fds.is_empty());
        if !is_hello {
            return Err(violation(
                "the first message must be a Hello to org.freedesktop.DBus",
            ));
        }
        Ok(header.serial)
    }

    /// Reads once from the socket (waiting), keeping what came with its
    /// sender verdict.
    async fn read(&mut self, fd_passing: bool) -> Result<(), Disconnect> {
        let proof = Proof {
            sender_check: &self.sender_check,
            pidfd: &self.pidfd,
        };
        let read = self.reader.wait(&proof).await?;
        self.reader.take(read, &proof, fd_passing)
    }

    /// Routes the peer's messages until it leaves, breaks the protocol, or
    /// its process exits.
    async fn serve_messages(&mut self, on_bus: &OnBus) -> Disconnect {
        let fd_passing = on_bus.wire.fd_passing();
        loop {
            if let Err(end) = self.route_frames(on_bus) {
                return self.ended(on_bus, end);
            }
            let proof = Proof {
                sender_check: &self.sender_check,
                pidfd: &self.pidfd,
            };
            let read = tokio::select! {
                biased;
                () = self.exit.exited() => return self.drain(on_bus, Disconnect::ProcessExited),
                failed = on_bus.outbox.run_writer() => return self.after_failed_write(on_bus, failed),
                read = self.reader.wait(&proof) => read,
            };
            let outcome = read.and_then(|read| self.reader.take(read, &proof, fd_passing));
            if let Err(end) = outcome {
                return self.ended(on_bus, end);
            }
        }
    }

    /// The kernel reports a peer that closed with our messages unread
    /// (ECONNRESET) before what it had sent: that is still routed.
    fn ended(&mut self, on_bus: &OnBus, end: Disconnect) -> Disconnect {
        match end {
            Disconnect::Io(e) if transport::peer_hung_up(&e) => {
                self.drain(on_bus, Disconnect::Closed)
            }
            end => end,
        }
    }

    /// Routes every complete message waiting.
    fn route_frames(&mut self, on_bus: &OnBus) -> Result<(), Disconnect> {
        // From the second message of one read on, what is routed waits
        // for the batch's end, to go out several records per system call.
        let max = self.reader.max_message(&self.bus);
        let mut cork = None;
        while let Some(frame) = self.reader.next_frame(max)? {
            self.handle(on_bus, frame)?;
            cork.get_or_insert_with(Cork::hold);
        }
        drop(cork);
        self.reader.settle()
    }

    /// Sending to the peer failed. If it hung up, what it wrote before is
    /// still routed (a program may send and exit without reading).
    fn after_failed_write(&mut self, on_bus: &OnBus, failed: std::io::Error) -> Disconnect {
        if transport::peer_hung_up(&failed) {
            return self.drain(on_bus, Disconnect::Closed);
        }
        Disconnect::Io(failed)
    }

    /// The process exited or hung up: route what it sent before (proven
    /// by the pidfd the kernel attaches from now on), then close as `end`.
    fn drain(&mut self, on_bus: &OnBus, end: Disconnect) -> Disconnect {
        if let Err(e) = self.reader.attach_pidfds(&self.sender_check) {
            debug!(peer = %on_bus.id, error = %e, "cannot enable SO_PASSPIDFD to drain a departed peer");
            return end;
        }
        let fd_passing = on_bus.wire.fd_passing();
        for _ in 0..MAX_READS_DRAINED_AFTER_EXIT {
            let proof = Proof {
                sender_check: &self.sender_check,
                pidfd: &self.pidfd,
            };
            let outcome = self
                .reader
                .take_waiting(&proof, fd_passing)
                .and_then(|more| {
                    self.route_frames(on_bus)?;
                    Ok(more)
                });
            match outcome {
                Ok(true) => {}
                Ok(false) | Err(Disconnect::Closed) => break,
                Err(e) => return e,
            }
        }
        end
    }

    /// Checks one message against the specification and routes it.
    fn handle(&mut self, on_bus: &OnBus, mut frame: Frame) -> Result<(), Disconnect> {
        let (header, endian, body_at) =
            header::parse(&frame.bytes).map_err(|e| violation(e.to_string()))?;
        let count = usize::try_from(header.unix_fds).unwrap_or(usize::MAX);
        let fds = self.reader.fds_for(&mut frame, count)?;
        let converted = body::check(
            &header.signature,
            &frame.bytes[body_at..],
            endian,
            header.unix_fds,
        )
        .map_err(|e| violation(format!("message {}: {e}", header.serial)))?;
        if header.path.as_deref() == Some("/org/freedesktop/DBus/Local")
            || header.interface.as_deref() == Some("org.freedesktop.DBus.Local")
        {
            return Err(violation(
                "org.freedesktop.DBus.Local is reserved for the library's own use",
            ));
        }
        if on_bus.wire.is_monitor() {
            return Err(violation("a monitor may not send messages"));
        }
        let body = match converted {
            Some(little_endian) => little_endian,
            None => frame.bytes[body_at..].to_vec(),
        };
        if let Err(mismatch) = frame.sender {
            return self.refuse_foreign_sender(on_bus, &header, &mismatch);
        }
        let message = Incoming { header, body, fds };
        self.route(on_bus, message);
        Ok(())
    }

    /// A message from a process other than the connection's: logged and
    /// not routed; in reject mode a call is answered with an error, in
    /// strict mode the connection is closed.
    fn refuse_foreign_sender(
        &self,
        on_bus: &OnBus,
        header: &Header,
        mismatch: &SenderMismatch,
    ) -> Result<(), Disconnect> {
        let mode = self.bus.settings().sender_check;
        if let Some(admitted) = FOREIGN_SENDERS.admit(self.identity.uid) {
            warn!(peer = %self.who(Some(on_bus.id)), sender = %mismatch.sender,
                  serial = header.serial, mode = %mode, suppressed = admitted.suppressed,
                  "message from a process other than the connection's; not routed");
        }
        if mode == SenderCheckMode::Strict {
            return Err(violation(mismatch.to_string()));
        }
        if header.kind == MessageType::MethodCall && header.flags & NO_REPLY_EXPECTED == 0 {
            let why = mismatch.to_string();
            self.answer_error(on_bus, header.serial, errors::SENDER_MISMATCH, &why);
        }
        Ok(())
    }

    /// Answers the peer's call `serial` with the bus's error `name`.
    fn answer_error(&self, on_bus: &OnBus, serial: u32, name: &str, message: &str) {
        let record = Outgoing {
            bytes: on_bus.wire.driver_error(serial, name, message),
            fds: Vec::new(),
        };
        self.bus
            .answer_raw(on_bus.id, u64::from(serial), record, "an error");
    }

    /// A call for the polkit authority: to its name, or to the bus
    /// (which `GetNameOwner` says owns it) on the authority's object.
    fn is_for_authority(&self, header: &Header) -> bool {
        if !self.bus.settings().polkit_authority {
            return false;
        }
        match header.destination.as_deref() {
            Some(POLKIT_NAME) => true,
            Some(DRIVER_NAME) => header.path.as_deref() == Some(AUTHORITY_PATH),
            _ => false,
        }
    }

    /// Hands a checked message to the driver or the core.
    fn route(&mut self, on_bus: &OnBus, message: Incoming) {
        let id = on_bus.id;
        let header = &message.header;
        match header.kind {
            MessageType::MethodCall if self.is_for_authority(header) => {
                let Incoming { header, body, fds } = message;
                let call = AuthorityCall {
                    peer: id,
                    header: &header,
                    body: &body,
                    fds,
                };
                crate::dbus::polkit::handle(&self.bus, &on_bus.wire, call);
            }
            MessageType::MethodCall if header.destination.as_deref() == Some(DRIVER_NAME) => {
                let Incoming { header, body, fds } = message;
                let call = DriverCall {
                    peer: id,
                    header: &header,
                    body: &body,
                    fds,
                };
                self.driver.handle(&self.bus, &on_bus.wire, call);
            }
            MessageType::MethodCall => self.route_call(on_bus, message),
            MessageType::MethodReturn | MessageType::Error => self.route_answer(id, message),
            MessageType::Signal => self.route_signal(id, message),
        }
    }

    fn route_call(&self, on_bus: &OnBus, message: Incoming) {
        let Incoming { header, body, fds } = message;
        let no_reply = header.flags & NO_REPLY_EXPECTED != 0;
        let destination = header.destination.as_deref().map(str::parse::<Destination>);
        let destination = match destination {
            Some(Ok(destination)) => destination,
            _ => {
                if !no_reply {
                    let (name, why) = match &header.destination {
                        None => (
                            errors::INVALID_ARGS,
                            "a method call must name its destination on a bus".to_owned(),
                        ),
                        Some(name) => (
                            errors::SERVICE_UNKNOWN,
                            format!("The name {name} was not provided by any .service files"),
                        ),
                    };
                    self.answer_error(on_bus, header.serial, name, &why);
                }
                return;
            }
        };
        let call = Call {
            serial: u64::from(header.serial),
            destination,
            path: header.path.unwrap_or_default(),
            interface: header.interface.unwrap_or_default(),
            member: header.member.unwrap_or_default(),
            signature: header.signature,
            body,
            no_reply,
            timeout_ms: None,
            no_auto_start: header.flags & NO_AUTO_START != 0,
        };
        self.bus.route_call(on_bus.id, call, fds);
    }

    /// A reply or error names its caller (`DESTINATION`) and the serial
    /// it answers; one that answers no call waiting for this peer is
    /// dropped, as on every D-Bus bus.
    fn route_answer(&self, id: PeerId, message: Incoming) {
        let Incoming { header, body, fds } = message;
        let caller = header
            .destination
            .as_deref()
            .and_then(|d| d.parse::<PeerId>().ok());
        let (Some(caller), Some(serial)) = (caller, header.reply_serial) else {
            debug!(peer = %id, "reply without a caller of this bus dropped");
            return;
        };
        let serial = u64::from(serial);
        let routed = match header.kind {
            MessageType::Error => {
                let name = header.error_name.unwrap_or_default();
                let message = body::string_args(&header.signature, &body, 0)
                    .first()
                    .copied()
                    .flatten()
                    .map(|(_, text)| text.to_owned())
                    .unwrap_or_default();
                let error = ErrorReply {
                    reply_to: None,
                    code: errors::code_of(&name),
                    message,
                    name: Some(name),
                    sender: None,
                };
                self.bus.route_error_to(id, caller, serial, error)
            }
            _ => {
                let answer = Return {
                    reply_to: 0,
                    signature: header.signature,
                    body,
                    sender: None,
                };
                self.bus.route_return_to(id, caller, serial, answer, fds)
            }
        };
        if !routed {
            debug!(peer = %id, caller = %caller, serial, "reply to no waiting call dropped");
        }
    }

    fn route_signal(&self, id: PeerId, message: Incoming) {
        let Incoming { header, body, fds } = message;
        let destination = match header.destination.as_deref() {
            None => None,
            Some(DRIVER_NAME) => return,
            Some(name) => match name.parse::<Destination>() {
                Ok(destination) => Some(destination),
                Err(_) => {
                    debug!(peer = %id, destination = name, "signal to no peer of this bus dropped");
                    return;
                }
            },
        };
        let signal = Signal {
            sender: None,
            destination,
            path: header.path.unwrap_or_default(),
            interface: header.interface.unwrap_or_default(),
            member: header.member.unwrap_or_default(),
            signature: header.signature,
            body,
            matched: Vec::new(),
        };
        self.bus.route_signal(id, signal, fds);
    }

    fn end(&mut self, id: Option<PeerId>, outbox: Option<&Arc<Outbox>>, end: Disconnect) {
        let who = self.who(id);
        let peer_closed = matches!(end, Disconnect::Closed);
        match end {
            Disconnect::Closed => match outbox.and_then(|o| o.kill_reason()) {
                Some(reason) => info!(peer = %who, %reason, "peer disconnected by the broker"),
                None => debug!(peer = %who, "peer disconnected"),
            },
            Disconnect::ProcessExited => {
                info!(peer = %who, "peer process exited; connection closed");
            }
            Disconnect::Io(e) => debug!(peer = %who, error = %e, "peer connection failed"),
            Disconnect::Violation(reason) => {
                warn!(peer = %who, %reason, "disconnecting peer");
                if let Reader::Records(_) = self.reader {
                    self.reader.send_now(&wire::disconnect_notice(id, &reason));
                }
            }
        }
        if let Some(outbox) = outbox {
            outbox.close();
        }
        self.reader.release();
        // Make the peer see EOF even if other processes hold the socket
        // (after `Closed` every holder has already closed it).
        if !peer_closed {
            self.reader.shutdown();
        }
    }
}

/// A checked message, its body little-endian.
struct Incoming {
    header: Header,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}
