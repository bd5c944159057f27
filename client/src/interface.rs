//! Declared interfaces: methods with typed arguments and results,
//! properties and signals, declared once with [`Interface`] and served with
//! [`Connection::serve_interface`]. From the declaration the connection
//! answers `org.freedesktop.DBus.Introspectable` (standard XML),
//! `org.freedesktop.DBus.Properties` (with `PropertiesChanged`) and
//! `org.freedesktop.DBus.Peer`, and refuses arguments of the wrong type
//! before a handler runs, naming the expected signature. D-Bus peers see
//! the same object a native peer does.
//!
//! ```no_run
//! # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
//! use pidbus::{Access, Interface};
//! let greeter = Interface::new("org.example.Greeter")?
//!     .method("Greet", |call, (name,): (String,)| async move {
//!         Ok(format!("hello {name}, uid {}", call.caller().uid))
//!     })
//!     .property("Greetings", Access::Read, 0u32)
//!     .property("Motd", Access::ReadWrite, String::from("hi"))
//!     .signal::<(String,)>("Greeted");
//! let object = bus.serve_interface("/org/example/Greeter", greeter)?;
//! object.set_property("Greetings", 1u32).await?; // PropertiesChanged goes out
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use zvariant::{DynamicType, OwnedValue, Type};

use crate::body::body_signature;
use crate::connection::Shared;
use crate::error::{Error, Result};
use crate::serve::{CallContext, Handler, HandlerFuture, MethodError, Response};

/// The standard interface a declared object answers for its properties.
pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// The standard interface a declared object answers for its description.
pub const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
/// The standard interface every object answers `Ping` on.
pub const PEER: &str = "org.freedesktop.DBus.Peer";
/// The standard interface of an object that lists the objects below it.
pub const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";

/// Whether peers may set a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Peers read it; the service sets it ([`ObjectHandle::set_property`]).
    Read,
    /// Peers read and set it.
    ReadWrite,
}

/// A method's declaration.
pub(crate) struct MethodDef {
    inputs: String,
    outputs: String,
    /// The arguments' names for introspection (`arg0`… when not named).
    input_names: Vec<String>,
    output_names: Vec<String>,
    pub(crate) handler: Handler,
}

/// What decides a `Set` of a read-write property: the value to store, or
/// the error the setter gets.
type SetHook = Arc<
    dyn Fn(
            CallContext,
            OwnedValue,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = std::result::Result<OwnedValue, MethodError>> + Send>,
        > + Send
        + Sync,
>;

/// A property's declaration and value.
struct PropertyDef {
    signature: String,
    access: Access,
    value: OwnedValue,
    /// Asked before a peer's `Set` is stored (`None`: stored as given).
    on_set: Option<SetHook>,
}

/// An interface being declared: build it with [`Interface::method`],
/// [`Interface::property`] and [`Interface::signal`], then serve it.
pub struct Interface {
    name: String,
    methods: BTreeMap<String, MethodDef>,
    /// Methods `arg_names` named that were not declared (an error when
    /// served).
    unknown_named: Vec<String>,
    /// Introspection annotations by member name.
    annotations: BTreeMap<String, Vec<(String, String)>>,
    properties: BTreeMap<String, PropertyDef>,
    signals: BTreeMap<String, String>,
}

impl std::fmt::Debug for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interface")
            .field("name", &self.name)
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("signals", &self.signals)
            .finish()
    }
}

impl Interface {
    /// An interface named `name` (checked here) with nothing in it yet.
    pub fn new(name: &str) -> Result<Self> {
        pidbus_protocol::names::validate_interface(name)?;
        Ok(Interface {
            name: name.to_owned(),
            methods: BTreeMap::new(),
            unknown_named: Vec::new(),
            annotations: BTreeMap::new(),
            properties: BTreeMap::new(),
            signals: BTreeMap::new(),
        })
    }

