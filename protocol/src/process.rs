//! Process handles: what the broker tells a client about another peer's
//! *process* (as opposed to its connection) — the handle it hands out and
//! how the process ended.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::PeerId;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited (returned from `main`, called `exit`) with this code.
    Code(i32),
    /// A signal terminated it.
    Signal(i32),
}

impl ExitStatus {
    /// Decodes a `wait(2)`-style status word, as the kernel reports it in
    /// `pidfd_info.exit_code`. `None` for words that do not describe a
    /// terminated process (stopped, continued).
    pub fn from_wait_status(status: i32) -> Option<Self> {
        let signal = status & 0x7f;
        match signal {
            0 => Some(ExitStatus::Code((status >> 8) & 0xff)),
            // 0x7f marks a stopped (or, as 0xffff, continued) process;
            // anything else is the terminating signal.
            0x7f => None,
            _ => Some(ExitStatus::Signal(signal)),
        }
    }

    /// The exit code, if the process exited normally.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(code) => Some(code),
            ExitStatus::Signal(_) => None,
        }
    }

    /// The terminating signal, if a signal killed the process.
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signal(signal) => Some(signal),
            ExitStatus::Code(_) => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// The process behind a peer, as the broker answers a pidfd request or a
/// process watch. A pidfd request's reply carries the pidfd itself as its
/// one file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessHandle {
    /// The peer (connection) the process was found through.
    pub peer: PeerId,
    /// The process's pidfs id (see
    /// [`ProcessIdentity::pidfs_id`](crate::ProcessIdentity::pidfs_id)).
    pub pidfs_id: Option<u64>,
}

/// What happened to a watched process (see `org.pidbus.Bus1.WatchProcess`;
/// the driver sends it as the signals `ProcessExited` and `ProcessReaped`).
///
/// Every watch ends with [`Exited`](ProcessEvent::Exited) followed by
/// [`Reaped`](ProcessEvent::Reaped), unless it is removed first. The exit
/// status is only known once the process's parent has reaped it, so it
/// comes with the second event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessEvent {
    /// The process exited (it may still be a zombie). The broker has
    /// already removed its connections' names and failed the calls waiting
    /// on it.
    Exited {
        /// The watch id the client chose.
        watch: u64,
        /// The process, as given when the watch was set up.
        process: ProcessHandle,
    },
    /// The process's parent reaped it; this watch is over.
    Reaped {
        /// The watch id the client chose.
        watch: u64,
        /// The process.
        process: ProcessHandle,
        /// How it ended; `None` when the kernel could not say (before Linux
        /// 6.15, which added `PIDFD_INFO_EXIT`).
        status: Option<ExitStatus>,
    },
}

impl ProcessEvent {
    /// The watch this event belongs to.
    pub fn watch(&self) -> u64 {
        match self {
            ProcessEvent::Exited { watch, .. } | ProcessEvent::Reaped { watch, .. } => *watch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_words_decode_to_code_or_signal() {
        assert_eq!(ExitStatus::from_wait_status(0), Some(ExitStatus::Code(0)));
        assert_eq!(
            ExitStatus::from_wait_status(7 << 8),
            Some(ExitStatus::Code(7))
        );
        assert_eq!(
            ExitStatus::from_wait_status(15),
            Some(ExitStatus::Signal(15))
        );
        // SIGSEGV with a core dump.
        assert_eq!(
            ExitStatus::from_wait_status(0x80 | 11),
            Some(ExitStatus::Signal(11))
        );
        // Stopped by SIGSTOP, and "continued": not an end.
        assert_eq!(ExitStatus::from_wait_status((19 << 8) | 0x7f), None);
        assert_eq!(ExitStatus::from_wait_status(0xffff), None);
        assert_eq!(ExitStatus::Code(7).code(), Some(7));
        assert_eq!(ExitStatus::Signal(9).signal(), Some(9));
        assert_eq!(ExitStatus::Signal(9).to_string(), "killed by signal 9");
    }
}
