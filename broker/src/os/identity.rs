//! Learning who a connected process is: `SO_PEERPIDFD`, `SO_PEERCRED`,
//! `SO_PEERGROUPS`, `SO_PEERSEC`, then `/proc` confirmed against the pidfd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use pidbus_protocol::pidfd::{self, PidfdState};
use pidbus_protocol::{PeerId, ProcessIdentity};

use crate::os::cgroups::CgroupPaths;

/// Why a connection's identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The peer process exited before (or while) the broker looked at it.
    #[error("the connecting process (pid {pid} at connect time) has already exited")]
    ProcessExited {
        /// The pid `SO_PEERCRED` reported.
        pid: i32,
    },
    /// The connecting process is exiting: its `/proc` facts are gone and
    /// its pidfd does not say it has exited yet. Asked again shortly, it
    /// is a process that exited at connect ([`admission`]'s patience).
    ///
    /// [`admission`]: crate::bus::admission
    #[error("the connecting process (pid {pid} at connect time) is exiting")]
    Exiting {
        /// The pid `SO_PEERCRED` reported.
        pid: i32,
    },
    /// A process given by pidfd lives outside the broker's pid namespace,
    /// where `/proc` cannot describe it.
    #[error("the process is not visible in the broker's pid namespace")]
    NotVisible,
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

fn namespace_inode(path: &str) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

/// Reads the identity of the process that connected `sock`; `broker` is
/// what the broker knows of its own namespaces.
///
/// Credentials are taken from the socket (their values at connect time);
/// `/proc` facts are read afterwards and kept only if the pidfd shows the
/// process still had not exited *after* the reads: a live process's pid cannot
/// have been reused, so the reads described this very process. A fact that
/// cannot be read refuses the connection: a peer never passes a rule by
/// hiding what the rule looks at.
pub fn capture(
    sock: BorrowedFd<'_>,
    boot_id: &str,
    broker: &BrokerNamespaces,
) -> Result<VerifiedPeer, IdentityError> {
    let pidfd = pidbus_protocol::peer_pidfd(sock).map_err(io_step("SO_PEERPIDFD"))?;
    let cred = pidbus_protocol::peer_credentials(sock).map_err(io_step("SO_PEERCRED"))?;
    let cred_pid = cred.pid;
    let groups = pidbus_protocol::peer_groups(sock).map_err(io_step("SO_PEERGROUPS"))?;
    let label = pidbus_protocol::peer_security_label(sock).map_err(io_step("SO_PEERSEC"))?;

    let credentials = |pid| Credentials {
        pid,
        uid: cred.uid,
        gid: cred.gid,
        groups,
        label,
    };
    let pidfs_id = pidfd::pidfs_id(pidfd.as_fd()).map_err(io_step("pidfd fstat"))?;
    // Linux ≥ 6.16 hands out a pidfd even for a reaped peer; fdinfo says -1.
    let (state, cgroup_id) =
        pidfd::pidfd_state_and_cgroup(pidfd.as_fd()).map_err(io_step("pidfd fdinfo"))?;
    if state == PidfdState::Reaped {
        return exited_at_connect(pidfd, pidfs_id, boot_id, cred_pid, credentials(0));
    }
    // Our view of the pid: 0 when the peer is outside our pid namespace.
    let pid = match state {
        PidfdState::Visible(pid) => pid,
        _ => 0,
    };
    let proc_facts = match pid {
        0 => Ok(ProcFacts::default()),
        pid => ProcFacts::read(pid, pidfs_id.is_none(), cgroup_id, broker),
    };
    // Confirm: everything read above belongs to the live process (a read
    // that failed because the process was gone is an exit, not an error).
    if still_exited(pidfd.as_fd())? {
        return exited_at_connect(pidfd, pidfs_id, boot_id, cred_pid, credentials(0));
    }
    if proc_facts.as_ref().is_err_and(vanished) {
        return Err(IdentityError::Exiting { pid: cred_pid });
    }
    Ok(verified(
        pidfd,
        pidfs_id,
        boot_id,
        credentials(pid),
        proc_facts?,
    ))
}

