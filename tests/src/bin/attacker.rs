//! A hostile local user's tools, for the attack tests (`tests/attacks.rs`):
//! each mode floods the broker one way over raw connections, prints one
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

use pidbus_protocol::dbus::value::{Value, marshal};
use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{
    BrokerReply, BrokerRequest, Destination, ErrorCode, MatchRule, Message, NameFlags, PeerId,
    Request, Signal, codec, limits,
};
use serde_json::json;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

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

/// A raw connection after Hello/Welcome, with its unique id.
async fn connect(socket: &Path) -> AnyResult<(SeqPacket, PeerId)> {
    let bus = SeqPacket::connect(socket)?;
    bus.send(&pidbus_tests::hello_record(), &[]).await?;
    match next(&bus).await? {
        Some(Message::Welcome(welcome)) => Ok((bus, welcome.unique_id)),
        other => Err(format!("expected Welcome, got {other:?}").into()),
    }
}

/// The next message, `None` when the broker closed the connection.
async fn next(bus: &SeqPacket) -> AnyResult<Option<Message>> {
    match bus.recv(limits::DEFAULT_MAX_RECORD_SIZE).await {
        Ok(Some(received)) => Ok(Some(codec::decode(
            &received.data,
            limits::DEFAULT_MAX_RECORD_SIZE,
        )?)),
        Ok(None) | Err(_) => Ok(None),
    }
}

/// The next message if one is waiting now.
fn next_now(bus: &SeqPacket) -> Option<Message> {
    match bus.try_recv(limits::DEFAULT_MAX_RECORD_SIZE) {
        Ok(Some(received)) => codec::decode(&received.data, limits::DEFAULT_MAX_RECORD_SIZE).ok(),
        _ => None,
    }
}

