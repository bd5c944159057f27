//! Bad records from a raw socket get only their sender disconnected, with a
//! logged reason; the broker keeps serving everyone else.

use std::os::fd::AsFd;

use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{Message, codec, limits};
use pidbus_tests::{Broker, hello_record, raw_handshaken};

/// Sends `record` and checks the sender is told why and disconnected, the
/// broker logs the reason, and a bystander still gets answers.
async fn offender_is_disconnected(
    broker: &Broker,
    bystander: &pidbus::Connection,
    record: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
    logged_reason: &str,
) {
    let offender = raw_handshaken(broker.socket()).await;
    offender_on(offender, broker, bystander, record, fds, logged_reason).await;
}

/// [`offender_is_disconnected`] on a socket already set up as the case
/// needs (handshaken or not).
async fn offender_on(
    offender: SeqPacket,
    broker: &Broker,
    bystander: &pidbus::Connection,
    record: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
    logged_reason: &str,
) {
    let warnings_before = broker.log_count("disconnecting peer");
    offender.send(record, fds).await.unwrap();
    // The broker says why (best effort), then closes.
    let mut saw_notice = false;
    while let Some(received) = offender
        .recv(limits::DEFAULT_MAX_RECORD_SIZE)
        .await
        .unwrap()
    {
        if let Ok(Message::Error(e)) =
            codec::decode(&received.data, limits::DEFAULT_MAX_RECORD_SIZE)
        {
            assert!(
                e.message.contains(logged_reason),
                "notice {:?} lacks {logged_reason:?}",
                e.message
            );
            saw_notice = true;
        }
    }
    assert!(saw_notice, "no error notice before the disconnect");
    broker.wait_for_log_count("disconnecting peer", warnings_before + 1);
    let last = broker.last_log_line("disconnecting peer");
    assert!(
        last.contains(logged_reason),
        "logged {last:?}, expected {logged_reason:?}"
    );
    assert_eq!(
        broker.log_count("disconnecting peer"),
        warnings_before + 1,
        "only the offender"
    );
    let (payload, _) = bystander.ping(b"still there?", &[]).await.unwrap();
    assert_eq!(payload, b"still there?");
}

#[tokio::test]
async fn garbage_oversized_and_truncated_records_disconnect_only_the_sender() {
    let broker = Broker::start();
    let bystander = pidbus::Connection::connect(broker.socket()).await.unwrap();

    offender_is_disconnected(
        &broker,
        &bystander,
        b"\xde\xad\xbe\xef garbage",
        &[],
        "malformed message",
    )
    .await;

    let oversized = vec![0x90u8; limits::DEFAULT_MAX_RECORD_SIZE + 1];
    offender_is_disconnected(&broker, &bystander, &oversized, &[], "exceeds the limit").await;

    let valid = codec::encode(
        &Message::Request(pidbus_protocol::Request {
            serial: 1,
            body: pidbus_protocol::BrokerRequest::ListPeers { after: None },
        }),
        1024,
    )
    .unwrap();
    offender_is_disconnected(
        &broker,
        &bystander,
        &valid[..valid.len() - 3],
        &[],
        "malformed message",
    )
    .await;

    let second_hello = hello_record();
    offender_is_disconnected(
        &broker,
        &bystander,
        &second_hello,
        &[],
        "Hello is not allowed",
    )
    .await;

    let (r, _w) = rustix::pipe::pipe().unwrap();
    offender_is_disconnected(
        &broker,
        &bystander,
        &valid,
        &[r.as_fd()],
        "file descriptors attached",
    )
    .await;

    // Out of order: a broker-to-client message from a client.
    let welcome = codec::encode(
        &Message::Welcome(pidbus_protocol::Welcome {
            version: pidbus_protocol::PROTOCOL_VERSION,
            unique_id: pidbus_protocol::PeerId(1),
            identity: bystander.identity().clone(),
            max_record_size: 1024,
        }),
        limits::DEFAULT_MAX_RECORD_SIZE,
    )
    .unwrap();
    offender_is_disconnected(
        &broker,
        &bystander,
        &welcome,
        &[],
        "Welcome is not allowed from a client",
    )
    .await;

    // Wrong version, as the first message of a fresh connection.
    let future_hello = codec::encode(
        &Message::Hello(pidbus_protocol::Hello { version: 99 }),
        limits::DEFAULT_MAX_RECORD_SIZE,
    )
    .unwrap();
    let fresh = SeqPacket::connect(broker.socket()).unwrap();
    offender_on(
        fresh,
        &broker,
        &bystander,
        &future_hello,
        &[],
        "client speaks protocol version 99",
    )
    .await;

    // The bystander was never disturbed and the broker still accepts peers.
    let newcomer = pidbus::Connection::connect(broker.socket()).await.unwrap();
    let peers = newcomer.peers().await.unwrap();
    assert_eq!(peers.len(), 2, "bystander and newcomer: offenders are gone");
}

