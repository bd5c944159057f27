//! What the broker sends to one peer: records go straight to the socket
//! when it has room, and wait in a bounded queue (drained by the peer's
//! writer task) when it does not.
//!
//! The direct path keeps the common case at one `sendmsg` from the task that
//! routed the message, with no channel or task hop. A task routing a batch
//! of messages (several read in one system call) holds a [`Cork`]: what it
//! routes waits in the receivers' queues, and each receiver's records go
//! out together when the batch is done, several per system call. The queue keeps order:
//! once anything waits, everything after it waits too. The queue is drained
//! by [`Outbox::run_writer`], which the peer's own task polls next to its
//! reads: no second task per connection. The queue's bounds
//! are what stop a peer that does not read from growing the broker's memory
//! (bytes) and filling its descriptor table (passed fds and handed-out
//! pidfds wait here as open descriptors of the broker).
//!
//! Descriptors already written to a peer's socket and not read yet are
//! bounded too (`State::in_flight_fds`): the kernel counts every
//! descriptor in flight against the *broker's* user (at its
//! `RLIMIT_NOFILE`, for a broker without `CAP_SYS_RESOURCE`, as the
//! shipped unit runs it), so without a bound a few peers that never read
//! would leave the broker unable to pass a descriptor to anyone.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Sleep;
use tracing::warn;

use pidbus_protocol::Message;
use pidbus_protocol::transport::OutRecord;

use crate::bus::quotas::{Charge, QuotaExceeded, Resource, UidAccount};
use crate::log_limit::KERNEL_FD_LIMIT;
use pidbus_protocol::transport::MAX_BATCH;

/// A peer's connection as its face drives it: how the core's messages are
/// written for this peer, and how bytes reach its socket. The one thing the
/// core knows about faces.
pub trait Wire: Send + Sync + fmt::Debug {
    /// `message`, which travels with `fds` descriptors, as this peer reads
    /// it, in at most `limit` bytes.
    fn encode(&self, message: &Message, fds: usize, limit: usize) -> Result<Vec<u8>, EncodeError>;

    /// One receiver's copy of a broadcast `signal` (whose `matched` is
    /// empty), `matched` being the receiver's rules that selected it. The
    /// copies of one signal differ at most there, so a face may encode
    /// the signal once into `shared` and build each copy from that.
    fn encode_copy(
        &self,
        signal: &Message,
        matched: &[u64],
        fds: usize,
        limit: usize,
        shared: &mut SharedEncodings,
    ) -> Result<Vec<u8>, EncodeError>;

    /// Sends from the front of `records` without waiting, as many as one
    /// system call takes, each record's descriptors with its first byte
    /// (the first record may be partly sent already: its `data` is what
    /// remains and its descriptors are gone). Returns how many bytes of
    /// their concatenation went: a record socket sends whole records or
    /// fails with `WouldBlock`; a stream may stop within one.
    fn try_send_many(&self, records: &[OutRecord<'_, OwnedFd>]) -> io::Result<usize>;

    /// Runs `write` whenever the socket has room, until it returns `Ok`
    /// (`WouldBlock` makes it wait for room again).
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: &mut dyn FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>>;

    /// How much of what was sent the peer has not read yet; 0 once it has
    /// read everything, with every descriptor sent to it.
    fn unread_by_peer(&self) -> io::Result<usize>;

    /// Shuts the socket down both ways, so the peer sees end-of-file.
    fn shutdown(&self) -> io::Result<()>;
}

/// What faces keep while copies of one signal are encoded for its
/// receivers (see [`Wire::encode_copy`]), by face.
#[derive(Debug, Default)]
pub struct SharedEncodings(Vec<(&'static str, Vec<u8>)>);

impl SharedEncodings {
    /// What `face` kept, made by `make` the first time.
    pub fn get_or_make(
        &mut self,
        face: &'static str,
        make: impl FnOnce() -> Result<Vec<u8>, EncodeError>,
    ) -> Result<&[u8], EncodeError> {
        let index = match self.0.iter().position(|(key, _)| *key == face) {
            Some(index) => index,
            None => {
                self.0.push((face, make()?));
                self.0.len() - 1
            }
        };
        Ok(&self.0[index].1)
    }
}

/// Why a message could not be written for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// It does not fit in what the peer accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The peer's protocol cannot say it (e.g. a serial beyond D-Bus's 32
    /// bits).
    #[error("{0}")]
    Unrepresentable(String),
    /// The peer's protocol has no such message and nothing is lost by not
    /// sending it (a native notice to a D-Bus peer); dropped quietly.
    #[error("not sent on this face: {0}")]
    NotForThisFace(&'static str),
}

/// One encoded record and the descriptors that travel with it.
#[derive(Debug)]
pub struct Outgoing {
    /// The encoded message.
    pub bytes: Vec<u8>,
    /// Descriptors passed with it (closed in the broker once sent).
    pub fds: Vec<OwnedFd>,
}

/// The peer's queue cannot take this record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueFull {
    /// The connection's own queue is at its limit.
    Connection {
        /// Bytes already waiting.
        queued_bytes: usize,
        /// Descriptors already waiting.
        queued_fds: usize,
    },
    /// The connection's user has used up its quota across its connections.
    Uid(QuotaExceeded),
}

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueFull::Connection {
                queued_bytes,
                queued_fds,
            } => write!(
                f,
                "{queued_bytes} bytes and {queued_fds} file descriptors already wait for \
                 this connection to read them"
            ),
            QueueFull::Uid(quota) => quota.fmt(f),
        }
    }
}

