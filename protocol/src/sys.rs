//! The raw syscalls pidbus needs that no safe wrapper covers: receiving
//! `SCM_PIDFD`, `SO_PEERPIDFD`, `SO_PEERGROUPS`, `SO_PEERSEC`, and sendmsg /
//! recvmsg with ancillary data. This is the only module with `unsafe` code.
//!
//! Every file descriptor the kernel installs in this process is wrapped in an
//! [`OwnedFd`] before anything else happens, so no error path can leak one.
#![allow(unsafe_code)]

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::limits::MAX_FDS_PER_RECORD;

// Values from include/uapi/asm-generic/socket.h, which every architecture
// except alpha, mips, parisc and sparc uses. The `libc` crate does not export
// them on its stable path yet.
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod consts {
    pub const SO_PASSPIDFD: libc::c_int = 76;
    pub const SO_PEERPIDFD: libc::c_int = 77;
    pub const SCM_PIDFD: libc::c_int = 0x04;
}
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
compile_error!("pidbus: SO_PEERPIDFD constants for this architecture are not defined yet");

use consts::*;

/// Credentials the kernel attached to a record (`SCM_CREDENTIALS`), with the
/// pid translated into the receiver's pid namespace (0 if not visible there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Sender's pid in the receiver's pid namespace.
    pub pid: i32,
    /// Sender's uid.
    pub uid: u32,
    /// Sender's gid.
    pub gid: u32,
}

/// What one `recvmsg` returned.
#[derive(Debug)]
pub struct RawReceived {
    /// Real length of the record; larger than the buffer means it was cut.
    pub len: usize,
    /// Descriptors passed with `SCM_RIGHTS`, already owned.
    pub fds: Vec<OwnedFd>,
    /// `SCM_CREDENTIALS`, if the socket has `SO_PASSCRED`.
    pub credentials: Option<Credentials>,
    /// `SCM_PIDFD`, if the socket has `SO_PASSPIDFD`.
    pub pidfd: Option<OwnedFd>,
    /// The kernel had more ancillary data than the buffer could hold.
    pub control_truncated: bool,
}

/// Room for the largest ancillary data a record can carry: `SCM_MAX_FD`
/// descriptors, one `ucred` and one pidfd, with cmsg headers and padding.
const CONTROL_SPACE: usize = 64 + MAX_FDS_PER_RECORD * size_of::<RawFd>() + 2 * 64;

/// Aligned storage for a control message buffer.
#[repr(C, align(8))]
struct ControlBuffer([MaybeUninit<u8>; CONTROL_SPACE]);

