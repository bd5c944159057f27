//! D-Bus values held dynamically: what the broker's driver reads from and
//! writes into bodies, and what tools print.

use std::fmt;

use super::body::{BodyError, Endian, Reader};
use super::signature::{self, SignatureError};

/// One D-Bus value of any type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `y`
    Byte(u8),
    /// `b`
    Bool(bool),
    /// `n`
    Int16(i16),
    /// `q`
    UInt16(u16),
    /// `i`
    Int32(i32),
    /// `u`
    UInt32(u32),
    /// `x`
    Int64(i64),
    /// `t`
    UInt64(u64),
    /// `d`
    Double(f64),
    /// `h`: an index into the message's descriptors.
    UnixFd(u32),
    /// `s`
    String(String),
    /// `o`
    ObjectPath(String),
    /// `g`
    Signature(String),
    /// `v`: a value with its own type.
    Variant(Box<Value>),
    /// `a…`: elements of one type (`element` is its signature).
    Array {
        /// The elements' signature (`{sv}` for a dict).
        element: String,
        /// The elements.
        items: Vec<Value>,
    },
    /// `(…)`
    Struct(Vec<Value>),
    /// `{kv}`: an element of a dict (an array of entries).
    DictEntry(Box<Value>, Box<Value>),
}

impl Value {
    /// A string.
    pub fn string(text: impl Into<String>) -> Self {
        Value::String(text.into())
    }

    /// An array of strings (`as`).
    pub fn strings<I, S>(items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Value::Array {
            element: "s".into(),
            items: items.into_iter().map(|s| Value::String(s.into())).collect(),
        }
    }

    /// A dict of strings to variants (`a{sv}`).
    pub fn dict<I, K>(entries: I) -> Self
    where
        I: IntoIterator<Item = (K, Value)>,
        K: Into<String>,
    {
        Value::Array {
            element: "{sv}".into(),
            items: entries
                .into_iter()
                .map(|(k, v)| {
                    Value::DictEntry(
                        Box::new(Value::String(k.into())),
                        Box::new(Value::Variant(Box::new(v))),
                    )
                })
                .collect(),
        }
    }

    /// The value's type signature.
    pub fn signature(&self) -> String {
        let mut out = String::new();
        self.write_signature(&mut out);
        out
    }

    fn write_signature(&self, out: &mut String) {
        let code = match self {
            Value::Byte(_) => 'y',
            Value::Bool(_) => 'b',
            Value::Int16(_) => 'n',
            Value::UInt16(_) => 'q',
            Value::Int32(_) => 'i',
            Value::UInt32(_) => 'u',
            Value::Int64(_) => 'x',
            Value::UInt64(_) => 't',
            Value::Double(_) => 'd',
            Value::UnixFd(_) => 'h',
            Value::String(_) => 's',
            Value::ObjectPath(_) => 'o',
            Value::Signature(_) => 'g',
            Value::Variant(_) => 'v',
            Value::Array { element, .. } => {
                out.push('a');
                out.push_str(element);
                return;
            }
            Value::Struct(fields) => {
                out.push('(');
                for field in fields {
                    field.write_signature(out);
                }
                out.push(')');
                return;
            }
            Value::DictEntry(key, value) => {
                out.push('{');
                key.write_signature(out);
                value.write_signature(out);
                out.push('}');
                return;
            }
        };
        out.push(code);
    }

    /// The text, if this is a string, object path or signature.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::ObjectPath(s) | Value::Signature(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a `u`.
    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::UInt32(n) => Some(*n),
            _ => None,
        }
    }
}

/// Why values could not be marshalled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarshalError {
    /// The values' signature is invalid (an empty struct, too deep, …).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// An array holds an element of another type than it declares.
    #[error("an array of {declared:?} holds a value of type {found:?}")]
    MixedArray {
        /// The array's element signature.
        declared: String,
        /// The offending element's.
        found: String,
    },
    /// An object path breaks the path rules.
    #[error(transparent)]
    ObjectPath(crate::names::NameError),
    /// A string holds a nul byte.
    #[error("a string holds a nul byte, which D-Bus strings cannot carry")]
    NulInString,
}

