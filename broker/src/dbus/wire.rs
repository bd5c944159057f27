//! How the core's messages reach a peer: each written as a D-Bus message
//! (little-endian), with the header fields a D-Bus client expects (the
//! sender's unique name, its own as destination, the caller's serial on a
//! call, the serial it answers on a reply) — on the D-Bus stream socket as
//! bytes, on the native socket as records of whole messages (a burst for
//! one peer packed into few records).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use pidbus_protocol::dbus::caller;
use pidbus_protocol::dbus::header::{self, Header, MessageType, NO_REPLY_EXPECTED};
use pidbus_protocol::dbus::value::{Value, marshal};
use pidbus_protocol::transport::{MAX_BATCH, OutRecord, SeqPacket, Stream};
use pidbus_protocol::{BusEvent, ExitStatus, MatchRule, Message, Monitored, PeerId, ProcessEvent};

use crate::bus::outbox::{EncodeError, SharedEncodings, Wire};
use crate::bus::{DRIVER_NAME, DRIVER_PATH};
use crate::dbus::driver::PIDBUS_INTERFACE;
use crate::dbus::errors;

/// The socket a peer is on.
#[derive(Debug, Clone)]
pub enum Socket {
    /// The D-Bus socket (`SOCK_STREAM`): messages are bytes in a stream.
    Stream(Arc<Stream>),
    /// The native socket (`SOCK_SEQPACKET`): records of whole messages.
    Records(Arc<SeqPacket>),
}

/// A peer's socket, as its outbox writes to it.
#[derive(Debug)]
pub struct DbusWire {
    socket: Socket,
    /// The peer's unique id, once it said Hello.
    me: OnceLock<PeerId>,
    /// Serials of the messages the bus itself sends this peer.
    serial: AtomicU32,
    /// The peer negotiated descriptor passing.
    fd_passing: bool,
    /// Longest message the peer is sent.
    max_message: usize,
    /// The peer asked for the verified caller on every call it receives
    /// (`org.pidbus.Bus1.AttachCaller`).
    attach_caller: AtomicBool,
    /// Set when the peer became a monitor: the rules selecting what it is
    /// shown (none: everything).
    monitor: Mutex<Option<Vec<MatchRule>>>,
}

impl DbusWire {
    /// The wire of `socket`, whose peer negotiated fd passing or not,
    /// sending messages of at most `max_message` bytes.
    pub fn new(socket: Socket, fd_passing: bool, max_message: usize) -> Self {
        DbusWire {
            socket,
            me: OnceLock::new(),
            serial: AtomicU32::new(0),
            fd_passing,
            max_message,
            attach_caller: AtomicBool::new(false),
            monitor: Mutex::new(None),
        }
    }

    /// Records the peer's unique id (given at Hello).
    pub fn set_id(&self, id: PeerId) {
        let _ = self.me.set(id);
    }

    /// From now on, shows the peer only the traffic `rules` select (all of
    /// it if empty), as a monitor.
    pub fn become_monitor(&self, rules: Vec<MatchRule>) {
        *self.monitor.lock().unwrap_or_else(PoisonError::into_inner) = Some(rules);
    }

    /// From now on, every call the peer receives carries its caller's
    /// verified identity, or (`false`) none does.
    pub fn attach_caller(&self, enabled: bool) {
        self.attach_caller.store(enabled, Ordering::Relaxed);
    }

    /// Whether the peer is on the native socket (records of whole messages).
    pub fn carries_records(&self) -> bool {
        matches!(self.socket, Socket::Records(_))
    }

    /// Whether the peer negotiated descriptor passing.
    pub fn fd_passing(&self) -> bool {
        self.fd_passing
    }