    /// Declares method `name`, taking arguments `A` (a tuple for several,
    /// `()` for none) and returning `R`. Arguments of another type are
    /// answered `InvalidArgs` naming the expected signature, before
    /// `handler` runs; the handler gets the call (verified caller,
    /// `authorize`, fds) and the decoded arguments.
    pub fn method<A, R, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        A: DeserializeOwned + Type + Send + 'static,
        R: Serialize + Type + Send + 'static,
        F: Fn(CallContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, MethodError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let wrapped: Handler = Arc::new(move |call: CallContext| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let args: A = call.args()?;
                let result = handler(call, args).await?;
                Response::new(&result)
            }) as HandlerFuture
        });
        let def = MethodDef {
            inputs: body_signature(A::SIGNATURE),
            outputs: body_signature(R::SIGNATURE),
            input_names: Vec::new(),
            output_names: Vec::new(),
            handler: wrapped,
        };
        self.methods.insert(name.to_owned(), def);
        self
    }

    /// Names the arguments of method `method` (declared before), in and
    /// out, as introspection shows them to `busctl introspect`, `gdbus
    /// introspect` and proxy generators (`arg0`, `arg1`… otherwise).
    /// Checked when the interface is served (as every member name is):
    /// one name per argument, each
    /// a D-Bus member-like name (`[A-Za-z_][A-Za-z0-9_]*`).
    ///
    /// ```
    /// # use pidbus::{Interface, MethodError};
    /// let greeter = Interface::new("org.example.Greeter")?
    ///     .method("Greet", |_call, (name,): (String,)| async move {
    ///         Ok::<_, MethodError>(format!("Hello, {name}!"))
    ///     })
    ///     .arg_names("Greet", &["name"], &["greeting"]);
    /// # Ok::<(), pidbus::Error>(())
    /// ```
    pub fn arg_names(mut self, method: &str, inputs: &[&str], outputs: &[&str]) -> Self {
        let owned = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        match self.methods.get_mut(method) {
            Some(def) => {
                def.input_names = owned(inputs);
                def.output_names = owned(outputs);
            }
            None => self.unknown_named.push(method.to_owned()),
        }
        self
    }

    /// What [`arg_names`](Self::arg_names) got wrong, if anything: checked
    /// when the interface is served.
    pub(crate) fn check_arg_names(&self) -> Result<()> {
        // Every member's name, as D-Bus has it (checked here rather than
        // when each is declared, so that the builder's calls chain).
        let members = self
            .methods
            .keys()
            .chain(self.properties.keys())
            .chain(self.signals.keys());
        for member in members {
            pidbus_protocol::names::validate_member(member).map_err(|e| Error::InvalidName {
                message: format!("interface {}: {e}", self.name),
            })?;
        }
        for (key, _) in self.annotations.values().flatten() {
            pidbus_protocol::names::validate_interface(key).map_err(|e| Error::InvalidName {
                message: format!("interface {}: annotation {e}", self.name),
            })?;
        }
        if let Some(method) = self.unknown_named.first() {
            return Err(Error::InvalidName {
                message: format!(
                    "arg_names, on_set or annotate for {method}, which interface {} does not \
                     declare (declare the member first)",
                    self.name
                ),
            });
        }
        for (method, def) in &self.methods {
            for (names, signature, direction) in [
                (&def.input_names, &def.inputs, "in"),
                (&def.output_names, &def.outputs, "out"),
            ] {
                check_names(&self.name, method, names, signature, direction)?;
            }
        }
        Ok(())
    }

    /// Annotates member `member` (a method, signal or property declared
    /// before) in introspection: `name` such as
    /// `org.freedesktop.DBus.Deprecated`, `value` such as `true`. Checked
    /// when the interface is served.
    ///
    /// ```
    /// # use pidbus::Interface;
    /// let old = Interface::new("org.example.Old")?
    ///     .method("Ping", |_, (): ()| async move { Ok::<_, pidbus::MethodError>(()) })
    ///     .annotate("Ping", "org.freedesktop.DBus.Deprecated", "true");
    /// # Ok::<(), pidbus::Error>(())
    /// ```
    pub fn annotate(mut self, member: &str, name: &str, value: &str) -> Self {
        let declared = self.methods.contains_key(member)
            || self.properties.contains_key(member)
            || self.signals.contains_key(member);
        if !declared {
            self.unknown_named.push(member.to_owned());
        }
        self.annotations
            .entry(member.to_owned())
            .or_default()
            .push((name.to_owned(), value.to_owned()));
        self
    }

    /// Declares property `name` of type `T` with its first value.
    pub fn property<T>(mut self, name: &str, access: Access, value: T) -> Self
    where
        T: Into<zvariant::Value<'static>> + Type,
    {
        let value: zvariant::Value<'static> = value.into();
        // A value built from a Rust value holds no descriptor: it clones.
        if let Ok(value) = OwnedValue::try_from(value) {
            let def = PropertyDef {
                signature: T::SIGNATURE.to_string(),
                access,
                value,
                on_set: None,
            };
            self.properties.insert(name.to_owned(), def);
        }
        self
    }

    /// Decides each peer's `Set` of the read-write property `name`
    /// (declared before, of type `T`): `hook` gets the call (its verified
    /// caller, `authorize`) and the new value, and returns the value to
    /// store — the one given, or another — or the error the setter gets
    /// (`MethodError::invalid_args`, `MethodError::access_denied`, …),
    /// which leaves the property as it was. `PropertiesChanged` is
    /// emitted with what was stored. Without a hook a `Set` of the right
    /// type is stored as given.
    ///
    /// ```
    /// # use pidbus::{Access, Interface, MethodError};
    /// let volume = Interface::new("org.example.Speaker")?
    ///     .property("Volume", Access::ReadWrite, 50u32)
    ///     .on_set("Volume", |call, volume: u32| async move {
    ///         if call.caller().uid != 0 && volume > 100 {
    ///             return Err(MethodError::invalid_args("the volume goes up to 100"));
    ///         }
    ///         Ok(volume)
    ///     });
    /// # Ok::<(), pidbus::Error>(())
    /// ```
    pub fn on_set<T, F, Fut>(mut self, name: &str, hook: F) -> Self
    where
        T: TryFrom<OwnedValue> + Into<zvariant::Value<'static>> + Send + 'static,
        T::Error: std::fmt::Display,
        F: Fn(CallContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, MethodError>> + Send + 'static,
    {
        let hook = Arc::new(hook);
        let erased: SetHook = Arc::new(move |call: CallContext, value: OwnedValue| {
            let hook = Arc::clone(&hook);
            Box::pin(async move {
                let typed = T::try_from(value).map_err(|e| {
                    MethodError::invalid_args(format!("not the property's type: {e}"))
                })?;
                let stored: zvariant::Value<'static> = hook(call, typed).await?.into();
                OwnedValue::try_from(stored).map_err(|e| {
                    MethodError::new(pidbus_protocol::ErrorCode::Failed, e.to_string())
                })
            })
        });
        match self.properties.get_mut(name) {
            Some(def) => def.on_set = Some(erased),
            None => self.unknown_named.push(name.to_owned()),
        }
        self
    }

    /// Declares signal `name` carrying arguments `A`.
    pub fn signal<A: Type>(mut self, name: &str) -> Self {
        self.signals
            .insert(name.to_owned(), body_signature(A::SIGNATURE));
        self
    }
}

