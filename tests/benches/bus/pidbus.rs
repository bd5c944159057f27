//! pidbus as a rival: a private `pidbusd` (release build), and a thin client
//! speaking the protocol directly over a blocking socket, like the D-Bus
//! and relay clients (so the numbers compare brokers, not client stacks).
//!
//! Like the thin D-Bus client, it writes the messages it sends most by
//! hand (MessagePack with rmp, no serde) and reads only what it needs of
//! those it receives; the handshake and broker requests use the protocol
//! crate's codec. [`check_hand_encoding`] proves the hand-written bytes
//! decode to the messages the codec would send.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pidbus_protocol::{
    BrokerRequest, Call, Destination, Hello, MatchRule, Message, NameFlags, PROTOCOL_VERSION,
    Request, Return, Signal, codec,
};
use rustix::net::SocketType;

use crate::wire::{self, Records, Socket};
use crate::{Client, ECHO_NAME, Rival};

const LIMIT: usize = 1 << 20;

/// A handshaken pidbus connection.
pub struct Connection {
    socket: Socket,
    records: Records,
}

impl Connection {
    pub fn connect(path: &Path) -> io::Result<Self> {
        let socket = Socket::connect(path, SocketType::SEQPACKET)?;
        let mut conn = Connection {
            socket,
            records: Records::default(),
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
        let record = self.next_record()?;
        codec::decode(record, LIMIT).map_err(io::Error::other)
    }

    fn next_record(&mut self) -> io::Result<&[u8]> {
        let record = self.records.next(&self.socket)?;
        if record.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "pidbusd closed the connection",
            ));
        }
        Ok(record)
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
        self.socket.send(&hand::call(serial, payload))
    }

    fn reply(&mut self) -> io::Result<()> {
        loop {
            let record = self.next_record()?;
            match hand::kind(record) {
                Some("Return") => return Ok(()),
                Some("Error") => {
                    let message = codec::decode(record, LIMIT).map_err(io::Error::other)?;
                    return Err(io::Error::other(format!("{message:?}")));
                }
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
        self.socket.send(&hand::signal(payload))
    }

    fn count_signals(&mut self) -> io::Result<usize> {
        self.records.drain(&self.socket)
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
        let record = conn.next_record()?;
        if let Some(call) = hand::incoming(record) {
            let reply = hand::reply(call.call_id, call.signature, call.body);
            conn.socket.send(&reply)?;
        }
    }
}

/// Checks that the hand-written messages decode to what the codec would
/// send, and that the hand-read fields are the codec's: the benchmark
/// refuses to measure otherwise.
pub fn check_hand_encoding() -> io::Result<()> {
    let payload = vec![0x5a; 64];
    let decoded = |bytes: &[u8]| codec::decode(bytes, LIMIT).map_err(io::Error::other);
    let call = Message::Call(Call {
        serial: 7,
        destination: Destination::Name(ECHO_NAME.into()),
        path: "/org/bench/Echo".into(),
        interface: ECHO_NAME.into(),
        member: "Echo".into(),
        signature: "ay".into(),
        body: byte_array(&payload),
        no_reply: false,
        timeout_ms: None,
        no_auto_start: false,
    });
    let signal = Message::Signal(Signal {
        sender: None,
        destination: None,
        path: "/org/bench/Broadcast".into(),
        interface: "org.bench.Broadcast".into(),
        member: "Tick".into(),
        signature: "ay".into(),
        body: byte_array(&payload),
        matched: Vec::new(),
    });
    let reply = Message::Return(Return {
        reply_to: 9,
        signature: "ay".into(),
        body: byte_array(&payload),
        sender: None,
    });
    let same = decoded(&hand::call(7, &payload))? == call
        && decoded(&hand::signal(&payload))? == signal
        && decoded(&hand::reply(9, "ay", &byte_array(&payload)))? == reply;
    let incoming = Message::Incoming(pidbus_protocol::IncomingCall {
        call_id: 11,
        caller: pidbus_protocol::Caller {
            id: pidbus_protocol::PeerId(3),
            pid: Some(1),
            uid: 0,
            gid: 0,
            groups: vec![0, 4],
            pidfs_id: Some(5),
            exe: Some("/usr/bin/true".into()),
            unit: None,
            label: None,
        },
        destination: Destination::Name(ECHO_NAME.into()),
        path: "/".into(),
        interface: ECHO_NAME.into(),
        member: "Echo".into(),
        signature: "ay".into(),
        body: byte_array(&payload),
        no_reply: false,
        caller_serial: 7,
    });
    let bytes = codec::encode(&incoming, LIMIT).map_err(io::Error::other)?;
    let read = hand::incoming(&bytes);
    let read_back = read
        .is_some_and(|c| c.call_id == 11 && c.signature == "ay" && c.body == byte_array(&payload));
    if same && read_back && hand::kind(&bytes) == Some("Incoming") {
        Ok(())
    } else {
        Err(io::Error::other(
            "the thin client's hand-written MessagePack differs from the codec's",
        ))
    }
}

/// The benchmark's messages in MessagePack, written and read by hand.
mod hand {
    use serde::Deserialize;

    use crate::ECHO_NAME;

    fn str(out: &mut Vec<u8>, s: &str) {
        let _ = rmp::encode::write_str(out, s);
    }

    fn map(out: &mut Vec<u8>, len: u32) {
        let _ = rmp::encode::write_map_len(out, len);
    }

    /// The D-Bus `ay` of `payload`, as a body.
    fn byte_array(out: &mut Vec<u8>, payload: &[u8]) {
        let len = 4 + payload.len() as u32;
        let _ = rmp::encode::write_bin_len(out, len);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }

    /// `{"Call": {serial, destination: {"Name": ECHO}, path, interface,
    /// member, signature: "ay", body, no_reply: false, timeout_ms: nil}}`.
    pub fn call(serial: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + payload.len());
        map(&mut out, 1);
        str(&mut out, "Call");
        map(&mut out, 9);
        str(&mut out, "serial");
        let _ = rmp::encode::write_uint(&mut out, serial.into());
        str(&mut out, "destination");
        map(&mut out, 1);
        str(&mut out, "Name");
        str(&mut out, ECHO_NAME);
        for (key, value) in [
            ("path", "/org/bench/Echo"),
            ("interface", ECHO_NAME),
            ("member", "Echo"),
            ("signature", "ay"),
        ] {
            str(&mut out, key);
            str(&mut out, value);
        }
        str(&mut out, "body");
        byte_array(&mut out, payload);
        str(&mut out, "no_reply");
        let _ = rmp::encode::write_bool(&mut out, false);
        str(&mut out, "timeout_ms");
        let _ = rmp::encode::write_nil(&mut out);
        out
    }

    /// The broadcast `{"Signal": {...}}` with `payload`.
    pub fn signal(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + payload.len());
        map(&mut out, 1);
        str(&mut out, "Signal");
        map(&mut out, 8);
        for key in ["sender", "destination"] {
            str(&mut out, key);
            let _ = rmp::encode::write_nil(&mut out);
        }
        for (key, value) in [
            ("path", "/org/bench/Broadcast"),
            ("interface", "org.bench.Broadcast"),
            ("member", "Tick"),
            ("signature", "ay"),
        ] {
            str(&mut out, key);
            str(&mut out, value);
        }
        str(&mut out, "body");
        byte_array(&mut out, payload);
        str(&mut out, "matched");
        let _ = rmp::encode::write_array_len(&mut out, 0);
        out
    }

    /// `{"Return": {reply_to, signature, body}}`, `body` already marshalled.
    pub fn reply(reply_to: u64, signature: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + body.len());
        map(&mut out, 1);
        str(&mut out, "Return");
        map(&mut out, 3);
        str(&mut out, "reply_to");
        let _ = rmp::encode::write_uint(&mut out, reply_to);
        str(&mut out, "signature");
        str(&mut out, signature);
        str(&mut out, "body");
        let _ = rmp::encode::write_bin(&mut out, body);
        out
    }

    /// The variant's name and its fields: a record is a one-entry map.
    fn split(record: &[u8]) -> Option<(&str, &[u8])> {
        let (&marker, rest) = record.split_first()?;
        if marker != 0x81 {
            return None;
        }
        let (&name_marker, rest) = rest.split_first()?;
        if name_marker & 0xe0 != 0xa0 {
            return None;
        }
        let len = usize::from(name_marker & 0x1f);
        let name = std::str::from_utf8(rest.get(..len)?).ok()?;
        Some((name, &rest[len..]))
    }

    /// Which message a record is.
    pub fn kind(record: &[u8]) -> Option<&str> {
        split(record).map(|(name, _)| name)
    }

    /// What the echo service needs of an incoming call.
    #[derive(Deserialize)]
    pub struct Incoming<'a> {
        pub call_id: u64,
        #[serde(borrow)]
        pub signature: &'a str,
        #[serde(borrow, with = "serde_bytes")]
        pub body: &'a [u8],
    }

    /// The call in an `Incoming` record (other fields skipped).
    pub fn incoming(record: &[u8]) -> Option<Incoming<'_>> {
        let (name, fields) = split(record)?;
        if name != "Incoming" {
            return None;
        }
        let mut deserializer = rmp_serde::Deserializer::from_read_ref(fields);
        Incoming::deserialize(&mut deserializer).ok()
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
