//! Authorization: which verified process may do what on the bus.
//!
//! A [`Policy`] holds a default decision per [`ActionKind`], declared
//! application actions (polkit-style ids) with their own defaults, and
//! rules. A rule matches an action's object (name or name prefix, path,
//! interface, member) and its subject: the broker's verified identity of
//! the process asking (uid/user, gid/group, exe, systemd unit, cgroup, LSM
//! label, "same user as the target"). Never a PID number.
//!
//! **Precedence: the last matching rule wins**, in file order (the main
//! file, then its drop-ins in name order); when no rule matches, the
//! default for the action decides. Every decision says what decided it
//! (`file:line`), for the log and for services asking.
//!
//! `file` reads the TOML format; see `examples/policy/` and the README.

mod enforce;
mod file;
mod source;
pub mod xml;

use std::fmt;
use std::sync::Arc;

use pidbus_protocol::ProcessIdentity;

pub(crate) use enforce::{MessageFields, log_denial};
pub use file::{PolicyError, load, parse};
pub use source::{PolicySource, SESSION_DROP_INS, SYSTEM_DROP_INS};

/// What a process asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKind {
    /// Connect to the bus (finish the handshake).
    Connect,
    /// Own (or queue for) a well-known name.
    Own,
    /// Send a call or a signal.
    Call,
    /// Receive a call or a signal.
    Receive,
    /// Get the pidfd of a peer's process, or watch it.
    Pidfd,
    /// Monitor every message on the bus.
    Monitor,
    /// An application action a service checks (`CheckAuthorization`).
    Action,
}

impl ActionKind {
    /// Every kind, in the order of the `[defaults]` table.
    pub const ALL: [ActionKind; 7] = [
        ActionKind::Connect,
        ActionKind::Own,
        ActionKind::Call,
        ActionKind::Receive,
        ActionKind::Pidfd,
        ActionKind::Monitor,
        ActionKind::Action,
    ];

    /// The kind's name in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Connect => "connect",
            ActionKind::Own => "own",
            ActionKind::Call => "call",
            ActionKind::Receive => "receive",
            ActionKind::Pidfd => "pidfd",
            ActionKind::Monitor => "monitor",
            ActionKind::Action => "action",
        }
    }

    /// The kind named `name` in policy files.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The action may happen.
    Allow,
    /// It may not.
    Deny,
}

/// Where a decision came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A rule.
    Rule {
        /// The file it is written in.
        file: Arc<str>,
        /// Its line there.
        line: usize,
    },
    /// A default (`[defaults]` or an action's `default`).
    Default {
        /// The file it is written in.
        file: Arc<str>,
        /// Its line there.
        line: usize,
    },
    /// No file set a default for this kind: deny.
    BuiltIn,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Rule { file, line } => write!(f, "rule at {file}:{line}"),
            Origin::Default { file, line } => write!(f, "default at {file}:{line}"),
            Origin::BuiltIn => f.write_str("built-in default (deny)"),
        }
    }
}

/// A decision and what made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allow or deny.
    pub decision: Decision,
    /// The rule or default that decided.
    pub origin: Origin,
}

impl Verdict {
    /// Whether the action may happen.
    pub fn allowed(&self) -> bool {
        self.decision == Decision::Allow
    }
}

/// One action to decide on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What kind of action.
    pub kind: ActionKind,
    /// Who asks: the broker's verified identity.
    pub subject: &'a ProcessIdentity,
    /// The names the object goes by: the name to own; the destination's
    /// names for a call; the sender's names for a receive; the target's
    /// names for a pidfd; the action id for an application action. Any
    /// one matching a rule's `name` is enough.
    pub names: &'a [&'a str],
    /// Object path of a call or signal.
    pub path: Option<&'a str>,
    /// Interface of a call or signal.
    pub interface: Option<&'a str>,
    /// Member of a call or signal.
    pub member: Option<&'a str>,
    /// Whether a call or a signal (`None`: not about a message).
    pub message: Option<MessageType>,
    /// The other process: a pidfd's target, a call's destination, a
    /// received message's sender (for `same_user_as_target`).
    pub target: Option<&'a ProcessIdentity>,
    /// The subject's live process, when the broker decides for a peer:
    /// `exe` rules then look at the file it runs *now*. `None` (offline
    /// explanations, tests) takes the identity's facts as they are.
    pub process: Option<LiveProcess<'a>>,
}

