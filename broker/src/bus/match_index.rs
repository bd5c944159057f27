//! The index of signal match rules: which subscribers a signal reaches,
//! found at a cost that depends on the rules that match it, not on how
//! many rules the bus holds.
//!
//! A rule is a conjunction of exact conditions (member, interface, path,
//! first argument, path namespace, sender), each either given or absent.
//! The index is a tree with one level per condition: at each level a node
//! has one child for rules without that condition and one per value rules
//! give it. A signal walks down only the children its own values select
//! (the "absent" child, and the child of its value), so a rule whose
//! member differs from the signal's is never looked at. The leaves hold
//! the subscribers of rules identical in those six conditions: those with
//! no other condition match when reached; the few with more (a message
//! type, a destination, conditions on other arguments) are checked whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pidbus_protocol::dbus::body::string_args;
use pidbus_protocol::match_rule::{MessageKind, SignalFields, in_path_namespace};
use pidbus_protocol::{MatchRule, PeerId};

/// Conditions, in the order the tree tests them (most selective first).
const LEVELS: usize = 6;

/// A rule's value at each level (`None`: the rule does not constrain it).
type Keys = [Option<String>; LEVELS];

/// The keys of `rule`, level by level.
fn keys_of(rule: &MatchRule) -> Keys {
    [
        rule.member.clone(),
        rule.interface.clone(),
        rule.path.clone(),
        rule.arg0.clone(),
        rule.path_namespace.clone(),
        rule.sender.as_deref().map(normalized_sender),
    ]
}

/// A unique id in its canonical form (`:1.017` is `:1.17`), so it is
/// found by the id of the signal's sender; any other name as given.
fn normalized_sender(sender: &str) -> String {
    match sender.parse::<PeerId>() {
        Ok(id) => id.to_string(),
        Err(_) => sender.to_owned(),
    }
}

/// One node of the tree.
#[derive(Debug, Default)]
struct Node {
    /// Rules without this level's condition.
    any: Option<Box<Node>>,
    /// Rules with this level's condition, by its value.
    exact: HashMap<Box<str>, Node>,
    /// At the last level: the (peer, rule id) of every rule that ends here
    /// and has no condition beyond the levels'.
    subscribers: BTreeSet<(PeerId, u64)>,
    /// At the last level: rules that end here with more conditions, checked
    /// whole when a signal reaches them.
    filtered: BTreeMap<(PeerId, u64), MatchRule>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.any.is_none()
            && self.exact.is_empty()
            && self.subscribers.is_empty()
            && self.filtered.is_empty()
    }

    fn child_mut(&mut self, key: &Option<String>) -> &mut Node {
        match key {
            None => self.any.get_or_insert_with(Box::default),
            Some(value) => self.exact.entry(value.as_str().into()).or_default(),
        }
    }

    fn insert(&mut self, keys: &Keys, depth: usize, subscriber: (PeerId, u64), rule: &MatchRule) {
        match keys.get(depth) {
            None if rule.has_unindexed_conditions() => {
                self.filtered.insert(subscriber, rule.clone());
            }
            None => {
                self.subscribers.insert(subscriber);
            }
            Some(key) => self
                .child_mut(key)
                .insert(keys, depth + 1, subscriber, rule),
        }
    }

    /// Removes `subscriber` under `keys`, pruning nodes left empty.
    fn remove(&mut self, keys: &Keys, depth: usize, subscriber: (PeerId, u64)) {
        let Some(key) = keys.get(depth) else {
            self.subscribers.remove(&subscriber);
            self.filtered.remove(&subscriber);
            return;
        };
        match key {
            None => {
                if let Some(child) = self.any.as_mut() {
                    child.remove(keys, depth + 1, subscriber);
                    if child.is_empty() {
                        self.any = None;
                    }
                }
            }
            Some(value) => {
                if let Some(child) = self.exact.get_mut(value.as_str()) {
                    child.remove(keys, depth + 1, subscriber);
                    if child.is_empty() {
                        self.exact.remove(value.as_str());
                    }
                }
            }
        }
    }
}

/// What a signal offers each level of the tree.
#[derive(Debug)]
pub(crate) struct SignalKeys<'a> {
    /// Signal name.
    pub member: &'a str,
    /// Interface.
    pub interface: &'a str,
    /// Object path.
    pub path: &'a str,
    /// The body's signature.
    pub signature: &'a str,
    /// The marshalled body (for its arguments).
    pub body: &'a [u8],
    /// The sender's unique id, as rules write it (`:1.17`).
    pub sender_id: &'a str,
    /// The well-known names the sender is the primary owner of.
    pub sender_names: &'a [&'a str],
}

