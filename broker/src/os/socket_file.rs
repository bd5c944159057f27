//! The broker's listening sockets, of either face: binding a path (or
//! adopting one systemd passed), the socket file's rules, and the budget of
//! descriptors that decides whether one more connection can be accepted.
//!
//! A socket is either bound by the broker to a path or passed by systemd
//! (socket activation); the rules below are for the ones the broker binds.
//! An activated socket's file belongs to the service manager: the broker
//! neither locks nor removes it.
//!
//! Socket file rules: a lock file beside the socket (`PATH.lock`, `flock`)
//! makes sure only one broker owns a path; a socket file that nobody answers
//! on is stale and replaced; one a broker still answers on is never touched;
//! anything that is not a socket is never removed. The socket is made
//! connectable by every user (mode 0666); who may actually use the bus is
//! decided on the verified identity, not by file permissions.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pidbus_protocol::transport::{Listener, SocketKind};
use tracing::{info, warn};

use crate::bus::Bus;

/// Why the broker could not listen on its path.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another broker holds the lock or answers on the socket.
    #[error(
        "{0} is in use: a process is listening on it (another pidbusd, or another \
         program); stop it first or choose another path"
    )]
    InUse(PathBuf),
    /// The directory of an explicitly given path does not exist.
    #[error(
        "the directory of {0} does not exist; create it first (pidbusd creates only the directories of its default paths)"
    )]
    NoDirectory(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The parent directory is unsafe (owned by someone else or writable by others).
    #[error("{path}: {why}")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A socket passed by the service manager is not one pidbusd can serve.
    #[error("socket-activation descriptor {name:?}: {why}")]
    WrongActivatedSocket {
        /// Its `FileDescriptorName=` (`unknown` when unnamed).
        name: String,
        /// What is wrong, and which unit setting fixes it.
        why: String,
    },
    /// A filesystem or socket call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ListenError {
    let path = path.to_owned();
    move |source| ListenError::Io { what, path, source }
}

/// A listening socket: one the broker bound to a path, or one a service
/// manager passed it (socket activation).
#[derive(Debug)]
pub struct BoundSocket {
    listener: Listener,
    path: PathBuf,
    /// Set when the broker created the socket file: it removes the file when
    /// this is dropped (if it is still the one it created). An activated
    /// socket's file belongs to the service manager and outlives the broker.
    file: Option<OwnedSocketFile>,
}

/// The socket file the broker created, and the lock that makes it the only
/// broker on that path.
#[derive(Debug)]
struct OwnedSocketFile {
    inode: (u64, u64),
    lock: File,
    lock_path: PathBuf,
}

/// What to do about a socket path's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// It must exist (a path given explicitly: a typo must not make
    /// directories).
    Existing,
    /// Create it, mode 0755 (a default path such as `/run/pidbus`).
    Create,
    /// Create it mode 0700 and insist it is ours (the session bus's
    /// `/tmp` fallback).
    CreatePrivate,
}

