//! pidbusctl on any D-Bus bus: which bus to connect to (the SDK's default
//! order), what a command does when the bus is dbus-daemon or dbus-broker
//! rather than pidbus, and the error that names what needs pidbus.

use std::io::Write;

use pidbus::MethodCall;
use pidbus::blocking::Connection;
use pidbus_protocol::address;
use pidbus_protocol::dbus::value::{Value as DbusValue, unmarshal};
use serde::Serialize;

use crate::output::{Style, or_dash};
use crate::{AnyResult, usage};

const BUS_NAME: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";

/// Where to connect: what `--address`, `--system` and `--user` say.
#[derive(Debug)]
pub enum Target<'a> {
    /// `--address`: a socket path or a D-Bus address, tried as given.
    Address(&'a str),
    /// `--system`: the SDK's system bus order.
    System,
    /// No option, or `--user`: the SDK's session bus order.
    Session,
}

/// Connects as the SDK does: an explicit address as given (a D-Bus address
/// that names no unix socket is a usage error), else the first of the
/// session (or system) bus candidates that answers, in the SDK's order.
pub fn connect(target: Target<'_>) -> AnyResult<Connection> {
    let (candidates, which) = match target {
        Target::Address(text) => {
            if address::is_dbus_address(text) {
                address::parse_dbus_address(text).map_err(|e| {
                    usage(format!(
                        "--address: {e}; give a socket path or a D-Bus address such as \
                         unix:path=PATH or unix:abstract=NAME"
                    ))
                })?;
            }
            return Ok(Connection::connect(text)?);
        }
        Target::System => (address::system_candidates(), "system"),
        Target::Session => (address::session_candidates(), "session"),
    };
    let mut failed: Vec<String> = Vec::new();
    for candidate in candidates {
        match Connection::connect(&candidate) {
            Ok(bus) => return Ok(bus),
            // Nobody listens there: the next candidate, as the SDK does.
            Err(pidbus::Error::Connect { source, .. }) => {
                failed.push(format!("{candidate} ({source})"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (native, env, start) = match which {
        "system" => (
            address::SYSTEM_BUS_PATH.to_owned(),
            address::DBUS_SYSTEM_ENV,
            "`systemctl start pidbus.socket` or `pidbusd --system`",
        ),
        _ => (
            address::session_bus_path().display().to_string(),
            address::DBUS_SESSION_ENV,
            "`systemctl --user start pidbus.socket` or `pidbusd --session`",
        ),
    };
    let tried = if failed.is_empty() {
        format!(
            "no address to try (${}, ${env} and $XDG_RUNTIME_DIR are unset)",
            address::ADDRESS_ENV
        )
    } else {
        format!("tried {}", failed.join(", "))
    };
    let missing = if std::path::Path::new(&native).exists() {
        String::new()
    } else {
        format!("; pidbus's native socket {native} does not exist")
    };
    Err(format!(
        "cannot connect to the {which} bus: {tried}{missing}. Start pidbus's {which} bus \
         ({start}), or pass --address with a socket path or a D-Bus address"
    )
    .into())
}

/// A command, or part of one, that needs pidbus, asked of another D-Bus
/// bus (dbus-daemon, dbus-broker): exit status 1, with a message naming
/// the feature and what works instead.
#[derive(Debug)]
pub struct NeedsPidbus {
    /// The subcommand, as typed.
    pub command: &'static str,
    /// What it needs, in words (a noun phrase).
    pub feature: String,
    /// The bus's address.
    pub address: String,
    /// What the SDK said, if it said more.
    pub detail: Option<String>,
    /// What to use on this bus instead, if anything.
    pub instead: Option<&'static str>,
}

impl std::fmt::Display for NeedsPidbus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} needs pidbus for {}; the bus at {} is another D-Bus bus (dbus-daemon or \
             dbus-broker)",
            self.command, self.feature, self.address
        )?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(instead) = self.instead {
            write!(f, "; {instead}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NeedsPidbus {}

/// Whether the bus is pidbus.
pub fn is_pidbus(bus: &Connection) -> bool {
    bus.as_async().is_pidbus()
}

/// `Err(NeedsPidbus)` unless the bus is pidbus.
pub fn require_pidbus(
    bus: &Connection,
    command: &'static str,
    feature: &str,
    instead: Option<&'static str>,
) -> AnyResult {
    if is_pidbus(bus) {
        return Ok(());
    }
    Err(Box::new(NeedsPidbus {
        command,
        feature: feature.to_owned(),
        address: bus.address().display().to_string(),
        detail: None,
        instead,
    }))
}

/// On another bus than pidbus, the SDK's `NotSupported` as a
/// [`NeedsPidbus`] of `command` (needing `feature`); any other error as
/// it is.
pub fn explain(
    bus: &Connection,
    command: &'static str,
    feature: &str,
    error: pidbus::Error,
) -> Box<dyn std::error::Error> {
    match error {
        pidbus::Error::NotSupported {
            feature: what,
            reason,
        } if !is_pidbus(bus) => Box::new(NeedsPidbus {
            command,
            feature: feature.to_owned(),
            address: bus.address().display().to_string(),
            detail: Some(format!("{what}: {reason}")),
            instead: None,
        }),
        other => Box::new(other),
    }
}

/// What a bus other than pidbus says about a connection through
/// `GetConnectionCredentials`: facts the bus read from the socket when the
/// connection was made, not an identity verified by pidfd (no pidfs id, no
/// executable or unit, no sender proof: those need pidbus).
#[derive(Debug, Serialize)]
pub struct Credentials {
    /// The connection's unique id.
    pub id: String,
    /// `ProcessID`: a PID number, which the kernel may have given to
    /// another process since.
    pub pid: Option<u32>,
    /// `UnixUserID`.
    pub uid: Option<u32>,
    /// `UnixGroupIDs`.
    pub groups: Vec<u32>,
    /// `LinuxSecurityLabel`.
    pub label: Option<String>,
    /// Always false: says the facts were not verified by pidfd.
    pub verified: bool,
    /// Where the facts come from.
    pub source: &'static str,
}

/// Where [`Credentials`] come from, as printed.
pub const CREDENTIALS_SOURCE: &str = "GetConnectionCredentials";

/// The line that says what [`Credentials`] are, in the text output.
const NOT_VERIFIED: &str = "GetConnectionCredentials, as the bus reports them: not verified by \
                            pidfd (a verified identity, with pidfs id, executable, unit and \
                            sender proof, needs pidbus)";

/// `GetConnectionCredentials` of `name` (a unique id or well-known name).
pub fn credentials(bus: &Connection, name: &str) -> AnyResult<Credentials> {
    // The owner first, so that the facts and the id are the same peer's.
    let id = if name.starts_with(':') {
        name.to_owned()
    } else {
        // dbus-broker's answer does not name the name.
        match bus.name_owner(name) {
            Ok(owner) => owner.to_string(),
            Err(pidbus::Error::NoSuchName { message }) => {
                return Err(format!("no such name {name}: {message}").into());
            }
            Err(e) => return Err(e.into()),
        }
    };
    let call = MethodCall::new(BUS_NAME, BUS_PATH, BUS_NAME, "GetConnectionCredentials")?
        .args(&(id.as_str(),))?;
    let reply = bus.call_method(call)?;
    let values = unmarshal(&reply.signature, &reply.body)
        .map_err(|e| format!("the bus's GetConnectionCredentials answer does not decode: {e}"))?;
    let mut credentials = Credentials {
        id,
        pid: None,
        uid: None,
        groups: Vec::new(),
        label: None,
        verified: false,
        source: CREDENTIALS_SOURCE,
    };
    let entries = match values.first() {
        Some(DbusValue::Array { items, .. }) => items.as_slice(),
        _ => &[],
    };
    for entry in entries {
        let DbusValue::DictEntry(key, value) = entry else {
            continue;
        };
        let value = match value.as_ref() {
            DbusValue::Variant(inner) => inner.as_ref(),
            other => other,
        };
        match key.as_str() {
            Some("ProcessID") => credentials.pid = value.as_u32(),
            Some("UnixUserID") => credentials.uid = value.as_u32(),
            Some("UnixGroupIDs") => {
                if let DbusValue::Array { items, .. } = value {
                    credentials.groups = items.iter().filter_map(DbusValue::as_u32).collect();
                }
            }
            Some("LinuxSecurityLabel") => {
                if let DbusValue::Array { items, .. } = value {
                    let mut bytes: Vec<u8> = items
                        .iter()
                        .filter_map(|b| match b {
                            DbusValue::Byte(b) => Some(*b),
                            _ => None,
                        })
                        .collect();
                    if bytes.last() == Some(&0) {
                        bytes.pop();
                    }
                    credentials.label = Some(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            _ => {}
        }
    }
    Ok(credentials)
}

/// Prints [`Credentials`] as `whoami` and `status` print an identity,
/// saying where they come from.
pub fn print_credentials(
    out: &mut impl Write,
    credentials: &Credentials,
    as_json: bool,
) -> AnyResult {
    if as_json {
        serde_json::to_writer_pretty(&mut *out, credentials)?;
        writeln!(out)?;
        return Ok(());
    }
    let groups: Vec<String> = credentials.groups.iter().map(u32::to_string).collect();
    let rows = [
        ("id", credentials.id.clone()),
        ("pid", or_dash(credentials.pid)),
        ("uid", or_dash(credentials.uid)),
        (
            "groups",
            or_dash((!groups.is_empty()).then(|| groups.join(","))),
        ),
        ("label", or_dash(credentials.label.as_deref())),
        ("verified", "no".to_owned()),
        ("source", NOT_VERIFIED.to_owned()),
    ];
    let style = Style::stdout();
    for (key, value) in rows {
        writeln!(out, "{}  {value}", style.header(&format!("{key:<14}")))?;
    }
    Ok(())
}

/// Every name on the bus, well-known and unique, but the bus's own
/// (`ListNames`).
pub fn list_names(bus: &Connection) -> AnyResult<Vec<String>> {
    let (names,): (Vec<String>,) = bus.call(BUS_NAME, BUS_PATH, BUS_NAME, "ListNames", &())?;
    Ok(names.into_iter().filter(|n| n != BUS_NAME).collect())
}
