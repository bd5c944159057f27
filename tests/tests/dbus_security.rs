//! Hostile input and handed-over sockets on the D-Bus face: each bad
//! connection is closed alone, with the reason logged, and everyone else
//! is still served; a socket passed to another process speaks for nobody.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use pidbus_protocol::dbus::header::{self, Header, MessageType};
use pidbus_protocol::dbus::value::{Value, marshal};
use pidbus_tests::Broker;
use pidbus_tests::raw_dbus::RawDbus as Raw;

/// A method call to `destination`'s `member` on the bus's interface.
fn call(destination: &str, member: &str, serial: u32, args: &[Value]) -> Vec<u8> {
    let (signature, body) = marshal(args).unwrap();
    let header = Header {
        path: Some("/org/freedesktop/DBus".into()),
        interface: Some("org.freedesktop.DBus".into()),
        member: Some(member.into()),
        destination: Some(destination.into()),
        signature,
        ..Header::new(MessageType::MethodCall, serial)
    };
    header::encode(&header, &body)
}

/// Someone else is still served: a fresh client's call is answered.
fn bystander_served(broker: &Broker) {
    let (mut raw, _) = Raw::joined(broker);
    raw.send(&call("org.freedesktop.DBus", "GetId", 2, &[]));
    let (reply, _) = raw.message().expect("GetId answered");
    assert_eq!(reply.kind, MessageType::MethodReturn);
}

/// `message` after a good handshake and Hello ends the connection, and the
/// broker says why.
fn refused_after_hello(broker: &Broker, message: &[u8], reason: &str) {
    let (mut raw, _) = Raw::joined(broker);
    raw.send(message);
    assert!(raw.closed());
    broker.wait_for_log(reason);
    bystander_served(broker);
}

#[test]
fn bad_authentication_is_refused_and_others_are_served() {
    let broker = Broker::start_dbus(&[]);
    // No nul byte first.
    let mut raw = Raw::connect(&broker);
    raw.send(b"AUTH EXTERNAL\r\n");
    assert!(raw.closed());
    broker.wait_for_log("must start with a nul byte");
    // Another uid than the socket's (65533, which no test runs as):
    // rejected, and BEGIN is no way around it.
    let mut raw = Raw::connect(&broker);
    raw.send(b"\0AUTH EXTERNAL 3635353333\r\n");
    assert_eq!(raw.read_line(), "REJECTED EXTERNAL\r\n");
    raw.send(b"BEGIN\r\n");
    assert_eq!(raw.read_line(), "ERROR \"authenticate first\"\r\n");
    // A mechanism that is not offered.
    raw.send(b"AUTH ANONYMOUS\r\n");
    assert_eq!(raw.read_line(), "REJECTED EXTERNAL\r\n");
    // An endless line.
    let mut raw = Raw::connect(&broker);
    raw.send(&[b"\0".to_vec(), vec![b'A'; 4096]].concat());
    assert!(raw.closed());
    broker.wait_for_log("authentication handshake is too long");
    bystander_served(&broker);
}

#[test]
fn broken_messages_end_only_their_senders_connection() {
    let broker = Broker::start_dbus(&[]);
    // The first message is not Hello.
    let mut raw = Raw::connect(&broker);
    raw.send(b"\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n");
    raw.read_line();
    raw.read_line();
    raw.send(&call("org.freedesktop.DBus", "GetId", 1, &[]));
    assert!(raw.closed());
    broker.wait_for_log("the first message must be a Hello");

    // A length past the limit (the per-user quota here, 64 MiB): refused
    // from the 16-byte prefix.
    let mut huge = call("org.freedesktop.DBus", "GetId", 2, &[]);
    huge[4..8].copy_from_slice(&(100u32 << 20).to_le_bytes());
    refused_after_hello(&broker, &huge[..16], "the limit is 67108864");

    // A body that is not what its signature says.
    let mut lying = call(
        "org.freedesktop.DBus",
        "GetNameOwner",
        2,
        &[Value::string("a.b")],
    );
    let at = lying.len() - 3;
    lying[at] = 0xff;
    refused_after_hello(&broker, &lying, "is not UTF-8");

    // A header field of the wrong type (MEMBER as an object path).
    let mut wrong = call("org.freedesktop.DBus", "GetId", 2, &[]);
    let member = wrong.windows(4).position(|w| w == [3, 1, b's', 0]).unwrap();
    wrong[member + 2] = b'o';
    refused_after_hello(&broker, &wrong, "invalid header field MEMBER");

    // An invalid signature.
    let mut header = Header {
        path: Some("/".into()),
        member: Some("M".into()),
        destination: Some("org.freedesktop.DBus".into()),
        ..Header::new(MessageType::MethodCall, 2)
    };
    header.signature = "(".into();
    refused_after_hello(&broker, &header::encode(&header, &[]), "invalid signature");

    // A descriptor announced and not sent.
    let mut header = Header {
        path: Some("/".into()),
        member: Some("M".into()),
        destination: Some("org.freedesktop.DBus".into()),
        signature: "h".into(),
        unix_fds: 1,
        ..Header::new(MessageType::MethodCall, 2)
    };
    let fd_message = header::encode(&header, &0u32.to_le_bytes());
    refused_after_hello(&broker, &fd_message, "that were not sent with it");
    header.unix_fds = 0;

    // The reserved local interface.
    let local = Header {
        path: Some("/org/freedesktop/DBus/Local".into()),
        interface: Some("org.freedesktop.DBus.Local".into()),
        member: Some("Disconnected".into()),
        ..Header::new(MessageType::Signal, 2)
    };
    refused_after_hello(&broker, &header::encode(&local, &[]), "reserved");

    // A truncated message, then the client goes: nothing is left behind.
    let (mut raw, _) = Raw::joined(&broker);
    raw.send(&call("org.freedesktop.DBus", "GetId", 2, &[])[..20]);
    drop(raw);
    bystander_served(&broker);
}

