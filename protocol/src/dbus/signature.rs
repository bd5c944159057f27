//! D-Bus type signatures: checking them, and splitting them into their
//! complete types.
//!
//! The rules are the specification's: at most 255 bytes; only the type
//! codes `ybnqiuxtdhsogv` and the containers `a`, `(…)`, `{…}`; a struct
//! holds at least one type; a dict entry holds a basic key and one value
//! and appears only as an array's element; arrays and structs nest at most
//! 32 deep each.

use std::fmt;

/// Longest signature, in bytes.
pub const MAX_SIGNATURE_LEN: usize = 255;

/// Deepest nesting of arrays (and, separately, of structs and dict entries).
pub const MAX_CONTAINER_DEPTH: usize = 32;

/// A signature broke the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid signature {signature:?}: {reason}")]
pub struct SignatureError {
    /// The signature (truncated to a readable length).
    pub signature: String,
    /// Which rule it broke.
    pub reason: String,
}

impl SignatureError {
    fn new(signature: &[u8], reason: impl Into<String>) -> Self {
        SignatureError {
            signature: String::from_utf8_lossy(&signature[..signature.len().min(80)]).into_owned(),
            reason: reason.into(),
        }
    }
}

/// Whether `code` is a basic type: one that may be a dict entry's key.
pub fn is_basic(code: u8) -> bool {
    matches!(
        code,
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b'h' | b's' | b'o' | b'g'
    )
}

/// Alignment in bytes of a value whose type starts with `code`.
pub fn alignment(code: u8) -> usize {
    match code {
        b'y' | b'g' | b'v' => 1,
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        _ => 8,
    }
}

/// Checks a whole signature: any number of complete types (a message body's
/// signature may be empty).
pub fn validate(signature: &[u8]) -> Result<(), SignatureError> {
    if signature.len() > MAX_SIGNATURE_LEN {
        return Err(SignatureError::new(
            signature,
            format!(
                "it is {} bytes long; the limit is {MAX_SIGNATURE_LEN}",
                signature.len()
            ),
        ));
    }
    let mut at = 0;
    while at < signature.len() {
        at = complete_type_end(signature, at)?;
    }
    Ok(())
}

/// Checks that `signature` is exactly one complete type (as a variant's
/// signature must be).
pub fn validate_single(signature: &[u8]) -> Result<(), SignatureError> {
    validate(signature)?;
    if signature.is_empty() {
        return Err(SignatureError::new(
            signature,
            "a single type is needed, found none",
        ));
    }
    if complete_type_end(signature, 0)? != signature.len() {
        return Err(SignatureError::new(
            signature,
            "a single complete type is needed, found several",
        ));
    }
    Ok(())
}

/// The end (exclusive) of the complete type starting at `start`.
pub fn complete_type_end(signature: &[u8], start: usize) -> Result<usize, SignatureError> {
    let mut depth = Depth::default();
    end_of(signature, start, &mut depth)
}

/// The complete types of a valid signature, in order.
pub fn complete_types(signature: &str) -> Result<Vec<&str>, SignatureError> {
    validate(signature.as_bytes())?;
    let mut types = Vec::new();
    let mut at = 0;
    while at < signature.len() {
        let end = complete_type_end(signature.as_bytes(), at)?;
        types.push(&signature[at..end]);
        at = end;
    }
    Ok(types)
}

#[derive(Default)]
struct Depth {
    arrays: usize,
    structs: usize,
}