/// Every fuzzing seed and every input a fuzzer ever crashed on
/// (`fuzz/seeds/decode`, `fuzz/regressions`), each sent by its own raw
/// connection: the broker serves the bystander after each one.
#[tokio::test]
async fn fuzz_seeds_and_regressions_never_harm_the_broker() {
    let broker = Broker::start();
    let bystander = pidbus::Connection::connect(broker.socket()).await.unwrap();
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let inputs: Vec<std::path::PathBuf> = ["seeds/decode", "regressions"]
        .iter()
        .flat_map(|dir| fuzz_inputs(&fuzz.join(dir)))
        .collect();
    assert!(inputs.len() >= 10, "the seeds are missing: {inputs:?}");
    for input in &inputs {
        let record = std::fs::read(input).unwrap();
        let offender = raw_handshaken(broker.socket()).await;
        let _ = offender.send(&record, &[]).await;
        drop(offender);
        let (payload, _) = bystander.ping(b"alive", &[]).await.unwrap_or_else(|e| {
            panic!("after {}: {e}", input.display());
        });
        assert_eq!(payload, b"alive");
    }
}

/// The files of a fuzzing directory (seeds or regressions), sorted; no
/// dot-files, no subdirectories (another target's).
fn fuzz_inputs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut inputs: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    inputs.sort();
    inputs
}

/// The D-Bus face's fuzzing seeds and every input its fuzzers ever crashed
/// on (`fuzz/seeds/dbus`, `fuzz/regressions/dbus`, `fuzz/seeds/sasl`):
/// each written by its own D-Bus connection (a message after SASL and a
/// Hello, a SASL exchange as the first bytes), and a bystander D-Bus
/// client (busctl) is answered after each one. The message seeds are valid
/// messages, so the fuzzer starts from what real clients send.
#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl: install the Debian package systemd"
)]
#[test]
fn dbus_fuzz_seeds_and_regressions_never_harm_the_broker() {
    use std::io::Write;
    let broker = Broker::start_dbus(&[]);
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let messages: Vec<_> = ["seeds/dbus", "regressions/dbus"]
        .iter()
        .flat_map(|dir| fuzz_inputs(&fuzz.join(dir)))
        .collect();
    let handshakes = fuzz_inputs(&fuzz.join("seeds/sasl"));
    assert!(
        messages.len() >= 10 && !handshakes.is_empty(),
        "the seeds are missing"
    );
    for seed in fuzz_inputs(&fuzz.join("seeds/dbus")) {
        let bytes = std::fs::read(&seed).unwrap();
        assert!(
            pidbus_protocol::dbus::header::parse(&bytes).is_ok(),
            "{} is not a valid message",
            seed.display()
        );
    }
    let uid = rustix::process::getuid().as_raw().to_string();
    let uid_hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    let opening = format!("\0AUTH EXTERNAL {uid_hex}\r\nBEGIN\r\n");
    let hello = std::fs::read(fuzz.join("seeds/dbus/hello")).unwrap();
    let sends = messages
        .iter()
        .map(|path| [opening.as_bytes(), &hello, &std::fs::read(path).unwrap()].concat())
        .chain(handshakes.iter().map(|path| std::fs::read(path).unwrap()));
    let address = format!("--address={}", broker.dbus_address());
    for (n, bytes) in sends.enumerate() {
        let mut offender = std::os::unix::net::UnixStream::connect(broker.dbus_socket()).unwrap();
        let _ = offender.write_all(&bytes);
        drop(offender);
        let (code, out, err) = pidbus_tests::run_bounded(
            20,
            "busctl",
            &[
                &address,
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetId",
            ],
        );
        assert_eq!(code, 0, "after input {n}: {out}{err}");
    }
}
