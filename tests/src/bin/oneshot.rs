//! A process that connects, sends one signal and exits at once: the last
//! message of a short-lived program, for the tests of `tests/last_message.rs`.
//!
//! Every mode emits `org.pidbus.Oneshot.Ping(u32 INDEX)` on
//! `/org/pidbus/Oneshot` and exits without waiting for the broker:
//!
//! - `dbus-raw PATH INDEX`: on the D-Bus socket at PATH, writes SASL
//!   `EXTERNAL`, `BEGIN`, a `Hello` and the signal in one write, reads
//!   nothing.
//! - `native-raw SOCKET INDEX`: on the native socket, sends the Hello and
//!   the signal without waiting for the Hello's answer.
//! - `native-thin SOCKET INDEX`: Hello, waits for its answer (the unique
//!   name), sends the signal (what the benchmark's thin client does).
//! - `sdk SOCKET INDEX`: the blocking SDK's `emit`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use pidbus_protocol::dbus::header::{self, Header, MessageType};
use pidbus_protocol::transport::SeqPacket;
use pidbus_tests::raw::{RawPeer, hello_record};

const PATH: &str = "/org/pidbus/Oneshot";
const INTERFACE: &str = "org.pidbus.Oneshot";
const MEMBER: &str = "Ping";

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.as_slice() {
        [mode, path, index] => match index.parse::<u32>() {
            Ok(index) => run(mode, Path::new(path), index),
            Err(e) => Err(format!("INDEX {index:?}: {e}").into()),
        },
        _ => Err("usage: pidbus-oneshot dbus-raw|native-raw|native-thin|sdk PATH INDEX".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pidbus-oneshot: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(mode: &str, path: &Path, index: u32) -> AnyResult<()> {
    match mode {
        "dbus-raw" => dbus_raw(path, index),
        "native-raw" => native(path, index, false),
        "native-thin" => native(path, index, true),
        "sdk" => sdk(path, index),
        other => Err(format!("unknown mode {other:?}").into()),
    }
}

/// The signal's body: one `u`, little-endian.
fn body(index: u32) -> Vec<u8> {
    index.to_le_bytes().to_vec()
}

/// The signal, as a message with serial 2 (the Hello is 1).
fn ping(index: u32) -> Vec<u8> {
    let mut ping = Header::new(MessageType::Signal, 2);
    ping.path = Some(PATH.into());
    ping.interface = Some(INTERFACE.into());
    ping.member = Some(MEMBER.into());
    ping.signature = "u".into();
    header::encode(&ping, &body(index))
}

fn dbus_raw(path: &Path, index: u32) -> AnyResult<()> {
    let uid = rustix::process::getuid().as_raw().to_string();
    let uid_hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    let mut bytes = format!("\0AUTH EXTERNAL {uid_hex}\r\nBEGIN\r\n").into_bytes();
    bytes.extend(hello_record());
    bytes.extend(ping(index));
    UnixStream::connect(path)?.write_all(&bytes)?;
    Ok(())
}

fn native(socket: &Path, index: u32, wait_for_answer: bool) -> AnyResult<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bus = if wait_for_answer {
            RawPeer::connect(socket).await?
        } else {
            let bus = SeqPacket::connect(socket)?;
            bus.send(&hello_record(), &[]).await?;
            RawPeer::adopt(bus)
        };
        bus.send_raw(&ping(index), &[]).await?;
        Ok(())
    })
}

fn sdk(socket: &Path, index: u32) -> AnyResult<()> {
    let bus = pidbus::blocking::Connection::connect(socket)?;
    bus.emit(PATH, INTERFACE, MEMBER, &index)?;
    Ok(())
}
