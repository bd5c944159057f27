//! Signals: one connection subscribes with a match rule, another emits;
//! only the matching signals arrive.
//!
//! ```text
//! cargo run --release --bin pidbusd -- --session &
//! cargo run --example signals
//! ```

use pidbus::{Connection, MatchRule};

const PATH: &str = "/org/example/Thermometer";
const INTERFACE: &str = "org.example.Thermometer";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pidbus_examples::finish("signals", run().await)
}

async fn run() -> Result<(), pidbus::Error> {
    let listener = Connection::connect_default().await?;
    let emitter = Connection::connect_default().await?;

    // Only "Reading" signals from the emitter's connection, first argument "kitchen".
    let rule = MatchRule {
        sender: Some(emitter.unique_id().to_string()),
        interface: Some(INTERFACE.into()),
        member: Some("Reading".into()),
        arg0: Some("kitchen".into()),
        ..MatchRule::default()
    };
    let mut readings = listener.subscribe(rule).await?;

    emitter
        .emit(PATH, INTERFACE, "Reading", &("cellar", 12.5))
        .await?;
    emitter
        .emit(PATH, INTERFACE, "Alarm", &("kitchen",))
        .await?;
    emitter
        .emit(PATH, INTERFACE, "Reading", &("kitchen", 21.0))
        .await?;

    // Signals from one emitter arrive in order, so the first match is the
    // kitchen reading: the cellar reading and the alarm were filtered out.
    if let Some(signal) = readings.next().await {
        let (room, celsius): (String, f64) = signal.args()?;
        println!(
            "{} from {} on {}: {room} {celsius} °C",
            signal.member, signal.sender, signal.path
        );
    }
    Ok(())
}
