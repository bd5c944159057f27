//! What the bus counts for an administrator (`org.freedesktop.DBus.Debug.Stats`
//! on the D-Bus face): its connections and names, each connection's share,
//! and each user's use of its quotas.

use pidbus_protocol::{Destination, PeerId};

use crate::bus::Bus;

/// The whole bus, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusCounts {
    /// Connections on the bus (monitors among them).
    pub connections: usize,
    /// Well-known names with an owner.
    pub names: usize,
}

/// One connection, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Its unique name.
    pub id: PeerId,
    /// Its user.
    pub uid: u32,
    /// Well-known names it owns or waits for.
    pub names: usize,
    /// Its match rules.
    pub match_rules: usize,
    /// Bytes queued towards it, not yet read.
    pub queued_bytes: usize,
    /// Descriptors queued towards it.
    pub queued_fds: usize,
}

impl Bus {
    /// The bus's counts, in one consistent look.
    pub fn counts(&self) -> BusCounts {
        let state = self.lock();
        BusCounts {
            connections: state.peers.len(),
            names: state.names.list_after(None).count(),
        }
    }

    /// The counts of the connection `name` names, if it is on the bus.
    pub fn connection_stats(&self, name: &Destination) -> Option<ConnectionStats> {
        let state = self.lock();
        let id = state.resolve(name)?;
        let entry = state.peers.get(&id)?;
        Some(ConnectionStats {
            id,
            uid: entry.identity.uid,
            names: state.names.count_of(id),
            match_rules: entry.rules.len(),
            queued_bytes: entry.outbox.queued_bytes(),
            queued_fds: entry.outbox.queued_fds(),
        })
    }
}
