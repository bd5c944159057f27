//! A D-Bus peer written with zbus, as a Rust program using it would be,
//! for the tests of pidbus's D-Bus face. Prints one JSON line per result.
//!
//! - `zbus-peer service ADDRESS NAME`: owns NAME and serves
//!   `org.pidbus.Zbus` at `/org/pidbus/Zbus` (`Add(xx) → x`, `Echo(s) → s`,
//!   `Fail()` with `org.pidbus.Error.Zbus`, `Emit(s)` emitting the signal
//!   `Said(s)`, `Caller() → s` the sender's unique name) until killed.
//! - `zbus-peer client ADDRESS NAME PATH IFACE`: calls `Add(40, 2)` and
//!   `Echo("zbus")` of NAME at PATH, and asks the bus who owns NAME.

use std::process::ExitCode;

use serde_json::json;
use zbus::{interface, message::Header, object_server::SignalEmitter};

struct Zbus;

#[interface(name = "org.pidbus.Zbus")]
impl Zbus {
    fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    fn echo(&self, text: String) -> String {
        text
    }

    fn fail(&self) -> zbus::fdo::Result<()> {
        Err(zbus::fdo::Error::Failed("as asked".into()))
    }

    async fn emit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        text: String,
    ) -> zbus::fdo::Result<()> {
        Self::said(&emitter, &text).await?;
        Ok(())
    }

    fn caller(&self, #[zbus(header)] header: Header<'_>) -> String {
        header.sender().map(|s| s.to_string()).unwrap_or_default()
    }

    #[zbus(signal)]
    async fn said(emitter: &SignalEmitter<'_>, text: &str) -> zbus::Result<()>;
}

async fn service(address: &str, name: &str) -> zbus::Result<()> {
    let connection = zbus::connection::Builder::address(address)?
        .name(name)?
        .serve_at("/org/pidbus/Zbus", Zbus)?
        .build()
        .await?;
    let unique = connection.unique_name().map(|n| n.to_string());
    println!("{}", json!({"ready": name, "unique": unique}));
    std::future::pending::<()>().await;
    Ok(())
}

async fn client(address: &str, name: &str, path: &str, interface: &str) -> zbus::Result<()> {
    let connection = zbus::connection::Builder::address(address)?.build().await?;
    let proxy = zbus::Proxy::new(&connection, name, path, interface).await?;
    let sum: i64 = proxy.call("Add", &(40i64, 2i64)).await?;
    let echoed: String = proxy.call("Echo", &("zbus",)).await?;
    let bus = zbus::fdo::DBusProxy::new(&connection).await?;
    let owner = bus.get_name_owner(name.try_into()?).await?;
    let error = match proxy.call::<_, _, ()>("Fail", &()).await {
        Err(zbus::Error::MethodError(error_name, message, _)) => {
            json!({"name": error_name.to_string(), "message": message})
        }
        other => json!({"unexpected": format!("{other:?}")}),
    };
    println!(
        "{}",
        json!({"sum": sum, "echoed": echoed, "owner": owner.to_string(), "error": error})
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("zbus-peer: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["service", address, name] => service(address, name).await,
            ["client", address, name, path, interface] => {
                client(address, name, path, interface).await
            }
            _ => {
                eprintln!("usage: zbus-peer service ADDRESS NAME | client ADDRESS NAME PATH IFACE");
                std::process::exit(2);
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zbus-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
