//! Match rules: which signals a connection wants to receive.
//!
//! A rule is a conjunction of optional conditions; an empty rule matches
//! every signal. The broker evaluates rules (it alone knows who owns a
//! well-known name at the moment a signal is emitted) and tells each
//! recipient which of its rules matched.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dbus::body::{MAX_MATCH_ARG, string_args};
use crate::names::{self, NameError};

/// The kinds of message a rule can select (D-Bus's `type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// `signal`
    Signal,
    /// `method_call`
    MethodCall,
    /// `method_return`
    MethodReturn,
    /// `error`
    Error,
}

impl MessageKind {
    /// The name in D-Bus match-rule syntax.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Signal => "signal",
            MessageKind::MethodCall => "method_call",
            MessageKind::MethodReturn => "method_return",
            MessageKind::Error => "error",
        }
    }
}

/// How an [`ArgCondition`] compares an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgTest {
    /// `argN='v'`: the argument is the string `v`.
    Equals,
    /// `argNpath='v'`: the argument (a string or object path) and `v` are
    /// equal, or the one ending in `/` is a prefix of the other.
    Path,
    /// `arg0namespace='v'`: the argument is the string `v` or starts with
    /// `v.` (a bus-name namespace).
    Namespace,
}

/// A condition on one argument of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArgCondition {
    /// Which argument (0 to 63).
    pub index: u8,
    /// How it is compared.
    pub test: ArgTest,
    /// What it is compared with.
    pub value: String,
}

/// Conditions a signal must meet to be delivered to a subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MatchRule {
    /// The kind of message (`None`: signals, for a subscriber; any kind,
    /// for a monitor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MessageKind>,
    /// The emitter: a unique id (`:1.17`) or a well-known name, which
    /// matches signals from the name's primary owner at emission time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The unique id a message is addressed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
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
    /// The first argument, which must be this string (`arg0='…'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg0: Option<String>,
    /// Every other argument condition (`arg1` to `arg63`, `argNpath`,
    /// `arg0namespace`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgCondition>,
    /// A monitor's rule may select messages addressed to others
    /// (D-Bus's `eavesdrop='true'`; only monitors see such messages).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eavesdrop: bool,
}

