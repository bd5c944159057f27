//! List the peers on the bus with the blocking API (no async runtime needed).
//!
//! ```text
//! cargo run -p pidbus-examples --example list-peers
//! ```

fn main() -> std::process::ExitCode {
    pidbus_examples::finish("list-peers", run())
}

fn run() -> Result<(), pidbus::Error> {
    let bus = pidbus::blocking::Connection::connect_default()?;
    for peer in bus.peers()? {
        let who = &peer.identity;
        let marker = if peer.id == bus.unique_id() {
            " (me)"
        } else {
            ""
        };
        println!(
            "{}{marker}: pid {} uid {} runs {}",
            peer.id,
            who.pid,
            who.uid,
            who.exe.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
