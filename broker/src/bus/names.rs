//! Well-known names: who owns each, who waits for it, and the D-Bus rules
//! for handing a name over (allow-replacement, replace-existing,
//! do-not-queue).
//!
//! Pure bookkeeping: every operation returns the ownership changes it made,
//! and the bus turns those into events.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use pidbus_protocol::{NameFlags, NameInfo, PeerId, ReleaseNameReply, RequestNameReply};

/// The primary owner of a name changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerChange {
    /// The name.
    pub name: String,
    /// Who had it (`None`: it was free).
    pub old_owner: Option<PeerId>,
    /// Who has it now (`None`: it is free).
    pub new_owner: Option<PeerId>,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    peer: PeerId,
    flags: NameFlags,
}

#[derive(Debug)]
struct Entry {
    owner: Claim,
    queue: VecDeque<Claim>,
}

/// Every well-known name on the bus.
#[derive(Debug, Default)]
pub struct NameRegistry {
    names: BTreeMap<String, Entry>,
    /// Names each peer owns or queues for, so a leaving peer is cleaned up
    /// without scanning every name.
    by_peer: HashMap<PeerId, BTreeSet<String>>,
}

impl NameRegistry {
    /// The primary owner of `name`.
    pub fn owner(&self, name: &str) -> Option<PeerId> {
        self.names.get(name).map(|entry| entry.owner.peer)
    }

    /// The names `peer` is the primary owner of.
    pub fn owned_by(&self, peer: PeerId) -> impl Iterator<Item = &str> {
        self.by_peer
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(move |name| self.owner(name) == Some(peer))
            .map(String::as_str)
    }

    /// The names `peer` owns or queues for.
    pub fn claimed_by(&self, peer: PeerId) -> impl Iterator<Item = &str> {
        self.by_peer
            .get(&peer)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Whether `peer` owns or queues for `name`.
    pub fn is_claimed_by(&self, name: &str, peer: PeerId) -> bool {
        self.by_peer
            .get(&peer)
            .is_some_and(|names| names.contains(name))
    }

    /// Number of names `peer` owns or queues for.
    pub fn count_of(&self, peer: PeerId) -> usize {
        self.by_peer.get(&peer).map_or(0, BTreeSet::len)
    }

    /// Every name ordered after `after` with its owner and queue, ordered
    /// by name.
    pub fn list_after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = NameInfo> + 'a {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |name| Bound::Excluded(name.to_owned()));
        self.names
            .range((start, Bound::Unbounded))
            .map(|(name, entry)| NameInfo {
                name: name.clone(),
                owner: entry.owner.peer,
                queue: entry.queue.iter().map(|c| c.peer).collect(),
            })
    }

    /// `peer` asks for `name` (already validated).
    pub fn request(
        &mut self,
        name: &str,
        peer: PeerId,
        flags: NameFlags,
    ) -> (RequestNameReply, Option<OwnerChange>) {
        let claim = Claim { peer, flags };
        let Some(entry) = self.names.get_mut(name) else {
            self.names.insert(
                name.to_owned(),
                Entry {
                    owner: claim,
                    queue: VecDeque::new(),
                },
            );
            self.track(peer, name);
            return (
                RequestNameReply::PrimaryOwner,
                Some(change(name, None, Some(peer))),
            );
        };
        if entry.owner.peer == peer {
            entry.owner.flags = flags;
            return (RequestNameReply::AlreadyOwner, None);
        }
        entry.queue.retain(|c| c.peer != peer);
        if flags.replace_existing && entry.owner.flags.allow_replacement {
            let old = std::mem::replace(&mut entry.owner, claim);
            let old_keeps_queueing = !old.flags.do_not_queue;
            if old_keeps_queueing {
                // D-Bus: a replaced owner waits at the head of the queue.
                entry.queue.push_front(old);
            }
            if !old_keeps_queueing {
                self.untrack(old.peer, name);
            }
            self.track(peer, name);
            return (
                RequestNameReply::PrimaryOwner,
                Some(change(name, Some(old.peer), Some(peer))),
            );
        }
        if flags.do_not_queue {
            self.untrack(peer, name);
            return (RequestNameReply::Exists, None);
        }
        entry.queue.push_back(claim);
        self.track(peer, name);
        (RequestNameReply::InQueue, None)
    }

    /// `peer` gives up `name` or leaves its queue.
    pub fn release(&mut self, name: &str, peer: PeerId) -> (ReleaseNameReply, Option<OwnerChange>) {
        let Some(entry) = self.names.get_mut(name) else {
            return (ReleaseNameReply::NonExistent, None);
        };
        if entry.owner.peer == peer {
            let change = self.pass_on(name, peer);
            self.untrack(peer, name);
            return (ReleaseNameReply::Released, Some(change));
        }
        let before = entry.queue.len();
        entry.queue.retain(|c| c.peer != peer);
        if entry.queue.len() == before {
            return (ReleaseNameReply::NotOwner, None);
        }
        self.untrack(peer, name);
        (ReleaseNameReply::Released, None)
    }

    /// Removes `peer` from every name it owns or queues for (it left).
    pub fn release_all(&mut self, peer: PeerId) -> Vec<OwnerChange> {
        let names = self.by_peer.remove(&peer).unwrap_or_default();
        let mut changes = Vec::new();
        for name in names {
            let Some(entry) = self.names.get_mut(&name) else {
                continue;
            };
            if entry.owner.peer == peer {
                changes.push(self.pass_on(&name, peer));
            } else {
                entry.queue.retain(|c| c.peer != peer);
            }
        }
        changes
    }

