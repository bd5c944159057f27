//! Quotas against the real broker: a peer that never reads, a uid at its
//! connection quota, a broker near its descriptor limit. Each time the
//! offender (or the newcomer) is refused, and everyone else is served.

use std::sync::Arc;
use std::time::Duration;

use pidbus::{Connection, MethodCall, Response};
use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{NameFlags, limits};
use pidbus_tests::raw::{DRIVER, RawPeer};
use pidbus_tests::{
    AS_NOBODY, Broker, HeldPeer, PublicDir, can_run_privileged, pidbusctl, pidbusctl_as_nobody,
    raw_handshaken,
};

const SINK: &str = "org.pidbus.Test.Sink";
const ECHO: &str = "org.pidbus.Test.Echo";

/// Writes a broker config file into `dir` and returns its path.
fn config(dir: &PublicDir, text: &str) -> String {
    let path = dir.path().join("pidbusd.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A raw connection that owns `name` and then never reads again.
async fn never_reading_owner(broker: &Broker, name: &str) -> RawPeer {
    let conn = raw_handshaken(broker.socket()).await;
    let args = [Value::string(name), Value::UInt32(0)];
    let answer = conn
        .call_driver(DRIVER, "RequestName", &args)
        .await
        .unwrap();
    assert_eq!(answer.args, [Value::UInt32(1)], "{answer:?}");
    conn
}

/// A service answering `Echo(s)` with `s`.
async fn echo_service(broker: &Broker) -> Connection {
    let service = Connection::connect(broker.socket()).await.unwrap();
    service
        .serve("/org/pidbus/Echo", "org.pidbus.Echo", |call| async move {
            Response::new(&call.args::<String>()?)
        })
        .unwrap();
    service
        .request_name(ECHO, NameFlags::default())
        .await
        .unwrap();
    service
}

async fn echo(client: &Connection, text: &str) -> String {
    client
        .call(ECHO, "/org/pidbus/Echo", "org.pidbus.Echo", "Echo", text)
        .await
        .unwrap()
}

/// Per-uid byte quota of the flood test, and the slack allowed above it.
const UID_QUEUED_BYTES: usize = 4 << 20;
const RSS_SLACK: usize = 24 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_at_a_peer_that_never_reads_is_refused_to_the_sender_and_memory_stays_bounded() {
    let dir = PublicDir::new("quota-flood");
    let config = config(
        &dir,
        &format!("[limits.uid]\nqueued_bytes = {UID_QUEUED_BYTES}\n"),
    );
    let broker = Broker::start_with(&["--config", &config]);
    let _echo_service = echo_service(&broker).await;
    let bystander = Connection::connect(broker.socket()).await.unwrap();
    assert_eq!(echo(&bystander, "before").await, "before");
    let sink = never_reading_owner(&broker, SINK).await;
    let rss_before = broker.rss_bytes();

    // 64 MiB of calls, 16 times the quota; none is ever read.
    let flooder = Arc::new(Connection::connect(broker.socket()).await.unwrap());
    // One byte array (`ay`) of 16 KiB: its length, then its bytes.
    let mut body = (16u32 * 1024).to_le_bytes().to_vec();
    body.extend_from_slice(&[0x5a; 16 * 1024]);
    let total = 4096;
    let (results, mut refused) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..total {
        let call = MethodCall::new(SINK, "/org/pidbus/Sink", "org.pidbus.Sink", "Take")
            .unwrap()
            .body("ay", body.clone())
            .unwrap()
            .timeout(Duration::from_secs(3600));
        let flooder = Arc::clone(&flooder);
        let results = results.clone();
        tokio::spawn(async move {
            let _ = results.send(flooder.call_method(call).await);
        });
    }
    drop(results);
    // Calls that fit wait for an answer that never comes; the others fail
    // at once. Once 3/4 have failed, the queue is certainly full.
    let mut quota_errors = 0;
    while quota_errors < total * 3 / 4 {
        match refused.recv().await.expect("a result") {
            Err(pidbus::Error::LimitsExceeded { message }) => {
                assert!(message.contains("per-user quota"), "{message}");
                quota_errors += 1;
            }
            other => panic!("a call to a peer that never reads: {other:?}"),
        }
    }
    let grown = broker.rss_bytes().saturating_sub(rss_before);
    eprintln!("broker RSS grew {grown} bytes under a 64 MiB flood");
    assert!(
        grown < UID_QUEUED_BYTES + RSS_SLACK,
        "the broker grew {grown} bytes for a peer that never reads"
    );
    // Another peer's calls are served meanwhile, and the sink is still on
    // the bus (refusing its callers is all that happened to it).
    assert_eq!(echo(&bystander, "during").await, "during");
    let peers = bystander.peers().await.unwrap();
    assert_eq!(
        peers.len(),
        4,
        "echo, bystander, sink and flooder: {peers:?}"
    );
    drop(sink);
    // Its queued calls now fail for the flooder (the callee left).
    while let Some(result) = refused.recv().await {
        assert!(result.is_err());
    }
    assert_eq!(echo(&bystander, "after").await, "after");
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[test]
fn a_uid_at_its_connection_quota_is_refused_and_another_uid_connects() {
    if !can_run_privileged("a_uid_at_its_connection_quota_is_refused_and_another_uid_connects") {
        return;
    }
    let dir = PublicDir::new("quota-conns");
    let config = config(&dir, "[limits.uid]\nconnections = 3\n");
    let broker = Broker::start_with(&["--config", &config]);
    let held: Vec<HeldPeer> = (0..3)
        .map(|_| {
            HeldPeer::start(
                &AS_NOBODY,
                &pidbus_tests::binary("pidbus-test-peer"),
                broker.socket(),
            )
        })
        .collect();
    let (code, _, stderr) = pidbusctl_as_nobody(&broker, &["whoami"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("uid 65534 already has 3 connections"),
        "{stderr}"
    );
    broker.wait_for_log_all(&["refused connection: per-user quota", "uid=65534"]);
    // Root is another uid: served.
    let (code, stdout, stderr) = pidbusctl(broker.socket(), &["whoami"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("uid"), "{stdout}");
    // nobody's three connections are untouched, and once one leaves,
    // nobody may connect again.
    let (_, peers, _) = pidbusctl(broker.socket(), &["--json", "peers"]);
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    let nobodys = peers
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["uid"] == 65534)
        .count();
    assert_eq!(nobodys, 3, "{peers}");
    let mut held = held.into_iter();
    held.next().unwrap().kill();
    pidbus_tests::eventually("a connection of nobody to leave", || {
        pidbusctl_as_nobody(&broker, &["whoami"]).0 == 0
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn near_its_descriptor_limit_the_broker_refuses_newcomers_and_keeps_serving_peers() {
    // A hard limit of 200: the broker keeps 32 in reserve, so it admits
    // well under 100 connections.
    let broker = Broker::start_under(&["prlimit", "--nofile=200:200", "--"], &[]);
    let _echo_service = echo_service(&broker).await;
    let first = Connection::connect(broker.socket()).await.unwrap();
    let mut admitted = Vec::new();
    let refusal = loop {
        match Connection::connect(broker.socket()).await {
            Ok(conn) => admitted.push(conn),
            Err(e) => break e,
        }
        assert!(
            admitted.len() < 200,
            "the broker never refused a connection"
        );
    };
    assert!(
        refusal.to_string().contains("near its open-file limit"),
        "{refusal}"
    );
    broker.wait_for_log("refusing connections: the broker is near its open-file limit");
    // Everyone admitted is still served, fds included.
    assert_eq!(echo(&first, "still served").await, "still served");
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let (_, fds) = admitted
        .last()
        .unwrap()
        .ping(b"fd", &[std::os::fd::AsFd::as_fd(&r)])
        .await
        .unwrap();
    assert_eq!(fds.len(), 1, "a passed descriptor still makes it");
    // Room again once peers leave.
    admitted.truncate(admitted.len() / 2);
    tokio::task::spawn_blocking(move || {
        pidbus_tests::eventually("a newcomer to be admitted again", || {
            pidbusctl(broker.socket(), &["whoami"]).0 == 0
        });
    })
    .await
    .unwrap();
}

#[test]
fn thousands_of_connections_opened_closed_and_killed_leave_nothing_behind() {
    let dir = PublicDir::new("churn");
    let config = config(&dir, "[limits.uid]\nconnections = 4000\n");
    let broker = Broker::start_with(&["--config", &config]);
    let peer_binary = pidbus_tests::binary("pidbus-test-peer");
    let mut service = HeldPeer::start_mode(
        &[],
        &peer_binary,
        &[
            "serve-silently".as_ref(),
            broker.socket().as_os_str(),
            SINK.as_ref(),
        ],
    );
    let peers_of = |broker: &Broker| {
        let (code, out, err) = pidbusctl(broker.socket(), &["--json", "peers"]);
        assert_eq!(code, 0, "{err}");
        // Minus pidbusctl itself.
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
            - 1
    };
    let baseline_peers = peers_of(&broker);
    let baseline_fds = broker.fd_count();

    // Four processes keep 500 connections each open at once, 50 rounds.
    let churners: Vec<std::process::Child> = (0..4)
        .map(|_| {
            std::process::Command::new(&peer_binary)
                .args([
                    "churn".as_ref(),
                    broker.socket().as_os_str(),
                    "500".as_ref(),
                    "50".as_ref(),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Meanwhile callers are killed with SIGKILL while their call waits.
    for _ in 0..20 {
        let caller = HeldPeer::start_mode(
            &[],
            &peer_binary,
            &[
                "call-and-wait".as_ref(),
                broker.socket().as_os_str(),
                SINK.as_ref(),
            ],
        );
        assert_eq!(
            service.next_line()["call"],
            "Hang",
            "the call reached the service"
        );
        caller.kill();
    }
    for churner in churners {
        let out = churner.wait_with_output().unwrap();
        assert!(out.status.success(), "a churner failed: {}", out.status);
        assert!(String::from_utf8_lossy(&out.stdout).contains(r#""rounds":50"#));
    }
    pidbus_tests::eventually("the peer count to return to its baseline", || {
        peers_of(&broker) == baseline_peers
    });
    broker.wait_for_fd_count(baseline_fds);
    // And it still serves.
    let (code, _, stderr) = pidbusctl(broker.socket(), &["whoami"]);
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn a_uid_at_its_handshake_quota_is_refused_until_one_finishes_its_hello() {
    let dir = PublicDir::new("quota-handshakes");
    let config = config(&dir, "[limits.uid]\nhandshakes = 2\n");
    let broker = Broker::start_with(&["--config", &config]);
    // Two connections that have not said Hello yet: the quota is full.
    let silent: Vec<SeqPacket> = (0..2)
        .map(|_| SeqPacket::connect(broker.socket()).unwrap())
        .collect();
    let refused = loop {
        // The broker may not have counted the silent ones yet; once it
        // has, a third is refused.
        match Connection::connect(broker.socket()).await {
            Ok(conn) => drop(conn),
            Err(e) => break e,
        }
    };
    assert!(
        refused
            .to_string()
            .contains("connections still in their handshake"),
        "{refused}"
    );
    // One of them finishes its Hello: there is room again.
    silent[0]
        .send(&pidbus_tests::hello_record(), &[])
        .await
        .unwrap();
    silent[0]
        .recv(limits::DEFAULT_MAX_RECORD_SIZE)
        .await
        .unwrap()
        .unwrap();
    let newcomer = loop {
        if let Ok(conn) = Connection::connect(broker.socket()).await {
            break conn;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(newcomer.ping(b"in", &[]).await.unwrap().0, b"in");
}
