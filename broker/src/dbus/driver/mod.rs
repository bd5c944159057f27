//! The bus's own object for D-Bus peers: `org.freedesktop.DBus` on
//! `/org/freedesktop/DBus`, as the D-Bus specification and dbus-daemon
//! define it, answered from the core (names, rules, identities, policy).
//! What it offers, and where, is the table in `interfaces`; the
//! statistics are in `stats`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use pidbus_protocol::dbus::header::Header;
use pidbus_protocol::dbus::value::{Value, marshal, unmarshal};
use pidbus_protocol::{
    BrokerReply, Destination, ErrorCode, ErrorReply, MatchRule, Message, NameFlags, PeerId,
    ReleaseNameReply, RequestNameReply, Return, names,
};

use crate::bus::activation::{StartOutcome, Waiter};
use crate::bus::authority::POLKIT_NAME;
use crate::bus::outbox::Outgoing;
use crate::bus::{Bus, DRIVER_NAME};
use crate::dbus::errors::*;
use crate::dbus::wire::DbusWire;

mod interfaces;
mod stats;

use interfaces::{
    Addressed, INTROSPECTABLE, Interface, MONITORING, PEER, PROPERTIES, Route, STATS,
};

/// pidbus's own requests on the driver, for D-Bus programs.
pub const PIDBUS_INTERFACE: &str = "org.pidbus.Bus1";

/// One D-Bus connection's side of the driver: its match rules by text, so
/// `RemoveMatch` finds what `AddMatch` added.
#[derive(Debug, Default)]
pub struct Driver {
    /// Each rule the connection added, with the core's ids for it (one
    /// per `AddMatch` of it: D-Bus counts duplicates).
    rules: HashMap<MatchRule, Vec<u64>>,
    last_rule_id: u64,
    /// The id of the connection's last process watch.
    last_watch_id: u32,
}

/// A driver error: the D-Bus error name and its message.
#[derive(Debug)]
pub struct Failure {
    name: &'static str,
    message: String,
}

fn fail(name: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        name,
        message: message.into(),
    }
}

impl From<ErrorReply> for Failure {
    fn from(error: ErrorReply) -> Self {
        let name = match error.code {
            ErrorCode::AccessDenied => ACCESS_DENIED,
            ErrorCode::LimitsExceeded => LIMITS_EXCEEDED,
            ErrorCode::InvalidName | ErrorCode::InvalidArgs => INVALID_ARGS,
            ErrorCode::NoSuchName => NAME_HAS_NO_OWNER,
            _ => FAILED,
        };
        fail(name, error.message)
    }
}

/// What the driver answers: values, and descriptors they index.
type Answer = Result<(Vec<Value>, Vec<OwnedFd>), Failure>;

fn values(values: Vec<Value>) -> Answer {
    Ok((values, Vec::new()))
}

/// The driver's answer as the core's message, for monitors.
fn as_message(serial: u32, answer: &Answer) -> Message {
    let reply_to = u64::from(serial);
    let error = |name: &str, message: &str| {
        Message::Error(ErrorReply {
            name: Some(name.to_owned()),
            ..ErrorReply::broker(Some(reply_to), code_of(name), message)
        })
    };
    match answer {
        Ok((values, _)) => match marshal(values) {
            Ok((signature, body)) => Message::Return(Return {
                reply_to,
                signature,
                body,
                sender: None,
            }),
            Err(e) => error(FAILED, &e.to_string()),
        },
        Err(failure) => error(failure.name, &failure.message),
    }
}

/// One call to the driver, with its arguments read.
pub struct DriverCall<'a> {
    /// The caller.
    pub peer: PeerId,
    /// The call's header.
    pub header: &'a Header,
    /// Its arguments (little-endian).
    pub body: &'a [u8],
    /// The descriptors that came with it (only `org.pidbus.Bus1.Ping`
    /// takes any: it sends them back).
    pub fds: Vec<OwnedFd>,
}

