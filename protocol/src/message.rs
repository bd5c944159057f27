//! The messages exchanged on a pidbus connection.
//!
//! Every record on the socket is exactly one [`Message`]. The first record a
//! client sends is [`Message::Hello`]; the broker answers with
//! [`Message::Welcome`] or [`Message::Error`] (and then closes the
//! connection). After that the client talks to the broker with
//! [`Message::Request`] and gets [`Message::Reply`] or [`Message::Error`]
//! carrying the request's serial.
//!
//! Between peers:
//!
//! - a caller sends [`Message::Call`]; the broker delivers it to the callee as
//!   [`Message::Incoming`] with the caller's verified identity and a call id
//!   of its own; the callee answers with [`Message::Return`] or
//!   [`Message::Error`] naming that call id; the broker checks the answer
//!   belongs to an outstanding call to *this* callee and forwards it to the
//!   caller with the caller's serial;
//! - an emitter sends [`Message::Signal`]; the broker stamps the sender and
//!   delivers it to every peer with a matching rule (and to the unicast
//!   destination, if one is given);
//! - the broker tells peers about names with [`Message::Event`], refuses
//!   stray messages without closing the connection with [`Message::Notice`],
//!   and copies traffic to monitors as [`Message::Monitored`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::ProcessIdentity;
use crate::match_rule::MatchRule;
use crate::names::Destination;
use crate::process::{ProcessEvent, ProcessHandle};

/// Version of the wire protocol this crate speaks.
///
/// Bumped on any incompatible change; optional fields can be added to
/// messages without a bump (unknown fields are ignored when decoding).
pub const PROTOCOL_VERSION: u32 = 1;

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

/// One record on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message of a client: opens the session.
    Hello(Hello),
    /// The broker's answer to an accepted [`Hello`].
    Welcome(Welcome),
    /// A request from a client to the broker itself.
    Request(Request),
    /// The broker's successful answer to a [`Request`].
    Reply(Reply),
    /// An error: the answer to a request, to the hello or to a call, or a
    /// notice sent just before the broker closes the connection.
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
    /// The broker refused a message that has no serial to answer (e.g. an
    /// unexpected reply); the connection stays open.
    Notice(Notice),
    /// A copy of a message the broker delivered, sent to monitors.
    Monitored(Monitored),
    /// A process this peer watches exited or was reaped.
    Process(ProcessEvent),
}

impl Message {
    /// A short name of the message kind, for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Request(_) => "Request",
            Message::Reply(_) => "Reply",
            Message::Error(_) => "Error",
            Message::Call(_) => "Call",
            Message::Incoming(_) => "Incoming",
            Message::Return(_) => "Return",
            Message::Signal(_) => "Signal",
            Message::Event(_) => "Event",
            Message::Notice(_) => "Notice",
            Message::Monitored(_) => "Monitored",
            Message::Process(_) => "Process",
        }
    }
}

/// The client's opening message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks ([`PROTOCOL_VERSION`]).
    pub version: u32,
}

/// The broker's welcome: who the client is, as the broker verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the broker speaks.
    pub version: u32,
    /// The unique id assigned to this connection.
    pub unique_id: PeerId,
    /// The identity the broker verified for the connecting process.
    pub identity: ProcessIdentity,
    /// Largest record the broker accepts on this connection, in bytes.
    pub max_record_size: u64,
}

/// A request to the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; echoed in the answer's `reply_to`. Must be
    /// unique among the client's outstanding requests.
    pub serial: u64,
    /// What is asked.
    pub body: BrokerRequest,
}

/// The broker's successful answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Serial of the request this answers.
    pub reply_to: u64,
    /// The answer.
    pub body: BrokerReply,
}