/// A served interface: its declaration and current property values.
pub(crate) struct Served {
    pub(crate) name: String,
    pub(crate) methods: BTreeMap<String, MethodDef>,
    properties: Mutex<BTreeMap<String, PropertyDef>>,
    signals: BTreeMap<String, String>,
    annotations: BTreeMap<String, Vec<(String, String)>>,
}

impl Served {
    /// The interface's properties and their values, for `GetAll` and the
    /// object manager.
    pub(crate) fn property_values(
        &self,
    ) -> std::result::Result<HashMap<String, OwnedValue>, MethodError> {
        self.properties()
            .iter()
            .map(|(name, p)| Ok((name.clone(), clone_value(&p.value)?)))
            .collect()
    }

    pub(crate) fn new(interface: Interface) -> Self {
        Served {
            name: interface.name,
            methods: interface.methods,
            properties: Mutex::new(interface.properties),
            signals: interface.signals,
            annotations: interface.annotations,
        }
    }

    fn properties(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PropertyDef>> {
        self.properties
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The interface's `<interface>` element.
    fn xml(&self, out: &mut String) {
        out.push_str(&format!("  <interface name=\"{}\">\n", self.name));
        for (name, method) in &self.methods {
            out.push_str(&format!("    <method name=\"{name}\">\n"));
            args_xml(out, &method.inputs, &method.input_names, Some("in"));
            args_xml(out, &method.outputs, &method.output_names, Some("out"));
            self.annotations_xml(out, name);
            out.push_str("    </method>\n");
        }
        for (name, signature) in &self.signals {
            out.push_str(&format!("    <signal name=\"{name}\">\n"));
            args_xml(out, signature, &[], None);
            self.annotations_xml(out, name);
            out.push_str("    </signal>\n");
        }
        for (name, property) in self.properties().iter() {
            let access = match property.access {
                Access::Read => "read",
                Access::ReadWrite => "readwrite",
            };
            let opening = format!(
                "    <property name=\"{name}\" type=\"{}\" access=\"{access}\"",
                property.signature
            );
            if self.annotations.contains_key(name) {
                out.push_str(&opening);
                out.push_str(">\n");
                self.annotations_xml(out, name);
                out.push_str("    </property>\n");
            } else {
                out.push_str(&opening);
                out.push_str("/>\n");
            }
        }
        out.push_str("  </interface>\n");
    }
}

impl Served {
    /// The `<annotation>`s of member `name`.
    fn annotations_xml(&self, out: &mut String, name: &str) {
        for (key, value) in self.annotations.get(name).into_iter().flatten() {
            out.push_str(&format!(
                "      <annotation name=\"{}\" value=\"{}\"/>\n",
                xml_escape(key),
                xml_escape(value)
            ));
        }
    }
}

/// `<arg>` elements for each complete type of `signature`, named
/// `names[i]` (checked when served), else `argI`.
fn args_xml(out: &mut String, signature: &str, names: &[String], direction: Option<&str>) {
    let types = pidbus_protocol::dbus::signature::complete_types(signature).unwrap_or_default();
    for (i, kind) in types.iter().enumerate() {
        let direction = direction.map_or(String::new(), |d| format!(" direction=\"{d}\""));
        let name = names.get(i).cloned().unwrap_or_else(|| format!("arg{i}"));
        out.push_str(&format!(
            "      <arg name=\"{name}\" type=\"{}\"{direction}/>\n",
            xml_escape(kind)
        ));
    }
}

/// One name per argument of `signature`, each a D-Bus member-like name.
fn check_names(
    interface: &str,
    method: &str,
    names: &[String],
    signature: &str,
    direction: &str,
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let count = pidbus_protocol::dbus::signature::complete_types(signature)
        .map(|types| types.len())
        .unwrap_or_default();
    let fail = |message: String| Err(Error::InvalidName { message });
    if names.len() != count {
        return fail(format!(
            "{interface}.{method} has {count} {direction} argument(s) (signature '{signature}'), \
             but arg_names names {}",
            names.len()
        ));
    }
    let valid = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match names.iter().find(|n| !valid(n)) {
        Some(bad) => fail(format!(
            "{interface}.{method}: {bad:?} is not an argument name ([A-Za-z_][A-Za-z0-9_]*)"
        )),
        None => Ok(()),
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The introspection XML of the object at `path`: its declared interfaces,
/// the names of interfaces served without a declaration, the standard ones,
/// and its child nodes.
pub(crate) fn introspect(
    declared: &[Arc<Served>],
    undeclared: &[String],
    children: &[String],
    manager: bool,
) -> String {
    let mut out = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
    );
    out.push_str(STANDARD_INTERFACES);
    if manager {
        out.push_str(OBJECT_MANAGER_XML);
    }
    for served in declared {
        served.xml(&mut out);
    }
    for name in undeclared {
        out.push_str(&format!("  <interface name=\"{name}\"/>\n"));
    }
    for child in children {
        out.push_str(&format!("  <node name=\"{child}\"/>\n"));
    }
    out.push_str("</node>\n");
    out
}

const STANDARD_INTERFACES: &str = r#"  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg name="id" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg name="interface" type="s" direction="in"/><arg name="name" type="s" direction="in"/><arg name="value" type="v" direction="out"/></method>
    <method name="GetAll"><arg name="interface" type="s" direction="in"/><arg name="values" type="a{sv}" direction="out"/></method>
    <method name="Set"><arg name="interface" type="s" direction="in"/><arg name="name" type="s" direction="in"/><arg name="value" type="v" direction="in"/></method>
    <signal name="PropertiesChanged"><arg name="interface" type="s"/><arg name="changed" type="a{sv}"/><arg name="invalidated" type="as"/></signal>
  </interface>
"#;

const OBJECT_MANAGER_XML: &str = r#"  <interface name="org.freedesktop.DBus.ObjectManager">
    <method name="GetManagedObjects"><arg name="objects" type="a{oa{sa{sv}}}" direction="out"/></method>
    <signal name="InterfacesAdded"><arg name="object" type="o"/><arg name="interfaces" type="a{sa{sv}}"/></signal>
    <signal name="InterfacesRemoved"><arg name="object" type="o"/><arg name="interfaces" type="as"/></signal>
  </interface>
"#;

/// What `GetManagedObjects` returns: each object's interfaces and their
/// properties.
pub(crate) type ManagedObjects =
    HashMap<zvariant::OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>>;

/// The managed objects among `objects` (path, interfaces).
pub(crate) fn managed_objects(
    objects: &[(String, Vec<Arc<Served>>)],
) -> std::result::Result<ManagedObjects, MethodError> {
    let mut all = ManagedObjects::new();
    for (path, served) in objects {
        let path = zvariant::OwnedObjectPath::try_from(path.as_str())
            .map_err(|e| MethodError::failed("org.freedesktop.DBus.Error.Failed", e.to_string()))?;
        let interfaces = served
            .iter()
            .map(|s| Ok((s.name.clone(), s.property_values()?)))
            .collect::<std::result::Result<_, MethodError>>()?;
        all.insert(path, interfaces);
    }
    Ok(all)
}

/// Tells an object manager's watchers that `served` appeared at `path`.
pub(crate) async fn announce_added(
    shared: &Arc<Shared>,
    manager: &str,
    path: &str,
    served: &Served,
) -> Result<()> {
    let properties = served
        .property_values()
        .map_err(|e| Error::Body(crate::BodyError::Marshalling(e.message)))?;
    let object = zvariant::ObjectPath::try_from(path)
        .map_err(|e| Error::Body(crate::BodyError::Marshalling(e.to_string())))?;
    let interfaces = HashMap::from([(served.name.clone(), properties)]);
    shared
        .emit(
            manager,
            OBJECT_MANAGER,
            "InterfacesAdded",
            &(object, interfaces),
        )
        .await
}

/// Tells an object manager's watchers that `interface` left `path`.
pub(crate) async fn announce_removed(
    shared: &Arc<Shared>,
    manager: &str,
    path: &str,
    interface: &str,
) -> Result<()> {
    let object = zvariant::ObjectPath::try_from(path)
        .map_err(|e| Error::Body(crate::BodyError::Marshalling(e.to_string())))?;
    shared
        .emit(
            manager,
            OBJECT_MANAGER,
            "InterfacesRemoved",
            &(object, vec![interface]),
        )
        .await
}

/// `Properties.Get`, `GetAll` and `Set` on the interfaces of one object.
pub(crate) async fn properties(
    call: CallContext,
    path: String,
    declared: Vec<Arc<Served>>,
) -> std::result::Result<Response, MethodError> {
    let find = |name: &str| {
        declared
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| {
                MethodError::new(
                    pidbus_protocol::ErrorCode::UnknownInterface,
                    format!("object {path} has no interface {name} with properties"),
                )
            })
    };
    match call.member() {
        "Get" => {
            let (interface, name): (String, String) = call.args()?;
            let served = find(&interface)?;
            let properties = served.properties();
            let property = properties
                .get(&name)
                .ok_or_else(|| unknown_property(&interface, &name))?;
            let value = zvariant::Value::from(clone_value(&property.value)?);
            Response::new(&value)
        }
        "GetAll" => {
            let (interface,): (String,) = call.args()?;
            let served = find(&interface)?;
            Response::new(&served.property_values()?)
        }
        "Set" => {
            let (interface, name, value): (String, String, OwnedValue) = call.args()?;
            let served = find(&interface)?;
            let hook = {
                let mut properties = served.properties();
                let property = properties
                    .get_mut(&name)
                    .ok_or_else(|| unknown_property(&interface, &name))?;
                if property.access == Access::Read {
                    return Err(MethodError {
                        code: pidbus_protocol::ErrorCode::AccessDenied,
                        name: Some("org.freedesktop.DBus.Error.PropertyReadOnly".into()),
                        message: format!("{interface}.{name} is read-only"),
                    });
                }
                let given = value.value_signature().to_string();
                if given != property.signature {
                    return Err(MethodError::invalid_args(format!(
                        "{interface}.{name} is of type '{}', not '{given}'",
                        property.signature
                    )));
                }
                property.on_set.clone()
            };
            // The hook runs without the lock: it may take its time, and
            // read or set other properties of the object.
            let shared = Arc::clone(call.shared());
            let stored = match hook {
                Some(hook) => hook(call, value).await?,
                None => value,
            };
            {
                let mut properties = served.properties();
                if let Some(property) = properties.get_mut(&name) {
                    property.value = stored;
                }
            }
            announce_change(&shared, &path, &served, &name)
                .await
                .map_err(|e| {
                    MethodError::failed("org.freedesktop.DBus.Error.Failed", e.to_string())
                })?;
            Ok(Response::empty())
        }
        other => Err(MethodError::unknown_method(other)),
    }
}

fn unknown_property(interface: &str, name: &str) -> MethodError {
    MethodError {
        code: pidbus_protocol::ErrorCode::InvalidArgs,
        name: Some("org.freedesktop.DBus.Error.UnknownProperty".into()),
        message: format!("{interface} has no property {name}"),
    }
}

fn clone_value(value: &OwnedValue) -> std::result::Result<OwnedValue, MethodError> {
    value
        .try_clone()
        .map_err(|e| MethodError::failed("org.freedesktop.DBus.Error.Failed", e.to_string()))
}

/// Emits `PropertiesChanged` for property `name` of `served` at `path`.
async fn announce_change(
    shared: &Arc<Shared>,
    path: &str,
    served: &Served,
    name: &str,
) -> Result<()> {
    let value = {
        let properties = served.properties();
        let Some(property) = properties.get(name) else {
            return Ok(());
        };
        property
            .value
            .try_clone()
            .map_err(|e| Error::Body(crate::BodyError::Marshalling(e.to_string())))?
    };
    let changed = HashMap::from([(name.to_owned(), value)]);
    let args = (served.name.as_str(), changed, Vec::<String>::new());
    shared
        .emit(path, PROPERTIES, "PropertiesChanged", &args)
        .await
}

/// An object a connection serves from a declared [`Interface`]: set its
/// properties (peers are told with `PropertiesChanged`) and emit its
/// signals, checked against the declaration.
#[derive(Clone)]
pub struct ObjectHandle {
    shared: Arc<Shared>,
    path: String,
    served: Arc<Served>,
}

impl std::fmt::Debug for ObjectHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectHandle({} at {})", self.served.name, self.path)
    }
}

