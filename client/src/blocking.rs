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
    ExitStatus, MatchRule, NameFlags, NameInfo, PeerId, PeerInfo, ProcessHandle, ProcessIdentity,
    ReleaseNameReply, RequestNameReply,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zvariant::{DynamicType, Type};

use crate::error::{Error, Result};
use crate::{CallContext, MethodCall, MethodError, ProcessState, Reply, Response};

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
    ///
    /// ```no_run
    /// use pidbus::MethodCall;
    /// # fn demo() -> pidbus::Result<()> {
    /// let bus = pidbus::blocking::Connection::connect("/run/pidbus/system.sock")?;
    /// let call = MethodCall::new("org.pidbus.Echo", "/org/pidbus/Echo", "org.pidbus.Echo", "Echo")?
    ///     .args(&("hello",))?;
    /// let reply: (String,) = bus.call_method(call)?.decode()?;
    /// assert_eq!(reply.0, "hello");
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect(address: impl AsRef<Path>) -> Result<Self> {
        let runtime = Arc::new(new_runtime()?);
        let inner = runtime.block_on(crate::Connection::connect(address))?;
        Ok(Connection { inner, runtime })
    }

    /// See [`crate::Connection::connect_reconnecting`]: reconnects after
    /// a broker restart and restores names and match rules.
    pub fn connect_reconnecting(address: impl AsRef<Path>) -> Result<Self> {
        let runtime = Arc::new(new_runtime()?);
        let inner = runtime.block_on(crate::Connection::connect_reconnecting(address))?;
        Ok(Connection { inner, runtime })
    }

    /// Connects to the session bus in the documented order, as
    /// [`crate::Connection::connect_default`] does.
    pub fn connect_default() -> Result<Self> {
        let runtime = Arc::new(new_runtime()?);
        let inner = runtime.block_on(crate::Connection::connect_default())?;
        Ok(Connection { inner, runtime })
    }

    /// Connects to the system bus, as [`crate::Connection::system`] does.
    pub fn system() -> Result<Self> {
        let runtime = Arc::new(new_runtime()?);
        let inner = runtime.block_on(crate::Connection::system())?;
        Ok(Connection { inner, runtime })
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

    /// See [`crate::Connection::authorize`].
    pub fn authorize(&self, action: &str) -> Result<crate::Authorization> {
        self.runtime.block_on(self.inner.authorize(action))
    }

    /// See [`crate::Connection::authorize_peer`].
    pub fn authorize_peer(&self, peer: PeerId, action: &str) -> Result<crate::Authorization> {
        self.runtime
            .block_on(self.inner.authorize_peer(peer, action))
    }

    /// See [`crate::Connection::reload_policy`].
    pub fn reload_policy(&self) -> Result<()> {
        self.runtime.block_on(self.inner.reload_policy())
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
        A: Serialize + DynamicType + ?Sized,
        R: DeserializeOwned + Type,
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
        self.inner.serve(path, interface, on_blocking_pool(handler))
    }

    /// See [`crate::Connection::serve_interface`]. The interface's
    /// handlers are async closures run by this connection's runtime; a
    /// handler that blocks should use `tokio::task::spawn_blocking`.
    pub fn serve_interface(
        &self,
        path: &str,
        interface: crate::Interface,
    ) -> Result<BlockingObject> {
        // Inside the runtime, so that an object manager above can announce it.
        let _runtime = self.runtime.enter();
        let object = self.inner.serve_interface(path, interface)?;
        Ok(BlockingObject {
            object,
            runtime: Arc::clone(&self.runtime),
        })
    }

    /// See [`crate::Connection::serve_fallback`]; the handler runs on a
    /// blocking thread, as [`serve`](Self::serve)'s does.
    pub fn serve_fallback<F>(&self, prefix: &str, interface: &str, handler: F) -> Result<()>
    where
        F: Fn(CallContext) -> Result<Response, MethodError> + Send + Sync + 'static,
    {
        self.inner
            .serve_fallback(prefix, interface, on_blocking_pool(handler))
    }

    /// A typed proxy of one interface of a remote object (see
    /// [`crate::Proxy`]).
    pub fn proxy(&self, destination: &str, path: &str, interface: &str) -> Result<Proxy> {
        Ok(Proxy {
            inner: crate::Proxy::new(&self.inner, destination, path, interface)?,
            runtime: Arc::clone(&self.runtime),
        })
    }

    /// See [`crate::Connection::unserve`].
    pub fn unserve(&self, path: &str, interface: &str) -> bool {
        let _runtime = self.runtime.enter();
        self.inner.unserve(path, interface)
    }

    /// See [`crate::Connection::serve_object_manager`].
    pub fn serve_object_manager(&self, path: &str) -> Result<()> {
        self.inner.serve_object_manager(path)
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

    /// See [`crate::Connection::activatable_names`].
    pub fn activatable_names(&self) -> Result<Vec<String>> {
        self.runtime.block_on(self.inner.activatable_names())
    }

    /// See [`crate::Connection::start_service`].
    pub fn start_service(&self, name: &str) -> Result<bool> {
        self.runtime.block_on(self.inner.start_service(name))
    }

    /// See [`crate::Connection::name_events`].
    pub fn name_events(&self) -> Result<NameEventIter> {
        let stream = self.runtime.block_on(self.inner.name_events())?;
        Ok(self.events(stream))
    }

    /// See [`crate::Connection::emit_body`].
    pub fn emit_body(
        &self,
        destination: Option<&str>,
        path: &str,
        interface: &str,
        member: &str,
        signature: &str,
        body: Vec<u8>,
    ) -> Result<()> {
        self.runtime.block_on(self.inner.emit_body(
            destination,
            path,
            interface,
            member,
            signature,
            body,
        ))
    }

    /// See [`crate::Connection::emit`].
    pub fn emit<A: Serialize + DynamicType + ?Sized>(
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
    pub fn emit_to<A: Serialize + DynamicType + ?Sized>(
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

    /// See [`crate::Connection::pidfd`].
    pub fn pidfd(&self, target: &str) -> Result<PidFd> {
        self.runtime.block_on(self.inner.pidfd(target)).map(PidFd)
    }

    /// See [`crate::Connection::watch_process`].
    pub fn watch_process(&self, target: &str) -> Result<ProcessWatch> {
        let watch = self.runtime.block_on(self.inner.watch_process(target))?;
        Ok(ProcessWatch {
            watch,
            runtime: Arc::clone(&self.runtime),
        })
    }

    /// Waits until the connection has ended for good; see
    /// [`crate::Connection::closed`].
    pub fn wait_closed(&self) -> Error {
        self.runtime.block_on(self.inner.closed())
    }

    /// See [`crate::Connection::connection_events`].
    pub fn connection_events(&self) -> Result<ConnectionEventIter> {
        let stream = self.inner.connection_events()?;
        Ok(self.events(stream))
    }

    fn events<S>(&self, stream: S) -> Events<S> {
        Events {
            stream,
            runtime: Arc::clone(&self.runtime),
        }
    }
}

/// A served object of a blocking connection (see [`crate::ObjectHandle`]).
#[derive(Debug)]
pub struct BlockingObject {
    object: crate::ObjectHandle,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl BlockingObject {
    /// See [`crate::ObjectHandle::set_property`].
    pub fn set_property<T>(&self, name: &str, value: T) -> Result<()>
    where
        T: Into<zvariant::Value<'static>> + Type,
    {
        self.runtime.block_on(self.object.set_property(name, value))
    }

    /// See [`crate::ObjectHandle::property`].
    pub fn property<T>(&self, name: &str) -> Result<T>
    where
        T: TryFrom<zvariant::OwnedValue>,
        T::Error: std::fmt::Display,
    {
        self.object.property(name)
    }

    /// See [`crate::ObjectHandle::emit`].
    pub fn emit<A: Serialize + DynamicType>(&self, name: &str, args: &A) -> Result<()> {
        self.runtime.block_on(self.object.emit(name, args))
    }
}

/// A blocking typed proxy (see [`crate::Proxy`]).
#[derive(Debug)]
pub struct Proxy {
    inner: crate::Proxy,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Proxy {
    /// See [`crate::Proxy::call`].
    pub fn call<A, R>(&self, member: &str, args: &A) -> Result<R>
    where
        A: Serialize + DynamicType + ?Sized,
        R: DeserializeOwned + Type,
    {
        self.runtime.block_on(self.inner.call(member, args))
    }

    /// See [`crate::Proxy::get`].
    pub fn get<T>(&self, name: &str) -> Result<T>
    where
        T: TryFrom<zvariant::OwnedValue>,
        T::Error: std::fmt::Display,
    {
        self.runtime.block_on(self.inner.get(name))
    }

    /// See [`crate::Proxy::set`].
    pub fn set<T: Into<zvariant::Value<'static>>>(&self, name: &str, value: T) -> Result<()> {
        self.runtime.block_on(self.inner.set(name, value))
    }

    /// See [`crate::Proxy::introspect`].
    pub fn introspect(&self) -> Result<String> {
        self.runtime.block_on(self.inner.introspect())
    }

    /// See [`crate::Proxy::signals`]: an iterator of decoded arguments.
    pub fn signals<A: DeserializeOwned + Type>(
        &self,
        member: &str,
    ) -> Result<Events<crate::TypedSignals<A>>> {
        let stream = self.runtime.block_on(self.inner.signals::<A>(member))?;
        Ok(Events {
            stream,
            runtime: Arc::clone(&self.runtime),
        })
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

/// A [`crate::PidFd`] whose waits block the calling thread (with `poll(2)`,
/// no runtime needed).
#[derive(Debug)]
pub struct PidFd(pub crate::PidFd);

impl PidFd {
    /// Blocks until the process has exited (it may still be a zombie).
    pub fn exited(&self) -> Result<()> {
        self.0.wait_exited(None).map(drop)
    }

    /// Blocks at most `timeout` for the process to exit; `true` if it has.
    pub fn exited_within(&self, timeout: Duration) -> Result<bool> {
        self.0.wait_exited(Some(timeout))
    }

    /// Blocks until the process has been reaped; how it ended (see
    /// [`crate::PidFd::exit_status`]).
    pub fn reaped(&self) -> Result<Option<ExitStatus>> {
        self.0.wait_reaped(None)?;
        self.0.exit_status()
    }

    /// Blocks at most `timeout` for the process to be reaped; `true` if it
    /// has (its [`exit_status`](Self::exit_status) is then known).
    pub fn reaped_within(&self, timeout: Duration) -> Result<bool> {
        self.0.wait_reaped(Some(timeout))
    }

    /// See [`crate::PidFd::state`].
    pub fn state(&self) -> Result<ProcessState> {
        self.0.state()
    }

    /// See [`crate::PidFd::exit_status`].
    pub fn exit_status(&self) -> Result<Option<ExitStatus>> {
        self.0.exit_status()
    }

    /// See [`crate::PidFd::pid`].
    pub fn pid(&self) -> Result<Option<u32>> {
        self.0.pid()
    }

    /// See [`crate::PidFd::pidfs_id`].
    pub fn pidfs_id(&self) -> Option<u64> {
        self.0.pidfs_id()
    }

    /// See [`crate::PidFd::peer`].
    pub fn peer(&self) -> Option<PeerId> {
        self.0.peer()
    }

    /// See [`crate::PidFd::send_signal`].
    pub fn send_signal(&self, signal: i32) -> Result<()> {
        self.0.send_signal(signal)
    }
}

/// A [`crate::ProcessWatch`] whose waits block the calling thread.
/// Dropping it ends the watch.
#[derive(Debug)]
pub struct ProcessWatch {
    watch: crate::ProcessWatch,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl ProcessWatch {
    /// See [`crate::ProcessWatch::process`].
    pub fn process(&self) -> ProcessHandle {
        self.watch.process()
    }

    /// See [`crate::ProcessWatch::state`].
    pub fn state(&self) -> Result<ProcessState> {
        self.watch.state()
    }

    /// Blocks until the process has exited.
    pub fn exited(&self) -> Result<()> {
        self.runtime.block_on(self.watch.exited())
    }

    /// Blocks until the process has been reaped; how it ended.
    pub fn reaped(&self) -> Result<Option<ExitStatus>> {
        self.runtime.block_on(self.watch.reaped())
    }

    /// Blocks at most `timeout` for the reap; the state reached by then.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<ProcessState> {
        let reaped = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, self.watch.reaped()).await });
        match reaped {
            Ok(status) => status.map(ProcessState::Reaped),
            Err(_elapsed) => self.watch.state(),
        }
    }
}

/// Signals: yields [`Signal`](crate::Signal).
pub type Signals = Events<crate::SignalStream>;
/// Name events: yields [`BusEvent`](crate::BusEvent).
pub type NameEventIter = Events<crate::NameEvents>;
/// Connection events: yields [`ConnectionEvent`](crate::ConnectionEvent).
pub type ConnectionEventIter = Events<crate::ConnectionEvents>;
/// Monitor copies: yields [`Monitored`](crate::Monitored).
pub type MonitorIter = Events<crate::MonitorStream>;

/// A blocking handler as an async one: each call runs on a thread of the
/// runtime's blocking pool, so calls are handled concurrently.
fn on_blocking_pool<F>(
    handler: F,
) -> impl Fn(CallContext) -> crate::HandlerFuture + Send + Sync + 'static
where
    F: Fn(CallContext) -> Result<Response, MethodError> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    move |ctx| {
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || handler(ctx))
                .await
                .unwrap_or_else(|e| {
                    Err(MethodError::failed(
                        "org.pidbus.Error.HandlerFailed",
                        format!("the handler failed: {e}"),
                    ))
                })
        })
    }
}

fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pidbus")
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::Io)
}
