//! The D-Bus face against real, unmodified D-Bus programs: busctl,
//! dbus-send, gdbus, dbus-monitor and a python3-dbus service and client,
//! with native SDK peers on the same bus.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use pidbus::{Connection, MethodError, NameFlags, Response};
use pidbus_tests::{Broker, HeldPeer, PATIENCE};

const PY_NAME: &str = "org.pidbus.PyTest";
const PY_PATH: &str = "/org/pidbus/Py";
const PY_IFACE: &str = "org.pidbus.Py";

/// The python3-dbus peer (tests/scripts/dbus_peer.py).
fn python_peer(address: &str, args: &[&str]) -> HeldPeer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dbus_peer.py");
    let mut all = vec![script, address];
    all.extend_from_slice(args);
    let os: Vec<&std::ffi::OsStr> = all.iter().map(|a| a.as_ref()).collect();
    HeldPeer::start_mode(&[], "/usr/bin/python3".as_ref(), &os)
}

/// Runs a D-Bus tool to completion: exit code, stdout, stderr.
fn tool(program: &str, args: &[&str]) -> (i32, String, String) {
    pidbus_tests::run_bounded(20, program, args)
}

fn busctl(broker: &Broker, args: &[&str]) -> (i32, String, String) {
    let address = format!("--address={}", broker.dbus_address());
    tool("busctl", &[&[address.as_str()][..], args].concat())
}

