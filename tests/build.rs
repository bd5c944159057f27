//! Marks the tests this machine cannot run as ignored, with the reason,
//! so that a skipped test shows as `ignored` in every test run (a line per
//! test and a count at the end), not only with `--nocapture`. Under CI
//! (`CI` set) nothing is marked: there these tests must run, and fail if
//! they cannot.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pidbus_unprivileged)");
    println!("cargo::rustc-check-cfg=cfg(pidbus_without_systemd_tools)");
    println!("cargo::rustc-check-cfg=cfg(pidbus_without_script)");
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

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
