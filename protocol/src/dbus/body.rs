//! Message bodies in the D-Bus wire format: checking a body against its
//! signature (and turning a big-endian one little-endian), and reading the
//! string arguments match rules look at.
//!
//! Every body a peer sends is checked once, where it enters the bus; after
//! that the bus holds bodies little-endian only, so a body crosses between
//! the two faces and between peers without conversion.

use super::signature::{self, MAX_CONTAINER_DEPTH, SignatureError};

/// Longest array, in bytes (the specification's 64 MiB).
pub const MAX_ARRAY_LEN: usize = 1 << 26;

/// Deepest nesting of containers including variants (the specification's 64).
pub const MAX_TOTAL_DEPTH: usize = 2 * MAX_CONTAINER_DEPTH;

/// Highest argument index a match rule may name (`arg63`).
pub const MAX_MATCH_ARG: usize = 63;

/// A body does not hold what its signature says, or breaks a marshalling rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The signature itself is invalid.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The bytes do not follow the rules at some offset.
    #[error("invalid body at byte {offset}: {reason}")]
    Invalid {
        /// Where in the body.
        offset: usize,
        /// What rule the bytes broke.
        reason: String,
    },
}

/// The byte order a message was marshalled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// `l`: little-endian (what the bus holds and sends).
    Little,
    /// `B`: big-endian (accepted from D-Bus peers, converted on entry).
    Big,
}

/// Checks `body` against `signature`, with `unix_fds` descriptors attached
/// (an `h` value must index one of them). A big-endian body comes back
/// converted to little-endian; a little-endian one needs no copy (`None`).
pub fn check(
    signature: &str,
    body: &[u8],
    endian: Endian,
    unix_fds: u32,
) -> Result<Option<Vec<u8>>, BodyError> {
    signature::validate(signature.as_bytes())?;
    let mut reader = Reader::new(body, endian, unix_fds);
    let sig = signature.as_bytes();
    let mut at = 0;
    while at < sig.len() {
        at = reader.value(sig, at, 0)?;
    }
    if reader.pos != body.len() {
        return Err(reader.invalid(format!(
            "{} bytes follow the values the signature {signature:?} describes",
            body.len() - reader.pos
        )));
    }
    Ok(reader.swapped)
}

/// The string-like arguments of a checked little-endian body, by index,
/// with their type code (`None` for an argument that is not a string,
/// object path or signature), up to `last` (at most [`MAX_MATCH_ARG`]).
/// Arguments past the body's end are absent from the result.
pub fn string_args<'a>(signature: &str, body: &'a [u8], last: usize) -> Vec<Option<(u8, &'a str)>> {
    let mut args = Vec::new();
    let mut reader = Reader::new(body, Endian::Little, u32::MAX);
    let sig = signature.as_bytes();
    let mut at = 0;
    while at < sig.len() && args.len() <= last.min(MAX_MATCH_ARG) {
        let code = sig[at];
        let text = match code {
            b's' | b'o' => reader.clone_at().string().ok(),
            b'g' => reader.clone_at().short_string().ok(),
            _ => None,
        }
        .map(|text| (code, text));
        args.push(text);
        match reader.value(sig, at, 0) {
            Ok(next) => at = next,
            Err(_) => break,
        }
    }
    args
}

/// The size of a fixed-size type whose every bit pattern is valid (so an
/// array of it is checked by its length alone): not `b` (0 or 1) nor `h`
/// (an index that must exist).
fn plain_fixed_size(code: u8) -> Option<usize> {
    match code {
        b'y' => Some(1),
        b'n' | b'q' => Some(2),
        b'i' | b'u' => Some(4),
        b'x' | b't' | b'd' => Some(8),
        _ => None,
    }
}