/// Receives one record without blocking. `buf` receives the data; on a
/// record socket (`whole_record`) the returned `len` is the record's real
/// length (`MSG_TRUNC`), on a stream it is the bytes read.
pub fn recv_record(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    whole_record: bool,
) -> io::Result<RawReceived> {
    let mut control = ControlBuffer([MaybeUninit::uninit(); CONTROL_SPACE]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_SPACE as _;
    let truncate = if whole_record { libc::MSG_TRUNC } else { 0 };
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT | truncate;
    // SAFETY: msg points at live buffers (iov -> buf, control) of the stated
    // lengths for the duration of the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(take_ancillary(&msg, n as usize))
}

/// What the kernel attached to a received message: owns every installed
/// descriptor before looking at anything else, so that every path after
/// closes them.
fn take_ancillary(msg: &libc::msghdr, len: usize) -> RawReceived {
    let mut received = RawReceived {
        len,
        fds: Vec::new(),
        credentials: None,
        pidfd: None,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    };
    // SAFETY: msg was filled by a successful recvmsg/recvmmsg; CMSG_* walk
    // within msg_controllen, which the kernel set to the bytes it wrote.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and points inside the control buffer.
        let header = unsafe { &*cmsg };
        // SAFETY: CMSG_DATA of a valid header points at its payload.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: CMSG_LEN(0) is a pure computation.
        let payload_len = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
        if header.cmsg_level == libc::SOL_SOCKET {
            match header.cmsg_type {
                libc::SCM_RIGHTS => {
                    let count = payload_len / size_of::<RawFd>();
                    for i in 0..count {
                        // SAFETY: the payload holds `count` ints; read unaligned
                        // because CMSG_DATA alignment is not guaranteed for i32.
                        let raw = unsafe { data.cast::<RawFd>().add(i).read_unaligned() };
                        // SAFETY: the kernel just installed this descriptor for us
                        // and nothing else owns it.
                        received.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
                SCM_PIDFD if payload_len >= size_of::<RawFd>() => {
                    // SAFETY: payload holds one int.
                    let raw = unsafe { data.cast::<RawFd>().read_unaligned() };
                    if raw >= 0 {
                        // SAFETY: freshly installed by the kernel, unowned.
                        received.pidfd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
                libc::SCM_CREDENTIALS if payload_len >= size_of::<libc::ucred>() => {
                    // SAFETY: payload holds one ucred.
                    let cred = unsafe { data.cast::<libc::ucred>().read_unaligned() };
                    received.credentials = Some(Credentials {
                        pid: cred.pid,
                        uid: cred.uid,
                        gid: cred.gid,
                    });
                }
                _ => {}
            }
        }
        // SAFETY: walking the same valid msghdr.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    received
}

/// The most records one [`recv_records`] or [`send_records`] call moves.
pub const MAX_BATCH: usize = 32;

/// The most bytes of buffers [`recv_records`] keeps for one batch.
const BATCH_BYTES: usize = 4 << 20;

/// Room for [`recv_records`]: `MAX_BATCH` data buffers of one size and
/// their control buffers, kept between calls (the broker keeps one per
/// thread).
pub struct RecvBatch {
    data: Vec<u8>,
    stride: usize,
    controls: Vec<ControlBuffer>,
}

impl Default for RecvBatch {
    /// Empty: buffers are made as receives ask for them.
    fn default() -> Self {
        RecvBatch {
            data: Vec::new(),
            stride: 0,
            controls: Vec::new(),
        }
    }
}

impl RecvBatch {
    /// The bytes of record `index` as received, `len` long (at most the
    /// buffer's size).
    pub fn record(&self, index: usize, len: usize) -> &[u8] {
        let start = index * self.stride;
        &self.data[start..start + len.min(self.stride)]
    }
}

/// How [`recv_records`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Not at all: `WouldBlock` when no record is waiting.
    Never,
    /// For the first record, on a blocking socket (`MSG_WAITFORONE`);
    /// the others are those already waiting then.
    ForOne,
}

/// Receives up to `max` (at most [`MAX_BATCH`], fewer for records over
/// 128 KiB) records in one `recvmmsg`, each into a buffer of `size` bytes
/// of `batch`; their
/// lengths (real, as with `MSG_TRUNC`) and ancillary data are appended to
/// `out`. Returns whether the socket was drained: fewer records came than
/// there was room for, so the kernel found no more waiting.
pub fn recv_records(
    fd: BorrowedFd<'_>,
    batch: &mut RecvBatch,
    size: usize,
    max: usize,
    wait: Wait,
    out: &mut Vec<RawReceived>,
) -> io::Result<bool> {
    // Large records (a raised record limit) get fewer slots, so the
    // buffers stay within BATCH_BYTES (one slot at least).
    let slots = (BATCH_BYTES / size.max(1)).clamp(1, MAX_BATCH);
    let count = max.clamp(1, slots);
    // Grown to what is asked: a connection that receives one record at a
    // time never pays for 32 buffers.
    if batch.stride != size || batch.data.len() < size * count {
        batch.stride = size;
        // Zeroed by the allocator: pages a small record never reaches are
        // never touched.
        batch.data = vec![0; size * count];
    }
    while batch.controls.len() < count {
        batch
            .controls
            .push(ControlBuffer([MaybeUninit::uninit(); CONTROL_SPACE]));
    }
    let base = batch.data.as_mut_ptr();
    let mut iovs: [libc::iovec; MAX_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..count {
        // SAFETY: `data` holds at least `count * size` bytes and i < count,
        // so buffer i is inside it.
        iovs[i].iov_base = unsafe { base.add(i * size) }.cast();
        iovs[i].iov_len = size;
        let msg = &mut headers[i].msg_hdr;
        msg.msg_iov = &mut iovs[i];
        msg.msg_iovlen = 1;
        msg.msg_control = batch.controls[i].0.as_mut_ptr().cast();
        msg.msg_controllen = CONTROL_SPACE as _;
    }
    let waiting = match wait {
        Wait::Never => libc::MSG_DONTWAIT,
        Wait::ForOne => libc::MSG_WAITFORONE,
    };
    let flags = libc::MSG_CMSG_CLOEXEC | waiting | libc::MSG_TRUNC;
    // SAFETY: every header points at live buffers (iov -> a slice of
    // `data`, control) of the stated lengths for the duration of the call;
    // a null timeout means none.
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            flags,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    for header in &headers[..n as usize] {
        out.push(take_ancillary(&header.msg_hdr, header.msg_len as usize));
    }
    Ok((n as usize) < count)
}

/// One record to send: its bytes and the descriptors that go with it.
pub struct OutRecord<'a, F: AsFd> {
    /// The record's bytes.
    pub data: &'a [u8],
    /// Descriptors passed with it (`SCM_RIGHTS`).
    pub fds: &'a [F],
}

/// Sends up to [`MAX_BATCH`] of `records` in one `sendmmsg` without
/// blocking; returns how many went (`WouldBlock` if none could).
pub fn send_records<F: AsFd>(
    fd: BorrowedFd<'_>,
    records: &[OutRecord<'_, F>],
) -> io::Result<usize> {
    let count = records.len().min(MAX_BATCH);
    let mut iovs: [libc::iovec; MAX_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let with_fds = records[..count]
        .iter()
        .filter(|r| !r.fds.is_empty())
        .count();
    let mut controls: Vec<ControlBuffer> = (0..with_fds)
        .map(|_| ControlBuffer([MaybeUninit::uninit(); CONTROL_SPACE]))
        .collect();
    let mut next_control = 0;
    for (i, record) in records[..count].iter().enumerate() {
        iovs[i].iov_base = record.data.as_ptr().cast_mut().cast();
        iovs[i].iov_len = record.data.len();
        let msg = &mut headers[i].msg_hdr;
        msg.msg_iov = &mut iovs[i];
        msg.msg_iovlen = 1;
        if !record.fds.is_empty() {
            attach_fds(msg, &mut controls[next_control], record.fds)?;
            next_control += 1;
        }
    }
    // SAFETY: every header points at live buffers of the stated lengths
    // (the records' bytes, their control buffers); the fds are borrowed,
    // so they stay open for the duration of the call.
    let n = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sends the concatenation of `parts` without blocking in one `sendmsg`
/// (a gathered write on a stream), with `fds` attached to its first byte;
/// returns how many bytes went.
pub fn send_gathered<F: AsFd>(fd: BorrowedFd<'_>, parts: &[&[u8]], fds: &[F]) -> io::Result<usize> {
    let count = parts.len().min(MAX_BATCH);
    let mut iovs: [libc::iovec; MAX_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    for (iov, part) in iovs.iter_mut().zip(&parts[..count]) {
        iov.iov_base = part.as_ptr().cast_mut().cast();
        iov.iov_len = part.len();
    }
    let mut control = ControlBuffer([MaybeUninit::uninit(); CONTROL_SPACE]);
    // SAFETY: all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = count as _;
    if !fds.is_empty() {
        attach_fds(&mut msg, &mut control, fds)?;
    }
    // SAFETY: msg points at live buffers of the stated lengths; the fds
    // are borrowed, so they stay open for the duration of the call.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Points `msg`'s control data at `control`, holding `fds` as
/// `SCM_RIGHTS`.
fn attach_fds<F: AsFd>(
    msg: &mut libc::msghdr,
    control: &mut ControlBuffer,
    fds: &[F],
) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} file descriptors in one message; at most {MAX_FDS_PER_RECORD} are allowed",
                fds.len()
            ),
        ));
    }
    let payload = (fds.len() * size_of::<RawFd>()) as u32;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
    // SAFETY: the control buffer is CONTROL_SPACE bytes, larger than
    // CMSG_SPACE of MAX_FDS_PER_RECORD descriptors (checked above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            data.add(i).write_unaligned(fd.as_fd().as_raw_fd());
        }
    }
    Ok(())
}

/// Sends one record without blocking, with `fds` attached via `SCM_RIGHTS`.
pub fn send_record(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    send_gathered(fd, &[data], fds)
}

/// `SO_PEERPIDFD`: a pidfd for the process that connected the socket.
///
/// Fails with `ENOPROTOOPT` on kernels older than 6.5.
pub fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut raw: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: raw/len are valid for writes of the stated size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut raw as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if raw < 0 {
        return Err(io::Error::other("SO_PEERPIDFD returned no descriptor"));
    }
    // SAFETY: the kernel installed a new pidfd (O_CLOEXEC) for us.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `SO_PEERGROUPS`: the peer's supplementary groups at connect time.
pub fn peer_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: groups is valid for writes of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            // Kept for the connection's life: no room for 64 when it has 2.
            groups.truncate(count);
            groups.shrink_to_fit();
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the kernel wrote the needed size into len.
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// `SO_PEERSEC`: the peer's LSM label, `None` if no LSM provides one.
pub fn peer_security_label(sock: BorrowedFd<'_>) -> io::Result<Option<String>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Whether an LSM provides labels is fixed at boot: once the kernel says
    // none does, later connections skip the syscall.
    static NO_LABELS: AtomicBool = AtomicBool::new(false);
    if NO_LABELS.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut buf = vec![0u8; 256];
    loop {
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: buf is valid for writes of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERSEC,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            buf.truncate(len as usize);
            while buf.last() == Some(&0) {
                buf.pop();
            }
            if buf.is_empty() {
                return Ok(None);
            }
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOPROTOOPT) => {
                NO_LABELS.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Some(libc::ERANGE) if (len as usize) > buf.len() => buf.resize(len as usize, 0),
            _ => return Err(err),
        }
    }
}

