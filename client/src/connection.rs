//! The async connection to a pidbus broker.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{
    BrokerReply, BrokerRequest, Hello, Message, PROTOCOL_VERSION, PeerId, PeerInfo,
    ProcessIdentity, Request, Welcome, address, codec, limits,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// A reply from the broker with the descriptors that came with it.
type Answer = Result<(BrokerReply, Vec<OwnedFd>)>;

/// An authenticated connection to a pidbus broker.
///
/// Cheap to clone; all clones share one socket. Requests may be issued
/// concurrently from many tasks: answers are matched to requests by serial.
/// The connection closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    _reader: Arc<ReaderTask>,
}

#[derive(Debug)]
struct Shared {
    socket: SeqPacket,
    address: PathBuf,
    unique_id: PeerId,
    identity: ProcessIdentity,
    max_record_size: usize,
    next_serial: AtomicU64,
    pending: Mutex<Pending>,
}

/// Requests waiting for their answer. Once `closed` is set no request is
/// added, so none can wait forever.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    closed: Option<String>,
}

/// Aborts the reader when the last connection handle is dropped.
#[derive(Debug)]
struct ReaderTask(JoinHandle<()>);

impl Drop for ReaderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Connection {
    /// Connects to the broker listening at `address` and performs the
    /// handshake. Must be called inside a tokio runtime.
    pub async fn connect(address: impl AsRef<Path>) -> Result<Self> {
        let address = address.as_ref().to_owned();
        let socket = SeqPacket::connect(&address).map_err(|source| Error::Connect {
            address: address.clone(),
            source,
        })?;
        let welcome = handshake(&socket, &address).await?;
        let max_record_size = usize::try_from(welcome.max_record_size)
            .unwrap_or(limits::MAX_CONFIGURABLE_RECORD_SIZE)
            .min(limits::MAX_CONFIGURABLE_RECORD_SIZE);
        let shared = Arc::new(Shared {
            socket,
            address,
            unique_id: welcome.unique_id,
            identity: welcome.identity,
            max_record_size,
            next_serial: AtomicU64::new(1),
            pending: Mutex::new(Pending::default()),
        });
        let reader = tokio::spawn(read_answers(Arc::clone(&shared)));
        Ok(Connection {
            shared,
            _reader: Arc::new(ReaderTask(reader)),
        })
    }

    /// Connects to `$PIDBUS_ADDRESS`, or to the session bus if it is unset.
    pub async fn connect_default() -> Result<Self> {
        Self::connect(address::default_client_address()).await
    }

    /// Connects to the session bus of the current user.
    pub async fn session() -> Result<Self> {
        Self::connect(address::session_bus_path()).await
    }

    /// Connects to the system bus.
    pub async fn system() -> Result<Self> {
        Self::connect(address::SYSTEM_BUS_PATH).await
    }

    /// The socket path this connection uses.
    pub fn address(&self) -> &Path {
        &self.shared.address
    }

    /// The unique id the broker gave this connection.
    pub fn unique_id(&self) -> PeerId {
        self.shared.unique_id
    }

    /// This process's identity as the broker verified it at connect time.
    pub fn identity(&self) -> &ProcessIdentity {
        &self.shared.identity
    }

    /// Sends `payload` and `fds` to the broker, which echoes both back.
    ///
    /// Checks liveness and end-to-end descriptor passing.
    pub async fn ping(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        let request = BrokerRequest::Ping {
            payload: payload.to_vec(),
        };
        match self.request(request, fds).await? {
            (BrokerReply::Pong { payload }, fds) => Ok((payload, fds)),
            (other, _) => Err(unexpected("Ping", &other)),
        }
    }

    /// Asks the broker who this connection is (same as [`identity`](Self::identity),
    /// fetched anew).
    pub async fn whoami(&self) -> Result<PeerInfo> {
        match self.request(BrokerRequest::GetIdentity, &[]).await? {
            (BrokerReply::Identity(info), _) => Ok(info),
            (other, _) => Err(unexpected("GetIdentity", &other)),
        }
    }

