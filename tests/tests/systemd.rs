//! Living under systemd: `pidbusd` started by a socket-activation launcher
//! (`systemd-socket-activate`, which passes the listening socket the way a
//! `.socket` unit does) serves clients on that socket and reports its state
//! on `NOTIFY_SOCKET` the way a `Type=notify` service must.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;

use pidbus_tests::{Broker, PATIENCE, has_tool, pidbusctl, write_policy};
use rustix::process::Signal;

const OPEN: &str =
    "[defaults]\nconnect = \"allow\"\nown = \"allow\"\ncall = \"allow\"\npidfd = \"allow\"\n";

/// The service manager's end of `NOTIFY_SOCKET`.
struct NotifySocket(UnixDatagram);

impl NotifySocket {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        // Only a guard against a broker that never notifies: the test
        // passes as soon as the message is there.
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        NotifySocket(socket)
    }

    /// The next notification, as its `KEY=VALUE` lines.
    fn next(&self) -> Vec<String> {
        let mut buf = vec![0; 4096];
        let n = self
            .0
            .recv(&mut buf)
            .expect("pidbusd sent no notification on NOTIFY_SOCKET");
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn has(message: &[String], line: &str) -> bool {
    message.iter().any(|l| l == line)
}

fn status(message: &[String]) -> &str {
    message
        .iter()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or("")
}

#[cfg_attr(
    pidbus_without_systemd_tools,
    ignore = "needs systemd-socket-activate and systemd-analyze: install the Debian package systemd"
)]
#[test]
fn a_socket_activated_broker_serves_clients_and_tells_systemd_its_state() {
    let test = "a_socket_activated_broker_serves_clients_and_tells_systemd_its_state";
    if !has_tool(test, "systemd-socket-activate", "systemd") {
        return;
    }
    let dir = pidbus_tests::PublicDir::new("notify");
    let notify_path = dir.path().join("notify");
    let notify = NotifySocket::bind(&notify_path);
    let policy = write_policy(&dir, "policy.toml", OPEN);
    let mut broker = Broker::start_activated(
        &[
            ("NOTIFY_SOCKET", notify_path.as_path()),
            // What systemd sets when stderr goes to the journal.
            ("JOURNAL_STREAM", Path::new("0:0")),
        ],
        &["--policy", &policy],
    );

    // The first client starts the broker and is served on the passed socket.
    let (code, out, err) = pidbusctl(broker.socket(), &["--json", "whoami"]);
    assert_eq!(code, 0, "whoami over the activated socket failed: {err}");
    let me: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(me["uid"], rustix::process::getuid().as_raw());
    assert!(me["exe"].as_str().unwrap().ends_with("/pidbusctl"), "{me}");
    let line = broker.wait_for_log("using socket passed by the service manager");
    assert!(line.contains("name=pidbus"), "{line}");
    // Under systemd the log carries syslog priority prefixes for journald.
    assert!(line.starts_with("<6>"), "not a journald line: {line}");

    let ready = notify.next();
    assert!(has(&ready, "READY=1"), "{ready:?}");
    let socket = broker.socket().display().to_string();
    assert_eq!(status(&ready), format!("serving {socket}"));

    // Reload (ExecReload sends SIGHUP): RELOADING=1, then READY=1 again.
    broker.signal(Signal::HUP);
    let reloading = notify.next();
    assert!(has(&reloading, "RELOADING=1"), "{reloading:?}");
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let reloaded = notify.next();
    assert!(has(&reloaded, "READY=1"), "{reloaded:?}");
    assert!(
        status(&reloaded).starts_with("policy reloaded: 0 rules from"),
        "{reloaded:?}"
    );

    // A broken policy: the reload ends too, and the status says it failed.
    std::fs::write(&policy, "[[rule]]\nbogus = 1\n").unwrap();
    broker.signal(Signal::HUP);
    assert!(has(&notify.next(), "RELOADING=1"));
    let refused = notify.next();
    assert!(has(&refused, "READY=1"), "{refused:?}");
    assert!(
        status(&refused).starts_with("policy reload refused, the old policy stays"),
        "{refused:?}"
    );
    let (code, _, err) = pidbusctl(broker.socket(), &["whoami"]);
    assert_eq!(code, 0, "still serving after a refused reload: {err}");

    broker.signal(Signal::TERM);
    let stopping = notify.next();
    assert!(has(&stopping, "STOPPING=1"), "{stopping:?}");
    let stop = broker.wait_for_exit();
    assert!(stop.success(), "pidbusd exited with {stop}");
    // The socket file is the service manager's: it outlives the broker.
    assert!(
        broker.socket().exists(),
        "pidbusd removed systemd's socket file"
    );
}

