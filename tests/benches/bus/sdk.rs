//! Client libraries on both ends: an echo service and a client of the same
//! library, each on its own thread and runtime as two programs are.
//!
//! - [`measure`]: the pidbus SDK (`serve` and `Connection::call_method`) on
//!   any bus: a fresh pidbusd's native socket for `sdk_roundtrip` (against
//!   the thin client on the same broker), and dbus-broker for
//!   `sdk_on_dbus_broker_*`.
//! - [`measure_zbus`]: zbus (an `#[interface]` service and
//!   `Connection::call_method`) on the same dbus-broker, in the same run.
//!
//! Each library is measured against an echo service written with itself,
//! not both against one service: a program written with a library has it
//! on both ends, and the service side (dispatch to a handler, and for the
//! SDK on another bus than pidbus, learning the caller from
//! `GetConnectionCredentials`) is part of what the library costs. The
//! client-only cost is what `sdk_roundtrip` shows against the thin client.
//!
//! (With both ends on one runtime thread a round trip took 1.6 × the thin
//! client's on the development VM, against 1.0 × apart: the layout, not
//! the SDK's code path, made the difference.)

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidbus::{Connection, MethodCall, NameFlags, Response};

const NAME: &str = "org.bench.SdkEcho";
const PATH: &str = "/org/bench/SdkEcho";
const ZBUS_NAME: &str = "org.bench.ZbusEcho";
const ZBUS_PATH: &str = "/org/bench/ZbusEcho";

/// Calls made before timing starts, as the thin client's round trips
/// have: connections, caches and the broker's first-call paths warm.
const WARM_UP: usize = 200;

/// Calls in flight in the pipelined measure, as pipelined_64 keeps for
/// the thin client.
const WINDOW: usize = 64;

/// What a library measured: round-trip p50 (µs) and pipelined calls/s.
pub struct SdkResults {
    pub roundtrip_p50_us: f64,
    pub pipelined_per_s: f64,
}

/// `payload` as the body of one `ay`.
fn byte_array(payload: &[u8]) -> Vec<u8> {
    let mut body = (payload.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(payload);
    body
}

fn call(payload: &[u8]) -> pidbus::Result<MethodCall> {
    MethodCall::new(NAME, PATH, NAME, "Echo")?.body("ay", byte_array(payload))
}

/// The pidbus SDK's echo service and client against the bus at `socket`
/// (a native or D-Bus socket path: the SDK tells which).
pub fn measure(socket: &Path, roundtrips: usize, pipelined: usize) -> io::Result<SdkResults> {
    two_programs(serve(socket), async {
        let client = Connection::connect(socket)
            .await
            .map_err(|e| e.to_string())?;
        let payload = Arc::new(vec![0x5a; 64]);
        let one_call = move || {
            let client = client.clone();
            let payload = Arc::clone(&payload);
            async move {
                let call = call(&payload).map_err(|e| e.to_string())?;
                client
                    .call_method(call)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        };
        measure_calls(one_call, roundtrips, pipelined).await
    })
}

/// The SDK echo service, owning `NAME`: returns each call's body as it
/// came, without decoding it.
async fn serve(socket: &Path) -> Result<Connection, String> {
    let service = Connection::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    service
        .serve(PATH, NAME, |call| async move {
            Response::raw(call.signature(), call.body().to_vec())
        })
        .map_err(|e| e.to_string())?;
    service
        .request_name(NAME, NameFlags::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(service)
}

/// zbus's echo service and client against the D-Bus socket at `socket`.
pub fn measure_zbus(socket: &Path, roundtrips: usize, pipelined: usize) -> io::Result<SdkResults> {
    let address = dbus_address(socket);
    two_programs(serve_zbus(&address), async {
        let client = zbus::connection::Builder::address(address.as_str())
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let payload = Arc::new(vec![0x5a_u8; 64]);
        let one_call = move || {
            let client = client.clone();
            let payload = Arc::clone(&payload);
            async move {
                client
                    .call_method(
                        Some(ZBUS_NAME),
                        ZBUS_PATH,
                        Some(ZBUS_NAME),
                        "Echo",
                        &*payload,
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        };
        measure_calls(one_call, roundtrips, pipelined).await
    })
}

/// The zbus echo service, as a zbus program writes one.
struct ZbusEcho;

#[zbus::interface(name = "org.bench.ZbusEcho")]
impl ZbusEcho {
    /// Returns the bytes it was given (`Echo(ay) → ay`).
    fn echo(&self, payload: Vec<u8>) -> Vec<u8> {
        payload
    }
}

/// A zbus connection owning `ZBUS_NAME` and serving `ZbusEcho`.
async fn serve_zbus(address: &str) -> Result<zbus::Connection, String> {
    zbus::connection::Builder::address(address)
        .and_then(|b| b.name(ZBUS_NAME))
        .and_then(|b| b.serve_at(ZBUS_PATH, ZbusEcho))
        .map_err(|e| e.to_string())?
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// `unix:path=…` for `socket`, escaped as D-Bus addresses are (every byte
/// outside the optionally-escaped set as `%XX`).
fn dbus_address(socket: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut address = String::from("unix:path=");
    for &b in socket.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_/.\\*".contains(&b) {
            address.push(char::from(b));
        } else {
            address.push_str(&format!("%{b:02x}"));
        }
    }
    address
}

/// Runs a service (`serve`, whose handle must stay alive) and a client on
/// two threads, each with a current-thread runtime of its own, as two
/// programs would be (and as the thin client and thin service are).
fn two_programs<H: Send + 'static>(
    serve: impl Future<Output = Result<H, String>>,
    client: impl Future<Output = Result<SdkResults, String>>,
) -> io::Result<SdkResults> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let service_runtime = runtime()?;
    let service = service_runtime.block_on(serve).map_err(io::Error::other)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service_thread = std::thread::spawn(move || {
        service_runtime.block_on(async move {
            let _service = service;
            let _ = stopped.await;
        });
    });
    let results = runtime()?.block_on(client).map_err(io::Error::other);
    let _ = stop.send(());
    let _ = service_thread.join();
    results
}

/// Times `roundtrips` sequential calls (p50) after a warm-up, then
/// `pipelined` calls with `WINDOW` in flight (tasks each making calls one
/// after another, as an application's concurrent requests do).
async fn measure_calls<F, Fut>(
    one_call: F,
    roundtrips: usize,
    pipelined: usize,
) -> Result<SdkResults, String>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    for _ in 0..WARM_UP {
        one_call().await?;
    }
    let mut latencies = Vec::with_capacity(roundtrips);
    for _ in 0..roundtrips {
        let start = Instant::now();
        one_call().await?;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let p50 = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WINDOW {
        let one_call = one_call.clone();
        tasks.spawn(async move {
            for _ in 0..pipelined / WINDOW {
                one_call().await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    Ok(SdkResults {
        roundtrip_p50_us: p50.as_secs_f64() * 1e6,
        pipelined_per_s: (pipelined / WINDOW * WINDOW) as f64 / elapsed.as_secs_f64(),
    })
}
