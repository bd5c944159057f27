//! One D-Bus connection: identity capture at accept (as on the native
//! face), the SASL handshake, `Hello`, then every message read, proven,
//! checked against the specification and handed to the core or the driver.
//!
//! **Sender proof on a stream.** With `SO_PASSCRED` the kernel never joins
//! bytes of two senders in one read, and attaches the sender's credentials
//! (or, for a peer outside the broker's pid namespace, its pidfd) to each
//! read. Every read is checked as a native record is; a message is routed
//! only if every read that carried a byte of it was proven.
//!
//! **Bad input.** A message that breaks the specification (its header,
//! its body against its signature, descriptors it did not announce or
//! negotiate, a length past the limit) ends this connection alone, with
//! the reason logged: D-Bus has no way to refuse a message and go on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use pidbus_protocol::dbus::body;
use pidbus_protocol::dbus::header::{
    self, FIXED_HEADER_LEN, Header, MessageType, NO_AUTO_START, NO_REPLY_EXPECTED,
};
use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::transport::{self, Chunk, RecvError, Stream};
use pidbus_protocol::{Call, Destination, ErrorReply, PeerId, ProcessIdentity, Return, Signal};
use tracing::{debug, info, warn};

use crate::bus::admission::{self, Admitted, Refused};
use crate::bus::authority::POLKIT_NAME;
use crate::bus::outbox::{Cork, Outbox, Outgoing, QueueLimits};
use crate::bus::quotas::{Charge, Resource, UidAccount};
use crate::bus::{Bus, DRIVER_NAME, Joining, Leaving, Registration};
use crate::dbus::driver::{Driver, DriverCall};
use crate::dbus::errors;
use crate::dbus::polkit::{AUTHORITY_PATH, AuthorityCall};
use crate::dbus::sasl::{Handshake, Step};
use crate::dbus::wire::DbusWire;
use crate::log_limit::FOREIGN_SENDERS;
use crate::os::exits::ExitWatch;
use crate::os::identity::{PidNamespace, Who};
use crate::os::sender::{
    Attached, BeforeRead, Liveness, SenderCheck, SenderCheckMode, SenderMismatch,
};

/// This face's name in log lines.
const FACE: &str = "dbus";

/// Longest D-Bus message a peer may send or be sent (the specification
/// allows 128 MiB; dbus-broker's default is the same order as this).
pub const MAX_MESSAGE_SIZE: usize = 1 << 20;

/// Bytes one read takes from the socket at most.
const READ_SIZE: usize = 64 * 1024;

/// Most descriptors that may wait for the message that announces them.
const MAX_PENDING_FDS: usize = 2 * pidbus_protocol::limits::MAX_FDS_PER_RECORD;

/// How many reads of an exited process are still routed before its
/// connection is closed.
const MAX_READS_DRAINED_AFTER_EXIT: usize = 64;

