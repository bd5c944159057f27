//! Encoding and decoding of [`Message`]s: MessagePack with named fields.
//!
//! MessagePack (via `rmp-serde`) is self-describing, so generic tools can
//! print any message, other languages can speak the protocol with a stock
//! MessagePack library, and optional fields can be added without breaking old
//! peers. Decoding never panics and never allocates more than the record's
//! own size: the length limit is checked first, and every length the input
//! claims is bounded by the bytes actually present.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::Message;

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The record is larger than the limit in force.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the record in bytes.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A valid message was followed by extra bytes.
    #[error("malformed message: {0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// The message could not be serialized (a bug in the caller's types).
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Encodes `message` into a new buffer, refusing results larger than `limit`.
pub fn encode(message: &Message, limit: usize) -> Result<Vec<u8>, CodecError> {
    // Room for a typical envelope and the body up front: growing the
    // buffer field by field costs several reallocations per message.
    let mut bytes = Vec::with_capacity(ENVELOPE_ROOM + body_len(message));
    rmp_serde::encode::write_named(&mut bytes, message)?;
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

/// Bytes reserved for a message's envelope (names, ids, a caller's facts)
/// beside its body.
const ENVELOPE_ROOM: usize = 512;

/// The size of the message's body, if it carries one.
fn body_len(message: &Message) -> usize {
    match message {
        Message::Call(call) => call.body.len(),
        Message::Incoming(call) => call.body.len(),
        Message::Return(answer) => answer.body.len(),
        Message::Signal(signal) => signal.body.len(),
        _ => 0,
    }
}

/// Decodes one message that must span `bytes` exactly.
///
/// `limit` is checked before any decoding work is done.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Message, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    decode_value(bytes)
}

/// Encodes any value as MessagePack with named fields, as records are
/// encoded (to size a part of one, or to carry it apart). Message bodies
/// are not MessagePack: see [`crate::dbus`].
///
/// ```
/// use pidbus_protocol::codec::{decode_value, encode_value};
///
/// let bytes = encode_value(&("play", 3u32))?;
/// let (what, times): (String, u32) = decode_value(&bytes)?;
/// assert_eq!((what.as_str(), times), ("play", 3));
/// // Bytes of another shape are an error naming what did not fit.
/// assert!(decode_value::<(u32,)>(&bytes).is_err());
/// # Ok::<(), pidbus_protocol::codec::CodecError>(())
/// ```
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes a value that must span `bytes` exactly. The caller bounds the
/// size (the bytes come from a record that was already size-checked).
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    // Decoding from the slice, not through `Read`: strings and byte arrays
    // are taken from it directly instead of being read into a buffer first.
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    let value =
        T::deserialize(&mut deserializer).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let consumed = first_value_len(bytes).unwrap_or(bytes.len());
    if consumed < bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - consumed));
    }
    Ok(value)
}

