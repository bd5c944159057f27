//! Authorization checks (polkit-style): may a process perform an
//! application action such as `org.example.reboot`? The broker decides, on
//! its own verified identity of the subject and its policy; nothing here
//! takes a PID. pidbus only (`org.pidbus.Bus1.CheckAuthorization`).

use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::{Authorization, PeerId};

use crate::connection::{BUS_NAME, Connection, PIDBUS_INTERFACE, Shared};
use crate::error::{Error, Result};

impl Shared {
    /// Asks whether `subject` may do `action`: with a `serial`, the sender
    /// of that call to this connection while it waits for the answer; with
    /// 0, the connection `subject` itself.
    pub(crate) async fn check_authorization(
        &self,
        action: &str,
        subject: &str,
        serial: u32,
    ) -> Result<Authorization> {
        self.needs_pidbus("authorization checks")?;
        let args = [
            Value::string(action),
            Value::string(subject),
            Value::UInt32(serial),
        ];
        let values = self
            .bus_call(PIDBUS_INTERFACE, "CheckAuthorization", &args)
            .await?;
        match values.as_slice() {
            [Value::Bool(allowed), Value::String(rule)] => Ok(Authorization {
                allowed: *allowed,
                rule: rule.clone(),
                subject: subject.parse().ok(),
            }),
            _ => Err(Error::Protocol(
                "the bus answered CheckAuthorization with something else than (bs)".into(),
            )),
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
        let me = self.unique_id().to_string();
        self.shared.check_authorization(action, &me, 0).await
    }

    /// Has the bus re-read its configuration and policy
    /// (`org.freedesktop.DBus.ReloadConfig`; root only on pidbus). An
    /// invalid policy is refused with the reason, and the old one stays in
    /// force.
    pub async fn reload_policy(&self) -> Result<()> {
        self.shared
            .bus_call(BUS_NAME, "ReloadConfig", &[])
            .await
            .map(drop)
    }

    /// Whether the connected peer `peer` may perform `action`. To ask about
    /// the caller of a call being handled, use
    /// [`CallContext::authorize`](crate::CallContext::authorize), which
    /// cannot be confused by a caller that leaves.
    pub async fn authorize_peer(&self, peer: PeerId, action: &str) -> Result<Authorization> {
        self.shared
            .check_authorization(action, &peer.to_string(), 0)
            .await
    }
}
