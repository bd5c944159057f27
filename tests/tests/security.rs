//! The security suite: every way a process might get the broker to
//! attribute something to the wrong process, each asserting it does not.
//!
//! - a socket handed over with SCM_RIGHTS, or inherited by a child that
//!   outlives its parent: the message is not routed, the sender is told,
//!   the broker logs both sides;
//! - PID reuse in a fresh pid namespace: the reused PID gets nothing;
//! - a peer that execs a setuid binary after connecting keeps the uid it
//!   connected with;
//! - a peer dead (reaped or zombie) before the broker accepts it is served
//!   for what it sent, with no `/proc` fact claimed, and rules on those
//!   facts fail closed;
//! - a client in a foreign pid namespace is reported with its pid in ours;
//! - a bind mount over a trusted path, an exec after connecting, a cgroup
//!   named like a system unit in a user's subtree: none passes the rule
//!   for what it imitates;
//! - a peer that administers its own pid namespace (and can forge sender
//!   credentials) is marked so, and a policy refuses it.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use pidbus_protocol::dbus::errors::SENDER_MISMATCH;
use pidbus_protocol::dbus::value::Value as DbusValue;
use pidbus_protocol::transport::SeqPacket;
use pidbus_tests::raw::{BUS1, RawPeer};
use pidbus_tests::{
    AS_NOBODY, Broker, HeldPeer, PublicDir, binary, can_run_privileged, eventually, pidbusctl,
    raw_handshaken, start_with_policy,
};
use rustix::process::Signal;
use serde_json::Value;

/// Passes `bus` to a new `pidbus-test-peer use-passed-socket` over
/// SCM_RIGHTS; returns the child's pid and its JSON report.
async fn hand_over(bus: &RawPeer) -> (u32, Value) {
    let (ours, theirs) = SeqPacket::pair().unwrap();
    let child = Command::new(binary("pidbus-test-peer"))
        .arg("use-passed-socket")
        .stdin(Stdio::from(theirs.as_fd().try_clone_to_owned().unwrap()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    ours.send(b"here", &[bus.socket().as_fd()]).await.unwrap();
    let pid = child.id();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    (pid, serde_json::from_slice(&out.stdout).unwrap())
}

/// Whether `bus` is still served: it lists the peers.
async fn is_served(bus: &RawPeer) -> bool {
    let answer = bus
        .call_driver(BUS1, "ListPeers", &[DbusValue::string("")])
        .await;
    answer.is_ok_and(|answer| answer.error_name().is_none())
}

#[tokio::test]
async fn a_socket_handed_over_with_scm_rights_cannot_speak_for_its_opener() {
    let broker = Broker::start();
    let bus = raw_handshaken(broker.socket()).await;
    let (child_pid, report) = hand_over(&bus).await;
    assert_eq!(report["outcome"], "error", "{report}");
    assert_eq!(report["error"], SENDER_MISMATCH);
    assert_eq!(
        report["reply_to"], report["serial"],
        "the refused request is named"
    );
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {child_pid}")),
        "{report}"
    );
    // Both identities are logged: the connection's (us) and the real sender.
    broker.wait_for_log_all(&[
        "not routed",
        &format!("pid={} ", std::process::id()),
        &format!("sender=pid {child_pid} "),
    ]);
    // Default mode: the opener keeps its connection and is served.
    assert!(is_served(&bus).await);
}

#[tokio::test]
async fn strict_mode_disconnects_a_handed_over_connection() {
    let broker = Broker::start_with(&["--sender-check", "strict"]);
    let bus = raw_handshaken(broker.socket()).await;
    let (_, report) = hand_over(&bus).await;
    assert_eq!(report["outcome"], "disconnected", "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("sent by another process"),
        "{report}"
    );
    // The connection is gone for its opener too: after what it had
    // already been sent (its NameAcquired may share the Hello reply's
    // record), the end.
    tokio::time::timeout(pidbus_tests::PATIENCE, async {
        while bus.next().await.is_ok() {}
    })
    .await
    .expect("the connection ends");
    broker.wait_for_log_all(&["disconnecting peer", "sent by another process"]);
}

#[test]
fn a_socket_inherited_by_a_child_that_outlives_its_parent_is_refused() {
    let broker = Broker::start();
    let out = Command::new(binary("pidbus-test-peer"))
        .arg("inherit-and-orphan")
        .arg(broker.socket())
        .output()
        .unwrap();
    // The parent exits at once; its orphaned child holds our stdout pipe
    // until it has printed its report, so this read sees it.
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)));
    // Two correct outcomes, depending on whether the broker saw the
    // parent's exit before the child's request: the request is refused as
    // sent by another process, or the connection was already closed
    // because its process exited. Never served.
    let refused = report["outcome"] == "error" && report["error"] == SENDER_MISMATCH;
    let closed_on_exit = report["outcome"] == "closed";
    assert!(refused || closed_on_exit, "{report}");
    broker.wait_for_log("peer process exited; connection closed");
}

