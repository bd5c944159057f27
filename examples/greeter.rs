//! An interface declared once with the SDK: a typed method, a property and
//! a signal, served with introspection and `org.freedesktop.DBus.Properties`
//! so that `busctl introspect`, `gdbus` and typed proxies see it. Owns
//! `org.example.Greeter` on `/org/example/Greeter`.
//!
//! ```text
//! cargo run --example greeter &
//! pidbusctl introspect org.example.Greeter /org/example/Greeter
//! pidbusctl call org.example.Greeter /org/example/Greeter org.example.Greeter Greet s Ada
//! pidbusctl get-property org.example.Greeter /org/example/Greeter org.example.Greeter Greetings
//! ```

use std::process::ExitCode;

use pidbus::{Access, Connection, Interface, NameFlags};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("greeter: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), pidbus::Error> {
    let bus = Connection::connect_default().await?;
    let greeter = Interface::new("org.example.Greeter")?
        .method("Greet", |call, (name,): (String,)| async move {
            // The caller, as the broker verified it: no second round trip.
            Ok(format!("hello {name}, uid {}", call.caller().uid))
        })
        .property("Greetings", Access::Read, 0u32)
        .signal::<(String,)>("Greeted");
    let object = bus.serve_interface("/org/example/Greeter", greeter)?;
    bus.request_name("org.example.Greeter", NameFlags::default())
        .await?;
    println!("serving org.example.Greeter on {}", bus.unique_id());
    // Count greetings as they are emitted by the service itself.
    let mut greeted = 0u32;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        greeted += 1;
        object.set_property("Greetings", greeted).await?;
        object.emit("Greeted", &("the minute",)).await?;
    }
}
