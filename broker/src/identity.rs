//! Learning who a connected process is: `SO_PEERPIDFD`, `SO_PEERCRED`,
//! `SO_PEERGROUPS`, `SO_PEERSEC`, then `/proc` confirmed against the pidfd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use pidbus_protocol::ProcessIdentity;
use pidbus_protocol::pidfd::{self, PidfdState};

/// Why a connection's identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The peer process exited before (or while) the broker looked at it.
    #[error("the connecting process (pid {pid} at connect time) has already exited")]
    ProcessExited {
        /// The pid `SO_PEERCRED` reported.
        pid: i32,
    },
    /// A socket option or /proc read failed.
    #[error("cannot read the peer's credentials ({what}): {source}")]
    Io {
        /// Which step failed.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_step(what: &'static str) -> impl FnOnce(io::Error) -> IdentityError {
    move |source| IdentityError::Io { what, source }
}

/// A verified identity and the pidfd it was verified through.
#[derive(Debug)]
pub struct VerifiedPeer {
    /// What the broker verified.
    pub identity: ProcessIdentity,
    /// Where the process sits in the pid-namespace tree.
    pub namespace: PidNamespace,
    /// The peer's pidfd, held for the connection's whole life.
    pub pidfd: OwnedFd,
}

/// A process's pid namespace and its pids there and in every ancestor
/// namespace up to the broker's, from `/proc/PID/ns/pid` and the `NSpid`
/// line of `/proc/PID/status`. Empty for a process the broker cannot see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidNamespace {
    /// Inode of the process's own pid namespace.
    pub inode: Option<u64>,
    /// Its pid in the broker's namespace first, its own namespace last.
    pub pids: Vec<u32>,
}

impl PidNamespace {
    /// The pid of `self`'s process as seen by a process in namespace
    /// `viewer`, where `broker` is the broker's own namespace inode.
    ///
    /// Known exactly for a viewer in the broker's namespace or in the
    /// process's own namespace (the common cases: services next to the
    /// broker, and containers talking among themselves). Viewers in an
    /// intermediate namespace get `None`: the broker does not learn the
    /// inodes of the namespaces between, and a wrong pid is worse than none.
    pub fn pid_seen_from(&self, viewer: &PidNamespace, broker: Option<u64>) -> Option<u32> {
        let viewer_ns = viewer.inode?;
        if Some(viewer_ns) == broker {
            return self.pids.first().copied();
        }
        if Some(viewer_ns) == self.inode {
            return self.pids.last().copied();
        }
        None
    }
}

/// The broker's own pid namespace inode.
pub fn own_pid_namespace() -> Option<u64> {
    namespace_inode("/proc/self/ns/pid")
}

fn namespace_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Reads the identity of the process that connected `sock`; `broker_ns` is
/// the broker's own pid namespace inode.
///
/// Credentials are taken from the socket (their values at connect time);
/// `/proc` facts are read afterwards and kept only if the pidfd shows the
/// process still had not exited *after* the reads: a live process's pid cannot
/// have been reused, so the reads described this very process.
pub fn capture(
    sock: BorrowedFd<'_>,
    boot_id: &str,
    broker_ns: Option<u64>,
) -> Result<VerifiedPeer, IdentityError> {
    let pidfd = pidbus_protocol::peer_pidfd(sock).map_err(io_step("SO_PEERPIDFD"))?;
    let cred = pidbus_protocol::peer_credentials(sock).map_err(io_step("SO_PEERCRED"))?;
    let cred_pid = cred.pid;
    let groups = pidbus_protocol::peer_groups(sock).map_err(io_step("SO_PEERGROUPS"))?;
    let label = pidbus_protocol::peer_security_label(sock).map_err(io_step("SO_PEERSEC"))?;

    let exited = || IdentityError::ProcessExited { pid: cred_pid };
    // Linux ≥ 6.16 hands out a pidfd even for a reaped peer; fdinfo says -1.
    let state = pidfd::pidfd_state(pidfd.as_fd()).map_err(io_step("pidfd fdinfo"))?;
    if state == PidfdState::Reaped {
        return Err(exited());
    }
    let pidfs_id = pidfd::pidfs_id(pidfd.as_fd()).map_err(io_step("pidfd fstat"))?;
    // Our view of the pid: 0 when the peer is outside our pid namespace.
    let pid = match state {
        PidfdState::Visible(pid) => pid,
        _ => 0,
    };
    let proc_facts = match pid {
        0 => ProcFacts::default(),
        pid => ProcFacts::read(pid, pidfs_id.is_none(), broker_ns),
    };
    // Confirm: everything read above belongs to the live process.
    if still_exited(pidfd.as_fd())? {
        return Err(exited());
    }
    let identity = ProcessIdentity {
        pid,
        uid: cred.uid,
        gid: cred.gid,
        groups,
        pidfs_id,
        start_time: proc_facts.start_time,
        boot_id: boot_id.to_owned(),
        exe: proc_facts.exe,
        unit: proc_facts.cgroup.as_deref().and_then(unit_of_cgroup),
        cgroup: proc_facts.cgroup,
        label,
    };
    Ok(VerifiedPeer {
        identity,
        namespace: proc_facts.namespace,
        pidfd,
    })
}

fn still_exited(pidfd: BorrowedFd<'_>) -> Result<bool, IdentityError> {
    pidfd::has_exited(pidfd).map_err(io_step("pidfd poll"))
}