    /// Whether the peer is a monitor.
    pub fn is_monitor(&self) -> bool {
        self.monitor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn next_serial(&self) -> u32 {
        loop {
            let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if serial != 0 {
                return serial;
            }
        }
    }

    fn my_name(&self) -> Option<String> {
        self.me.get().map(ToString::to_string)
    }

    /// The bus's reply to this peer's call `reply_serial`, holding `values`
    /// (which index `fds` descriptors sent with it).
    pub fn driver_reply(
        &self,
        reply_serial: u32,
        values: &[Value],
        fds: usize,
    ) -> Result<Vec<u8>, EncodeError> {
        let (signature, body) =
            marshal(values).map_err(|e| EncodeError::Unrepresentable(e.to_string()))?;
        let header = Header {
            reply_serial: Some(reply_serial),
            sender: Some(DRIVER_NAME.into()),
            destination: self.my_name(),
            signature,
            unix_fds: u32::try_from(fds).unwrap_or(u32::MAX),
            ..Header::new(MessageType::MethodReturn, self.next_serial())
        };
        Ok(header::encode(&header, &body))
    }

    /// The bus's error `name` answering this peer's call `reply_serial`.
    pub fn driver_error(&self, reply_serial: u32, name: &str, message: &str) -> Vec<u8> {
        self.error(reply_serial, DRIVER_NAME, name, message)
    }

    /// A signal of the bus to this peer alone (`NameAcquired`, `NameLost`).
    pub fn driver_signal(&self, member: &str, values: &[Value]) -> Vec<u8> {
        self.bus_signal(DRIVER_NAME, member, values)
    }

    /// A signal of the bus's `interface` to this peer alone.
    fn bus_signal(&self, interface: &str, member: &str, values: &[Value]) -> Vec<u8> {
        let (signature, body) = marshal(values).unwrap_or_default();
        let header = Header {
            path: Some(DRIVER_PATH.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            sender: Some(DRIVER_NAME.into()),
            destination: self.my_name(),
            signature,
            ..Header::new(MessageType::Signal, self.next_serial())
        };
        header::encode(&header, &body)
    }

    fn error(&self, reply_serial: u32, sender: &str, name: &str, message: &str) -> Vec<u8> {
        let body = text_body(message);
        let header = Header {
            error_name: Some(name.to_owned()),
            reply_serial: Some(reply_serial),
            sender: Some(sender.to_owned()),
            destination: self.my_name(),
            signature: "s".into(),
            ..Header::new(MessageType::Error, self.next_serial())
        };
        header::encode(&header, &body)
    }

    /// The message as a D-Bus peer receives it, `None` for what D-Bus has
    /// no message for.
    fn write(&self, message: &Message, fds: usize) -> Result<Vec<u8>, EncodeError> {
        let header = match message {
            Message::Incoming(call) => {
                let mut header = Header {
                    path: Some(call.path.clone()),
                    interface: Some(call.interface.clone()).filter(|i| !i.is_empty()),
                    member: Some(call.member.clone()),
                    destination: Some(call.destination.to_string()),
                    sender: Some(call.caller.id.to_string()),
                    signature: call.signature.clone(),
                    ..Header::new(
                        MessageType::MethodCall,
                        serial32(call.caller_serial, "the caller's serial")?,
                    )
                };
                if call.no_reply {
                    header.flags |= NO_REPLY_EXPECTED;
                }
                if self.attach_caller.load(Ordering::Relaxed) {
                    header.caller = Some(caller::encode(&call.caller));
                }
                (header, &call.body[..])
            }
            Message::Return(answer) => (
                Header {
                    reply_serial: Some(serial32(answer.reply_to, "the serial answered")?),
                    sender: Some(sender_name(answer.sender)),
                    destination: self.my_name(),
                    signature: answer.signature.clone(),
                    ..Header::new(MessageType::MethodReturn, self.next_serial())
                },
                &answer.body[..],
            ),
            Message::Error(error) => {
                let Some(reply_to) = error.reply_to else {
                    return Err(EncodeError::NotForThisFace("a notice about the connection"));
                };
                let reply_serial = serial32(reply_to, "the serial answered")?;
                let sender = sender_name(error.sender);
                return Ok(self.error(
                    reply_serial,
                    &sender,
                    errors::name_of(error),
                    &error.message,
                ));
            }
            Message::Signal(signal) => (
                Header {
                    path: Some(signal.path.clone()),
                    interface: Some(signal.interface.clone()),
                    member: Some(signal.member.clone()),
                    destination: signal.destination.as_ref().map(ToString::to_string),
                    sender: Some(sender_name(signal.sender)),
                    signature: signal.signature.clone(),
                    ..Header::new(MessageType::Signal, self.next_serial())
                },
                &signal.body[..],
            ),
            Message::Event(BusEvent::NameAcquired { name }) => {
                return Ok(self.driver_signal("NameAcquired", &[Value::string(name)]));
            }
            Message::Event(BusEvent::NameLost { name }) => {
                return Ok(self.driver_signal("NameLost", &[Value::string(name)]));
            }
            Message::Monitored(copy) => return self.write_monitored(copy, fds),
            Message::Process(event) => return Ok(self.process_signal(event)),
            other => return Err(EncodeError::NotForThisFace(other.kind())),
        };
        let (mut header, body) = header;
        if fds > 0 {
            if !self.fd_passing {
                return Err(EncodeError::Unrepresentable(
                    "the receiver did not negotiate file-descriptor passing".into(),
                ));
            }
            header.unix_fds = u32::try_from(fds).unwrap_or(u32::MAX);
        }
        Ok(header::encode(&header, body))
    }

    /// A monitor's copy: the message as it was delivered, with its sender,
    /// and the destination its sender wrote (a call or signal) or its
    /// recipient (what the bus sends to one peer); only if the monitor's
    /// rules select it.
    fn write_monitored(&self, copy: &Monitored, fds: usize) -> Result<Vec<u8>, EncodeError> {
        if !self.selects(copy) {
            return Err(EncodeError::NotForThisFace(
                "a copy the monitor's rules do not select",
            ));
        }
        let bytes = self.write(&copy.message, fds)?;
        let Ok((mut header, _, body_at)) = header::parse(&bytes) else {
            return Ok(bytes);
        };
        header.sender = Some(sender_name(copy.sender));
        header.destination = match &*copy.message {
            Message::Incoming(_) | Message::Signal(_) => copy.addressed(),
            _ => copy.destination.map(|d| d.to_string()),
        };
        Ok(header::encode(&header, &bytes[body_at..]))
    }

    /// A watched process exited (`ProcessExited`) or was reaped
    /// (`ProcessReaped`, with how it ended), as `org.pidbus.Bus1` signals.
    fn process_signal(&self, event: &ProcessEvent) -> Vec<u8> {
        let (member, process, status) = match event {
            ProcessEvent::Exited { process, .. } => ("ProcessExited", process, None),
            ProcessEvent::Reaped {
                process, status, ..
            } => ("ProcessReaped", process, Some(status)),
        };
        let mut values = vec![
            Value::UInt32(u32::try_from(event.watch()).unwrap_or(u32::MAX)),
            Value::string(process.peer.to_string()),
            Value::UInt64(process.pidfs_id.unwrap_or(0)),
        ];
        if let Some(status) = status {
            let (how, value) = match status {
                Some(ExitStatus::Code(code)) => ("exited", *code),
                Some(ExitStatus::Signal(signal)) => ("killed", *signal),
                None => ("unknown", 0),
            };
            values.extend([Value::string(how), Value::Int32(value)]);
        }
        self.bus_signal(PIDBUS_INTERFACE, member, &values)
    }

    fn selects(&self, copy: &Monitored) -> bool {
        let guard = self.monitor.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(rules) = guard.as_ref() else {
            return false;
        };
        if rules.is_empty() {
            return true;
        }
        rules.iter().any(|rule| rule.selects_copy(copy))
    }
}

/// `serial` as a D-Bus serial (32 bits, never 0); `what` names it in the
/// error.
fn serial32(serial: u64, what: &str) -> Result<u32, EncodeError> {
    u32::try_from(serial)
        .ok()
        .filter(|s| *s != 0)
        .ok_or_else(|| {
            EncodeError::Unrepresentable(format!(
                "{what} {serial} does not fit a D-Bus serial (32 bits, not 0)"
            ))
        })
}

/// The bus's refusal of a connection before it joined: an error answering
/// its `Hello` (serial `hello`), so that the client learns why instead of
/// seeing the connection close.
pub fn refusal(hello: u32, name: &str, message: &str) -> Vec<u8> {
    let body = text_body(message);
    let header = Header {
        error_name: Some(name.to_owned()),
        reply_serial: Some(hello),
        sender: Some(DRIVER_NAME.into()),
        signature: "s".into(),
        ..Header::new(MessageType::Error, 1)
    };
    header::encode(&header, &body)
}

/// The native socket's last word to a connection it closes for breaking
/// the rules: the signal `org.pidbus.Bus1.Disconnected(reason)` from the
/// bus, to `destination` once it has a unique name. D-Bus has no message
/// for this; a record-framed peer can read it before the end of the
/// connection, so it learns why instead of only seeing it close.
pub fn disconnect_notice(destination: Option<PeerId>, reason: &str) -> Vec<u8> {
    let body = text_body(reason);
    let header = Header {
        path: Some(DRIVER_PATH.into()),
        interface: Some(PIDBUS_INTERFACE.into()),
        member: Some("Disconnected".into()),
        destination: destination.map(|id| id.to_string()),
        sender: Some(DRIVER_NAME.into()),
        signature: "s".into(),
        ..Header::new(MessageType::Signal, u32::MAX)
    };
    header::encode(&header, &body)
}

/// The body (signature `s`) of an error or notice saying `text`; a nul,
/// which a D-Bus string may not hold, becomes a space.
fn text_body(text: &str) -> Vec<u8> {
    marshal(&[Value::string(text.replace('\0', " "))])
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// A sender as D-Bus names it: a peer's unique name, or the bus itself.
fn sender_name(sender: Option<PeerId>) -> String {
    sender.map_or_else(|| DRIVER_NAME.to_owned(), |id| id.to_string())
}

impl Wire for DbusWire {
    fn encode(&self, message: &Message, fds: usize, _limit: usize) -> Result<Vec<u8>, EncodeError> {
        if self.is_monitor() && !matches!(message, Message::Monitored(_)) {
            return Err(EncodeError::NotForThisFace("traffic to a monitor"));
        }
        let bytes = self.write(message, fds)?;
        if bytes.len() > self.max_message {
            return Err(EncodeError::TooLarge(format!(
                "a D-Bus message of {} bytes; the limit is {}",
                bytes.len(),
                self.max_message
            )));
        }
        Ok(bytes)
    }

    fn encode_copy(
        &self,
        signal: &Message,
        _matched: &[u64],
        fds: usize,
        limit: usize,
        _shared: &mut SharedEncodings,
    ) -> Result<Vec<u8>, EncodeError> {
        // D-Bus has no field for the rules that matched.
        self.encode(signal, fds, limit)
    }

    fn try_send_many(&self, records: &[OutRecord<'_, OwnedFd>]) -> io::Result<usize> {
        match &self.socket {
            Socket::Stream(stream) => send_joined(records, usize::MAX, |parts, fds| {
                stream.try_send_gathered(parts, fds)
            }),
            Socket::Records(socket) => send_joined(records, self.max_message, |parts, fds| {
                socket.try_send_gathered(parts, fds)
            }),
        }
    }

    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: &mut dyn FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        match &self.socket {
            Socket::Stream(stream) => stream.poll_write_with(cx, write),
            Socket::Records(socket) => socket.poll_write_with(cx, write),
        }
    }

    fn unread_by_peer(&self) -> io::Result<usize> {
        match &self.socket {
            Socket::Stream(stream) => stream.unread_by_peer(),
            Socket::Records(socket) => socket.unread_by_peer(),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match &self.socket {
            Socket::Stream(stream) => stream.shutdown(),
            Socket::Records(socket) => socket.shutdown(),
        }
    }
}

/// Sends the first messages of `records` in one system call, joined: the
/// first with its descriptors, then those after it that have none (at
/// most [`MAX_BATCH`] in all), while they stay within `max_bytes`. On a
/// stream that is one gathered write, which the kernel may take in part;
/// on the native socket one record, which goes whole or not at all: each
/// message costs the kernel a buffer of its own when sent alone, so a
/// burst (one signal to many peers, a pipeline of replies) goes in a few
/// records. Returns how many bytes went.
fn send_joined(
    records: &[OutRecord<'_, OwnedFd>],
    max_bytes: usize,
    send: impl FnOnce(&[&[u8]], &[OwnedFd]) -> io::Result<usize>,
) -> io::Result<usize> {
    let Some((first, rest)) = records.split_first() else {
        return Ok(0);
    };
    let mut count = 1;
    let mut len = first.data.len();
    for next in rest.iter().take(MAX_BATCH - 1) {
        if !next.fds.is_empty() || len + next.data.len() > max_bytes {
            break;
        }
        len += next.data.len();
        count += 1;
    }
    if count == 1 {
        // A lone message needs no list of parts.
        return send(&[first.data], first.fds);
    }
    let parts: Vec<&[u8]> = records[..count].iter().map(|r| r.data).collect();
    send(&parts, first.fds)
}
