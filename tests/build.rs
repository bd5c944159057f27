//! Marks the tests this machine cannot run as ignored, with the reason,
//! so that a skipped test shows as `ignored` in every test run (a line per
//! test and a count at the end), not only with `--nocapture`. Under CI
//! (`CI` set) nothing is marked: there these tests must run, and fail if
//! they cannot.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pidbus_unprivileged)");
    println!("cargo::rustc-check-cfg=cfg(pidbus_without_systemd_tools)");
    println!("cargo::rustc-check-cfg=cfg(pidbus_without_script)");
    println!("cargo::rustc-check-cfg=cfg(pidbus_without_dbus_tools)");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=PATH");
    if std::env::var_os("CI").is_some() {
        return;
    }
    if !running_as_root() {
        println!("cargo::rustc-cfg=pidbus_unprivileged");
    }
    if !on_path("systemd-socket-activate") || !on_path("systemd-analyze") {
        println!("cargo::rustc-cfg=pidbus_without_systemd_tools");
    }
    if !on_path("script") {
        println!("cargo::rustc-cfg=pidbus_without_script");
    }
    let dbus_tools = ["busctl", "dbus-send", "dbus-monitor", "gdbus"];
    if !dbus_tools.iter().all(|tool| on_path(tool)) || !python_dbus() {
        println!("cargo::rustc-cfg=pidbus_without_dbus_tools");
    }
}

/// Whether this build runs as uid 0 (the tests run as the same user).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Whether Debian's python3 has the D-Bus bindings and GLib's main loop.
fn python_dbus() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import dbus, gi"])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