/// A peer's process as a decision can look at it now.
#[derive(Debug, Clone, Copy)]
pub struct LiveProcess<'a> {
    /// Its pid in the broker's namespace (0: not visible there, so its
    /// `/proc` facts are unknown).
    pub pid: u32,
    /// Its pidfd, which proves a fresh `/proc` read was of this process.
    pub pidfd: std::os::fd::BorrowedFd<'a>,
}

impl<'a> Request<'a> {
    /// A request with no object, from `subject`.
    pub fn new(kind: ActionKind, subject: &'a ProcessIdentity) -> Self {
        Request {
            kind,
            subject,
            names: &[],
            path: None,
            interface: None,
            member: None,
            message: None,
            target: None,
            process: None,
        }
    }

    /// The same request, decided on `process` as it is now.
    pub fn live(self, process: LiveProcess<'a>) -> Self {
        Request {
            process: Some(process),
            ..self
        }
    }

    /// Whether the subject's `/proc` facts (exe, cgroup, unit, namespaces)
    /// are unknown: its process is not visible in the broker's pid
    /// namespace, or had exited before the broker could read them.
    fn proc_facts_unknown(&self) -> bool {
        self.subject.exited_at_connect || self.process.is_some_and(|p| p.pid == 0)
    }
}

/// A name pattern: a name, `prefix.*` (every name below `prefix`), or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// Exactly this name.
    Exact(String),
    /// Names that start with `prefix.` (the prefix itself too).
    Below(String),
    /// Every name.
    Any,
}

impl NamePattern {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::Below(prefix) => {
                name == prefix
                    || name
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            }
            NamePattern::Any => true,
        }
    }
}

/// Who a rule applies to; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectMatch {
    /// uid (from `user` by name or number).
    pub uid: Option<u32>,
    /// gid, primary or supplementary (from `group` by name or number).
    pub gid: Option<u32>,
    /// Executable path, exactly.
    pub exe: Option<String>,
    /// systemd unit, exactly.
    pub unit: Option<String>,
    /// cgroup path prefix, by whole components.
    pub cgroup: Option<String>,
    /// LSM label, exactly.
    pub label: Option<String>,
    /// Runs (or does not run) as the target's uid.
    pub same_user_as_target: Option<bool>,
    /// Runs (or does not run) as the broker's uid.
    pub broker_user: Option<bool>,
    /// Whether the peer's per-message sender proof is forgeable (it
    /// administers its own pid namespace): `sender_proof = "forgeable"`
    /// or `"kernel"`.
    pub sender_proof_forgeable: Option<bool>,
}

/// What a rule applies to; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMatch {
    /// Name pattern.
    pub name: Option<NamePattern>,
    /// `call` and `receive`: a method call or a signal only.
    pub message: Option<MessageType>,
    /// Object path, exactly.
    pub path: Option<String>,
    /// Interface, exactly.
    pub interface: Option<String>,
    /// Member, exactly.
    pub member: Option<String>,
}

/// The kind of message a `call` or `receive` rule is about (answers are
/// not decided by the policy: only the callee may answer, once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A method call.
    MethodCall,
    /// A signal.
    Signal,
}

impl MessageType {
    /// Its name in policy files (`message = "..."`, D-Bus's `send_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::MethodCall => "method_call",
            MessageType::Signal => "signal",
        }
    }

    /// The message type of a name in policy files.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "method_call" => Some(MessageType::MethodCall),
            "signal" => Some(MessageType::Signal),
            _ => None,
        }
    }
}

