//! The D-Bus rivals: a private `dbus-daemon`, and a private `dbus-broker`
//! driven through its controller protocol; and the benchmark's D-Bus
//! client, a thin one written here for exactly the messages measured (the
//! fastest D-Bus client available from Rust for this job: no runtime, no
//! introspection, one buffer).
//!
//! Every message on pidbus is a D-Bus message too, so the same client
//! (the same writer, parser, echo service) drives pidbus's native socket:
//! only the framing differs, a byte stream after SASL or one SEQPACKET
//! record per message with no SASL ([`Framing`]). The two sockets are then
//! compared with one client.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::net::SocketType;

use crate::wire::{self, Records, Socket};
use crate::{Client, ECHO_NAME, Rival};

const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const SIGNAL: u8 = 4;

const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SENDER: u8 = 7;
const FIELD_SIGNATURE: u8 = 8;
const FIELD_UNIX_FDS: u8 = 9;

/// Little-endian D-Bus marshalling into one buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    fn align(&mut self, n: usize) {
        while !self.buf.len().is_multiple_of(n) {
            self.buf.push(0);
        }
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn boolean(&mut self, v: bool) {
        self.u32(v.into());
    }
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    fn signature(&mut self, s: &str) {
        self.u8(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    /// Writes an array whose elements need `align`, filled by `body`.
    fn array(&mut self, align: usize, body: impl FnOnce(&mut Self)) {
        self.u32(0);
        let len_at = self.buf.len() - 4;
        self.align(align);
        let start = self.buf.len();
        body(self);
        let len = (self.buf.len() - start) as u32;
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
    fn bytes(&mut self, data: &[u8]) {
        self.u32(data.len() as u32);
        self.buf.extend_from_slice(data);
    }
}

/// A message to send: header fields and an already marshalled body.
pub struct Outgoing<'a> {
    pub kind: u8,
    pub serial: u32,
    pub path: Option<&'a str>,
    pub interface: Option<&'a str>,
    pub member: Option<&'a str>,
    pub destination: Option<&'a str>,
    pub reply_serial: Option<u32>,
    pub signature: &'a str,
    pub unix_fds: u32,
    pub body: &'a [u8],
}

impl<'a> Outgoing<'a> {
    /// The whole message, little-endian: one record on the native socket,
    /// one write on a stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(b'l');
        w.u8(self.kind);
        w.u8(0);
        w.u8(1);
        w.u32(self.body.len() as u32);
        w.u32(self.serial);
        w.array(8, |w| {
            let field = |w: &mut Writer, code: u8, sig: &str, value: &dyn Fn(&mut Writer)| {
                w.align(8);
                w.u8(code);
                w.signature(sig);
                value(w);
            };
            if let Some(path) = self.path {
                field(w, FIELD_PATH, "o", &|w| w.string(path));
            }
            if let Some(interface) = self.interface {
                field(w, FIELD_INTERFACE, "s", &|w| w.string(interface));
            }
            if let Some(member) = self.member {
                field(w, FIELD_MEMBER, "s", &|w| w.string(member));
            }
            if let Some(destination) = self.destination {
                field(w, FIELD_DESTINATION, "s", &|w| w.string(destination));
            }
            if let Some(serial) = self.reply_serial {
                field(w, FIELD_REPLY_SERIAL, "u", &|w| w.u32(serial));
            }
            if !self.signature.is_empty() {
                field(w, FIELD_SIGNATURE, "g", &|w| w.signature(self.signature));
            }
            if self.unix_fds > 0 {
                field(w, FIELD_UNIX_FDS, "u", &|w| w.u32(self.unix_fds));
            }
        });
        w.align(8);
        w.buf.extend_from_slice(self.body);
        w.buf
    }

    /// A method call, expecting a reply.
    fn call(
        serial: u32,
        destination: Option<&'a str>,
        path: &'a str,
        interface: &'a str,
        member: &'a str,
        signature: &'a str,
        body: &'a [u8],
    ) -> Self {
        Outgoing {
            kind: METHOD_CALL,
            serial,
            path: Some(path),
            interface: Some(interface),
            member: Some(member),
            destination,
            reply_serial: None,
            signature,
            unix_fds: 0,
            body,
        }
    }
}

