//! # pidbus
//!
//! The client SDK of pidbus, a Linux message bus whose broker knows which
//! *process* is on the other end of every connection: it identifies each peer
//! by its pidfd (`SO_PEERPIDFD`) — uid, groups, executable, systemd unit and a
//! pidfs id that, unlike a PID, is never reused — and checks every message
//! it routes was sent by that process.
//!
//! It is a D-Bus library: every message is a D-Bus message, and it runs on
//! every Linux bus. On pidbus (its native `SOCK_SEQPACKET` socket, or its
//! D-Bus socket) each call a service gets carries the caller's verified
//! identity, and process handles, peer lists and authorization checks are
//! there; on dbus-broker and dbus-daemon what needs pidbus fails with
//! [`Error::NotSupported`] naming the feature, and what those buses offer
//! another way (a caller's uid and pid through `GetConnectionCredentials`,
//! `ProcessFD`) is used.
//!
//! [`Connection`] is async (tokio); [`blocking::Connection`] is the same API
//! for programs without async. Both connect to a socket path or a D-Bus
//! address (`unix:path=…`), or by default to the session bus:
//! `$PIDBUS_ADDRESS`, then pidbus's native session socket if it exists,
//! then `$DBUS_SESSION_BUS_ADDRESS`, then `$XDG_RUNTIME_DIR/bus`.
//!
//! What a connection does, D-Bus style:
//!
//! - **call** methods of other peers: [`Connection::call`] with serde-typed
//!   arguments and return value, [`Connection::call_method`] for raw bodies,
//!   descriptors and timeouts;
//! - **serve** objects: [`Connection::serve`] registers a handler for an
//!   object path and interface; every call it gets carries the caller's
//!   broker-verified identity ([`CallContext::caller`]);
//! - **own names**: [`Connection::request_name`], [`Connection::release_name`],
//!   [`Connection::name_events`];
//! - **signals**: [`Connection::emit`] and [`Connection::subscribe`] with a
//!   [`MatchRule`];
//! - **other processes**: [`Connection::pidfd`] hands out a [`PidFd`] of a
//!   peer's process, to wait for it (even if it is not your child), learn
//!   how it ended, or signal it; [`Connection::watch_process`] has the
//!   broker report its exit.
//!
//! Errors are one enum, [`Error`], with a variant per outcome a caller may
//! want to handle (no such name, access denied, timeout, peer gone, …).
//!
//! ```no_run
//! use pidbus::{Connection, MethodError, Response};
//!
//! // Needs a running broker: `pidbusd --session`.
//! #[tokio::main]
//! async fn main() -> Result<(), pidbus::Error> {
//!     let service = Connection::connect_default().await?;
//!     service.serve("/org/example/Hello", "org.example.Hello", |call| async move {
//!         match call.member() {
//!             // The caller's uid as the broker verified it: no PID involved.
//!             "Hello" => Response::new(&format!("hello, uid {}", call.caller().uid)),
//!             other => Err(MethodError::unknown_method(other)),
//!         }
//!     })?;
//!     service.request_name("org.example.Hello", Default::default()).await?;
//!
//!     let client = Connection::connect_default().await?;
//!     let greeting: String = client
//!         .call("org.example.Hello", "/org/example/Hello", "org.example.Hello", "Hello", &())
//!         .await?;
//!     println!("{greeting}");
//!     Ok(())
//! }
//! ```

mod authorization;
pub mod blocking;
mod body;
mod call;
mod connection;
mod driver;
mod error;
mod interface;
mod listeners;
mod names;
mod pidfd;
mod process;
mod proxy;
mod reconnect;
mod serve;
mod signals;
mod wire;

pub use body::{BodyError, CallerFacts};
pub use call::{MethodCall, Reply};
pub use connection::Connection;
pub use error::{Error, Result};
pub use interface::{Access, Interface, ObjectHandle};
pub use names::NameEvents;
pub use pidbus_protocol::{
    AuthSubject, Authorization, BusEvent, Caller, Destination, ErrorCode, ExitStatus, MatchRule,
    Message, Monitored, NameFlags, NameInfo, PeerId, PeerInfo, ProcessHandle, ProcessIdentity,
    ReleaseNameReply, RequestNameReply,
};
pub use pidfd::{PidFd, ProcessState};
pub use process::ProcessWatch;
pub use proxy::{Proxy, TypedSignals};
pub use reconnect::{ConnectionEvent, ConnectionEvents};
pub use serve::{CallContext, HandlerFuture, MethodError, Response};