/// One rule of a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The action it is about.
    pub kind: ActionKind,
    /// Allow or deny.
    pub decision: Decision,
    /// Its object.
    pub object: ObjectMatch,
    /// Its subject.
    pub subject: SubjectMatch,
    /// Where it is written.
    pub file: Arc<str>,
    /// Its line there.
    pub line: usize,
}

impl Rule {
    fn matches(&self, request: &Request<'_>, broker_uid: u32) -> bool {
        if self.kind != request.kind || !object_matches(&self.object, request) {
            return false;
        }
        match subject_matches(&self.subject, request, broker_uid) {
            Fact::Yes => true,
            Fact::No => false,
            // Fail closed: a deny rule applies to a subject whose fact is
            // unknown, an allow rule does not.
            Fact::Unknown => self.decision == Decision::Deny,
        }
    }
}

/// Whether a subject has what a rule asks, as far as the broker can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    Yes,
    No,
    Unknown,
}

impl Fact {
    fn of(known: bool) -> Self {
        if known { Fact::Yes } else { Fact::No }
    }

    /// Both hold: a `No` anywhere wins, then an `Unknown`.
    fn and(self, other: impl FnOnce() -> Fact) -> Fact {
        match self {
            Fact::No => Fact::No,
            Fact::Yes => other(),
            Fact::Unknown => match other() {
                Fact::No => Fact::No,
                _ => Fact::Unknown,
            },
        }
    }
}

fn object_matches(object: &ObjectMatch, request: &Request<'_>) -> bool {
    let exact =
        |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
    object
        .name
        .as_ref()
        .is_none_or(|p| request.names.iter().any(|n| p.matches(n)))
        && exact(&object.path, request.path)
        && exact(&object.interface, request.interface)
        && exact(&object.member, request.member)
        && object
            .message
            .is_none_or(|want| request.message == Some(want))
}

fn subject_matches(subject: &SubjectMatch, request: &Request<'_>, broker_uid: u32) -> Fact {
    let who = request.subject;
    let same_target = request.target.map(|t| t.uid == who.uid);
    let credentials = subject.uid.is_none_or(|uid| who.uid == uid)
        && subject
            .gid
            .is_none_or(|gid| who.gid == gid || who.groups.contains(&gid))
        && subject
            .label
            .as_deref()
            .is_none_or(|label| who.label.as_deref() == Some(label))
        && subject
            .same_user_as_target
            .is_none_or(|want| same_target == Some(want))
        && subject
            .broker_user
            .is_none_or(|want| (who.uid == broker_uid) == want);
    Fact::of(credentials)
        .and(|| sender_proof_matches(subject, request))
        .and(|| proc_facts_match(subject, request))
}

/// The rule's `sender_proof` against the subject, which comes from its
/// namespaces: unknown for a process that exited before they were read,
/// or whose namespaces the broker may not read.
fn sender_proof_matches(subject: &SubjectMatch, request: &Request<'_>) -> Fact {
    match subject.sender_proof_forgeable {
        None => Fact::Yes,
        Some(_) if request.subject.exited_at_connect || request.subject.facts_withheld => {
            Fact::Unknown
        }
        Some(want) => Fact::of(request.subject.sender_proof_forgeable == want),
    }
}

/// The rule's `exe`, `unit` and `cgroup` against the subject's process.
fn proc_facts_match(subject: &SubjectMatch, request: &Request<'_>) -> Fact {
    if subject.exe.is_none() && subject.unit.is_none() && subject.cgroup.is_none() {
        return Fact::Yes;
    }
    if request.proc_facts_unknown() {
        return Fact::Unknown;
    }
    let who = request.subject;
    let unit = subject
        .unit
        .as_deref()
        .is_none_or(|unit| who.unit.as_deref() == Some(unit));
    let cgroup = subject
        .cgroup
        .as_deref()
        .is_none_or(|prefix| who.cgroup.as_deref().is_some_and(|c| under(c, prefix)));
    Fact::of(unit && cgroup).and(|| match subject.exe.as_deref() {
        None => Fact::Yes,
        // The kernel would not show the broker what it runs.
        Some(_) if who.facts_withheld => Fact::Unknown,
        Some(exe) => exe_matches(exe, request),
    })
}