impl BoundSocket {
    /// Binds `path`, replacing a stale socket file safely.
    ///
    /// `private_dir`: create a missing parent directory with mode 0700 and
    /// insist it belongs to us (session bus fallback under /tmp); otherwise a
    /// missing parent is created with mode 0755.
    pub fn bind(path: &Path, kind: SocketKind, parent: Parent) -> Result<Self, ListenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if parent == Parent::Existing && !dir.is_dir() {
                return Err(ListenError::NoDirectory(path.to_owned()));
            }
            prepare_directory(dir, parent == Parent::CreatePrivate)?;
        }
        let (lock, lock_path) = take_lock(path)?;
        remove_if_stale(path, kind)?;
        let listener = Listener::bind(path, kind).map_err(io_at("cannot bind", path))?;
        enable_credentials(&listener, path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o666))
            .map_err(io_at("cannot set permissions of", path))?;
        let meta = fs::symlink_metadata(path).map_err(io_at("cannot stat", path))?;
        Ok(BoundSocket {
            listener,
            path: path.to_owned(),
            file: Some(OwnedSocketFile {
                inode: (meta.dev(), meta.ino()),
                lock,
                lock_path,
            }),
        })
    }

    /// Serves a socket passed by the service manager (`name` is its
    /// `FileDescriptorName=`, for errors). It must be a listening unix
    /// socket: `SOCK_SEQPACKET` (`ListenSequentialPacket=` in the unit) for
    /// the native face, `SOCK_STREAM` (`ListenStream=`) for the D-Bus face.
    pub fn activated(fd: OwnedFd, name: &str) -> Result<Self, ListenError> {
        let (path, kind) = check_activated(&fd, name)?;
        let listener = Listener::from_owned(fd, kind)
            .map_err(io_at("cannot serve the activated socket", &path))?;
        enable_credentials(&listener, &path)?;
        Ok(BoundSocket {
            listener,
            path,
            file: None,
        })
    }

    /// Which face the socket serves.
    pub fn kind(&self) -> SocketKind {
        self.listener.kind()
    }

    /// Waits for and accepts one connection.
    pub async fn accept(&self) -> io::Result<OwnedFd> {
        self.listener.accept().await
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the service manager passed this socket.
    pub fn is_activated(&self) -> bool {
        self.file.is_none()
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Remove the file only if the broker made it and it is still ours:
        // never another broker's, never the service manager's.
        let Some(file) = &self.file else { return };
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == file.inode
        {
            if let Err(e) = fs::remove_file(&self.path) {
                warn!(path = %self.path.display(), error = %e, "cannot remove socket file");
            }
        }
        // The lock file too, while we still hold its lock and it is the
        // one we locked (a broker after us makes its own).
        let ours = |meta: &fs::Metadata| {
            file.lock
                .metadata()
                .is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
        };
        if fs::symlink_metadata(&file.lock_path).is_ok_and(|meta| ours(&meta)) {
            let _ = fs::remove_file(&file.lock_path);
        }
    }
}

/// Set on the listener, so accepted sockets have it from accept on (the
/// per-message sender check relies on it; see
/// `sender::SenderMismatch::proof_missing` for the one instant it misses).
fn enable_credentials(listener: &Listener, path: &Path) -> Result<(), ListenError> {
    listener
        .set_pass_credentials(true)
        .map_err(io_at("cannot enable SO_PASSCRED on", path))
}

/// An activated descriptor is a listening unix seqpacket socket; returns
/// its path (for logs), or says which unit setting is wrong.
fn check_activated(fd: &OwnedFd, name: &str) -> Result<(PathBuf, SocketKind), ListenError> {
    use rustix::net::{AddressFamily, sockopt};
    let wrong = |why: String| ListenError::WrongActivatedSocket {
        name: name.to_owned(),
        why,
    };
    let domain = sockopt::socket_domain(fd).map_err(|e| wrong(format!("not a socket ({e})")))?;
    if domain != AddressFamily::UNIX {
        return Err(wrong(
            "not a unix socket; use ListenSequentialPacket=/a/path".into(),
        ));
    }
    let kind = sockopt::socket_type(fd).map_err(|e| wrong(e.to_string()))?;
    let Some(kind) = SocketKind::of(kind) else {
        return Err(wrong(
            "neither SOCK_SEQPACKET nor SOCK_STREAM; use ListenSequentialPacket= for the native \
             socket and ListenStream= for the D-Bus socket"
                .into(),
        ));
    };
    if !sockopt::socket_acceptconn(fd).map_err(|e| wrong(e.to_string()))? {
        return Err(wrong(
            "not listening; pidbusd serves a listening socket (Accept=no)".into(),
        ));
    }
    let address = rustix::net::getsockname(fd).map_err(|e| wrong(e.to_string()))?;
    let path = rustix::net::SocketAddrUnix::try_from(address)
        .ok()
        .and_then(|unix| {
            unix.path()
                .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| PathBuf::from(format!("<activated socket {name}>")));
    Ok((path, kind))
}

fn prepare_directory(dir: &Path, private: bool) -> Result<(), ListenError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(if private { 0o700 } else { 0o755 })
            .create(dir)
            .map_err(io_at("cannot create directory", dir))?;
    }
    if private {
        let meta = fs::metadata(dir).map_err(io_at("cannot stat", dir))?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me || meta.mode() & 0o022 != 0 {
            return Err(ListenError::UnsafeDirectory {
                path: dir.to_owned(),
                why: format!(
                    "must be owned by uid {me} and not writable by others (someone may be \
                     trying to intercept the session bus); remove it or set XDG_RUNTIME_DIR"
                ),
            });
        }
    }
    Ok(())
}

