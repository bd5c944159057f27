//! Who gets in on the native socket: the first message must be a Hello,
//! a message of another protocol is refused with a clear reason, silent
//! connections are closed. (Processes dead before accept: `security.rs`.)

use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::limits;
use pidbus_protocol::transport::SeqPacket;
use pidbus_tests::Broker;
use pidbus_tests::raw::{BUS1, RawPeer, driver_call, split_record};

/// What the broker sent `conn` before closing it: its last message must
/// be the `Disconnected` signal, whose reason is returned.
async fn reason_for_closing(conn: &SeqPacket) -> String {
    let mut last = None;
    while let Some(received) = conn.recv(limits::DEFAULT_MAX_RECORD_SIZE).await.unwrap() {
        last = split_record(&received.data, received.fds).unwrap().pop();
    }
    let last = last.expect("the broker says why before it closes the connection");
    assert!(last.is_signal(BUS1, "Disconnected"), "{last:?}");
    last.text().to_owned()
}

#[tokio::test]
async fn a_request_before_hello_is_refused() {
    let broker = Broker::start();
    let conn = SeqPacket::connect(broker.socket()).unwrap();
    let request = driver_call(1, BUS1, "ListPeers", &[Value::string("")]);
    conn.send(&request, &[]).await.unwrap();
    let reason = reason_for_closing(&conn).await;
    assert!(
        reason.contains("the first message must be a Hello"),
        "{reason}"
    );
    broker.wait_for_log("the first message must be a Hello");
}

#[tokio::test]
async fn a_client_of_another_protocol_gets_a_clear_error() {
    let broker = Broker::start();
    // A MessagePack map, as pidbus's first native protocol began: the
    // broker reads D-Bus messages only.
    let conn = SeqPacket::connect(broker.socket()).unwrap();
    conn.send(b"\x81\xa5Hello\x81\xa7version\x01", &[])
        .await
        .unwrap();
    let reason = reason_for_closing(&conn).await;
    assert!(reason.contains("invalid message"), "{reason}");
    // A D-Bus message of a protocol version this bus does not speak.
    let mut hello = pidbus_tests::hello_record();
    hello[3] = 2;
    let conn = SeqPacket::connect(broker.socket()).unwrap();
    conn.send(&hello, &[]).await.unwrap();
    let reason = reason_for_closing(&conn).await;
    assert!(reason.contains("version"), "{reason}");
    // Neither disturbed anyone.
    RawPeer::connect(broker.socket()).await.unwrap();
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_hello_timeout() {
    let broker = Broker::start_with(&["--hello-timeout", "1"]);
    let conn = SeqPacket::connect(broker.socket()).unwrap();
    // Wait for the broker to give up on us; it names the reason.
    let reason = reason_for_closing(&conn).await;
    assert!(reason.contains("no Hello within"), "{reason}");
}
