//! The broker's message handling through its native socket: one broker
//! per fuzzing process; each input is sent as a record by a fresh
//! connection after its Hello, then a bystander connection must still get
//! its `Peer.Ping` answered. A panic, a hang or a refused bystander is a
//! finding.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

mod common;

use libfuzzer_sys::fuzz_target;
use pidbus_protocol::dbus::header;
use pidbus_protocol::limits;
use pidbus_protocol::transport::SeqPacket;

struct Harness {
    runtime: tokio::runtime::Runtime,
    socket: PathBuf,
    bystander: SeqPacket,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let socket = common::start_broker("native").native;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the fuzzer's runtime");
        let bystander = runtime.block_on(said_hello(&socket));
        Harness {
            runtime,
            socket,
            bystander,
        }
    })
}

/// Waits for the answer to `serial`, skipping whatever else comes.
async fn answer(conn: &SeqPacket, serial: u32) {
    loop {
        let received = conn
            .recv(limits::DEFAULT_MAX_RECORD_SIZE)
            .await
            .expect("recv")
            .expect("the broker closed an innocent connection");
        let parsed = header::parse(&received.data).expect("the broker sends valid messages");
        if parsed.0.reply_serial == Some(serial) {
            return;
        }
    }
}

async fn said_hello(socket: &std::path::Path) -> SeqPacket {
    let conn = SeqPacket::connect(socket).expect("connect");
    conn.send(&common::hello(), &[]).await.expect("Hello");
    answer(&conn, 1).await;
    conn
}

fuzz_target!(|data: &[u8]| {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);
    let harness = harness();
    harness.runtime.block_on(async {
        let offender = said_hello(&harness.socket).await;
        // The broker may already have closed it: that is an outcome.
        let _ = offender.send(data, &[]).await;
        drop(offender);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ping = common::driver_call(serial, "org.freedesktop.DBus.Peer", "Ping");
        harness
            .bystander
            .send(&ping, &[])
            .await
            .expect("bystander send");
        answer(&harness.bystander, serial).await;
    });
});