/// Whether a record may be refused, and at which bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Someone can be told instead (a call or unicast signal: its sender;
    /// a reply: its receiver gets a short error in its place; a broadcast
    /// copy is dropped): refused at the connection's limit, or when the
    /// payer would pass its quota less a reserve kept for what must
    /// arrive.
    Refusable,
    /// The peer must receive it (a short error, a notice, an event about
    /// itself): refused only at the connection's limit or its user's whole
    /// quota, and then the peer, which is not reading, is disconnected.
    Required,
}

/// The part of a uid's quota of queued bytes and descriptors that only
/// [`Delivery::Required`] records may use: one eighth.
fn refusable_ceiling(limit: usize) -> usize {
    limit - limit / 8
}

/// How much may wait for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Bytes of encoded records.
    pub bytes: usize,
    /// Descriptors travelling with them.
    pub fds: usize,
}

/// The outgoing side of one peer's connection.
#[derive(Debug)]
pub struct Outbox {
    wire: Arc<dyn Wire>,
    limits: QueueLimits,
    /// The connection's place among its user's connections (given back
    /// when the last holder of the outbox is gone), and through it the
    /// account charged for what waits here.
    connection: Charge,
    state: Mutex<State>,
}

/// A record waiting in the queue and the account it is charged to.
#[derive(Debug)]
struct Queued {
    record: Outgoing,
    payer: Arc<UidAccount>,
    /// Bytes of the record already sent (a stream takes part of a record;
    /// its descriptors left with the first byte).
    sent: usize,
}

