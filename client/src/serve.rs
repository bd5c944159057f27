//! Serving objects: handlers registered for (object path, interface), the
//! context a handler gets with each call, and how it answers.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use pidbus_protocol::dbus::header::{Header, MessageType, NO_REPLY_EXPECTED};
use pidbus_protocol::dbus::{caller as caller_field, errors};
use pidbus_protocol::{
    Authorization, Caller, Destination, ErrorCode, ErrorReply, PeerId, dbus, names,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zvariant::{DynamicType, Type};

use crate::connection::{Connection, Shared, borrowed};
use crate::error::{Error, Result};
use crate::interface::{Interface, ObjectHandle, Served};
use crate::wire::Received;

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response, MethodError>> + Send>>;

pub(crate) type Handler = Arc<dyn Fn(CallContext) -> HandlerFuture + Send + Sync>;

/// The objects a connection serves.
#[derive(Default)]
pub(crate) struct Handlers {
    registry: RwLock<Registry>,
}

/// What is served, by object path.
#[derive(Default)]
struct Registry {
    /// A handler per (path, interface), declared or not.
    exact: HashMap<(String, String), Handler>,
    /// The declared interfaces of each path (for introspection,
    /// properties, and calls that name no interface).
    declared: BTreeMap<String, Vec<Arc<Served>>>,
    /// Handlers of every path below a prefix, by (prefix, interface).
    fallbacks: BTreeMap<(String, String), Handler>,
    /// Paths that serve `org.freedesktop.DBus.ObjectManager` for the
    /// declared objects below them.
    managers: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.read();
        write!(
            f,
            "Handlers({} objects, {} fallbacks)",
            registry.exact.len(),
            registry.fallbacks.len()
        )
    }
}

/// How a call is answered.
enum Target {
    /// By a handler.
    Handler(Handler),
    /// By the object's introspection data.
    Introspect(String),
    /// By the object's properties.
    Properties(Vec<Arc<Served>>),
    /// `Peer.Ping`, `Peer.GetMachineId`.
    Peer,
    /// `ObjectManager.GetManagedObjects`: the declared objects below.
    ObjectManager(Vec<(String, Vec<Arc<Served>>)>),
}

impl Handlers {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        // Each write is a few inserts or removes.
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What answers a call of `member` of `interface` (empty: none named)
    /// at `path`, or the error the caller gets.
    fn find(&self, path: &str, interface: &str, member: &str) -> Result<Target, MethodError> {
        let registry = self.read();
        let declared = registry.declared.get(path);
        let key = (path.to_owned(), interface.to_owned());
        if let Some(handler) = registry.exact.get(&key) {
            return Ok(Target::Handler(Arc::clone(handler)));
        }
        let on_path = registry.exact.keys().any(|(p, _)| p == path);
        match interface {
            crate::interface::INTROSPECTABLE => {
                return Ok(Target::Introspect(registry.introspect(path)));
            }
            crate::interface::PEER => return Ok(Target::Peer),
            crate::interface::OBJECT_MANAGER if registry.managers.contains(path) => {
                return Ok(Target::ObjectManager(registry.managed_below(path)));
            }
            crate::interface::PROPERTIES if declared.is_some() => {
                return Ok(Target::Properties(declared.cloned().unwrap_or_default()));
            }
            // D-Bus lets a call name no interface: the declared interface
            // with that member answers.
            "" => {
                let named = declared
                    .into_iter()
                    .flatten()
                    .find(|s| s.methods.contains_key(member));
                if let Some(served) = named {
                    let key = (path.to_owned(), served.name.clone());
                    if let Some(handler) = registry.exact.get(&key) {
                        return Ok(Target::Handler(Arc::clone(handler)));
                    }
                }
            }
            _ => {}
        }
        if let Some(handler) = registry.fallback(path, interface) {
            return Ok(Target::Handler(handler));
        }
        if on_path {
            Err(MethodError::new(
                ErrorCode::UnknownInterface,
                format!("object {path} has no interface {interface}"),
            ))
        } else {
            Err(MethodError::new(
                ErrorCode::UnknownObject,
                format!("no object at {path}"),
            ))
        }
    }
}