/// Every match rule on the bus, indexed.
#[derive(Debug, Default)]
pub(crate) struct MatchIndex {
    root: Node,
}

impl MatchIndex {
    /// Whether no rule is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// Adds rule `id` of `peer`.
    pub(crate) fn insert(&mut self, peer: PeerId, id: u64, rule: &MatchRule) {
        self.root.insert(&keys_of(rule), 0, (peer, id), rule);
    }

    /// Removes rule `id` of `peer` (which was added as `rule`).
    pub(crate) fn remove(&mut self, peer: PeerId, id: u64, rule: &MatchRule) {
        self.root.remove(&keys_of(rule), 0, (peer, id));
    }

    /// The peers with rules matching `signal`, each with the ids of its
    /// matching rules.
    pub(crate) fn matching(&self, signal: &SignalKeys<'_>) -> BTreeMap<PeerId, Vec<u64>> {
        let mut found = BTreeMap::new();
        if self.root.is_empty() {
            return found;
        }
        let arg0 = match string_args(signal.signature, signal.body, 0).first() {
            Some(Some((b's', text))) => Some(*text),
            _ => None,
        };
        let mut visit = Visit {
            signal,
            arg0,
            found: &mut found,
        };
        visit.node(&self.root, 0);
        found
    }
}

/// One walk of the tree for one signal.
struct Visit<'a, 'b> {
    signal: &'a SignalKeys<'a>,
    arg0: Option<&'a str>,
    found: &'b mut BTreeMap<PeerId, Vec<u64>>,
}

impl Visit<'_, '_> {
    fn node(&mut self, node: &Node, depth: usize) {
        if depth == LEVELS {
            for (peer, id) in &node.subscribers {
                self.found.entry(*peer).or_default().push(*id);
            }
            self.filtered(node);
            return;
        }
        if let Some(any) = &node.any {
            self.node(any, depth + 1);
        }
        if node.exact.is_empty() {
            return;
        }
        let s = self.signal;
        match depth {
            0 => self.exact(node, s.member, depth),
            1 => self.exact(node, s.interface, depth),
            2 => self.exact(node, s.path, depth),
            3 => {
                if let Some(arg0) = self.arg0 {
                    self.exact(node, arg0, depth);
                }
            }
            4 => self.namespaces(node, depth),
            _ => self.senders(node, depth),
        }
    }

    /// The rules with conditions beyond the tree's, checked whole.
    fn filtered(&mut self, node: &Node) {
        if node.filtered.is_empty() {
            return;
        }
        let s = self.signal;
        let fields = SignalFields {
            kind: MessageKind::Signal,
            path: s.path,
            interface: s.interface,
            member: s.member,
            signature: s.signature,
            body: s.body,
            destination: None,
        };
        let sender_is =
            |name: &str| normalized_sender(name) == s.sender_id || s.sender_names.contains(&name);
        for ((peer, id), rule) in &node.filtered {
            if rule.matches(&fields, sender_is) {
                self.found.entry(*peer).or_default().push(*id);
            }
        }
    }

    fn exact(&mut self, node: &Node, value: &str, depth: usize) {
        if let Some(child) = node.exact.get(value) {
            self.node(child, depth + 1);
        }
    }

    /// Namespaces containing the signal's path: each of its prefixes that
    /// ends at a component boundary (`/`, `/a`, `/a/b` for `/a/b`), or the
    /// node's own values if there are fewer of those.
    fn namespaces(&mut self, node: &Node, depth: usize) {
        let path = self.signal.path;
        let components = path.matches('/').count() + 1;
        if node.exact.len() < components {
            for (namespace, child) in &node.exact {
                if in_path_namespace(namespace, path) {
                    self.node(child, depth + 1);
                }
            }
            return;
        }
        self.exact(node, "/", depth);
        for (end, _) in path.match_indices('/').skip(1) {
            self.exact(node, &path[..end], depth);
        }
        if path != "/" {
            self.exact(node, path, depth);
        }
    }

