//! Well-known names: owning them and hearing about their owners.

use std::pin::Pin;
use std::task::{Context, Poll};

use pidbus_protocol::dbus::value::Value;
use pidbus_protocol::{
    BusEvent, NameFlags, NameInfo, PeerId, ReleaseNameReply, RequestNameReply, names,
};
use tokio::sync::mpsc;

use crate::connection::{BUS_NAME, Connection};
use crate::error::{Error, Result};

/// The rule that brings every `NameOwnerChanged` of the bus.
pub(crate) const NAME_OWNER_RULE: &str = "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'";

impl Connection {
    /// Asks for the well-known name `name`.
    ///
    /// [`RequestNameReply::PrimaryOwner`]: it is ours;
    /// [`InQueue`](RequestNameReply::InQueue): we get it (and a
    /// [`BusEvent::NameAcquired`]) when the owners before us leave;
    /// [`Exists`](RequestNameReply::Exists): taken and `do_not_queue` was
    /// set. Names are released when the connection closes or this process
    /// exits.
    pub async fn request_name(&self, name: &str, flags: NameFlags) -> Result<RequestNameReply> {
        names::validate_well_known_name(name)?;
        let reply = self.shared.request_name(name, flags).await?;
        if let Some(restore) = &self.shared.reconnect
            && reply != RequestNameReply::Exists
        {
            restore.claimed(name, flags);
        }
        Ok(reply)
    }

    /// Gives up `name`, or leaves its queue.
    pub async fn release_name(&self, name: &str) -> Result<ReleaseNameReply> {
        names::validate_well_known_name(name)?;
        if let Some(restore) = &self.shared.reconnect {
            restore.released(name);
        }
        let values = self
            .shared
            .bus_call(BUS_NAME, "ReleaseName", &[Value::string(name)])
            .await?;
        match values.first().and_then(Value::as_u32) {
            Some(1) => Ok(ReleaseNameReply::Released),
            Some(2) => Ok(ReleaseNameReply::NonExistent),
            Some(3) => Ok(ReleaseNameReply::NotOwner),
            other => Err(Error::Protocol(format!("ReleaseName answered {other:?}"))),
        }
    }

    /// Every well-known name with its owner and queue (a change meanwhile
    /// may be missed).
    pub async fn names(&self) -> Result<Vec<NameInfo>> {
        let values = self.shared.bus_call(BUS_NAME, "ListNames", &[]).await?;
        let listed: Vec<String> = match values.first() {
            Some(Value::Array { items, .. }) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|name| !name.starts_with(':') && *name != BUS_NAME)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let mut names = Vec::with_capacity(listed.len());
        for name in listed {
            let owners = self
                .shared
                .bus_call(BUS_NAME, "ListQueuedOwners", &[Value::string(name.clone())])
                .await;
            // A name released meanwhile is left out.
            let Ok(owners) = owners else { continue };
            let mut queue: Vec<PeerId> = match owners.first() {
                Some(Value::Array { items, .. }) => items
                    .iter()
                    .filter_map(|v| v.as_str()?.parse().ok())
                    .collect(),
                _ => Vec::new(),
            };
            if queue.is_empty() {
                continue;
            }
            let owner = queue.remove(0);
            names.push(NameInfo { name, owner, queue });
        }
        names.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(names)
    }

    /// The unique id of the primary owner of `name`
    /// ([`Error::NoSuchName`](crate::Error::NoSuchName) if nobody owns it).
    pub async fn name_owner(&self, name: &str) -> Result<PeerId> {
        names::validate_well_known_name(name)?;
        let values = self
            .shared
            .bus_call(BUS_NAME, "GetNameOwner", &[Value::string(name)])
            .await?;
        let owner = values.first().and_then(Value::as_str).unwrap_or_default();
        owner
            .parse()
            .map_err(|_| Error::Protocol(format!("GetNameOwner answered {owner:?}")))
    }

    /// The well-known names the bus can start a service for (bus
    /// activation: a call to one of them, unowned, starts its service).
    pub async fn activatable_names(&self) -> Result<Vec<String>> {
        let values = self
            .shared
            .bus_call(BUS_NAME, "ListActivatableNames", &[])
            .await?;
        Ok(match values.first() {
            Some(Value::Array { items, .. }) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|name| !name.starts_with(':') && *name != BUS_NAME)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Starts the service that provides `name` unless the name is owned,
    /// and waits until the started service owns it. `Ok(false)`: it was
    /// started; `Ok(true)`: it was running already. A start that fails or
    /// times out is [`Error::Failed`](crate::Error::Failed) whose `name` is
    /// the D-Bus activation error, such as
    /// `org.freedesktop.DBus.Error.Spawn.ChildExited`.
    pub async fn start_service(&self, name: &str) -> Result<bool> {
        names::validate_well_known_name(name)?;
        let args = [Value::string(name), Value::UInt32(0)];
        let values = self
            .shared
            .bus_call(BUS_NAME, "StartServiceByName", &args)
            .await?;
        match values.first().and_then(Value::as_u32) {
            Some(1) => Ok(false),
            Some(2) => Ok(true),
            other => Err(Error::Protocol(format!(
                "StartServiceByName answered {other:?}"
            ))),
        }
    }

    /// A stream of name events: [`BusEvent::NameAcquired`] and
    /// [`BusEvent::NameLost`] for this connection's names, and
    /// [`BusEvent::NameOwnerChanged`] for every name on the bus.
    pub async fn name_events(&self) -> Result<NameEvents> {
        let rx = self.shared.name_listeners.add()?;
        self.shared.watch_name_owners().await?;
        Ok(NameEvents {
            rx,
            _conn: self.clone(),
        })
    }
}

impl crate::connection::Shared {
    /// `RequestName` with D-Bus's flags and answers.
    pub(crate) async fn request_name(
        &self,
        name: &str,
        flags: NameFlags,
    ) -> Result<RequestNameReply> {
        let bits = u32::from(flags.allow_replacement)
            | (u32::from(flags.replace_existing) << 1)
            | (u32::from(flags.do_not_queue) << 2);
        let args = [Value::string(name), Value::UInt32(bits)];
        let values = self.bus_call(BUS_NAME, "RequestName", &args).await?;
        match values.first().and_then(Value::as_u32) {
            Some(1) => Ok(RequestNameReply::PrimaryOwner),
            Some(2) => Ok(RequestNameReply::InQueue),
            Some(3) => Ok(RequestNameReply::Exists),
            Some(4) => Ok(RequestNameReply::AlreadyOwner),
            other => Err(Error::Protocol(format!("RequestName answered {other:?}"))),
        }
    }

    /// Has the bus send every `NameOwnerChanged` (once per connection).
    pub(crate) async fn watch_name_owners(&self) -> Result<()> {
        if self
            .watching_owners
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let added = self
            .bus_call(BUS_NAME, "AddMatch", &[Value::string(NAME_OWNER_RULE)])
            .await;
        if added.is_err() {
            self.watching_owners
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        added.map(drop)
    }
}

/// Name events of a connection (see [`Connection::name_events`]).
#[derive(Debug)]
pub struct NameEvents {
    rx: mpsc::Receiver<BusEvent>,
    _conn: Connection,
}

impl NameEvents {
    /// The next event; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<BusEvent> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for NameEvents {
    type Item = BusEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        self.rx.poll_recv(cx)
    }
}
