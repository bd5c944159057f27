//! The native face's accept loop: each connection on a `SOCK_SEQPACKET`
//! socket becomes a [`peer`] task.

use std::sync::Arc;

use pidbus_protocol::ErrorCode;
use pidbus_protocol::transport::SeqPacket;
use tracing::warn;

use crate::bus::Bus;
use crate::native::peer;
use crate::os::socket_file::{BoundSocket, accept_each};

/// One native socket's accept loop: runs until aborted.
pub async fn accept_on(socket: BoundSocket, bus: Arc<Bus>) {
    let served = Arc::clone(&bus);
    accept_each(socket, &bus, move |fd, refusal| {
        let conn = match SeqPacket::from_accepted(fd) {
            Ok(conn) => conn,
            Err(e) => return warn!(error = %e, "cannot serve an accepted connection"),
        };
        match refusal {
            None => drop(tokio::spawn(peer::serve(Arc::clone(&served), conn))),
            // Told why, in a record, before it is closed.
            Some(why) => peer::refuse(&conn, ErrorCode::Unavailable, &why),
        }
    })
    .await;
}