/// The parts of a message a rule looks at.
#[derive(Debug, Clone, Copy)]
pub struct SignalFields<'a> {
    /// The kind of message.
    pub kind: MessageKind,
    /// Object path the signal was emitted on.
    pub path: &'a str,
    /// Interface of the signal.
    pub interface: &'a str,
    /// Signal name.
    pub member: &'a str,
    /// The D-Bus signature of the body.
    pub signature: &'a str,
    /// The body, marshalled little-endian.
    pub body: &'a [u8],
    /// The unique id the message is addressed to (`None`: a broadcast).
    pub destination: Option<&'a str>,
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
        let fields: usize = [
            &self.sender,
            &self.destination,
            &self.path,
            &self.path_namespace,
            &self.interface,
            &self.member,
            &self.arg0,
        ]
        .into_iter()
        .flatten()
        .map(String::len)
        .sum();
        fields + self.args.iter().map(|a| a.value.len() + 8).sum::<usize>()
    }

    /// Whether the rule has conditions beyond the six the broker indexes
    /// (member, interface, path, arg0, path namespace, sender).
    pub fn has_unindexed_conditions(&self) -> bool {
        self.kind.is_some() || self.destination.is_some() || !self.args.is_empty()
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
            names::validate_bus_name(sender)?;
        }
        if let Some(destination) = &self.destination {
            names::validate_bus_name(destination)?;
        }
        if let Some(path) = &self.path {
            names::validate_object_path(path)?;
        }
        if let Some(path) = &self.path_namespace {
            names::validate_object_path(path)?;
        }
        if self.path.is_some() && self.path_namespace.is_some() {
            return Err(rule_error(
                "path and path_namespace cannot be used together",
            ));
        }
        if let Some(interface) = &self.interface {
            names::validate_interface(interface)?;
        }
        if let Some(member) = &self.member {
            names::validate_member(member)?;
        }
        for arg in &self.args {
            if usize::from(arg.index) > MAX_MATCH_ARG {
                return Err(rule_error(format!("arg{} is past arg63", arg.index)));
            }
            if arg.test == ArgTest::Namespace {
                if arg.index != 0 {
                    return Err(rule_error("only arg0 has a namespace test"));
                }
                validate_name_namespace(&arg.value)?;
            }
        }
        Ok(())
    }

    /// Whether a message meets the rule. `sender_is` answers whether the
    /// emitter is the given unique id or the current primary owner of the
    /// given well-known name.
    pub fn matches(&self, message: &SignalFields<'_>, sender_is: impl Fn(&str) -> bool) -> bool {
        fn equal(want: &Option<String>, have: &str) -> bool {
            want.as_deref().is_none_or(|w| w == have)
        }
        self.kind.unwrap_or(MessageKind::Signal) == message.kind
            && equal(&self.path, message.path)
            && equal(&self.interface, message.interface)
            && equal(&self.member, message.member)
            && self
                .path_namespace
                .as_deref()
                .is_none_or(|ns| in_path_namespace(ns, message.path))
            && self
                .destination
                .as_deref()
                .is_none_or(|want| message.destination == Some(want))
            && self.args_match(message)
            && self.sender.as_deref().is_none_or(sender_is)
    }

    /// Whether the rule selects a monitor's copy of a delivered message
    /// (a rule without `type` selects every kind here). `sender=` and
    /// `destination=` name the sender and the recipient by their unique
    /// names or by names they owned ([`Monitored::sent_by`],
    /// [`Monitored::received_by`]).
    ///
    /// [`Monitored::sent_by`]: crate::message::Monitored::sent_by
    /// [`Monitored::received_by`]: crate::message::Monitored::received_by
    pub fn selects_copy(&self, copy: &crate::message::Monitored) -> bool {
        use crate::message::Message;
        let (kind, path, interface, member, signature, body) = match &*copy.message {
            Message::Incoming(c) => (
                MessageKind::MethodCall,
                &c.path[..],
                &c.interface[..],
                &c.member[..],
                &c.signature[..],
                &c.body[..],
            ),
            Message::Signal(s) => (
                MessageKind::Signal,
                &s.path[..],
                &s.interface[..],
                &s.member[..],
                &s.signature[..],
                &s.body[..],
            ),
            Message::Return(r) => (
                MessageKind::MethodReturn,
                "",
                "",
                "",
                &r.signature[..],
                &r.body[..],
            ),
            Message::Error(_) => (MessageKind::Error, "", "", "", "", &[][..]),
            _ => return false,
        };
        if !self
            .destination
            .as_deref()
            .is_none_or(|name| copy.received_by(name))
        {
            return false;
        }
        let fields = SignalFields {
            kind,
            path,
            interface,
            member,
            signature,
            body,
            destination: None,
        };
        let rule = MatchRule {
            kind: self.kind.or(Some(kind)),
            destination: None,
            ..self.clone()
        };
        rule.matches(&fields, |name| copy.sent_by(name))
    }

    /// Whether the message's arguments meet `arg0` and every [`ArgCondition`].
    pub fn args_match(&self, message: &SignalFields<'_>) -> bool {
        if self.arg0.is_none() && self.args.is_empty() {
            return true;
        }
        let last = self
            .args
            .iter()
            .map(|a| usize::from(a.index))
            .max()
            .unwrap_or(0);
        let args = string_args(message.signature, message.body, last);
        let arg = |index: usize| args.get(index).copied().flatten();
        if let Some(want) = &self.arg0 {
            if !matches!(arg(0), Some((b's', have)) if have == want) {
                return false;
            }
        }
        self.args
            .iter()
            .all(|cond| match (cond.test, arg(usize::from(cond.index))) {
                (ArgTest::Equals, Some((b's', have))) => have == cond.value,
                (ArgTest::Path, Some((b's' | b'o', have))) => path_arg_matches(&cond.value, have),
                (ArgTest::Namespace, Some((b's', have))) => have
                    .strip_prefix(cond.value.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.')),
                _ => false,
            })
    }

    /// Reads a rule in D-Bus match-rule syntax
    /// (`type='signal',interface='org.x',arg0namespace='org.y'`).
    pub fn parse_dbus(text: &str) -> Result<MatchRule, NameError> {
        let mut rule = MatchRule::default();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in split_rule(text)? {
            if !seen.insert(key.clone()) {
                return Err(rule_error(format!("{key} appears twice")));
            }
            rule.set(&key, value)?;
        }
        rule.validate()?;
        Ok(rule)
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), NameError> {
        let slot = match key {
            "type" => {
                self.kind = Some(match value.as_str() {
                    "signal" => MessageKind::Signal,
                    "method_call" => MessageKind::MethodCall,
                    "method_return" => MessageKind::MethodReturn,
                    "error" => MessageKind::Error,
                    other => return Err(rule_error(format!("unknown message type {other:?}"))),
                });
                return Ok(());
            }
            "eavesdrop" => {
                self.eavesdrop = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(rule_error(format!(
                            "eavesdrop is 'true' or 'false', not {other:?}"
                        )));
                    }
                };
                return Ok(());
            }
            "sender" => &mut self.sender,
            "destination" => &mut self.destination,
            "interface" => &mut self.interface,
            "member" => &mut self.member,
            "path" => &mut self.path,
            "path_namespace" => &mut self.path_namespace,
            "arg0" => &mut self.arg0,
            other => return self.set_arg(other, value),
        };
        *slot = Some(value);
        Ok(())
    }

    fn set_arg(&mut self, key: &str, value: String) -> Result<(), NameError> {
        let unknown = || rule_error(format!("unknown key {key:?}"));
        let rest = key.strip_prefix("arg").ok_or_else(unknown)?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, test) = rest.split_at(digits);
        let index: u8 = number.parse().map_err(|_| unknown())?;
        if number.len() > 1 && number.starts_with('0') || usize::from(index) > MAX_MATCH_ARG {
            return Err(unknown());
        }
        let test = match test {
            "" => ArgTest::Equals,
            "path" => ArgTest::Path,
            "namespace" => ArgTest::Namespace,
            _ => return Err(unknown()),
        };
        self.args.push(ArgCondition { index, test, value });
        Ok(())
    }
}

