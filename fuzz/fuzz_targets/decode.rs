//! The record decoder on arbitrary bytes: it never panics, and whatever it
//! accepts encodes back to a record that decodes to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pidbus_protocol::{codec, limits};

fuzz_target!(|data: &[u8]| {
    let limit = limits::DEFAULT_MAX_RECORD_SIZE;
    if let Ok(message) = codec::decode(data, limit) {
        // What was small enough to decode may grow on re-encoding only if
        // the encoder and decoder disagree; either way it must round-trip.
        if let Ok(again) = codec::encode(&message, limits::MAX_CONFIGURABLE_RECORD_SIZE) {
            let back = codec::decode(&again, limits::MAX_CONFIGURABLE_RECORD_SIZE)
                .expect("an encoded message decodes");
            assert_eq!(back, message);
        }
    }
});
