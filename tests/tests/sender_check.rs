//! A connection used by a process other than the one that opened it: the
//! message is not routed, the sender is told, the broker logs both sides.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{BrokerRequest, Message, Request, codec, limits};
use pidbus_tests::{Broker, binary, raw_handshaken};
use serde_json::Value;

const LIMIT: usize = limits::DEFAULT_MAX_RECORD_SIZE;

/// Passes `bus` to a new `pidbus-test-peer use-passed-socket` over
/// SCM_RIGHTS; returns the child's pid and its JSON report.
async fn hand_over(bus: &SeqPacket) -> (u32, Value) {
    let (ours, theirs) = SeqPacket::pair().unwrap();
    let child = Command::new(binary("pidbus-test-peer"))
        .arg("use-passed-socket")
        .stdin(Stdio::from(theirs.as_fd().try_clone_to_owned().unwrap()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    ours.send(b"here", &[bus.as_fd()]).await.unwrap();
    let pid = child.id();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    (pid, serde_json::from_slice(&out.stdout).unwrap())
}

async fn list_peers_from_here(bus: &SeqPacket) -> Option<Message> {
    let request = Message::Request(Request {
        serial: 1,
        body: BrokerRequest::ListPeers,
    });
    bus.send(&codec::encode(&request, LIMIT).unwrap(), &[])
        .await
        .ok()?;
    let received = bus.recv(LIMIT).await.ok()??;
    codec::decode(&received.data, LIMIT).ok()
}

#[tokio::test]
async fn a_socket_handed_over_with_scm_rights_cannot_speak_for_its_opener() {
    let broker = Broker::start();
    let bus = raw_handshaken(broker.socket()).await;
    let (child_pid, report) = hand_over(&bus).await;
    assert_eq!(report["outcome"], "error", "{report}");
    assert_eq!(report["code"], "SenderMismatch");
    assert_eq!(report["reply_to"], 7, "the refused request is named");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {child_pid}")),
        "{report}"
    );
    // Both identities are logged: the connection's (us) and the real sender.
    broker.wait_for_log_all(&[
        "not routed",
        &format!("pid={} ", std::process::id()),
        &format!("sender=pid {child_pid} "),
    ]);
    // Default mode: the opener keeps its connection and is served.
    assert!(matches!(
        list_peers_from_here(&bus).await,
        Some(Message::Reply(_))
    ));
}

#[tokio::test]
async fn strict_mode_disconnects_a_handed_over_connection() {
    let broker = Broker::start_with(&["--sender-check", "strict"]);
    let bus = raw_handshaken(broker.socket()).await;
    let (_, report) = hand_over(&bus).await;
    assert_eq!(report["outcome"], "error", "{report}");
    assert_eq!(report["code"], "SenderMismatch");
    assert_eq!(
        report["reply_to"],
        Value::Null,
        "a disconnect notice, not an answer"
    );
    // The connection is gone for its opener too.
    let after = bus.recv(LIMIT).await.unwrap();
    assert!(after.is_none(), "expected EOF, got {after:?}");
    broker.wait_for_log_all(&["disconnecting peer", "sender mismatch"]);
}

#[test]
fn a_socket_inherited_by_a_child_that_outlives_its_parent_is_refused() {
    let broker = Broker::start();
    let out = Command::new(binary("pidbus-test-peer"))
        .arg("inherit-and-orphan")
        .arg(broker.socket())
        .output()
        .unwrap();
    // The parent exits at once; its orphaned child holds our stdout pipe
    // until it has printed its report, so this read sees it.
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)));
    // Two correct outcomes, depending on whether the broker saw the
    // parent's exit before the child's request: the request is refused as
    // sent by another process, or the connection was already closed
    // because its process exited. Never served.
    let refused = report["outcome"] == "error" && report["code"] == "SenderMismatch";
    let closed_on_exit = report["outcome"] == "closed"
        || (report["outcome"] == "error" && report["code"] == "ProcessExited");
    assert!(refused || closed_on_exit, "{report}");
    broker.wait_for_log("peer process exited; connection closed");
}

#[tokio::test]
async fn the_opener_itself_always_passes_the_check() {
    let broker = Broker::start_with(&["--sender-check", "strict"]);
    let bus = pidbus::Connection::connect(broker.socket()).await.unwrap();
    for _ in 0..100 {
        bus.peers().await.unwrap();
    }
    assert_eq!(broker.log_count("not routed"), 0);
}
