//! A client of the `echo` example (blocking API): sends a value, checks it
//! comes back, and asks the service who it thinks we are.
//!
//! ```text
//! cargo run --example echo &
//! cargo run --example echo-client
//! ```

use std::collections::BTreeMap;

use pidbus::blocking::Connection;

fn main() -> std::process::ExitCode {
    pidbus_examples::finish("echo-client", run())
}

fn run() -> Result<(), pidbus::Error> {
    let bus = Connection::connect_default()?;
    let sent: BTreeMap<String, Vec<u32>> = BTreeMap::from([("a".to_owned(), vec![1, 2, 3])]);
    let back: BTreeMap<String, Vec<u32>> = bus.call(
        "org.pidbus.Echo",
        "/org/pidbus/Echo",
        "org.pidbus.Echo",
        "Echo",
        &sent,
    )?;
    println!("Echo({sent:?}) = {back:?}");

    let me: pidbus::CallerFacts = bus.call(
        "org.pidbus.Echo",
        "/org/pidbus/Echo",
        "org.pidbus.Echo",
        "WhoCalledMe",
        &(),
    )?;
    println!(
        "the service says I am {} (uid {}, pid {}, pidfs id {})",
        me.id, me.uid, me.pid, me.pidfs_id
    );
    println!(
        "the broker says I am {} (pid {}, pidfs id {:?})",
        bus.unique_id(),
        bus.identity().pid,
        bus.identity().pidfs_id
    );

    match bus.call::<_, ()>(
        "org.pidbus.Echo",
        "/org/pidbus/Echo",
        "org.pidbus.Echo",
        "Nope",
        &(),
    ) {
        Err(pidbus::Error::UnknownMethod { message, .. }) => {
            println!("Nope() fails as it should: {message}")
        }
        other => println!("Nope() unexpectedly gave {other:?}"),
    }
    Ok(())
}