/// Whether the subject runs the file at `path` (in the broker's mount
/// namespace) *now*: compared by device and inode, so a bind mount in the
/// peer's namespace or an `exec` since connecting does not pass.
fn exe_matches(path: &str, request: &Request<'_>) -> Fact {
    let Some(process) = request.process else {
        return Fact::of(request.subject.exe.as_deref() == Some(path));
    };
    let Some(running) = crate::os::identity::current_exe(process.pid, process.pidfd) else {
        return Fact::Unknown;
    };
    Fact::of(crate::os::identity::FileId::of(path).is_ok_and(|wanted| wanted == running))
}

/// Whether cgroup `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A declared application action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAction {
    /// Its id (`org.example.reboot`).
    pub id: String,
    /// Its default when no rule matches.
    pub default: Decision,
    /// What it allows, for people.
    pub description: Option<String>,
    /// Where it is declared.
    pub file: Arc<str>,
    /// Its line there.
    pub line: usize,
}

/// A loaded policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    defaults: Vec<(ActionKind, Decision, Arc<str>, usize)>,
    actions: Vec<AppAction>,
    rules: Vec<Rule>,
    /// The files it was read from, in order.
    pub sources: Vec<String>,
}

impl Policy {
    /// Decides `request`; `broker_uid` is the uid the broker runs as.
    pub fn decide(&self, request: &Request<'_>, broker_uid: u32) -> Verdict {
        if let Some(rule) = self
            .rules
            .iter()
            .rev()
            .find(|r| r.matches(request, broker_uid))
        {
            return Verdict {
                decision: rule.decision,
                origin: Origin::Rule {
                    file: Arc::clone(&rule.file),
                    line: rule.line,
                },
            };
        }
        self.default_for(request)
    }

    fn default_for(&self, request: &Request<'_>) -> Verdict {
        if request.kind == ActionKind::Action
            && let Some(action) = request
                .names
                .first()
                .and_then(|id| self.actions.iter().rev().find(|a| a.id == *id))
        {
            return Verdict {
                decision: action.default,
                origin: Origin::Default {
                    file: Arc::clone(&action.file),
                    line: action.line,
                },
            };
        }
        match self.defaults.iter().rev().find(|d| d.0 == request.kind) {
            Some((_, decision, file, line)) => Verdict {
                decision: *decision,
                origin: Origin::Default {
                    file: Arc::clone(file),
                    line: *line,
                },
            },
            None => Verdict {
                decision: Decision::Deny,
                origin: Origin::BuiltIn,
            },
        }
    }

    /// The declared application actions.
    pub fn actions(&self) -> &[AppAction] {
        &self.actions
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// The policy `pidbusd --system` uses without `--policy`.
pub const SYSTEM_DEFAULT: &str = include_str!("../../../examples/policy/system.toml");
/// The policy `pidbusd --session` uses without `--policy`.
pub const SESSION_DEFAULT: &str = include_str!("../../../examples/policy/session.toml");
/// The policy of a bus started with neither `--system`, `--session` nor
/// `--policy` (development and tests): anyone may do anything but
/// monitor, and pidfds follow the session rule.
pub const OPEN_DEFAULT: &str = "\
[defaults]
connect = \"allow\"
own = \"allow\"
call = \"allow\"
receive = \"allow\"
pidfd = \"deny\"
monitor = \"deny\"
action = \"deny\"

[[rule]]
kind = \"pidfd\"
same_user_as_target = true
decision = \"allow\"

[[rule]]
kind = \"pidfd\"
user = 0
decision = \"allow\"

[[rule]]
kind = \"monitor\"
user = 0
decision = \"allow\"
";

#[cfg(test)]
mod tests;
