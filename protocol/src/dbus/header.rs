//! D-Bus message headers: the fixed 16-byte prefix and the header fields,
//! read in either byte order and checked against the specification's rules,
//! and written little-endian.

use super::body::{BodyError, Endian, MAX_ARRAY_LEN, Reader};
use super::signature;
use crate::names;

/// Bytes of the fixed part of every header.
pub const FIXED_HEADER_LEN: usize = 16;

/// Longest message the specification allows (128 MiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 27;

/// The four kinds of D-Bus message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// A method call.
    MethodCall,
    /// A successful reply.
    MethodReturn,
    /// An error reply.
    Error,
    /// A signal.
    Signal,
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            MessageType::MethodCall => 1,
            MessageType::MethodReturn => 2,
            MessageType::Error => 3,
            MessageType::Signal => 4,
        }
    }

    /// The name match rules use (`method_call`, `signal`, …).
    pub fn rule_name(self) -> &'static str {
        match self {
            MessageType::MethodCall => "method_call",
            MessageType::MethodReturn => "method_return",
            MessageType::Error => "error",
            MessageType::Signal => "signal",
        }
    }
}

/// The caller expects no reply.
pub const NO_REPLY_EXPECTED: u8 = 0x1;
/// Do not start a service to deliver this call.
pub const NO_AUTO_START: u8 = 0x2;
/// The caller is willing to wait for interactive authorization.
pub const ALLOW_INTERACTIVE_AUTHORIZATION: u8 = 0x4;

/// A message's header: its type, flags, serial and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The kind of message.
    pub kind: MessageType,
    /// [`NO_REPLY_EXPECTED`], [`NO_AUTO_START`], [`ALLOW_INTERACTIVE_AUTHORIZATION`].
    pub flags: u8,
    /// The sender's serial (never 0).
    pub serial: u32,
    /// `PATH`
    pub path: Option<String>,
    /// `INTERFACE`
    pub interface: Option<String>,
    /// `MEMBER`
    pub member: Option<String>,
    /// `ERROR_NAME`
    pub error_name: Option<String>,
    /// `REPLY_SERIAL`
    pub reply_serial: Option<u32>,
    /// `DESTINATION`
    pub destination: Option<String>,
    /// `SENDER`
    pub sender: Option<String>,
    /// `SIGNATURE` (empty: no body)
    pub signature: String,
    /// `UNIX_FDS`
    pub unix_fds: u32,
    /// pidbus's verified caller ([`caller::CALLER_FIELD`](super::caller::CALLER_FIELD),
    /// written only by a pidbus broker, for receivers that asked for it).
    pub caller: Option<String>,
}

impl Header {
    /// A header of `kind` with serial `serial` and no fields.
    pub fn new(kind: MessageType, serial: u32) -> Self {
        Header {
            kind,
            flags: 0,
            serial,
            path: None,
            interface: None,
            member: None,
            error_name: None,
            reply_serial: None,
            destination: None,
            sender: None,
            signature: String::new(),
            unix_fds: 0,
            caller: None,
        }
    }
}

/// A header broke the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The fixed part is wrong.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A header field's value is wrong.
    #[error("invalid header field {field}: {reason}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The marshalled fields are broken.
    #[error("invalid header fields: {0}")]
    Marshalling(#[from] BodyError),
}

fn invalid(reason: impl Into<String>) -> HeaderError {
    HeaderError::Invalid(reason.into())
}

/// The byte order of a message starting with `first`.
fn endian_of(first: u8) -> Result<Endian, HeaderError> {
    match first {
        b'l' => Ok(Endian::Little),
        b'B' => Ok(Endian::Big),
        other => Err(invalid(format!(
            "byte order {other:#04x}; a message starts with 'l' or 'B'"
        ))),
    }
}

fn u32_at(prefix: &[u8], at: usize, endian: Endian) -> u32 {
    let bytes = [prefix[at], prefix[at + 1], prefix[at + 2], prefix[at + 3]];
    match endian {
        Endian::Little => u32::from_le_bytes(bytes),
        Endian::Big => u32::from_be_bytes(bytes),
    }
}

/// The whole length of the message whose first [`FIXED_HEADER_LEN`]
/// bytes are `prefix`, refused above `limit` (and above
/// [`MAX_MESSAGE_LEN`]) before anything is allocated for it.
pub fn message_len(prefix: &[u8; FIXED_HEADER_LEN], limit: usize) -> Result<usize, HeaderError> {
    let endian = endian_of(prefix[0])?;
    if prefix[3] != 1 {
        return Err(invalid(format!(
            "protocol version {}; only version 1 exists",
            prefix[3]
        )));
    }
    let body = u32_at(prefix, 4, endian) as usize;
    let fields = u32_at(prefix, 12, endian) as usize;
    if fields > MAX_ARRAY_LEN {
        return Err(invalid(format!("header fields of {fields} bytes")));
    }
    let total = (FIXED_HEADER_LEN + fields).next_multiple_of(8) + body;
    let limit = limit.min(MAX_MESSAGE_LEN);
    if total > limit {
        return Err(invalid(format!(
            "a message of {total} bytes; the limit is {limit}"
        )));
    }
    Ok(total)
}

