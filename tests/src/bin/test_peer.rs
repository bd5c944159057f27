//! A peer process for the integration tests.
//!
//! - `hold SOCKET`: connect, print one JSON line (`self_pid`, `self_pidfs_id`,
//!   `id`, `identity`), then stay connected until stdin closes.
//! - `hello-and-exit SOCKET`: connect, send Hello and exit at once without
//!   reading the answer.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{Hello, Message, PROTOCOL_VERSION, codec, limits};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1..) {
        Some([mode, socket]) if mode == "hold" => hold(Path::new(socket)),
        Some([mode, socket]) if mode == "hello-and-exit" => hello_and_exit(Path::new(socket)),
        _ => Err("usage: pidbus-test-peer hold|hello-and-exit SOCKET".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pidbus-test-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hold(socket: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let bus = pidbus::blocking::Connection::connect(socket)?;
    let report = serde_json::json!({
        "self_pid": std::process::id(),
        "self_pidfs_id": pidbus_protocol::pidfd::own_pidfs_id()?,
        "id": bus.unique_id().to_string(),
        "identity": bus.identity(),
    });
    println!("{report}");
    // Stay connected until the test closes our stdin.
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    // Prove the connection is still good before leaving.
    bus.ping(b"bye", &[])?;
    Ok(())
}

fn hello_and_exit(socket: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let conn = SeqPacket::connect(socket)?;
        let hello = codec::encode(
            &Message::Hello(Hello {
                version: PROTOCOL_VERSION,
            }),
            limits::DEFAULT_MAX_RECORD_SIZE,
        )?;
        conn.send(&hello, &[]).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
