//! Size limits every peer and the broker agree on.
//!
//! Limits are checked before anything is allocated for a record: the receive
//! path reads into a fixed buffer one byte larger than the limit, so an
//! oversized record is detected by its length alone.

/// Default maximum size of one record (one message) in bytes: 64 KiB.
pub const DEFAULT_MAX_RECORD_SIZE: usize = 64 * 1024;

/// Largest record size a broker may be configured to accept (16 MiB).
///
/// SEQPACKET records must fit the socket buffer in one piece; beyond this the
/// kernel's own limits make large records unreliable anyway.
pub const MAX_CONFIGURABLE_RECORD_SIZE: usize = 16 * 1024 * 1024;

/// Maximum number of file descriptors attached to one record.
///
/// Matches the kernel's `SCM_MAX_FD` (253); a record carrying more is refused
/// by the kernel itself.
pub const MAX_FDS_PER_RECORD: usize = 253;
