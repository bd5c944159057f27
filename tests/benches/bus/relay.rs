//! The physical limit: a trivial forwarding process on bare SOCK_SEQPACKET.
//! The same message shapes take the same two hops each way as through a
//! broker, with no routing, no identity and no encoding: what any broker
//! costs at the least.
//!
//! Protocol: a connection's first record is its role (`S` the echo service,
//! `C` a caller, `U` a subscriber, `E` an emitter), answered with `ok`. A
//! caller's record goes to the service behind a 4-byte connection number,
//! which the service sends back with the answer and the relay strips. An
//! emitter's record goes to every subscriber.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use pidbus_protocol::transport::{
    MAX_BATCH, OutRecord, RawReceived, RecvBatch, Wait, recv_records, send_records,
};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::wire::{self, Records, Socket};
use crate::{Client, Rival};

/// How the relay moves records.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One record per system call, each way (`--relay`).
    OnePerCall,
    /// Every record waiting on a socket in one `recvmmsg`, and each
    /// receiver's records of that batch in one `sendmmsg`
    /// (`--batch-relay`): the limit for throughput.
    Batched,
}

/// Room for one record in the relay.
const ROOM: usize = 1 << 16;

/// Runs the relay on `path` until killed (the `--relay PATH` and
/// `--batch-relay PATH` modes of the benchmark binary).
pub fn run(path: &Path, mode: Mode) -> io::Result<()> {
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&listener, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&listener, 4096)?;
    // Slot i is connection number i; a closed slot is reused by the next
    // connection, so numbers stay small and stable while in use.
    let mut conns: Vec<Option<(Socket, u8)>> = Vec::new();
    let mut service: Option<usize> = None;
    let mut inbox = Inbox::default();
    let mut outbox = Forward::default();
    loop {
        let (ready, slots) = {
            let mut fds: Vec<BorrowedFd<'_>> = vec![listener.as_fd()];
            let mut slots = vec![usize::MAX];
            for (i, conn) in conns.iter().enumerate() {
                if let Some((socket, _)) = conn {
                    fds.push(socket.as_fd());
                    slots.push(i);
                }
            }
            (wire::readable(&fds, Duration::from_secs(3600))?, slots)
        };
        for index in ready {
            if index == 0 {
                let fd = rustix::net::accept_with(&listener, SocketFlags::CLOEXEC)?;
                let conn = Some((Socket(fd), 0));
                match conns.iter().position(Option::is_none) {
                    Some(free) => conns[free] = conn,
                    None => conns.push(conn),
                }
                continue;
            }
            let i = slots[index];
            let Some((socket, _)) = &conns[i] else {
                continue;
            };
            let count = inbox.receive(socket, mode)?;
            for n in 0..count {
                let record = inbox.record(n);
                if record.is_empty() {
                    conns[i] = None;
                    break;
                }
                let Some((socket, role)) = &mut conns[i] else {
                    break;
                };
                match *role {
                    0 => {
                        *role = record[0];
                        socket.send(b"ok")?;
                        if record[0] == b'S' {
                            service = Some(i);
                        }
                    }
                    b'C' => {
                        if let Some(service) = service {
                            let number = (i as u32).to_le_bytes();
                            outbox.add(service, &[&number, record]);
                        }
                    }
                    b'S' if record.len() >= 4 => {
                        let to = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
                        outbox.add(to as usize, &[&record[4..]]);
                    }
                    b'E' => {
                        for (sub, conn) in conns.iter().enumerate() {
                            if conn.as_ref().is_some_and(|(_, role)| *role == b'U') {
                                outbox.add(sub, &[record]);
                            }
                        }
                    }
                    _ => {}
                }
                if mode == Mode::OnePerCall {
                    outbox.flush(&conns)?;
                }
            }
            outbox.flush(&conns)?;
        }
    }
}

/// What one receive took.
#[derive(Default)]
struct Inbox {
    one: Vec<u8>,
    batch: Option<Box<RecvBatch>>,
    lens: Vec<usize>,
}

impl Inbox {
    /// Receives one record or a batch; how many (an empty record is the
    /// end of the connection).
    fn receive(&mut self, socket: &Socket, mode: Mode) -> io::Result<usize> {
        self.lens.clear();
        match mode {
            Mode::OnePerCall => {
                self.one.resize(ROOM, 0);
                self.lens.push(socket.recv(&mut self.one).unwrap_or(0));
            }
            Mode::Batched => {
                let batch = self.batch.get_or_insert_with(Box::default);
                let mut raws: Vec<RawReceived> = Vec::with_capacity(MAX_BATCH);
                match recv_records(
                    socket.as_fd(),
                    batch,
                    ROOM,
                    MAX_BATCH,
                    Wait::Never,
                    &mut raws,
                ) {
                    Ok(_drained) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(_) => raws.clear(),
                }
                self.lens.extend(raws.iter().map(|raw| raw.len.min(ROOM)));
                if self.lens.is_empty() {
                    self.lens.push(0);
                }
            }
        }
        Ok(self.lens.len())
    }

    /// Record `n` of what was received.
    fn record(&self, n: usize) -> &[u8] {
        match &self.batch {
            Some(batch) => batch.record(n, self.lens[n]),
            None => &self.one[..self.lens[n]],
        }
    }
}

