//! The broker's message handling through the real transport: one broker
//! per fuzzing process; each input is sent as a record by a freshly
//! handshaken connection, then a bystander connection must still get its
//! Ping answered. A panic, a hang or a refused bystander is a finding.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{BrokerRequest, Hello, Message, PROTOCOL_VERSION, Request, codec, limits};

struct Harness {
    runtime: tokio::runtime::Runtime,
    socket: PathBuf,
    bystander: SeqPacket,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pidbus-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let socket = dir.join("bus.sock");
        let config = pidbus_broker::Config::new(socket.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the broker's runtime");
            runtime
                .block_on(pidbus_broker::run(config, std::future::pending()))
                .expect("the broker runs");
        });
        while !socket.exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the fuzzer's runtime");
        let bystander = runtime.block_on(handshaken(&socket));
        Harness {
            runtime,
            socket,
            bystander,
        }
    })
}

fn record(message: &Message) -> Vec<u8> {
    codec::encode(message, limits::DEFAULT_MAX_RECORD_SIZE).expect("encodable")
}

async fn handshaken(socket: &std::path::Path) -> SeqPacket {
    let conn = SeqPacket::connect(socket).expect("connect");
    let hello = record(&Message::Hello(Hello {
        version: PROTOCOL_VERSION,
    }));
    conn.send(&hello, &[]).await.expect("Hello");
    conn.recv(limits::DEFAULT_MAX_RECORD_SIZE)
        .await
        .expect("Welcome")
        .expect("a Welcome, not EOF");
    conn
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    harness.runtime.block_on(async {
        let offender = handshaken(&harness.socket).await;
        // The broker may already have closed it: that is an outcome.
        let _ = offender.send(data, &[]).await;
        drop(offender);
        let ping = record(&Message::Request(Request {
            serial: 1,
            body: BrokerRequest::Ping {
                payload: b"alive?".to_vec(),
            },
        }));
        harness
            .bystander
            .send(&ping, &[])
            .await
            .expect("bystander send");
        // Skip signals and notices meant for everyone; wait for our Pong.
        loop {
            let received = harness
                .bystander
                .recv(limits::DEFAULT_MAX_RECORD_SIZE)
                .await
                .expect("bystander recv")
                .expect("the broker closed an innocent bystander");
            if let Ok(Message::Reply(_)) =
                codec::decode(&received.data, limits::DEFAULT_MAX_RECORD_SIZE)
            {
                break;
            }
        }
    });
});
