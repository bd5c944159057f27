//! The D-Bus XML bus configuration's `<policy>` elements — what every
//! Debian package that ships a system service puts in
//! `/usr/share/dbus-1/system.d` — read as dbus-daemon reads them and
//! translated into rules of the one policy engine, each keeping the file
//! and line it came from.
//!
//! Reading: the bus's config file (`system.conf`, `session.conf`), its
//! `<include>`s (relative to the including file; `ignore_missing`) and
//! `<includedir>`s (every `*.conf`, in name order). Everything but
//! `<policy>` (listen addresses, limits, service helpers) is dbus-daemon's
//! own business and ignored. A file that is not well-formed XML, or an
//! element pidbus cannot honour, is reported (file:line) and skipped:
//! never fatal, as a package's file must not stop the bus.
//!
//! Precedence, as dbus-daemon's: rules of `context="default"` policies,
//! then `group=` policies, then `user=` policies, then `at_console=`, then
//! `context="mandatory"`, each in file order, the last matching rule
//! winning — which is the engine's own rule, so they are emitted in that
//! order. What does not translate is made to fail closed: an `allow`
//! that needs something the engine cannot match is skipped, a `deny`
//! loses the condition and denies more.
//!
//! - `own`, `own_prefix`: `own` rules (`own_prefix="a.b"` is `a.b.*`).
//! - `send_destination` (`*`: any), `send_destination_prefix`,
//!   `send_interface`, `send_member`, `send_path`, `send_type`
//!   (`method_call`, `signal`): `call` rules.
//! - `receive_sender`, `receive_interface`, `receive_member`,
//!   `receive_path`, `receive_type`: `receive` rules.
//! - `user=`, `group=` on their own: `connect` rules.
//! - Replies (`send_type`/`receive_type` `method_return` or `error`,
//!   `send_error`, `*_requested_reply`): not policy on pidbus, which
//!   delivers a reply only to the caller that waits for it, once: such
//!   rules are skipped, noted.
//! - `eavesdrop="true"`: pidbus shows others' traffic to monitors only, so
//!   an `allow` of it is skipped; `send_broadcast`, `max_fds`, `min_fds`:
//!   an `allow` with them is skipped, a `deny` drops them.
//! - `at_console="true"`: never matches, as Debian's dbus-daemon (built
//!   without a console-ownership directory) has it; `at_console="false"`
//!   always does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ActionKind, Decision, MessageType, NamePattern, ObjectMatch, Rule, SubjectMatch};

/// The standard config files of each bus, first found wins.
pub const SYSTEM_CONFIGS: &[&str] = &["/usr/share/dbus-1/system.conf", "/etc/dbus-1/system.conf"];
/// See [`SYSTEM_CONFIGS`].
pub const SESSION_CONFIGS: &[&str] =
    &["/usr/share/dbus-1/session.conf", "/etc/dbus-1/session.conf"];

/// How deep includes may nest (dbus-daemon's limit is the same order).
const MAX_DEPTH: usize = 16;

/// The translated rules of a bus configuration.
#[derive(Debug, Default)]
pub struct XmlPolicy {
    /// Rules in precedence order (the last matching wins).
    pub rules: Vec<Rule>,
    /// Every file read, in order.
    pub files: Vec<String>,
    /// What was skipped and why, each `file:line: …`.
    pub notes: Vec<String>,
}

/// Rules by the precedence of the `<policy>` they came from.
#[derive(Debug, Default)]
struct Buckets {
    default: Vec<Rule>,
    group: Vec<Rule>,
    user: Vec<Rule>,
    console: Vec<Rule>,
    mandatory: Vec<Rule>,
}

/// Reads the configuration at `config` and everything it includes.
pub fn load(config: &Path) -> XmlPolicy {
    let mut buckets = Buckets::default();
    let mut policy = XmlPolicy::default();
    read_file(config, 0, &mut buckets, &mut policy);
    let Buckets {
        default,
        group,
        user,
        console,
        mandatory,
    } = buckets;
    policy.rules = [default, group, user, console, mandatory].concat();
    policy
}

