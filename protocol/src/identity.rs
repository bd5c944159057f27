//! The verified identity of a connected process.

use serde::{Deserialize, Serialize};

/// Who a peer *is*, as the broker verified it from the peer's pidfd.
///
/// Captured once when the broker accepts the connection: credentials come from
/// `SO_PEERCRED`/`SO_PEERGROUPS`/`SO_PEERSEC` at connect time (never re-read, so
/// a later `exec` of a setuid binary does not change them), the rest from
/// `/proc`, confirmed to describe the same live process by checking the pidfd
/// had not exited after the reads.
///
/// The stable key of a process is [`pidfs_id`](Self::pidfs_id) together with
/// [`boot_id`](Self::boot_id): unlike a PID it is never reused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// PID in the broker's pid namespace at connect time (informational only:
    /// no decision is ever taken on a PID number); 0 when the process is not
    /// visible in the broker's pid namespace.
    pub pid: u32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// Supplementary groups at connect time.
    pub groups: Vec<u32>,
    /// Inode number of the process's pidfd on pidfs: unique per boot on 64-bit
    /// kernels ≥ 6.9. `None` on kernels without pidfs, where
    /// [`start_time`](Self::start_time) disambiguates the PID instead.
    pub pidfs_id: Option<u64>,
    /// Process start time in clock ticks after boot (`/proc/PID/stat` field 22),
    /// recorded only on kernels without pidfs, where it is what tells two
    /// processes with the same PID apart; `None` otherwise, and when the
    /// process is not visible in the broker's pid namespace.
    pub start_time: Option<u64>,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Executable path, set only when the file at this path *in the
    /// broker's mount namespace* is the very file the process runs (same
    /// device and inode as `/proc/PID/exe`). A path that names another file
    /// for the broker (a bind mount in the peer's own mount namespace, a
    /// file replaced since) is never reported here; see
    /// [`exe_unverified`](Self::exe_unverified). Non-UTF-8 bytes are
    /// replaced with U+FFFD. Policy `exe` rules compare files, not text,
    /// and re-check at each decision (an `exec` changes the file).
    pub exe: Option<String>,
    /// The executable path as the process's own mount namespace names it,
    /// when it does not name the same file for the broker: what the process
    /// *claims*, for people reading logs. Never matched by a rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_unverified: Option<String>,
    /// The system unit the process runs in (`dbus.service`,
    /// `session-2.scope`, `user@1000.service`), from the part of its cgroup
    /// path that only the system manages: the first unit below the root's
    /// slices. `None` outside any unit.
    pub unit: Option<String>,
    /// The unit of the user's own service manager the process runs in
    /// (`app-foo.scope` below `user@1000.service`). The user creates these
    /// itself, so this names what the user says, not a system service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_unit: Option<String>,
    /// The process administers its own pid and user namespace (it or an
    /// ancestor ran `unshare -Urp`), so it may forge the per-message sender
    /// credentials (`SCM_CREDENTIALS`, and with them `SCM_PIDFD`) as any
    /// process of that namespace: the broker cannot tell which process of
    /// it sent a message on this connection. Policies can refuse such
    /// peers actions (`sender_proof = "forgeable"`).
    #[serde(default)]
    pub sender_proof_forgeable: bool,
    /// The broker could not read the facts about this process that the
    /// kernel shows only to its owner or to a privileged reader — its
    /// executable (`exe` is `None`) and, for a process in a nested pid
    /// namespace, its namespaces (`sender_proof_forgeable` is then assumed)
    /// — because the broker runs without the privilege (as a plain user,
    /// serving another user's process, or a process that is not
    /// dumpable). Policy rules on `exe` and `sender_proof` fail closed for
    /// it; everything else (uid, groups, pidfs id, cgroup, unit) is known.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub facts_withheld: bool,
    /// cgroup v2 path of the process, if known.
    pub cgroup: Option<String>,
    /// LSM security label (`SO_PEERSEC`), `None` when no LSM provides one.
    pub label: Option<String>,
    /// The process had already exited when the broker accepted its
    /// connection (it wrote and left at once, as `dbus-send` may): only
    /// what the kernel keeps past an exit is known (uid, gid, groups,
    /// label, pidfs id, the pid it had), not its `/proc` facts (`exe`,
    /// `unit`, `cgroup`, namespaces), so policy rules that look at those
    /// fail closed. What it sent is still routed, each message proven by
    /// the pidfd of the process that wrote it.
    #[serde(default)]
    pub exited_at_connect: bool,
}
