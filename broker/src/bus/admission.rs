//! What every new connection goes through before its face talks to it,
//! whichever face it came in on: its process is identified from the
//! socket, its user is charged for one more connection (and one more
//! handshake in progress), per-message sender proof is switched on, and its
//! process is watched for its exit.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use pidbus_protocol::ProcessIdentity;
use tracing::warn;

use crate::bus::Bus;
use crate::bus::quotas::{Charge, QuotaExceeded, Resource};
use crate::os::exits::ExitWatch;
use crate::os::identity::{self, IdentityError, PidNamespace, Who};
use crate::os::sender::{ProvableSocket, SenderCheck, SenderCheckMode, SenderProof};

/// A connection the bus will serve.
#[derive(Debug)]
pub struct Admitted {
    /// Its verified identity.
    pub identity: ProcessIdentity,
    /// Its process's place in the pid-namespace tree.
    pub namespace: PidNamespace,
    /// Its pidfd, held for the connection's life.
    pub pidfd: Arc<OwnedFd>,
    /// Tells the connection's task when its process exits.
    pub exit: ExitWatch,
    /// How each message's sender is checked.
    pub sender_check: SenderCheck,
    /// The connection's place among its user's connections.
    pub connection: Charge,
}

/// Why a connection is not served.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Its process could not be identified (or has exited).
    #[error(transparent)]
    Unidentified(#[from] IdentityError),
    /// Its user is at a quota.
    #[error("{quota}")]
    OverQuota {
        /// The quota.
        quota: QuotaExceeded,
        /// Who was refused.
        identity: Box<ProcessIdentity>,
    },
}

/// How long a connection whose process is exiting waits for the exit to
/// show before it is refused, and how often it asks again meanwhile.
const EXIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
const EXIT_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// [`admit`], asked again (in this connection's own task, so nobody else
/// waits) while its process is in the middle of exiting
/// ([`IdentityError::Exiting`]): once the exit shows, it is admitted as a
/// process that exited at connect, and what it sent is served.
pub async fn admit_when_settled(
    bus: &Bus,
    socket: &impl ProvableSocket,
    face: &'static str,
) -> Result<Admitted, Refused> {
    let tries = EXIT_PATIENCE.as_millis() / EXIT_POLL.as_millis();
    for _ in 0..tries {
        match admit(bus, socket, face) {
            Err(Refused::Unidentified(IdentityError::Exiting { .. })) => {
                tokio::time::sleep(EXIT_POLL).await;
            }
            outcome => return outcome,
        }
    }
    admit(bus, socket, face)
}

/// Admits the connection on `socket` (of `face`, for logs). The user's
/// handshake charge is kept until the face calls [`handshake_done`].
pub fn admit(
    bus: &Bus,
    socket: &impl ProvableSocket,
    face: &'static str,
) -> Result<Admitted, Refused> {
    let settings = bus.settings();
    let verified = identity::capture(socket.as_fd(), &settings.boot_id, &settings.namespaces)?;
    let account = bus.accounts().of(verified.identity.uid);
    let charges = account
        .try_charge(Resource::Connections, 1)
        .and_then(|connection| Ok((connection, account.try_charge(Resource::Handshakes, 1)?)));
    let (connection, handshake) = charges.map_err(|quota| Refused::OverQuota {
        quota,
        identity: Box::new(verified.identity.clone()),
    })?;
    let proof = match SenderProof::enable(socket, &verified.identity) {
        _ if settings.sender_check == SenderCheckMode::Off => None,
        Ok(Some(proof)) => Some(proof),
        Ok(None) => {
            warn!(peer = %Who::new(None, &verified.identity, face),
                  "peer is outside the broker's pid namespace and this kernel has no pidfs: \
                   its messages cannot be checked for sender changes");
            None
        }
        Err(source) => {
            return Err(IdentityError::Io {
                what: "enabling per-message sender credentials",
                source,
            }
            .into());
        }
    };
    let pidfd = Arc::new(verified.pidfd);
    let exit = bus
        .exits()
        .watch(Arc::clone(&pidfd))
        .map_err(|source| IdentityError::Io {
            what: "watching the peer's pidfd",
            source,
        })?;
    // Given back by `handshake_done`; not carried in the connection's
    // task, so every idle connection's future stays small.
    handshake.keep();
    Ok(Admitted {
        identity: verified.identity,
        namespace: verified.namespace,
        pidfd,
        exit,
        sender_check: SenderCheck::new(proof),
        connection,
    })
}

/// The connection of a user of `uid` finished (or failed) its handshake:
/// its place among the user's handshakes in progress is given back.
pub fn handshake_done(bus: &Bus, uid: u32) {
    bus.accounts().of(uid).sub(Resource::Handshakes, 1);
}