    /// Every peer connected to the bus, with its verified identity.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        match self.request(BrokerRequest::ListPeers, &[]).await? {
            (BrokerReply::Peers(peers), _) => Ok(peers),
            (other, _) => Err(unexpected("ListPeers", &other)),
        }
    }

    async fn request(&self, body: BrokerRequest, fds: &[BorrowedFd<'_>]) -> Answer {
        let serial = self.shared.next_serial.fetch_add(1, Ordering::Relaxed);
        let bytes = codec::encode(
            &Message::Request(Request { serial, body }),
            self.shared.max_record_size,
        )?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.lock_pending();
            if let Some(reason) = &pending.closed {
                return Err(Error::Disconnected {
                    reason: Some(reason.clone()),
                });
            }
            pending.waiting.insert(serial, tx);
        }
        // If this future is dropped from here on, the entry is removed when
        // its answer arrives (the send to the dropped receiver just fails).
        if let Err(e) = self.shared.socket.send(&bytes, fds).await {
            self.shared.lock_pending().waiting.remove(&serial);
            return Err(Error::Io(e));
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::Disconnected { reason: None }))
    }
}

impl Shared {
    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // Every critical section is a single map operation: still consistent
        // after a panic elsewhere.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails every waiting request and refuses new ones.
    fn close(&self, reason: String) {
        let mut pending = self.lock_pending();
        pending.closed = Some(reason.clone());
        for (_, tx) in pending.waiting.drain() {
            let _ = tx.send(Err(Error::Disconnected {
                reason: Some(reason.clone()),
            }));
        }
    }
}

fn unexpected(request: &str, reply: &BrokerReply) -> Error {
    Error::Protocol(format!(
        "the broker answered {request} with an unrelated reply: {reply:?}"
    ))
}

async fn handshake(socket: &SeqPacket, address: &Path) -> Result<Welcome> {
    let hello = codec::encode(
        &Message::Hello(Hello {
            version: PROTOCOL_VERSION,
        }),
        limits::DEFAULT_MAX_RECORD_SIZE,
    )?;
    socket.send(&hello, &[]).await?;
    let received = socket
        .recv(limits::MAX_CONFIGURABLE_RECORD_SIZE)
        .await
        .map_err(|e| Error::Protocol(e.to_string()))?
        .ok_or(Error::Disconnected {
            reason: Some("the broker closed the connection during the handshake".into()),
        })?;
    match codec::decode(&received.data, limits::MAX_CONFIGURABLE_RECORD_SIZE)? {
        Message::Welcome(welcome) => Ok(welcome),
        Message::Error(e) => Err(Error::Refused {
            address: address.to_owned(),
            code: e.code,
            message: e.message,
        }),
        other => Err(Error::Protocol(format!(
            "expected Welcome from the broker, got {}",
            other.kind()
        ))),
    }
}

/// Routes every answer from the broker to the request waiting for it.
async fn read_answers(shared: Arc<Shared>) {
    let reason = loop {
        let received = match shared.socket.recv(shared.max_record_size).await {
            Ok(Some(received)) => received,
            Ok(None) => break "the broker closed the connection".to_owned(),
            Err(e) => break format!("cannot read from the broker: {e}"),
        };
        let message = match codec::decode(&received.data, shared.max_record_size) {
            Ok(message) => message,
            Err(e) => break format!("the broker sent an undecodable message: {e}"),
        };
        match message {
            Message::Reply(reply) => {
                answer(&shared, reply.reply_to, Ok((reply.body, received.fds)))
            }
            Message::Error(e) => match e.reply_to {
                Some(serial) => answer(
                    &shared,
                    serial,
                    Err(Error::Broker {
                        code: e.code,
                        message: e.message,
                    }),
                ),
                None => break format!("{} ({})", e.message, e.code),
            },
            other => break format!("the broker sent an unexpected {}", other.kind()),
        }
    };
    tracing::debug!(%reason, "pidbus connection closed");
    shared.close(reason);
}

fn answer(shared: &Shared, serial: u64, answer: Answer) {
    let waiter = shared.lock_pending().waiting.remove(&serial);
    match waiter {
        Some(tx) => {
            let _ = tx.send(answer);
        }
        None => tracing::debug!(serial, "answer to a request nobody waits for any more"),
    }
}
