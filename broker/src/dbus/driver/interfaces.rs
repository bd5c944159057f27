//! What the bus's object offers, as data: its interfaces, their methods
//! (with signatures and where they may be called), signals and
//! properties. The driver routes a call by this table, the `Interfaces`
//! property lists from it, and introspection is written from it, so the
//! three cannot disagree.
//!
//! Where a method may be called follows dbus-daemon (`bus/driver.c`): the
//! methods D-Bus has always answered on every object path still are
//! (programs call them on `/`), and everything added since, pidbus's
//! interface among them, only on the canonical path
//! `/org/freedesktop/DBus` — which is also where bus policy written for
//! dbus-daemon expects them.

use std::fmt::Write as _;

use super::{Failure, PIDBUS_INTERFACE, fail};
use crate::bus::DRIVER_NAME;
use crate::dbus::errors::{ACCESS_DENIED, INVALID_ARGS, UNKNOWN_INTERFACE, UNKNOWN_METHOD};

/// The bus's object path.
pub const CANONICAL_PATH: &str = "/org/freedesktop/DBus";
/// The monitoring interface.
pub const MONITORING: &str = "org.freedesktop.DBus.Monitoring";
/// The statistics interface dbus-daemon and dbus-broker offer.
pub const STATS: &str = "org.freedesktop.DBus.Debug.Stats";
/// The standard interfaces every object has.
pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// Introspection.
pub const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
/// `Ping` and `GetMachineId`.
pub const PEER: &str = "org.freedesktop.DBus.Peer";

/// One argument: its name (empty for the unnamed arguments of the
/// standard interfaces) and its single complete type.
pub struct Arg {
    name: &'static str,
    ty: &'static str,
}

/// An unnamed argument.
const fn arg(ty: &'static str) -> Arg {
    Arg { name: "", ty }
}

/// A named argument.
const fn named(name: &'static str, ty: &'static str) -> Arg {
    Arg { name, ty }
}

/// Who may call a method, and where.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Anyone, on any object path (D-Bus's historical methods).
    AnyPath,
    /// Anyone, on the canonical path only.
    Canonical,
    /// Root and the bus's own user, on the canonical path only.
    Privileged,
}

/// A method of the bus's object.
pub struct Method {
    /// Its member name.
    pub name: &'static str,
    input: &'static [Arg],
    output: &'static [Arg],
    reach: Reach,
}

const fn method(
    name: &'static str,
    input: &'static [Arg],
    output: &'static [Arg],
    reach: Reach,
) -> Method {
    Method {
        name,
        input,
        output,
        reach,
    }
}

/// A signal the bus's object emits.
pub struct Signal {
    name: &'static str,
    args: &'static [Arg],
}

/// A read-only property of the bus's object.
pub struct Property {
    /// Its name.
    pub name: &'static str,
    ty: &'static str,
}

/// An interface of the bus's object.
pub struct Interface {
    /// Its name.
    pub name: &'static str,
    methods: &'static [Method],
    signals: &'static [Signal],
    /// Its properties.
    pub properties: &'static [Property],
    /// Reachable on every object path (else on the canonical one only).
    any_path: bool,
    /// Listed by the `Interfaces` property: a feature of this bus rather
    /// than something every object or every bus has.
    listed: bool,
    /// Reached only by a call that names it: pidbus's own methods never
    /// answer a call meant for a standard one of the same name (`Ping`).
    named_only: bool,
}

use Reach::{AnyPath, Canonical, Privileged};

const NAME_IN: &[Arg] = &[arg("s")];