#[tokio::test]
async fn the_opener_itself_always_passes_the_check() {
    let broker = Broker::start_with(&["--sender-check", "strict"]);
    let bus = pidbus::Connection::connect(broker.socket()).await.unwrap();
    for _ in 0..100 {
        bus.peers().await.unwrap();
    }
    assert_eq!(broker.log_count("not routed"), 0);
}

/// The shell run as pid 1 of a fresh pid namespace for the PID-reuse test:
/// a uid-65534 peer connects, hands its connection to a child and exits;
/// a root process is then created with the exited peer's PID (through
/// `ns_last_pid`); only then may the child ask for a root-only action.
const PID_REUSE_SCRIPT: &str = r#"
set -eu
peer=$1 socket=$2 go=$3 out=$4
setpriv --reuid 65534 --regid 65534 --clear-groups "$peer" orphan-then-authorize "$socket" org.test.rootonly "$go" >> "$out"
parent=$(sed -n 's/.*"parent_pid":\([0-9]*\).*/\1/p' "$out")
echo $((parent - 1)) > /proc/sys/kernel/ns_last_pid
sleep 600 &
reuser=$!
echo "{\"reuser_pid\":$reuser,\"reuser_uid\":$(id -u)}" >> "$out"
touch "$go"
while [ "$(wc -l < "$out")" -lt 3 ]; do sleep 0.05; done
kill "$reuser"
"#;

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn pid_reuse_in_a_fresh_pid_namespace_is_denied() {
    if !can_run_privileged("pid_reuse_in_a_fresh_pid_namespace_is_denied") {
        return;
    }
    let dir = PublicDir::new("pid-reuse");
    let peer = dir.public_binary("pidbus-test-peer");
    let (_policy, broker) = start_with_policy(&dir, ROOT_ONLY);
    let go = dir.path().join("go");
    let out = dir.path().join("out.jsonl");
    let status = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            PID_REUSE_SCRIPT,
            "sh",
        ])
        .arg(&peer)
        .arg(broker.socket())
        .arg(&go)
        .arg(&out)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(status.success(), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e} in {text}")))
        .collect();
    assert_eq!(
        lines[0]["parent_pid"], lines[1]["reuser_pid"],
        "the setup must give the root process the exited peer's pid: {text}"
    );
    assert_eq!(lines[1]["reuser_uid"], 0);
    let outcome = &lines[2];
    assert_ne!(
        outcome["allowed"], true,
        "the child of an exited uid-65534 peer must not get a root-only action: {outcome}"
    );
    // The broker knew the connecting process had exited: it closed the
    // connection, or refused the record as sent by another process.
    let log =
        broker.wait_for_log_any(&["peer process exited", "process other than the connection's"]);
    assert!(log.contains("uid=65534"), "{log}");
    assert_eq!(broker.log_count("authorized"), 0, "nothing was authorized");
}

/// Reads `/proc/PID/stat`'s state letter.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Has a peer connect and send `Ping(index)` while the broker is stopped
/// (SIGSTOP), then exit, then resumes the broker, so the broker accepts a
/// connection whose process is gone. `reap`: whether the peer is reaped
/// (stale pidfd, `Pid: -1`) or left a zombie before the broker looks.
/// Returns the peer's pid and its child handle (a zombie until waited for).
fn peer_gone_before_accept(broker: &Broker, index: u32, reap: bool) -> (u32, std::process::Child) {
    broker.signal(Signal::STOP);
    let mut peer = Command::new(binary("pidbus-oneshot"))
        .args([
            "native-raw",
            &broker.socket().display().to_string(),
            &index.to_string(),
        ])
        .spawn()
        .unwrap();
    let peer_pid = peer.id();
    if reap {
        assert!(peer.wait().unwrap().success());
    } else {
        eventually("the peer is a zombie", || {
            process_state(peer_pid) == Some('Z')
        });
    }
    broker.signal(Signal::CONT);
    (peer_pid, peer)
}

