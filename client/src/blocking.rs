//! A blocking connection for programs that do not use async.
//!
//! The same API as [`crate::Connection`], driven by a private tokio runtime
//! with one worker thread, which also runs the handlers of served objects
//! and fills signal streams while the program does something else.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pidbus_protocol::{
    MatchRule, NameFlags, NameInfo, PeerId, PeerInfo, ProcessIdentity, ReleaseNameReply,
    RequestNameReply,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::{CallContext, MethodCall, MethodError, Reply, Response};

/// A blocking connection to a pidbus broker.
///
/// Do not use it from inside an async task (use [`crate::Connection`]
/// there).
#[derive(Debug)]
pub struct Connection {
    inner: crate::Connection,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Connection {
    /// Connects to the broker at `address` and performs the handshake.
    pub fn connect(address: impl AsRef<Path>) -> Result<Self> {
        let runtime = Arc::new(new_runtime()?);
        let inner = runtime.block_on(crate::Connection::connect(address))?;
        Ok(Connection { inner, runtime })
    }

    /// Connects to `$PIDBUS_ADDRESS`, or to the session bus if it is unset.
    pub fn connect_default() -> Result<Self> {
        Self::connect(pidbus_protocol::address::default_client_address())
    }

    /// The async connection underneath.
    pub fn as_async(&self) -> &crate::Connection {
        &self.inner
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

    /// See [`crate::Connection::call`].
    pub fn call<A, R>(
        &self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: &A,
    ) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.runtime
            .block_on(self.inner.call(destination, path, interface, member, args))
    }

    /// See [`crate::Connection::call_method`].
    pub fn call_method(&self, call: MethodCall) -> Result<Reply> {
        self.runtime.block_on(self.inner.call_method(call))
    }

    /// See [`crate::Connection::call_no_reply`].
    pub fn call_no_reply(&self, call: MethodCall) -> Result<()> {
        self.runtime.block_on(self.inner.call_no_reply(call))
    }

    /// Serves `interface` at `path` with a blocking handler; each call runs
    /// on a thread of the runtime's blocking pool, so calls are handled
    /// concurrently.
    pub fn serve<F>(&self, path: &str, interface: &str, handler: F) -> Result<()>
    where
        F: Fn(CallContext) -> Result<Response, MethodError> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        self.inner.serve(path, interface, move |ctx| {
            let handler = Arc::clone(&handler);
            async move {
                tokio::task::spawn_blocking(move || handler(ctx))
                    .await
                    .unwrap_or_else(|e| {
                        Err(MethodError::failed(
                            "org.pidbus.Error.HandlerFailed",
                            format!("the handler failed: {e}"),
                        ))
                    })
            }
        })
    }

    /// See [`crate::Connection::unserve`].
    pub fn unserve(&self, path: &str, interface: &str) -> bool {
        self.inner.unserve(path, interface)
    }

    /// See [`crate::Connection::request_name`].
    pub fn request_name(&self, name: &str, flags: NameFlags) -> Result<RequestNameReply> {
        self.runtime.block_on(self.inner.request_name(name, flags))
    }

    /// See [`crate::Connection::release_name`].
    pub fn release_name(&self, name: &str) -> Result<ReleaseNameReply> {
        self.runtime.block_on(self.inner.release_name(name))
    }

    /// See [`crate::Connection::names`].
    pub fn names(&self) -> Result<Vec<NameInfo>> {
        self.runtime.block_on(self.inner.names())
    }

    /// See [`crate::Connection::name_owner`].
    pub fn name_owner(&self, name: &str) -> Result<PeerId> {
        self.runtime.block_on(self.inner.name_owner(name))
    }

    /// See [`crate::Connection::name_events`].
    pub fn name_events(&self) -> Result<NameEventIter> {
        let stream = self.runtime.block_on(self.inner.name_events())?;
        Ok(self.events(stream))
    }

    /// See [`crate::Connection::emit`].
    pub fn emit<A: Serialize + ?Sized>(
        &self,
        path: &str,
        interface: &str,
        member: &str,
        args: &A,
    ) -> Result<()> {
        self.runtime
            .block_on(self.inner.emit(path, interface, member, args))
    }

    /// See [`crate::Connection::emit_to`].
    pub fn emit_to<A: Serialize + ?Sized>(
        &self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: &A,
    ) -> Result<()> {
        self.runtime.block_on(
            self.inner
                .emit_to(destination, path, interface, member, args),
        )
    }

    /// See [`crate::Connection::subscribe`].
    pub fn subscribe(&self, rule: MatchRule) -> Result<Signals> {
        let stream = self.runtime.block_on(self.inner.subscribe(rule))?;
        Ok(self.events(stream))
    }

    /// See [`crate::Connection::monitor`].
    pub fn monitor(&self) -> Result<MonitorIter> {
        let stream = self.runtime.block_on(self.inner.monitor())?;
        Ok(self.events(stream))
    }

    fn events<S>(&self, stream: S) -> Events<S> {
        Events {
            stream,
            runtime: Arc::clone(&self.runtime),
        }
    }
}

/// A blocking iterator over a stream of signals, name events or monitor
/// copies. Iteration ends when the connection closes.
#[derive(Debug)]
pub struct Events<S> {
    stream: S,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl<S: futures_core::Stream + Unpin> Events<S> {
    /// The next item, waiting at most `timeout`; `None` on timeout or when
    /// the connection is closed.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<S::Item> {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.stream).poll_next(cx));
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, next).await.ok().flatten() })
    }
}

impl<S: futures_core::Stream + Unpin> Iterator for Events<S> {
    type Item = S::Item;

    fn next(&mut self) -> Option<S::Item> {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.stream).poll_next(cx));
        self.runtime.block_on(next)
    }
}

/// Signals: yields [`Signal`](crate::Signal).
pub type Signals = Events<crate::SignalStream>;
/// Name events: yields [`BusEvent`](crate::BusEvent).
pub type NameEventIter = Events<crate::NameEvents>;
/// Monitor copies: yields [`Monitored`](crate::Monitored).
pub type MonitorIter = Events<crate::MonitorStream>;

fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pidbus")
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::Io)
}
