//! The bus core's vocabulary: what the core routes between peers and
//! answers for the driver, in types rather than bytes.
//!
//! Nothing here is a wire format: every message on either socket is a
//! D-Bus message ([`crate::dbus`]), which the broker reads into these
//! types where it enters the bus and writes back as D-Bus where it leaves
//! it. Between peers:
//!
//! - a caller's call reaches the callee as an [`IncomingCall`] with the
//!   caller's verified identity and a call id of the broker's; the callee's
//!   [`Return`] or [`ErrorReply`] is checked to answer an outstanding call
//!   to *this* callee before it is forwarded to the caller;
//! - a [`Signal`] gets its sender stamped and goes to every peer with a
//!   matching rule (and to its unicast destination, if any);
//! - the broker tells peers about names with [`BusEvent`]s, about watched
//!   processes with [`ProcessEvent`]s, and copies traffic to monitors as
//!   [`Monitored`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::ProcessIdentity;
use crate::names::Destination;
use crate::process::{ProcessEvent, ProcessHandle};

/// The unique id the broker assigns to each connection (`:1.N` in text
/// form, a D-Bus unique name, on both faces).
///
/// Never reused during a broker's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":1.{}", self.0)
    }
}

/// A unique name this broker could have given (`:1.N`).
impl std::str::FromStr for PeerId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Anything but ":1." is made to fail the number parse, with its error.
        let digits = s
            .strip_prefix(":1.")
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or("-");
        digits.parse().map(PeerId)
    }
}

/// One message the core sends a peer (its wire writes it as D-Bus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// An error answering a call.
    Error(ErrorReply),
    /// A method call from a client, to be routed to its destination.
    Call(Call),
    /// A method call delivered by the broker to the callee.
    Incoming(IncomingCall),
    /// The successful answer to a call (callee → broker → caller).
    Return(Return),
    /// A signal (emitter → broker → subscribers).
    Signal(Signal),
    /// Something happened to a name this peer owns or watches.
    Event(BusEvent),
    /// A copy of a message the broker delivered, sent to monitors.
    Monitored(Monitored),
    /// A process this peer watches exited or was reaped.
    Process(ProcessEvent),
}

impl Message {
    /// A short name of the message kind, for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Error(_) => "Error",
            Message::Call(_) => "Call",
            Message::Incoming(_) => "Incoming",
            Message::Return(_) => "Return",
            Message::Signal(_) => "Signal",
            Message::Event(_) => "Event",
            Message::Monitored(_) => "Monitored",
            Message::Process(_) => "Process",
        }
    }
}

/// Whose permission an authorization check asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthSubject {
    /// The caller of the call the asker is handling (its
    /// [`IncomingCall::call_id`]): only the callee of a pending call may ask.
    CallerOf {
        /// The call's id.
        call_id: u64,
    },
    /// A connected peer.
    Peer {
        /// Its unique id.
        peer: PeerId,
    },
    /// The caller of the call `caller` made with `serial` to the asker,
    /// while that call waits for the asker's answer (D-Bus programs know a
    /// call by its sender and serial).
    Call {
        /// The caller's unique id.
        caller: PeerId,
        /// The caller's serial of the call.
        serial: u64,
    },
}

/// The answer to an authorization check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    /// Whether the subject may perform the action.
    pub allowed: bool,
    /// What decided: a policy rule or default (`file:line`), or why no
    /// rule was consulted (the caller has left). For logs.
    pub rule: String,
    /// The subject, once resolved (`None` if it has left the bus).
    pub subject: Option<PeerId>,
}

/// The core's answers to the driver's requests, which the driver writes
/// as D-Bus replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BrokerReply {
    /// Answer to `RequestName`.
    NameRequested(RequestNameReply),
    /// Answer to `ReleaseName`.
    NameReleased(ReleaseNameReply),
    /// Answer to `GetNameOwner`.
    NameOwner(PeerId),
    /// Answer to `GetPidfd`; the pidfd is the reply's one
    /// file descriptor.
    Pidfd(ProcessHandle),
    /// Answer to `WatchProcess`.
    ProcessWatched(ProcessHandle),
    /// Answer to `CheckAuthorization`.
    Authorization(Authorization),
    /// The request was carried out.
    Done,
}

