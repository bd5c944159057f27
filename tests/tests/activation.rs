//! Bus activation against real programs: service files in the D-Bus
//! format, a python3-dbus service the bus starts, called from dbus-send,
//! busctl, gdbus and the native SDK; failed and timed-out starts; and a
//! squatter racing for a name being activated.

use std::path::{Path, PathBuf};
use std::process::Command;

use pidbus::{Connection, MethodCall, NameFlags};
use pidbus_tests::{Broker, PublicDir};

const NAME: &str = "org.pidbus.Activated";
const PATH: &str = "/org/pidbus/Activated";
const IFACE: &str = "org.pidbus.Activated";

/// Everyone may connect, own, call and receive.
const OPEN_POLICY: &str =
    "[defaults]\nconnect = \"allow\"\nown = \"allow\"\ncall = \"allow\"\nreceive = \"allow\"\n";

/// Runs a D-Bus tool to completion: exit code, stdout, stderr.
fn tool(program: &str, args: &[&str]) -> (i32, String, String) {
    pidbus_tests::run_bounded(60, program, args)
}

/// `dbus-send --print-reply` of `member` with `args` to `dest`.
fn dbus_send(
    broker: &Broker,
    dest: &str,
    path: &str,
    member: &str,
    args: &[&str],
) -> (i32, String, String) {
    let address = format!("--bus={}", broker.dbus_address());
    let dest = format!("--dest={dest}");
    let all = [
        &[
            address.as_str(),
            "--print-reply",
            dest.as_str(),
            path,
            member,
        ][..],
        args,
    ]
    .concat();
    tool("dbus-send", &all)
}