/// The parts of a received message the benchmark looks at, borrowed from
/// the connection's read buffer (nothing is copied or allocated per
/// message).
pub struct Incoming<'a> {
    /// The message type (`METHOD_CALL`, `METHOD_RETURN`, `ERROR`, `SIGNAL`).
    pub kind: u8,
    /// The sender's serial of this message.
    pub serial: u32,
    /// The serial of the call a return or error answers.
    pub reply_serial: Option<u32>,
    /// The sending connection's unique name.
    pub sender: Option<&'a str>,
    /// An error's name.
    pub error_name: Option<&'a str>,
    /// The marshalled body.
    pub body: &'a [u8],
}

/// A message whose header points past its end.
fn truncated() -> io::Error {
    io::Error::other("truncated D-Bus message")
}

/// The byte at `at`, if the message has it.
fn read_u8(msg: &[u8], at: usize) -> io::Result<u8> {
    msg.get(at).copied().ok_or_else(truncated)
}

/// The little-endian `u32` at `at`, if the message has it.
fn read_u32(msg: &[u8], at: usize) -> io::Result<u32> {
    msg.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(truncated)
}

/// `at` rounded up to a multiple of `n`.
fn align(at: usize, n: usize) -> usize {
    at.div_ceil(n) * n
}

/// Length of the message at the start of `buf`, once its header is there.
fn message_len(buf: &[u8]) -> io::Result<Option<usize>> {
    if buf.len() < 16 {
        return Ok(None);
    }
    if buf[0] != b'l' {
        return Err(io::Error::other("big-endian D-Bus message: not expected"));
    }
    let body = read_u32(buf, 4)? as usize;
    let fields = read_u32(buf, 12)? as usize;
    Ok(Some(align(16 + fields, 8) + body))
}

/// Whether `msg` (a whole message) is a signal.
fn is_signal(msg: &[u8]) -> bool {
    msg.get(1) == Some(&SIGNAL)
}

/// Reads the header fields the benchmark needs from one whole message;
/// every offset is checked, so a malformed message is an error, never a
/// panic.
fn parse(msg: &[u8]) -> io::Result<Incoming<'_>> {
    let fields_len = read_u32(msg, 12)? as usize;
    let end = 16 + fields_len;
    let mut at = 16;
    let mut incoming = Incoming {
        kind: read_u8(msg, 1)?,
        serial: read_u32(msg, 8)?,
        reply_serial: None,
        sender: None,
        error_name: None,
        body: msg.get(align(end, 8)..).ok_or_else(truncated)?,
    };
    while at < end {
        at = align(at, 8);
        let code = read_u8(msg, at)?;
        let sig_len = read_u8(msg, at + 1)? as usize;
        let sig = read_u8(msg, at + 2)?;
        at += 2 + sig_len + 1;
        match sig {
            b'u' => {
                at = align(at, 4);
                let v = read_u32(msg, at)?;
                if code == FIELD_REPLY_SERIAL {
                    incoming.reply_serial = Some(v);
                }
                at += 4;
            }
            b's' | b'o' => {
                at = align(at, 4);
                let len = read_u32(msg, at)? as usize;
                let text = msg.get(at + 4..at + 4 + len).ok_or_else(truncated)?;
                let text = std::str::from_utf8(text)
                    .map_err(|_| io::Error::other("a header string that is not UTF-8"))?;
                match code {
                    FIELD_SENDER => incoming.sender = Some(text),
                    FIELD_ERROR_NAME => incoming.error_name = Some(text),
                    _ => {}
                }
                at += 4 + len + 1;
            }
            b'g' => {
                let len = read_u8(msg, at)? as usize;
                at += 1 + len + 1;
            }
            other => {
                return Err(io::Error::other(format!(
                    "unexpected header field type {}",
                    other as char
                )));
            }
        }
    }
    Ok(incoming)
}

/// What a stream read asks for: everything waiting, up to 64 KiB, as the
/// records' `recvmmsg` takes every record waiting, so the thin clients of
/// both sockets read alike.
const READ_ROOM: usize = 1 << 16;

/// How a connection's messages are framed on its socket: the one
/// difference between pidbus's two sockets that a client sees (besides
/// SASL, done before any message).
enum Framing {
    /// A byte stream (the D-Bus socket of every bus): messages are cut out
    /// of one read buffer; `start` is where the first unread byte is.
    Stream { buf: Vec<u8>, start: usize },
    /// SEQPACKET records (pidbus's native socket) of whole messages
    /// (one each from a client, one or more from the broker), every
    /// record waiting taken by one `recvmmsg`.
    Records(Records),
}