/// How `RequestName` behaves when the name is taken
/// (D-Bus's `RequestName` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameFlags {
    /// Let a later requester with `replace_existing` take the name from us.
    #[serde(default)]
    pub allow_replacement: bool,
    /// Take the name from its owner if the owner allowed replacement.
    #[serde(default)]
    pub replace_existing: bool,
    /// Do not wait in the queue when the name cannot be had now.
    #[serde(default)]
    pub do_not_queue: bool,
}

/// Outcome of `RequestName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestNameReply {
    /// The caller now owns the name.
    PrimaryOwner,
    /// The name is taken; the caller waits in its queue and gets
    /// [`BusEvent::NameAcquired`] when its turn comes.
    InQueue,
    /// The name is taken and the caller asked not to queue.
    Exists,
    /// The caller already owned the name (its flags were updated).
    AlreadyOwner,
}

/// Outcome of `ReleaseName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseNameReply {
    /// The caller owned or queued for the name and no longer does.
    Released,
    /// Nobody owns the name.
    NonExistent,
    /// The name is owned by someone else and the caller is not queued.
    NotOwner,
}

/// A well-known name, its primary owner and who waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameInfo {
    /// The name.
    pub name: String,
    /// Its primary owner.
    pub owner: PeerId,
    /// Peers queued for it, next in line first.
    pub queue: Vec<PeerId>,
}

/// A method call, as the caller sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Chosen by the caller; the answer's `reply_to`.
    pub serial: u64,
    /// Who is called.
    pub destination: Destination,
    /// Object path.
    pub path: String,
    /// Interface.
    pub interface: String,
    /// Method name.
    pub member: String,
    /// The body's D-Bus type signature (empty: no arguments).
    #[serde(default)]
    pub signature: String,
    /// The arguments, marshalled in the D-Bus format (little-endian)
    /// as `signature` says.
    pub body: Vec<u8>,
    /// The caller wants no answer; the broker tracks nothing.
    #[serde(default)]
    pub no_reply: bool,
    /// How long the broker waits for the answer before failing the call
    /// with [`ErrorCode::Timeout`]; the broker's default (25 s) when `None`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Do not start the service that provides an unowned destination name
    /// (D-Bus's `NO_AUTO_START`): the call fails with
    /// [`ErrorCode::NoSuchName`] instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_auto_start: bool,
}

/// A method call as the broker delivers it to the callee.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingCall {
    /// The broker's id of this call: answer with a [`Return`] or
    /// [`ErrorReply`] whose `reply_to` is this id.
    pub call_id: u64,
    /// Who called, as the broker verified it.
    pub caller: Caller,
    /// The destination as the caller addressed it.
    pub destination: Destination,
    /// Object path.
    pub path: String,
    /// Interface.
    pub interface: String,
    /// Method name.
    pub member: String,
    /// The body's D-Bus type signature (empty: no arguments).
    #[serde(default)]
    pub signature: String,
    /// The arguments, marshalled as `signature` says.
    pub body: Vec<u8>,
    /// The caller expects no answer (one would be refused).
    #[serde(default)]
    pub no_reply: bool,
    /// The serial the caller gave the call (what a D-Bus callee answers).
    #[serde(default)]
    pub caller_serial: u64,
}

