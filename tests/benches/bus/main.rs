//! `cargo bench --bench bus -- [--quick] [--json FILE] [--svg FILE]`
//!
//! Measures pidbus against its rivals in one run on one machine: a raw
//! SEQPACKET relay (the physical limit of any broker), dbus-broker and
//! dbus-daemon. Every rival is a private instance started here; every
//! scenario runs for each rival in turn, repeated, and the median of the
//! repetitions is reported with pidbus's ratio to each rival.
//!
//! All rivals are driven by thin blocking clients written for exactly these
//! messages (no async runtime, no client library): the numbers compare
//! brokers, not client stacks. pidbus's two sockets and the D-Bus brokers
//! share one thin D-Bus client (`dbus.rs`), whose framing alone differs:
//! SEQPACKET records without SASL on the native socket, a stream after
//! SASL on the others. Client libraries are measured apart: the pidbus SDK
//! against the thin client on pidbus (`sdk_*`), and against zbus on
//! dbus-broker (`sdk_on_dbus_broker_*`).
//!
//! After the table come the targets, each with the ratio this run
//! reached and whether it is met (also under `targets` in `--json`).

mod dbus;
mod pidbus;
mod relay;
mod report;
mod sdk;
mod wire;

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use report::{Better, Scenario};
use wire::Socket;

/// The well-known name (and interface) of every rival's echo service.
pub const ECHO_NAME: &str = "org.bench.Echo";

/// One connection to a bus under test.
pub trait Client: Send {
    /// Sends a call of the echo service with `payload`.
    fn call(&mut self, serial: u32, payload: &[u8]) -> io::Result<()>;
    /// Waits for the next answer to a call.
    fn reply(&mut self) -> io::Result<()>;
    /// Subscribes to the broadcast signal and waits until the bus confirms.
    fn subscribe(&mut self) -> io::Result<()>;
    /// Emits the broadcast signal with `payload`.
    fn emit(&mut self, payload: &[u8]) -> io::Result<()>;
    /// Reads everything available without blocking; signals received.
    fn count_signals(&mut self) -> io::Result<usize>;
    /// Adds `count` match rules that select no signal the benchmark emits
    /// (same interface, other members), and waits until the bus has them.
    fn add_idle_rules(&mut self, count: usize) -> io::Result<()>;
    /// The socket, for polling.
    fn socket(&self) -> &Socket;
}

/// A bus under test, with its echo service running.
pub trait Rival {
    /// Its key in the results (`pidbus`, `raw_relay`, …).
    fn key(&self) -> &'static str;
    /// The broker (or relay) process, for its memory.
    fn broker_pid(&self) -> u32;
    /// A new connection, handshake done.
    fn connect(&self) -> io::Result<Box<dyn Client>>;
    /// The socket client libraries connect to: pidbus's native socket,
    /// a D-Bus broker's socket; none for the relays, which speak no D-Bus.
    fn socket_path(&self) -> Option<&std::path::Path> {
        None
    }
    /// A connection subscribed to the broadcast signal.
    fn subscriber(&self) -> io::Result<Box<dyn Client>> {
        let mut client = self.connect()?;
        client.subscribe()?;
        Ok(client)
    }
    /// A connection that emits the broadcast signal.
    fn emitter(&self) -> io::Result<Box<dyn Client>> {
        self.connect()
    }
}

/// How much work each scenario does.
struct Sizes {
    repeats: usize,
    roundtrips: usize,
    pipelined: usize,
    connects: usize,
    idle_connections: usize,
    broadcasts: usize,
}

const FULL: Sizes = Sizes {
    repeats: 3,
    roundtrips: 20_000,
    pipelined: 100_000,
    connects: 2_000,
    idle_connections: 2_000,
    broadcasts: 2_000,
};

const QUICK: Sizes = Sizes {
    repeats: 1,
    roundtrips: 3_000,
    pipelined: 20_000,
    connects: 300,
    idle_connections: 2_000,
    broadcasts: 300,
};

struct Args {
    quick: bool,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    /// Run only this scenario (for profiling one code path).
    only: Option<String>,
    /// Pin the benchmark and every rival it starts to CPU 0.
    one_cpu: bool,
    /// Measure pidbus only against this rival (for profiling).
    rival: Option<String>,
    /// The policy pidbusd enforces (default: its open development policy).
    policy: Option<PathBuf>,
}

