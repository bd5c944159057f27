//! The echo service: owns `org.pidbus.Echo` and serves the object
//! `/org/pidbus/Echo` with interface `org.pidbus.Echo`:
//!
//! - `Echo(any) → the same value` (descriptors passed with the call come
//!   back with the reply);
//! - `WhoCalledMe() → the caller's identity` exactly as the broker
//!   delivered it with the call (unique id, uid, gid, groups, pid as seen
//!   from here, pidfs id, exe, unit).
//!
//! ```text
//! cargo run --release --bin pidbusd -- --session &
//! cargo run --example echo
//! ```

use std::process::ExitCode;

use pidbus::{Connection, MethodError, NameFlags, RequestNameReply, Response};

const NAME: &str = "org.pidbus.Echo";
const PATH: &str = "/org/pidbus/Echo";
const INTERFACE: &str = "org.pidbus.Echo";

#[tokio::main]
async fn main() -> ExitCode {
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), pidbus::Error> {
    let bus = Connection::connect_default().await?;
    bus.serve(PATH, INTERFACE, |mut call| async move {
        match call.member() {
            // The body is returned as received: any value echoes unchanged.
            "Echo" => Response::raw(call.signature(), call.body().to_vec())
                .map(|r| r.with_fds(call.take_fds())),
            "WhoCalledMe" => Response::new(&pidbus::CallerFacts::from(call.caller())),
            other => Err(MethodError::unknown_method(other)),
        }
    })?;
    let flags = NameFlags {
        do_not_queue: true,
        ..NameFlags::default()
    };
    match bus.request_name(NAME, flags).await? {
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => {}
        _ => {
            let owner = bus.name_owner(NAME).await?;
            eprintln!("echo: {NAME} is already owned by {owner}");
            return Ok(());
        }
    }
    println!(
        "serving {NAME} at {PATH} as {} on {}",
        bus.unique_id(),
        bus.address().display()
    );
    // Serve until interrupted; the name is released when we exit.
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}
