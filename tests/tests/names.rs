//! Well-known names against the real broker: queues, flags, events, and
//! release when the owner disconnects or its process exits.

use pidbus::{BusEvent, Connection, Error, NameFlags, PeerId, ReleaseNameReply, RequestNameReply};
use pidbus_tests::{Broker, HeldPeer, binary};

const NAME: &str = "org.pidbus.Test.Name";

fn flags(allow_replacement: bool, replace_existing: bool, do_not_queue: bool) -> NameFlags {
    NameFlags {
        allow_replacement,
        replace_existing,
        do_not_queue,
    }
}

async fn connect(broker: &Broker) -> Connection {
    Connection::connect(broker.socket()).await.unwrap()
}

/// The next event about `NAME` (others are skipped).
async fn next_event(events: &mut pidbus::NameEvents) -> BusEvent {
    let wait = async {
        loop {
            let event = events.next().await.expect("connection closed");
            let name = match &event {
                BusEvent::NameAcquired { name }
                | BusEvent::NameLost { name }
                | BusEvent::NameOwnerChanged { name, .. } => name,
            };
            if name == NAME {
                return event;
            }
        }
    };
    tokio::time::timeout(pidbus_tests::PATIENCE, wait)
        .await
        .expect("no name event")
}

async fn owner_and_queue(bus: &Connection) -> (PeerId, Vec<PeerId>) {
    let names = bus.names().await.unwrap();
    let entry = names
        .into_iter()
        .find(|n| n.name == NAME)
        .expect("name listed");
    (entry.owner, entry.queue)
}

#[tokio::test]
async fn owners_queue_in_order_and_the_next_in_line_gets_the_name() {
    let broker = Broker::start();
    let (a, b, c) = (
        connect(&broker).await,
        connect(&broker).await,
        connect(&broker).await,
    );
    let mut b_events = b.name_events().await.unwrap();
    let mut a_events = a.name_events().await.unwrap();
    assert_eq!(
        a.request_name(NAME, NameFlags::default()).await.unwrap(),
        RequestNameReply::PrimaryOwner
    );
    assert_eq!(
        b.request_name(NAME, NameFlags::default()).await.unwrap(),
        RequestNameReply::InQueue
    );
    assert_eq!(
        c.request_name(NAME, NameFlags::default()).await.unwrap(),
        RequestNameReply::InQueue
    );
    assert_eq!(
        a.request_name(NAME, NameFlags::default()).await.unwrap(),
        RequestNameReply::AlreadyOwner
    );
    assert_eq!(
        owner_and_queue(&a).await,
        (a.unique_id(), vec![b.unique_id(), c.unique_id()])
    );
    assert_eq!(a.name_owner(NAME).await.unwrap(), a.unique_id());

    // In dbus-daemon's order: the change, then the new owner's event.
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameOwnerChanged {
            name: NAME.into(),
            old_owner: None,
            new_owner: Some(a.unique_id())
        }
    );
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameAcquired { name: NAME.into() }
    );
    assert_eq!(
        a.release_name(NAME).await.unwrap(),
        ReleaseNameReply::Released
    );
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameLost { name: NAME.into() }
    );
    // b saw a take it, then saw it pass to itself, then got it.
    for _ in 0..2 {
        assert!(matches!(
            next_event(&mut b_events).await,
            BusEvent::NameOwnerChanged { .. }
        ));
    }
    assert_eq!(
        next_event(&mut b_events).await,
        BusEvent::NameAcquired { name: NAME.into() }
    );
    assert_eq!(
        owner_and_queue(&a).await,
        (b.unique_id(), vec![c.unique_id()])
    );
    assert_eq!(
        a.release_name(NAME).await.unwrap(),
        ReleaseNameReply::NotOwner
    );

    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameOwnerChanged {
            name: NAME.into(),
            old_owner: Some(a.unique_id()),
            new_owner: Some(b.unique_id())
        }
    );

    // The owner disconnecting hands the name on too.
    let (b_id, c_id) = (b.unique_id(), c.unique_id());
    drop(b_events);
    drop(b);
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameOwnerChanged {
            name: NAME.into(),
            old_owner: Some(b_id),
            new_owner: Some(c_id)
        }
    );
    drop(c);
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameOwnerChanged {
            name: NAME.into(),
            old_owner: Some(c_id),
            new_owner: None
        }
    );
    assert!(matches!(
        a.name_owner(NAME).await,
        Err(Error::NoSuchName { .. })
    ));
}

