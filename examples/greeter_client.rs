//! Calls the greeter (`greeter` or `greeter-declared`) through a typed
//! proxy generated from a trait: `greeter-client [NAME]`.

use std::process::ExitCode;

use pidbus::Connection;

#[pidbus::proxy(
    interface = "org.example.Greeter",
    default_service = "org.example.Greeter",
    default_path = "/org/example/Greeter"
)]
trait Greeter {
    /// `Greet(s name) → s`.
    async fn greet(&self, name: String) -> pidbus::Result<String>;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "world".to_owned());
    match greet(name).await {
        Ok(greeting) => {
            println!("{greeting}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("greeter-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn greet(name: String) -> pidbus::Result<String> {
    let bus = Connection::connect_default().await?;
    GreeterProxy::connect(&bus)?.greet(name).await
}
