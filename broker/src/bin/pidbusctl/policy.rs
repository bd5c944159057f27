//! `pidbusctl policy`: check a policy file, or explain which rule decides
//! a request, offline.

use std::io::Write;

use crate::output::Style;
use crate::{AnyResult, PolicyCommand};

/// Runs a `policy` subcommand.
pub fn policy_command(command: &PolicyCommand, as_json: bool) -> AnyResult {
    use pidbus_broker::policy::{self, ActionKind, Request};
    let mut out = std::io::stdout().lock();
    match command {
        PolicyCommand::Check { source } => {
            let source = source_of(source)?;
            let file = &std::path::PathBuf::from(source.to_string());
            let mut notes = Vec::new();
            let loaded = match source.check(|note| notes.push(note.to_owned())) {
                Ok(loaded) => loaded,
                Err(errors) => return Err(report_errors(&mut out, file, &errors, as_json)),
            };
            if !as_json {
                let mut err = std::io::stderr().lock();
                for note in &notes {
                    writeln!(err, "warning: D-Bus XML policy: {note}")?;
                }
            }
            if as_json {
                let value = serde_json::json!({
                    "file": file.display().to_string(),
                    "valid": true,
                    "rules": loaded.rules().len(),
                    "actions": loaded.actions().len(),
                    "files": loaded.sources,
                });
                writeln!(out, "{value}")?;
            } else {
                writeln!(
                    out,
                    "{}: {} ({} rules, {} application actions; files: {})",
                    file.display(),
                    Style::stdout().good("valid"),
                    loaded.rules().len(),
                    loaded.actions().len(),
                    loaded.sources.join(", ")
                )?;
            }
        }
        PolicyCommand::Explain {
            source,
            message,
            action,
            name,
            uid,
            as_user,
            gid,
            group,
            exe,
            unit,
            cgroup,
            label,
            path,
            interface,
            member,
            target_uid,
            broker_uid,
        } => {
            let loaded = source_of(source)?.load()?;
            let message = policy::MessageType::from_name(message).ok_or_else(|| {
                crate::usage(format!(
                    "unknown message type {message:?}; use method_call or signal"
                ))
            })?;
            let kind = ActionKind::from_name(action).ok_or_else(|| {
                format!(
                    "unknown action kind {action:?}; use one of {}",
                    ActionKind::ALL.map(ActionKind::as_str).join(", ")
                )
            })?;
            let (uid, user_gid) = match (uid, as_user) {
                (_, Some(user)) => {
                    let found = nix::unistd::User::from_name(user)?
                        .ok_or_else(|| format!("unknown user {user:?}"))?;
                    (found.uid.as_raw(), Some(found.gid.as_raw()))
                }
                (Some(uid), None) => (*uid, None),
                (None, None) => {
                    return Err(crate::usage("give the subject: --uid U or --as-user NAME"));
                }
            };
            let groups = group
                .iter()
                .map(|g| resolve_group(g))
                .collect::<Result<Vec<u32>, _>>()?;
            let subject = explain_identity(
                uid,
                gid.or(user_gid).unwrap_or(0),
                groups,
                exe,
                unit,
                cgroup,
                label,
            );
            let target =
                target_uid.map(|t| explain_identity(t, t, Vec::new(), &None, &None, &None, &None));
            let names: Vec<&str> = name.iter().map(String::as_str).collect();
            let request = Request {
                names: &names,
                path: path.as_deref(),
                interface: interface.as_deref(),
                member: member.as_deref(),
                message: matches!(kind, ActionKind::Call | ActionKind::Receive).then_some(message),
                target: target.as_ref(),
                ..Request::new(kind, &subject)
            };
            let broker = broker_uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
            let verdict = loaded.decide(&request, broker);
            let decision = if verdict.allowed() { "allow" } else { "deny" };
            // An application action's description, as the file declares it.
            let description = (kind == ActionKind::Action)
                .then(|| {
                    loaded
                        .actions()
                        .iter()
                        .find(|a| names.contains(&a.id.as_str()))
                })
                .flatten()
                .and_then(|a| a.description.clone());
            if as_json {
                let value = serde_json::json!({
                    "decision": decision,
                    "by": verdict.origin.to_string(),
                    "description": description,
                });
                writeln!(out, "{value}")?;
            } else {
                let decision = Style::stdout().verdict(verdict.allowed(), decision);
                writeln!(out, "{decision} ({})", verdict.origin)?;
                if let Some(description) = description {
                    writeln!(out, "action: {description}")?;
                }
            }
        }
    }
    Ok(())
}

fn resolve_group(group: &str) -> AnyResult<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    Ok(nix::unistd::Group::from_name(group)?
        .ok_or_else(|| format!("unknown group {group:?}"))?
        .gid
        .as_raw())
}

/// The identity `policy explain` decides for.
fn explain_identity(
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    exe: &Option<String>,
    unit: &Option<String>,
    cgroup: &Option<String>,
    label: &Option<String>,
) -> pidbus::ProcessIdentity {
    pidbus::ProcessIdentity {
        pid: 0,
        uid,
        gid,
        groups,
        pidfs_id: None,
        start_time: None,
        boot_id: String::new(),
        exe: exe.clone(),
        unit: unit.clone(),
        user_unit: None,
        exe_unverified: None,
        sender_proof_forgeable: false,
        facts_withheld: false,
        cgroup: cgroup.clone(),
        label: label.clone(),
        exited_at_connect: false,
    }
}

/// Prints every error `policy check` found, on stderr as a compiler does
/// (a JSON document on stdout with `--json`), and returns the error that
/// ends the command with status 1.
fn report_errors(
    out: &mut impl Write,
    file: &std::path::Path,
    errors: &[pidbus_broker::policy::PolicyError],
    as_json: bool,
) -> Box<dyn std::error::Error> {
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let printed = if as_json {
        let value = serde_json::json!({
            "file": file.display().to_string(),
            "valid": false,
            "errors": shown,
        });
        writeln!(out, "{value}")
    } else {
        let mut err = std::io::stderr().lock();
        shown.iter().try_for_each(|error| writeln!(err, "{error}"))
    };
    if let Err(e) = printed {
        return e.into();
    }
    format!(
        "{}: {} error{}",
        file.display(),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    )
    .into()
}

/// The policy `policy check` and `explain` read: a file, or a bus's
/// built-in one.
fn source_of(
    args: &crate::PolicySourceArgs,
) -> Result<pidbus_broker::policy::PolicySource, Box<dyn std::error::Error>> {
    use pidbus_broker::policy::PolicySource;
    let source = match (args.file.as_deref(), args.bus_policy.as_deref()) {
        (Some(file), _) => PolicySource::file(file.to_path_buf()),
        (None, Some("system")) => PolicySource::system(),
        (None, Some("session")) => PolicySource::session(),
        (None, other) => {
            return Err(crate::usage(format!(
                "--bus-policy takes system or session, not {}",
                other.unwrap_or("nothing")
            )));
        }
    };
    Ok(match args.dbus_config.clone() {
        Some(config) => source.with_dbus_config_arg(config),
        None => source,
    })
}
