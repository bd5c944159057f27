//! Who gets in: dead processes are refused, versions must match.

use std::os::fd::AsFd;
use std::process::Command;

use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{ErrorCode, Hello, Message, codec, limits};
use pidbus_tests::{Broker, binary, eventually, pidbusctl};
use rustix::process::Signal;

/// Reads `/proc/PID/stat`'s state letter.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Connects a peer while the broker is stopped (SIGSTOP), lets the peer exit,
/// then resumes the broker, so the broker accepts a connection whose process
/// is gone. `reap`: whether the peer is reaped (stale pidfd, `Pid: -1`) or
/// left a zombie before the broker looks.
fn peer_gone_before_accept_is_refused(reap: bool) {
    let broker = Broker::start();
    let baseline_fds = broker.fd_count();
    let refusals_before = broker.log_count("refused connection");
    broker.signal(Signal::STOP);
    let mut peer = Command::new(binary("pidbus-test-peer"))
        .arg("hello-and-exit")
        .arg(broker.socket())
        .spawn()
        .unwrap();
    let peer_pid = peer.id();
    if reap {
        assert!(peer.wait().unwrap().success());
    } else {
        eventually("the peer is a zombie", || {
            process_state(peer_pid) == Some('Z')
        });
    }
    broker.signal(Signal::CONT);
    let line = broker.wait_for_log_all(&["refused connection", &format!("pid {peer_pid} ")]);
    assert!(line.contains("already exited"), "{line}");
    assert_eq!(broker.log_count("refused connection"), refusals_before + 1);
    // Nothing is left behind: no peer entry, no descriptor.
    broker.wait_for_fd_count(baseline_fds);
    let (code, peers, _) = pidbusctl(broker.socket(), &["--json", "peers"]);
    assert_eq!(code, 0);
    let peers: Vec<serde_json::Value> = serde_json::from_str(&peers).unwrap();
    assert!(
        peers.iter().all(|p| p["pid"] != peer_pid),
        "dead peer listed: {peers:?}"
    );
    assert_eq!(peers.len(), 1, "only pidbusctl itself is connected");
    // Reaps the zombie (a no-op for the already reaped peer).
    peer.wait().unwrap();
}

#[test]
fn a_peer_reaped_before_accept_is_refused_and_leaves_nothing_behind() {
    peer_gone_before_accept_is_refused(true);
}

#[test]
fn a_zombie_peer_is_refused_and_leaves_nothing_behind() {
    peer_gone_before_accept_is_refused(false);
}

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
        body: pidbus_protocol::BrokerRequest::ListPeers,
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
