//! Connect to the bus (async) and print who the broker says we are.
//!
//! ```text
//! cargo run --release --bin pidbusd -- --session &
//! cargo run -p pidbus-examples --example whoami
//! ```

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    pidbus_examples::finish("whoami", run().await)
}

async fn run() -> Result<(), pidbus::Error> {
    // $PIDBUS_ADDRESS if set, else the session bus.
    let bus = pidbus::Connection::connect_default().await?;
    let me = bus.identity();
    println!(
        "connected to {} as {}",
        bus.address().display(),
        bus.unique_id()
    );
    println!(
        "  pid {} uid {} gid {} groups {:?}",
        me.pid, me.uid, me.gid, me.groups
    );
    // The pidfs id identifies this process for the whole boot: unlike the
    // pid, it is never given to another process.
    match me.pidfs_id {
        Some(id) => println!("  pidfs id {id} (boot {})", me.boot_id),
        None => println!("  no pidfs on this kernel; start time {:?}", me.start_time),
    }
    println!("  exe {}", me.exe.as_deref().unwrap_or("(unknown)"));
    println!("  unit {}", me.unit.as_deref().unwrap_or("(none)"));
    Ok(())
}
