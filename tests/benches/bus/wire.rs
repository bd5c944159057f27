//! Blocking unix sockets for the benchmark's thin clients: no runtime, no
//! task hops, so what is measured is the broker.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use pidbus_protocol::dbus::record;
use pidbus_protocol::transport::{MAX_BATCH, RawReceived, RecvBatch, Wait, recv_records};
use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketType};

/// A connected unix socket (SEQPACKET or STREAM).
pub struct Socket(pub OwnedFd);

impl Socket {
    /// Connects to `path` with the given socket type.
    pub fn connect(path: &Path, kind: SocketType) -> io::Result<Self> {
        let fd = rustix::net::socket(AddressFamily::UNIX, kind, None)?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
        Ok(Socket(fd))
    }

    /// Sends all of `data` (one record on SEQPACKET).
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        while sent < data.len() {
            match rustix::net::send(&self.0, &data[sent..], SendFlags::NOSIGNAL) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => wait(self.0.as_fd(), PollFlags::OUT)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends `data` with `fds` attached (`SCM_RIGHTS`) in one `sendmsg`.
    pub fn send_with_fds(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage};
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("ancillary buffer too small"));
        }
        let sent = rustix::net::sendmsg(
            &self.0,
            &[io::IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        if sent != data.len() {
            return Err(io::Error::other("short sendmsg"));
        }
        Ok(())
    }

    /// Receives into `buf`; `Ok(0)` at end of stream, `WouldBlock` on a
    /// non-blocking socket with nothing to read.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::net::recv(&self.0, &mut *buf, RecvFlags::empty()) {
                Ok((n, _)) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives into the spare capacity of `buf` (which must have some),
    /// appending what came: no buffer to zero and no copy out of one.
    /// `Ok(0)` at end of stream, `WouldBlock` on a non-blocking socket with
    /// nothing to read.
    pub fn recv_appending(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let spare = rustix::buffer::spare_capacity(buf);
            match rustix::net::recv(&self.0, spare, RecvFlags::empty()) {
                Ok((n, _)) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads every record waiting on a non-blocking SEQPACKET socket into
    /// `buf`; how many there were.
    pub fn drain_records(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut count = 0;
        loop {
            match self.recv(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => count += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(count),
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes reads and writes non-blocking (sends still complete: they
    /// wait with poll when the socket is full).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        rustix::io::ioctl_fionbio(&self.0, true)?;
        Ok(())
    }
}

/// The largest record a thin client reads in a batch: more than any
/// record these scenarios make (one 4 KiB call, or at most 32 packed
/// messages of a few hundred bytes); a larger one is an error, never cut.
/// Not the broker's whole record size: a batch's buffers are allocated per
/// connection, and the `connect` scenario would measure that allocation.
const RECORD_ROOM: usize = 16 << 10;

/// Reads SEQPACKET records in batches: one `recvmmsg` takes every record
/// waiting (up to 32), as a D-Bus client's buffered read takes every
/// message waiting, so the thin clients of both protocols read alike.
#[derive(Default)]
pub struct Records {
    batch: Option<Box<RecvBatch>>,
    lens: Vec<usize>,
    next: usize,
    /// How far into record `next` its messages were taken
    /// ([`next_message`](Self::next_message)).
    at: usize,
}

impl Records {
    /// The next D-Bus message, waiting for one; empty at the end of the
    /// connection. The broker may put several whole messages in a record.
    pub fn next_message(&mut self, socket: &Socket) -> io::Result<&[u8]> {
        loop {
            if self.next == self.lens.len() {
                self.at = 0;
                self.wait_for_batch(socket)?;
            }
            let len = self.lens[self.next];
            if len == 0 {
                return Ok(&[]);
            }
            if self.at == len {
                self.next += 1;
                self.at = 0;
                continue;
            }
            let batch = self
                .batch
                .as_deref()
                .ok_or_else(|| io::Error::other("no batch"))?;
            let rest = &batch.record(self.next, len)[self.at..];
            let message = record::messages(rest)
                .next()
                .ok_or_else(|| io::Error::other("an empty record"))?
                .map_err(io::Error::other)?;
            self.at += message.len();
            return Ok(message);
        }
    }

    /// Reads every record waiting, without waiting, and counts the
    /// messages `wanted` says yes to; end of the connection is an error.
    pub fn drain_messages_matching(
        &mut self,
        socket: &Socket,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> io::Result<usize> {
        let skip = std::mem::take(&mut self.at);
        let mut first = true;
        self.drain_matching(socket, |rec| {
            let from = if std::mem::take(&mut first) { skip } else { 0 };
            record::messages(&rec[from.min(rec.len())..])
                .map_while(Result::ok)
                .filter(|m| wanted(m))
                .count()
        })
    }

    /// The next record, waiting for one; empty at the end of the
    /// connection.
    pub fn next(&mut self, socket: &Socket) -> io::Result<&[u8]> {
        self.wait_for_batch(socket)?;
        let (index, len) = (self.next, self.lens[self.next]);
        self.next += 1;
        let batch = self
            .batch
            .as_deref()
            .ok_or_else(|| io::Error::other("no batch"))?;
        Ok(batch.record(index, len))
    }

    /// Receives a batch, waiting for one, unless records of the last
    /// are left.
    fn wait_for_batch(&mut self, socket: &Socket) -> io::Result<()> {
        while self.next == self.lens.len() {
            // A blocking socket waits in the receive itself, as a blocking
            // `recv` would: one system call per wait.
            match self.fill(socket, Wait::ForOne) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(socket.as_fd(), PollFlags::IN)?;
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Counts every record waiting, without waiting; end of the connection
    /// is an error.
    pub fn drain(&mut self, socket: &Socket) -> io::Result<usize> {
        self.drain_matching(socket, |_| 1)
    }

    /// Reads every record waiting, without waiting, and adds up what
    /// `counted` says of each; end of the connection is an error.
    fn drain_matching(
        &mut self,
        socket: &Socket,
        mut counted: impl FnMut(&[u8]) -> usize,
    ) -> io::Result<usize> {
        let mut count = 0;
        loop {
            if let Some(batch) = self.batch.as_deref() {
                for (index, &len) in self.lens.iter().enumerate().skip(self.next) {
                    if len == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    count += counted(batch.record(index, len));
                }
            }
            self.next = self.lens.len();
            match self.fill(socket, Wait::Never) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(count),
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives a batch (the previous one must have been read).
    fn fill(&mut self, socket: &Socket, wait: Wait) -> io::Result<()> {
        let batch = self.batch.get_or_insert_with(Box::default);
        let mut raws: Vec<RawReceived> = Vec::with_capacity(MAX_BATCH);
        self.lens.clear();
        self.next = 0;
        loop {
            match recv_records(
                socket.as_fd(),
                batch,
                RECORD_ROOM,
                MAX_BATCH,
                wait,
                &mut raws,
            ) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => {
                    other?;
                    break;
                }
            }
        }
        for raw in &raws {
            if raw.len > RECORD_ROOM {
                return Err(io::Error::other(format!("a record of {} bytes", raw.len)));
            }
        }
        self.lens.extend(raws.iter().map(|raw| raw.len));
        Ok(())
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Waits until `fd` is ready for `events`.
pub fn wait(fd: BorrowedFd<'_>, events: PollFlags) -> io::Result<()> {
    let mut fds = [PollFd::new(&fd, events)];
    loop {
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until any of `fds` is readable (or `timeout` passes); the indexes
/// of the readable ones.
pub fn readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Vec<usize>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timespec = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    match rustix::event::poll(&mut polled, Some(&timespec)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(polled
        .iter()
        .enumerate()
        .filter(|(_, fd)| !fd.revents().is_empty())
        .map(|(i, _)| i)
        .collect())
}

/// Resident set size of process `pid`, in bytes, from `smaps_rollup`: the
/// kernel walks the page tables for it, while `VmRSS` in `status` comes from
/// per-CPU counters that may lag by many pages (measured: a 2 000-connection
/// growth reported as 80 KB).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let kib = rollup
        .lines()
        .find_map(|line| line.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| io::Error::other("no Rss line in smaps_rollup"))?;
    Ok(kib * 1024)
}

/// Retries `connect` while the server is not listening yet, up to 20 s.
pub fn retry<T>(mut connect: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match connect() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// A rival's server process, killed and reaped when the rival is dropped.
pub struct Server(pub std::process::Child);

impl Server {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