fn read_file(path: &Path, depth: usize, buckets: &mut Buckets, out: &mut XmlPolicy) {
    let name = path.display().to_string();
    if depth > MAX_DEPTH {
        out.notes.push(format!(
            "{name}: includes nest deeper than {MAX_DEPTH}; not read"
        ));
        return;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            out.notes.push(format!("{name}: cannot read it: {e}"));
            return;
        }
    };
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let document = match roxmltree::Document::parse_with_options(&text, options) {
        Ok(document) => document,
        Err(e) => {
            let pos = e.pos();
            out.notes.push(format!(
                "{name}:{}:{}: not well-formed XML ({e}); skipped",
                pos.row, pos.col
            ));
            return;
        }
    };
    out.files.push(name.clone());
    let file: Arc<str> = Arc::from(name.as_str());
    let root = document.root_element();
    if root.tag_name().name() != "busconfig" {
        out.notes.push(format!(
            "{name}:1: the root element is not <busconfig>; skipped"
        ));
        return;
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    for element in root.children().filter(roxmltree::Node::is_element) {
        let line = document.text_pos_at(element.range().start).row as usize;
        let at = Place { file: &file, line };
        match element.tag_name().name() {
            "include" => include(&element, dir, depth, buckets, out, &at),
            "includedir" => include_dir(&element, dir, depth, buckets, out),
            "policy" => read_policy(&document, &element, &file, buckets, out, &at),
            _ => {}
        }
    }
}

/// Where an element is.
struct Place<'a> {
    file: &'a Arc<str>,
    line: usize,
}

impl Place<'_> {
    fn note(&self, out: &mut XmlPolicy, what: impl std::fmt::Display) {
        out.notes
            .push(format!("{}:{}: {what}", self.file, self.line));
    }
}

fn include(
    element: &roxmltree::Node<'_, '_>,
    dir: &Path,
    depth: usize,
    buckets: &mut Buckets,
    out: &mut XmlPolicy,
    at: &Place<'_>,
) {
    // SELinux contexts hold no <policy>, and pidbus does no SELinux
    // mediation.
    if element.attribute("if_selinux_enabled") == Some("yes") {
        return;
    }
    let target = dir.join(element.text().unwrap_or_default().trim());
    if !target.exists() {
        if element.attribute("ignore_missing") != Some("yes") {
            at.note(
                out,
                format_args!("included {} does not exist", target.display()),
            );
        }
        return;
    }
    read_file(&target, depth + 1, buckets, out);
}