/// The identity of a peer whose process exited before the broker could
/// read its `/proc` facts: what the socket and the pidfd still prove.
///
/// Only a pidfs kernel can name such a process (its pidfs id is never
/// reused); without one, an exited peer cannot be told from a later
/// process with its pid, and is refused.
fn exited_at_connect(
    pidfd: OwnedFd,
    pidfs_id: Option<u64>,
    boot_id: &str,
    cred_pid: i32,
    credentials: Credentials,
) -> Result<VerifiedPeer, IdentityError> {
    if pidfs_id.is_none() {
        return Err(IdentityError::ProcessExited { pid: cred_pid });
    }
    let mut peer = verified(pidfd, pidfs_id, boot_id, credentials, ProcFacts::default());
    // The pid it had, for people reading logs; a decision never uses it.
    peer.identity.pid = u32::try_from(cred_pid).unwrap_or(0);
    peer.identity.exited_at_connect = true;
    Ok(peer)
}

/// What an identity holds besides its `/proc` facts, however it was read.
struct Credentials {
    pid: u32,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    label: Option<String>,
}

/// The verified identity of the process behind `pidfd`, from its
/// credentials and the `/proc` facts confirmed to be its own.
fn verified(
    pidfd: OwnedFd,
    pidfs_id: Option<u64>,
    boot_id: &str,
    credentials: Credentials,
    facts: ProcFacts,
) -> VerifiedPeer {
    let units = facts
        .cgroup
        .as_deref()
        .map(units_of_cgroup)
        .unwrap_or_default();
    let identity = ProcessIdentity {
        pid: credentials.pid,
        uid: credentials.uid,
        gid: credentials.gid,
        groups: credentials.groups,
        pidfs_id,
        start_time: facts.start_time,
        boot_id: boot_id.to_owned(),
        exe: facts.exe.verified_path(),
        exe_unverified: facts.exe.unverified_path(),
        unit: units.system,
        user_unit: units.user,
        sender_proof_forgeable: facts.namespace.administered_by_peer,
        facts_withheld: facts.withheld,
        cgroup: facts.cgroup,
        label: credentials.label,
        exited_at_connect: false,
    };
    VerifiedPeer {
        identity,
        namespace: facts.namespace.pids,
        pidfd,
    }
}