impl Args {
    /// Whether `scenario` is measured (`match_scale_empty` comes with
    /// `match_scale`, its baseline; each `…_pipelined` of a library with
    /// its `…_roundtrip`, measured in the same pass).
    fn runs(&self, scenario: &str) -> bool {
        let base = match scenario {
            "sdk_pipelined" => "sdk_roundtrip",
            "sdk_on_dbus_broker_pipelined" => "sdk_on_dbus_broker_roundtrip",
            other => other.strip_suffix("_empty").unwrap_or(other),
        };
        self.only.as_deref().is_none_or(|only| only == base)
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        one_cpu: false,
        json: None,
        svg: None,
        only: None,
        rival: None,
        policy: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--one-cpu" => args.one_cpu = true,
            "--json" => args.json = Some(it.next().ok_or("--json needs a FILE")?.into()),
            "--svg" => args.svg = Some(it.next().ok_or("--svg needs a FILE")?.into()),
            "--only" => args.only = Some(it.next().ok_or("--only needs a SCENARIO")?),
            "--rival" => args.rival = Some(it.next().ok_or("--rival needs a RIVAL")?),
            "--policy" => args.policy = Some(it.next().ok_or("--policy needs a FILE")?.into()),
            // Added by `cargo bench`.
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other}; use [--quick] [--one-cpu] [--json FILE] [--svg FILE] [--only SCENARIO] [--rival RIVAL] [--policy FILE]"
                ));
            }
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let relay_mode = match argv.get(1).map(String::as_str) {
        Some("--relay") => Some(relay::Mode::OnePerCall),
        Some("--batch-relay") => Some(relay::Mode::Batched),
        _ => None,
    };
    if let (Some(mode), Some(path)) = (relay_mode, argv.get(2)) {
        return match relay::run(Path::new(path), mode) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bus bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bus bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<()> {
    let sizes = if args.quick { &QUICK } else { &FULL };
    if args.one_cpu {
        // Inherited by every rival started below: no wakeup crosses CPUs,
        // so latency measures work, not the machine's idle wake-up time.
        let mut cpus = rustix::thread::CpuSet::new();
        cpus.set(0);
        rustix::thread::sched_setaffinity(None, &cpus)?;
    }
    raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("pidbus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let pidbusd = build_pidbusd()?;
    let me = std::env::current_exe()?;

    let starter = Starter {
        pidbusd,
        policy: args.policy.as_ref().map(std::path::absolute).transpose()?,
        me,
        dir: dir.clone(),
        next: std::cell::Cell::new(0),
    };
    let mut rivals: Vec<Box<dyn Rival>> = Vec::new();
    if let Some(rival) = &args.rival
        && !RIVALS.contains(&rival.as_str())
    {
        return Err(io::Error::other(format!(
            "--rival: no rival named {rival}; choose one of {}",
            RIVALS.join(", ")
        )));
    }
    let wanted = |key: &str| key == "pidbus" || args.rival.as_deref().is_none_or(|r| r == key);
    for key in RIVALS.into_iter().filter(|key| wanted(key)) {
        match starter.start(key) {
            Ok(rival) => rivals.push(rival),
            Err(e) => eprintln!("{key} not measured: {e} (is its Debian package installed?)"),
        }
    }
    if rivals.first().map(|r| r.key()) != Some("pidbus") {
        return Err(io::Error::other("pidbusd could not be started"));
    }
    let unchecked = starter.start("pidbus_unchecked")?;

    let mut scenarios = vec![
        Scenario::new("roundtrip_64", "p50_us", Better::Lower),
        Scenario::new("roundtrip_64", "p99_us", Better::Lower),
        Scenario::new("roundtrip_4k", "p50_us", Better::Lower),
        Scenario::new("roundtrip_4k", "p99_us", Better::Lower),
        Scenario::new("pipelined_64", "calls_per_s", Better::Higher),
        Scenario::new("connect", "connections_per_s", Better::Higher),
        Scenario::new("conn_memory", "bytes_per_connection", Better::Lower),
        Scenario::new("broadcast_100", "deliveries_per_s", Better::Higher),
        Scenario::new("sender_check", "p50_us", Better::Lower),
        Scenario::new("match_scale", "p50_us", Better::Lower),
        Scenario::new("match_scale_empty", "p50_us", Better::Lower),
        Scenario::new("sdk_roundtrip", "p50_us", Better::Lower),
        Scenario::new("sdk_pipelined", "calls_per_s", Better::Higher),
        Scenario::new("sdk_on_dbus_broker_roundtrip", "p50_us", Better::Lower),
        Scenario::new(
            "sdk_on_dbus_broker_pipelined",
            "calls_per_s",
            Better::Higher,
        ),
    ];
    if let Some(only) = &args.only
        && !scenarios.iter().any(|s| s.name == only)
    {
        return Err(io::Error::other(format!(
            "--only: no scenario named {only}"
        )));
    }
    let started = Instant::now();
    for repeat in 0..sizes.repeats {
        eprintln!("repetition {} of {}", repeat + 1, sizes.repeats);
        for size in [64, 4096] {
            let name = if size == 64 {
                "roundtrip_64"
            } else {
                "roundtrip_4k"
            };
            if !args.runs(name) {
                continue;
            }
            let first = if size == 64 { 0 } else { 2 };
            for rival in &rivals {
                let (p50, p99) = roundtrip(rival.as_ref(), size, sizes.roundtrips)?;
                scenarios[first].add(rival.key(), p50);
                scenarios[first + 1].add(rival.key(), p99);
            }
        }
        for rival in rivals.iter().filter(|_| args.runs("pipelined_64")) {
            scenarios[4].add(rival.key(), pipelined(rival.as_ref(), 64, sizes.pipelined)?);
        }
        for rival in rivals.iter().filter(|_| args.runs("connect")) {
            scenarios[5].add(rival.key(), connect(rival.as_ref(), sizes.connects)?);
        }
        for rival in rivals.iter().filter(|_| args.runs("conn_memory")) {
            // A fresh instance each time: a broker that already served
            // connections reuses the memory they freed, and would measure ~0.
            let fresh = starter.start(rival.key())?;
            scenarios[6].add(
                rival.key(),
                conn_memory(fresh.as_ref(), sizes.idle_connections)?,
            );
        }
        for rival in rivals.iter().filter(|_| args.runs("broadcast_100")) {
            scenarios[7].add(
                rival.key(),
                broadcast(rival.as_ref(), 100, sizes.broadcasts)?,
            );
        }
        for rival in rivals.iter().filter(|r| !r.key().ends_with("_relay")) {
            if args.runs("match_scale") {
                let (busy, empty) = match_scale(&starter, rival.key(), sizes.broadcasts)?;
                scenarios[9].add(rival.key(), busy);
                scenarios[10].add(rival.key(), empty);
            }
        }
        if args.runs("sdk_roundtrip") || args.runs("sdk_pipelined") {
            // The SDK on both ends, and the thin client, on one fresh broker.
            let fresh = starter.start("pidbus")?;
            let socket = fresh
                .socket_path()
                .ok_or_else(|| io::Error::other("pidbus has no native socket"))?;
            let sdk = sdk::measure(socket, sizes.roundtrips, sizes.pipelined)?;
            let (thin, _) = roundtrip(fresh.as_ref(), 64, sizes.roundtrips)?;
            let thin_pipelined = pipelined(fresh.as_ref(), 64, sizes.pipelined)?;
            scenarios[11].add("pidbus", sdk.roundtrip_p50_us);
            scenarios[11].add("thin_client", thin);
            scenarios[12].add("pidbus", sdk.pipelined_per_s);
            scenarios[12].add("thin_client", thin_pipelined);
        }
        if args.runs("sdk_on_dbus_broker_roundtrip")
            && rivals.iter().any(|r| r.key() == "dbus_broker")
        {
            // The pidbus SDK and zbus, each a service and a client of its
            // own, one after the other on one fresh dbus-broker; which goes
            // first alternates, so neither always gets the colder broker.
            let fresh = starter.start("dbus_broker")?;
            let socket = fresh
                .socket_path()
                .ok_or_else(|| io::Error::other("dbus-broker has no socket"))?;
            let (roundtrips, pipelined) = (sizes.roundtrips, sizes.pipelined);
            let (sdk, zbus) = if repeat % 2 == 0 {
                let sdk = sdk::measure(socket, roundtrips, pipelined)?;
                (sdk, sdk::measure_zbus(socket, roundtrips, pipelined)?)
            } else {
                let zbus = sdk::measure_zbus(socket, roundtrips, pipelined)?;
                (sdk::measure(socket, roundtrips, pipelined)?, zbus)
            };
            scenarios[13].add("pidbus", sdk.roundtrip_p50_us);
            scenarios[13].add("zbus", zbus.roundtrip_p50_us);
            scenarios[14].add("pidbus", sdk.pipelined_per_s);
            scenarios[14].add("zbus", zbus.pipelined_per_s);
        }
        if args.runs("sender_check") {
            let (on, off) = sender_check(rivals[0].as_ref(), unchecked.as_ref(), sizes.roundtrips)?;
            scenarios[8].add(rivals[0].key(), on);
            scenarios[8].add(unchecked.key(), off);
        }
    }
    scenarios.retain(|s| args.runs(s.name));
    eprintln!("measured in {:.1} s", started.elapsed().as_secs_f64());
    report::print_table(&scenarios, &machine_description());
    report::print_targets(&scenarios);
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&scenarios))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg(&scenarios))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Every rival, in the order they run: pidbus's native face, the two raw
/// relays, pidbus's D-Bus face, then the D-Bus brokers.
const RIVALS: [&str; 6] = [
    "pidbus",
    "raw_relay",
    "batch_relay",
    "pidbus_dbus",
    "dbus_broker",
    "dbus_daemon",
];

