//! pidbusctl's busctl-like commands against the real broker and a service
//! declared with the SDK: list, status, introspect, tree, call (busctl
//! arguments, JSON checked against introspection, --no-reply),
//! get-property, set-property, wait --name, and D-Bus-style addresses.

use pidbus::{Access, Connection, Interface, NameFlags};
use pidbus_tests::{Broker, pidbusctl, pidbusctl_bare};
use serde_json::{Value, json};

const NAME: &str = "org.pidbus.Counter";
const PATH: &str = "/org/pidbus/Counter";
const IFACE: &str = "org.pidbus.Counter";

/// A service with methods and properties, on its own runtime.
fn counter(broker: &Broker) -> (tokio::runtime::Runtime, Connection) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bus = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        let counter = Interface::new(IFACE)
            .unwrap()
            .method("Add", |_, (a, b): (i64, i64)| async move { Ok(a + b) })
            .method("Tag", |_, (name, tags): (String, Vec<String>)| async move {
                Ok(format!("{name}: {}", tags.join(",")))
            })
            .property("Count", Access::Read, 3u32)
            .property("Label", Access::ReadWrite, String::from("start"));
        bus.serve_interface(PATH, counter).unwrap();
        bus.serve_interface(
            "/org/pidbus/Counter/child",
            Interface::new("org.pidbus.Child").unwrap(),
        )
        .unwrap();
        bus.request_name(NAME, NameFlags::default()).await.unwrap();
        bus
    });
    (runtime, bus)
}

fn ok(broker: &Broker, args: &[&str]) -> String {
    let (code, out, err) = pidbusctl(broker.socket(), args);
    assert_eq!(code, 0, "pidbusctl {args:?}: {err}");
    out
}

fn json_out(broker: &Broker, args: &[&str]) -> Value {
    let out = ok(broker, &[&["--json"][..], args].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

#[test]
fn list_and_status_show_who_owns_what() {
    let broker = Broker::start();
    let (_runtime, service) = counter(&broker);
    let id = service.unique_id().to_string();
    let out = ok(&broker, &["list"]);
    let row = out
        .lines()
        .find(|l| l.starts_with(NAME))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains(&id) && row.contains(&std::process::id().to_string()),
        "{row}"
    );
    let listed = json_out(&broker, &["list"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == NAME)
        .unwrap();
    assert_eq!(entry["owner"], id);
    assert_eq!(entry["pid"], std::process::id());
    let status = json_out(&broker, &["status", NAME]);
    assert_eq!(status["id"], id);
    assert_eq!(status["pid"], std::process::id());
    let text = ok(&broker, &["status", NAME]);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["id", id.as_str()]),
        "{text}"
    );
    let (code, _, err) = pidbusctl(broker.socket(), &["status", "org.nobody.Home"]);
    assert_eq!(code, 1);
    assert!(err.contains("org.nobody.Home"), "{err}");
}

