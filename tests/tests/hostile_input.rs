//! Bad records from a raw socket get only their sender disconnected, with a
//! logged reason; the broker keeps serving everyone else.

use std::os::fd::AsFd;

use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::limits;
use pidbus_tests::raw::{BUS1, DRIVER, driver_call, split_record};
use pidbus_tests::{Broker, raw_handshaken};

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
    let warnings_before = broker.log_count("disconnecting peer");
    offender.send_raw(record, fds).await.unwrap();
    // The broker says why (best effort), then closes.
    let mut told = None;
    while let Some(received) = offender
        .socket()
        .recv(limits::DEFAULT_MAX_RECORD_SIZE)
        .await
        .unwrap()
    {
        for message in split_record(&received.data, received.fds).unwrap() {
            if message.is_signal(BUS1, "Disconnected") {
                told = Some(message.text().to_owned());
            }
        }
    }
    let told = told.expect("no Disconnected signal before the disconnect");
    assert!(
        told.contains(logged_reason),
        "told {told:?}, expected {logged_reason:?}"
    );
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
        "too short for a D-Bus message",
    )
    .await;

    let oversized = vec![b'l'; limits::DEFAULT_MAX_RECORD_SIZE + 1];
    offender_is_disconnected(&broker, &bystander, &oversized, &[], "exceeds the limit").await;

    let garbage = [b'x'; 64];
    offender_is_disconnected(&broker, &bystander, &garbage, &[], "invalid message").await;

    let valid = driver_call(7, BUS1, "ListPeers", &[Value::string("")]);
    offender_is_disconnected(
        &broker,
        &bystander,
        &valid[..valid.len() - 3],
        &[],
        "a record must hold exactly one D-Bus message",
    )
    .await;

    // A body that does not hold what its signature says.
    let mut lying = valid.clone();
    let last = lying.len() - 1;
    lying[last] = b'x'; // the string's terminating nul
    offender_is_disconnected(&broker, &bystander, &lying, &[], "message 7").await;

    // Descriptors the message does not announce.
    let (r, _w) = rustix::pipe::pipe().unwrap();
    offender_is_disconnected(
        &broker,
        &bystander,
        &valid,
        &[r.as_fd()],
        "file descriptors",
    )
    .await;

    // The bus's own interface for the library's use.
    let local = pidbus_tests::raw::method_call(
        3,
        DRIVER,
        "/org/freedesktop/DBus/Local",
        "org.freedesktop.DBus.Local",
        "Disconnected",
        &[],
    );
    offender_is_disconnected(&broker, &bystander, &local, &[], "reserved").await;

    // A second Hello is answered with an error, as D-Bus buses do, and the
    // connection goes on.
    let again = raw_handshaken(broker.socket()).await;
    let answer = again.call_driver(DRIVER, "Hello", &[]).await.unwrap();
    assert_eq!(
        answer.error_name(),
        Some(pidbus_protocol::dbus::errors::FAILED),
        "{answer:?}"
    );
    let answer = again.call_driver(DRIVER, "GetId", &[]).await.unwrap();
    assert_eq!(answer.error_name(), None, "{answer:?}");

    // The bystander was never disturbed and the broker still accepts peers.
    let newcomer = pidbus::Connection::connect(broker.socket()).await.unwrap();
    let peers = newcomer.peers().await.unwrap();
    assert_eq!(
        peers.len(),
        3,
        "bystander, the second Hello's peer and newcomer"
    );
    drop(again);
}

/// Every fuzzing seed of D-Bus messages and every input a fuzzer ever
/// crashed on (`fuzz/seeds/dbus`, `fuzz/regressions/dbus`), each sent as a
/// record by its own native connection after its Hello: the broker serves
/// the bystander after each one.
#[tokio::test]
async fn fuzz_seeds_and_regressions_never_harm_the_broker() {
    let broker = Broker::start();
    let bystander = pidbus::Connection::connect(broker.socket()).await.unwrap();
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let inputs: Vec<std::path::PathBuf> = ["seeds/dbus", "regressions/dbus"]
        .iter()
        .flat_map(|dir| fuzz_inputs(&fuzz.join(dir)))
        .collect();
    assert!(inputs.len() >= 10, "the seeds are missing: {inputs:?}");
    for input in &inputs {
        let record = std::fs::read(input).unwrap();
        let offender = raw_handshaken(broker.socket()).await;
        let _ = offender.send_raw(&record, &[]).await;
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
