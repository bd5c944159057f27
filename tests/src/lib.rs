//! Helpers for the integration tests: start the real `pidbusd`, read its
//! log, count descriptors, run commands as other users.
//!
//! The binaries under test are taken from the cargo target directory; build
//! them first (`cargo build --workspace --bins`, part of the README's test
//! command).

pub mod buses;
pub mod raw;
pub mod raw_dbus;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long to wait for something that should happen promptly; generous so
/// a loaded CI machine does not fail a test, never relied on to pass one.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Path of a binary built by this workspace (`pidbusd`, `pidbusctl`,
/// `pidbus-test-peer`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Whether tests that need root (other users, namespaces) can run. Outside
/// CI they are skipped with a printed reason; in CI (`CI` set) a missing
/// privilege fails the test, because these tests must run there.
pub fn can_run_privileged(test: &str) -> bool {
    rustix::process::geteuid().is_root()
        || skip_outside_ci(test, "root", " (setpriv/unshare); run the tests as root")
}

/// Whether `tool` (from Debian package `package`) is installed. Outside CI
/// a test without it is skipped with a printed reason; in CI it fails,
/// because `.ci/run` installs the package.
pub fn has_tool(test: &str, tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    found
        || skip_outside_ci(
            test,
            tool,
            &format!("; install the Debian package {package}"),
        )
}

/// Whether the file at `path` (from Debian package `package`) is
/// installed; as [`has_tool`] for a program not on `PATH`.
pub fn has_installed(test: &str, path: &Path, package: &str) -> bool {
    path.exists()
        || skip_outside_ci(
            test,
            &path.display().to_string(),
            &format!("; install the Debian package {package}"),
        )
}

/// A test lacks what it `needs`: fails in CI (where it must run), else
/// prints why it is skipped and how to run it; returns false.
fn skip_outside_ci(test: &str, needs: &str, remedy: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {needs} and must run in CI"
    );
    eprintln!("SKIPPED {test}: needs {needs}{remedy}");
    false
}

/// Whether Debian's `/usr/bin/python3` can import `modules` (such as
/// `"dbus, gi"`); outside CI a test without them is skipped, visibly.
pub fn has_python_modules(test: &str, modules: &str) -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs the python3 modules {modules} and must run in CI"
        );
        eprintln!("SKIPPED {test}: needs the python3 modules {modules} (python3-dbus, python3-gi)");
    }
    ok
}

/// A directory under /tmp that every user may traverse, removed on drop.
#[derive(Debug)]
pub struct PublicDir(PathBuf);

impl PublicDir {
    /// Creates a fresh directory with mode 0755.
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("pidbus-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod test dir");
        PublicDir(dir)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Copies a workspace binary here, executable by everyone, so that
    /// other users can run it whatever the permissions of the checkout.
    /// A binary already copied here is returned as it is: copying over a
    /// copy that another process runs would fail with ETXTBSY.
    pub fn public_binary(&self, name: &str) -> PathBuf {
        let target = self.0.join(name);
        if target.exists() {
            return target;
        }
        // `cp` writes the copy in its own process: had this (multi-threaded)
        // test process held the copy open for writing, a fork by another
        // test thread could inherit that descriptor, and exec of the copy
        // would fail with ETXTBSY ("Text file busy") until that child execs.
        let copied = Command::new("cp")
            .arg(binary(name))
            .arg(&target)
            .status()
            .expect("run cp");
        assert!(copied.success(), "cp {name} failed: {copied}");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
            .expect("chmod binary");
        target
    }
}

impl Drop for PublicDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines a child wrote to stderr, shared with the thread collecting them.
#[derive(Debug, Default)]
struct LogLines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A running `pidbusd` on a private socket; stopped (SIGTERM) on drop.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    socket: PathBuf,
    log: Arc<LogLines>,
    dir: PublicDir,
}