/// The verified identity of a call's sender, as delivered to the callee.
///
/// Taken from the caller's connection (`SO_PEERPIDFD` and friends at connect
/// time) and checked against every record the caller sends; never from
/// anything the caller claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The caller's unique id.
    pub id: PeerId,
    /// The caller's pid as seen from the *callee's* pid namespace; `None`
    /// when the caller is not visible there (or the broker cannot tell).
    pub pid: Option<u32>,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// Supplementary groups at connect time.
    pub groups: Vec<u32>,
    /// The caller's pidfs id (stable process identity; see
    /// [`ProcessIdentity::pidfs_id`]).
    pub pidfs_id: Option<u64>,
    /// Executable path, if known.
    pub exe: Option<String>,
    /// systemd unit, if any.
    pub unit: Option<String>,
    /// LSM security label, if any.
    pub label: Option<String>,
}

/// A successful answer to a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Return {
    /// From the callee: the [`IncomingCall::call_id`]. To the caller: the
    /// [`Call::serial`].
    pub reply_to: u64,
    /// The body's D-Bus type signature (empty: no arguments).
    #[serde(default)]
    pub signature: String,
    /// The return values, marshalled as `signature` says.
    pub body: Vec<u8>,
    /// The callee that answered; set by the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<PeerId>,
}

/// A signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The emitter; set by the broker (whatever a client puts here is
    /// replaced).
    #[serde(default)]
    pub sender: Option<PeerId>,
    /// Deliver only to this peer (it still needs no match rule).
    #[serde(default)]
    pub destination: Option<Destination>,
    /// Object path the signal is about.
    pub path: String,
    /// Interface.
    pub interface: String,
    /// Signal name.
    pub member: String,
    /// The body's D-Bus type signature (empty: no arguments).
    #[serde(default)]
    pub signature: String,
    /// The arguments, marshalled as `signature` says.
    pub body: Vec<u8>,
    /// Set by the broker: ids of the recipient's rules this signal matched
    /// (empty for a unicast signal no rule matched).
    #[serde(default)]
    pub matched: Vec<u64>,
}

/// Something happened to a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BusEvent {
    /// This connection became the primary owner of `name`.
    NameAcquired {
        /// The name.
        name: String,
    },
    /// This connection is no longer the primary owner of `name`.
    NameLost {
        /// The name.
        name: String,
    },
    /// The owner of `name` changed (sent to peers watching name owners).
    NameOwnerChanged {
        /// The name.
        name: String,
        /// The previous owner, `None` if the name was free.
        old_owner: Option<PeerId>,
        /// The new owner, `None` if the name is now free.
        new_owner: Option<PeerId>,
    },
}

/// A copy of a delivered message, for monitors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitored {
    /// Who sent it (`None`: the broker itself).
    pub sender: Option<PeerId>,
    /// Who received it (`None`: a broadcast signal, delivered to every
    /// matching subscriber, or a call to the broker itself).
    pub destination: Option<PeerId>,
    /// The message as delivered (without its file descriptors); a call or
    /// signal keeps the destination as its sender wrote it.
    pub message: Box<Message>,
    /// The well-known names the sender owned when it was delivered (so a
    /// monitor's `sender=` rule can name it by one); empty where unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sender_names: Vec<String>,
    /// The well-known names the recipient owned, likewise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_names: Vec<String>,
}

impl Monitored {
    /// A copy of `message` from `sender` to `destination`, their names
    /// unknown.
    pub fn new(sender: Option<PeerId>, destination: Option<PeerId>, message: Message) -> Self {
        Monitored {
            sender,
            destination,
            message: Box::new(message),
            sender_names: Vec::new(),
            destination_names: Vec::new(),
        }
    }

    /// The destination its sender wrote, for a call or a signal.
    pub fn addressed(&self) -> Option<String> {
        match &*self.message {
            Message::Incoming(call) => Some(call.destination.to_string()),
            Message::Signal(signal) => signal.destination.as_ref().map(ToString::to_string),
            _ => None,
        }
    }

    /// Whether `name` names its sender: its unique name, a name it owned,
    /// or the bus's name for what the bus itself sent.
    pub fn sent_by(&self, name: &str) -> bool {
        match self.sender {
            Some(id) => is_unique_name_of(name, id) || self.sender_names.iter().any(|n| n == name),
            None => name == crate::dbus::BUS_NAME,
        }
    }