    /// The sender's unique id and each well-known name it owns.
    fn senders(&mut self, node: &Node, depth: usize) {
        let s = self.signal;
        self.exact(node, s.sender_id, depth);
        for name in s.sender_names {
            self.exact(node, name, depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidbus_protocol::dbus::value::{Value, marshal};

    fn body(args: &[Value]) -> (String, Vec<u8>) {
        marshal(args).unwrap()
    }

    fn signal<'a>(member: &'a str, path: &'a str, body: &'a (String, Vec<u8>)) -> SignalKeys<'a> {
        SignalKeys {
            member,
            interface: "org.x.I",
            path,
            signature: &body.0,
            body: &body.1,
            sender_id: ":1.5",
            sender_names: &["org.x.Service"],
        }
    }

    fn matched(index: &MatchIndex, signal: &SignalKeys<'_>) -> Vec<(u64, Vec<u64>)> {
        index
            .matching(signal)
            .into_iter()
            .map(|(peer, mut ids)| {
                ids.sort_unstable();
                (peer.0, ids)
            })
            .collect()
    }

    #[test]
    fn each_condition_selects_like_the_rule_itself() {
        let body = body(&[Value::string("org.x.Name"), Value::Int32(1)]);
        let rules = [
            MatchRule::all(),
            MatchRule {
                member: Some("Changed".into()),
                ..MatchRule::default()
            },
            MatchRule {
                member: Some("Other".into()),
                ..MatchRule::default()
            },
            MatchRule {
                path_namespace: Some("/org/x".into()),
                ..MatchRule::default()
            },
            MatchRule {
                path_namespace: Some("/org/xy".into()),
                ..MatchRule::default()
            },
            MatchRule {
                arg0: Some("org.x.Name".into()),
                sender: Some(":1.05".into()),
                ..MatchRule::default()
            },
            MatchRule {
                sender: Some("org.x.Service".into()),
                path: Some("/org/x/a".into()),
                ..MatchRule::default()
            },
            MatchRule {
                sender: Some(":1.6".into()),
                ..MatchRule::default()
            },
            MatchRule::parse_dbus("arg1='x'").unwrap(),
            MatchRule::parse_dbus("member='Changed',arg0namespace='org.x'").unwrap(),
            MatchRule::parse_dbus("type='method_call'").unwrap(),
        ];
        let mut index = MatchIndex::default();
        for (id, rule) in rules.iter().enumerate() {
            index.insert(PeerId(1 + id as u64 % 2), id as u64, rule);
        }
        let signal = signal("Changed", "/org/x/a", &body);
        // The index agrees with evaluating every rule.
        let mut expected: BTreeMap<PeerId, Vec<u64>> = BTreeMap::new();
        let fields = SignalFields {
            kind: MessageKind::Signal,
            path: signal.path,
            interface: signal.interface,
            member: signal.member,
            signature: signal.signature,
            body: signal.body,
            destination: None,
        };
        for (id, rule) in rules.iter().enumerate() {
            let sender_is = |s: &str| s == ":1.5" || s == ":1.05" || s == "org.x.Service";
            if rule.matches(&fields, sender_is) {
                expected
                    .entry(PeerId(1 + id as u64 % 2))
                    .or_default()
                    .push(id as u64);
            }
        }
        let mut got = index.matching(&signal);
        for ids in got.values_mut() {
            ids.sort_unstable();
        }
        assert_eq!(got, expected);
        assert_eq!(
            matched(&index, &signal),
            vec![(1, vec![0, 6]), (2, vec![1, 3, 5, 9])]
        );
    }

    #[test]
    fn removed_rules_leave_nothing_behind() {
        let mut index = MatchIndex::default();
        let rule = MatchRule {
            member: Some("M".into()),
            arg0: Some("a".into()),
            ..MatchRule::default()
        };
        index.insert(PeerId(1), 7, &rule);
        index.insert(PeerId(2), 7, &rule);
        index.remove(PeerId(1), 7, &rule);
        let body = body(&[Value::string("a")]);
        assert_eq!(
            matched(&index, &signal("M", "/", &body)),
            vec![(2, vec![7])]
        );
        index.remove(PeerId(2), 7, &rule);
        assert!(index.root.is_empty());
    }

    #[test]
    fn rules_that_do_not_match_are_not_visited() {
        // 10 000 rules on other members cost the signal nothing: it only
        // walks the children its own values select.
        let mut index = MatchIndex::default();
        for id in 0..10_000u64 {
            let rule = MatchRule {
                member: Some(format!("M{id}")),
                arg0: Some("x".repeat(900)),
                ..MatchRule::default()
            };
            index.insert(PeerId(id % 100), id, &rule);
        }
        let body = body(&[Value::string("x".repeat(900))]);
        assert!(index.matching(&signal("Other", "/", &body)).is_empty());
        assert_eq!(
            matched(&index, &signal("M42", "/", &body)),
            vec![(42, vec![42])]
        );
    }
}
