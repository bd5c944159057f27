//! Per-user limits on the log lines a user can cause.
//!
//! A refusal is logged so an administrator sees it, but a user who can
//! make the broker refuse something can make it refuse that thing as
//! often as it likes: without a limit, one user writes the broker's log
//! (and the journal) full. Each kind of line has its own [`LogLimit`]: a
//! user gets at most [`LINES_PER_WINDOW`] such lines per [`WINDOW`]; the
//! rest are counted, and the next line written for that user says how
//! many were left out.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Messages refused because another process than the connection's sent
/// them (or the kernel could not say which did), on either face.
pub static FOREIGN_SENDERS: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);

/// polkit checks of a subject given by pid and start time (every polkit
/// client before 124 sends one), logged as the weaker form.
pub static WEAK_SUBJECTS: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);

/// polkit checks refused because the subject is another user's process
/// (or no process).
pub static OTHER_USERS_PROCESSES: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);

/// Authorizations the policy denied, and polkit checks answered "no".
pub static DENIALS: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);

/// Records with descriptors held because the kernel's limit on the
/// broker's descriptors in flight was reached, by the receiver's user.
pub static KERNEL_FD_LIMIT: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);

/// polkit checks answered "yes".
pub static AUTHORIZED: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);

/// How many lines of one kind a user may cause per window.
pub const LINES_PER_WINDOW: u32 = 10;

/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Users remembered before windows that have ended are forgotten (their
/// suppressed counts with them): bounds the memory a flood of users costs.
const MAX_USERS: usize = 4096;

/// The log lines of one kind, limited per user.
#[derive(Debug, Default)]
pub struct LogLimit {
    users: Mutex<HashMap<u32, Window>>,
}

/// One user's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    written: u32,
    /// Lines left out in earlier windows and not reported yet.
    suppressed: u64,
}

/// A line may be written; `suppressed` lines of the same kind for the same
/// user were left out since the last one written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// How many lines were left out before this one.
    pub suppressed: u64,
}

impl LogLimit {
    /// A limit with no user counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a line caused by `uid` may be written now; `None`: leave it
    /// out (it is counted).
    pub fn admit(&self, uid: u32) -> Option<Admitted> {
        self.admit_at(uid, Instant::now())
    }

    fn admit_at(&self, uid: u32, now: Instant) -> Option<Admitted> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.len() >= MAX_USERS && !users.contains_key(&uid) {
            users.retain(|_, w| now.duration_since(w.start) < WINDOW);
        }
        let window = users.entry(uid).or_insert(Window {
            start: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(window.start) >= WINDOW {
            window.start = now;
            window.written = 0;
        }
        if window.written >= LINES_PER_WINDOW {
            window.suppressed += 1;
            return None;
        }
        window.written += 1;
        let suppressed = std::mem::take(&mut window.suppressed);
        Some(Admitted { suppressed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_its_lines_per_window_and_learns_what_was_left_out() {
        let limit = LogLimit::new();
        let start = Instant::now();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(limit.admit_at(7, start), Some(Admitted { suppressed: 0 }));
        }
        for _ in 0..5 {
            assert_eq!(limit.admit_at(7, start), None);
        }
        // Another user is not held back by the first.
        assert_eq!(limit.admit_at(8, start), Some(Admitted { suppressed: 0 }));
        let later = start + WINDOW;
        assert_eq!(limit.admit_at(7, later), Some(Admitted { suppressed: 5 }));
        assert_eq!(limit.admit_at(7, later), Some(Admitted { suppressed: 0 }));
    }

    #[test]
    fn many_users_cost_bounded_memory() {
        let limit = LogLimit::new();
        let start = Instant::now();
        for uid in 0..(MAX_USERS as u32) {
            limit.admit_at(uid, start);
        }
        let later = start + WINDOW;
        limit.admit_at(u32::MAX, later);
        assert_eq!(limit.users.lock().unwrap().len(), 1);
    }
}