/// A subscriber to the pings of `pidbus-oneshot`.
async fn ping_subscriber(broker: &Broker) -> (pidbus::Connection, pidbus::SignalStream) {
    let bus = pidbus::Connection::connect(broker.socket()).await.unwrap();
    let pings = bus
        .subscribe(pidbus::MatchRule {
            interface: Some("org.pidbus.Oneshot".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    (bus, pings)
}

/// A peer dead before the broker accepts it is served for what it sent
/// (as dbus-daemon serves it): its message arrives, attributed to that
/// process (the pidfs id of the pid it had), its `/proc` facts reported as
/// unknown; then its connection closes and nothing is left behind.
fn peer_gone_before_accept_is_served_and_leaves_nothing(reap: bool) {
    // At debug level the broker logs each peer's identity as it joins.
    let broker = Broker::start_under(&["env", "RUST_LOG=info,pidbus_broker=debug"], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bus, mut pings) = runtime.block_on(ping_subscriber(&broker));
    let baseline_fds = broker.fd_count();
    let (peer_pid, mut peer) = peer_gone_before_accept(&broker, 7, reap);
    let ping = runtime
        .block_on(async { tokio::time::timeout(pidbus_tests::PATIENCE, pings.next()).await })
        .expect("the dead peer's message arrives")
        .unwrap();
    let (index,): (u32,) = ping.args().unwrap();
    assert_eq!(index, 7);
    let line = broker.wait_for_log_all(&["peer connected", &format!("pid={peer_pid} ")]);
    assert!(
        line.contains("exe=? ") && line.contains("exited=before-accept"),
        "no /proc fact of a dead process is claimed: {line}"
    );
    // Nothing is left behind: no peer entry, no descriptor.
    broker.wait_for_fd_count(baseline_fds);
    let (code, peers, _) = pidbusctl(broker.socket(), &["--json", "peers"]);
    assert_eq!(code, 0);
    let peers: Vec<serde_json::Value> = serde_json::from_str(&peers).unwrap();
    assert!(
        peers.iter().all(|p| p["pid"] != peer_pid),
        "dead peer listed: {peers:?}"
    );
    assert_eq!(
        peers.len(),
        2,
        "only the subscriber and pidbusctl are connected"
    );
    drop(bus);
    // Reaps the zombie (a no-op for the already reaped peer).
    peer.wait().unwrap();
}

#[test]
fn a_peer_reaped_before_accept_is_served_and_leaves_nothing_behind() {
    peer_gone_before_accept_is_served_and_leaves_nothing(true);
}

#[test]
fn a_zombie_peer_is_served_and_leaves_nothing_behind() {
    peer_gone_before_accept_is_served_and_leaves_nothing(false);
}

/// Whatever an `exe` rule says cannot be checked for a process that has
/// already exited: a deny rule on it still applies (fail closed), so a
/// program denied the bus cannot get a message through by exiting before
/// the broker looks.
#[test]
fn an_exe_deny_rule_holds_for_a_peer_gone_before_accept() {
    let dir = PublicDir::new("gone-exe-deny");
    let policy = format!(
        "[defaults]\nconnect = \"allow\"\nown = \"allow\"\ncall = \"allow\"\nreceive = \"allow\"\n\n\
         [[rule]]\nkind = \"connect\"\nexe = \"{}\"\ndecision = \"deny\"\n",
        binary("pidbus-oneshot").display()
    );
    let (_, broker) = start_with_policy(&dir, &policy);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bus, mut pings) = runtime.block_on(ping_subscriber(&broker));
    for (index, reap) in [(1, true), (2, false)] {
        let (peer_pid, mut peer) = peer_gone_before_accept(&broker, index, reap);
        broker.wait_for_log_all(&["denied connect", &format!("pid={peer_pid} ")]);
        peer.wait().unwrap();
    }
    // Anything routed before the denials would be ahead of this reply.
    runtime.block_on(bus.ping(b"after", &[])).unwrap();
    let late = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(1), pings.next()).await
    });
    assert!(
        late.is_err(),
        "a denied dead peer's message was routed: {late:?}"
    );
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_client_in_a_child_pid_namespace_is_reported_with_its_pid_in_ours() {
    if !can_run_privileged("a_client_in_a_child_pid_namespace_is_reported_with_its_pid_in_ours") {
        return;
    }
    let broker = Broker::start();
    let peer_bin = binary("pidbus-test-peer");
    let unshare = ["unshare", "--pid", "--fork", "--kill-child"];
    let peer = HeldPeer::start(&unshare, &peer_bin, broker.socket());
    let report = &peer.report;
    assert_eq!(report["self_pid"], 1, "the peer is pid 1 of its namespace");
    let host_pid = report["identity"]["pid"].as_u64().unwrap();
    assert_ne!(host_pid, 1);
    // That pid, in our namespace, is the process that is pid 1 in the child
    // namespace, a child of our unshare.
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .unwrap()
    };
    assert_eq!(field("NSpid:"), vec![host_pid.to_string(), "1".to_owned()]);
    assert_eq!(field("PPid:"), vec![peer.child.id().to_string()]);
    // The pidfs id is the same seen from both namespaces.
    assert_eq!(report["identity"]["pidfs_id"], report["self_pidfs_id"]);
    peer.finish();
}

