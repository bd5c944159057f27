//! A service with a privileged method, using the broker as a polkit-style
//! authorization backend. It owns `org.example.Power` and serves
//! `/org/example/Power` with interface `org.example.Power`:
//!
//! - `Status() → "up"`: anyone;
//! - `Reboot() → "rebooting (pretend)"`: only callers the policy allows the
//!   application action `org.example.reboot`. The service asks the broker
//!   about *the caller of this call* (`CallContext::authorize`); the
//!   broker answers from its verified identity of that caller, never from
//!   a PID.
//!
//! ```text
//! cargo run --release --bin pidbusd -- --listen /tmp/bus.sock --policy examples/policy/authz-demo.toml &
//! PIDBUS_ADDRESS=/tmp/bus.sock cargo run --example authz-service &
//! PIDBUS_ADDRESS=/tmp/bus.sock pidbusctl call org.example.Power /org/example/Power org.example.Power Reboot
//! ```

use std::process::ExitCode;

use pidbus::{Connection, MethodError, NameFlags, RequestNameReply, Response};

const NAME: &str = "org.example.Power";
const PATH: &str = "/org/example/Power";
const INTERFACE: &str = "org.example.Power";
const REBOOT: &str = "org.example.reboot";

#[tokio::main]
async fn main() -> ExitCode {
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authz-service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), pidbus::Error> {
    let bus = Connection::connect_default().await?;
    bus.serve(PATH, INTERFACE, |call| async move {
        match call.member() {
            "Status" => Response::new("up"),
            "Reboot" => {
                let answer = call.authorize(REBOOT).await.map_err(|e| {
                    MethodError::failed(
                        "org.example.Error.AuthorizationUnavailable",
                        format!("cannot ask the broker: {e}"),
                    )
                })?;
                if !answer.allowed {
                    return Err(MethodError::access_denied(format!(
                        "uid {} may not {REBOOT} ({})",
                        call.caller().uid,
                        answer.rule
                    )));
                }
                Response::new("rebooting (pretend)")
            }
            other => Err(MethodError::unknown_method(other)),
        }
    })?;
    let flags = NameFlags {
        do_not_queue: true,
        ..NameFlags::default()
    };
    match bus.request_name(NAME, flags).await? {
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => {}
        other => {
            return Err(pidbus::Error::Protocol(format!(
                "{NAME} is taken ({other:?}); is another authz-service running?"
            )));
        }
    }
    println!("authz-service: serving {NAME}");
    std::future::pending::<()>().await;
    Ok(())
}
