//! The greeter of `greeter.rs`, declared instead of built: `#[interface]`
//! on an `impl` block, the caller's verified identity as an argument, the
//! object it serves reached from a method, and an action the bus
//! authorizes before the method runs. Owns `org.example.Greeter` on
//! `/org/example/Greeter`; `greeter-client` calls it through a proxy
//! generated from a trait.
//!
//! ```text
//! cargo run --example greeter-declared &
//! busctl --user introspect org.example.Greeter /org/example/Greeter   # arguments named
//! cargo run --example greeter-client -- Ada
//! ```

use std::process::ExitCode;

use pidbus::{Caller, Connection, MethodError, NameFlags, ObjectHandle, interface};

struct Greeter;

#[interface(name = "org.example.Greeter")]
impl Greeter {
    /// How many greetings so far (read-only for peers; starts at 0).
    #[property]
    fn greetings() -> u32 {
        0
    }

    /// Emitted for each greeting.
    #[signal]
    async fn greeted(object: &ObjectHandle, name: String) -> pidbus::Result<()> {}

    /// Greets `name`, counting greetings in the `Greetings` property and
    /// announcing each with the `Greeted` signal.
    async fn greet(
        &self,
        caller: &Caller,
        object: &ObjectHandle,
        name: String,
    ) -> Result<String, MethodError> {
        let greetings = object.property::<u32>("Greetings")? + 1;
        object.set_property("Greetings", greetings).await?;
        Self::greeted(object, name.clone()).await?;
        Ok(format!("hello {name}, uid {}", caller.uid))
    }

    /// Forgets the count: only for callers the bus's policy lets perform
    /// `org.example.greeter.reset` (decided on their verified identity).
    #[authorize("org.example.greeter.reset")]
    async fn reset(&self, object: &ObjectHandle) -> Result<(), MethodError> {
        Ok(object.set_property("Greetings", 0u32).await?)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("greeter-declared: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), pidbus::Error> {
    let bus = Connection::connect_default().await?;
    let _object = bus.serve_interface("/org/example/Greeter", Greeter.into_interface()?)?;
    bus.request_name("org.example.Greeter", NameFlags::default())
        .await?;
    println!("serving org.example.Greeter on {}", bus.unique_id());
    bus.closed().await;
    Ok(())
}
