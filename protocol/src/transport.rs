//! Unix sockets on tokio. `SOCK_SEQPACKET` ([`SeqPacket`], the native
//! face): one record is one message, and each record carries its own
//! ancillary data (passed fds, sender credentials, sender pidfd).
//! `SOCK_STREAM` ([`Stream`], the D-Bus face): bytes, read in chunks the
//! kernel never merges across senders when credentials are passed, each
//! with the ancillary data of its sender.
//!
//! Received descriptors are owned the moment they arrive and are
//! close-on-exec (`MSG_CMSG_CLOEXEC`); a record whose ancillary data did not
//! fit (`MSG_CTRUNC`) or whose data exceeds the size limit is an error, after
//! its descriptors have been closed.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::task::{Context, Poll, ready};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

use crate::limits::MAX_CONFIGURABLE_RECORD_SIZE;
use crate::sys;
pub use crate::sys::{
    Credentials, MAX_BATCH, OutRecord, RawReceived, RecvBatch, Wait, recv_records, send_records,
};

/// A unix socket of `kind` connected to `path`. Blocking connect: on a
/// unix socket it completes at once or fails, except when the backlog is
/// full, where waiting is what we want.
fn connect_unix(path: &Path, kind: SocketType) -> io::Result<OwnedFd> {
    connect_to(&SocketAddrUnix::new(path)?, kind)
}

fn connect_to(addr: &SocketAddrUnix, kind: SocketType) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None)?;
    rustix::net::connect(&fd, addr)?;
    Ok(fd)
}

/// Backlog of pending connections on a listening socket.
const LISTEN_BACKLOG: i32 = 4096;

/// A received record and its ancillary data.
#[derive(Debug)]
pub struct Received {
    /// The record's bytes.
    pub data: Vec<u8>,
    /// Descriptors passed with the record (`SCM_RIGHTS`).
    pub fds: Vec<OwnedFd>,
    /// The sender's credentials, when `SO_PASSCRED` is on.
    pub credentials: Option<Credentials>,
    /// The sender's pidfd, when `SO_PASSPIDFD` is on.
    pub pidfd: Option<OwnedFd>,
}

/// Why a record could not be received.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The record was larger than the limit; it has been discarded.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Real size of the record.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The record carried more ancillary data than allowed (`MSG_CTRUNC`);
    /// descriptors that did arrive have been closed.
    #[error("record carried more ancillary data (file descriptors) than allowed")]
    ControlTruncated,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

thread_local! {
    /// One receive buffer per thread, so an idle connection costs no buffer:
    /// receives never await while holding it.
    static RECV_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The same for batched receives: room for [`MAX_BATCH`] records.
    static RECV_BATCH: RefCell<(RecvBatch, Vec<RawReceived>)> =
        RefCell::new((RecvBatch::default(), Vec::new()));
}

/// What one record of a batch turned out to be, as [`SeqPacket::recv`]
/// would have returned it: `Ok(None)` is the end of the connection.
pub type RecordOutcome = Result<Option<Received>, RecvError>;

/// A connected `SOCK_SEQPACKET` unix socket registered with tokio.
#[derive(Debug)]
pub struct SeqPacket {
    io: AsyncFd<OwnedFd>,
}

impl SeqPacket {
    /// Connects to the listening socket at `path`. Must be called inside a
    /// tokio runtime.
    pub fn connect(path: &Path) -> io::Result<Self> {
        Self::from_owned(connect_unix(path, SocketType::SEQPACKET)?)
    }