/// Enables or disables `SO_PASSPIDFD` (a pidfd of the sender with every
/// received record).
pub fn set_pass_pidfd(sock: BorrowedFd<'_>, enable: bool) -> io::Result<()> {
    let value: libc::c_int = enable.into();
    // SAFETY: value is a valid int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSPIDFD,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How much of what was sent on `sock` its peer has not read yet
/// (`SIOCOUTQ`: on a unix socket, the memory of the records or bytes
/// still waiting in the peer's receive queue; 0 once it has read them all,
/// and with them every descriptor they carried).
pub fn unread_by_peer(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut amount: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int to the pointer, which is valid for
    // the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut amount) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(amount).unwrap_or(0))
}

/// Registers a descriptor with the current tokio reactor.
///
/// Fails (instead of panicking) when called outside a tokio runtime.
pub fn register_async(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other(
            "pidbus sockets must be created inside a tokio runtime (use the blocking API otherwise)",
        ));
    }
    // SAFETY: an OwnedFd is an open descriptor that only its owner closes, and
    // its as_raw_fd() never changes; the AsyncFd takes ownership of it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// `SO_PEERCRED`: pid (in our pid namespace, 0 if not visible there), uid
/// and gid of the peer at connect time.
///
/// Not `rustix::net::sockopt::socket_peercred`: its `UCred` holds a non-zero
/// `Pid`, which a peer outside our pid namespace (pid 0) would violate.
pub fn peer_credentials(sock: BorrowedFd<'_>) -> io::Result<Credentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred/len are valid for writes of the stated size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Credentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `struct pidfd_info` (include/uapi/linux/pidfd.h, Linux 6.13+) in its
/// first published size; the kernel fills the fields it knows and ignores
/// the rest, so this size works on every kernel that has the ioctl.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

/// `PIDFD_INFO_PID`: the pid fields (always filled by the kernel).
const PIDFD_INFO_PID: u64 = 1 << 0;
/// `PIDFD_INFO_EXIT` (Linux 6.15): ask for the exit status of a reaped task.
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `PIDFD_GET_INFO` = `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;

/// `PIDFD_GET_INFO` asking for `mask`; `Ok(None)` where the kernel cannot
/// answer: no such ioctl (`ENOTTY`/`EINVAL`, before Linux 6.13), a process
/// already reaped without the exit info asked for (`ESRCH`), or one outside
/// the caller's pid namespace (`EREMOTE`).
fn pidfd_get_info(pidfd: BorrowedFd<'_>, mask: u64) -> io::Result<Option<PidfdInfo>> {
    let mut info = PidfdInfo {
        mask,
        ..PidfdInfo::default()
    };
    // SAFETY: info is a valid, writable pidfd_info of the size encoded in
    // the request number, for the duration of the call.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL | libc::ESRCH | libc::EREMOTE) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(info))
}

/// The kernel's wait status word of the process behind `pidfd`, via
/// `PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`.
///
/// `Ok(None)` while the process has not been reaped, and wherever the kernel
/// cannot say: before Linux 6.15, when no pidfd was open at exit, or when
/// the process is outside the caller's pid namespace (`EREMOTE`).
pub fn pidfd_wait_status(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let info = pidfd_get_info(pidfd, PIDFD_INFO_EXIT)?;
    Ok(info.and_then(|info| (info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code)))
}

/// `PIDFD_INFO_CGROUPID`: the id of the process's cgroup v2.
const PIDFD_INFO_CGROUPID: u64 = 1 << 2;

/// The pid of the process behind `pidfd` in the caller's pid namespace, and
/// the id of its cgroup v2 (the inode number of its directory in cgroupfs)
/// where the kernel gives it, via `PIDFD_GET_INFO` (Linux 6.13): one
/// syscall instead of opening and parsing the pidfd's fdinfo and the
/// process's `cgroup` file. `Ok(None)` where the ioctl cannot say (see
/// [`pidfd_get_info`]), which includes a reaped process and one not
/// visible in the caller's pid namespace.
pub fn pidfd_pid_and_cgroup(pidfd: BorrowedFd<'_>) -> io::Result<Option<(u32, Option<u64>)>> {
    let info = pidfd_get_info(pidfd, PIDFD_INFO_PID | PIDFD_INFO_CGROUPID)?;
    Ok(info.and_then(|info| {
        let pid = (info.mask & PIDFD_INFO_PID != 0 && info.tgid != 0).then_some(info.tgid)?;
        let cgroup = (info.mask & PIDFD_INFO_CGROUPID != 0).then_some(info.cgroupid);
        Some((pid, cgroup))
    }))
}

/// `PIDFD_INFO_CREDS`: the credential fields.
const PIDFD_INFO_CREDS: u64 = 1 << 1;

/// The real uid and gid of the process behind `pidfd` now, via
/// `PIDFD_GET_INFO` (Linux 6.13): read from the process itself, so they
/// cannot belong to a process that reused its pid. `Ok(None)` where the
/// ioctl cannot say: no such ioctl (before Linux 6.13), a process in
/// another pid namespace, or one that has been reaped.
pub fn pidfd_real_ids(pidfd: BorrowedFd<'_>) -> io::Result<Option<(u32, u32)>> {
    let info = pidfd_get_info(pidfd, PIDFD_INFO_CREDS)?;
    Ok(info.and_then(|info| (info.mask & PIDFD_INFO_CREDS != 0).then_some((info.ruid, info.rgid))))
}

/// `pidfd_send_signal(2)`: sends `signal` to the process behind `pidfd`,
/// which cannot be a recycled pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a plain syscall with integer arguments and a null siginfo,
    // which the kernel accepts as "like kill(2)".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `command`'s child run as `uid`, `gid` and exactly the
/// supplementary `groups`: set in the child between fork and exec, groups
/// first (only root may set them), then the gid, then the uid, so the
/// child never holds the parent's groups under the new uid. Any failure
/// fails the spawn, never a child left with the parent's rights.
pub fn exec_as_user(command: &mut std::process::Command, uid: u32, gid: u32, groups: Vec<u32>) {
    use std::os::unix::process::CommandExt;
    let groups: Vec<libc::gid_t> = groups;
    let switch = move || -> io::Result<()> {
        // SAFETY: setgroups reads `groups.len()` gids from a live vector
        // that was allocated before the fork; it and setresgid/setresuid
        // are plain system calls, async-signal-safe as pre_exec requires.
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls and
    // allocates nothing (the group list moved in before the fork).
    unsafe {
        command.pre_exec(switch);
    }
}

/// Makes `command`'s child start with only the descriptors it is given
/// (its stdin, stdout and stderr): every other one the parent has open —
/// including those it inherited without close-on-exec from whoever started
/// it — is marked close-on-exec in the child between fork and exec
/// (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`, Linux ≥ 5.11). Marked
/// rather than closed, so the standard library's own exec-error pipe still
/// works; a kernel without `close_range` fails the spawn.
pub fn exec_without_stray_fds(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let mark = || -> io::Result<()> {
        // SAFETY: close_range takes plain integers and touches only this
        // process's descriptor table; a system call, async-signal-safe as
        // pre_exec requires.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure makes one async-signal-safe system call and
    // allocates nothing.
    unsafe {
        command.pre_exec(mark);
    }
}

/// Takes ownership of the descriptors a service manager passed to this
/// process for socket activation (`sd_listen_fds(3)`: `LISTEN_FDS`
/// descriptors from 3 up, meant for the process named by `LISTEN_PID`).
///
/// `fds` are those numbers as read from the environment. Only the first
/// call adopts anything — later calls fail — so no descriptor ends up with
/// two owners; each must be open, and must lie in the activation range.
pub fn adopt_activation_fds(fds: impl IntoIterator<Item = RawFd>) -> io::Result<Vec<OwnedFd>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ADOPTED: AtomicBool = AtomicBool::new(false);
    /// `SD_LISTEN_FDS_START`.
    const FIRST_ACTIVATION_FD: RawFd = 3;
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(
            "the socket-activation descriptors were already taken",
        ));
    }
    let mut adopted = Vec::new();
    for fd in fds {
        if fd < FIRST_ACTIVATION_FD {
            return Err(io::Error::other(format!(
                "descriptor {fd} is not a socket-activation descriptor (they start at 3)"
            )));
        }
        // SAFETY: F_GETFD only reads the descriptor's flags; it fails with
        // EBADF for a number that is not open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(io::Error::other(format!(
                "socket-activation descriptor {fd} is not open: {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: the service manager passed `fd` open to this process for it
        // to own (sd_listen_fds(3)); nothing else in pidbus refers to the
        // activation range, and the guard above makes this the only adoption.
        adopted.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(adopted)
}