thread_local! {
    /// One read buffer per thread: an idle connection holds none.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Why the broker ends a connection.
#[derive(Debug)]
enum Disconnect {
    /// The peer closed its end.
    Closed,
    /// The peer broke the protocol or a rule; logged, then closed.
    Violation(String),
    /// The socket failed.
    Io(std::io::Error),
    /// The peer's process exited.
    ProcessExited,
}

fn violation(reason: impl Into<String>) -> Disconnect {
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

/// Bytes read and not yet made into messages, with the descriptors and
/// the sender verdicts that came with them.
#[derive(Debug, Default)]
struct Inbound {
    bytes: Vec<u8>,
    /// Where the unconsumed bytes start.
    start: usize,
    fds: VecDeque<OwnedFd>,
    /// For each read still (partly) in `bytes`: how many of its bytes are
    /// left, and whether its sender was proven.
    reads: VecDeque<(usize, Result<(), SenderMismatch>)>,
    /// Bytes charged to the peer's user for what waits here.
    charged: usize,
}

/// One complete message as read.
struct Frame {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    sender: Result<(), SenderMismatch>,
}

impl Inbound {
    fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    fn push(&mut self, data: &[u8], fds: Vec<OwnedFd>, sender: Result<(), SenderMismatch>) {
        self.compact();
        self.bytes.extend_from_slice(data);
        self.fds.extend(fds);
        self.reads.push_back((data.len(), sender));
    }

    /// Gives back the room of what was consumed, so what the broker holds
    /// for a peer is bounded by what it has not parsed yet (and charged
    /// for), however much it sent: the consumed bytes are dropped once
    /// there are at least as many of them as bytes still pending (each
    /// byte is moved at most once, on average), and a buffer that grew for
    /// a large message shrinks once that message is gone.
    fn compact(&mut self) {
        let pending = self.bytes.len() - self.start;
        if self.start > 0 && self.start >= pending {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        let wanted = self.bytes.len() + READ_SIZE;
        if self.bytes.capacity() > 2 * wanted {
            self.bytes.shrink_to(wanted);
        }
    }

    /// Drops `len` bytes (the SASL lines) from the front.
    fn consume(&mut self, len: usize) -> Result<(), SenderMismatch> {
        self.start += len;
        self.take_verdict(len)
    }

    /// The verdict over the next `len` bytes: proven only if every read
    /// they came in was.
    fn take_verdict(&mut self, mut len: usize) -> Result<(), SenderMismatch> {
        let mut verdict = Ok(());
        while len > 0 {
            let Some((left, sender)) = self.reads.front_mut() else {
                break;
            };
            if let Err(mismatch) = sender
                && verdict.is_ok()
            {
                verdict = Err(mismatch.clone());
            }
            let used = len.min(*left);
            *left -= used;
            len -= used;
            if *left == 0 {
                self.reads.pop_front();
            }
        }
        verdict
    }

    /// The next complete message, if all of it has arrived.
    fn next_frame(&mut self, max: usize) -> Result<Option<Frame>, Disconnect> {
        let pending = self.pending();
        let Some(prefix) = pending.first_chunk::<FIXED_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = header::message_len(prefix, max).map_err(|e| violation(e.to_string()))?;
        if pending.len() < len {
            return Ok(None);
        }
        let bytes = pending[..len].to_vec();
        self.start += len;
        let sender = self.take_verdict(len);
        Ok(Some(Frame {
            bytes,
            fds: Vec::new(),
            sender,
        }))
    }

    fn take_fds(&mut self, count: usize) -> Option<Vec<OwnedFd>> {
        if self.fds.len() < count {
            return None;
        }
        Some(self.fds.drain(..count).collect())
    }
}

/// Serves one accepted D-Bus connection to completion.
pub async fn serve(bus: Arc<Bus>, stream: Stream) {
    // Admission is boxed and done in a plain function: what it holds then
    // takes no room in this future, which lives inline in the
    // connection's task as long as it does.
    let admitted = Box::pin(admission::admit_when_settled(&bus, &stream, FACE)).await;
    if let Some((mut peer, connection)) = admit(bus, stream, admitted) {
        peer.run(connection).await;
    }
}

/// Takes on the connection [`admission`] identified and charged; `None`
/// if it is refused.
fn admit(
    bus: Arc<Bus>,
    stream: Stream,
    admitted: Result<Admitted, Refused>,
) -> Option<(Peer, Charge)> {
    let admitted = match admitted {
        Ok(admitted) => admitted,
        // D-Bus has no way to say why before authentication: logged, and
        // the client sees the connection closed.
        Err(Refused::Unidentified(e)) => {
            info!(reason = %e, face = FACE, "refused connection");
            return None;
        }
        Err(Refused::OverQuota { quota, identity }) => {
            warn!(peer = %Who::new(None, &identity, FACE), reason = %quota,
                  "refused connection: per-user quota");
            return None;
        }
    };
    let peer = Peer {
        stream: Arc::new(stream),
        identity: Arc::new(admitted.identity),
        namespace: admitted.namespace,
        bus,
        pidfd: admitted.pidfd,
        exit: admitted.exit,
        sender_check: admitted.sender_check,
        inbound: Inbound::default(),
        driver: Driver::default(),
        account: Arc::clone(admitted.connection.account()),
    };
    Some((peer, admitted.connection))
}

struct Peer {
    stream: Arc<Stream>,
    identity: Arc<ProcessIdentity>,
    namespace: PidNamespace,
    bus: Arc<Bus>,
    pidfd: Arc<OwnedFd>,
    exit: ExitWatch,
    sender_check: SenderCheck,
    inbound: Inbound,
    driver: Driver,
    /// The account of the peer's user (the connection's charge holds it
    /// too), paying for the bytes read and not yet routed.
    account: Arc<UidAccount>,
}

/// A registered connection's outgoing side.
struct OnBus {
    id: PeerId,
    wire: Arc<DbusWire>,
    outbox: Arc<Outbox>,
}

impl Peer {
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
                let end = violation(format!(
                    "no authentication and Hello within {timeout:?} of connecting"
                ));
                return self.end(None, None, end);
            }
        };
        let id = on_bus.id;
        debug!(peer = %Who::new(Some(id), &self.identity, FACE), "peer connected");
        if self.identity.sender_proof_forgeable {
            warn!(peer = %Who::new(Some(id), &self.identity, FACE), "peer administers its own pid and \
                  user namespace: it can forge per-message sender credentials within it \
                  (policy: sender_proof = \"forgeable\")");
        }
        let end = self.serve_messages(&on_bus).await;
        let why = match end {
            Disconnect::ProcessExited => Leaving::ProcessExited,
            _ => Leaving::Disconnected,
        };
        registration.leave(why);
        self.end(Some(id), Some(&on_bus.outbox), end);
    }

    /// SASL, then `Hello`: registers the connection.
    async fn join(&mut self, connection: Charge) -> Result<(Registration, OnBus), Disconnect> {
        let fd_passing = self.authenticate().await?;
        let wire = Arc::new(DbusWire::new(
            Arc::clone(&self.stream),
            fd_passing,
            MAX_MESSAGE_SIZE,
        ));
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
            if let Some(frame) = self.inbound.next_frame(MAX_MESSAGE_SIZE)? {
                break frame;
            }
            self.read(fd_passing).await?;
        };
        let serial = self.check_hello(hello)?;
        if let Err(denied) = self
            .bus
            .authorize_connect(&self.identity, self.pidfd.as_fd())
        {
            return Err(violation(format!("connection denied: {}", denied.message)));
        }
        let joining = Joining {
            identity: Arc::clone(&self.identity),
            namespace: self.namespace.clone(),
            outbox: Arc::clone(&outbox),
            pidfd: Arc::clone(&self.pidfd),
        };
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
        Ok((registration, OnBus { id, wire, outbox }))
    }

    /// Runs the SASL handshake; returns whether fd passing was agreed.
    async fn authenticate(&mut self) -> Result<bool, Disconnect> {
        let mut sasl = Handshake::new(self.identity.uid, &self.bus.settings().bus_id);
        loop {
            let (step, used) = sasl
                .feed(self.inbound.pending())
                .map_err(|e| violation(e.to_string()))?;
            if let Err(mismatch) = self.inbound.consume(used) {
                return Err(violation(format!("authentication: {mismatch}")));
            }
            let (reply, done) = match step {
                Step::Continue(reply) => (reply, false),
                Step::Done(reply) => (reply, true),
            };
            self.send_now(&reply).await?;
            if done {
                return Ok(sasl.fd_passing());
            }
            self.read(false).await?;
        }
    }

    /// Writes handshake lines, waiting for room (nothing else is queued
    /// for the peer yet).
    async fn send_now(&self, mut bytes: &[u8]) -> Result<(), Disconnect> {
        while !bytes.is_empty() {
            let mut sent = 0;
            let written = std::future::poll_fn(|cx| {
                self.stream.poll_write_with(cx, || {
                    sent = self.stream.try_send(bytes, &[])?;
                    Ok(())
                })
            })
            .await;
            match written {
                Ok(()) => {}
                // A client may send its whole handshake and more, then
                // leave without reading: what it wrote is still read.
                Err(e) if transport::peer_hung_up(&e) => return Ok(()),
                Err(e) => return Err(Disconnect::Io(e)),
            }
            bytes = &bytes[sent..];
        }
        Ok(())
    }

    /// The serial of the peer's first message, which must be a `Hello` to
    /// the bus, proven to come from the connecting process.
    fn check_hello(&mut self, frame: Frame) -> Result<u32, Disconnect> {
        if let Err(mismatch) = frame.sender {
            return Err(violation(format!("Hello: {mismatch}")));
        }
        let (header, _, _) = header::parse(&frame.bytes).map_err(|e| violation(e.to_string()))?;
        let is_hello = header.kind == MessageType::MethodCall
            && header.destination.as_deref() == Some(DRIVER_NAME)
            && header.member.as_deref() == Some("Hello")
            && header.interface.as_deref().is_none_or(|i| i == DRIVER_NAME)
            && header.unix_fds == 0;
        if !is_hello {
            return Err(violation(
                "the first message must be a Hello to org.freedesktop.DBus",
            ));
        }
        Ok(header.serial)
    }

    /// Reads once from the socket (waiting), adding what came to
    /// `inbound` with its sender verdict.
    async fn read(&mut self, fd_passing: bool) -> Result<(), Disconnect> {
        let read = read_once(&self.stream, &self.sender_check, &self.pidfd).await?;
        self.take_read(read, fd_passing)
    }

    /// Adds one read to `inbound`, after checking its sender and charging
    /// its bytes to the peer's user. The read's bytes are the first
    /// `chunk.len` of the thread's read buffer: nothing else runs on this
    /// thread between the read and this call (the task does not wait in
    /// between), so they are still there.
    fn take_read(
        &mut self,
        (before, chunk): (BeforeRead, Chunk),
        fd_passing: bool,
    ) -> Result<(), Disconnect> {
        if !chunk.fds.is_empty() && !fd_passing {
            return Err(violation(
                "file descriptors sent without negotiating fd passing (NEGOTIATE_UNIX_FD)",
            ));
        }
        if self.inbound.fds.len() + chunk.fds.len() > MAX_PENDING_FDS {
            return Err(violation("file descriptors sent that no message announces"));
        }
        let alive = &mut Liveness::after_receipt(self.pidfd.as_fd());
        let sender = self
            .sender_check
            .verify(Attached::from(&chunk), before, alive);
        let waiting = self.inbound.pending().len() + chunk.len;
        self.charge_inbound(waiting)?;
        READ_BUFFER.with(|cell| {
            let buf = cell.borrow();
            let data = buf.get(..chunk.len).unwrap_or_default();
            self.inbound.push(data, chunk.fds, sender);
        });
        Ok(())
    }

    /// Keeps the peer's user charged for `waiting` bytes read and not yet
    /// routed: a message arriving slowly is held by the broker.
    fn charge_inbound(&mut self, waiting: usize) -> Result<(), Disconnect> {
        let (account, charged) = (&self.account, self.inbound.charged);
        if waiting > charged {
            account
                .try_add(Resource::QueuedBytes, waiting - charged)
                .map_err(|quota| violation(format!("a message arriving slowly: {quota}")))?;
        } else {
            account.sub(Resource::QueuedBytes, charged - waiting);
        }
        self.inbound.charged = waiting;
        Ok(())
    }

    /// Routes the peer's messages until it leaves, breaks the protocol, or
    /// its process exits.
    async fn serve_messages(&mut self, on_bus: &OnBus) -> Disconnect {
        let fd_passing = on_bus.wire.fd_passing();
        loop {
            if let Err(end) = self.route_frames(on_bus) {
                return end;
            }
            let read = tokio::select! {
                biased;
                () = self.exit.exited() => return self.drain(on_bus, Disconnect::ProcessExited),
                failed = on_bus.outbox.run_writer() => return self.after_failed_write(on_bus, failed),
                read = read_once(&self.stream, &self.sender_check, &self.pidfd) => read,
            };
            let outcome = read.and_then(|chunk| self.take_read(chunk, fd_passing));
            if let Err(end) = outcome {
                return end;
            }
        }
    }

    /// Routes every complete message waiting in `inbound`.
    fn route_frames(&mut self, on_bus: &OnBus) -> Result<(), Disconnect> {
        // From the second message of one read on, what is routed waits
        // for the batch's end, to go out several records per system call.
        let mut cork = None;
        while let Some(frame) = self.inbound.next_frame(MAX_MESSAGE_SIZE)? {
            self.handle(on_bus, frame)?;
            cork.get_or_insert_with(Cork::hold);
        }
        drop(cork);
        self.inbound.compact();
        let waiting = self.inbound.pending().len();
        self.charge_inbound(waiting)
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
        if self.sender_check.attach_pidfds(&*self.stream).is_err() {
            return end;
        }
        let fd_passing = on_bus.wire.fd_passing();
        for _ in 0..MAX_READS_DRAINED_AFTER_EXIT {
            let read = READ_BUFFER.with(|cell| {
                let mut buf = cell.borrow_mut();
                buf.resize(READ_SIZE, 0);
                self.stream.try_read(&mut buf)
            });
            let outcome = match read {
                Ok(Some(chunk)) => self
                    .take_read((BeforeRead::NOTHING, chunk), fd_passing)
                    .and_then(|()| self.route_frames(on_bus)),
                Ok(None) => break,
                Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => Err(e.into()),
            };
            if let Err(end) = outcome {
                return end;
            }
        }
        end
    }

    /// Checks one message against the specification and routes it.
    fn handle(&mut self, on_bus: &OnBus, mut frame: Frame) -> Result<(), Disconnect> {
        let (header, endian, body_at) =
            header::parse(&frame.bytes).map_err(|e| violation(e.to_string()))?;
        let count = usize::try_from(header.unix_fds).unwrap_or(usize::MAX);
        frame.fds = self.inbound.take_fds(count).ok_or_else(|| {
            violation(format!(
                "a message announces {count} file descriptors that were not sent with it"
            ))
        })?;
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
        let message = Incoming {
            header,
            body,
            fds: frame.fds,
        };
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
            warn!(peer = %Who::new(Some(on_bus.id), &self.identity, FACE), sender = %mismatch.sender,
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
                let call = DriverCall {
                    peer: id,
                    header,
                    body: &message.body,
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
        let who = Who::new(id, &self.identity, FACE);
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
                warn!(peer = %who, %reason, "disconnecting D-Bus peer");
            }
        }
        if let Some(outbox) = outbox {
            outbox.close();
        }
        let _ = self.charge_inbound(0);
        if !peer_closed {
            let _ = self.stream.shutdown();
        }
    }
}