impl Registry {
    /// The declared objects strictly below `manager`.
    fn managed_below(&self, manager: &str) -> Vec<(String, Vec<Arc<Served>>)> {
        self.declared
            .iter()
            .filter(|(path, _)| {
                path.as_str() != manager
                    && pidbus_protocol::match_rule::in_path_namespace(manager, path)
            })
            .map(|(path, served)| (path.clone(), served.clone()))
            .collect()
    }

    /// The object manager whose objects include `path`, if any (the
    /// nearest above it).
    fn manager_of(&self, path: &str) -> Option<String> {
        self.managers
            .iter()
            .filter(|m| {
                m.as_str() != path && pidbus_protocol::match_rule::in_path_namespace(m, path)
            })
            .max_by_key(|m| m.len())
            .cloned()
    }

    /// The handler of the longest served prefix of `path` for `interface`.
    fn fallback(&self, path: &str, interface: &str) -> Option<Handler> {
        self.fallbacks
            .iter()
            .filter(|((prefix, iface), _)| {
                iface == interface && pidbus_protocol::match_rule::in_path_namespace(prefix, path)
            })
            .max_by_key(|((prefix, _), _)| prefix.len())
            .map(|(_, handler)| Arc::clone(handler))
    }

    /// The introspection XML of `path`: its interfaces and child nodes.
    fn introspect(&self, path: &str) -> String {
        let declared = self.declared.get(path).cloned().unwrap_or_default();
        let undeclared: Vec<String> = self
            .exact
            .keys()
            .filter(|(p, iface)| p == path && !declared.iter().any(|s| &s.name == iface))
            .map(|(_, iface)| iface.clone())
            .collect();
        let prefix = if path == "/" {
            "/".to_owned()
        } else {
            format!("{path}/")
        };
        let mut children: Vec<String> = self
            .exact
            .keys()
            .map(|(p, _)| p)
            .chain(self.fallbacks.keys().map(|(p, _)| p))
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter_map(|rest| rest.split('/').next())
            .filter(|child| !child.is_empty())
            .map(str::to_owned)
            .collect();
        children.sort();
        children.dedup();
        let manager = self.managers.contains(path);
        crate::interface::introspect(&declared, &undeclared, &children, manager)
    }
}