#[test]
fn descriptors_without_negotiation_end_the_connection() {
    let broker = Broker::start_dbus(&[]);
    let mut raw = Raw::connect(&broker);
    // Authenticated without NEGOTIATE_UNIX_FD.
    raw.send(b"\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n");
    raw.read_line();
    raw.read_line();
    raw.send(&call("org.freedesktop.DBus", "Hello", 1, &[]));
    raw.message().expect("Hello answered");
    raw.message().expect("NameAcquired");
    let header = Header {
        path: Some("/".into()),
        member: Some("M".into()),
        destination: Some("org.freedesktop.DBus".into()),
        signature: "h".into(),
        unix_fds: 1,
        ..Header::new(MessageType::MethodCall, 2)
    };
    let message = header::encode(&header, &0u32.to_le_bytes());
    let file = std::fs::File::open("/dev/null").unwrap();
    let fd = OwnedFd::from(file);
    let fds = [std::os::fd::AsFd::as_fd(&fd)];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        &raw.stream,
        &[std::io::IoSlice::new(&message)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    assert!(raw.closed());
    broker.wait_for_log("without negotiating fd passing");
    bystander_served(&broker);
}

#[test]
fn big_endian_clients_are_served() {
    let broker = Broker::start_dbus(&[]);
    let mut raw = Raw::connect(&broker);
    raw.send(b"\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n");
    raw.read_line();
    raw.read_line();
    raw.send(&big_endian_call(1, "Hello", None));
    let (reply, _) = raw.message().expect("Hello answered");
    assert_eq!(
        (reply.kind, reply.reply_serial),
        (MessageType::MethodReturn, Some(1))
    );
    raw.message().expect("NameAcquired");
    raw.send(&big_endian_call(
        2,
        "NameHasOwner",
        Some("org.freedesktop.DBus"),
    ));
    let (reply, body) = raw.message().expect("NameHasOwner answered");
    assert_eq!(reply.signature, "b");
    assert_eq!(body, 1u32.to_le_bytes(), "answered little-endian: true");
}

/// A call to the bus written big-endian, with one string argument or none.
fn big_endian_call(serial: u32, member: &str, arg: Option<&str>) -> Vec<u8> {
    fn pad(out: &mut Vec<u8>, to: usize) {
        out.resize(out.len().next_multiple_of(to), 0);
    }
    fn text(out: &mut Vec<u8>, code: u8, sig: u8, value: &str) {
        pad(out, 8);
        out.extend_from_slice(&[code, 1, sig, 0]);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    let mut body = Vec::new();
    if let Some(arg) = arg {
        body.extend_from_slice(&(arg.len() as u32).to_be_bytes());
        body.extend_from_slice(arg.as_bytes());
        body.push(0);
    }
    let mut out = vec![b'B', 1, 0, 1];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    text(&mut out, 1, b'o', "/org/freedesktop/DBus");
    text(&mut out, 2, b's', "org.freedesktop.DBus");
    text(&mut out, 3, b's', member);
    text(&mut out, 6, b's', "org.freedesktop.DBus");
    if arg.is_some() {
        pad(&mut out, 8);
        out.extend_from_slice(&[8, 1, b'g', 0, 1, b's', 0]);
    }
    let fields = (out.len() - 16) as u32;
    out[12..16].copy_from_slice(&fields.to_be_bytes());
    pad(&mut out, 8);
    out.extend_from_slice(&body);
    out
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send and python3-dbus: install the Debian packages systemd, dbus-bin, python3-dbus and python3-gi"
)]
#[test]
fn a_socket_handed_to_another_process_speaks_for_nobody() {
    let broker = Broker::start_dbus(&[]);
    let (raw, name) = Raw::joined(&broker);
    // A child gets the authenticated connection as its stdin and calls
    // the bus on it.
    let request = call("org.freedesktop.DBus", "GetId", 7, &[]);
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    let script = "import os, sys\n\
                  os.write(0, bytes.fromhex(sys.argv[1]))\n\
                  data = b''\n\
                  def need(d):\n\
                  \x20   fields = (16 + int.from_bytes(d[12:16], 'little') + 7) // 8 * 8\n\
                  \x20   return fields + int.from_bytes(d[4:8], 'little')\n\
                  while len(data) < 16 or len(data) < need(data):\n\
                  \x20   chunk = os.read(0, 65536)\n\
                  \x20   if not chunk: break\n\
                  \x20   data += chunk\n\
                  print(data.hex())\n";
    let child = Command::new("/usr/bin/python3")
        .args(["-c", script, &hex])
        .stdin(Stdio::from(OwnedFd::from(raw.stream.try_clone().unwrap())))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = (0..answer.trim().len() / 2)
        .map(|i| u8::from_str_radix(&answer.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let (reply, _, _) = header::parse(
        &bytes[..header::message_len(bytes[..16].try_into().unwrap(), 1 << 20).unwrap()],
    )
    .unwrap();
    assert_eq!(reply.kind, MessageType::Error);
    assert_eq!(
        reply.error_name.as_deref(),
        Some("org.pidbus.Error.SenderMismatch")
    );
    assert_eq!(reply.reply_serial, Some(7));
    broker.wait_for_log("message from a process other than the connection's");

    // The connection's credentials are still its opener's: this process.
    let (mut asker, _) = Raw::joined(&broker);
    asker.send(&call(
        "org.freedesktop.DBus",
        "GetConnectionUnixProcessID",
        2,
        &[Value::string(&name)],
    ));
    let (reply, body) = asker.message().unwrap();
    assert_eq!(reply.kind, MessageType::MethodReturn);
    assert_eq!(body, std::process::id().to_le_bytes());
    drop(raw);
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send and python3-dbus: install the Debian packages systemd, dbus-bin, python3-dbus and python3-gi"
)]
#[test]
fn a_connection_whose_opener_exited_is_closed_and_routes_nothing() {
    let broker = Broker::start_dbus(&[]);
    // The opener authenticates and says Hello, forks, and exits; its child
    // keeps the socket and, once the opener is gone, calls the bus.
    let script = "import os, socket, sys\n\
                  s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
                  s.connect(sys.argv[1])\n\
                  s.sendall(b'\\0AUTH EXTERNAL\\r\\nDATA\\r\\nBEGIN\\r\\n' + bytes.fromhex(sys.argv[2]))\n\
                  s.recv(4096)\n\
                  opener = os.getpid()\n\
                  if os.fork() > 0:\n\
                  \x20   os._exit(0)\n\
                  while os.getppid() == opener:\n\
                  \x20   os.sched_yield()\n\
                  got = b''\n\
                  try:\n\
                  \x20   s.sendall(bytes.fromhex(sys.argv[3]))\n\
                  \x20   while chunk := s.recv(4096):\n\
                  \x20       got += chunk\n\
                  except OSError:\n\
                  \x20   pass\n\
                  print('closed', got.hex())\n";
    let hello: String = call("org.freedesktop.DBus", "Hello", 1, &[])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let request: String = call("org.pidbus.Nobody", "GetId", 2, &[])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let socket = broker.dbus_socket();
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, socket.to_str().unwrap(), &hello, &request])
        .output()
        .unwrap();
    // The child's print comes once the broker closed the connection (its
    // stdout is ours until it exits).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got = stdout
        .strip_prefix("closed")
        .unwrap_or_else(|| panic!("{out:?}"))
        .trim();
    // Whether the child's call came before the broker saw the exit (then
    // it was refused as another process's) or after (the connection was
    // already closed), it never reached the bus: no ServiceUnknown.
    let unknown: String = b"ServiceUnknown"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!got.contains(&unknown), "the call was routed: {got}");
    broker.wait_for_log("peer process exited");
    bystander_served(&broker);
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, dbus-send and python3-dbus: install the Debian packages systemd, dbus-bin, python3-dbus and python3-gi"
)]
#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users): run the tests as root"
)]
#[test]
fn the_policy_decides_for_dbus_peers_on_their_verified_identity() {
    let dir = pidbus_tests::PublicDir::new("dbus-policy");
    let policy = pidbus_tests::write_policy(
        &dir,
        "policy.toml",
        r#"[defaults]
connect = "allow"
own = "allow"
call = "allow"
receive = "allow"
pidfd = "deny"
monitor = "deny"
[[rule]]
kind = "call"
member = "GetMachineId"
user = "nobody"
decision = "deny"
[[rule]]
kind = "own"
name = "org.pidbus.Reserved"
user = "nobody"
decision = "deny"
"#,
    );
    let broker = Broker::start_dbus(&["--policy", &policy]);
    let address = format!("--address={}", broker.dbus_address());
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "busctl",
                &address,
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A service to call: this process (root) owns a name on the D-Bus face.
    let (mut service, _) = Raw::joined(&broker);
    service.send(&call(
        "org.freedesktop.DBus",
        "RequestName",
        2,
        &[Value::string("org.pidbus.Served"), Value::UInt32(4)],
    ));
    assert_eq!(service.answer().unwrap().0.kind, MessageType::MethodReturn);
    let (ok, err) = as_nobody(&[
        "call",
        "org.pidbus.Served",
        "/",
        "org.freedesktop.DBus.Peer",
        "GetMachineId",
    ]);
    assert!(!ok);
    assert!(err.contains("Access denied"), "{err}");
    // dbus-send prints the error's name and message: the deciding rule.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "dbus-send",
        ])
        .arg(format!("--bus={}", broker.dbus_address()))
        .args([
            "--print-reply",
            "--dest=org.pidbus.Served",
            "/",
            "org.freedesktop.DBus.Peer.GetMachineId",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{err}"
    );
    assert!(
        err.contains("policy.toml:8"),
        "the denial names the rule: {err}"
    );
    broker.wait_for_log_all(&["denied call", "uid=65534", "GetMachineId", "policy.toml:8"]);
    let (ok, err) = as_nobody(&[
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "RequestName",
        "su",
        "org.pidbus.Reserved",
        "4",
    ]);
    assert!(!ok);
    assert!(err.contains("Access denied"), "{err}");
    broker.wait_for_log_all(&["denied own", "uid=65534", "org.pidbus.Reserved"]);
    // Monitoring is denied by default.
    let (ok, err) = as_nobody(&["monitor"]);
    assert!(!ok, "{err}");
}

