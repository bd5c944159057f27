//! The native socket spoken by hand: D-Bus messages, one per record sent
//! (the broker may put several in a record it sends), no SASL. For the tests and test programs that must do what the SDK never
//! does: send bad or out-of-order bytes, hand a connection to another
//! process, leave a call unanswered on purpose.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use pidbus_protocol::dbus::header::{self, Header, MessageType};
use pidbus_protocol::dbus::record;
use pidbus_protocol::dbus::value::{Value, marshal, unmarshal};
use pidbus_protocol::limits::DEFAULT_MAX_RECORD_SIZE;
use pidbus_protocol::transport::{RecvError, SeqPacket};

/// The bus driver's name, path and interface.
pub const DRIVER: &str = "org.freedesktop.DBus";
/// The driver's object path.
pub const DRIVER_PATH: &str = "/org/freedesktop/DBus";
/// pidbus's own interface on the driver.
pub const BUS1: &str = "org.pidbus.Bus1";

/// A method call of `member` on `destination`, as the bytes of one record.
pub fn method_call(
    serial: u32,
    destination: &str,
    path: &str,
    interface: &str,
    member: &str,
    args: &[Value],
) -> Vec<u8> {
    let (signature, body) = marshal(args).unwrap_or_else(|e| panic!("marshal {args:?}: {e}"));
    let header = Header {
        destination: Some(destination.to_owned()),
        path: Some(path.to_owned()),
        interface: Some(interface.to_owned()),
        member: Some(member.to_owned()),
        signature,
        ..Header::new(MessageType::MethodCall, serial)
    };
    header::encode(&header, &body)
}

/// A call of the driver's `interface.member`.
pub fn driver_call(serial: u32, interface: &str, member: &str, args: &[Value]) -> Vec<u8> {
    method_call(serial, DRIVER, DRIVER_PATH, interface, member, args)
}

/// The `Hello` every connection sends first, with serial 1.
pub fn hello_record() -> Vec<u8> {
    driver_call(1, DRIVER, "Hello", &[])
}

/// One message as received: its header, its arguments and descriptors.
#[derive(Debug)]
pub struct RawMessage {
    /// The header as the broker wrote it.
    pub header: Header,
    /// The body's values.
    pub args: Vec<Value>,
    /// The descriptors of its record.
    pub fds: Vec<OwnedFd>,
}

impl RawMessage {
    /// Parses one message, which came with `fds`.
    pub fn parse(bytes: &[u8], fds: Vec<OwnedFd>) -> io::Result<Self> {
        let (header, _, body_at) = header::parse(bytes).map_err(io::Error::other)?;
        let args = unmarshal(&header.signature, &bytes[body_at..]).map_err(io::Error::other)?;
        Ok(RawMessage { header, args, fds })
    }

    /// Whether it answers the call with `serial`.
    pub fn answers(&self, serial: u32) -> bool {
        self.header.reply_serial == Some(serial)
    }

    /// The error's name, if it is one.
    pub fn error_name(&self) -> Option<&str> {
        match self.header.kind {
            MessageType::Error => self.header.error_name.as_deref(),
            _ => None,
        }
    }

    /// The first argument as text (an error's message), or "".
    pub fn text(&self) -> &str {
        self.args.first().and_then(Value::as_str).unwrap_or("")
    }

    /// The value under `key` in the dict (`a{sv}`) that is argument `arg`,
    /// out of its variant.
    pub fn entry(&self, arg: usize, key: &str) -> Option<&Value> {
        let Some(Value::Array { items, .. }) = self.args.get(arg) else {
            return None;
        };
        items.iter().find_map(|item| match item {
            Value::DictEntry(k, v) if k.as_str() == Some(key) => match &**v {
                Value::Variant(inner) => Some(&**inner),
                other => Some(other),
            },
            _ => None,
        })
    }

    /// Whether it is the signal `interface.member`.
    pub fn is_signal(&self, interface: &str, member: &str) -> bool {
        self.header.kind == MessageType::Signal
            && self.header.interface.as_deref() == Some(interface)
            && self.header.member.as_deref() == Some(member)
    }
}

/// The messages of one record the broker sent, each with the descriptors
/// its header announces (taken in order from the record's).
pub fn split_record(data: &[u8], fds: Vec<OwnedFd>) -> io::Result<Vec<RawMessage>> {
    let mut fds = VecDeque::from(fds);
    let mut messages = Vec::new();
    for bytes in record::messages(data) {
        let mut message = RawMessage::parse(bytes.map_err(io::Error::other)?, Vec::new())?;
        let count = message.header.unix_fds as usize;
        if fds.len() < count {
            return Err(io::Error::other(format!(
                "a message announces {count} descriptors; its record has {} left",
                fds.len()
            )));
        }
        message.fds = fds.drain(..count).collect();
        messages.push(message);
    }
    if !fds.is_empty() {
        return Err(io::Error::other(format!(
            "{} descriptors in a record that no message announces",
            fds.len()
        )));
    }
    Ok(messages)
}