/// What `/proc/PID` says; each fact is `None` if unreadable (e.g. an
/// unprivileged broker cannot read another user's `exe`).
#[derive(Debug, Default)]
struct ProcFacts {
    start_time: Option<u64>,
    exe: Option<String>,
    cgroup: Option<String>,
    namespace: PidNamespace,
}

impl ProcFacts {
    /// Reads only what a connection needs, since this runs on every
    /// connect: the start time only where no pidfs id identifies the
    /// process, and the `NSpid` chain only for a process in another pid
    /// namespace than the broker's (in the same one it is just `pid`).
    fn read(pid: u32, need_start_time: bool, broker_ns: Option<u64>) -> Self {
        let dir = format!("/proc/{pid}");
        let inode = namespace_inode(&format!("{dir}/ns/pid"));
        let pids = if inode.is_some() && inode == broker_ns {
            vec![pid]
        } else {
            read_small(&format!("{dir}/status"))
                .map(|s| nspids_of_status(&s))
                .unwrap_or_default()
        };
        ProcFacts {
            start_time: need_start_time
                .then(|| read_small(&format!("{dir}/stat")))
                .flatten()
                .and_then(|s| start_time_of_stat(&s)),
            exe: std::fs::read_link(format!("{dir}/exe"))
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            cgroup: read_small(&format!("{dir}/cgroup")).and_then(|s| unified_cgroup(&s)),
            namespace: PidNamespace { inode, pids },
        }
    }
}

/// Reads a small /proc text file with one buffer: `read_to_string` would
/// first `statx` it (procfs reports size 0) and then probe in small reads.
fn read_small(path: &str) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut chunk = [0u8; 4096];
    let mut text = Vec::new();
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
    String::from_utf8(text).ok()
}

/// Field 22 of `/proc/PID/stat`. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from its closing `)`.
fn start_time_of_stat(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts with field 3 (state); field 22 is 19 fields later.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The `NSpid` line of `/proc/PID/status`: the pid in each namespace from
/// the reader's down to the process's own.
fn nspids_of_status(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .map(|pids| {
            pids.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup v2 path (`0::/path`) from `/proc/PID/cgroup`.
fn unified_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The innermost systemd unit in a cgroup path: the last path component
/// naming a service or scope (`.../user@1000.service/app.slice/foo.service`
/// gives `foo.service`).
pub fn unit_of_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

/// The kernel's boot id, read once at broker start.
pub fn read_boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_hostile_command_names() {
        let stat = "1234 (evil) 1 2 3) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777888 1000 100";
        assert_eq!(start_time_of_stat(stat), Some(777_888));
        assert_eq!(start_time_of_stat("garbage"), None);
    }

    #[test]
    fn units_come_from_the_innermost_unit_component() {
        assert_eq!(
            unit_of_cgroup("/system.slice/dbus.service").as_deref(),
            Some("dbus.service")
        );
        assert_eq!(
            unit_of_cgroup("/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope")
                .as_deref(),
            Some("app-foo.scope")
        );
        assert_eq!(unit_of_cgroup("/"), None);
        assert_eq!(unit_of_cgroup("/init.scope").as_deref(), Some("init.scope"));
    }

    #[test]
    fn nspid_and_namespace_views() {
        assert_eq!(
            nspids_of_status("Name:\tx\nNSpid:\t4000\t12\t1\n"),
            vec![4000, 12, 1]
        );
        assert_eq!(nspids_of_status("Name:\tx\n"), Vec::<u32>::new());
        let broker = Some(1);
        let container = PidNamespace {
            inode: Some(5),
            pids: vec![4000, 1],
        };
        let host = PidNamespace {
            inode: Some(1),
            pids: vec![300],
        };
        let neighbour = PidNamespace {
            inode: Some(5),
            pids: vec![4001, 2],
        };
        let elsewhere = PidNamespace {
            inode: Some(9),
            pids: vec![5000, 1],
        };
        assert_eq!(container.pid_seen_from(&host, broker), Some(4000));
        assert_eq!(container.pid_seen_from(&neighbour, broker), Some(1));
        assert_eq!(host.pid_seen_from(&container, broker), None);
        assert_eq!(container.pid_seen_from(&elsewhere, broker), None);
        assert_eq!(
            container.pid_seen_from(&PidNamespace::default(), broker),
            None
        );
    }

    #[test]
    fn cgroup_v2_line_is_found() {
        assert_eq!(
            unified_cgroup("1:name=systemd:/x\n0::/system.slice/a.service\n").as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(unified_cgroup("1:cpu:/x\n"), None);
    }

    #[tokio::test]
    async fn a_socket_pair_peer_is_this_process() {
        let (a, _b) = pidbus_protocol::transport::SeqPacket::pair().unwrap();
        let peer = capture(a.as_fd(), "boot", own_pid_namespace()).unwrap();
        assert_eq!(peer.identity.pid, std::process::id());
        assert_eq!(
            peer.identity.pidfs_id,
            pidfd::own_pidfs_id().unwrap(),
            "pidfs id is the inode of pidfd_open(getpid())"
        );
        assert_eq!(
            peer.identity.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|p| p.to_str())
        );
        assert_eq!(peer.namespace.pids, vec![std::process::id()]);
    }
}
