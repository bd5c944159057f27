//! Reading what a pidfd says about its process: pidfs id, pid in our pid
//! namespace, whether it has exited or been reaped and how it ended; and
//! signalling it.
//!
//! A pidfd becomes readable when its process exits and reports `POLLHUP`
//! once the process has been reaped. Only after the reap does the kernel
//! know the exit status for anyone but the parent (`PIDFD_INFO_EXIT`, Linux
//! 6.15); `waitid(P_PIDFD)` is never used, since it works for children only.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};

use crate::process::ExitStatus;

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
    // Every pidfd of a kernel lives on the same filesystem, so the first
    // answer holds for all (and saves a syscall per connection).
    static ON_PIDFS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on_pidfs = match ON_PIDFS.get() {
        Some(&known) => known,
        None => {
            let fs = rustix::fs::fstatfs(pidfd)?;
            #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
            *ON_PIDFS.get_or_init(|| fs.f_type as u64 == PIDFS_MAGIC)
        }
    };
    if !on_pidfs {
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

/// Where the process stands: asks `PIDFD_GET_INFO` first and reads the
/// `Pid:` line of the pidfd's fdinfo only where the ioctl cannot tell a
/// reaped process from an invisible one.
pub fn pidfd_state(pidfd: BorrowedFd<'_>) -> io::Result<PidfdState> {
    pidfd_state_and_cgroup(pidfd).map(|(state, _)| state)
}

/// [`pidfd_state`], with the id of a visible process's cgroup v2 where the
/// kernel gives it in the same `PIDFD_GET_INFO` (Linux 6.13).
pub fn pidfd_state_and_cgroup(pidfd: BorrowedFd<'_>) -> io::Result<(PidfdState, Option<u64>)> {
    if let Some((pid, cgroup)) = crate::sys::pidfd_pid_and_cgroup(pidfd)? {
        return Ok((PidfdState::Visible(pid), cgroup));
    }
    Ok((fdinfo_state(pidfd)?, None))
}

/// The `Pid:` line of the pidfd's fdinfo, as a state.
fn fdinfo_state(pidfd: BorrowedFd<'_>) -> io::Result<PidfdState> {
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

/// Where a process stands, as its pidfd's poll tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Running: its pid is its own.
    Running,
    /// Exited and not yet reaped (a zombie): it still holds its pid.
    Exited,
    /// Reaped: its pid is free, and may belong to another process.
    Reaped,
}

/// What one `poll` saw of a connected socket and then of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketThenProcess {
    /// The socket had something to read (data, or the end of the peer's
    /// writing, after which nothing more can arrive).
    pub readable: bool,
    /// Where the process stood, asked after the socket.
    pub process: Life,
}

/// Polls `socket`, then `pidfd`, in one system call without waiting.
///
/// The kernel polls the descriptors in order, so the process's state is
/// as of a moment after the socket's: if the socket was readable and the
/// process had not been reaped, then whatever waited in the socket was
/// written while the process still held its pid. The broker builds its
/// per-message sender proof on this (see `os/sender.rs` there).
pub fn socket_then_process(
    socket: BorrowedFd<'_>,
    pidfd: BorrowedFd<'_>,
) -> io::Result<SocketThenProcess> {
    let mut fds = [
        PollFd::new(&socket, PollFlags::IN),
        PollFd::new(&pidfd, PollFlags::IN),
    ];
    rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default()))?;
    Ok(SocketThenProcess {
        readable: !fds[0].revents().is_empty(),
        process: life_of(fds[1].revents()),
    })
}

/// A pidfd's poll events as the state of its process: readable once it
/// has exited, hung up once it has been reaped.
fn life_of(events: PollFlags) -> Life {
    if events.contains(PollFlags::HUP) {
        Life::Reaped
    } else if events.contains(PollFlags::IN) {
        Life::Exited
    } else {
        Life::Running
    }
}

/// Whether the process has exited (its pidfd is readable). A process that
/// has exited but is not yet reaped counts as exited.
pub fn has_exited(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(life_of(poll_now(pidfd)?) != Life::Running)
}

/// Whether the process has been reaped by its parent (the pidfd reports
/// `POLLHUP`); from then on its exit status is known.
pub fn has_been_reaped(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(life_of(poll_now(pidfd)?) == Life::Reaped)
}

/// What the pidfd reports right now, without waiting.
fn poll_now(pidfd: BorrowedFd<'_>) -> io::Result<PollFlags> {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let ready = rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default()))?;
    Ok(if ready > 0 {
        fds[0].revents()
    } else {
        PollFlags::empty()
    })
}

/// Waits up to `timeout` (forever if `None`) for the process to exit;
/// `true` once it has.
pub fn wait_exited(
    pidfd: BorrowedFd<'_>,
    timeout: Option<std::time::Duration>,
) -> io::Result<bool> {
    wait_for(pidfd, timeout, has_exited)
}

/// Waits up to `timeout` (forever if `None`) for the process to be reaped;
/// `true` once it has.
pub fn wait_reaped(
    pidfd: BorrowedFd<'_>,
    timeout: Option<std::time::Duration>,
) -> io::Result<bool> {
    wait_for(pidfd, timeout, has_been_reaped)
}

