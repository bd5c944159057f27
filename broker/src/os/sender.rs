//! Per-message sender verification: is the process that sent *this record*
//! the process that opened the connection?
//!
//! A connected socket can change hands: passed with `SCM_RIGHTS`, or
//! inherited by a child that outlives its parent. The broker therefore checks
//! every record, not just the connection:
//!
//! - **Credentials** (the common case): with `SO_PASSCRED` the kernel attaches
//!   the sending process's pid to every record. A different pid is a
//!   different process (the kernel reports the thread-group id, in our
//!   namespace). The same pid is the connecting process if that process
//!   still held its pid when the record was written: a process keeps its pid
//!   until it is reaped, and only then can another take it. Just before each
//!   read the broker asks the kernel, in one `poll`, whether the socket has
//!   something waiting and *then* whether the process has been reaped
//!   ([`SenderCheck::before_read`]): if it has not, what was waiting was
//!   written while the pid was the process's own. A stream read never
//!   joins bytes of two writers, so a whole D-Bus read is proven that way.
//!   On the native socket the broker first counts the bytes of the records
//!   waiting (`SIOCINQ`, [`SenderCheck::before_receive`]): the first record
//!   a receive takes, and every record within the bytes counted, are
//!   proven; a record beyond them (it arrived during the receive) by asking
//!   again after it ([`Liveness`]).
//! - **Pidfd**, once the process has exited: the broker turns on
//!   `SO_PASSPIDFD`, and the kernel attaches to every record read from then
//!   on a pidfd of the process that *wrote* it (Linux ≥ 6.17 does so even
//!   when that process has been reaped); its pidfs id is compared with the
//!   connection's, which is exact. So a message written just before exiting
//!   is routed however late it is read, and a socket left to another
//!   process speaks for nobody.
//! - **Pidfd** from the start, for a peer whose pid is not visible in the
//!   broker's pid namespace (pid 0). Costs an fd install and close per
//!   record, hence only where needed.
//!
//! What the kernel cannot prove: a record with the connection's pid that
//! arrived *during* a native batch's receive (after the bytes were counted
//! and the process was asked about), when the process was reaped before
//! the broker could ask again, and any record
//! read after the reap on a kernel that cannot give a reaped process's
//! pidfd. Such a record is refused, visibly (see the README).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use pidbus_protocol::ProcessIdentity;
use pidbus_protocol::pidfd::{self, Life};
use pidbus_protocol::transport::{Chunk, Credentials, Received, SeqPacket, Stream};

/// What the broker does with a record from another process (named in
/// the config file as `reject`, `strict` or `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderCheckMode {
    /// Refuse the message with a `SenderMismatch` error to the sender and log
    /// it; the connection stays open.
    #[default]
    Reject,
    /// Disconnect the connection.
    Strict,
    /// Do not check senders at all: every record is taken as sent by the
    /// connecting process. Exists to measure what the check costs (the
    /// `sender_check` benchmark); a socket handed to another process then
    /// speaks with the original process's identity.
    Off,
}

impl std::fmt::Display for SenderCheckMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SenderCheckMode::Reject => "reject",
            SenderCheckMode::Strict => "strict",
            SenderCheckMode::Off => "off",
        })
    }
}

impl std::str::FromStr for SenderCheckMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(SenderCheckMode::Reject),
            "strict" => Ok(SenderCheckMode::Strict),
            "off" => Ok(SenderCheckMode::Off),
            other => Err(format!(
                "unknown sender check mode {other:?}; use reject, strict or off"
            )),
        }
    }
}

/// How this connection's records are proven to come from its process.
#[derive(Debug, Clone, Copy)]
pub enum SenderProof {
    /// Compare the record's `SCM_CREDENTIALS` pid with this pid.
    Credentials {
        /// The connection's pid in the broker's namespace.
        pid: u32,
        /// The connection's pidfs id, compared with a record's `SCM_PIDFD`
        /// once the process has exited (see `sent_by_connecting_process`).
        pidfs_id: Option<u64>,
    },
    /// Compare the pidfs id of the record's `SCM_PIDFD` with this id.
    Pidfd {
        /// The connection's pidfs id.
        pidfs_id: u64,
    },
}