/// The requests the broker itself serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BrokerRequest {
    /// Liveness and transport check: the broker answers [`BrokerReply::Pong`]
    /// with the same payload and sends back the file descriptors attached to
    /// the request (so fd passing can be verified end to end).
    Ping {
        /// Arbitrary bytes echoed back.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The identity the broker verified for the requesting connection.
    GetIdentity,
    /// Connected peers with their verified identities, one page at a time
    /// ([`BrokerReply::Peers`]): those with ids above `after` that fit in
    /// one record. Facts `/proc` would hide from the asker (another user's
    /// executable, cgroup, units, groups, label) are left out unless the
    /// asker is root or the broker's user.
    ListPeers {
        /// Start after this peer (`None`: from the first).
        #[serde(default)]
        after: Option<PeerId>,
    },
    /// Ask for a well-known name ([`BrokerReply::NameRequested`]).
    RequestName {
        /// The name.
        name: String,
        /// How to behave when the name is taken.
        #[serde(default)]
        flags: NameFlags,
    },
    /// Give up a name, or leave its queue ([`BrokerReply::NameReleased`]).
    ReleaseName {
        /// The name.
        name: String,
    },
    /// Well-known names with their owners and queues, one page at a time
    /// ([`BrokerReply::Names`]): those ordered after `after` that fit in
    /// one record.
    ListNames {
        /// Start after this name (`None`: from the first).
        #[serde(default)]
        after: Option<String>,
    },
    /// The unique id of a name's primary owner ([`BrokerReply::NameOwner`]).
    GetNameOwner {
        /// The name.
        name: String,
    },
    /// Receive signals matching `rule`; the broker tags each delivered
    /// signal with the ids of the rules it matched ([`BrokerReply::Done`]).
    AddMatch {
        /// Chosen by the client, unique among its rules.
        id: u64,
        /// The conditions.
        rule: MatchRule,
    },
    /// Stop receiving signals for rule `id` ([`BrokerReply::Done`]).
    RemoveMatch {
        /// The id given to [`BrokerRequest::AddMatch`].
        id: u64,
    },
    /// Receive (or stop receiving) [`BusEvent::NameOwnerChanged`] for every
    /// name ([`BrokerReply::Done`]).
    WatchNameOwners {
        /// On or off.
        enabled: bool,
    },
    /// Receive a copy of every message the broker delivers, as
    /// [`Message::Monitored`] ([`BrokerReply::Done`]). Root only.
    BecomeMonitor,
    /// A pidfd of the process behind `target` ([`BrokerReply::Pidfd`], with
    /// the pidfd attached). Allowed for root, for a requester of the
    /// target's uid, and on a system bus for any requester when the target
    /// owns a well-known name.
    GetPidfd {
        /// The peer whose process is wanted.
        target: Destination,
    },
    /// Be told when the process behind `target` exits and how it ended
    /// ([`BrokerReply::ProcessWatched`], then [`Message::Process`] events).
    /// The watch follows the process, not the connection: it lasts after
    /// the target disconnects. Same access rule as [`GetPidfd`](Self::GetPidfd).
    WatchProcess {
        /// Chosen by the client, unique among its process watches; events
        /// carry it.
        id: u64,
        /// The peer whose process is watched.
        target: Destination,
    },
    /// Remove process watch `id` ([`BrokerReply::Done`]).
    UnwatchProcess {
        /// The id given to [`WatchProcess`](Self::WatchProcess).
        id: u64,
    },
    /// May `subject` perform the application action `action` (a
    /// polkit-style id such as `org.example.reboot`)? The broker decides on
    /// its verified identity of the subject, never on anything the asker
    /// supplies ([`BrokerReply::Authorization`]).
    CheckAuthorization {
        /// The action id.
        action: String,
        /// Whose permission is asked.
        subject: AuthSubject,
    },
    /// Re-read the policy ([`BrokerReply::Done`]; an invalid policy is an
    /// error and the old one stays). Root only.
    ReloadPolicy,
    /// Names a call can start a service for (bus activation), one page at
    /// a time ([`BrokerReply::ActivatableNames`]): those ordered after
    /// `after` that fit in one record.
    ListActivatableNames {
        /// Start after this name (`None`: from the first).
        #[serde(default)]
        after: Option<String>,
    },
    /// Start the service that provides `name` unless the name is owned
    /// ([`BrokerReply::ServiceStarted`], sent once the started service
    /// owns the name; an error if the start fails or times out).
    StartService {
        /// The well-known name.
        name: String,
    },
}

/// Whose permission [`BrokerRequest::CheckAuthorization`] asks about.
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

/// Answer to [`BrokerRequest::CheckAuthorization`].
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