impl Connection {
    /// Serves calls to `interface` on the object at `path` with `handler`.
    ///
    /// The handler gets a [`CallContext`] (the caller's verified identity,
    /// the member called, typed arguments, descriptors) and answers with a
    /// [`Response`] or a [`MethodError`]. Each call runs in its own task,
    /// so calls are handled concurrently. Calls to a path or interface
    /// nobody serves are answered with `UnknownObject`/`UnknownInterface`.
    ///
    /// ```no_run
    /// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
    /// use pidbus::{MethodError, Response};
    /// bus.serve("/org/example/Greeter", "org.example.Greeter", |call| async move {
    ///     match call.member() {
    ///         "Greet" => {
    ///             let (name,): (String,) = call.args()?;
    ///             Response::new(&format!("hello {name}, uid {}", call.caller().uid))
    ///         }
    ///         other => Err(MethodError::unknown_method(other)),
    ///     }
    /// })?;
    /// bus.request_name("org.example.Greeter", Default::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn serve<F, Fut>(&self, path: &str, interface: &str, handler: F) -> Result<()>
    where
        F: Fn(CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, MethodError>> + Send + 'static,
    {
        names::validate_object_path(path)?;
        names::validate_interface(interface)?;
        let handler: Handler = Arc::new(move |ctx| Box::pin(handler(ctx)) as HandlerFuture);
        let key = (path.to_owned(), interface.to_owned());
        let mut registry = self.shared.handlers.write();
        if registry.exact.contains_key(&key) {
            return Err(Error::AlreadyServed {
                path: path.to_owned(),
                interface: interface.to_owned(),
            });
        }
        registry.exact.insert(key, handler);
        Ok(())
    }

    /// Serves a declared [`Interface`] at `path`: its methods with typed
    /// arguments, its properties, its signals, and (for the object) the
    /// standard `Introspectable`, `Properties` and `Peer` interfaces.
    /// Returns the handle that sets properties and emits signals.
    pub fn serve_interface(&self, path: &str, interface: Interface) -> Result<ObjectHandle> {
        names::validate_object_path(path)?;
        interface.check_arg_names()?;
        let served = Arc::new(Served::new(interface));
        let key = (path.to_owned(), served.name.clone());
        let mut registry = self.shared.handlers.write();
        if registry.exact.contains_key(&key) {
            return Err(Error::AlreadyServed {
                path: path.to_owned(),
                interface: served.name.clone(),
            });
        }
        let methods = Arc::clone(&served);
        let object_path = path.to_owned();
        let handler: Handler =
            Arc::new(
                move |mut call: CallContext| match methods.methods.get(call.member()) {
                    Some(method) => {
                        call.object = Some(ObjectHandle::new(
                            Arc::clone(&call.shared),
                            object_path.clone(),
                            Arc::clone(&methods),
                        ));
                        (method.handler)(call)
                    }
                    None => {
                        let error = MethodError::unknown_method(call.member());
                        Box::pin(async move { Err(error) }) as HandlerFuture
                    }
                },
            );
        registry.exact.insert(key, handler);
        registry
            .declared
            .entry(path.to_owned())
            .or_default()
            .push(Arc::clone(&served));
        if let Some(manager) = registry.manager_of(path) {
            let (shared, path, added) = (
                Arc::clone(&self.shared),
                path.to_owned(),
                Arc::clone(&served),
            );
            spawn_announcement(async move {
                crate::interface::announce_added(&shared, &manager, &path, &added).await
            });
        }
        Ok(ObjectHandle::new(
            Arc::clone(&self.shared),
            path.to_owned(),
            served,
        ))
    }

    /// Serves `org.freedesktop.DBus.ObjectManager` at `path`: its
    /// `GetManagedObjects` lists the declared objects below `path` with
    /// their interfaces and properties, and `InterfacesAdded` /
    /// `InterfacesRemoved` follow [`serve_interface`](Self::serve_interface)
    /// and [`unserve`](Self::unserve) below it.
    pub fn serve_object_manager(&self, path: &str) -> Result<()> {
        names::validate_object_path(path)?;
        let mut registry = self.shared.handlers.write();
        if !registry.managers.insert(path.to_owned()) {
            return Err(Error::AlreadyServed {
                path: path.to_owned(),
                interface: crate::interface::OBJECT_MANAGER.to_owned(),
            });
        }
        Ok(())
    }

    /// Serves `interface` on every object at or below `prefix` that has no
    /// handler of its own (the longest prefix wins): for objects made on
    /// the fly (one per file, per user, …). The handler sees the object
    /// called in [`CallContext::path`].
    pub fn serve_fallback<F, Fut>(&self, prefix: &str, interface: &str, handler: F) -> Result<()>
    where
        F: Fn(CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, MethodError>> + Send + 'static,
    {
        names::validate_object_path(prefix)?;
        names::validate_interface(interface)?;
        let handler: Handler = Arc::new(move |ctx| Box::pin(handler(ctx)) as HandlerFuture);
        let key = (prefix.to_owned(), interface.to_owned());
        let mut registry = self.shared.handlers.write();
        if registry.fallbacks.contains_key(&key) {
            return Err(Error::AlreadyServed {
                path: format!("{prefix} (and below)"),
                interface: interface.to_owned(),
            });
        }
        registry.fallbacks.insert(key, handler);
        Ok(())
    }

    /// Stops serving `interface` at `path`; false if it was not served.
    pub fn unserve(&self, path: &str, interface: &str) -> bool {
        let mut registry = self.shared.handlers.write();
        let mut was_declared = false;
        if let Some(declared) = registry.declared.get_mut(path) {
            let before = declared.len();
            declared.retain(|served| served.name != interface);
            was_declared = declared.len() != before;
            if declared.is_empty() {
                registry.declared.remove(path);
            }
        }
        if let Some(manager) = registry.manager_of(path).filter(|_| was_declared) {
            let (shared, path, interface) = (
                Arc::clone(&self.shared),
                path.to_owned(),
                interface.to_owned(),
            );
            spawn_announcement(async move {
                crate::interface::announce_removed(&shared, &manager, &path, &interface).await
            });
        }
        registry
            .exact
            .remove(&(path.to_owned(), interface.to_owned()))
            .is_some()
    }
}

/// One call as a handler sees it.
#[derive(Debug)]
pub struct CallContext {
    call: Incoming,
    fds: Vec<OwnedFd>,
    shared: Arc<Shared>,
    /// The object called, for an interface served with
    /// [`Connection::serve_interface`].
    object: Option<crate::interface::ObjectHandle>,
}

impl CallContext {
    /// The connection the call came in on.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Who called, as the broker verified it (never what the caller claims).
    pub fn caller(&self) -> &Caller {
        &self.call.caller
    }

    /// The object called, for an interface served with
    /// [`Connection::serve_interface`]: a handler sets its properties and
    /// emits its signals through it (`None` for a handler served with
    /// [`Connection::serve`]).
    ///
    /// ```
    /// # use pidbus::{Access, Interface, MethodError};
    /// let counter = Interface::new("org.example.Counter")?
    ///     .property("Count", Access::Read, 0u32)
    ///     .signal::<(u32,)>("Counted")
    ///     .method("Add", |call, (n,): (u32,)| async move {
    ///         let object = call.object().ok_or_else(|| MethodError::invalid_args("no object"))?;
    ///         let count: u32 = object.property::<u32>("Count")? + n;
    ///         object.set_property("Count", count).await?;
    ///         object.emit("Counted", &(count,)).await?;
    ///         Ok(count)
    ///     });
    /// # Ok::<(), pidbus::Error>(())
    /// ```
    pub fn object(&self) -> Option<&crate::interface::ObjectHandle> {
        self.object.as_ref()
    }

    /// The connection the call came in on, to make calls or watch names
    /// from a handler (`Disconnected` if its last handle was dropped
    /// meanwhile).
    pub fn connection(&self) -> Result<crate::Connection> {
        self.shared.connection()
    }

    /// Asks the broker whether the caller of *this call* may perform the
    /// application action `action` (a polkit-style id such as
    /// `org.example.reboot`). The broker decides on its verified identity
    /// of the caller, never on a PID: a caller that has left the bus, for
    /// instance one that exited after handing its socket to a child, is
    /// denied.
    ///
    /// ```no_run
    /// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
    /// use pidbus::{MethodError, Response};
    /// bus.serve("/org/example/Power", "org.example.Power", |call| async move {
    ///     let answer = call.authorize("org.example.reboot").await
    ///         .map_err(|e| MethodError::failed("org.example.Error", e.to_string()))?;
    ///     if !answer.allowed {
    ///         return Err(MethodError::access_denied(format!("not allowed ({})", answer.rule)));
    ///     }
    ///     Response::new("rebooting")
    /// })?;
    /// # Ok(()) }
    /// ```
    pub async fn authorize(&self, action: &str) -> Result<Authorization> {
        let subject = self.call.caller.id.to_string();
        self.shared
            .check_authorization(action, &subject, self.call.serial)
            .await
    }

    /// [`authorize`](Self::authorize) for a handler of a blocking
    /// connection (which runs on a blocking thread of its runtime).
    /// Must not be called from an async task.
    pub fn authorize_blocking(&self, action: &str) -> Result<Authorization> {
        tokio::runtime::Handle::current().block_on(self.authorize(action))
    }

    /// The method called.
    pub fn member(&self) -> &str {
        &self.call.member
    }

    /// The object path called.
    pub fn path(&self) -> &str {
        &self.call.path
    }

    /// The interface called.
    pub fn interface(&self) -> &str {
        &self.call.interface
    }

    /// The destination as the caller addressed it (our unique id or one
    /// of our names).
    pub fn destination(&self) -> &Destination {
        &self.call.destination
    }

    /// Whether the caller expects no answer (any answer is discarded).
    pub fn no_reply_expected(&self) -> bool {
        self.call.no_reply
    }

    /// The arguments decoded as `T` (a tuple for several); an
    /// `InvalidArgs` error naming the expected signature for the caller if
    /// they are not of `T`'s type.
    pub fn args<T: DeserializeOwned + Type>(&self) -> Result<T, MethodError> {
        crate::body::decode(&self.call.signature, &self.call.body, &self.fds).map_err(|e| {
            MethodError::invalid_args(format!("{}.{}: {e}", self.call.interface, self.call.member))
        })
    }

    /// The D-Bus signature of the arguments.
    pub fn signature(&self) -> &str {
        &self.call.signature
    }

    /// The marshalled arguments, undecoded.
    pub fn body(&self) -> &[u8] {
        &self.call.body
    }

    /// Takes the descriptors that came with the call.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

/// A handler's successful answer: a return value and descriptors.
#[derive(Debug)]
pub struct Response {
    signature: String,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Response {
    /// Returns `value` (a tuple for several values), marshalled in the
    /// D-Bus format; descriptors among them go first.
    pub fn new<T: Serialize + DynamicType + ?Sized>(value: &T) -> Result<Self, MethodError> {
        let encoded = crate::body::encode(value)
            .map_err(|e| MethodError::failed("org.pidbus.Error.Encode", e.to_string()))?;
        Ok(Response {
            signature: encoded.signature,
            body: encoded.bytes,
            fds: encoded.fds,
        })
    }

    /// Returns nothing.
    pub fn empty() -> Self {
        Response {
            signature: String::new(),
            body: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Returns values already marshalled (little-endian) as `signature`
    /// says; they are checked against it here.
    pub fn raw(signature: &str, body: Vec<u8>) -> Result<Self, MethodError> {
        dbus::body::check(signature, &body, dbus::body::Endian::Little, u32::MAX)
            .map_err(|e| MethodError::failed("org.pidbus.Error.Encode", e.to_string()))?;
        Ok(Response {
            signature: signature.to_owned(),
            body,
            fds: Vec::new(),
        })
    }

    /// Sends `fds` with the answer (after any the value holds).
    pub fn with_fds(mut self, mut fds: Vec<OwnedFd>) -> Self {
        self.fds.append(&mut fds);
        self
    }
}

/// A handler's error answer; the caller gets it as a typed
/// [`Error`](crate::Error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodError {
    /// The kind of error.
    pub code: ErrorCode,
    /// An application error name (`org.example.Error.NotFound`), if any.
    pub name: Option<String>,
    /// What went wrong, for the caller.
    pub message: String,
}

impl MethodError {
    /// An error of kind `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        MethodError {
            code,
            name: None,
            message: message.into(),
        }
    }

    /// The arguments do not fit the method.
    pub fn invalid_args(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgs, message)
    }

    /// The interface has no method `member`.
    pub fn unknown_method(member: &str) -> Self {
        Self::new(ErrorCode::UnknownMethod, format!("no method {member}"))
    }

    /// The caller may not do this.
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AccessDenied, message)
    }