/// The sender of a record is not the connection's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderMismatch {
    /// What the kernel says about the actual sender.
    pub sender: String,
    /// The record carried no proof at all (no credentials or pidfd attached).
    ///
    /// Tolerated on the Hello alone. The kernel attaches credentials to a
    /// record only if, at send time, the receiving socket has `SO_PASSCRED` or
    /// is not yet accepted; `accept` grafts the socket before it copies the
    /// listener's flags, so a record sent in that instant carries none (the
    /// receiver sees pid 0). The same holds for `SO_PASSPIDFD`, enabled after
    /// accept. Only the Hello can be sent that early (a client sends nothing
    /// else before its Hello is answered, which the broker does after enabling the
    /// proof), and the Hello grants nothing: the identity comes from
    /// `SO_PEERPIDFD`. Every later record must carry proof.
    pub proof_missing: bool,
}

impl fmt::Display for SenderMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message sent by another process ({}) than the one that connected; \
             a pidbus connection may only be used by the process that opened it",
            self.sender
        )
    }
}

/// The proof the kernel attached to what was received: a native record or
/// one read of a D-Bus stream.
#[derive(Debug, Clone, Copy)]
pub struct Attached<'a> {
    /// `SCM_CREDENTIALS`.
    pub credentials: Option<Credentials>,
    /// `SCM_PIDFD`.
    pub pidfd: Option<&'a std::os::fd::OwnedFd>,
}

impl<'a> From<&'a Received> for Attached<'a> {
    fn from(record: &'a Received) -> Self {
        Attached {
            credentials: record.credentials,
            pidfd: record.pidfd.as_ref(),
        }
    }
}

impl<'a> From<&'a Chunk> for Attached<'a> {
    fn from(chunk: &'a Chunk) -> Self {
        Attached {
            credentials: chunk.credentials,
            pidfd: chunk.pidfd.as_ref(),
        }
    }
}

/// A socket the kernel can attach sender proof to: either face's.
pub trait ProvableSocket: AsFd {
    /// Turns `SO_PASSCRED` on.
    fn pass_credentials(&self) -> std::io::Result<()>;
    /// Turns `SO_PASSPIDFD` on.
    fn pass_pidfd(&self) -> std::io::Result<()>;
}

impl ProvableSocket for SeqPacket {
    fn pass_credentials(&self) -> std::io::Result<()> {
        self.set_pass_credentials(true)
    }
    fn pass_pidfd(&self) -> std::io::Result<()> {
        self.set_pass_pidfd(true)
    }
}

impl ProvableSocket for Stream {
    fn pass_credentials(&self) -> std::io::Result<()> {
        self.set_pass_credentials(true)
    }
    fn pass_pidfd(&self) -> std::io::Result<()> {
        self.set_pass_pidfd(true)
    }
}

impl SenderProof {
    /// Chooses the proof for a connection and asks the kernel for the
    /// ancillary data it needs. `None`: the kernel can give no proof (peer
    /// outside our pid namespace on a kernel without pidfs). A peer whose
    /// pid is not its own any more (outside our namespace, or exited at
    /// connect) is proven by pidfd.
    pub fn enable(
        socket: &impl ProvableSocket,
        identity: &ProcessIdentity,
    ) -> std::io::Result<Option<Self>> {
        // A process gone before the broker accepted it: its pid may be
        // another's already, so only the writer's pidfd proves a record.
        if identity.pid != 0 && !identity.exited_at_connect {
            socket.pass_credentials()?;
            return Ok(Some(SenderProof::Credentials {
                pid: identity.pid,
                pidfs_id: identity.pidfs_id,
            }));
        }
        match identity.pidfs_id {
            Some(pidfs_id) => {
                socket.pass_pidfd()?;
                Ok(Some(SenderProof::Pidfd { pidfs_id }))
            }
            None => Ok(None),
        }
    }

