//! D-Bus message parsing (`pidbus_protocol::dbus::header` and `body`) on
//! arbitrary bytes: it must never panic, a length it accepts must be
//! within the limit, and a header it accepts must survive being written
//! out again (little-endian) and read back unchanged, with its body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pidbus_protocol::dbus::body::{self, Endian};
use pidbus_protocol::dbus::header::{self, FIXED_HEADER_LEN};

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<FIXED_HEADER_LEN>()
        && let Ok(len) = header::message_len(prefix, LIMIT)
    {
        assert!(len <= LIMIT);
    }
    let Ok((parsed, endian, body_at)) = header::parse(data) else {
        return;
    };
    assert!(body_at <= data.len());
    let Ok(converted) = body::check(&parsed.signature, &data[body_at..], endian, parsed.unix_fds)
    else {
        return;
    };
    let body = converted.unwrap_or_else(|| data[body_at..].to_vec());
    let again = header::encode(&parsed, &body);
    let (reparsed, reendian, reat) =
        header::parse(&again).expect("a header written out reads back");
    assert_eq!(reparsed, parsed);
    assert!(matches!(reendian, Endian::Little));
    assert_eq!(&again[reat..], &body[..]);
});
