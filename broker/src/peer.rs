//! One connected peer: identity capture, the Hello handshake, and the loop
//! that serves its requests until it leaves or misbehaves.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use pidbus_protocol::transport::{RecvError, SeqPacket};
use pidbus_protocol::{
    BrokerReply, BrokerRequest, ErrorCode, ErrorReply, Message, PROTOCOL_VERSION, PeerInfo,
    ProcessIdentity, Reply, Request, Welcome, codec,
};
use tracing::{debug, info, warn};

use crate::bus::{Bus, Registration};
use crate::identity::{self, IdentityError};
use crate::sender::{SenderCheckMode, SenderMismatch, SenderProof};

/// Why the broker ends a connection.
#[derive(Debug)]
enum Disconnect {
    /// The peer closed its end.
    Closed,
    /// The peer broke the protocol; it is told why, then disconnected.
    Violation { code: ErrorCode, reason: String },
    /// The socket failed.
    Io(std::io::Error),
}

impl Disconnect {
    fn violation(code: ErrorCode, reason: impl Into<String>) -> Self {
        Disconnect::Violation {
            code,
            reason: reason.into(),
        }
    }
}

impl From<RecvError> for Disconnect {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::TooLarge { .. } => {
                Disconnect::violation(ErrorCode::RecordTooLarge, e.to_string())
            }
            RecvError::ControlTruncated => {
                Disconnect::violation(ErrorCode::ProtocolViolation, e.to_string())
            }
            RecvError::Io(io) => Disconnect::Io(io),
        }
    }
}

/// A message as received, with the descriptors that came with it and the
/// verdict on who sent it.
struct Incoming {
    message: Message,
    fds: Vec<OwnedFd>,
    sender: Result<(), SenderMismatch>,
}

/// Serves one accepted connection to completion.
pub async fn serve(bus: Arc<Bus>, socket: SeqPacket) {
    let verified = match identity::capture(socket.as_fd(), &bus.settings().boot_id) {
        Ok(verified) => verified,
        Err(e) => {
            refuse_unidentified(&socket, &e);
            return;
        }
    };
    let proof = match SenderProof::enable(&socket, &verified.identity) {
        Ok(Some(proof)) => Some(proof),
        Ok(None) => {
            warn!(peer = %Who(None, &verified.identity),
                  "peer is outside the broker's pid namespace and this kernel has no pidfs: \
                   its messages cannot be checked for sender changes");
            None
        }
        Err(e) => {
            let error = IdentityError::Io {
                what: "enabling per-message sender credentials",
                source: e,
            };
            refuse_unidentified(&socket, &error);
            return;
        }
    };
    let peer = Peer {
        socket,
        identity: Arc::new(verified.identity),
        bus,
        pidfd: verified.pidfd,
        proof,
    };
    peer.run().await;
}

fn refuse_unidentified(socket: &SeqPacket, error: &IdentityError) {
    let code = match error {
        IdentityError::ProcessExited { .. } => ErrorCode::ProcessExited,
        IdentityError::Io { .. } => ErrorCode::Unavailable,
    };
    info!(reason = %error, "refused connection");
    // Best effort: nobody may be reading.
    send_notice(socket, None, code, &format!("connection refused: {error}"));
}

struct Peer {
    socket: SeqPacket,
    identity: Arc<ProcessIdentity>,
    bus: Arc<Bus>,
    /// Held for the connection's life: it keeps the identity's pidfs id
    /// meaningful and lets the broker observe the process.
    pidfd: OwnedFd,
    /// How each record's sender is checked (`None`: the kernel cannot say).
    proof: Option<SenderProof>,
}

/// How a peer appears in log lines.
struct Who<'a>(Option<pidbus_protocol::PeerId>, &'a ProcessIdentity);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Who(id, identity) = self;
        if let Some(id) = id {
            write!(f, "{id} ")?;
        }
        write!(f, "pid={} uid={} pidfs_id=", identity.pid, identity.uid)?;
        match identity.pidfs_id {
            Some(n) => write!(f, "{n}")?,
            None => f.write_str("none")?,
        }
        write!(f, " exe={}", identity.exe.as_deref().unwrap_or("?"))
    }
}

