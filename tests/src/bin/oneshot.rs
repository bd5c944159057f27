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
//!   the signal without waiting for the Welcome.
//! - `native-thin SOCKET INDEX`: Hello, waits for the Welcome, sends the
//!   signal (what the benchmark's thin client does).
//! - `sdk SOCKET INDEX`: the blocking SDK's `emit`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use pidbus_protocol::dbus::header::{self, Header, MessageType};
use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{Message, Signal, codec, limits};

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

fn dbus_raw(path: &Path, index: u32) -> AnyResult<()> {
    let uid = rustix::process::getuid().as_raw().to_string();
    let uid_hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    let mut bytes = format!("\0AUTH EXTERNAL {uid_hex}\r\nBEGIN\r\n").into_bytes();
    let mut hello = Header::new(MessageType::MethodCall, 1);
    hello.path = Some("/org/freedesktop/DBus".into());
    hello.interface = Some("org.freedesktop.DBus".into());
    hello.member = Some("Hello".into());
    hello.destination = Some("org.freedesktop.DBus".into());
    bytes.extend(header::encode(&hello, &[]));
    let mut ping = Header::new(MessageType::Signal, 2);
    ping.path = Some(PATH.into());
    ping.interface = Some(INTERFACE.into());
    ping.member = Some(MEMBER.into());
    ping.signature = "u".into();
    bytes.extend(header::encode(&ping, &body(index)));
    UnixStream::connect(path)?.write_all(&bytes)?;
    Ok(())
}

fn native(socket: &Path, index: u32, wait_for_welcome: bool) -> AnyResult<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bus = SeqPacket::connect(socket)?;
        bus.send(&pidbus_tests::hello_record(), &[]).await?;
        if wait_for_welcome {
            let welcome = bus
                .recv(limits::DEFAULT_MAX_RECORD_SIZE)
                .await?
                .ok_or("the broker closed the connection before its Welcome")?;
            let message = codec::decode(&welcome.data, limits::DEFAULT_MAX_RECORD_SIZE)?;
            if !matches!(message, Message::Welcome(_)) {
                return Err(format!("expected a Welcome, got {}", message.kind()).into());
            }
        }
        let ping = Message::Signal(Signal {
            sender: None,
            destination: None,
            path: PATH.into(),
            interface: INTERFACE.into(),
            member: MEMBER.into(),
            signature: "u".into(),
            body: body(index),
            matched: Vec::new(),
        });
        let record = codec::encode(&ping, limits::DEFAULT_MAX_RECORD_SIZE)?;
        bus.send(&record, &[]).await?;
        Ok(())
    })
}

fn sdk(socket: &Path, index: u32) -> AnyResult<()> {
    let bus = pidbus::blocking::Connection::connect(socket)?;
    bus.emit(PATH, INTERFACE, MEMBER, &index)?;
    Ok(())
}
