//! `org.freedesktop.PolicyKit1` for D-Bus peers: the polkit authority's
//! interface (`org.freedesktop.PolicyKit1.Authority` on
//! `/org/freedesktop/PolicyKit1/Authority`), served by the bus itself so
//! that `pkcheck`, libpolkit-gobject and every program that asks polkit
//! get the pidbus policy's answer about a verified identity.
//!
//! There is no interactive authentication: an answer is never a challenge,
//! `BackendFeatures` is 0 (no temporary authorizations) and the agent
//! methods are not supported.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use pidbus_protocol::ErrorReply;
use pidbus_protocol::dbus::header::{Header, NO_REPLY_EXPECTED};
use pidbus_protocol::dbus::value::{Value, unmarshal};

use crate::bus::Bus;
use crate::bus::authority::{Checked, Subject};
use crate::bus::outbox::Outgoing;
use crate::dbus::driver::string_pairs;
use crate::dbus::errors;
use crate::dbus::wire::DbusWire;
use crate::policy::{AppAction, Decision};
use pidbus_protocol::PeerId;

pub use crate::bus::authority::{AUTHORITY_INTERFACE, AUTHORITY_PATH};

const POLKIT_FAILED: &str = "org.freedesktop.PolicyKit1.Error.Failed";
const POLKIT_NOT_SUPPORTED: &str = "org.freedesktop.PolicyKit1.Error.NotSupported";
const POLKIT_NOT_AUTHORIZED: &str = "org.freedesktop.PolicyKit1.Error.NotAuthorized";

/// polkit's `PolkitImplicitAuthorization`: `NotAuthorized` and `Authorized`.
const IMPLICIT_NOT_AUTHORIZED: u32 = 0;
const IMPLICIT_AUTHORIZED: u32 = 5;

/// One call to the authority.
pub struct AuthorityCall<'a> {
    /// The caller.
    pub peer: PeerId,
    /// The call's header.
    pub header: &'a Header,
    /// Its arguments (little-endian).
    pub body: &'a [u8],
    /// The descriptors that came with it (a subject's pidfd).
    pub fds: Vec<OwnedFd>,
}

