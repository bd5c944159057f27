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
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::wire::{self, Socket};
use crate::{Client, Rival};

/// Runs the relay on `path` until killed (the `--relay PATH` mode of the
/// benchmark binary).
pub fn run(path: &Path) -> io::Result<()> {
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
    let mut buf = vec![0u8; 1 << 20];
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
            let Some((socket, role)) = &conns[i] else {
                continue;
            };
            let n = socket.recv(&mut buf[4..]).unwrap_or(0);
            if n == 0 {
                conns[i] = None;
                continue;
            }
            let role = *role;
            let record = &mut buf[..4 + n];
            match role {
                0 => {
                    if let Some((socket, role)) = &mut conns[i] {
                        *role = record[4];
                        socket.send(b"ok")?;
                    }
                    if record[4] == b'S' {
                        service = Some(i);
                    }
                }
                b'C' => {
                    record[..4].copy_from_slice(&(i as u32).to_le_bytes());
                    if let Some(Some((socket, _))) = service.map(|s| &conns[s]) {
                        socket.send(record)?;
                    }
                }
                b'S' => {
                    let to = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
                    if let Some(Some((target, _))) = conns.get(to as usize) {
                        let _ = target.send(&record[8..]);
                    }
                }
                b'E' => {
                    for (sub, _) in conns.iter().flatten().filter(|(_, role)| *role == b'U') {
                        let _ = sub.send(&record[4..]);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A relay connection.
pub struct Connection {
    socket: Socket,
    buf: Vec<u8>,
}

impl Connection {
    fn connect(path: &Path, role: u8) -> io::Result<Self> {
        let socket = Socket::connect(path, SocketType::SEQPACKET)?;
        socket.send(&[role])?;
        let mut buf = vec![0u8; 1 << 20];
        let n = socket.recv(&mut buf)?;
        if &buf[..n] != b"ok" {
            return Err(io::Error::other("relay refused the connection"));
        }
        Ok(Connection { socket, buf })
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
        match self.socket.recv(&mut self.buf)? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
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
        self.socket.drain_records(&mut self.buf)
    }

    fn socket(&self) -> &Socket {
        &self.socket
    }
}

/// The echo service: sends every record back as it came.
fn serve_echo(conn: Connection) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = conn.socket.recv(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.socket.send(&buf[..n])?;
    }
}

/// The relay process and its echo service.
pub struct RelayRival {
    socket: PathBuf,
    child: wire::Server,
}

impl RelayRival {
    /// Starts `benchmark_binary --relay PATH`.
    pub fn start(benchmark_binary: &Path, dir: &Path) -> io::Result<Self> {
        let socket = dir.join("relay.sock");
        let child = wire::Server(
            Command::new(benchmark_binary)
                .arg("--relay")
                .arg(&socket)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
        let rival = RelayRival { socket, child };
        let service = wire::retry(|| Connection::connect(&rival.socket, b'S'))?;
        std::thread::spawn(move || serve_echo(service));
        Ok(rival)
    }
}

impl Rival for RelayRival {
    fn key(&self) -> &'static str {
        "raw_relay"
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
