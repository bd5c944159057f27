//! The D-Bus face's accept loop: each connection on a `SOCK_STREAM`
//! socket becomes a [`connection`](super::connection) task.

use std::os::fd::AsFd;
use std::sync::Arc;

use pidbus_protocol::transport::Stream;
use tracing::debug;

use crate::bus::Bus;
use crate::dbus::connection;
use crate::os::socket_file::{BoundSocket, FdBudget, accept_failed};

/// One D-Bus socket's accept loop: runs until aborted.
pub async fn accept_on(socket: BoundSocket, bus: Arc<Bus>) {
    let mut budget = FdBudget::from_rlimit();
    loop {
        let fd = match socket.accept().await {
            Ok(fd) => fd,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        if !budget.admits(&bus, fd.as_fd()) {
            // D-Bus has no way to say why before authentication: the
            // client sees the connection closed.
            let why = budget.refused();
            debug!(reason = %why, "D-Bus connection refused");
            continue;
        }
        match Stream::from_owned(fd) {
            Ok(stream) => {
                tokio::spawn(connection::serve(Arc::clone(&bus), stream));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}
