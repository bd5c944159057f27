//! The Python and C clients of docs/protocol.md (examples/native), run
//! against the real broker: a client in another language, written from
//! the record rules alone, gets its Hello answered (its reply and the
//! `NameAcquired` signal may share one record) and reads its own identity.

use std::path::{Path, PathBuf};
use std::process::Command;

use pidbus_tests::{Broker, PublicDir};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/native")
        .join(name)
}

/// Runs `command` with the broker's socket as its argument; its output.
fn whoami(mut command: Command, broker: &Broker) -> String {
    let out = command.arg(broker.socket()).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What every whoami prints: a unique name and this user's uid.
fn assert_reports_itself(stdout: &str) {
    assert!(stdout.contains("unique name: :1."), "{stdout}");
    let uid = rustix::process::getuid().as_raw();
    assert!(
        stdout.contains(&format!("uid:         {uid}   (this process: {uid})")),
        "{stdout}"
    );
    assert!(!stdout.contains("pidfs_id:    (not known)"), "{stdout}");
}

#[test]
fn the_python_client_reads_its_identity() {
    let broker = Broker::start();
    let mut python = Command::new("python3");
    python.arg(example("whoami.py"));
    assert_reports_itself(&whoami(python, &broker));
}

#[test]
fn the_c_client_builds_without_warnings_and_reads_its_identity() {
    let dir = PublicDir::new("whoami-c");
    let binary = dir.path().join("whoami");
    let built = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-o"])
        .arg(&binary)
        .arg(example("whoami.c"))
        .output()
        .expect("cc runs");
    assert!(
        built.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let broker = Broker::start();
    assert_reports_itself(&whoami(Command::new(&binary), &broker));
}