    /// The call failed with an application error `name`.
    pub fn failed(name: impl Into<String>, message: impl Into<String>) -> Self {
        MethodError {
            code: ErrorCode::Failed,
            name: Some(name.into()),
            message: message.into(),
        }
    }
}

impl From<crate::Error> for MethodError {
    /// An SDK error inside a handler — a call it made failed, a body did
    /// not decode — answers the handler's own caller, so that `?` works on
    /// the SDK's results: a refusal stays a refusal (`AccessDenied`,
    /// `InvalidArgs`, `LimitsExceeded`), anything else is `Failed` naming
    /// what failed (a callee's `NoSuchName` or `Timeout` is this method's
    /// failure, not the caller's). A program's own error type converts
    /// the same way with an `impl From<MyError> for MethodError`.
    fn from(error: crate::Error) -> Self {
        let code = match error.code() {
            Some(
                code @ (ErrorCode::AccessDenied
                | ErrorCode::InvalidArgs
                | ErrorCode::LimitsExceeded),
            ) => code,
            _ => ErrorCode::Failed,
        };
        Self::new(code, error.to_string())
    }
}

impl std::fmt::Display for MethodError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for MethodError {}

/// A call as a handler sees it.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub caller: Caller,
    pub serial: u32,
    pub destination: Destination,
    pub path: String,
    pub interface: String,
    pub member: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub no_reply: bool,
}