/// Reads once from `stream`, waiting, into the thread's read buffer (for
/// [`Peer::take_read`]): what came with the bytes.
async fn read_once(
    stream: &Stream,
    sender_check: &SenderCheck,
    pidfd: &OwnedFd,
) -> Result<(BeforeRead, Chunk), Disconnect> {
    let gate = |_: BorrowedFd<'_>| sender_check.before_read(stream, pidfd.as_fd());
    let (before, chunk) = std::future::poll_fn(|cx| {
        READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.resize(READ_SIZE, 0);
            stream.poll_read_gated(cx, &mut buf, gate)
        })
    })
    .await?;
    Ok((before, chunk.ok_or(Disconnect::Closed)?))
}

/// A checked message, its body little-endian.
struct Incoming {
    header: Header,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_proven_only_if_every_read_of_it_was() {
        let mismatch = SenderMismatch {
            sender: "pid 7".into(),
            proof_missing: false,
        };
        let mut inbound = Inbound::default();
        let call = pidbus_protocol::dbus::header::encode(
            &Header {
                path: Some("/".into()),
                member: Some("M".into()),
                destination: Some(":1.1".into()),
                ..Header::new(MessageType::MethodCall, 1)
            },
            &[],
        );
        // The first message arrives in two reads, the second by another
        // process.
        inbound.push(&call[..10], Vec::new(), Ok(()));
        assert!(inbound.next_frame(1 << 20).unwrap().is_none());
        inbound.push(&call[10..], Vec::new(), Ok(()));
        let mut second = call.clone();
        second[8] = 2;
        inbound.push(&second[..20], Vec::new(), Err(mismatch.clone()));
        inbound.push(&second[20..], Vec::new(), Ok(()));
        let first = inbound.next_frame(1 << 20).unwrap().unwrap();
        assert!(first.sender.is_ok());
        let next = inbound.next_frame(1 << 20).unwrap().unwrap();
        assert_eq!(next.sender, Err(mismatch));
        assert!(inbound.next_frame(1 << 20).unwrap().is_none());
        assert!(inbound.pending().is_empty() && inbound.reads.is_empty());
    }

