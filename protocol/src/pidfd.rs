//! Reading what a pidfd says about its process: pidfs id, pid in our pid
//! namespace, whether it has exited.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};

/// `PID_FS_MAGIC` from include/uapi/linux/magic.h.
const PIDFS_MAGIC: u64 = 0x5049_4446;

/// Opens a pidfd for `pid` (in the caller's pid namespace).
///
/// Only safe from PID reuse when the caller knows `pid` is alive and cannot be
/// reaped meanwhile (e.g. its own pid); the broker never uses it on peers.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid pid"))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// The pidfs id of a pidfd: its inode number, if it lives on pidfs (Linux ≥
/// 6.9). `None` on older kernels, where pidfd inodes are shared and meaningless.
pub fn pidfs_id(pidfd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let fs = rustix::fs::fstatfs(pidfd)?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    if fs.f_type as u64 != PIDFS_MAGIC {
        return Ok(None);
    }
    Ok(Some(rustix::fs::fstat(pidfd)?.st_ino))
}

/// What `/proc/self/fdinfo/<pidfd>` says about the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidfdState {
    /// The process exists and has this pid in our pid namespace.
    Visible(u32),
    /// The process exists but is not visible in our pid namespace.
    NotInNamespace,
    /// The process has been reaped (kernel reports `Pid: -1`); a pidfd obtained
    /// for an already-reaped process on Linux ≥ 6.16 looks like this too.
    Reaped,
}

/// Reads the `Pid:` line of the pidfd's fdinfo.
pub fn pidfd_state(pidfd: BorrowedFd<'_>) -> io::Result<PidfdState> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    parse_fdinfo_pid(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "fdinfo of the descriptor has no Pid line: not a pidfd",
        )
    })
}

fn parse_fdinfo_pid(text: &str) -> Option<PidfdState> {
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))?
        .trim();
    let pid: i64 = value.parse().ok()?;
    Some(match pid {
        n if n < 0 => PidfdState::Reaped,
        0 => PidfdState::NotInNamespace,
        n => PidfdState::Visible(u32::try_from(n).ok()?),
    })
}

/// Whether the process has exited (its pidfd is readable). A process that
/// has exited but is not yet reaped counts as exited.
pub fn has_exited(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let ready = rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default()))?;
    Ok(ready > 0 && fds[0].revents().intersects(PollFlags::IN | PollFlags::HUP))
}

/// A pidfd registered with the tokio reactor, so its process's exit can be
/// awaited. Must be created inside a tokio runtime.
#[derive(Debug)]
pub struct AsyncPidfd(tokio::io::unix::AsyncFd<OwnedFd>);

impl AsyncPidfd {
    /// Registers `pidfd` with the current runtime.
    pub fn new(pidfd: OwnedFd) -> io::Result<Self> {
        crate::sys::register_async(pidfd).map(AsyncPidfd)
    }

    /// Resolves once the process has exited (a zombie counts as exited).
    pub async fn exited(&self) -> io::Result<()> {
        loop {
            let mut ready = self.0.readable().await?;
            if has_exited(ready.get_inner().as_fd())? {
                return Ok(());
            }
            ready.clear_ready();
        }
    }
}

impl AsFd for AsyncPidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

/// The pidfs id of the calling process (the inode of `pidfd_open(getpid())`).
pub fn own_pidfs_id() -> io::Result<Option<u64>> {
    let pidfd = pidfd_open(std::process::id())?;
    pidfs_id(pidfd.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_pid_lines_are_parsed() {
        let alive =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1234\nPid:\t4321\nNSpid:\t4321\n";
        assert_eq!(parse_fdinfo_pid(alive), Some(PidfdState::Visible(4321)));
        assert_eq!(
            parse_fdinfo_pid("Pid:\t-1\nNSpid:\t-1\n"),
            Some(PidfdState::Reaped)
        );
        assert_eq!(
            parse_fdinfo_pid("Pid:\t0\n"),
            Some(PidfdState::NotInNamespace)
        );
        assert_eq!(parse_fdinfo_pid("pos:\t0\n"), None);
    }

    #[test]
    fn own_pidfd_is_alive_and_visible_with_a_stable_id() {
        let pidfd = pidfd_open(std::process::id()).unwrap();
        assert_eq!(
            pidfd_state(pidfd.as_fd()).unwrap(),
            PidfdState::Visible(std::process::id())
        );
        assert!(!has_exited(pidfd.as_fd()).unwrap());
        let again = pidfd_open(std::process::id()).unwrap();
        // Two pidfds of one process share the pidfs inode.
        assert_eq!(
            pidfs_id(pidfd.as_fd()).unwrap(),
            pidfs_id(again.as_fd()).unwrap()
        );
    }

    #[test]
    fn exited_child_is_seen_through_its_pidfd() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = pidfd_open(child.id()).unwrap();
        child.wait().unwrap();
        assert!(has_exited(pidfd.as_fd()).unwrap());
        assert_eq!(pidfd_state(pidfd.as_fd()).unwrap(), PidfdState::Reaped);
    }
}
