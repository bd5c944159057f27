//! Process handles against the real broker: pidfds handed to clients that
//! are not the target's parent, exit statuses, pid namespaces, the default
//! access rule, and cleanup when a process exits with its socket still open.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use pidbus::{BusEvent, Connection, Error, ExitStatus, ProcessState};
use pidbus_protocol::dbus::errors::LIMITS_EXCEEDED;
use pidbus_protocol::dbus::value::Value as DbusValue;
use pidbus_protocol::pidfd;
use pidbus_tests::raw::{BUS1, DRIVER, DRIVER_PATH};
use pidbus_tests::{Broker, HeldPeer, binary, can_run_privileged, pidbusctl, pidbusctl_as_nobody};
use serde_json::Value;

const NAME: &str = "org.pidbus.Test.Watched";

/// Runs the test peer in `mode` owning `NAME`.
fn service(broker: &Broker, mode: &str) -> HeldPeer {
    start_service(broker.socket(), mode)
}

fn start_service(socket: &Path, mode: &str) -> HeldPeer {
    HeldPeer::start_mode(
        &[],
        &binary("pidbus-test-peer"),
        &[mode.as_ref(), socket.as_os_str(), NAME.as_ref()],
    )
}

/// [`service`] from async tests: starting it blocks until it reports.
async fn service_async(broker: &Broker, mode: &'static str) -> HeldPeer {
    let socket = broker.socket().to_owned();
    tokio::task::spawn_blocking(move || start_service(&socket, mode))
        .await
        .unwrap()
}

/// `pidbusctl --json wait TARGET` started by `prefix` (e.g. `unshare …`),
/// returned once it has found its target and begun to wait.
struct Waiter {
    child: Child,
}