/// Callers' identities on a bus that does not attach them to calls, by
/// unique name; bounded (a unique name is never reused on a bus, so an
/// entry never goes stale, only old).
#[derive(Debug, Default)]
pub(crate) struct CallerCache(std::sync::Mutex<HashMap<PeerId, Caller>>);

/// Most callers remembered.
const CALLERS_REMEMBERED: usize = 1024;

impl CallerCache {
    fn get(&self, id: PeerId) -> Option<Caller> {
        let cache = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(&id).cloned()
    }

    fn put(&self, caller: &Caller) {
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CALLERS_REMEMBERED {
            cache.clear();
        }
        cache.insert(caller.id, caller.clone());
    }
}

/// A caller known by its unique name alone.
fn bare_caller(id: PeerId) -> Caller {
    Caller {
        id,
        pid: None,
        uid: u32::MAX,
        gid: u32::MAX,
        groups: Vec::new(),
        pidfs_id: None,
        exe: None,
        unit: None,
        label: None,
    }
}

/// Who sent `header`'s call: on pidbus the broker's field (never the
/// sender's: the broker writes every message anew); elsewhere what
/// `GetConnectionCredentials` says, asked once per caller.
async fn caller_of(shared: &Shared, header: &Header) -> Caller {
    let id = header
        .sender
        .as_deref()
        .and_then(|s| s.parse::<PeerId>().ok())
        .unwrap_or(PeerId(0));
    if shared.on_pidbus() {
        return match header
            .caller
            .as_deref()
            .map(|f| caller_field::decode(id, f))
        {
            Some(Ok(caller)) => caller,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the bus sent an unreadable caller field");
                bare_caller(id)
            }
            None => bare_caller(id),
        };
    }
    if let Some(known) = shared.callers.get(id) {
        return known;
    }
    let caller = match shared.identity_of(&id.to_string()).await {
        Ok(identity) => Caller {
            id,
            pid: (identity.pid != 0).then_some(identity.pid),
            uid: identity.uid,
            gid: identity.gid,
            groups: identity.groups,
            pidfs_id: identity.pidfs_id,
            exe: identity.exe,
            unit: identity.unit,
            label: identity.label,
        },
        Err(e) => {
            tracing::debug!(caller = %id, error = %e, "cannot learn a caller's credentials");
            bare_caller(id)
        }
    };
    shared.callers.put(&caller);
    caller
}

