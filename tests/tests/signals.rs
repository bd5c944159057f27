//! Signals against the real broker: match rules, unicast, removal.

use std::time::Duration;

use pidbus::{Connection, MatchRule, NameFlags, Signal, SignalStream};
use pidbus_tests::{Broker, PATIENCE};

const IFACE: &str = "org.pidbus.Test";

async fn next(stream: &mut SignalStream) -> Signal {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("signal expected")
        .expect("connection closed")
}

/// What is already buffered in `stream`, without waiting.
async fn buffered(stream: &mut SignalStream) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    // Zero timeout: the channel is polled once, so only what has already
    // arrived is taken.
    while let Ok(Some(s)) = tokio::time::timeout(Duration::ZERO, stream.next()).await {
        seen.push((s.member.clone(), s.path.clone()));
    }
    seen
}

fn rule(f: impl FnOnce(&mut MatchRule)) -> MatchRule {
    let mut rule = MatchRule::all();
    f(&mut rule);
    rule
}

#[tokio::test]
async fn each_rule_gets_exactly_the_signals_it_matches() {
    let broker = Broker::start();
    let emitter = Connection::connect(broker.socket()).await.unwrap();
    emitter
        .request_name("org.pidbus.Emitter", NameFlags::default())
        .await
        .unwrap();
    let other = Connection::connect(broker.socket()).await.unwrap();
    let sub = Connection::connect(broker.socket()).await.unwrap();

    let mut by_member = sub
        .subscribe(rule(|r| r.member = Some("Changed".into())))
        .await
        .unwrap();
    let mut by_namespace = sub
        .subscribe(rule(|r| r.path_namespace = Some("/org/a".into())))
        .await
        .unwrap();
    let mut by_path = sub
        .subscribe(rule(|r| r.path = Some("/org/a".into())))
        .await
        .unwrap();
    let mut by_arg0 = sub
        .subscribe(rule(|r| r.arg0 = Some("wanted".into())))
        .await
        .unwrap();
    let mut by_name = sub
        .subscribe(rule(|r| r.sender = Some("org.pidbus.Emitter".into())))
        .await
        .unwrap();
    let mut by_iface = sub
        .subscribe(rule(|r| r.interface = Some("org.pidbus.Other".into())))
        .await
        .unwrap();
    let mut end = sub
        .subscribe(rule(|r| r.member = Some("End".into())))
        .await
        .unwrap();

    emitter
        .emit("/org/a", IFACE, "Changed", &("x",))
        .await
        .unwrap();
    emitter
        .emit("/org/a/b", IFACE, "Moved", &("wanted", 1))
        .await
        .unwrap();
    emitter
        .emit("/org/ab", IFACE, "Moved", &"wanted")
        .await
        .unwrap();
    other
        .emit("/org/z", "org.pidbus.Other", "Changed", &(1, "wanted"))
        .await
        .unwrap();
    // Signals from one emitter arrive in order: once `End` is here, every
    // earlier signal of the emitter has been dispatched.
    other.emit("/", IFACE, "End", &()).await.unwrap();
    emitter.emit("/", IFACE, "End", &()).await.unwrap();
    next(&mut end).await;
    next(&mut end).await;

    let pair = |m: &str, p: &str| (m.to_owned(), p.to_owned());
    // Two emitters: no order between them.
    let mut members = buffered(&mut by_member).await;
    members.sort();
    assert_eq!(
        members,
        vec![pair("Changed", "/org/a"), pair("Changed", "/org/z")]
    );
    assert_eq!(
        buffered(&mut by_namespace).await,
        vec![pair("Changed", "/org/a"), pair("Moved", "/org/a/b")]
    );
    assert_eq!(
        buffered(&mut by_path).await,
        vec![pair("Changed", "/org/a")]
    );
    assert_eq!(
        buffered(&mut by_arg0).await,
        vec![pair("Moved", "/org/a/b"), pair("Moved", "/org/ab")]
    );
    assert_eq!(
        buffered(&mut by_name).await,
        vec![
            pair("Changed", "/org/a"),
            pair("Moved", "/org/a/b"),
            pair("Moved", "/org/ab"),
            pair("End", "/")
        ]
    );
    assert_eq!(
        buffered(&mut by_iface).await,
        vec![pair("Changed", "/org/z")]
    );
}

#[tokio::test]
async fn signals_carry_the_verified_sender_and_typed_arguments() {
    let broker = Broker::start();
    let emitter = Connection::connect(broker.socket()).await.unwrap();
    let sub = Connection::connect(broker.socket()).await.unwrap();
    let mut all = sub.subscribe(MatchRule::all()).await.unwrap();
    emitter
        .emit("/t", IFACE, "Reading", &("kitchen", 21.5))
        .await
        .unwrap();
    let signal = next(&mut all).await;
    assert_eq!(signal.sender, emitter.unique_id());
    assert_eq!(
        signal.args::<(String, f64)>().unwrap(),
        ("kitchen".to_owned(), 21.5)
    );
}

