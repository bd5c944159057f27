//! Who gets in: versions must match, requests wait for Hello, silent
//! connections are closed. (Processes dead before accept: `security.rs`.)

use std::os::fd::AsFd;

use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{ErrorCode, Hello, Message, codec, limits};
use pidbus_tests::Broker;

#[tokio::test]
async fn a_version_mismatch_gets_a_clear_error() {
    let broker = Broker::start();
    let conn = SeqPacket::connect(broker.socket()).unwrap();
    let hello = codec::encode(
        &Message::Hello(Hello { version: 999 }),
        limits::DEFAULT_MAX_RECORD_SIZE,
    )
    .unwrap();
    conn.send(&hello, &[]).await.unwrap();
    let answer = conn
        .recv(limits::DEFAULT_MAX_RECORD_SIZE)
        .await
        .unwrap()
        .unwrap();
    let Message::Error(e) = codec::decode(&answer.data, limits::DEFAULT_MAX_RECORD_SIZE).unwrap()
    else {
        panic!("expected an error");
    };
    assert_eq!(e.code, ErrorCode::VersionMismatch);
    assert!(
        e.message.contains("999") && e.message.contains("version 1"),
        "{}",
        e.message
    );
    assert!(
        conn.recv(1024).await.unwrap().is_none(),
        "connection closed after the error"
    );
    broker.wait_for_log("client speaks protocol version 999");
}

#[tokio::test]
async fn a_request_before_hello_is_refused() {
    let broker = Broker::start();
    let conn = SeqPacket::connect(broker.socket()).unwrap();
    let request = Message::Request(pidbus_protocol::Request {
        serial: 1,
        body: pidbus_protocol::BrokerRequest::ListPeers { after: None },
    });
    conn.send(&codec::encode(&request, 1024).unwrap(), &[])
        .await
        .unwrap();
    let answer = conn.recv(4096).await.unwrap().unwrap();
    let Message::Error(e) = codec::decode(&answer.data, 4096).unwrap() else {
        panic!("expected an error");
    };
    assert_eq!(e.code, ErrorCode::ProtocolViolation);
    assert!(e.message.contains("expected Hello"), "{}", e.message);
    assert!(conn.recv(1024).await.unwrap().is_none());
    let _ = conn.as_fd();
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_hello_timeout() {
    let broker = Broker::start_with(&["--hello-timeout", "1"]);
    let conn = SeqPacket::connect(broker.socket()).unwrap();
    // Wait for the broker to give up on us; the error names the reason.
    let answer = conn.recv(4096).await.unwrap().unwrap();
    let Message::Error(e) = codec::decode(&answer.data, 4096).unwrap() else {
        panic!("expected an error");
    };
    assert!(e.message.contains("no Hello within"), "{}", e.message);
    assert!(conn.recv(1024).await.unwrap().is_none());
}