/// `call_echo` in the background, for a call that waits for its service:
/// the `dbus-send` process, its output piped.
fn spawn_echo(broker: &Broker, text: &str) -> std::process::Child {
    let address = format!("--bus={}", broker.dbus_address());
    Command::new("dbus-send")
        .args([
            address.as_str(),
            "--print-reply",
            &format!("--dest={NAME}"),
            PATH,
            &format!("{IFACE}.Echo"),
            &format!("string:{text}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dbus-send")
}

fn call_echo(broker: &Broker, text: &str) -> (i32, String, String) {
    let arg = format!("string:{text}");
    dbus_send(broker, NAME, PATH, &format!("{IFACE}.Echo"), &[&arg])
}

fn driver(broker: &Broker, member: &str, args: &[&str]) -> (i32, String, String) {
    let member = format!("org.freedesktop.DBus.{member}");
    dbus_send(
        broker,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        &member,
        args,
    )
}

/// A service directory with the python service copied in (readable by
/// the service's user) and `.service` files written on demand.
struct Services {
    dir: PublicDir,
}

impl Services {
    fn new() -> Self {
        let dir = PublicDir::new("services");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/activated_service.py");
        std::fs::copy(script, dir.path().join("activated_service.py")).expect("copy the service");
        Services { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn script(&self) -> PathBuf {
        self.path().join("activated_service.py")
    }

    /// Writes `NAME.service` with `Exec=` and more `extra` lines.
    fn write(&self, name: &str, exec: &str, extra: &str) {
        let text = format!("[D-BUS Service]\nName={name}\nExec={exec}\n{extra}");
        std::fs::write(self.path().join(format!("{name}.service")), text).expect("write service");
    }

    /// The python service for `NAME`, as an `Exec=` line.
    fn python_exec(&self, rest: &str) -> String {
        format!("/usr/bin/python3 {} {NAME} {rest}", self.script().display())
    }

    fn broker(&self, extra: &[&str]) -> Broker {
        let dir = self.path().to_str().expect("UTF-8 path");
        Broker::start_dbus(&[&["--service-dir", dir][..], extra].concat())
    }
}

/// Runs `dbus-send ARGS` as uid 65534 to completion.
fn dbus_send_as_nobody(args: &[&str]) -> std::process::Output {
    Command::new(pidbus_tests::AS_NOBODY[0])
        .args(&pidbus_tests::AS_NOBODY[1..])
        .arg("dbus-send")
        .args(args)
        .output()
        .expect("run dbus-send as nobody")
}

fn needs_tools(test: &str) -> bool {
    // Services run as User=nobody, and squatters as uid 65534.
    pidbus_tests::can_run_privileged(test)
        && pidbus_tests::has_tool(test, "dbus-send", "dbus-bin")
        && pidbus_tests::has_tool(test, "busctl", "systemd")
        && pidbus_tests::has_tool(test, "gdbus", "libglib2.0-bin")
        && pidbus_tests::has_python_modules(test, "dbus, gi")
}

#[test]
fn the_first_call_starts_the_service_as_its_user_with_a_clean_environment() {
    if !needs_tools("activation") {
        return;
    }
    let services = Services::new();
    services.write(NAME, &services.python_exec(""), "User=nobody\n");
    // The system bus, where User= counts (with the open development policy).
    let policy = pidbus_tests::write_policy(&services.dir, "open.toml", OPEN_POLICY);
    let broker = services.broker(&["--system", "--policy", &policy]);

    let (code, out, err) = driver(&broker, "ListActivatableNames", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("\"{NAME}\"")), "{out}");
    let (code, out, _) = driver(&broker, "ListNames", &[]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(NAME),
        "not running before the first call: {out}"
    );

    // Set before the start, seen by the started service.
    let (code, _, err) = driver(
        &broker,
        "UpdateActivationEnvironment",
        &["dict:string:string:PIDBUS_TEST_VARIABLE,forty-two"],
    );
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = call_echo(&broker, "hello");
    assert_eq!(
        code, 0,
        "the first call starts the service and gets its answer: {err}"
    );
    assert!(out.contains("string \"hello\""), "{out}");
    broker.wait_for_log("activated: the service owns its name");

    let address = format!("--address={}", broker.dbus_address());
    let (code, out, err) = tool("busctl", &[&address, "call", NAME, PATH, IFACE, "Uid"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "u 65534", "runs as User=nobody");

    let (code, out, err) = tool(
        "gdbus",
        &[
            "call",
            "--address",
            &broker.dbus_address(),
            "--dest",
            NAME,
            "--object-path",
            PATH,
            "--method",
            &format!("{IFACE}.Environment"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("'PIDBUS_TEST_VARIABLE=forty-two'"), "{out}");
    assert!(out.contains("'DBUS_STARTER_BUS_TYPE=system'"), "{out}");
    assert!(
        out.contains(&format!("'DBUS_STARTER_ADDRESS={}'", broker.dbus_address())),
        "{out}"
    );
    assert!(
        out.contains("'HOME=/nonexistent'"),
        "the user's own HOME: {out}"
    );
    assert!(
        !out.contains("CARGO_MANIFEST_DIR"),
        "nothing of the broker's environment leaks into the service: {out}"
    );

    // Once running, a second call goes straight to it; StartServiceByName
    // says it is running (DBUS_START_REPLY_ALREADY_RUNNING).
    let (code, out, _) = call_echo(&broker, "again");
    assert_eq!(code, 0);
    assert!(out.contains("\"again\""), "{out}");
    let (code, out, err) = driver(
        &broker,
        "StartServiceByName",
        &[&format!("string:{NAME}"), "uint32:0"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("uint32 2"), "{out}");
    assert_eq!(
        broker.log_count("activating: service started"),
        1,
        "started once"
    );
}

#[test]
fn a_session_service_gets_the_sessions_environment_and_what_the_desktop_adds() {
    if !needs_tools("session activation environment")
        || !pidbus_tests::has_tool("session", "dbus-update-activation-environment", "dbus-bin")
    {
        return;
    }
    let services = Services::new();
    services.write(NAME, &services.python_exec(""), "");
    let dir = services.path().to_str().unwrap().to_owned();
    // The session the broker runs in: a desktop's variables, no HOME (the
    // bus fills in its user's), and a socket only the broker may use.
    let broker = Broker::start_dbus_under(
        &[
            "env",
            "-u",
            "HOME",
            "DISPLAY=:42",
            "WAYLAND_DISPLAY=wayland-pidbus-test",
            "XDG_RUNTIME_DIR=/run/user/4242",
            "NOTIFY_SOCKET=/run/pidbus-test-notify",
        ],
        &["--session", "--service-dir", &dir],
    );
    // What a desktop session does at login, with the real tool.
    let out = Command::new("dbus-update-activation-environment")
        .arg("PIDBUS_SESSION_TEST=from-the-desktop")
        .env("PIDBUS_SESSION_TEST", "from-the-desktop")
        .env("DBUS_SESSION_BUS_ADDRESS", broker.dbus_address())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, out, err) = tool(
        "gdbus",
        &[
            "call",
            "--address",
            &broker.dbus_address(),
            "--dest",
            NAME,
            "--object-path",
            PATH,
            "--method",
            &format!("{IFACE}.Environment"),
        ],
    );
    assert_eq!(code, 0, "the call starts the service: {err}");
    let me = passwd_user();
    for expected in [
        "DISPLAY=:42".to_owned(),
        "WAYLAND_DISPLAY=wayland-pidbus-test".to_owned(),
        "XDG_RUNTIME_DIR=/run/user/4242".to_owned(),
        "PIDBUS_SESSION_TEST=from-the-desktop".to_owned(),
        "DBUS_STARTER_BUS_TYPE=session".to_owned(),
        format!("HOME={}", me.home),
        format!("USER={}", me.name),
        format!("LOGNAME={}", me.name),
        format!("SHELL={}", me.shell),
    ] {
        assert!(out.contains(&format!("'{expected}'")), "{expected}: {out}");
    }
    assert!(
        !out.contains("NOTIFY_SOCKET"),
        "the broker's own plumbing is not the session's: {out}"
    );
}

/// The test's user as /etc/passwd has it.
struct PasswdUser {
    name: String,
    home: String,
    shell: String,
}

fn passwd_user() -> PasswdUser {
    let uid = rustix::process::geteuid().as_raw().to_string();
    let out = Command::new("getent")
        .args(["passwd", &uid])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = line.trim().split(':').collect();
    PasswdUser {
        name: fields[0].to_owned(),
        home: fields[5].to_owned(),
        shell: fields[6].to_owned(),
    }
}

#[test]
fn start_service_by_name_waits_for_the_name_and_unknown_names_are_service_unknown() {
    if !needs_tools("activation") {
        return;
    }
    let services = Services::new();
    // A session bus ignores User=, as dbus-daemon does.
    services.write(NAME, &services.python_exec(""), "User=nobody\n");
    let broker = services.broker(&[]);

    let (code, out, err) = driver(
        &broker,
        "StartServiceByName",
        &[&format!("string:{NAME}"), "uint32:0"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("uint32 1"),
        "DBUS_START_REPLY_SUCCESS once it owns the name: {out}"
    );
    let (code, out, _) = driver(&broker, "NameHasOwner", &[&format!("string:{NAME}")]);
    assert_eq!(code, 0);
    assert!(out.contains("boolean true"), "{out}");
    let address = format!("--address={}", broker.dbus_address());
    let (code, out, err) = tool("busctl", &[&address, "call", NAME, PATH, IFACE, "Uid"]);
    assert_eq!(code, 0, "{err}");
    let own_uid = rustix::process::getuid().as_raw();
    assert_eq!(out.trim(), format!("u {own_uid}"), "the bus's own user");

    let (code, _, err) = driver(
        &broker,
        "StartServiceByName",
        &["string:org.pidbus.Nobody", "uint32:0"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("org.freedesktop.DBus.Error.ServiceUnknown"),
        "{err}"
    );
    let (code, _, err) = call_echo_to(&broker, "org.pidbus.Nobody");
    assert_ne!(code, 0);
    assert!(
        err.contains("org.freedesktop.DBus.Error.ServiceUnknown"),
        "{err}"
    );
}

fn call_echo_to(broker: &Broker, name: &str) -> (i32, String, String) {
    dbus_send(broker, name, PATH, &format!("{IFACE}.Echo"), &["string:x"])
}

#[test]
fn no_auto_start_fails_instead_of_starting() {
    if !needs_tools("activation") {
        return;
    }
    let services = Services::new();
    services.write(NAME, &services.python_exec(""), "");
    let broker = services.broker(&[]);
    let address = format!("--address={}", broker.dbus_address());
    let (code, _, err) = tool(
        "busctl",
        &[
            &address,
            "--auto-start=no",
            "call",
            NAME,
            PATH,
            IFACE,
            "Echo",
            "s",
            "x",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("nobody owns the name"), "{err}");
    assert_eq!(
        broker.log_count("activating: service started"),
        0,
        "nothing was started"
    );
    let (code, out, err) = tool(
        "busctl",
        &[&address, "call", NAME, PATH, IFACE, "Echo", "s", "x"],
    );
    assert_eq!(code, 0, "with auto-start the same call starts it: {err}");
    assert_eq!(out.trim(), "s \"x\"");
}

#[test]
fn a_service_that_fails_gives_the_activation_error_and_a_reload_tries_again_at_once() {
    if !needs_tools("activation") {
        return;
    }
    let services = Services::new();
    // Fails its first start (exit 3), serves from the second on.
    let marker = services.path().join("tried-once");
    let flaky = services.path().join("flaky.sh");
    std::fs::write(
        &flaky,
        format!(
            "if [ ! -e {m} ]; then touch {m}; exit 3; fi\nexec {exec}\n",
            m = marker.display(),
            exec = services.python_exec("")
        ),
    )
    .expect("write the flaky service");
    services.write(NAME, &format!("/bin/sh {}", flaky.display()), "");
    services.write("org.pidbus.Missing", "/nonexistent/program", "");
    let broker = services.broker(&[]);

    let (code, _, err) = call_echo(&broker, "first");
    assert_ne!(code, 0);
    assert!(
        err.contains("org.freedesktop.DBus.Error.Spawn.ChildExited"),
        "{err}"
    );
    assert!(err.contains("exited with status 3"), "{err}");

    // A reload (the file may have been mended) ends the back-off.
    broker.signal(rustix::process::Signal::HUP);
    broker.wait_for_log_count("service files read", 2);
    let (code, out, err) = call_echo(&broker, "second");
    assert_eq!(code, 0, "a failed start does not poison the next: {err}");
    assert!(out.contains("\"second\""), "{out}");

    let (code, _, err) = call_echo_to(&broker, "org.pidbus.Missing");
    assert_ne!(code, 0);
    assert!(
        err.contains("org.freedesktop.DBus.Error.Spawn.ExecFailed"),
        "{err}"
    );
    // The bus serves on.
    let (code, _, _) = driver(&broker, "GetId", &[]);
    assert_eq!(code, 0);
}

/// A service that fails at once (as Debian's `/bin/false` services do) is
/// not restarted for every call: after a failed start the name is backed
/// off (1 s, doubling with each failure in a row, at most 30 s), and a call
/// meanwhile gets the last failure's error at once. Called in a loop by
/// uid 65534, the broker starts it at most once per back-off and logs one
/// line per start.
#[test]
fn a_service_that_keeps_failing_is_not_restarted_for_every_call() {
    if !needs_tools("activation") {
        return;
    }
    const CALLS: usize = 40;
    let services = Services::new();
    services.write(NAME, "/bin/false", "");
    let broker = services.broker(&[]);
    let address = format!("--bus={}", broker.dbus_address());
    let dest = format!("--dest={NAME}");
    let started = std::time::Instant::now();
    let member = format!("{IFACE}.Echo");
    for _ in 0..CALLS {
        let out =
            dbus_send_as_nobody(&[&address, "--print-reply", &dest, PATH, &member, "string:x"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("org.freedesktop.DBus.Error.Spawn.ChildExited"),
            "{err}"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Back-offs of 1, 2, 4, … s end at most this often in `elapsed`.
    let most = 2 + (elapsed + 1.0).log2().floor() as usize;
    let starts = broker.log_count("activation failed");
    assert!(
        (1..=most).contains(&starts),
        "{starts} starts (and log lines) for {CALLS} calls in {elapsed:.1} s"
    );
    let (code, _, _) = driver(&broker, "GetId", &[]);
    assert_eq!(code, 0, "the bus serves on");
}

/// `StartServiceByName` requests waiting for a slow start are charged to
/// their caller's user and end with their caller, holding nothing of its
/// connection: uid 65534 asking 300 times from connections that leave at
/// once (dbus-send without `--print-reply`) leaves the broker's
/// descriptors where they were, bar the started service's own, and root
/// still connects and is served.
#[test]
fn start_requests_end_with_their_callers_and_hold_no_descriptor() {
    if !needs_tools("activation") {
        return;
    }
    const REQUESTS: usize = 300;
    let services = Services::new();
    // Starts, and never takes its name; the start outlasts the test.
    services.write(NAME, "/bin/sleep 600", "");
    let broker = services.broker(&["--activation-timeout", "600"]);
    let baseline = broker.fd_count();
    let address = format!("--bus={}", broker.dbus_address());
    let name = format!("string:{NAME}");
    for _ in 0..REQUESTS {
        let out = dbus_send_as_nobody(&[
            &address,
            "--type=method_call",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.StartServiceByName",
            &name,
            "uint32:0",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The started program's pidfd and pipes are all the start holds.
    pidbus_tests::eventually("the callers' sockets are closed", || {
        broker.fd_count() <= baseline + 6
    });
    let (code, _, err) = driver(&broker, "GetId", &[]);
    assert_eq!(code, 0, "root is served: {err}");
}

/// A started service gets its stdio and the bus's address, never a
/// descriptor the broker itself inherited without close-on-exec (here
/// `/etc/hostname` open as fd 7 from the program that started the broker).
#[test]
fn a_started_service_inherits_none_of_the_brokers_stray_descriptors() {
    if !needs_tools("activation") {
        return;
    }
    let services = Services::new();
    let listing = services.path().join("fds");
    let script = services.path().join("list-fds.sh");
    std::fs::write(
        &script,
        format!("ls -l /proc/$$/fd > {}\n", listing.display()),
    )
    .expect("write the script");
    services.write(NAME, &format!("/bin/sh {}", script.display()), "");
    let dir = services.path().to_str().expect("UTF-8 path");
    let stray = ["bash", "-c", "exec 7</etc/hostname; exec \"$@\"", "bash"];
    let broker = Broker::start_dbus_under(&stray, &["--service-dir", dir]);
    let broker_fds = std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))
        .expect("list the broker's fds")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| target == Path::new("/etc/hostname"));
    assert!(broker_fds, "the broker holds the stray descriptor");
    let (code, _, err) = call_echo(&broker, "x");
    assert_ne!(code, 0, "the script exits without taking the name: {err}");
    let fds = std::fs::read_to_string(&listing).expect("the service listed its descriptors");
    assert!(
        !fds.contains("/etc/hostname"),
        "the service inherited: {fds}"
    );
}

#[test]
fn a_service_that_never_takes_its_name_times_out() {
    if !needs_tools("activation") {
        return;
    }
    let services = Services::new();
    services.write(NAME, "/bin/sleep 600", "");
    let broker = services.broker(&["--activation-timeout", "1"]);
    let (code, _, err) = call_echo(&broker, "x");
    assert_ne!(code, 0);
    assert!(err.contains("org.freedesktop.DBus.Error.TimedOut"), "{err}");
}

#[test]
fn a_squatter_cannot_take_a_name_being_activated_and_the_started_service_gets_it() {
    if !needs_tools("activation") {
        return;
    }
    let services = Services::new();
    let gate = services.path().join("gate");
    services.write(NAME, &services.python_exec(&gate.display().to_string()), "");
    let broker = services.broker(&[]);

    // The call starts the service, which waits at its gate: the name is
    // being activated and nobody owns it.
    let waiting = spawn_echo(&broker, "held");
    broker.wait_for_log("activating: service started");

    // A D-Bus squatter as another user, and one as root through gdbus.
    let request = pidbus_tests::gdbus_request_name(&broker.dbus_address(), NAME);
    let request: Vec<&str> = request.iter().map(String::as_str).collect();
    let as_nobody = [
        &["--reuid=65534", "--regid=65534", "--clear-groups", "gdbus"][..],
        &request[..],
    ]
    .concat();
    let (code, out, err) = tool("setpriv", &as_nobody);
    assert_ne!(code, 0, "the squatter was refused: {out}");
    assert!(err.contains("AccessDenied"), "{err}");
    let (code, out, err) = tool("gdbus", &request);
    assert_ne!(code, 0, "even root's squatter is refused: {out}");
    assert!(
        err.contains("AccessDenied") && err.contains("being activated"),
        "{err}"
    );

    // A native squatter.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let squatter = Connection::connect(broker.socket()).await.expect("connect");
        let refused = squatter.request_name(NAME, NameFlags::default()).await;
        let error = refused.expect_err("the native squatter is refused");
        assert!(error.to_string().contains("being activated"), "{error}");
    });
    broker.wait_for_log_count("refused to own a name being activated", 3);

    std::fs::write(&gate, "").expect("open the gate");
    let out = waiting.wait_with_output().expect("wait for dbus-send");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the held call is answered by the started service: {stderr}"
    );
    assert!(stdout.contains("\"held\""), "{stdout}");
}

#[test]
fn a_native_sdk_call_activates_the_service_and_reload_finds_new_files() {
    if !needs_tools("activation") {
        return;
    }
    let services = Services::new();
    // polkitd's own file: the bus is the authority, so it is not started.
    services.write(
        "org.freedesktop.PolicyKit1",
        "/usr/lib/polkit-1/polkitd",
        "",
    );
    let broker = services.broker(&[]);
    broker.wait_for_log("service file ignored: the bus provides this name itself");
    let (_, out, _) = driver(&broker, "ListActivatableNames", &[]);
    assert!(!out.contains(NAME), "{out}");
    assert!(!out.contains("PolicyKit1"), "{out}");
    services.write(NAME, &services.python_exec(""), "");
    // Bounded, so a missing signal fails the test instead of hanging it.
    let mut monitor = Command::new("timeout")
        .args(["30", "dbus-monitor", "--address", &broker.dbus_address()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start dbus-monitor");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        monitor.stdout.take().expect("stdout"),
    ))
    .map_while(Result::ok);
    // dbus-monitor shows its own NameLost once it is a monitor.
    assert!(
        lines.any(|l| l.contains("member=NameLost")),
        "dbus-monitor runs"
    );
    broker.signal(rustix::process::Signal::HUP);
    // Kept, so a failure shows what the monitor saw and how it ended.
    let mut seen = Vec::new();
    let changed = lines.any(|l| {
        seen.push(l.clone());
        l.contains("member=ActivatableServicesChanged")
    });
    let _ = monitor.kill();
    let status = monitor.wait();
    assert!(
        changed,
        "the reload is announced; dbus-monitor ({status:?}) saw:\n{}",
        seen.join("\n")
    );
    broker.wait_for_log_count("service files read", 2);
    pidbus_tests::eventually("the new file is listed", || {
        driver(&broker, "ListActivatableNames", &[])
            .1
            .contains(NAME)
    });

    let (code, out, err) = pidbus_tests::pidbusctl(broker.socket(), &["--json", "activatable"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("[\"{NAME}\"]"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = Connection::connect(broker.socket()).await.expect("connect");
        let call = MethodCall::new(NAME, PATH, IFACE, "Echo")
            .unwrap()
            .args(&"native")
            .unwrap();
        let reply = client
            .call_method(call)
            .await
            .expect("the SDK call starts the service");
        let text: String = reply.decode().expect("a string");
        assert_eq!(text, "native");

        assert_eq!(client.activatable_names().await.expect("list"), [NAME]);
        assert!(
            client.start_service(NAME).await.expect("running"),
            "already running"
        );

        let again = MethodCall::new("org.pidbus.Nobody", PATH, IFACE, "Echo").unwrap();
        let error = client
            .call_method(again)
            .await
            .expect_err("not activatable");
        assert!(matches!(error, pidbus::Error::NoSuchName { .. }), "{error}");
    });
}

#[test]
fn a_native_start_service_reports_a_failed_start_with_the_activation_error() {
    let services = Services::new();
    services.write(NAME, "/bin/sh -c 'exit 5'", "");
    let broker = services.broker(&[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = Connection::connect(broker.socket()).await.expect("connect");
        let error = client
            .start_service(NAME)
            .await
            .expect_err("the start fails");
        match &error {
            pidbus::Error::Failed { name, message, .. } => {
                assert_eq!(
                    name.as_deref(),
                    Some("org.freedesktop.DBus.Error.Spawn.ChildExited")
                );
                assert!(message.contains("status 5"), "{message}");
            }
            other => panic!("{other}"),
        }
        let unknown = client
            .start_service("org.pidbus.Nobody")
            .await
            .expect_err("unknown");
        assert!(
            matches!(unknown, pidbus::Error::NoSuchName { .. }),
            "{unknown}"
        );
    });
    let (code, _, err) = pidbus_tests::pidbusctl(broker.socket(), &["start", NAME]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("status 5"), "pidbusctl start says why: {err}");
    // As on dbus-daemon: the bus itself is always running.
    let (code, out, err) =
        pidbus_tests::pidbusctl(broker.socket(), &["start", "org.freedesktop.DBus"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("running already"), "{out}");
}

#[test]
fn whoever_may_not_call_a_name_cannot_start_its_service() {
    if !needs_tools("activation policy") {
        return;
    }
    let services = Services::new();
    services.write(NAME, &services.python_exec(""), "");
    let policy = pidbus_tests::write_policy(
        &services.dir,
        "policy.toml",
        &format!(
            "[defaults]\nconnect = \"allow\"\nown = \"allow\"\ncall = \"allow\"\nreceive = \"allow\"\n\n\
             [[rule]]\nkind = \"call\"\nname = \"{NAME}\"\nuser = 65534\ndecision = \"deny\"\n"
        ),
    );
    let broker = services.broker(&["--policy", &policy]);
    let address = format!("--bus={}", broker.dbus_address());
    let as_nobody = |args: &[&str]| {
        let all = [
            &[
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "dbus-send",
                address.as_str(),
                "--print-reply",
            ][..],
            args,
        ]
        .concat();
        tool("setpriv", &all)
    };
    let (code, _, err) = as_nobody(&[
        &format!("--dest={NAME}"),
        PATH,
        &format!("{IFACE}.Echo"),
        "string:x",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("AccessDenied"), "{err}");
    let (code, _, err) = as_nobody(&[
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.StartServiceByName",
        &format!("string:{NAME}"),
        "uint32:0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("AccessDenied"), "{err}");
    assert_eq!(
        broker.log_count("activating: service started"),
        0,
        "nothing was started"
    );
    let (code, out, err) = call_echo(&broker, "root may");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"root may\""), "{out}");
}

#[test]
fn calls_held_for_a_start_are_charged_to_their_callers_user_and_bystanders_are_served() {
    if !needs_tools("activation quota") {
        return;
    }
    let services = Services::new();
    let gate = services.path().join("gate");
    services.write(NAME, &services.python_exec(&gate.display().to_string()), "");
    let config = services.path().join("pidbusd.toml");
    std::fs::write(&config, "[limits.uid]\npending_calls = 4\n").expect("write the config");
    let broker = services.broker(&["--config", config.to_str().expect("UTF-8 path")]);

    // uid 65534 makes six calls while the service waits at its gate: four
    // are held (its user's quota), two are refused at once.
    let call = |as_nobody: bool, text: &str| {
        let mut command = if as_nobody {
            let mut command = Command::new("setpriv");
            command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "gdbus"]);
            command
        } else {
            Command::new("gdbus")
        };
        command
            .args([
                "call",
                "--timeout",
                "60",
                "--address",
                &broker.dbus_address(),
                "--dest",
                NAME,
            ])
            .args([
                "--object-path",
                PATH,
                "--method",
                &format!("{IFACE}.Echo"),
                text,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start gdbus")
    };
    let mut flood: Vec<_> = (0..6).map(|i| call(true, &format!("flood-{i}"))).collect();
    let mut refused = 0;
    let deadline = std::time::Instant::now() + pidbus_tests::PATIENCE;
    while refused < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "two of the six calls must be refused"
        );
        let mut still = Vec::new();
        for mut child in flood {
            match child.try_wait().expect("poll gdbus") {
                Some(status) => {
                    let out = child.wait_with_output().expect("gdbus output");
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(!status.success() && err.contains("LimitsExceeded"), "{err}");
                    refused += 1;
                }
                None => still.push(child),
            }
        }
        flood = still;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(flood.len(), 4, "four calls are held");
    let bystander = call(false, "bystander");

    std::fs::write(&gate, "").expect("open the gate");
    for child in flood.into_iter().chain([bystander]) {
        let out = child.wait_with_output().expect("gdbus output");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "held calls are answered once the service owns its name: {err}"
        );
    }
}

/// Stand-ins for `systemctl` and `systemd-run`, for the broker's systemd
/// path on a machine that systemd does not run (CI's): they do what
/// systemd would in the part the broker relies on, starting the service
/// in a cgroup named after its unit below `system.slice`, and log how
/// they were called. The broker runs in a mount namespace of its own with
/// a tmpfs on /run holding `/run/systemd/system`, so to it systemd runs
/// the machine; nothing outside it sees that.
struct FakeSystemd {
    bin: PathBuf,
    log: PathBuf,
    slice: PathBuf,
    made_slice: bool,
}

impl FakeSystemd {
    fn new(dir: &Path) -> Self {
        let bin = dir.join("fake-systemd");
        std::fs::create_dir_all(&bin).expect("make the stand-ins' directory");
        let log = dir.join("fake-systemd.log");
        let slice = pidbus_tests::cgroup2_mount().join("system.slice");
        let made_slice = !slice.exists();
        if made_slice {
            std::fs::create_dir(&slice).expect("make system.slice");
        }
        // Runs "$@" in the cgroup of unit $UNIT.
        let in_unit = format!(
            "cg={slice}/$UNIT; mkdir -p \"$cg\"; echo $$ > \"$cg/cgroup.procs\" || exit 70",
            slice = slice.display()
        );
        let systemctl = format!(
            "#!/bin/sh\necho \"systemctl $*\" >> {log}\n\
             [ \"$1\" = start ] && [ \"$2\" = -- ] || exit 64\n\
             export UNIT=$3\ncase $UNIT in broken.service) exit 1;; esac\n\
             sh -c '{in_unit}; exec \"$STAND_IN_SERVICE\"' >> {log} 2>&1 &\nexit 0\n",
            log = log.display()
        );
        let systemd_run = format!(
            "#!/bin/sh\necho \"systemd-run $*\" >> {log}\nUNIT=; USER=\n\
             while [ $# -gt 0 ]; do case $1 in\n\
               --unit=*) UNIT=${{1#--unit=}};;\n\
               --uid=*) USER=${{1#--uid=}};;\n\
               --setenv=*) export \"${{1#--setenv=}}\";;\n\
               --) shift; break;;\n\
             esac; shift; done\n\
             {in_unit}\n\
             [ -n \"$USER\" ] && exec setpriv --reuid=\"$USER\" --regid=\"$(id -g \"$USER\")\" --clear-groups \"$@\"\n\
             exec \"$@\"\n",
            log = log.display()
        );
        for (name, text) in [("systemctl", systemctl), ("systemd-run", systemd_run)] {
            let path = bin.join(name);
            std::fs::write(&path, text).expect("write a stand-in");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("make it executable");
        }
        FakeSystemd {
            bin,
            log,
            slice,
            made_slice,
        }
    }

    /// A broker that sees systemd running and finds the stand-ins first.
    fn broker(&self, services: &Services, extra: &[&str], service: &str) -> Broker {
        let path = format!("PATH={}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin.display());
        let service = format!("STAND_IN_SERVICE={service}");
        let prefix = [
            "env",
            path.as_str(),
            service.as_str(),
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            "mount -t tmpfs pidbus-test /run && mkdir -p /run/systemd/system && exec \"$@\"",
            "sh",
        ];
        let dir = services.path().to_str().expect("UTF-8 path");
        Broker::start_dbus_under(&prefix, &[&["--service-dir", dir][..], extra].concat())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FakeSystemd {
    /// Stops what the units still run (`cgroup.kill`, as systemd stops a
    /// unit) and removes their cgroups.
    fn drop(&mut self) {
        let units = std::fs::read_dir(&self.slice)
            .into_iter()
            .flatten()
            .flatten();
        for unit in units.filter(|u| u.file_name().to_string_lossy().starts_with("pidbus-")) {
            let dir = unit.path();
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let emptied = std::time::Instant::now() + pidbus_tests::PATIENCE;
            while std::fs::remove_dir(&dir).is_err() && std::time::Instant::now() < emptied {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        if self.made_slice {
            let _ = std::fs::remove_dir(&self.slice);
        }
    }
}

#[test]
fn under_systemd_units_are_started_and_only_their_processes_may_take_the_name() {
    if !needs_tools("activation under systemd")
        || !pidbus_tests::has_tool("activation under systemd", "unshare", "util-linux")
    {
        return;
    }
    let services = Services::new();
    let gate = services.path().join("gate");
    let unit = format!("pidbus-test-{}.service", std::process::id());
    services.write(
        NAME,
        "/bin/false",
        &format!("User=root\nSystemdService={unit}\n"),
    );
    services.write(
        "org.pidbus.Broken",
        "/bin/false",
        "User=root\nSystemdService=broken.service\n",
    );
    let transient = "org.pidbus.Transient";
    let transient_exec = format!(
        "/usr/bin/python3 {} {transient}",
        services.script().display()
    );
    services.write(transient, &transient_exec, "User=nobody\n");
    let systemd = FakeSystemd::new(services.path());
    let policy = pidbus_tests::write_policy(&services.dir, "open.toml", OPEN_POLICY);

    // The unit's own program: what `systemctl start` runs (the stand-in
    // has it in its environment, as a unit file has ExecStart=).
    let unit_program = services.path().join("unit-program.sh");
    let placeholder = "@BUS@";
    std::fs::write(
        &unit_program,
        format!(
            "#!/bin/sh\nexport DBUS_STARTER_ADDRESS={placeholder}\nexec {}\n",
            services.python_exec(&gate.display().to_string())
        ),
    )
    .expect("write the unit's program");
    std::fs::set_permissions(
        &unit_program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("make it executable");
    let broker = systemd.broker(
        &services,
        &["--system", "--policy", &policy],
        &unit_program.display().to_string(),
    );
    let text = std::fs::read_to_string(&unit_program).expect("read it back");
    std::fs::write(
        &unit_program,
        text.replace(placeholder, &broker.dbus_address()),
    )
    .expect("address it");

    // SystemdService=: systemctl starts the unit; the call waits for it.
    let waiting = spawn_echo(&broker, "unit");
    broker.wait_for_log("activating: asked systemd to start the unit");
    pidbus_tests::eventually("systemctl start of the unit", || {
        systemd
            .log()
            .contains(&format!("systemctl start -- {unit}"))
    });
    let request = pidbus_tests::gdbus_request_name(&broker.dbus_address(), NAME);
    let request: Vec<&str> = request.iter().map(String::as_str).collect();
    let (code, out, err) = tool("gdbus", &request);
    assert_ne!(code, 0, "root outside the unit is refused: {out}");
    assert!(err.contains(&format!("only a process of {unit}")), "{err}");
    std::fs::write(&gate, "").expect("open the gate");
    let out = waiting.wait_with_output().expect("wait for dbus-send");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the unit's process took the name and answered: {stderr}\n{}",
        systemd.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"unit\""));

    // No SystemdService=: Exec= as a transient unit, with the bus environment.
    let (code, out, err) = call_echo_to(&broker, transient);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("string \"x\""), "{out}");
    let log = systemd.log();
    assert!(
        log.contains(&format!("--unit=pidbus-activation-{transient}-")),
        "{log}"
    );
    assert!(log.contains("--uid=nobody"), "{log}");
    let address = format!("--address={}", broker.dbus_address());
    let (code, out, err) = tool("busctl", &[&address, "call", transient, PATH, IFACE, "Uid"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "u 65534");

    // systemd cannot start the unit: the activation error, and the bus serves on.
    let (code, _, err) = call_echo_to(&broker, "org.pidbus.Broken");
    assert_ne!(code, 0);
    assert!(
        err.contains("org.freedesktop.DBus.Error.Spawn.Failed"),
        "{err}"
    );
    let (code, out, _) = call_echo(&broker, "still");
    assert_eq!(code, 0);
    assert!(out.contains("\"still\""), "{out}");
    drop(broker);
}
