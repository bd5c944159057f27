//! The messages exchanged on a pidbus connection.
//!
//! Every record on the socket is exactly one [`Message`]. The first record a
//! client sends is [`Message::Hello`]; the broker answers with
//! [`Message::Welcome`] or [`Message::Error`] (and then closes the
//! connection). After that the client talks to the broker with
//! [`Message::Request`] and gets [`Message::Reply`] or [`Message::Error`]
//! carrying the request's serial.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::ProcessIdentity;

/// Version of the wire protocol this crate speaks.
///
/// Bumped on any incompatible change; optional fields can be added to
/// messages without a bump (unknown fields are ignored when decoding).
pub const PROTOCOL_VERSION: u32 = 1;

/// The unique id the broker assigns to each connection (`:N` in text form).
///
/// Never reused during a broker's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{}", self.0)
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
    /// An error: the answer to a request or to the hello, or a notice sent
    /// just before the broker closes the connection.
    Error(ErrorReply),
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
    /// Every connected peer with its verified identity.
    ListPeers,
}

impl BrokerRequest {
    /// A short name of the request, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            BrokerRequest::Ping { .. } => "Ping",
            BrokerRequest::GetIdentity => "GetIdentity",
            BrokerRequest::ListPeers => "ListPeers",
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
    Peers(Vec<PeerInfo>),
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
    /// Serial of the request this answers; `None` for errors about the
    /// connection as a whole (hello refused, protocol violation).
    pub reply_to: Option<u64>,
    /// Machine-readable error kind.
    pub code: ErrorCode,
    /// Human-readable explanation saying what went wrong and what to do.
    pub message: String,
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
            ErrorCode::Unknown => "unknown error",
        };
        f.write_str(name)
    }
}