/// Starts private instances of the rivals, each in its own directory.
struct Starter {
    pidbusd: PathBuf,
    policy: Option<PathBuf>,
    me: PathBuf,
    dir: PathBuf,
    next: std::cell::Cell<usize>,
}

impl Starter {
    fn start(&self, key: &str) -> io::Result<Box<dyn Rival>> {
        let n = self.next.get();
        self.next.set(n + 1);
        let dir = self.dir.join(format!("{key}-{n}"));
        std::fs::create_dir_all(&dir)?;
        Ok(match key {
            "pidbus" | "pidbus_unchecked" => {
                let checked = key == "pidbus";
                let policy = self.policy.as_deref();
                Box::new(pidbus::PidbusRival::start(
                    &self.pidbusd,
                    &dir,
                    checked,
                    policy,
                )?)
            }
            "raw_relay" => Box::new(relay::RelayRival::start(
                &self.me,
                &dir,
                relay::Mode::OnePerCall,
            )?),
            "batch_relay" => Box::new(relay::RelayRival::start(
                &self.me,
                &dir,
                relay::Mode::Batched,
            )?),
            "pidbus_dbus" => Box::new(dbus::DbusRival::pidbus_dbus(
                &self.pidbusd,
                &dir,
                self.policy.as_deref(),
            )?),
            "dbus_broker" => Box::new(dbus::DbusRival::dbus_broker(&dir)?),
            "dbus_daemon" => Box::new(dbus::DbusRival::dbus_daemon(&dir)?),
            other => return Err(io::Error::other(format!("unknown rival {other}"))),
        })
    }
}