/// The rule in D-Bus match-rule syntax.
impl fmt::Display for MatchRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<(String, &str)> = Vec::new();
        if let Some(kind) = self.kind {
            parts.push(("type".into(), kind.as_str()));
        }
        let named = [
            ("sender", &self.sender),
            ("destination", &self.destination),
            ("interface", &self.interface),
            ("member", &self.member),
            ("path", &self.path),
            ("path_namespace", &self.path_namespace),
            ("arg0", &self.arg0),
        ];
        for (key, value) in named {
            if let Some(value) = value {
                parts.push((key.into(), value));
            }
        }
        for arg in &self.args {
            let suffix = match arg.test {
                ArgTest::Equals => "",
                ArgTest::Path => "path",
                ArgTest::Namespace => "namespace",
            };
            parts.push((format!("arg{}{suffix}", arg.index), &arg.value));
        }
        if self.eavesdrop {
            parts.push(("eavesdrop".into(), "true"));
        }
        for (i, (key, value)) in parts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}='{}'", value.replace('\'', "'\\''"))?;
        }
        Ok(())
    }
}

fn rule_error(reason: impl Into<String>) -> NameError {
    NameError {
        kind: "match rule",
        value: String::new(),
        reason: reason.into(),
    }
}

/// Splits D-Bus match-rule text into its keys and unquoted values. Inside
/// single quotes every character is literal; outside, `\'` is a quote.
fn split_rule(text: &str) -> Result<Vec<(String, String)>, NameError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err(rule_error("a condition has no key (expected key='value')"));
        }
        let mut value = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '\'' => quoted = !quoted,
                '\\' if !quoted && chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                ',' if !quoted => break,
                c => value.push(c),
            }
        }
        if quoted {
            return Err(rule_error(format!(
                "the value of {key} has no closing quote"
            )));
        }
        pairs.push((key, value));
    }
}

/// Checks an `arg0namespace` value: a bus name or a prefix of one.
fn validate_name_namespace(value: &str) -> Result<(), NameError> {
    if value.contains('.') {
        return names::validate_bus_name(value);
    }
    // One element: a namespace like "org" is allowed, as in dbus-daemon.
    names::validate_bus_name(&format!("{value}.x")).map_err(|e| NameError {
        value: value.into(),
        ..e
    })
}