fn include_dir(
    element: &roxmltree::Node<'_, '_>,
    dir: &Path,
    depth: usize,
    buckets: &mut Buckets,
    out: &mut XmlPolicy,
) {
    let target = dir.join(element.text().unwrap_or_default().trim());
    let Ok(entries) = std::fs::read_dir(&target) else {
        // A missing directory is normal (dbus-daemon ignores it too).
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    for file in files {
        read_file(&file, depth + 1, buckets, out);
    }
}

fn read_policy(
    document: &roxmltree::Document<'_>,
    element: &roxmltree::Node<'_, '_>,
    file: &Arc<str>,
    buckets: &mut Buckets,
    out: &mut XmlPolicy,
    at: &Place<'_>,
) {
    let Some((bucket, subject)) = policy_context(element, out, at) else {
        return;
    };
    let bucket = match bucket {
        Context::Default => &mut buckets.default,
        Context::Group => &mut buckets.group,
        Context::User => &mut buckets.user,
        Context::Console => &mut buckets.console,
        Context::Mandatory => &mut buckets.mandatory,
    };
    for rule in element.children().filter(roxmltree::Node::is_element) {
        let line = document.text_pos_at(rule.range().start).row as usize;
        let at = Place { file, line };
        let decision = match rule.tag_name().name() {
            "allow" => Decision::Allow,
            "deny" => Decision::Deny,
            other => {
                at.note(
                    out,
                    format_args!("<{other}> in <policy> is not a rule; skipped"),
                );
                continue;
            }
        };
        match translate(&rule, decision, &subject) {
            Ok(Some((kind, object, subject))) => bucket.push(Rule {
                kind,
                decision,
                object,
                subject,
                file: Arc::clone(file),
                line,
            }),
            Ok(None) => {}
            Err(why) => at.note(out, why),
        }
    }
}

/// Where a `<policy>`'s rules go, and whom they are about.
enum Context {
    Default,
    Group,
    User,
    Console,
    Mandatory,
}

fn policy_context(
    element: &roxmltree::Node<'_, '_>,
    out: &mut XmlPolicy,
    at: &Place<'_>,
) -> Option<(Context, SubjectMatch)> {
    let subject = SubjectMatch::default();
    if let Some(context) = element.attribute("context") {
        return match context {
            "default" => Some((Context::Default, subject)),
            "mandatory" => Some((Context::Mandatory, subject)),
            other => {
                at.note(
                    out,
                    format_args!("unknown policy context {other:?}; skipped"),
                );
                None
            }
        };
    }
    if let Some(user) = element.attribute("user") {
        return match principal_uid(user) {
            Ok(uid) => Some((Context::User, SubjectMatch { uid, ..subject })),
            Err(why) => {
                at.note(out, format_args!("{why}; its policy is skipped"));
                None
            }
        };
    }
    if let Some(group) = element.attribute("group") {
        return match principal_gid(group) {
            Ok(gid) => Some((Context::Group, SubjectMatch { gid, ..subject })),
            Err(why) => {
                at.note(out, format_args!("{why}; its policy is skipped"));
                None
            }
        };
    }
    match element.attribute("at_console") {
        // No seat is a console owner here, as for Debian's dbus-daemon.
        Some("true") => None,
        Some("false") => Some((Context::Console, subject)),
        _ => {
            at.note(
                out,
                "a <policy> with no context, user, group or at_console; skipped",
            );
            None
        }
    }
}

/// `*` is everyone (no condition), else a user by name or number.
fn principal_uid(user: &str) -> Result<Option<u32>, String> {
    if user == "*" {
        return Ok(None);
    }
    if let Ok(uid) = user.parse() {
        return Ok(Some(uid));
    }
    match super::file::uid_of(user) {
        Ok(Some(uid)) => Ok(Some(uid)),
        _ => Err(format!("no user {user:?} on this system")),
    }
}

/// See [`principal_uid`].
fn principal_gid(group: &str) -> Result<Option<u32>, String> {
    if group == "*" {
        return Ok(None);
    }
    if let Ok(gid) = group.parse() {
        return Ok(Some(gid));
    }
    match super::file::gid_of(group) {
        Ok(Some(gid)) => Ok(Some(gid)),
        _ => Err(format!("no group {group:?} on this system")),
    }
}

type Translated = Option<(ActionKind, ObjectMatch, SubjectMatch)>;

/// One `<allow>`/`<deny>` as a rule of the engine: `Ok(None)` when it has
/// no effect on pidbus, `Err` when it is skipped for a reason to report.
fn translate(
    element: &roxmltree::Node<'_, '_>,
    decision: Decision,
    policy_subject: &SubjectMatch,
) -> Result<Translated, String> {
    let mut own = None;
    let mut send = Message::default();
    let mut receive = Message::default();
    let mut connect_user = None;
    let mut connect_group = None;
    for attribute in element.attributes() {
        let value = attribute.value();
        match attribute.name() {
            "own" => own = Some(name_or_any(value)),
            "own_prefix" => own = Some(NamePattern::Below(value.to_owned())),
            "send_destination" => send.name = Some(name_or_any(value)),
            "send_destination_prefix" => send.name = Some(NamePattern::Below(value.to_owned())),
            "send_interface" => send.interface = Some(value.to_owned()),
            "send_member" => send.member = Some(value.to_owned()),
            "send_path" => send.path = Some(value.to_owned()),
            "send_type" => send.kind = Some(value.to_owned()),
            "receive_sender" => receive.name = Some(name_or_any(value)),
            "receive_interface" => receive.interface = Some(value.to_owned()),
            "receive_member" => receive.member = Some(value.to_owned()),
            "receive_path" => receive.path = Some(value.to_owned()),
            "receive_type" => receive.kind = Some(value.to_owned()),
            "send_error" | "receive_error" => return Ok(None),
            // It only ever qualifies replies, which are not policy here.
            "send_requested_reply" | "receive_requested_reply" => {}
            "eavesdrop" if value == "true" && decision == Decision::Allow => return Ok(None),
            "eavesdrop" | "log" => {}
            "send_broadcast" | "max_fds" | "min_fds" if decision == Decision::Allow => {
                return Err(format!(
                    "{} on an <allow> is not something pidbus can match; the rule is skipped \
                     (it would allow more)",
                    attribute.name()
                ));
            }
            "send_broadcast" | "max_fds" | "min_fds" => {}
            "user" => connect_user = Some(value.to_owned()),
            "group" => connect_group = Some(value.to_owned()),
            other => return Err(format!("unknown attribute {other:?}; the rule is skipped")),
        }
    }
    let subject = policy_subject.clone();
    let kinds = [own.is_some(), send.is_set(), receive.is_set()];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err("a rule mixing own, send_* and receive_* attributes; skipped".into());
    }
    if let Some(name) = own {
        let object = ObjectMatch {
            name: Some(name),
            ..ObjectMatch::default()
        };
        return Ok(Some((ActionKind::Own, object, subject)));
    }
    if send.is_set() {
        return send.rule(ActionKind::Call, subject);
    }
    if receive.is_set() {
        return receive.rule(ActionKind::Receive, subject);
    }
    if connect_user.is_none() && connect_group.is_none() {
        return Err("a rule with nothing to match; skipped".into());
    }
    let uid = match connect_user.as_deref().map(principal_uid).transpose()? {
        Some(uid) => uid,
        None => subject.uid,
    };
    let gid = match connect_group.as_deref().map(principal_gid).transpose()? {
        Some(gid) => gid,
        None => subject.gid,
    };
    let subject = SubjectMatch {
        uid,
        gid,
        ..subject
    };
    Ok(Some((ActionKind::Connect, ObjectMatch::default(), subject)))
}