/// The bus's interfaces, in the order introspection shows them.
pub const INTERFACES: &[Interface] = &[
    Interface {
        name: DRIVER_NAME,
        methods: &[
            method("Hello", &[], &[arg("s")], AnyPath),
            method("RequestName", &[arg("s"), arg("u")], &[arg("u")], AnyPath),
            method("ReleaseName", NAME_IN, &[arg("u")], AnyPath),
            method(
                "StartServiceByName",
                &[arg("s"), arg("u")],
                &[arg("u")],
                AnyPath,
            ),
            method(
                "UpdateActivationEnvironment",
                &[arg("a{ss}")],
                &[],
                Privileged,
            ),
            method("NameHasOwner", NAME_IN, &[arg("b")], AnyPath),
            method("ListNames", &[], &[arg("as")], AnyPath),
            method("ListActivatableNames", &[], &[arg("as")], AnyPath),
            method("AddMatch", NAME_IN, &[], AnyPath),
            method("RemoveMatch", NAME_IN, &[], AnyPath),
            method("GetNameOwner", NAME_IN, &[arg("s")], AnyPath),
            method("ListQueuedOwners", NAME_IN, &[arg("as")], AnyPath),
            method("GetConnectionUnixUser", NAME_IN, &[arg("u")], AnyPath),
            method("GetConnectionUnixProcessID", NAME_IN, &[arg("u")], AnyPath),
            method("GetAdtAuditSessionData", NAME_IN, &[arg("ay")], AnyPath),
            method(
                "GetConnectionSELinuxSecurityContext",
                NAME_IN,
                &[arg("ay")],
                AnyPath,
            ),
            method("ReloadConfig", &[], &[], AnyPath),
            method("GetId", &[], &[arg("s")], AnyPath),
            method(
                "GetConnectionCredentials",
                NAME_IN,
                &[arg("a{sv}")],
                AnyPath,
            ),
        ],
        signals: &[
            Signal {
                name: "NameOwnerChanged",
                args: &[arg("s"), arg("s"), arg("s")],
            },
            Signal {
                name: "NameLost",
                args: &[arg("s")],
            },
            Signal {
                name: "NameAcquired",
                args: &[arg("s")],
            },
            Signal {
                name: "ActivatableServicesChanged",
                args: &[],
            },
        ],
        properties: &[
            Property {
                name: "Features",
                ty: "as",
            },
            Property {
                name: "Interfaces",
                ty: "as",
            },
        ],
        any_path: true,
        listed: false,
        named_only: false,
    },
    Interface {
        name: PROPERTIES,
        methods: &[
            method("Get", &[arg("s"), arg("s")], &[arg("v")], Canonical),
            method("GetAll", &[arg("s")], &[arg("a{sv}")], Canonical),
            method("Set", &[arg("s"), arg("s"), arg("v")], &[], Canonical),
        ],
        signals: &[Signal {
            name: "PropertiesChanged",
            args: &[
                named("interface_name", "s"),
                named("changed_properties", "a{sv}"),
                named("invalidated_properties", "as"),
            ],
        }],
        properties: &[],
        any_path: false,
        listed: false,
        named_only: false,
    },
    Interface {
        name: INTROSPECTABLE,
        methods: &[method("Introspect", &[], &[arg("s")], AnyPath)],
        signals: &[],
        properties: &[],
        any_path: true,
        listed: false,
        named_only: false,
    },
    Interface {
        name: MONITORING,
        methods: &[method(
            "BecomeMonitor",
            &[named("rules", "as"), named("flags", "u")],
            &[],
            Canonical,
        )],
        signals: &[],
        properties: &[],
        any_path: false,
        listed: true,
        named_only: false,
    },
    Interface {
        name: STATS,
        methods: &[
            method("GetStats", &[], &[named("stats", "a{sv}")], Privileged),
            method(
                "GetConnectionStats",
                &[named("name", "s")],
                &[named("stats", "a{sv}")],
                Privileged,
            ),
        ],
        signals: &[],
        properties: &[],
        any_path: false,
        listed: true,
        named_only: false,
    },
    Interface {
        name: PIDBUS_INTERFACE,
        methods: &[
            method(
                "GetConnectionIdentity",
                &[named("name", "s")],
                &[named("identity", "a{sv}")],
                Canonical,
            ),
            method(
                "GetProcessFD",
                &[named("name", "s")],
                &[named("pidfd", "h")],
                Canonical,
            ),
            method(
                "ListPeers",
                &[named("after", "s")],
                &[named("peers", "aa{sv}"), named("more", "b")],
                Canonical,
            ),
            method(
                "Ping",
                &[named("payload", "ay")],
                &[named("payload", "ay")],
                Canonical,
            ),
            method("GetLimits", &[], &[named("limits", "a{sv}")], Canonical),
            method("AttachCaller", &[named("enabled", "b")], &[], Canonical),
            method(
                "WatchProcess",
                &[named("name", "s")],
                &[
                    named("watch", "u"),
                    named("unique_name", "s"),
                    named("pidfs_id", "t"),
                ],
                Canonical,
            ),
            method("UnwatchProcess", &[named("watch", "u")], &[], Canonical),
            method(
                "CheckAuthorization",
                &[
                    named("action", "s"),
                    named("subject", "s"),
                    named("serial", "u"),
                ],
                &[named("allowed", "b"), named("rule", "s")],
                Canonical,
            ),
        ],
        signals: &[
            Signal {
                name: "Disconnected",
                args: &[named("reason", "s")],
            },
            Signal {
                name: "ProcessExited",
                args: &[
                    named("watch", "u"),
                    named("unique_name", "s"),
                    named("pidfs_id", "t"),
                ],
            },
            Signal {
                name: "ProcessReaped",
                args: &[
                    named("watch", "u"),
                    named("unique_name", "s"),
                    named("pidfs_id", "t"),
                    named("how", "s"),
                    named("value", "i"),
                ],
            },
        ],
        properties: &[],
        any_path: false,
        listed: true,
        named_only: true,
    },
    Interface {
        name: PEER,
        methods: &[
            method("Ping", &[], &[], AnyPath),
            method("GetMachineId", &[], &[arg("s")], AnyPath),
        ],
        signals: &[],
        properties: &[],
        any_path: true,
        listed: false,
        named_only: false,
    },
];

