//! `pidbusctl`: inspect and use a pidbus bus from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pidbus::blocking::{Connection, PidFd};
use pidbus::{
    BusEvent, ExitStatus, MatchRule, Message, MethodCall, NameFlags, PeerInfo, ProcessState,
    RequestNameReply,
};
use serde::Serialize;
use serde_json::{Value, json};

/// Inspect and use a pidbus bus: identities, names, calls, signals,
/// processes.
///
/// Arguments and bodies are JSON on the command line and are printed as
/// JSON. Exit status: 0 on success, 1 on an error, 2 on a usage error or
/// when `wait` times out.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Bus socket to connect to (default: $PIDBUS_ADDRESS, else the session bus).
    #[arg(long, global = true, value_name = "PATH")]
    address: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the identity the broker verified for this process.
    Whoami,
    /// List every connected peer with its verified identity.
    Peers,
    /// List well-known names, their owners and queues.
    Names,
    /// Own a name until interrupted, printing acquired/lost events.
    Own {
        /// The well-known name, e.g. org.example.App.
        name: String,
        /// Take the name from its owner if the owner allows replacement.
        #[arg(long)]
        replace: bool,
        /// Let a later `--replace` take the name from us.
        #[arg(long)]
        allow_replacement: bool,
        /// Wait in the queue if the name is taken (default: give up).
        #[arg(long)]
        queue: bool,
    },
    /// Call a method and print the reply body as JSON.
    Call {
        /// Unique id (:N) or well-known name of the callee.
        destination: String,
        /// Object path, e.g. /org/example/App.
        path: String,
        /// Interface, e.g. org.example.App.
        interface: String,
        /// Method name.
        member: String,
        /// The arguments as one JSON value (an array for several); none if omitted.
        args: Option<String>,
        /// Seconds to wait for the reply (default: the broker's 25 s).
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Emit a signal.
    Emit {
        /// Object path the signal is about.
        path: String,
        /// Interface.
        interface: String,
        /// Signal name.
        member: String,
        /// The arguments as one JSON value (an array for several); none if omitted.
        args: Option<String>,
        /// Send to this peer only (unique id or well-known name).
        #[arg(long, value_name = "DEST")]
        dest: Option<String>,
    },
    /// Print matching signals, one JSON object per line, until interrupted.
    Listen {
        /// Only from this sender (unique id or well-known name).
        #[arg(long)]
        sender: Option<String>,
        /// Only on this object path.
        #[arg(long)]
        path: Option<String>,
        /// Only on this path or below it.
        #[arg(long, value_name = "PATH")]
        path_namespace: Option<String>,
        /// Only of this interface.
        #[arg(long)]
        interface: Option<String>,
        /// Only with this name.
        #[arg(long)]
        member: Option<String>,
        /// Only if the first argument is this string.
        #[arg(long)]
        arg0: Option<String>,
    },
    /// Print every message the broker delivers, one JSON object per line
    /// (root only).
    Monitor,
    /// Get the pidfd of a peer's process and print what it says: pid in
    /// this pid namespace, pidfs id, running or how it ended.
    Pidfd {
        /// Unique id (:N) or well-known name of the peer.
        target: String,
    },
    /// Wait until a peer's process exits (it need not be our child) and
    /// print how it ended. Exit status 0 once it exited, 2 on timeout.
    Wait {
        /// Unique id (:N) or well-known name of the peer.
        target: String,
        /// Give up after this many seconds (default: wait forever).
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Ask the broker whether this process may perform an application
    /// action (e.g. org.example.reboot). Exit status 0 if allowed, 1 if not.
    Authorize {
        /// The action id.
        action: String,
    },
    /// Make the broker re-read its policy, like SIGHUP (root only). An
    /// invalid policy is refused with the reason; the old one stays.
    ReloadPolicy,
    /// Check a policy file or explain its decisions, offline (no broker needed).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

// Parsed once per run: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and its drop-ins (FILE.d/*.toml); errors name
    /// file:line:column. Exit status 0 if valid, 1 if not.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print which rule (or default) decides an action for a subject.
    Explain {
        /// The policy file (drop-ins in FILE.d/ included).
        file: PathBuf,
        /// The action kind: connect, own, call, receive, pidfd, monitor or action.
        #[arg(long, value_name = "KIND")]
        action: String,
        /// The object's name: name to own, destination or sender name, or
        /// the application action id. Repeat for a peer owning several.
        #[arg(long, value_name = "NAME")]
        name: Vec<String>,
        /// The subject's uid.
        #[arg(long, conflicts_with = "user")]
        uid: Option<u32>,
        /// The subject's user name (sets its uid and primary gid).
        #[arg(long)]
        user: Option<String>,
        /// The subject's primary gid (default: the user's, else 0).
        #[arg(long)]
        gid: Option<u32>,
        /// A supplementary group of the subject, by name or number. Repeatable.
        #[arg(long, value_name = "GROUP")]
        group: Vec<String>,
        /// The subject's executable path.
        #[arg(long)]
        exe: Option<String>,
        /// The subject's systemd unit.
        #[arg(long)]
        unit: Option<String>,
        /// The subject's cgroup path.
        #[arg(long)]
        cgroup: Option<String>,
        /// The subject's LSM label.
        #[arg(long)]
        label: Option<String>,
        /// Object path of a call or signal.
        #[arg(long)]
        path: Option<String>,
        /// Interface of a call or signal.
        #[arg(long)]
        interface: Option<String>,
        /// Member of a call or signal.
        #[arg(long)]
        member: Option<String>,
        /// uid of the other process (pidfd target, callee, sender).
        #[arg(long, value_name = "UID")]
        target_uid: Option<u32>,
        /// uid the broker runs as (for broker_user rules; default: yours).
        #[arg(long, value_name = "UID")]
        broker_uid: Option<u32>,
    },
}

/// How long `wait` gives the parent of an exited process to reap it: the
/// exit status only exists from the reap on.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// `wait` gave up: exit status 2.
#[derive(Debug)]
struct TimedOut(String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// A peer as printed: the unique id and the identity's fields side by side.
#[derive(Debug, Serialize)]
struct PeerView<'a> {
    id: String,
    pid: u32,
    uid: u32,
    gid: u32,
    groups: &'a [u32],
    pidfs_id: Option<u64>,
    start_time: Option<u64>,
    boot_id: &'a str,
    exe: Option<&'a str>,
    unit: Option<&'a str>,
    cgroup: Option<&'a str>,
    label: Option<&'a str>,
}

impl<'a> From<&'a PeerInfo> for PeerView<'a> {
    fn from(peer: &'a PeerInfo) -> Self {
        let i = &peer.identity;
        PeerView {
            id: peer.id.to_string(),
            pid: i.pid,
            uid: i.uid,
            gid: i.gid,
            groups: &i.groups,
            pidfs_id: i.pidfs_id,
            start_time: i.start_time,
            boot_id: &i.boot_id,
            exe: i.exe.as_deref(),
            unit: i.unit.as_deref(),
            cgroup: i.cgroup.as_deref(),
            label: i.label.as_deref(),
        }
    }
}

