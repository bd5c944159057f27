//! The SDK on both ends: a `serve` echo service and a client using
//! `Connection::call_method`, each on its own thread and runtime as two
//! programs are, on a fresh pidbusd; against the thin client on the same
//! broker. (With both ends on one runtime thread a round trip took 1.6 ×
//! the thin client's on the development VM, against 1.0 × apart: the
//! layout, not the SDK's code path, made the difference.)

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use pidbus::{Connection, MethodCall, NameFlags, Response};

const NAME: &str = "org.bench.SdkEcho";
const PATH: &str = "/org/bench/SdkEcho";

/// `payload` as the body of one `ay`.
fn byte_array(payload: &[u8]) -> Vec<u8> {
    let mut body = (payload.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(payload);
    body
}

fn call(payload: &[u8]) -> pidbus::Result<MethodCall> {
    MethodCall::new(NAME, PATH, NAME, "Echo")?.body("ay", byte_array(payload))
}

/// What the SDK measured: round-trip p50 (µs) and pipelined calls/s.
pub struct SdkResults {
    pub roundtrip_p50_us: f64,
    pub pipelined_per_s: f64,
}

/// Runs the SDK echo service and client against the broker at `socket`,
/// each on a thread and runtime of its own, as two programs would be
/// (and as the thin client and thin service are).
pub fn measure(socket: &Path, roundtrips: usize, pipelined: usize) -> io::Result<SdkResults> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let service_runtime = runtime()?;
    let service = service_runtime
        .block_on(serve(socket))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service_thread = std::thread::spawn(move || {
        service_runtime.block_on(async move {
            let _service = service;
            let _ = stopped.await;
        });
    });
    let results = runtime()?
        .block_on(run(socket, roundtrips, pipelined))
        .map_err(|e| io::Error::other(e.to_string()));
    let _ = stop.send(());
    let _ = service_thread.join();
    results
}

/// The SDK echo service, owning `NAME`.
async fn serve(socket: &Path) -> pidbus::Result<Connection> {
    let service = Connection::connect(socket).await?;
    service.serve(PATH, NAME, |call| async move {
        Response::raw(call.signature(), call.body().to_vec())
    })?;
    service.request_name(NAME, NameFlags::default()).await?;
    Ok(service)
}

async fn run(socket: &Path, roundtrips: usize, pipelined: usize) -> pidbus::Result<SdkResults> {
    let client = Connection::connect(socket).await?;
    let payload = vec![0x5a; 64];
    let mut latencies = Vec::with_capacity(roundtrips);
    for _ in 0..roundtrips {
        let start = Instant::now();
        client.call_method(call(&payload)?).await?;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    // 64 calls in flight, as pipelined_64 keeps for the thin client.
    const WINDOW: usize = 64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WINDOW {
        let client = client.clone();
        let payload = payload.clone();
        tasks.spawn(async move {
            for _ in 0..pipelined / WINDOW {
                client.call_method(call(&payload)?).await?;
            }
            Ok::<(), pidbus::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| pidbus::Error::Protocol(e.to_string()))??;
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    Ok(SdkResults {
        roundtrip_p50_us: p50.as_secs_f64() * 1e6,
        pipelined_per_s: (pipelined / WINDOW * WINDOW) as f64 / elapsed.as_secs_f64(),
    })
}