fn end_of(sig: &[u8], at: usize, depth: &mut Depth) -> Result<usize, SignatureError> {
    let Some(&code) = sig.get(at) else {
        return Err(SignatureError::new(
            sig,
            "it ends where a type was expected",
        ));
    };
    match code {
        b'a' => {
            depth.arrays += 1;
            if depth.arrays > MAX_CONTAINER_DEPTH {
                return Err(SignatureError::new(
                    sig,
                    format!("arrays nest more than {MAX_CONTAINER_DEPTH} deep"),
                ));
            }
            let end = if sig.get(at + 1) == Some(&b'{') {
                dict_entry_end(sig, at + 1, depth)?
            } else {
                end_of(sig, at + 1, depth)?
            };
            depth.arrays -= 1;
            Ok(end)
        }
        b'(' => {
            enter_struct(sig, depth)?;
            let mut next = at + 1;
            if sig.get(next) == Some(&b')') {
                return Err(SignatureError::new(
                    sig,
                    "a struct must hold at least one type",
                ));
            }
            while sig.get(next) != Some(&b')') {
                next = end_of(sig, next, depth)?;
            }
            depth.structs -= 1;
            Ok(next + 1)
        }
        b'{' => Err(SignatureError::new(
            sig,
            "a dict entry '{…}' may only be the element of an array",
        )),
        b')' | b'}' => Err(SignatureError::new(
            sig,
            format!("unbalanced {:?}", char::from(code)),
        )),
        b'v' => Ok(at + 1),
        code if is_basic(code) => Ok(at + 1),
        other => Err(SignatureError::new(
            sig,
            format!("{:?} is not a D-Bus type code", char::from(other)),
        )),
    }
}

fn dict_entry_end(sig: &[u8], at: usize, depth: &mut Depth) -> Result<usize, SignatureError> {
    enter_struct(sig, depth)?;
    let key = *sig
        .get(at + 1)
        .ok_or_else(|| SignatureError::new(sig, "a dict entry ends before its key"))?;
    if !is_basic(key) {
        return Err(SignatureError::new(
            sig,
            format!(
                "a dict entry's key must be a basic type, not {:?}",
                char::from(key)
            ),
        ));
    }
    let value_end = end_of(sig, at + 2, depth)?;
    if sig.get(value_end) != Some(&b'}') {
        return Err(SignatureError::new(
            sig,
            "a dict entry holds exactly a key and a value",
        ));
    }
    depth.structs -= 1;
    Ok(value_end + 1)
}

fn enter_struct(sig: &[u8], depth: &mut Depth) -> Result<(), SignatureError> {
    depth.structs += 1;
    if depth.structs > MAX_CONTAINER_DEPTH {
        return Err(SignatureError::new(
            sig,
            format!("structs nest more than {MAX_CONTAINER_DEPTH} deep"),
        ));
    }
    Ok(())
}

/// A checked signature, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature(String);

impl Signature {
    /// Checks `text` and wraps it.
    pub fn new(text: &str) -> Result<Self, SignatureError> {
        validate(text.as_bytes())?;
        Ok(Signature(text.to_owned()))
    }

    /// The signature's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_signatures() {
        for good in [
            "",
            "s",
            "su",
            "a{sv}",
            "(ii)",
            "aa(sa{ys})v",
            "a{oa{sa{sv}}}",
            "ah",
        ] {
            assert_eq!(validate(good.as_bytes()), Ok(()), "{good}");
        }
        assert_eq!(
            complete_types("sa{sv}(ii)u").unwrap(),
            ["s", "a{sv}", "(ii)", "u"]
        );
    }

    #[test]
    fn bad_signatures_say_why() {
        for (bad, why) in [
            ("()", "at least one"),
            ("a", "ends where"),
            ("{sv}", "only be the element"),
            ("a{vs}", "basic type"),
            ("a{sss}", "exactly a key"),
            ("(s", "ends where"),
            ("s)", "unbalanced"),
            ("z", "not a D-Bus type"),
        ] {
            let error = validate(bad.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let deep_arrays = "a".repeat(33) + "s";
        assert!(validate(deep_arrays.as_bytes()).is_err());
        let ok_arrays = "a".repeat(32) + "s";
        assert!(validate(ok_arrays.as_bytes()).is_ok());
        let deep_structs = "(".repeat(33) + "s" + &")".repeat(33);
        assert!(validate(deep_structs.as_bytes()).is_err());
        assert!(validate("s".repeat(256).as_bytes()).is_err());
        assert!(validate_single(b"ss").is_err());
        assert!(validate_single(b"").is_err());
        assert!(validate_single(b"a{sv}").is_ok());
    }
}