/// A policy where only root may do `org.test.rootonly`.
const ROOT_ONLY: &str = r#"
[defaults]
connect = "allow"
action = "deny"
[[action]]
id = "org.test.rootonly"
default = "deny"
[[rule]]
kind = "action"
name = "org.test.rootonly"
user = "root"
decision = "allow"
"#;

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_peer_that_execs_a_setuid_binary_keeps_the_uid_it_connected_with() {
    if !can_run_privileged("a_peer_that_execs_a_setuid_binary_keeps_the_uid_it_connected_with") {
        return;
    }
    let dir = PublicDir::new("setuid");
    let (_policy, broker) = start_with_policy(&dir, ROOT_ONLY);
    // A setuid-root copy of the test peer (the copy is root's, mode 4755).
    let setuid = dir.public_binary("pidbus-test-peer");
    std::fs::set_permissions(
        &setuid,
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let out = Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .arg(binary("pidbus-test-peer"))
        .arg("connect-then-exec")
        .arg(broker.socket())
        .arg(&setuid)
        .arg("org.test.rootonly")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0]["euid"], 0,
        "the exec must have made the peer root: {text}"
    );
    assert_eq!(lines[0]["uid"], 65534);
    // The same process asks, so the sender check passes; but it connected
    // as 65534, and that is who it is to the broker.
    assert_eq!(lines[1]["outcome"], "reply", "{text}");
    assert_eq!(lines[1]["allowed"], false, "{text}");
    let denial = broker.wait_for_log("denied action");
    assert!(denial.contains("uid=65534"), "{denial}");
}

/// Policy for the identity attacks: names are owned only as the rules say.
const IDENTITY_POLICY: &str = r#"
[defaults]
connect = "allow"
own = "deny"
call = "allow"
receive = "allow"
action = "deny"

[[action]]
id = "org.pidbus.test.trusted"
default = "deny"

[[rule]]
kind = "own"
decision = "allow"
name = "org.pidbus.Test.Trusted"
exe = "TRUSTED"

[[rule]]
kind = "action"
decision = "allow"
name = "org.pidbus.test.trusted"
exe = "TRUSTED_PEER"

[[rule]]
kind = "own"
decision = "allow"
name = "org.pidbus.Test.Sshd"
unit = "sshd.service"

[[rule]]
kind = "own"
decision = "allow"
name = "org.pidbus.Test.Forged"

[[rule]]
kind = "own"
decision = "deny"
name = "org.pidbus.Test.Forged"
sender_proof = "forgeable"
"#;

/// A broker enforcing [`IDENTITY_POLICY`], with a trusted `pidbusctl`, an
/// impostor copy of it (another file), and a trusted test peer.
struct IdentityBed {
    broker: Broker,
    trusted: std::path::PathBuf,
    impostor: std::path::PathBuf,
    trusted_peer: std::path::PathBuf,
    _dirs: [PublicDir; 3],
}

impl IdentityBed {
    fn new() -> Self {
        let (trusted_dir, impostor_dir, policy_dir) = (
            PublicDir::new("trusted"),
            PublicDir::new("impostor"),
            PublicDir::new("identity-policy"),
        );
        let trusted = trusted_dir.public_binary("pidbusctl");
        let impostor = impostor_dir.public_binary("pidbusctl");
        let trusted_peer = trusted_dir.public_binary("pidbus-test-peer");
        let text = IDENTITY_POLICY
            .replace("TRUSTED_PEER", &trusted_peer.display().to_string())
            .replace("TRUSTED", &trusted.display().to_string());
        let (_, broker) = start_with_policy(&policy_dir, &text);
        IdentityBed {
            broker,
            trusted,
            impostor,
            trusted_peer,
            _dirs: [trusted_dir, impostor_dir, policy_dir],
        }
    }

