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

/// The declarative form on every bus: `#[interface]` served, `#[proxy]`
/// calling it, the caller and the object given to the methods, a
/// property, a signal and a setter; `#[authorize]` needs pidbus and says
/// so elsewhere.
mod declared {
    use pidbus::{Caller, Connection, MethodError, NameFlags, ObjectHandle, interface};
    use pidbus_tests::buses::ReferenceBus;
    use pidbus_tests::{Broker, PATIENCE};

    struct Counter;

    #[interface(name = "org.pidbus.EveryBus.Counter")]
    impl Counter {
        #[property(readwrite)]
        fn step() -> u32 {
            1
        }

        #[property]
        fn total() -> u32 {
            0
        }

        #[signal]
        async fn counted(object: &ObjectHandle, total: u32) -> pidbus::Result<()> {}

        #[setter(step)]
        async fn set_step(&self, step: u32) -> Result<u32, MethodError> {
            match step {
                1..=10 => Ok(step),
                _ => Err(MethodError::invalid_args("a step from 1 to 10")),
            }
        }

        async fn count(
            &self,
            caller: &Caller,
            object: &ObjectHandle,
        ) -> Result<(u32, u32), MethodError> {
            let total = object.property::<u32>("Total")? + object.property::<u32>("Step")?;
            object.set_property("Total", total).await?;
            Self::counted(object, total).await?;
            Ok((total, caller.uid))
        }

        #[authorize("org.pidbus.test.reset")]
        async fn reset(&self, object: &ObjectHandle) -> Result<(), MethodError> {
            Ok(object.set_property("Total", 0u32).await?)
        }
    }

    #[pidbus::proxy(interface = "org.pidbus.EveryBus.Counter")]
    trait Counter {
        async fn count(&self) -> pidbus::Result<(u32, u32)>;
        async fn reset(&self) -> pidbus::Result<()>;
        #[property]
        async fn total(&self) -> pidbus::Result<u32>;
        #[signal]
        async fn counted(&self) -> pidbus::Result<pidbus::TypedSignals<(u32,)>>;
    }

    async fn declared_works(address: &str, pidbus: bool) {
        let service = Connection::connect(address).await.unwrap();
        let _object = service
            .serve_interface("/org/pidbus/Counter", Counter.into_interface().unwrap())
            .unwrap();
        let name = "org.pidbus.EveryBus.Declared";
        service
            .request_name(name, NameFlags::default())
            .await
            .unwrap();
        let client = Connection::connect(address).await.unwrap();
        let counter = CounterProxy::new(&client, name, "/org/pidbus/Counter").unwrap();
        let mut counted = counter.counted().await.unwrap();
        let me = rustix::process::getuid().as_raw();
        assert_eq!(counter.count().await.unwrap(), (1, me), "{address}");
        counter.proxy().set("Step", 5u32).await.unwrap();
        assert_eq!(counter.count().await.unwrap(), (6, me), "{address}");
        let refused = counter.proxy().set("Step", 50u32).await;
        assert!(
            matches!(refused, Err(pidbus::Error::InvalidArgs { .. })),
            "{address}: {refused:?}"
        );
        assert_eq!(counter.total().await.unwrap(), 6, "{address}");
        for expected in [1, 6] {
            let (total,) = tokio::time::timeout(PATIENCE, counted.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(total, expected, "{address}");
        }
        // Authorization is the bus's: pidbus decides (its open development
        // policy declares no such action: denied); elsewhere it cannot.
        let reset = counter.reset().await;
        match (pidbus, reset) {
            (true, Err(pidbus::Error::AccessDenied { message })) => {
                assert!(message.contains("org.pidbus.test.reset"), "{message}")
            }
            (false, Err(pidbus::Error::Failed { message, .. })) => {
                assert!(message.contains("pidbus"), "{address}: {message}")
            }
            (_, other) => panic!("{address}: reset gave {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_declared_form_works_on_pidbus_dbus_daemon_and_dbus_broker() {
        let broker = Broker::start_dbus(&[]);
        declared_works(&broker.socket().display().to_string(), true).await;
        declared_works(&broker.dbus_address(), true).await;
        let daemon = ReferenceBus::dbus_daemon();
        declared_works(&daemon.address(), false).await;
        if pidbus_tests::can_run_privileged("the_declared_form_works_on_dbus_broker") {
            let dbus_broker = ReferenceBus::dbus_broker();
            declared_works(&dbus_broker.address(), false).await;
        }
    }
}
