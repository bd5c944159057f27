//! Per-message sender verification: is the process that sent *this record*
//! the process that opened the connection?
//!
//! A connected socket can change hands: passed with `SCM_RIGHTS`, or
//! inherited by a child that outlives its parent. The broker therefore checks
//! every record, not just the connection:
//!
//! - **Credentials** (the common case): with `SO_PASSCRED` the kernel attaches
//!   the sending process's pid to every record. If it equals the connection's
//!   pid *and* the connection's pidfd has not exited, the sender is the
//!   original process: a live process's pid cannot belong to anyone else. A
//!   different pid is a different process (the kernel reports the thread-group
//!   id, in our namespace), so no further check is needed on mismatch.
//! - **Pidfd**: for a peer whose pid is not visible in the broker's pid
//!   namespace (pid 0), `SO_PASSPIDFD` attaches the sender's pidfd to every
//!   record and its pidfs id is compared with the connection's. Costs an fd
//!   install and close per record, hence only where needed.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};

use pidbus_protocol::ProcessIdentity;
use pidbus_protocol::pidfd;
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
    /// else before the Welcome, which the broker sends after enabling the
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
pub trait ProvableSocket {
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
    /// outside our pid namespace on a kernel without pidfs).
    pub fn enable(
        socket: &impl ProvableSocket,
        identity: &ProcessIdentity,
    ) -> std::io::Result<Option<Self>> {
        if identity.pid != 0 {
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

    /// Checks what came with one received record or read.
    /// `connection_pidfd` is the pidfd taken at accept time.
    pub fn verify(
        &self,
        received: Attached<'_>,
        connection_pidfd: BorrowedFd<'_>,
    ) -> Result<(), SenderMismatch> {
        self.verify_received(received, &mut Liveness::after_receipt(connection_pidfd))
    }

    /// Checks what came with one record of a batch; `alive` was made
    /// after the batch was received, and asks the kernel at most once for
    /// all of its records.
    pub fn verify_received(
        &self,
        received: Attached<'_>,
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
                if same_pid && sent_by_connecting_process(received, alive, pidfs_id) {
                    return Ok(());
                }
                // pid 0: the kernel attached no credentials to this record.
                let proof_missing = creds.pid == 0;
                let status = if same_pid {
                    ", the connecting process has exited and been reaped"
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

/// A record whose credentials carry the connection's pid: was it sent by
/// the connecting process, rather than a later process that got the same pid?
///
/// - The process is alive: a live process's pid belongs to nobody else.
/// - It exited, and the record carries the sender's pidfd (the peer task
///   turns on `SO_PASSPIDFD` when it sees the exit, so messages the process
///   sent just before exiting are still routed): compare pidfs ids, exact.
/// - It exited and is not yet reaped: a zombie still holds its pid, so no
///   other process can have sent with it.
/// - Reaped, no pidfd: the pid may have been reused; not provable.
fn sent_by_connecting_process(
    received: Attached<'_>,
    alive: &mut Liveness<'_>,
    pidfs_id: Option<u64>,
) -> bool {
    if alive.alive() {
        return true;
    }
    let connection_pidfd = alive.pidfd;
    if let Some(sender) = received.pidfd {
        return pidfs_id.is_some() && pidfd::pidfs_id(sender.as_fd()).ok().flatten() == pidfs_id;
    }
    matches!(
        pidfd::pidfd_state(connection_pidfd),
        Ok(pidfd::PidfdState::Visible(_) | pidfd::PidfdState::NotInNamespace)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidbus_protocol::transport::Credentials;

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
        assert!(
            proof
                .verify(Attached::from(&record(creds(me as i32))), own.as_fd())
                .is_ok()
        );
        let err = proof
            .verify(Attached::from(&record(creds(me as i32 + 1))), own.as_fd())
            .unwrap_err();
        assert!(err.sender.contains(&format!("pid {}", me + 1)), "{err}");
        assert!(
            proof
                .verify(Attached::from(&record(None)), own.as_fd())
                .unwrap_err()
                .proof_missing
        );
        // pid 0 is what the receiver sees for a record sent without credentials.
        assert!(
            proof
                .verify(Attached::from(&record(creds(0))), own.as_fd())
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
        let err = proof
            .verify(Attached::from(&record(creds)), child_pidfd.as_fd())
            .unwrap_err();
        assert!(err.sender.contains("has exited"), "{err}");
    }

    #[test]
    fn modes_parse() {
        assert_eq!("strict".parse(), Ok(SenderCheckMode::Strict));
        assert_eq!("reject".parse(), Ok(SenderCheckMode::Reject));
        assert!("lenient".parse::<SenderCheckMode>().is_err());
    }
}