#[cfg_attr(
    pidbus_without_systemd_tools,
    ignore = "needs systemd-socket-activate and systemd-analyze: install the Debian package systemd"
)]
#[test]
fn a_stream_socket_passed_is_served_as_the_dbus_face() {
    let test = "a_stream_socket_passed_is_served_as_the_dbus_face";
    if !has_tool(test, "systemd-socket-activate", "systemd") || !has_tool(test, "busctl", "systemd")
    {
        return;
    }
    let broker = Broker::start_activated_stream();
    let address = format!("unix:path={}", broker.socket().display());
    // The launcher starts the broker on busctl's connection, which then
    // authenticates, says Hello and asks the bus its id.
    let out = Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(["call", "org.freedesktop.DBus", "/org/freedesktop/DBus"])
        .args(["org.freedesktop.DBus", "GetId"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout
        .trim()
        .strip_prefix("s \"")
        .and_then(|s| s.strip_suffix('"'));
    assert!(
        id.is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
        "{stdout}"
    );
}

/// A file under broker/systemd/: the `system/` or `user/` units, the config.
fn units(kind: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../broker/systemd")
        .join(kind)
}

/// The value of `key=` in a unit file.
fn unit_setting(unit: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(unit).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{} has no {key}=", unit.display()))
        .to_owned()
}

#[cfg_attr(
    pidbus_without_systemd_tools,
    ignore = "needs systemd-socket-activate and systemd-analyze: install the Debian package systemd"
)]
#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let test = "the_shipped_units_pass_systemd_analyze_verify";
    if !has_tool(test, "systemd-analyze", "systemd") {
        return;
    }
    for kind in ["system", "user"] {
        // verify insists the ExecStart binaries exist: point them at ours.
        let dir = pidbus_tests::PublicDir::new("units");
        for unit in ["pidbus.socket", "pidbus.service"] {
            let text = std::fs::read_to_string(units(kind).join(unit)).unwrap();
            let ours = pidbus_tests::binary("pidbusd").display().to_string();
            std::fs::write(
                dir.path().join(unit),
                text.replace("/usr/local/bin/pidbusd", &ours),
            )
            .unwrap();
        }
        let mut verify = std::process::Command::new("systemd-analyze");
        if kind == "user" {
            // A user manager needs a runtime directory to resolve %t.
            verify.arg("--user").env("XDG_RUNTIME_DIR", dir.path());
        }
        let out = verify
            .args(["verify", "--man=no", "pidbus.socket", "pidbus.service"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let complaints = String::from_utf8_lossy(&out.stderr);
        // verify exits 0 on settings it ignores: any output is a finding.
        assert!(
            out.status.success() && complaints.trim().is_empty(),
            "{kind} units: {complaints}"
        );
    }
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn under_the_system_units_capabilities_the_broker_still_knows_who_connects() {
    let test = "under_the_system_units_capabilities_the_broker_still_knows_who_connects";
    if !pidbus_tests::can_run_privileged(test) {
        return;
    }
    // The unit's bounding set, as setpriv spells it.
    let caps = unit_setting(
        &units("system").join("pidbus.service"),
        "CapabilityBoundingSet",
    );
    let mut bounding = String::from("--bounding-set=-all");
    for cap in caps.split_whitespace() {
        bounding.push_str(",+");
        bounding.push_str(&cap.trim_start_matches("CAP_").to_lowercase());
    }
    let broker = Broker::start_under(
        &["setpriv", &bounding, "--inh-caps=-all", "--no-new-privs"],
        &[],
    );
    // Another user's process: its exe link is readable only with
    // CAP_SYS_PTRACE, and exe rules and logs depend on it.
    let (code, out, err) = pidbus_tests::pidbusctl_as_nobody(&broker, &["--json", "whoami"]);
    assert_eq!(code, 0, "{err}");
    let identity: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(identity["uid"], 65534);
    assert!(
        identity["exe"]
            .as_str()
            .is_some_and(|exe| exe.ends_with("/pidbusctl")),
        "exe unknown under the unit's capabilities: {identity}"
    );
}

#[cfg_attr(
    pidbus_without_systemd_tools,
    ignore = "needs systemd-socket-activate and systemd-analyze: install the Debian package systemd"
)]
#[test]
fn the_broker_makes_only_system_calls_the_units_filter_allows() {
    let test = "the_broker_makes_only_system_calls_the_units_filter_allows";
    if !has_tool(test, "strace", "strace") || !has_tool(test, "systemd-analyze", "systemd") {
        return;
    }
    let filter = unit_setting(&units("system").join("pidbus.service"), "SystemCallFilter");
    let allowed = syscall_group(&filter);
    let dir = pidbus_tests::PublicDir::new("strace");
    let trace = dir.path().join("trace");
    let trace_arg = trace.display().to_string();
    let policy = write_policy(&dir, "policy.toml", OPEN);
    let mut broker = Broker::start_under(
        // -D: strace runs as a grandchild, so signals reach pidbusd itself.
        &["strace", "-D", "-f", "-q", "-o", &trace_arg],
        &["--policy", &policy],
    );
    // What a bus does: handshakes, identities, names, calls, pidfds,
    // process exits, a reload, and a clean stop.
    exercise(&broker);
    broker.signal(Signal::HUP);
    broker.wait_for_log("policy reloaded");
    broker.signal(Signal::TERM);
    assert!(broker.wait_for_exit().success());
    // strace (a detached grandchild) writes the trace's last line, the
    // exit of pidbusd's main thread, after pidbusd is gone: read the trace
    // only once that line is there, so no line is read half-written.
    // strace pads the pid column ("647   +++ exited …"): compare words.
    let pid = broker.pid().to_string();
    let exited = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words == [pid.as_str(), "+++", "exited", "with", "0", "+++"]
    };
    let mut text = String::new();
    pidbus_tests::eventually("strace logs pidbusd's exit", || {
        text = std::fs::read_to_string(&trace).unwrap_or_default();
        text.lines().any(exited)
    });
    let used = syscalls_in(&text);
    assert!(used.len() > 20, "strace saw too little: {used:?}");
    let forbidden: Vec<_> = used.difference(&allowed).collect();
    assert!(
        forbidden.is_empty(),
        "pidbusd uses system calls outside {filter}, which the unit would refuse with EPERM: \
         {forbidden:?}"
    );
}