/// Reads marshalled values, checking every rule, and (for a big-endian
/// body) writes the little-endian copy as it goes.
#[derive(Debug, Clone)]
pub(super) struct Reader<'a> {
    data: &'a [u8],
    pub(super) pos: usize,
    endian: Endian,
    unix_fds: u32,
    swapped: Option<Vec<u8>>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a [u8], endian: Endian, unix_fds: u32) -> Self {
        let swapped = (endian == Endian::Big).then(|| data.to_vec());
        Reader {
            data,
            pos: 0,
            endian,
            unix_fds,
            swapped,
        }
    }

    /// A reader of `data` from `pos` on that keeps no converted copy (for
    /// headers, which are read, never forwarded).
    pub(super) fn at(data: &'a [u8], pos: usize, endian: Endian) -> Self {
        Reader {
            data,
            pos,
            endian,
            unix_fds: u32::MAX,
            swapped: None,
        }
    }

    /// A reader at the same place that does not write a copy.
    fn clone_at(&self) -> Reader<'a> {
        Reader {
            swapped: None,
            ..self.clone()
        }
    }

    pub(super) fn invalid(&self, reason: impl Into<String>) -> BodyError {
        BodyError::Invalid {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    /// Skips the padding to `alignment`, which must be zero bytes.
    pub(super) fn align(&mut self, alignment: usize) -> Result<(), BodyError> {
        let padded = self.pos.next_multiple_of(alignment);
        let padding = self
            .data
            .get(self.pos..padded)
            .ok_or_else(|| self.invalid("the body ends inside padding"))?;
        if padding.iter().any(|b| *b != 0) {
            return Err(self.invalid("padding bytes must be zero"));
        }
        self.pos = padded;
        Ok(())
    }

    /// The next `N` bytes of a fixed-size value, aligned, in little-endian
    /// order.
    pub(super) fn fixed<const N: usize>(&mut self) -> Result<[u8; N], BodyError> {
        self.align(N)?;
        let at = self.pos;
        let mut bytes: [u8; N] = self
            .data
            .get(at..at + N)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.invalid(format!("the body ends inside a {N}-byte value")))?;
        if self.endian == Endian::Big {
            bytes.reverse();
            if let Some(copy) = &mut self.swapped {
                copy[at..at + N].copy_from_slice(&bytes);
            }
        }
        self.pos += N;
        Ok(bytes)
    }

    pub(super) fn u32(&mut self) -> Result<u32, BodyError> {
        self.fixed::<4>().map(u32::from_le_bytes)
    }

    pub(super) fn byte(&mut self) -> Result<u8, BodyError> {
        self.fixed::<1>().map(|[b]| b)
    }

    /// A string's bytes (`len` of them and a nul), checked as UTF-8
    /// without interior nuls.
    fn text(&mut self, len: usize) -> Result<&'a str, BodyError> {
        let start = self.pos;
        let bytes = self
            .data
            .get(start..start + len)
            .ok_or_else(|| self.invalid("the body ends inside a string"))?;
        if self.data.get(start + len) != Some(&0) {
            return Err(self.invalid("a string must end with a nul byte"));
        }
        if bytes.contains(&0) {
            return Err(self.invalid("a string holds a nul byte"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| self.invalid("a string is not UTF-8"))?;
        self.pos = start + len + 1;
        Ok(text)
    }

    /// An `s` or `o`: a u32 length, the bytes, a nul.
    pub(super) fn string(&mut self) -> Result<&'a str, BodyError> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    /// A `g`: a u8 length, the bytes, a nul.
    pub(super) fn short_string(&mut self) -> Result<&'a str, BodyError> {
        let len = usize::from(self.byte()?);
        self.text(len)
    }

    /// Reads the value of the complete type at `sig[at..]`; returns where
    /// the next type starts.
    pub(super) fn value(
        &mut self,
        sig: &[u8],
        at: usize,
        depth: usize,
    ) -> Result<usize, BodyError> {
        let code = sig[at];
        match code {
            b'y' => self.fixed::<1>().map(drop)?,
            b'n' | b'q' => self.fixed::<2>().map(drop)?,
            b'i' | b'u' => self.fixed::<4>().map(drop)?,
            b'x' | b't' | b'd' => self.fixed::<8>().map(drop)?,
            b'b' => {
                if self.u32()? > 1 {
                    return Err(self.invalid("a boolean must be 0 or 1"));
                }
            }
            b'h' => {
                let index = self.u32()?;
                if index >= self.unix_fds {
                    return Err(self.invalid(format!(
                        "fd index {index} but the message carries {} descriptors",
                        self.unix_fds
                    )));
                }
            }
            b's' => drop(self.string()?),
            b'o' => {
                let path = self.string()?;
                crate::names::validate_object_path(path)
                    .map_err(|e| self.invalid(e.to_string()))?;
            }
            b'g' => {
                let inner = self.short_string()?;
                signature::validate(inner.as_bytes())?;
            }
            b'v' => {
                let inner = self.short_string()?;
                signature::validate_single(inner.as_bytes())?;
                self.nest(depth)?;
                self.value(inner.as_bytes(), 0, depth + 1)?;
            }
            b'a' => return self.array(sig, at, depth),
            b'(' => {
                self.align(8)?;
                self.nest(depth)?;
                let mut next = at + 1;
                while sig[next] != b')' {
                    next = self.value(sig, next, depth + 1)?;
                }
                return Ok(next + 1);
            }
            b'{' => {
                self.align(8)?;
                let value_at = self.value(sig, at + 1, depth + 1)?;
                let end = self.value(sig, value_at, depth + 1)?;
                return Ok(end + 1);
            }
            other => {
                return Err(self.invalid(format!("unexpected type code {:?}", char::from(other))));
            }
        }
        Ok(at + 1)
    }

    fn nest(&self, depth: usize) -> Result<(), BodyError> {
        if depth >= MAX_TOTAL_DEPTH {
            return Err(self.invalid(format!("values nest more than {MAX_TOTAL_DEPTH} deep")));
        }
        Ok(())
    }

    /// Writes the little-endian copy of the `size`-byte values from here
    /// to `end`.
    fn swap_run(&mut self, size: usize, end: usize) {
        if let Some(copy) = &mut self.swapped {
            for chunk in copy[self.pos..end].chunks_exact_mut(size) {
                chunk.reverse();
            }
        }
    }

    fn array(&mut self, sig: &[u8], at: usize, depth: usize) -> Result<usize, BodyError> {
        let len = self.u32()? as usize;
        if len > MAX_ARRAY_LEN {
            return Err(self.invalid(format!(
                "an array of {len} bytes; the limit is {MAX_ARRAY_LEN}"
            )));
        }
        self.nest(depth)?;
        let element = at + 1;
        let element_end = signature::complete_type_end(sig, at)?;
        self.align(signature::alignment(sig[element]))?;
        let end = self.pos + len;
        if end > self.data.len() {
            return Err(self.invalid("an array runs past the end of the body"));
        }
        if let Some(size) = plain_fixed_size(sig[element]) {
            // Numbers need no check, only a whole number of them (and the
            // byte order turned); a byte array is not walked at all.
            if len % size != 0 {
                return Err(
                    self.invalid(format!("an array of {size}-byte values holds {len} bytes"))
                );
            }
            if size > 1 && self.endian == Endian::Big {
                self.swap_run(size, end);
            }
            self.pos = end;
            return Ok(element_end);
        }
        while self.pos < end {
            self.value(sig, element, depth + 1)?;
        }
        if self.pos != end {
            return Err(self.invalid("an array's elements overrun its length"));
        }
        Ok(element_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbus::value::{Value, marshal};

    #[test]
    fn bodies_that_follow_their_signature_pass() {
        let values = [
            Value::String("hello".into()),
            Value::UInt32(7),
            Value::Array {
                element: "{sv}".into(),
                items: vec![Value::DictEntry(
                    Box::new(Value::String("k".into())),
                    Box::new(Value::Variant(Box::new(Value::Int64(-3)))),
                )],
            },
        ];
        let (sig, body) = marshal(&values).unwrap();
        assert_eq!(sig, "sua{sv}");
        assert_eq!(check(&sig, &body, Endian::Little, 0), Ok(None));
        assert_eq!(
            string_args(&sig, &body, 63),
            [Some((b's', "hello")), None, None]
        );
    }

    #[test]
    fn big_endian_bodies_come_back_little_endian() {
        // "su" big-endian: len 2, "hi\0", pad, 0x01020304.
        let be = [0, 0, 0, 2, b'h', b'i', 0, 0, 1, 2, 3, 4];
        let le = check("su", &be, Endian::Big, 0).unwrap().unwrap();
        assert_eq!(le, [2, 0, 0, 0, b'h', b'i', 0, 0, 4, 3, 2, 1]);
        assert_eq!(check("su", &le, Endian::Little, 0), Ok(None));
    }

    #[test]
    fn broken_bodies_are_refused_with_the_rule() {
        for (sig, body, why) in [
            ("u", &[1u8, 0, 0][..], "ends inside"),
            ("s", &[1, 0, 0, 0, b'a', 1][..], "nul byte"),
            ("s", &[1, 0, 0, 0, 0xff, 0][..], "UTF-8"),
            ("b", &[2, 0, 0, 0][..], "0 or 1"),
            ("yu", &[1, 9, 0, 0, 1, 0, 0, 0][..], "padding"),
            ("u", &[1, 0, 0, 0, 9][..], "follow the values"),
            ("h", &[0, 0, 0, 0][..], "fd index 0"),
            ("o", &[2, 0, 0, 0, b'/', b'/', 0][..], "object path"),
            ("au", &[8, 0, 0, 0, 1, 0, 0, 0][..], "past the end"),
            ("v", &[1, b'z', 0][..], "not a D-Bus type"),
        ] {
            let error = check(sig, body, Endian::Little, 0).unwrap_err().to_string();
            assert!(error.contains(why), "{sig} {body:?}: {error}");
        }
    }

    #[test]
    fn arrays_of_numbers_are_checked_by_length_and_turned_whole() {
        // "au" big-endian: 8 bytes, then 1 and 2.
        let be = [0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 2];
        let le = check("au", &be, Endian::Big, 0).unwrap().unwrap();
        assert_eq!(le, [8, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]);
        let error = check("au", &[6, 0, 0, 0, 1, 0, 0, 0, 2, 0], Endian::Little, 0);
        assert!(
            error
                .unwrap_err()
                .to_string()
                .contains("4-byte values holds 6")
        );
        let bytes = [&4096u32.to_le_bytes()[..], &[7; 4096]].concat();
        assert_eq!(check("ay", &bytes, Endian::Little, 0), Ok(None));
    }

    #[test]
    fn nesting_variants_is_bounded() {
        // 65 variants each holding the next, ending in a byte.
        let mut body = Vec::new();
        for _ in 0..65 {
            body.extend_from_slice(&[1, b'v', 0]);
        }
        body.extend_from_slice(&[1, b'y', 0, 5]);
        let error = check("v", &body, Endian::Little, 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("nest"), "{error}");
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let (sig, body) = marshal(&[
            Value::String("x".into()),
            Value::Struct(vec![Value::UInt64(1), Value::ObjectPath("/a".into())]),
        ])
        .unwrap();
        for cut in 0..body.len() {
            assert!(
                check(&sig, &body[..cut], Endian::Little, 0).is_err(),
                "{cut}"
            );
            let _ = string_args(&sig, &body[..cut], 63);
        }
    }
}