impl Waiter {
    fn start(prefix: &[&str], pidbusctl: &Path, socket: &Path, target: &str) -> Self {
        let (program, wrapper_args) = match prefix.split_first() {
            Some((program, rest)) => (Path::new(program), rest),
            None => (pidbusctl, &[][..]),
        };
        let mut command = Command::new(program);
        command.args(wrapper_args);
        if !prefix.is_empty() {
            command.arg(pidbusctl);
        }
        let mut child = command
            .arg("--address")
            .arg(socket)
            .args(["--json", "wait", target, "--timeout", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pidbusctl wait");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("read pidbusctl stderr");
        assert!(
            line.contains("\"waiting_for\""),
            "pidbusctl wait said {line:?}"
        );
        Waiter { child }
    }

    /// Its exit code and the JSON it printed.
    fn finish(self) -> (i32, Value) {
        let out = self.child.wait_with_output().expect("wait for pidbusctl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("pidbusctl printed {stdout:?}: {e}"));
        (out.status.code().unwrap_or(-1), report)
    }
}

fn pidfs_id_of(pid: u32) -> u64 {
    let fd = pidfd::pidfd_open(pid).unwrap();
    pidfd::pidfs_id(fd.as_fd()).unwrap().expect("pidfs")
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    child.wait().unwrap()
}

#[test]
fn a_client_in_another_process_tree_sees_a_service_die_of_sigterm() {
    let broker = Broker::start();
    let mut svc = service(&broker, "serve-silently");
    let svc_pid = svc.child.id();
    let svc_pidfs_id = pidfs_id_of(svc_pid);
    // pidbusctl is the service's sibling, not its parent: waitpid cannot help it.
    let waiter = Waiter::start(&[], &binary("pidbusctl"), broker.socket(), NAME);
    assert!(terminate(&mut svc.child).code().is_none());
    let (code, report) = waiter.finish();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["exited"], true);
    assert_eq!(report["signal"], 15);
    assert_eq!(report["code"], Value::Null);
    assert_eq!(report["pid"], svc_pid);
    assert_eq!(report["pidfs_id"], svc_pidfs_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exit_code_reaches_the_pidfd_and_the_watch_once_reaped() {
    let broker = Broker::start();
    let mut svc = service_async(&broker, "own-until-exit").await;
    let svc_pid = svc.child.id();
    let bus = Connection::connect(broker.socket()).await.unwrap();
    let pidfd = bus.pidfd(NAME).await.unwrap();
    let watch = bus.watch_process(NAME).await.unwrap();
    assert_eq!(pidfd.pid().unwrap(), Some(svc_pid));
    assert_eq!(pidfd.pidfs_id(), Some(pidfs_id_of(svc_pid)));
    assert_eq!(watch.process().pidfs_id, pidfd.pidfs_id());
    assert_eq!(pidfd.state().unwrap(), ProcessState::Running);
    assert_eq!(pidfd.exit_status().unwrap(), None);

    writeln!(svc.child.stdin.as_mut().unwrap(), "7").unwrap();
    watch.exited().await.unwrap();
    pidfd.exited().await.unwrap();
    // We are its parent and have not reaped it: a zombie, status unknown.
    assert_eq!(pidfd.state().unwrap(), ProcessState::Exited);
    assert_eq!(pidfd.exit_status().unwrap(), None);
    // The watch reports the exit only once the broker has cleaned up.
    assert!(matches!(
        bus.name_owner(NAME).await,
        Err(Error::NoSuchName { .. })
    ));

    let status = tokio::task::spawn_blocking(move || svc.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7));
    assert_eq!(pidfd.reaped().await.unwrap(), Some(ExitStatus::Code(7)));
    assert_eq!(watch.reaped().await.unwrap(), Some(ExitStatus::Code(7)));
    assert_eq!(pidfd.pid().unwrap(), None, "reaped: no pid any more");
    assert!(
        pidfd.send_signal(libc_sigterm()).is_err(),
        "a reaped process cannot be signalled, nor anything reusing its pid"
    );
}

fn libc_sigterm() -> i32 {
    rustix::process::Signal::TERM.as_raw()
}

#[tokio::test(flavor = "multi_thread")]
async fn send_signal_reaches_the_service_and_its_exit_is_seen() {
    let broker = Broker::start();
    let mut svc = service_async(&broker, "serve-silently").await;
    let bus = Connection::connect(broker.socket()).await.unwrap();
    let pidfd = bus.pidfd(NAME).await.unwrap();
    pidfd.send_signal(libc_sigterm()).unwrap();
    pidfd.exited().await.unwrap();
    tokio::task::spawn_blocking(move || svc.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        pidfd.reaped().await.unwrap(),
        Some(ExitStatus::Signal(libc_sigterm()))
    );
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_client_in_a_child_pid_namespace_waits_on_a_service_outside_it() {
    if !can_run_privileged("a_client_in_a_child_pid_namespace_waits_on_a_service_outside_it") {
        return;
    }
    let broker = Broker::start();
    let mut svc = service(&broker, "serve-silently");
    let svc_pidfs_id = pidfs_id_of(svc.child.id());
    let unshare = ["unshare", "--pid", "--fork", "--mount-proc"];
    let ctl = binary("pidbusctl");

    let out = Command::new(unshare[0])
        .args(&unshare[1..])
        .arg(&ctl)
        .arg("--address")
        .arg(broker.socket())
        .args(["--json", "pidfd", NAME])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["pid"],
        Value::Null,
        "not visible in the child namespace"
    );
    assert_eq!(report["alive"], true);
    assert_eq!(report["pidfs_id"], svc_pidfs_id);

    let waiter = Waiter::start(&unshare, &ctl, broker.socket(), NAME);
    terminate(&mut svc.child);
    let (code, report) = waiter.finish();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["exited"], true);
    assert_eq!(report["pid"], Value::Null);
    assert_eq!(report["pidfs_id"], svc_pidfs_id);
    // The kernel will not say (EREMOTE) inside the namespace; the broker can.
    assert_eq!(report["signal"], 15);
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn another_users_peer_is_refused_the_pidfd_under_the_default_rule() {
    if !can_run_privileged("another_users_peer_is_refused_the_pidfd_under_the_default_rule") {
        return;
    }
    let broker = Broker::start();
    let _svc = service(&broker, "serve-silently");
    for command in ["pidfd", "wait"] {
        let (code, _, stderr) = pidbusctl_as_nobody(&broker, &["--json", command, NAME]);
        assert_eq!(code, 1, "{command}: {stderr}");
        assert!(stderr.contains("access denied"), "{command}: {stderr}");
    }
    let denial = broker.wait_for_log("denied pidfd: GetProcessFD");
    assert!(denial.contains("uid=65534"), "{denial}");
    assert!(denial.contains("rule="), "{denial}");
    // Root may have it.
    let (code, stdout, stderr) = pidbusctl(broker.socket(), &["--json", "pidfd", NAME]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["alive"],
        true
    );
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[tokio::test(flavor = "multi_thread")]
async fn on_the_system_bus_name_owners_pidfds_are_readable_by_all() {
    if !can_run_privileged("on_the_system_bus_name_owners_pidfds_are_readable_by_all") {
        return;
    }
    // pidbus's built-in system policy alone: the machine's D-Bus XML
    // policy would not let the test's service own its name.
    let broker = Broker::start_with(&["--system", "--dbus-config", "none"]);
    let svc = service_async(&broker, "serve-silently").await;
    let nameless = Connection::connect(broker.socket()).await.unwrap();
    let nameless_id = nameless.unique_id().to_string();
    let broker = std::sync::Arc::new(broker);
    let (owner, other) = tokio::task::spawn_blocking({
        let broker = std::sync::Arc::clone(&broker);
        move || {
            (
                pidbusctl_as_nobody(&broker, &["--json", "pidfd", NAME]),
                pidbusctl_as_nobody(&broker, &["--json", "pidfd", &nameless_id]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(owner.0, 0, "{}", owner.2);
    let report: Value = serde_json::from_str(&owner.1).unwrap();
    assert_eq!(report["pid"], svc.child.id());
    assert_eq!(other.0, 1, "a root peer without a name stays private");
    assert!(other.2.contains("access denied"), "{}", other.2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_exits_while_its_child_holds_the_socket_loses_names_and_calls_at_once() {
    let broker = Broker::start();
    let caller = Connection::connect(broker.socket()).await.unwrap();
    let mut events = caller.name_events().await.unwrap();
    let mut svc = service_async(&broker, "own-take-call-and-orphan").await;
    assert_eq!(svc.report["ok"], true);
    let owner = caller.name_owner(NAME).await.unwrap();
    // Far longer than the test may take: only the exit can end the call.
    let call = pidbus::MethodCall::new(NAME, "/org/pidbus/Test", "org.pidbus.Test", "Hang")
        .unwrap()
        .timeout(std::time::Duration::from_secs(600));
    let pending = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call_method(call).await }
    });
    let (report, status) = tokio::task::spawn_blocking(move || {
        let report = svc.next_line();
        (report, svc.child.wait().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(report["call"], "Hang");
    assert!(status.success());
    let sleeper = report["sleeper"].as_u64().unwrap() as i32;
    let sleeper = rustix::process::Pid::from_raw(sleeper).unwrap();

    match pending.await.unwrap() {
        Err(Error::PeerGone { message }) => {
            assert!(message.contains("without replying"), "{message}")
        }
        other => panic!("expected PeerGone, got {other:?}"),
    }
    loop {
        let event = events.next().await.expect("connection closed");
        if let BusEvent::NameOwnerChanged {
            name,
            old_owner,
            new_owner,
        } = event
            && name == NAME
            && new_owner.is_none()
        {
            assert_eq!(old_owner, Some(owner));
            break;
        }
    }
    assert!(matches!(
        caller.name_owner(NAME).await,
        Err(Error::NoSuchName { .. })
    ));
    // The socket is still open in the `sleep` child all along.
    rustix::process::test_kill_process(sleeper).expect("the sleeper still holds the socket");
    let _ = rustix::process::kill_process(sleeper, rustix::process::Signal::KILL);
}

#[test]
fn a_thousand_pidfd_requests_leave_no_descriptor_behind() {
    let broker = Broker::start();
    let _svc = service(&broker, "serve-silently");
    let baseline = broker.fd_count();
    let client = HeldPeer::start_mode(
        &[],
        &binary("pidbus-test-peer"),
        &[
            "pidfd-loop".as_ref(),
            broker.socket().as_os_str(),
            NAME.as_ref(),
            "1000".as_ref(),
        ],
    );
    let report = &client.report;
    eprintln!("client descriptors around 1000 pidfd requests: {report}");
    assert_eq!(report["before"], report["after"], "client: {report}");
    assert_eq!(report["pidfs_ids"].as_array().unwrap().len(), 1, "{report}");
    client.finish();
    broker.wait_for_fd_count(baseline);
}

#[tokio::test]
async fn a_peer_that_never_reads_its_pidfds_is_refused_more_not_served_without_bound() {
    let broker = Broker::start();
    let _svc = service(&broker, "serve-silently");
    let baseline = broker.fd_count();
    let raw = pidbus_tests::raw_handshaken(broker.socket()).await;
    const REQUESTS: u64 = 3000;
    for _ in 0..REQUESTS {
        raw.send_call(
            DRIVER,
            DRIVER_PATH,
            BUS1,
            "GetProcessFD",
            &[DbusValue::string(NAME)],
        )
        .await
        .unwrap();
    }
    let (mut pidfds, mut refused) = (0, 0);
    let mut answered = 0;
    while answered < REQUESTS {
        let answer = raw.next().await.expect("connection open");
        if answer.header.reply_serial.is_none() {
            continue; // NameAcquired of our unique name
        }
        answered += 1;
        match answer.error_name() {
            None => {
                assert_eq!(answer.header.signature, "h");
                assert_eq!(answer.fds.len(), 1);
                pidfds += 1;
            }
            Some(name) => {
                assert_eq!(name, LIMITS_EXCEEDED, "{}", answer.text());
                assert!(
                    answer.text().contains("file descriptors"),
                    "{}",
                    answer.text()
                );
                assert!(answer.fds.is_empty());
                refused += 1;
            }
        }
    }
    eprintln!("{pidfds} pidfds delivered, {refused} requests refused with LimitsExceeded");
    assert_eq!(pidfds + refused, REQUESTS);
    assert!(refused > 0, "the bound on waiting descriptors must be hit");
    assert!(pidfds > 256, "what fits is still served ({pidfds})");
    drop(raw);
    broker.wait_for_fd_count(baseline);
    // And the broker still serves.
    let bus = Connection::connect(broker.socket()).await.unwrap();
    bus.pidfd(NAME).await.unwrap();
}
