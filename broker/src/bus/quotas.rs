//! Per-uid accounting: what all of one user's connections together may
//! hold in the broker (connections, handshakes in progress, bytes and
//! descriptors queued towards them, names, match rules, calls awaiting an
//! answer).
//!
//! Per-connection limits stop one connection; these stop one *user* from
//! opening many connections to get around them, so that no uid can take
//! the broker's memory or descriptors from the others. A use with one
//! owner (a connection, a pending call) is a [`Charge`] that gives itself
//! back when dropped, whatever path ends it. Uses counted per connection
//! in the shared state (names, match rules, queued records) are added and
//! subtracted where they change, and settled when the peer leaves: a guard
//! per connection for each would cost every idle connection memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// What a uid's account counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Connections that passed identification.
    Connections,
    /// Connections that have not finished their Hello yet.
    Handshakes,
    /// Bytes of records queued towards the uid's peers.
    QueuedBytes,
    /// Descriptors the broker holds for the uid's peers: passed fds and
    /// pidfds waiting in their queues, and pidfds of processes they watch.
    Fds,
    /// Well-known names owned or queued for.
    Names,
    /// Signal match rules.
    MatchRules,
    /// Bytes of signal match rules (a rule's strings plus a fixed
    /// overhead), so that long rules cost what they hold.
    MatchRuleBytes,
    /// Calls made and not yet answered.
    PendingCalls,
    /// Processes watched for their exit (each watch keeps the watched
    /// process's pidfd open in the broker).
    ProcessWatches,
}

const RESOURCES: usize = 9;

impl Resource {
    /// Every resource an account counts, in the order of the config keys.
    pub const ALL: [Resource; RESOURCES] = [
        Resource::Connections,
        Resource::Handshakes,
        Resource::QueuedBytes,
        Resource::Fds,
        Resource::Names,
        Resource::MatchRules,
        Resource::MatchRuleBytes,
        Resource::PendingCalls,
        Resource::ProcessWatches,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The key that sets this limit in the broker config's `[limits.uid]`.
    pub fn config_key(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Handshakes => "handshakes",
            Resource::QueuedBytes => "queued_bytes",
            Resource::Fds => "fds",
            Resource::Names => "names",
            Resource::MatchRules => "match_rules",
            Resource::MatchRuleBytes => "match_rule_bytes",
            Resource::PendingCalls => "pending_calls",
            Resource::ProcessWatches => "process_watches",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Handshakes => "connections still in their handshake",
            Resource::QueuedBytes => "bytes queued for its connections to read",
            Resource::Fds => "file descriptors held for its connections",
            Resource::Names => "names",
            Resource::MatchRules => "match rules",
            Resource::MatchRuleBytes => "bytes of match rules",
            Resource::PendingCalls => "calls waiting for an answer",
            Resource::ProcessWatches => "process watches",
        }
    }
}

/// How much one uid's connections may hold together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidLimits {
    /// Connections.
    pub connections: usize,
    /// Connections still in their handshake.
    pub handshakes: usize,
    /// Bytes queued towards the uid's peers.
    pub queued_bytes: usize,
    /// Descriptors held for the uid's peers.
    pub fds: usize,
    /// Well-known names.
    pub names: usize,
    /// Match rules.
    pub match_rules: usize,
    /// Bytes of match rules.
    pub match_rule_bytes: usize,
    /// Calls waiting for an answer.
    pub pending_calls: usize,
    /// Process watches.
    pub process_watches: usize,
}

impl Default for UidLimits {
    /// Generous for a desktop session or a system's services, small enough
    /// that a few hostile users cannot exhaust a 20 000-descriptor broker
    /// or grow it past a few hundred MiB.
    fn default() -> Self {
        UidLimits {
            connections: 1024,
            handshakes: 64,
            queued_bytes: 64 << 20,
            fds: 2048,
            names: 2048,
            match_rules: 8192,
            // What rules really cost (see `rule_cost`): room for about
            // 6 000 rules of 100 bytes.
            match_rule_bytes: 32 << 20,
            pending_calls: 16384,
            process_watches: 1024,
        }
    }
}

impl UidLimits {
    fn of(&self, resource: Resource) -> usize {
        match resource {
            Resource::Connections => self.connections,
            Resource::Handshakes => self.handshakes,
            Resource::QueuedBytes => self.queued_bytes,
            Resource::Fds => self.fds,
            Resource::Names => self.names,
            Resource::MatchRules => self.match_rules,
            Resource::MatchRuleBytes => self.match_rule_bytes,
            Resource::PendingCalls => self.pending_calls,
            Resource::ProcessWatches => self.process_watches,
        }
    }
}

