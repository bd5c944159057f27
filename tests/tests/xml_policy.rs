//! The D-Bus XML policy, side by side: one hand-written bus configuration
//! (each kind of element the translation handles, in every context), given
//! to dbus-daemon and to pidbusd; the same python3-dbus probe, as root and
//! as uid 65534, must be allowed and refused the same things on both.

use std::process::{Child, Command, Stdio};

use pidbus_tests::{AS_NOBODY, Broker, HeldPeer, PublicDir};

/// The default context of Debian's `system.conf`: everyone may connect,
/// nobody own, method calls closed, signals and requested replies open,
/// everything receivable.
const DEBIAN_DEFAULTS: &str = r#"    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>"#;

/// The policy under test; `LISTEN` becomes dbus-daemon's address (pidbus
/// ignores everything but `<policy>`), `DEBIAN_DEFAULTS` the lines above.
const CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>LISTEN</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
DEBIAN_DEFAULTS
    <allow send_destination="org.freedesktop.DBus"/>
    <allow own_prefix="org.test.Open"/>
    <allow send_destination="org.test.Service" send_interface="org.test.Public"/>
    <deny send_destination="org.test.Service" send_interface="org.test.Public"
          send_member="Secret"/>
    <deny send_destination="org.test.Service" send_path="/org/test/hidden"/>
    <allow send_destination_prefix="org.test" send_interface="org.test.Prefixed"/>
    <allow send_destination="org.test.Service" send_interface="org.test.Signals"/>
    <deny receive_sender="org.test.Service" receive_interface="org.test.Noisy"/>
  </policy>
  <policy user="root">
    <allow own="org.test.Service"/>
    <allow own="org.test.Service.Spare"/>
    <allow send_destination="org.test.Service" send_interface="org.test.Admin"/>
  </policy>
  <policy group="nogroup">
    <allow own="org.test.Nobody"/>
  </policy>
  <policy at_console="true">
    <allow own="org.test.Other"/>
  </policy>
  <policy context="mandatory">
    <deny own="org.test.Open.Forbidden"/>
  </policy>
</busconfig>
"#;

/// A base policy that allows everything, so that the XML decides.
const OPEN: &str =
    "[defaults]\nconnect = \"allow\"\nown = \"allow\"\ncall = \"allow\"\nreceive = \"allow\"\n";