fn wait_for(
    pidfd: BorrowedFd<'_>,
    timeout: Option<std::time::Duration>,
    done: fn(BorrowedFd<'_>) -> io::Result<bool>,
) -> io::Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        if done(pidfd)? {
            return Ok(true);
        }
        let left = match deadline {
            Some(deadline) => match deadline.checked_duration_since(std::time::Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(false),
            },
            None => None,
        };
        // The pidfd wakes pollers at exit and again at reap; POLLHUP is
        // always reported, so a readable (exited) pidfd must not make this
        // spin while waiting for the reap: poll for nothing but HUP then.
        let events = if has_exited(pidfd)? {
            PollFlags::empty()
        } else {
            PollFlags::IN
        };
        let mut fds = [PollFd::new(&pidfd, events)];
        let timespec = left.map(|left| rustix::event::Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        });
        match rustix::event::poll(&mut fds, timespec.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// How the process ended: `None` while it runs or is a zombie, and where
/// the kernel cannot say (before Linux 6.15, or for a process outside our
/// pid namespace).
pub fn exit_status(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    Ok(crate::sys::pidfd_wait_status(pidfd)?.and_then(ExitStatus::from_wait_status))
}

/// Sends `signal` to the process (`pidfd_send_signal(2)`): never to a
/// recycled pid.
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    crate::sys::pidfd_send_signal(pidfd, signal)
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
        self.wait_until(has_exited).await
    }

    /// Resolves once the process has been reaped by its parent; its
    /// [`exit_status`] is then known (where the kernel can say).
    pub async fn reaped(&self) -> io::Result<()> {
        self.wait_until(has_been_reaped).await
    }

    async fn wait_until(&self, done: fn(BorrowedFd<'_>) -> io::Result<bool>) -> io::Result<()> {
        loop {
            let mut ready = self.0.readable().await?;
            if done(ready.get_inner().as_fd())? {
                return Ok(());
            }
            // Cleared only if no wake-up arrived since `readable`, so the
            // reap's wake-up cannot be lost between the check and here.
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
    fn socket_then_process_sees_data_and_each_stage_of_an_exit() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .unwrap();
        // Our own child: its pid stays its own until we wait for it.
        let pidfd = pidfd_open(child.id()).unwrap();
        let seen = socket_then_process(reader.as_fd(), pidfd.as_fd()).unwrap();
        assert_eq!(
            seen,
            SocketThenProcess {
                readable: false,
                process: Life::Running
            }
        );
        std::io::Write::write_all(&mut &writer, b"x").unwrap();
        assert!(wait_exited(pidfd.as_fd(), None).unwrap());
        let seen = socket_then_process(reader.as_fd(), pidfd.as_fd()).unwrap();
        assert!(seen.readable);
        assert_eq!(seen.process, Life::Exited);
        child.wait().unwrap();
        drop(writer);
        let seen = socket_then_process(reader.as_fd(), pidfd.as_fd()).unwrap();
        assert!(seen.readable);
        assert_eq!(seen.process, Life::Reaped);
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
        assert!(has_been_reaped(pidfd.as_fd()).unwrap());
        assert_eq!(pidfd_state(pidfd.as_fd()).unwrap(), PidfdState::Reaped);
    }

    /// A child that exits with `code` once its stdin closes.
    fn child_exiting_with(code: i32) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", &format!("read _; exit {code}")])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_zombie_has_exited_but_its_status_comes_with_the_reap() {
        let mut child = child_exiting_with(7);
        let pidfd = pidfd_open(child.id()).unwrap();
        assert!(!wait_exited(pidfd.as_fd(), Some(std::time::Duration::ZERO)).unwrap());
        assert_eq!(exit_status(pidfd.as_fd()).unwrap(), None, "still running");
        drop(child.stdin.take());
        assert!(wait_exited(pidfd.as_fd(), None).unwrap());
        assert!(
            !has_been_reaped(pidfd.as_fd()).unwrap(),
            "a zombie until waited for"
        );
        assert_eq!(exit_status(pidfd.as_fd()).unwrap(), None);
        child.wait().unwrap();
        assert!(wait_reaped(pidfd.as_fd(), None).unwrap());
        assert_eq!(
            exit_status(pidfd.as_fd()).unwrap(),
            Some(ExitStatus::Code(7))
        );
    }

    #[test]
    fn a_signalled_process_reports_the_signal() {
        let mut child = child_exiting_with(0);
        let pidfd = pidfd_open(child.id()).unwrap();
        send_signal(pidfd.as_fd(), libc::SIGTERM).unwrap();
        child.wait().unwrap();
        assert_eq!(
            exit_status(pidfd.as_fd()).unwrap(),
            Some(ExitStatus::Signal(libc::SIGTERM))
        );
        let err = send_signal(pidfd.as_fd(), libc::SIGTERM).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ESRCH),
            "never a recycled pid"
        );
    }

    #[tokio::test]
    async fn reaped_wakes_an_async_waiter_after_exited() {
        let mut child = child_exiting_with(3);
        let pidfd = AsyncPidfd::new(pidfd_open(child.id()).unwrap()).unwrap();
        drop(child.stdin.take());
        pidfd.exited().await.unwrap();
        let reaper = std::thread::spawn(move || child.wait().unwrap());
        pidfd.reaped().await.unwrap();
        reaper.join().unwrap();
        assert_eq!(
            exit_status(pidfd.as_fd()).unwrap(),
            Some(ExitStatus::Code(3))
        );
    }
}