/// Sequential calls; (p50, p99) latency in µs.
fn roundtrip(rival: &dyn Rival, size: usize, count: usize) -> io::Result<(f64, f64)> {
    let mut latencies = roundtrip_latencies(rival, size, count)?;
    Ok((
        percentile(&mut latencies, 0.50),
        percentile(&mut latencies, 0.99),
    ))
}

/// The latency of each of `count` sequential calls, after a warm-up.
fn roundtrip_latencies(rival: &dyn Rival, size: usize, count: usize) -> io::Result<Vec<Duration>> {
    let mut client = rival.connect()?;
    let payload = vec![0x5a; size];
    for serial in 0..200 {
        client.call(serial, &payload)?;
        client.reply()?;
    }
    let mut latencies = Vec::with_capacity(count);
    for serial in 0..count {
        let start = Instant::now();
        client.call(serial as u32, &payload)?;
        client.reply()?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

/// The `q` quantile of `latencies`, in µs.
fn percentile(latencies: &mut [Duration], q: f64) -> f64 {
    latencies.sort();
    latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
}

/// `roundtrip_64` checked and unchecked in many short alternating blocks,
/// each side's latencies pooled: drift in the machine's speed (which on a
/// shared VM exceeds the effect measured) then hits both sides alike.
/// Returns the (checked, unchecked) p50 in µs.
fn sender_check(
    checked: &dyn Rival,
    unchecked: &dyn Rival,
    count: usize,
) -> io::Result<(f64, f64)> {
    const BLOCKS: usize = 10;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..BLOCKS {
        on.extend(roundtrip_latencies(checked, 64, count / BLOCKS)?);
        off.extend(roundtrip_latencies(unchecked, 64, count / BLOCKS)?);
    }
    Ok((percentile(&mut on, 0.5), percentile(&mut off, 0.5)))
}

/// `window` calls in flight; calls per second.
fn pipelined(rival: &dyn Rival, window: usize, count: usize) -> io::Result<f64> {
    let mut client = rival.connect()?;
    let payload = vec![0x5a; 64];
    let start = Instant::now();
    let mut sent = 0;
    while sent < window.min(count) {
        client.call(sent as u32, &payload)?;
        sent += 1;
    }
    for _ in 0..count {
        client.reply()?;
        if sent < count {
            client.call(sent as u32, &payload)?;
            sent += 1;
        }
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// Connect, handshake, disconnect; connections per second.
fn connect(rival: &dyn Rival, count: usize) -> io::Result<f64> {
    let start = Instant::now();
    for _ in 0..count {
        drop(rival.connect()?);
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// Broker memory growth per idle, handshaken connection, in bytes.
fn conn_memory(rival: &dyn Rival, count: usize) -> io::Result<f64> {
    let before = wire::rss_bytes(rival.broker_pid())?;
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        open.push(rival.connect()?);
    }
    let after = wire::rss_bytes(rival.broker_pid())?;
    drop(open);
    Ok(after.saturating_sub(before) as f64 / count as f64)
}

/// One emitter, `subscribers` subscribers; deliveries per second. Signals
/// go out in windows of 64, each fully delivered before the next, so no
/// broker ever has to drop or disconnect a subscriber that falls behind.
fn broadcast(rival: &dyn Rival, subscribers: usize, signals: usize) -> io::Result<f64> {
    let mut subs = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let sub = rival.subscriber()?;
        sub.socket().set_nonblocking()?;
        subs.push(sub);
    }
    let mut emitter = rival.emitter()?;
    let payload = vec![0x5a; 64];
    const WINDOW: usize = 64;
    let start = Instant::now();
    let mut emitted = 0;
    while emitted < signals {
        let batch = WINDOW.min(signals - emitted);
        for _ in 0..batch {
            emitter.emit(&payload)?;
        }
        emitted += batch;
        let mut missing = batch * subscribers;
        while missing > 0 {
            let fds: Vec<_> = subs.iter().map(|s| s.socket().as_fd()).collect();
            let ready = wire::readable(&fds, Duration::from_secs(30))?;
            if ready.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: {missing} deliveries never arrived", rival.key()),
                ));
            }
            for i in ready {
                missing = missing.saturating_sub(subs[i].count_signals()?);
            }
        }
    }
    Ok((signals * subscribers) as f64 / start.elapsed().as_secs_f64())
}

/// Signal latency (p50, µs) from one emitter to one subscriber, on a
/// fresh instance of `key`: first with 1 000 idle peers holding 10 match
/// rules each that select none of the signals, then on an instance with no
/// other peers. A bus whose signal cost grows with the rules that do not
/// match shows it here.
fn match_scale(starter: &Starter, key: &str, signals: usize) -> io::Result<(f64, f64)> {
    const PEERS: usize = 1_000;
    const RULES: usize = 10;
    let busy = starter.start(key)?;
    let mut idle = Vec::with_capacity(PEERS);
    for _ in 0..PEERS {
        let mut peer = busy.connect()?;
        peer.add_idle_rules(RULES)?;
        idle.push(peer);
    }
    let with_rules = signal_latency(busy.as_ref(), signals)?;
    drop(idle);
    let empty = starter.start(key)?;
    let without = signal_latency(empty.as_ref(), signals)?;
    Ok((with_rules, without))
}

/// p50 of emit-to-receipt times over `count` signals, one at a time.
fn signal_latency(rival: &dyn Rival, count: usize) -> io::Result<f64> {
    let mut sub = rival.subscriber()?;
    sub.socket().set_nonblocking()?;
    let mut emitter = rival.emitter()?;
    let payload = vec![0x5a; 64];
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        emitter.emit(&payload)?;
        let mut got = 0;
        while got == 0 {
            let fd = [sub.socket().as_fd()];
            if wire::readable(&fd, Duration::from_secs(30))?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: a signal never arrived", rival.key()),
                ));
            }
            got = sub.count_signals()?;
        }
        latencies.push(start.elapsed());
    }
    Ok(percentile(&mut latencies, 0.50))
}

/// Builds the release `pidbusd` next to this benchmark and returns its path.
fn build_pidbusd() -> io::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "pidbus-broker",
            "--bin",
            "pidbusd",
        ])
        .status()?;
    if !status.success() {
        return Err(io::Error::other(
            "cargo build --release --bin pidbusd failed",
        ));
    }
    // target/release/deps/bus-HASH → target/release/pidbusd
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| io::Error::other("unexpected benchmark location"))?;
    Ok(release.join("pidbusd"))
}

fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_owned(), |r| r.trim().to_owned());
    format!("{cores} × {cpu}, Linux {kernel}")
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