/// Where a call to the bus lands.
pub struct Route {
    /// The interface.
    pub interface: &'static Interface,
    /// The method.
    pub method: &'static Method,
}

/// The facts about a call that decide where it lands.
pub struct Addressed<'a> {
    /// The object path.
    pub path: &'a str,
    /// `None`: the call names no interface (the first with the member wins).
    pub interface: Option<&'a str>,
    /// The method's name.
    pub member: &'a str,
    /// The arguments' signature.
    pub signature: &'a str,
}

/// Finds the method `call` names, as dbus-daemon does: interfaces not
/// reachable on the call's path are not looked at; a method found off
/// the canonical path that is not reachable there, or a privileged one
/// called by someone else, is refused with `AccessDenied`; the wrong
/// arguments with `InvalidArgs`. `privileged` is asked only for a
/// privileged method.
pub fn route(call: &Addressed<'_>, privileged: impl FnOnce() -> bool) -> Result<Route, Failure> {
    let canonical = call.path == CANONICAL_PATH;
    let mut interface_found = false;
    let reachable = INTERFACES
        .iter()
        .filter(|interface| canonical || interface.any_path)
        .filter(|interface| match call.interface {
            Some(name) => name == interface.name,
            None => !interface.named_only,
        });
    for interface in reachable {
        interface_found = true;
        let Some(method) = interface.methods.iter().find(|m| m.name == call.member) else {
            continue;
        };
        if method.reach == Privileged && !privileged() {
            return Err(fail(
                ACCESS_DENIED,
                format!(
                    "{}.{} may be called only by root and the bus's own user",
                    interface.name, method.name
                ),
            ));
        }
        if method.reach != AnyPath && !canonical {
            return Err(fail(
                ACCESS_DENIED,
                format!(
                    "Method '{}' is only available at the canonical object path '{CANONICAL_PATH}'",
                    method.name
                ),
            ));
        }
        if !signature_of(method.input, call.signature) {
            return Err(fail(
                INVALID_ARGS,
                format!(
                    "{} takes arguments of signature '{}', not '{}'",
                    method.name,
                    method.input.iter().map(|a| a.ty).collect::<String>(),
                    call.signature
                ),
            ));
        }
        return Ok(Route { interface, method });
    }
    let (name, what) = if interface_found {
        (UNKNOWN_METHOD, "method")
    } else {
        (UNKNOWN_INTERFACE, "interface")
    };
    Err(fail(
        name,
        format!(
            "{DRIVER_NAME} does not understand message {} (no such {what} on {})",
            call.member, call.path
        ),
    ))
}

