//! `pidbusctl`: inspect and use a D-Bus bus — pidbus, dbus-broker or
//! dbus-daemon — from the command line.
//!
//! Modules: [`anybus`] (which bus, and what a command does on a bus that
//! is not pidbus), [`output`] (tables, colour, JSON views), [`policy`]
//! (offline policy check and explain), [`generate`] (shell completions
//! and man pages from these clap definitions).

mod anybus;
mod generate;
mod objects;
mod output;
mod policy;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pidbus::blocking::Connection;
use pidbus::{BusEvent, MatchRule, MethodCall, NameFlags, ProcessState, RequestNameReply};
use pidbus_protocol::dbus::value;
use serde_json::{Value, json};

use crate::output::{
    PeerView, ProcessView, Style, body_json, body_text, message_json, or_dash, print_authorization,
    print_identity, print_peer_table, print_table,
};

/// Inspect and use a D-Bus bus: names, objects, calls, signals, and on
/// pidbus verified identities and processes.
///
/// pidbusctl talks to pidbus (its native socket or its D-Bus socket) and
/// to any D-Bus bus (dbus-daemon, dbus-broker). What is D-Bus works on all
/// of them: names, list, activatable, start, own, call, introspect, tree,
/// get-property, set-property, emit, listen, monitor, wait --name,
/// reload-policy (ReloadConfig). What needs pidbus fails elsewhere with
/// exit status 1 and a message saying so: peers, pidfd and wait (unless the
/// bus's GetConnectionCredentials gives a ProcessFD), authorize. whoami,
/// status and list show there what GetConnectionCredentials says (uid,
/// pid, groups), marked as not verified by pidfd.
///
/// Arguments are given as busctl takes them (SIGNATURE ARGS…) or, for
/// `call`, as JSON checked against the method's introspected signature;
/// bodies are printed as busctl prints them, or as JSON with --json.
///
/// Exit status: 0 on success; 1 on an error (the broker cannot be reached,
/// a request is refused or denied, a name is taken); 2 on a usage error
/// or a timeout (`wait --timeout`, `call --timeout`).
///
/// Colour is used only when output goes to a terminal and NO_COLOR is not
/// set.
#[derive(Debug, Parser)]
#[command(name = "pidbusctl", version)]
struct Args {
    /// The bus to connect to: a socket path (pidbus's native socket, or any
    /// D-Bus socket: pidbus's, dbus-daemon's, dbus-broker's) or a D-Bus
    /// address (unix:path=PATH, unix:abstract=NAME, several separated by
    /// ';', tried in order). Default: the session bus, as the SDK finds it:
    /// the first that answers of $PIDBUS_ADDRESS, pidbus's native session
    /// socket ($XDG_RUNTIME_DIR/pidbus.sock) if it exists,
    /// $DBUS_SESSION_BUS_ADDRESS, $XDG_RUNTIME_DIR/bus.
    #[arg(long, global = true, value_name = "PATH|ADDRESS", conflicts_with_all = ["system", "user"])]
    address: Option<String>,
    /// The system bus, as the SDK finds it: the first that answers of
    /// pidbus's native system socket (/run/pidbus/system.sock) if it
    /// exists, $DBUS_SYSTEM_BUS_ADDRESS, /run/dbus/system_bus_socket.
    #[arg(long, global = true, conflicts_with = "user")]
    system: bool,
    /// The session bus of this user (the default without --address; found
    /// in the order --address describes).
    #[arg(long, global = true)]
    user: bool,
    /// Print JSON instead of text: one document (or one object per line for
    /// streams such as listen and monitor); errors go to stderr as
    /// {"error": …, "exit_code": N}.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the identity the broker verified for this process (on
    /// another bus than pidbus: what GetConnectionCredentials says, marked
    /// as not verified).
    Whoami,
    /// List every connected peer with its verified identity (needs pidbus).
    Peers,
    /// List well-known names, their owners and queues.
    Names,
    /// List the names a call can start a service for (bus activation).
    Activatable,
    /// Start the service that provides NAME (bus activation) and wait until
    /// it owns the name; does nothing if the name is owned already.
    Start {
        /// The well-known name.
        name: String,
    },
    /// List names (well-known and unique) with their owner's pid, uid,
    /// executable and unit (on another bus than pidbus: pid and uid from
    /// GetConnectionCredentials, not verified; no executable or unit).
    List,
    /// Show the full verified identity of a name's owner or a unique id (on
    /// another bus than pidbus: what GetConnectionCredentials says, marked
    /// as not verified).
    Status {
        /// A well-known name or a unique id (:1.N).
        target: String,
    },
    /// Show an object's interfaces, methods, signals and properties (with
    /// their current values).
    Introspect {
        /// The service (unique id or well-known name).
        destination: String,
        /// The object path.
        path: String,
        /// Only this interface.
        interface: Option<String>,
        /// Print the introspection XML as the service returns it.
        #[arg(long)]
        xml: bool,
    },
    /// Show a service's object paths.
    Tree {
        /// The service (unique id or well-known name).
        destination: String,
    },
    /// Print properties' values (busctl style; --json: one object a line).
    GetProperty {
        /// The service.
        destination: String,
        /// The object path.
        path: String,
        /// The interface.
        interface: String,
        /// The properties.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set a property: SIGNATURE VALUE as busctl takes them.
    SetProperty {
        /// The service.
        destination: String,
        /// The object path.
        path: String,
        /// The interface.
        interface: String,
        /// The property.
        name: String,
        /// The value's signature, then the value.
        #[arg(required = true, allow_hyphen_values = true)]
        value: Vec<String>,
    },
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
    /// Call a method and print the reply as busctl does (`SIGNATURE
    /// VALUES…`; `--json`: the values as a JSON array).
    Call {
        /// Unique id (:N) or well-known name of the callee.
        destination: String,
        /// Object path, e.g. /org/example/App.
        path: String,
        /// Interface, e.g. org.example.App.
        interface: String,
        /// Method name.
        member: String,
        /// The arguments' D-Bus signature, then the arguments as busctl takes
        /// them (`su hello 3`; an array as its length then its elements).
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
        /// The arguments as JSON (an array, one element per argument),
        /// checked against the method's signature from the service's
        /// introspection.
        #[arg(long, value_name = "JSON", conflicts_with = "args")]
        args_json: Option<String>,
        /// Send the call and expect no reply (nothing is printed).
        #[arg(long)]
        no_reply: bool,
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
        /// The arguments' D-Bus signature, then the arguments as busctl takes them.
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
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
    /// Print the messages the broker delivers (as the policy's monitor
    /// action allows), one a line: calls with the caller's serial, replies
    /// and errors with the serial they answer (so a call and its answer
    /// pair), errors the broker itself gives, and every owner change.
    Monitor {
        /// Only messages from or to these names (well-known or unique).
        names: Vec<String>,
        /// Only messages a D-Bus match rule selects, e.g.
        /// "type='method_call',interface='org.example.A'"; repeatable (any
        /// one selects).
        #[arg(long = "match", value_name = "RULE")]
        rules: Vec<String>,
    },
    /// Get the pidfd of a peer's process and print what it says: pid in
    /// this pid namespace, pidfs id, running or how it ended (needs pidbus,
    /// or a bus whose GetConnectionCredentials gives a ProcessFD).
    Pidfd {
        /// Unique id (:N) or well-known name of the peer.
        target: String,
    },
    /// Wait until a peer's process exits (it need not be our child) and
    /// print how it ended (needs pidbus, or a bus whose
    /// GetConnectionCredentials gives a ProcessFD), or with --name until a
    /// name has an owner (any bus). Exit status 0 once it exited, 2 on
    /// timeout.
    Wait {
        /// Unique id (:1.N) or well-known name of the peer (whose process
        /// is waited for), or with --name the name that is waited for.
        target: String,
        /// Wait until TARGET, a well-known name, has an owner (print it),
        /// instead of waiting for a process to exit.
        #[arg(long)]
        name: bool,
        /// Give up after this many seconds (default: wait forever).
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Ask the broker whether this process may perform an application
    /// action (e.g. org.example.reboot). Exit status 0 if allowed, 1 if not
    /// (needs pidbus).
    Authorize {
        /// The action id.
        action: String,
    },
    /// Make the broker re-read its policy, like SIGHUP (root only). An
    /// invalid policy is refused with the reason; the old one stays.
    /// (org.freedesktop.DBus.ReloadConfig: dbus-daemon and dbus-broker
    /// re-read their configuration.)
    ReloadPolicy,
    /// Check a policy file or explain its decisions, offline (no broker needed).
    Policy {
        // Boxed: `explain` has many flags, and every command is as large
        // as the largest.
        #[command(subcommand)]
        command: Box<PolicyCommand>,
    },
    /// Candidates for shell completion from the live bus, one a line: the
    /// bus's names, a service's object paths, an object's interfaces, or
    /// an interface's members (used by the bash completion script).
    #[command(hide = true)]
    Complete {
        /// names | paths DEST | interfaces DEST PATH | members DEST PATH INTERFACE
        #[arg(num_args = 1..=4, required = true)]
        what: Vec<String>,
    },
    /// Print a shell completion script, e.g.
    /// `pidbusctl completions bash > /etc/bash_completion.d/pidbusctl`.
    /// The bash script completes live names, object paths, interfaces and
    /// members from the bus.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages of pidbusctl (section 1, one per subcommand) and
    /// pidbusd (section 8) into a directory, e.g. /usr/local/share/man.
    Man {
        /// The directory; the pages go to its man1/ and man8/.
        dir: PathBuf,
    },
}

/// Which policy `policy check` and `policy explain` read.
#[derive(Debug, clap::Args)]
pub struct PolicySourceArgs {
    /// The policy file (drop-ins in FILE.d/ included).
    #[arg(required_unless_present = "bus_policy")]
    pub file: Option<PathBuf>,
    /// Instead of FILE: the policy a bus without --policy has, `system` or
    /// `session`: built in, then the D-Bus XML policy of its dbus-1
    /// configuration, then the drop-ins.
    #[arg(long, value_name = "BUS", conflicts_with = "file")]
    pub bus_policy: Option<String>,
    /// Read the policy elements of this D-Bus bus configuration
    /// (dbus-daemon's XML) after the base, as `pidbusd --dbus-config` does;
    /// `none`: none.
    #[arg(long, value_name = "FILE")]
    pub dbus_config: Option<PathBuf>,
}

// Parsed once per run: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
/// The subcommands of `pidbusctl policy`.
pub enum PolicyCommand {
    /// Validate a policy file and its drop-ins (FILE.d/*.toml); errors name
    /// file:line:column. Exit status 0 if valid, 1 if not.
    Check {
        /// Which policy to read.
        #[command(flatten)]
        source: PolicySourceArgs,
    },
    /// Print which rule (or default) decides an action for a subject (an
    /// XML file's rule is named with its line).
    Explain {
        /// Which policy to read.
        #[command(flatten)]
        source: PolicySourceArgs,
        /// `call` and `receive`: the message is a `method_call` (the
        /// default) or a `signal`.
        #[arg(long, value_name = "TYPE", default_value = "method_call")]
        message: String,
        /// The action kind: connect, own, call, receive, pidfd, monitor or action.
        #[arg(long, value_name = "KIND")]
        action: String,
        /// The object's name: name to own, destination or sender name, or
        /// the application action id. Repeat for a peer owning several.
        #[arg(long, value_name = "NAME")]
        name: Vec<String>,
        /// The subject's uid (this or --as-user is required).
        #[arg(long, conflicts_with = "as_user", required_unless_present = "as_user")]
        uid: Option<u32>,
        /// The subject's user name (sets its uid and primary gid).
        #[arg(long, value_name = "NAME")]
        as_user: Option<String>,
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

/// The command line asks for something that cannot be (arguments that
/// do not fit their signature, an address of another kind): exit status 2,
/// like clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error with `message`.
pub fn usage(message: impl Into<String>) -> Box<dyn std::error::Error> {
    Box::new(Usage(message.into()))
}

/// `wait` gave up: exit status 2.
#[derive(Debug)]
struct TimedOut(String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(e.as_ref());
            if json {
                let mut error = json!({ "error": e.to_string(), "exit_code": code });
                if let Some(needs) = e.downcast_ref::<anybus::NeedsPidbus>() {
                    error["needs"] = json!("pidbus");
                    error["feature"] = json!(needs.feature);
                }
                eprintln!("{error}");
            } else {
                eprintln!("{} {e}", Style::stderr().bad("pidbusctl:"));
            }
            ExitCode::from(code)
        }
    }
}

/// 2 for a usage error (a name or path given that is not one, as the
/// README says) or a timeout (ours or the broker's), 1 for any other
/// error.
fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    let usage_or_timeout = e.downcast_ref::<TimedOut>().is_some()
        || e.downcast_ref::<Usage>().is_some()
        || matches!(
            e.downcast_ref::<pidbus::Error>(),
            Some(pidbus::Error::Timeout { .. } | pidbus::Error::InvalidName { .. })
        );
    if usage_or_timeout { 2 } else { 1 }
}

/// Any error, printed by `main` with its exit status.
pub type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn run(args: Args) -> AnyResult {
    match &args.command {
        Command::Policy { command } => return policy::policy_command(command, args.json),
        Command::Completions { shell } => {
            generate::completions(<Args as clap::CommandFactory>::command(), *shell);
            return Ok(());
        }
        Command::Man { dir } => {
            let written = generate::man_pages(<Args as clap::CommandFactory>::command(), dir)?;
            return report_written(&written, args.json);
        }
        _ => {}
    }
    let target = match &args.address {
        Some(address) => anybus::Target::Address(address),
        None if args.system => anybus::Target::System,
        None => anybus::Target::Session,
    };
    let bus = anybus::connect(target)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::Whoami if !anybus::is_pidbus(&bus) => {
            let me = anybus::credentials(&bus, &bus.unique_id().to_string())?;
            anybus::print_credentials(&mut out, &me, args.json)?;
        }
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
            anybus::require_pidbus(
                &bus,
                "peers",
                "every peer's identity as pidbus verified it by pidfd (ListPeers)",
                Some(
                    "`pidbusctl list` shows every name with the pid and uid the bus reports, \
                     `pidbusctl status NAME` one connection's",
                ),
            )?;
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
        Command::Activatable => {
            let names = bus.activatable_names()?;
            if args.json {
                writeln!(out, "{}", json!(names))?;
            } else {
                for name in names {
                    writeln!(out, "{name}")?;
                }
            }
        }
        Command::Start { name } => {
            let already_running = match bus.start_service(&name) {
                Ok(running) => running,
                // dbus-daemon and dbus-broker refuse to start a name no
                // .service file provides even if it is owned: it runs.
                Err(pidbus::Error::NoSuchName { .. }) if bus.name_owner(&name).is_ok() => true,
                Err(e) => return Err(e.into()),
            };
            if args.json {
                writeln!(
                    out,
                    "{}",
                    json!({ "name": name, "already_running": already_running })
                )?;
            } else if already_running {
                writeln!(out, "{name} was running already")?;
            } else {
                writeln!(out, "{name} started")?;
            }
        }
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
        Command::List => list(&bus, &mut out, args.json)?,
        Command::Complete { what } => {
            let words: Vec<&str> = what.iter().map(String::as_str).collect();
            for candidate in objects::candidates(&bus, &words).unwrap_or_default() {
                writeln!(out, "{candidate}")?;
            }
        }
        Command::Status { target } => status(&bus, &mut out, &target, args.json)?,
        Command::Introspect {
            destination,
            path,
            interface,
            xml,
        } => {
            if xml {
                write!(
                    out,
                    "{}",
                    objects::introspect_xml(&bus, &destination, &path)?
                )?;
            } else {
                let only = interface.as_deref();
                objects::introspect(&bus, &mut out, &destination, &path, only, args.json)?;
            }
        }
        Command::Tree { destination } => objects::tree(&bus, &mut out, &destination, args.json)?,
        Command::GetProperty {
            destination,
            path,
            interface,
            names,
        } => objects::get_property(
            &bus,
            &mut out,
            &destination,
            &path,
            &interface,
            &names,
            args.json,
        )?,
        Command::SetProperty {
            destination,
            path,
            interface,
            name,
            value,
        } => objects::set_property(&bus, &destination, &path, &interface, &name, &value)?,
        Command::Call {
            destination,
            path,
            interface,
            member,
            args: call_args,
            args_json,
            no_reply,
            timeout,
        } => {
            let (signature, body) = match &args_json {
                Some(text) => {
                    let json: Value = serde_json::from_str(text).map_err(|e| {
                        usage(format!("--args-json is not valid JSON ({e}): {text}"))
                    })?;
                    let signature =
                        objects::method_signature(&bus, &destination, &path, &interface, &member)?;
                    let values =
                        objects::json_args(&signature, &json).map_err(|e| usage(e.to_string()))?;
                    value::marshal(&values)?
                }
                None => parse_args(&call_args)?,
            };
            let mut call = MethodCall::new(&destination, &path, &interface, &member)?
                .body(&signature, body)?;
            if let Some(secs) = timeout {
                call = call.timeout(seconds(secs)?);
            }
            if no_reply {
                return Ok(bus.call_no_reply(call)?);
            }
            let reply = bus.call_method(call)?;
            if args.json {
                writeln!(out, "{}", body_json(&reply.signature, &reply.body))?;
            } else {
                writeln!(out, "{}", body_text(&reply.signature, &reply.body))?;
            }
        }
        Command::Pidfd { target } => {
            let pidfd = bus
                .pidfd(&target)
                .map_err(|e| anybus::explain(&bus, "pidfd", PROCESS_HANDLES, e))?;
            let view = ProcessView::new(&target, &pidfd, pidfd.pid()?, pidfd.state()?);
            view.print(&mut out, args.json)?;
        }
        Command::Wait {
            target,
            name: true,
            timeout,
        } => {
            let timeout = timeout.map(seconds).transpose()?;
            wait_for_name(&bus, &mut out, &target, timeout, args.json)?;
        }
        Command::Wait {
            target, timeout, ..
        } => {
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
            let (signature, bytes) = parse_args(&signal_args)?;
            let body = body_json(&signature, &bytes);
            bus.emit_body(
                dest.as_deref(),
                &path,
                &interface,
                &member,
                &signature,
                bytes,
            )?;
            // Silent in text, like other commands that only act.
            if args.json {
                let sent = json!({
                    "emitted": { "path": path, "interface": interface, "member": member,
                                 "destination": dest, "body": body },
                });
                writeln!(out, "{sent}")?;
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
                ..MatchRule::default()
            };
            for signal in bus.subscribe(rule)? {
                let destination = signal.destination.map(|d| d.to_string());
                if args.json {
                    let line = json!({
                        "sender": signal.sender.to_string(),
                        "destination": destination,
                        "path": signal.path,
                        "interface": signal.interface,
                        "member": signal.member,
                        "signature": signal.signature,
                        "body": body_json(&signal.signature, &signal.body),
                    });
                    writeln!(out, "{line}")?;
                } else {
                    let line = output::signal_text(
                        &signal.sender.to_string(),
                        destination.as_deref().unwrap_or("*"),
                        [&signal.path, &signal.interface, &signal.member],
                        &signal.signature,
                        &signal.body,
                    );
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
            }
            return Err("the connection to the bus was closed".into());
        }
        Command::Authorize { action } => {
            anybus::require_pidbus(
                &bus,
                "authorize",
                "authorization checks (pidbus's policy over verified identities)",
                None,
            )?;
            let answer = bus.authorize(&action)?;
            print_authorization(&mut out, &answer, args.json)?;
            if !answer.allowed {
                // Exit status 1, like any error.
                return Err(format!("{action} denied ({})", answer.rule).into());
            }
        }
        Command::ReloadPolicy => {
            bus.reload_policy()?;
            if args.json {
                writeln!(out, "{}", json!({ "reloaded": true }))?;
            } else {
                writeln!(out, "policy reloaded")?;
            }
        }
        Command::Policy { .. } | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before connecting")
        }
        Command::Monitor { names, rules } => {
            let rules = rules
                .iter()
                .map(|text| MatchRule::parse_dbus(text).map_err(|e| usage(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            // Names are resolved once, at start, to the peers they name.
            let ids = names
                .iter()
                .map(|name| match name.parse::<pidbus::PeerId>() {
                    Ok(id) => Ok(id),
                    Err(_) => bus.name_owner(name),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let copies = bus.monitor()?;
            // On stderr, as busctl does: the stream has begun (a script
            // waits for it before making the traffic it watches).
            eprintln!("Monitoring bus message stream.");
            for copy in copies {
                let involves =
                    |id: &pidbus::PeerId| copy.sender == Some(*id) || copy.destination == Some(*id);
                let selected = (ids.is_empty() || ids.iter().any(involves))
                    && (rules.is_empty() || rules.iter().any(|rule| rule.selects_copy(&copy)));
                if !selected {
                    continue;
                }
                if args.json {
                    let mut line = message_json(&copy.message);
                    line["sender"] = json!(copy.sender.map(|s| s.to_string()));
                    line["destination"] = json!(copy.destination.map(|d| d.to_string()));
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{}", output::message_text(&copy))?;
                }
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
/// `wait --name NAME`: returns once `name` has an owner, printing it.
fn wait_for_name(
    bus: &Connection,
    out: &mut impl Write,
    name: &str,
    timeout: Option<Duration>,
    as_json: bool,
) -> AnyResult {
    pidbus_protocol::names::validate_well_known_name(name)?;
    // Watching first, so an owner arriving while we ask is not missed.
    let mut events = bus.name_events()?;
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let owner = loop {
        if let Ok(owner) = bus.name_owner(name) {
            break owner;
        }
        let left = match deadline {
            Some(at) => at.saturating_duration_since(std::time::Instant::now()),
            None => Duration::from_secs(3600),
        };
        if left.is_zero() {
            return Err(Box::new(TimedOut(format!(
                "nobody owned {name} within the timeout"
            ))));
        }
        match events.next_timeout(left) {
            Some(BusEvent::NameOwnerChanged {
                name: changed,
                new_owner: Some(owner),
                ..
            }) if changed == name => break owner,
            Some(_) => {}
            None if deadline.is_some() => {}
            None => return Err("the connection to the bus was closed".into()),
        }
    };
    if as_json {
        writeln!(out, "{}", json!({"name": name, "owner": owner.to_string()}))?;
    } else {
        writeln!(out, "{name} is owned by {owner}")?;
    }
    Ok(())
}

/// What `pidfd` and `wait` need that only pidbus (or a bus with
/// `ProcessFD`) gives.
const PROCESS_HANDLES: &str = "a pidfd of a peer's process (or a bus whose \
                               GetConnectionCredentials gives a ProcessFD)";

fn wait(
    bus: &Connection,
    out: &mut impl Write,
    target: &str,
    timeout: Option<Duration>,
    as_json: bool,
) -> AnyResult {
    let pidfd = bus
        .pidfd(target)
        .map_err(|e| anybus::explain(bus, "wait", PROCESS_HANDLES, e))?;
    // Taken while the process runs: after the reap the kernel has no pid.
    let pid = pidfd.pid()?;
    // The broker reads the status too, which a client in another pid
    // namespace cannot (the kernel answers EREMOTE there). A process that
    // exited meanwhile is no longer on the bus: then the pidfd must do.
    // Another bus has no process watches: there the pidfd (its ProcessFD)
    // must do, as for a client in our own pid namespace it does.
    let watch = match bus.watch_process(target) {
        Ok(watch) => Some(watch),
        Err(pidbus::Error::NoSuchName { .. }) => None,
        Err(pidbus::Error::NotSupported { .. }) if !anybus::is_pidbus(bus) => None,
        Err(e) => return Err(e.into()),
    };
    // On stderr, so stdout stays the one result: tells a user (or a script)
    // the target was found and the wait has begun.
    if as_json {
        let waiting = json!({"waiting_for": target, "peer": pidfd.peer().map(|p| p.to_string()),
                             "pidfs_id": pidfd.pidfs_id()});
        eprintln!("{waiting}");
    } else {
        eprintln!(
            "pidbusctl: waiting for {target} (peer {}, pidfs id {}) to exit",
            or_dash(pidfd.peer()),
            or_dash(pidfd.pidfs_id())
        );
    }
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

/// `list`: every name with its owner's facts, well-known names first.
fn list(bus: &Connection, out: &mut impl Write, as_json: bool) -> AnyResult {
    if !anybus::is_pidbus(bus) {
        return list_credentials(bus, out, as_json);
    }
    let names = bus.names()?;
    let peers = bus.peers()?;
    let facts = |id: pidbus::PeerId| peers.iter().find(|p| p.id == id);
    let mut rows = Vec::new();
    let mut views = Vec::new();
    let entries = names
        .iter()
        .map(|n| (n.name.clone(), n.owner))
        .chain(peers.iter().map(|p| (p.id.to_string(), p.id)));
    for (name, owner) in entries {
        let peer = facts(owner);
        let identity = peer.map(|p| &p.identity);
        let pid = identity.map_or_else(|| "-".into(), |i| i.pid.to_string());
        let uid = identity.map_or_else(|| "-".into(), |i| i.uid.to_string());
        let exe = identity.and_then(|i| i.exe.clone());
        let unit = identity.and_then(|i| i.unit.clone().or_else(|| i.user_unit.clone()));
        rows.push(vec![
            name.clone(),
            owner.to_string(),
            pid,
            uid,
            or_dash(unit.clone()),
            or_dash(exe.clone()),
        ]);
        views.push(json!({
            "name": name,
            "owner": owner.to_string(),
            "pid": identity.map(|i| i.pid),
            "uid": identity.map(|i| i.uid),
            "unit": unit,
            "exe": exe,
            "verified": identity.is_some(),
        }));
    }
    if as_json {
        serde_json::to_writer_pretty(&mut *out, &views)?;
        writeln!(out)?;
        return Ok(());
    }
    print_table(out, &["NAME", "OWNER", "PID", "UID", "UNIT", "EXE"], &rows)?;
    Ok(())
}

/// `list` on another bus than pidbus: every name (`ListNames`) with the
/// pid and uid `GetConnectionCredentials` gives for its owner, not
/// verified by pidfd; executables and units are unknown there.
fn list_credentials(bus: &Connection, out: &mut impl Write, as_json: bool) -> AnyResult {
    let all = anybus::list_names(bus)?;
    let mut entries: Vec<(String, String)> = bus
        .names()?
        .into_iter()
        .map(|n| (n.name, n.owner.to_string()))
        .collect();
    let mut unique: Vec<String> = all.into_iter().filter(|n| n.starts_with(':')).collect();
    unique.sort_by_key(|id| {
        let serial = id.rsplit('.').next().and_then(|n| n.parse::<u64>().ok());
        (serial, id.clone())
    });
    entries.extend(unique.into_iter().map(|id| (id.clone(), id)));
    // Asked once per owner; a peer that left meanwhile is shown without facts.
    let mut facts: std::collections::HashMap<String, Option<anybus::Credentials>> =
        std::collections::HashMap::new();
    let mut rows = Vec::new();
    let mut views = Vec::new();
    for (name, owner) in entries {
        let credentials = facts
            .entry(owner.clone())
            .or_insert_with(|| anybus::credentials(bus, &owner).ok());
        let pid = credentials.as_ref().and_then(|c| c.pid);
        let uid = credentials.as_ref().and_then(|c| c.uid);
        rows.push(vec![
            name.clone(),
            owner.clone(),
            or_dash(pid),
            or_dash(uid),
            "-".to_owned(),
            "-".to_owned(),
        ]);
        views.push(json!({
            "name": name,
            "owner": owner,
            "pid": pid,
            "uid": uid,
            "unit": null,
            "exe": null,
            "verified": false,
        }));
    }
    if as_json {
        serde_json::to_writer_pretty(&mut *out, &views)?;
        writeln!(out)?;
        return Ok(());
    }
    print_table(out, &["NAME", "OWNER", "PID", "UID", "UNIT", "EXE"], &rows)?;
    // On stderr, so the table stays the one result.
    eprintln!(
        "pidbusctl: the bus at {} is not pidbus: PID and UID are what its \
         GetConnectionCredentials says, not verified by pidfd; UNIT and EXE need pidbus",
        bus.address().display()
    );
    Ok(())
}

/// `status TARGET`: the verified identity of a name's owner (on another
/// bus than pidbus: what `GetConnectionCredentials` says, marked so).
fn status(bus: &Connection, out: &mut impl Write, target: &str, as_json: bool) -> AnyResult {
    if !anybus::is_pidbus(bus) {
        let credentials = anybus::credentials(bus, target)?;
        return anybus::print_credentials(out, &credentials, as_json);
    }
    let id = match target.parse::<pidbus::PeerId>() {
        Ok(id) => id,
        Err(_) => bus.name_owner(target)?,
    };
    let peers = bus.peers()?;
    let peer = peers
        .iter()
        .find(|p| p.id == id)
        .ok_or_else(|| format!("no connection {id} is on the bus"))?;
    if as_json {
        serde_json::to_writer_pretty(&mut *out, &PeerView::from(peer))?;
        writeln!(out)?;
    } else {
        print_identity(out, peer)?;
    }
    Ok(())
}

/// The busctl-style arguments of `call` or `emit` (`SIGNATURE ARGS…`;
/// none: no arguments), marshalled.
fn parse_args(words: &[String]) -> AnyResult<(String, Vec<u8>)> {
    let Some((signature, values)) = words.split_first() else {
        return Ok((String::new(), Vec::new()));
    };
    let values = value::parse_args(signature, values)
        .map_err(|e| usage(format!("bad arguments for signature {signature:?}: {e}")))?;
    Ok(value::marshal(&values).map_err(|e| format!("cannot marshal the arguments: {e}"))?)
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

/// What `man` wrote.
fn report_written(files: &[PathBuf], as_json: bool) -> AnyResult {
    let mut out = std::io::stdout().lock();
    if as_json {
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        writeln!(out, "{}", json!({ "written": files }))?;
    } else {
        for file in files {
            writeln!(out, "{}", file.display())?;
        }
    }
    Ok(())
}
