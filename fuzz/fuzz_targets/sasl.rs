//! The D-Bus socket's SASL handshake (`pidbus_broker::dbus::sasl`) on
//! arbitrary bytes, fed as reads would bring them: it must never panic,
//! never claim more bytes than it was given, and end (done or refused)
//! within the bytes it gets.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pidbus_broker::dbus::sasl::{Handshake, Step};

fuzz_target!(|data: &[u8]| {
    let mut sasl = Handshake::new(1000, "0123456789abcdef0123456789abcdef");
    let mut rest = data;
    loop {
        match sasl.feed(rest) {
            Ok((step, used)) => {
                assert!(used <= rest.len(), "used {used} of {} bytes", rest.len());
                rest = &rest[used..];
                if matches!(step, Step::Done(_)) || used == 0 {
                    break;
                }
            }
            Err(_) => break,
        }
    }
});