/// Reads and checks the header of the complete message `message`:
/// returns the header, its byte order, and where the body starts.
pub fn parse(message: &[u8]) -> Result<(Header, Endian, usize), HeaderError> {
    let prefix: &[u8; FIXED_HEADER_LEN] = message
        .get(..FIXED_HEADER_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| invalid("shorter than the 16-byte fixed header"))?;
    let total = message_len(prefix, MAX_MESSAGE_LEN)?;
    if total != message.len() {
        return Err(invalid(format!(
            "its header says {total} bytes, {} were given",
            message.len()
        )));
    }
    let endian = endian_of(prefix[0])?;
    let kind = match prefix[1] {
        1 => MessageType::MethodCall,
        2 => MessageType::MethodReturn,
        3 => MessageType::Error,
        4 => MessageType::Signal,
        other => return Err(invalid(format!("message type {other}"))),
    };
    let serial = u32_at(prefix, 8, endian);
    if serial == 0 {
        return Err(invalid("serial 0; serials start at 1"));
    }
    let mut header = Header::new(kind, serial);
    header.flags = prefix[2];
    let fields_len = u32_at(prefix, 12, endian) as usize;
    let fields_end = FIXED_HEADER_LEN + fields_len;
    let body_start = fields_end.next_multiple_of(8);
    let mut reader = Reader::at(&message[..body_start], 12, endian);
    reader.u32()?;
    let mut seen = 0u32;
    while reader.pos < fields_end {
        reader.align(8)?;
        let code = reader.byte()?;
        if code == 0 {
            return Err(invalid("header field code 0"));
        }
        if code < 32 && seen & (1 << code) != 0 {
            return Err(invalid(format!("header field {code} appears twice")));
        }
        if code < 32 {
            seen |= 1 << code;
        }
        read_field(&mut reader, code, &mut header)?;
    }
    if reader.pos != fields_end {
        return Err(invalid("header fields overrun their length"));
    }
    reader.align(8)?;
    check_required(&header)?;
    Ok((header, endian, body_start))
}

fn read_field(reader: &mut Reader<'_>, code: u8, header: &mut Header) -> Result<(), HeaderError> {
    let sig = reader.short_string()?;
    let (name, want) = match code {
        1 => ("PATH", "o"),
        2 => ("INTERFACE", "s"),
        3 => ("MEMBER", "s"),
        4 => ("ERROR_NAME", "s"),
        5 => ("REPLY_SERIAL", "u"),
        6 => ("DESTINATION", "s"),
        7 => ("SENDER", "s"),
        8 => ("SIGNATURE", "g"),
        9 => ("UNIX_FDS", "u"),
        super::caller::CALLER_FIELD if sig == "s" => {
            header.caller = Some(reader.string()?.to_owned());
            return Ok(());
        }
        _ => {
            // Unknown fields are skipped, as the specification requires.
            signature::validate_single(sig.as_bytes()).map_err(BodyError::from)?;
            reader.value(sig.as_bytes(), 0, 1)?;
            return Ok(());
        }
    };
    if sig != want {
        return Err(HeaderError::Field {
            field: name,
            reason: format!("its type is {sig:?}, it must be {want:?}"),
        });
    }
    let field_error = |e: names::NameError| HeaderError::Field {
        field: name,
        reason: e.to_string(),
    };
    match code {
        5 | 9 => {
            let n = reader.u32()?;
            if code == 5 {
                if n == 0 {
                    return Err(HeaderError::Field {
                        field: name,
                        reason: "reply serial 0".into(),
                    });
                }
                header.reply_serial = Some(n);
            } else {
                header.unix_fds = n;
            }
        }
        8 => {
            let text = reader.short_string()?;
            signature::validate(text.as_bytes()).map_err(BodyError::from)?;
            header.signature = text.to_owned();
        }
        _ => {
            let text = reader.string()?.to_owned();
            match code {
                1 => names::validate_object_path(&text).map_err(field_error)?,
                2 => names::validate_interface(&text).map_err(field_error)?,
                3 => names::validate_member(&text).map_err(field_error)?,
                4 => names::validate_error_name(&text).map_err(field_error)?,
                _ => names::validate_bus_name(&text).map_err(field_error)?,
            }
            let slot = match code {
                1 => &mut header.path,
                2 => &mut header.interface,
                3 => &mut header.member,
                4 => &mut header.error_name,
                6 => &mut header.destination,
                _ => &mut header.sender,
            };
            *slot = Some(text);
        }
    }
    Ok(())
}