impl Driver {
    /// Answers `call`, queueing the reply or error for the caller (unless
    /// it asked for none). `hello_done`: the connection is on the bus.
    pub fn handle(&mut self, bus: &Arc<Bus>, wire: &Arc<DbusWire>, mut call: DriverCall<'_>) {
        let header = call.header;
        bus.monitor_bus_call(call.peer, header, call.body);
        let addressed = Addressed {
            path: header.path.as_deref().unwrap_or_default(),
            interface: header.interface.as_deref(),
            member: header.member.as_deref().unwrap_or_default(),
            signature: &header.signature,
        };
        let answer = match interfaces::route(&addressed, || bus.is_trusted_peer(call.peer)) {
            Ok(route) => match (route.interface.name, route.method.name) {
                // These answer (or wait) on their own.
                (PIDBUS_INTERFACE, "Ping") => return ping(bus, wire, &mut call),
                (DRIVER_NAME, "StartServiceByName") => {
                    return start_service_by_name(bus, wire, &call);
                }
                _ => match unmarshal(&header.signature, call.body) {
                    Ok(args) => self.dispatch(bus, wire, &call, &route, &args),
                    Err(e) => Err(fail(
                        INVALID_ARGS,
                        format!("cannot read the arguments: {e}"),
                    )),
                },
            },
            Err(failure) => Err(failure),
        };
        let now_monitor = answer.is_ok() && header.member.as_deref() == Some("BecomeMonitor");
        if header.flags & pidbus_protocol::dbus::header::NO_REPLY_EXPECTED != 0 {
            return;
        }
        bus.monitor_bus_answer(call.peer, || as_message(header.serial, &answer));
        let record = match answer {
            Ok((values, fds)) => match wire.driver_reply(header.serial, &values, fds.len()) {
                Ok(bytes) => Outgoing { bytes, fds },
                Err(e) => Outgoing {
                    bytes: wire.driver_error(header.serial, FAILED, &e.to_string()),
                    fds: Vec::new(),
                },
            },
            Err(failure) => Outgoing {
                bytes: wire.driver_error(header.serial, failure.name, &failure.message),
                fds: Vec::new(),
            },
        };
        bus.answer_raw(call.peer, u64::from(header.serial), record, "a bus reply");
        if now_monitor {
            // After the reply, as dbus-daemon does: the monitor loses its
            // unique name (busctl waits for this before it shows traffic).
            let lost = wire.driver_signal("NameLost", &[Value::string(call.peer.to_string())]);
            let record = Outgoing {
                bytes: lost,
                fds: Vec::new(),
            };
            bus.answer_raw(call.peer, u64::from(header.serial), record, "a bus signal");
        }
    }