    /// Runs `sh -c SCRIPT` as uid 65534; returns (code, stdout, stderr).
    fn as_nobody(&self, script: &str) -> (i32, String, String) {
        let out = Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .args(["sh", "-c", script])
            .output()
            .unwrap();
        pidbus_tests::outcome(&out)
    }

    fn socket(&self) -> String {
        self.broker.socket().display().to_string()
    }
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_bind_mount_over_a_trusted_path_does_not_borrow_its_exe() {
    if !can_run_privileged("a_bind_mount_over_a_trusted_path_does_not_borrow_its_exe") {
        return;
    }
    let bed = IdentityBed::new();
    let (trusted, impostor, socket) = (bed.trusted.display(), bed.impostor.display(), bed.socket());
    // The real file may own the name.
    // (`own` holds the name until killed; `timeout` ends it.)
    let (_, out, err) = bed.as_nobody(&format!(
        "exec timeout 3 {trusted} --address {socket} own org.pidbus.Test.Trusted"
    ));
    assert!(
        out.contains("acquired"),
        "the trusted binary owns its name: {out} {err}"
    );
    // In its own user and mount namespace, uid 65534 puts another file at
    // the trusted path and runs it from there.
    let script = format!(
        "unshare -Urm sh -c 'mount --bind {impostor} {trusted} && \
         {trusted} --address {socket} --json whoami && \
         exec timeout 10 {trusted} --address {socket} own org.pidbus.Test.Trusted'"
    );
    let (code, out, err) = bed.as_nobody(&script);
    assert_ne!(code, 0, "the impostor must not own the name: {out} {err}");
    assert!(err.contains("denied"), "{err}");
    // stdout holds whoami's answer alone: the refused `own` prints nothing.
    let me: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert!(
        me["exe"].is_null(),
        "the impostor's exe is not reported as trusted: {out}"
    );
    assert_eq!(me["exe_unverified"], trusted.to_string(), "{out}");
    bed.broker
        .wait_for_log("names another file in the broker's mount namespace");
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn an_exec_after_connecting_loses_the_old_binarys_rules() {
    if !can_run_privileged("an_exec_after_connecting_loses_the_old_binarys_rules") {
        return;
    }
    let bed = IdentityBed::new();
    let (peer, socket) = (bed.trusted_peer.display(), bed.socket());
    let other_public = bed._dirs[1].public_binary("pidbus-test-peer");
    let action = "org.pidbus.test.trusted";
    // The trusted peer connects and stays itself: allowed.
    let (code, out, err) = bed.as_nobody(&format!(
        "exec {peer} connect-then-exec {socket} {peer} {action}"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""allowed":true"#), "{out}");
    // The trusted peer connects, then execs another binary that asks on
    // the same connection: the decision looks at the file running now.
    let (code, out, err) = bed.as_nobody(&format!(
        "exec {peer} connect-then-exec {socket} {} {action}",
        other_public.display()
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""allowed":false"#), "{out}");
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_cgroup_named_like_a_system_unit_in_a_users_subtree_is_the_users() {
    if !can_run_privileged("a_cgroup_named_like_a_system_unit_in_a_users_subtree_is_the_users") {
        return;
    }
    let bed = IdentityBed::new();
    // uid 65534's delegated subtree, as systemd makes it for user@.service.
    let delegated =
        pidbus_tests::cgroup2_mount().join("user.slice/user-65534.slice/user@65534.service");
    std::fs::create_dir_all(&delegated).unwrap();
    for file in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        let path = delegated.join(file);
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    }
    let (d, ctl, socket) = (delegated.display(), bed.trusted.display(), bed.socket());
    // Root puts a shell in the subtree (as systemd starts the user's
    // manager there); as uid 65534 it makes `sshd.service` and moves in.
    let script = format!(
        "echo $$ > {d}/cgroup.procs && exec {} {} sh -c \
         'mkdir -p {d}/sshd.service && echo $$ > {d}/sshd.service/cgroup.procs && \
          {ctl} --address {socket} --json whoami && \
          exec timeout 10 {ctl} --address {socket} own org.pidbus.Test.Sshd'",
        AS_NOBODY[0],
        AS_NOBODY[1..].join(" ")
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let _ = std::fs::remove_dir(delegated.join("sshd.service"));
    let _ = std::fs::remove_dir(&delegated);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success(),
        "a user's sshd.service must not pass: {stdout}"
    );
    assert!(stderr.contains("denied"), "{stderr}");
    assert!(
        stdout.contains(r#""unit": "user@65534.service""#)
            && stdout.contains(r#""user_unit": "sshd.service""#),
        "{stdout}"
    );
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_peer_that_administers_its_pid_namespace_is_known_to_have_forgeable_proof() {
    if !can_run_privileged(
        "a_peer_that_administers_its_pid_namespace_is_known_to_have_forgeable_proof",
    ) {
        return;
    }
    let bed = IdentityBed::new();
    let (peer, socket) = (bed.trusted_peer.display(), bed.socket());
    // pid 1 of its own user and pid namespace connects; its child sends
    // on the socket with credentials forged to say it is pid 1.
    let (code, out, err) = bed.as_nobody(&format!(
        "exec unshare -Urpf {peer} forge-as-parent {socket} org.pidbus.Test.Forged"
    ));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (child, parent) = (&lines[0], &lines[1]);
    assert_eq!(parent["forgeable"], true, "{out}");
    // The forgery passes the kernel's check and the broker cannot see it,
    // but the policy refuses peers with forgeable proof the name.
    assert_eq!(child["outcome"], "error", "{out}");
    assert_eq!(
        child["error"],
        pidbus_protocol::dbus::errors::ACCESS_DENIED,
        "{out}"
    );
    bed.broker
        .wait_for_log("administers its own pid and user namespace");
    // A peer of the broker's own namespaces is not affected.
    let (_, out, err) = bed.as_nobody(&format!(
        "exec timeout 3 {} --address {socket} own org.pidbus.Test.Forged",
        bed.trusted.display()
    ));
    assert!(out.contains("acquired"), "{out} {err}");
}

/// A broker run as a plain user (uid 65534, no capability) serves other
/// users with what the kernel proves to it, says at start what it cannot
/// read, and an `exe` rule fails closed for a process whose executable
/// the kernel withheld — while it still holds for one the broker may read.
#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_broker_run_as_a_plain_user_serves_other_users_with_what_it_can_prove() {
    if !pidbus_tests::can_run_privileged("a_broker_run_as_a_plain_user") {
        return;
    }
    let policy_dir = pidbus_tests::PublicDir::new("plain-user-policy");
    let pidbusctl = policy_dir.public_binary("pidbusctl");
    let policy = pidbus_tests::write_policy(
        &policy_dir,
        "policy.toml",
        &format!(
            "[defaults]\nconnect = \"allow\"\nown = \"deny\"\ncall = \"allow\"\nreceive = \"allow\"\n\n\
             [[rule]]\nkind = \"own\"\nexe = \"{}\"\ndecision = \"allow\"\n",
            pidbusctl.display()
        ),
    );
    let broker = Broker::start_dbus_as_nobody(&["--policy", &policy]);
    broker.wait_for_log("running without CAP_SYS_PTRACE");

    // Root, another user to this broker, is served and its identity says
    // what was withheld.
    let socket = broker.socket().display().to_string();
    let out = Command::new(&pidbusctl)
        .args(["--address", &socket, "--json", "whoami"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["uid"], 0, "{me}");
    assert_eq!(me["exe"], serde_json::Value::Null, "{me}");
    assert_eq!(me["facts_withheld"], true, "{me}");
    assert!(me["cgroup"].is_string(), "the cgroup is still known: {me}");

    // The exe rule: root's pidbusctl may not own a name (its exe is
    // unknown to the broker), the broker's own user's may.
    let own = |as_nobody: bool| {
        let mut command = if as_nobody {
            let mut command = Command::new(pidbus_tests::AS_NOBODY[0]);
            command.args(&pidbus_tests::AS_NOBODY[1..]).arg(&pidbusctl);
            command
        } else {
            Command::new(&pidbusctl)
        };
        command
            .args(["--address", &socket, "own", "org.pidbus.Test.PlainUser"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let root = own(false).wait_with_output().unwrap();
    assert!(
        !root.status.success(),
        "root owned a name by an exe rule the broker cannot check"
    );
    assert!(
        String::from_utf8_lossy(&root.stderr).contains("denied"),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
    let mut nobody = own(true);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(nobody.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.contains("acquired"),
        "the broker's own user's exe is checked: {line}"
    );
    let _ = nobody.kill();
    let _ = nobody.wait();

    // A D-Bus program of another user works too.
    let (code, out, err) = pidbus_tests::run_bounded(
        20,
        "busctl",
        &[
            &format!("--address={}", broker.dbus_address()),
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetId",
        ],
    );
    assert_eq!(code, 0, "busctl as root: {out}{err}");
}
