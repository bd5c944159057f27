//! The D-Bus face's accept loop: each connection on a `SOCK_STREAM`
//! socket becomes a [`connection`] task.

use std::sync::Arc;

use pidbus_protocol::transport::Stream;
use tracing::{debug, warn};

use crate::bus::Bus;
use crate::dbus::connection;
use crate::os::socket_file::{BoundSocket, accept_each};

/// One D-Bus socket's accept loop: runs until aborted.
pub async fn accept_on(socket: BoundSocket, bus: Arc<Bus>) {
    let served = Arc::clone(&bus);
    accept_each(socket, &bus, move |fd, refusal| {
        if let Some(why) = refusal {
            // D-Bus has no way to say why before authentication: the
            // client sees the connection closed.
            return debug!(reason = %why, "D-Bus connection refused");
        }
        match Stream::from_owned(fd) {
            Ok(stream) => drop(tokio::spawn(connection::serve(Arc::clone(&served), stream))),
            Err(e) => warn!(error = %e, "cannot serve an accepted connection"),
        }
    })
    .await;
}