    /// Answers a call the table routed: its signature is the method's.
    fn dispatch(
        &mut self,
        bus: &Arc<Bus>,
        wire: &DbusWire,
        call: &DriverCall<'_>,
        route: &Route,
        args: &[Value],
    ) -> Answer {
        let peer = call.peer;
        let text = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or_default();
        match (route.interface.name, route.method.name) {
            (DRIVER_NAME, "Hello") => Err(fail(FAILED, "Already handled an Hello message")),
            (DRIVER_NAME, "RequestName") => {
                request_name(bus, peer, text(0), args[1].as_u32().unwrap_or(0))
            }
            (DRIVER_NAME, "ReleaseName") => release_name(bus, peer, text(0)),
            (DRIVER_NAME, "ListNames") => {
                let (peers, names) = bus.all_names();
                let mut list = vec![DRIVER_NAME.to_owned()];
                if bus.settings().polkit_authority {
                    list.push(POLKIT_NAME.to_owned());
                }
                list.extend(names.into_iter().map(|n| n.name));
                list.extend(peers.iter().map(ToString::to_string));
                values(vec![Value::strings(list)])
            }
            (DRIVER_NAME, "ListActivatableNames") => {
                let mut names = vec![DRIVER_NAME.to_owned()];
                names.extend(bus.activatable_names());
                values(vec![Value::strings(names)])
            }
            (DRIVER_NAME, "NameHasOwner") => {
                // An invalid name has no owner: false, as dbus-daemon
                // answers, not an error.
                let name = text(0);
                let owned = is_bus_itself(bus, name) || owner_of(bus, name).is_some();
                values(vec![Value::Bool(owned)])
            }
            (DRIVER_NAME, "GetNameOwner") => {
                let name = text(0);
                check_bus_name(name)?;
                if is_bus_itself(bus, name) {
                    return values(vec![Value::string(DRIVER_NAME)]);
                }
                match owner_of(bus, name) {
                    Some(owner) => values(vec![Value::string(owner.to_string())]),
                    None => Err(no_owner(name)),
                }
            }
            (DRIVER_NAME, "ListQueuedOwners") => list_queued_owners(bus, text(0)),
            (DRIVER_NAME, "AddMatch") => self.add_match(bus, peer, text(0)),
            (DRIVER_NAME, "RemoveMatch") => self.remove_match(bus, peer, text(0)),
            (DRIVER_NAME, "GetConnectionUnixUser") => {
                let (_, identity) = connection(bus, text(0))?;
                values(vec![Value::UInt32(identity.uid)])
            }
            (DRIVER_NAME, "GetConnectionUnixProcessID") => {
                let (_, identity) = connection(bus, text(0))?;
                match live_pid(&identity) {
                    0 => Err(fail(
                        UNIX_PROCESS_ID_UNKNOWN,
                        "the process is not visible in the bus's pid namespace",
                    )),
                    pid => values(vec![Value::UInt32(pid)]),
                }
            }
            (DRIVER_NAME, "GetConnectionCredentials") => {
                credentials(bus, peer, text(0), wire.fd_passing())
            }
            (PIDBUS_INTERFACE, "GetConnectionIdentity") => verified_identity(bus, peer, text(0)),
            (PIDBUS_INTERFACE, "ListPeers") => list_peers(bus, peer, text(0)),
            (PIDBUS_INTERFACE, "GetProcessFD") => process_fd(bus, peer, text(0), wire.fd_passing()),
            (PIDBUS_INTERFACE, "GetLimits") => {
                let max = bus.settings().max_record_size;
                let max = if wire.carries_records() {
                    max
                } else {
                    bus.settings().max_message_size
                };
                let limits = [(
                    "max_message_size",
                    Value::UInt32(u32::try_from(max).unwrap_or(u32::MAX)),
                )];
                values(vec![Value::dict(limits)])
            }
            (PIDBUS_INTERFACE, "Ping") => {
                // With the right signature it was answered before dispatch.
                values(Vec::new())
            }
            (PIDBUS_INTERFACE, "AttachCaller") => {
                wire.attach_caller(args.first() == Some(&Value::Bool(true)));
                values(Vec::new())
            }
            (PIDBUS_INTERFACE, "WatchProcess") => self.watch_process(bus, peer, text(0)),
            (PIDBUS_INTERFACE, "UnwatchProcess") => {
                let watch = args.first().and_then(Value::as_u32).unwrap_or_default();
                bus.unwatch_process(peer, u64::from(watch))
                    .map_err(|e| fail(INVALID_ARGS, e.message))?;
                values(Vec::new())
            }
            (PIDBUS_INTERFACE, "CheckAuthorization") => {
                let serial = args.get(2).and_then(Value::as_u32).unwrap_or_default();
                check_authorization(bus, peer, text(0), text(1), serial)
            }
            (DRIVER_NAME, "GetConnectionSELinuxSecurityContext") => {
                let (_, identity) = connection(bus, text(0))?;
                match &identity.label {
                    Some(label) => values(vec![bytes(label.as_bytes())]),
                    None => Err(fail(
                        SELINUX_CONTEXT_UNKNOWN,
                        "the connection has no security label",
                    )),
                }
            }
            (DRIVER_NAME, "GetAdtAuditSessionData") => {
                connection(bus, text(0))?;
                Err(fail(
                    ADT_AUDIT_DATA_UNKNOWN,
                    "this bus keeps no audit session data",
                ))
            }
            (DRIVER_NAME, "GetId") => values(vec![Value::string(bus.settings().bus_id.clone())]),
            (DRIVER_NAME, "ReloadConfig") => {
                bus.reload_policy_for(peer)?;
                values(Vec::new())
            }
            (DRIVER_NAME, "StartServiceByName") => {
                // With the right signature it was answered before dispatch.
                values(Vec::new())
            }
            (DRIVER_NAME, "UpdateActivationEnvironment") => {
                let variables = string_pairs(args.first());
                bus.update_activation_environment(peer, variables)?;
                values(Vec::new())
            }
            (MONITORING, "BecomeMonitor") => self.become_monitor(bus, wire, peer, args),
            (INTROSPECTABLE, "Introspect") => {
                let path = call.header.path.as_deref().unwrap_or_default();
                values(vec![Value::string(interfaces::introspect(path))])
            }
            (PEER, "Ping") => values(Vec::new()),
            (PEER, "GetMachineId") => {
                let id = std::fs::read_to_string("/etc/machine-id")
                    .map_err(|e| fail(FAILED, format!("cannot read /etc/machine-id: {e}")))?;
                values(vec![Value::string(id.trim())])
            }
            (PROPERTIES, "Get") => {
                let interface = interfaces::for_properties(text(0))?;
                let value = property(interface, text(1))?;
                values(vec![Value::Variant(Box::new(value))])
            }
            (PROPERTIES, "GetAll") => {
                let interface = interfaces::for_properties(text(0))?;
                let all = interface
                    .properties
                    .iter()
                    .map(|p| Ok((p.name, property(interface, p.name)?)))
                    .collect::<Result<Vec<_>, Failure>>()?;
                values(vec![Value::dict(all)])
            }
            (PROPERTIES, "Set") => {
                let interface = interfaces::for_properties(text(0))?;
                property(interface, text(1))?;
                Err(fail(
                    PROPERTY_READ_ONLY,
                    format!("Property '{}.{}' cannot be set", interface.name, text(1)),
                ))
            }
            (STATS, "GetStats") => values(vec![stats::of_bus(bus)]),
            (STATS, "GetConnectionStats") => {
                check_bus_name(text(0))?;
                let target: Destination = text(0).parse().map_err(|_| no_owner(text(0)))?;
                let stats = stats::of_connection(bus, &target).ok_or_else(|| no_owner(text(0)))?;
                values(vec![stats])
            }
            (interface, member) => Err(fail(
                UNKNOWN_METHOD,
                format!("the bus does not implement {interface}.{member}"),
            )),
        }
    }