async fn send(bus: &SeqPacket, message: &Message, fds: &[OwnedFd]) -> AnyResult<()> {
    let bytes = codec::encode(message, limits::DEFAULT_MAX_RECORD_SIZE)?;
    let fds: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    loop {
        match bus.send(&bytes, &fds).await {
            Ok(()) => return Ok(()),
            // The kernel bounds the descriptors a user has in flight (its
            // RLIMIT_NOFILE): wait for the broker to take some.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TOOMANYREFS.raw_os_error()) => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn request(bus: &SeqPacket, serial: u64, body: BrokerRequest) -> AnyResult<()> {
    send(bus, &Message::Request(Request { serial, body }), &[]).await
}

/// Sends a request and waits for its answer (events in between are
/// skipped): `Ok(reply)` or `Err(error code and message)`.
async fn ask(
    bus: &SeqPacket,
    serial: u64,
    body: BrokerRequest,
) -> AnyResult<Result<BrokerReply, (ErrorCode, String)>> {
    request(bus, serial, body).await?;
    loop {
        match next(bus).await? {
            Some(Message::Reply(reply)) if reply.reply_to == serial => return Ok(Ok(reply.body)),
            Some(Message::Error(e)) if e.reply_to == Some(serial) => {
                return Ok(Err((e.code, e.message)));
            }
            Some(_) => continue,
            None => return Err("the broker closed the connection".into()),
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
    fn drain(&mut self, bus: &SeqPacket) {
        let mut open = true;
        loop {
            match bus.try_recv(limits::DEFAULT_MAX_RECORD_SIZE) {
                Ok(Some(received)) => {
                    match codec::decode(&received.data, limits::DEFAULT_MAX_RECORD_SIZE) {
                        Ok(Message::Reply(_)) => self.replies += 1,
                        Ok(Message::Error(e)) if e.code == ErrorCode::LimitsExceeded => {
                            self.refused += 1;
                            self.first_refusal.get_or_insert(e.message);
                        }
                        Ok(Message::Error(_)) => self.other_errors += 1,
                        _ => {}
                    }
                }
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(e) if e.to_string().contains("temporarily unavailable") => break,
                Err(_) => {
                    open = false;
                    break;
                }
            }
        }
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
async fn hold_then_tally(report: serde_json::Value, connections: &[SeqPacket]) -> AnyResult<()> {
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

/// Every connection sends `rounds` Pings carrying 253 descriptors and as
/// many GetPidfd requests for itself, and never reads the answers.
async fn fd_flood(socket: &Path, connections: usize, rounds: usize) -> AnyResult<()> {
    let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let fds: Vec<OwnedFd> = (0..253)
        .map(|_| null.try_clone())
        .collect::<Result<_, _>>()?;
    let mut open = Vec::new();
    for _ in 0..connections {
        let (bus, id) = connect(socket).await?;
        for serial in 0..rounds as u64 {
            let ping = Message::Request(Request {
                serial: 2 * serial,
                body: BrokerRequest::Ping {
                    payload: Vec::new(),
                },
            });
            send(&bus, &ping, &fds).await?;
            let target = Destination::Unique(id);
            request(&bus, 2 * serial + 1, BrokerRequest::GetPidfd { target }).await?;
        }
        open.push(bus);
    }
    hold_then_tally(json!({"connections": open.len()}), &open).await
}

/// `watchers` connections watch short-lived connections of this same
/// process, `rounds` times each, until the broker refuses.
async fn watch_flood(socket: &Path, watchers: usize, rounds: usize) -> AnyResult<()> {
    let mut open = Vec::new();
    for _ in 0..watchers {
        open.push(connect(socket).await?.0);
    }
    let (mut made, mut refused, mut first_refusal) = (0, 0, None);
    for round in 0..rounds as u64 {
        let (target, target_id) = connect(socket).await?;
        for watcher in &open {
            let body = BrokerRequest::WatchProcess {
                id: round,
                target: Destination::Unique(target_id),
            };
            match ask(watcher, round, body).await? {
                Ok(_) => made += 1,
                Err((_, message)) => {
                    refused += 1;
                    first_refusal.get_or_insert(message);
                }
            }
        }
        drop(target);
    }
    let report = json!({"made": made, "refused": refused, "first_refusal": first_refusal});
    hold_then_tally(report, &open).await
}

/// Every connection sends `count` Pings of 60 000 bytes and never reads.
async fn pong_flood(socket: &Path, connections: usize, count: usize) -> AnyResult<()> {
    let payload = vec![0x5a; 60_000];
    let mut open = Vec::new();
    for _ in 0..connections {
        let (bus, _) = connect(socket).await?;
        for serial in 0..count as u64 {
            let body = BrokerRequest::Ping {
                payload: payload.clone(),
            };
            request(&bus, serial, body).await?;
        }
        open.push(bus);
    }
    hold_then_tally(json!({"connections": open.len()}), &open).await
}

/// Tries a rule with a 65 KB first argument, then fills every
/// connection with 1 000-byte rules until the broker refuses.
async fn rule_flood(socket: &Path, connections: usize) -> AnyResult<()> {
    let (first, _) = connect(socket).await?;
    let huge = MatchRule {
        arg0: Some("x".repeat(65_000)),
        ..MatchRule::default()
    };
    let huge = match ask(&first, 1, BrokerRequest::AddMatch { id: 1, rule: huge }).await? {
        Ok(_) => "accepted".to_owned(),
        Err((_, message)) => message,
    };
    let mut open = vec![first];
    for _ in 1..connections {
        open.push(connect(socket).await?.0);
    }
    let (mut accepted, mut refused, mut last_refusal) = (0, 0, None);
    for bus in &open {
        for id in 0..10_000u64 {
            let rule = MatchRule {
                member: Some("Flood".into()),
                arg0: Some(format!("{id:0>1000}")),
                ..MatchRule::default()
            };
            match ask(bus, id, BrokerRequest::AddMatch { id, rule }).await? {
                Ok(_) => accepted += 1,
                Err((_, message)) => {
                    refused += 1;
                    last_refusal = Some(message);
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
/// last byte; then one more connection sends `signals` such signals. Prints
/// when the rules are in place and when the storm is over.
async fn signal_storm(
    socket: &Path,
    connections: usize,
    rules: usize,
    signals: usize,
) -> AnyResult<()> {
    let prefix = "s".repeat(999);
    let mut open = Vec::new();
    for _ in 0..connections {
        let (bus, _) = connect(socket).await?;
        for id in 0..rules as u64 {
            let rule = MatchRule {
                member: Some("Storm".into()),
                arg0: Some(format!("{prefix}{}", char::from(b'a' + (id % 26) as u8))),
                ..MatchRule::default()
            };
            ask(&bus, id, BrokerRequest::AddMatch { id, rule })
                .await?
                .map_err(|(_, m)| m)?;
        }
        open.push(bus);
    }
    println!("{}", json!({"rules_in_place": connections * rules}));
    let (sender, _) = connect(socket).await?;
    let (signature, body) = marshal(&[Value::string(format!("{prefix}Z"))])?;
    for _ in 0..signals {
        let signal = Message::Signal(Signal {
            sender: None,
            destination: None,
            path: "/storm".into(),
            interface: "org.example.Storm".into(),
            member: "Storm".into(),
            signature: signature.clone(),
            body: body.clone(),
            matched: Vec::new(),
        });
        send(&sender, &signal, &[]).await?;
    }
    // A Ping answered after the storm: the broker has routed all of it.
    ask(&sender, 1, BrokerRequest::Ping { payload: vec![] })
        .await?
        .map_err(|(_, m)| m)?;
    let delivered: usize = open.iter().map(drain_count).sum();
    println!("{}", json!({"storm_over": signals, "delivered": delivered}));
    Ok(())
}

fn drain_count(bus: &SeqPacket) -> usize {
    std::iter::from_fn(|| next_now(bus)).count()
}

/// Sends `count` unicast signals of 60 000 bytes to `name`.
async fn unicast_flood(socket: &Path, name: String, count: usize) -> AnyResult<()> {
    let (bus, _) = connect(socket).await?;
    let bytes = Value::Array {
        element: "y".into(),
        items: vec![Value::Byte(0x42); 60_000],
    };
    let (signature, body) = marshal(&[bytes])?;
    for _ in 0..count {
        let signal = Message::Signal(Signal {
            sender: None,
            destination: Some(Destination::Name(name.clone())),
            path: "/flood".into(),
            interface: "org.example.Flood".into(),
            member: "Flood".into(),
            signature: signature.clone(),
            body: body.clone(),
            matched: Vec::new(),
        });
        send(&bus, &signal, &[]).await?;
    }
    // The notices of refused signals come before the Pong.
    request(&bus, 1, BrokerRequest::Ping { payload: vec![] }).await?;
    let mut refused = 0;
    loop {
        match next(&bus).await? {
            Some(Message::Reply(_)) | None => break,
            Some(Message::Notice(n)) if n.code == ErrorCode::LimitsExceeded => refused += 1,
            Some(_) => {}
        }
    }
    // Then try to take the name.
    let flags = NameFlags {
        replace_existing: true,
        ..NameFlags::default()
    };
    let answer = ask(&bus, 2, BrokerRequest::RequestName { name, flags }).await?;
    let took = matches!(
        answer,
        Ok(BrokerReply::NameRequested(
            pidbus_protocol::RequestNameReply::PrimaryOwner
        ))
    );
    println!(
        "{}",
        json!({"sent": count, "refused_notices": refused, "took_name": took})
    );
    Ok(())
}

/// A victim connection owns a name (do-not-queue, allow-replacement); a
/// second one takes it over and gives it back, `rounds` times. Then the
/// victim asks for a fresh name.
async fn takeover_loop(socket: &Path, rounds: usize) -> AnyResult<()> {
    let (victim, _) = connect(socket).await?;
    let (taker, _) = connect(socket).await?;
    let owned = NameFlags {
        allow_replacement: true,
        do_not_queue: true,
        ..NameFlags::default()
    };
    let take = NameFlags {
        replace_existing: true,
        do_not_queue: true,
        ..NameFlags::default()
    };
    let name = "org.example.Contested".to_owned();
    for round in 0..rounds as u64 {
        let body = BrokerRequest::RequestName {
            name: name.clone(),
            flags: owned,
        };
        ask(&victim, round, body).await?.map_err(|(_, m)| m)?;
        let body = BrokerRequest::RequestName {
            name: name.clone(),
            flags: take,
        };
        ask(&taker, round, body).await?.map_err(|(_, m)| m)?;
        let body = BrokerRequest::ReleaseName { name: name.clone() };
        ask(&taker, round, body).await?.map_err(|(_, m)| m)?;
    }
    let body = BrokerRequest::RequestName {
        name: "org.example.Fresh".into(),
        flags: NameFlags::default(),
    };
    let fresh = match ask(&victim, 0, body).await? {
        Ok(reply) => format!("{reply:?}"),
        Err((_, message)) => message,
    };
    println!("{}", json!({"rounds": rounds, "fresh_name": fresh}));
    Ok(())
}

/// Owns `count` names of 250 bytes each, then holds them.
async fn many_names(socket: &Path, count: usize) -> AnyResult<()> {
    let (bus, _) = connect(socket).await?;
    for i in 0..count {
        let name = format!("org.example.{}{i:06}", "n".repeat(230));
        let body = BrokerRequest::RequestName {
            name,
            flags: NameFlags::default(),
        };
        ask(&bus, i as u64, body).await?.map_err(|(_, m)| m)?;
    }
    hold_then_tally(json!({"names": count}), &[bus]).await
}

/// Holds `count` connections.
async fn many_peers(socket: &Path, count: usize) -> AnyResult<()> {
    let mut open = Vec::new();
    for _ in 0..count {
        open.push(connect(socket).await?.0);
    }
    hold_then_tally(json!({"peers": open.len()}), &open).await
}

/// On the D-Bus socket: authenticates, says Hello, then sends `count`
/// signals of almost 1 MiB each (the most a message may be) to nobody,
/// never reading. Prints `{"sent":count}` and holds the connection until
/// stdin closes.
fn dbus_big_signals(socket: &Path, count: usize) -> AnyResult<()> {
    use pidbus_protocol::dbus::header::{self, Header, MessageType};
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
