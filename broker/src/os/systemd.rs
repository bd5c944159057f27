//! Living under systemd: the listening sockets a `.socket` unit passes
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`, sd_listen_fds(3)) and the state
//! notifications a `Type=notify` service sends (`READY=1`, `RELOADING=1`,
//! `STOPPING=1`, `STATUS=`, sd_notify(3)).
//!
//! Both come from the `sd-notify` crate; outside systemd (no
//! `LISTEN_PID`/`NOTIFY_SOCKET` in the environment) there are no activated
//! sockets and every notification is a no-op.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;
use tracing::{info, warn};

use crate::os::socket_file::{BoundSocket, ListenError};

/// Why the sockets passed by the service manager cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES` is malformed, or a
    /// descriptor it names is not open.
    #[error("invalid socket-activation environment (LISTEN_FDS/LISTEN_FDNAMES): {0}")]
    Environment(io::Error),
    /// A passed descriptor is not a socket pidbusd can serve.
    #[error(transparent)]
    Socket(#[from] ListenError),
}

/// The sockets passed for this process, ready to serve; empty when the
/// broker was not socket-activated. Takes them: a second call finds none.
///
/// The variables stay in the environment (unsetting them is unsafe once
/// threads run); they cannot mislead anyone, since `LISTEN_PID` names this
/// process and the services the broker starts get a clean environment
/// ([`crate::os::launch`]).
pub fn activated_sockets() -> Result<Vec<BoundSocket>, ActivationError> {
    let passed: Vec<_> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::Environment)?
        .collect();
    if passed.is_empty() {
        return Ok(Vec::new());
    }
    let fds = pidbus_protocol::adopt_activation_fds(passed.iter().map(|(fd, _)| *fd))
        .map_err(ActivationError::Environment)?;
    let mut sockets = Vec::with_capacity(fds.len());
    for (fd, (_, name)) in fds.into_iter().zip(&passed) {
        let socket = BoundSocket::activated(fd, name)?;
        info!(name = %name, address = %socket.path().display(), "using socket passed by the service manager");
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Tells the service manager the broker serves (`READY=1`), with a status
/// line.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager a reload began (`RELOADING=1` with the
/// `MONOTONIC_USEC=` that `Type=notify-reload` requires).
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            warn!(error = %e, "cannot read CLOCK_MONOTONIC for RELOADING=1");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// Tells the service manager the broker is shutting down (`STOPPING=1`).
pub fn notify_stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Sends `states`; a failure is logged once, not for every notification
/// (a notify socket that is gone stays gone).
fn send(states: &[NotifyState<'_>]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states)
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
