//! pidbusctl on every bus: the real binary against pidbus (its native
//! socket and its D-Bus socket), dbus-daemon and dbus-broker (started by
//! the test), with a service written with the SDK and signals sent by
//! `dbus-send`. What is D-Bus works on all four; what needs pidbus fails
//! elsewhere with exit status 1 and a message that says so; whoami,
//! status and list show what GetConnectionCredentials says, marked as not
//! verified.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use pidbus::{Access, Connection, Interface, NameFlags};
use pidbus_tests::buses::ReferenceBus;
use pidbus_tests::{Broker, PATIENCE, PublicDir, binary, outcome};
use serde_json::{Value, json};

const NAME: &str = "org.pidbus.AnyBus";
const PATH: &str = "/org/pidbus/AnyBus";
const IFACE: &str = "org.pidbus.AnyBus";
/// The interface of the signals `dbus-send` and `pidbusctl emit` send.
const SIGNALS: &str = "org.pidbus.AnyBus.Signals";

/// A service written with the SDK, connected to `address` on its own
/// runtime: a method, a read-only and a writable property, and `NAME`.
fn service(address: &str) -> (tokio::runtime::Runtime, Connection) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bus = runtime.block_on(async {
        let bus = Connection::connect(address).await.unwrap();
        let interface = Interface::new(IFACE)
            .unwrap()
            .method("Add", |_, (a, b): (i64, i64)| async move { Ok(a + b) })
            .property("Count", Access::Read, 3u32)
            .property("Label", Access::ReadWrite, String::from("start"));
        bus.serve_interface(PATH, interface).unwrap();
        let reply = bus.request_name(NAME, NameFlags::default()).await.unwrap();
        assert_eq!(reply, pidbus::RequestNameReply::PrimaryOwner, "{address}");
        bus
    });
    (runtime, bus)
}

/// `pidbusctl --address ADDRESS ARGS…`: (exit code, stdout, stderr).
fn ctl(address: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("pidbusctl"))
        .args(["--address", address])
        .args(args)
        .output()
        .expect("run pidbusctl");
    outcome(&out)
}

/// stdout of a pidbusctl run that must succeed.
fn ok(address: &str, args: &[&str]) -> String {
    let (code, out, err) = ctl(address, args);
    assert_eq!(code, 0, "pidbusctl --address {address} {args:?}: {err}");
    out
}

