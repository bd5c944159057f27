//! How the core's messages reach a native peer: one MessagePack record per
//! message on its `SOCK_SEQPACKET` socket.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};

use pidbus_protocol::transport::{OutRecord, SeqPacket};
use pidbus_protocol::{Message, codec};

use crate::bus::outbox::{EncodeError, Wire};

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

    fn shutdown(&self) -> io::Result<()> {
        self.0.shutdown()
    }
}