/// `*` is any name (no condition on it), else exactly the name.
fn name_or_any(value: &str) -> NamePattern {
    match value {
        "*" => NamePattern::Any,
        name => NamePattern::Exact(name.to_owned()),
    }
}

/// The `send_*` or `receive_*` attributes of one rule.
#[derive(Default)]
struct Message {
    name: Option<NamePattern>,
    interface: Option<String>,
    member: Option<String>,
    path: Option<String>,
    kind: Option<String>,
}

impl Message {
    fn is_set(&self) -> bool {
        self.name.is_some()
            || self.interface.is_some()
            || self.member.is_some()
            || self.path.is_some()
            || self.kind.is_some()
    }

    fn rule(self, kind: ActionKind, subject: SubjectMatch) -> Result<Translated, String> {
        let message = match self.kind.as_deref() {
            None | Some("*") => None,
            Some("method_call") => Some(MessageType::MethodCall),
            Some("signal") => Some(MessageType::Signal),
            // Replies: delivered only to the caller that waits for one.
            Some("method_return" | "error") => return Ok(None),
            Some(other) => return Err(format!("unknown message type {other:?}; skipped")),
        };
        // A destination of "*" is any message; the engine's `*` means
        // "owns some name", which is less.
        let name = self.name.filter(|n| *n != NamePattern::Any);
        let object = ObjectMatch {
            name,
            message,
            path: self.path,
            interface: self.interface,
            member: self.member,
        };
        Ok(Some((kind, object, subject)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pidbus-xml-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const HEAD: &str = "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n";

    #[test]
    fn policies_are_read_through_includes_in_dbus_daemons_precedence() {
        let dir = temp_dir("precedence");
        std::fs::create_dir_all(dir.join("system.d")).unwrap();
        write(
            &dir,
            "system.d/b.conf",
            &format!(
                "{HEAD}<busconfig>\n<policy user=\"root\">\n  <allow own=\"org.x.B\"/>\n</policy>\n</busconfig>\n"
            ),
        );
        write(
            &dir,
            "system.d/a.conf",
            &format!(
                "{HEAD}<busconfig>\n<policy context=\"default\">\n  <deny send_destination=\"org.x.A\" send_type=\"method_call\"/>\n  <allow send_type=\"method_return\"/>\n</policy>\n</busconfig>\n"
            ),
        );
        let config = write(
            &dir,
            "system.conf",
            &format!(
                "{HEAD}<busconfig>\n  <type>system</type>\n  <policy context=\"mandatory\">\n    <deny own=\"org.x.M\"/>\n  </policy>\n  <includedir>system.d</includedir>\n  <include ignore_missing=\"yes\">local.conf</include>\n  <policy context=\"default\">\n    <allow user=\"*\"/>\n  </policy>\n</busconfig>\n"
            ),
        );
        let policy = load(&config);
        assert!(policy.notes.is_empty(), "{:?}", policy.notes);
        assert_eq!(policy.files.len(), 3);
        let order: Vec<(ActionKind, usize, bool)> = policy
            .rules
            .iter()
            .map(|r| (r.kind, r.line, r.file.ends_with("system.conf")))
            .collect();
        // default (a.conf's deny, system.conf's connect), user, mandatory.
        assert_eq!(
            order,
            [
                (ActionKind::Call, 5, false),
                (ActionKind::Connect, 11, true),
                (ActionKind::Own, 5, false),
                (ActionKind::Own, 6, true),
            ]
        );
        let call = &policy.rules[0];
        assert_eq!(call.object.message, Some(MessageType::MethodCall));
        assert_eq!(call.object.name, Some(NamePattern::Exact("org.x.A".into())));
        assert_eq!(policy.rules[2].subject.uid, Some(0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_does_not_translate_fails_closed_and_is_noted_with_its_line() {
        let dir = temp_dir("closed");
        let config = write(
            &dir,
            "c.conf",
            &format!(
                "{HEAD}<busconfig>\n<policy context=\"default\">\n  <allow send_broadcast=\"true\" send_interface=\"x.Y\"/>\n  <deny send_broadcast=\"true\" send_interface=\"x.Z\"/>\n  <allow eavesdrop=\"true\"/>\n  <allow frobnicate=\"x\"/>\n</policy>\n<policy user=\"no-such-user-pidbus\">\n  <allow own=\"x.Y\"/>\n</policy>\n<policy at_console=\"true\">\n  <allow own=\"x.C\"/>\n</policy>\n</busconfig>\n"
            ),
        );
        let policy = load(&config);
        // Only the deny, broadened: any call or signal on x.Z.
        assert_eq!(policy.rules.len(), 1, "{:?}", policy.rules);
        assert_eq!(policy.rules[0].decision, Decision::Deny);
        assert_eq!(policy.rules[0].object.interface.as_deref(), Some("x.Z"));
        let notes = policy.notes.join("\n");
        assert!(notes.contains("c.conf:5: send_broadcast"), "{notes}");
        assert!(
            notes.contains("c.conf:8: unknown attribute \"frobnicate\""),
            "{notes}"
        );
        assert!(
            notes.contains("c.conf:10: no user \"no-such-user-pidbus\""),
            "{notes}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_file_is_noted_and_the_others_still_count() {
        let dir = temp_dir("broken");
        std::fs::create_dir_all(dir.join("d")).unwrap();
        write(
            &dir,
            "d/1.conf",
            "<busconfig><policy context=\"default\"><allow own=\"a.B\"/>",
        );
        write(
            &dir,
            "d/2.conf",
            "<busconfig><policy context=\"default\"><allow own=\"a.C\"/></policy></busconfig>",
        );
        let config = write(
            &dir,
            "c.conf",
            "<busconfig><includedir>d</includedir></busconfig>",
        );
        let policy = load(&config);
        assert_eq!(policy.rules.len(), 1);
        assert!(policy.notes[0].contains("1.conf:1:"), "{:?}", policy.notes);
        assert!(
            policy.notes[0].contains("not well-formed"),
            "{:?}",
            policy.notes
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