/// A long-running tool whose output lines are collected as they come.
struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    fn start(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Watched {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `text`; returns it.
    fn wait_for(&mut self, text: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {text:?}; got:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Everything printed so far after `marker`, up to a line with `end`.
    fn text_until(&mut self, end: &str) -> String {
        self.wait_for(end);
        self.seen.join("\n")
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send, gdbus, dbus-monitor and python3-dbus: install the Debian packages systemd, dbus-bin, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn busctl_dbus_send_and_gdbus_talk_to_the_bus_itself() {
    let broker = Broker::start_dbus(&[]);
    let address = broker.dbus_address();

    let (code, out, err) = busctl(&broker, &["list", "--no-pager"]);
    assert_eq!(code, 0, "{err}");
    let driver = out
        .lines()
        .find(|l| l.starts_with("org.freedesktop.DBus "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        driver.contains("pidbusd"),
        "the bus is pidbusd's process: {driver}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(":1.") && l.contains("busctl")),
        "{out}"
    );

    let (code, out, err) = busctl(&broker, &["status", "org.freedesktop.DBus"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("PID={}", broker.pid())), "{out}");

    let bus = format!("--bus={address}");
    let (code, out, err) = tool(
        "dbus-send",
        &[
            &bus,
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("string \"org.freedesktop.DBus\""), "{out}");
    assert!(
        out.contains("string \":1."),
        "its own unique name is listed: {out}"
    );

    // The specification's error names, as the tools print them.
    let (code, _, err) = tool(
        "dbus-send",
        &[
            &bus,
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetNameOwner",
            "string:org.nobody.Home",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("org.freedesktop.DBus.Error.NameHasNoOwner"),
        "{err}"
    );
    let (code, _, err) = tool(
        "dbus-send",
        &[
            &bus,
            "--print-reply",
            "--dest=org.nobody.Home",
            "/",
            "org.a.B.C",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("org.freedesktop.DBus.Error.ServiceUnknown"),
        "{err}"
    );
    let (code, _, err) = busctl(
        &broker,
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            "colour='red'",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("unknown key"), "{err}");

    let (code, out, err) = tool(
        "gdbus",
        &[
            "call",
            "-a",
            &address,
            "-d",
            "org.freedesktop.DBus",
            "-o",
            "/org/freedesktop/DBus",
            "-m",
            "org.freedesktop.DBus.Properties.Get",
            "org.freedesktop.DBus",
            "Interfaces",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("org.freedesktop.DBus.Monitoring"), "{out}");
    let (code, out, err) = tool(
        "gdbus",
        &[
            "introspect",
            "-a",
            &address,
            "-d",
            "org.freedesktop.DBus",
            "-o",
            "/org/freedesktop/DBus",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("GetConnectionCredentials"), "{out}");
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send, gdbus, dbus-monitor and python3-dbus: install the Debian packages systemd, dbus-bin, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn a_service_with_two_names_sees_which_one_each_call_was_addressed_to() {
    let broker = Broker::start_dbus(&[]);
    let address = broker.dbus_address();
    const ALIAS: &str = "org.pidbus.PyAlias";
    let service = python_peer(&address, &["service", PY_NAME, ALIAS]);
    let unique = service.report["unique"].as_str().unwrap().to_owned();
    for name in [PY_NAME, ALIAS, unique.as_str()] {
        let (code, out, err) = busctl(&broker, &["call", name, PY_PATH, PY_IFACE, "AddressedAs"]);
        assert_eq!(
            (code, out.trim()),
            (0, format!("s \"{name}\"").as_str()),
            "{err}"
        );
    }
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs python3-dbus: install the Debian packages python3-dbus and python3-gi"
)]
#[test]
fn big_messages_pass_as_on_dbus_daemon_and_what_cannot_pass_is_answered() {
    // A session bus: up to the per-user quota (64 MiB) by default.
    let broker = Broker::start_dbus(&["--session"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A native service, whose socket carries records of at most 64 KiB.
    let _native = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        bus.serve(
            "/org/pidbus/Native",
            "org.pidbus.Native",
            |call| async move {
                let text: String = call.args()?;
                Response::new(&text)
            },
        )
        .unwrap();
        bus.request_name("org.pidbus.Native", NameFlags::default())
            .await
            .unwrap();
        bus
    });
    let address = broker.dbus_address();
    let big = python_peer(&address, &["big", "2000000", "org.pidbus.Native"]);
    let report = &big.report;
    assert_eq!(
        report["has_owner"], false,
        "an invalid name has no owner: {report}"
    );
    assert_eq!(report["ping"], 2_000_000, "{report}");
    assert_eq!(
        report["echo_error"], "org.freedesktop.DBus.Error.LimitsExceeded",
        "the native service cannot be sent 2 MB in one record: the caller is told ({report})"
    );
    assert_ne!(report["still_connected"], 0, "{report}");

    // Over the bus's limit, the sender is disconnected (as by
    // dbus-daemon), alone.
    let small = Broker::start_dbus(&["--session", "--max-message-size", "65536"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dbus_peer.py");
    let (code, out, err) = pidbus_tests::run_bounded(
        60,
        "/usr/bin/python3",
        &[script, &small.dbus_address(), "big", "100000"],
    );
    assert_ne!(code, 0, "100 kB passed a 64 KiB limit: {out}");
    assert!(
        err.contains("Disconnected") || err.contains("NoReply"),
        "{err}"
    );
    small.wait_for_log("65536");
    let (code, _, err) = busctl(
        &small,
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetId",
        ],
    );
    assert_eq!(code, 0, "a bystander is served: {err}");
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl: install the Debian package systemd"
)]
#[test]
fn bus_statistics_show_each_users_quotas_to_root_only() {
    let broker = Broker::start_dbus(&[]);
    let get_stats = |user: Option<&str>| {
        let address = format!("--address={}", broker.dbus_address());
        let args = [
            address.as_str(),
            "--json=short",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.Debug.Stats",
            "GetStats",
        ];
        match user {
            None => tool("busctl", &args),
            Some(uid) => {
                let setpriv = [
                    &["--reuid", uid, "--regid", uid, "--clear-groups", "busctl"][..],
                    &args[..],
                ]
                .concat();
                tool("setpriv", &setpriv)
            }
        }
    };
    let (code, out, err) = get_stats(None);
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &reply["data"][0];
    assert!(
        stats["ActiveConnections"]["data"].as_u64().unwrap() >= 1,
        "{out}"
    );
    let users = stats["org.pidbus.Stats.Users"]["data"].as_array().unwrap();
    let root = users
        .iter()
        .find(|u| u["UnixUserID"]["data"] == 0)
        .unwrap_or_else(|| panic!("no line for root: {out}"));
    let connections = root["connections"]["data"].as_array().unwrap();
    assert!(connections[0].as_u64().unwrap() >= 1, "{out}");
    assert!(connections[1].as_u64().unwrap() >= connections[0].as_u64().unwrap());

    // One connection's share: a service with one name.
    let service = python_peer(&broker.dbus_address(), &["service", PY_NAME]);
    let (code, out, err) = busctl(
        &broker,
        &[
            "--json=short",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.Debug.Stats",
            "GetConnectionStats",
            "s",
            PY_NAME,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let connection = &reply["data"][0];
    assert_eq!(
        connection["UniqueName"]["data"], service.report["unique"],
        "{out}"
    );
    assert_eq!(connection["BusNames"]["data"], 1, "{out}");

    // Another user is refused (AccessDenied; dbus-daemon's system bus
    // policy refuses it too): the counts are of every user.
    if pidbus_tests::can_run_privileged("bus_statistics_show_each_users_quotas_to_root_only") {
        let (code, _, err) = get_stats(Some("65534"));
        assert_ne!(code, 0);
        assert!(err.contains("Access denied"), "{err}");
    }
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send, gdbus, dbus-monitor and python3-dbus: install the Debian packages systemd, dbus-bin, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn a_python_service_is_called_from_busctl_gdbus_dbus_send_and_the_native_sdk() {
    let broker = Broker::start_dbus(&[]);
    let address = broker.dbus_address();
    let service = python_peer(&address, &["service", PY_NAME]);
    assert_eq!(service.report["ready"], PY_NAME);

    let (code, out, err) = busctl(
        &broker,
        &["call", PY_NAME, PY_PATH, PY_IFACE, "Add", "xx", "40", "2"],
    );
    assert_eq!((code, out.as_str()), (0, "x 42\n"), "{err}");
    let (code, _, err) = busctl(&broker, &["call", PY_NAME, PY_PATH, PY_IFACE, "Fail"]);
    assert_ne!(code, 0);
    assert!(err.contains("as asked"), "{err}");
    let (code, out, err) = busctl(&broker, &["introspect", PY_NAME, PY_PATH]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(".Add") && l.contains("xx")),
        "{out}"
    );

    let (code, out, err) = tool(
        "gdbus",
        &[
            "call",
            "-a",
            &address,
            "-d",
            PY_NAME,
            "-o",
            PY_PATH,
            "-m",
            "org.pidbus.Py.Echo",
            "hello",
        ],
    );
    assert_eq!((code, out.trim()), (0, "('hello',)"), "{err}");
    let (code, out, err) = tool(
        "gdbus",
        &["introspect", "-a", &address, "-d", PY_NAME, "-o", PY_PATH],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Echo(in  s text,"), "{out}");
    let (code, out, err) = tool(
        "dbus-send",
        &[
            &format!("--bus={address}"),
            "--print-reply",
            &format!("--dest={PY_NAME}"),
            PY_PATH,
            "org.pidbus.Py.Echo",
            "string:sent",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("string \"sent\""), "{out}");

    // The native SDK calls the D-Bus service with serde types, and gets
    // its errors with the service's name.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        let sum: i64 = bus
            .call(PY_NAME, PY_PATH, PY_IFACE, "Add", &(40i64, 2i64))
            .await
            .unwrap();
        assert_eq!(sum, 42);
        let echoed: String = bus
            .call(PY_NAME, PY_PATH, PY_IFACE, "Echo", &"é")
            .await
            .unwrap();
        assert_eq!(echoed, "é");
        let err = bus
            .call::<_, ()>(PY_NAME, PY_PATH, PY_IFACE, "Fail", &())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("org.pidbus.Error.Sad"), "{err}");
        assert!(err.to_string().contains("as asked"), "{err}");
        // Arguments the service does not take: python3-dbus's own error
        // name comes through.
        let err = bus
            .call::<_, i64>(PY_NAME, PY_PATH, PY_IFACE, "Add", &"x")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("org.freedesktop.DBus.Python.TypeError"),
            "{err}"
        );
    });
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send, gdbus, dbus-monitor and python3-dbus: install the Debian packages systemd, dbus-bin, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn a_native_service_answers_busctl_with_typed_replies_and_knows_its_caller() {
    let broker = Broker::start_dbus(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _service = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        bus.serve(
            "/org/pidbus/Native",
            "org.pidbus.Native",
            |call| async move {
                match call.member() {
                    "Add" => {
                        let (a, b): (i64, i64) = call.args()?;
                        Response::new(&(a + b))
                    }
                    "WhoCalledMe" => Response::new(&pidbus::CallerFacts::from(call.caller())),
                    "Fail" => Err(MethodError::failed("org.pidbus.Error.Native", "as asked")),
                    other => Err(MethodError::unknown_method(other)),
                }
            },
        )
        .unwrap();
        bus.request_name("org.pidbus.Native", NameFlags::default())
            .await
            .unwrap();
        bus
    });
    let call = [
        "call",
        "org.pidbus.Native",
        "/org/pidbus/Native",
        "org.pidbus.Native",
    ];
    let (code, out, err) = busctl(&broker, &[&call[..], &["Add", "xx", "40", "2"]].concat());
    assert_eq!((code, out.as_str()), (0, "x 42\n"), "{err}");
    // The handler got busctl as its verified caller.
    let (code, out, err) = busctl(
        &broker,
        &[&call[..], &["--json=short", "WhoCalledMe"]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fields = &reply["data"];
    assert_eq!(fields[2], 0, "uid: {out}");
    assert!(
        fields[6]
            .as_str()
            .is_some_and(|exe| exe.ends_with("/busctl")),
        "exe: {out}"
    );
    assert!(
        fields[5].as_u64().is_some_and(|id| id > 0),
        "pidfs id: {out}"
    );
    // Wrong argument types are refused before the handler, naming the
    // expected signature; service errors keep their name.
    let (code, _, err) = busctl(&broker, &[&call[..], &["Add", "s", "x"]].concat());
    assert_ne!(code, 0);
    assert!(
        err.contains("expected arguments of signature 'xx'"),
        "{err}"
    );
    let (code, _, err) = busctl(&broker, &[&call[..], &["Fail"]].concat());
    assert_ne!(code, 0);
    assert!(err.contains("as asked"), "{err}");
    let (code, _, err) = busctl(&broker, &[&call[..], &["Nope"]].concat());
    assert_ne!(code, 0);
    assert!(err.contains("Nope"), "{err}");
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send, gdbus, dbus-monitor and python3-dbus: install the Debian packages systemd, dbus-bin, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn signals_cross_faces_through_match_rules_and_monitors_see_them() {
    let broker = Broker::start_dbus(&[]);
    let address = broker.dbus_address();
    let service = python_peer(&address, &["service", PY_NAME]);
    assert_eq!(service.report["ready"], PY_NAME);
    let rule = "type='signal',arg0namespace='org.pidbus',path_namespace='/org/pidbus'";
    let mut listener = python_peer(&address, &["listen", rule]);
    assert_eq!(listener.report["listening"], rule);
    let mut monitor = Watched::start("dbus-monitor", &["--address", &address]);
    monitor.wait_for("member=NameLost");
    let mut busctl_monitor = Watched::start(
        "busctl",
        &[
            &format!("--address={address}"),
            "monitor",
            "--match",
            "interface='org.pidbus.Native'",
        ],
    );
    busctl_monitor.wait_for("Monitoring bus message stream");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        let mut from_python = bus
            .subscribe(pidbus::MatchRule {
                interface: Some(PY_IFACE.into()),
                arg0: Some("org.pidbus.thing".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        // D-Bus → D-Bus and D-Bus → native.
        let () = bus
            .call(PY_NAME, PY_PATH, PY_IFACE, "Emit", &"org.pidbus.thing")
            .await
            .unwrap();
        let signal = from_python.next().await.unwrap();
        let (arg, path): (String, pidbus::zvariant::OwnedObjectPath) = signal.args().unwrap();
        assert_eq!(
            (arg.as_str(), path.as_str()),
            ("org.pidbus.thing", "/org/pidbus/Py/child")
        );
        // Outside the listener's namespaces: not delivered to it.
        bus.emit(
            "/org/pidbus/native",
            "org.pidbus.Native",
            "Ping",
            &"com.other",
        )
        .await
        .unwrap();
        bus.emit("/elsewhere", "org.pidbus.Native", "Ping", &"org.pidbus.x")
            .await
            .unwrap();
        // Native → D-Bus.
        bus.emit(
            "/org/pidbus/native",
            "org.pidbus.Native",
            "Ping",
            &"org.pidbus.native",
        )
        .await
        .unwrap();
    });
    let got = listener.next_line();
    assert_eq!(
        got["member"], "NameAcquired",
        "the listener's own name comes first: {got}"
    );
    let got = listener.next_line();
    assert_eq!(got["member"], "Changed", "{got}");
    assert_eq!(got["args"][0], "org.pidbus.thing");
    let got = listener.next_line();
    assert_eq!(got["member"], "Ping", "{got}");
    assert_eq!(
        got["args"][0], "org.pidbus.native",
        "only the matching Ping: {got}"
    );

    let seen = monitor.text_until("string \"org.pidbus.native\"");
    assert!(
        seen.contains("member=Emit"),
        "the call is monitored: {seen}"
    );
    assert!(seen.contains("member=Changed"), "{seen}");
    // The bus's own traffic too, as dbus-daemon's monitors see it: the
    // native peer's Hello, the reply, its NameAcquired, its AddMatch.
    for driver_traffic in [
        "member=Hello",
        "method return time=",
        "member=NameAcquired",
        "member=AddMatch",
    ] {
        assert!(seen.contains(driver_traffic), "{driver_traffic}: {seen}");
    }
    let seen = busctl_monitor.text_until("org.pidbus.native");
    assert!(
        !seen.contains("Member=Changed"),
        "busctl's --match selects: {seen}"
    );
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send, gdbus, dbus-monitor and python3-dbus: install the Debian packages systemd, dbus-bin, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn names_and_owner_changes_are_seen_on_both_faces() {
    let broker = Broker::start_dbus(&[]);
    let address = broker.dbus_address();
    let rule = "type='signal',member='NameOwnerChanged',arg0='org.pidbus.Named'";
    let mut listener = python_peer(&address, &["listen", rule]);
    assert_eq!(listener.report["listening"], rule);
    assert_eq!(listener.next_line()["member"], "NameAcquired");
    let mut wait = Watched::start(
        "gdbus",
        &[
            "wait",
            "--address",
            &address,
            "--timeout",
            "25",
            "org.pidbus.Named",
        ],
    );
    // gdbus wait is on the bus before the name exists; it ends once the
    // name is owned.
    let on_bus = (0..1000).any(|_| {
        let (_, out, _) = busctl(&broker, &["list", "--no-pager"]);
        out.lines().any(|l| l.contains(" gdbus "))
    });
    assert!(on_bus, "gdbus wait never connected");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (owner, id) = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        let id = bus.unique_id().to_string();
        bus.request_name("org.pidbus.Named", NameFlags::default())
            .await
            .unwrap();
        (bus, id)
    });
    let status = wait.child.wait().unwrap();
    assert!(status.success(), "gdbus wait: {status} {:?}", wait.seen);
    let changed = listener.next_line();
    assert_eq!(
        changed["args"],
        serde_json::json!(["org.pidbus.Named", "", id])
    );
    let (code, out, err) = busctl(
        &broker,
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetNameOwner",
            "s",
            "org.pidbus.Named",
        ],
    );
    assert_eq!(
        (code, out.trim()),
        (0, format!("s \"{id}\"").as_str()),
        "{err}"
    );
    // A D-Bus peer queues behind the native owner, and sees its queue.
    let (code, out, err) = busctl(
        &broker,
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
            "su",
            "org.pidbus.Named",
            "4",
        ],
    );
    assert_eq!(
        (code, out.trim()),
        (0, "u 3"),
        "DBUS_REQUEST_NAME_REPLY_EXISTS: {err}"
    );
    drop(owner);
    let changed = listener.next_line();
    assert_eq!(
        changed["args"],
        serde_json::json!(["org.pidbus.Named", id, ""])
    );
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send, gdbus, dbus-monitor and python3-dbus: install the Debian packages systemd, dbus-bin, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn descriptors_pass_both_ways_and_credentials_carry_the_callers_pidfd() {
    let broker = Broker::start_dbus(&[]);
    let address = broker.dbus_address();
    let service = python_peer(&address, &["service", PY_NAME]);
    assert_eq!(service.report["ready"], PY_NAME);

    // D-Bus ↔ D-Bus.
    let client = python_peer(&address, &["call-fd", PY_NAME]);
    assert_eq!(client.report["sent"], "through a pipe");
    assert_eq!(client.report["received"], "back again");

    // Native → D-Bus and back.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        let (read, write) = rustix::pipe::pipe().unwrap();
        std::fs::File::from(write)
            .write_all(b"from the native face")
            .unwrap();
        let fd = pidbus::zvariant::Fd::from(read.as_fd());
        let text: String = bus
            .call(PY_NAME, PY_PATH, PY_IFACE, "TakeFd", &(fd,))
            .await
            .unwrap();
        assert_eq!(text, "from the native face");
        let reply = bus
            .call_method(
                pidbus::MethodCall::new(PY_NAME, PY_PATH, PY_IFACE, "GiveFd")
                    .unwrap()
                    .args(&"to the native face")
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!((reply.signature.as_str(), reply.fds.len()), ("h", 1));
        let mut got = String::new();
        std::fs::File::from(reply.fds.into_iter().next().unwrap())
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "to the native face");
    });

    // D-Bus → native and back: python3-dbus passes a pipe to a native
    // service and gets one from it.
    let _native = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        bus.serve(PY_PATH, PY_IFACE, |mut call| async move {
            match call.member() {
                "TakeFd" => {
                    let mut text = String::new();
                    let fd = call.take_fds().into_iter().next();
                    let fd = fd.ok_or_else(|| MethodError::invalid_args("no descriptor"))?;
                    std::fs::File::from(fd)
                        .read_to_string(&mut text)
                        .map_err(|e| MethodError::failed("org.pidbus.Error.Io", e.to_string()))?;
                    Response::new(&text)
                }
                "GiveFd" => {
                    let text: String = call.args()?;
                    let (read, write) = rustix::pipe::pipe()
                        .map_err(|e| MethodError::failed("org.pidbus.Error.Io", e.to_string()))?;
                    std::fs::File::from(write)
                        .write_all(text.as_bytes())
                        .map_err(|e| MethodError::failed("org.pidbus.Error.Io", e.to_string()))?;
                    Response::new(&pidbus::zvariant::Fd::from(read.as_fd()))
                }
                other => Err(MethodError::unknown_method(other)),
            }
        })
        .unwrap();
        bus.request_name("org.pidbus.NativeFds", NameFlags::default())
            .await
            .unwrap();
        bus
    });
    let client = python_peer(&address, &["call-fd", "org.pidbus.NativeFds"]);
    assert_eq!(client.report["sent"], "through a pipe");
    assert_eq!(client.report["received"], "back again");

    // GetConnectionCredentials: the standard keys, the pidfs id, and a
    // ProcessFD whose pidfs id (its inode) is the caller's.
    let creds = python_peer(&address, &["credentials"]);
    let report = &creds.report;
    assert_eq!(report["uid"], 0);
    assert_eq!(report["pid"], report["self_pid"]);
    assert!(
        report["pidfs_id"].as_u64().is_some_and(|id| id > 0),
        "{report}"
    );
    assert_eq!(report["fd_ino"], report["pidfs_id"], "{report}");
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send, gdbus, dbus-monitor and python3-dbus: install the Debian packages systemd, dbus-bin, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn zbus_services_and_clients_work_with_busctl_and_the_native_sdk() {
    let broker = Broker::start_dbus(&[]);
    let address = broker.dbus_address();
    let zbus_peer = pidbus_tests::binary("zbus-peer");
    let service = HeldPeer::start_mode(
        &[],
        &zbus_peer,
        &[
            "service".as_ref(),
            address.as_ref(),
            "org.pidbus.Zbus".as_ref(),
        ],
    );
    assert_eq!(service.report["ready"], "org.pidbus.Zbus");
    let zbus_call = [
        "call",
        "org.pidbus.Zbus",
        "/org/pidbus/Zbus",
        "org.pidbus.Zbus",
    ];
    let (code, out, err) = busctl(
        &broker,
        &[&zbus_call[..], &["Add", "xx", "1", "2"]].concat(),
    );
    assert_eq!((code, out.as_str()), (0, "x 3\n"), "{err}");
    let (code, out, err) = busctl(
        &broker,
        &["introspect", "org.pidbus.Zbus", "/org/pidbus/Zbus"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(".Said") && l.contains("signal")),
        "{out}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let native = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        // Native → zbus: typed calls, the service's unique name as sender.
        let sum: i64 = bus
            .call(
                "org.pidbus.Zbus",
                "/org/pidbus/Zbus",
                "org.pidbus.Zbus",
                "Add",
                &(40i64, 2i64),
            )
            .await
            .unwrap();
        assert_eq!(sum, 42);
        let caller: String = bus
            .call(
                "org.pidbus.Zbus",
                "/org/pidbus/Zbus",
                "org.pidbus.Zbus",
                "Caller",
                &(),
            )
            .await
            .unwrap();
        assert_eq!(caller, bus.unique_id().to_string());
        // zbus → native: signals.
        let mut said = bus
            .subscribe(pidbus::MatchRule {
                member: Some("Said".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let () = bus
            .call(
                "org.pidbus.Zbus",
                "/org/pidbus/Zbus",
                "org.pidbus.Zbus",
                "Emit",
                &"hi",
            )
            .await
            .unwrap();
        let (text,): (String,) = said.next().await.unwrap().args().unwrap();
        assert_eq!(text, "hi");
        // A native service for the zbus client.
        bus.serve(
            "/org/pidbus/Native",
            "org.pidbus.Native",
            |call| async move {
                match call.member() {
                    "Add" => {
                        let (a, b): (i64, i64) = call.args()?;
                        Response::new(&(a + b))
                    }
                    "Echo" => Response::new(&call.args::<String>()?),
                    "Fail" => Err(MethodError::failed(
                        "org.freedesktop.DBus.Error.Failed",
                        "as asked",
                    )),
                    other => Err(MethodError::unknown_method(other)),
                }
            },
        )
        .unwrap();
        bus.request_name("org.pidbus.Native", NameFlags::default())
            .await
            .unwrap();
        bus
    });
    // zbus → native, and zbus → zbus.
    for (name, path, interface) in [
        (
            "org.pidbus.Native",
            "/org/pidbus/Native",
            "org.pidbus.Native",
        ),
        ("org.pidbus.Zbus", "/org/pidbus/Zbus", "org.pidbus.Zbus"),
    ] {
        let client = HeldPeer::start_mode(
            &[],
            &zbus_peer,
            &[
                "client".as_ref(),
                address.as_ref(),
                name.as_ref(),
                path.as_ref(),
                interface.as_ref(),
            ],
        );
        let report = &client.report;
        assert_eq!(report["sum"], 42, "{name}: {report}");
        assert_eq!(report["echoed"], "zbus", "{name}: {report}");
        assert!(
            report["owner"]
                .as_str()
                .is_some_and(|o| o.starts_with(":1.")),
            "{report}"
        );
        assert_eq!(
            report["error"]["name"], "org.freedesktop.DBus.Error.Failed",
            "{report}"
        );
        assert_eq!(report["error"]["message"], "as asked", "{report}");
    }
    drop(native);
}

/// `org.pidbus.Bus1.GetConnectionIdentity` gives D-Bus programs the
/// broker-verified identity of any connection (busctl here): the pidfs
/// id, executable and unit the native SDK sees for itself, and, for a
/// user asking about another user's process, only what `/proc` would show
/// that user (no executable, unit or cgroup). `ListPeers` lists it among
/// every connection; `GetProcessFD` hands a python3-dbus client the pidfd
/// of that same process. The driver introspects all three.
#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl: install the Debian package systemd"
)]
#[test]
fn dbus_programs_get_a_connections_verified_identity() {
    let broker = Broker::start_dbus(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let native = runtime
        .block_on(Connection::connect(broker.socket()))
        .unwrap();
    let me = native.unique_id().to_string();
    let own = native.identity().clone();
    let address = format!("--address={}", broker.dbus_address());
    // `org.pidbus.Bus1` MEMBER(s ARG) by busctl, run through `prefix`;
    // the reply's arguments as JSON.
    let bus1 = |prefix: &[&str], member: &str, arg: &str| {
        let mut command = Command::new(prefix.first().copied().unwrap_or("busctl"));
        if !prefix.is_empty() {
            command.args(&prefix[1..]).arg("busctl");
        }
        let out = command
            .args([
                &address,
                "--json=short",
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.pidbus.Bus1",
                member,
                "s",
                arg,
            ])
            .output()
            .expect("run busctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        reply["data"].clone()
    };
    let ask = |prefix: &[&str], name: &str| bus1(prefix, "GetConnectionIdentity", name)[0].clone();
    let seen = ask(&[], &me);
    assert_eq!(seen["unique_name"]["data"], me.as_str(), "{seen}");
    assert_eq!(seen["uid"]["data"], own.uid, "{seen}");
    assert_eq!(seen["pidfs_id"]["data"], own.pidfs_id.unwrap(), "{seen}");
    assert_eq!(
        seen["exe"]["data"],
        own.exe.clone().unwrap().as_str(),
        "{seen}"
    );
    assert_eq!(seen["pid"]["data"], own.pid, "{seen}");
    assert_eq!(seen["sender_proof"]["data"], "kernel", "{seen}");
    assert_eq!(seen["exited_at_connect"]["data"], false, "{seen}");
    if pidbus_tests::can_run_privileged("dbus_programs_get_a_connections_verified_identity") {
        let by_nobody = ask(&pidbus_tests::AS_NOBODY, &me);
        assert_eq!(by_nobody["uid"]["data"], own.uid, "{by_nobody}");
        assert!(
            by_nobody.get("exe").is_none() && by_nobody.get("cgroup").is_none(),
            "another user sees what /proc shows it: {by_nobody}"
        );
    }
    // ListPeers pages through every connection, each as above.
    let listing = bus1(&[], "ListPeers", "");
    let peers = listing[0].as_array().expect("an array of peers");
    assert_eq!(listing[1], false, "one page: {listing}");
    let listed = peers
        .iter()
        .find(|p| p["unique_name"]["data"] == me.as_str())
        .unwrap_or_else(|| panic!("{me} is listed: {listing}"));
    assert_eq!(listed["pidfs_id"]["data"], own.pidfs_id.unwrap());
    // GetProcessFD hands a python3-dbus client the process's pidfd: the
    // same process (pidfs id) the identity names.
    let script = "import dbus, json, os, sys\n\
        bus = dbus.bus.BusConnection(sys.argv[1])\n\
        bus1 = dbus.Interface(bus.get_object('org.freedesktop.DBus', '/org/freedesktop/DBus'), 'org.pidbus.Bus1')\n\
        fd = bus1.GetProcessFD(sys.argv[2]).take()\n\
        print(json.dumps({'ino': os.fstat(fd).st_ino}))\n";
    let (code, out, err) = tool(
        "/usr/bin/python3",
        &["-c", script, &broker.dbus_address(), &me],
    );
    assert_eq!(code, 0, "{err}");
    let handed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(handed["ino"], own.pidfs_id.unwrap(), "{handed}");
    let (code, out, err) = tool(
        "busctl",
        &[
            &address,
            "introspect",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.pidbus.Bus1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(".GetConnectionIdentity")
            && out.contains(".GetProcessFD")
            && out.contains(".ListPeers"),
        "{out}"
    );
}

/// `glib_caller.py ADDRESS ARGS…` (tests/scripts), a GLib program.
fn glib_caller(prefix: &[&str], address: &str, args: &[&str]) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/glib_caller.py");
    let mut all: Vec<&str> = prefix.to_vec();
    all.extend(["/usr/bin/python3", script, address]);
    all.extend_from_slice(args);
    all.into_iter().map(str::to_owned).collect()
}

/// The caller field's `key=value` pairs.
fn caller_facts(field: &str) -> std::collections::HashMap<String, String> {
    field
        .split(' ')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn a_glib_service_reads_the_verified_caller_of_each_call_and_no_caller_can_forge_it() {
    let broker = Broker::start_dbus(&[]);
    let address = broker.dbus_address();
    // A caller that writes a field of its own, claiming to be root's pid 1.
    let forged = "uid=0 gid=0 pid=1 pidfs_id=1 exe=/usr/sbin/forged";
    let call = |prefix: &[&str], service: &str| -> serde_json::Value {
        let argv = glib_caller(prefix, &address, &["call", service, forged]);
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        let (code, out, err) = pidbus_tests::run_bounded(20, &argv[0], &args);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let serve = |mode: &str| {
        let argv = glib_caller(&[], &address, &["serve", mode]);
        let os: Vec<&std::ffi::OsStr> = argv[1..].iter().map(|a| a.as_ref()).collect();
        HeldPeer::start_mode(&[], argv[0].as_ref(), &os)
    };
    {
        // A service that did not ask sees no field at all, not the forged one.
        let _plain = serve("plain");
        assert_eq!(
            call(&[], "plain")["answer"],
            "",
            "a field reached a receiver that did not ask"
        );
    }
    let _service = serve("attach");
    let mut callers = vec![&[][..]];
    if pidbus_tests::can_run_privileged("a_glib_service_reads_the_verified_caller") {
        callers.push(&pidbus_tests::AS_NOBODY[..]);
    }
    for prefix in callers {
        let answer = call(prefix, "attach");
        let facts = caller_facts(answer["answer"].as_str().unwrap_or_default());
        let fact = |key: &str| facts.get(key).cloned().unwrap_or_default();
        assert_eq!(fact("uid"), answer["uid"].to_string(), "{answer}");
        assert_eq!(fact("pid"), answer["pid"].to_string(), "{answer}");
        assert_eq!(fact("pidfs_id"), answer["pidfs_id"].to_string(), "{answer}");
        assert!(fact("exe").contains("python3"), "{answer}");
    }
}
