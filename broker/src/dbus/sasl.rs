//! The D-Bus authentication handshake, server side: SASL `EXTERNAL` only,
//! checked against the connection's `SO_PEERCRED` uid, with unix-fd
//! negotiation, until `BEGIN`.
//!
//! The exchange is line-based (`\r\n`), starts with one nul byte from the
//! client, and may be pipelined: a client can send `AUTH`, `NEGOTIATE_UNIX_FD`,
//! `BEGIN` and its first messages in one write, so whatever follows `BEGIN`
//! belongs to the message stream.

/// Longest line the broker reads, and most bytes and commands a handshake
/// may take: a client that talks longer is not authenticating.
pub const MAX_LINE: usize = 1024;
/// Most bytes before `BEGIN`.
pub const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;
/// Most commands before `BEGIN`.
pub const MAX_COMMANDS: usize = 32;

/// Where the handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the nul byte.
    Nul,
    /// Waiting for an `AUTH`.
    Auth,
    /// `AUTH EXTERNAL` without an identity: waiting for `DATA`.
    Data,
    /// Authenticated: waiting for `NEGOTIATE_UNIX_FD` or `BEGIN`.
    Authenticated,
}

/// What the handshake produced from the bytes fed to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More input is needed; send these reply lines first.
    Continue(Vec<u8>),
    /// `BEGIN` was received: send these reply lines; what follows the
    /// bytes the handshake used is the message stream.
    Done(Vec<u8>),
}

/// Why the connection is closed during the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The first byte was not nul.
    #[error("the authentication handshake must start with a nul byte")]
    NoNul,
    /// A line, the whole handshake or the number of commands is too long.
    #[error("the authentication handshake is too long ({0})")]
    TooLong(&'static str),
    /// A line is not ASCII text.
    #[error("the authentication handshake holds a line that is not ASCII text")]
    NotText,
}

/// One connection's handshake.
#[derive(Debug)]
pub struct Handshake {
    uid: u32,
    guid: String,
    stage: Stage,
    fd_passing: bool,
    commands: usize,
    fed: usize,
}

impl Handshake {
    /// The handshake of a connection whose `SO_PEERCRED` uid is `uid`, on
    /// the bus whose id is `guid`.
    pub fn new(uid: u32, guid: &str) -> Self {
        Handshake {
            uid,
            guid: guid.to_owned(),
            stage: Stage::Nul,
            fd_passing: false,
            commands: 0,
            fed: 0,
        }
    }

    /// Whether the client asked for unix-fd passing (and got it).
    pub fn fd_passing(&self) -> bool {
        self.fd_passing
    }

    /// Whether the client has authenticated (it may still be before `BEGIN`).
    pub fn authenticated(&self) -> bool {
        self.stage == Stage::Authenticated
    }

    /// Reads the complete lines at the start of `input` (bytes not yet
    /// used); returns what to do and how many bytes were used.
    pub fn feed(&mut self, input: &[u8]) -> Result<(Step, usize), SaslError> {
        let mut reply = Vec::new();
        let mut at = 0;
        if self.stage == Stage::Nul {
            match input.first() {
                None => return Ok((Step::Continue(reply), 0)),
                Some(0) => {
                    at = 1;
                    self.stage = Stage::Auth;
                }
                Some(_) => return Err(SaslError::NoNul),
            }
        }
        while let Some(end) = find_crlf(&input[at..]) {
            let line = &input[at..at + end];
            at += end + 2;
            self.count(end + 2)?;
            let line = std::str::from_utf8(line)
                .ok()
                .filter(|l| l.is_ascii())
                .ok_or(SaslError::NotText)?;
            if self.command(line, &mut reply) {
                return Ok((Step::Done(reply), at));
            }
        }
        if input.len() - at > MAX_LINE {
            return Err(SaslError::TooLong("a line"));
        }
        Ok((Step::Continue(reply), at))
    }

    fn count(&mut self, bytes: usize) -> Result<(), SaslError> {
        self.fed += bytes;
        self.commands += 1;
        if self.fed > MAX_HANDSHAKE_BYTES {
            return Err(SaslError::TooLong("bytes"));
        }
        if self.commands > MAX_COMMANDS {
            return Err(SaslError::TooLong("commands"));
        }
        Ok(())
    }

    /// Acts on one line; true on `BEGIN` after authentication.
    fn command(&mut self, line: &str, reply: &mut Vec<u8>) -> bool {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (self.stage, verb) {
            (Stage::Authenticated, "BEGIN") => return true,
            (Stage::Authenticated, "NEGOTIATE_UNIX_FD") => {
                self.fd_passing = true;
                reply.extend_from_slice(b"AGREE_UNIX_FD\r\n");
            }
            (_, "AUTH") => self.auth(rest, reply),
            (Stage::Data, "DATA") => self.external(Some(rest.trim()), reply),
            (_, "CANCEL" | "ERROR") => self.reject(reply),
            (Stage::Auth, "BEGIN" | "NEGOTIATE_UNIX_FD" | "DATA") => {
                reply.extend_from_slice(b"ERROR \"authenticate first\"\r\n");
            }
            _ => reply.extend_from_slice(b"ERROR \"unknown command\"\r\n"),
        }
        false
    }