impl Framing {
    /// A stream's framing, its buffer ready for one full read.
    fn stream() -> Self {
        Framing::Stream {
            buf: Vec::with_capacity(READ_ROOM),
            start: 0,
        }
    }

    /// The next whole message, waiting for it.
    fn next<'a>(&'a mut self, socket: &Socket) -> io::Result<&'a [u8]> {
        match self {
            Framing::Stream { buf, start } => loop {
                if let Some(len) = message_len(&buf[*start..])?
                    && buf.len() - *start >= len
                {
                    let at = *start;
                    *start += len;
                    return Ok(&buf[at..at + len]);
                }
                fill(socket, buf, start)?;
            },
            Framing::Records(records) => {
                let message = records.next_message(socket)?;
                if message.is_empty() {
                    return Err(closed());
                }
                Ok(message)
            }
        }
    }

    /// Reads everything waiting on a non-blocking socket; how many signals
    /// came (other messages are dropped).
    fn count_signals(&mut self, socket: &Socket) -> io::Result<usize> {
        match self {
            Framing::Records(records) => records.drain_messages_matching(socket, is_signal),
            Framing::Stream { buf, start } => {
                loop {
                    match fill(socket, buf, start) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                let mut count = 0;
                while let Some(len) = message_len(&buf[*start..])?
                    && buf.len() - *start >= len
                {
                    count += usize::from(is_signal(&buf[*start..]));
                    *start += len;
                }
                Ok(count)
            }
        }
    }
}

/// The end of the connection.
fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the bus closed the connection",
    )
}

/// One read of a stream into `buf`, after dropping the messages before
/// `start` (already read) so a partial message moves to the front.
fn fill(socket: &Socket, buf: &mut Vec<u8>, start: &mut usize) -> io::Result<()> {
    buf.drain(..*start);
    *start = 0;
    if buf.capacity() - buf.len() < READ_ROOM / 2 {
        buf.reserve(READ_ROOM);
    }
    match socket.recv_appending(buf)? {
        0 => Err(closed()),
        _ => Ok(()),
    }
}

/// A D-Bus connection to a bus, over a stream (after SASL) or over
/// SEQPACKET records (no SASL): the same messages, the same code.
pub struct Connection {
    socket: Socket,
    framing: Framing,
    next_serial: u32,
}

impl Connection {
    /// Connects to a D-Bus stream socket, authenticates (EXTERNAL) and, on
    /// a bus, says Hello.
    pub fn connect(path: &Path, hello: bool) -> io::Result<Self> {
        let socket = Socket::connect(path, SocketType::STREAM)?;
        Self::from_socket(socket, hello)
    }

    /// Connects to pidbus's native socket: no SASL (the kernel told the
    /// broker who connected), `Hello` as the first record.
    pub fn connect_native(path: &Path) -> io::Result<Self> {
        let socket = Socket::connect(path, SocketType::SEQPACKET)?;
        let mut conn = Connection {
            socket,
            framing: Framing::Records(Records::default()),
            next_serial: 1,
        };
        conn.bus_call("Hello", "", &[])?;
        Ok(conn)
    }

    fn from_socket(socket: Socket, hello: bool) -> io::Result<Self> {
        let uid = rustix::process::getuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        socket
            .send(format!("\0AUTH EXTERNAL {hex}\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n").as_bytes())?;
        let mut conn = Connection {
            socket,
            framing: Framing::stream(),
            next_serial: 1,
        };
        // "OK <guid>\r\n" then "AGREE_UNIX_FD\r\n"; messages follow.
        for _ in 0..2 {
            let line = conn.auth_line()?;
            if !(line.starts_with(b"OK ") || line.starts_with(b"AGREE_UNIX_FD")) {
                return Err(io::Error::other(format!(
                    "D-Bus auth refused: {}",
                    String::from_utf8_lossy(&line)
                )));
            }
        }
        if hello {
            conn.bus_call("Hello", "", &[])?;
        }
        Ok(conn)
    }

