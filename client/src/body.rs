//! Message bodies: Rust values in the D-Bus wire format, through
//! [`zvariant`]'s serde support, so the same types serve native and D-Bus
//! peers.
//!
//! A body is a sequence of values; a Rust tuple `(A, B)` is a body of two
//! arguments, a single value one argument, `()` none. As in zbus, a
//! struct's fields are its arguments when it is the whole body.

use std::os::fd::OwnedFd;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zvariant::serialized::{Context, Data};
use zvariant::{DynamicType, LE, Type};

/// A marshalled body: its D-Bus signature and bytes, and the descriptors
/// its `h` values index.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) signature: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Why a value could not be made into a body, or a body into a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The value has no D-Bus representation (e.g. a map with non-basic
    /// keys), or the bytes do not hold what their signature says.
    #[error("{0}")]
    Marshalling(String),
    /// The body's signature is not the one the Rust type expects.
    #[error("expected arguments of signature '{expected}', got '{found}'")]
    Mismatch {
        /// The signature of the Rust type asked for.
        expected: String,
        /// The body's.
        found: String,
    },
}

/// The body signature of `signature`: a struct's fields without its
/// parentheses (the whole body is never one struct, as in zbus).
pub(crate) fn body_signature(signature: &zvariant::Signature) -> String {
    signature.to_string_no_parens()
}

/// Marshals `value` as a body (little-endian, as the bus holds bodies).
pub(crate) fn encode<T: Serialize + DynamicType + ?Sized>(value: &T) -> Result<Encoded, BodyError> {
    let signature = value.signature();
    let data = zvariant::to_bytes_for_signature(Context::new_dbus(LE, 0), &signature, value)
        .map_err(|e| BodyError::Marshalling(e.to_string()))?;
    let fds = data
        .fds()
        .iter()
        .map(|fd| std::os::fd::AsFd::as_fd(fd).try_clone_to_owned())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BodyError::Marshalling(format!("cannot duplicate a descriptor: {e}")))?;
    Ok(Encoded {
        signature: body_signature(&signature),
        bytes: data.bytes().to_vec(),
        fds,
    })
}

/// Reads a body of `signature` as `T`, after checking that `T` is what
/// the body holds. `fds` are the message's descriptors (for `h` values).
pub(crate) fn decode<T: DeserializeOwned + Type>(
    signature: &str,
    bytes: &[u8],
    fds: &[OwnedFd],
) -> Result<T, BodyError> {
    let expected = body_signature(T::SIGNATURE);
    if expected != signature {
        return Err(BodyError::Mismatch {
            expected,
            found: signature.to_owned(),
        });
    }
    let copies = fds
        .iter()
        .map(OwnedFd::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BodyError::Marshalling(format!("cannot duplicate a descriptor: {e}")))?;
    let data = Data::new_fds(bytes, Context::new_dbus(LE, 0), copies);
    let (value, used) = data
        .deserialize_for_signature::<_, T>(T::SIGNATURE)
        .map_err(|e| BodyError::Marshalling(e.to_string()))?;
    if used != bytes.len() {
        return Err(BodyError::Marshalling(format!(
            "{} bytes follow the arguments",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// A caller's verified facts as a D-Bus struct `(suuuauts)`, for a service
/// that tells callers who it thinks they are (a [`Caller`] has optional
/// fields, which D-Bus cannot carry): an absent pid or pidfs id is 0, an
/// unknown executable is empty.
///
/// [`Caller`]: pidbus_protocol::Caller
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, zvariant::Type)]
pub struct CallerFacts {
    /// The caller's unique id (`:1.17`).
    pub id: String,
    /// Its pid as the service sees it (0: not visible there).
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
    /// Its pidfs id (0: unknown).
    pub pidfs_id: u64,
    /// Its executable (empty: unknown).
    pub exe: String,
}

impl From<&pidbus_protocol::Caller> for CallerFacts {
    fn from(caller: &pidbus_protocol::Caller) -> Self {
        CallerFacts {
            id: caller.id.to_string(),
            pid: caller.pid.unwrap_or(0),
            uid: caller.uid,
            gid: caller.gid,
            groups: caller.groups.clone(),
            pidfs_id: caller.pidfs_id.unwrap_or(0),
            exe: caller.exe.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_are_argument_lists_and_signatures_are_checked() {
        let body = encode(&("play", 3u32)).unwrap();
        assert_eq!(body.signature, "su");
        assert_eq!(
            body.bytes,
            [4, 0, 0, 0, b'p', b'l', b'a', b'y', 0, 0, 0, 0, 3, 0, 0, 0]
        );
        let (what, times): (String, u32) = decode("su", &body.bytes, &[]).unwrap();
        assert_eq!((what.as_str(), times), ("play", 3));
        let error = decode::<u32>("su", &body.bytes, &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "expected arguments of signature 'u', got 'su'"
        );
        assert_eq!(encode(&()).unwrap().signature, "");
        let one: String = decode("s", &encode(&"x").unwrap().bytes, &[]).unwrap();
        assert_eq!(one, "x");
        let single: (String,) = decode("s", &encode(&("x",)).unwrap().bytes, &[]).unwrap();
        assert_eq!(single.0, "x");
    }

    #[test]
    fn bytes_agree_with_the_protocol_crate() {
        use pidbus_protocol::dbus::value::{Value, unmarshal};
        let body = encode(&(
            vec![1u32, 2],
            std::collections::HashMap::from([("k", 5i64)]),
        ))
        .unwrap();
        assert_eq!(body.signature, "aua{sx}");
        let values = unmarshal(&body.signature, &body.bytes).unwrap();
        assert_eq!(
            values[0],
            Value::Array {
                element: "u".into(),
                items: vec![Value::UInt32(1), Value::UInt32(2)]
            }
        );
    }
}