/// The length of the MessagePack value at the start of `bytes` (`None`
/// if it is cut short): a walk over its markers that skips payloads,
/// without recursion (a count of the values still to skip).
fn first_value_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    let mut values_left: u64 = 1;
    let be = |at: usize, n: usize| -> Option<u64> {
        let field = bytes.get(at..at.checked_add(n)?)?;
        Some(field.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
    };
    while values_left > 0 {
        values_left -= 1;
        let marker = *bytes.get(at)?;
        at += 1;
        // (payload bytes to skip, values contained)
        let (skip, contains): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (1 + be(at, 1)?, 0),
            0xc5 | 0xda => (2 + be(at, 2)?, 0),
            0xc6 | 0xdb => (4 + be(at, 4)?, 0),
            0xc7 => (2 + be(at, 1)?, 0),
            0xc8 => (3 + be(at, 2)?, 0),
            0xc9 => (5 + be(at, 4)?, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, be(at, 2)?),
            0xdd => (4, be(at, 4)?),
            0xde => (2, 2 * be(at, 2)?),
            0xdf => (4, 2 * be(at, 4)?),
            // 0xc1 is never used.
            0xc1 => return None,
        };
        at = at.checked_add(usize::try_from(skip).ok()?)?;
        if at > bytes.len() {
            return None;
        }
        values_left = values_left.checked_add(contains)?;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ProcessIdentity;
    use crate::limits::DEFAULT_MAX_RECORD_SIZE;
    use crate::message::*;
    use crate::{Destination, MatchRule};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The encodings docs/protocol.md shows byte for byte, so a client in
    /// another language can be checked against them.
    #[test]
    fn the_wire_examples_of_the_protocol_reference_hold() {
        let limit = DEFAULT_MAX_RECORD_SIZE;
        let hello = encode(&Message::Hello(Hello { version: 1 }), limit).unwrap();
        // {"Hello": {"version": 1}}
        assert_eq!(hex(&hello), "81a548656c6c6f81a776657273696f6e01");
        let request = Message::Request(Request {
            serial: 1,
            body: BrokerRequest::GetIdentity,
        });
        // {"Request": {"serial": 1, "body": "GetIdentity"}}
        assert_eq!(
            hex(&encode(&request, limit).unwrap()),
            "81a75265717565737482a673657269616c01a4626f6479ab4765744964656e74697479"
        );
        let call = Message::Call(Call {
            serial: 2,
            destination: Destination::Name("org.example.Echo".into()),
            path: "/".into(),
            interface: "org.example.Echo".into(),
            member: "Echo".into(),
            signature: "s".into(),
            body: vec![2, 0, 0, 0, b'h', b'i', 0],
            no_reply: false,
            timeout_ms: None,
            no_auto_start: false,
        });
        // {"Call": {"serial": 2, "destination": {"Name": "org.example.Echo"},
        //  "path": "/", "interface": "org.example.Echo", "member": "Echo",
        //  "signature": "s", "body": bin(D-Bus "hi"), "no_reply": false,
        //  "timeout_ms": nil}}
        assert_eq!(
            hex(&encode(&call, limit).unwrap()),
            "81a443616c6c89a673657269616c02ab64657374696e6174696f6e81a44e616d65b06f72672e6578\
             616d706c652e4563686fa470617468a12fa9696e74657266616365b06f72672e6578616d706c652e\
             4563686fa66d656d626572a44563686fa97369676e6174757265a173a4626f6479c4070200000068\
             6900a86e6f5f7265706c79c2aa74696d656f75745f6d73c0"
        );
    }

    fn sample_identity() -> ProcessIdentity {
        ProcessIdentity {
            pid: 42,
            uid: 1000,
            gid: 1000,
            groups: vec![4, 27, 1000],
            pidfs_id: Some(123_456),
            start_time: Some(987),
            boot_id: "0b8e1f3c-2c1a-4f55-9b55-4f0d1f6c2b11".into(),
            exe: Some("/usr/bin/true".into()),
            unit: Some("foo.service".into()),
            user_unit: None,
            exe_unverified: None,
            sender_proof_forgeable: false,
            cgroup: Some("/system.slice/foo.service".into()),
            label: None,
            exited_at_connect: false,
        }
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
            }),
            Message::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                unique_id: PeerId(7),
                identity: sample_identity(),
                max_record_size: 65536,
            }),
            Message::Request(Request {
                serial: 1,
                body: BrokerRequest::Ping {
                    payload: vec![1, 2, 3],
                },
            }),
            Message::Request(Request {
                serial: 2,
                body: BrokerRequest::ListPeers { after: None },
            }),
            Message::Reply(Reply {
                reply_to: 2,
                body: BrokerReply::Peers {
                    peers: vec![PeerInfo {
                        id: PeerId(7),
                        identity: sample_identity(),
                    }],
                    more: false,
                },
            }),
            Message::Error(ErrorReply::broker(
                None,
                ErrorCode::VersionMismatch,
                "speak version 1",
            )),
            Message::Error(ErrorReply {
                reply_to: Some(4),
                code: ErrorCode::Failed,
                message: "no such song".into(),
                name: Some("org.example.Error.NotFound".into()),
                sender: Some(PeerId(9)),
            }),
            Message::Call(Call {
                serial: 3,
                destination: Destination::Name("org.example.Music".into()),
                path: "/org/example/Player".into(),
                interface: "org.example.Player".into(),
                member: "Play".into(),
                signature: "u".into(),
                body: vec![1, 0, 0, 0],
                no_reply: false,
                timeout_ms: Some(1500),
                no_auto_start: true,
            }),
            Message::Incoming(IncomingCall {
                call_id: 11,
                caller: Caller {
                    id: PeerId(7),
                    pid: None,
                    uid: 1000,
                    gid: 1000,
                    groups: vec![1000, 27],
                    pidfs_id: Some(4242),
                    exe: Some("/usr/bin/player".into()),
                    unit: None,
                    label: None,
                },
                destination: Destination::Unique(PeerId(8)),
                path: "/".into(),
                interface: "org.example.Player".into(),
                member: "Stop".into(),
                signature: String::new(),
                body: vec![],
                no_reply: true,
                caller_serial: 3,
            }),
            Message::Return(Return {
                reply_to: 11,
                signature: "b".into(),
                body: vec![1, 0, 0, 0],
                sender: Some(PeerId(8)),
            }),
            Message::Signal(Signal {
                sender: Some(PeerId(8)),
                destination: None,
                path: "/org/example/Player".into(),
                interface: "org.example.Player".into(),
                member: "Changed".into(),
                signature: "s".into(),
                body: vec![1, 0, 0, 0, b'x', 0],
                matched: vec![1, 5],
            }),
            Message::Event(BusEvent::NameOwnerChanged {
                name: "org.example.Music".into(),
                old_owner: None,
                new_owner: Some(PeerId(8)),
            }),
            Message::Notice(Notice {
                code: ErrorCode::UnexpectedReply,
                message: "no such call".into(),
            }),
            Message::Monitored(Monitored {
                sender: Some(PeerId(8)),
                destination: None,
                message: Box::new(Message::Return(Return {
                    reply_to: 1,
                    signature: String::new(),
                    body: vec![],
                    sender: None,
                })),
            }),
            Message::Request(Request {
                serial: 5,
                body: BrokerRequest::AddMatch {
                    id: 1,
                    rule: MatchRule {
                        member: Some("Changed".into()),
                        ..MatchRule::default()
                    },
                },
            }),
            Message::Process(crate::ProcessEvent::Reaped {
                watch: 3,
                process: crate::ProcessHandle {
                    peer: PeerId(8),
                    pidfs_id: Some(77),
                },
                status: Some(crate::ExitStatus::Signal(15)),
            }),
            Message::Request(Request {
                serial: 7,
                body: BrokerRequest::WatchProcess {
                    id: 3,
                    target: Destination::Name("org.example.Music".into()),
                },
            }),
            Message::Reply(Reply {
                reply_to: 8,
                body: BrokerReply::Pidfd(crate::ProcessHandle {
                    peer: PeerId(8),
                    pidfs_id: None,
                }),
            }),
            Message::Reply(Reply {
                reply_to: 6,
                body: BrokerReply::Names {
                    names: vec![NameInfo {
                        name: "org.example.Music".into(),
                        owner: PeerId(8),
                        queue: vec![PeerId(9)],
                    }],
                    more: true,
                },
            }),
        ]
    }

    #[test]
    fn every_message_kind_round_trips() {
        for message in samples() {
            let bytes = encode(&message, DEFAULT_MAX_RECORD_SIZE).unwrap();
            assert_eq!(decode(&bytes, DEFAULT_MAX_RECORD_SIZE).unwrap(), message);
        }
    }

    #[test]
    fn oversized_records_are_refused_both_ways() {
        let big = Message::Request(Request {
            serial: 1,
            body: BrokerRequest::Ping {
                payload: vec![0; 100],
            },
        });
        assert!(matches!(encode(&big, 50), Err(CodecError::TooLarge { .. })));
        let bytes = encode(&big, 1000).unwrap();
        assert!(matches!(
            decode(&bytes, 50),
            Err(CodecError::TooLarge { limit: 50, .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&samples()[0], 1000).unwrap();
        bytes.push(0xc0);
        assert!(matches!(
            decode(&bytes, 1000),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn the_length_walk_agrees_with_the_encoder_on_every_sample() {
        for message in samples() {
            let bytes = encode(&message, DEFAULT_MAX_RECORD_SIZE).unwrap();
            assert_eq!(first_value_len(&bytes), Some(bytes.len()), "{message:?}");
            assert_eq!(first_value_len(&bytes[..bytes.len() - 1]), None);
        }
        // Every width of every kind, nested.
        let value = (
            (
                u8::MAX,
                u16::MAX,
                u32::MAX,
                u64::MAX,
                i8::MIN,
                i16::MIN,
                i32::MIN,
                i64::MIN,
            ),
            (
                1.5f32,
                2.5f64,
                true,
                None::<u8>,
                "x".repeat(40),
                "y".repeat(300),
            ),
            (
                vec![7u8; 70_000],
                serde_bytes::ByteBuf::from(vec![1u8; 300]),
                vec![0u16; 20],
            ),
            std::collections::BTreeMap::from_iter((0..20u32).map(|k| (k, k))),
        );
        let bytes = encode_value(&value).unwrap();
        assert_eq!(first_value_len(&bytes), Some(bytes.len()));
        // An array claiming four billion items ends with the input.
        assert_eq!(first_value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]), None);
        assert_eq!(first_value_len(&[0xc1]), None);
    }

    #[test]
    fn unknown_error_codes_from_newer_peers_decode_as_unknown() {
        #[derive(serde::Serialize)]
        enum FutureCode {
            SomethingNew,
        }
        #[derive(serde::Serialize)]
        struct FutureError {
            reply_to: Option<u64>,
            code: FutureCode,
            message: String,
        }
        #[derive(serde::Serialize)]
        enum FutureMessage {
            Error(FutureError),
        }
        let bytes = rmp_serde::to_vec_named(&FutureMessage::Error(FutureError {
            reply_to: Some(3),
            code: FutureCode::SomethingNew,
            message: "x".into(),
            // A field this version does not know is ignored too.
        }))
        .unwrap();
        let Message::Error(e) = decode(&bytes, 1000).unwrap() else {
            panic!("expected an error message");
        };
        assert_eq!(e.code, ErrorCode::Unknown);
    }

    /// A small deterministic generator so the test needs no extra crate and
    /// every failure reproduces.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (rng.next() % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = decode(&bytes, DEFAULT_MAX_RECORD_SIZE);
        }
    }

    #[test]
    fn truncated_and_mutated_messages_never_panic() {
        let mut rng = XorShift(42);
        for message in samples() {
            let bytes = encode(&message, DEFAULT_MAX_RECORD_SIZE).unwrap();
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut], DEFAULT_MAX_RECORD_SIZE).is_err(),
                    "a {cut}-byte prefix of a {} decoded",
                    message.kind()
                );
            }
            for _ in 0..2_000 {
                let mut mutated = bytes.clone();
                let at = (rng.next() as usize) % mutated.len();
                mutated[at] = rng.next() as u8;
                let _ = decode(&mutated, DEFAULT_MAX_RECORD_SIZE);
            }
        }
    }

    #[test]
    fn huge_claimed_lengths_do_not_allocate_or_panic() {
        // bin32 / str32 / array32 / map32 headers claiming 4 GiB of content.
        for header in [0xc6u8, 0xdb, 0xdd, 0xdf] {
            let bytes = [header, 0xff, 0xff, 0xff, 0xff, 0x00];
            assert!(decode(&bytes, DEFAULT_MAX_RECORD_SIZE).is_err());
        }
        // A Request whose Ping payload claims 4 GiB.
        let mut bytes = encode(
            &Message::Request(Request {
                serial: 1,
                body: BrokerRequest::Ping { payload: vec![] },
            }),
            1000,
        )
        .unwrap();
        let header = bytes.len() - 2;
        assert_eq!(
            &bytes[header..],
            [0xc4, 0x00],
            "empty payload is bin8 of length 0"
        );
        bytes.truncate(header);
        bytes.extend_from_slice(&[0xc6, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode(&bytes, DEFAULT_MAX_RECORD_SIZE).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let bytes = vec![0x91u8; 60_000]; // 60 000 nested one-element arrays
        assert!(decode(&bytes, DEFAULT_MAX_RECORD_SIZE).is_err());
    }
}