impl BrokerRequest {
    /// A short name of the request, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            BrokerRequest::Ping { .. } => "Ping",
            BrokerRequest::GetIdentity => "GetIdentity",
            BrokerRequest::CheckAuthorization { .. } => "CheckAuthorization",
            BrokerRequest::ReloadPolicy => "ReloadPolicy",
            BrokerRequest::ListPeers { .. } => "ListPeers",
            BrokerRequest::RequestName { .. } => "RequestName",
            BrokerRequest::ReleaseName { .. } => "ReleaseName",
            BrokerRequest::ListNames { .. } => "ListNames",
            BrokerRequest::GetNameOwner { .. } => "GetNameOwner",
            BrokerRequest::AddMatch { .. } => "AddMatch",
            BrokerRequest::RemoveMatch { .. } => "RemoveMatch",
            BrokerRequest::WatchNameOwners { .. } => "WatchNameOwners",
            BrokerRequest::BecomeMonitor => "BecomeMonitor",
            BrokerRequest::GetPidfd { .. } => "GetPidfd",
            BrokerRequest::WatchProcess { .. } => "WatchProcess",
            BrokerRequest::UnwatchProcess { .. } => "UnwatchProcess",
            BrokerRequest::ListActivatableNames { .. } => "ListActivatableNames",
            BrokerRequest::StartService { .. } => "StartService",
        }
    }
}

/// The broker's answers, one variant per [`BrokerRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BrokerReply {
    /// Answer to [`BrokerRequest::Ping`]; the request's fds come back with it.
    Pong {
        /// The payload of the ping.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Answer to [`BrokerRequest::GetIdentity`].
    Identity(PeerInfo),
    /// Answer to [`BrokerRequest::ListPeers`], ordered by unique id.
    Peers {
        /// This page.
        peers: Vec<PeerInfo>,
        /// More peers follow: ask again after the last one.
        more: bool,
    },
    /// Answer to [`BrokerRequest::RequestName`].
    NameRequested(RequestNameReply),
    /// Answer to [`BrokerRequest::ReleaseName`].
    NameReleased(ReleaseNameReply),
    /// Answer to [`BrokerRequest::ListNames`], ordered by name.
    Names {
        /// This page.
        names: Vec<NameInfo>,
        /// More names follow: ask again after the last one.
        more: bool,
    },
    /// Answer to [`BrokerRequest::GetNameOwner`].
    NameOwner(PeerId),
    /// Answer to [`BrokerRequest::ListActivatableNames`], sorted.
    ActivatableNames {
        /// This page.
        names: Vec<String>,
        /// More names follow: ask again after the last one.
        more: bool,
    },
    /// Answer to [`BrokerRequest::StartService`].
    ServiceStarted {
        /// The name was owned already; nothing was started.
        already_running: bool,
    },
    /// Answer to [`BrokerRequest::GetPidfd`]; the pidfd is the reply's one
    /// file descriptor.
    Pidfd(ProcessHandle),
    /// Answer to [`BrokerRequest::WatchProcess`].
    ProcessWatched(ProcessHandle),
    /// Answer to [`BrokerRequest::CheckAuthorization`].
    Authorization(Authorization),
    /// The request was carried out.
    Done,
}

/// How [`BrokerRequest::RequestName`] behaves when the name is taken
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

/// Outcome of [`BrokerRequest::RequestName`].
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

/// Outcome of [`BrokerRequest::ReleaseName`].
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
    #[serde(with = "serde_bytes")]
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
    #[serde(with = "serde_bytes")]
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
    #[serde(with = "serde_bytes")]
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
    #[serde(with = "serde_bytes")]
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

/// A non-fatal refusal of a message that has no serial to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What kind of problem.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

/// A copy of a delivered message, for monitors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitored {
    /// Who sent it (`None`: the broker itself).
    pub sender: Option<PeerId>,
    /// Who received it (`None`: a broadcast signal, delivered to every
    /// matching subscriber).
    pub destination: Option<PeerId>,
    /// The message as delivered (without its file descriptors).
    pub message: Box<Message>,
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
    /// The client's protocol version is not supported by the broker.
    VersionMismatch,
    /// A record could not be decoded.
    MalformedMessage,
    /// A record exceeded the size limit.
    RecordTooLarge,
    /// A well-formed message arrived where the protocol does not allow it
    /// (e.g. a second Hello, or a request before Hello).
    ProtocolViolation,
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
    /// A reply that answers no outstanding call of this peer.
    UnexpectedReply,
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
            ErrorCode::VersionMismatch => "version mismatch",
            ErrorCode::MalformedMessage => "malformed message",
            ErrorCode::RecordTooLarge => "record too large",
            ErrorCode::ProtocolViolation => "protocol violation",
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
            ErrorCode::UnexpectedReply => "unexpected reply",
            ErrorCode::LimitsExceeded => "limits exceeded",
            ErrorCode::Unknown => "unknown error",
        };
        f.write_str(name)
    }
}
