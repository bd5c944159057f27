//! Reading policy files: TOML, strictly. Unknown keys, bad name patterns,
//! unknown users and groups, and rules about undeclared application actions
//! are errors that name the file, line and column. Users and groups are
//! resolved to numbers here, at load time.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{
    ActionKind, AppAction, Decision, MessageType, NamePattern, ObjectMatch, Policy, Rule,
    SubjectMatch,
};

/// Why a policy could not be loaded: a file unreadable, or wrong at a
/// file:line:column.
pub type PolicyError = crate::config::FileError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    defaults: Option<Spanned<DefaultsModel>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleModel>>,
    #[serde(default)]
    action: Vec<Spanned<ActionModel>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsModel {
    connect: Option<Spanned<DecisionModel>>,
    own: Option<Spanned<DecisionModel>>,
    call: Option<Spanned<DecisionModel>>,
    receive: Option<Spanned<DecisionModel>>,
    pidfd: Option<Spanned<DecisionModel>>,
    monitor: Option<Spanned<DecisionModel>>,
    action: Option<Spanned<DecisionModel>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum DecisionModel {
    Allow,
    Deny,
}

impl From<DecisionModel> for Decision {
    fn from(d: DecisionModel) -> Self {
        match d {
            DecisionModel::Allow => Decision::Allow,
            DecisionModel::Deny => Decision::Deny,
        }
    }
}

/// A user or group by name or number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Principal {
    Id(u32),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleModel {
    kind: Spanned<String>,
    decision: DecisionModel,
    name: Option<Spanned<String>>,
    path: Option<String>,
    interface: Option<String>,
    member: Option<String>,
    message: Option<Spanned<String>>,
    user: Option<Spanned<Principal>>,
    group: Option<Spanned<Principal>>,
    exe: Option<String>,
    unit: Option<String>,
    cgroup: Option<String>,
    label: Option<String>,
    same_user_as_target: Option<bool>,
    broker_user: Option<bool>,
    sender_proof: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionModel {
    id: Spanned<String>,
    default: DecisionModel,
    description: Option<String>,
}

/// Loads the policy at `path` and its drop-ins (`PATH.d/*.toml`, in name
/// order; a missing directory is fine).
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    super::PolicySource::file(path.to_path_buf()).load()
}

/// Parses `(file name, text)` pairs, in order, into one policy; the
/// first error stops it.
pub fn parse(texts: &[(String, String)]) -> Result<Policy, PolicyError> {
    let (policy, mut errors) = parse_all(texts);
    match errors.is_empty() {
        true => Ok(policy),
        false => Err(errors.swap_remove(0)),
    }
}

/// Parses `(file name, text)` pairs, in order, into one policy, going on
/// past every error to find the next (a file that is not TOML is skipped
/// whole, a bad action or rule alone), so that a check names them all.
/// The policy is only meant to be used when no error was found.
pub fn parse_all(texts: &[(String, String)]) -> (Policy, Vec<PolicyError>) {
    let layers = texts
        .iter()
        .map(|(name, text)| Layer::Toml {
            name: name.clone(),
            text: text.clone(),
        })
        .collect();
    parse_layers(layers)
}

/// One layer of a policy, in precedence order.
pub enum Layer {
    /// A TOML policy file: its name and text.
    Toml {
        /// How rules' origins name it.
        name: String,
        /// Its text.
        text: String,
    },
    /// Rules already made (the D-Bus XML policy), each with its origin.
    Rules {
        /// How the policy's sources name them.
        name: String,
        /// The rules, in precedence order.
        rules: Vec<Rule>,
    },
}

/// [`parse_all`] of layers: TOML files and ready rules, in order.
pub fn parse_layers(layers: Vec<Layer>) -> (Policy, Vec<PolicyError>) {
    let mut policy = Policy::default();
    let mut errors = Vec::new();
    for layer in layers {
        let (name, text) = match layer {
            Layer::Toml { name, text } => (name, text),
            Layer::Rules { name, rules } => {
                policy.rules.extend(rules);
                policy.sources.push(name);
                continue;
            }
        };
        let (name, text) = (&name, &text);
        let file: Arc<str> = Arc::from(name.as_str());
        let at = Locator { file: &file, text };
        let model: FileModel = match toml::from_str(text) {
            Ok(model) => model,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                errors.push(at.error(span, e.message().to_owned()));
                continue;
            }
        };
        add_defaults(&mut policy, &model, &at);
        for action in &model.action {
            match app_action(action, &at) {
                Ok(action) => policy.actions.push(action),
                Err(e) => errors.push(e),
            }
        }
        for rule in &model.rule {
            match rule_of(rule, &policy, &at) {
                Ok(rule) => policy.rules.push(rule),
                Err(e) => errors.push(e),
            }
        }
        policy.sources.push(name.clone());
    }
    (policy, errors)
}

