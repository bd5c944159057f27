//! A hostile local user's tools, for the attack tests (`tests/attacks.rs`):
//! each mode floods the broker one way over raw connections to its native
//! socket (D-Bus messages, one per record: `pidbus_tests::raw`), prints one
//! JSON line saying what the broker answered, and (for the modes that hold
//! resources) keeps its connections open until its stdin is closed, so the
//! test can measure the broker under the attack.
//!
//! Usage: `pidbus-attacker MODE SOCKET ARGS...` (SOCKET is the D-Bus
//! socket for the `dbus-` modes).

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use pidbus_protocol::dbus::header::{self, Header, MessageType};
use pidbus_protocol::dbus::value::{Value, marshal};
use pidbus_tests::raw::{BUS1, DRIVER, DRIVER_PATH, RawMessage, RawPeer};
use serde_json::json;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// D-Bus's name for the broker's refusals at a limit or quota.
const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";

/// `RequestName` flags.
const ALLOW_REPLACEMENT: u32 = 0x1;
const REPLACE_EXISTING: u32 = 0x2;
const DO_NOT_QUEUE: u32 = 0x4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| {
        args.get(i)
            .and_then(|a| a.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let socket = args.get(1).map(Path::new);
    let outcome = match (args.first().map(String::as_str), socket) {
        (Some("fd-flood"), Some(s)) => run(fd_flood(s, number(2), number(3))),
        (Some("watch-flood"), Some(s)) => run(watch_flood(s, number(2), number(3))),
        (Some("pong-flood"), Some(s)) => run(pong_flood(s, number(2), number(3))),
        (Some("rule-flood"), Some(s)) => run(rule_flood(s, number(2))),
        (Some("signal-storm"), Some(s)) => run(signal_storm(s, number(2), number(3), number(4))),
        (Some("unicast-flood"), Some(s)) => match args.get(2) {
            Some(name) => run(unicast_flood(s, name.clone(), number(3))),
            None => Err("unicast-flood SOCKET NAME COUNT".into()),
        },
        (Some("takeover-loop"), Some(s)) => run(takeover_loop(s, number(2))),
        (Some("many-names"), Some(s)) => run(many_names(s, number(2))),
        (Some("many-peers"), Some(s)) => run(many_peers(s, number(2))),
        (Some("dbus-big-signals"), Some(s)) => dbus_big_signals(s, number(2)),
        _ => {
            Err("usage: pidbus-attacker MODE SOCKET ARGS... (see tests/src/bin/attacker.rs)".into())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pidbus-attacker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(attack: impl std::future::Future<Output = AnyResult<()>>) -> AnyResult<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(attack)
}

/// A raw connection to the native socket that said Hello.
async fn connect(socket: &Path) -> AnyResult<RawPeer> {
    Ok(RawPeer::connect(socket).await?)
}

/// Sends one record with `fds`.
async fn send(bus: &RawPeer, record: &[u8], fds: &[OwnedFd]) -> AnyResult<()> {
    let fds: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    loop {
        match bus.send_raw(record, &fds).await {
            Ok(()) => return Ok(()),
            // The kernel bounds the descriptors a user has in flight (its
            // RLIMIT_NOFILE): wait for the broker to take some.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TOOMANYREFS.raw_os_error()) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The header of a call of the driver's `interface.member`, for a body of
/// `signature` marshalled once and sent many times (see [`stamped`]).
fn driver_header(interface: &str, member: &str, signature: &str) -> Header {
    Header {
        destination: Some(DRIVER.into()),
        path: Some(DRIVER_PATH.into()),
        interface: Some(interface.into()),
        member: Some(member.into()),
        signature: signature.into(),
        ..Header::new(MessageType::MethodCall, 1)
    }
}

/// `header` with `bus`'s next serial, and `body`, as one record.
fn stamped(bus: &RawPeer, header: &mut Header, body: &[u8]) -> Vec<u8> {
    header.serial = bus.next_serial();
    header::encode(header, body)
}

/// An `ay` of `len` times `byte`.
fn byte_array(len: usize, byte: u8) -> Value {
    Value::Array {
        element: "y".into(),
        items: vec![Value::Byte(byte); len],
    }
}

/// A refusal as the report shows it: the error's name and its message
/// (cut short: a refused rule's message quotes the whole rule).
fn shown((name, message): &(String, String)) -> String {
    const SHOWN: usize = 400;
    let mut text = format!("{name}: {message}");
    if let Some((cut, _)) = text.char_indices().nth(SHOWN) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Calls the driver's `interface.member` and waits for its answer (other
/// messages in between are skipped): `Ok(the return)` or `Err((error
/// name, message))`.
async fn ask(
    bus: &RawPeer,
    interface: &str,
    member: &str,
    args: &[Value],
) -> AnyResult<Result<RawMessage, (String, String)>> {
    let answer = bus
        .call_driver(interface, member, args)
        .await
        .map_err(|e| format!("{member}: no answer ({e}): the broker closed the connection?"))?;
    Ok(match answer.error_name() {
        Some(name) => Err((name.to_owned(), answer.text().to_owned())),
        None => Ok(answer),
    })
}

/// [`ask`], where an error fails the attack.
async fn ask_ok(
    bus: &RawPeer,
    interface: &str,
    member: &str,
    args: &[Value],
) -> AnyResult<RawMessage> {
    Ok(ask(bus, interface, member, args)
        .await?
        .map_err(|refusal| format!("{member}: {}", shown(&refusal)))?)
}

/// `RequestName`'s answer by the name the specification gives it.
fn request_name_reply(answer: &RawMessage) -> String {
    match answer.args.first().and_then(Value::as_u32) {
        Some(1) => "PrimaryOwner".into(),
        Some(2) => "InQueue".into(),
        Some(3) => "Exists".into(),
        Some(4) => "AlreadyOwner".into(),
        _ => format!("{:?}", answer.args),
    }
}

/// The messages waiting on `bus` now, until none is or the connection
/// ended: `false` once it did.
fn waiting(bus: &RawPeer, mut each: impl FnMut(RawMessage)) -> bool {
    loop {
        match bus.try_next() {
            Ok(Some(message)) => each(message),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// What came back on connections that were flooded without reading.
#[derive(Default)]
struct Tally {
    replies: usize,
    refused: usize,
    other_errors: usize,
    closed: usize,
    first_refusal: Option<String>,
}

impl Tally {
    /// Reads everything waiting on `bus`.
    fn drain(&mut self, bus: &RawPeer) {
        let open = waiting(bus, |message| match message.error_name() {
            None if message.header.kind == MessageType::MethodReturn => self.replies += 1,
            None => {}
            Some(LIMITS_EXCEEDED) => {
                self.refused += 1;
                self.first_refusal
                    .get_or_insert_with(|| format!("{LIMITS_EXCEEDED}: {}", message.text()));
            }
            Some(_) => self.other_errors += 1,
        });
        if !open {
            self.closed += 1;
        }
    }

    fn report(&self) -> serde_json::Value {
        json!({
            "replies": self.replies,
            "refused": self.refused,
            "other_errors": self.other_errors,
            "closed": self.closed,
            "first_refusal": self.first_refusal,
        })
    }
}

/// Prints `report`, waits for stdin to close, then reads what every
/// connection was sent and prints the tally.
async fn hold_then_tally(report: serde_json::Value, connections: &[RawPeer]) -> AnyResult<()> {
    println!("{report}");
    let mut sink = Vec::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_to_end(&mut sink)).await??;
    let mut tally = Tally::default();
    for bus in connections {
        tally.drain(bus);
    }
    println!("{}", tally.report());
    Ok(())
}

/// Every connection sends `rounds` `org.pidbus.Bus1.Ping`s carrying 253
/// descriptors and as many `GetProcessFD`s for itself, and never reads
/// the answers.
async fn fd_flood(socket: &Path, connections: usize, rounds: usize) -> AnyResult<()> {
    const FDS: usize = 253;
    let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let fds: Vec<OwnedFd> = (0..FDS)
        .map(|_| null.try_clone())
        .collect::<Result<_, _>>()?;
    let mut ping = driver_header(BUS1, "Ping", "ay");
    ping.unix_fds = u32::try_from(FDS)?;
    let (_, empty) = marshal(&[byte_array(0, 0)])?;
    let mut get_pidfd = driver_header(BUS1, "GetProcessFD", "s");
    let mut open = Vec::new();
    for _ in 0..connections {
        let bus = connect(socket).await?;
        let (_, itself) = marshal(&[Value::string(bus.unique_name())])?;
        for _ in 0..rounds {
            send(&bus, &stamped(&bus, &mut ping, &empty), &fds).await?;
            send(&bus, &stamped(&bus, &mut get_pidfd, &itself), &[]).await?;
        }
        open.push(bus);
    }
    hold_then_tally(json!({"connections": open.len()}), &open).await
}

/// `watchers` connections watch short-lived connections of this same
/// process (`org.pidbus.Bus1.WatchProcess`), `rounds` times each, until the
/// broker refuses.
async fn watch_flood(socket: &Path, watchers: usize, rounds: usize) -> AnyResult<()> {
    let mut open = Vec::new();
    for _ in 0..watchers {
        open.push(connect(socket).await?);
    }
    let (mut made, mut refused, mut first_refusal) = (0, 0, None);
    for _ in 0..rounds {
        let target = connect(socket).await?;
        let name = [Value::string(target.unique_name())];
        for watcher in &open {
            match ask(watcher, BUS1, "WatchProcess", &name).await? {
                Ok(_) => made += 1,
                Err(refusal) => {
                    refused += 1;
                    first_refusal.get_or_insert_with(|| shown(&refusal));
                }
            }
        }
        drop(target);
    }
    let report = json!({"made": made, "refused": refused, "first_refusal": first_refusal});
    hold_then_tally(report, &open).await
}

/// Every connection sends `count` `org.pidbus.Bus1.Ping`s of 60 000 bytes
/// and never reads.
async fn pong_flood(socket: &Path, connections: usize, count: usize) -> AnyResult<()> {
    let mut ping = driver_header(BUS1, "Ping", "ay");
    let (_, body) = marshal(&[byte_array(60_000, 0x5a)])?;
    let mut open = Vec::new();
    for _ in 0..connections {
        let bus = connect(socket).await?;
        for _ in 0..count {
            send(&bus, &stamped(&bus, &mut ping, &body), &[]).await?;
        }
        open.push(bus);
    }
    hold_then_tally(json!({"connections": open.len()}), &open).await
}

/// Tries a rule with a 65 KB first argument, then fills every
/// connection with 1 000-byte rules until the broker refuses (`AddMatch`).
async fn rule_flood(socket: &Path, connections: usize) -> AnyResult<()> {
    let first = connect(socket).await?;
    let huge = Value::string(format!("arg0='{}'", "x".repeat(65_000)));
    let huge = match ask(&first, DRIVER, "AddMatch", &[huge]).await? {
        Ok(_) => "accepted".to_owned(),
        Err(refusal) => shown(&refusal),
    };
    let mut open = vec![first];
    for _ in 1..connections {
        open.push(connect(socket).await?);
    }
    let (mut accepted, mut refused, mut last_refusal) = (0, 0, None);
    for bus in &open {
        for id in 0..10_000u64 {
            let rule = Value::string(format!("member='Flood',arg0='{id:0>1000}'"));
            match ask(bus, DRIVER, "AddMatch", &[rule]).await? {
                Ok(_) => accepted += 1,
                Err(refusal) => {
                    refused += 1;
                    last_refusal = Some(shown(&refusal));
                    break;
                }
            }
        }
    }
    let report = json!({"huge_rule": huge, "accepted": accepted, "refused": refused,
                        "last_refusal": last_refusal});
    hold_then_tally(report, &open).await
}

/// `connections` subscribers each hold `rules` rules on member `Storm`
/// whose 1 000-byte first arguments differ from the signals' only in their
/// last byte; then one more connection broadcasts `signals` such signals.
/// Prints when the rules are in place and when the storm is over, with
/// how many storm signals reached the subscribers.
async fn signal_storm(
    socket: &Path,
    connections: usize,
    rules: usize,
    signals: usize,
) -> AnyResult<()> {
    let prefix = "s".repeat(999);
    let mut open = Vec::new();
    for _ in 0..connections {
        let bus = connect(socket).await?;
        for id in 0..rules {
            let last = char::from(b'a' + (id % 26) as u8);
            let rule = Value::string(format!("member='Storm',arg0='{prefix}{last}'"));
            ask_ok(&bus, DRIVER, "AddMatch", &[rule]).await?;
        }
        open.push(bus);
    }
    println!("{}", json!({"rules_in_place": connections * rules}));
    let sender = connect(socket).await?;
    let (signature, body) = marshal(&[Value::string(format!("{prefix}Z"))])?;
    let mut storm = Header {
        path: Some("/storm".into()),
        interface: Some("org.example.Storm".into()),
        member: Some("Storm".into()),
        signature,
        ..Header::new(MessageType::Signal, 1)
    };
    for _ in 0..signals {
        send(&sender, &stamped(&sender, &mut storm, &body), &[]).await?;
    }
    // A Ping answered after the storm: the broker has routed all of it.
    ask_ok(&sender, BUS1, "Ping", &[byte_array(0, 0)]).await?;
    let mut delivered = 0;
    for bus in &open {
        waiting(bus, |message| {
            if message.is_signal("org.example.Storm", "Storm") {
                delivered += 1;
            }
        });
    }
    println!("{}", json!({"storm_over": signals, "delivered": delivered}));
    Ok(())
}

/// Sends `count` unicast signals of 60 000 bytes to `name`, then a call as
/// large (which a receiver that does not read must refuse at once), then
/// tries to take the name. Reports the errors the signals earned (a D-Bus
/// signal has no answer: one the receiver's queue cannot take is dropped
/// without a word to its sender), the call's answer, and whether the name
/// was taken.
async fn unicast_flood(socket: &Path, name: String, count: usize) -> AnyResult<()> {
    let bus = connect(socket).await?;
    let flood = [byte_array(60_000, 0x42)];
    let (signature, body) = marshal(&flood)?;
    let mut signal = Header {
        destination: Some(name.clone()),
        path: Some("/flood".into()),
        interface: Some("org.example.Flood".into()),
        member: Some("Flood".into()),
        signature,
        ..Header::new(MessageType::Signal, 1)
    };
    for _ in 0..count {
        send(&bus, &stamped(&bus, &mut signal, &body), &[]).await?;
    }
    // Whatever the broker says about the signals comes before the Pong.
    let ping = bus
        .send_call(DRIVER, DRIVER_PATH, BUS1, "Ping", &[byte_array(0, 0)])
        .await?;
    let (mut signal_errors, mut first_signal_error) = (0, None);
    loop {
        let message = bus.next().await?;
        if message.answers(ping) {
            break;
        }
        if let Some(error) = message.error_name() {
            signal_errors += 1;
            first_signal_error.get_or_insert_with(|| format!("{error}: {}", message.text()));
        }
    }
    let probe = bus
        .send_call(&name, "/flood", "org.example.Flood", "Probe", &flood)
        .await?;
    let probe = match tokio::time::timeout(Duration::from_secs(5), bus.answer_to(probe)).await {
        Ok(answer) => {
            let answer = answer?;
            match answer.error_name() {
                Some(error) => shown(&(error.to_owned(), answer.text().to_owned())),
                None => "answered".to_owned(),
            }
        }
        Err(_) => "no answer within 5 s (queued for the receiver)".to_owned(),
    };
    let took = match ask(
        &bus,
        DRIVER,
        "RequestName",
        &[Value::string(name), Value::UInt32(REPLACE_EXISTING)],
    )
    .await?
    {
        Ok(answer) => request_name_reply(&answer) == "PrimaryOwner",
        Err(_) => false,
    };
    println!(
        "{}",
        json!({"sent": count, "signal_errors": signal_errors,
               "first_signal_error": first_signal_error, "probe_call": probe,
               "took_name": took})
    );
    Ok(())
}

/// A victim connection owns a name (do-not-queue, allow-replacement); a
/// second one takes it over and gives it back, `rounds` times. Then the
/// victim asks for a fresh name.
async fn takeover_loop(socket: &Path, rounds: usize) -> AnyResult<()> {
    let victim = connect(socket).await?;
    let taker = connect(socket).await?;
    let name = Value::string("org.example.Contested");
    let owned = [
        name.clone(),
        Value::UInt32(ALLOW_REPLACEMENT | DO_NOT_QUEUE),
    ];
    let take = [name.clone(), Value::UInt32(REPLACE_EXISTING | DO_NOT_QUEUE)];
    for _ in 0..rounds {
        ask_ok(&victim, DRIVER, "RequestName", &owned).await?;
        ask_ok(&taker, DRIVER, "RequestName", &take).await?;
        ask_ok(&taker, DRIVER, "ReleaseName", std::slice::from_ref(&name)).await?;
    }
    let fresh = [Value::string("org.example.Fresh"), Value::UInt32(0)];
    let fresh = match ask(&victim, DRIVER, "RequestName", &fresh).await? {
        Ok(answer) => request_name_reply(&answer),
        Err(refusal) => shown(&refusal),
    };
    println!("{}", json!({"rounds": rounds, "fresh_name": fresh}));
    Ok(())
}

/// Owns `count` names of 248 bytes each, then holds them.
async fn many_names(socket: &Path, count: usize) -> AnyResult<()> {
    let bus = connect(socket).await?;
    for i in 0..count {
        let name = Value::string(format!("org.example.{}{i:06}", "n".repeat(230)));
        ask_ok(&bus, DRIVER, "RequestName", &[name, Value::UInt32(0)]).await?;
    }
    hold_then_tally(json!({"names": count}), &[bus]).await
}

/// Holds `count` connections.
async fn many_peers(socket: &Path, count: usize) -> AnyResult<()> {
    let mut open = Vec::new();
    for _ in 0..count {
        open.push(connect(socket).await?);
    }
    hold_then_tally(json!({"peers": open.len()}), &open).await
}

/// On the D-Bus socket: authenticates, says Hello, then sends `count`
/// signals of almost 1 MiB each (the most a message may be) to nobody,
/// never reading. Prints `{"sent":count}` and holds the connection until
/// stdin closes.
fn dbus_big_signals(socket: &Path, count: usize) -> AnyResult<()> {
    use std::io::Write;
    let uid = rustix::process::getuid().as_raw().to_string();
    let uid_hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let mut hello = Header::new(MessageType::MethodCall, 1);
    hello.path = Some("/org/freedesktop/DBus".into());
    hello.interface = Some("org.freedesktop.DBus".into());
    hello.member = Some("Hello".into());
    hello.destination = Some("org.freedesktop.DBus".into());
    let mut opening = format!("\0AUTH EXTERNAL {uid_hex}\r\nBEGIN\r\n").into_bytes();
    opening.extend(header::encode(&hello, &[]));
    stream.write_all(&opening)?;
    // An `ay` of nearly 1 MiB: its length, then its bytes.
    let data = vec![0x5au8; (1 << 20) - 1024];
    let mut body = u32::try_from(data.len())?.to_le_bytes().to_vec();
    body.extend_from_slice(&data);
    let mut signal = Header::new(MessageType::Signal, 2);
    signal.path = Some("/org/pidbus/Flood".into());
    signal.interface = Some("org.pidbus.Flood".into());
    signal.member = Some("Big".into());
    signal.signature = "ay".into();
    // One unbroken stream, written in pieces that end mid-message, so the
    // broker's reads seldom end where a message does.
    let mut pending = Vec::new();
    for serial in 0..count {
        signal.serial = u32::try_from(serial + 2)?;
        pending.extend(header::encode(&signal, &body));
        let cut = pending.len() - pending.len() % 100_003;
        stream.write_all(&pending[..cut])?;
        pending.drain(..cut);
    }
    stream.write_all(&pending)?;
    println!("{}", json!({"sent": count}));
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}