    fn auth(&mut self, rest: &str, reply: &mut Vec<u8>) {
        let mut parts = rest.split(' ').filter(|p| !p.is_empty());
        match (parts.next(), parts.next()) {
            (Some("EXTERNAL"), Some(identity)) => self.external(Some(identity), reply),
            (Some("EXTERNAL"), None) => {
                self.stage = Stage::Data;
                reply.extend_from_slice(b"DATA\r\n");
            }
            _ => self.reject(reply),
        }
    }

    /// `EXTERNAL` with the identity the client gave (hex of its decimal
    /// uid; empty: "whoever the kernel says I am").
    fn external(&mut self, identity: Option<&str>, reply: &mut Vec<u8>) {
        let claimed = identity.filter(|i| !i.is_empty()).map(decode_hex_uid);
        match claimed {
            None => self.accept(reply),
            Some(Some(uid)) if uid == self.uid => self.accept(reply),
            Some(_) => self.reject(reply),
        }
    }

    fn accept(&mut self, reply: &mut Vec<u8>) {
        self.stage = Stage::Authenticated;
        reply.extend_from_slice(format!("OK {}\r\n", self.guid).as_bytes());
    }

    fn reject(&mut self, reply: &mut Vec<u8>) {
        self.stage = Stage::Auth;
        reply.extend_from_slice(b"REJECTED EXTERNAL\r\n");
    }
}

/// Where the first handshake line of `bytes` ends (its `\r\n`).
pub(super) fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// The uid a client claims: hex-encoded ASCII decimal (`31303030` is 1000).
fn decode_hex_uid(hex: &str) -> Option<u32> {
    if hex.len() % 2 != 0 || hex.len() > 20 {
        return None;
    }
    let digits: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    let digits = String::from_utf8(digits?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], uid: u32) -> Result<(Step, usize, Handshake), SaslError> {
        let mut h = Handshake::new(uid, "0123456789abcdef0123456789abcdef");
        let (step, used) = h.feed(input)?;
        Ok((step, used, h))
    }

    #[test]
    fn pipelined_external_with_fds_and_begin() {
        let input = b"\0AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nlmessage";
        let (step, used, h) = run(input, 1000).unwrap();
        let Step::Done(reply) = step else {
            panic!("{step:?}");
        };
        assert_eq!(
            reply,
            b"OK 0123456789abcdef0123456789abcdef\r\nAGREE_UNIX_FD\r\n".to_vec()
        );
        assert_eq!(&input[used..], b"lmessage");
        assert!(h.fd_passing());
    }

    #[test]
    fn external_without_identity_asks_for_data() {
        let (step, used, mut h) = run(b"\0AUTH EXTERNAL\r\n", 0).unwrap();
        assert_eq!(step, Step::Continue(b"DATA\r\n".to_vec()));
        assert_eq!(used, 16);
        let (step, _) = h.feed(b"DATA\r\nBEGIN\r\n").unwrap();
        assert!(matches!(step, Step::Done(_)), "{step:?}");
    }

    #[test]
    fn another_uid_or_mechanism_is_rejected() {
        let (step, ..) = run(b"\0AUTH EXTERNAL 30\r\n", 1000).unwrap();
        assert_eq!(step, Step::Continue(b"REJECTED EXTERNAL\r\n".to_vec()));
        let (step, ..) = run(b"\0AUTH DBUS_COOKIE_SHA1 31\r\n", 0).unwrap();
        assert_eq!(step, Step::Continue(b"REJECTED EXTERNAL\r\n".to_vec()));
        let (step, ..) = run(b"\0AUTH\r\n", 0).unwrap();
        assert_eq!(step, Step::Continue(b"REJECTED EXTERNAL\r\n".to_vec()));
        let (step, ..) = run(b"\0BEGIN\r\n", 0).unwrap();
        assert_eq!(
            step,
            Step::Continue(b"ERROR \"authenticate first\"\r\n".to_vec())
        );
        let (step, ..) = run(b"\0HELLO\r\n", 0).unwrap();
        assert_eq!(
            step,
            Step::Continue(b"ERROR \"unknown command\"\r\n".to_vec())
        );
    }

    #[test]
    fn hostile_handshakes_end() {
        assert_eq!(run(b"AUTH", 0).unwrap_err(), SaslError::NoNul);
        let long = [b"\0".to_vec(), vec![b'A'; MAX_LINE + 1]].concat();
        assert!(matches!(run(&long, 0), Err(SaslError::TooLong(_))));
        let many = [b"\0".to_vec(), b"AUTH\r\n".repeat(MAX_COMMANDS + 1)].concat();
        assert!(matches!(run(&many, 0), Err(SaslError::TooLong(_))));
        assert_eq!(run(b"\0AUTH \xff\r\n", 0).unwrap_err(), SaslError::NotText);
        // Incomplete input just waits.
        let (step, used, _) = run(b"\0AUTH EXT", 0).unwrap();
        assert_eq!((step, used), (Step::Continue(Vec::new()), 1));
        assert_eq!(decode_hex_uid("3130"), Some(10));
        assert_eq!(decode_hex_uid("2d31"), None);
    }
}