/// Runs the handler of a call that came in, and answers it.
pub(crate) fn dispatch_call(shared: &Arc<Shared>, received: Received) {
    let Received { header, body, fds } = received;
    let interface = header.interface.clone().unwrap_or_default();
    let path = header.path.clone().unwrap_or_default();
    let member = header.member.clone().unwrap_or_default();
    let target = shared.handlers.find(&path, &interface, &member);
    let shared = Arc::clone(shared);
    let mut answered: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        let caller = caller_of(&shared, &header).await;
        let call = Incoming {
            caller,
            serial: header.serial,
            destination: header
                .destination
                .as_deref()
                .and_then(|d| d.parse().ok())
                .unwrap_or(Destination::Unique(PeerId(0))),
            path,
            interface,
            member: member.clone(),
            signature: header.signature.clone(),
            body,
            no_reply: header.flags & NO_REPLY_EXPECTED != 0,
        };
        let (no_reply, to, serial) = (call.no_reply, call.caller.id, call.serial);
        let context = CallContext {
            call,
            fds,
            shared: Arc::clone(&shared),
            object: None,
        };
        let answer: HandlerFuture = match target {
            Err(e) => Box::pin(async move { Err(e) }),
            Ok(Target::Handler(handler)) => handler(context),
            Ok(Target::Introspect(xml)) => Box::pin(async move { Response::new(&xml) }),
            Ok(Target::Properties(declared)) => {
                let path = context.path().to_owned();
                Box::pin(crate::interface::properties(context, path, declared))
            }
            Ok(Target::Peer) => Box::pin(peer(context)),
            Ok(Target::ObjectManager(objects)) => Box::pin(async move {
                match context.member() {
                    "GetManagedObjects" => {
                        Response::new(&crate::interface::managed_objects(&objects)?)
                    }
                    other => Err(MethodError::unknown_method(other)),
                }
            }),
        };
        // A panicking handler becomes an error answer instead of a call
        // that never ends (caught here: no second task per call).
        let outcome = match (CatchPanic { inner: answer }).await {
            Ok(outcome) => outcome,
            Err(panic) => Err(MethodError::failed(
                "org.pidbus.Error.HandlerFailed",
                format!("the handler of {member} panicked: {panic}"),
            )),
        };
        if !no_reply {
            send_answer(&shared, to, serial, outcome).await;
        }
    });
    // Most handlers answer at once: polled here first, a call needs no
    // task of its own; one that waits (on I/O, a lock, another call) is
    // moved to a task, whose first poll takes over its wakeups.
    let mut first = std::task::Context::from_waker(std::task::Waker::noop());
    if answered.as_mut().poll(&mut first).is_pending() {
        tokio::spawn(answered);
    }
}

