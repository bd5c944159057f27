//! The client's socket and the D-Bus messages on it: pidbus's native
//! socket (`SOCK_SEQPACKET`, records of whole messages, no SASL) or a D-Bus
//! stream socket (SASL `EXTERNAL`, then a byte stream of messages) — of
//! pidbus, dbus-broker or dbus-daemon alike.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use pidbus_protocol::address::Endpoint;
use pidbus_protocol::dbus::body;
use pidbus_protocol::dbus::header::{self, FIXED_HEADER_LEN, Header};
use pidbus_protocol::limits;
use pidbus_protocol::transport::{SeqPacket, Stream};

/// Longest message read from a D-Bus stream (the specification's limit).
pub(crate) const MAX_STREAM_MESSAGE: usize = 128 << 20;

/// Bytes one read of a stream takes at most.
const READ_SIZE: usize = 64 * 1024;

/// A connected socket.
#[derive(Debug)]
pub(crate) enum Socket {
    /// pidbus's native socket.
    Records(SeqPacket),
    /// A D-Bus stream; writers take turns, so that messages never mix.
    Stream {
        stream: Stream,
        writing: tokio::sync::Mutex<()>,
    },
}

/// One message as received, its body little-endian.
#[derive(Debug)]
pub(crate) struct Received {
    pub header: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Socket {
    /// Connects to `endpoint`: a socket file is tried as pidbus's native
    /// socket first, as a D-Bus stream if it is one (the kernel says which:
    /// `EPROTOTYPE`). A stream is authenticated here; returns the socket and
    /// whether descriptors may be passed, and the reader of what comes.
    pub(crate) async fn open(endpoint: &Endpoint) -> io::Result<(Socket, bool, Reader)> {
        let stream = match endpoint {
            Endpoint::Path(path) => match SeqPacket::connect(path) {
                Ok(socket) => return Ok((Socket::Records(socket), true, Reader::default())),
                Err(e) if e.raw_os_error() == Some(libc_eprototype()) => Stream::connect(path)?,
                Err(e) => return Err(e),
            },
            Endpoint::Abstract(name) => Stream::connect_abstract(name)?,
        };
        let mut reader = Reader::default();
        let fd_passing = authenticate(&stream, &mut reader).await?;
        let socket = Socket::Stream {
            stream,
            writing: tokio::sync::Mutex::new(()),
        };
        Ok((socket, fd_passing, reader))
    }

    /// Sends one whole message with its descriptors.
    pub(crate) async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        match self {
            Socket::Records(socket) => socket.send(bytes, fds).await,
            Socket::Stream { stream, writing } => {
                let _turn = writing.lock().await;
                write_all(stream, bytes, fds).await
            }
        }
    }

    /// Receives the next message; `Ok(None)` when the bus closed the
    /// connection. `reader` keeps what was received and not yet taken: the
    /// rest of a stream's read, or of a record holding several messages.
    pub(crate) async fn receive(&self, reader: &mut Reader) -> Result<Option<Received>, String> {
        loop {
            if let Some(bytes) = reader.next_message()? {
                return reader.parse(bytes).map(Some);
            }
            let more = match self {
                Socket::Records(socket) => reader.read_record(socket).await?,
                Socket::Stream { stream, .. } => reader.read_from(stream).await?,
            };
            if !more {
                return Ok(None);
            }
        }
    }
}

fn libc_eprototype() -> i32 {
    rustix::io::Errno::PROTOTYPE.raw_os_error()
}

/// What the bus delivered and no message has taken yet: a stream's
/// bytes, or the rest of a record (the broker may put several messages in
/// one), and the descriptors that came with them.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    bytes: Vec<u8>,
    start: usize,
    fds: VecDeque<OwnedFd>,
}