#[tokio::test]
async fn a_unicast_signal_reaches_only_its_destination() {
    let broker = Broker::start();
    let emitter = Connection::connect(broker.socket()).await.unwrap();
    let target = Connection::connect(broker.socket()).await.unwrap();
    let bystander = Connection::connect(broker.socket()).await.unwrap();
    let mut at_target = target.subscribe(MatchRule::all()).await.unwrap();
    let mut at_bystander = bystander.subscribe(MatchRule::all()).await.unwrap();
    let dest = target.unique_id().to_string();
    emitter
        .emit_to(&dest, "/t", IFACE, "Private", &())
        .await
        .unwrap();
    emitter.emit("/t", IFACE, "Public", &()).await.unwrap();
    assert_eq!(next(&mut at_target).await.member, "Private");
    assert_eq!(next(&mut at_target).await.member, "Public");
    // The bystander's first signal is the public one: the private one was
    // never sent to it.
    assert_eq!(next(&mut at_bystander).await.member, "Public");
}

#[tokio::test]
async fn a_removed_rule_stops_matching_at_the_broker() {
    use pidbus_protocol::dbus::value::Value;
    use pidbus_tests::raw::DRIVER;
    let broker = Broker::start();
    let emitter = Connection::connect(broker.socket()).await.unwrap();
    let raw = pidbus_tests::raw_handshaken(broker.socket()).await;
    let gone = format!("type='signal',interface='{IFACE}',member='Gone'");
    let kept = format!("type='signal',interface='{IFACE}',member='Kept'");
    for (member, rule) in [
        ("AddMatch", &gone),
        ("AddMatch", &kept),
        ("RemoveMatch", &gone),
    ] {
        let answer = raw
            .call_driver(DRIVER, member, &[Value::string(rule.as_str())])
            .await
            .unwrap();
        assert_eq!(answer.error_name(), None, "{member} {rule}: {answer:?}");
    }
    emitter.emit("/t", IFACE, "Gone", &()).await.unwrap();
    emitter.emit("/t", IFACE, "Kept", &()).await.unwrap();
    let first = tokio::time::timeout(
        PATIENCE,
        raw.next_such(|m| m.header.interface.as_deref() == Some(IFACE)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        first.header.member.as_deref(),
        Some("Kept"),
        "the removed rule matched nothing"
    );
}

#[tokio::test]
async fn a_stream_that_is_not_read_counts_what_it_drops() {
    let broker = Broker::start();
    let emitter = Connection::connect(broker.socket()).await.unwrap();
    let subscriber = Connection::connect(broker.socket()).await.unwrap();
    let mut flood = subscriber
        .subscribe(rule(|r| r.member = Some("Flood".into())))
        .await
        .unwrap();
    let mut done = subscriber
        .subscribe(rule(|r| r.member = Some("Done".into())))
        .await
        .unwrap();
    let sent = pidbus::STREAM_BUFFER + 100;
    for i in 0..sent {
        emitter
            .emit("/", IFACE, "Flood", &(i as u32,))
            .await
            .unwrap();
    }
    // From the same emitter, so it arrives after every Flood.
    emitter.emit("/", IFACE, "Done", &()).await.unwrap();
    next(&mut done).await;
    assert_eq!(flood.dropped(), 100, "the stream says what it lost");
    let (first,): (u32,) = next(&mut flood).await.args().unwrap();
    assert_eq!(first, 0, "the oldest signals are kept");
}

/// A burst queued for a peer that does not read goes out packed, several
/// whole messages to a record (the native socket's rule for what the
/// broker sends): each arrives whole, in order, and the records are fewer
/// than the messages.
#[tokio::test]
async fn a_burst_for_a_slow_reader_comes_packed_whole_and_in_order() {
    use pidbus_protocol::dbus::header::{self, Header, MessageType};
    use pidbus_protocol::dbus::value::{Value, marshal};
    use pidbus_protocol::limits::DEFAULT_MAX_RECORD_SIZE;
    use pidbus_tests::raw::{DRIVER, RawPeer, split_record};

    const BURST: u32 = 2_000;
    let broker = Broker::start();
    let sub = RawPeer::connect(broker.socket()).await.unwrap();
    let rule = format!("type='signal',interface='{IFACE}'");
    let added = sub
        .call_driver(DRIVER, "AddMatch", &[Value::string(rule)])
        .await
        .unwrap();
    assert_eq!(added.error_name(), None, "{added:?}");
    let emitter = RawPeer::connect(broker.socket()).await.unwrap();
    for n in 0..BURST {
        let (signature, body) = marshal(&[Value::UInt32(n)]).unwrap();
        let signal = Header {
            path: Some("/org/pidbus/Burst".into()),
            interface: Some(IFACE.into()),
            member: Some("Tick".into()),
            signature,
            ..Header::new(MessageType::Signal, emitter.next_serial())
        };
        emitter
            .send_raw(&header::encode(&signal, &body), &[])
            .await
            .unwrap();
    }
    // Answered after every signal before it was routed.
    let pong = emitter.call_driver(DRIVER, "GetId", &[]).await.unwrap();
    assert_eq!(pong.error_name(), None, "{pong:?}");

    let (mut records, mut ticks) = (0, 0u32);
    while ticks < BURST {
        let record = tokio::time::timeout(PATIENCE, sub.socket().recv(DEFAULT_MAX_RECORD_SIZE))
            .await
            .expect("the burst arrives")
            .unwrap()
            .expect("the connection stays open");
        records += 1;
        for message in split_record(&record.data, record.fds).unwrap() {
            if message.is_signal(IFACE, "Tick") {
                assert_eq!(message.args, [Value::UInt32(ticks)], "in order");
                ticks += 1;
            }
        }
    }
    assert!(
        records < BURST as usize / 2,
        "{records} records for {BURST} signals: the queued ones were not packed"
    );
}
