//! The native socket's records as a receiver reads them: the broker puts
//! one or more whole D-Bus messages in a record, back to back (a burst of
//! messages for one peer costs the kernel one buffer, not one each), with
//! the descriptors of those messages attached to the record in their
//! order. A peer sends one message per record.
//!
//! ```
//! use pidbus_protocol::dbus::header::{self, Header, MessageType};
//! use pidbus_protocol::dbus::record;
//!
//! let one = header::encode(&Header::new(MessageType::Signal, 1), &[]);
//! let mut packed = one.clone();
//! packed.extend_from_slice(&one);
//! let messages: Vec<&[u8]> = record::messages(&packed).collect::<Result<_, _>>()?;
//! assert_eq!(messages, [&one[..], &one[..]]);
//! # Ok::<(), pidbus_protocol::dbus::header::HeaderError>(())
//! ```

use super::header::{self, FIXED_HEADER_LEN, HeaderError};

/// The messages of one record, in order; see [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

/// The whole messages `record` holds. An item is an error (and the last)
/// if the record ends inside a message or a message's fixed header is
/// invalid; a record holding no bytes holds no message.
pub fn messages(record: &[u8]) -> Messages<'_> {
    Messages { rest: record }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<&'a [u8], HeaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let Some(prefix) = rest.first_chunk::<FIXED_HEADER_LEN>() else {
            return Some(Err(HeaderError::Invalid(format!(
                "a record ends {} bytes into a message's {FIXED_HEADER_LEN}-byte fixed header",
                rest.len()
            ))));
        };
        let len = match header::message_len(prefix, header::MAX_MESSAGE_LEN) {
            Ok(len) => len,
            Err(e) => return Some(Err(e)),
        };
        let Some((message, after)) = rest.split_at_checked(len) else {
            return Some(Err(HeaderError::Invalid(format!(
                "a record ends {} bytes into a message of {len} bytes",
                rest.len()
            ))));
        };
        self.rest = after;
        Some(Ok(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbus::header::{Header, MessageType};
    use crate::dbus::value::{Value, marshal};

    fn message(serial: u32, text: &str) -> Vec<u8> {
        let (signature, body) = marshal(&[Value::string(text)]).expect("marshal");
        let header = Header {
            signature,
            ..Header::new(MessageType::Signal, serial)
        };
        header::encode(&header, &body)
    }

    #[test]
    fn messages_come_out_in_order_whatever_their_lengths() {
        let parts = [message(1, "a"), message(2, "bcdefghij"), message(3, "")];
        let record = parts.concat();
        let got: Vec<&[u8]> = messages(&record).collect::<Result<_, _>>().expect("valid");
        assert_eq!(got, parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_cut_inside_a_message_is_an_error_after_the_whole_ones() {
        let first = message(1, "whole");
        let mut record = first.clone();
        record.extend_from_slice(&message(2, "cut")[..20]);
        let mut it = messages(&record);
        assert_eq!(it.next().expect("first").expect("whole"), &first[..]);
        let err = it.next().expect("an error").expect_err("cut");
        assert!(err.to_string().contains("ends 20 bytes into"), "{err}");
        assert!(it.next().is_none());
    }

    #[test]
    fn a_short_tail_and_an_empty_record_are_told_apart() {
        assert!(messages(&[]).next().is_none());
        let err = messages(b"l\x01")
            .next()
            .expect("an error")
            .expect_err("short");
        assert!(err.to_string().contains("fixed header"), "{err}");
    }
}