impl Peer {
    async fn run(self) {
        let handshake = tokio::time::timeout(self.bus.settings().hello_timeout, self.handshake());
        let registration = match handshake.await {
            Ok(Ok(registration)) => registration,
            Ok(Err(end)) => return self.end(None, end),
            Err(_elapsed) => {
                let end = Disconnect::violation(
                    ErrorCode::ProtocolViolation,
                    format!(
                        "no Hello within {:?} of connecting",
                        self.bus.settings().hello_timeout
                    ),
                );
                return self.end(None, end);
            }
        };
        let id = registration.id();
        info!(peer = %Who(Some(id), &self.identity), "peer connected");
        let end = self.serve_requests(&registration).await;
        self.end(Some(id), end);
        drop(registration);
    }

    /// Waits for Hello, checks the version, registers the peer and welcomes it.
    async fn handshake(&self) -> Result<Registration, Disconnect> {
        let incoming = self.receive().await?;
        // A Hello may lack proof (see `SenderMismatch::proof_missing`); a
        // Hello proven to come from another process may not.
        if let Err(mismatch) = incoming.sender
            && !mismatch.proof_missing
        {
            return Err(Disconnect::violation(
                ErrorCode::SenderMismatch,
                format!("Hello: {mismatch}"),
            ));
        }
        if !incoming.fds.is_empty() {
            return Err(Disconnect::violation(
                ErrorCode::ProtocolViolation,
                "file descriptors attached to Hello",
            ));
        }
        let hello = match incoming.message {
            Message::Hello(hello) => hello,
            other => {
                return Err(Disconnect::violation(
                    ErrorCode::ProtocolViolation,
                    format!("expected Hello as the first message, got {}", other.kind()),
                ));
            }
        };
        if hello.version != PROTOCOL_VERSION {
            return Err(Disconnect::violation(
                ErrorCode::VersionMismatch,
                format!(
                    "client speaks protocol version {}, this broker speaks version {PROTOCOL_VERSION}; \
                     use a pidbus client library of the same protocol version",
                    hello.version
                ),
            ));
        }
        let registration = self.bus.register(Arc::clone(&self.identity));
        let welcome = Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            unique_id: registration.id(),
            identity: ProcessIdentity::clone(&self.identity),
            max_record_size: self.bus.settings().max_record_size as u64,
        });
        self.send(&welcome, &[]).await?;
        Ok(registration)
    }

    async fn serve_requests(&self, registration: &Registration) -> Disconnect {
        loop {
            let incoming = match self.receive().await {
                Ok(incoming) => incoming,
                Err(end) => return end,
            };
            if let Err(mismatch) = &incoming.sender {
                if let Some(end) = self
                    .refuse_foreign_sender(registration, &incoming.message, mismatch)
                    .await
                {
                    return end;
                }
                continue;
            }
            let request = match incoming.message {
                Message::Request(request) => request,
                other => {
                    return Disconnect::violation(
                        ErrorCode::ProtocolViolation,
                        format!("{} is not allowed after the handshake", other.kind()),
                    );
                }
            };
            if let Err(end) = self.answer(registration, request, incoming.fds).await {
                return end;
            }
        }
    }

    async fn answer(
        &self,
        registration: &Registration,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Disconnect> {
        let name = request.body.name();
        if !fds.is_empty() && !matches!(request.body, BrokerRequest::Ping { .. }) {
            return Err(Disconnect::violation(
                ErrorCode::ProtocolViolation,
                format!("file descriptors attached to {name}, which takes none"),
            ));
        }
        debug!(peer = %registration.id(), request = name, serial = request.serial, "request");
        let body = match request.body {
            // The fds go back with the reply, proving fd passing works both ways.
            BrokerRequest::Ping { payload } => BrokerReply::Pong { payload },
            BrokerRequest::GetIdentity => BrokerReply::Identity(PeerInfo {
                id: registration.id(),
                identity: ProcessIdentity::clone(&self.identity),
            }),
            BrokerRequest::ListPeers => BrokerReply::Peers(self.bus.peers()),
        };
        let reply = Message::Reply(Reply {
            reply_to: request.serial,
            body,
        });
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        match self.send(&reply, &borrowed).await {
            Err(Disconnect::Violation {
                code: ErrorCode::RecordTooLarge,
                reason,
            }) => {
                // The answer (e.g. a huge peer list) does not fit a record:
                // that is the broker's limit, not the peer's fault.
                self.send(
                    &Message::Error(ErrorReply {
                        reply_to: Some(request.serial),
                        code: ErrorCode::RecordTooLarge,
                        message: format!("the reply to {name} is too large: {reason}"),
                    }),
                    &[],
                )
                .await
            }
            other => other,
        }
    }

    /// A message from a process other than the connection's: logged with
    /// both identities and not routed. In reject mode a request gets a
    /// `SenderMismatch` error and the connection stays; in strict mode (or
    /// for anything but a request) the connection is closed.
    async fn refuse_foreign_sender(
        &self,
        registration: &Registration,
        message: &Message,
        mismatch: &SenderMismatch,
    ) -> Option<Disconnect> {
        let mode = self.bus.settings().sender_check;
        warn!(
            peer = %Who(Some(registration.id()), &self.identity),
            sender = %mismatch.sender,
            message = message.kind(),
            ?mode,
            "message from a process other than the connection's; not routed"
        );
        let serial = match message {
            Message::Request(request) if mode == SenderCheckMode::Reject => request.serial,
            _ => {
                return Some(Disconnect::violation(
                    ErrorCode::SenderMismatch,
                    mismatch.to_string(),
                ));
            }
        };
        let error = Message::Error(ErrorReply {
            reply_to: Some(serial),
            code: ErrorCode::SenderMismatch,
            message: mismatch.to_string(),
        });
        self.send(&error, &[]).await.err()
    }

    async fn receive(&self) -> Result<Incoming, Disconnect> {
        let limit = self.bus.settings().max_record_size;
        let received = self.socket.recv(limit).await?.ok_or(Disconnect::Closed)?;
        let sender = match &self.proof {
            Some(proof) => proof.verify(&received, self.pidfd.as_fd()),
            None => Ok(()),
        };
        let message = codec::decode(&received.data, limit)
            .map_err(|e| Disconnect::violation(ErrorCode::MalformedMessage, e.to_string()))?;
        Ok(Incoming {
            message,
            fds: received.fds,
            sender,
        })
    }

    async fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), Disconnect> {
        let bytes = codec::encode(message, self.bus.settings().max_record_size)
            .map_err(|e| Disconnect::violation(ErrorCode::RecordTooLarge, e.to_string()))?;
        self.socket.send(&bytes, fds).await.map_err(Disconnect::Io)
    }

    fn end(&self, id: Option<pidbus_protocol::PeerId>, end: Disconnect) {
        let who = Who(id, &self.identity);
        match end {
            Disconnect::Closed => info!(peer = %who, "peer disconnected"),
            Disconnect::Io(e) => info!(peer = %who, error = %e, "peer connection failed"),
            Disconnect::Violation { code, reason } => {
                warn!(peer = %who, %code, %reason, "disconnecting peer");
                send_notice(&self.socket, None, code, &reason);
            }
        }
        // Make the peer see EOF even if other processes hold the socket.
        let _ = self.socket.shutdown();
    }
}

/// Sends an error without waiting; dropped if the peer's buffer is full.
fn send_notice(socket: &SeqPacket, reply_to: Option<u64>, code: ErrorCode, message: &str) {
    let notice = Message::Error(ErrorReply {
        reply_to,
        code,
        message: message.to_owned(),
    });
    // Bounded well under any record limit: messages are short.
    if let Ok(bytes) = codec::encode(&notice, pidbus_protocol::limits::DEFAULT_MAX_RECORD_SIZE) {
        let _ = socket.try_send(&bytes, &[]);
    }
}
