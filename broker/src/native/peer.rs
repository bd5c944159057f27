//! One connection of the native socket: admitted on its verified identity
//! (or told why not, in a record, before it is closed), then served by the
//! one connection loop both sockets share
//! ([`serve_records`]): D-Bus messages in records, no SASL.

use pidbus_protocol::transport::SeqPacket;
use pidbus_protocol::{ErrorCode, ErrorReply, ProcessIdentity};
use std::sync::Arc;
use tracing::{info, warn};

use crate::bus::Bus;
use crate::bus::admission::{self, Refused};
use crate::bus::quotas::QuotaExceeded;
use crate::dbus::connection::{once_admitted, serve_records};
use crate::os::identity::{IdentityError, Who};

/// This socket's name in log lines.
const FACE: &str = "native";

/// Serves one accepted connection to completion. Its task keeps only the
/// connection loop once admission is done (`once_admitted`).
pub fn serve(bus: Arc<Bus>, socket: SeqPacket) -> impl Future<Output = ()> {
    once_admitted(async move {
        match admission::admit_when_settled(&bus, &socket, FACE).await {
            Ok(admitted) => Some(serve_records(bus, socket, admitted)),
            Err(refused) => {
                refuse_admission(&socket, refused);
                None
            }
        }
    })
}

/// Tells a connection that was not admitted why, in its own words.
fn refuse_admission(socket: &SeqPacket, refused: Refused) {
    match refused {
        Refused::Unidentified(e) => refuse_unidentified(socket, &e),
        Refused::OverQuota { quota, identity } => refuse_over_quota(socket, &identity, &quota),
    }
}

fn refuse_over_quota(socket: &SeqPacket, identity: &ProcessIdentity, quota: &QuotaExceeded) {
    warn!(peer = %Who::new(None, identity, FACE), reason = %quota, "refused connection: per-user quota");
    refuse(
        socket,
        ErrorCode::LimitsExceeded,
        &format!("connection refused: {quota}"),
    );
}

/// Tells a connection that is not admitted why, before it is closed.
///
/// Whatever it already sent (its Hello) is read first: closing a socket
/// with unread records makes the kernel report ECONNRESET to the other
/// end, which may then never see the notice.
pub(crate) fn refuse(socket: &SeqPacket, code: ErrorCode, message: &str) {
    while let Ok(Some(_)) = socket.try_recv(pidbus_protocol::limits::DEFAULT_MAX_RECORD_SIZE) {}
    let name =
        crate::dbus::errors::name_of(&ErrorReply::broker(None, code, String::new())).to_owned();
    // The Hello was drained unread: serial 1, as every D-Bus library numbers it.
    let _ = socket.try_send(&crate::dbus::wire::refusal(1, &name, message), &[]);
}

fn refuse_unidentified(socket: &SeqPacket, error: &IdentityError) {
    let code = match error {
        IdentityError::ProcessExited { .. } | IdentityError::Exiting { .. } => {
            ErrorCode::ProcessExited
        }
        IdentityError::Io { .. } | IdentityError::NotVisible => ErrorCode::Unavailable,
    };
    info!(reason = %error, "refused connection");
    // Best effort: nobody may be reading.
    refuse(socket, code, &format!("connection refused: {error}"));
}