/// Marshals `values` little-endian as a message body: its signature and bytes.
pub fn marshal(values: &[Value]) -> Result<(String, Vec<u8>), MarshalError> {
    let mut signature = String::new();
    let mut out = Vec::new();
    for value in values {
        value.write_signature(&mut signature);
        write(value, &mut out)?;
    }
    signature::validate(signature.as_bytes())?;
    Ok((signature, out))
}

fn pad(out: &mut Vec<u8>, alignment: usize) {
    out.resize(out.len().next_multiple_of(alignment), 0);
}

fn write_fixed(out: &mut Vec<u8>, bytes: &[u8]) {
    pad(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn write_text(out: &mut Vec<u8>, text: &str, short: bool) -> Result<(), MarshalError> {
    if text.as_bytes().contains(&0) {
        return Err(MarshalError::NulInString);
    }
    if short {
        // Signatures are at most 255 bytes; validate() refuses longer ones.
        out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
    } else {
        write_fixed(out, &(text.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    Ok(())
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), MarshalError> {
    match value {
        Value::Byte(v) => out.push(*v),
        Value::Bool(v) => write_fixed(out, &u32::from(*v).to_le_bytes()),
        Value::Int16(v) => write_fixed(out, &v.to_le_bytes()),
        Value::UInt16(v) => write_fixed(out, &v.to_le_bytes()),
        Value::Int32(v) => write_fixed(out, &v.to_le_bytes()),
        Value::UInt32(v) | Value::UnixFd(v) => write_fixed(out, &v.to_le_bytes()),
        Value::Int64(v) => write_fixed(out, &v.to_le_bytes()),
        Value::UInt64(v) => write_fixed(out, &v.to_le_bytes()),
        Value::Double(v) => write_fixed(out, &v.to_le_bytes()),
        Value::String(s) => write_text(out, s, false)?,
        Value::ObjectPath(path) => {
            crate::names::validate_object_path(path).map_err(MarshalError::ObjectPath)?;
            write_text(out, path, false)?;
        }
        Value::Signature(s) => write_text(out, s, true)?,
        Value::Variant(inner) => {
            let sig = inner.signature();
            signature::validate_single(sig.as_bytes())?;
            write_text(out, &sig, true)?;
            write(inner, out)?;
        }
        Value::Array { element, items } => {
            signature::validate_single(format!("a{element}").as_bytes())?;
            pad(out, 4);
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            pad(out, signature::alignment(element.as_bytes()[0]));
            let start = out.len();
            for item in items {
                let found = item.signature();
                if &found != element {
                    return Err(MarshalError::MixedArray {
                        declared: element.clone(),
                        found,
                    });
                }
                write(item, out)?;
            }
            let len = (out.len() - start) as u32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        }
        Value::Struct(fields) => {
            pad(out, 8);
            for field in fields {
                write(field, out)?;
            }
        }
        Value::DictEntry(key, value) => {
            pad(out, 8);
            write(key, out)?;
            write(value, out)?;
        }
    }
    Ok(())
}

/// Reads the values of a little-endian body (checked against `signature`
/// on the way).
pub fn unmarshal(signature: &str, body: &[u8]) -> Result<Vec<Value>, BodyError> {
    signature::validate(signature.as_bytes())?;
    let mut reader = Reader::new(body, Endian::Little, u32::MAX);
    let sig = signature.as_bytes();
    let mut values = Vec::new();
    let mut at = 0;
    while at < sig.len() {
        let (value, next) = read(&mut reader, sig, at, 0)?;
        values.push(value);
        at = next;
    }
    if reader.pos != body.len() {
        return Err(reader.invalid("bytes follow the values the signature describes"));
    }
    Ok(values)
}

fn read(
    reader: &mut Reader<'_>,
    sig: &[u8],
    at: usize,
    depth: usize,
) -> Result<(Value, usize), BodyError> {
    let value = match sig[at] {
        b'y' => Value::Byte(reader.byte()?),
        b'b' => match reader.u32()? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            _ => return Err(reader.invalid("a boolean must be 0 or 1")),
        },
        b'n' => Value::Int16(i16::from_le_bytes(reader.fixed()?)),
        b'q' => Value::UInt16(u16::from_le_bytes(reader.fixed()?)),
        b'i' => Value::Int32(i32::from_le_bytes(reader.fixed()?)),
        b'u' => Value::UInt32(reader.u32()?),
        b'h' => Value::UnixFd(reader.u32()?),
        b'x' => Value::Int64(i64::from_le_bytes(reader.fixed()?)),
        b't' => Value::UInt64(u64::from_le_bytes(reader.fixed()?)),
        b'd' => Value::Double(f64::from_le_bytes(reader.fixed()?)),
        b's' => Value::String(reader.string()?.to_owned()),
        b'o' => {
            let path = reader.string()?;
            crate::names::validate_object_path(path).map_err(|e| reader.invalid(e.to_string()))?;
            Value::ObjectPath(path.to_owned())
        }
        b'g' => {
            let text = reader.short_string()?;
            signature::validate(text.as_bytes())?;
            Value::Signature(text.to_owned())
        }
        b'v' => {
            let inner = reader.short_string()?;
            signature::validate_single(inner.as_bytes())?;
            if depth >= super::body::MAX_TOTAL_DEPTH {
                return Err(reader.invalid("values nest too deep"));
            }
            let (value, _) = read(reader, inner.as_bytes(), 0, depth + 1)?;
            Value::Variant(Box::new(value))
        }
        b'a' => {
            let len = reader.u32()? as usize;
            if len > super::body::MAX_ARRAY_LEN {
                return Err(reader.invalid("an array is longer than 64 MiB"));
            }
            let element = at + 1;
            let element_end = signature::complete_type_end(sig, at)?;
            reader.align(signature::alignment(sig[element]))?;
            let end = reader.pos + len;
            let mut items = Vec::new();
            while reader.pos < end {
                items.push(read(reader, sig, element, depth + 1)?.0);
            }
            if reader.pos != end {
                return Err(reader.invalid("an array's elements overrun its length"));
            }
            let element = String::from_utf8_lossy(&sig[element..element_end]).into_owned();
            return Ok((Value::Array { element, items }, element_end));
        }
        b'(' => {
            reader.align(8)?;
            let mut fields = Vec::new();
            let mut next = at + 1;
            while sig[next] != b')' {
                let (field, after) = read(reader, sig, next, depth + 1)?;
                fields.push(field);
                next = after;
            }
            return Ok((Value::Struct(fields), next + 1));
        }
        b'{' => {
            reader.align(8)?;
            let (key, value_at) = read(reader, sig, at + 1, depth + 1)?;
            let (value, end) = read(reader, sig, value_at, depth + 1)?;
            return Ok((Value::DictEntry(Box::new(key), Box::new(value)), end + 1));
        }
        other => {
            return Err(reader.invalid(format!("unexpected type code {:?}", char::from(other))));
        }
    };
    Ok((value, at + 1))
}

/// Why busctl-style argument text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(String);

/// Reads arguments written as `busctl call` takes them: the signature, then
/// each value in turn — numbers and strings as text, `true`/`false`, an
/// array as its length then its elements, a struct as its fields, a
/// variant as its signature then its value, a dict as its length then
/// keys and values (`a{sv} 1 pid u 4`).
pub fn parse_args<S: AsRef<str>>(signature: &str, args: &[S]) -> Result<Vec<Value>, ArgsError> {
    signature::validate(signature.as_bytes()).map_err(|e| ArgsError(e.to_string()))?;
    let mut words = args.iter().map(AsRef::as_ref);
    let sig = signature.as_bytes();
    let mut values = Vec::new();
    let mut at = 0;
    while at < sig.len() {
        let (value, next) = parse_one(sig, at, &mut words)?;
        values.push(value);
        at = next;
    }
    if let Some(extra) = words.next() {
        return Err(ArgsError(format!(
            "{extra:?} and what follows are beyond the signature {signature:?}"
        )));
    }
    Ok(values)
}

fn parse_one<'a>(
    sig: &[u8],
    at: usize,
    words: &mut impl Iterator<Item = &'a str>,
) -> Result<(Value, usize), ArgsError> {
    let code = sig[at];
    let mut word = |what: &str| {
        words
            .next()
            .ok_or_else(|| ArgsError(format!("missing {what} for type {:?}", char::from(code))))
    };
    fn number<T: std::str::FromStr>(text: &str, code: u8) -> Result<T, ArgsError> {
        text.parse()
            .map_err(|_| ArgsError(format!("{text:?} is not a valid {:?}", char::from(code))))
    }
    let value = match code {
        b'y' => Value::Byte(number(word("a value")?, code)?),
        b'b' => match word("a value")? {
            "true" | "yes" | "on" | "1" => Value::Bool(true),
            "false" | "no" | "off" | "0" => Value::Bool(false),
            other => {
                return Err(ArgsError(format!(
                    "{other:?} is not a boolean (true or false)"
                )));
            }
        },
        b'n' => Value::Int16(number(word("a value")?, code)?),
        b'q' => Value::UInt16(number(word("a value")?, code)?),
        b'i' => Value::Int32(number(word("a value")?, code)?),
        b'u' => Value::UInt32(number(word("a value")?, code)?),
        b'x' => Value::Int64(number(word("a value")?, code)?),
        b't' => Value::UInt64(number(word("a value")?, code)?),
        b'd' => Value::Double(number(word("a value")?, code)?),
        b'h' => Value::UnixFd(number(word("a value")?, code)?),
        b's' => Value::String(word("a value")?.to_owned()),
        b'o' => {
            let path = word("a value")?;
            crate::names::validate_object_path(path).map_err(|e| ArgsError(e.to_string()))?;
            Value::ObjectPath(path.to_owned())
        }
        b'g' => {
            let text = word("a value")?;
            signature::validate(text.as_bytes()).map_err(|e| ArgsError(e.to_string()))?;
            Value::Signature(text.to_owned())
        }
        b'v' => {
            let inner = word("the variant's signature")?.to_owned();
            signature::validate_single(inner.as_bytes()).map_err(|e| ArgsError(e.to_string()))?;
            let (value, _) = parse_one(inner.as_bytes(), 0, words)?;
            Value::Variant(Box::new(value))
        }
        b'a' => {
            let count: usize = number(word("the array's length")?, b'u')?;
            let end =
                signature::complete_type_end(sig, at).map_err(|e| ArgsError(e.to_string()))?;
            let element = String::from_utf8_lossy(&sig[at + 1..end]).into_owned();
            let mut items = Vec::new();
            for _ in 0..count {
                items.push(parse_one(sig, at + 1, words)?.0);
            }
            return Ok((Value::Array { element, items }, end));
        }
        b'(' => {
            let mut fields = Vec::new();
            let mut next = at + 1;
            while sig[next] != b')' {
                let (field, after) = parse_one(sig, next, words)?;
                fields.push(field);
                next = after;
            }
            return Ok((Value::Struct(fields), next + 1));
        }
        b'{' => {
            let (key, value_at) = parse_one(sig, at + 1, words)?;
            let (value, end) = parse_one(sig, value_at, words)?;
            return Ok((Value::DictEntry(Box::new(key), Box::new(value)), end + 1));
        }
        other => {
            return Err(ArgsError(format!(
                "unexpected type code {:?}",
                char::from(other)
            )));
        }
    };
    Ok((value, at + 1))
}

/// Text in the style of GVariant (`'text'`, `uint32 7`, `[1, 2]`,
/// `{'k': <5>}`), as gdbus prints values.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Byte(v) => write!(f, "byte 0x{v:02x}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int16(v) => write!(f, "int16 {v}"),
            Value::UInt16(v) => write!(f, "uint16 {v}"),
            Value::Int32(v) => write!(f, "{v}"),
            Value::UInt32(v) => write!(f, "uint32 {v}"),
            Value::Int64(v) => write!(f, "int64 {v}"),
            Value::UInt64(v) => write!(f, "uint64 {v}"),
            Value::Double(v) => write!(f, "{v:?}"),
            Value::UnixFd(v) => write!(f, "handle {v}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::ObjectPath(s) => write!(f, "objectpath {s:?}"),
            Value::Signature(s) => write!(f, "signature {s:?}"),
            Value::Variant(v) => write!(f, "<{v}>"),
            Value::Array { element, items } if element.starts_with('{') => {
                f.write_str("{")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if let Value::DictEntry(k, v) = item {
                        write!(f, "{k}: {v}")?;
                    }
                }
                f.write_str("}")
            }
            Value::Array { items, .. } => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Struct(fields) => {
                f.write_str("(")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{field}")?;
                }
                if fields.len() == 1 {
                    f.write_str(",")?;
                }
                f.write_str(")")
            }
            Value::DictEntry(k, v) => write!(f, "{{{k}: {v}}}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let values = vec![
            Value::Byte(3),
            Value::Bool(true),
            Value::Int16(-2),
            Value::UInt64(1 << 40),
            Value::Double(1.5),
            Value::string("hé"),
            Value::ObjectPath("/org/x".into()),
            Value::Signature("a{sv}".into()),
            Value::strings(["a", "b"]),
            Value::dict([("pid", Value::UInt32(4)), ("fd", Value::UnixFd(0))]),
            Value::Struct(vec![
                Value::Int32(1),
                Value::Variant(Box::new(Value::string("v"))),
            ]),
            Value::Array {
                element: "ay".into(),
                items: vec![],
            },
        ];
        let (sig, body) = marshal(&values).unwrap();
        assert_eq!(sig, "ybntdsogasa{sv}(iv)aay");
        assert_eq!(unmarshal(&sig, &body).unwrap(), values);
    }

    #[test]
    fn mixed_arrays_and_nuls_are_refused() {
        let mixed = Value::Array {
            element: "s".into(),
            items: vec![Value::UInt32(1)],
        };
        assert!(matches!(
            marshal(&[mixed]),
            Err(MarshalError::MixedArray { .. })
        ));
        assert_eq!(
            marshal(&[Value::string("a\0b")]),
            Err(MarshalError::NulInString)
        );
        assert!(marshal(&[Value::Struct(vec![])]).is_err());
    }

    #[test]
    fn busctl_style_arguments() {
        let values = parse_args(
            "sa{sv}(iu)as",
            &["hi", "2", "a", "u", "4", "b", "s", "x", "-1", "2", "0"],
        )
        .unwrap();
        let (sig, _) = marshal(&values).unwrap();
        assert_eq!(sig, "sa{sv}(iu)as");
        assert_eq!(values[3], Value::strings(Vec::<String>::new()));
        for (sig, args, why) in [
            ("u", &["x"][..], "not a valid 'u'"),
            ("u", &[][..], "missing a value"),
            ("s", &["a", "b"][..], "beyond the signature"),
            ("b", &["maybe"][..], "not a boolean"),
            ("o", &["nopath"][..], "object path"),
            ("z", &["1"][..], "not a D-Bus type"),
        ] {
            let error = parse_args(sig, args).unwrap_err().to_string();
            assert!(error.contains(why), "{sig} {args:?}: {error}");
        }
    }

    #[test]
    fn display_looks_like_gdbus() {
        let v = Value::Struct(vec![Value::string("x"), Value::UInt32(2)]);
        assert_eq!(v.to_string(), "(\"x\", uint32 2)");
        assert_eq!(
            Value::dict([("a", Value::Bool(true))]).to_string(),
            "{\"a\": <true>}"
        );
    }
}