    #[test]
    fn what_is_held_stays_bounded_by_what_is_unparsed_however_much_arrives() {
        // 200 messages of 1 MiB, read 64 KiB at a time, so a message is
        // always half there: the buffer must not keep what was parsed.
        let body = vec![0u8; MAX_MESSAGE_SIZE - 256];
        let mut header = Header {
            path: Some("/".into()),
            interface: Some("org.example.Big".into()),
            member: Some("Data".into()),
            signature: "ay".into(),
            ..Header::new(MessageType::Signal, 1)
        };
        let mut array = (body.len() as u32 - 4).to_le_bytes().to_vec();
        array.extend_from_slice(&body[4..]);
        let mut inbound = Inbound::default();
        let mut stream = Vec::new();
        let mut largest = 0;
        for serial in 1..=200 {
            header.serial = serial;
            stream.extend(pidbus_protocol::dbus::header::encode(&header, &array));
            while stream.len() >= READ_SIZE {
                let read: Vec<u8> = stream.drain(..READ_SIZE).collect();
                inbound.push(&read, Vec::new(), Ok(()));
                while inbound.next_frame(MAX_MESSAGE_SIZE).unwrap().is_some() {}
                inbound.compact();
                largest = largest.max(inbound.bytes.capacity());
            }
        }
        assert!(
            largest <= 4 * MAX_MESSAGE_SIZE,
            "held {largest} bytes for at most one message pending"
        );
        inbound.push(&stream, Vec::new(), Ok(()));
        while inbound.next_frame(MAX_MESSAGE_SIZE).unwrap().is_some() {}
        inbound.compact();
        assert!(inbound.pending().is_empty());
        assert!(
            inbound.bytes.capacity() <= 2 * READ_SIZE,
            "an idle connection gives the room back"
        );
    }

    #[test]
    fn an_oversized_length_ends_the_connection_before_anything_is_held() {
        let mut inbound = Inbound::default();
        let mut prefix = [0u8; 16];
        prefix[..4].copy_from_slice(b"l\x01\x00\x01");
        prefix[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
        prefix[8..12].copy_from_slice(&1u32.to_le_bytes());
        inbound.push(&prefix, Vec::new(), Ok(()));
        assert!(matches!(
            inbound.next_frame(MAX_MESSAGE_SIZE),
            Err(Disconnect::Violation(_))
        ));
    }
}
