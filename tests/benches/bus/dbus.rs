//! The D-Bus rivals: a private `dbus-daemon`, and a private `dbus-broker`
//! driven through its controller protocol; and the benchmark's D-Bus
//! client, a thin one written here for exactly the messages measured (the
//! fastest D-Bus client available from Rust for this job: no runtime, no
//! introspection, one buffer).

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::net::SocketType;

use crate::wire::{self, Socket};
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

/// The parts of a received message the benchmark looks at.
pub struct Incoming {
    pub kind: u8,
    pub serial: u32,
    pub reply_serial: Option<u32>,
    /// The sending connection's unique name.
    pub sender: Option<String>,
    /// An error's name.
    pub error_name: Option<String>,
    /// Offset of the body in the message.
    pub body_at: usize,
}

fn read_u32(msg: &[u8], at: usize) -> io::Result<u32> {
    msg.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| io::Error::other("truncated D-Bus message"))
}

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

fn parse(msg: &[u8]) -> io::Result<Incoming> {
    let fields_len = read_u32(msg, 12)? as usize;
    let end = 16 + fields_len;
    let mut at = 16;
    let mut incoming = Incoming {
        kind: msg[1],
        serial: read_u32(msg, 8)?,
        reply_serial: None,
        sender: None,
        error_name: None,
        body_at: align(end, 8),
    };
    while at < end {
        at = align(at, 8);
        let code = msg[at];
        let sig_len = msg[at + 1] as usize;
        let sig = msg[at + 2];
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
                let text = msg
                    .get(at + 4..at + 4 + len)
                    .ok_or_else(|| io::Error::other("truncated"))?;
                let text = || Some(String::from_utf8_lossy(text).into_owned());
                match code {
                    FIELD_SENDER => incoming.sender = text(),
                    FIELD_ERROR_NAME => incoming.error_name = text(),
                    _ => {}
                }
                at += 4 + len + 1;
            }
            b'g' => {
                let len = msg[at] as usize;
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

/// A D-Bus connection over a stream socket, with its read buffer.
pub struct Connection {
    socket: Socket,
    buf: Vec<u8>,
    next_serial: u32,
}

impl Connection {
    /// Connects, authenticates (EXTERNAL) and, on a bus, says Hello.
    pub fn connect(path: &Path, hello: bool) -> io::Result<Self> {
        let socket = Socket::connect(path, SocketType::STREAM)?;
        Self::from_socket(socket, hello)
    }

    fn from_socket(socket: Socket, hello: bool) -> io::Result<Self> {
        let uid = rustix::process::getuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        socket
            .send(format!("\0AUTH EXTERNAL {hex}\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n").as_bytes())?;
        let mut conn = Connection {
            socket,
            buf: Vec::with_capacity(1 << 16),
            next_serial: 1,
        };
        // "OK <guid>\r\n" then "AGREE_UNIX_FD\r\n"; messages follow.
        let mut lines = 0;
        while lines < 2 {
            conn.fill()?;
            while lines < 2 {
                let Some(nl) = conn.buf.iter().position(|&b| b == b'\n') else {
                    break;
                };
                let line: Vec<u8> = conn.buf.drain(..=nl).collect();
                if !(line.starts_with(b"OK ") || line.starts_with(b"AGREE_UNIX_FD")) {
                    return Err(io::Error::other(format!(
                        "D-Bus auth refused: {}",
                        String::from_utf8_lossy(&line)
                    )));
                }
                lines += 1;
            }
        }
        if hello {
            conn.bus_call("Hello", "", &[])?;
        }
        Ok(conn)
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 65536];
        let n = self.socket.recv(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "D-Bus peer closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn serial(&mut self) -> u32 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }

    /// The next complete message (blocking), without its bytes.
    fn next(&mut self) -> io::Result<(Incoming, Vec<u8>)> {
        loop {
            if let Some(len) = message_len(&self.buf)?
                && self.buf.len() >= len
            {
                let msg: Vec<u8> = self.buf.drain(..len).collect();
                return Ok((parse(&msg)?, msg));
            }
            self.fill()?;
        }
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

    fn wait_reply(&mut self, serial: u32) -> io::Result<()> {
        loop {
            let (msg, bytes) = self.next()?;
            if msg.reply_serial == Some(serial) {
                return match msg.kind {
                    ERROR => Err(io::Error::other(format!(
                        "D-Bus error {}: {}",
                        msg.error_name.as_deref().unwrap_or("?"),
                        String::from_utf8_lossy(&bytes[msg.body_at..])
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
}

fn string_body(s: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(s);
    w.buf
}

fn bytes_body(data: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(data);
    w.buf
}

impl Client for Connection {
    fn call(&mut self, serial: u32, payload: &[u8]) -> io::Result<()> {
        let _ = serial;
        let own = self.serial();
        let body = bytes_body(payload);
        let msg = Outgoing::call(
            own,
            Some(ECHO_NAME),
            "/org/bench/Echo",
            ECHO_NAME,
            "Echo",
            "ay",
            &body,
        );
        self.socket.send(&msg.encode())
    }

    fn reply(&mut self) -> io::Result<()> {
        loop {
            let (msg, _) = self.next()?;
            match msg.kind {
                METHOD_RETURN => return Ok(()),
                ERROR => return Err(io::Error::other("the echo service answered with an error")),
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
        let mut count = 0;
        loop {
            match self.fill() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while let Some(len) = message_len(&self.buf)?
            && self.buf.len() >= len
        {
            if self.buf[1] == SIGNAL {
                count += 1;
            }
            self.buf.drain(..len);
        }
        Ok(count)
    }

    fn socket(&self) -> &Socket {
        &self.socket
    }
}

/// The echo service: owns `ECHO_NAME` and returns every call's body.
fn serve_echo(mut conn: Connection) -> io::Result<()> {
    conn.bus_call("RequestName", "su", &{
        let mut w = Writer::default();
        w.string(ECHO_NAME);
        w.u32(4); // DBUS_NAME_FLAG_DO_NOT_QUEUE
        w.buf
    })?;
    loop {
        let (msg, bytes) = conn.next()?;
        if msg.kind != METHOD_CALL {
            continue;
        }
        let serial = conn.serial();
        let reply = Outgoing {
            kind: METHOD_RETURN,
            serial,
            path: None,
            interface: None,
            member: None,
            destination: msg.sender.as_deref(),
            reply_serial: Some(msg.serial),
            signature: "ay",
            unix_fds: 0,
            body: &bytes[msg.body_at..],
        };
        conn.socket.send(&reply.encode())?;
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
        std::thread::spawn(move || serve_echo(service));
        // The echo name is owned once a call to it succeeds; until the
        // service's RequestName is through, calls fail with ServiceUnknown.
        let mut probe = rival.connect()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            probe.call(1, b"ready")?;
            match probe.reply() {
                Ok(()) => return Ok(rival),
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
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
}