/// A D-Bus client the broker refuses before authentication (here: its
/// user is at its connection quota) is told why, by real clients' own
/// error reporting, instead of seeing its socket close.
#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs dbus-send, gdbus and python3-dbus: install the Debian packages dbus-bin, libglib2.0-bin and python3-dbus"
)]
#[test]
fn a_refused_dbus_client_is_told_why() {
    let dir = pidbus_tests::PublicDir::new("refused");
    let config = dir.path().join("pidbusd.toml");
    std::fs::write(&config, "[limits.uid]\nconnections = 1\n").unwrap();
    let broker = Broker::start_dbus(&["--config", config.to_str().unwrap()]);
    // The one connection root may have.
    let holder = pidbus_tests::HeldPeer::start(
        &[],
        &pidbus_tests::binary("pidbus-test-peer"),
        broker.socket(),
    );
    let address = broker.dbus_address();
    let why = "already has 1 connections";
    let (code, out, err) = pidbus_tests::run_bounded(
        20,
        "dbus-send",
        &[
            &format!("--bus={address}"),
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetId",
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains(why), "dbus-send: {err}");
    let (code, _, err) = pidbus_tests::run_bounded(
        20,
        "gdbus",
        &[
            "call",
            "-a",
            &address,
            "-d",
            "org.freedesktop.DBus",
            "-o",
            "/org/freedesktop/DBus",
            "-m",
            "org.freedesktop.DBus.GetId",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains(why), "gdbus: {err}");
    let connect = format!("import dbus; dbus.bus.BusConnection('{address}')");
    let (code, _, err) = pidbus_tests::run_bounded(20, "/usr/bin/python3", &["-c", &connect]);
    assert_ne!(code, 0);
    assert!(err.contains(why), "python3-dbus: {err}");
    broker.wait_for_log("refused connection: per-user quota");
    holder.kill();
}