/// Reads the identity of the process behind `pidfd`, which the broker
/// was given rather than accepted (a polkit `unix-process` subject): the
/// same `/proc` facts as [`capture`], with the credentials the process has
/// *now* instead of a socket's: its real uid and gid (as polkit takes
/// them, so a setuid program counts as the user who ran it), from
/// `PIDFD_GET_INFO`, and its supplementary groups and LSM label from
/// `/proc`. Everything is kept only if the process is still alive after
/// the reads.
pub fn capture_process(
    pidfd: OwnedFd,
    boot_id: &str,
    broker: &BrokerNamespaces,
) -> Result<VerifiedPeer, IdentityError> {
    let (state, cgroup_id) =
        pidfd::pidfd_state_and_cgroup(pidfd.as_fd()).map_err(io_step("pidfd fdinfo"))?;
    let pid = match state {
        PidfdState::Visible(pid) => pid,
        PidfdState::Reaped => return Err(IdentityError::ProcessExited { pid: 0 }),
        PidfdState::NotInNamespace => return Err(IdentityError::NotVisible),
    };
    let exited = || IdentityError::ProcessExited { pid: pid as i32 };
    let (uid, gid) = pidbus_protocol::pidfd_real_ids(pidfd.as_fd())
        .map_err(io_step("PIDFD_GET_INFO"))?
        .ok_or_else(exited)?;
    let pidfs_id = pidfd::pidfs_id(pidfd.as_fd()).map_err(io_step("pidfd fstat"))?;
    let dir = format!("/proc/{pid}");
    let facts = ProcFacts::read(pid, pidfs_id.is_none(), cgroup_id, broker);
    let groups = read_small(&format!("{dir}/status")).map(|status| groups_of_status(&status));
    let label = match std::fs::read(format!("{dir}/attr/current")) {
        Ok(bytes) => Ok(label_of_attr(&bytes)),
        // No LSM gives this process a label.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    };
    if still_exited(pidfd.as_fd())? {
        return Err(exited());
    }
    let facts = facts?;
    let credentials = Credentials {
        pid,
        uid,
        gid,
        groups: groups.map_err(io_step("/proc/PID/status"))?,
        label: label.map_err(io_step("/proc/PID/attr/current"))?,
    };
    Ok(verified(pidfd, pidfs_id, boot_id, credentials, facts))
}

/// The `Groups:` line of `/proc/PID/status`: the supplementary gids.
fn groups_of_status(status: &str) -> Vec<u32> {
    numbers_of_status_line(status, "Groups:")
}

/// An LSM label as `/proc/PID/attr/current` gives it (nul- or
/// newline-terminated); `None` when empty.
fn label_of_attr(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let label = text.trim_end_matches(['\0', '\n']).to_owned();
    (!label.is_empty()).then_some(label)
}

/// The start time (clock ticks after boot, field 22 of `/proc/PID/stat`)
/// of process `pid`, as polkit's `start-time` gives it.
pub fn start_time_of(pid: u32) -> io::Result<Option<u64>> {
    Ok(start_time_of_stat(&read_small(&format!(
        "/proc/{pid}/stat"
    ))?))
}

/// Whether a `/proc` read failed because the process is exiting: its
/// files vanish (its `exe` link first, when its memory goes) a little
/// before its pidfd says it has exited (`ESRCH` once it is being torn
/// down). Never waited for here: the broker serves every connection from
/// one thread, so the caller waits, asynchronously, and asks again.
fn vanished(error: &IdentityError) -> bool {
    let IdentityError::Io { source, .. } = error else {
        return false;
    };
    source.kind() == io::ErrorKind::NotFound
        || source.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
}

fn still_exited(pidfd: BorrowedFd<'_>) -> Result<bool, IdentityError> {
    pidfd::has_exited(pidfd).map_err(io_step("pidfd poll"))
}

/// The broker's own pid and user namespaces (inodes), against which a
/// peer's are compared, and the cgroup paths its cgroup namespace shows.
#[derive(Debug, Clone, Default)]
pub struct BrokerNamespaces {
    /// `/proc/self/ns/pid`.
    pub pid: Option<u64>,
    /// `/proc/self/ns/user`.
    pub user: Option<u64>,
    /// Cgroup paths learnt so far, by cgroup id.
    pub cgroups: Arc<CgroupPaths>,
}

impl BrokerNamespaces {
    /// Reads the broker's own namespaces.
    pub fn own() -> Self {
        BrokerNamespaces {
            pid: namespace_inode("/proc/self/ns/pid").ok(),
            user: namespace_inode("/proc/self/ns/user").ok(),
            cgroups: Arc::new(CgroupPaths::system()),
        }
    }
}

/// A file, as the kernel identifies it: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The file `path` names (following symbolic links, and for
    /// `/proc/PID/exe` the magic link to the running executable).
    pub fn of(path: &str) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// The running executable, from `/proc/PID/exe`.
#[derive(Debug, Default)]
struct ExeFacts {
    /// The path the process's mount namespace gives (the link's text).
    path: Option<String>,
    /// Whether `path`, resolved in the broker's mount namespace, is `file`.
    path_is_file: bool,
}

impl ExeFacts {
    fn read(dir: &str) -> io::Result<Self> {
        let link = format!("{dir}/exe");
        let path = std::fs::read_link(&link)?.to_string_lossy().into_owned();
        let file = FileId::of(&link)?;
        let path_is_file = FileId::of(&path).is_ok_and(|there| there == file);
        Ok(ExeFacts {
            path: Some(path),
            path_is_file,
        })
    }

    fn verified_path(&self) -> Option<String> {
        self.path.clone().filter(|_| self.path_is_file)
    }

    fn unverified_path(&self) -> Option<String> {
        self.path.clone().filter(|_| !self.path_is_file)
    }
}

/// What `/proc/PID` says.
#[derive(Debug, Default)]
struct ProcFacts {
    start_time: Option<u64>,
    exe: ExeFacts,
    cgroup: Option<String>,
    namespace: NamespaceFacts,
    /// What the kernel shows only to the process's owner or a privileged
    /// reader (its `exe`, its namespace links) could not be read.
    withheld: bool,
}

/// Where the process sits among namespaces.
#[derive(Debug, Default)]
struct NamespaceFacts {
    pids: PidNamespace,
    /// In another pid namespace than the broker's *and* another user
    /// namespace: whoever made that pid namespace may hold CAP_SYS_ADMIN
    /// over it, which lets its processes send others' pids as credentials.
    administered_by_peer: bool,
}

impl ProcFacts {
    /// Reads only what a connection needs, since this runs on every
    /// connect: the start time only where no pidfs id identifies the
    /// process, the `NSpid` chain only for a process in another pid
    /// namespace than the broker's (in the same one it is just `pid`), and
    /// the cgroup path only for a cgroup (`cgroup_id`, from the pidfd)
    /// whose path the broker has not learnt yet.
    fn read(
        pid: u32,
        need_start_time: bool,
        cgroup_id: Option<u64>,
        broker: &BrokerNamespaces,
    ) -> Result<Self, IdentityError> {
        let dir = format!("/proc/{pid}");
        let (namespace, namespace_withheld) = match namespace_inode(&format!("{dir}/ns/pid")) {
            Ok(inode) => (NamespaceFacts::read(&dir, pid, inode, broker)?, false),
            Err(e) if withheld(&e) => (NamespaceFacts::from_status(&dir, pid, broker)?, true),
            Err(e) => return Err(io_step("/proc/PID/ns/pid")(e)),
        };
        let start_time = match need_start_time {
            true => {
                let stat = read_small(&format!("{dir}/stat")).map_err(io_step("/proc/PID/stat"))?;
                start_time_of_stat(&stat)
            }
            false => None,
        };
        let known = cgroup_id.and_then(|id| broker.cgroups.path_of(id));
        let cgroup = match known {
            Some(path) => Some(path),
            None => {
                let text =
                    read_small(&format!("{dir}/cgroup")).map_err(io_step("/proc/PID/cgroup"))?;
                let path = unified_cgroup(&text);
                if let (Some(id), Some(path)) = (cgroup_id, &path) {
                    broker.cgroups.learn(id, path);
                }
                path
            }
        };
        let (exe, exe_withheld) = match ExeFacts::read(&dir) {
            Ok(exe) => (exe, false),
            Err(e) if withheld(&e) => (ExeFacts::default(), true),
            Err(e) => return Err(io_step("/proc/PID/exe")(e)),
        };
        Ok(ProcFacts {
            start_time,
            exe,
            cgroup,
            namespace,
            withheld: namespace_withheld || exe_withheld,
        })
    }
}

/// `CAP_SYS_PTRACE` in the `CapEff` line of `/proc/self/status`: what lets
/// the broker read every process's executable and namespace links
/// (`PTRACE_MODE_READ`), other users' and non-dumpable ones included.
pub fn can_read_every_process() -> io::Result<bool> {
    const CAP_SYS_PTRACE: u32 = 19;
    let status = read_small("/proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))?;
    Ok(effective & (1 << CAP_SYS_PTRACE) != 0)
}

/// A `/proc` read the kernel refused for want of privilege over the
/// process (another user's, or one that is not dumpable): a fact withheld,
/// not a broken peer.
fn withheld(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::PermissionDenied
}

impl NamespaceFacts {
    /// From the namespace links, which need privilege over the process.
    fn read(
        dir: &str,
        pid: u32,
        inode: u64,
        broker: &BrokerNamespaces,
    ) -> Result<Self, IdentityError> {
        if Some(inode) == broker.pid {
            return Ok(NamespaceFacts {
                pids: PidNamespace {
                    inode: Some(inode),
                    pids: vec![pid],
                },
                administered_by_peer: false,
            });
        }
        let status = read_small(&format!("{dir}/status")).map_err(io_step("/proc/PID/status"))?;
        let user =
            namespace_inode(&format!("{dir}/ns/user")).map_err(io_step("/proc/PID/ns/user"))?;
        Ok(NamespaceFacts {
            pids: PidNamespace {
                inode: Some(inode),
                pids: nspids_of_status(&status),
            },
            administered_by_peer: Some(user) != broker.user,
        })
    }

    /// From `/proc/PID/status` alone, which everyone may read, when the
    /// links are withheld: one pid on its `NSpid` line is the broker's own
    /// pid namespace (the one its `/proc` shows); more is a nested one,
    /// whose inode stays unknown (so no pid is given out for viewers
    /// inside it) and whose processes are assumed to administer it (their
    /// sender proof counts as forgeable).
    fn from_status(dir: &str, pid: u32, broker: &BrokerNamespaces) -> Result<Self, IdentityError> {
        let status = read_small(&format!("{dir}/status")).map_err(io_step("/proc/PID/status"))?;
        let pids = nspids_of_status(&status);
        if pids.len() <= 1 {
            return Ok(NamespaceFacts {
                pids: PidNamespace {
                    inode: broker.pid,
                    pids: vec![pid],
                },
                administered_by_peer: false,
            });
        }
        Ok(NamespaceFacts {
            pids: PidNamespace { inode: None, pids },
            administered_by_peer: true,
        })
    }
}

/// The file process `pid` runs now, if it still runs the same program
/// and is still alive (checked through `pidfd` after the read, so the pid
/// cannot have been reused): for rules re-checked at decision time.
pub fn current_exe(pid: u32, pidfd: BorrowedFd<'_>) -> Option<FileId> {
    if pid == 0 {
        return None;
    }
    let file = FileId::of(&format!("/proc/{pid}/exe")).ok()?;
    matches!(pidfd::has_exited(pidfd), Ok(false)).then_some(file)
}

/// Reads a small /proc text file with one buffer: `read_to_string` would
/// first `statx` it (procfs reports size 0) and then probe in small reads.
fn read_small(path: &str) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut chunk = [0u8; 4096];
    let mut text = Vec::new();
    loop {
        match file.read(&mut chunk)? {
            0 => break,
            n => text.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
    numbers_of_status_line(status, "NSpid:")
}

/// The numbers on the line of `/proc/PID/status` that starts with `key`
/// (none if there is no such line).
fn numbers_of_status_line(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|numbers| {
            numbers
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup v2 path (`0::/path`) from `/proc/PID/cgroup`.
pub(crate) fn unified_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The units a cgroup path places a process in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Units {
    /// The system unit: the first `.service`/`.scope` component below the
    /// root's slices (`/system.slice/a.slice/b.service/...` gives
    /// `b.service`, `/init.scope` gives `init.scope`). Only the system's
    /// manager (root) creates these levels.
    pub system: Option<String>,
    /// Below a `user@UID.service`, the first unit below its slices: the
    /// user's own manager, or the user itself, created it.
    pub user: Option<String>,
}

/// The units of a cgroup v2 path. A name below the system unit never
/// counts as a system unit: whoever a unit's subtree is delegated to may
/// create cgroups named like any unit there.
pub fn units_of_cgroup(cgroup: &str) -> Units {
    fn is_unit(c: &str) -> bool {
        c.ends_with(".service") || c.ends_with(".scope")
    }
    /// The first unit after any number of slices.
    fn first_unit<'a>(components: &mut impl Iterator<Item = &'a str>) -> Option<&'a str> {
        components
            .find(|c| !c.ends_with(".slice"))
            .filter(|c| is_unit(c))
    }
    let mut components = cgroup.split('/').filter(|c| !c.is_empty());
    let system = first_unit(&mut components);
    let user = system
        .filter(|unit| unit.starts_with("user@") && unit.ends_with(".service"))
        .and_then(|_| first_unit(&mut components));
    Units {
        system: system.map(str::to_owned),
        user: user.map(str::to_owned),
    }
}

/// The kernel's boot id, read once at broker start.
pub fn read_boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// An optional fact as a log field: its value, or `none`.
pub struct Shown<'a, T>(pub &'a Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Shown<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// How a peer appears in log lines: its unique id once it has one, pid,
/// uid, pidfs id, executable, and the face it uses.
pub struct Who<'a> {
    id: Option<PeerId>,
    identity: &'a ProcessIdentity,
    face: &'static str,
}

impl<'a> Who<'a> {
    /// The log form of a peer of `face` ("native", "dbus").
    pub fn new(id: Option<PeerId>, identity: &'a ProcessIdentity, face: &'static str) -> Self {
        Who { id, identity, face }
    }
}

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(id) = self.id {
            write!(f, "{id} ")?;
        }
        let identity = self.identity;
        write!(f, "pid={} uid={} pidfs_id=", identity.pid, identity.uid)?;
        match identity.pidfs_id {
            Some(n) => write!(f, "{n}")?,
            None => f.write_str("none")?,
        }
        let exe = identity.exe.as_deref().unwrap_or("?");
        write!(f, " exe={exe} face={}", self.face)?;
        if identity.exited_at_connect {
            // Said, so nobody reads `exe=?` as a process hiding its binary.
            f.write_str(" exited=before-accept")?;
        }
        Ok(())
    }
}

