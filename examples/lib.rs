//! Runnable examples of the pidbus SDK; see the `[[example]]` targets:
//! `cargo run -p pidbus-examples --example whoami`.