/// D-Bus's path-like argument test: equal, or the one that ends in `/` is
/// a prefix of the other.
fn path_arg_matches(want: &str, have: &str) -> bool {
    want == have
        || (want.ends_with('/') && have.starts_with(want))
        || (have.ends_with('/') && want.starts_with(have))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbus::value::{Value, marshal};

    fn signal<'a>(signature: &'a str, body: &'a [u8]) -> SignalFields<'a> {
        SignalFields {
            kind: MessageKind::Signal,
            path: "/org/x/obj",
            interface: "org.x.Iface",
            member: "Changed",
            signature,
            body,
            destination: None,
        }
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
        let (sig, body) = marshal(&[Value::string("org.x.Name"), Value::UInt32(1)]).unwrap();
        let signal = signal(&sig, &body);
        let yes = |_: &str| true;
        assert!(MatchRule::all().matches(&signal, yes));
        let rule = MatchRule {
            path_namespace: Some("/org/x".into()),
            interface: Some("org.x.Iface".into()),
            member: Some("Changed".into()),
            arg0: Some("org.x.Name".into()),
            sender: Some(":1.4".into()),
            ..MatchRule::default()
        };
        assert!(rule.matches(&signal, |s| s == ":1.4"));
        assert!(!rule.matches(&signal, |s| s == ":1.5"));
        let other_member = MatchRule {
            member: Some("Other".into()),
            ..rule.clone()
        };
        assert!(!other_member.matches(&signal, yes));
        let other_arg = MatchRule {
            arg0: Some("org.y".into()),
            ..rule.clone()
        };
        assert!(!other_arg.matches(&signal, yes));
        let calls_only = MatchRule {
            kind: Some(MessageKind::MethodCall),
            ..rule
        };
        assert!(!calls_only.matches(&signal, yes));
    }

    #[test]
    fn argument_tests_follow_dbus() {
        let (sig, body) = marshal(&[
            Value::string("org.freedesktop.Foo"),
            Value::string("/aa/bb/"),
            Value::UInt32(7),
            Value::string("x"),
            Value::ObjectPath("/aa".into()),
        ])
        .unwrap();
        let signal = signal(&sig, &body);
        let yes = |_: &str| true;
        for (text, want) in [
            ("arg0namespace='org.freedesktop'", true),
            ("arg0namespace='org.freedesktop.Foo'", true),
            ("arg0namespace='org.free'", false),
            ("arg1path='/aa/bb/cc'", true),
            ("arg1path='/aa/'", true),
            ("arg1path='/aa/b'", false),
            ("arg4='/aa'", false), // argN compares strings only
            ("arg4path='/aa'", true),
            ("arg2='7'", false),
            ("arg3='x'", true),
            ("arg5='x'", false),
            ("arg0='org.freedesktop.Foo',arg3='x'", true),
        ] {
            let rule = MatchRule::parse_dbus(text).unwrap();
            assert_eq!(rule.matches(&signal, yes), want, "{text}");
        }
    }

    #[test]
    fn dbus_syntax_parses_and_prints() {
        let text = "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
                    member='NameOwnerChanged',arg0='org.x'";
        let rule = MatchRule::parse_dbus(text).unwrap();
        assert_eq!(rule.kind, Some(MessageKind::Signal));
        assert_eq!(rule.arg0.as_deref(), Some("org.x"));
        assert_eq!(MatchRule::parse_dbus(&rule.to_string()).unwrap(), rule);
        let quoted = MatchRule::parse_dbus("arg3='it'\\''s'").unwrap();
        assert_eq!(quoted.args[0].value, "it's");
        assert_eq!(MatchRule::parse_dbus(&quoted.to_string()).unwrap(), quoted);
        assert_eq!(MatchRule::parse_dbus("").unwrap(), MatchRule::all());
        assert!(MatchRule::parse_dbus("eavesdrop=true").unwrap().eavesdrop);
        for (bad, why) in [
            ("member='A',member='B'", "twice"),
            ("colour='red'", "unknown key"),
            ("arg64='x'", "unknown key"),
            ("arg1namespace='org'", "only arg0"),
            ("type='nope'", "unknown message type"),
            ("member='unterminated", "closing quote"),
            ("path='/a',path_namespace='/a'", "together"),
            ("interface='nodots'", "interface"),
            ("='x'", "no key"),
        ] {
            let error = MatchRule::parse_dbus(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
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