    /// The next SASL line of a stream connection, with its `\r\n`.
    fn auth_line(&mut self) -> io::Result<Vec<u8>> {
        let Framing::Stream { buf, start } = &mut self.framing else {
            return Err(io::Error::other("SASL on a records connection"));
        };
        loop {
            if let Some(nl) = buf[*start..].iter().position(|&b| b == b'\n') {
                let line = buf[*start..=*start + nl].to_vec();
                *start += nl + 1;
                return Ok(line);
            }
            fill(&self.socket, buf, start)?;
        }
    }

    /// A serial for the next message this connection sends.
    fn serial(&mut self) -> u32 {
        let serial = self.next_serial;
        // Serial 0 is invalid; wrapping is far beyond any run.
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        serial
    }

    /// The next whole message (blocking), parsed.
    fn next(&mut self) -> io::Result<Incoming<'_>> {
        parse(self.framing.next(&self.socket)?)
    }

    /// Calls a method of the bus driver and waits for its answer.
    fn bus_call(&mut self, member: &str, signature: &str, body: &[u8]) -> io::Result<()> {
        let serial = self.serial();
        let msg = Outgoing::call(
            serial,
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            member,
            signature,
            body,
        );
        self.socket.send(&msg.encode())?;
        self.wait_reply(serial)
    }

    /// Waits for the answer to call `serial`; an error answer is an error.
    fn wait_reply(&mut self, serial: u32) -> io::Result<()> {
        loop {
            let msg = self.next()?;
            if msg.reply_serial == Some(serial) {
                return match msg.kind {
                    ERROR => Err(io::Error::other(format!(
                        "D-Bus error {}: {}",
                        msg.error_name.unwrap_or("?"),
                        String::from_utf8_lossy(msg.body)
                    ))),
                    _ => Ok(()),
                };
            }
        }
    }

    /// Calls `member` on an object of a peer-to-peer connection (no bus).
    pub fn call_p2p(
        &mut self,
        path: &str,
        interface: &str,
        member: &str,
        signature: &str,
        body: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        let serial = self.serial();
        let mut msg = Outgoing::call(serial, None, path, interface, member, signature, body);
        msg.unix_fds = fds.len() as u32;
        let bytes = msg.encode();
        self.socket.send_with_fds(&bytes, fds)?;
        self.wait_reply(serial)
    }

    /// Sends a call of the echo service with `payload`; its serial.
    fn send_echo(&mut self, payload: &[u8]) -> io::Result<u32> {
        let serial = self.serial();
        let body = bytes_body(payload);
        let msg = Outgoing::call(
            serial,
            Some(ECHO_NAME),
            "/org/bench/Echo",
            ECHO_NAME,
            "Echo",
            "ay",
            &body,
        );
        self.socket.send(&msg.encode())?;
        Ok(serial)
    }

    /// The benchmark's correctness check of a bus and its echo service:
    /// a call with `payload` is answered with a method return carrying
    /// `payload` back, so the thin client's calls, the echo service's
    /// replies and their routing are understood by that bus.
    pub fn check_echo(&mut self, payload: &[u8]) -> io::Result<()> {
        let serial = self.send_echo(payload)?;
        let expected = bytes_body(payload);
        loop {
            let msg = self.next()?;
            if msg.reply_serial != Some(serial) {
                continue;
            }
            return match msg.kind {
                METHOD_RETURN if msg.body == expected.as_slice() => Ok(()),
                METHOD_RETURN => Err(io::Error::other(
                    "the echo service answered with other bytes than were sent",
                )),
                _ => Err(io::Error::other(format!(
                    "the echo call failed: {}",
                    msg.error_name.unwrap_or("?")
                ))),
            };
        }
    }
}

/// The body of one `s`.
fn string_body(s: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(s);
    w.buf
}

/// The body of one `ay`.
fn bytes_body(data: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(data);
    w.buf
}

impl Client for Connection {
    fn call(&mut self, serial: u32, payload: &[u8]) -> io::Result<()> {
        // The connection numbers its own messages (D-Bus serials must be
        // unique per connection, and the bus driver's calls share them).
        let _ = serial;
        self.send_echo(payload).map(drop)
    }