/// A fresh random id for the bus: 32 hex digits (a UUID from the kernel
/// without its dashes), as D-Bus server GUIDs are written.
pub fn new_bus_id() -> io::Result<String> {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?;
    Ok(uuid.trim().chars().filter(|c| *c != '-').collect())
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
    fn units_come_only_from_levels_the_system_manages() {
        let units = |path: &str| {
            let u = units_of_cgroup(path);
            (u.system, u.user)
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            units("/system.slice/dbus.service"),
            (some("dbus.service"), None)
        );
        assert_eq!(
            units("/system.slice/system-getty.slice/getty@tty1.service"),
            (some("getty@tty1.service"), None)
        );
        assert_eq!(
            units("/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope"),
            (some("user@1000.service"), some("app-foo.scope"))
        );
        // A user's delegated subtree may hold a cgroup named like any
        // system unit: it is still the user's.
        assert_eq!(
            units("/user.slice/user-65534.slice/user@65534.service/sshd.service"),
            (some("user@65534.service"), some("sshd.service"))
        );
        assert_eq!(
            units("/system.slice/delegated.service/sshd.service"),
            (some("delegated.service"), None)
        );
        assert_eq!(
            units("/user.slice/user-1000.slice/session-2.scope"),
            (some("session-2.scope"), None)
        );
        assert_eq!(units("/sandbox/sshd.service"), (None, None));
        assert_eq!(units("/"), (None, None));
        assert_eq!(units("/init.scope"), (some("init.scope"), None));
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
        let peer = capture(a.as_fd(), "boot", &BrokerNamespaces::own()).unwrap();
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
        assert!(!peer.identity.sender_proof_forgeable);
        assert_eq!(peer.identity.exe_unverified, None);
        assert!(
            peer.identity.exe.is_some(),
            "the exe path names the running file"
        );
    }
}
