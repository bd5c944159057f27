//! Calling methods of other peers.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use pidbus_protocol::{Call, Destination, Message, dbus, names};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zvariant::{DynamicType, Type};

use crate::connection::{Answer, Connection};
use crate::error::{Error, Result, decode_body};

/// A method call being put together: destination, object, method,
/// arguments, descriptors and options.
///
/// ```no_run
/// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
/// use std::time::Duration;
/// let reply = bus
///     .call_method(
///         pidbus::MethodCall::new("org.example.Music", "/org/example/Player", "org.example.Player", "Seek")?
///             .args(&(30_u32,))?
///             .timeout(Duration::from_secs(2)),
///     )
///     .await?;
/// let position: u32 = reply.decode()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MethodCall {
    destination: Destination,
    path: String,
    interface: String,
    member: String,
    signature: String,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
    timeout: Option<Duration>,
    no_auto_start: bool,
}

impl MethodCall {
    /// A call of `member` of `interface` on the object at `path` of
    /// `destination` (a unique id `:17` or a well-known name), with no
    /// arguments. Names are checked here, so a typo fails at once.
    pub fn new(destination: &str, path: &str, interface: &str, member: &str) -> Result<Self> {
        let destination: Destination = destination.parse()?;
        names::validate_object_path(path)?;
        names::validate_interface(interface)?;
        names::validate_member(member)?;
        Ok(MethodCall {
            destination,
            path: path.to_owned(),
            interface: interface.to_owned(),
            member: member.to_owned(),
            signature: String::new(),
            body: Vec::new(),
            fds: Vec::new(),
            timeout: None,
            no_auto_start: false,
        })
    }

    /// Marshals `args` as the arguments, in the D-Bus format (one value;
    /// a tuple for several). Descriptors among them (`zvariant::Fd`) are
    /// passed first, before those given to [`fds`](Self::fds).
    pub fn args<T: Serialize + DynamicType + ?Sized>(mut self, args: &T) -> Result<Self> {
        let encoded = crate::body::encode(args)?;
        self.signature = encoded.signature;
        self.body = encoded.bytes;
        let mut fds = encoded.fds;
        fds.append(&mut self.fds);
        self.fds = fds;
        Ok(self)
    }

    /// Uses arguments already marshalled (little-endian) as `signature`
    /// says; they are checked against it here.
    pub fn body(mut self, signature: &str, body: Vec<u8>) -> Result<Self> {
        dbus::body::check(signature, &body, dbus::body::Endian::Little, u32::MAX)
            .map_err(|e| Error::Body(crate::body::BodyError::Marshalling(e.to_string())))?;
        self.signature = signature.to_owned();
        self.body = body;
        Ok(self)
    }

    /// Passes `fds` to the callee (after any the arguments hold).
    pub fn fds(mut self, mut fds: Vec<OwnedFd>) -> Self {
        self.fds.append(&mut fds);
        self
    }

    /// Fails the call with [`Error::Timeout`] if no answer arrives within
    /// `timeout` (the broker's default is 25 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Fails the call with [`Error::NoSuchName`] instead of starting the
    /// service that provides an unowned destination name (by default the
    /// broker starts it and the call waits until the service owns the
    /// name).
    pub fn no_auto_start(mut self) -> Self {
        self.no_auto_start = true;
        self
    }

    fn into_message(self, serial: u64, no_reply: bool) -> (Message, Vec<OwnedFd>) {
        let timeout_ms = self
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let call = Call {
            serial,
            destination: self.destination,
            path: self.path,
            interface: self.interface,
            member: self.member,
            signature: self.signature,
            body: self.body,
            no_reply,
            timeout_ms,
            no_auto_start: self.no_auto_start,
        };
        (Message::Call(call), self.fds)
    }
}

/// The answer to a call: the marshalled return values and any descriptors.
#[derive(Debug)]
pub struct Reply {
    /// The D-Bus signature of the return values.
    pub signature: String,
    /// The return values, marshalled as `signature` says.
    pub body: Vec<u8>,
    /// Descriptors the callee passed back.
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// Decodes the return values as `T` (a tuple for several); an error
    /// names both signatures if `T` is not what the callee returned.
    pub fn decode<T: DeserializeOwned + Type>(&self) -> Result<T> {
        decode_body("reply", &self.signature, &self.body, &self.fds)
    }
}

impl Connection {
    /// Calls `member` of `interface` on the object at `path` of
    /// `destination` with `args`, and decodes the return value as `R`.
    ///
    /// ```no_run
    /// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
    /// let echoed: Vec<u32> = bus
    ///     .call("org.pidbus.Echo", "/org/pidbus/Echo", "org.pidbus.Echo", "Echo", &vec![1, 2, 3])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<A, R>(
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
        let call = MethodCall::new(destination, path, interface, member)?.args(args)?;
        self.call_method(call).await?.decode()
    }

    /// Makes a call and returns its raw answer (body bytes and descriptors).
    pub async fn call_method(&self, call: MethodCall) -> Result<Reply> {
        let serial = self.shared.next_serial();
        let (message, fds) = call.into_message(serial, false);
        let bytes = self.shared.encode(&message)?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        match self.shared.exchange(serial, &bytes, &borrowed).await? {
            (Answer::Return(signature, body), fds) => Ok(Reply {
                signature,
                body,
                fds,
            }),
            (Answer::Broker(reply), _) => Err(Error::Protocol(format!(
                "the broker answered a call with a broker reply: {reply:?}"
            ))),
        }
    }

    /// Makes a call that expects no answer: nothing is tracked, and errors
    /// on the callee's side are not reported.
    pub async fn call_no_reply(&self, call: MethodCall) -> Result<()> {
        let (message, fds) = call.into_message(self.shared.next_serial(), true);
        let bytes = self.shared.encode(&message)?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        self.send(&bytes, &borrowed).await
    }
}
