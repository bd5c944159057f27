//! Well-known names: owning them and hearing about their owners.

use std::pin::Pin;
use std::task::{Context, Poll};

use pidbus_protocol::{
    BrokerReply, BrokerRequest, BusEvent, NameFlags, NameInfo, PeerId, ReleaseNameReply,
    RequestNameReply, names,
};
use tokio::sync::mpsc;

use crate::connection::{Connection, unexpected};
use crate::error::Result;

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
        let request = BrokerRequest::RequestName {
            name: name.to_owned(),
            flags,
        };
        match self.shared.request(request).await? {
            BrokerReply::NameRequested(reply) => {
                if let Some(restore) = &self.shared.reconnect
                    && reply != RequestNameReply::Exists
                {
                    restore.claimed(name, flags);
                }
                Ok(reply)
            }
            other => Err(unexpected("RequestName", &other)),
        }
    }

    /// Gives up `name`, or leaves its queue.
    pub async fn release_name(&self, name: &str) -> Result<ReleaseNameReply> {
        names::validate_well_known_name(name)?;
        let request = BrokerRequest::ReleaseName {
            name: name.to_owned(),
        };
        if let Some(restore) = &self.shared.reconnect {
            restore.released(name);
        }
        match self.shared.request(request).await? {
            BrokerReply::NameReleased(reply) => Ok(reply),
            other => Err(unexpected("ReleaseName", &other)),
        }
    }

    /// Every well-known name with its owner and queue (asked for page by
    /// page, so a change meanwhile may be missed).
    pub async fn names(&self) -> Result<Vec<NameInfo>> {
        self.all_pages(
            |last: Option<&NameInfo>| BrokerRequest::ListNames {
                after: last.map(|name| name.name.clone()),
            },
            |reply| match reply {
                BrokerReply::Names { names, more } => Ok((names, more)),
                other => Err(unexpected("ListNames", &other)),
            },
        )
        .await
    }

    /// The unique id of the primary owner of `name`
    /// ([`Error::NoSuchName`](crate::Error::NoSuchName) if nobody owns it).
    pub async fn name_owner(&self, name: &str) -> Result<PeerId> {
        names::validate_well_known_name(name)?;
        let request = BrokerRequest::GetNameOwner {
            name: name.to_owned(),
        };
        match self.shared.request(request).await? {
            BrokerReply::NameOwner(owner) => Ok(owner),
            other => Err(unexpected("GetNameOwner", &other)),
        }
    }

    /// The well-known names the broker can start a service for (bus
    /// activation: a call to one of them, unowned, starts its service).
    pub async fn activatable_names(&self) -> Result<Vec<String>> {
        self.all_pages(
            |last: Option<&String>| BrokerRequest::ListActivatableNames {
                after: last.cloned(),
            },
            |reply| match reply {
                BrokerReply::ActivatableNames { names, more } => Ok((names, more)),
                other => Err(unexpected("ListActivatableNames", &other)),
            },
        )
        .await
    }

    /// Starts the service that provides `name` unless the name is owned,
    /// and waits until the started service owns it. `Ok(false)`: it was
    /// started; `Ok(true)`: it was running already. A start that fails or
    /// times out is [`Error::Failed`](crate::Error::Failed) whose `name` is
    /// the D-Bus activation error, such as
    /// `org.freedesktop.DBus.Error.Spawn.ChildExited`.
    pub async fn start_service(&self, name: &str) -> Result<bool> {
        names::validate_well_known_name(name)?;
        let request = BrokerRequest::StartService {
            name: name.to_owned(),
        };
        match self.shared.request(request).await? {
            BrokerReply::ServiceStarted { already_running } => Ok(already_running),
            other => Err(unexpected("StartService", &other)),
        }
    }

    /// A stream of name events: [`BusEvent::NameAcquired`] and
    /// [`BusEvent::NameLost`] for this connection's names, and
    /// [`BusEvent::NameOwnerChanged`] for every name on the bus.
    pub async fn name_events(&self) -> Result<NameEvents> {
        let rx = self.shared.name_listeners.add()?;
        match self
            .shared
            .request(BrokerRequest::WatchNameOwners { enabled: true })
            .await?
        {
            BrokerReply::Done => Ok(NameEvents {
                rx,
                _conn: self.clone(),
            }),
            other => Err(unexpected("WatchNameOwners", &other)),
        }
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