impl Reader {
    fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// Reads once, waiting; false at end of file.
    async fn read_from(&mut self, stream: &Stream) -> Result<bool, String> {
        if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        let old = self.bytes.len();
        self.bytes.resize(old + READ_SIZE, 0);
        let chunk = std::future::poll_fn(|cx| stream.poll_read(cx, &mut self.bytes[old..])).await;
        let chunk = chunk.map_err(|e| format!("cannot read from the bus: {e}"));
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                self.bytes.truncate(old);
                return Err(e);
            }
        };
        let Some(chunk) = chunk else {
            self.bytes.truncate(old);
            return Ok(false);
        };
        self.bytes.truncate(old + chunk.len);
        self.fds.extend(chunk.fds);
        Ok(true)
    }

    /// Receives one record, waiting; false at end of file. A record
    /// holds whole messages: nothing of the one before may be left.
    async fn read_record(&mut self, socket: &SeqPacket) -> Result<bool, String> {
        if !self.pending().is_empty() {
            return Err("the bus sent a record that ends inside a message".into());
        }
        if !self.fds.is_empty() {
            return Err(format!(
                "the bus sent {} descriptors that no message of their record announces",
                self.fds.len()
            ));
        }
        let record = socket
            .recv(limits::MAX_CONFIGURABLE_RECORD_SIZE)
            .await
            .map_err(|e| format!("cannot read from the bus: {e}"))?;
        let Some(record) = record else {
            return Ok(false);
        };
        self.bytes = record.data;
        self.start = 0;
        self.fds.extend(record.fds);
        Ok(true)
    }

    /// The next whole message, if all of it is here.
    fn next_message(&mut self) -> Result<Option<Vec<u8>>, String> {
        let pending = self.pending();
        let Some(prefix) = pending.first_chunk::<FIXED_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = header::message_len(prefix, MAX_STREAM_MESSAGE)
            .map_err(|e| format!("the bus sent an invalid message: {e}"))?;
        if pending.len() < len {
            return Ok(None);
        }
        if self.start == 0 && len == self.bytes.len() {
            // A record of one message: no copy.
            return Ok(Some(std::mem::take(&mut self.bytes)));
        }
        let bytes = pending[..len].to_vec();
        self.start += len;
        Ok(Some(bytes))
    }

    /// A received message's header and body (made little-endian), with
    /// the descriptors its header announces.
    fn parse(&mut self, bytes: Vec<u8>) -> Result<Received, String> {
        let (header, endian, body_at) =
            header::parse(&bytes).map_err(|e| format!("the bus sent an invalid message: {e}"))?;
        let announced = usize::try_from(header.unix_fds).unwrap_or(usize::MAX);
        if self.fds.len() < announced {
            return Err(format!(
                "the bus sent a message announcing {announced} descriptors with {}",
                self.fds.len()
            ));
        }
        let fds = self.fds.drain(..announced).collect();
        let converted = body::check(
            &header.signature,
            &bytes[body_at..],
            endian,
            header.unix_fds,
        )
        .map_err(|e| format!("the bus sent a message whose body is invalid: {e}"))?;
        // A big-endian sender's body comes back converted.
        let body = converted.unwrap_or_else(|| bytes[body_at..].to_vec());
        Ok(Received { header, body, fds })
    }

    /// One SASL line (without its `\r\n`), waiting for it.
    async fn line(&mut self, stream: &Stream) -> io::Result<String> {
        loop {
            if let Some(end) = self.pending().windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending()[..end]).into_owned();
                self.start += end + 2;
                return Ok(line);
            }
            if self.pending().len() > 4096 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the bus sent an overlong authentication line",
                ));
            }
            let more = self.read_from(stream).await.map_err(io::Error::other)?;
            if !more {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the bus closed the connection during authentication",
                ));
            }
        }
    }
}

/// SASL `EXTERNAL` as the uid this process runs as, and descriptor
/// passing: the three commands go in one write, as sd-bus sends them.
async fn authenticate(stream: &Stream, reader: &mut Reader) -> io::Result<bool> {
    let uid = rustix::process::getuid().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    let commands = format!("\0AUTH EXTERNAL {hex}\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n");
    write_all(stream, commands.as_bytes(), &[]).await?;
    let refused = |line: &str| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the bus refused authentication as uid {uid}: {line:?}"),
        )
    };
    let ok = reader.line(stream).await?;
    if !ok.starts_with("OK ") {
        return Err(refused(&ok));
    }
    let negotiated = reader.line(stream).await?;
    Ok(negotiated == "AGREE_UNIX_FD")
}

/// Writes all of `bytes` on a stream, `fds` with the first byte.
async fn write_all(
    stream: &Stream,
    mut bytes: &[u8],
    mut fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    while !bytes.is_empty() {
        let mut sent = 0;
        std::future::poll_fn(|cx| {
            stream.poll_write_with(cx, || {
                sent = stream.try_send(bytes, fds)?;
                Ok(())
            })
        })
        .await?;
        bytes = &bytes[sent..];
        fds = &[];
    }
    Ok(())
}
