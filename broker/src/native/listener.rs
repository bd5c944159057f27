//! The native face's accept loop: each connection on a `SOCK_SEQPACKET`
//! socket becomes a [`peer`] task.

use std::os::fd::AsFd;
use std::sync::Arc;

use pidbus_protocol::transport::SeqPacket;

use crate::bus::Bus;
use crate::native::peer;
use crate::os::socket_file::{BoundSocket, FdBudget, accept_failed};

/// One native socket's accept loop: runs until aborted.
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
        let admitted = budget.admits(&bus, fd.as_fd());
        let conn = match SeqPacket::from_accepted(fd) {
            Ok(conn) => conn,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        if admitted {
            tokio::spawn(peer::serve(Arc::clone(&bus), conn));
        } else {
            let why = budget.refused();
            peer::refuse(&conn, pidbus_protocol::ErrorCode::Unavailable, &why);
        }
    }
}
