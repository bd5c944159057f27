//! Runnable examples of the pidbus SDK; see the `[[example]]` targets:
//! `cargo run -p pidbus-examples --example whoami`.

use std::process::ExitCode;

/// The exit of an example: its error printed for a person (not as Debug),
/// after the example's name, and a failure status.
pub fn finish(example: &str, result: Result<(), pidbus::Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{example}: {e}");
            ExitCode::FAILURE
        }
    }
}
