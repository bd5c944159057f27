//! pidbusctl against the real broker and the `echo` example.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use pidbus_tests::{Broker, binary, pidbusctl};

/// The `echo` example, built by `cargo test` next to the test binaries.
fn example(name: &str) -> PathBuf {
    let path = binary("pidbusd").with_file_name("examples").join(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    path
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pidbusctl_calls_the_echo_example_and_prints_the_json_back() {
    let broker = Broker::start();
    let mut echo = Running(
        Command::new(example("echo"))
            .env("PIDBUS_ADDRESS", broker.socket())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(echo.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("serving org.pidbus.Echo"), "{ready:?}");

    let call = [
        "call",
        "org.pidbus.Echo",
        "/org/pidbus/Echo",
        "org.pidbus.Echo",
        "Echo",
    ];
    let (code, out, err) = pidbusctl(
        broker.socket(),
        &[&call[..], &[r#"{"a":[1,2,3]}"#]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "{\"a\":[1,2,3]}\n");

    let (code, out, err) = pidbusctl(broker.socket(), &["--json", "names"]);
    assert_eq!(code, 0, "{err}");
    let names: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(names[0]["name"], "org.pidbus.Echo");
    assert!(names[0]["owner"].as_str().unwrap().starts_with(':'));
    assert_eq!(names[0]["queue"], serde_json::json!([]));

    let who = [
        "call",
        "org.pidbus.Echo",
        "/org/pidbus/Echo",
        "org.pidbus.Echo",
        "WhoCalledMe",
    ];
    let (code, out, _) = pidbusctl(broker.socket(), &who);
    assert_eq!(code, 0);
    let caller: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(caller["exe"], binary("pidbusctl").to_str().unwrap());

    let (code, _, err) = pidbusctl(
        broker.socket(),
        &["call", "org.nobody.Home", "/", "org.a.B", "C"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("nobody owns the name org.nobody.Home"),
        "{err}"
    );
    let (code, _, err) = pidbusctl(broker.socket(), &[&call[..], &["{not json"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("not valid JSON"), "{err}");
}