impl ObjectHandle {
    pub(crate) fn new(shared: Arc<Shared>, path: String, served: Arc<Served>) -> Self {
        ObjectHandle {
            shared,
            path,
            served,
        }
    }

    /// The object's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The current value of property `name`.
    pub fn property<T>(&self, name: &str) -> Result<T>
    where
        T: TryFrom<OwnedValue>,
        T::Error: std::fmt::Display,
    {
        let properties = self.served.properties();
        let property = properties.get(name).ok_or_else(|| Error::InvalidName {
            message: format!("{} declares no property {name}", self.served.name),
        })?;
        let value = property
            .value
            .try_clone()
            .map_err(|e| Error::Body(crate::BodyError::Marshalling(e.to_string())))?;
        T::try_from(value).map_err(|e| Error::Body(crate::BodyError::Marshalling(e.to_string())))
    }

    /// Sets property `name` (of the declared type) and emits
    /// `PropertiesChanged`.
    pub async fn set_property<T>(&self, name: &str, value: T) -> Result<()>
    where
        T: Into<zvariant::Value<'static>> + Type,
    {
        {
            let mut properties = self.served.properties();
            let property = properties.get_mut(name).ok_or_else(|| Error::InvalidName {
                message: format!("{} declares no property {name}", self.served.name),
            })?;
            let given = T::SIGNATURE.to_string();
            if given != property.signature {
                return Err(Error::Body(crate::BodyError::Mismatch {
                    expected: property.signature.clone(),
                    found: given,
                }));
            }
            property.value = OwnedValue::try_from(value.into())
                .map_err(|e| Error::Body(crate::BodyError::Marshalling(e.to_string())))?;
        }
        announce_change(&self.shared, &self.path, &self.served, name).await
    }

    /// Emits declared signal `name` with `args` of its declared type.
    pub async fn emit<A: Serialize + DynamicType>(&self, name: &str, args: &A) -> Result<()> {
        let declared = self
            .served
            .signals
            .get(name)
            .ok_or_else(|| Error::InvalidName {
                message: format!("{} declares no signal {name}", self.served.name),
            })?;
        let given = body_signature(&args.signature());
        if &given != declared {
            return Err(Error::Body(crate::BodyError::Mismatch {
                expected: declared.clone(),
                found: given,
            }));
        }
        self.shared
            .emit(&self.path, &self.served.name, name, args)
            .await
    }
}
