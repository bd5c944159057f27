//! The verified caller on a call: pidbus's extension header field.
//!
//! A receiver that asked for it (`org.pidbus.Bus1.AttachCaller`; the SDK
//! always does) finds in every method call it receives the header field
//! [`CALLER_FIELD`], of type `s`, written by the broker from the caller's
//! verified identity. A sender can never set it: the broker writes every
//! message it delivers anew, and keeps only the header fields it knows.
//!
//! The value is `key=value` pairs separated by single spaces, in this
//! order, each present only when known:
//! `uid=0 gid=0 groups=0,4 pid=1234 pidfs_id=5678 exe=/usr/bin/x
//! unit=x.service label=unconfined`. `pid` is the caller's pid as seen
//! from the receiver's pid namespace. In values, a space, `%`, `=` and
//! control characters are written `%XX` (hex). Unknown keys are to be
//! ignored: keys may be added.
//!
//! Why one string: the field must not disturb the D-Bus libraries that
//! opt in. sd-bus drops a message whose unknown field holds an array or a
//! struct, libdbus and GLib keep any basic type, and a string is what
//! every language can read.
//!
//! Only a message from a pidbus broker may be trusted to carry it:
//! dbus-broker passes unknown fields through from the sender.

use crate::message::{Caller, PeerId};

/// The header field code (unused by the D-Bus specification, which
/// defines 1 to 9; libdbus reserves 10).
pub const CALLER_FIELD: u8 = 0x70;

/// Writes `caller` (all but its unique name, which is the message's
/// `SENDER`) as the field's value.
pub fn encode(caller: &Caller) -> String {
    let mut out = format!("uid={} gid={}", caller.uid, caller.gid);
    if !caller.groups.is_empty() {
        let groups: Vec<String> = caller.groups.iter().map(u32::to_string).collect();
        out.push_str(" groups=");
        out.push_str(&groups.join(","));
    }
    if let Some(pid) = caller.pid {
        out.push_str(&format!(" pid={pid}"));
    }
    if let Some(id) = caller.pidfs_id {
        out.push_str(&format!(" pidfs_id={id}"));
    }
    let texts = [
        ("exe", &caller.exe),
        ("unit", &caller.unit),
        ("label", &caller.label),
    ];
    for (key, value) in texts {
        if let Some(value) = value {
            out.push(' ');
            out.push_str(key);
            out.push('=');
            escape_into(&mut out, value);
        }
    }
    out
}

/// Why a field's value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pidbus caller field: {0}")]
pub struct CallerFieldError(String);

/// Reads the field's value of a call sent by `sender`.
pub fn decode(sender: PeerId, text: &str) -> Result<Caller, CallerFieldError> {
    let mut caller = Caller {
        id: sender,
        pid: None,
        uid: u32::MAX,
        gid: u32::MAX,
        groups: Vec::new(),
        pidfs_id: None,
        exe: None,
        unit: None,
        label: None,
    };
    let (mut uid, mut gid) = (None, None);
    for pair in text.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| CallerFieldError(format!("{pair:?} is not key=value")))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| CallerFieldError(format!("{key}={v:?} is not a number")))
        };
        let small = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| CallerFieldError(format!("{key}={v:?} is not a 32-bit number")))
        };
        match key {
            "uid" => uid = Some(small(value)?),
            "gid" => gid = Some(small(value)?),
            "groups" => {
                caller.groups = value.split(',').map(small).collect::<Result<_, _>>()?;
            }
            "pid" => caller.pid = Some(small(value)?),
            "pidfs_id" => caller.pidfs_id = Some(number(value)?),
            "exe" => caller.exe = Some(unescape(value)?),
            "unit" => caller.unit = Some(unescape(value)?),
            "label" => caller.label = Some(unescape(value)?),
            // Keys added later are skipped.
            _ => {}
        }
    }
    match (uid, gid) {
        (Some(uid), Some(gid)) => {
            caller.uid = uid;
            caller.gid = gid;
            Ok(caller)
        }
        _ => Err(CallerFieldError("uid and gid are missing".into())),
    }
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        if c == ' ' || c == '%' || c == '=' || c.is_control() {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

fn unescape(value: &str) -> Result<String, CallerFieldError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| CallerFieldError(format!("bad escape in {value:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| CallerFieldError(format!("{value:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            id: PeerId(7),
            pid: Some(4321),
            uid: 1000,
            gid: 100,
            groups: vec![100, 27],
            pidfs_id: Some(99),
            exe: Some("/opt/my app/bin/100%=x\n".into()),
            unit: Some("a.service".into()),
            label: Some("unconfined".into()),
        }
    }

    #[test]
    fn a_caller_survives_the_field_whatever_its_paths_hold() {
        let text = encode(&caller());
        assert!(text.starts_with("uid=1000 gid=100 groups=100,27 pid=4321 pidfs_id=99 exe="));
        assert!(!text.contains('\n'));
        assert_eq!(decode(PeerId(7), &text), Ok(caller()));
    }

    #[test]
    fn unknown_facts_are_left_out_and_unknown_keys_skipped() {
        let bare = Caller {
            pid: None,
            groups: Vec::new(),
            pidfs_id: None,
            exe: None,
            unit: None,
            label: None,
            ..caller()
        };
        assert_eq!(encode(&bare), "uid=1000 gid=100");
        assert_eq!(decode(PeerId(7), "uid=1000 gid=100 later=1"), Ok(bare));
    }

    #[test]
    fn a_broken_field_is_an_error_not_a_guess() {
        for text in [
            "",
            "gid=1",
            "uid=x gid=1",
            "uid=1 gid=1 exe=%G1",
            "uid=1 gid=1 pid",
        ] {
            assert!(decode(PeerId(1), text).is_err(), "{text:?}");
        }
    }
}