    /// A connected pair of sockets (for tests and in-process use).
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        Ok((Self::from_owned(a)?, Self::from_owned(b)?))
    }

    /// Wraps an already connected SEQPACKET socket, switching it to
    /// non-blocking mode. Must be called inside a tokio runtime.
    pub fn from_owned(fd: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Self {
            io: sys::register_async(fd)?,
        })
    }

    /// Wraps a socket [`Listener::accept`] returned (already non-blocking).
    /// Must be called inside a tokio runtime.
    pub fn from_accepted(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            io: sys::register_async(fd)?,
        })
    }

    /// Asks the kernel to attach the sender's credentials to every received
    /// record (`SO_PASSCRED`).
    pub fn set_pass_credentials(&self, enable: bool) -> io::Result<()> {
        Ok(rustix::net::sockopt::set_socket_passcred(
            self.io.get_ref(),
            enable,
        )?)
    }

    /// Asks the kernel to attach the sender's pidfd to every received record
    /// (`SO_PASSPIDFD`, Linux ≥ 6.5).
    pub fn set_pass_pidfd(&self, enable: bool) -> io::Result<()> {
        sys::set_pass_pidfd(self.io.get_ref().as_fd(), enable)
    }

    /// How much of what was sent here the peer has not read yet (0: it
    /// has read everything, descriptors included).
    pub fn unread_by_peer(&self) -> io::Result<usize> {
        sys::unread_by_peer(self.io.get_ref().as_fd())
    }

    /// How many bytes of records wait here to be received, all records
    /// together (`SIOCINQ`).
    pub fn waiting_bytes(&self) -> io::Result<usize> {
        let bytes = rustix::io::ioctl_fionread(self.io.get_ref())?;
        Ok(usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    /// Sends one record with `fds` attached, waiting while the socket buffer
    /// is full.
    pub async fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.io
            .async_io(Interest::WRITABLE, |fd| {
                sys::send_record(fd.as_fd(), data, fds).map(drop)
            })
            .await
    }

    /// Runs `write` whenever the socket has room, until it returns `Ok`
    /// (`Ready`). `write` sends with [`try_send`](Self::try_send) and
    /// returns the `WouldBlock` it got when the buffer filled, which makes
    /// this wait for room again.
    ///
    /// A poll function rather than a future, for a task that keeps many
    /// connections idle: waiting stores nothing but the task's waker (only
    /// the last task to poll is woken).
    pub fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.io.poll_write_ready(cx))?;
            if let Ok(result) = guard.try_io(|_| write()) {
                return Poll::Ready(result);
            }
        }
    }

    /// Receives one record of at most `limit` bytes, like
    /// [`recv`](Self::recv), as a poll function: waiting stores nothing but
    /// the task's waker (only the last task to poll is woken).
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<Result<Option<Received>, RecvError>> {
        let limit = limit.min(MAX_CONFIGURABLE_RECORD_SIZE);
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            if let Some(result) = recv_when_ready(&mut guard, limit) {
                return Poll::Ready(result);
            }
        }
    }

    /// Receives every record waiting, up to `max` (at most
    /// [`MAX_BATCH`]), in one system call, waiting until at least one is;
    /// appends each one's outcome to `out` (records after the end of the
    /// connection are not appended). Waiting stores nothing but the task's
    /// waker.
    ///
    /// The kernel tries for all `max` records: at the end of a connection
    /// it reports the end `max` times, at the cost of a receive each, so a
    /// caller sizes `max` by what it has been getting.
    pub fn poll_recv_many(
        &self,
        cx: &mut Context<'_>,
        limit: usize,
        max: usize,
        out: &mut Vec<RecordOutcome>,
    ) -> Poll<Result<(), RecvError>> {
        self.poll_recv_many_gated(cx, limit, max, out, |_| Ok(Some(())))
    }

    /// Like [`poll_recv_many`](Self::poll_recv_many), asking `gate` first,
    /// each time the socket seems readable: `Some(verdict)` receives now
    /// and returns the verdict with the batch; `None` means there is
    /// nothing to receive after all, and waits for the socket again.
    ///
    /// The broker's gate asks the kernel, just before the receive, whether
    /// records are waiting and whether their sender still lives, so that
    /// what it then receives is proven (see `socket_then_process` in
    /// [`pidfd`](crate::pidfd)).
    pub fn poll_recv_many_gated<G>(
        &self,
        cx: &mut Context<'_>,
        limit: usize,
        max: usize,
        out: &mut Vec<RecordOutcome>,
        mut gate: impl FnMut(BorrowedFd<'_>) -> io::Result<Option<G>>,
    ) -> Poll<Result<G, RecvError>> {
        let limit = limit.min(MAX_CONFIGURABLE_RECORD_SIZE);
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            let attempt = guard.try_io(|fd| {
                let verdict = gated(&mut gate, fd.get_ref().as_fd())?;
                let drained = recv_batch(fd.get_ref().as_fd(), limit, max, out)?;
                Ok((verdict, drained))
            });
            match attempt {
                Ok(Ok((verdict, drained))) => {
                    // The kernel found no more records: the next receive
                    // would only get `WouldBlock`, so it waits for the
                    // reactor instead (tokio keeps readiness that arrived
                    // since this guard was taken).
                    if drained {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(verdict));
                }
                Ok(Err(e)) => return Poll::Ready(Err(RecvError::Io(e))),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for a record and returns its first byte without taking it
    /// (`None`: the peer closed, or sent an empty record). Lets a server
    /// tell which format a client speaks before reading it.
    pub async fn peek_first_byte(&self) -> io::Result<Option<u8>> {
        loop {
            let mut guard = self.io.readable().await?;
            let peeked = guard.try_io(|fd| {
                let mut first = [0u8; 1];
                let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
                let (len, _) = rustix::net::recv(fd.get_ref(), &mut first, flags)?;
                Ok((len > 0).then_some(first[0]))
            });
            if let Ok(result) = peeked {
                return result;
            }
        }
    }

    /// Sends one record without waiting; `WouldBlock` if the socket buffer is
    /// full.
    pub fn try_send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        sys::send_record(self.io.get_ref().as_fd(), data, fds).map(drop)
    }

    /// Sends up to [`MAX_BATCH`] of `records` in one system call without
    /// waiting; returns how many went, in order (`WouldBlock` if none
    /// could: the socket buffer is full).
    pub fn try_send_many<F: AsFd>(&self, records: &[OutRecord<'_, F>]) -> io::Result<usize> {
        sys::send_records(self.io.get_ref().as_fd(), records)
    }

    /// Sends the concatenation of `parts` (at most [`MAX_BATCH`] of them)
    /// as one record without waiting, with `fds` attached; returns its
    /// length (`WouldBlock` if the socket buffer is full). The broker puts
    /// several whole messages in one record this way.
    pub fn try_send_gathered<F: AsFd>(&self, parts: &[&[u8]], fds: &[F]) -> io::Result<usize> {
        sys::send_gathered(self.io.get_ref().as_fd(), parts, fds)
    }

    /// Receives one record of at most `limit` bytes. `Ok(None)` means the peer
    /// closed the connection.
    pub async fn recv(&self, limit: usize) -> Result<Option<Received>, RecvError> {
        let limit = limit.min(MAX_CONFIGURABLE_RECORD_SIZE);
        loop {
            let mut guard = self.io.readable().await?;
            if let Some(result) = recv_when_ready(&mut guard, limit) {
                return result;
            }
        }
    }

    /// Receives one record if one is waiting: `Err(RecvError::Io)` of kind
    /// `WouldBlock` when none is, `Ok(None)` when the peer closed.
    pub fn try_recv(&self, limit: usize) -> Result<Option<Received>, RecvError> {
        let limit = limit.min(MAX_CONFIGURABLE_RECORD_SIZE);
        recv_into_thread_buffer(self.io.get_ref().as_fd(), limit)?
    }

    /// Shuts down both directions, so the peer sees end-of-file even if other
    /// processes hold a copy of this socket.
    pub fn shutdown(&self) -> io::Result<()> {
        Ok(rustix::net::shutdown(
            self.io.get_ref(),
            rustix::net::Shutdown::Both,
        )?)
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.get_ref().as_raw_fd()
    }
}

/// Asks a receive's gate; its `None` becomes the `WouldBlock` that makes
/// `try_io` clear the socket's readiness and wait again.
fn gated<G>(
    gate: &mut impl FnMut(BorrowedFd<'_>) -> io::Result<Option<G>>,
    fd: BorrowedFd<'_>,
) -> io::Result<G> {
    gate(fd)?.ok_or_else(|| io::ErrorKind::WouldBlock.into())
}

/// Receives on a socket the reactor reported readable; `None` if it was not
/// after all (its readiness is then cleared, so the caller waits again).
fn recv_when_ready(
    guard: &mut AsyncFdReadyGuard<'_, OwnedFd>,
    limit: usize,
) -> Option<Result<Option<Received>, RecvError>> {
    match guard.try_io(|fd| recv_into_thread_buffer(fd.get_ref().as_fd(), limit)) {
        Ok(Ok(result)) => Some(result),
        Ok(Err(e)) => Some(Err(RecvError::Io(e))),
        Err(_would_block) => None,
    }
}

/// Receives into the thread's buffer; `WouldBlock` is passed up as an
/// `io::Error` so `try_io` can clear readiness.
fn recv_into_thread_buffer(
    fd: BorrowedFd<'_>,
    limit: usize,
) -> io::Result<Result<Option<Received>, RecvError>> {
    RECV_BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        // One byte beyond the limit is enough to tell "too large"; MSG_TRUNC
        // then reports the real size.
        if buf.len() < limit + 1 {
            buf.resize(limit + 1, 0);
        }
        let raw = match sys::recv_record(fd, &mut buf[..limit + 1], true) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Err(e) => return Ok(Err(RecvError::Io(e))),
        };
        Ok(into_received(raw, &buf, limit))
    })
}