/// Calls through the broker that touch each of its paths.
fn exercise(broker: &Broker) {
    let holder = pidbus_tests::HeldPeer::start(
        &[],
        &pidbus_tests::binary("pidbus-test-peer"),
        broker.socket(),
    );
    for args in [&["whoami"][..], &["peers"], &["names"], &["pidfd", ":1.1"]] {
        let (code, _, err) = pidbusctl(broker.socket(), args);
        assert_eq!(code, 0, "pidbusctl {args:?}: {err}");
    }
    holder.kill();
    pidbus_tests::eventually("the killed peer leaves the bus", || {
        let (_, out, _) = pidbusctl(broker.socket(), &["peers"]);
        !out.contains("pidbus-test-peer")
    });
}

/// The system calls named in an `strace -f` log.
fn syscalls_in(trace: &str) -> std::collections::BTreeSet<String> {
    trace
        .lines()
        .filter_map(|line| {
            // "PID name(args…" or "PID <... name resumed>…"
            let rest = line.split_once(' ')?.1.trim_start();
            let rest = rest.strip_prefix("<... ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Every system call in a systemd syscall group, nested groups expanded
/// (from `systemd-analyze syscall-filter`).
fn syscall_group(group: &str) -> std::collections::BTreeSet<String> {
    let out = std::process::Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in text.lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_owned());
        } else if let Some(group) = &current {
            let entry = line.trim();
            if !entry.is_empty() && !entry.starts_with('#') {
                groups
                    .entry(group.clone())
                    .or_default()
                    .push(entry.to_owned());
            }
        }
    }
    let mut calls = std::collections::BTreeSet::new();
    let mut pending = vec![group.to_owned()];
    let mut seen = std::collections::HashSet::new();
    while let Some(group) = pending.pop() {
        if !seen.insert(group.clone()) {
            continue;
        }
        for entry in groups.get(&group).into_iter().flatten() {
            if entry.starts_with('@') {
                pending.push(entry.clone());
            } else {
                calls.insert(entry.clone());
            }
        }
    }
    assert!(!calls.is_empty(), "systemd-analyze knows no group {group}");
    calls
}

#[test]
fn the_shipped_config_file_and_every_key_it_documents_are_valid() {
    let shipped = units("pidbusd.toml");
    let dir = pidbus_tests::PublicDir::new("config");
    // Every commented `# key = value` line is a documented default (but
    // the policy path, an example): with them all uncommented the file
    // must still be accepted.
    let text = std::fs::read_to_string(&shipped).unwrap();
    let is_setting = |s: &str| {
        s.split_once(" = ").is_some_and(|(key, _)| {
            key != "policy" && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    };
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(setting) if is_setting(setting) => format!("{setting}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented.matches(" = ").count() > 20, "{uncommented}");
    let all_keys = dir.path().join("all-keys.toml");
    std::fs::write(&all_keys, &uncommented).unwrap();
    for file in [&shipped, &all_keys] {
        let out = std::process::Command::new(pidbus_tests::binary("pidbusd"))
            .arg("--config")
            .arg(file)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("listen /run/pidbus/system.sock") && said.contains("system policy"),
            "{said}"
        );
    }
}