    fn reply(&mut self) -> io::Result<()> {
        loop {
            let msg = self.next()?;
            match msg.kind {
                METHOD_RETURN => return Ok(()),
                ERROR => {
                    return Err(io::Error::other(format!(
                        "the echo service answered with the error {}",
                        msg.error_name.unwrap_or("?")
                    )));
                }
                _ => {}
            }
        }
    }

    fn subscribe(&mut self) -> io::Result<()> {
        self.bus_call(
            "AddMatch",
            "s",
            &string_body("type='signal',interface='org.bench.Broadcast'"),
        )
    }

    fn add_idle_rules(&mut self, count: usize) -> io::Result<()> {
        for i in 0..count {
            let rule = format!("type='signal',interface='org.bench.Broadcast',member='Idle{i}'");
            self.bus_call("AddMatch", "s", &string_body(&rule))?;
        }
        Ok(())
    }

    fn emit(&mut self, payload: &[u8]) -> io::Result<()> {
        let serial = self.serial();
        let body = bytes_body(payload);
        let msg = Outgoing {
            kind: SIGNAL,
            serial,
            path: Some("/org/bench/Broadcast"),
            interface: Some("org.bench.Broadcast"),
            member: Some("Tick"),
            destination: None,
            reply_serial: None,
            signature: "ay",
            unix_fds: 0,
            body: &body,
        };
        self.socket.send(&msg.encode())
    }

    fn count_signals(&mut self) -> io::Result<usize> {
        self.framing.count_signals(&self.socket)
    }

    fn socket(&self) -> &Socket {
        &self.socket
    }
}

/// Makes `service` own `ECHO_NAME`, serves echo calls with it on a thread
/// of its own, and checks the echo through `probe` (another connection to
/// the same bus): the benchmark refuses to measure a bus that does not
/// route the thin client's messages as meant.
pub fn start_echo(mut service: Connection, mut probe: Connection) -> io::Result<()> {
    service.bus_call("RequestName", "su", &{
        let mut w = Writer::default();
        w.string(ECHO_NAME);
        w.u32(4); // DBUS_NAME_FLAG_DO_NOT_QUEUE
        w.buf
    })?;
    std::thread::spawn(move || serve_echo(service));
    probe.check_echo(b"ready")
}

/// The echo service: returns every call's body to its sender.
fn serve_echo(conn: Connection) -> io::Result<()> {
    let Connection {
        socket,
        mut framing,
        mut next_serial,
    } = conn;
    loop {
        let msg = parse(framing.next(&socket)?)?;
        if msg.kind != METHOD_CALL {
            continue;
        }
        let reply = Outgoing {
            kind: METHOD_RETURN,
            serial: next_serial,
            path: None,
            interface: None,
            member: None,
            destination: msg.sender,
            reply_serial: Some(msg.serial),
            signature: "ay",
            unix_fds: 0,
            body: msg.body,
        };
        next_serial = next_serial.wrapping_add(1).max(1);
        socket.send(&reply.encode())?;
    }
}

/// A D-Bus broker process listening on a socket path, with its echo service.
pub struct DbusRival {
    key: &'static str,
    socket: PathBuf,
    child: wire::Server,
    /// dbus-broker's controller connection: closing it stops the broker.
    _controller: Option<Connection>,
}

impl DbusRival {
    /// The rival once its broker listens: the echo service started and
    /// checked.
    fn finish(
        key: &'static str,
        socket: PathBuf,
        child: wire::Server,
        controller: Option<Connection>,
    ) -> io::Result<Self> {
        let rival = DbusRival {
            key,
            socket,
            child,
            _controller: controller,
        };
        let service = wire::retry(|| Connection::connect(&rival.socket, true))?;
        start_echo(service, Connection::connect(&rival.socket, true)?)?;
        Ok(rival)
    }