/// Receives a batch into the thread's buffers and appends each record's
/// outcome to `out`; `WouldBlock` (for `try_io`) when none was waiting.
/// Returns whether the socket was drained.
fn recv_batch(
    fd: BorrowedFd<'_>,
    limit: usize,
    max: usize,
    out: &mut Vec<RecordOutcome>,
) -> io::Result<bool> {
    RECV_BATCH.with(|cell| {
        let (batch, raws) = &mut *cell.borrow_mut();
        raws.clear();
        // One byte beyond the limit tells "too large", as for one record.
        let drained = sys::recv_records(fd, batch, limit + 1, max, sys::Wait::Never, raws)?;
        for (index, raw) in raws.drain(..).enumerate() {
            let data = batch.record(index, raw.len);
            let outcome = into_received(raw, data, limit);
            let end = matches!(outcome, Ok(None));
            out.push(outcome);
            if end {
                break;
            }
        }
        Ok(drained)
    })
}

fn into_received(
    raw: RawReceived,
    buf: &[u8],
    limit: usize,
) -> Result<Option<Received>, RecvError> {
    if raw.control_truncated {
        return Err(RecvError::ControlTruncated);
    }
    if raw.len > limit {
        return Err(RecvError::TooLarge {
            size: raw.len,
            limit,
        });
    }
    if raw.len == 0 && raw.fds.is_empty() && raw.credentials.is_none() && raw.pidfd.is_none() {
        // End of file. (pidbus never sends empty records; an empty record
        // with no ancillary data is indistinguishable from EOF anyway.)
        return Ok(None);
    }
    Ok(Some(Received {
        data: buf[..raw.len].to_vec(),
        fds: raw.fds,
        credentials: raw.credentials,
        pidfd: raw.pidfd,
    }))
}