    /// Checks what came with one record or read. `before` is what the
    /// broker learned just before the read ([`SenderCheck::before_read`]),
    /// as it applies to this record; `alive` was made after the read, and
    /// asks the kernel at most once for all the records of a batch.
    pub fn verify_received(
        &self,
        received: Attached<'_>,
        before: BeforeRead,
        alive: &mut Liveness<'_>,
    ) -> Result<(), SenderMismatch> {
        match *self {
            SenderProof::Credentials { pid, pidfs_id } => {
                let Some(creds) = received.credentials else {
                    return Err(SenderMismatch {
                        sender: "no credentials attached".into(),
                        proof_missing: true,
                    });
                };
                let same_pid = u32::try_from(creds.pid).is_ok_and(|p| p == pid);
                if same_pid
                    && (before.written_while_pid_held
                        || sent_by_connecting_process(received, alive, pidfs_id))
                {
                    return Ok(());
                }
                // pid 0: the kernel attached no credentials to this record.
                let proof_missing = creds.pid == 0;
                let status = if same_pid {
                    ", the connecting process has exited and been reaped, and the \
                     kernel could not say whether it wrote this"
                } else {
                    ""
                };
                Err(SenderMismatch {
                    sender: format!(
                        "pid {} uid {} gid {}{status}",
                        creds.pid, creds.uid, creds.gid
                    ),
                    proof_missing,
                })
            }
            SenderProof::Pidfd { pidfs_id } => {
                let sender_id = received
                    .pidfd
                    .as_ref()
                    .and_then(|fd| pidfd::pidfs_id(fd.as_fd()).ok().flatten());
                if sender_id == Some(pidfs_id) {
                    return Ok(());
                }
                Err(SenderMismatch {
                    sender: match sender_id {
                        Some(id) => format!("pidfs id {id}"),
                        None => "no pidfd attached".into(),
                    },
                    proof_missing: received.pidfd.is_none(),
                })
            }
        }
    }
}

/// What the broker learned just before a read, about the records it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeforeRead {
    /// Whatever was waiting in the socket was written while the connecting
    /// process still held its pid: a record carrying that pid and waiting
    /// then is the process's own.
    pub written_while_pid_held: bool,
    /// How many bytes of records were waiting then, counted before the
    /// process was asked about (0: not counted).
    pub waiting: usize,
}

impl BeforeRead {
    /// Nothing learned: each record is proven after it is received.
    pub const NOTHING: BeforeRead = BeforeRead {
        written_while_pid_held: false,
        waiting: 0,
    };

    /// What applies to the record at `index` of one receive, whose last
    /// byte is byte `end` of the receive: the first record was surely
    /// waiting before it (a stream read is one "record": the kernel never
    /// joins two writers' bytes in one read), and so was every record
    /// within the bytes counted as waiting; a later one may have arrived
    /// during the receive.
    pub fn for_record(self, index: usize, end: usize) -> BeforeRead {
        if index == 0 || end <= self.waiting {
            self
        } else {
            Self::NOTHING
        }
    }
}

/// One connection's sender check: its proof, and whether the kernel has
/// been asked to attach a pidfd to every record (once the process exited).
#[derive(Debug)]
pub struct SenderCheck {
    proof: Option<SenderProof>,
    pidfds_attached: AtomicBool,
}

impl SenderCheck {
    /// The check for a connection whose proof [`SenderProof::enable`] chose.
    pub fn new(proof: Option<SenderProof>) -> Self {
        let pidfds_attached = matches!(proof, Some(SenderProof::Pidfd { .. }));
        SenderCheck {
            proof,
            pidfds_attached: AtomicBool::new(pidfds_attached),
        }
    }

    /// Asked just before each read: `None` if nothing is waiting after
    /// all (the read would find nothing, so the caller waits instead).
    ///
    /// One `poll` asks whether the socket has something waiting and then
    /// where the connecting process stands. Not reaped: what was waiting
    /// was written while the process held its pid. Exited: from now on the
    /// kernel attaches the writer's pidfd to each record (this read's
    /// included), which proves a record however late it is read.
    pub fn before_read(
        &self,
        socket: &impl ProvableSocket,
        connection_pidfd: BorrowedFd<'_>,
    ) -> io::Result<Option<BeforeRead>> {
        if !self.proves_by_liveness() {
            // Pidfds are attached to every record already, or nothing
            // can be proven: no question helps.
            return Ok(Some(BeforeRead::NOTHING));
        }
        let seen = pidfd::socket_then_process(socket.as_fd(), connection_pidfd)?;
        if !seen.readable {
            return Ok(None);
        }
        if seen.process == Life::Running {
            return Ok(Some(BeforeRead {
                written_while_pid_held: true,
                waiting: 0,
            }));
        }
        self.attach_pidfds(socket)?;
        // Kernels before 6.9 report a reaped process as readable only, not
        // hung up: ask its fdinfo (after the socket still, so the order
        // argument holds).
        Ok(Some(BeforeRead {
            written_while_pid_held: seen.process != Life::Reaped
                && still_holds_its_pid(connection_pidfd),
            waiting: 0,
        }))
    }