fn take_lock(path: &Path) -> Result<(File, PathBuf), ListenError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&lock_path)
        .map_err(io_at("cannot open lock file", &lock_path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok((file, lock_path)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ListenError::InUse(path.to_owned())),
        Err(e) => Err(io_at("cannot lock", &lock_path)(e.into())),
    }
}

/// Removes `path` if it is a socket nobody answers on.
fn remove_if_stale(path: &Path, kind: SocketKind) -> Result<(), ListenError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at("cannot stat", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_owned()));
    }
    if answers_connections(path, kind) {
        return Err(ListenError::InUse(path.to_owned()));
    }
    info!(path = %path.display(), "replacing stale socket file");
    fs::remove_file(path).map_err(io_at("cannot remove stale socket", path))
}

fn answers_connections(path: &Path, kind: SocketKind) -> bool {
    let Ok(addr) = rustix::net::SocketAddrUnix::new(path) else {
        return false;
    };
    let Ok(fd) = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        match kind {
            SocketKind::SeqPacket => rustix::net::SocketType::SEQPACKET,
            SocketKind::Stream => rustix::net::SocketType::STREAM,
        },
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    ) else {
        return false;
    };
    // ECONNREFUSED: nobody listens. EAGAIN: someone listens, backlog full.
    !matches!(
        rustix::net::connect(&fd, &addr),
        Err(rustix::io::Errno::CONNREFUSED | rustix::io::Errno::NOENT)
    )
}

/// Keeps descriptors free for the peers already connected: the broker
/// refuses new connections near its open-file limit, so that a flood of
/// connections makes newcomers wait, not fail the pidfds, passed fds and
/// process watches of peers already served.
#[derive(Debug)]
pub struct FdBudget {
    limit: usize,
    reserve: usize,
    refused: u64,
    last_warning: Option<std::time::Instant>,
}

/// Descriptors the broker holds whatever its peers do: stdio, the
/// runtime's epoll and wakers, the listener and its lock, the exit watcher.
const BASE_FDS: usize = 16;

impl FdBudget {
    /// A budget under the current soft `RLIMIT_NOFILE`.
    pub fn from_rlimit() -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        FdBudget {
            limit,
            reserve: (limit / 10).clamp(32, 1024),
            refused: 0,
            last_warning: None,
        }
    }

    /// Whether `conn` may be served: what the broker holds (at least the
    /// new descriptor's number, since the kernel hands out the lowest free
    /// one; and two per connection plus every queued or watched one) stays
    /// clear of the limit's reserve.
    pub fn admits(&self, bus: &Bus, conn: BorrowedFd<'_>) -> bool {
        use crate::bus::quotas::Resource;
        use std::os::fd::AsRawFd;
        let lowest_free = usize::try_from(conn.as_raw_fd()).unwrap_or(0);
        let accounts = bus.accounts();
        let held =
            BASE_FDS + 2 * accounts.total(Resource::Connections) + accounts.total(Resource::Fds);
        lowest_free.max(held) + self.reserve < self.limit
    }

    /// Counts a refused newcomer (the face tells it why, in its own
    /// protocol); warns at most once a second, with how many were refused
    /// meanwhile. Returns the message for the newcomer.
    pub fn refused(&mut self) -> String {
        self.refused += 1;
        let due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1));
        if due {
            warn!(
                limit = self.limit,
                reserve = self.reserve,
                refused = self.refused,
                "refusing connections: the broker is near its open-file limit (RLIMIT_NOFILE)"
            );
            self.last_warning = Some(std::time::Instant::now());
            self.refused = 0;
        }
        format!(
            "connection refused: the broker is near its open-file limit ({}); try again later",
            self.limit
        )
    }
}

/// Accepts connections on `socket` until aborted, handing each to
/// `serve` with, when the broker is near its descriptor limit, the reason
/// to refuse it (the face tells the newcomer in its own protocol).
pub async fn accept_each(
    socket: BoundSocket,
    bus: &Bus,
    mut serve: impl FnMut(OwnedFd, Option<String>),
) {
    let mut budget = FdBudget::from_rlimit();
    loop {
        match socket.accept().await {
            Ok(fd) => {
                let refusal = (!budget.admits(bus, fd.as_fd())).then(|| budget.refused());
                serve(fd, refusal);
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Out of descriptors or memory: the pending connection stays in the backlog.
/// Pause briefly instead of spinning on the same error.
async fn accept_failed(e: io::Error) {
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}