/// Records to send, by receiving connection.
#[derive(Default)]
struct Forward {
    bytes: Vec<u8>,
    /// (connection, start, end) in `bytes`, in the order they came.
    records: Vec<(usize, usize, usize)>,
}

impl Forward {
    fn add(&mut self, to: usize, parts: &[&[u8]]) {
        let start = self.bytes.len();
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.records.push((to, start, self.bytes.len()));
    }

    /// Sends every record, each connection's in one `sendmmsg` (or one
    /// `send` when it has one).
    fn flush(&mut self, conns: &[Option<(Socket, u8)>]) -> io::Result<()> {
        let mut done = vec![false; self.records.len()];
        for first in 0..self.records.len() {
            if done[first] {
                continue;
            }
            let to = self.records[first].0;
            let mut mine: Vec<OutRecord<'_, OwnedFd>> = Vec::new();
            for (k, &(target, start, end)) in self.records.iter().enumerate().skip(first) {
                if target == to {
                    done[k] = true;
                    mine.push(OutRecord {
                        data: &self.bytes[start..end],
                        fds: &[],
                    });
                }
            }
            let Some(Some((socket, _))) = conns.get(to) else {
                continue;
            };
            // A receiver that went away loses its records, as with a broker.
            let _ = send_all(socket, &mine);
        }
        self.bytes.clear();
        self.records.clear();
        Ok(())
    }
}

/// Sends `records` in order, waiting while the socket is full.
fn send_all(socket: &Socket, mut records: &[OutRecord<'_, OwnedFd>]) -> io::Result<()> {
    if let [one] = records {
        return socket.send(one.data);
    }
    while !records.is_empty() {
        match send_records(socket.as_fd(), records) {
            Ok(n) => records = &records[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wire::wait(socket.as_fd(), rustix::event::PollFlags::OUT)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A relay connection.
pub struct Connection {
    socket: Socket,
    records: Records,
}

impl Connection {
    fn connect(path: &Path, role: u8) -> io::Result<Self> {
        let socket = Socket::connect(path, SocketType::SEQPACKET)?;
        socket.send(&[role])?;
        let mut records = Records::default();
        if records.next(&socket)? != b"ok" {
            return Err(io::Error::other("relay refused the connection"));
        }
        Ok(Connection { socket, records })
    }
}

impl Client for Connection {
    fn add_idle_rules(&mut self, _count: usize) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the raw relay has no match rules",
        ))
    }

    fn call(&mut self, serial: u32, payload: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(4 + payload.len());
        record.extend_from_slice(&serial.to_le_bytes());
        record.extend_from_slice(payload);
        self.socket.send(&record)
    }

    fn reply(&mut self) -> io::Result<()> {
        match self.records.next(&self.socket)? {
            [] => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    fn subscribe(&mut self) -> io::Result<()> {
        // Subscribers say so in their role record; see `RelayRival::subscriber`.
        Ok(())
    }

    fn emit(&mut self, payload: &[u8]) -> io::Result<()> {
        self.socket.send(payload)
    }

    fn count_signals(&mut self) -> io::Result<usize> {
        self.records.drain(&self.socket)
    }

    fn socket(&self) -> &Socket {
        &self.socket
    }
}

/// The echo service: sends every record back as it came.
fn serve_echo(mut conn: Connection) -> io::Result<()> {
    loop {
        let record = conn.records.next(&conn.socket)?;
        if record.is_empty() {
            return Ok(());
        }
        conn.socket.send(record)?;
    }
}

/// The relay process and its echo service.
pub struct RelayRival {
    key: &'static str,
    socket: PathBuf,
    child: wire::Server,
}

impl RelayRival {
    /// Starts `benchmark_binary --relay PATH` (or `--batch-relay`).
    pub fn start(benchmark_binary: &Path, dir: &Path, mode: Mode) -> io::Result<Self> {
        let socket = dir.join("relay.sock");
        let (key, flag) = match mode {
            Mode::OnePerCall => ("raw_relay", "--relay"),
            Mode::Batched => ("batch_relay", "--batch-relay"),
        };
        let child = wire::Server(
            Command::new(benchmark_binary)
                .arg(flag)
                .arg(&socket)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
        let rival = RelayRival { key, socket, child };
        let service = wire::retry(|| Connection::connect(&rival.socket, b'S'))?;
        std::thread::spawn(move || serve_echo(service));
        Ok(rival)
    }
}

impl Rival for RelayRival {
    fn key(&self) -> &'static str {
        self.key
    }

    fn broker_pid(&self) -> u32 {
        self.child.pid()
    }

    fn connect(&self) -> io::Result<Box<dyn Client>> {
        Ok(Box::new(Connection::connect(&self.socket, b'C')?))
    }

    fn subscriber(&self) -> io::Result<Box<dyn Client>> {
        Ok(Box::new(Connection::connect(&self.socket, b'U')?))
    }

    fn emitter(&self) -> io::Result<Box<dyn Client>> {
        Ok(Box::new(Connection::connect(&self.socket, b'E')?))
    }
}