    /// [`before_read`](Self::before_read) for a native socket, which also
    /// counts the bytes of the records waiting (`SIOCINQ`) before the
    /// process is asked about: a process that writes several records and
    /// is reaped at once has all of them proven, not only the first a
    /// receive takes.
    pub fn before_receive(
        &self,
        socket: &SeqPacket,
        connection_pidfd: BorrowedFd<'_>,
    ) -> io::Result<Option<BeforeRead>> {
        // Counted first: every byte counted was written before the
        // question `before_read` asks.
        let waiting = if self.proves_by_liveness() {
            socket.waiting_bytes()?
        } else {
            0
        };
        let before = self.before_read(socket, connection_pidfd)?;
        Ok(before.map(|before| BeforeRead {
            waiting: if before.written_while_pid_held {
                waiting
            } else {
                0
            },
            ..before
        }))
    }

    /// Whether records are proven by their credentials and the process's
    /// liveness, which a question before each read helps: not once pidfds
    /// are attached to every record, nor where nothing can be proven.
    fn proves_by_liveness(&self) -> bool {
        matches!(self.proof, Some(SenderProof::Credentials { .. }))
            && !self.pidfds_attached.load(Ordering::Relaxed)
    }

    /// Has the kernel attach the writer's pidfd to every record from now
    /// on (`SO_PASSPIDFD`); asks it once per connection.
    pub fn attach_pidfds(&self, socket: &impl ProvableSocket) -> io::Result<()> {
        if self.pidfds_attached.load(Ordering::Relaxed) {
            return Ok(());
        }
        socket.pass_pidfd()?;
        self.pidfds_attached.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Checks one record or read (see [`SenderProof::verify_received`]);
    /// a connection the kernel can give no proof for passes.
    pub fn verify(
        &self,
        received: Attached<'_>,
        before: BeforeRead,
        alive: &mut Liveness<'_>,
    ) -> Result<(), SenderMismatch> {
        match &self.proof {
            Some(proof) => proof.verify_received(received, before, alive),
            None => Ok(()),
        }
    }
}

/// Whether the connecting process was alive once some records had been
/// received. If it was, its pid was its own all along, so every one of
/// those records that carries that pid was sent by it: one question to the
/// kernel answers for a whole batch.
pub struct Liveness<'a> {
    pidfd: BorrowedFd<'a>,
    alive: Option<bool>,
}

impl<'a> Liveness<'a> {
    /// For records already received; `pidfd` is the connection's, taken
    /// at accept time. The kernel is asked at the first record that needs
    /// it, which is after they were all received.
    pub fn after_receipt(pidfd: BorrowedFd<'a>) -> Self {
        Liveness { pidfd, alive: None }
    }

    fn alive(&mut self) -> bool {
        *self
            .alive
            .get_or_insert_with(|| matches!(pidfd::has_exited(self.pidfd), Ok(false)))
    }
}

/// A record whose credentials carry the connection's pid, received without
/// proof from before the read: was it sent by the connecting process, rather
/// than a later process that got the same pid?
///
/// - The process is alive: a live process's pid belongs to nobody else.
/// - The record carries the writer's pidfd (attached once the process
///   exited): compare pidfs ids, exact.
/// - It exited and is not yet reaped: a zombie still holds its pid, so no
///   other process can have sent with it.
/// - Reaped, no pidfd: the pid may have been reused; not provable.
fn sent_by_connecting_process(
    received: Attached<'_>,
    alive: &mut Liveness<'_>,
    pidfs_id: Option<u64>,
) -> bool {
    if let Some(sender) = received.pidfd {
        return pidfs_id.is_some() && pidfd::pidfs_id(sender.as_fd()).ok().flatten() == pidfs_id;
    }
    alive.alive() || still_holds_its_pid(alive.pidfd)
}