fn probe(address: &str, as_nobody: bool) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/xml_policy_probe.py");
    let mut command = if as_nobody {
        let mut command = Command::new(AS_NOBODY[0]);
        command.args(&AS_NOBODY[1..]).arg("/usr/bin/python3");
        command
    } else {
        Command::new("/usr/bin/python3")
    };
    let out = command.args([script, address, "probe"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn service(address: &str) -> HeldPeer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/xml_policy_probe.py");
    let peer = HeldPeer::start_mode(
        &[],
        "/usr/bin/python3".as_ref(),
        &[script.as_ref(), address.as_ref(), "serve".as_ref()],
    );
    assert_eq!(peer.report["ready"], true);
    peer
}

/// dbus-daemon on `config`, its address once it listens.
fn dbus_daemon(config: &std::path::Path) -> (Child, String) {
    use std::io::BufRead;
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbus-daemon");
    let mut address = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut address)
        .unwrap();
    (child, address.trim().to_owned())
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs dbus-daemon and python3-dbus: install the Debian packages dbus-daemon, python3-dbus and python3-gi"
)]
#[test]
fn pidbus_decides_an_xml_policy_as_dbus_daemon_does() {
    let test = "pidbus_decides_an_xml_policy_as_dbus_daemon_does";
    if !pidbus_tests::can_run_privileged(test)
        || !pidbus_tests::has_tool(test, "dbus-daemon", "dbus-daemon")
    {
        return;
    }
    let dir = PublicDir::new("xml-policy");
    let socket = dir.path().join("dbus-daemon.sock");
    let config = dir.path().join("bus.conf");
    let text = CONFIG
        .replace("LISTEN", &format!("unix:path={}", socket.display()))
        .replace("DEBIAN_DEFAULTS", DEBIAN_DEFAULTS);
    std::fs::write(&config, &text).unwrap();
    let open = pidbus_tests::write_policy(&dir, "open.toml", OPEN);

    let (mut daemon, daemon_address) = dbus_daemon(&config);
    let reference_service = service(&daemon_address);
    let reference = [probe(&daemon_address, false), probe(&daemon_address, true)];
    drop(reference_service);
    let _ = daemon.kill();
    let _ = daemon.wait();

    let broker =
        Broker::start_dbus(&["--policy", &open, "--dbus-config", config.to_str().unwrap()]);
    let address = broker.dbus_address();
    let _service = service(&address);
    let pidbus = [probe(&address, false), probe(&address, true)];

    for (who, (theirs, ours)) in ["root", "nobody"].iter().zip(reference.iter().zip(&pidbus)) {
        let theirs = theirs.as_object().unwrap();
        for (what, expected) in theirs {
            let allowed = |outcome: &serde_json::Value| outcome == "ok";
            assert_eq!(
                allowed(&ours[what]),
                allowed(expected),
                "{who}: {what}: dbus-daemon {expected}, pidbus {}",
                ours[what]
            );
        }
    }
    // The probe found both answers on both buses (the file tests something).
    let outcomes: Vec<&serde_json::Value> = reference
        .iter()
        .flat_map(|r| r.as_object().unwrap().values())
        .collect();
    assert!(outcomes.iter().any(|o| *o == "ok") && outcomes.iter().any(|o| *o != "ok"));
    // And explain names the XML line that decides.
    let (code, out, err) = pidbus_tests::run_bounded(
        20,
        pidbus_tests::binary("pidbusctl").to_str().unwrap(),
        &[
            "policy",
            "explain",
            &open,
            "--action",
            "own",
            "--name",
            "org.test.Open.Forbidden",
            "--uid",
            "0",
            "--dbus-config",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    // `deny own="org.test.Open.Forbidden"` (mandatory), line 39 of the file.
    assert!(
        out.starts_with("deny (rule at ") && out.contains("bus.conf:39)"),
        "{out}"
    );
}

/// The files Debian ships: systemd's `org.freedesktop.network1.conf`
/// lets its service's own user, systemd-network, own the name, and
/// `system.conf` denies everyone else; an administrator's TOML drop-in
/// comes after the XML and may open what it closed.
#[test]
fn debians_own_files_let_a_service_user_own_its_name_and_nobody_else() {
    let test = "debians_own_files_let_a_service_user_own_its_name_and_nobody_else";
    let network1 = std::path::Path::new("/usr/share/dbus-1/system.d/org.freedesktop.network1.conf");
    if !pidbus_tests::can_run_privileged(test)
        || !pidbus_tests::has_installed(test, network1, "systemd")
    {
        return;
    }
    let uid = Command::new("id")
        .args(["-u", "systemd-network"])
        .output()
        .unwrap();
    let uid = String::from_utf8(uid.stdout).unwrap().trim().to_owned();
    assert!(
        !uid.is_empty(),
        "systemd's package creates the user systemd-network"
    );
    let dir = PublicDir::new("xml-debian");
    let drop_ins = dir.path().join("system.d");
    std::fs::create_dir_all(&drop_ins).unwrap();
    std::fs::write(
        drop_ins.join("50-example.toml"),
        "[[rule]]\nkind = \"own\"\nname = \"org.example.NoXml\"\nuser = \"root\"\ndecision = \"allow\"\n",
    )
    .unwrap();
    let broker = Broker::start_dbus(&["--system", "--policy-dir", drop_ins.to_str().unwrap()]);
    broker.wait_for_log("D-Bus XML policy of /usr/share/dbus-1/system.conf");
    let pidbusctl = dir.public_binary("pidbusctl");
    let socket = broker.socket().to_str().unwrap().to_owned();
    let own = |as_uid: Option<&str>, name: &str| {
        let mut command = match as_uid {
            Some(uid) => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", uid, "--regid", uid, "--clear-groups"])
                    .arg(&pidbusctl);
                command
            }
            None => Command::new(&pidbusctl),
        };
        let mut child = command
            .args(["--address", &socket, "own", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (line, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (line, err) = own(Some(&uid), "org.freedesktop.network1");
    assert!(
        line.contains("acquired"),
        "systemd-network owns its name: {line}{err}"
    );
    let (line, err) = own(Some("65534"), "org.freedesktop.network1");
    assert!(
        !line.contains("acquired") && err.contains("denied"),
        "nobody may not: {line}{err}"
    );
    let (line, err) = own(None, "org.example.Unlisted");
    assert!(
        !line.contains("acquired"),
        "system.conf denies owning unlisted names: {line}{err}"
    );
    let (line, err) = own(None, "org.example.NoXml");
    assert!(
        line.contains("acquired"),
        "the drop-in allows it: {line}{err}"
    );
    broker.wait_for_log_all(&["denied own", "org.freedesktop.network1", "system.conf:"]);
}

/// Debian's system bus policy, by dbus-daemon and by pidbus: the default
/// policy of Debian's `system.conf`, then every file packages installed
/// in `system.d` (systemd's, polkit's, and those of the packages `.ci/run`
/// installs: upower, power-profiles-daemon, bluez). For every name those
/// files let someone own, each of root, nobody and every user a file
/// names tries to own it on both buses: the same answers.
#[test]
fn debians_system_d_files_decide_name_ownership_as_on_dbus_daemon() {
    let test = "debians_system_d_files_decide_name_ownership_as_on_dbus_daemon";
    if !pidbus_tests::can_run_privileged(test)
        || !pidbus_tests::has_tool(test, "dbus-daemon", "dbus-daemon")
    {
        return;
    }
    let dirs = ["/usr/share/dbus-1/system.d", "/etc/dbus-1/system.d"];
    let files: Vec<std::path::PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let names = attribute_values(&texts, "own");
    assert!(names.len() >= 3, "too few names in {files:?}: {names:?}");
    let mut users = vec!["0".to_owned(), "65534".to_owned()];
    for user in attribute_values(&texts, "user") {
        let id = Command::new("id").args(["-u", &user]).output().unwrap();
        let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
        if !id.is_empty() && !users.contains(&id) {
            users.push(id);
        }
    }

    let dir = PublicDir::new("xml-debian-side-by-side");
    let socket = dir.path().join("dbus-daemon.sock");
    let config = dir.path().join("system.conf");
    std::fs::write(&config, debian_system_conf(&socket, &dirs)).unwrap();
    let open = pidbus_tests::write_policy(&dir, "open.toml", OPEN);
    let ask = |address: &str| -> Vec<serde_json::Value> {
        users
            .iter()
            .map(|uid| own_as(address, uid, &names))
            .collect()
    };
    let (mut daemon, daemon_address) = dbus_daemon(&config);
    let reference = ask(&daemon_address);
    let _ = daemon.kill();
    let _ = daemon.wait();
    // Without its own polkit authority, whose name pidbus keeps for itself
    // otherwise (polkitd's file lets polkitd's user own it).
    let broker = Broker::start_dbus(&[
        "--policy",
        &open,
        "--dbus-config",
        config.to_str().unwrap(),
        "--no-polkit-authority",
    ]);
    let pidbus = ask(&broker.dbus_address());
    for ((uid, theirs), ours) in users.iter().zip(&reference).zip(&pidbus) {
        for name in &names {
            assert_eq!(
                ours[name] == "ok",
                theirs[name] == "ok",
                "uid {uid} owning {name}: dbus-daemon {}, pidbus {}",
                theirs[name],
                ours[name]
            );
        }
    }
    let granted = reference
        .iter()
        .flat_map(|r| r.as_object().unwrap().values())
        .filter(|o| *o == "ok")
        .count();
    assert!(granted > 0, "some user may own some name: {reference:?}");
}

/// Every distinct value of `attribute="…"` in `texts`.
fn attribute_values(texts: &[String], attribute: &str) -> Vec<String> {
    let needle = format!(" {attribute}=\"");
    let mut values = Vec::new();
    for text in texts {
        for (at, _) in text.match_indices(&needle) {
            let rest = &text[at + needle.len()..];
            if let Some(value) = rest.split('"').next().filter(|v| *v != "*") {
                values.push(value.to_owned());
            }
        }
    }
    values.sort();
    values.dedup();
    values
}

/// `xml_policy_probe.py own` as `uid`, on `address`.
fn own_as(address: &str, uid: &str, names: &[String]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/xml_policy_probe.py");
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            uid,
            "--regid",
            uid,
            "--clear-groups",
            "/usr/bin/python3",
            script,
            address,
            "own",
        ])
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uid {uid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Debian's `system.conf` policy (its default context and root's
/// policies, as shipped), listening on `socket`, with `dirs` included.
fn debian_system_conf(socket: &std::path::Path, dirs: &[&str]) -> String {
    let includes: String = dirs
        .iter()
        .map(|d| format!("  <includedir>{d}</includedir>\n"))
        .collect();
    format!(
        r#"<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
{DEBIAN_DEFAULTS}
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
{includes}</busconfig>
"#,
        socket.display()
    )
}
