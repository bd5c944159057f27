//! `org.freedesktop.DBus.Debug.Stats`, as D-Bus values: the keys
//! dbus-daemon uses where pidbus counts the same thing, and each user's
//! quotas (used and limit), which is what an administrator of a shared
//! bus looks for first.

use pidbus_protocol::Destination;
use pidbus_protocol::dbus::value::Value;

use crate::bus::Bus;
use crate::bus::quotas::Resource;

/// The key under which `GetStats` lists each user's quotas: an array of
/// `a{sv}`, one per user with a connection, holding `UnixUserID` and, for
/// each quota by its config key, `(used, limit)` as `(tt)`.
pub const USERS_KEY: &str = "org.pidbus.Stats.Users";

/// `GetStats`.
pub fn of_bus(bus: &Bus) -> Value {
    let counts = bus.counts();
    let users = bus.accounts().in_use().into_iter().map(|account| {
        let mut entries = vec![("UnixUserID", Value::UInt32(account.uid()))];
        entries.extend(Resource::ALL.iter().map(|&resource| {
            let pair = [account.used(resource), account.limit(resource)].map(as_u64);
            (
                resource.config_key(),
                Value::Struct(pair.into_iter().map(Value::UInt64).collect()),
            )
        }));
        Value::dict(entries)
    });
    Value::dict([
        (
            "ActiveConnections",
            Value::UInt32(as_u32(counts.connections)),
        ),
        (
            "IncompleteConnections",
            Value::UInt32(as_u32(bus.accounts().total(Resource::Handshakes))),
        ),
        ("BusNames", Value::UInt32(as_u32(counts.names))),
        (
            "MatchRules",
            Value::UInt32(as_u32(bus.accounts().total(Resource::MatchRules))),
        ),
        (
            USERS_KEY,
            Value::Array {
                element: "a{sv}".into(),
                items: users.collect(),
            },
        ),
    ])
}

/// `GetConnectionStats` of the connection `name` names, if any.
pub fn of_connection(bus: &Bus, name: &Destination) -> Option<Value> {
    let stats = bus.connection_stats(name)?;
    Some(Value::dict([
        ("UniqueName", Value::string(stats.id.to_string())),
        ("UnixUserID", Value::UInt32(stats.uid)),
        ("BusNames", Value::UInt32(as_u32(stats.names))),
        ("MatchRules", Value::UInt32(as_u32(stats.match_rules))),
        ("OutgoingBytes", Value::UInt32(as_u32(stats.queued_bytes))),
        ("OutgoingFDs", Value::UInt32(as_u32(stats.queued_fds))),
    ]))
}

fn as_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

fn as_u64(count: usize) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}
