//! The whole broker through its D-Bus socket: one in-process broker per
//! fuzzing process; each input is written, after SASL `EXTERNAL` and a
//! Hello, by a fresh D-Bus connection, which then leaves; then a
//! bystander D-Bus connection must still get its `Peer.Ping` answered. A
//! panic, a hang or a bystander losing its connection is a finding.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

mod common;

use common::hello;
use libfuzzer_sys::fuzz_target;
use pidbus_protocol::dbus::header::{self, MessageType};

struct Harness {
    socket: PathBuf,
    bystander: Mutex<(UnixStream, u32)>,
}

/// SASL `EXTERNAL` for our uid, then `BEGIN`.
fn sasl() -> Vec<u8> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_else(|| "0".to_owned());
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    format!("\0AUTH EXTERNAL {hex}\r\nBEGIN\r\n").into_bytes()
}

/// Reads until a message answering `serial` arrives; its type.
fn answer_to(stream: &mut UnixStream, serial: u32) -> MessageType {
    let mut pending = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        while let Some(prefix) = pending.first_chunk::<16>() {
            let len = header::message_len(prefix, 1 << 27).expect("the bus writes valid messages");
            if pending.len() < len {
                break;
            }
            let message: Vec<u8> = pending.drain(..len).collect();
            let (parsed, _, _) = header::parse(&message).expect("a valid message");
            if parsed.reply_serial == Some(serial) {
                return parsed.kind;
            }
        }
        let n = stream
            .read(&mut buf)
            .expect("the bystander's connection stays");
        assert!(n > 0, "the bus closed the bystander's connection");
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Reads the bus's `OK <guid>` line, which comes before any message.
fn skip_sasl_reply(stream: &mut UnixStream) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("the SASL reply"),
            1,
            "the bus closed the bystander"
        );
        line.push(byte[0]);
    }
    assert!(
        line.starts_with(b"OK "),
        "the bus refused the bystander: {line:?}"
    );
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let socket = common::start_broker("dbus").dbus;
        let mut bystander = UnixStream::connect(&socket).expect("the bystander connects");
        bystander
            .write_all(&[sasl(), hello()].concat())
            .expect("the bystander's Hello");
        skip_sasl_reply(&mut bystander);
        answer_to(&mut bystander, 1);
        Harness {
            socket,
            bystander: Mutex::new((bystander, 1)),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    if let Ok(mut offender) = UnixStream::connect(&harness.socket) {
        // The bus may close it at any point: that is an outcome.
        let _ = offender.write_all(&[sasl(), hello(), data.to_vec()].concat());
    }
    let mut guard = harness.bystander.lock().unwrap_or_else(|e| e.into_inner());
    let (bystander, serial) = &mut *guard;
    *serial += 1;
    let ping = common::driver_call(*serial, "org.freedesktop.DBus.Peer", "Ping");
    bystander.write_all(&ping).expect("the bystander writes");
    assert_eq!(
        answer_to(bystander, *serial),
        MessageType::MethodReturn,
        "the bystander is answered"
    );
});