/// A uid has used up one of its quotas.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "uid {uid} already has {limit} {} (the per-user quota, `{}` under [limits.uid] in the broker config)",
    resource.unit(),
    resource.config_key()
)]
pub struct QuotaExceeded {
    /// Whose quota.
    pub uid: u32,
    /// Which one.
    pub resource: Resource,
    /// Its size.
    pub limit: usize,
}

/// One uid's usage, shared by all its connections.
#[derive(Debug)]
pub struct UidAccount {
    uid: u32,
    limits: UidLimits,
    used: [AtomicUsize; RESOURCES],
    /// The broker-wide totals this account adds to.
    totals: Arc<Totals>,
}

/// Usage summed over every uid.
#[derive(Debug, Default)]
struct Totals {
    used: [AtomicUsize; RESOURCES],
}

impl UidAccount {
    /// How much of `resource` the uid uses now.
    pub fn used(&self, resource: Resource) -> usize {
        self.used[resource.index()].load(Ordering::Relaxed)
    }

    /// The uid whose account this is.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The quota of `resource`.
    pub fn limit(&self, resource: Resource) -> usize {
        self.limits.of(resource)
    }

    /// Takes `amount` of `resource` if the uid stays within its quota.
    pub fn try_charge(
        self: &Arc<Self>,
        resource: Resource,
        amount: usize,
    ) -> Result<Charge, QuotaExceeded> {
        self.try_add(resource, amount)?;
        Ok(Charge {
            account: Arc::clone(self),
            resource,
            amount,
        })
    }

    /// Adds `amount` to the use of `resource` if that stays within quota.
    /// Callers must [`sub`](Self::sub) it again; prefer [`Charge`] where
    /// one owner holds the use.
    pub fn try_add(&self, resource: Resource, amount: usize) -> Result<(), QuotaExceeded> {
        self.try_add_up_to(resource, amount, self.limits.of(resource))
    }

    /// Adds `amount` to the use of `resource` if that stays within
    /// `ceiling` (at most the quota): records the sender can be told about
    /// stop short of the quota, so that what a peer must receive (an error
    /// in place of a refused reply) still finds room.
    pub fn try_add_up_to(
        &self,
        resource: Resource,
        amount: usize,
        ceiling: usize,
    ) -> Result<(), QuotaExceeded> {
        let limit = self.limits.of(resource);
        let ceiling = ceiling.min(limit);
        let counter = &self.used[resource.index()];
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(amount).filter(|&after| after <= ceiling)
            })
            .map_err(|_| QuotaExceeded {
                uid: self.uid,
                resource,
                limit,
            })?;
        self.totals.used[resource.index()].fetch_add(amount, Ordering::Relaxed);
        Ok(())
    }

    /// Adds `amount` whatever the quota: for a record a peer must receive
    /// that goes to a connection with nothing queued (at most one record
    /// per connection, so the excess is bounded).
    pub fn add(&self, resource: Resource, amount: usize) {
        self.used[resource.index()].fetch_add(amount, Ordering::Relaxed);
        self.totals.used[resource.index()].fetch_add(amount, Ordering::Relaxed);
    }

    /// Gives back `amount` of `resource`.
    pub fn sub(&self, resource: Resource, amount: usize) {
        self.used[resource.index()].fetch_sub(amount, Ordering::Relaxed);
        self.totals.used[resource.index()].fetch_sub(amount, Ordering::Relaxed);
    }
}

/// Some use of one resource of one uid, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    account: Arc<UidAccount>,
    resource: Resource,
    amount: usize,
}

impl Charge {
    /// Keeps the use charged without this guard; the caller gives it back
    /// with [`UidAccount::sub`]. For a charge a long-lived future would
    /// otherwise carry for its whole life.
    pub fn keep(self) {
        std::mem::forget(self);
    }

    /// The account charged.
    pub fn account(&self) -> &Arc<UidAccount> {
        &self.account
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.account.sub(self.resource, self.amount);
    }
}

/// Every uid's account.
#[derive(Debug)]
pub struct Accounts {
    limits: UidLimits,
    /// Weak: an account lives as long as something charges it, so the map
    /// does not grow with every uid that ever connected.
    by_uid: Mutex<HashMap<u32, Weak<UidAccount>>>,
    totals: Arc<Totals>,
}