/// Whether `signature` is exactly the types of `args`, in order.
fn signature_of(args: &[Arg], signature: &str) -> bool {
    let mut rest = signature;
    for arg in args {
        match rest.strip_prefix(arg.ty) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// The interface named `name` for the properties methods, which look at
/// every interface (they are themselves reachable on the canonical path
/// only). An empty name stands for the one with properties, as the
/// specification allows.
pub fn for_properties(name: &str) -> Result<&'static Interface, Failure> {
    let found = if name.is_empty() {
        INTERFACES.first()
    } else {
        INTERFACES.iter().find(|interface| interface.name == name)
    };
    found.ok_or_else(|| fail(UNKNOWN_INTERFACE, format!("Interface \"{name}\" not found")))
}

/// The `Interfaces` property: the optional interfaces this bus has.
pub fn listed() -> impl Iterator<Item = &'static str> {
    INTERFACES.iter().filter(|i| i.listed).map(|i| i.name)
}

/// Introspection of the bus's object at `path`: on the canonical path
/// every interface, elsewhere those reachable there, and on the canonical
/// path's ancestors the child node that leads to it (so that tools
/// walking the tree from `/` find the bus).
pub fn introspect(path: &str) -> String {
    let canonical = path == CANONICAL_PATH;
    let mut xml = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n\
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
    );
    for interface in INTERFACES.iter().filter(|i| canonical || i.any_path) {
        write_interface(&mut xml, interface);
    }
    if let Some(child) = child_towards_bus(path) {
        let _ = writeln!(xml, "  <node name=\"{child}\"/>");
    }
    xml.push_str("</node>\n");
    xml
}

/// The relative path from `path` to the canonical path, if `path` is
/// one of its ancestors.
fn child_towards_bus(path: &str) -> Option<&'static str> {
    let rest = if path == "/" {
        Some(&CANONICAL_PATH[1..])
    } else {
        CANONICAL_PATH
            .strip_prefix(path)
            .and_then(|rest| rest.strip_prefix('/'))
    };
    rest.filter(|rest| !rest.is_empty())
}

fn write_interface(xml: &mut String, interface: &Interface) {
    let _ = writeln!(xml, "  <interface name=\"{}\">", interface.name);
    for method in interface.methods {
        let _ = write!(xml, "    <method name=\"{}\">", method.name);
        for (direction, args) in [("in", method.input), ("out", method.output)] {
            for arg in args {
                write_arg(xml, arg, Some(direction));
            }
        }
        xml.push_str("</method>\n");
    }
    for signal in interface.signals {
        let _ = write!(xml, "    <signal name=\"{}\">", signal.name);
        for arg in signal.args {
            write_arg(xml, arg, None);
        }
        xml.push_str("</signal>\n");
    }
    for property in interface.properties {
        let _ = writeln!(
            xml,
            "    <property name=\"{}\" type=\"{}\" access=\"read\">\
             <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" value=\"const\"/>\
             </property>",
            property.name, property.ty
        );
    }
    xml.push_str("  </interface>\n");
}