    /// pidbusd's D-Bus face, driven by the same thin D-Bus client as the
    /// D-Bus rivals (pidbusd's limits as for the native rival).
    pub fn pidbus_dbus(binary: &Path, dir: &Path, policy: Option<&Path>) -> io::Result<Self> {
        let socket = dir.join("pidbus-dbus.sock");
        let mut command =
            crate::pidbus::pidbusd(binary, dir, &dir.join("pidbus-native.sock"), policy)?;
        command.arg("--dbus-listen").arg(&socket);
        let child = wire::Server(
            command
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
        Self::finish("pidbus_dbus", socket, child, None)
    }

    /// A private `dbus-daemon` with a generated allow-all configuration.
    pub fn dbus_daemon(dir: &Path) -> io::Result<Self> {
        let socket = dir.join("dbus-daemon.sock");
        let config = dir.join("dbus-daemon.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*" eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_completed_connections">100000</limit>
  <limit name="max_incomplete_connections">10000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
</busconfig>
"#,
                socket.display()
            ),
        )?;
        let child = wire::Server(
            Command::new("dbus-daemon")
                .arg("--nofork")
                .arg("--nopidfile")
                .arg(format!("--config-file={}", config.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
        Self::finish("dbus_daemon", socket, child, None)
    }

    /// A private `dbus-broker`, set up the way `dbus-broker-launch` does it:
    /// a listening socket handed over the controller connection with an
    /// allow-all policy (`AddListener` on `org.bus1.DBus.Broker`).
    pub fn dbus_broker(dir: &Path) -> io::Result<Self> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags};
        let socket = dir.join("dbus-broker.sock");
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&listener, &SocketAddrUnix::new(&socket)?)?;
        rustix::net::listen(&listener, 4096)?;
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // The controller end becomes the broker's stdin: `--controller 0`.
        let child = wire::Server(
            Command::new("dbus-broker")
                .args([
                    "--controller",
                    "0",
                    "--machine-id",
                    "0123456789abcdef0123456789abcdef",
                ])
                .args([
                    "--max-bytes",
                    "100000000000",
                    "--max-fds",
                    "1000000",
                    "--max-matches",
                    "1000000",
                    "--max-objects",
                    "1000000",
                ])
                .stdin(Stdio::from(theirs))
                .stdout(Stdio::null())
                .spawn()?,
        );
        let mut controller = Connection::from_socket(Socket(ours), false)?;
        let mut w = Writer::default();
        w.string("/org/bus1/DBus/Listener/0");
        w.u32(0); // fd index 0
        w.signature(POLICY_SIGNATURE);
        allow_all_policy(&mut w);
        controller.call_p2p(
            "/org/bus1/DBus/Broker",
            "org.bus1.DBus.Broker",
            "AddListener",
            "ohv",
            &w.buf,
            &[listener.as_fd()],
        )?;
        drop(listener);
        Self::finish("dbus_broker", socket, child, Some(controller))
    }
}

/// dbus-broker's policy as its launcher sends it (dbus-broker 33): per-uid
/// batches (uid -1: everyone else), per-gid/uid-range batches, SELinux name
/// labels, AppArmor on/off and the bus's label. A batch: connect verdict,
/// own rules, send rules, receive rules; a verdict is (allow, priority); a
/// send/receive rule matches name, path, interface, member, message type,
/// broadcast and a range of fd counts ("" and 0: anything).
const POLICY_SIGNATURE: &str =
    "(a(u(bta(btbs)a(btssssuutt)a(btssssuutt)))a(buu(bta(btbs)a(btssssuutt)a(btssssuutt)))a(ss)bs)";

/// One batch for every uid that allows connecting, owning any name,
/// sending and receiving anything.
fn allow_all_policy(w: &mut Writer) {
    w.align(8);
    w.array(8, |w| {
        w.align(8);
        w.u32(u32::MAX);
        w.align(8);
        w.boolean(true);
        w.u64(1);
        w.array(8, |w| {
            w.align(8);
            w.boolean(true);
            w.u64(1);
            w.boolean(true);
            w.string("");
        });
        for _ in 0..2 {
            w.array(8, |w| {
                w.align(8);
                w.boolean(true);
                w.u64(1);
                for _ in 0..4 {
                    w.string("");
                }
                w.u32(0);
                w.u32(0);
                w.u64(0);
                w.u64(u64::MAX);
            });
        }
    });
    w.array(8, |_| {});
    w.array(8, |_| {});
    w.boolean(false);
    w.string("");
}

impl Rival for DbusRival {
    fn key(&self) -> &'static str {
        self.key
    }

    fn broker_pid(&self) -> u32 {
        self.child.pid()
    }

    fn connect(&self) -> io::Result<Box<dyn Client>> {
        Ok(Box::new(Connection::connect(&self.socket, true)?))
    }

    fn socket_path(&self) -> Option<&Path> {
        Some(&self.socket)
    }
}