impl Queued {
    /// The descriptors that still go with this record: all of them until
    /// its first byte is sent, none after.
    fn fds_to_send(&self) -> &[OwnedFd] {
        if self.sent == 0 {
            &self.record.fds
        } else {
            &[]
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    queued_fds: usize,
    /// Descriptors written to the peer's socket that it may not have read
    /// yet: at most the connection's queue limit of them (a record may
    /// pass it when none is), charged to the peer's user (`fds`) until the
    /// kernel says the peer has read everything sent (`SIOCOUTQ` 0).
    /// Records with descriptors wait in the queue meanwhile.
    in_flight_fds: usize,
    /// The front record waits for the peer to read the descriptors in
    /// flight (or for the kernel's own limit); the writer asks again when
    /// `recheck` fires.
    held: bool,
    /// When the writer asks the kernel again about what is in flight.
    recheck: Option<Pin<Box<Sleep>>>,
    /// The connection is gone or being torn down; records are dropped.
    closed: bool,
    /// Why the broker cut the connection, if it did.
    kill_reason: Option<String>,
    /// The task draining the queue, waiting for records.
    writer: Option<Waker>,
}

impl Outbox {
    /// An outbox for `wire` queueing at most `limits`; `connection` is
    /// the connection's charge, whose account also pays for what waits.
    pub fn new(wire: Arc<dyn Wire>, limits: QueueLimits, connection: Charge) -> Self {
        Outbox {
            wire,
            limits,
            connection,
            state: Mutex::new(State::default()),
        }
    }

    /// Sends or queues `record`, which the peer must receive and its own
    /// user pays for. Fails when the connection's queue is full or its user
    /// is at the whole quota (a record to an empty queue always fits); a
    /// closed connection silently drops it (its peer is leaving).
    pub fn push(self: &Arc<Self>, record: Outgoing) -> Result<(), QueueFull> {
        self.send_or_queue(record, Delivery::Required, None)
    }

    /// Sends or queues `record`, charged to `payer` (the peer's own user
    /// when `None`), which may be refused: at the connection's limit, or
    /// when the payer would pass its refusable share of the quota.
    pub fn offer(
        self: &Arc<Self>,
        record: Outgoing,
        payer: Option<&Arc<UidAccount>>,
    ) -> Result<(), QueueFull> {
        self.send_or_queue(record, Delivery::Refusable, payer)
    }

    fn send_or_queue(
        self: &Arc<Self>,
        record: Outgoing,
        delivery: Delivery,
        payer: Option<&Arc<UidAccount>>,
    ) -> Result<(), QueueFull> {
        let mut state = self.lock();
        if state.closed {
            return Ok(());
        }
        let mut sent = 0;
        let corked = state.queue.is_empty() && Cork::defer(self);
        if state.queue.is_empty() && !corked && self.fds_may_go(&mut state, record.fds.len()) {
            match self.try_send_now(&record, 0) {
                Ok(n) if n == record.bytes.len() => {
                    self.note_sent_fds(&mut state, record.fds.len());
                    return Ok(());
                }
                Ok(n) => {
                    // The descriptors went with the first byte.
                    if n > 0 {
                        self.note_sent_fds(&mut state, record.fds.len());
                    }
                    sent = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if at_kernel_fd_limit(&e) => self.hold_for_kernel(&mut state),
                Err(_) => {
                    // The peer is gone; its reader will notice and clean up.
                    state.closed = true;
                    return Ok(());
                }
            }
        }
        let (len, fds) = (record.bytes.len(), record.fds.len());
        // A record always fits an empty queue, so a limit smaller than one
        // record cannot wedge a peer.
        let over = state.queued_bytes + len > self.limits.bytes
            || state.queued_fds + fds > self.limits.fds;
        let first = state.queue.is_empty();
        if !first && over {
            return Err(QueueFull::Connection {
                queued_bytes: state.queued_bytes,
                queued_fds: state.queued_fds,
            });
        }
        let payer = payer.unwrap_or_else(|| self.account());
        charge(payer, len, fds, delivery, first).map_err(QueueFull::Uid)?;
        state.queued_bytes += len;
        state.queued_fds += fds;
        state.queue.push_back(Queued {
            record,
            payer: Arc::clone(payer),
            sent,
        });
        // A corked queue is flushed when the batch is done; the writer
        // is needed only if the socket is full then.
        let writer = if Cork::is_held() {
            None
        } else {
            state.writer.take()
        };
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Sends what waits now, as a [`Cork`] ends; leaves the rest to the
    /// writer when the socket is full.
    fn flush(&self) {
        let mut state = self.lock();
        if state.closed || state.queue.is_empty() {
            return;
        }
        let result = self.send_queued(&mut state);
        let writer = match result {
            // Records with descriptors wait: the writer asks again later.
            Ok(()) if !state.queue.is_empty() => state.writer.take(),
            Ok(()) => None,
            // Full, or failed: the writer waits for room, or meets the
            // failure again and closes the outbox.
            Err(_) => state.writer.take(),
        };
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// The account of the peer's user.
    pub fn account(&self) -> &Arc<UidAccount> {
        self.connection.account()
    }

    /// How the peer's face writes messages for it.
    pub fn wire(&self) -> &dyn Wire {
        &*self.wire
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.lock().queued_bytes
    }

    /// Descriptors waiting in the queue.
    pub fn queued_fds(&self) -> usize {
        self.lock().queued_fds
    }

    /// Drops everything queued and refuses further records.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for queued in state.queue.drain(..) {
            uncharge(&queued);
        }
        state.queued_bytes = 0;
        state.queued_fds = 0;
        // What is in the peer's socket stays there (counted by the kernel
        // against the broker) until the peer reads it or closes: it stays
        // charged until then.
        let in_flight = std::mem::take(&mut state.in_flight_fds);
        if in_flight > 0 {
            self.linger(in_flight);
        }
        state.held = false;
        state.recheck = None;
    }

    /// Keeps `in_flight` descriptors charged to the peer's user after its
    /// connection closed, until the kernel says the peer has read them or
    /// closed its end (`SIOCOUTQ` 0): a process that hands its socket to a
    /// child that never reads must not free the broker's quota of
    /// descriptors in flight by closing connections.
    fn linger(&self, in_flight: usize) {
        let account = Arc::clone(self.account());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            account.sub(Resource::Fds, in_flight);
            return;
        };
        let wire = Arc::clone(&self.wire);
        runtime.spawn(async move {
            while matches!(wire.unread_by_peer(), Ok(n) if n > 0) {
                tokio::time::sleep(RECHECK_IDLE).await;
            }
            account.sub(Resource::Fds, in_flight);
        });
    }

    /// Descriptors written to the peer that it may not have read yet.
    pub fn in_flight_fds(&self) -> usize {
        self.lock().in_flight_fds
    }

    /// Cuts the connection because it cannot take what it must receive:
    /// drops the queue and shuts the socket down, which ends the peer's
    /// task; [`kill_reason`](Self::kill_reason) then says why.
    pub fn kill(&self, reason: String) {
        self.close();
        self.lock().kill_reason.get_or_insert(reason);
        let _ = self.wire.shutdown();
    }

    /// Why [`kill`](Self::kill) cut the connection, if it did.
    pub fn kill_reason(&self) -> Option<String> {
        self.lock().kill_reason.clone()
    }

    /// Drains the queue whenever records wait, as the socket makes room.
    /// Returns only when sending fails, after closing the outbox.
    ///
    /// Cancel-safe: a record leaves the queue only once it has been sent,
    /// so the peer's task may poll this next to its reads and drop it.
    pub async fn run_writer(&self) -> io::Error {
        std::future::poll_fn(|cx| self.poll_writer(cx)).await
    }

    /// [`run_writer`](Self::run_writer) as a poll function: while idle it
    /// holds nothing but the task's waker, which `push` wakes.
    pub fn poll_writer(&self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            {
                let mut state = self.lock();
                if state.queue.is_empty() {
                    if !state
                        .writer
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        state.writer = Some(cx.waker().clone());
                    }
                    // Nothing to send: give back what the peer has read
                    // now and then, so an idle peer's user is not charged
                    // for descriptors long gone.
                    self.recheck_idle(&mut state, cx);
                    return Poll::Pending;
                }
                if state.held {
                    if let Some(timer) = state.recheck.as_mut()
                        && timer.as_mut().poll(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                    state.recheck = None;
                    state.held = false;
                }
            }
            match self
                .wire
                .poll_write_with(cx, &mut || self.send_queued(&mut self.lock()))
            {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => {
                    self.close();
                    let _ = self.wire.shutdown();
                    return Poll::Ready(e);
                }
            }
        }
    }

    /// Sends queued records until the queue is empty (`Ok`) or the socket
    /// is full (`WouldBlock`), as many per system call as the wire takes.
    /// Sending under the lock keeps `push`'s direct path from overtaking a
    /// record being sent.
    ///
    /// Records with descriptors go only while [`State::in_flight_fds`]
    /// allows; when one must wait, this returns `Ok` with records left and
    /// the recheck timer set.
    fn send_queued(&self, state: &mut State) -> io::Result<()> {
        while !state.queue.is_empty() {
            let ready = self.sendable(state);
            if ready == 0 {
                self.hold_for_peer(state);
                return Ok(());
            }
            let batch: Vec<OutRecord<'_, OwnedFd>> = state
                .queue
                .iter()
                .take(ready)
                .map(|queued| OutRecord {
                    data: &queued.record.bytes[queued.sent..],
                    fds: queued.fds_to_send(),
                })
                .collect();
            let sent = self.wire.try_send_many(&batch);
            drop(batch);
            let mut sent = match sent {
                Ok(sent) => sent,
                Err(e) if at_kernel_fd_limit(&e) => {
                    self.hold_for_kernel(state);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            while sent > 0 {
                let Some(queued) = state.queue.front_mut() else {
                    break;
                };
                let rest = queued.record.bytes.len() - queued.sent;
                let fds_now = queued.fds_to_send().len();
                if sent < rest {
                    // A stream took part of this record: its buffer is full.
                    queued.sent += sent;
                    self.note_sent_fds(state, fds_now);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                sent -= rest;
                let (len, count) = (queued.record.bytes.len(), queued.record.fds.len());
                uncharge(queued);
                state.queue.pop_front();
                state.queued_bytes -= len;
                state.queued_fds -= count;
                self.note_sent_fds(state, fds_now);
            }
        }
        Ok(())
    }

    /// How many records from the front of the queue may go now (at most
    /// [`MAX_BATCH`]): up to the first whose descriptors would pass the
    /// bound on descriptors in flight.
    fn sendable(&self, state: &mut State) -> usize {
        let ready = self.sendable_now(state);
        if ready == 0 && state.in_flight_fds > 0 {
            // The peer may have read what was in flight: ask the kernel.
            self.settle_in_flight(state);
            return self.sendable_now(state);
        }
        ready
    }

    /// [`sendable`](Self::sendable) with what is in flight as it stands.
    fn sendable_now(&self, state: &State) -> usize {
        let mut ready = 0;
        let mut fds = 0;
        // What the records to go are charged to this peer's own user now
        // (as their payer) moves to in flight: not counted twice.
        let mut own = 0;
        for queued in state.queue.iter().take(MAX_BATCH) {
            let count = queued.fds_to_send().len();
            let mine = if Arc::ptr_eq(&queued.payer, self.account()) {
                count
            } else {
                0
            };
            if count > 0 && !self.room_for_fds(state.in_flight_fds, fds + count, own + mine) {
                break;
            }
            fds += count;
            own += mine;
            ready += 1;
        }
        ready
    }

    /// Whether a record sent now may take its `fds` descriptors to the
    /// peer.
    fn fds_may_go(&self, state: &mut State, fds: usize) -> bool {
        if fds == 0 || self.room_for_fds(state.in_flight_fds, fds, 0) {
            return true;
        }
        self.settle_in_flight(state);
        self.room_for_fds(state.in_flight_fds, fds, 0)
    }

    /// Whether `more` descriptors may join `in_flight` ones: while the
    /// connection's bound holds (one record always may, when none is in
    /// flight) and the peer's user stays within its `fds` quota, of which
    /// `own` are charged to it already (as the records' payer).
    fn room_for_fds(&self, in_flight: usize, more: usize, own: usize) -> bool {
        let account = self.account();
        let user_room =
            account.used(Resource::Fds).saturating_sub(own) + more <= account.limit(Resource::Fds);
        (in_flight == 0 || in_flight + more <= self.limits.fds) && user_room
    }

    /// Descriptors just written to the peer: in flight, and charged to its
    /// user until it has read them.
    fn note_sent_fds(&self, state: &mut State, count: usize) {
        if count > 0 {
            self.account().add(Resource::Fds, count);
            state.in_flight_fds += count;
        }
    }

    /// Gives back the descriptors in flight if the peer has read all that
    /// was sent to it.
    fn settle_in_flight(&self, state: &mut State) {
        if state.in_flight_fds > 0 && matches!(self.wire.unread_by_peer(), Ok(0)) {
            self.account().sub(Resource::Fds, state.in_flight_fds);
            state.in_flight_fds = 0;
        }
    }

    /// A record with descriptors waits for the peer to read those in
    /// flight: the writer asks the kernel again shortly.
    fn hold_for_peer(&self, state: &mut State) {
        if !state.held {
            state.held = true;
            state.recheck = Some(Box::pin(tokio::time::sleep(RECHECK_IN_FLIGHT)));
        }
    }

    /// The kernel refused descriptors because the broker's user has too
    /// many in flight (`ETOOMANYREFS`): the broker's own limit, not the
    /// peer's fault. The record waits, charged, and goes later; said once
    /// per connection stretch, not per record.
    fn hold_for_kernel(&self, state: &mut State) {
        let uid = self.account().uid();
        if !state.held
            && let Some(admitted) = KERNEL_FD_LIMIT.admit(uid)
        {
            warn!(
                uid,
                queued_fds = state.queued_fds,
                suppressed = admitted.suppressed,
                "the kernel's limit on descriptors in flight for the broker's user is reached: \
                   records with descriptors wait (raise LimitNOFILE, or lower the per-user fds quota)"
            );
        }
        self.hold_for_peer(state);
    }

    /// For a writer with nothing to send: while descriptors are in
    /// flight, asks the kernel every [`RECHECK_IDLE`] whether the peer has
    /// read them, and gives their charge back once it has.
    fn recheck_idle(&self, state: &mut State, cx: &mut Context<'_>) {
        if state.in_flight_fds == 0 {
            state.recheck = None;
            return;
        }
        let timer = state
            .recheck
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(RECHECK_IDLE)));
        if timer.as_mut().poll(cx).is_ready() {
            state.recheck = None;
            self.settle_in_flight(state);
            if state.in_flight_fds > 0 {
                let mut timer = Box::pin(tokio::time::sleep(RECHECK_IDLE));
                let _ = timer.as_mut().poll(cx);
                state.recheck = Some(timer);
            }
        }
    }

    /// Sends `record` from byte `sent` on; its descriptors go with its
    /// first byte only.
    fn try_send_now(&self, record: &Outgoing, sent: usize) -> io::Result<usize> {
        let fds: &[OwnedFd] = if sent == 0 { &record.fds } else { &[] };
        self.wire.try_send_many(&[OutRecord {
            data: &record.bytes[sent..],
            fds,
        }])
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent between
        // statements that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How soon a writer whose records with descriptors wait asks again
/// whether the peer has read those in flight.
const RECHECK_IN_FLIGHT: Duration = Duration::from_millis(20);

/// How often an idle writer asks whether the peer has read the
/// descriptors still charged as in flight.
const RECHECK_IDLE: Duration = Duration::from_millis(250);

/// `ETOOMANYREFS`: the sender's user has too many descriptors in flight.
fn at_kernel_fd_limit(error: &io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::TOOMANYREFS.raw_os_error())
}

thread_local! {
    /// The outboxes holding records routed under this thread's [`Cork`],
    /// while one is held.
    static CORKED: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
}

/// While held, records routed on this thread wait in their receivers'
/// queues; when it is dropped, each receiver's records go out together,
/// several per system call. Held by a task routing a batch of messages
/// read in one system call, and only then: a lone message goes straight
/// out, with nothing added to its latency.
#[must_use = "the records wait until the cork is dropped"]
pub struct Cork {
    /// An outer cork is already held on this thread; it flushes.
    nested: bool,
}

impl Cork {
    /// Holds the cork until the returned guard is dropped.
    pub fn hold() -> Cork {
        CORKED.with(|corked| {
            let mut corked = corked.borrow_mut();
            let nested = corked.is_some();
            if !nested {
                *corked = Some(Vec::new());
            }
            Cork { nested }
        })
    }

    /// Whether a cork is held on this thread.
    fn is_held() -> bool {
        CORKED.with(|corked| corked.borrow().is_some())
    }

    /// Registers `outbox`, whose queue is empty, to be flushed when the
    /// cork is dropped; `false` when no cork is held.
    fn defer(outbox: &Arc<Outbox>) -> bool {
        CORKED.with(|corked| match corked.borrow_mut().as_mut() {
            Some(list) => {
                list.push(Arc::clone(outbox));
                true
            }
            None => false,
        })
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        if self.nested {
            return;
        }
        let corked = CORKED.with(|corked| corked.borrow_mut().take());
        for outbox in corked.unwrap_or_default() {
            outbox.flush();
        }
    }
}

/// Charges a record about to be queued to `payer`. The first record of
/// an empty queue that the peer must receive is taken whatever the quota:
/// at most one record per connection passes it, and refusing it would cut
/// a connection that reads but whose socket is momentarily full.
fn charge(
    payer: &UidAccount,
    len: usize,
    fds: usize,
    delivery: Delivery,
    first: bool,
) -> Result<(), QuotaExceeded> {
    if delivery == Delivery::Required && first {
        payer.add(Resource::QueuedBytes, len);
        payer.add(Resource::Fds, fds);
        return Ok(());
    }
    let ceiling = |resource| match delivery {
        Delivery::Refusable => refusable_ceiling(payer.limit(resource)),
        Delivery::Required => payer.limit(resource),
    };
    payer.try_add_up_to(Resource::QueuedBytes, len, ceiling(Resource::QueuedBytes))?;
    if let Err(e) = payer.try_add_up_to(Resource::Fds, fds, ceiling(Resource::Fds)) {
        payer.sub(Resource::QueuedBytes, len);
        return Err(e);
    }
    Ok(())
}

/// Gives back what a record leaving the queue was charged.
fn uncharge(queued: &Queued) {
    queued
        .payer
        .sub(Resource::QueuedBytes, queued.record.bytes.len());
    queued.payer.sub(Resource::Fds, queued.record.fds.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bus::quotas::{Accounts, UidLimits};
    use crate::dbus::wire::{DbusWire, Socket};
    use pidbus_protocol::transport::{RecvError, SeqPacket};

    /// The native socket's wire: a record socket, as in production.
    fn records(socket: SeqPacket) -> DbusWire {
        DbusWire::new(Socket::Records(Arc::new(socket)), true, 1 << 20)
    }

    fn limits(bytes: usize, fds: usize) -> QueueLimits {
        QueueLimits { bytes, fds }
    }

    fn outbox(socket: SeqPacket, limits: QueueLimits) -> Arc<Outbox> {
        let account = Accounts::new(UidLimits::default()).of(0);
        Arc::new(Outbox::new(
            Arc::new(records(socket)),
            limits,
            account.try_charge(Resource::Connections, 1).unwrap(),
        ))
    }

    fn queued(full: &QueueFull) -> (usize, usize) {
        match full {
            QueueFull::Connection {
                queued_bytes,
                queued_fds,
            } => (*queued_bytes, *queued_fds),
            QueueFull::Uid(quota) => panic!("the uid quota was hit first: {quota}"),
        }
    }

    #[tokio::test]
    async fn descriptors_waiting_for_a_peer_that_does_not_read_are_bounded() {
        let (ours, _theirs) = SeqPacket::pair().unwrap();
        let outbox = outbox(ours, limits(64 << 20, 10));
        let with_fds = || Outgoing {
            bytes: vec![1; 1000],
            fds: vec![
                std::fs::File::open("/dev/null").unwrap().into(),
                std::fs::File::open("/dev/null").unwrap().into(),
            ],
        };
        let full = (0..10_000).find_map(|_| outbox.push(with_fds()).err());
        let full = full.expect("the fd bound must be hit before the byte bound");
        let (_, queued_fds) = queued(&full);
        assert!(queued_fds <= 10 && queued_fds + 2 > 10, "{full}");
        assert_eq!(outbox.queued_fds(), queued_fds);
        // Records without descriptors still fit.
        assert_eq!(outbox.push(record(10)), Ok(()));
        outbox.close();
        assert_eq!(outbox.queued_fds(), 0, "closing drops (and closes) them");
    }

    fn record(n: usize) -> Outgoing {
        Outgoing {
            bytes: vec![7; n],
            fds: vec![],
        }
    }
    fn with_fds(count: usize) -> Outgoing {
        Outgoing {
            bytes: vec![1; 100],
            fds: (0..count)
                .map(|_| std::fs::File::open("/dev/null").unwrap().into())
                .collect(),
        }
    }

    #[tokio::test]
    async fn descriptors_in_the_socket_of_a_peer_that_does_not_read_are_bounded() {
        let (ours, theirs) = SeqPacket::pair().unwrap();
        let outbox = outbox(ours, limits(64 << 20, 256));
        // Two records' descriptors fit in flight; two more wait, charged.
        for _ in 0..4 {
            outbox.push(with_fds(100)).unwrap();
        }
        assert_eq!(outbox.in_flight_fds(), 200);
        assert_eq!(outbox.queued_fds(), 200);
        assert_eq!(outbox.account().used(Resource::Fds), 400);
        assert!(
            outbox.push(with_fds(100)).is_err(),
            "the queue's bound holds"
        );
        // Once the peer reads, the rest goes.
        let writer = Arc::clone(&outbox);
        tokio::spawn(async move { writer.run_writer().await });
        let mut got = 0;
        while got < 4 {
            let received = theirs.recv(1 << 16).await.unwrap().unwrap();
            assert_eq!(received.fds.len(), 100);
            got += 1;
        }
        settles(|| outbox.queued_fds() == 0 && outbox.in_flight_fds() == 0).await;
        assert_eq!(
            outbox.account().used(Resource::Fds),
            0,
            "nothing stays charged"
        );
    }

    /// Waits (at most a few seconds, a bound for a failure) for `done`.
    async fn settles(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the outbox never settled");
    }

    #[tokio::test]
    async fn a_reader_gets_every_record_in_order_even_after_queueing() {
        let (ours, theirs) = SeqPacket::pair().unwrap();
        let outbox = outbox(ours, limits(64 << 20, 16));
        let writer = tokio::spawn({
            let outbox = Arc::clone(&outbox);
            async move {
                outbox.run_writer().await;
            }
        });
        // Far more than the socket buffer holds, so some records queue.
        let count = 2000usize;
        for i in 0..count {
            let mut r = record(1000);
            r.bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            outbox.push(r).unwrap();
        }
        assert!(
            outbox.queued_bytes() > 0,
            "the test must exercise the queue"
        );
        // Several records may come packed in one (the native socket's
        // rule): each is 1000 bytes here.
        let mut next = 0u64;
        while next < count as u64 {
            let got = theirs.recv(1 << 20).await.unwrap().unwrap();
            assert_eq!(got.data.len() % 1000, 0);
            for one in got.data.chunks(1000) {
                assert_eq!(one[..8], next.to_le_bytes());
                next += 1;
            }
        }
        writer.abort();
    }

    #[tokio::test]
    async fn under_a_cork_records_wait_and_leave_together_in_one_record() {
        let (ours, theirs) = SeqPacket::pair().unwrap();
        let outbox = outbox(ours, limits(64 << 20, 16));
        let numbered = |i: u8| Outgoing {
            bytes: vec![i; 10],
            fds: vec![],
        };
        let cork = Cork::hold();
        for i in 0..5 {
            outbox.push(numbered(i)).unwrap();
        }
        assert_eq!(outbox.queued_bytes(), 50, "held until the cork goes");
        assert!(matches!(theirs.try_recv(64), Err(RecvError::Io(_))));
        drop(cork);
        assert_eq!(outbox.queued_bytes(), 0);
        // One record holds the five, in order.
        let got = theirs.try_recv(64).unwrap().unwrap();
        assert_eq!(got.data, (0..5).flat_map(|i| [i; 10]).collect::<Vec<u8>>());
        assert!(matches!(theirs.try_recv(64), Err(RecvError::Io(_))));
        // Without a cork a record goes at once.
        outbox.push(numbered(9)).unwrap();
        assert_eq!(theirs.try_recv(64).unwrap().unwrap().data, vec![9; 10]);
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_hits_the_bound() {
        let (ours, _theirs) = SeqPacket::pair().unwrap();
        let outbox = outbox(ours, limits(100_000, 16));
        let full = (0..10_000).find_map(|_| outbox.push(record(1000)).err());
        let full = full.expect("the queue must fill");
        assert!(queued(&full).0 <= 100_000);
        assert!(outbox.queued_bytes() <= 100_000);
        outbox.close();
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(outbox.push(record(10)), Ok(()), "closed: dropped quietly");
    }

    #[tokio::test]
    async fn the_users_quota_refuses_calls_but_not_what_a_peer_must_receive() {
        let accounts = Accounts::new(UidLimits {
            queued_bytes: 50_000,
            ..UidLimits::default()
        });
        let account = accounts.of(1000);
        let (ours, _theirs) = SeqPacket::pair().unwrap();
        let (other, _other_end) = SeqPacket::pair().unwrap();
        let connection = || account.try_charge(Resource::Connections, 1).unwrap();
        let slow = Arc::new(Outbox::new(
            Arc::new(records(ours)),
            limits(1 << 20, 16),
            connection(),
        ));
        let sibling = Arc::new(Outbox::new(
            Arc::new(records(other)),
            limits(1 << 20, 16),
            connection(),
        ));
        let refused = (0..10_000).find_map(|_| slow.offer(record(1000), None).err());
        assert!(matches!(refused, Some(QueueFull::Uid(_))), "{refused:?}");
        assert!(account.used(Resource::QueuedBytes) <= 50_000);
        // A reply or signal still reaches a connection of the same user.
        while sibling.queued_bytes() == 0 {
            sibling.push(record(1000)).unwrap();
        }
        assert_eq!(sibling.push(record(1000)), Ok(()));
        slow.close();
        sibling.close();
        assert_eq!(
            account.used(Resource::QueuedBytes),
            0,
            "closing gives it back"
        );
    }
}