/// Turns byte spans of one file into `file:line:column` errors.
struct Locator<'a> {
    file: &'a Arc<str>,
    text: &'a str,
}

impl Locator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        crate::config::line_col(self.text, offset)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    fn error(&self, span: Range<usize>, message: String) -> PolicyError {
        let (line, column) = self.line_col(span.start);
        PolicyError::At {
            file: self.file.to_string(),
            line,
            column,
            message,
        }
    }
}

fn add_defaults(policy: &mut Policy, model: &FileModel, at: &Locator<'_>) {
    let Some(defaults) = &model.defaults else {
        return;
    };
    let d = defaults.get_ref();
    let entries = [
        (ActionKind::Connect, &d.connect),
        (ActionKind::Own, &d.own),
        (ActionKind::Call, &d.call),
        (ActionKind::Receive, &d.receive),
        (ActionKind::Pidfd, &d.pidfd),
        (ActionKind::Monitor, &d.monitor),
        (ActionKind::Action, &d.action),
    ];
    for (kind, value) in entries {
        if let Some(value) = value {
            let line = at.line(&value.span());
            policy
                .defaults
                .push((kind, (*value.get_ref()).into(), Arc::clone(at.file), line));
        }
    }
}

fn app_action(model: &Spanned<ActionModel>, at: &Locator<'_>) -> Result<AppAction, PolicyError> {
    let action = model.get_ref();
    let id = action.id.get_ref();
    if let Err(e) = pidbus_protocol::names::validate_well_known_name(id) {
        return Err(at.error(
            action.id.span(),
            format!(
                "invalid action id {id:?}: {e} (write it like a bus name, e.g. org.example.reboot)"
            ),
        ));
    }
    Ok(AppAction {
        id: id.clone(),
        default: action.default.into(),
        description: action.description.clone(),
        file: Arc::clone(at.file),
        line: at.line(&model.span()),
    })
}

fn rule_of(
    model: &Spanned<RuleModel>,
    policy: &Policy,
    at: &Locator<'_>,
) -> Result<Rule, PolicyError> {
    let rule = model.get_ref();
    let kind = ActionKind::from_name(rule.kind.get_ref()).ok_or_else(|| {
        at.error(
            rule.kind.span(),
            format!(
                "unknown kind {:?}; expected one of {}",
                rule.kind.get_ref(),
                ActionKind::ALL.map(ActionKind::as_str).join(", ")
            ),
        )
    })?;
    let name = match &rule.name {
        Some(name) => Some(name_pattern(name, kind, policy, at)?),
        None => None,
    };
    let has_message_fields = rule.path.is_some()
        || rule.interface.is_some()
        || rule.member.is_some()
        || rule.message.is_some();
    if has_message_fields && !matches!(kind, ActionKind::Call | ActionKind::Receive) {
        return Err(at.error(
            model.span(),
            format!(
                "path, interface, member and message apply to call and receive rules, not {kind}"
            ),
        ));
    }
    let message = match &rule.message {
        Some(name) => Some(MessageType::from_name(name.get_ref()).ok_or_else(|| {
            at.error(
                name.span(),
                format!(
                    "unknown message {:?}; expected method_call or signal",
                    name.get_ref()
                ),
            )
        })?),
        None => None,
    };
    Ok(Rule {
        kind,
        decision: rule.decision.into(),
        object: ObjectMatch {
            name,
            message,
            path: rule.path.clone(),
            interface: rule.interface.clone(),
            member: rule.member.clone(),
        },
        subject: SubjectMatch {
            uid: rule
                .user
                .as_ref()
                .map(|u| resolve_user(u, at))
                .transpose()?,
            gid: rule
                .group
                .as_ref()
                .map(|g| resolve_group(g, at))
                .transpose()?,
            exe: rule.exe.clone(),
            unit: rule.unit.clone(),
            cgroup: rule.cgroup.clone(),
            label: rule.label.clone(),
            same_user_as_target: rule.same_user_as_target,
            broker_user: rule.broker_user,
            sender_proof_forgeable: rule
                .sender_proof
                .as_ref()
                .map(|proof| sender_proof(proof, at))
                .transpose()?,
        },
        file: Arc::clone(at.file),
        line: at.line(&model.span()),
    })
}