#[tokio::test]
async fn do_not_queue_gets_exists_and_replacement_needs_the_owners_consent() {
    let broker = Broker::start();
    let (a, b) = (connect(&broker).await, connect(&broker).await);
    let mut a_events = a.name_events().await.unwrap();
    a.request_name(NAME, flags(false, false, false))
        .await
        .unwrap();
    assert_eq!(
        b.request_name(NAME, flags(false, false, true))
            .await
            .unwrap(),
        RequestNameReply::Exists
    );
    assert_eq!(
        owner_and_queue(&a).await,
        (a.unique_id(), vec![]),
        "do-not-queue did not queue"
    );
    // The owner did not allow replacement: replace-existing just queues.
    assert_eq!(
        b.request_name(NAME, flags(false, true, false))
            .await
            .unwrap(),
        RequestNameReply::InQueue
    );
    assert_eq!(
        b.release_name(NAME).await.unwrap(),
        ReleaseNameReply::Released
    );
    // Now it does: b takes the name, a waits at the head of the queue.
    a.request_name(NAME, flags(true, false, false))
        .await
        .unwrap();
    assert_eq!(
        b.request_name(NAME, flags(false, true, false))
            .await
            .unwrap(),
        RequestNameReply::PrimaryOwner
    );
    assert_eq!(
        owner_and_queue(&a).await,
        (b.unique_id(), vec![a.unique_id()])
    );
    assert!(matches!(
        next_event(&mut a_events).await,
        BusEvent::NameOwnerChanged { .. }
    ));
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameAcquired { name: NAME.into() }
    );
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameLost { name: NAME.into() }
    );
    let (a_id, b_id) = (a.unique_id(), b.unique_id());
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameOwnerChanged {
            name: NAME.into(),
            old_owner: Some(a_id),
            new_owner: Some(b_id)
        }
    );
    // b leaves: the queue head (a) gets the name back.
    drop(b);
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameOwnerChanged {
            name: NAME.into(),
            old_owner: Some(b_id),
            new_owner: Some(a_id)
        }
    );
    assert_eq!(
        next_event(&mut a_events).await,
        BusEvent::NameAcquired { name: NAME.into() }
    );
}

#[tokio::test]
async fn invalid_names_are_refused_with_the_rule_they_break() {
    let broker = Broker::start();
    let bus = connect(&broker).await;
    for (bad, why) in [
        ("nodots", "at least two elements"),
        ("org.9x", "digit"),
        (":1.2", "unique ids"),
    ] {
        match bus.request_name(bad, NameFlags::default()).await {
            Err(Error::InvalidName { message }) => {
                assert!(message.contains(why), "{bad}: {message}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_process_that_exits_loses_its_names_even_if_a_child_holds_its_socket() {
    let broker = Broker::start();
    let watcher = connect(&broker).await;
    let mut events = watcher.name_events().await.unwrap();
    let owner = HeldPeer::start_mode(
        &[],
        &binary("pidbus-test-peer"),
        &[
            "own-and-orphan".as_ref(),
            broker.socket().as_os_str(),
            NAME.as_ref(),
        ],
    );
    assert_eq!(owner.report["ok"], true);
    let acquired = next_event(&mut events).await;
    let BusEvent::NameOwnerChanged {
        new_owner: Some(id),
        ..
    } = acquired
    else {
        panic!("{acquired:?}");
    };
    // The peer process has exited; a `sleep` child still holds the socket.
    let released = next_event(&mut events).await;
    assert_eq!(
        released,
        BusEvent::NameOwnerChanged {
            name: NAME.into(),
            old_owner: Some(id),
            new_owner: None
        }
    );
    broker.wait_for_log("peer process exited; connection closed");
    drop(owner);
}

#[tokio::test]
async fn names_the_bus_answers_itself_are_reserved_on_both_sockets() {
    use pidbus::ErrorCode;
    let test = "names_the_bus_answers_itself_are_reserved_on_both_sockets";
    if !pidbus_tests::has_tool(test, "gdbus", "libglib2.0-bin") {
        return;
    }
    let broker = Broker::start_dbus(&[]);
    let native = connect(&broker).await;
    let address = broker.dbus_address();
    for (name, code, why) in [
        (
            "org.freedesktop.DBus",
            ErrorCode::InvalidArgs,
            "reserved for the bus itself",
        ),
        (
            "org.freedesktop.PolicyKit1",
            ErrorCode::AccessDenied,
            "the bus itself is the polkit authority",
        ),
    ] {
        // The native socket, through the SDK.
        let refused = native
            .request_name(name, NameFlags::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(code), "{name}: {refused}");
        assert!(refused.to_string().contains(why), "{refused}");
        let refused = native.release_name(name).await.unwrap_err();
        assert_eq!(refused.code(), Some(code), "{name}: {refused}");
        // The D-Bus socket, through gdbus.
        let args = pidbus_tests::gdbus_request_name(&address, name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, _, err) = pidbus_tests::run_bounded(20, "gdbus", &args);
        assert_ne!(status, 0, "gdbus took {name}");
        assert!(err.contains(why), "{name}: {err}");
    }
    // Calls to both still reach the bus.
    let id: String = native
        .call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetId",
            &(),
        )
        .await
        .unwrap();
    assert_eq!(id.len(), 32);
    let (status, out, err) = pidbus_tests::run_bounded(
        20,
        "gdbus",
        &[
            "introspect",
            "--address",
            &address,
            "--dest",
            "org.freedesktop.PolicyKit1",
            "--object-path",
            "/org/freedesktop/PolicyKit1/Authority",
        ],
    );
    assert_eq!(status, 0, "{err}");
    assert!(out.contains("CheckAuthorization"), "{out}");
}
