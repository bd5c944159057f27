//! [`PidFd`]: a handle on another process, to wait for it, learn how it
//! ended and signal it, without PID races and across pid namespaces.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use pidbus_protocol::pidfd::{self, AsyncPidfd, PidfdState};
use pidbus_protocol::{ExitStatus, PeerId};

use crate::error::{Error, Result};

/// Where a process is in its life, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// It runs.
    Running,
    /// It exited; its parent has not reaped it yet, so how it ended is not
    /// known yet.
    Exited,
    /// It exited and was reaped: `Some` says how it ended, `None` means the
    /// kernel cannot say (before Linux 6.15, or — for a [`PidFd`] — a
    /// process outside this process's pid namespace).
    Reaped(Option<ExitStatus>),
}

/// A pidfd: a handle on one process that can never refer to another, even
/// after its PID is reused. Get one for a peer with
/// [`Connection::pidfd`](crate::Connection::pidfd), or wrap one you hold
/// with [`PidFd::from_fd`].
///
/// It works for processes that are not your children: waiting uses the
/// pidfd's readiness (never `waitid(P_PIDFD)`, which only works for
/// children), and the exit status comes from the kernel
/// (`PIDFD_GET_INFO`/`PIDFD_INFO_EXIT`, Linux 6.15+) once the process's
/// parent has reaped it.
///
/// ```no_run
/// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
/// let service = bus.pidfd("org.example.Service").await?;
/// println!("pid here: {:?}, pidfs id {:?}", service.pid()?, service.pidfs_id());
/// let status = service.reaped().await?;
/// println!("it ended: {status:?}");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    peer: Option<PeerId>,
    pidfs_id: Option<u64>,
}

impl PidFd {
    /// Wraps a pidfd (from `pidfd_open(2)`, `SO_PEERPIDFD`, or received
    /// over a socket). Fails if `fd` is not a pidfd.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        pidfd::pidfd_state(fd.as_fd()).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("the descriptor is not a pidfd: {e}"),
            ))
        })?;
        let pidfs_id = pidfd::pidfs_id(fd.as_fd())?;
        Ok(PidFd {
            fd,
            peer: None,
            pidfs_id,
        })
    }

    /// A pidfd the broker handed out for `peer`, checked against the pidfs
    /// id the broker announced with it.
    pub(crate) fn from_broker(fd: OwnedFd, peer: PeerId, announced: Option<u64>) -> Result<Self> {
        let mut pidfd = PidFd::from_fd(fd)?;
        if announced.is_some() && pidfd.pidfs_id != announced {
            return Err(Error::Protocol(format!(
                "the broker announced a pidfd of pidfs id {announced:?} for {peer} \
                 but sent one of pidfs id {:?}",
                pidfd.pidfs_id
            )));
        }
        pidfd.peer = Some(peer);
        Ok(pidfd)
    }

    /// The peer the broker found this process through, if it came from the
    /// broker.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// The process's pidfs id: unique for the system's uptime, unlike a PID
    /// (`None` on kernels before 6.9).
    pub fn pidfs_id(&self) -> Option<u64> {
        self.pidfs_id
    }

    /// The process's PID in *this* process's pid namespace; `None` when it
    /// is not visible here (another pid namespace) or has been reaped. Only
    /// informational: it can be reused once the process is reaped, the
    /// pidfd cannot.
    pub fn pid(&self) -> Result<Option<u32>> {
        Ok(match pidfd::pidfd_state(self.fd.as_fd())? {
            PidfdState::Visible(pid) => Some(pid),
            PidfdState::NotInNamespace | PidfdState::Reaped => None,
        })
    }

    /// Whether the process has exited (a zombie counts as exited).
    pub fn has_exited(&self) -> Result<bool> {
        Ok(pidfd::has_exited(self.fd.as_fd())?)
    }

    /// Where the process is in its life right now.
    pub fn state(&self) -> Result<ProcessState> {
        let fd = self.fd.as_fd();
        Ok(if pidfd::has_been_reaped(fd)? {
            ProcessState::Reaped(pidfd::exit_status(fd)?)
        } else if pidfd::has_exited(fd)? {
            ProcessState::Exited
        } else {
            ProcessState::Running
        })
    }

    /// How the process ended: `None` while it runs or is not yet reaped,
    /// and where the kernel cannot say (see [`ProcessState::Reaped`]).
    pub fn exit_status(&self) -> Result<Option<ExitStatus>> {
        Ok(pidfd::exit_status(self.fd.as_fd())?)
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process; it cannot hit
    /// another process that reused the PID. Permission follows `kill(2)`.
    pub fn send_signal(&self, signal: i32) -> Result<()> {
        pidfd::send_signal(self.fd.as_fd(), signal).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot send signal {signal} to the process: {e}"),
            ))
        })
    }

    /// Resolves once the process has exited (it may still be a zombie).
    pub async fn exited(&self) -> Result<()> {
        Ok(self.watch()?.exited().await?)
    }

    /// Resolves once the process has been reaped by its parent, with how it
    /// ended (see [`exit_status`](Self::exit_status)).
    pub async fn reaped(&self) -> Result<Option<ExitStatus>> {
        self.watch()?.reaped().await?;
        self.exit_status()
    }

    /// A duplicate registered with the runtime for one wait, so concurrent
    /// waits on one `PidFd` each have their own registration.
    fn watch(&self) -> Result<AsyncPidfd> {
        Ok(AsyncPidfd::new(self.fd.try_clone()?)?)
    }

    /// Waits up to `timeout` (forever if `None`) without a runtime; `true`
    /// once the process has exited.
    pub(crate) fn wait_exited(&self, timeout: Option<std::time::Duration>) -> Result<bool> {
        Ok(pidfd::wait_exited(self.fd.as_fd(), timeout)?)
    }

    /// Waits up to `timeout` (forever if `None`) without a runtime; `true`
    /// once the process has been reaped.
    pub(crate) fn wait_reaped(&self, timeout: Option<std::time::Duration>) -> Result<bool> {
        Ok(pidfd::wait_reaped(self.fd.as_fd(), timeout)?)
    }

    /// The descriptor itself, e.g. to pass it on.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