type Answer = Result<Vec<Value>, (&'static str, String)>;

/// Answers `call`, queueing the reply or error for the caller.
pub fn handle(bus: &Arc<Bus>, wire: &DbusWire, call: AuthorityCall<'_>) {
    let header = call.header;
    let answer = match unmarshal(&header.signature, call.body) {
        Ok(args) => dispatch(bus, call.peer, header, args, call.fds),
        Err(e) => Err((
            errors::INVALID_ARGS,
            format!("cannot read the arguments: {e}"),
        )),
    };
    if header.flags & NO_REPLY_EXPECTED != 0 {
        return;
    }
    let bytes = match answer {
        Ok(values) => wire
            .driver_reply(header.serial, &values, 0)
            .unwrap_or_else(|e| wire.driver_error(header.serial, errors::FAILED, &e.to_string())),
        Err((name, message)) => wire.driver_error(header.serial, name, &message),
    };
    let record = Outgoing {
        bytes,
        fds: Vec::new(),
    };
    bus.answer_raw(
        call.peer,
        u64::from(header.serial),
        record,
        "an authority reply",
    );
}

fn dispatch(
    bus: &Bus,
    peer: PeerId,
    header: &Header,
    args: Vec<Value>,
    fds: Vec<OwnedFd>,
) -> Answer {
    let member = header.member.as_deref().unwrap_or_default();
    let interface = header.interface.as_deref().unwrap_or_default();
    let signature = header.signature.as_str();
    if header.path.as_deref() != Some(AUTHORITY_PATH) {
        let path = header.path.as_deref().unwrap_or_default();
        return Err((
            errors::UNKNOWN_OBJECT,
            format!("the polkit authority has no object {path}; it is {AUTHORITY_PATH}"),
        ));
    }
    let wants = |expected: &str| -> Result<(), (&'static str, String)> {
        if signature == expected {
            return Ok(());
        }
        Err((
            errors::INVALID_ARGS,
            format!("{member} takes arguments of signature '{expected}', not '{signature}'"),
        ))
    };
    match (interface, member) {
        ("" | AUTHORITY_INTERFACE, "CheckAuthorization") => {
            wants("(sa{sv})sa{ss}us")?;
            check_authorization(bus, peer, args, fds)
        }
        ("" | AUTHORITY_INTERFACE, "EnumerateActions") => {
            wants("s")?;
            Ok(vec![actions_value(&bus.actions())])
        }
        ("" | AUTHORITY_INTERFACE, "CancelCheckAuthorization") => {
            wants("s")?;
            let id = args.first().and_then(Value::as_str).unwrap_or_default();
            // Every check is answered at once: none is ever in progress.
            Err((
                POLKIT_FAILED,
                format!("no authorization check with cancellation id {id:?} is in progress"),
            ))
        }
        (
            "" | AUTHORITY_INTERFACE,
            "RegisterAuthenticationAgent"
            | "RegisterAuthenticationAgentWithOptions"
            | "UnregisterAuthenticationAgent"
            | "AuthenticationAgentResponse"
            | "AuthenticationAgentResponse2"
            | "EnumerateTemporaryAuthorizations"
            | "RevokeTemporaryAuthorizations"
            | "RevokeTemporaryAuthorizationById",
        ) => Err((
            POLKIT_NOT_SUPPORTED,
            format!(
                "{member}: the pidbus authority has no interactive authentication and no temporary authorizations"
            ),
        )),
        ("" | "org.freedesktop.DBus.Properties", "Get") => {
            wants("ss")?;
            let text = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or_default();
            property(text(0), text(1)).map(|v| vec![Value::Variant(Box::new(v))])
        }
        ("" | "org.freedesktop.DBus.Properties", "GetAll") => {
            wants("s")?;
            let all = match args.first().and_then(Value::as_str).unwrap_or_default() {
                AUTHORITY_INTERFACE | "" => PROPERTIES
                    .iter()
                    .filter_map(|name| Some((*name, property(AUTHORITY_INTERFACE, name).ok()?)))
                    .collect(),
                _ => Vec::new(),
            };
            Ok(vec![Value::dict(all)])
        }
        ("" | "org.freedesktop.DBus.Properties", "Set") => Err((
            errors::PROPERTY_READ_ONLY,
            "the authority's properties are read-only".to_owned(),
        )),
        ("" | "org.freedesktop.DBus.Introspectable", "Introspect") => {
            Ok(vec![Value::string(INTROSPECTION)])
        }
        ("" | "org.freedesktop.DBus.Peer", "Ping") => Ok(Vec::new()),
        (AUTHORITY_INTERFACE, _) => Err((
            errors::UNKNOWN_METHOD,
            format!("the polkit authority has no method {member}"),
        )),
        (other, _) => Err((
            errors::UNKNOWN_INTERFACE,
            format!("the polkit authority has no interface {other}"),
        )),
    }
}

const PROPERTIES: [&str; 3] = ["BackendName", "BackendVersion", "BackendFeatures"];

fn property(interface: &str, name: &str) -> Result<Value, (&'static str, String)> {
    if interface != AUTHORITY_INTERFACE {
        return Err((
            errors::UNKNOWN_INTERFACE,
            format!("no interface {interface}"),
        ));
    }
    match name {
        "BackendName" => Ok(Value::string("pidbus")),
        "BackendVersion" => Ok(Value::string(env!("CARGO_PKG_VERSION"))),
        // No POLKIT_AUTHORITY_FEATURES_TEMPORARY_AUTHORIZATION (1): there
        // is no authentication to remember.
        "BackendFeatures" => Ok(Value::UInt32(0)),
        other => Err((errors::UNKNOWN_PROPERTY, format!("no property {other}"))),
    }
}

/// The request detail that asks for the deciding rule (`pidbus.rule`) and
/// the subject as the bus saw it (`pidbus.subject`) in the answer's
/// details.
pub const EXPLAIN: &str = "pidbus.explain";

/// `CheckAuthorization(subject, action_id, details, flags, cancellation_id)`
/// → `(is_authorized, is_challenge, details)`.
fn check_authorization(bus: &Bus, peer: PeerId, args: Vec<Value>, mut fds: Vec<OwnedFd>) -> Answer {
    let mut args = args.into_iter();
    let (subject, action, details) = (args.next(), args.next(), args.next());
    let action = action
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let subject = subject_of(subject, &mut fds)?;
    let checked = bus.check_subject(peer, &action, subject).map_err(refusal)?;
    let asked = string_pairs(details.as_ref());
    let explain = asked.iter().any(|(key, _)| key == EXPLAIN);
    let mut reply_details: Vec<(String, String)> = asked
        .into_iter()
        .filter(|(key, _)| !key.starts_with("polkit.") && !key.starts_with("pidbus."))
        .collect();
    let Checked {
        allowed,
        rule,
        subject,
    } = checked;
    // Only when asked: pkcheck prints every detail of the answer, and the
    // deciding rule is the log's business unless someone wants it here.
    if explain {
        reply_details.push(("pidbus.rule".to_owned(), rule));
        reply_details.push(("pidbus.subject".to_owned(), subject));
    }
    Ok(vec![Value::Struct(vec![
        Value::Bool(allowed),
        // Never a challenge: there is no interactive authentication.
        Value::Bool(false),
        string_dict(reply_details),
    ])])
}

/// The error a refused check is answered with.
fn refusal(error: ErrorReply) -> (&'static str, String) {
    let name = match error.code {
        pidbus_protocol::ErrorCode::AccessDenied => POLKIT_NOT_AUTHORIZED,
        pidbus_protocol::ErrorCode::InvalidArgs | pidbus_protocol::ErrorCode::InvalidName => {
            errors::INVALID_ARGS
        }
        _ => POLKIT_FAILED,
    };
    (name, error.message)
}

/// A subject `(sa{sv})` as the core takes it; the pidfd a `unix-process`
/// subject indexes is taken from `fds`.
fn subject_of(
    value: Option<Value>,
    fds: &mut Vec<OwnedFd>,
) -> Result<Subject, (&'static str, String)> {
    let invalid = |message: &str| (errors::INVALID_ARGS, message.to_owned());
    let Some(Value::Struct(fields)) = value else {
        return Err(invalid("the subject must be a (sa{sv})"));
    };
    let mut fields = fields.into_iter();
    let kind = fields.next();
    let kind = kind
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let details: Vec<(String, Value)> = match fields.next() {
        Some(Value::Array { items, .. }) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::DictEntry(key, value) => {
                    let key = key.as_str()?.to_owned();
                    match *value {
                        Value::Variant(inner) => Some((key, *inner)),
                        other => Some((key, other)),
                    }
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let get = |key: &str| details.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    match kind.as_str() {
        "system-bus-name" => match get("name").and_then(Value::as_str) {
            Some(name) => Ok(Subject::BusName(name.to_owned())),
            None => Err(invalid("a system-bus-name subject needs a name (s)")),
        },
        "unix-process" => {
            let pidfd = match get("pidfd") {
                Some(Value::UnixFd(index)) => {
                    let index = usize::try_from(*index)
                        .ok()
                        .filter(|&i| i < fds.len())
                        .ok_or_else(|| {
                            invalid("the subject's pidfd indexes no descriptor of the message")
                        })?;
                    Some(fds.swap_remove(index))
                }
                Some(_) => {
                    return Err(invalid(
                        "a unix-process subject's pidfd must be a unix fd (h)",
                    ));
                }
                None => None,
            };
            let pid = match get("pid") {
                Some(Value::UInt32(pid)) => Some(*pid),
                Some(Value::Int32(pid)) => u32::try_from(*pid).ok(),
                Some(_) => return Err(invalid("a unix-process subject's pid must be a u")),
                None => None,
            };
            let start_time = match get("start-time") {
                Some(Value::UInt64(time)) => Some(*time),
                Some(_) => return Err(invalid("a unix-process subject's start-time must be a t")),
                None => None,
            };
            let uid = match get("uid") {
                Some(Value::Int32(uid)) => Some(i64::from(*uid)),
                Some(Value::UInt32(uid)) => Some(i64::from(*uid)),
                Some(_) => return Err(invalid("a unix-process subject's uid must be an i")),
                None => None,
            };
            Ok(Subject::Process {
                pidfd,
                pid,
                start_time,
                uid,
            })
        }
        "unix-session" => Err((
            POLKIT_NOT_SUPPORTED,
            "unix-session subjects are not supported: ask about a process or a bus name".to_owned(),
        )),
        other => Err((
            errors::INVALID_ARGS,
            format!("unknown subject kind {other:?}"),
        )),
    }
}

/// EnumerateActions' `a(ssssssuuua{ss})`: id, description, message,
/// vendor name, vendor URL, icon, implicit any/inactive/active (all the
/// action's default), annotations.
fn actions_value(actions: &[AppAction]) -> Value {
    let items = actions
        .iter()
        .map(|action| {
            let description = action
                .description
                .clone()
                .unwrap_or_else(|| action.id.clone());
            let implicit = match action.default {
                Decision::Allow => IMPLICIT_AUTHORIZED,
                Decision::Deny => IMPLICIT_NOT_AUTHORIZED,
            };
            let declared = format!("{}:{}", action.file, action.line);
            Value::Struct(vec![
                Value::string(action.id.clone()),
                Value::string(description.clone()),
                Value::string(description),
                Value::string("pidbus"),
                Value::string(""),
                Value::string(""),
                Value::UInt32(implicit),
                Value::UInt32(implicit),
                Value::UInt32(implicit),
                string_dict(vec![("pidbus.declared".to_owned(), declared)]),
            ])
        })
        .collect();
    Value::Array {
        element: "(ssssssuuua{ss})".into(),
        items,
    }
}

fn string_dict(entries: Vec<(String, String)>) -> Value {
    Value::Array {
        element: "{ss}".into(),
        items: entries
            .into_iter()
            .map(|(k, v)| Value::DictEntry(Box::new(Value::String(k)), Box::new(Value::String(v))))
            .collect(),
    }
}

const INTROSPECTION: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.freedesktop.PolicyKit1.Authority">
    <method name="EnumerateActions">
      <arg name="locale" direction="in" type="s"/>
      <arg name="action_descriptions" direction="out" type="a(ssssssuuua{ss})"/>
    </method>
    <method name="CheckAuthorization">
      <arg name="subject" direction="in" type="(sa{sv})"/>
      <arg name="action_id" direction="in" type="s"/>
      <arg name="details" direction="in" type="a{ss}"/>
      <arg name="flags" direction="in" type="u"/>
      <arg name="cancellation_id" direction="in" type="s"/>
      <arg name="result" direction="out" type="(bba{ss})"/>
    </method>
    <method name="CancelCheckAuthorization">
      <arg name="cancellation_id" direction="in" type="s"/>
    </method>
    <signal name="Changed"/>
    <property name="BackendName" type="s" access="read"/>
    <property name="BackendVersion" type="s" access="read"/>
    <property name="BackendFeatures" type="u" access="read"/>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get">
      <arg name="interface_name" direction="in" type="s"/>
      <arg name="property_name" direction="in" type="s"/>
      <arg name="value" direction="out" type="v"/>
    </method>
    <method name="GetAll">
      <arg name="interface_name" direction="in" type="s"/>
      <arg name="properties" direction="out" type="a{sv}"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect">
      <arg name="xml_data" direction="out" type="s"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
  </interface>
</node>
"#;
