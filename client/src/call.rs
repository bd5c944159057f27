//! Calling methods of other peers.

use std::os::fd::OwnedFd;
use std::time::Duration;

use pidbus_protocol::dbus::header::{Header, MessageType, NO_AUTO_START, NO_REPLY_EXPECTED};
use pidbus_protocol::{Destination, dbus, names};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zvariant::{DynamicType, Type};

use crate::connection::{Connection, DEFAULT_CALL_TIMEOUT, borrowed};
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

    /// The call's header (its serial is set when it is sent) and body.
    fn into_parts(self, no_reply: bool) -> (Header, Vec<u8>, Vec<OwnedFd>, Duration) {
        let mut header = Header {
            path: Some(self.path),
            interface: Some(self.interface),
            member: Some(self.member),
            destination: Some(self.destination.to_string()),
            signature: self.signature,
            unix_fds: u32::try_from(self.fds.len()).unwrap_or(u32::MAX),
            ..Header::new(MessageType::MethodCall, 0)
        };
        if no_reply {
            header.flags |= NO_REPLY_EXPECTED;
        }
        if self.no_auto_start {
            header.flags |= NO_AUTO_START;
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_CALL_TIMEOUT);
        (header, self.body, self.fds, timeout)
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
        let (header, body, fds, timeout) = call.into_parts(false);
        let answered = self
            .shared
            .exchange(header, &body, &borrowed(&fds), timeout)
            .await?;
        Ok(Reply {
            signature: answered.signature,
            body: answered.body,
            fds: answered.fds,
        })
    }

    /// Makes a call that expects no answer: nothing is tracked, and errors
    /// on the callee's side are not reported.
    pub async fn call_no_reply(&self, call: MethodCall) -> Result<()> {
        let (header, body, fds, _) = call.into_parts(true);
        self.shared
            .send_message(header, &body, &borrowed(&fds))
            .await
            .map(drop)
    }
}