impl Accounts {
    /// No usage yet; every uid gets `limits`.
    pub fn new(limits: UidLimits) -> Self {
        Accounts {
            limits,
            by_uid: Mutex::new(HashMap::new()),
            totals: Arc::default(),
        }
    }

    /// The account of `uid`, created on first use.
    pub fn of(&self, uid: u32) -> Arc<UidAccount> {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(account) = by_uid.get(&uid).and_then(Weak::upgrade) {
            return account;
        }
        // Forget the uids nobody charges any more before adding one, so the
        // map stays as large as the set of uids with connections.
        by_uid.retain(|_, account| account.strong_count() > 0);
        let account = Arc::new(UidAccount {
            uid,
            limits: self.limits,
            used: Default::default(),
            totals: Arc::clone(&self.totals),
        });
        by_uid.insert(uid, Arc::downgrade(&account));
        account
    }

    /// Every account in use now, by uid (for the bus's statistics).
    pub fn in_use(&self) -> Vec<Arc<UidAccount>> {
        let by_uid = self.by_uid.lock().unwrap_or_else(PoisonError::into_inner);
        let mut accounts: Vec<_> = by_uid.values().filter_map(Weak::upgrade).collect();
        accounts.sort_by_key(|account| account.uid);
        accounts
    }

    /// How much of `resource` all uids together use.
    pub fn total(&self, resource: Resource) -> usize {
        self.totals.used[resource.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_each_resource_at_its_index() {
        for (index, resource) in Resource::ALL.iter().enumerate() {
            assert_eq!(resource.index(), index);
        }
    }

    #[test]
    fn in_use_lists_the_accounts_someone_holds() {
        let accounts = Accounts::new(small());
        let alice = accounts.of(1000);
        let root = accounts.of(0);
        drop(accounts.of(65534));
        let uids: Vec<u32> = accounts.in_use().iter().map(|a| a.uid()).collect();
        assert_eq!(uids, [0, 1000]);
        drop((alice, root));
        assert!(accounts.in_use().is_empty());
    }

    fn small() -> UidLimits {
        UidLimits {
            connections: 2,
            names: 3,
            ..UidLimits::default()
        }
    }

    #[test]
    fn a_uid_at_its_quota_is_refused_and_others_are_not() {
        let accounts = Accounts::new(small());
        let alice = accounts.of(1000);
        let _a = alice.try_charge(Resource::Connections, 1).unwrap();
        let _b = alice.try_charge(Resource::Connections, 1).unwrap();
        let refused = alice.try_charge(Resource::Connections, 1).unwrap_err();
        assert_eq!(refused.uid, 1000);
        assert!(
            refused
                .to_string()
                .contains("`connections` under [limits.uid]")
        );
        let bob = accounts.of(1001);
        assert!(bob.try_charge(Resource::Connections, 1).is_ok());
        assert_eq!(accounts.total(Resource::Connections), 2);
    }

    #[test]
    fn dropped_charges_give_their_use_back() {
        let accounts = Accounts::new(small());
        let alice = accounts.of(1000);
        {
            let _a = alice.try_charge(Resource::Connections, 2).unwrap();
            assert_eq!(alice.used(Resource::Connections), 2);
        }
        assert_eq!(alice.used(Resource::Connections), 0);
        assert_eq!(accounts.total(Resource::Connections), 0);
    }

    #[test]
    fn a_refused_charge_changes_nothing() {
        let accounts = Accounts::new(small());
        let alice = accounts.of(1000);
        let _held = alice.try_charge(Resource::Names, 3).unwrap();
        assert!(alice.try_add(Resource::Names, 1).is_err());
        assert_eq!(
            alice.used(Resource::Names),
            3,
            "a refused add changes nothing"
        );
        alice.add(Resource::Names, 1);
        alice.sub(Resource::Names, 1);
        assert_eq!(alice.used(Resource::Names), 3);
    }

    #[test]
    fn the_same_uid_shares_one_account_while_it_is_charged() {
        let accounts = Accounts::new(small());
        let first = accounts.of(7);
        let _held = first.try_charge(Resource::Names, 2).unwrap();
        assert_eq!(accounts.of(7).used(Resource::Names), 2);
        drop(_held);
        drop(first);
        assert_eq!(accounts.of(7).used(Resource::Names), 0);
    }
}
