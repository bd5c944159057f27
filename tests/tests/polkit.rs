//! The polkit authority (`org.freedesktop.PolicyKit1`) against Debian's
//! own polkit client, `pkcheck`, and a python3-dbus client, for callers
//! and subjects as root and as uid 65534: answers from the pidbus policy
//! and the verified identity, never from a PID alone.

use std::process::{Child, Command, Stdio};

use pidbus_tests::{Broker, PublicDir, can_run_privileged, has_tool, write_policy};

const POLICY: &str = r#"
[defaults]
connect = "allow"
own = "allow"
call = "allow"
receive = "allow"
action = "deny"

[[action]]
id = "org.pidbus.test.root-only"
default = "deny"
description = "Something only root may do"

[[action]]
id = "org.pidbus.test.everyone"
default = "allow"

[[rule]]
kind = "action"
name = "org.pidbus.test.root-only"
user = "root"
decision = "allow"
"#;

const ROOT_ONLY: &str = "org.pidbus.test.root-only";
const EVERYONE: &str = "org.pidbus.test.everyone";
const UNDECLARED: &str = "org.pidbus.test.undeclared";
const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

fn broker(dir: &PublicDir, extra: &[&str]) -> Broker {
    let policy = write_policy(dir, "policy.toml", POLICY);
    Broker::start_dbus(&[&["--policy", policy.as_str()][..], extra].concat())
}

/// Runs `program` (through `setpriv` as uid 65534 when `as_nobody`) with
/// the system bus pointed at the broker's D-Bus face.
fn run(broker: &Broker, as_nobody: bool, program: &str, args: &[&str]) -> (i32, String, String) {
    let mut command = if as_nobody {
        let mut command = Command::new("setpriv");
        command.args(NOBODY).arg(program);
        command
    } else {
        Command::new(program)
    };
    let out = command
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", broker.dbus_address())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pkcheck(broker: &Broker, as_nobody: bool, action: &str, pid: &str) -> (i32, String, String) {
    run(
        broker,
        as_nobody,
        "pkcheck",
        &["--action-id", action, "--process", pid],
    )
}

/// `pkcheck` as uid 65534 about its own process (the shell execs it, so
/// `$$` is pkcheck's pid).
fn pkcheck_self_as_nobody(broker: &Broker, action: &str) -> (i32, String, String) {
    let script = format!("exec pkcheck --action-id {action} --process $$");
    run(broker, true, "/bin/sh", &["-c", &script])
}

/// A process running as uid 65534, killed on drop.
struct NobodyProcess(Child);