fn print_authorization(
    out: &mut impl Write,
    answer: &pidbus::Authorization,
    as_json: bool,
) -> std::io::Result<()> {
    if as_json {
        let value = serde_json::json!({"allowed": answer.allowed, "rule": answer.rule});
        writeln!(out, "{value}")
    } else {
        let verdict = if answer.allowed { "allowed" } else { "denied" };
        writeln!(out, "{verdict} ({})", answer.rule)
    }
}

fn policy_command(command: &PolicyCommand, as_json: bool) -> AnyResult {
    use pidbus_broker::policy::{self, ActionKind, Request};
    let mut out = std::io::stdout().lock();
    match command {
        PolicyCommand::Check { file } => {
            let loaded = policy::load(file)?;
            writeln!(
                out,
                "{}: valid ({} rules, {} application actions; files: {})",
                file.display(),
                loaded.rules().len(),
                loaded.actions().len(),
                loaded.sources.join(", ")
            )?;
        }
        PolicyCommand::Explain {
            file,
            action,
            name,
            uid,
            user,
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
            let loaded = policy::load(file)?;
            let kind = ActionKind::from_name(action).ok_or_else(|| {
                format!(
                    "unknown action kind {action:?}; use one of {}",
                    ActionKind::ALL.map(ActionKind::as_str).join(", ")
                )
            })?;
            let (uid, user_gid) = match (uid, user) {
                (_, Some(user)) => {
                    let found = nix::unistd::User::from_name(user)?
                        .ok_or_else(|| format!("unknown user {user:?}"))?;
                    (found.uid.as_raw(), Some(found.gid.as_raw()))
                }
                (uid, None) => (uid.unwrap_or(0), None),
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
                target: target.as_ref(),
                ..Request::new(kind, &subject)
            };
            let broker = broker_uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
            let verdict = loaded.decide(&request, broker);
            let decision = if verdict.allowed() { "allow" } else { "deny" };
            if as_json {
                let value =
                    serde_json::json!({"decision": decision, "by": verdict.origin.to_string()});
                writeln!(out, "{value}")?;
            } else {
                writeln!(out, "{decision} ({})", verdict.origin)?;
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
        cgroup: cgroup.clone(),
        label: label.clone(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pidbusctl: {e}");
            if e.downcast_ref::<TimedOut>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn run(args: Args) -> AnyResult {
    if let Command::Policy { command } = &args.command {
        return policy_command(command, args.json);
    }
    let address = args
        .address
        .clone()
        .unwrap_or_else(pidbus_protocol::address::default_client_address);
    let bus = Connection::connect(&address)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::Whoami => {
            let me = bus.whoami()?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &PeerView::from(&me))?;
                writeln!(out)?;
            } else {
                print_identity(&mut out, &me)?;
            }
        }
        Command::Peers => {
            let peers = bus.peers()?;
            if args.json {
                let views: Vec<PeerView<'_>> = peers.iter().map(PeerView::from).collect();
                serde_json::to_writer_pretty(&mut out, &views)?;
                writeln!(out)?;
            } else {
                print_peer_table(&mut out, &peers)?;
            }
        }
        Command::Names => names(&bus, &mut out, args.json)?,
        Command::Own {
            name,
            replace,
            allow_replacement,
            queue,
        } => {
            let flags = NameFlags {
                allow_replacement,
                replace_existing: replace,
                do_not_queue: !queue,
            };
            own(&bus, &mut out, &name, flags, args.json)?;
        }
        Command::Call {
            destination,
            path,
            interface,
            member,
            args: call_args,
            timeout,
        } => {
            let mut call = MethodCall::new(&destination, &path, &interface, &member)?
                .args(&parse_args(call_args.as_deref())?)?;
            if let Some(secs) = timeout {
                call = call.timeout(seconds(secs)?);
            }
            let reply = bus.call_method(call)?;
            writeln!(out, "{}", body_json(&reply.body))?;
        }
        Command::Pidfd { target } => {
            let pidfd = bus.pidfd(&target)?;
            let view = ProcessView::new(&target, &pidfd, pidfd.pid()?, pidfd.state()?);
            view.print(&mut out, args.json)?;
        }
        Command::Wait { target, timeout } => {
            let timeout = timeout.map(seconds).transpose()?;
            wait(&bus, &mut out, &target, timeout, args.json)?;
        }
        Command::Emit {
            path,
            interface,
            member,
            args: signal_args,
            dest,
        } => {
            let body = parse_args(signal_args.as_deref())?;
            match dest {
                Some(dest) => bus.emit_to(&dest, &path, &interface, &member, &body)?,
                None => bus.emit(&path, &interface, &member, &body)?,
            }
        }
        Command::Listen {
            sender,
            path,
            path_namespace,
            interface,
            member,
            arg0,
        } => {
            let rule = MatchRule {
                sender,
                path,
                path_namespace,
                interface,
                member,
                arg0,
            };
            for signal in bus.subscribe(rule)? {
                let line = json!({
                    "sender": signal.sender.to_string(),
                    "destination": signal.destination.map(|d| d.to_string()),
                    "path": signal.path,
                    "interface": signal.interface,
                    "member": signal.member,
                    "body": body_json(&signal.body),
                });
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            return Err("the connection to the bus was closed".into());
        }
        Command::Authorize { action } => {
            let answer = bus.authorize(&action)?;
            print_authorization(&mut out, &answer, args.json)?;
            if !answer.allowed {
                // Exit status 1, like any error.
                return Err(format!("{action} denied ({})", answer.rule).into());
            }
        }
        Command::ReloadPolicy => {
            bus.reload_policy()?;
            writeln!(out, "policy reloaded")?;
        }
        Command::Policy { .. } => unreachable!("handled before connecting"),
        Command::Monitor => {
            for copy in bus.monitor()? {
                let mut line = message_json(&copy.message);
                line["sender"] = json!(copy.sender.map(|s| s.to_string()));
                line["destination"] = json!(copy.destination.map(|d| d.to_string()));
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            return Err("the connection to the bus was closed".into());
        }
    }
    Ok(())
}

/// A `--timeout` in seconds.
fn seconds(secs: f64) -> AnyResult<Duration> {
    Ok(Duration::try_from_secs_f64(secs).map_err(|e| format!("--timeout {secs}: {e}"))?)
}

/// Waits for the exit of `target`'s process, then (briefly) for its reap,
/// which is when the exit status becomes known.
fn wait(
    bus: &Connection,
    out: &mut impl Write,
    target: &str,
    timeout: Option<Duration>,
    as_json: bool,
) -> AnyResult {
    let pidfd = bus.pidfd(target)?;
    // Taken while the process runs: after the reap the kernel has no pid.
    let pid = pidfd.pid()?;
    // The broker reads the status too, which a client in another pid
    // namespace cannot (the kernel answers EREMOTE there). A process that
    // exited meanwhile is no longer on the bus: then the pidfd must do.
    let watch = match bus.watch_process(target) {
        Ok(watch) => Some(watch),
        Err(pidbus::Error::NoSuchName { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    // On stderr, so stdout stays the one result: tells a user (or a script)
    // the target was found and the wait has begun.
    eprintln!(
        "pidbusctl: waiting for {target} (peer {}, pidfs id {}) to exit",
        or_dash(pidfd.peer()),
        or_dash(pidfd.pidfs_id())
    );
    let exited = match timeout {
        Some(timeout) => pidfd.exited_within(timeout)?,
        None => pidfd.exited().map(|()| true)?,
    };
    if !exited {
        return Err(Box::new(TimedOut(format!(
            "{target}'s process (pidfs id {}) is still running after {:?}",
            or_dash(pidfd.pidfs_id()),
            timeout.unwrap_or_default()
        ))));
    }
    let mut state = if pidfd.reaped_within(REAP_GRACE)? {
        ProcessState::Reaped(pidfd.exit_status()?)
    } else {
        ProcessState::Exited
    };
    if let (ProcessState::Reaped(None), Some(watch)) = (state, &watch) {
        state = watch.wait_timeout(REAP_GRACE)?;
    }
    ProcessView::new(target, &pidfd, pid, state).print(out, as_json)?;
    Ok(())
}

/// What `pidfd` and `wait` print about a process.
#[derive(Debug, Serialize)]
struct ProcessView {
    target: String,
    peer: Option<String>,
    pid: Option<u32>,
    pidfs_id: Option<u64>,
    alive: bool,
    exited: bool,
    reaped: bool,
    code: Option<i32>,
    signal: Option<i32>,
}

impl ProcessView {
    fn new(target: &str, pidfd: &PidFd, pid: Option<u32>, state: ProcessState) -> Self {
        let status = match state {
            ProcessState::Reaped(status) => status,
            ProcessState::Running | ProcessState::Exited => None,
        };
        ProcessView {
            target: target.to_owned(),
            peer: pidfd.peer().map(|p| p.to_string()),
            pid,
            pidfs_id: pidfd.pidfs_id(),
            alive: state == ProcessState::Running,
            exited: state != ProcessState::Running,
            reaped: matches!(state, ProcessState::Reaped(_)),
            code: status.and_then(ExitStatus::code),
            signal: status.and_then(ExitStatus::signal),
        }
    }

    fn print(&self, out: &mut impl Write, as_json: bool) -> AnyResult {
        if as_json {
            serde_json::to_writer(&mut *out, self)?;
            writeln!(out)?;
            return Ok(());
        }
        let how = match (self.alive, self.reaped, self.code, self.signal) {
            (true, ..) => "running".to_owned(),
            (false, _, Some(code), _) => format!("exited with code {code}"),
            (false, _, _, Some(signal)) => format!("killed by signal {signal}"),
            (false, false, ..) => {
                "exited; not reaped by its parent yet, so how it ended is not known".to_owned()
            }
            (false, true, ..) => "exited; the kernel cannot tell how it ended here".to_owned(),
        };
        writeln!(
            out,
            "{} (peer {}, pid {}, pidfs id {}): {how}",
            self.target,
            or_dash(self.peer.as_deref()),
            self.pid
                .map_or_else(|| "not visible here".to_owned(), |p| p.to_string()),
            or_dash(self.pidfs_id),
        )?;
        Ok(())
    }
}

/// The JSON arguments of `call` or `emit`; none is `null`, which encodes
/// like `()` (no arguments).
fn parse_args(text: Option<&str>) -> AnyResult<Value> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    serde_json::from_str(text)
        .map_err(|e| format!("the arguments are not valid JSON ({e}): {text}").into())
}

/// A body as JSON; bodies JSON cannot express (e.g. raw bytes) are shown
/// as `{"undecodable": "<hex>"}`.
fn body_json(body: &[u8]) -> Value {
    match pidbus_protocol::codec::decode_value::<Value>(body) {
        Ok(value) => value,
        Err(_) => {
            let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
            json!({ "undecodable": hex })
        }
    }
}

/// A delivered message as one JSON object, for `monitor`.
fn message_json(message: &Message) -> Value {
    match message {
        Message::Incoming(call) => json!({
            "type": "call",
            "call_id": call.call_id,
            "caller": call.caller,
            "path": call.path,
            "interface": call.interface,
            "member": call.member,
            "no_reply": call.no_reply,
            "body": body_json(&call.body),
        }),
        Message::Return(answer) => json!({
            "type": "return",
            "reply_to": answer.reply_to,
            "body": body_json(&answer.body),
        }),
        Message::Error(error) => json!({
            "type": "error",
            "reply_to": error.reply_to,
            "code": format!("{:?}", error.code),
            "name": error.name,
            "message": error.message,
        }),
        Message::Signal(signal) => json!({
            "type": "signal",
            "path": signal.path,
            "interface": signal.interface,
            "member": signal.member,
            "body": body_json(&signal.body),
        }),
        Message::Event(event) => json!({ "type": "event", "event": event }),
        other => json!({ "type": other.kind() }),
    }
}

fn names(bus: &Connection, out: &mut impl Write, as_json: bool) -> AnyResult {
    let names = bus.names()?;
    if as_json {
        let views: Vec<Value> = names
            .iter()
            .map(|n| {
                json!({
                    "name": n.name,
                    "owner": n.owner.to_string(),
                    "queue": n.queue.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &views)?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let queue: Vec<String> = n.queue.iter().map(ToString::to_string).collect();
            vec![
                n.name.clone(),
                n.owner.to_string(),
                or_dash((!queue.is_empty()).then(|| queue.join(","))),
            ]
        })
        .collect();
    print_table(out, &["NAME", "OWNER", "QUEUE"], &rows)?;
    Ok(())
}

fn own(
    bus: &Connection,
    out: &mut impl Write,
    name: &str,
    flags: NameFlags,
    as_json: bool,
) -> AnyResult {
    // Listen first, so the acquisition of a queued name is not missed.
    let events = bus.name_events()?;
    let outcome = bus.request_name(name, flags)?;
    match outcome {
        // The NameAcquired event that follows is printed below.
        RequestNameReply::PrimaryOwner => {}
        RequestNameReply::AlreadyOwner => print_name_event(out, "acquired", name, as_json)?,
        RequestNameReply::InQueue => print_name_event(out, "queued", name, as_json)?,
        RequestNameReply::Exists => {
            let owner = bus
                .name_owner(name)
                .map(|o| o.to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(format!("{name} is owned by {owner}; use --queue to wait for it, or --replace if the owner allows replacement").into());
        }
    }
    for event in events {
        let what = match event {
            BusEvent::NameAcquired { name: n } if n == name => "acquired",
            BusEvent::NameLost { name: n } if n == name => "lost",
            _ => continue,
        };
        print_name_event(out, what, name, as_json)?;
    }
    Err("the connection to the bus was closed".into())
}

fn print_name_event(
    out: &mut impl Write,
    what: &str,
    name: &str,
    as_json: bool,
) -> std::io::Result<()> {
    if as_json {
        writeln!(out, "{}", json!({ "event": what, "name": name }))?;
    } else {
        writeln!(out, "{what} {name}")?;
    }
    out.flush()
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn print_identity(out: &mut impl Write, peer: &PeerInfo) -> std::io::Result<()> {
    let i = &peer.identity;
    let groups: Vec<String> = i.groups.iter().map(u32::to_string).collect();
    let rows = [
        ("id", peer.id.to_string()),
        ("pid", i.pid.to_string()),
        ("uid", i.uid.to_string()),
        ("gid", i.gid.to_string()),
        (
            "groups",
            if groups.is_empty() {
                "-".to_owned()
            } else {
                groups.join(",")
            },
        ),
        ("pidfs_id", or_dash(i.pidfs_id)),
        ("start_time", or_dash(i.start_time)),
        ("boot_id", i.boot_id.clone()),
        ("exe", or_dash(i.exe.as_deref())),
        ("unit", or_dash(i.unit.as_deref())),
        ("cgroup", or_dash(i.cgroup.as_deref())),
        ("label", or_dash(i.label.as_deref())),
    ];
    for (key, value) in rows {
        writeln!(out, "{key:<10}  {value}")?;
    }
    Ok(())
}

fn print_peer_table(out: &mut impl Write, peers: &[PeerInfo]) -> std::io::Result<()> {
    let header = ["ID", "PID", "UID", "GID", "PIDFS_ID", "UNIT", "EXE"];
    let rows: Vec<[String; 7]> = peers
        .iter()
        .map(|p| {
            let i = &p.identity;
            [
                p.id.to_string(),
                i.pid.to_string(),
                i.uid.to_string(),
                i.gid.to_string(),
                or_dash(i.pidfs_id),
                or_dash(i.unit.as_deref()),
                or_dash(i.exe.as_deref()),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    print_table(out, &header, &rows)
}

/// Prints rows under a header, each column as wide as its widest cell.
fn print_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}