/// A connection to the native socket driven by hand.
pub struct RawPeer {
    socket: SeqPacket,
    serial: AtomicU32,
    unique_name: String,
    /// The rest of a record that held several messages.
    pending: Mutex<VecDeque<RawMessage>>,
}

impl RawPeer {
    /// Connects to `path` and says Hello.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        Self::hello(SeqPacket::connect(path)?).await
    }

    /// Says Hello on a connected socket and waits for the unique name.
    pub async fn hello(socket: SeqPacket) -> io::Result<Self> {
        socket.send(&hello_record(), &[]).await?;
        let mut peer = Self::adopt(socket);
        let welcome = peer.answer_to(1).await?;
        match (
            welcome.error_name(),
            welcome.args.first().and_then(Value::as_str),
        ) {
            (None, Some(name)) => peer.unique_name = name.to_owned(),
            _ => return Err(io::Error::other(format!("Hello refused: {welcome:?}"))),
        }
        Ok(peer)
    }

    /// A socket on which a Hello was already said (by another process
    /// that handed it over); its unique name is not known here.
    pub fn adopt(socket: SeqPacket) -> Self {
        RawPeer {
            socket,
            serial: AtomicU32::new(2),
            unique_name: String::new(),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    /// The socket, for sending raw bytes.
    pub fn socket(&self) -> &SeqPacket {
        &self.socket
    }

    /// The unique name the broker gave (empty for an adopted socket).
    pub fn unique_name(&self) -> &str {
        &self.unique_name
    }

    /// The next serial this connection has not used.
    pub fn next_serial(&self) -> u32 {
        self.serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a method call; returns its serial.
    pub async fn send_call(
        &self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: &[Value],
    ) -> io::Result<u32> {
        let serial = self.next_serial();
        let record = method_call(serial, destination, path, interface, member, args);
        self.socket.send(&record, &[]).await?;
        Ok(serial)
    }

    /// Calls the driver's `interface.member` and waits for its answer
    /// (a return or an error; other messages meanwhile are dropped).
    pub async fn call_driver(
        &self,
        interface: &str,
        member: &str,
        args: &[Value],
    ) -> io::Result<RawMessage> {
        let serial = self
            .send_call(DRIVER, DRIVER_PATH, interface, member, args)
            .await?;
        self.answer_to(serial).await
    }

    /// Sends `record` with `fds` as they are.
    pub async fn send_raw(&self, record: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.socket.send(record, fds).await
    }

    /// The next message; an error once the broker closed the connection.
    pub async fn next(&self) -> io::Result<RawMessage> {
        loop {
            if let Some(message) = self.lock_pending().pop_front() {
                return Ok(message);
            }
            let received = match self.socket.recv(DEFAULT_MAX_RECORD_SIZE).await {
                Ok(Some(received)) => received,
                Ok(None) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Err(io::Error::other(e.to_string())),
            };
            let messages = split_record(&received.data, received.fds)?;
            self.lock_pending().extend(messages);
        }
    }

    /// The next message if one is waiting, without waiting: `None` if
    /// none is, an error once the broker closed the connection.
    pub fn try_next(&self) -> io::Result<Option<RawMessage>> {
        if let Some(message) = self.lock_pending().pop_front() {
            return Ok(Some(message));
        }
        let received = match self.socket.try_recv(DEFAULT_MAX_RECORD_SIZE) {
            Ok(Some(received)) => received,
            Ok(None) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        let mut messages = VecDeque::from(split_record(&received.data, received.fds)?);
        let first = messages.pop_front();
        self.lock_pending().extend(messages);
        Ok(first)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, VecDeque<RawMessage>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer to the call with `serial`, dropping what comes before.
    pub async fn answer_to(&self, serial: u32) -> io::Result<RawMessage> {
        loop {
            let message = self.next().await?;
            if message.answers(serial) {
                return Ok(message);
            }
        }
    }

    /// The first message `wanted` accepts, dropping what comes before.
    pub async fn next_such(&self, wanted: impl Fn(&RawMessage) -> bool) -> io::Result<RawMessage> {
        loop {
            let message = self.next().await?;
            if wanted(&message) {
                return Ok(message);
            }
        }
    }
}
