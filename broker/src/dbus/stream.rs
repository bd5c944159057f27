//! The D-Bus socket's byte stream: the SASL handshake, reads (each one
//! proven, see [`connection`](crate::dbus::connection)), and the framing of
//! bytes into messages. A message's bytes may come in several reads; it is
//! proven only if every read that carried a byte of it was.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use pidbus_protocol::dbus::header::{self, FIXED_HEADER_LEN};
use pidbus_protocol::transport::{self, Chunk, RecvError, Stream};

use crate::bus::quotas::{Resource, UidAccount};
use crate::dbus::connection::{Disconnect, Frame, Proof, violation};
use crate::dbus::sasl::{Handshake, Step};
use crate::os::sender::{Attached, BeforeRead, Liveness, SenderMismatch};

/// Bytes one read takes from the socket at most.
pub(crate) const READ_SIZE: usize = 64 * 1024;

/// Most descriptors that may wait for the message that announces them.
const MAX_PENDING_FDS: usize = 2 * pidbus_protocol::limits::MAX_FDS_PER_RECORD;

thread_local! {
    /// One read buffer per thread: an idle connection holds none.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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
        if self.start == self.bytes.len() && self.reads.is_empty() && self.fds.is_empty() {
            // Everything read was routed: an idle connection keeps no
            // room for what it read last.
            self.bytes = Vec::new();
            self.start = 0;
            self.reads = VecDeque::new();
            self.fds = VecDeque::new();
            return;
        }
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
            fds: None,
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

/// A peer on the D-Bus socket, as its connection reads it.
#[derive(Debug)]
pub(crate) struct StreamReader {
    stream: Arc<Stream>,
    inbound: Inbound,
    /// The account of the peer's user, paying for the bytes read and not
    /// yet routed.
    account: Arc<UidAccount>,
}

/// One read: the sender verdict before it, and what it took (its bytes
/// are in the thread's read buffer).
pub(crate) type StreamRead = (BeforeRead, Chunk);

impl StreamReader {
    pub(crate) fn new(stream: Arc<Stream>, account: Arc<UidAccount>) -> Self {
        StreamReader {
            stream,
            inbound: Inbound::default(),
            account,
        }
    }

    pub(crate) fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Runs the SASL handshake for a peer of `uid`; returns whether fd
    /// passing was agreed.
    pub(crate) async fn authenticate(
        &mut self,
        proof: &Proof<'_>,
        uid: u32,
        bus_id: &str,
    ) -> Result<bool, Disconnect> {
        let mut sasl = Handshake::new(uid, bus_id);
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
            let read = self.wait(proof).await?;
            self.take(read, proof, false)?;
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

    /// Reads once from the socket, waiting, into the thread's read buffer
    /// (for [`take`](Self::take)).
    pub(crate) async fn wait(&self, proof: &Proof<'_>) -> Result<StreamRead, Disconnect> {
        let stream = &*self.stream;
        let gate = |_: BorrowedFd<'_>| proof.sender_check.before_read(stream, proof.pidfd.as_fd());
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

    /// Adds one read to what waits to be framed, after checking its sender
    /// and charging its bytes to the peer's user. The read's bytes are the
    /// first `chunk.len` of the thread's read buffer: nothing else runs on
    /// this thread between the read and this call (the task does not wait
    /// in between), so they are still there.
    pub(crate) fn take(
        &mut self,
        (before, chunk): StreamRead,
        proof: &Proof<'_>,
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
        let alive = &mut Liveness::after_receipt(proof.pidfd.as_fd());
        let sender = proof
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

    /// Reads what waits without waiting, after the peer's process exited
    /// or hung up (its pidfds attached from now on prove each read);
    /// false once nothing is left.
    pub(crate) fn take_waiting(
        &mut self,
        proof: &Proof<'_>,
        fd_passing: bool,
    ) -> Result<bool, Disconnect> {
        let read = READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.resize(READ_SIZE, 0);
            self.stream.try_read(&mut buf)
        });
        match read {
            Ok(Some(chunk)) => self
                .take((BeforeRead::NOTHING, chunk), proof, fd_passing)
                .map(|()| true),
            Ok(None) => Ok(false),
            Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The next complete message, if all of it has arrived.
    pub(crate) fn next_frame(&mut self, max: usize) -> Result<Option<Frame>, Disconnect> {
        self.inbound.next_frame(max)
    }

    /// The `count` descriptors the message just framed announces.
    pub(crate) fn take_fds(&mut self, count: usize) -> Option<Vec<OwnedFd>> {
        self.inbound.take_fds(count)
    }

    /// After routing what was framed: gives back the room of what was
    /// consumed and charges what still waits.
    pub(crate) fn settle(&mut self) -> Result<(), Disconnect> {
        self.inbound.compact();
        let waiting = self.inbound.pending().len();
        self.charge_inbound(waiting)
    }

    /// Gives back every byte charged (the connection ends).
    pub(crate) fn release(&mut self) {
        let _ = self.charge_inbound(0);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The largest message these tests frame.
    const MAX_MESSAGE_SIZE: usize = 1 << 20;
    use pidbus_protocol::dbus::header::{Header, MessageType};

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
        // Everything routed: an idle connection keeps no buffer.
        inbound.compact();
        assert_eq!(inbound.bytes.capacity(), 0);
        assert_eq!(inbound.reads.capacity(), 0);
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