/// The two kinds of unix socket the broker listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_SEQPACKET`: the native protocol.
    SeqPacket,
    /// `SOCK_STREAM`: the D-Bus protocol.
    Stream,
}

impl SocketKind {
    fn socket_type(self) -> SocketType {
        match self {
            SocketKind::SeqPacket => SocketType::SEQPACKET,
            SocketKind::Stream => SocketType::STREAM,
        }
    }

    /// The kind of a socket's type, if it is one of the two.
    pub fn of(socket_type: SocketType) -> Option<Self> {
        match socket_type {
            SocketType::SEQPACKET => Some(SocketKind::SeqPacket),
            SocketType::STREAM => Some(SocketKind::Stream),
            _ => None,
        }
    }
}

/// A listening unix socket of either kind, registered with tokio.
#[derive(Debug)]
pub struct Listener {
    io: AsyncFd<OwnedFd>,
    kind: SocketKind,
}

impl Listener {
    /// Creates a socket of `kind` bound to `path` and listening. The path
    /// must not exist.
    pub fn bind(path: &Path, kind: SocketKind) -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            kind.socket_type(),
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&fd, LISTEN_BACKLOG)?;
        Ok(Self {
            io: sys::register_async(fd)?,
            kind,
        })
    }

    /// What kind of socket this is.
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// Asks the kernel to attach the sender's credentials to what is
    /// received on accepted connections (`SO_PASSCRED`, copied to each
    /// accepted socket by `accept`). Data queued before accept gets
    /// credentials anyway; data sent while `accept` is grafting the socket,
    /// before it copies the flag, gets none (the receiver sees pid 0).
    pub fn set_pass_credentials(&self, enable: bool) -> io::Result<()> {
        Ok(rustix::net::sockopt::set_socket_passcred(
            self.io.get_ref(),
            enable,
        )?)
    }

    /// Wraps an already listening socket of `kind` (e.g. from socket
    /// activation).
    pub fn from_owned(fd: OwnedFd, kind: SocketKind) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Self {
            io: sys::register_async(fd)?,
            kind,
        })
    }

    /// Waits for and accepts one connection (non-blocking, close-on-exec).
    pub async fn accept(&self) -> io::Result<OwnedFd> {
        self.io
            .async_io(Interest::READABLE, |fd| {
                rustix::net::accept_with(fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
                    .map_err(io::Error::from)
            })
            .await
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

/// A connected `SOCK_STREAM` unix socket registered with tokio.
#[derive(Debug)]
pub struct Stream {
    io: AsyncFd<OwnedFd>,
}

impl Stream {
    /// Connects to the listening stream socket at `path`. Must be called
    /// inside a tokio runtime.
    pub fn connect(path: &Path) -> io::Result<Self> {
        Self::from_owned(connect_unix(path, SocketType::STREAM)?)
    }

    /// Connects to the listening stream socket named `name` in the
    /// abstract namespace (`unix:abstract=` of a D-Bus address). Must be
    /// called inside a tokio runtime.
    pub fn connect_abstract(name: &[u8]) -> io::Result<Self> {
        let addr = SocketAddrUnix::new_abstract_name(name)?;
        Self::from_owned(connect_to(&addr, SocketType::STREAM)?)
    }

    /// Wraps an already connected stream socket, switching it to
    /// non-blocking mode. Must be called inside a tokio runtime.
    pub fn from_owned(fd: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Self {
            io: sys::register_async(fd)?,
        })
    }

    /// `SO_PASSCRED`: every read then carries its sender's credentials,
    /// and the kernel never joins bytes of two senders in one read.
    pub fn set_pass_credentials(&self, enable: bool) -> io::Result<()> {
        Ok(rustix::net::sockopt::set_socket_passcred(
            self.io.get_ref(),
            enable,
        )?)
    }

    /// `SO_PASSPIDFD`: every read then carries its sender's pidfd.
    pub fn set_pass_pidfd(&self, enable: bool) -> io::Result<()> {
        sys::set_pass_pidfd(self.io.get_ref().as_fd(), enable)
    }

    /// How much of what was written here the peer has not read yet (0:
    /// it has read everything, descriptors included).
    pub fn unread_by_peer(&self) -> io::Result<usize> {
        sys::unread_by_peer(self.io.get_ref().as_fd())
    }

    /// Reads what is waiting, at most `buf.len()` bytes, with the
    /// ancillary data that came with it; `Ok(None)` at end of file.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Option<Chunk>, RecvError>> {
        match ready!(self.poll_read_gated(cx, buf, |_| Ok(Some(())))) {
            Ok(((), chunk)) => Poll::Ready(Ok(chunk)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Like [`poll_read`](Self::poll_read), asking `gate` first, each time
    /// the socket seems readable: `Some(verdict)` reads now and returns the
    /// verdict with what was read; `None` means there is nothing to read
    /// after all, and waits for the socket again (see
    /// [`SeqPacket::poll_recv_many_gated`]).
    pub fn poll_read_gated<G>(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        mut gate: impl FnMut(BorrowedFd<'_>) -> io::Result<Option<G>>,
    ) -> Poll<Result<(G, Option<Chunk>), RecvError>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            let attempt = guard.try_io(|fd| {
                let verdict = gated(&mut gate, fd.get_ref().as_fd())?;
                let raw = sys::recv_record(fd.get_ref().as_fd(), buf, false)?;
                Ok((verdict, raw))
            });
            match attempt {
                Ok(Ok((verdict, raw))) => {
                    return Poll::Ready(into_chunk(raw).map(|chunk| (verdict, chunk)));
                }
                Ok(Err(e)) => return Poll::Ready(Err(RecvError::Io(e))),
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what is waiting without waiting for more, like
    /// [`poll_read`](Self::poll_read); `WouldBlock` when nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> Result<Option<Chunk>, RecvError> {
        let raw = sys::recv_record(self.io.get_ref().as_fd(), buf, false)?;
        into_chunk(raw)
    }

    /// Writes from `data` without waiting, with `fds` attached to its
    /// first byte; returns how much was written (`WouldBlock` if nothing
    /// could be).
    pub fn try_send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        sys::send_record(self.io.get_ref().as_fd(), data, fds)
    }

    /// Writes the concatenation of `parts` (at most [`MAX_BATCH`] of them)
    /// in one system call without waiting, with `fds` attached to its
    /// first byte; returns how many bytes went (`WouldBlock` if none
    /// could).
    pub fn try_send_gathered<F: AsFd>(&self, parts: &[&[u8]], fds: &[F]) -> io::Result<usize> {
        sys::send_gathered(self.io.get_ref().as_fd(), parts, fds)
    }

    /// Runs `write` whenever the socket has room, until it returns `Ok`;
    /// see [`SeqPacket::poll_write_with`].
    pub fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.io.poll_write_ready(cx))?;
            if let Ok(result) = guard.try_io(|_| write()) {
                return Poll::Ready(result);
            }
        }
    }

    /// Shuts down both directions, so the peer sees end-of-file even if
    /// other processes hold a copy of this socket.
    pub fn shutdown(&self) -> io::Result<()> {
        Ok(rustix::net::shutdown(
            self.io.get_ref(),
            rustix::net::Shutdown::Both,
        )?)
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

/// What one read of a [`Stream`] returned.
#[derive(Debug)]
pub struct Chunk {
    /// How many bytes were read into the buffer.
    pub len: usize,
    /// Descriptors that came with them.
    pub fds: Vec<OwnedFd>,
    /// Their sender's credentials (with `SO_PASSCRED`).
    pub credentials: Option<Credentials>,
    /// Their sender's pidfd (with `SO_PASSPIDFD`).
    pub pidfd: Option<OwnedFd>,
}

fn into_chunk(raw: RawReceived) -> Result<Option<Chunk>, RecvError> {
    if raw.control_truncated {
        return Err(RecvError::ControlTruncated);
    }
    if raw.len == 0 && raw.fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(Chunk {
        len: raw.len,
        fds: raw.fds,
        credentials: raw.credentials,
        pidfd: raw.pidfd,
    }))
}

/// Whether a send failed because the peer hung up: it closed its socket
/// (or stopped reading), so nothing more reaches it, while what it wrote
/// before is still there to be read.
pub fn peer_hung_up(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Whether this kernel supports `SO_PEERPIDFD` (Linux ≥ 6.5), probed on a
/// private socket pair.
pub fn kernel_supports_peer_pidfd() -> io::Result<bool> {
    let (a, _b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    match sys::peer_pidfd(a.as_fd()) {
        Ok(_pidfd) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_keep_their_boundaries_and_fds() {
        let (a, b) = SeqPacket::pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        a.send(b"first", &[r.as_fd(), w.as_fd()]).await.unwrap();
        a.send(b"second", &[]).await.unwrap();
        let one = b.recv(1024).await.unwrap().unwrap();
        assert_eq!(one.data, b"first");
        assert_eq!(one.fds.len(), 2);
        let two = b.recv(1024).await.unwrap().unwrap();
        assert_eq!(two.data, b"second");
        assert!(two.fds.is_empty());
        // Received descriptors are close-on-exec.
        let flags = rustix::io::fcntl_getfd(&one.fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[tokio::test]
    async fn a_batch_moves_many_records_each_with_its_own_fds_and_ends_at_eof() {
        let (a, b) = SeqPacket::pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let no_fds: [OwnedFd; 0] = [];
        let with_fd = [r];
        let records: Vec<OutRecord<'_, OwnedFd>> = (0..40u8)
            .map(|i| OutRecord {
                data: if i % 2 == 0 { b"even" } else { b"odd" },
                fds: if i == 3 { &with_fd[..] } else { &no_fds[..] },
            })
            .collect();
        // One call moves at most MAX_BATCH; the rest take a second.
        let first = a.try_send_many(&records).unwrap();
        assert_eq!(first, MAX_BATCH);
        assert_eq!(a.try_send_many(&records[first..]).unwrap(), 40 - MAX_BATCH);
        drop(w);
        let mut got = Vec::new();
        while got.len() < 40 {
            let mut batch = Vec::new();
            std::future::poll_fn(|cx| b.poll_recv_many(cx, 64, MAX_BATCH, &mut batch))
                .await
                .unwrap();
            assert!(batch.len() <= MAX_BATCH);
            got.extend(batch.into_iter().map(|r| r.unwrap().unwrap()));
        }
        for (i, record) in got.iter().enumerate() {
            let want: &[u8] = if i % 2 == 0 { b"even" } else { b"odd" };
            assert_eq!(record.data, want);
            assert_eq!(record.fds.len(), usize::from(i == 3), "record {i}");
        }
        // At the end of the connection the batch stops at its end.
        drop(a);
        let mut batch = Vec::new();
        std::future::poll_fn(|cx| b.poll_recv_many(cx, 64, 4, &mut batch))
            .await
            .unwrap();
        assert!(matches!(batch.as_slice(), [Ok(None)]), "{batch:?}");
    }

    #[tokio::test]
    async fn a_batch_of_records_larger_than_the_buffers_is_refused_record_by_record() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(b"small", &[]).await.unwrap();
        a.send(&[7u8; 3000], &[]).await.unwrap();
        let mut batch = Vec::new();
        std::future::poll_fn(|cx| b.poll_recv_many(cx, 1000, MAX_BATCH, &mut batch))
            .await
            .unwrap();
        assert!(matches!(&batch[0], Ok(Some(r)) if r.data == b"small"));
        assert!(matches!(
            batch[1],
            Err(RecvError::TooLarge {
                size: 3000,
                limit: 1000
            })
        ));
    }

    #[tokio::test]
    async fn with_the_largest_record_limit_a_batch_is_one_record() {
        let (a, b) = SeqPacket::pair().unwrap();
        for _ in 0..3 {
            a.send(b"r", &[]).await.unwrap();
        }
        for _ in 0..3 {
            let mut batch = Vec::new();
            let limit = MAX_CONFIGURABLE_RECORD_SIZE;
            std::future::poll_fn(|cx| b.poll_recv_many(cx, limit, MAX_BATCH, &mut batch))
                .await
                .unwrap();
            assert_eq!(batch.len(), 1, "16 MiB buffers: one slot, not 32");
        }
    }

    #[tokio::test]
    async fn oversized_records_are_an_error_and_leak_nothing() {
        let (a, b) = SeqPacket::pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        a.send(&[7u8; 2000], &[r.as_fd()]).await.unwrap();
        drop(r);
        match b.recv(1000).await {
            Err(RecvError::TooLarge {
                size: 2000,
                limit: 1000,
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // The read end that came with the refused record was closed: with no
        // reader left anywhere, writing to the pipe fails with EPIPE.
        assert_eq!(rustix::io::write(&w, b"x"), Err(rustix::io::Errno::PIPE));
        a.send(b"ok", &[]).await.unwrap();
        assert_eq!(b.recv(1000).await.unwrap().unwrap().data, b"ok");
    }

    #[tokio::test]
    async fn credentials_and_pidfd_arrive_when_asked_for() {
        let (a, b) = SeqPacket::pair().unwrap();
        b.set_pass_credentials(true).unwrap();
        b.set_pass_pidfd(true).unwrap();
        a.send(b"x", &[]).await.unwrap();
        let got = b.recv(64).await.unwrap().unwrap();
        let creds = got.credentials.unwrap();
        assert_eq!(creds.pid as u32, std::process::id());
        let pidfd = got.pidfd.unwrap();
        assert_eq!(
            crate::pidfd::pidfs_id(pidfd.as_fd()).unwrap(),
            crate::pidfd::own_pidfs_id().unwrap()
        );
    }

    #[tokio::test]
    async fn end_of_file_is_none() {
        let (a, b) = SeqPacket::pair().unwrap();
        drop(a);
        assert!(b.recv(64).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_pass_credentials_from_the_listener() {
        let dir = std::env::temp_dir().join(format!("pidbus-passcred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = Listener::bind(&path, SocketKind::SeqPacket).unwrap();
        listener.set_pass_credentials(true).unwrap();
        let client = SeqPacket::connect(&path).unwrap();
        client.send(b"before accept", &[]).await.unwrap();
        let server = SeqPacket::from_accepted(listener.accept().await.unwrap()).unwrap();
        client.send(b"after accept", &[]).await.unwrap();
        for expected in [&b"before accept"[..], b"after accept"] {
            let got = server.recv(64).await.unwrap().unwrap();
            assert_eq!(got.data, expected);
            let creds = got.credentials.expect("credentials attached");
            assert_eq!(creds.pid as u32, std::process::id());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_kernel_has_peer_pidfd() {
        assert!(kernel_supports_peer_pidfd().unwrap());
    }
}
