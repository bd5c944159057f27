//! One connected peer: identity capture, the Hello handshake, and the loop
//! that serves its requests until it leaves or misbehaves.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use pidbus_protocol::transport::{self, Received, RecvError, SeqPacket};
use pidbus_protocol::{
    BrokerReply, BrokerRequest, ErrorCode, ErrorReply, Message, PROTOCOL_VERSION, PeerId, PeerInfo,
    ProcessIdentity, Request, Welcome, codec,
};
use tracing::{debug, info, warn};

use crate::bus::admission::{self, Admitted, Refused};
use crate::bus::outbox::{Cork, Outbox, QueueLimits};
use crate::bus::quotas::QuotaExceeded;
use crate::bus::{Bus, Joining, Leaving, Registration};
use crate::log_limit::FOREIGN_SENDERS;
use crate::native::records::Batch;
use crate::native::wire::NativeWire;
use crate::os::exits::ExitWatch;
use crate::os::identity::{IdentityError, PidNamespace, Who};
use crate::os::sender::{
    Attached, BeforeRead, Liveness, SenderCheck, SenderCheckMode, SenderMismatch,
};

/// This face's name in log lines.
const FACE: &str = "native";

/// Why the broker ends a connection.
#[derive(Debug)]
enum Disconnect {
    /// The peer closed its end.
    Closed,
    /// The peer broke the protocol; it is told why, then disconnected.
    Violation { code: ErrorCode, reason: String },
    /// The socket failed.
    Io(std::io::Error),
    /// The peer's process exited (its socket may live on in another
    /// process, which may not use it).
    ProcessExited,
}

impl Disconnect {
    fn violation(code: ErrorCode, reason: impl Into<String>) -> Self {
        Disconnect::Violation {
            code,
            reason: reason.into(),
        }
    }
}

impl From<RecvError> for Disconnect {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::TooLarge { .. } => {
                Disconnect::violation(ErrorCode::RecordTooLarge, e.to_string())
            }
            RecvError::ControlTruncated => {
                Disconnect::violation(ErrorCode::ProtocolViolation, e.to_string())
            }
            RecvError::Io(io) => Disconnect::Io(io),
        }
    }
}

/// A message as received, with the descriptors that came with it and the
/// verdict on who sent it.
struct Incoming {
    message: Message,
    fds: Vec<OwnedFd>,
    sender: Result<(), SenderMismatch>,
}

/// Serves one accepted connection to completion.
pub async fn serve(bus: Arc<Bus>, socket: SeqPacket) {
    // Admission is boxed and done in a plain function: what it holds (the
    // identity being captured) then takes no room in this future, which
    // lives inline in the connection's task as long as it does.
    let admitted = Box::pin(admission::admit_when_settled(&bus, &socket, FACE)).await;
    let admitted = match admitted {
        Ok(admitted) if speaks_dbus(&bus, &socket).await => {
            let served = crate::dbus::connection::serve_records(bus, socket, admitted);
            return Box::pin(served).await;
        }
        other => other,
    };
    if let Some(peer) = admit(bus, socket, admitted) {
        peer.run().await;
    }
}

/// Whether the client's first record is a D-Bus message (its first byte
/// says the byte order, `l` or `B`; a MessagePack record starts with a map).
async fn speaks_dbus(bus: &Bus, socket: &SeqPacket) -> bool {
    let timeout = bus.settings().hello_timeout;
    let first = tokio::time::timeout(timeout, socket.peek_first_byte()).await;
    matches!(first, Ok(Ok(Some(b'l' | b'B'))))
}

/// Charges the connection [`admission`] identified; `None` if it is
/// refused (it was told why).
fn admit(bus: Arc<Bus>, socket: SeqPacket, admitted: Result<Admitted, Refused>) -> Option<Peer> {
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(Refused::Unidentified(e)) => {
            refuse_unidentified(&socket, &e);
            return None;
        }
        Err(Refused::OverQuota { quota, identity }) => {
            refuse_over_quota(&socket, &identity, &quota);
            return None;
        }
    };
    let socket = Arc::new(NativeWire(socket));
    let limits = &bus.settings().limits;
    let queue_limits = QueueLimits {
        bytes: limits.max_queued_bytes,
        fds: limits.max_queued_fds,
    };
    let outbox = Arc::new(Outbox::new(
        Arc::clone(&socket) as Arc<_>,
        queue_limits,
        admitted.connection,
    ));
    Some(Peer {
        socket,
        outbox,
        identity: Arc::new(admitted.identity),
        namespace: admitted.namespace,
        bus,
        pidfd: admitted.pidfd,
        exit: admitted.exit,
        sender_check: admitted.sender_check,
        last_batch: AtomicU8::new(1),
    })
}

