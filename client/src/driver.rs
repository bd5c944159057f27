//! What the SDK reads from the bus's own messages: identities and peer
//! lists of `org.pidbus.Bus1`, credentials of `org.freedesktop.DBus`,
//! errors, the bus's signals (names, process watches), and monitor copies.

use std::sync::Arc;

use pidbus_protocol::dbus::errors;
use pidbus_protocol::dbus::header::{MessageType, NO_REPLY_EXPECTED};
use pidbus_protocol::dbus::value::{Value, unmarshal};
use pidbus_protocol::{
    BusEvent, Caller, Destination, ErrorReply, ExitStatus, IncomingCall, Message, Monitored,
    PeerId, PeerInfo, ProcessEvent, ProcessHandle, ProcessIdentity, Return, Signal,
};

use crate::connection::{BUS_NAME, PIDBUS_INTERFACE, Shared};
use crate::error::{Error, Result};
use crate::wire::Received;

/// `ay` of `bytes`.
pub(crate) fn bytes(bytes: &[u8]) -> Value {
    Value::Array {
        element: "y".into(),
        items: bytes.iter().copied().map(Value::Byte).collect(),
    }
}

/// The bytes of an `ay` value (empty for anything else).
pub(crate) fn bytes_of(value: Option<&Value>) -> Vec<u8> {
    match value {
        Some(Value::Array { items, .. }) => items
            .iter()
            .filter_map(|v| match v {
                Value::Byte(b) => Some(*b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `a{sv}` value, by key.
fn dict_entries(value: Option<&Value>) -> Vec<(&str, &Value)> {
    let Some(Value::Array { items, .. }) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|entry| match entry {
            Value::DictEntry(key, value) => {
                let value = match &**value {
                    Value::Variant(inner) => &**inner,
                    other => other,
                };
                Some((key.as_str()?, value))
            }
            _ => None,
        })
        .collect()
}

fn u32_of(value: &Value) -> Option<u32> {
    value.as_u32()
}

fn u64_of(value: &Value) -> Option<u64> {
    match value {
        Value::UInt64(n) => Some(*n),
        Value::UInt32(n) => Some(u64::from(*n)),
        _ => None,
    }
}

fn u32s_of(value: &Value) -> Vec<u32> {
    match value {
        Value::Array { items, .. } => items.iter().filter_map(Value::as_u32).collect(),
        _ => Vec::new(),
    }
}

fn text_of(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

/// An identity as `org.pidbus.Bus1.GetConnectionIdentity` gives it.
pub(crate) fn identity_from_dict(value: Option<&Value>) -> Result<ProcessIdentity> {
    let mut identity = identity_from_credentials(None);
    let mut has_uid = false;
    for (key, value) in dict_entries(value) {
        match key {
            "uid" => {
                has_uid = true;
                identity.uid = u32_of(value).unwrap_or(u32::MAX);
            }
            "gid" => identity.gid = u32_of(value).unwrap_or(u32::MAX),
            "groups" => identity.groups = u32s_of(value),
            "pid" => identity.pid = u32_of(value).unwrap_or(0),
            "pidfs_id" => identity.pidfs_id = u64_of(value),
            "boot_id" => identity.boot_id = text_of(value).unwrap_or_default(),
            "exe" => identity.exe = text_of(value),
            "exe_unverified" => identity.exe_unverified = text_of(value),
            "unit" => identity.unit = text_of(value),
            "user_unit" => identity.user_unit = text_of(value),
            "cgroup" => identity.cgroup = text_of(value),
            "label" => identity.label = text_of(value),
            "sender_proof" => identity.sender_proof_forgeable = value.as_str() == Some("forgeable"),
            "facts_withheld" => identity.facts_withheld = matches!(value, Value::Bool(true)),
            "exited_at_connect" => {
                identity.exited_at_connect = matches!(value, Value::Bool(true));
            }
            _ => {}
        }
    }
    if !has_uid {
        return Err(Error::Protocol(
            "the bus described an identity without a uid".into(),
        ));
    }
    Ok(identity)
}

/// An identity from `GetConnectionCredentials` (another bus than
/// pidbus): uid, groups and pid; the rest unknown.
pub(crate) fn identity_from_credentials(value: Option<&Value>) -> ProcessIdentity {
    let mut identity = ProcessIdentity {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
        groups: Vec::new(),
        pidfs_id: None,
        start_time: None,
        boot_id: String::new(),
        exe: None,
        exe_unverified: None,
        unit: None,
        user_unit: None,
        sender_proof_forgeable: false,
        facts_withheld: false,
        exited_at_connect: false,
        cgroup: None,
        label: None,
    };
    for (key, value) in dict_entries(value) {
        match key {
            "UnixUserID" => identity.uid = u32_of(value).unwrap_or(u32::MAX),
            "UnixGroupIDs" => {
                let groups = u32s_of(value);
                identity.gid = groups.first().copied().unwrap_or(u32::MAX);
                identity.groups = groups;
            }
            "ProcessID" => identity.pid = u32_of(value).unwrap_or(0),
            "org.pidbus.PidfsId" => identity.pidfs_id = u64_of(value),
            "LinuxSecurityLabel" => {
                let mut label = bytes_of(Some(value));
                if label.last() == Some(&0) {
                    label.pop();
                }
                identity.label = String::from_utf8(label).ok();
            }
            _ => {}
        }
    }
    identity
}

/// A page of `org.pidbus.Bus1.ListPeers`: the peers and whether more
/// follow.
pub(crate) fn peers_page(values: &[Value]) -> Result<(Vec<PeerInfo>, bool)> {
    let Some(Value::Array { items, .. }) = values.first() else {
        return Err(Error::Protocol("ListPeers answered no list".into()));
    };
    let mut peers = Vec::with_capacity(items.len());
    for item in items {
        let id = dict_entries(Some(item))
            .into_iter()
            .find(|(key, _)| *key == "unique_name")
            .and_then(|(_, v)| v.as_str()?.parse::<PeerId>().ok())
            .ok_or_else(|| Error::Protocol("ListPeers listed a peer without a name".into()))?;
        peers.push(PeerInfo {
            id,
            identity: identity_from_dict(Some(item))?,
        });
    }
    let more = matches!(values.get(1), Some(Value::Bool(true)));
    Ok((peers, more))
}

/// `max_message_size` of `org.pidbus.Bus1.GetLimits`.
pub(crate) fn max_message(values: &[Value]) -> Option<u64> {
    dict_entries(values.first())
        .into_iter()
        .find(|(key, _)| *key == "max_message_size")
        .and_then(|(_, v)| u64_of(v))
}

/// Whether `error` says the bus has no such method or interface: it is
/// not pidbus.
pub(crate) fn is_not_there(error: &Error) -> bool {
    matches!(error, Error::UnknownMethod { .. })
        || matches!(error, Error::Failed { name: Some(name), .. }
            if name.starts_with("org.freedesktop.DBus.Error.Unknown"))
}

/// The SDK's error for an `Error` message.
pub(crate) fn error_of(received: &Received) -> Error {
    let header = &received.header;
    let name = header.error_name.clone().unwrap_or_default();
    let message = unmarshal(&header.signature, &received.body)
        .ok()
        .and_then(|values| values.first().and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    // The bus's own errors are the bus's; a peer's carry its name.
    let sender = header
        .sender
        .as_deref()
        .filter(|s| *s != BUS_NAME)
        .and_then(|s| s.parse::<PeerId>().ok());
    let mut code = errors::code_of(&name);
    // D-Bus says NoReply both for a timeout and for a callee that left
    // (every bus, pidbus too: "Message recipient disconnected from message
    // bus without replying").
    if name == errors::NO_REPLY && message.contains("disconnected") {
        code = pidbus_protocol::ErrorCode::PeerGone;
    }
    Error::from(ErrorReply {
        reply_to: header.reply_serial.map(u64::from),
        code,
        message,
        name: Some(name),
        sender,
    })
}

/// A signal of the bus itself: names this connection gained or lost, a
/// name's owner changing, a watched process ending.
pub(crate) fn bus_signal(shared: &Arc<Shared>, received: &Received) {
    let header = &received.header;
    let Ok(args) = unmarshal(&header.signature, &received.body) else {
        return;
    };
    let text = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or_default();
    let peer = |i: usize| text(i).parse::<PeerId>().ok();
    match (header.interface.as_deref(), header.member.as_deref()) {
        (Some(BUS_NAME), Some("NameAcquired")) => {
            let event = BusEvent::NameAcquired {
                name: text(0).to_owned(),
            };
            shared.name_listeners.dispatch(event, "name event");
        }
        (Some(BUS_NAME), Some("NameLost")) => {
            let event = BusEvent::NameLost {
                name: text(0).to_owned(),
            };
            shared.name_listeners.dispatch(event, "name event");
        }
        (Some(BUS_NAME), Some("NameOwnerChanged")) => {
            shared.subscriptions.owner_changed(text(0), text(2));
            if !text(0).starts_with(':') {
                let event = BusEvent::NameOwnerChanged {
                    name: text(0).to_owned(),
                    old_owner: peer(1),
                    new_owner: peer(2),
                };
                shared.name_listeners.dispatch(event, "name event");
            }
        }
        (Some(PIDBUS_INTERFACE), Some(member @ ("ProcessExited" | "ProcessReaped"))) => {
            let watch = u64::from(args.first().and_then(Value::as_u32).unwrap_or(0));
            let process = ProcessHandle {
                peer: peer(1).unwrap_or(PeerId(0)),
                pidfs_id: args.get(2).and_then(u64_of).filter(|id| *id != 0),
            };
            let event = if member == "ProcessExited" {
                ProcessEvent::Exited { watch, process }
            } else {
                let value = match args.get(4) {
                    Some(Value::Int32(value)) => *value,
                    _ => 0,
                };
                let status = match text(3) {
                    "exited" => Some(ExitStatus::Code(value)),
                    "killed" => Some(ExitStatus::Signal(value)),
                    _ => None,
                };
                ProcessEvent::Reaped {
                    watch,
                    process,
                    status,
                }
            };
            shared.process_watches.dispatch(event);
        }
        _ => {}
    }
}

/// A monitor's copy of a message, as the SDK shows it.
pub(crate) fn monitored(received: Received) -> Option<Monitored> {
    let Received { header, body, .. } = received;
    let peer = |name: &Option<String>| name.as_deref().and_then(|n| n.parse::<PeerId>().ok());
    let sender = peer(&header.sender);
    let destination = peer(&header.destination);
    let message = match header.kind {
        // A call as its callee gets it; a monitor learns the caller by
        // name only.
        MessageType::MethodCall => Message::Incoming(IncomingCall {
            call_id: u64::from(header.serial),
            caller: Caller {
                id: sender.unwrap_or(PeerId(0)),
                pid: None,
                uid: u32::MAX,
                gid: u32::MAX,
                groups: Vec::new(),
                pidfs_id: None,
                exe: None,
                unit: None,
                label: None,
            },
            destination: header
                .destination
                .as_deref()
                .and_then(|d| d.parse::<Destination>().ok())
                .unwrap_or(Destination::Unique(PeerId(0))),
            path: header.path.unwrap_or_default(),
            interface: header.interface.unwrap_or_default(),
            member: header.member.unwrap_or_default(),
            signature: header.signature,
            body,
            no_reply: header.flags & NO_REPLY_EXPECTED != 0,
            caller_serial: u64::from(header.serial),
        }),
        MessageType::MethodReturn => Message::Return(Return {
            reply_to: u64::from(header.reply_serial?),
            signature: header.signature,
            body,
            sender,
        }),
        MessageType::Error => {
            let name = header.error_name.unwrap_or_default();
            let message = unmarshal(&header.signature, &body)
                .ok()
                .and_then(|v| v.first().and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            Message::Error(ErrorReply {
                reply_to: header.reply_serial.map(u64::from),
                code: errors::code_of(&name),
                message,
                name: Some(name),
                sender,
            })
        }
        MessageType::Signal => Message::Signal(Signal {
            sender,
            destination: header
                .destination
                .as_deref()
                .and_then(|d| d.parse::<Destination>().ok()),
            path: header.path.unwrap_or_default(),
            interface: header.interface.unwrap_or_default(),
            member: header.member.unwrap_or_default(),
            signature: header.signature,
            body,
            matched: Vec::new(),
        }),
    };
    Some(Monitored::new(sender, destination, message))
}
