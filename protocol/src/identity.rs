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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Executable path (`/proc/PID/exe`), if readable. Non-UTF-8 bytes are
    /// replaced with U+FFFD.
    pub exe: Option<String>,
    /// The systemd unit the process runs in (`foo.service`, `session-2.scope`),
    /// derived from its cgroup; `None` outside any unit.
    pub unit: Option<String>,
    /// cgroup v2 path of the process, if known.
    pub cgroup: Option<String>,
    /// LSM security label (`SO_PEERSEC`), `None` when no LSM provides one.
    pub label: Option<String>,
}