#[test]
fn introspect_tree_and_properties_like_busctl() {
    let broker = Broker::start();
    let (_runtime, _service) = counter(&broker);
    let out = ok(&broker, &["introspect", NAME, PATH]);
    for (member, rest) in [
        (".Add", "method     xx         x"),
        (".Count", "property   u          3"),
        (".Label", "property   s          \"start\""),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(member))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            line.split_whitespace().collect::<Vec<_>>()[1..]
                == rest.split_whitespace().collect::<Vec<_>>()[..],
            "{line}"
        );
    }
    let members = json_out(&broker, &["introspect", NAME, PATH, IFACE]);
    let count = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "Count")
        .unwrap();
    assert_eq!(count["value"], 3);
    assert_eq!(count["access"], "read");
    let xml = ok(&broker, &["introspect", NAME, PATH, "--xml"]);
    assert!(xml.contains(r#"<node name="child"/>"#), "{xml}");

    let tree = ok(&broker, &["tree", NAME]);
    assert_eq!(
        tree.lines().collect::<Vec<_>>(),
        [
            "/",
            "/org",
            "/org/pidbus",
            "/org/pidbus/Counter",
            "/org/pidbus/Counter/child"
        ]
    );
    assert_eq!(
        json_out(&broker, &["tree", NAME])[4],
        "/org/pidbus/Counter/child"
    );

    assert_eq!(
        ok(
            &broker,
            &["get-property", NAME, PATH, IFACE, "Count", "Label"]
        ),
        "u 3\ns \"start\"\n"
    );
    ok(
        &broker,
        &["set-property", NAME, PATH, IFACE, "Label", "s", "moved"],
    );
    let got = json_out(&broker, &["get-property", NAME, PATH, IFACE, "Label"]);
    assert_eq!(
        got,
        json!({"name": "Label", "signature": "s", "value": "moved"})
    );
    let (code, _, err) = pidbusctl(
        broker.socket(),
        &["set-property", NAME, PATH, IFACE, "Count", "u", "9"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("read-only"), "{err}");
}

#[test]
fn call_takes_busctl_arguments_or_json_checked_against_introspection() {
    let broker = Broker::start();
    let (_runtime, _service) = counter(&broker);
    let call = ["call", NAME, PATH, IFACE];
    assert_eq!(
        ok(&broker, &[&call[..], &["Add", "xx", "40", "2"]].concat()),
        "x 42\n"
    );
    assert_eq!(
        ok(
            &broker,
            &[&call[..], &["Tag", "--args-json", r#"["a", ["x", "y"]]"#]].concat()
        ),
        "s \"a: x,y\"\n"
    );
    assert_eq!(
        json_out(
            &broker,
            &[&call[..], &["Add", "--args-json", "[40, 2]"]].concat()
        ),
        json!([42])
    );
    for (args, why) in [
        (r#"["a", 2]"#, "argument 0 (x)"),
        ("[1]", "takes 2 arguments (xx)"),
        ("[1, 2", "not valid JSON"),
    ] {
        let (code, _, err) = pidbusctl(
            broker.socket(),
            &[&call[..], &["Add", "--args-json", args]].concat(),
        );
        assert_eq!(code, 2, "a usage error: {args}");
        assert!(err.contains(why), "{args}: {err}");
    }
    let (code, out, err) = pidbusctl(
        broker.socket(),
        &[&call[..], &["Add", "--no-reply", "xx", "1", "2"]].concat(),
    );
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
}

#[test]
fn wait_for_a_name_and_dbus_style_addresses() {
    let broker = Broker::start();
    let address = format!("unix:path={}", broker.socket().display());
    // The name appears while pidbusctl waits for it.
    let waiter = std::process::Command::new(pidbus_tests::binary("pidbusctl"))
        .args([
            "--address",
            &address,
            "--json",
            "wait",
            "--name",
            NAME,
            "--timeout",
            "25",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Waiting has begun once its connection is on the bus.
    let started = (0..1000).any(|_| {
        let (_, out, _) = pidbusctl(broker.socket(), &["peers"]);
        out.lines().filter(|l| l.contains("pidbusctl")).count() >= 2
    });
    assert!(started, "the waiter never connected");
    let (_runtime, service) = counter(&broker);
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report,
        json!({"name": NAME, "owner": service.unique_id().to_string()})
    );
    let text = ok(&broker, &["wait", "--name", NAME]);
    assert_eq!(
        text,
        format!("{NAME} is owned by {}\n", service.unique_id())
    );
    let (code, _, _) = pidbusctl(
        broker.socket(),
        &["wait", "--name", "org.nobody.Home", "--timeout", "0.2"],
    );
    assert_eq!(code, 2, "a timeout");
    let (code, _, err) = pidbusctl_bare(&["--address", "tcp:host=x", "whoami"]);
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("unix:path="), "{err}");
}

#[test]
fn monitor_pairs_calls_with_answers_shows_the_brokers_errors_and_filters() {
    let broker = Broker::start();
    let (_runtime, _service) = counter(&broker);
    let monitor = |extra: &[&str]| {
        let mut child = std::process::Command::new(pidbus_tests::binary("pidbusctl"))
            .arg("--address")
            .arg(broker.socket())
            .arg("monitor")
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It says when its stream has begun.
        let mut started = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stderr.take().unwrap()),
            &mut started,
        )
        .unwrap();
        assert_eq!(started, "Monitoring bus message stream.\n");
        let lines = std::io::BufReader::new(child.stdout.take().unwrap());
        (child, lines)
    };
    let (mut all, mut all_lines) = monitor(&[]);
    let (mut filtered, mut filtered_lines) =
        monitor(&["--match", "type='method_call',member='Tag'"]);
    let call = ["call", NAME, PATH, IFACE];
    ok(&broker, &[&call[..], &["Add", "xx", "1", "2"]].concat());
    ok(
        &broker,
        &[&call[..], &["Tag", "sas", "t", "1", "x"]].concat(),
    );
    let _ = pidbusctl(
        broker.socket(),
        &["call", "org.nobody.Home", "/", "org.a.B", "C"],
    );
    use std::io::BufRead;
    let read = |lines: &mut std::io::BufReader<std::process::ChildStdout>, want: &str| {
        let mut seen = Vec::new();
        for line in lines.lines() {
            let line = line.unwrap();
            seen.push(line.clone());
            if line.contains(want) {
                return (line, seen);
            }
        }
        panic!("monitor ended without {want:?}: {seen:?}");
    };
    let (add, _) = read(&mut all_lines, ".Add serial=");
    let serial = add
        .split("serial=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let (reply, _) = read(&mut all_lines, &format!("reply_serial={serial} x 3"));
    assert!(reply.starts_with("return"), "{reply}");
    let (error, _) = read(&mut all_lines, "nobody owns the name org.nobody.Home");
    assert!(
        error.starts_with("error  org.freedesktop.DBus →"),
        "{error}"
    );
    let (tag, seen) = read(&mut filtered_lines, ".Tag");
    assert!(tag.contains("sas \"t\" 1 \"x\""), "{tag}");
    assert!(
        !seen.iter().any(|l| l.contains(".Add")),
        "the filter let Add through: {seen:?}"
    );
    let _ = all.kill();
    let _ = filtered.kill();
    let _ = all.wait();
    let _ = filtered.wait();
}

#[test]
fn bash_completes_live_names_paths_interfaces_and_members() {
    let broker = Broker::start();
    let (_runtime, _service) = counter(&broker);
    assert!(
        ok(&broker, &["complete", "names"])
            .lines()
            .any(|l| l == NAME)
    );
    assert_eq!(
        ok(&broker, &["complete", "members", NAME, PATH, IFACE])
            .lines()
            .collect::<Vec<_>>(),
        ["Add", "Tag", "Count", "Label"]
    );
    let bin = pidbus_tests::binary("pidbusctl");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let socket = broker.socket().display().to_string();
    let complete = |words: &[&str]| {
        let line = words.join(" ");
        let script = format!(
            "source <(pidbusctl completions bash)\n\
             COMP_WORDS=(pidbusctl --address {socket} {line})\n\
             COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             _pidbusctl_live\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("PATH", &path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(complete(&["call", "org.pidbus.Co"]).contains(NAME));
    assert!(complete(&["call", NAME, "/org/pidbus/C"]).contains(PATH));
    assert!(complete(&["introspect", NAME, PATH, "org.pidbus."]).contains(IFACE));
    assert_eq!(complete(&["call", NAME, PATH, IFACE, "Ta"]).trim(), "Tag");
}
