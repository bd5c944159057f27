//! The SDK on every Linux bus: the same service and client, unchanged, on
//! pidbus (its native socket and its D-Bus socket), on dbus-daemon and on
//! dbus-broker (Debian's, started here). What needs pidbus says so
//! (`Error::NotSupported`); what the others offer another way is used.

use pidbus::{Connection, Error, MatchRule, MethodError, NameFlags, Response};
use pidbus_tests::buses::ReferenceBus;
use pidbus_tests::{Broker, PATIENCE};

const NAME: &str = "org.pidbus.EveryBus";
const PATH: &str = "/org/pidbus/EveryBus";
const IFACE: &str = "org.pidbus.EveryBus";

/// Serves, calls, owns names, signals and properties through `address`;
/// checks what needs pidbus against `pidbus`.
async fn the_sdk_works(address: &str, pidbus: bool) {
    let service = Connection::connect(address).await.unwrap();
    assert_eq!(service.is_pidbus(), pidbus, "{address}");
    let me = rustix::process::getuid().as_raw();
    assert_eq!(service.identity().uid, me, "{address}");
    service
        .serve(PATH, IFACE, |call| async move {
            match call.member() {
                "Greet" => {
                    let (name,): (String,) = call.args()?;
                    let caller = call.caller();
                    Response::new(&(format!("hello {name}"), caller.uid, caller.pid.unwrap_or(0)))
                }
                other => Err(MethodError::unknown_method(other)),
            }
        })
        .unwrap();
    let owned = service
        .request_name(NAME, NameFlags::default())
        .await
        .unwrap();
    assert_eq!(owned, pidbus::RequestNameReply::PrimaryOwner);

    let client = Connection::connect(address).await.unwrap();
    assert_eq!(client.name_owner(NAME).await.unwrap(), service.unique_id());
    assert!(
        client.names().await.unwrap().iter().any(|n| n.name == NAME),
        "{address}: ListNames"
    );
    // The caller as the service saw it: its uid and pid, on every bus.
    let (greeting, uid, pid): (String, u32, u32) = client
        .call(NAME, PATH, IFACE, "Greet", &("bus",))
        .await
        .unwrap();
    assert_eq!(greeting, "hello bus");
    assert_eq!((uid, pid), (me, std::process::id()), "{address}");
    // Errors keep their kind.
    let unknown = client.call::<_, ()>(NAME, PATH, IFACE, "Nope", &()).await;
    assert!(
        matches!(unknown, Err(Error::UnknownMethod { .. })),
        "{unknown:?}"
    );
    let nobody = client
        .call::<_, ()>("org.pidbus.Nobody", "/", IFACE, "X", &())
        .await;
    assert!(
        matches!(nobody, Err(Error::NoSuchName { .. })),
        "{nobody:?}"
    );

    // A signal reaches a subscriber whose rule names the well-known sender.
    let rule = MatchRule {
        sender: Some(NAME.into()),
        interface: Some(IFACE.into()),
        ..MatchRule::default()
    };
    let mut signals = client.subscribe(rule).await.unwrap();
    service.emit(PATH, IFACE, "Waved", &("hi",)).await.unwrap();
    let signal = tokio::time::timeout(PATIENCE, signals.next())
        .await
        .expect("the signal arrives")
        .expect("the stream is open");
    assert_eq!(signal.member, "Waved");
    assert_eq!(signal.sender, service.unique_id());
    assert_eq!(signal.args::<(String,)>().unwrap().0, "hi");

    // Introspection and the standard interfaces, served by the SDK.
    let proxy = pidbus::Proxy::new(&client, NAME, PATH, IFACE).unwrap();
    assert!(proxy.introspect().await.unwrap().contains(IFACE));

    // What needs pidbus.
    let authorized = client.authorize("org.pidbus.test.anything").await;
    let watched = client.watch_process(NAME).await;
    if pidbus {
        assert!(authorized.is_ok(), "{authorized:?}");
        assert!(watched.is_ok(), "{watched:?}");
        let pidfd = client.pidfd(NAME).await.unwrap();
        assert_eq!(pidfd.pid().unwrap(), Some(std::process::id()));
    } else {
        for outcome in [authorized.err(), watched.err()] {
            assert!(
                matches!(outcome, Some(Error::NotSupported { .. })),
                "{outcome:?}"
            );
        }
        // Debian 12's dbus-daemon (1.14) and dbus-broker (33) have no
        // ProcessFD; newer ones give it, and the SDK takes it.
        match client.pidfd(NAME).await {
            Ok(pidfd) => assert_eq!(pidfd.pid().unwrap(), Some(std::process::id())),
            Err(e) => assert!(matches!(e, Error::NotSupported { .. }), "{e:?}"),
        }
    }
}

#[tokio::test]
async fn the_sdk_works_on_pidbus_through_either_socket() {
    let broker = Broker::start_dbus(&[]);
    the_sdk_works(&broker.socket().display().to_string(), true).await;
    the_sdk_works(&broker.dbus_address(), true).await;
}

#[tokio::test]
async fn the_sdk_works_on_dbus_daemon() {
    let bus = ReferenceBus::dbus_daemon();
    the_sdk_works(&bus.address(), false).await;
}

#[tokio::test]
async fn the_sdk_works_on_dbus_broker() {
    if !pidbus_tests::can_run_privileged("the_sdk_works_on_dbus_broker") {
        return;
    }
    let bus = ReferenceBus::dbus_broker();
    the_sdk_works(&bus.address(), false).await;
}
