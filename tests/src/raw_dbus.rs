//! A raw D-Bus stream connection to the broker's D-Bus socket, as a
//! hand-written (or hostile) client has it: bytes in, messages out.

use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use pidbus_protocol::dbus::header::{self, Header, MessageType};

use crate::{Broker, PATIENCE, raw};

/// A raw D-Bus connection, as a hand-written (or hostile) client has it.
pub struct RawDbus {
    /// The socket (to hand over, or write to past the framing).
    pub stream: UnixStream,
    buffered: Vec<u8>,
}

impl RawDbus {
    /// Connected to the broker's D-Bus socket, nothing said yet.
    pub fn connect(broker: &Broker) -> Self {
        let stream = UnixStream::connect(broker.dbus_socket()).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        RawDbus {
            stream,
            buffered: Vec::new(),
        }
    }

    /// Connected, authenticated (as whoever the kernel says this process
    /// is) with fd passing, and said Hello; returns the unique name.
    pub fn joined(broker: &Broker) -> (Self, String) {
        let mut raw = Self::connect(broker);
        raw.send(b"\0AUTH EXTERNAL\r\nDATA\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n");
        assert_eq!(raw.read_line(), "DATA\r\n");
        let lines = raw.read_line() + &raw.read_line();
        assert!(
            lines.starts_with("OK ") && lines.contains("AGREE_UNIX_FD"),
            "{lines}"
        );
        raw.send(&raw::driver_call(1, raw::DRIVER, "Hello", &[]));
        let (reply, body) = raw.message().expect("Hello answered");
        assert_eq!(reply.kind, MessageType::MethodReturn);
        let name = pidbus_protocol::dbus::value::unmarshal(&reply.signature, &body).unwrap();
        let name = name[0].as_str().unwrap().to_owned();
        let (acquired, _) = raw.message().expect("NameAcquired of the unique name");
        assert_eq!(acquired.member.as_deref(), Some("NameAcquired"));
        (raw, name)
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads what the broker sent; false once it closed the connection.
    pub fn fill(&mut self) -> bool {
        let mut buf = [0; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffered.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// The next line of the handshake.
    pub fn read_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buffered.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffered.drain(..end + 2).collect();
                return String::from_utf8_lossy(&line).into_owned();
            }
            assert!(self.fill(), "closed during the handshake");
        }
    }

    /// The next message, or `None` once the broker closed the connection.
    pub fn message(&mut self) -> Option<(Header, Vec<u8>)> {
        loop {
            if let Some(prefix) = self.buffered.first_chunk::<16>() {
                let len = header::message_len(prefix, 1 << 27).unwrap();
                if self.buffered.len() >= len {
                    let bytes: Vec<u8> = self.buffered.drain(..len).collect();
                    let (header, _, at) = header::parse(&bytes).unwrap();
                    return Some((header, bytes[at..].to_vec()));
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next reply or error (signals before it are skipped).
    pub fn answer(&mut self) -> Option<(Header, Vec<u8>)> {
        loop {
            let (header, body) = self.message()?;
            if header.kind != MessageType::Signal {
                return Some((header, body));
            }
        }
    }

    /// Whether the broker closed the connection (skipping what it sent).
    pub fn closed(&mut self) -> bool {
        while self.message().is_some() {}
        true
    }
}

impl RawDbus {
    /// Writes one message with `fds` attached (`SCM_RIGHTS`).
    pub fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        if fds.is_empty() {
            return self.stream.write_all(bytes);
        }
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        control.push(rustix::net::SendAncillaryMessage::ScmRights(fds));
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[std::io::IoSlice::new(bytes)],
            &mut control,
            rustix::net::SendFlags::NOSIGNAL,
        )?;
        // The descriptors went with the first byte; the rest follows plain.
        self.stream.write_all(&bytes[sent..])
    }
}