    /// Whether `name` names its recipient, as dbus-daemon decides a
    /// monitor's `destination=` rule: the recipient's unique name or a
    /// name it owned; for a call to the bus itself, the destination as
    /// written. A broadcast has no recipient.
    pub fn received_by(&self, name: &str) -> bool {
        match self.destination {
            Some(id) => {
                is_unique_name_of(name, id) || self.destination_names.iter().any(|n| n == name)
            }
            None => {
                matches!(&*self.message, Message::Incoming(call) if call.destination.to_string() == name)
            }
        }
    }
}

fn is_unique_name_of(name: &str, id: PeerId) -> bool {
    name.parse::<PeerId>() == Ok(id)
}

/// A connected peer as the broker knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's unique id.
    pub id: PeerId,
    /// The peer's verified identity.
    pub identity: ProcessIdentity,
}

/// An error sent by the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Serial of the request or call this answers (from a callee: the
    /// call id); `None` for errors about the connection as a whole (hello
    /// refused, protocol violation), after which the broker closes it.
    pub reply_to: Option<u64>,
    /// Machine-readable error kind.
    pub code: ErrorCode,
    /// Human-readable explanation saying what went wrong and what to do.
    pub message: String,
    /// An application-defined error name (`org.example.Error.NotFound`)
    /// from the service that answered a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The peer that answered with this error; `None` when the broker did.
    /// Set by the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<PeerId>,
}

impl ErrorReply {
    /// An error from the broker.
    pub fn broker(reply_to: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            reply_to,
            code,
            message: message.into(),
            name: None,
            sender: None,
        }
    }
}

/// Machine-readable error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A record could not be decoded.
    MalformedMessage,
    /// A record exceeded the size limit.
    RecordTooLarge,
    /// The connecting process had already exited when the broker accepted it.
    ProcessExited,
    /// The caller is not allowed to do this.
    AccessDenied,
    /// The broker cannot serve this now (out of resources, shutting down).
    Unavailable,
    /// The message was sent by a process other than the one that opened the
    /// connection (the socket was passed on or inherited); it was not routed.
    SenderMismatch,
    /// No peer has this unique id, or nobody owns this name.
    NoSuchName,
    /// A name, path, interface, member or rule broke the naming rules.
    InvalidName,
    /// The callee does not serve this object path.
    UnknownObject,
    /// The object does not have this interface.
    UnknownInterface,
    /// The interface does not have this method.
    UnknownMethod,
    /// The arguments do not have the type the method expects.
    InvalidArgs,
    /// The service failed the call (see the error's `name`).
    Failed,
    /// No answer arrived within the call's timeout.
    Timeout,
    /// The callee disconnected or its process exited before answering.
    PeerGone,
    /// A quota or queue limit was hit; retry later.
    LimitsExceeded,
    /// A code this version of the protocol crate does not know (sent by a
    /// newer peer).
    #[serde(other)]
    Unknown,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::MalformedMessage => "malformed message",
            ErrorCode::RecordTooLarge => "record too large",
            ErrorCode::ProcessExited => "process exited",
            ErrorCode::AccessDenied => "access denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SenderMismatch => "sender mismatch",
            ErrorCode::NoSuchName => "no such name",
            ErrorCode::InvalidName => "invalid name",
            ErrorCode::UnknownObject => "unknown object",
            ErrorCode::UnknownInterface => "unknown interface",
            ErrorCode::UnknownMethod => "unknown method",
            ErrorCode::InvalidArgs => "invalid arguments",
            ErrorCode::Failed => "failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::PeerGone => "peer gone",
            ErrorCode::LimitsExceeded => "limits exceeded",
            ErrorCode::Unknown => "unknown error",
        };
        f.write_str(name)
    }
}
