//! Telling a D-Bus client why the broker refused its connection.
//!
//! A connection is admitted (its process identified, its user charged)
//! before it authenticates, so a refused client would only see its socket
//! close — `Broken pipe`, or a call that gets no reply. Instead the broker
//! plays the client's handshake through without believing anything of it
//! (it serves the connection nothing): it answers the SASL commands so
//! that the client goes on to send its `Hello`, and answers that `Hello`
//! with an error carrying the reason, which every D-Bus library shows its
//! caller. All of it within [`GRACE`], in at most [`MOST`] bytes.

use std::time::Duration;

use pidbus_protocol::dbus::header::FIXED_HEADER_LEN;
use pidbus_protocol::transport::Stream;

use super::sasl::find_crlf;
use super::wire::refusal;

/// How long a refused client has to send its handshake and its `Hello`.
pub const GRACE: Duration = Duration::from_secs(2);
/// The most a refused client is read.
pub const MOST: usize = 16 * 1024;

/// Answers the handshake of the refused client on `stream`, then its
/// `Hello` with the error `name` and `reason`, then closes the connection.
pub async fn tell(stream: &Stream, bus_id: &str, name: &str, reason: &str) {
    let _ = tokio::time::timeout(GRACE, converse(stream, bus_id, name, reason)).await;
    let _ = stream.shutdown();
}

async fn converse(stream: &Stream, bus_id: &str, name: &str, reason: &str) {
    let mut received = Vec::new();
    let mut handled = 0;
    let mut begun = false;
    loop {
        if !begun {
            while let Some(end) = find_crlf(&received[handled..]) {
                let line = &received[handled..handled + end];
                handled += end + 2;
                match answer(line, bus_id) {
                    Answer::Reply(text) => {
                        let _ = stream.try_send(text.as_bytes(), &[]);
                    }
                    Answer::Begin => {
                        begun = true;
                        break;
                    }
                }
            }
        }
        if begun && let Some(serial) = hello_serial(&received[handled..]) {
            let _ = stream.try_send(&refusal(serial, name, reason), &[]);
            return;
        }
        if received.len() >= MOST {
            return;
        }
        let mut buf = [0u8; 1024];
        match std::future::poll_fn(|cx| stream.poll_read(cx, &mut buf)).await {
            Ok(Some(chunk)) if chunk.len > 0 => received.extend_from_slice(&buf[..chunk.len]),
            _ => return,
        }
    }
}

/// What to say to one handshake line.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Reply(String),
    Begin,
}

fn answer(line: &[u8], bus_id: &str) -> Answer {
    // The handshake starts with one nul byte.
    let line = line.strip_prefix(b"\0").unwrap_or(line);
    let mut words = line.split(|b| *b == b' ');
    let command = words.next().unwrap_or_default();
    match command {
        // A bare AUTH asks which mechanisms there are (GDBus does).
        b"AUTH" if words.next().is_none() => Answer::Reply("REJECTED EXTERNAL\r\n".to_owned()),
        b"AUTH" | b"DATA" => Answer::Reply(format!("OK {bus_id}\r\n")),
        b"NEGOTIATE_UNIX_FD" => Answer::Reply("AGREE_UNIX_FD\r\n".to_owned()),
        b"BEGIN" => Answer::Begin,
        b"CANCEL" => Answer::Reply("REJECTED EXTERNAL\r\n".to_owned()),
        _ => Answer::Reply("ERROR\r\n".to_owned()),
    }
}

/// The serial of the message whose fixed header starts `bytes`.
fn hello_serial(bytes: &[u8]) -> Option<u32> {
    let fixed = bytes.get(..FIXED_HEADER_LEN)?;
    let serial: [u8; 4] = fixed[8..12].try_into().ok()?;
    match fixed[0] {
        b'l' => Some(u32::from_le_bytes(serial)),
        b'B' => Some(u32::from_be_bytes(serial)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use pidbus_protocol::dbus::header::{self, Header, MessageType};

    use super::*;
    use crate::bus::DRIVER_NAME;

    #[test]
    fn the_handshake_is_answered_so_the_client_sends_its_hello() {
        assert_eq!(
            answer(b"\0AUTH EXTERNAL 30", "id"),
            Answer::Reply("OK id\r\n".into())
        );
        assert_eq!(
            answer(b"NEGOTIATE_UNIX_FD", "id"),
            Answer::Reply("AGREE_UNIX_FD\r\n".into())
        );
        assert_eq!(answer(b"BEGIN", "id"), Answer::Begin);
        assert_eq!(
            answer(b"\0AUTH", "id"),
            Answer::Reply("REJECTED EXTERNAL\r\n".into())
        );
        assert_eq!(answer(b"WHAT", "id"), Answer::Reply("ERROR\r\n".into()));
    }

    #[test]
    fn the_hello_is_answered_with_the_reason() {
        let hello = header::encode(
            &Header {
                destination: Some(DRIVER_NAME.into()),
                path: Some("/org/freedesktop/DBus".into()),
                member: Some("Hello".into()),
                ..Header::new(MessageType::MethodCall, 7)
            },
            &[],
        );
        assert_eq!(hello_serial(&hello), Some(7));
        let reply = refusal(7, "org.freedesktop.DBus.Error.LimitsExceeded", "too many");
        let (header, _, at) = header::parse(&reply).unwrap();
        assert_eq!(header.reply_serial, Some(7));
        assert_eq!(header.kind, MessageType::Error);
        let text =
            pidbus_protocol::dbus::value::unmarshal(&header.signature, &reply[at..]).unwrap();
        assert_eq!(text[0].as_str(), Some("too many"));
    }
}