/// Declares a D-Bus interface on an `impl` block: each `async fn` taking
/// `&self` is a method, and `into_interface(self)` builds the same
/// [`Interface`] the builder makes (add properties and signals to it with
/// the builder; serve it with [`Connection::serve_interface`]).
///
/// - The D-Bus name is the Rust name in PascalCase (`greet_all` is
///   `GreetAll`), or `#[dbus(name = "…")]`; names are checked when the
///   code compiles.
/// - The arguments are the D-Bus arguments, named as in Rust in
///   introspection — except what the call gives, which are not D-Bus
///   arguments: `&Caller` (the verified caller), `&ObjectHandle` (the
///   object called: set its properties, emit its signals) and
///   `&Connection` (the connection the call came in on).
/// - `#[dbus(out_args("greeting"))]` names the reply's arguments;
///   `#[dbus(deprecated)]` and `#[dbus(annotate("name", "value"))]` on a
///   method, property or signal annotate it in introspection.
/// - `#[property]` (or `#[property(readwrite)]`) on `fn name() -> T`
///   declares property `Name` with the value it returns as the first one
///   (set it later through the [`ObjectHandle`]).
/// - `#[setter(name)]` on an `async fn` taking the new value (and
///   `&Caller`, `&ObjectHandle`, `&Connection`) and returning the value to
///   store decides each `Set` of read-write property `name`: validate,
///   refuse by the verified caller, adjust (see [`Interface::on_set`]).
/// - `#[signal]` on `async fn name(object: &ObjectHandle, args…) ->
///   pidbus::Result<()> {}` declares signal `Name` and makes the function
///   emit it.
/// - A method returns its reply, or a `Result` whose error converts into
///   [`MethodError`] (`?` works on the SDK's errors).
/// - `#[authorize("org.example.action")]` asks the bus, before the body
///   runs, whether the caller of this very call may perform the action
///   (decided on its verified identity, race-free); a caller it does not
///   allow gets `AccessDenied` naming the deciding rule.
///
/// ```
/// use pidbus::{Caller, MethodError, interface};
///
/// struct Greeter;
///
/// #[interface(name = "org.example.Greeter")]
/// impl Greeter {
///     async fn greet(&self, caller: &Caller, name: String) -> String {
///         format!("hello {name}, uid {}", caller.uid)
///     }
///
///     #[authorize("org.example.greet-loudly")]
///     async fn shout(&self, name: String) -> Result<String, MethodError> {
///         Ok(name.to_uppercase())
///     }
/// }
///
/// let interface = Greeter.into_interface()?;
/// # drop(interface);
/// # Ok::<(), pidbus::Error>(())
/// ```
pub use pidbus_macros::interface;

/// Declares a typed client of a D-Bus interface on a trait of `async fn`s
/// (each taking `&self` and the call's arguments, returning
/// [`Result<T>`](crate::Result)): `#[proxy(interface = "…")] trait Greeter`
/// makes `GreeterProxy`, whose methods call the interface's members
/// (named in PascalCase, or `#[dbus(name = "…")]`, checked when the code
/// compiles). `GreeterProxy::new(&bus, destination, path)`; with
/// `default_service` and `default_path`, `GreeterProxy::connect(&bus)`.
/// A `#[property] async fn greetings(&self) -> pidbus::Result<u32>` reads
/// a property; a `#[signal] async fn greeted(&self) ->
/// pidbus::Result<TypedSignals<(String,)>>` subscribes to a signal.
/// `proxy()` is the untyped [`Proxy`] underneath (setting properties,
/// introspection).
///
/// ```no_run
/// #[pidbus::proxy(
///     interface = "org.example.Greeter",
///     default_service = "org.example.Greeter",
///     default_path = "/org/example/Greeter"
/// )]
/// trait Greeter {
///     async fn greet(&self, name: String) -> pidbus::Result<String>;
/// }
///
/// # async fn demo() -> pidbus::Result<()> {
/// let bus = pidbus::Connection::connect_default().await?;
/// let greeter = GreeterProxy::connect(&bus)?;
/// println!("{}", greeter.greet("you".into()).await?);
/// # Ok(())
/// # }
/// ```
pub use pidbus_macros::proxy;
pub use signals::{MonitorStream, STREAM_BUFFER, Signal, SignalStream};
/// The serde support for D-Bus bodies this crate uses: derive
/// [`zvariant::Type`] for your own argument types.
pub use zvariant;
