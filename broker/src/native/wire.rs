//! How the core's messages reach a native peer: one MessagePack record per
//! message on its `SOCK_SEQPACKET` socket.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};

use pidbus_protocol::transport::{OutRecord, SeqPacket};
use pidbus_protocol::{Message, codec};

use crate::bus::outbox::{EncodeError, SharedEncodings, Wire};

/// A signal's `matched` is its last field, and in a signal encoded with
/// none it is the empty array (one byte, `0x90`): a receiver's copy is the
/// template with that byte replaced by the receiver's rule ids. `None` if
/// the template does not end so (the caller then cannot share it) or the
/// copy would pass `limit`.
fn copy_with_matched(template: &[u8], matched: &[u64], limit: usize) -> Option<Vec<u8>> {
    const EMPTY_ARRAY: u8 = 0x90;
    let (&last, head) = template.split_last()?;
    if last != EMPTY_ARRAY {
        return None;
    }
    let ids = codec::encode_value(matched).ok()?;
    let mut copy = Vec::with_capacity(head.len() + ids.len());
    copy.extend_from_slice(head);
    copy.extend_from_slice(&ids);
    (copy.len() <= limit).then_some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidbus_protocol::{PeerId, Signal};

    #[test]
    fn a_copy_built_from_the_template_is_the_signal_encoded_with_its_rules() {
        let mut signal = Signal {
            sender: Some(PeerId(4)),
            destination: None,
            path: "/a".into(),
            interface: "org.example.A".into(),
            member: "Changed".into(),
            signature: "s".into(),
            body: vec![1, 0, 0, 0, b'x', 0],
            matched: Vec::new(),
        };
        let template = codec::encode(&Message::Signal(signal.clone()), 4096).unwrap();
        for matched in [vec![], vec![1], vec![7, 300, u64::MAX], (0..40).collect()] {
            signal.matched = matched.clone();
            let whole = codec::encode(&Message::Signal(signal.clone()), 4096).unwrap();
            assert_eq!(copy_with_matched(&template, &matched, 4096), Some(whole));
        }
        assert_eq!(copy_with_matched(&template, &[1], template.len()), None);
    }
}

/// A native peer's socket, as its outbox writes to it (and its task
/// reads from it: one allocation per connection holds both).
#[derive(Debug)]
pub struct NativeWire(pub SeqPacket);

impl std::ops::Deref for NativeWire {
    type Target = SeqPacket;

    fn deref(&self) -> &SeqPacket {
        &self.0
    }
}

impl Wire for NativeWire {
    fn encode(&self, message: &Message, _fds: usize, limit: usize) -> Result<Vec<u8>, EncodeError> {
        codec::encode(message, limit).map_err(|e| EncodeError::TooLarge(e.to_string()))
    }

    fn encode_copy(
        &self,
        signal: &Message,
        matched: &[u64],
        _fds: usize,
        limit: usize,
        shared: &mut SharedEncodings,
    ) -> Result<Vec<u8>, EncodeError> {
        let template = shared.get_or_make("native", || self.encode(signal, 0, limit))?;
        if let Some(copy) = copy_with_matched(template, matched, limit) {
            return Ok(copy);
        }
        // Too large with these rule ids (or not a signal): encoded whole,
        // which says why.
        let mut whole = signal.clone();
        if let Message::Signal(s) = &mut whole {
            s.matched = matched.to_vec();
        }
        self.encode(&whole, 0, limit)
    }

    fn try_send_many(&self, records: &[OutRecord<'_, OwnedFd>]) -> io::Result<usize> {
        // Records go whole or not at all: one `sendmmsg` for the batch.
        let sent = self.0.try_send_many(records)?;
        Ok(records[..sent].iter().map(|r| r.data.len()).sum())
    }

    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: &mut dyn FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        self.0.poll_write_with(cx, write)
    }

    fn unread_by_peer(&self) -> io::Result<usize> {
        self.0.unread_by_peer()
    }

    fn shutdown(&self) -> io::Result<()> {
        self.0.shutdown()
    }
}
