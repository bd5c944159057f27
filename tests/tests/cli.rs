//! pidbusctl against the real broker and the `echo` example.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use pidbus_tests::{Broker, binary, pidbusctl, pidbusctl_bare};

/// The `echo` example, built by `cargo test` next to the test binaries.
fn example(name: &str) -> PathBuf {
    let path = binary("pidbusd").with_file_name("examples").join(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    path
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pidbusctl_calls_the_echo_example_and_prints_the_json_back() {
    let broker = Broker::start();
    let mut echo = Running(
        Command::new(example("echo"))
            .env("PIDBUS_ADDRESS", broker.socket())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(echo.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("serving org.pidbus.Echo"), "{ready:?}");

    let call = [
        "call",
        "org.pidbus.Echo",
        "/org/pidbus/Echo",
        "org.pidbus.Echo",
        "Echo",
    ];
    // busctl's argument syntax, and busctl's way of printing the reply.
    let (code, out, err) = pidbusctl(
        broker.socket(),
        &[&call[..], &["a{sau}", "1", "a", "3", "1", "2", "3"]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "a{sau} 1 \"a\" 3 1 2 3\n");
    let json_call = [&["--json"][..], &call[..], &["sx", "hi", "-4"]].concat();
    let (code, out, err) = pidbusctl(broker.socket(), &json_call);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "[\"hi\",-4]\n");

    let (code, out, err) = pidbusctl(broker.socket(), &["--json", "names"]);
    assert_eq!(code, 0, "{err}");
    let names: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(names[0]["name"], "org.pidbus.Echo");
    assert!(names[0]["owner"].as_str().unwrap().starts_with(':'));
    assert_eq!(names[0]["queue"], serde_json::json!([]));

    let who = [
        "call",
        "org.pidbus.Echo",
        "/org/pidbus/Echo",
        "org.pidbus.Echo",
        "WhoCalledMe",
    ];
    let who = [&["--json"][..], &who[..]].concat();
    let (code, out, _) = pidbusctl(broker.socket(), &who);
    assert_eq!(code, 0);
    // CallerFacts, its fields as the arguments: id, pid, uid, gid,
    // groups, pidfs_id, exe.
    let caller: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(caller[6], binary("pidbusctl").to_str().unwrap());

    let (code, _, err) = pidbusctl(
        broker.socket(),
        &["call", "org.nobody.Home", "/", "org.a.B", "C"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("nobody owns the name org.nobody.Home"),
        "{err}"
    );
    let (code, _, err) = pidbusctl(broker.socket(), &[&call[..], &["u", "minus"]].concat());
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("\"minus\" is not a valid 'u'"), "{err}");
}

/// The subcommand names listed under "Commands:" in a `--help` text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The long flags in the Options section of a `--help` text, each with
/// whether a description follows it (on its line, or indented below it as
/// in the long help).
fn flags(help: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .collect();
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let trimmed = l.trim_start();
            if !trimmed.starts_with('-') {
                return None;
            }
            let at = l.find("--")?;
            let rest = &l[at..];
            let flag: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let inline = rest
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let indent = l.len() - trimmed.len();
            let below = lines.get(i + 1).is_some_and(|next| {
                let text = next.trim_start();
                !text.is_empty() && next.len() - text.len() > indent && !text.starts_with('-')
            });
            Some((flag, inline || below))
        })
        .collect()
}

#[test]
fn every_subcommands_help_and_man_page_describe_every_flag() {
    let man = pidbus_tests::PublicDir::new("man");
    let (code, written, err) = pidbusctl_bare(&["man", &man.path().display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(written.contains("man8/pidbusd.8"), "{written}");
    let (_, top, _) = pidbusctl_bare(&["--help"]);
    let mut commands: Vec<Vec<String>> = vec![vec![]];
    for sub in subcommands(&top) {
        let (_, help, _) = pidbusctl_bare(&[&sub, "--help"]);
        for nested in subcommands(&help) {
            commands.push(vec![sub.clone(), nested]);
        }
        commands.push(vec![sub]);
    }
    assert!(commands.len() > 15, "{commands:?}");
    for command in &commands {
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, help, _) = pidbusctl_bare(&args);
        assert_eq!(code, 0, "{args:?}");
        let page_name = std::iter::once("pidbusctl")
            .chain(command.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("-");
        let page = std::fs::read_to_string(man.path().join(format!("man1/{page_name}.1")))
            .unwrap_or_else(|e| panic!("no man page {page_name}.1: {e}"));
        let flags = flags(&help);
        assert!(flags.iter().any(|(f, _)| f == "--json"), "{args:?}: {help}");
        for (flag, described) in flags {
            assert!(described, "{args:?}: {flag} has no description");
            let roff = flag.replace('-', "\\-");
            assert!(page.contains(&roff), "{page_name}.1 lacks {flag}");
        }
    }
    // pidbusd's page describes each of its flags too.
    let help = Command::new(binary("pidbusd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let page = std::fs::read_to_string(man.path().join("man8/pidbusd.8")).unwrap();
    for (flag, described) in flags(&help) {
        assert!(described, "pidbusd {flag} has no description");
        assert!(
            page.contains(&flag.replace('-', "\\-")),
            "pidbusd.8 lacks {flag}"
        );
    }
}

#[test]
fn exit_status_is_0_ok_1_error_2_usage_or_timeout() {
    let broker = Broker::start();
    let socket = broker.socket().display().to_string();
    let ok = pidbusctl_bare(&["--address", &socket, "whoami"]);
    assert_eq!(ok.0, 0, "{}", ok.2);
    let usage = pidbusctl_bare(&["whoami", "--no-such-flag"]);
    assert_eq!(usage.0, 2, "{}", usage.2);
    let unknown = pidbusctl_bare(&["--address", &socket, "pidfd", "org.nobody.Here"]);
    assert_eq!(unknown.0, 1, "{}", unknown.2);
    // A name or a path that is not one is a usage error.
    for bad in [
        &["call", "bad name", "/x", "org.x.Y", "M"][..],
        &["call", "org.x.Y", "not/a/path", "org.x.Y", "M"],
        &["introspect", "org.x.Y", "bad path"],
    ] {
        let (code, _, err) = pidbusctl_bare(&[&["--address", socket.as_str()][..], bad].concat());
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("invalid"), "{err}");
    }
    // The held peer lives until this test kills it: a wait on it can only
    // time out.
    let holder = pidbus_tests::HeldPeer::start(&[], &binary("pidbus-test-peer"), broker.socket());
    let id = holder.report["id"].as_str().unwrap().to_owned();
    let timeout = pidbusctl_bare(&["--address", &socket, "wait", &id, "--timeout", "0.2"]);
    assert_eq!(timeout.0, 2, "{}", timeout.2);
    assert!(timeout.2.contains("still running"), "{}", timeout.2);
    holder.kill();
}

#[test]
fn a_missing_broker_is_reported_with_the_address_tried_and_how_to_start_one() {
    let dir = pidbus_tests::PublicDir::new("nobroker");
    let socket = dir.path().join("bus.sock").display().to_string();
    let (code, _, err) = pidbusctl_bare(&["--address", &socket, "peers"]);
    assert_eq!(code, 1);
    assert!(err.contains(&socket), "{err}");
    assert!(err.contains("pidbusd --session"), "{err}");
    // The system bus's address points at its units.
    let (_, _, err) = pidbusctl_bare(&["--address", "/run/pidbus/system.sock", "peers"]);
    if !std::path::Path::new("/run/pidbus/system.sock").exists() {
        assert!(err.contains("systemctl start pidbus.socket"), "{err}");
    }
    // A socket this user may not open is not a bus that is down.
    if pidbus_tests::can_run_privileged("a_missing_broker_is_reported") {
        let broker = Broker::start();
        let private = broker.socket().display().to_string();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(broker.socket(), std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = Command::new("setpriv")
            .args(pidbus_tests::AS_NOBODY[1..].iter())
            .arg(binary("pidbusctl"))
            .args(["--address", &private, "peers"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("this user may not open that socket"), "{err}");
        assert!(!err.contains("is pidbusd running"), "{err}");
    }
    // With --json the error is JSON too, on stderr.
    let (code, out, err) = pidbusctl_bare(&["--json", "--address", &socket, "peers"]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    let error: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(error["exit_code"], 1);
    assert!(
        error["error"].as_str().unwrap().contains(&socket),
        "{error}"
    );
}

#[test]
fn json_is_printed_by_every_subcommand_that_prints() {
    let broker = Broker::start();
    let socket = broker.socket().display().to_string();
    let dir = pidbus_tests::PublicDir::new("json");
    let policy = pidbus_tests::write_policy(&dir, "p.toml", "[defaults]\nconnect = \"allow\"\n");
    for args in [
        &["whoami"][..],
        &["peers"],
        &["names"],
        &["activatable"],
        &["emit", "/a", "org.example.A", "Ping", "u", "1"],
        &["authorize", "org.example.anything"],
        &["reload-policy"],
        &["policy", "check", &policy],
        &[
            "policy", "explain", &policy, "--action", "connect", "--uid", "0",
        ],
    ] {
        let mut full = vec!["--json", "--address", &socket];
        full.extend_from_slice(args);
        let (_, out, err) = pidbusctl_bare(&full);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out:?} {err}"));
    }
}

#[cfg_attr(
    pidbus_without_script,
    ignore = "needs script: install the Debian package bsdutils"
)]
#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let test = "colour_only_on_a_terminal_and_never_with_no_color";
    if !pidbus_tests::has_tool(test, "script", "bsdutils") {
        return;
    }
    let broker = Broker::start();
    let command = format!(
        "{} --address {} peers",
        binary("pidbusctl").display(),
        broker.socket().display()
    );
    // `script` runs the command on a pseudo-terminal.
    let on_tty = |no_color: Option<&str>| {
        let mut script = Command::new("script");
        script
            .args(["-qec", &command, "/dev/null"])
            .env("TERM", "xterm");
        match no_color {
            Some(value) => script.env("NO_COLOR", value),
            None => script.env_remove("NO_COLOR"),
        };
        let out = script.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_tty(None);
    assert!(
        coloured.contains("\x1b[1m"),
        "no colour on a tty: {coloured:?}"
    );
    assert!(coloured.contains("ID"), "{coloured:?}");
    let plain = on_tty(Some("1"));
    assert!(plain.contains("ID") && !plain.contains('\x1b'), "{plain:?}");
    let (_, piped, _) =
        pidbusctl_bare(&["--address", &broker.socket().display().to_string(), "peers"]);
    assert!(
        piped.starts_with("ID") && !piped.contains('\x1b'),
        "{piped:?}"
    );
}

#[test]
fn completions_are_scripts_each_shell_accepts() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = pidbusctl_bare(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for word in ["pidbusctl", "whoami", "reload-policy", "address"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // bash loads its script and registers the completion.
    let (_, script, _) = pidbusctl_bare(&["completions", "bash"]);
    let out = Command::new("bash")
        .args(["-c", &format!("{script}\ncomplete -p pidbusctl")])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pidbusctl"),
        "{out:?}"
    );
}

#[test]
fn the_declared_greeter_example_answers_its_generated_proxy_client() {
    let broker = Broker::start();
    let mut greeter = Running(
        Command::new(example("greeter-declared"))
            .env("PIDBUS_ADDRESS", broker.socket())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(greeter.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(
        ready.starts_with("serving org.example.Greeter"),
        "{ready:?}"
    );
    for (name, count) in [("Ada", "1"), ("Grace", "2")] {
        let out = Command::new(example("greeter-client"))
            .arg(name)
            .env("PIDBUS_ADDRESS", broker.socket())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("hello {name}, uid 0")
        );
        let (code, out, err) = pidbusctl(
            broker.socket(),
            &[
                "get-property",
                "org.example.Greeter",
                "/org/example/Greeter",
                "org.example.Greeter",
                "Greetings",
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), format!("u {count}"));
    }
    // The open development policy declares no reset action: denied.
    let (code, _, err) = pidbusctl(
        broker.socket(),
        &[
            "call",
            "org.example.Greeter",
            "/org/example/Greeter",
            "org.example.Greeter",
            "Reset",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("org.example.greeter.reset"), "{err}");
}