/// `name`, `prefix.*` or `*`; a `*` anywhere else is a bad glob. An
/// application action rule must name a declared action (or a pattern).
fn name_pattern(
    name: &Spanned<String>,
    kind: ActionKind,
    policy: &Policy,
    at: &Locator<'_>,
) -> Result<NamePattern, PolicyError> {
    let text = name.get_ref();
    let pattern = if text == "*" {
        NamePattern::Any
    } else if let Some(prefix) = text.strip_suffix(".*") {
        NamePattern::Below(prefix.to_owned())
    } else {
        NamePattern::Exact(text.clone())
    };
    let bare = match &pattern {
        NamePattern::Exact(n) | NamePattern::Below(n) => n.as_str(),
        NamePattern::Any => "",
    };
    if bare.contains('*') || bare.contains('?') || bare.contains('[') {
        return Err(at.error(
            name.span(),
            format!("bad glob {text:?}: only a whole last component may be *, as in org.example.*"),
        ));
    }
    if kind == ActionKind::Action
        && let NamePattern::Exact(id) = &pattern
        && !policy.actions.iter().any(|a| &a.id == id)
    {
        return Err(at.error(
            name.span(),
            format!("unknown application action {id:?}; declare it in an [[action]] table first"),
        ));
    }
    Ok(pattern)
}

/// The uid of user `name` through NSS, if there is such a user: for TOML
/// and XML policies alike.
pub(super) fn uid_of(name: &str) -> nix::Result<Option<u32>> {
    Ok(nix::unistd::User::from_name(name)?.map(|u| u.uid.as_raw()))
}

/// The gid of group `name`, as [`uid_of`].
pub(super) fn gid_of(name: &str) -> nix::Result<Option<u32>> {
    Ok(nix::unistd::Group::from_name(name)?.map(|g| g.gid.as_raw()))
}

fn resolve_user(user: &Spanned<Principal>, at: &Locator<'_>) -> Result<u32, PolicyError> {
    match user.get_ref() {
        Principal::Id(uid) => Ok(*uid),
        Principal::Name(name) => match uid_of(name) {
            Ok(Some(uid)) => Ok(uid),
            Ok(None) => Err(at.error(user.span(), format!("unknown user {name:?}"))),
            Err(e) => Err(at.error(user.span(), format!("cannot look up user {name:?}: {e}"))),
        },
    }
}

/// `sender_proof = "forgeable"` (true) or `"kernel"` (false).
fn sender_proof(proof: &Spanned<String>, at: &Locator<'_>) -> Result<bool, PolicyError> {
    match proof.get_ref().as_str() {
        "forgeable" => Ok(true),
        "kernel" => Ok(false),
        other => Err(at.error(
            proof.span(),
            format!("unknown sender_proof {other:?}; use \"forgeable\" or \"kernel\""),
        )),
    }
}

fn resolve_group(group: &Spanned<Principal>, at: &Locator<'_>) -> Result<u32, PolicyError> {
    match group.get_ref() {
        Principal::Id(gid) => Ok(*gid),
        Principal::Name(name) => match gid_of(name) {
            Ok(Some(gid)) => Ok(gid),
            Ok(None) => Err(at.error(group.span(), format!("unknown group {name:?}"))),
            Err(e) => Err(at.error(group.span(), format!("cannot look up group {name:?}: {e}"))),
        },
    }
}
