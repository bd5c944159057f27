//! Match rules: which signals a connection wants to receive.
//!
//! A rule is a conjunction of optional conditions; an empty rule matches
//! every signal. The broker evaluates rules (it alone knows who owns a
//! well-known name at the moment a signal is emitted) and tells each
//! recipient which of its rules matched.

use serde::{Deserialize, Serialize};

use crate::names::{self, NameError};

/// Conditions a signal must meet to be delivered to a subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MatchRule {
    /// The emitter: a unique id (`:17`) or a well-known name, which matches
    /// signals from the name's primary owner at emission time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Exact object path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The path or any path below it (`/org/a` matches `/org/a` and
    /// `/org/a/b`, not `/org/ab`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_namespace: Option<String>,
    /// Interface name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Signal (member) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The first argument, compared only when it is a string (see
    /// [`first_string_arg`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg0: Option<String>,
}

/// The parts of a signal a rule looks at.
#[derive(Debug, Clone, Copy)]
pub struct SignalFields<'a> {
    /// Object path the signal was emitted on.
    pub path: &'a str,
    /// Interface of the signal.
    pub interface: &'a str,
    /// Signal name.
    pub member: &'a str,
    /// The encoded body.
    pub body: &'a [u8],
}

/// The most bytes the strings of one match rule may hold together, as
/// dbus-daemon bounds a rule's text: a rule is a filter, not storage, and
/// its size bounds what every signal's match costs.
pub const MAX_MATCH_RULE_SIZE: usize = 1024;

impl MatchRule {
    /// A rule matching every signal.
    pub fn all() -> Self {
        MatchRule::default()
    }

    /// The bytes of the rule's strings together.
    pub fn size(&self) -> usize {
        [
            &self.sender,
            &self.path,
            &self.path_namespace,
            &self.interface,
            &self.member,
            &self.arg0,
        ]
        .into_iter()
        .flatten()
        .map(String::len)
        .sum()
    }

    /// Checks every name and path in the rule, and its size (at most
    /// [`MAX_MATCH_RULE_SIZE`]).
    pub fn validate(&self) -> Result<(), NameError> {
        let size = self.size();
        if size > MAX_MATCH_RULE_SIZE {
            return Err(NameError {
                kind: "match rule",
                value: String::new(),
                reason: format!(
                    "its strings hold {size} bytes together; the limit is {MAX_MATCH_RULE_SIZE}"
                ),
            });
        }
        if let Some(sender) = &self.sender {
            sender.parse::<names::Destination>()?;
        }
        if let Some(path) = &self.path {
            names::validate_object_path(path)?;
        }
        if let Some(path) = &self.path_namespace {
            names::validate_object_path(path)?;
        }
        if let Some(interface) = &self.interface {
            names::validate_interface(interface)?;
        }
        if let Some(member) = &self.member {
            names::validate_member(member)?;
        }
        Ok(())
    }

    /// Whether a signal meets the rule. `sender_is` answers whether the
    /// emitter is the given unique id or the current primary owner of the
    /// given well-known name.
    pub fn matches(&self, signal: &SignalFields<'_>, sender_is: impl Fn(&str) -> bool) -> bool {
        fn equal(want: &Option<String>, have: &str) -> bool {
            want.as_deref().is_none_or(|w| w == have)
        }
        equal(&self.path, signal.path)
            && equal(&self.interface, signal.interface)
            && equal(&self.member, signal.member)
            && self
                .path_namespace
                .as_deref()
                .is_none_or(|ns| in_path_namespace(ns, signal.path))
            && self
                .arg0
                .as_deref()
                .is_none_or(|want| first_string_arg(signal.body) == Some(want))
            && self.sender.as_deref().is_none_or(sender_is)
    }
}

