//! The SDK's opt-in reconnect across a real broker restart: names and
//! match rules come back, and the app is told; and a plain connection
//! that loses its broker says so.

use pidbus::{Connection, ConnectionEvent, Error, MatchRule, NameFlags, RequestNameReply};
use pidbus_tests::Broker;

const NAME: &str = "org.pidbus.Test.Phoenix";

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnecting_client_survives_a_broker_restart_with_its_names_and_rules() {
    let broker = Broker::start();
    let client = Connection::connect_reconnecting(broker.socket())
        .await
        .unwrap();
    let mut events = client.connection_events().unwrap();
    assert_eq!(
        client
            .request_name(NAME, NameFlags::default())
            .await
            .unwrap(),
        RequestNameReply::PrimaryOwner
    );
    let rule = MatchRule {
        interface: Some("org.pidbus.Test.Restart".into()),
        ..Default::default()
    };
    let mut signals = client.subscribe(rule).await.unwrap();

    let broker = tokio::task::spawn_blocking(move || broker.restart(&[]))
        .await
        .unwrap();

    match events.next().await {
        Some(ConnectionEvent::Lost { reason }) => assert!(!reason.is_empty()),
        other => panic!("expected Lost, got {other:?}"),
    }
    let Some(ConnectionEvent::Reconnected {
        unique_id,
        names,
        match_rules,
    }) = events.next().await
    else {
        panic!("expected Reconnected");
    };
    assert_eq!(
        names,
        vec![(NAME.to_owned(), RequestNameReply::PrimaryOwner)]
    );
    assert_eq!(match_rules, 1);
    assert_eq!(client.unique_id(), unique_id);

    // Others on the new broker see the name owned by the client, and its
    // old subscription gets their signals.
    let other = Connection::connect(broker.socket()).await.unwrap();
    assert_eq!(other.name_owner(NAME).await.unwrap(), unique_id);
    other
        .emit(
            "/org/pidbus/Test",
            "org.pidbus.Test.Restart",
            "Back",
            &"hello",
        )
        .await
        .unwrap();
    let signal = signals.next().await.expect("the subscription survived");
    assert_eq!(signal.member, "Back");
    assert_eq!(signal.sender, other.unique_id());
    // And requests work again on the client itself.
    client.ping(b"again", &[]).await.unwrap();
}

#[tokio::test]
async fn a_plain_connection_has_no_connection_events_and_ends_with_the_broker() {
    let broker = Broker::start();
    let client = Connection::connect(broker.socket()).await.unwrap();
    let error = client.connection_events().unwrap_err();
    assert!(
        error.to_string().contains("connect_reconnecting"),
        "{error}"
    );
    drop(broker);
    // Until the reader has seen the end, a send may fail on its own
    // (EPIPE); after, every request fails as disconnected, for good.
    let ended = async {
        loop {
            match client.ping(b"x", &[]).await {
                Err(pidbus::Error::Disconnected { .. }) => break,
                Ok(_) => panic!("answered by a stopped broker"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), ended)
        .await
        .expect("a plain connection ends with its broker");
}

/// A plain connection (no reconnect) whose broker stops: the call in
/// flight and every later call fail with `Disconnected`, its streams end,
/// and `closed` resolves, on both sockets.
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_connection_whose_broker_stops_fails_its_calls_ends_its_streams_and_says_so() {
    for dbus_socket in [false, true] {
        let broker = Broker::start_dbus(&[]);
        let path = if dbus_socket {
            broker.dbus_socket()
        } else {
            broker.socket().to_path_buf()
        };
        let client = Connection::connect(&path).await.unwrap();
        let rule = MatchRule {
            interface: Some("org.pidbus.Test.Gone".into()),
            ..Default::default()
        };
        let mut signals = client.subscribe(rule).await.unwrap();
        // A callee that never answers, so a call is in flight.
        let callee = pidbus_tests::raw::RawPeer::connect(broker.socket())
            .await
            .unwrap();
        let pending = tokio::spawn({
            let client = client.clone();
            let callee = callee.unique_name().to_owned();
            async move {
                client
                    .call::<_, ()>(&callee, "/org/pidbus/Test", "org.pidbus.Test", "Hang", &())
                    .await
            }
        });
        callee
            .next_such(|m| m.header.member.as_deref() == Some("Hang"))
            .await
            .unwrap();

        let status = tokio::task::spawn_blocking(move || broker.stop())
            .await
            .unwrap();
        assert!(status.success(), "pidbusd stopped cleanly: {status}");

        let which = if dbus_socket {
            "D-Bus socket"
        } else {
            "native socket"
        };
        match pending.await.unwrap() {
            Err(Error::Disconnected { .. }) => {}
            other => panic!("{which}: the call in flight ended with {other:?}"),
        }
        assert!(signals.next().await.is_none(), "{which}: the stream ends");
        match client.closed().await {
            Error::Disconnected {
                reason: Some(reason),
            } => assert!(!reason.is_empty()),
            other => panic!("{which}: closed() gave {other:?}"),
        }
        let later = client.name_owner("org.pidbus.Test.Any").await;
        assert!(
            matches!(later, Err(Error::Disconnected { .. })),
            "{which}: a later call gives {later:?}"
        );
    }
}