    fn add_match(&mut self, bus: &Bus, peer: PeerId, text: &str) -> Answer {
        let rule = MatchRule::parse_dbus(text)
            .map_err(|e| fail(MATCH_RULE_INVALID, format!("{e} in {text:?}")))?;
        self.last_rule_id += 1;
        let id = self.last_rule_id;
        bus.add_match(peer, id, rule.clone())?;
        self.rules.entry(rule).or_default().push(id);
        values(Vec::new())
    }

    fn remove_match(&mut self, bus: &Bus, peer: PeerId, text: &str) -> Answer {
        let rule = MatchRule::parse_dbus(text)
            .map_err(|e| fail(MATCH_RULE_INVALID, format!("{e} in {text:?}")))?;
        let Some(ids) = self.rules.get_mut(&rule) else {
            return Err(fail(
                MATCH_RULE_NOT_FOUND,
                format!("this connection has no match rule {text:?}"),
            ));
        };
        let id = ids.pop().unwrap_or_default();
        if ids.is_empty() {
            self.rules.remove(&rule);
        }
        bus.remove_match(peer, id)?;
        values(Vec::new())
    }

    /// `BecomeMonitor(rules, flags)`: the connection sees the traffic its
    /// rules select (all of it with none), and may send nothing more.
    /// `org.pidbus.Bus1.WatchProcess(name)`: watches the process behind
    /// the connection `name` names until it is reaped (the watch outlives
    /// the connection); `ProcessExited` and `ProcessReaped` say when. The
    /// policy's `pidfd` action decides, as for `GetProcessFD`.
    fn watch_process(&mut self, bus: &Arc<Bus>, watcher: PeerId, name: &str) -> Answer {
        check_bus_name(name)?;
        let target: Destination = name.parse().map_err(|_| no_owner(name))?;
        let watch = self.last_watch_id.checked_add(1).ok_or_else(|| {
            fail(
                LIMITS_EXCEEDED,
                "this connection has used up its process watch ids",
            )
        })?;
        let BrokerReply::ProcessWatched(handle) =
            bus.watch_process(watcher, u64::from(watch), &target)?
        else {
            return Err(fail(FAILED, "the bus could not watch the process"));
        };
        self.last_watch_id = watch;
        values(vec![
            Value::UInt32(watch),
            Value::string(handle.peer.to_string()),
            Value::UInt64(handle.pidfs_id.unwrap_or(0)),
        ])
    }