fn write_arg(xml: &mut String, arg: &Arg, direction: Option<&str>) {
    xml.push_str("<arg");
    if !arg.name.is_empty() {
        let _ = write!(xml, " name=\"{}\"", arg.name);
    }
    if let Some(direction) = direction {
        let _ = write!(xml, " direction=\"{direction}\"");
    }
    let _ = write!(xml, " type=\"{}\"/>", arg.ty);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(
        path: &'a str,
        interface: Option<&'a str>,
        member: &'a str,
        signature: &'a str,
    ) -> Addressed<'a> {
        Addressed {
            path,
            interface,
            member,
            signature,
        }
    }

    fn error_of(result: Result<Route, Failure>) -> &'static str {
        match result {
            Ok(route) => panic!("routed to {}.{}", route.interface.name, route.method.name),
            Err(failure) => failure.name,
        }
    }

    #[test]
    fn historical_methods_answer_on_every_path() {
        let route = route(&call("/", None, "GetId", ""), || false).unwrap();
        assert_eq!(route.interface.name, DRIVER_NAME);
        let route = route_ok("/com/example", Some(PEER), "Ping", "");
        assert_eq!(route.interface.name, PEER);
    }

    fn route_ok(path: &str, interface: Option<&str>, member: &str, signature: &str) -> Route {
        route(&call(path, interface, member, signature), || true).unwrap()
    }

    #[test]
    fn newer_interfaces_answer_on_the_canonical_path_only() {
        let monitor = call("/", Some(MONITORING), "BecomeMonitor", "asu");
        assert_eq!(error_of(route(&monitor, || true)), UNKNOWN_INTERFACE);
        let get = call("/", Some(PROPERTIES), "Get", "ss");
        assert_eq!(error_of(route(&get, || true)), UNKNOWN_INTERFACE);
        // Named without its interface, the member is looked for among the
        // interfaces reachable there, which have none of that name.
        let unnamed = call("/", None, "BecomeMonitor", "asu");
        assert_eq!(error_of(route(&unnamed, || true)), UNKNOWN_METHOD);
        route_ok(CANONICAL_PATH, Some(MONITORING), "BecomeMonitor", "asu");
        route_ok(CANONICAL_PATH, Some(PIDBUS_INTERFACE), "GetLimits", "");
    }

    #[test]
    fn a_canonical_only_method_of_an_any_path_interface_is_denied_elsewhere() {
        let uae = call(
            "/com/example/Wrong",
            Some(DRIVER_NAME),
            "UpdateActivationEnvironment",
            "a{ss}",
        );
        assert_eq!(error_of(route(&uae, || true)), ACCESS_DENIED);
    }

    #[test]
    fn privileged_methods_ask_and_refuse_others() {
        let stats = call(CANONICAL_PATH, Some(STATS), "GetStats", "");
        assert_eq!(error_of(route(&stats, || false)), ACCESS_DENIED);
        assert!(route(&stats, || true).is_ok());
        // Nobody is asked about a method anyone may call.
        route(&call(CANONICAL_PATH, None, "GetId", ""), || panic!("asked")).unwrap();
    }

    #[test]
    fn a_call_naming_no_interface_never_reaches_pidbus_s_own() {
        let ping = route_ok(CANONICAL_PATH, None, "Ping", "");
        assert_eq!(ping.interface.name, PEER);
        let identity = call(CANONICAL_PATH, None, "GetConnectionIdentity", "s");
        assert_eq!(error_of(route(&identity, || true)), UNKNOWN_METHOD);
    }

    #[test]
    fn arguments_must_match_exactly() {
        let wrong = call(CANONICAL_PATH, None, "RequestName", "s");
        assert_eq!(error_of(route(&wrong, || true)), INVALID_ARGS);
        let extra = call(CANONICAL_PATH, None, "RequestName", "sus");
        assert_eq!(error_of(route(&extra, || true)), INVALID_ARGS);
        route_ok(CANONICAL_PATH, None, "RequestName", "su");
    }

    #[test]
    fn unknown_members_and_interfaces_are_told_apart() {
        let member = call(CANONICAL_PATH, Some(DRIVER_NAME), "Nope", "");
        assert_eq!(error_of(route(&member, || true)), UNKNOWN_METHOD);
        let interface = call(CANONICAL_PATH, Some("com.example.Nope"), "Nope", "");
        assert_eq!(error_of(route(&interface, || true)), UNKNOWN_INTERFACE);
    }

    #[test]
    fn introspection_shows_what_is_reachable_and_leads_to_the_bus() {
        let canonical = introspect(CANONICAL_PATH);
        for interface in INTERFACES {
            assert!(canonical.contains(&format!("<interface name=\"{}\">", interface.name)));
        }
        assert!(canonical.contains("<arg name=\"pidfd\" direction=\"out\" type=\"h\"/>"));
        let root = introspect("/");
        assert!(!root.contains(MONITORING) && root.contains(INTROSPECTABLE));
        assert!(root.contains("<node name=\"org/freedesktop/DBus\"/>"));
        assert!(introspect("/org/freedesktop").contains("<node name=\"DBus\"/>"));
        assert!(!introspect("/org/free").contains("<node "));
        assert!(!canonical.contains("<node name"));
    }

    #[test]
    fn the_interfaces_property_lists_the_optional_ones() {
        assert_eq!(
            listed().collect::<Vec<_>>(),
            [MONITORING, STATS, PIDBUS_INTERFACE]
        );
    }
}
