//! The native socket's records as the broker reads them: one D-Bus message
//! per `SOCK_SEQPACKET` record from the peer, its descriptors in that
//! record, each record's sender proven on its own. Several waiting records
//! are taken in one system call.

use std::cell::Cell;
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use pidbus_protocol::dbus::header::{self, FIXED_HEADER_LEN};
use pidbus_protocol::transport::{self, Received, RecordOutcome, RecvError, SeqPacket};

use crate::dbus::connection::{Disconnect, Frame, Proof, violation};
use crate::os::sender::{Attached, BeforeRead, Liveness};

thread_local! {
    /// A batch's vector, reused: connections waiting to read hold none.
    static SPARE_BATCH: Cell<Vec<RecordOutcome>> = const { Cell::new(Vec::new()) };
}

/// The records one receive took, as the kernel gave them; its vector goes
/// back to the thread's spare when dropped.
pub(crate) struct Batch(pub(crate) Vec<RecordOutcome>);

impl Batch {
    pub(crate) fn take() -> Batch {
        Batch(SPARE_BATCH.take())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let mut records = std::mem::take(&mut self.0);
        records.clear();
        SPARE_BATCH.set(records);
    }
}

/// One receive: the records and the sender verdict taken before it.
pub(crate) type RecordsRead = (Batch, BeforeRead);

/// A peer on the native socket, as its connection reads it.
#[derive(Debug)]
pub(crate) struct RecordReader {
    socket: Arc<SeqPacket>,
    /// Messages received and not yet routed (the rest of one batch).
    frames: VecDeque<Frame>,
    /// How the connection ends, once a receive said so: after the
    /// messages received before that point.
    ending: Option<Disconnect>,
    /// Largest record accepted.
    limit: usize,
    /// How many records the last receive took.
    last_batch: AtomicU8,
}

impl RecordReader {
    pub(crate) fn new(socket: Arc<SeqPacket>, limit: usize) -> Self {
        RecordReader {
            socket,
            frames: VecDeque::new(),
            ending: None,
            limit,
            last_batch: AtomicU8::new(1),
        }
    }

    pub(crate) fn socket(&self) -> &Arc<SeqPacket> {
        &self.socket
    }

    /// Waits for records and takes every one waiting (up to
    /// [`MAX_BATCH`](pidbus_protocol::transport::MAX_BATCH)) in one system
    /// call. A poll function, not an `async fn` holding a buffer: this
    /// future lives in every idle connection's task, and waiting this way
    /// stores only a waker.
    pub(crate) async fn wait(&self, proof: &Proof<'_>) -> Result<RecordsRead, Disconnect> {
        // Room for twice the last batch: a peer that sends one message at
        // a time costs the kernel two tries, not MAX_BATCH, when it
        // disconnects, while a stream of records soon gets the whole room.
        let max = 2 * usize::from(self.last_batch.load(Ordering::Relaxed).max(1));
        let socket: &SeqPacket = &self.socket;
        let read = std::future::poll_fn(|cx| {
            // Taken only for the receive: a waiting task holds no vector.
            let mut batch = Batch::take();
            let gate = |_: BorrowedFd<'_>| {
                proof
                    .sender_check
                    .before_receive(socket, proof.pidfd.as_fd())
            };
            socket
                .poll_recv_many_gated(cx, self.limit, max, &mut batch.0, gate)
                .map(|received| received.map(|before| (batch, before)))
        })
        .await?;
        let got = u8::try_from(read.0.0.len()).unwrap_or(u8::MAX);
        self.last_batch.store(got, Ordering::Relaxed);
        Ok(read)
    }

    /// Checks each record of a receive and keeps its message for
    /// [`next_frame`](Self::next_frame).
    pub(crate) fn take(
        &mut self,
        (mut batch, before): RecordsRead,
        proof: &Proof<'_>,
    ) -> Result<(), Disconnect> {
        let mut alive = Liveness::after_receipt(proof.pidfd.as_fd());
        let mut end = 0;
        for (index, outcome) in batch.0.drain(..).enumerate() {
            let frame = match outcome {
                Ok(Some(received)) => {
                    end += received.data.len();
                    let before = before.for_record(index, end);
                    self.frame(received, before, proof, &mut alive)
                }
                Ok(None) => Err(Disconnect::Closed),
                Err(e) => Err(e.into()),
            };
            match frame {
                Ok(frame) => self.frames.push_back(frame),
                Err(end) => {
                    self.ending = Some(end);
                    break;
                }
            }
        }
        Ok(())
    }

    /// One record as a message, if it holds exactly one.
    fn frame(
        &self,
        received: Received,
        before: BeforeRead,
        proof: &Proof<'_>,
        alive: &mut Liveness<'_>,
    ) -> Result<Frame, Disconnect> {
        let sender = proof
            .sender_check
            .verify(Attached::from(&received), before, alive);
        let Some(prefix) = received.data.first_chunk::<FIXED_HEADER_LEN>() else {
            return Err(violation(format!(
                "a record of {} bytes is too short for a D-Bus message",
                received.data.len()
            )));
        };
        let len = header::message_len(prefix, self.limit).map_err(|e| violation(e.to_string()))?;
        if len != received.data.len() {
            return Err(violation(format!(
                "a record must hold exactly one D-Bus message: this one holds {} bytes, \
                 its message says {len}",
                received.data.len()
            )));
        }
        Ok(Frame {
            bytes: received.data,
            fds: Some(received.fds),
            sender,
        })
    }

    /// Takes one waiting record without waiting, after the peer's process
    /// exited or hung up (`SCM_PIDFD` proves each from now on); false once
    /// nothing is left.
    pub(crate) fn take_waiting(&mut self, proof: &Proof<'_>) -> Result<bool, Disconnect> {
        let received = match self.socket.try_recv(self.limit) {
            Ok(Some(received)) => received,
            Ok(None) => return Ok(false),
            Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(false);
            }
            // Reported once, ahead of what the peer sent (see `hung_up`).
            Err(RecvError::Io(e)) if transport::peer_hung_up(&e) => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        let mut alive = Liveness::after_receipt(proof.pidfd.as_fd());
        let frame = self.frame(received, BeforeRead::NOTHING, proof, &mut alive)?;
        self.frames.push_back(frame);
        Ok(true)
    }

    /// The next message received, if any; once every message received
    /// is taken, how the connection ends if a receive said so.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, Disconnect> {
        match self.frames.pop_front() {
            Some(frame) => Ok(Some(frame)),
            None => {
                // Freed once routed: an idle connection keeps no room for
                // the frames of its last batch.
                self.frames = VecDeque::new();
                self.ending.take().map_or(Ok(None), Err)
            }
        }
    }
}

/// The descriptors that came in `frame`'s record, which must be the
/// `count` its header announces.
pub(crate) fn record_fds(frame: &mut Frame, count: usize) -> Result<Vec<OwnedFd>, Disconnect> {
    let fds = frame.fds.take().unwrap_or_default();
    if fds.len() != count {
        return Err(violation(format!(
            "a message announces {count} file descriptors and its record carries {}",
            fds.len()
        )));
    }
    Ok(fds)
}

impl AsFd for RecordReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
