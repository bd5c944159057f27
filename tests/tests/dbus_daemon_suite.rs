//! dbus-daemon's own test suite (Debian's `dbus-tests`) against the real
//! `pidbusd`: every subtest that passes on dbus-daemon passes on pidbus,
//! but for the differences `tests/scripts/dbus-daemon-suite` documents
//! (it runs each subtest against a fresh broker and says why each
//! documented one differs).

use std::path::Path;
use std::process::Command;

const SUITE: &str = "/usr/lib/dbus-1.0/installed-tests/dbus/test-dbus-daemon";

#[test]
fn dbus_daemons_own_test_suite_passes_but_for_the_documented_differences() {
    let test = "dbus_daemons_own_test_suite_passes_but_for_the_documented_differences";
    if !pidbus_tests::has_installed(test, Path::new(SUITE), "dbus-tests") {
        return;
    }
    // Under the session bus's policy and under the system bus's (the
    // tests run as root, whom both let own names and monitor).
    for bus in ["pidbus", "pidbus-system"] {
        run_suite_against(bus);
    }
}

fn run_suite_against(bus: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dbus-daemon-suite");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .args(["--against", bus, "--verbose", "--baseline"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/dbus-daemon-suite.passing"
        ))
        .arg("--pidbusd")
        .arg(pidbus_tests::binary("pidbusd"))
        .output()
        .expect("run tests/scripts/dbus-daemon-suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The totals, in the test's output (seen with --nocapture).
    println!("{stdout}");
    assert!(
        out.status.success(),
        "against {bus}: subtests failed that pass on dbus-daemon, or that passed before:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("total against {bus}:")),
        "{stdout}"
    );
}
