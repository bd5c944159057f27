//! A peer process for the integration tests.
//!
//! - `hold SOCKET`: connect, print one JSON line (`self_pid`, `self_pidfs_id`,
//!   `id`, `identity`), then stay connected until stdin closes.
//! - `hello-and-exit SOCKET`: connect, send Hello and exit at once without
//!   reading the answer.
//! - `use-passed-socket`: stdin is a SEQPACKET socket; receive a bus
//!   connection over it (`SCM_RIGHTS`), send a request on it and print the
//!   outcome as JSON.
//! - `inherit-and-orphan SOCKET`: connect and handshake, start a child that
//!   inherits the connection, and exit at once; the child waits until this
//!   process is gone, sends a request and prints the outcome as JSON.
//! - `orphan-then-authorize SOCKET ACTION GO`: connect and handshake, start
//!   a child that inherits the connection, print `{"parent_pid":…}` and
//!   exit; the child waits until this process is gone and the file GO
//!   exists, asks `CheckAuthorization` of ACTION for the connection's own
//!   unique id, and prints the outcome (with `"allowed"` on a reply).
//! - `serve-authorize SOCKET NAME ACTION GO`: own NAME and serve
//!   `/org/pidbus/Test` `org.pidbus.Test`: every call asks the broker
//!   whether its caller may perform ACTION (`CheckAfterGo` first waits for
//!   the file GO) and prints and returns
//!   `{"member","caller_uid","allowed","rule"}`; prints `{"id":…}` first.
//! - `call-then-orphan SOCKET NAME`: call `CheckAfterGo` on NAME without
//!   waiting, hand the connection to a `sleep` child, print
//!   `{"sleeper":PID}` and exit.
//! - `call-who SOCKET`: call `WhoCalledMe` of `org.pidbus.Echo`, print
//!   `{"self_pid":…,"caller":…}`, then wait until stdin closes.
//! - `serve-silently SOCKET NAME`: own NAME, serve `/org/pidbus/Test`
//!   `org.pidbus.Test` without ever answering; print `{"id":…}` once the name
//!   is ours, then `{"call":MEMBER}` for every call received.
//! - `own-and-orphan SOCKET NAME`: own NAME, leave the connection to a
//!   `sleep` child that holds it open, print `{"ok":true}` and exit.
//! - `own-take-call-and-orphan SOCKET NAME`: own NAME, print `{"ok":true}`,
//!   wait for one incoming call and leave it unanswered: hand the connection
//!   to a `sleep` child, print `{"call":MEMBER,"sleeper":PID}` and exit.
//! - `own-until-exit SOCKET NAME`: own NAME, print `{"id":…,"pid":…}`, then
//!   exit with the code read as a line from stdin.
//! - `pidfd-loop SOCKET TARGET N`: get TARGET's pidfd N times, dropping each,
//!   and print this process's open descriptor count before and after as
//!   `{"before":…,"after":…,"pidfs_ids":[distinct ids seen]}`.
//! - `connect-then-exec SOCKET PROGRAM ACTION`: connect (as whoever runs
//!   it), then exec PROGRAM (a setuid copy of this binary) as
//!   `authorize-on-stdin ID ACTION` with the connection as its stdin.
//! - `authorize-on-stdin ID ACTION`: print `{"euid":…,"uid":…}`, then ask
//!   on the stdin connection whether peer ID (itself) may do ACTION and
//!   print the outcome like `authorizing-orphan`.
//! - `churn SOCKET CONNECTIONS ROUNDS`: ROUNDS times, open CONNECTIONS
//!   connections at once, ping over each, and close them all; print
//!   `{"rounds":ROUNDS}`.
//! - `call-and-wait SOCKET NAME`: print `{"id":…}`, call `Hang` on NAME and
//!   wait for the answer (for a test to kill it mid-call).

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use pidbus_protocol::dbus::header::MessageType;
use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::limits;
use pidbus_protocol::transport::SeqPacket;
use pidbus_tests::raw::{BUS1, DRIVER, DRIVER_PATH, RawMessage, RawPeer};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1..) {
        Some([mode, socket]) if mode == "hold" => hold(Path::new(socket)),
        Some([mode, socket]) if mode == "hello-and-exit" => hello_and_exit(Path::new(socket)),
        Some([mode]) if mode == "use-passed-socket" => use_passed_socket(),
        Some([mode, socket]) if mode == "inherit-and-orphan" => {
            inherit_and_orphan(Path::new(socket))
        }
        Some([mode, parent]) if mode == "orphaned-child" => orphaned_child(parent),
        Some([mode, socket]) if mode == "call-who" => call_who(Path::new(socket)),
        Some([mode, socket, name, action, go]) if mode == "serve-authorize" => {
            serve_authorize(Path::new(socket), name, action, go)
        }
        Some([mode, socket, name]) if mode == "call-then-orphan" => {
            call_then_orphan(Path::new(socket), name)
        }
        Some([mode, socket, action, go]) if mode == "orphan-then-authorize" => {
            orphan_then_authorize(Path::new(socket), action, go)
        }
        Some([mode, parent, action, id, go]) if mode == "authorizing-orphan" => {
            authorizing_orphan(parent, action, id, go)
        }
        Some([mode, socket, name]) if mode == "serve-silently" => {
            serve_silently(Path::new(socket), name)
        }
        Some([mode, socket, name]) if mode == "own-and-orphan" => {
            own_and_orphan(Path::new(socket), name, false)
        }
        Some([mode, socket, name]) if mode == "own-take-call-and-orphan" => {
            own_and_orphan(Path::new(socket), name, true)
        }
        Some([mode, socket, name]) if mode == "own-until-exit" => {
            own_until_exit(Path::new(socket), name)
        }
        Some([mode, socket, target, count]) if mode == "pidfd-loop" => {
            pidfd_loop(Path::new(socket), target, count)
        }
        Some([mode, socket, program, action]) if mode == "connect-then-exec" => {
            connect_then_exec(Path::new(socket), program, action)
        }
        Some([mode, id, action]) if mode == "authorize-on-stdin" => authorize_on_stdin(id, action),
        Some([mode, socket, connections, rounds]) if mode == "churn" => {
            churn(Path::new(socket), connections, rounds)
        }
        Some([mode, socket, name]) if mode == "forge-as-parent" => {
            forge_as_parent(Path::new(socket), name)
        }
        Some([mode, name]) if mode == "forge-on-stdin" => forge_on_stdin(name),
        Some([mode, socket, name]) if mode == "call-and-wait" => {
            call_and_wait(Path::new(socket), name)
        }
        _ => Err(
            "usage: pidbus-test-peer hold|hello-and-exit|inherit-and-orphan|call-who SOCKET \
                  | serve-silently|own-and-orphan|own-take-call-and-orphan|own-until-exit \
                  SOCKET NAME | pidfd-loop SOCKET TARGET N | use-passed-socket \
                  | churn SOCKET CONNECTIONS ROUNDS | call-and-wait SOCKET NAME"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pidbus-test-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hold(socket: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let bus = pidbus::blocking::Connection::connect(socket)?;
    let report = serde_json::json!({
        "self_pid": std::process::id(),
        "self_pidfs_id": pidbus_protocol::pidfd::own_pidfs_id()?,
        "id": bus.unique_id().to_string(),
        "identity": bus.identity(),
    });
    println!("{report}");
    // Stay connected until the test closes our stdin.
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    // Prove the connection is still good before leaving.
    bus.ping(b"bye", &[])?;
    Ok(())
}

fn hello_and_exit(socket: &Path) -> AnyResult<()> {
    runtime()?.block_on(async {
        let conn = SeqPacket::connect(socket)?;
        conn.send(&pidbus_tests::hello_record(), &[]).await?;
        Ok(())
    })
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn runtime() -> AnyResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Our stdin as an owned SEQPACKET socket.
fn stdin_socket() -> AnyResult<SeqPacket> {
    use std::os::fd::AsFd;
    Ok(SeqPacket::from_owned(
        std::io::stdin().as_fd().try_clone_to_owned()?,
    )?)
}

/// Sends a ListPeers request and prints what came back:
/// `{"outcome":"reply"}`, `{"outcome":"error","error":NAME,"message":…,
/// "reply_to":…}` or `{"outcome":"closed"}` (the broker had already
/// closed the connection); a message the broker sent as it disconnected
/// us is `{"outcome":"disconnected","message":…}`. `"serial"` is the
/// request's.
async fn request_and_report(bus: &RawPeer) -> AnyResult<()> {
    send_and_report(bus, "ListPeers", &[Value::string("")]).await
}

/// Calls `org.pidbus.Bus1.member` and prints what came back, as
/// [`request_and_report`]; an authorization answer adds `"allowed"`.
async fn send_and_report(bus: &RawPeer, member: &str, args: &[Value]) -> AnyResult<()> {
    let sent = bus.send_call(DRIVER, DRIVER_PATH, BUS1, member, args).await;
    let Ok(serial) = sent else {
        println!("{}", serde_json::json!({"outcome": "closed"}));
        return Ok(());
    };
    // A broker that closes the connection while our request is still
    // unread in its queue makes the kernel report ECONNRESET here: closed.
    let answer = bus
        .next_such(|m| m.answers(serial) || m.is_signal(BUS1, "Disconnected"))
        .await;
    let mut report = report_answer(answer.ok());
    report["serial"] = serial.into();
    println!("{report}");
    Ok(())
}

/// The JSON line [`send_and_report`] prints for `answer`.
fn report_answer(answer: Option<RawMessage>) -> serde_json::Value {
    let Some(answer) = answer else {
        return serde_json::json!({"outcome": "closed"});
    };
    if answer.is_signal(BUS1, "Disconnected") {
        return serde_json::json!({"outcome": "disconnected", "message": answer.text()});
    }
    match answer.error_name() {
        Some(name) => serde_json::json!({
            "outcome": "error",
            "error": name,
            "message": answer.text(),
            "reply_to": answer.header.reply_serial,
        }),
        None => match answer.args.first() {
            Some(Value::Bool(allowed)) => {
                serde_json::json!({"outcome": "reply", "allowed": allowed})
            }
            _ => serde_json::json!({"outcome": "reply"}),
        },
    }
}

fn use_passed_socket() -> AnyResult<()> {
    runtime()?.block_on(async {
        let channel = stdin_socket()?;
        let mut passed = channel
            .recv(limits::DEFAULT_MAX_RECORD_SIZE)
            .await?
            .ok_or("nothing passed on stdin")?;
        let bus = SeqPacket::from_owned(passed.fds.pop().ok_or("no socket passed")?)?;
        request_and_report(&RawPeer::adopt(bus)).await
    })
}

fn inherit_and_orphan(socket: &Path) -> AnyResult<()> {
    use std::os::fd::AsFd;
    runtime()?.block_on(async {
        let bus = RawPeer::connect(socket).await?;
        // The child inherits the connection as its stdin; we leave at once.
        std::process::Command::new(std::env::current_exe()?)
            .arg("orphaned-child")
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::from(
                bus.socket().as_fd().try_clone_to_owned()?,
            ))
            .spawn()?;
        Ok(())
    })
}

fn orphaned_child(parent: &str) -> AnyResult<()> {
    let parent: u32 = parent.parse()?;
    // Wait until the connecting parent has exited (we are reparented).
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    runtime()?.block_on(async { request_and_report(&RawPeer::adopt(stdin_socket()?)).await })
}

fn orphan_then_authorize(socket: &Path, action: &str, go: &str) -> AnyResult<()> {
    use std::os::fd::AsFd;
    runtime()?.block_on(async {
        let bus = RawPeer::connect(socket).await?;
        std::process::Command::new(std::env::current_exe()?)
            .args([
                "authorizing-orphan",
                &std::process::id().to_string(),
                action,
            ])
            .arg(bus.unique_name())
            .arg(go)
            .stdin(std::process::Stdio::from(
                bus.socket().as_fd().try_clone_to_owned()?,
            ))
            .spawn()?;
        println!("{}", serde_json::json!({"parent_pid": std::process::id()}));
        Ok(())
    })
}

fn authorizing_orphan(parent: &str, action: &str, id: &str, go: &str) -> AnyResult<()> {
    let parent: u32 = parent.parse()?;
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The test reuses the parent's pid, then creates `go`.
    while !Path::new(go).exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ask_about_peer_on_stdin(id, action)
}

/// Asks on the stdin connection whether peer `id` may do `action`, and
/// prints the outcome.
fn ask_about_peer_on_stdin(id: &str, action: &str) -> AnyResult<()> {
    let args = [Value::string(action), Value::string(id), Value::UInt32(0)];
    runtime()?.block_on(async {
        let bus = RawPeer::adopt(stdin_socket()?);
        send_and_report(&bus, "CheckAuthorization", &args).await
    })
}

fn serve_authorize(socket: &Path, name: &str, action: &str, go: &str) -> AnyResult<()> {
    let (action, go) = (action.to_owned(), go.to_owned());
    runtime()?.block_on(async {
        let bus = pidbus::Connection::connect(socket).await?;
        bus.serve("/org/pidbus/Test", "org.pidbus.Test", move |call| {
            let (action, go) = (action.clone(), go.clone());
            async move {
                if call.member() == "CheckAfterGo" {
                    while !Path::new(&go).exists() {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
                let answer = call.authorize(&action).await.map_err(|e| {
                    pidbus::MethodError::failed("org.pidbus.Test.Error", e.to_string())
                })?;
                let report = serde_json::json!({
                    "member": call.member(),
                    "caller_uid": call.caller().uid,
                    "allowed": answer.allowed,
                    "rule": answer.rule,
                });
                println!("{report}");
                pidbus::Response::new(&report.to_string())
            }
        })?;
        bus.request_name(name, pidbus::NameFlags::default()).await?;
        println!("{}", serde_json::json!({"id": bus.unique_id().to_string()}));
        std::future::pending::<()>().await;
        Ok(())
    })
}

fn call_then_orphan(socket: &Path, name: &str) -> AnyResult<()> {
    runtime()?.block_on(async {
        let bus = RawPeer::connect(socket).await?;
        bus.send_call(
            name,
            "/org/pidbus/Test",
            "org.pidbus.Test",
            "CheckAfterGo",
            &[],
        )
        .await?;
        let sleeper = spawn_sleeper(&bus)?;
        println!("{}", serde_json::json!({"sleeper": sleeper}));
        Ok(())
    })
}

fn call_who(socket: &Path) -> AnyResult<()> {
    let bus = pidbus::blocking::Connection::connect(socket)?;
    let caller: pidbus::CallerFacts = bus.call(
        "org.pidbus.Echo",
        "/org/pidbus/Echo",
        "org.pidbus.Echo",
        "WhoCalledMe",
        &(),
    )?;
    let report = serde_json::json!({"self_pid": std::process::id(), "caller": {
        "id": caller.id, "pid": caller.pid, "uid": caller.uid, "gid": caller.gid,
        "groups": caller.groups, "pidfs_id": caller.pidfs_id, "exe": caller.exe,
    }});
    println!("{report}");
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}

fn serve_silently(socket: &Path, name: &str) -> AnyResult<()> {
    runtime()?.block_on(async {
        let bus = pidbus::Connection::connect(socket).await?;
        bus.serve("/org/pidbus/Test", "org.pidbus.Test", |call| async move {
            println!("{}", serde_json::json!({"call": call.member()}));
            std::future::pending().await
        })?;
        bus.request_name(name, pidbus::NameFlags::default()).await?;
        println!("{}", serde_json::json!({"id": bus.unique_id().to_string()}));
        std::future::pending::<()>().await;
        Ok(())
    })
}

fn own_and_orphan(socket: &Path, name: &str, take_call: bool) -> AnyResult<()> {
    runtime()?.block_on(async {
        let bus = RawPeer::connect(socket).await?;
        let args = [Value::string(name), Value::UInt32(0)];
        let answer = bus.call_driver(DRIVER, "RequestName", &args).await?;
        if let Some(error) = answer.error_name() {
            return Err(format!("RequestName: {error}: {}", answer.text()).into());
        }
        if !take_call {
            spawn_sleeper(&bus)?;
            println!("{}", serde_json::json!({"ok": true}));
            return Ok(());
        }
        println!("{}", serde_json::json!({"ok": true}));
        let call = bus
            .next_such(|m| m.header.kind == MessageType::MethodCall)
            .await?;
        let member = call.header.member.unwrap_or_default();
        let sleeper = spawn_sleeper(&bus)?;
        println!(
            "{}",
            serde_json::json!({"call": member, "sleeper": sleeper})
        );
        Ok(())
    })
}

/// Starts a `sleep` child that holds the connection open after we exit;
/// its pid.
fn spawn_sleeper(bus: &RawPeer) -> AnyResult<u32> {
    use std::os::fd::AsFd;
    let child = std::process::Command::new("sleep")
        .arg("60")
        .stdin(std::process::Stdio::from(
            bus.socket().as_fd().try_clone_to_owned()?,
        ))
        .stdout(std::process::Stdio::null())
        .spawn()?;
    Ok(child.id())
}

fn own_until_exit(socket: &Path, name: &str) -> AnyResult<()> {
    let bus = pidbus::blocking::Connection::connect(socket)?;
    bus.request_name(name, pidbus::NameFlags::default())?;
    println!(
        "{}",
        serde_json::json!({"id": bus.unique_id().to_string(), "pid": std::process::id()})
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let code: i32 = line.trim().parse().unwrap_or(0);
    std::process::exit(code);
}

fn pidfd_loop(socket: &Path, target: &str, count: &str) -> AnyResult<()> {
    let count: usize = count.parse()?;
    let bus = pidbus::blocking::Connection::connect(socket)?;
    let open_fds = || std::fs::read_dir("/proc/self/fd").map(|dir| dir.count());
    // One request first, so whatever the first use allocates is counted in
    // the baseline.
    let mut pidfs_ids = std::collections::BTreeSet::new();
    pidfs_ids.insert(bus.pidfd(target)?.pidfs_id());
    let before = open_fds()?;
    for _ in 0..count {
        let pidfd = bus.pidfd(target)?;
        pidfs_ids.insert(pidfd.pidfs_id());
    }
    let after = open_fds()?;
    println!(
        "{}",
        serde_json::json!({"before": before, "after": after, "pidfs_ids": pidfs_ids})
    );
    Ok(())
}

fn churn(socket: &Path, connections: &str, rounds: &str) -> AnyResult<()> {
    let (connections, rounds): (usize, usize) = (connections.parse()?, rounds.parse()?);
    // Thousands of connections need more than the default soft limit.
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current = limit.maximum;
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
    runtime()?.block_on(async {
        for _ in 0..rounds {
            let mut open = Vec::with_capacity(connections);
            for _ in 0..connections {
                open.push(pidbus::Connection::connect(socket).await?);
            }
            for conn in &open {
                conn.ping(b"churn", &[]).await?;
            }
        }
        println!("{}", serde_json::json!({ "rounds": rounds }));
        Ok(())
    })
}

fn call_and_wait(socket: &Path, name: &str) -> AnyResult<()> {
    runtime()?.block_on(async {
        let bus = pidbus::Connection::connect(socket).await?;
        println!("{}", serde_json::json!({"id": bus.unique_id().to_string()}));
        let call = pidbus::MethodCall::new(name, "/org/pidbus/Test", "org.pidbus.Test", "Hang")?
            .timeout(std::time::Duration::from_secs(3600));
        bus.call_method(call).await?;
        Ok(())
    })
}

fn connect_then_exec(socket: &Path, program: &str, action: &str) -> AnyResult<()> {
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;
    let bus = runtime()?.block_on(RawPeer::connect(socket))?;
    // Same process, new program: exec only returns on failure.
    let error = std::process::Command::new(program)
        .args(["authorize-on-stdin", bus.unique_name(), action])
        .stdin(std::process::Stdio::from(
            bus.socket().as_fd().try_clone_to_owned()?,
        ))
        .exec();
    Err(format!("exec {program}: {error}").into())
}

fn authorize_on_stdin(id: &str, action: &str) -> AnyResult<()> {
    let (uid, euid) = (rustix::process::getuid(), rustix::process::geteuid());
    println!(
        "{}",
        serde_json::json!({"uid": uid.as_raw(), "euid": euid.as_raw()})
    );
    ask_about_peer_on_stdin(id, action)
}

/// Connects (run as pid 1 of `unshare -Urpf`, so this process administers
/// its pid namespace), prints whether the broker marks the connection's
/// sender proof as forgeable, then has a child send a RequestName on this
/// socket with credentials forged to say it is us.
fn forge_as_parent(socket: &Path, name: &str) -> AnyResult<()> {
    use std::os::fd::AsFd;
    let runtime = runtime()?;
    let _inside = runtime.enter();
    let bus = runtime.block_on(RawPeer::connect(socket))?;
    let me = std::process::id();
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["forge-on-stdin", name])
        .stdin(std::process::Stdio::from(
            bus.socket().as_fd().try_clone_to_owned()?,
        ))
        .status()?;
    let args = [Value::string(bus.unique_name())];
    let identity = runtime.block_on(bus.call_driver(BUS1, "GetConnectionIdentity", &args))?;
    let proof = identity
        .entry(0, "sender_proof")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let proof = proof.ok_or_else(|| format!("GetConnectionIdentity answered {identity:?}"))?;
    println!(
        "{}",
        serde_json::json!({"parent_pid": me, "child_ok": child.success(),
                           "forgeable": proof.contains("forgeable")})
    );
    Ok(())
}

/// Sends RequestName for `name` on the socket on stdin with
/// `SCM_CREDENTIALS` naming our parent's pid, and prints the answer.
fn forge_on_stdin(name: &str) -> AnyResult<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, UCred};
    use std::os::fd::AsFd;
    let runtime = runtime()?;
    let _inside = runtime.enter();
    let socket = stdin_socket()?;
    let parent = rustix::process::getppid().ok_or("no parent")?;
    let args = [Value::string(name), Value::UInt32(0)];
    let bytes = pidbus_tests::raw::driver_call(9, DRIVER, "RequestName", &args);
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    let forged = UCred {
        pid: parent,
        uid: rustix::process::getuid(),
        gid: rustix::process::getgid(),
    };
    if !ancillary.push(SendAncillaryMessage::ScmCredentials(forged)) {
        return Err("no room for the credentials".into());
    }
    rustix::net::sendmsg(
        socket.as_fd(),
        &[std::io::IoSlice::new(&bytes)],
        &mut ancillary,
        SendFlags::empty(),
    )?;
    let bus = RawPeer::adopt(socket);
    let answer =
        runtime.block_on(bus.next_such(|m| m.answers(9) || m.is_signal(BUS1, "Disconnected")));
    let report = report_answer(answer.ok());
    println!("{report}");
    Ok(())
}