/// Whether `path` is `namespace` or lies below it.
pub fn in_path_namespace(namespace: &str, path: &str) -> bool {
    if namespace == "/" {
        return true;
    }
    match path.strip_prefix(namespace) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The first argument of an encoded body, if it is a string.
///
/// A body with several arguments is a MessagePack array (a Rust tuple); a
/// body with one argument is that value. So the first argument is the
/// array's first element, or the body itself; `None` when that is not a
/// string or the body is malformed. Only the bytes needed are looked at:
/// the rest of the body is never decoded.
pub fn first_string_arg(body: &[u8]) -> Option<&str> {
    let mut input = body;
    let first = match take_u8(&mut input)? {
        0x90..=0x9f => take_u8(&mut input)?,
        marker @ (0xdc | 0xdd) => {
            let len = if marker == 0xdc {
                usize::from(u16::from_be_bytes(take_array(&mut input)?))
            } else {
                usize::try_from(u32::from_be_bytes(take_array(&mut input)?)).ok()?
            };
            if len == 0 {
                return None;
            }
            take_u8(&mut input)?
        }
        other => other,
    };
    let len = match first {
        0xa0..=0xbf => usize::from(first & 0x1f),
        0xd9 => usize::from(take_u8(&mut input)?),
        0xda => usize::from(u16::from_be_bytes(take_array(&mut input)?)),
        0xdb => usize::try_from(u32::from_be_bytes(take_array(&mut input)?)).ok()?,
        _ => return None,
    };
    std::str::from_utf8(input.get(..len)?).ok()
}

fn take_u8(input: &mut &[u8]) -> Option<u8> {
    let (first, rest) = input.split_first()?;
    *input = rest;
    Some(*first)
}

fn take_array<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = input.split_first_chunk::<N>()?;
    *input = rest;
    Some(*head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    #[test]
    fn first_string_arg_of_tuples_and_single_values() {
        assert_eq!(first_string_arg(&encode(&("hi", 3))), Some("hi"));
        assert_eq!(first_string_arg(&encode(&"alone")), Some("alone"));
        assert_eq!(first_string_arg(&encode(&(3, "hi"))), None);
        assert_eq!(first_string_arg(&encode(&Vec::<String>::new())), None);
        let long = "x".repeat(70_000);
        let many: Vec<&str> = vec![&long; 20];
        assert_eq!(first_string_arg(&encode(&many)), Some(long.as_str()));
        assert_eq!(
            first_string_arg(&encode(&"y".repeat(300))).map(str::len),
            Some(300)
        );
        // Truncated or garbage bodies are "no string", never a panic.
        let body = encode(&("hello", 1));
        for cut in 0..body.len() - 1 {
            assert_ne!(first_string_arg(&body[..cut]), Some("hello"));
        }
        assert_eq!(first_string_arg(&[0xdd, 0xff]), None);
        assert_eq!(first_string_arg(&[]), None);
    }

    #[test]
    fn path_namespaces() {
        assert!(in_path_namespace("/org/a", "/org/a"));
        assert!(in_path_namespace("/org/a", "/org/a/b"));
        assert!(!in_path_namespace("/org/a", "/org/ab"));
        assert!(in_path_namespace("/", "/anything"));
    }

    #[test]
    fn rules_are_conjunctions_of_their_conditions() {
        let body = encode(&("org.x.Name", 1));
        let signal = SignalFields {
            path: "/org/x/obj",
            interface: "org.x.Iface",
            member: "Changed",
            body: &body,
        };
        let yes = |_: &str| true;
        assert!(MatchRule::all().matches(&signal, yes));
        let rule = MatchRule {
            path_namespace: Some("/org/x".into()),
            interface: Some("org.x.Iface".into()),
            member: Some("Changed".into()),
            arg0: Some("org.x.Name".into()),
            sender: Some(":4".into()),
            ..MatchRule::default()
        };
        assert!(rule.matches(&signal, |s| s == ":4"));
        assert!(!rule.matches(&signal, |s| s == ":5"));
        let other_member = MatchRule {
            member: Some("Other".into()),
            ..rule.clone()
        };
        assert!(!other_member.matches(&signal, yes));
        let other_arg = MatchRule {
            arg0: Some("org.y".into()),
            ..rule
        };
        assert!(!other_arg.matches(&signal, yes));
    }

    #[test]
    fn invalid_rules_are_refused_with_the_reason() {
        let rule = MatchRule {
            interface: Some("nodots".into()),
            ..MatchRule::default()
        };
        assert!(
            rule.validate()
                .unwrap_err()
                .to_string()
                .contains("interface")
        );
        let rule = MatchRule {
            sender: Some("bad name".into()),
            ..MatchRule::default()
        };
        assert!(rule.validate().is_err());
        let rule = MatchRule {
            arg0: Some("x".repeat(MAX_MATCH_RULE_SIZE)),
            member: Some("M".into()),
            ..MatchRule::default()
        };
        let error = rule.validate().unwrap_err().to_string();
        assert!(error.contains("the limit is 1024"), "{error}");
    }
}
