//! The broker reports who a connecting process really is.

use std::os::fd::AsFd;

use pidbus_tests::{AS_NOBODY, Broker, HeldPeer, PublicDir, binary, can_run_privileged, pidbusctl};
use serde_json::Value;

#[tokio::test]
async fn identity_returned_to_a_client_is_its_own() {
    let broker = Broker::start();
    let bus = pidbus::Connection::connect(broker.socket()).await.unwrap();
    let me = bus.identity();
    assert_eq!(me.pid, std::process::id());
    assert_eq!(me.uid, rustix::process::geteuid().as_raw());
    assert_eq!(me.gid, rustix::process::getegid().as_raw());
    let own_pidfd = pidbus_protocol::pidfd::pidfd_open(std::process::id()).unwrap();
    let inode = rustix::fs::fstat(own_pidfd.as_fd()).unwrap().st_ino;
    assert_eq!(
        me.pidfs_id,
        Some(inode),
        "pidfs id is the inode of pidfd_open(getpid())"
    );
    assert_eq!(
        me.exe.as_deref(),
        std::env::current_exe().unwrap().to_str(),
        "exe is this test binary"
    );
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(me.boot_id, boot_id.trim());
    // The broker answers the same when asked again.
    let again = bus.whoami().await.unwrap();
    assert_eq!(again.id, bus.unique_id());
    assert_eq!(&again.identity, me);
}

#[test]
fn blocking_client_gets_the_same_identity() {
    let broker = Broker::start();
    let bus = pidbus::blocking::Connection::connect(broker.socket()).unwrap();
    assert_eq!(bus.identity().pid, std::process::id());
    assert!(bus.peers().unwrap().iter().any(|p| p.id == bus.unique_id()));
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn another_user_is_reported_with_its_uid_and_pid() {
    if !can_run_privileged("another_user_is_reported_with_its_uid_and_pid") {
        return;
    }
    let broker = Broker::start();
    let ctl = broker.dir().public_binary("pidbusctl");
    let child = std::process::Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .arg(&ctl)
        .arg("--address")
        .arg(broker.socket())
        .args(["--json", "whoami"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // setpriv execs pidbusctl, so the child's pid is pidbusctl's pid.
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pidbusctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"uid\": 65534"), "{stdout}");
    let me: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(me["uid"], 65534);
    assert_eq!(me["gid"], 65534);
    assert_eq!(me["groups"], serde_json::json!([]));
    assert_eq!(me["pid"], pid);
    assert_eq!(me["exe"], ctl.to_str().unwrap());
    for key in ["id", "pidfs_id", "boot_id", "unit", "cgroup", "label"] {
        assert!(me.get(key).is_some(), "key {key} missing in {stdout}");
    }
}

#[test]
fn pidbusctl_peers_lists_a_long_running_client_with_its_exe() {
    let broker = Broker::start();
    let peer_bin = binary("pidbus-test-peer");
    let peer = HeldPeer::start(&[], &peer_bin, broker.socket());
    let (code, stdout, stderr) = pidbusctl(broker.socket(), &["--json", "peers"]);
    assert_eq!(code, 0, "{stderr}");
    let peers: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let listed = peers
        .iter()
        .find(|p| p["pid"] == peer.child.id())
        .unwrap_or_else(|| panic!("peer {} not listed: {stdout}", peer.child.id()));
    assert_eq!(
        listed["exe"],
        peer_bin.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(listed["id"], peer.report["id"]);
    assert_eq!(listed["pidfs_id"], peer.report["self_pidfs_id"]);
    // The text table shows it too, with the exe.
    let (code, table, _) = pidbusctl(broker.socket(), &["peers"]);
    assert_eq!(code, 0);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&peer.child.id().to_string()))
        .unwrap_or_else(|| panic!("no row for the peer in:\n{table}"));
    assert!(
        row.ends_with(peer_bin.canonicalize().unwrap().to_str().unwrap()),
        "{row}"
    );
    assert!(table.starts_with("ID"), "{table}");
    peer.finish();
}

#[test]
fn pidbusctl_whoami_text_is_aligned_and_unreachable_broker_is_one_line() {
    let broker = Broker::start();
    let (code, text, _) = pidbusctl(broker.socket(), &["whoami"]);
    assert_eq!(code, 0);
    // Every line is "<key padded to 14>  <value>": values start in one column.
    for line in text.lines() {
        let (key, rest) = line.split_at(14.min(line.len()));
        assert!(!key.trim_end().contains(' '), "misaligned line {line:?}");
        assert!(
            rest.is_empty() || rest.starts_with("  "),
            "misaligned line {line:?}"
        );
        assert!(!rest.trim().is_empty(), "empty value in {line:?}");
    }
    assert!(text.lines().any(|l| l.starts_with("uid ")));

    let dir = PublicDir::new("nobroker");
    let missing = dir.path().join("nothing.sock");
    let (code, stdout, stderr) = pidbusctl(&missing, &["whoami"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

#[test]
fn pidbus_address_environment_variable_is_honoured() {
    let broker = Broker::start();
    let out = std::process::Command::new(binary("pidbusctl"))
        .args(["--json", "whoami"])
        .env("PIDBUS_ADDRESS", broker.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
