//! Typed client proxies: one remote object's interface, called with serde
//! types, its properties read and set, its signals as typed streams. The
//! object may be served by a native peer or a D-Bus one.

use std::collections::HashMap;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zvariant::{DynamicType, OwnedValue, Type};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::interface::{INTROSPECTABLE, PROPERTIES};
use crate::signals::SignalStream;
use crate::{MatchRule, MethodCall};

/// One interface of one remote object.
///
/// ```no_run
/// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
/// let greeter = pidbus::Proxy::new(&bus, "org.example.Greeter", "/org/example/Greeter", "org.example.Greeter")?;
/// let text: String = greeter.call("Greet", &("Ada",)).await?;
/// let count: u32 = greeter.get("Greetings").await?;
/// let mut greeted = greeter.signals::<(String,)>("Greeted").await?;
/// if let Some(Ok((who,))) = greeted.next().await {
///     println!("{who} was greeted");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Proxy {
    bus: Connection,
    destination: String,
    path: String,
    interface: String,
}

impl Proxy {
    /// The interface `interface` of the object at `path` of `destination`
    /// (a unique id or a well-known name); names are checked here.
    pub fn new(bus: &Connection, destination: &str, path: &str, interface: &str) -> Result<Self> {
        MethodCall::new(destination, path, interface, "Check")?;
        Ok(Proxy {
            bus: bus.clone(),
            destination: destination.to_owned(),
            path: path.to_owned(),
            interface: interface.to_owned(),
        })
    }

    fn method(&self, interface: &str, member: &str) -> Result<MethodCall> {
        MethodCall::new(&self.destination, &self.path, interface, member)
    }

    /// Calls `member` with `args` (a tuple for several) and decodes the
    /// result as `R`.
    pub async fn call<A, R>(&self, member: &str, args: &A) -> Result<R>
    where
        A: Serialize + DynamicType + ?Sized,
        R: DeserializeOwned + Type,
    {
        let call = self.method(&self.interface, member)?.args(args)?;
        self.bus.call_method(call).await?.decode()
    }

    /// Calls `member` without waiting for (or getting) an answer.
    pub async fn call_no_reply<A>(&self, member: &str, args: &A) -> Result<()>
    where
        A: Serialize + DynamicType + ?Sized,
    {
        let call = self.method(&self.interface, member)?.args(args)?;
        self.bus.call_no_reply(call).await
    }

    /// Property `name`, as `T`.
    pub async fn get<T>(&self, name: &str) -> Result<T>
    where
        T: TryFrom<OwnedValue>,
        T::Error: std::fmt::Display,
    {
        let call = self
            .method(PROPERTIES, "Get")?
            .args(&(self.interface.as_str(), name))?;
        let value: OwnedValue = self.bus.call_method(call).await?.decode()?;
        T::try_from(value).map_err(|e| Error::Decode {
            what: "property",
            reason: format!("{}.{name}: {e}", self.interface),
        })
    }

    /// Sets property `name` to `value`.
    pub async fn set<T>(&self, name: &str, value: T) -> Result<()>
    where
        T: Into<zvariant::Value<'static>>,
    {
        let value: zvariant::Value<'static> = value.into();
        let call = self
            .method(PROPERTIES, "Set")?
            .args(&(self.interface.as_str(), name, value))?;
        self.bus.call_method(call).await?.decode()
    }

    /// Every property of the interface.
    pub async fn get_all(&self) -> Result<HashMap<String, OwnedValue>> {
        let call = self
            .method(PROPERTIES, "GetAll")?
            .args(&(self.interface.as_str(),))?;
        self.bus.call_method(call).await?.decode()
    }

    /// The object's introspection XML.
    pub async fn introspect(&self) -> Result<String> {
        let call = self.method(INTROSPECTABLE, "Introspect")?;
        self.bus.call_method(call).await?.decode()
    }

    /// The object's signal `member`, its arguments decoded as `A`.
    pub async fn signals<A: DeserializeOwned + Type>(
        &self,
        member: &str,
    ) -> Result<TypedSignals<A>> {
        let rule = MatchRule {
            sender: Some(self.destination.clone()),
            path: Some(self.path.clone()),
            interface: Some(self.interface.clone()),
            member: Some(member.to_owned()),
            ..MatchRule::default()
        };
        Ok(TypedSignals {
            stream: self.bus.subscribe(rule).await?,
            _args: PhantomData,
        })
    }
}

/// A proxy's signals of one member, decoded as `A`.
#[derive(Debug)]
pub struct TypedSignals<A> {
    stream: SignalStream,
    _args: PhantomData<fn() -> A>,
}

impl<A: DeserializeOwned + Type> futures_core::Stream for TypedSignals<A> {
    type Item = Result<A>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<A>>> {
        std::pin::Pin::new(&mut self.stream)
            .poll_next(cx)
            .map(|signal| signal.map(|s| s.args()))
    }
}

impl<A: DeserializeOwned + Type> TypedSignals<A> {
    /// The next signal's arguments (an error if they are not of type `A`);
    /// `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Result<A>> {
        let signal = self.stream.next().await?;
        Some(signal.args())
    }
}
