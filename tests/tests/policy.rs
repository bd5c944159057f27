//! The policy engine against the real broker and real processes under
//! other uids and groups (`setpriv`), and a copied binary at another exe
//! path: every subject matcher, precedence, connect refusal, reload.

use std::path::Path;
use std::process::Command;

use pidbus_tests::{
    HeldPeer, PublicDir, can_run_privileged, cgroup2_mount, pidbusctl, start_with_policy,
    write_policy,
};

/// A group no test user has unless `setpriv --groups` gives it.
const GROUP: u32 = 4242;

/// `pidbusctl --address SOCKET ARGS…` as uid/gid 65534 with `groups`,
/// running the binary at `ctl`.
fn pidbusctl_as(ctl: &Path, socket: &Path, groups: &[u32], args: &[&str]) -> (i32, String) {
    run_as_nobody(None, ctl, socket, groups, args)
}

/// Runs `ctl --address SOCKET ARGS…` as uid/gid 65534 with `groups`; with
/// `cgroup`, the process first moves itself into that cgroup directory.
fn run_as_nobody(
    cgroup: Option<&Path>,
    ctl: &Path,
    socket: &Path,
    groups: &[u32],
    args: &[&str],
) -> (i32, String) {
    let groups = if groups.is_empty() {
        vec!["--clear-groups".to_owned()]
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        vec!["--groups".to_owned(), list.join(",")]
    };
    let mut command = match cgroup {
        // The shell joins the cgroup, then becomes setpriv: the peer that
        // connects is that same process, now in the cgroup.
        Some(dir) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(r#"echo $$ > "$0/cgroup.procs" && exec setpriv "$@""#)
                .arg(dir);
            sh
        }
        None => Command::new("setpriv"),
    };
    let out = command
        .args(["--reuid", "65534", "--regid", "65534"])
        .args(&groups)
        .arg(ctl)
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// This process's LSM label, which its children inherit; `None` when the
/// kernel runs no LSM that labels processes.
fn own_label() -> Option<String> {
    let label = std::fs::read_to_string("/proc/self/attr/current").ok()?;
    let label = label.trim_end_matches(['\n', '\0']);
    (!label.is_empty()).then(|| label.to_owned())
}

/// A cgroup v2 directory named like a systemd unit, removed on drop, so a
/// process moved into it runs "in" that unit as the broker derives units.
struct UnitCgroup {
    dir: std::path::PathBuf,
    unit: String,
}

impl UnitCgroup {
    /// The cgroup path as `/proc/PID/cgroup` shows it for a process inside.
    fn cgroup(&self) -> String {
        format!("{}/{}", own_cgroup().trim_end_matches('/'), self.unit)
    }

    fn create() -> Self {
        let unit = format!("pidbus-test-{}.service", std::process::id());
        let mount = cgroup2_mount();
        let dir = mount.join(own_cgroup().trim_start_matches('/')).join(&unit);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self { dir, unit }
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        // Empty once its processes exited, which `output()` waited for.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// This test process's cgroup (what its children inherit).
fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_owned()
}

/// Defaults that let everyone use the bus and deny application actions.
const OPEN_BUS: &str = r#"
[defaults]
connect = "allow"
own = "allow"
call = "allow"
receive = "allow"
action = "deny"
"#;

const ACTIONS: &str = r#"

[[action]]
id = "org.test.byuser"
default = "deny"
[[action]]
id = "org.test.bygroup"
default = "deny"
[[action]]
id = "org.test.byexe"
default = "deny"
[[action]]
id = "org.test.bycgroup"
default = "deny"
[[action]]
id = "org.test.byunit"
default = "deny"
[[action]]
id = "org.test.bylabel"
default = "deny"
[[action]]
id = "org.test.precedence"
default = "deny"
[[action]]
id = "org.test.open"
default = "allow"

[[rule]]
kind = "action"
name = "org.test.byuser"
user = "nobody"
decision = "allow"

[[rule]]
kind = "action"
name = "org.test.bygroup"
group = 4242
decision = "allow"

[[rule]]
kind = "action"
name = "org.test.byexe"
exe = "EXE"
decision = "allow"

[[rule]]
kind = "action"
name = "org.test.bycgroup"
cgroup = "CGROUP"
decision = "allow"

[[rule]]
kind = "action"
name = "org.test.bylabel"
label = "LABEL"
decision = "allow"

[[rule]]
kind = "action"
name = "org.test.byunit"
unit = "UNIT"
decision = "allow"

[[rule]]
kind = "action"
name = "org.test.precedence"
user = 65534
decision = "allow"

# Later, so it wins for members of the group.
[[rule]]
kind = "action"
name = "org.test.precedence"
group = 4242
decision = "deny"
"#;

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn each_subject_matcher_allows_and_denies_as_written_and_the_last_rule_wins() {
    if !can_run_privileged(
        "each_subject_matcher_allows_and_denies_as_written_and_the_last_rule_wins",
    ) {
        return;
    }
    let dir = PublicDir::new("policy");
    // Two copies of pidbusctl: the rule names the first one's path only.
    let allowed_exe = dir.public_binary("pidbusctl");
    let other_dir = PublicDir::new("policy-other");
    let other_exe = other_dir.public_binary("pidbusctl");
    let unit = UnitCgroup::create();
    let text = format!("{OPEN_BUS}{ACTIONS}")
        .replace("UNIT", &unit.unit)
        .replace("LABEL", own_label().as_deref().unwrap_or("unconfined"))
        .replace("EXE", &allowed_exe.display().to_string())
        .replace("CGROUP", &unit.cgroup());
    let (policy, broker) = start_with_policy(&dir, &text);
    let ask = |exe: &Path, groups: &[u32], action: &str| {
        pidbusctl_as(exe, broker.socket(), groups, &["authorize", action]).0
    };
    // user (by name: nobody is 65534)
    assert_eq!(ask(&other_exe, &[], "org.test.byuser"), 0);
    // group: supplementary membership counts
    assert_eq!(ask(&other_exe, &[GROUP], "org.test.bygroup"), 0);
    assert_eq!(ask(&other_exe, &[], "org.test.bygroup"), 1);
    // exe: the copy at the named path only
    assert_eq!(ask(&allowed_exe, &[], "org.test.byexe"), 0);
    assert_eq!(ask(&other_exe, &[], "org.test.byexe"), 1);
    // unit: derived from the cgroup path, so a process in the unit's cgroup
    let in_unit = |action: &str| {
        run_as_nobody(
            Some(&unit.dir),
            &other_exe,
            broker.socket(),
            &[],
            &["authorize", action],
        )
        .0
    };
    assert_eq!(in_unit("org.test.byunit"), 0);
    assert_eq!(ask(&other_exe, &[], "org.test.byunit"), 1);
    // cgroup: the prefix covers the unit's cgroup, not the test's own
    assert_eq!(in_unit("org.test.bycgroup"), 0);
    assert_eq!(ask(&other_exe, &[], "org.test.bycgroup"), 1);
    // label: only with an LSM can a peer carry one; without, the rule
    // must not match an unlabelled peer.
    match own_label() {
        Some(_) => assert_eq!(ask(&other_exe, &[], "org.test.bylabel"), 0),
        None => {
            eprintln!("no LSM on this kernel: the label rule is checked to deny only");
            assert_eq!(ask(&other_exe, &[], "org.test.bylabel"), 1);
        }
    }
    // precedence: the later deny beats the earlier allow for group members
    assert_eq!(ask(&other_exe, &[], "org.test.precedence"), 0);
    assert_eq!(ask(&other_exe, &[GROUP], "org.test.precedence"), 1);
    // an action's own default
    assert_eq!(ask(&other_exe, &[], "org.test.open"), 0);
    // undeclared actions fall to [defaults] action = deny
    assert_eq!(ask(&other_exe, &[], "org.test.undeclared"), 1);

    let denial = broker.wait_for_log("denied action");
    assert!(denial.contains("uid=65534"), "{denial}");
    assert!(denial.contains("rule="), "{denial}");
    let precedence = broker.last_log_line("name=org.test.precedence");
    assert!(
        precedence.contains(&format!("{policy}:")),
        "the log names the deciding rule's file:line: {precedence}"
    );
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn the_policy_refuses_connections_and_names_and_says_which_rule() {
    if !can_run_privileged("the_policy_refuses_connections_and_names_and_says_which_rule") {
        return;
    }
    let dir = PublicDir::new("policy-connect");
    let ctl = dir.public_binary("pidbusctl");
    let (policy, broker) = start_with_policy(
        &dir,
        r#"
[defaults]
connect = "allow"
own = "deny"
call = "allow"
receive = "allow"

[[rule]]
kind = "connect"
group = 4242
decision = "deny"

[[rule]]
kind = "own"
name = "org.test.*"
user = 65534
decision = "allow"
"#,
    );
    let (code, text) = pidbusctl_as(&ctl, broker.socket(), &[GROUP], &["whoami"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("denied by the bus policy"), "{text}");
    let (code, text) = pidbusctl_as(&ctl, broker.socket(), &[], &["whoami"]);
    assert_eq!(code, 0, "{text}");
    let log = broker.wait_for_log("denied connect");
    assert!(log.contains(&format!("{policy}:8")), "{log}");

    // Root owns nothing here; uid 65534 may own below org.test.
    let (code, _, stderr) = pidbusctl(broker.socket(), &["own", "org.test.Name"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("access denied"), "{stderr}");
    assert!(broker.wait_for_log("denied own").contains("uid=0"));
}

#[test]
fn sighup_with_a_broken_file_keeps_the_old_policy_and_a_good_one_takes_over() {
    let dir = PublicDir::new("policy-reload");
    let allow = r#"
[defaults]
connect = "allow"
action = "deny"
[[action]]
id = "org.test.thing"
default = "allow"
"#;
    let (policy, broker) = start_with_policy(&dir, allow);
    let authorize = || pidbusctl(broker.socket(), &["authorize", "org.test.thing"]).0;
    assert_eq!(authorize(), 0);

    std::fs::write(&policy, "[[rule]]\nkind = \"own\"\nbogus = true\n").unwrap();
    broker.signal(rustix::process::Signal::HUP);
    let refused = broker.wait_for_log("policy reload refused");
    assert!(refused.contains("policy.toml:3:1"), "{refused}");
    assert_eq!(authorize(), 0, "the old policy stays in force");

    // The same through the broker request, which only root may send.
    let (code, _, stderr) = pidbusctl(broker.socket(), &["reload-policy"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("policy.toml:3:1"), "{stderr}");

    std::fs::write(
        &policy,
        allow.replace("default = \"allow\"", "default = \"deny\""),
    )
    .unwrap();
    let (code, _, stderr) = pidbusctl(broker.socket(), &["reload-policy"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(authorize(), 1, "the new policy denies");
}

#[test]
fn policy_check_names_file_line_and_column() {
    let dir = PublicDir::new("policy-check");
    let bad = write_policy(
        &dir,
        "bad.toml",
        "[[rule]]\nkind = \"own\"\nname = \"org.*.x\"\ndecision = \"allow\"\n\n\
         [[rule]]\nkind = \"fly\"\ndecision = \"allow\"\n",
    );
    let out = Command::new(pidbus_tests::binary("pidbusctl"))
        .args(["policy", "check", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{bad}:3:8: bad glob")), "{stderr}");
    // Not only the first error.
    assert!(stderr.contains(&format!("{bad}:7:")), "{stderr}");
    assert!(stderr.contains("2 errors"), "{stderr}");

    let out = Command::new(pidbus_tests::binary("pidbusctl"))
        .args([
            "policy",
            "explain",
            "../examples/policy/system.toml",
            "--action",
            "own",
        ])
        .args(["--name", "org.example.X", "--as-user", "nobody"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("deny (default at ../examples/policy/system.toml:8)"),
        "{stdout}"
    );
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_services_authorize_follows_its_caller_even_one_that_handed_its_socket_on_and_exited() {
    if !can_run_privileged(
        "a_services_authorize_follows_its_caller_even_one_that_handed_its_socket_on_and_exited",
    ) {
        return;
    }
    let dir = PublicDir::new("policy-service");
    let ctl = dir.public_binary("pidbusctl");
    let (_policy, broker) = start_with_policy(
        &dir,
        &format!(
            r#"{OPEN_BUS}
[[action]]
id = "org.test.reboot"
default = "deny"
[[rule]]
kind = "action"
name = "org.test.reboot"
user = "root"
decision = "allow"
"#
        ),
    );
    let name = "org.pidbus.Test.Authz";
    let go = dir.path().join("go");
    let peer = pidbus_tests::binary("pidbus-test-peer");
    let mut service = HeldPeer::start_mode(
        &[],
        &peer,
        &[
            "serve-authorize".as_ref(),
            broker.socket().as_os_str(),
            name.as_ref(),
            "org.test.reboot".as_ref(),
            go.as_os_str(),
        ],
    );
    let check = [
        "--json",
        "call",
        name,
        "/org/pidbus/Test",
        "org.pidbus.Test",
        "Check",
    ];
    // Root is allowed, uid 65534 is not: the answer follows the caller.
    let (code, stdout, stderr) = pidbusctl(broker.socket(), &check);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reported(&stdout)["allowed"], true);
    assert_eq!(service.next_line()["allowed"], true);
    let (code, text) = pidbusctl_as(&ctl, broker.socket(), &[], &check);
    assert_eq!(code, 0, "{text}");
    let answer = service.next_line();
    assert_eq!(
        (answer["caller_uid"].as_u64(), &answer["allowed"]),
        (Some(65534), &serde_json::json!(false))
    );

    // A root caller calls, hands its socket to a child and exits before the
    // service asks: the child holds the socket, but the caller is gone.
    let orphaner = HeldPeer::start_mode(
        &[],
        &peer,
        &[
            "call-then-orphan".as_ref(),
            broker.socket().as_os_str(),
            name.as_ref(),
        ],
    );
    let sleeper = orphaner.report["sleeper"].as_u64().unwrap();
    broker.wait_for_log("peer process exited; connection closed");
    std::fs::write(&go, "").unwrap();
    let answer = service.next_line();
    assert_eq!(answer["member"], "CheckAfterGo");
    assert_eq!(answer["allowed"], false, "{answer}");
    assert!(
        answer["rule"].as_str().unwrap().contains("not on the bus"),
        "{answer}"
    );
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(sleeper as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    orphaner.finish();
}

#[test]
fn a_reload_takes_names_from_owners_the_new_policy_forbids() {
    let dir = PublicDir::new("policy-reload-names");
    let (policy, broker) = start_with_policy(&dir, OPEN_BUS);
    let name = "org.pidbus.Test.Forbidden";
    let owner = HeldPeer::start_mode(
        &[],
        &pidbus_tests::binary("pidbus-test-peer"),
        &[
            "serve-silently".as_ref(),
            broker.socket().as_os_str(),
            name.as_ref(),
        ],
    );
    let names = || pidbusctl(broker.socket(), &["--json", "names"]).1;
    assert!(names().contains(name));

    let forbid = format!(
        "{OPEN_BUS}\n[[rule]]\nkind = \"own\"\nname = \"org.pidbus.Test.*\"\ndecision = \"deny\"\n"
    );
    std::fs::write(&policy, forbid).unwrap();
    let (code, _, stderr) = pidbusctl(broker.socket(), &["reload-policy"]);
    assert_eq!(code, 0, "{stderr}");
    let log = broker.wait_for_log("name released on reload");
    assert!(log.contains(name), "{log}");
    assert!(!names().contains(name), "{}", names());
    owner.kill();
}

#[test]
fn call_receive_and_monitor_rules_are_enforced_on_the_wire() {
    let dir = PublicDir::new("policy-wire");
    let (_policy, broker) = start_with_policy(
        &dir,
        &format!(
            r#"{OPEN_BUS}
monitor = "allow"
[[rule]]
kind = "call"
member = "Forbidden"
decision = "deny"
[[rule]]
kind = "receive"
interface = "org.pidbus.Test"
member = "Secret"
decision = "deny"
[[rule]]
kind = "monitor"
user = "root"
decision = "deny"
"#
        ),
    );
    let name = "org.pidbus.Test.Wire";
    let go = dir.path().join("go");
    let _service = HeldPeer::start_mode(
        &[],
        &pidbus_tests::binary("pidbus-test-peer"),
        &[
            "serve-authorize".as_ref(),
            broker.socket().as_os_str(),
            name.as_ref(),
            "org.test.none".as_ref(),
            go.as_os_str(),
        ],
    );
    let call = |member: &str| {
        pidbusctl(
            broker.socket(),
            &["call", name, "/org/pidbus/Test", "org.pidbus.Test", member],
        )
    };
    let (code, _, stderr) = call("Check");
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = call("Forbidden");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("sending: denied by the bus policy"),
        "{stderr}"
    );
    let (code, _, stderr) = call("Secret");
    assert_eq!(code, 1);
    assert!(stderr.contains("may not receive it"), "{stderr}");
    broker.wait_for_log_all(&["denied receive", "member=Secret", "rule="]);
    broker.wait_for_log_all(&["denied call", "member=Forbidden"]);
    let (code, _, stderr) = pidbusctl(broker.socket(), &["monitor"]);
    assert_eq!(code, 1, "{stderr}");
    broker.wait_for_log("denied monitor");
}

/// The JSON report a `serve-authorize` peer returns, as one string
/// argument, from `pidbusctl --json call`'s output.
fn reported(stdout: &str) -> serde_json::Value {
    let reply: serde_json::Value = serde_json::from_str(stdout).unwrap();
    serde_json::from_str(reply[0].as_str().unwrap()).unwrap()
}
