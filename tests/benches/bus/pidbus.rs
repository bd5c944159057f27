//! pidbus as a rival: a private `pidbusd` (release build), and a thin client
//! speaking the protocol directly over a blocking socket, like the D-Bus
//! and relay clients (so the numbers compare brokers, not client stacks).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pidbus_protocol::{
    BrokerRequest, Call, Destination, Hello, MatchRule, Message, NameFlags, PROTOCOL_VERSION,
    Request, Return, Signal, codec,
};
use rustix::net::SocketType;

use crate::wire::{self, Socket};
use crate::{Client, ECHO_NAME, Rival};

const LIMIT: usize = 1 << 20;

/// A handshaken pidbus connection.
pub struct Connection {
    socket: Socket,
    buf: Vec<u8>,
}

impl Connection {
    pub fn connect(path: &Path) -> io::Result<Self> {
        let socket = Socket::connect(path, SocketType::SEQPACKET)?;
        let mut conn = Connection {
            socket,
            buf: vec![0; LIMIT],
        };
        conn.send(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
        }))?;
        match conn.next()? {
            Message::Welcome(_) => Ok(conn),
            other => Err(io::Error::other(format!("expected Welcome, got {other:?}"))),
        }
    }

    fn send(&self, message: &Message) -> io::Result<()> {
        let bytes = codec::encode(message, LIMIT).map_err(io::Error::other)?;
        self.socket.send(&bytes)
    }

    fn next(&mut self) -> io::Result<Message> {
        let n = self.socket.recv(&mut self.buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "pidbusd closed the connection",
            ));
        }
        codec::decode(&self.buf[..n], LIMIT).map_err(io::Error::other)
    }

    /// Sends a broker request and waits for its reply.
    fn request(&mut self, body: BrokerRequest) -> io::Result<()> {
        self.send(&Message::Request(Request { serial: 0, body }))?;
        loop {
            match self.next()? {
                Message::Reply(_) => return Ok(()),
                Message::Error(e) => return Err(io::Error::other(e.message)),
                _ => {}
            }
        }
    }
}

impl Client for Connection {
    fn call(&mut self, serial: u32, payload: &[u8]) -> io::Result<()> {
        self.send(&Message::Call(Call {
            serial: serial.into(),
            destination: Destination::Name(ECHO_NAME.into()),
            path: "/org/bench/Echo".into(),
            interface: ECHO_NAME.into(),
            member: "Echo".into(),
            signature: "ay".into(),
            body: byte_array(payload),
            no_reply: false,
            timeout_ms: None,
        }))
    }

    fn reply(&mut self) -> io::Result<()> {
        loop {
            match self.next()? {
                Message::Return(_) => return Ok(()),
                Message::Error(e) => return Err(io::Error::other(e.message)),
                _ => {}
            }
        }
    }

    fn subscribe(&mut self) -> io::Result<()> {
        let rule = MatchRule {
            interface: Some("org.bench.Broadcast".into()),
            ..MatchRule::default()
        };
        self.request(BrokerRequest::AddMatch { id: 1, rule })
    }

    fn emit(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(&Message::Signal(Signal {
            sender: None,
            destination: None,
            path: "/org/bench/Broadcast".into(),
            interface: "org.bench.Broadcast".into(),
            member: "Tick".into(),
            signature: "ay".into(),
            body: byte_array(payload),
            matched: Vec::new(),
        }))
    }

    fn count_signals(&mut self) -> io::Result<usize> {
        self.socket.drain_records(&mut self.buf)
    }

    fn add_idle_rules(&mut self, count: usize) -> io::Result<()> {
        for i in 0..count {
            let rule = MatchRule {
                interface: Some("org.bench.Broadcast".into()),
                member: Some(format!("Idle{i}")),
                ..MatchRule::default()
            };
            self.request(BrokerRequest::AddMatch {
                id: 100 + i as u64,
                rule,
            })?;
        }
        Ok(())
    }

    fn socket(&self) -> &Socket {
        &self.socket
    }
}

/// `pidbusd` listening on `socket` (native), configured as every pidbus
/// rival is: quotas stay on (their accounting is measured); only the
/// per-user connection count is raised, as the D-Bus rivals' limits are,
/// for conn_memory's 2 000 connections of one user and match_scale's
/// 10 000 rules.
pub fn pidbusd(
    binary: &Path,
    dir: &Path,
    socket: &Path,
    policy: Option<&Path>,
) -> io::Result<Command> {
    let config = dir.join("pidbusd.toml");
    std::fs::write(
        &config,
        "[limits.uid]\nconnections = 4096\nmatch_rules = 65536\nmatch_rule_bytes = 67108864\n",
    )?;
    let mut command = Command::new(binary);
    command
        .arg("--listen")
        .arg(socket)
        .arg("--config")
        .arg(&config);
    if let Some(policy) = policy {
        command.arg("--policy").arg(policy);
    }
    Ok(command)
}

/// The echo service: owns `ECHO_NAME`, returns every call's body.
fn serve_echo(mut conn: Connection) -> io::Result<()> {
    loop {
        if let Message::Incoming(call) = conn.next()? {
            conn.send(&Message::Return(Return {
                reply_to: call.call_id,
                signature: call.signature,
                body: call.body,
                sender: None,
            }))?;
        }
    }
}

/// A private `pidbusd` with its echo service.
pub struct PidbusRival {
    key: &'static str,
    socket: PathBuf,
    child: wire::Server,
}

impl PidbusRival {
    /// Starts `pidbusd` from `binary`; `checked: false` runs it with
    /// `--sender-check off`.
    pub fn start(
        binary: &Path,
        dir: &Path,
        checked: bool,
        policy: Option<&Path>,
    ) -> io::Result<Self> {
        let key = if checked {
            "pidbus"
        } else {
            "pidbus_unchecked"
        };
        let socket = dir.join(format!("{key}.sock"));
        let mut command = pidbusd(binary, dir, &socket, policy)?;
        if !checked {
            command.args(["--sender-check", "off"]);
        }
        let child = wire::Server(
            command
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
        let rival = PidbusRival { key, socket, child };
        let mut service = wire::retry(|| Connection::connect(&rival.socket))?;
        service.request(BrokerRequest::RequestName {
            name: ECHO_NAME.into(),
            flags: NameFlags::default(),
        })?;
        std::thread::spawn(move || serve_echo(service));
        Ok(rival)
    }
}

impl Rival for PidbusRival {
    fn native_socket(&self) -> Option<&Path> {
        Some(&self.socket)
    }

    fn key(&self) -> &'static str {
        self.key
    }

    fn broker_pid(&self) -> u32 {
        self.child.pid()
    }

    fn connect(&self) -> io::Result<Box<dyn Client>> {
        Ok(Box::new(Connection::connect(&self.socket)?))
    }
}

/// `payload` as the body of one D-Bus byte array (`ay`): its length, then
/// its bytes.
fn byte_array(payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + payload.len());
    body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    body.extend_from_slice(payload);
    body
}