/// A handler's future, with a panic while it is polled turned into an
/// error (the panic's message) instead of unwinding through the task.
struct CatchPanic {
    inner: HandlerFuture,
}

impl Future for CatchPanic {
    type Output = std::result::Result<Result<Response, MethodError>, String>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                std::task::Poll::Ready(Err(message))
            }
        }
    }
}

/// Emits an object manager's signal from a task of the connection's
/// runtime (serving and unserving are not async).
fn spawn_announcement(announce: impl Future<Output = Result<()>> + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no tokio runtime: an object manager's signal was not emitted");
        return;
    };
    runtime.spawn(async move {
        if let Err(e) = announce.await {
            tracing::debug!(error = %e, "cannot emit an object manager's signal");
        }
    });
}

/// `org.freedesktop.DBus.Peer`, which every object answers.
async fn peer(call: CallContext) -> Result<Response, MethodError> {
    match call.member() {
        "Ping" => Ok(Response::empty()),
        "GetMachineId" => {
            let id = std::fs::read_to_string("/etc/machine-id").map_err(|e| {
                MethodError::failed(
                    "org.freedesktop.DBus.Error.Failed",
                    format!("/etc/machine-id: {e}"),
                )
            })?;
            Response::new(id.trim())
        }
        other => Err(MethodError::unknown_method(other)),
    }
}

/// Sends the answer to `caller`'s call `serial`.
async fn send_answer(
    shared: &Shared,
    caller: PeerId,
    serial: u32,
    outcome: Result<Response, MethodError>,
) {
    let answered = match outcome {
        Ok(response) => {
            let header = Header {
                reply_serial: Some(serial),
                destination: Some(caller.to_string()),
                signature: response.signature,
                unix_fds: u32::try_from(response.fds.len()).unwrap_or(u32::MAX),
                ..Header::new(MessageType::MethodReturn, 0)
            };
            shared
                .send_message(header, &response.body, &borrowed(&response.fds))
                .await
        }
        Err(e) => send_error(shared, caller, serial, e).await,
    };
    match answered {
        Ok(_) => {}
        Err(crate::Error::LimitsExceeded { message }) => {
            let too_large = MethodError::failed("org.pidbus.Error.ReplyTooLarge", message);
            if let Err(e) = send_error(shared, caller, serial, too_large).await {
                tracing::debug!(serial, error = %e, "cannot send an answer");
            }
        }
        Err(e) => tracing::debug!(serial, error = %e, "cannot send an answer"),
    }
}

async fn send_error(shared: &Shared, caller: PeerId, serial: u32, e: MethodError) -> Result<u32> {
    let name = errors::name_of(&ErrorReply::broker(None, e.code, String::new())).to_owned();
    let header = Header {
        error_name: Some(e.name.unwrap_or(name)),
        reply_serial: Some(serial),
        destination: Some(caller.to_string()),
        signature: "s".into(),
        ..Header::new(MessageType::Error, 0)
    };
    let body = dbus::value::marshal(&[dbus::value::Value::string(e.message.replace('\0', " "))])
        .map(|(_, body)| body)
        .unwrap_or_default();
    shared.send_message(header, &body, &[]).await
}
