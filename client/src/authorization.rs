//! Authorization checks (polkit-style): may a process perform an
//! application action such as `org.example.reboot`? The broker decides, on
//! its own verified identity of the subject and its policy; nothing here
//! takes a PID.

use pidbus_protocol::{AuthSubject, Authorization, BrokerReply, BrokerRequest, PeerId};

use crate::connection::{Connection, Shared, unexpected};
use crate::error::Result;

impl Shared {
    pub(crate) async fn check_authorization(
        &self,
        action: &str,
        subject: AuthSubject,
    ) -> Result<Authorization> {
        let request = BrokerRequest::CheckAuthorization {
            action: action.to_owned(),
            subject,
        };
        match self.request(request).await? {
            BrokerReply::Authorization(answer) => Ok(answer),
            other => Err(unexpected("CheckAuthorization", &other)),
        }
    }
}

impl Connection {
    /// Whether *this process* may perform the application action `action`
    /// under the bus's policy.
    ///
    /// ```no_run
    /// # async fn example(bus: pidbus::Connection) -> Result<(), pidbus::Error> {
    /// let answer = bus.authorize("org.example.reboot").await?;
    /// println!("allowed: {} ({})", answer.allowed, answer.rule);
    /// # Ok(()) }
    /// ```
    pub async fn authorize(&self, action: &str) -> Result<Authorization> {
        let subject = AuthSubject::Peer {
            peer: self.unique_id(),
        };
        self.shared.check_authorization(action, subject).await
    }

    /// Has the broker re-read its policy (root only). An invalid policy is
    /// refused with the reason, and the old one stays in force.
    pub async fn reload_policy(&self) -> Result<()> {
        match self.shared.request(BrokerRequest::ReloadPolicy).await? {
            BrokerReply::Done => Ok(()),
            other => Err(unexpected("ReloadPolicy", &other)),
        }
    }

    /// Whether the connected peer `peer` may perform `action`. To ask about
    /// the caller of a call being handled, use
    /// [`CallContext::authorize`](crate::CallContext::authorize), which
    /// cannot be confused by a caller that leaves.
    pub async fn authorize_peer(&self, peer: PeerId, action: &str) -> Result<Authorization> {
        let subject = AuthSubject::Peer { peer };
        self.shared.check_authorization(action, subject).await
    }
}