fn refuse_over_quota(socket: &SeqPacket, identity: &ProcessIdentity, quota: &QuotaExceeded) {
    warn!(peer = %Who::new(None, identity, FACE), reason = %quota, "refused connection: per-user quota");
    refuse(
        socket,
        ErrorCode::LimitsExceeded,
        &format!("connection refused: {quota}"),
    );
}

/// Tells a connection that is not admitted why, before it is closed.
///
/// Whatever it already sent (its Hello) is read first: closing a socket
/// with unread records makes the kernel report ECONNRESET to the other
/// end, which may then never see the notice.
pub(crate) fn refuse(socket: &SeqPacket, code: ErrorCode, message: &str) {
    while let Ok(Some(_)) = socket.try_recv(pidbus_protocol::limits::DEFAULT_MAX_RECORD_SIZE) {}
    let name =
        crate::dbus::errors::name_of(&ErrorReply::broker(None, code, String::new())).to_owned();
    let _ = socket.try_send(&crate::dbus::wire::refusal(&name, message), &[]);
}

fn refuse_unidentified(socket: &SeqPacket, error: &IdentityError) {
    let code = match error {
        IdentityError::ProcessExited { .. } | IdentityError::Exiting { .. } => {
            ErrorCode::ProcessExited
        }
        IdentityError::Io { .. } | IdentityError::NotVisible => ErrorCode::Unavailable,
    };
    info!(reason = %error, "refused connection");
    // Best effort: nobody may be reading.
    refuse(socket, code, &format!("connection refused: {error}"));
}

struct Peer {
    socket: Arc<NativeWire>,
    outbox: Arc<Outbox>,
    identity: Arc<ProcessIdentity>,
    namespace: PidNamespace,
    bus: Arc<Bus>,
    /// Held for the connection's life (and by process watches beyond): it
    /// keeps the identity's pidfs id meaningful, proves senders, tells the
    /// broker when the process exits, and is what clients get handed.
    pidfd: Arc<OwnedFd>,
    /// Tells the task when the peer's process exits.
    exit: ExitWatch,
    /// How each record's sender is checked.
    sender_check: SenderCheck,
    /// How many records the last receive took.
    last_batch: AtomicU8,
}

/// How many records already sent by an exited process are still routed
/// before its connection is closed.
const MAX_RECORDS_DRAINED_AFTER_EXIT: usize = 256;

impl Peer {
    /// Serves the connection; first gives back its place among its user's
    /// connections still in their Hello, once that is done.
    async fn run(self) {
        // Boxed: the handshake and its timer are large and last only until
        // the Hello, while the task's future, which holds the largest of
        // its states inline, lives as long as the connection.
        let hello = Box::pin(tokio::time::timeout(
            self.bus.settings().hello_timeout,
            self.handshake(),
        ));
        let outcome = hello.await;
        admission::handshake_done(&self.bus, self.identity.uid);
        let registration = match outcome {
            Ok(Ok(registration)) => registration,
            Ok(Err(end)) => return self.end(None, end),
            Err(_elapsed) => {
                let end = Disconnect::violation(
                    ErrorCode::ProtocolViolation,
                    format!(
                        "no Hello within {:?} of connecting",
                        self.bus.settings().hello_timeout
                    ),
                );
                return self.end(None, end);
            }
        };
        let id = registration.id();
        debug!(peer = %Who::new(Some(id), &self.identity, FACE), "peer connected");
        self.log_weak_facts(id);
        let end = self.serve_messages(id).await;
        let why = match end {
            Disconnect::ProcessExited => Leaving::ProcessExited,
            _ => Leaving::Disconnected,
        };
        // Leave before closing the socket: the peer's callers learn at once.
        registration.leave(why);
        self.end(Some(id), end);
    }

