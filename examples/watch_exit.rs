//! Waiting for a process that is not your child: wait until a service owns
//! its well-known name, then report how its process ends.
//!
//! ```text
//! cargo run --release --bin pidbusd -- --session &
//! cargo run --example echo &            # owns org.pidbus.Echo
//! cargo run --example watch-exit -- org.pidbus.Echo &
//! kill %2                               # watch-exit: "... killed by signal 15"
//! ```
//!
//! The service is not a child of this program, so `waitpid` cannot tell;
//! the broker, which holds the service's pidfd from connect time, can. The
//! [`PidFd`](pidbus::PidFd) it hands out says the same wherever the kernel
//! lets this process read it; the broker's watch answers even from inside
//! another pid namespace.

use pidbus::{BusEvent, Connection};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pidbus_examples::finish("watch-exit", run().await)
}

async fn run() -> Result<(), pidbus::Error> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "org.pidbus.Echo".to_owned());
    let bus = Connection::connect_default().await?;
    wait_for_owner(&bus, &name).await?;

    let watch = bus.watch_process(&name).await?;
    let pidfd = bus.pidfd(&name).await?;
    let pid = pidfd
        .pid()?
        .map_or_else(|| "not visible here".to_owned(), |pid| pid.to_string());
    let pidfs_id = pidfd
        .pidfs_id()
        .map_or_else(|| "unknown".to_owned(), |id| id.to_string());
    println!(
        "{name} is {} (pid {pid}, pidfs id {pidfs_id}); waiting for it to exit",
        watch.process().peer
    );

    watch.exited().await?;
    println!("{name}'s process exited; waiting for its parent to reap it");
    match watch.reaped().await? {
        Some(status) => println!("{name}'s process {status}"),
        None => println!("{name}'s process ended; this kernel cannot tell how (Linux 6.15+ can)"),
    }
    Ok(())
}

/// Returns once somebody owns `name`, waiting for it if needed.
async fn wait_for_owner(bus: &Connection, name: &str) -> Result<(), pidbus::Error> {
    // Listen before asking, so an owner arriving in between is not missed.
    let mut events = bus.name_events().await?;
    match bus.name_owner(name).await {
        Ok(_) => return Ok(()),
        Err(pidbus::Error::NoSuchName { .. }) => println!("waiting for {name} to appear"),
        Err(e) => return Err(e),
    }
    while let Some(event) = events.next().await {
        if let BusEvent::NameOwnerChanged {
            name: changed,
            new_owner: Some(_),
            ..
        } = event
            && changed == name
        {
            return Ok(());
        }
    }
    Err(pidbus::Error::Disconnected { reason: None })
}