impl NobodyProcess {
    /// Returns once the process runs as uid 65534 (it says so on its
    /// stdout after `setpriv` switched), so nothing sees `setpriv` as root.
    fn start() -> Self {
        use std::io::BufRead;
        let mut child = Command::new("setpriv")
            .args(NOBODY)
            .args(["/bin/sh", "-c", "echo switched; exec sleep 600"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a process as nobody");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read its first line");
        assert_eq!(line.trim(), "switched");
        NobodyProcess(child)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for NobodyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn needs(test: &str) -> bool {
    can_run_privileged(test)
        && has_tool(test, "pkcheck", "polkitd")
        && has_tool(test, "setpriv", "util-linux")
        && pidbus_tests::has_python_modules(test, "dbus, gi")
}

/// The python3-dbus client (tests/scripts/polkit_client.py): its JSON.
fn client(broker: &Broker, as_nobody: bool, args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/polkit_client.py");
    let address = broker.dbus_address();
    let all = [&[script, address.as_str()][..], args].concat();
    let (code, out, err) = run(broker, as_nobody, "/usr/bin/python3", &all);
    assert_eq!(code, 0, "polkit_client.py {args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn pkcheck_is_answered_as_the_policy_says_for_root_and_for_nobody() {
    if !needs("pkcheck") {
        return;
    }
    let dir = PublicDir::new("polkit");
    let broker = broker(&dir, &[]);
    let me = std::process::id().to_string();

    let (code, out, err) = pkcheck(&broker, false, ROOT_ONLY, &me);
    assert_eq!(code, 0, "root may: {out}{err}");
    assert!(
        !out.contains("pidbus"),
        "pkcheck prints no details nobody asked for: {out}"
    );
    // Asked for, the deciding rule is in the details (pkcheck escapes what
    // it prints: `.` as `\56`, a space as `\40`).
    let (code, out, err) = run(
        &broker,
        false,
        "pkcheck",
        &[
            "--action-id",
            ROOT_ONLY,
            "--process",
            &me,
            "--detail",
            "pidbus.explain",
            "1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("pidbus\\56rule=rule\\40at"),
        "the deciding rule is in the details: {out}"
    );
    assert_eq!(pkcheck(&broker, false, EVERYONE, &me).0, 0);
    let (code, out, _) = pkcheck(&broker, false, UNDECLARED, &me);
    assert_eq!(code, 1, "an undeclared action is denied: {out}");

    // Root asking about a process of uid 65534.
    let nobody = NobodyProcess::start();
    let (code, out, err) = pkcheck(&broker, false, ROOT_ONLY, &nobody.pid());
    assert_eq!(code, 1, "nobody may not: {out}{err}");
    assert_eq!(pkcheck(&broker, false, EVERYONE, &nobody.pid()).0, 0);

    // pkcheck running as uid 65534, about itself.
    let (code, out, err) = pkcheck_self_as_nobody(&broker, ROOT_ONLY);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("Not authorized") || out.contains("Not authorized"),
        "{out}{err}"
    );
    let (code, out, err) = pkcheck_self_as_nobody(&broker, EVERYONE);
    assert_eq!(code, 0, "{out}{err}");

    // Nobody may not ask about root's process (it would learn root's rights).
    let (code, _, err) = pkcheck(&broker, true, ROOT_ONLY, &me);
    assert_ne!(code, 0);
    assert!(
        err.contains("org.freedesktop.PolicyKit1.Error.NotAuthorized"),
        "{err}"
    );

    broker.wait_for_log("the weaker form");
    broker.wait_for_log("denied action: asked by");
}

#[test]
fn pidfd_subjects_are_decided_for_that_process_and_an_exited_one_is_denied() {
    if !needs("polkit pidfd subjects") {
        return;
    }
    let dir = PublicDir::new("polkit");
    let broker = broker(&dir, &[]);

    let live = client(&broker, false, &["pidfd-live", ROOT_ONLY]);
    assert_eq!(live["authorized"], true, "{live}");
    assert_eq!(live["challenge"], false, "{live}");
    assert_eq!(
        live["details"]["from.client"], "kept",
        "the caller's details come back: {live}"
    );
    let pid = live["pid"].to_string();
    assert!(
        live["details"]["pidbus.subject"]
            .as_str()
            .is_some_and(|s| s.contains(&pid)),
        "{live}"
    );

    let exited = client(&broker, false, &["pidfd-exited", EVERYONE]);
    assert_eq!(
        exited["authorized"], false,
        "an exited process is denied even what all may: {exited}"
    );
    assert!(
        exited["details"]["pidbus.rule"]
            .as_str()
            .is_some_and(|r| r.contains("exited")),
        "{exited}"
    );

    let as_nobody = client(&broker, true, &["pidfd-live", ROOT_ONLY]);
    assert_eq!(as_nobody["authorized"], false, "{as_nobody}");
    let as_nobody = client(&broker, true, &["pidfd-live", EVERYONE]);
    assert_eq!(as_nobody["authorized"], true, "{as_nobody}");
}

#[test]
fn a_bus_name_subject_is_answered_from_the_verified_identity() {
    if !needs("polkit bus-name subjects") {
        return;
    }
    let dir = PublicDir::new("polkit");
    let broker = broker(&dir, &[]);

    let root = client(&broker, false, &["bus-name", ROOT_ONLY]);
    assert_eq!(root["authorized"], true, "{root}");
    assert!(
        root["details"]["pidbus.subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("peer :")),
        "{root}"
    );
    let nobody = client(&broker, true, &["bus-name", ROOT_ONLY]);
    assert_eq!(nobody["authorized"], false, "{nobody}");
    assert!(
        nobody["details"]["pidbus.rule"]
            .as_str()
            .is_some_and(|r| r.contains("policy.toml")),
        "{nobody}"
    );

    let actions = client(&broker, false, &["enumerate"]);
    let ids: Vec<&str> = actions["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, [ROOT_ONLY, EVERYONE]);
    assert_eq!(
        actions["actions"][0]["implicit_active"], 0,
        "deny by default: NotAuthorized"
    );
    assert_eq!(
        actions["actions"][1]["implicit_active"], 5,
        "allow by default: Authorized"
    );

    let properties = client(&broker, false, &["properties"]);
    assert_eq!(properties["BackendName"], "pidbus");
    assert_eq!(
        properties["BackendFeatures"], 0,
        "no interactive authentication: {properties}"
    );
}

/// `RequestName(org.freedesktop.PolicyKit1, DO_NOT_QUEUE)` through gdbus.
fn request_authority_name(broker: &Broker) -> (i32, String, String) {
    let request =
        pidbus_tests::gdbus_request_name(&broker.dbus_address(), "org.freedesktop.PolicyKit1");
    let request: Vec<&str> = request.iter().map(String::as_str).collect();
    run(broker, false, "gdbus", &request)
}

#[test]
fn nobody_can_own_the_authority_name_unless_the_bus_leaves_it_to_polkitd() {
    if !needs("polkit name") {
        return;
    }
    let dir = PublicDir::new("polkit");
    let broker = broker(&dir, &[]);
    // The bus answers for the name as for itself.
    let owner = [
        "call",
        "--address",
        &broker.dbus_address(),
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
        "--method",
        "org.freedesktop.DBus.GetConnectionUnixProcessID",
        "org.freedesktop.PolicyKit1",
    ];
    let (code, out, err) = run(&broker, false, "gdbus", &owner);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("(uint32 {},)", broker.pid()),
        "the broker's own pid"
    );
    let (code, _, err) = request_authority_name(&broker);
    assert_ne!(code, 0);
    assert!(
        err.contains("AccessDenied") && err.contains("--no-polkit-authority"),
        "{err}"
    );
    drop(broker);

    let broker = self::broker(&dir, &["--no-polkit-authority"]);
    let (code, out, err) = request_authority_name(&broker);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("uint32 1"), "the primary owner: {out}");
    let (code, _, err) = pkcheck(&broker, false, EVERYONE, &std::process::id().to_string());
    assert_ne!(code, 0, "no authority on this bus");
    assert!(
        err.contains("ServiceUnknown") || err.contains("NameHasNoOwner") || err.contains("Error"),
        "{err}"
    );
}

#[test]
fn a_policy_reload_tells_polkit_clients_the_answers_changed() {
    if !needs("polkit Changed") {
        return;
    }
    let dir = PublicDir::new("polkit");
    let broker = broker(&dir, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/polkit_client.py");
    let address = broker.dbus_address();
    let args: Vec<&std::ffi::OsStr> = [script, address.as_str(), "changed"]
        .into_iter()
        .map(|a| a.as_ref())
        .collect();
    let mut listener = pidbus_tests::HeldPeer::start_mode(&[], "/usr/bin/python3".as_ref(), &args);
    assert_eq!(listener.report["subscribed"], true);
    broker.signal(rustix::process::Signal::HUP);
    assert_eq!(
        listener.next_line()["changed"],
        true,
        "polkit's Changed after the reload"
    );
    listener.finish();
}

#[test]
fn the_authority_decides_as_pidbusctl_authorize_does() {
    if !needs("polkit and pidbusctl") {
        return;
    }
    let dir = PublicDir::new("polkit");
    let broker = broker(&dir, &[]);
    for action in [ROOT_ONLY, EVERYONE, UNDECLARED] {
        let args = ["--json", "authorize", action];
        for as_nobody in [false, true] {
            let (_, out, err) = if as_nobody {
                pidbus_tests::pidbusctl_as_nobody(&broker, &args)
            } else {
                pidbus_tests::pidbusctl(broker.socket(), &args)
            };
            let native: serde_json::Value =
                serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
            let polkit = client(&broker, as_nobody, &["bus-name", action]);
            assert_eq!(
                polkit["authorized"], native["allowed"],
                "{action}, nobody: {as_nobody}"
            );
            assert_eq!(
                polkit["details"]["pidbus.rule"], native["rule"],
                "{action}, nobody: {as_nobody}"
            );
        }
    }
}

/// Field 22 of /proc/PID/stat: the start time polkit's subjects carry.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm") + 1..];
    after
        .split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("a number")
}

#[test]
fn an_unprivileged_asker_learns_nothing_of_roots_processes_and_forged_subjects_fail_closed() {
    if !needs("polkit attacks") {
        return;
    }
    let dir = PublicDir::new("polkit");
    let broker = broker(&dir, &[]);
    let fds_before = broker.fd_count();
    let me = std::process::id();

    // uid 65534 asks about a root process by pidfd: refused, not answered.
    let asked = client(&broker, true, &["pidfd-of", &me.to_string(), ROOT_ONLY]);
    assert_eq!(
        asked["error"], "org.freedesktop.PolicyKit1.Error.NotAuthorized",
        "{asked}"
    );

    // A pipe passed as the subject's pidfd is no process at all.
    for as_nobody in [false, true] {
        let forged = client(&broker, as_nobody, &["fake-pidfd", EVERYONE]);
        assert_eq!(
            forged["error"], "org.freedesktop.DBus.Error.InvalidArgs",
            "{forged}"
        );
    }

    // A pid with another process's start time (as after a pid reuse): the
    // live root process is not taken for the one meant, even by root.
    let wrong = (start_time(me) + 1).to_string();
    let reused = client(
        &broker,
        false,
        &["pid-start", &me.to_string(), &wrong, ROOT_ONLY],
    );
    assert_eq!(reused["authorized"], false, "{reused}");
    assert!(
        reused["details"]["pidbus.rule"]
            .as_str()
            .is_some_and(|r| r.contains("not the one meant")),
        "{reused}"
    );
    let right = start_time(me).to_string();
    let meant = client(
        &broker,
        false,
        &["pid-start", &me.to_string(), &right, ROOT_ONLY],
    );
    assert_eq!(
        meant["authorized"], true,
        "the right start time is the process: {meant}"
    );

    // By pid and start time, uid 65534 learns nothing of root's process,
    // not even that it exists: a wrong start time, the right one and a pid
    // that names no process get one and the same refusal, which names no
    // start time.
    let free_pid = (2..32768u32)
        .rev()
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid");
    let refusals: Vec<serde_json::Value> = [
        (me.to_string(), wrong.clone()),
        (me.to_string(), right.clone()),
        (free_pid.to_string(), "1".to_owned()),
    ]
    .iter()
    .map(|(pid, start)| client(&broker, true, &["pid-start", pid, start, ROOT_ONLY]))
    .collect();
    for refusal in &refusals {
        assert_eq!(
            refusal["error"], "org.freedesktop.PolicyKit1.Error.NotAuthorized",
            "{refusal}"
        );
        assert_eq!(refusal["message"], refusals[0]["message"], "{refusals:?}");
        let text = refusal.to_string();
        assert!(
            !text.contains(&right) && !text.contains("started at"),
            "{text}"
        );
    }

    // Nothing the attempts passed stays open in the broker, and it serves on.
    broker.wait_for_fd_count(fds_before);
    let served = client(&broker, false, &["bus-name", ROOT_ONLY]);
    assert_eq!(served["authorized"], true, "{served}");
}

/// The normal way to add an action: a drop-in beside the built-in system
/// policy (`--policy-dir`, as a package's file in /usr/share/pidbus/system.d
/// would be), which keeps every built-in rule.
#[test]
fn a_drop_in_adds_an_action_to_the_built_in_system_policy() {
    if !needs("a_drop_in_adds_an_action_to_the_built_in_system_policy") {
        return;
    }
    const DROP_IN_ACTION: &str = "org.pidbus.test.drop-in";
    let dir = PublicDir::new("policy-drop-in");
    let drop_ins = dir.path().join("system.d");
    std::fs::create_dir_all(&drop_ins).unwrap();
    std::fs::write(
        drop_ins.join("50-test.toml"),
        format!(
            "[[action]]\nid = \"{DROP_IN_ACTION}\"\ndefault = \"deny\"\n\n\
             [[rule]]\nkind = \"action\"\nname = \"{DROP_IN_ACTION}\"\nuser = \"root\"\n\
             decision = \"allow\"\n"
        ),
    )
    .unwrap();
    let me = std::process::id().to_string();

    let without = Broker::start_dbus(&["--system"]);
    let (code, out, _) = pkcheck(&without, false, DROP_IN_ACTION, &me);
    assert_eq!(code, 1, "undeclared without the drop-in: {out}");
    drop(without);

    let drop_ins = drop_ins.display().to_string();
    let broker = Broker::start_dbus(&["--system", "--policy-dir", &drop_ins]);
    broker.wait_for_log_all(&[
        "policy loaded",
        "built-in system policy",
        "drop-ins from",
        &drop_ins,
    ]);
    let (code, out, err) = pkcheck(&broker, false, DROP_IN_ACTION, &me);
    assert_eq!(code, 0, "root may, by the drop-in's rule: {out}{err}");
    let (code, out, err) = pkcheck_self_as_nobody(&broker, DROP_IN_ACTION);
    assert_eq!(code, 1, "nobody may not, by its default: {out}{err}");
    // The built-in policy still holds: nobody may not monitor the bus.
    let (code, _, err) = run(
        &broker,
        true,
        "busctl",
        &[
            "--address",
            &broker.dbus_address(),
            "monitor",
            "--timeout=1",
        ],
    );
    assert_ne!(code, 0, "nobody monitored the system bus: {err}");
}