    /// Says, once, which of the peer's facts prove less than they seem.
    fn log_weak_facts(&self, id: PeerId) {
        let who = Who::new(Some(id), &self.identity, FACE);
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

    /// Waits for Hello, checks the version, registers the peer and welcomes it.
    async fn handshake(&self) -> Result<Registration, Disconnect> {
        let incoming = self.receive().await?;
        // A Hello may lack proof (see `SenderMismatch::proof_missing`); a
        // Hello proven to come from another process may not.
        if let Err(mismatch) = incoming.sender
            && !mismatch.proof_missing
        {
            return Err(Disconnect::violation(
                ErrorCode::SenderMismatch,
                format!("Hello: {mismatch}"),
            ));
        }
        if !incoming.fds.is_empty() {
            return Err(Disconnect::violation(
                ErrorCode::ProtocolViolation,
                "file descriptors attached to Hello",
            ));
        }
        let hello = match incoming.message {
            Message::Hello(hello) => hello,
            other => {
                return Err(Disconnect::violation(
                    ErrorCode::ProtocolViolation,
                    format!("expected Hello as the first message, got {}", other.kind()),
                ));
            }
        };
        if hello.version != PROTOCOL_VERSION {
            return Err(Disconnect::violation(
                ErrorCode::VersionMismatch,
                format!(
                    "client speaks protocol version {}, this broker speaks version {PROTOCOL_VERSION}; \
                     use a pidbus client library of the same protocol version",
                    hello.version
                ),
            ));
        }
        if let Err(denied) = self
            .bus
            .authorize_connect(&self.identity, self.pidfd.as_fd())
        {
            return Err(Disconnect::violation(denied.code, denied.message));
        }
        let joining = Joining {
            identity: Arc::clone(&self.identity),
            namespace: self.namespace.clone(),
            outbox: Arc::clone(&self.outbox),
            pidfd: Arc::clone(&self.pidfd),
        };
        let max_record_size = self.bus.settings().max_record_size;
        self.bus
            .register(joining, |id| {
                codec::encode(
                    &Message::Welcome(Welcome {
                        version: PROTOCOL_VERSION,
                        unique_id: id,
                        identity: ProcessIdentity::clone(&self.identity),
                        max_record_size: max_record_size as u64,
                    }),
                    max_record_size,
                )
            })
            .map_err(|e| Disconnect::violation(ErrorCode::RecordTooLarge, e.to_string()))
    }

    /// Routes the peer's messages until it leaves, breaks the protocol, or
    /// its process exits.
    async fn serve_messages(&self, id: PeerId) -> Disconnect {
        loop {
            let batch = tokio::select! {
                // Checked first, so a process that exited is noticed even
                // while its socket (held by someone else) keeps sending.
                biased;
                () = self.exit.exited() => return self.drain(id, Disconnect::ProcessExited),
                failed = self.outbox.run_writer() => return self.after_failed_write(id, failed),
                batch = self.receive_batch() => batch,
            };
            let outcome = batch.and_then(|batch| self.handle_batch(id, batch));
            match outcome {
                Ok(()) => {}
                // The kernel reports a peer that closed with our records
                // unread (ECONNRESET) before the records it had sent.
                Err(Disconnect::Io(e)) if transport::peer_hung_up(&e) => {
                    return self.drain(id, Disconnect::Closed);
                }
                Err(end) => return end,
            }
        }
    }

    /// Waits for records and takes every one waiting (up to
    /// [`MAX_BATCH`](pidbus_protocol::transport::MAX_BATCH)) in one system
    /// call. A poll function, not an `async fn` holding a buffer: this
    /// future lives in every idle connection's task, and waiting this way
    /// stores only a waker.
    async fn receive_batch(&self) -> Result<(Batch, BeforeRead), Disconnect> {
        let limit = self.bus.settings().max_record_size;
        // Room for twice the last batch: a peer that sends one message at
        // a time costs the kernel two tries, not MAX_BATCH, when it
        // disconnects, while a stream of records soon gets the whole room.
        let max = 2 * usize::from(self.last_batch.load(Ordering::Relaxed).max(1));
        let socket: &SeqPacket = &self.socket;
        let (batch, before) = std::future::poll_fn(|cx| {
            // Taken only for the receive: a waiting task holds no vector.
            let mut batch = Batch::take();
            let gate =
                |_: BorrowedFd<'_>| self.sender_check.before_read(socket, self.pidfd.as_fd());
            socket
                .poll_recv_many_gated(cx, limit, max, &mut batch.0, gate)
                .map(|received| received.map(|before| (batch, before)))
        })
        .await?;
        let got = u8::try_from(batch.0.len()).unwrap_or(u8::MAX);
        self.last_batch.store(got, Ordering::Relaxed);
        Ok((batch, before))
    }

    /// Acts on each record of a batch in order. Several records are routed
    /// under a [`Cork`], so what they send each receiver goes out together.
    fn handle_batch(
        &self,
        id: PeerId,
        (mut batch, before): (Batch, BeforeRead),
    ) -> Result<(), Disconnect> {
        let _cork = (batch.0.len() > 1).then(Cork::hold);
        let mut alive = Liveness::after_receipt(self.pidfd.as_fd());
        for (index, outcome) in batch.0.drain(..).enumerate() {
            let received = outcome?.ok_or(Disconnect::Closed)?;
            let incoming = self.check(received, before.for_record(index), &mut alive)?;
            self.handle(id, incoming)?;
        }
        Ok(())
    }

    /// Sending to the peer failed. If it hung up, what it wrote before is
    /// still routed (a program may send and exit without reading).
    fn after_failed_write(&self, id: PeerId, failed: std::io::Error) -> Disconnect {
        if transport::peer_hung_up(&failed) {
            return self.drain(id, Disconnect::Closed);
        }
        Disconnect::Io(failed)
    }

    /// The process exited or hung up: route what it sent before (proven
    /// with `SCM_PIDFD` from now on), then close the connection as `end`.
    fn drain(&self, id: PeerId, end: Disconnect) -> Disconnect {
        if let Err(e) = self.sender_check.attach_pidfds(&self.socket.0) {
            debug!(peer = %id, error = %e, "cannot enable SO_PASSPIDFD to drain a departed peer");
            return end;
        }
        let limit = self.bus.settings().max_record_size;
        for _ in 0..MAX_RECORDS_DRAINED_AFTER_EXIT {
            let received = match self.socket.try_recv(limit) {
                Ok(Some(received)) => received,
                Ok(None) => break,
                Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // Reported once, ahead of what the peer sent (see above).
                Err(RecvError::Io(e)) if transport::peer_hung_up(&e) => continue,
                Err(e) => return e.into(),
            };
            let mut alive = Liveness::after_receipt(self.pidfd.as_fd());
            let outcome = self
                .check(received, BeforeRead::NOTHING, &mut alive)
                .and_then(|incoming| self.handle(id, incoming));
            if let Err(end) = outcome {
                return end;
            }
        }
        end
    }

    /// Acts on one message from a registered peer.
    fn handle(&self, id: PeerId, incoming: Incoming) -> Result<(), Disconnect> {
        if let Err(mismatch) = &incoming.sender {
            return self.refuse_foreign_sender(id, &incoming.message, mismatch);
        }
        let fds = incoming.fds;
        let carries_fds = !fds.is_empty();
        if let Some(refusal) = malformed_body(&incoming.message, fds.len()) {
            return self.refuse_malformed_body(id, &incoming.message, refusal);
        }
        match incoming.message {
            Message::Request(request) => return self.answer(id, request, fds),
            Message::Call(call) => self.bus.route_call(id, call, fds),
            Message::Return(answer) => self.bus.route_return(id, answer, fds),
            Message::Signal(signal) => self.bus.route_signal(id, signal, fds),
            Message::Error(error) if !carries_fds => self.bus.route_error(id, error),
            Message::Error(_) => {
                return Err(Disconnect::violation(
                    ErrorCode::ProtocolViolation,
                    "file descriptors attached to an Error, which takes none",
                ));
            }
            other => {
                return Err(Disconnect::violation(
                    ErrorCode::ProtocolViolation,
                    format!(
                        "{} is not allowed from a client after the handshake",
                        other.kind()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A call whose body breaks its signature is answered with an error;
    /// a signal or reply is refused with a notice. Nothing is routed.
    fn refuse_malformed_body(
        &self,
        id: PeerId,
        message: &Message,
        refusal: String,
    ) -> Result<(), Disconnect> {
        debug!(peer = %id, reason = %refusal, "malformed body refused");
        match message {
            Message::Call(call) if !call.no_reply => self.bus.send_error(
                id,
                ErrorReply::broker(Some(call.serial), ErrorCode::MalformedMessage, refusal),
            ),
            _ => self
                .bus
                .send_notice(id, ErrorCode::MalformedMessage, refusal),
        }
        Ok(())
    }

    fn answer(&self, id: PeerId, request: Request, fds: Vec<OwnedFd>) -> Result<(), Disconnect> {
        let name = request.body.name();
        if !fds.is_empty() && !matches!(request.body, BrokerRequest::Ping { .. }) {
            return Err(Disconnect::violation(
                ErrorCode::ProtocolViolation,
                format!("file descriptors attached to {name}, which takes none"),
            ));
        }
        debug!(peer = %id, request = name, serial = request.serial, "request");
        let bus = &self.bus;
        let answer = match request.body {
            // The fds go back with the reply, proving fd passing works both ways.
            BrokerRequest::Ping { payload } => {
                bus.reply(id, request.serial, BrokerReply::Pong { payload }, fds);
                return Ok(());
            }
            BrokerRequest::GetIdentity => Ok(BrokerReply::Identity(PeerInfo {
                id,
                identity: ProcessIdentity::clone(&self.identity),
            })),
            BrokerRequest::ListPeers { after } => Ok(bus.peers(id, after)),
            BrokerRequest::RequestName { name, flags } => bus.request_name(id, &name, flags),
            BrokerRequest::ReleaseName { name } => bus.release_name(id, &name),
            BrokerRequest::ListNames { after } => Ok(bus.names(after.as_deref())),
            BrokerRequest::GetNameOwner { name } => bus.name_owner(&name),
            BrokerRequest::AddMatch { id: rule_id, rule } => bus.add_match(id, rule_id, rule),
            BrokerRequest::RemoveMatch { id: rule_id } => bus.remove_match(id, rule_id),
            BrokerRequest::WatchNameOwners { enabled } => Ok(bus.watch_name_owners(id, enabled)),
            BrokerRequest::BecomeMonitor => bus.become_monitor(id),
            BrokerRequest::GetPidfd { target } => match bus.get_pidfd(id, &target) {
                Ok((body, pidfd)) => {
                    bus.reply(id, request.serial, body, vec![pidfd]);
                    return Ok(());
                }
                Err(error) => Err(error),
            },
            BrokerRequest::WatchProcess { id: watch, target } => {
                bus.watch_process(id, watch, &target)
            }
            BrokerRequest::UnwatchProcess { id: watch } => bus.unwatch_process(id, watch),
            BrokerRequest::CheckAuthorization { action, subject } => {
                bus.check_authorization(id, &action, subject)
            }
            BrokerRequest::ReloadPolicy => bus.reload_policy_for(id),
            BrokerRequest::ListActivatableNames { after } => {
                Ok(bus.activatable_names_page(after.as_deref()))
            }
            BrokerRequest::StartService { name } => {
                // Answered when the start ends, which may be later.
                bus.start_service_for(id, request.serial, &name);
                return Ok(());
            }
        };
        match answer {
            Ok(body) => bus.reply(id, request.serial, body, Vec::new()),
            Err(error) => bus.send_error(
                id,
                ErrorReply {
                    reply_to: Some(request.serial),
                    ..error
                },
            ),
        }
        Ok(())
    }

    /// A message from a process other than the connection's: logged with
    /// both identities and not routed. In reject mode the sender is told
    /// (an error for a request or call, a notice otherwise) and the
    /// connection stays; in strict mode it is closed.
    fn refuse_foreign_sender(
        &self,
        id: PeerId,
        message: &Message,
        mismatch: &SenderMismatch,
    ) -> Result<(), Disconnect> {
        let mode = self.bus.settings().sender_check;
        if let Some(admitted) = FOREIGN_SENDERS.admit(self.identity.uid) {
            warn!(
                peer = %Who::new(Some(id), &self.identity, FACE),
                sender = %mismatch.sender,
                message = message.kind(),
                mode = %mode,
                suppressed = admitted.suppressed,
                "message from a process other than the connection's; not routed"
            );
        }
        if mode == SenderCheckMode::Strict {
            return Err(Disconnect::violation(
                ErrorCode::SenderMismatch,
                mismatch.to_string(),
            ));
        }
        let serial = match message {
            Message::Request(request) => Some(request.serial),
            Message::Call(call) if !call.no_reply => Some(call.serial),
            _ => None,
        };
        match serial {
            Some(serial) => self.bus.send_error(
                id,
                ErrorReply::broker(
                    Some(serial),
                    ErrorCode::SenderMismatch,
                    mismatch.to_string(),
                ),
            ),
            None => self
                .bus
                .send_notice(id, ErrorCode::SenderMismatch, mismatch.to_string()),
        }
        Ok(())
    }

    async fn receive(&self) -> Result<Incoming, Disconnect> {
        // A poll function, not `recv().await`: this future lives in every
        // idle connection's task, and waiting this way stores only a waker.
        let limit = self.bus.settings().max_record_size;
        let socket: &SeqPacket = &self.socket;
        let gate = |_: BorrowedFd<'_>| self.sender_check.before_read(socket, self.pidfd.as_fd());
        let mut one = Vec::with_capacity(1);
        let before =
            std::future::poll_fn(|cx| socket.poll_recv_many_gated(cx, limit, 1, &mut one, gate))
                .await?;
        let received = one
            .pop()
            .ok_or(Disconnect::Closed)??
            .ok_or(Disconnect::Closed)?;
        let alive = &mut Liveness::after_receipt(self.pidfd.as_fd());
        self.check(received, before, alive)
    }

    /// Verifies a record's sender and decodes it.
    fn check(
        &self,
        received: Received,
        before: BeforeRead,
        alive: &mut Liveness<'_>,
    ) -> Result<Incoming, Disconnect> {
        let limit = self.bus.settings().max_record_size;
        let sender = self
            .sender_check
            .verify(Attached::from(&received), before, alive);
        let message = codec::decode(&received.data, limit)
            .map_err(|e| Disconnect::violation(ErrorCode::MalformedMessage, e.to_string()))?;
        Ok(Incoming {
            message,
            fds: received.fds,
            sender,
        })
    }

    fn end(&self, id: Option<PeerId>, end: Disconnect) {
        let who = Who::new(id, &self.identity, FACE);
        let peer_closed = matches!(end, Disconnect::Closed);
        match end {
            Disconnect::Closed => match self.outbox.kill_reason() {
                Some(reason) => info!(peer = %who, %reason, "peer disconnected by the broker"),
                None => debug!(peer = %who, "peer disconnected"),
            },
            Disconnect::ProcessExited => {
                info!(peer = %who, "peer process exited; connection closed");
                send_notice(
                    &self.socket,
                    None,
                    ErrorCode::ProcessExited,
                    "the process that opened this connection has exited",
                );
            }
            Disconnect::Io(e) => info!(peer = %who, error = %e, "peer connection failed"),
            Disconnect::Violation { code, reason } => {
                warn!(peer = %who, %code, %reason, "disconnecting peer");
                send_notice(&self.socket, None, code, &reason);
            }
        }
        self.outbox.close();
        // Make the peer see EOF even if other processes hold the socket
        // (after `Closed` every holder has already closed it).
        if !peer_closed {
            let _ = self.socket.shutdown();
        }
    }
}

/// Sends an error without waiting; dropped if the peer's buffer is full.
pub(crate) fn send_notice(
    socket: &SeqPacket,
    reply_to: Option<u64>,
    code: ErrorCode,
    message: &str,
) {
    let notice = Message::Error(ErrorReply::broker(reply_to, code, message));
    // Bounded well under any record limit: messages are short.
    if let Ok(bytes) = codec::encode(&notice, pidbus_protocol::limits::DEFAULT_MAX_RECORD_SIZE) {
        let _ = socket.try_send(&bytes, &[]);
    }
}

/// Why the body of a call, reply or signal does not hold what its
/// signature says (with `fds` descriptors attached), if it does not: the
/// bus carries only bodies every D-Bus peer can read.
fn malformed_body(message: &Message, fds: usize) -> Option<String> {
    use pidbus_protocol::dbus::body::{Endian, check};
    let (what, signature, body) = match message {
        Message::Call(call) => ("call", &call.signature, &call.body),
        Message::Return(answer) => ("reply", &answer.signature, &answer.body),
        Message::Signal(signal) => ("signal", &signal.signature, &signal.body),
        _ => return None,
    };
    let fds = u32::try_from(fds).unwrap_or(u32::MAX);
    check(signature, body, Endian::Little, fds)
        .err()
        .map(|e| format!("the {what}'s body does not match its signature {signature:?}: {e}"))
}
