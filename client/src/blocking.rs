//! A blocking connection for programs that do not use async.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use pidbus_protocol::{PeerId, PeerInfo, ProcessIdentity};

use crate::error::{Error, Result};

/// A blocking connection to a pidbus broker.
///
/// Runs a private single-threaded tokio runtime; do not use it from inside
/// an async task (use [`crate::Connection`] there).
#[derive(Debug)]
pub struct Connection {
    runtime: tokio::runtime::Runtime,
    inner: crate::Connection,
}

impl Connection {
    /// Connects to the broker at `address` and performs the handshake.
    pub fn connect(address: impl AsRef<Path>) -> Result<Self> {
        let runtime = new_runtime()?;
        let inner = runtime.block_on(crate::Connection::connect(address))?;
        Ok(Connection { runtime, inner })
    }

    /// Connects to `$PIDBUS_ADDRESS`, or to the session bus if it is unset.
    pub fn connect_default() -> Result<Self> {
        Self::connect(pidbus_protocol::address::default_client_address())
    }

    /// The socket path this connection uses.
    pub fn address(&self) -> &Path {
        self.inner.address()
    }

    /// The unique id the broker gave this connection.
    pub fn unique_id(&self) -> PeerId {
        self.inner.unique_id()
    }

    /// This process's identity as the broker verified it at connect time.
    pub fn identity(&self) -> &ProcessIdentity {
        self.inner.identity()
    }

    /// Sends `payload` and `fds` to the broker, which echoes both back.
    pub fn ping(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        self.runtime.block_on(self.inner.ping(payload, fds))
    }

    /// Asks the broker who this connection is.
    pub fn whoami(&self) -> Result<PeerInfo> {
        self.runtime.block_on(self.inner.whoami())
    }

    /// Every peer connected to the bus, with its verified identity.
    pub fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.runtime.block_on(self.inner.peers())
    }
}

fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::Io)
}