/// The JSON a pidbusctl run that must succeed prints with --json.
fn json_of(address: &str, args: &[&str]) -> Value {
    let out = ok(address, &[&["--json"][..], args].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// A pidbusctl that runs until killed (listen, monitor, own); its stdout
/// lines come through a channel as it prints them.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn start(address: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary("pidbusctl"))
            .args(["--address", address])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run pidbusctl");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The next line that `wanted` accepts, whatever came before it,
    /// calling `poke` (which makes what is waited for happen) before each
    /// wait: a subscription that is not in place yet misses one poke, not
    /// the test. Fails after [`PATIENCE`].
    fn line_after(
        &self,
        what: &str,
        mut poke: impl FnMut(),
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            poke();
            let round = Instant::now() + Duration::from_millis(200);
            loop {
                let left = round.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) if wanted(&line) => return line,
                    Ok(_) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        panic!("pidbusctl stopped before printing {what}")
                    }
                }
            }
            assert!(Instant::now() < deadline, "pidbusctl never printed {what}");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dbus-send` of signal `SIGNALS.member` with a string argument, on the
/// D-Bus socket at `address`.
fn dbus_send_signal(address: &str, member: &str, text: &str) {
    let status = Command::new("dbus-send")
        .arg(format!("--bus={address}"))
        .args(["--type=signal", "/org/pidbus/AnyBus/sender"])
        .arg(format!("{SIGNALS}.{member}"))
        .arg(format!("string:{text}"))
        .status()
        .expect("run dbus-send");
    assert!(status.success(), "dbus-send on {address}: {status}");
}

/// The row of [`NAME`] in a JSON listing (`names`, `list`) of the bus at
/// `address`.
fn row_of<'a>(listing: &'a Value, address: &str) -> &'a Value {
    listing
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == NAME)
        .unwrap_or_else(|| panic!("{address}: {NAME} not in {listing}"))
}

/// Everything pidbusctl does, through `address`; `dbus_address` is the
/// bus's D-Bus socket (for the service and dbus-send, the same bus),
/// `pidbus` says which kind of bus it is.
fn pidbusctl_works(address: &str, dbus_address: &str, pidbus: bool) {
    let (_runtime, service) = service(dbus_address);
    let owner = service.unique_id().to_string();
    let me = std::process::id();

    // Names.
    let names = json_of(address, &["names"]);
    let entry = row_of(&names, address);
    assert_eq!(entry["owner"], owner, "{address}");
    assert!(ok(address, &["names"]).lines().any(|l| l.starts_with(NAME)));
    let listed = json_of(address, &["list"]);
    let row = row_of(&listed, address);
    assert_eq!(row["owner"], owner, "{address}");
    assert_eq!(row["pid"], me, "{address}: {row}");
    assert_eq!(row["verified"], pidbus, "{address}: {row}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == owner),
        "{address}: the unique id {owner} is listed: {listed}"
    );
    let (code, text, note) = ctl(address, &["list"]);
    assert_eq!(code, 0, "{note}");
    let line = text
        .lines()
        .find(|l| l.starts_with(NAME))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(&owner) && line.contains(&me.to_string()),
        "{line}"
    );
    if !pidbus {
        assert!(note.contains("not verified by pidfd"), "{note}");
    }
    assert!(
        ok(address, &["complete", "names"])
            .lines()
            .any(|l| l == NAME),
        "{address}: completion of names"
    );
    let status = json_of(address, &["status", NAME]);
    assert_eq!(status["id"], owner, "{address}");
    assert_eq!(status["pid"], me, "{address}");
    if pidbus {
        assert!(status["pidfs_id"].is_u64(), "{status}");
    } else {
        assert_eq!(status["verified"], false, "{status}");
        assert_eq!(status["source"], "GetConnectionCredentials", "{status}");
    }
    let (code, _, err) = ctl(address, &["status", "org.pidbus.Nobody"]);
    assert_eq!(code, 1, "{address}: {err}");
    assert!(err.contains("org.pidbus.Nobody"), "{address}: {err}");
    let (code, out, err) = ctl(address, &["start", NAME]);
    assert_eq!(code, 0, "{address}: {err}");
    assert_eq!(out, format!("{NAME} was running already\n"), "{address}");
    assert_eq!(
        ok(address, &["wait", "--name", NAME, "--timeout", "30"]),
        format!("{NAME} is owned by {owner}\n"),
        "{address}"
    );
    ok(address, &["activatable"]);

    // Calls, introspection, properties.
    let call = ["call", NAME, PATH, IFACE, "Add"];
    assert_eq!(
        ok(address, &[&call[..], &["xx", "40", "2"]].concat()),
        "x 42\n"
    );
    assert_eq!(
        json_of(address, &[&call[..], &["--args-json", "[40, 2]"]].concat()),
        json!([42]),
        "{address}"
    );
    let (code, _, err) = ctl(address, &["call", NAME, PATH, IFACE, "Nope"]);
    assert_eq!(code, 1, "{address}: {err}");
    let members = ok(address, &["introspect", NAME, PATH]);
    for member in [".Add", ".Count", ".Label"] {
        assert!(
            members.lines().any(|l| l.starts_with(member)),
            "{address}: {member} in {members}"
        );
    }
    assert!(ok(address, &["introspect", NAME, PATH, "--xml"]).contains(IFACE));
    assert!(ok(address, &["tree", NAME]).lines().any(|l| l == PATH));
    assert_eq!(
        ok(
            address,
            &["get-property", NAME, PATH, IFACE, "Count", "Label"]
        ),
        "u 3\ns \"start\"\n",
        "{address}"
    );
    ok(
        address,
        &["set-property", NAME, PATH, IFACE, "Label", "s", "moved"],
    );
    assert_eq!(
        ok(address, &["get-property", NAME, PATH, IFACE, "Label"]),
        "s \"moved\"\n",
        "{address}"
    );

    // Signals: listen and monitor see what dbus-send and pidbusctl emit.
    let listen = Running::start(address, &["--json", "listen", "--interface", SIGNALS]);
    let text_listen = Running::start(address, &["listen", "--interface", SIGNALS]);
    let heard = listen.line_after(
        "the signal dbus-send sent",
        || dbus_send_signal(dbus_address, "Wave", "hello"),
        |line| line.contains("\"Wave\""),
    );
    let heard: Value = serde_json::from_str(&heard).unwrap();
    assert_eq!(heard["interface"], SIGNALS, "{heard}");
    assert_eq!(heard["body"], json!(["hello"]), "{heard}");
    // The listener is subscribed now: one emit is enough.
    ok(
        address,
        &["emit", "/org/pidbus/AnyBus", SIGNALS, "Emitted", "u", "7"],
    );
    let emitted = listen.line_after(
        "the signal pidbusctl emitted",
        || {},
        |line| line.contains("\"Emitted\""),
    );
    assert!(emitted.contains("\"body\":[7]"), "{emitted}");
    // Without --json, a line of text, as monitor prints it.
    let line = text_listen.line_after(
        "the emitted signal, as text",
        || {},
        |line| line.contains("Emitted"),
    );
    assert!(line.starts_with("signal "), "{line}");
    assert!(
        line.contains(&format!("/org/pidbus/AnyBus {SIGNALS}.Emitted")) && line.contains('7'),
        "{line}"
    );
    let rule = format!("type='signal',interface='{SIGNALS}'");
    let monitor = Running::start(address, &["--json", "monitor", "--match", &rule]);
    let seen = monitor.line_after(
        "the signal dbus-send sent, as a monitor",
        || dbus_send_signal(dbus_address, "Monitored", "seen"),
        |line| line.contains("\"Monitored\""),
    );
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["type"], "signal", "{seen}");
    assert_eq!(seen["body"], json!(["seen"]), "{seen}");

    // Owning a name.
    let owned = format!("{NAME}.Owned");
    let own = Running::start(address, &["own", &owned]);
    own.line_after(
        "acquired",
        || {},
        |line| line == format!("acquired {owned}"),
    );
    assert!(
        ok(address, &["names"])
            .lines()
            .any(|l| l.starts_with(&owned))
    );
    drop(own);

    // Who am I: pidbus's verified identity, or what the bus reports.
    let whoami = Command::new(binary("pidbusctl"))
        .args(["--address", address, "--json", "whoami"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = whoami.id();
    let out = whoami.wait_with_output().unwrap();
    assert!(out.status.success(), "{address}: whoami");
    let who: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["pid"], pid, "{who}");
    assert_eq!(who["uid"], rustix::process::getuid().as_raw(), "{who}");
    if pidbus {
        assert!(who["pidfs_id"].is_u64(), "{who}");
    } else {
        assert_eq!(who["verified"], false, "{who}");
        let text = ok(address, &["whoami"]);
        assert!(
            text.lines()
                .any(|l| l.starts_with("source") && l.contains("not verified by pidfd")),
            "{text}"
        );
    }

    // What needs pidbus.
    let (code, _, err) = ctl(address, &["peers"]);
    if pidbus {
        assert_eq!(code, 0, "{err}");
    } else {
        assert_eq!(code, 1, "{address}: {err}");
        assert!(err.contains("peers needs pidbus"), "{err}");
        assert!(err.contains("pidbusctl list"), "what works instead: {err}");
        let (code, _, err) = ctl(address, &["--json", "peers"]);
        assert_eq!(code, 1);
        let error: Value = serde_json::from_str(err.trim()).unwrap();
        assert_eq!(error["needs"], "pidbus", "{error}");
        assert_eq!(error["exit_code"], 1, "{error}");
    }
    let (code, _, err) = ctl(address, &["authorize", "org.pidbus.test.anything"]);
    if pidbus {
        // The open policy's answer, allowed or not.
        assert!(!err.contains("needs pidbus"), "{err}");
    } else {
        assert_eq!(code, 1, "{address}: {err}");
        assert!(err.contains("authorize needs pidbus"), "{err}");
    }
    let (code, out, err) = ctl(address, &["pidfd", NAME]);
    if pidbus || code == 0 {
        // pidbus, or a bus whose GetConnectionCredentials gives ProcessFD.
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("pid {me}")), "{out}");
    } else {
        assert_eq!(code, 1, "{address}: {err}");
        assert!(err.contains("pidfd needs pidbus"), "{err}");
    }
    let (code, _, err) = ctl(address, &["wait", NAME, "--timeout", "0.2"]);
    if pidbus || code == 2 {
        assert!(err.contains("still running"), "{err}");
    } else {
        assert_eq!(code, 1, "{address}: {err}");
        assert!(err.contains("wait needs pidbus"), "{err}");
    }
}

/// The tools a test against a reference bus needs: present, or the test
/// is skipped outside CI (and fails in CI, whose `.ci/run` installs them).
fn has_tools(test: &str, tools: &[(&str, &str)]) -> bool {
    tools
        .iter()
        .all(|(tool, package)| pidbus_tests::has_tool(test, tool, package))
}

#[test]
fn pidbusctl_works_on_pidbus_through_either_socket() {
    if !has_tools(
        "pidbusctl_works_on_pidbus_through_either_socket",
        &[("dbus-send", "dbus-bin")],
    ) {
        return;
    }
    let broker = Broker::start_dbus(&[]);
    let dbus = broker.dbus_address();
    pidbusctl_works(&broker.socket().display().to_string(), &dbus, true);
    // The names of the first round are released once its peers are gone.
    pidbus_tests::eventually("the first round's names are released", || {
        !ok(&dbus, &["names"]).contains(NAME)
    });
    pidbusctl_works(&dbus, &dbus, true);
}

#[test]
fn pidbusctl_works_on_dbus_daemon() {
    let test = "pidbusctl_works_on_dbus_daemon";
    if !has_tools(
        test,
        &[("dbus-daemon", "dbus-daemon"), ("dbus-send", "dbus-bin")],
    ) {
        return;
    }
    let bus = ReferenceBus::dbus_daemon();
    pidbusctl_works(&bus.address(), &bus.address(), false);
}

#[test]
fn pidbusctl_works_on_dbus_broker() {
    let test = "pidbusctl_works_on_dbus_broker";
    if !pidbus_tests::can_run_privileged(test)
        || !has_tools(
            test,
            &[
                ("dbus-broker-launch", "dbus-broker"),
                ("systemd-socket-activate", "systemd"),
                ("dbus-send", "dbus-bin"),
            ],
        )
    {
        return;
    }
    let bus = ReferenceBus::dbus_broker();
    pidbusctl_works(&bus.address(), &bus.address(), false);
}

/// `pidbusctl ARGS…` with no --address, in `env` (and no other bus
/// variable): (exit code, stdout, stderr).
fn ctl_in(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(binary("pidbusctl"));
    command
        .args(args)
        .env_remove("PIDBUS_ADDRESS")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
        .env_remove("XDG_RUNTIME_DIR");
    for (key, value) in env {
        command.env(key, value);
    }
    outcome(&command.output().expect("run pidbusctl"))
}

/// Whether `--json whoami` printed pidbus's identity (not what another
/// bus reports).
fn on_pidbus(out: &str) -> bool {
    let who: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    who["pidfs_id"].is_u64() && who.get("verified").is_none()
}

#[test]
fn without_an_address_pidbusctl_finds_the_bus_as_the_sdk_does() {
    let test = "without_an_address_pidbusctl_finds_the_bus_as_the_sdk_does";
    if !has_tools(test, &[("dbus-daemon", "dbus-daemon")]) {
        return;
    }
    let reference = ReferenceBus::dbus_daemon();
    let dbus_daemon = reference.address();
    let broker = Broker::start();
    let native = broker.socket().display().to_string();
    let runtime = PublicDir::new("runtime");
    let runtime_dir = runtime.path().display().to_string();
    let whoami = ["--json", "whoami"];

    // $DBUS_SESSION_BUS_ADDRESS, when neither $PIDBUS_ADDRESS nor pidbus's
    // session socket is there.
    let session = [
        ("XDG_RUNTIME_DIR", runtime_dir.as_str()),
        ("DBUS_SESSION_BUS_ADDRESS", dbus_daemon.as_str()),
    ];
    let (code, out, err) = ctl_in(&session, &whoami);
    assert_eq!(code, 0, "{err}");
    assert!(!on_pidbus(&out), "dbus-daemon answered: {out}");
    let (code, out, err) = ctl_in(&session, &["--user", "--json", "whoami"]);
    assert_eq!(code, 0, "{err}");
    assert!(!on_pidbus(&out), "--user is the session bus: {out}");
    // pidbus's native session socket comes before it…
    std::os::unix::fs::symlink(broker.socket(), runtime.path().join("pidbus.sock")).unwrap();
    let (code, out, err) = ctl_in(&session, &whoami);
    assert_eq!(code, 0, "{err}");
    assert!(on_pidbus(&out), "pidbus's session socket answered: {out}");
    std::fs::remove_file(runtime.path().join("pidbus.sock")).unwrap();
    // …and $PIDBUS_ADDRESS before both.
    let first = [&session[..], &[("PIDBUS_ADDRESS", native.as_str())]].concat();
    let (code, out, err) = ctl_in(&first, &whoami);
    assert_eq!(code, 0, "{err}");
    assert!(on_pidbus(&out), "$PIDBUS_ADDRESS answered: {out}");
    // A D-Bus address list is tried in order.
    let list = format!(
        "unix:path={}/nothing;{dbus_daemon}",
        runtime.path().display()
    );
    let (code, out, err) = ctl_in(&[], &["--address", &list, "--json", "whoami"]);
    assert_eq!(code, 0, "{err}");
    assert!(!on_pidbus(&out), "{out}");
    // The system bus: $DBUS_SYSTEM_BUS_ADDRESS unless pidbus's system
    // socket exists on this machine.
    if !std::path::Path::new(pidbus_protocol::address::SYSTEM_BUS_PATH).exists() {
        let system = [("DBUS_SYSTEM_BUS_ADDRESS", dbus_daemon.as_str())];
        let (code, out, err) = ctl_in(&system, &["--system", "--json", "whoami"]);
        assert_eq!(code, 0, "{err}");
        assert!(!on_pidbus(&out), "{out}");
    }
    // Nothing answers: every address tried is named, and how to start pidbus.
    let nowhere = [
        ("XDG_RUNTIME_DIR", runtime_dir.as_str()),
        ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus"),
    ];
    let (code, _, err) = ctl_in(&nowhere, &["names"]);
    assert_eq!(code, 1, "{err}");
    for needle in [
        "/nonexistent/bus",
        &format!("{runtime_dir}/bus"),
        "pidbusd --session",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }
}

#[test]
fn address_help_says_what_it_takes_and_the_default_order() {
    let (code, help, err) = pidbus_tests::pidbusctl_bare(&["--help"]);
    assert_eq!(code, 0, "{err}");
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "a socket path",
        "D-Bus address",
        "unix:path=PATH",
        "unix:abstract=NAME",
        "$PIDBUS_ADDRESS, pidbus's native session socket ($XDG_RUNTIME_DIR/pidbus.sock) if it exists, $DBUS_SESSION_BUS_ADDRESS, $XDG_RUNTIME_DIR/bus",
        "$DBUS_SYSTEM_BUS_ADDRESS, /run/dbus/system_bus_socket",
        "What needs pidbus",
    ] {
        assert!(flat.contains(needle), "--help lacks {needle:?}: {help}");
    }
}
