//! The broker's shared state: which peers are connected, under which unique
//! ids.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pidbus_protocol::{PeerId, PeerInfo, ProcessIdentity};

/// Settings every connection needs.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// The kernel boot id, part of every identity.
    pub boot_id: String,
    /// Largest record accepted from a peer.
    pub max_record_size: usize,
    /// How long a new connection may take to send its Hello.
    pub hello_timeout: std::time::Duration,
    /// What happens to a message sent by a process other than the
    /// connection's.
    pub sender_check: crate::sender::SenderCheckMode,
}

/// The set of connected peers.
#[derive(Debug)]
pub struct Bus {
    settings: BusSettings,
    next_id: AtomicU64,
    peers: Mutex<BTreeMap<PeerId, Arc<ProcessIdentity>>>,
}

impl Bus {
    /// An empty bus.
    pub fn new(settings: BusSettings) -> Arc<Self> {
        Arc::new(Bus {
            settings,
            next_id: AtomicU64::new(1),
            peers: Mutex::new(BTreeMap::new()),
        })
    }

    /// The bus's settings.
    pub fn settings(&self) -> &BusSettings {
        &self.settings
    }

    /// Adds a peer under a fresh unique id; it is removed when the returned
    /// registration is dropped.
    pub fn register(self: &Arc<Self>, identity: Arc<ProcessIdentity>) -> Registration {
        let id = PeerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.lock_peers().insert(id, identity);
        Registration {
            bus: Arc::clone(self),
            id,
        }
    }

    /// Every connected peer, ordered by unique id.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.lock_peers()
            .iter()
            .map(|(id, identity)| PeerInfo {
                id: *id,
                identity: ProcessIdentity::clone(identity),
            })
            .collect()
    }

    /// Number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.lock_peers().len()
    }

    fn lock_peers(&self) -> MutexGuard<'_, BTreeMap<PeerId, Arc<ProcessIdentity>>> {
        // A panic elsewhere cannot leave the map half-updated (every update
        // is a single insert or remove), so a poisoned lock is still usable.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A peer's place on the bus; dropping it removes the peer.
#[derive(Debug)]
pub struct Registration {
    bus: Arc<Bus>,
    id: PeerId,
}

impl Registration {
    /// The peer's unique id.
    pub fn id(&self) -> PeerId {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.bus.lock_peers().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(pid: u32) -> Arc<ProcessIdentity> {
        Arc::new(ProcessIdentity {
            pid,
            uid: 0,
            gid: 0,
            groups: vec![],
            pidfs_id: Some(u64::from(pid)),
            start_time: None,
            boot_id: "b".into(),
            exe: None,
            unit: None,
            cgroup: None,
            label: None,
        })
    }

    #[test]
    fn ids_are_unique_and_peers_leave_when_dropped() {
        let bus = Bus::new(BusSettings {
            boot_id: "b".into(),
            max_record_size: 1024,
            hello_timeout: std::time::Duration::from_secs(1),
            sender_check: Default::default(),
        });
        let a = bus.register(identity(10));
        let b = bus.register(identity(11));
        assert_ne!(a.id(), b.id());
        assert_eq!(bus.peers().len(), 2);
        drop(a);
        let c = bus.register(identity(12));
        assert!(c.id() > b.id(), "ids are never reused");
        let ids: Vec<_> = bus.peers().iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![b.id(), c.id()]);
    }
}