/// Whether the process behind `pidfd` has not been reaped (a zombie still
/// holds its pid, so no other process can have it), as its fdinfo says.
fn still_holds_its_pid(pidfd: BorrowedFd<'_>) -> bool {
    matches!(
        pidfd::pidfd_state(pidfd),
        Ok(pidfd::PidfdState::Visible(_) | pidfd::PidfdState::NotInNamespace)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidbus_protocol::transport::Credentials;

    /// `proof`'s verdict on a record with `credentials`, with nothing
    /// learned before the read and liveness asked after it.
    fn verdict(
        proof: &SenderProof,
        credentials: Option<Credentials>,
        pidfd: BorrowedFd<'_>,
    ) -> Result<(), SenderMismatch> {
        let alive = &mut Liveness::after_receipt(pidfd);
        proof.verify_received(
            Attached::from(&record(credentials)),
            BeforeRead::NOTHING,
            alive,
        )
    }

    #[test]
    fn records_within_the_bytes_counted_before_the_question_are_covered() {
        let before = BeforeRead {
            written_while_pid_held: true,
            waiting: 300,
        };
        // The first record of a receive was waiting, however long.
        assert_eq!(before.for_record(0, 1000), before);
        // Later ones only if they end within the bytes counted.
        assert_eq!(before.for_record(1, 250), before);
        assert_eq!(before.for_record(2, 300), before);
        assert_eq!(before.for_record(3, 301), BeforeRead::NOTHING);
        // Nothing counted: only the first.
        let uncounted = BeforeRead {
            waiting: 0,
            ..before
        };
        assert_eq!(uncounted.for_record(1, 10), BeforeRead::NOTHING);
    }

    fn record(credentials: Option<Credentials>) -> Received {
        Received {
            data: vec![1],
            fds: vec![],
            credentials,
            pidfd: None,
        }
    }

    #[test]
    fn same_live_pid_passes_and_any_other_pid_fails() {
        let me = std::process::id();
        let own = pidfd::pidfd_open(me).unwrap();
        let proof = SenderProof::Credentials {
            pid: me,
            pidfs_id: pidfd::own_pidfs_id().unwrap(),
        };
        let creds = |pid: i32| {
            Some(Credentials {
                pid,
                uid: 0,
                gid: 0,
            })
        };
        assert!(verdict(&proof, creds(me as i32), own.as_fd()).is_ok());
        let err = verdict(&proof, creds(me as i32 + 1), own.as_fd()).unwrap_err();
        assert!(err.sender.contains(&format!("pid {}", me + 1)), "{err}");
        assert!(
            verdict(&proof, None, own.as_fd())
                .unwrap_err()
                .proof_missing
        );
        // pid 0 is what the receiver sees for a record sent without credentials.
        assert!(
            verdict(&proof, creds(0), own.as_fd())
                .unwrap_err()
                .proof_missing
        );
        assert!(!err.proof_missing);
    }

    #[test]
    fn same_pid_after_the_connecting_process_exited_fails() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pidfd = pidfd::pidfd_open(child.id()).unwrap();
        child.wait().unwrap();
        let proof = SenderProof::Credentials {
            pid: child.id(),
            pidfs_id: pidfd::pidfs_id(child_pidfd.as_fd()).unwrap(),
        };
        let creds = Some(Credentials {
            pid: child.id() as i32,
            uid: 0,
            gid: 0,
        });
        let err = verdict(&proof, creds, child_pidfd.as_fd()).unwrap_err();
        assert!(err.sender.contains("has exited"), "{err}");
    }

    #[test]
    fn modes_parse() {
        assert_eq!("strict".parse(), Ok(SenderCheckMode::Strict));
        assert_eq!("reject".parse(), Ok(SenderCheckMode::Reject));
        assert!("lenient".parse::<SenderCheckMode>().is_err());
    }
}