fn check_required(header: &Header) -> Result<(), HeaderError> {
    let missing = |field: &'static str| HeaderError::Field {
        field,
        reason: format!("a {} must have it", header.kind.rule_name()),
    };
    match header.kind {
        MessageType::MethodCall => {
            header.path.as_ref().ok_or_else(|| missing("PATH"))?;
            header.member.as_ref().ok_or_else(|| missing("MEMBER"))?;
        }
        MessageType::Signal => {
            header.path.as_ref().ok_or_else(|| missing("PATH"))?;
            header
                .interface
                .as_ref()
                .ok_or_else(|| missing("INTERFACE"))?;
            header.member.as_ref().ok_or_else(|| missing("MEMBER"))?;
        }
        MessageType::Error => {
            header
                .error_name
                .as_ref()
                .ok_or_else(|| missing("ERROR_NAME"))?;
            header.reply_serial.ok_or_else(|| missing("REPLY_SERIAL"))?;
        }
        MessageType::MethodReturn => {
            header.reply_serial.ok_or_else(|| missing("REPLY_SERIAL"))?;
        }
    }
    Ok(())
}

fn pad(out: &mut Vec<u8>, alignment: usize) {
    out.resize(out.len().next_multiple_of(alignment), 0);
}

fn field_text(out: &mut Vec<u8>, code: u8, sig: u8, text: &str) {
    pad(out, 8);
    out.extend_from_slice(&[code, 1, sig, 0]);
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

fn field_u32(out: &mut Vec<u8>, code: u8, value: u32) {
    pad(out, 8);
    out.extend_from_slice(&[code, 1, b'u', 0]);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes a whole message, little-endian: `header` (its body length taken
/// from `body`) followed by `body`, which must be little-endian and
/// match `header.signature`.
pub fn encode(header: &Header, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(&[b'l', header.kind.code(), header.flags, 1]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&header.serial.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let texts = [
        (1, b'o', &header.path),
        (2, b's', &header.interface),
        (3, b's', &header.member),
        (4, b's', &header.error_name),
        (6, b's', &header.destination),
        (7, b's', &header.sender),
    ];
    for (code, sig, value) in texts {
        if let Some(text) = value {
            field_text(&mut out, code, sig, text);
        }
    }
    if let Some(serial) = header.reply_serial {
        field_u32(&mut out, 5, serial);
    }
    if !header.signature.is_empty() {
        pad(&mut out, 8);
        out.extend_from_slice(&[8, 1, b'g', 0]);
        out.push(header.signature.len() as u8);
        out.extend_from_slice(header.signature.as_bytes());
        out.push(0);
    }
    if header.unix_fds > 0 {
        field_u32(&mut out, 9, header.unix_fds);
    }
    if let Some(caller) = &header.caller {
        field_text(&mut out, super::caller::CALLER_FIELD, b's', caller);
    }
    let fields_len = (out.len() - FIXED_HEADER_LEN) as u32;
    out[12..16].copy_from_slice(&fields_len.to_le_bytes());
    pad(&mut out, 8);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Header {
        Header {
            path: Some("/org/freedesktop/DBus".into()),
            interface: Some("org.freedesktop.DBus".into()),
            member: Some("Hello".into()),
            destination: Some("org.freedesktop.DBus".into()),
            ..Header::new(MessageType::MethodCall, 1)
        }
    }

    #[test]
    fn headers_round_trip() {
        let mut header = call();
        header.signature = "s".into();
        header.unix_fds = 2;
        header.sender = Some(":1.4".into());
        let body = [1, 0, 0, 0, b'x', 0];
        let bytes = encode(&header, &body);
        let prefix: &[u8; 16] = bytes[..16].try_into().unwrap();
        assert_eq!(message_len(prefix, 1 << 20).unwrap(), bytes.len());
        let (back, endian, start) = parse(&bytes).unwrap();
        assert_eq!((back, endian), (header, Endian::Little));
        assert_eq!(&bytes[start..], &body);
    }

    #[test]
    fn required_fields_and_types_are_enforced() {
        let mut header = call();
        header.member = None;
        let error = parse(&encode(&header, &[])).unwrap_err().to_string();
        assert!(error.contains("MEMBER"), "{error}");
        let mut bytes = encode(&call(), &[]);
        bytes[8] = 0;
        assert!(parse(&bytes).unwrap_err().to_string().contains("serial 0"));
        let mut bytes = encode(&call(), &[]);
        bytes[3] = 2;
        assert!(parse(&bytes).unwrap_err().to_string().contains("version"));
        let mut bytes = encode(&call(), &[]);
        bytes[0] = b'x';
        assert!(parse(&bytes).is_err());
        let mut header = call();
        header.interface = Some("nodots".into());
        assert!(
            parse(&encode(&header, &[]))
                .unwrap_err()
                .to_string()
                .contains("INTERFACE")
        );
    }

    #[test]
    fn oversized_and_truncated_messages_are_refused() {
        let bytes = encode(&call(), &[]);
        let prefix: &[u8; 16] = bytes[..16].try_into().unwrap();
        assert!(message_len(prefix, 32).is_err());
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err());
        }
    }
}
