//! The socket file: created connectable by everyone, stale files replaced,
//! a live broker never hijacked, removed on SIGTERM/SIGINT.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use pidbus_tests::{Broker, PublicDir, binary, eventually, pidbusctl};
use rustix::process::Signal;

#[test]
fn the_socket_is_connectable_by_everyone_and_removed_on_sigterm() {
    let broker = Broker::start();
    let socket = broker.socket().to_owned();
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let status = broker.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!socket.exists(), "socket file removed");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let broker = Broker::start();
    let socket = broker.socket().to_owned();
    broker.signal(Signal::INT);
    broker.wait_for_log("pidbusd shutting down");
    let status = broker.stop();
    assert!(status.success());
    assert!(!socket.exists());
    let mut lock = socket.into_os_string();
    lock.push(".lock");
    assert!(
        !std::path::Path::new(&lock).exists(),
        "the lock file is left behind"
    );
}

#[test]
fn an_explicit_path_in_a_missing_directory_is_refused_not_created() {
    let dir = PublicDir::new("nodir");
    let path = dir.path().join("typo/bus.sock");
    let out = Command::new(binary("pidbusd"))
        .arg("--listen")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist; create it first"),
        "{stderr}"
    );
    assert!(!dir.path().join("typo").exists());
}

#[test]
fn a_live_broker_is_not_hijacked() {
    let broker = Broker::start();
    let out = Command::new(binary("pidbusd"))
        .arg("--listen")
        .arg(broker.socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use: a process is listening on it"),
        "{stderr}"
    );
    // The first broker still serves on its socket.
    let (code, _, stderr) = pidbusctl(broker.socket(), &["whoami"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = PublicDir::new("stale");
    let path = dir.path().join("bus.sock");
    // A socket file nobody listens on any more, as a crashed broker leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut broker = Command::new(binary("pidbusd"))
        .arg("--listen")
        .arg(&path)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    eventually("pidbusd answers on the replaced socket", || {
        assert!(
            broker.try_wait().unwrap().is_none(),
            "pidbusd exited instead of replacing the stale socket"
        );
        pidbusctl(&path, &["whoami"]).0 == 0
    });
    rustix::process::kill_process(rustix::process::Pid::from_child(&broker), Signal::TERM).unwrap();
    assert!(broker.wait().unwrap().success());
}

#[test]
fn a_path_that_is_not_a_socket_is_never_replaced() {
    let dir = PublicDir::new("notsock");
    let path = dir.path().join("bus.sock");
    std::fs::write(&path, b"precious").unwrap();
    let out = Command::new(binary("pidbusd"))
        .arg("--listen")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn session_default_uses_xdg_runtime_dir() {
    let dir = PublicDir::new("xdg");
    let mut broker = Command::new(binary("pidbusd"))
        .arg("--session")
        .env("XDG_RUNTIME_DIR", dir.path())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let socket = dir.path().join("pidbus.sock");
    eventually("the session bus answers", || {
        assert!(
            broker.try_wait().unwrap().is_none(),
            "pidbusd --session exited"
        );
        // pidbusctl without --address finds the session bus the same way.
        Command::new(binary("pidbusctl"))
            .arg("whoami")
            .env("XDG_RUNTIME_DIR", dir.path())
            .env_remove("PIDBUS_ADDRESS")
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    });
    assert!(socket.exists());
    rustix::process::kill_process(rustix::process::Pid::from_child(&broker), Signal::TERM).unwrap();
    assert!(broker.wait().unwrap().success());
    assert!(!socket.exists());
}