impl Broker {
    /// Starts `pidbusd --listen <fresh dir>/bus.sock` and waits until it listens.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start) with extra `pidbusd` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_under(&[], extra)
    }

    /// Like [`start_with`](Self::start_with), run through `prefix` (a
    /// command that execs the rest, such as `prlimit --nofile=…`).
    pub fn start_under(prefix: &[&str], extra: &[&str]) -> Self {
        let dir = PublicDir::new("broker");
        Self::spawn_in(dir, prefix, extra)
    }

    /// Like [`start_with`](Self::start_with), with the D-Bus face on
    /// `<dir>/dbus.sock` too (see [`dbus_address`](Self::dbus_address)).
    pub fn start_dbus(extra: &[&str]) -> Self {
        Self::start_dbus_under(&[], extra)
    }

    /// Like [`start_dbus`](Self::start_dbus), run through `prefix` (see
    /// [`start_under`](Self::start_under)).
    pub fn start_dbus_under(prefix: &[&str], extra: &[&str]) -> Self {
        let dir = PublicDir::new("broker");
        let dbus = dir.path().join("dbus.sock");
        let dbus = dbus.to_str().expect("a UTF-8 temporary path");
        let args = [&["--dbus-listen", dbus][..], extra].concat();
        Self::spawn_in(dir, prefix, &args)
    }

    /// `pidbusd` run as uid 65534 — a plain user, without any capability —
    /// with its native and D-Bus sockets in a directory that user owns.
    pub fn start_dbus_as_nobody(extra: &[&str]) -> Self {
        let dir = PublicDir::new("broker-nobody");
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
        let pidbusd = dir.public_binary("pidbusd");
        let socket = dir.path().join("bus.sock");
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(pidbusd)
            .arg("--listen")
            .arg(&socket)
            .arg("--dbus-listen")
            .arg(dir.path().join("dbus.sock"))
            .args(extra);
        let broker = Self::spawn_logged(dir, socket, command);
        broker.wait_for_log("pidbusd listening");
        broker
    }

    /// The D-Bus address of the D-Bus face started by
    /// [`start_dbus`](Self::start_dbus), as clients take it.
    pub fn dbus_address(&self) -> String {
        format!("unix:path={}", self.dbus_socket().display())
    }

    /// The D-Bus face's socket path.
    pub fn dbus_socket(&self) -> PathBuf {
        self.dir.path().join("dbus.sock")
    }

    /// Stops this broker (SIGTERM) and starts a new one with `extra`
    /// arguments on the same socket path, as a restart would.
    pub fn restart(mut self, extra: &[&str]) -> Self {
        self.signal(rustix::process::Signal::TERM);
        self.child.wait().expect("wait for pidbusd");
        let dir = PublicDir(std::mem::take(&mut self.dir.0));
        Self::spawn_in(dir, &[], extra)
    }

    fn spawn_in(dir: PublicDir, prefix: &[&str], extra: &[&str]) -> Self {
        let socket = dir.path().join("bus.sock");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("pidbusd"));
                command
            }
            None => Command::new(binary("pidbusd")),
        };
        command.arg("--listen").arg(&socket).args(extra);
        let broker = Self::spawn_logged(dir, socket, command);
        broker.wait_for_log("pidbusd listening");
        broker
    }

    /// Starts `pidbusd` through `systemd-socket-activate` on a seqpacket
    /// socket named `pidbus` (the launcher starts the broker on the first
    /// connection). `env` is passed to the broker (`-E NAME=VALUE`).
    pub fn start_activated(env: &[(&str, &Path)], extra: &[&str]) -> Self {
        Self::launch_activated(&["--seqpacket"], env, extra)
    }

    /// Like [`start_activated`](Self::start_activated) with a stream
    /// socket, as a unit with `ListenStream=` would pass.
    pub fn start_activated_stream() -> Self {
        Self::launch_activated(&[], &[], &[])
    }

    fn launch_activated(kind: &[&str], env: &[(&str, &Path)], extra: &[&str]) -> Self {
        let dir = PublicDir::new("activated");
        let socket = dir.path().join("bus.sock");
        let mut command = Command::new("systemd-socket-activate");
        command
            .args(kind)
            .arg("--fdname=pidbus")
            .arg("--listen")
            .arg(&socket)
            .arg("-E")
            .arg("RUST_LOG=info");
        for (name, value) in env {
            let mut assignment = std::ffi::OsString::from(format!("{name}="));
            assignment.push(value);
            command.arg("-E").arg(assignment);
        }
        command.arg(binary("pidbusd")).args(extra);
        let broker = Self::spawn_logged(dir, socket, command);
        broker.wait_for_log("Listening on");
        broker
    }

    /// Spawns `command` (pidbusd, or what execs it) with its stderr
    /// collected as the broker's log.
    fn spawn_logged(dir: PublicDir, socket: PathBuf, mut command: Command) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pidbusd");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(LogLines::default());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[pidbusd] {line}");
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });
        Broker {
            child,
            socket,
            log,
            dir,
        }
    }

    /// The broker's resident memory in bytes (`Rss` of smaps_rollup, which
    /// is exact, unlike the lagging per-CPU counters behind `VmRSS`).
    pub fn rss_bytes(&self) -> usize {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid()))
            .expect("read the broker's smaps_rollup");
        let kib: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("an Rss line");
        kib * 1024
    }

    /// The broker's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The broker's directory (world-traversable).
    pub fn dir(&self) -> &PublicDir {
        &self.dir
    }

    /// The broker's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a log line contains every one of `needles`; returns it.
    pub fn wait_for_log_all(&self, needles: &[&str]) -> String {
        let what = format!("all of {needles:?}");
        self.wait_for_line(&what, |l| needles.iter().all(|n| l.contains(n)))
    }

    /// Waits until a log line contains any of `needles`; returns it.
    pub fn wait_for_log_any(&self, needles: &[&str]) -> String {
        let what = format!("any of {needles:?}");
        self.wait_for_line(&what, |l| needles.iter().any(|n| l.contains(n)))
    }

    fn wait_for_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| matches(l)) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "pidbusd never logged a line with {what}; log:\n{}",
                lines.join("\n")
            );
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits until a log line contains `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_all(&[needle])
    }

    /// Waits until at least `count` log lines contain `needle`.
    pub fn wait_for_log_count(&self, needle: &str, count: usize) {
        eventually(&format!("{count} log lines contain {needle:?}"), || {
            self.log_count(needle) >= count
        });
    }

    /// The latest log line containing `needle` (empty if none).
    pub fn last_log_line(&self, needle: &str) -> String {
        let lines = self.log.lines.lock().unwrap();
        lines
            .iter()
            .rev()
            .find(|l| l.contains(needle))
            .cloned()
            .unwrap_or_default()
    }

    /// Number of log lines containing `needle` so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Open descriptors of the broker process.
    pub fn fd_count(&self) -> usize {
        fd_count_of(self.pid())
    }

    /// Waits until the broker's descriptor count is `expected` (connections
    /// are torn down asynchronously after the peer goes).
    pub fn wait_for_fd_count(&self, expected: usize) {
        eventually(&format!("broker fd count returns to {expected}"), || {
            self.fd_count() == expected
        });
    }

    /// Sends a signal to the broker.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("signal pidbusd");
    }

    /// Waits (up to [`PATIENCE`]) for the broker to exit by itself.
    pub fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        eventually("pidbusd exits", || {
            status = self.child.try_wait().expect("poll pidbusd");
            status.is_some()
        });
        status.expect("set by eventually")
    }

    /// Stops the broker with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.child.wait().expect("wait for pidbusd")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = self.child.wait();
        }
    }
}

/// Polls `condition` until it holds; fails the test after [`PATIENCE`]
/// saying what never happened. For outcomes that come asynchronously (a
/// broker starting, a connection torn down): the test passes as soon as the
/// outcome is there, however slow the machine.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The native socket's `Hello`, as a client sends it first.
pub use raw::hello_record;

/// A raw connection to the broker at `socket` that has said Hello, for
/// tests that speak the protocol by hand.
pub async fn raw_handshaken(socket: &Path) -> raw::RawPeer {
    raw::RawPeer::connect(socket)
        .await
        .expect("connect and say Hello on the native socket")
}

/// Open descriptors of process `pid`.
pub fn fd_count_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// A command prefix running the rest as uid/gid 65534 (nobody) with no
/// supplementary groups.
pub const AS_NOBODY: [&str; 6] = [
    "setpriv",
    "--reuid",
    "65534",
    "--regid",
    "65534",
    "--clear-groups",
];

/// `pidbusctl --address SOCKET ARGS…` run as nobody ([`AS_NOBODY`]) from a
/// copy in the broker's public directory; returns (exit code, stdout,
/// stderr).
pub fn pidbusctl_as_nobody(broker: &Broker, args: &[&str]) -> (i32, String, String) {
    let ctl = broker.dir().public_binary("pidbusctl");
    let out = Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .arg(ctl)
        .arg("--address")
        .arg(broker.socket())
        .args(args)
        .output()
        .expect("run setpriv pidbusctl");
    outcome(&out)
}

/// Runs `pidbusctl` with `args` against `socket`; returns (exit code, stdout, stderr).
pub fn pidbusctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("pidbusctl"))
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .expect("run pidbusctl");
    outcome(&out)
}

/// Runs `pidbusctl` with exactly `args` (no `--address` added: for help,
/// completions, man pages, and addresses the test picks).
pub fn pidbusctl_bare(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("pidbusctl"))
        .args(args)
        .output()
        .expect("run pidbusctl");
    outcome(&out)
}

/// Runs `program` with `args` to completion, killed after `seconds` (so a
/// tool that hangs fails its test instead of stalling it): exit code,
/// stdout, stderr.
pub fn run_bounded(seconds: u32, program: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("timeout")
        .arg(seconds.to_string())
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    outcome(&out)
}

/// The arguments of `gdbus call` for the bus's
/// `RequestName(name, DO_NOT_QUEUE)` on the D-Bus face at `address`.
pub fn gdbus_request_name(address: &str, name: &str) -> Vec<String> {
    [
        "call",
        "--address",
        address,
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
        "--method",
        "org.freedesktop.DBus.RequestName",
        name,
        "4",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A finished command as (exit code, -1 if killed; stdout; stderr).
pub fn outcome(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `pidbus-test-peer` process that reports in JSON lines on its stdout
/// and runs until its stdin closes (or it is killed). Its first line is
/// parsed into `report`.
#[derive(Debug)]
pub struct HeldPeer {
    /// The process (or the wrapper that started it, e.g. `unshare`).
    pub child: Child,
    /// The first line the peer printed (for `hold`: `self_pid`,
    /// `self_pidfs_id`, `id`, `identity`).
    pub report: serde_json::Value,
    lines: BufReader<std::process::ChildStdout>,
}

impl HeldPeer {
    /// Starts `prefix... pidbus-test-peer hold SOCKET` and waits for its report.
    pub fn start(prefix: &[&str], peer_binary: &Path, socket: &Path) -> Self {
        Self::start_mode(prefix, peer_binary, &["hold".as_ref(), socket.as_os_str()])
    }

    /// Starts `prefix... pidbus-test-peer ARGS...` and waits for its first
    /// line.
    pub fn start_mode(prefix: &[&str], peer_binary: &Path, args: &[&std::ffi::OsStr]) -> Self {
        let (program, wrapper_args) = match prefix.split_first() {
            Some((program, rest)) => (PathBuf::from(program), rest.to_vec()),
            None => (peer_binary.to_owned(), vec![]),
        };
        let mut command = Command::new(program);
        command.args(wrapper_args);
        if !prefix.is_empty() {
            command.arg(peer_binary);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn test peer");
        let lines = BufReader::new(child.stdout.take().expect("stdout"));
        let mut peer = HeldPeer {
            child,
            report: serde_json::Value::Null,
            lines,
        };
        peer.report = peer.next_line();
        peer
    }

    /// The next JSON line the peer prints.
    pub fn next_line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.lines
            .read_line(&mut line)
            .expect("read test peer output");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("test peer printed {line:?}, not JSON: {e}"))
    }

    /// Kills the peer with SIGKILL and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill test peer");
        let _ = self.child.wait();
    }

    /// Lets the peer exit and waits for it.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait for test peer");
        assert!(status.success(), "test peer failed: {status}");
    }
}

impl Drop for HeldPeer {
    /// A peer the test did not end is killed: a leftover would keep the
    /// test's output pipe open and the test run from finishing.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes `text` as `dir/policy.toml` and starts a broker enforcing it;
/// returns the file's path and the broker.
pub fn start_with_policy(dir: &PublicDir, text: &str) -> (String, Broker) {
    let policy = write_policy(dir, "policy.toml", text);
    let broker = Broker::start_with(&["--policy", &policy]);
    (policy, broker)
}

/// Writes `text` as `dir/NAME` and returns its path.
pub fn write_policy(dir: &PublicDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on a pure v2 system,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            after
                .starts_with("cgroup2 ")
                .then(|| before.split(' ').nth(4))
                .flatten()
                .map(std::path::PathBuf::from)
        })
        .expect("cgroup v2 is mounted")
}