    /// The owner `peer` of `name` steps down: the next in the queue takes
    /// over, or the name disappears.
    fn pass_on(&mut self, name: &str, peer: PeerId) -> OwnerChange {
        let next = self
            .names
            .get_mut(name)
            .and_then(|entry| entry.queue.pop_front());
        match next {
            Some(next) => {
                if let Some(entry) = self.names.get_mut(name) {
                    entry.owner = next;
                }
                change(name, Some(peer), Some(next.peer))
            }
            None => {
                self.names.remove(name);
                change(name, Some(peer), None)
            }
        }
    }

    fn track(&mut self, peer: PeerId, name: &str) {
        self.by_peer
            .entry(peer)
            .or_default()
            .insert(name.to_owned());
    }

    fn untrack(&mut self, peer: PeerId, name: &str) {
        if let Some(names) = self.by_peer.get_mut(&peer) {
            names.remove(name);
            if names.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }
}

fn change(name: &str, old_owner: Option<PeerId>, new_owner: Option<PeerId>) -> OwnerChange {
    OwnerChange {
        name: name.to_owned(),
        old_owner,
        new_owner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "org.example.Svc";
    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);
    const C: PeerId = PeerId(3);

    fn flags(allow_replacement: bool, replace_existing: bool, do_not_queue: bool) -> NameFlags {
        NameFlags {
            allow_replacement,
            replace_existing,
            do_not_queue,
        }
    }

    fn queue(names: &NameRegistry) -> Vec<PeerId> {
        names
            .list_after(None)
            .next()
            .map(|n| n.queue)
            .unwrap_or_default()
    }

    #[test]
    fn queue_is_first_come_first_served() {
        let mut names = NameRegistry::default();
        assert_eq!(
            names.request(NAME, A, NameFlags::default()).0,
            RequestNameReply::PrimaryOwner
        );
        assert_eq!(
            names.request(NAME, B, NameFlags::default()).0,
            RequestNameReply::InQueue
        );
        assert_eq!(
            names.request(NAME, C, NameFlags::default()).0,
            RequestNameReply::InQueue
        );
        assert_eq!(
            names.request(NAME, A, NameFlags::default()).0,
            RequestNameReply::AlreadyOwner
        );
        assert_eq!(queue(&names), vec![B, C]);
        let (reply, change) = names.release(NAME, A);
        assert_eq!(reply, ReleaseNameReply::Released);
        assert_eq!(change.unwrap().new_owner, Some(B));
        assert_eq!(names.release(NAME, A).0, ReleaseNameReply::NotOwner);
        assert_eq!(names.release_all(B), vec![change_of(Some(B), Some(C))]);
        assert_eq!(names.release_all(C), vec![change_of(Some(C), None)]);
        assert_eq!(names.owner(NAME), None);
        assert_eq!(names.release(NAME, C).0, ReleaseNameReply::NonExistent);
        assert!(names.by_peer.is_empty());
    }

    fn change_of(old: Option<PeerId>, new: Option<PeerId>) -> OwnerChange {
        change(NAME, old, new)
    }

    #[test]
    fn replacement_needs_both_flags_and_requeues_the_old_owner() {
        let mut names = NameRegistry::default();
        names.request(NAME, A, flags(false, false, false));
        // A did not allow replacement: B queues.
        assert_eq!(
            names.request(NAME, B, flags(false, true, false)).0,
            RequestNameReply::InQueue
        );
        // A now allows it: B takes over, A waits at the head of the queue.
        names.request(NAME, A, flags(true, false, false));
        let (reply, change) = names.request(NAME, C, flags(false, true, false));
        assert_eq!(reply, RequestNameReply::PrimaryOwner);
        assert_eq!(change, Some(change_of(Some(A), Some(C))));
        assert_eq!(queue(&names), vec![A, B]);
    }

    #[test]
    fn a_replaced_owner_that_would_not_queue_loses_the_name_entirely() {
        let mut names = NameRegistry::default();
        names.request(NAME, A, flags(true, false, true));
        names.request(NAME, B, flags(false, true, false));
        assert_eq!(names.owner(NAME), Some(B));
        assert!(queue(&names).is_empty());
        assert_eq!(names.count_of(A), 0);
    }

    #[test]
    fn do_not_queue_gets_exists_and_leaves_any_queue() {
        let mut names = NameRegistry::default();
        names.request(NAME, A, NameFlags::default());
        names.request(NAME, B, NameFlags::default());
        assert_eq!(
            names.request(NAME, B, flags(false, false, true)).0,
            RequestNameReply::Exists
        );
        assert!(queue(&names).is_empty());
        assert_eq!(names.count_of(B), 0);
    }

    #[test]
    fn a_queued_peer_may_leave_the_queue() {
        let mut names = NameRegistry::default();
        names.request(NAME, A, NameFlags::default());
        names.request(NAME, B, NameFlags::default());
        assert_eq!(names.release(NAME, B), (ReleaseNameReply::Released, None));
        assert_eq!(names.release_all(A), vec![change_of(Some(A), None)]);
    }
}