    fn become_monitor(
        &mut self,
        bus: &Bus,
        wire: &DbusWire,
        peer: PeerId,
        args: &[Value],
    ) -> Answer {
        let rules = match &args[0] {
            Value::Array { items, .. } => items
                .iter()
                .map(|item| {
                    let text = item.as_str().unwrap_or_default();
                    MatchRule::parse_dbus(text)
                        .map_err(|e| fail(MATCH_RULE_INVALID, format!("{e} in {text:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        if args[1].as_u32() != Some(0) {
            return Err(fail(INVALID_ARGS, "BecomeMonitor's flags must be 0"));
        }
        bus.become_monitor(peer)?;
        // A monitor's own rules and names are of no more use.
        for ids in std::mem::take(&mut self.rules).into_values() {
            for id in ids {
                let _ = bus.remove_match(peer, id);
            }
        }
        bus.retire_as_monitor(peer);
        wire.become_monitor(rules);
        values(Vec::new())
    }
}

/// The bus's `Features`, as dbus-daemon names them: header fields it
/// does not know are removed from what it routes (`HeaderFiltering`), and
/// where systemd runs the machine, services are started as systemd units
/// (`SystemdActivation`). It mediates neither by AppArmor nor SELinux.
fn features() -> Value {
    let mut features = vec!["HeaderFiltering"];
    if crate::os::launch::systemd_running() {
        features.push("SystemdActivation");
    }
    Value::strings(features)
}

/// The value of property `name` of `interface`.
fn property(interface: &Interface, name: &str) -> Result<Value, Failure> {
    match (interface.name, name) {
        (DRIVER_NAME, "Features") => Ok(features()),
        (DRIVER_NAME, "Interfaces") => Ok(Value::strings(interfaces::listed())),
        _ => Err(fail(
            UNKNOWN_PROPERTY,
            format!("Property \"{}.{name}\" not found", interface.name),
        )),
    }
}

fn bytes(data: &[u8]) -> Value {
    Value::Array {
        element: "y".into(),
        items: data.iter().map(|b| Value::Byte(*b)).collect(),
    }
}

/// The names the bus answers for itself: the driver, and the polkit
/// authority when it serves it.
fn is_bus_itself(bus: &Bus, name: &str) -> bool {
    name == DRIVER_NAME || (bus.settings().polkit_authority && name == POLKIT_NAME)
}

fn check_bus_name(name: &str) -> Result<(), Failure> {
    names::validate_bus_name(name).map_err(|e| fail(INVALID_ARGS, e.to_string()))
}

fn no_owner(name: &str) -> Failure {
    fail(
        NAME_HAS_NO_OWNER,
        format!("Could not get owner of name '{name}': no such name"),
    )
}

/// Who owns `name` now (a unique name owns itself while connected).
fn owner_of(bus: &Bus, name: &str) -> Option<PeerId> {
    let destination: Destination = name.parse().ok()?;
    bus.identity_of(&destination).map(|(id, _)| id)
}

/// The connection `name` names, for the `GetConnection…` methods. The
/// bus itself answers as the broker's process.
fn connection(
    bus: &Bus,
    name: &str,
) -> Result<(PeerId, Arc<pidbus_protocol::ProcessIdentity>), Failure> {
    check_bus_name(name)?;
    if is_bus_itself(bus, name) {
        return Ok((PeerId(0), Arc::new(broker_identity())));
    }
    let destination: Destination = name.parse().map_err(|_| no_owner(name))?;
    bus.identity_of(&destination).ok_or_else(|| no_owner(name))
}

/// The pid a D-Bus program may be told: 0 (unknown) for a process that
/// had exited at connect, whose pid may be another's by now.
fn live_pid(identity: &pidbus_protocol::ProcessIdentity) -> u32 {
    if identity.exited_at_connect {
        0
    } else {
        identity.pid
    }
}

/// The broker's own process, as the bus's credentials.
fn broker_identity() -> pidbus_protocol::ProcessIdentity {
    pidbus_protocol::ProcessIdentity {
        pid: std::process::id(),
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        ..Default::default()
    }
}

fn request_name(bus: &Bus, peer: PeerId, name: &str, flags: u32) -> Answer {
    if flags & !0x7 != 0 {
        return Err(fail(
            INVALID_ARGS,
            format!("unknown RequestName flags {flags:#x}"),
        ));
    }
    let flags = NameFlags {
        allow_replacement: flags & 0x1 != 0,
        replace_existing: flags & 0x2 != 0,
        do_not_queue: flags & 0x4 != 0,
    };
    let reply = match bus.request_name(peer, name, flags)? {
        BrokerReply::NameRequested(RequestNameReply::PrimaryOwner) => 1,
        BrokerReply::NameRequested(RequestNameReply::InQueue) => 2,
        BrokerReply::NameRequested(RequestNameReply::Exists) => 3,
        BrokerReply::NameRequested(RequestNameReply::AlreadyOwner) => 4,
        other => return Err(fail(FAILED, format!("unexpected answer {other:?}"))),
    };
    values(vec![Value::UInt32(reply)])
}

fn release_name(bus: &Bus, peer: PeerId, name: &str) -> Answer {
    let reply = match bus.release_name(peer, name)? {
        BrokerReply::NameReleased(ReleaseNameReply::Released) => 1,
        BrokerReply::NameReleased(ReleaseNameReply::NonExistent) => 2,
        BrokerReply::NameReleased(ReleaseNameReply::NotOwner) => 3,
        other => return Err(fail(FAILED, format!("unexpected answer {other:?}"))),
    };
    values(vec![Value::UInt32(reply)])
}

fn list_queued_owners(bus: &Bus, name: &str) -> Answer {
    check_bus_name(name)?;
    if name == DRIVER_NAME {
        return values(vec![Value::strings([DRIVER_NAME])]);
    }
    if let Ok(id) = name.parse::<PeerId>() {
        return match owner_of(bus, name) {
            Some(_) => values(vec![Value::strings([id.to_string()])]),
            None => Err(no_owner(name)),
        };
    }
    let (_, names) = bus.all_names();
    let Some(info) = names.into_iter().find(|n| n.name == name) else {
        return Err(no_owner(name));
    };
    let queue = std::iter::once(info.owner)
        .chain(info.queue)
        .map(|id| id.to_string());
    values(vec![Value::strings(queue)])
}

/// `GetConnectionCredentials`: the standard keys, the pidfs id, and
/// `ProcessFD` when the policy lets the asker have the pidfd.
fn credentials(bus: &Bus, asker: PeerId, name: &str, fd_passing: bool) -> Answer {
    let (id, identity) = connection(bus, name)?;
    let mut entries = vec![
        ("UnixUserID", Value::UInt32(identity.uid)),
        (
            "UnixGroupIDs",
            Value::Array {
                element: "u".into(),
                items: std::iter::once(identity.gid)
                    .chain(
                        identity
                            .groups
                            .iter()
                            .copied()
                            .filter(|g| *g != identity.gid),
                    )
                    .map(Value::UInt32)
                    .collect(),
            },
        ),
    ];
    if live_pid(&identity) != 0 {
        entries.push(("ProcessID", Value::UInt32(identity.pid)));
    }
    if let Some(label) = &identity.label {
        let mut bytes_with_nul = label.as_bytes().to_vec();
        bytes_with_nul.push(0);
        entries.push(("LinuxSecurityLabel", bytes(&bytes_with_nul)));
    }
    if let Some(pidfs_id) = identity.pidfs_id {
        entries.push(("org.pidbus.PidfsId", Value::UInt64(pidfs_id)));
    }
    let mut fds = Vec::new();
    let pidfd = fd_passing
        .then(|| bus.get_pidfd(asker, &Destination::Unique(id)).ok())
        .flatten();
    if let Some((_, pidfd)) = pidfd {
        entries.push(("ProcessFD", Value::UnixFd(0)));
        fds.push(pidfd);
    }
    Ok((vec![Value::dict(entries)], fds))
}

/// `org.pidbus.Bus1.GetConnectionIdentity(name)`: the broker-verified
/// identity of the peer `name` names (or of the bus itself), as the asker
/// may see it (see [`identity_dict`]).
fn verified_identity(bus: &Bus, asker: PeerId, name: &str) -> Answer {
    check_bus_name(name)?;
    let (id, identity) = if is_bus_itself(bus, name) {
        (PeerId(0), broker_identity())
    } else {
        let destination: Destination = name.parse().map_err(|_| no_owner(name))?;
        bus.identity_seen_by(asker, &destination)
            .ok_or_else(|| no_owner(name))?
    };
    values(vec![identity_dict(id, &identity)])
}

/// `org.pidbus.Bus1.ListPeers(after)`: the connected peers after the
/// unique name `after` ("" for the first page), each as
/// `GetConnectionIdentity` gives it, and whether more follow (ask again
/// after the last one listed).
fn list_peers(bus: &Bus, asker: PeerId, after: &str) -> Answer {
    let after = match after {
        "" => None,
        name => Some(
            name.parse::<PeerId>()
                .map_err(|e| fail(INVALID_ARGS, format!("{name:?} is not a unique name: {e}")))?,
        ),
    };
    let (listed, more) = bus.peers(
        asker,
        after,
        |peer| identity_dict(peer.id, &peer.identity),
        |dict| {
            pidbus_protocol::dbus::value::marshal(std::slice::from_ref(dict))
                .map_or(usize::MAX, |(_, body)| body.len())
        },
    );
    values(vec![
        Value::Array {
            element: "a{sv}".into(),
            items: listed,
        },
        Value::Bool(more),
    ])
}

/// A verified identity as `org.pidbus.Bus1` gives it: every fact pidbus
/// knows of the process, keyed as docs/dbus.md lists them; a fact the
/// broker does not know (or the asker may not see) is left out.
fn identity_dict(id: PeerId, identity: &pidbus_protocol::ProcessIdentity) -> Value {
    let text = |key: &'static str, value: &Option<String>| {
        value.as_ref().map(|v| (key, Value::string(v.clone())))
    };
    let unique_name = if id == PeerId(0) {
        DRIVER_NAME.to_owned()
    } else {
        id.to_string()
    };
    let mut entries = vec![
        ("unique_name", Value::string(unique_name)),
        ("uid", Value::UInt32(identity.uid)),
        ("gid", Value::UInt32(identity.gid)),
        (
            "groups",
            Value::Array {
                element: "u".into(),
                items: identity.groups.iter().copied().map(Value::UInt32).collect(),
            },
        ),
        ("boot_id", Value::string(identity.boot_id.clone())),
        (
            "sender_proof",
            Value::string(if identity.sender_proof_forgeable {
                "forgeable"
            } else {
                "kernel"
            }),
        ),
        ("exited_at_connect", Value::Bool(identity.exited_at_connect)),
        ("facts_withheld", Value::Bool(identity.facts_withheld)),
    ];
    if live_pid(identity) != 0 {
        entries.push(("pid", Value::UInt32(identity.pid)));
    }
    if let Some(pidfs_id) = identity.pidfs_id {
        entries.push(("pidfs_id", Value::UInt64(pidfs_id)));
    }
    entries.extend(
        [
            text("exe", &identity.exe),
            text("exe_unverified", &identity.exe_unverified),
            text("unit", &identity.unit),
            text("user_unit", &identity.user_unit),
            text("cgroup", &identity.cgroup),
            text("label", &identity.label),
        ]
        .into_iter()
        .flatten(),
    );
    Value::dict(entries)
}

/// `org.pidbus.Bus1.Ping(payload)`: the payload and the call's descriptors
/// back, proving the connection and descriptor passing end to end.
fn ping(bus: &Bus, wire: &DbusWire, call: &mut DriverCall<'_>) {
    let header = call.header;
    let fds = std::mem::take(&mut call.fds);
    let payload = unmarshal("ay", call.body).unwrap_or_default();
    if header.flags & pidbus_protocol::dbus::header::NO_REPLY_EXPECTED != 0 {
        return;
    }
    let record = match wire.driver_reply(header.serial, &payload, fds.len()) {
        Ok(bytes) => Outgoing { bytes, fds },
        Err(e) => Outgoing {
            bytes: wire.driver_error(header.serial, FAILED, &e.to_string()),
            fds: Vec::new(),
        },
    };
    bus.answer_raw(call.peer, u64::from(header.serial), record, "a bus reply");
}

/// `org.pidbus.Bus1.CheckAuthorization(action, subject, serial)`: may
/// `subject` do `action`? With a `serial`, the subject is the sender of
/// that call to the asker while it waits for the asker's answer — the
/// identity decided on is the connection's, so no PID can be reused in
/// between; with serial 0, the connection `subject` itself (another
/// user's only for root or the broker's user). Answers whether, and the
/// rule that decided (`file:line`, or why nothing could be decided).
fn check_authorization(
    bus: &Bus,
    asker: PeerId,
    action: &str,
    subject: &str,
    serial: u32,
) -> Answer {
    check_bus_name(subject)?;
    let subject = if serial == 0 {
        let peer = owner_of(bus, subject).ok_or_else(|| no_owner(subject))?;
        pidbus_protocol::AuthSubject::Peer { peer }
    } else {
        let caller = subject.parse::<PeerId>().map_err(|_| {
            fail(
                INVALID_ARGS,
                format!("the sender of a call is a unique name, not {subject:?}"),
            )
        })?;
        pidbus_protocol::AuthSubject::Call {
            caller,
            serial: u64::from(serial),
        }
    };
    let BrokerReply::Authorization(verdict) = bus.check_authorization(asker, action, subject)?
    else {
        return Err(fail(FAILED, "the bus could not decide"));
    };
    values(vec![
        Value::Bool(verdict.allowed),
        Value::string(verdict.rule),
    ])
}

/// `org.pidbus.Bus1.GetProcessFD(name)`: a pidfd of the process behind the
/// connection `name` names, to wait for it or signal it; the policy's
/// `pidfd` action decides, as for a native `GetPidfd`.
fn process_fd(bus: &Bus, asker: PeerId, name: &str, fd_passing: bool) -> Answer {
    check_bus_name(name)?;
    if !fd_passing {
        return Err(fail(
            NOT_SUPPORTED,
            "GetProcessFD returns a file descriptor: negotiate unix fd passing \
             (NEGOTIATE_UNIX_FD) when connecting",
        ));
    }
    let destination: Destination = name.parse().map_err(|_| no_owner(name))?;
    let (_, pidfd) = bus.get_pidfd(asker, &destination)?;
    Ok((vec![Value::UnixFd(0)], vec![pidfd]))
}

/// `StartServiceByName(name, flags)`: answered at once when the name is
/// owned (`DBUS_START_REPLY_ALREADY_RUNNING`, 2) or cannot be started, else
/// once the started service owns it (`DBUS_START_REPLY_SUCCESS`, 1) or the
/// start fails (the activation error).
fn start_service_by_name(bus: &Arc<Bus>, wire: &Arc<DbusWire>, call: &DriverCall<'_>) {
    const SUCCESS: u32 = 1;
    const ALREADY_RUNNING: u32 = 2;
    let serial = call.header.serial;
    let peer = call.peer;
    let wants_reply = call.header.flags & pidbus_protocol::dbus::header::NO_REPLY_EXPECTED == 0;
    let args = unmarshal("su", call.body).unwrap_or_default();
    let name = args
        .first()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let answer = move |wire: &DbusWire, outcome: Result<u32, (&str, &str)>| match outcome {
        Ok(reply) => Outgoing {
            bytes: wire
                .driver_reply(serial, &[Value::UInt32(reply)], 0)
                .unwrap_or_else(|e| wire.driver_error(serial, FAILED, &e.to_string())),
            fds: Vec::new(),
        },
        Err((error, message)) => Outgoing {
            bytes: wire.driver_error(serial, error, message),
            fds: Vec::new(),
        },
    };
    let immediate = match check_bus_name(&name) {
        Err(failure) => Some(answer(wire, Err((failure.name, &failure.message)))),
        Ok(()) if is_bus_itself(bus, &name) => Some(answer(wire, Ok(ALREADY_RUNNING))),
        Ok(()) => {
            // Weak: a waiting request must not keep its connection's
            // socket open once the caller has left.
            let later = Arc::downgrade(wire);
            let waiter = Waiter::new(move |state, outcome| {
                let Some(later) = later.upgrade().filter(|_| wants_reply) else {
                    return;
                };
                let record = match outcome {
                    Ok(()) => answer(&later, Ok(SUCCESS)),
                    Err(e) => answer(&later, Err((name_of(e), &e.message))),
                };
                state.deliver_or_drop(peer, record, "a bus reply");
            });
            match bus.start_service(peer, &name, waiter) {
                Ok(StartOutcome::AlreadyRunning) => Some(answer(wire, Ok(ALREADY_RUNNING))),
                Ok(StartOutcome::Starting) => None,
                Err(e) => Some(answer(wire, Err((name_of(&e), &e.message)))),
            }
        }
    };
    if let Some(record) = immediate.filter(|_| wants_reply) {
        bus.answer_raw(peer, u64::from(serial), record, "a bus reply");
    }
}

/// The `(key, value)` pairs of an `a{ss}` argument.
pub(crate) fn string_pairs(value: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Array { items, .. }) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::DictEntry(key, value) => {
                Some((key.as_str()?.to_owned(), value.as_str()?.to_owned()))
            }
            _ => None,
        })
        .collect()
}
