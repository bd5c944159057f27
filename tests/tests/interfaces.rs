//! Declared interfaces served by the SDK, seen from busctl, gdbus,
//! python3-dbus and a typed proxy: introspection, typed methods,
//! properties with PropertiesChanged, signals, fallback objects.

use std::process::Command;

use pidbus::{Access, Connection, Interface, MethodError, NameFlags, Proxy, Response};
use pidbus_tests::{Broker, HeldPeer};

const NAME: &str = "org.pidbus.Greeter";
const PATH: &str = "/org/pidbus/Greeter";
const IFACE: &str = "org.pidbus.Greeter";

fn greeter() -> Interface {
    Interface::new(IFACE)
        .unwrap()
        .method("Greet", |call, (name,): (String,)| async move {
            Ok(format!("hello {name}, uid {}", call.caller().uid))
        })
        .method("Add", |_, (a, b): (i64, i64)| async move { Ok(a + b) })
        .arg_names("Greet", &["name"], &["greeting"])
        .method("Nothing", |_, (): ()| async move { Ok(()) })
        .method("Refuse", |_, (): ()| async move {
            Err::<(), _>(MethodError::access_denied("never"))
        })
        .property("Greetings", Access::Read, 0u32)
        .property("Motd", Access::ReadWrite, String::from("hi"))
        .signal::<(String,)>("Greeted")
}

fn busctl(broker: &Broker, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .args(["20", "busctl"])
        .arg(format!("--address={}", broker.dbus_address()))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn python_peer(broker: &Broker, args: &[&str]) -> HeldPeer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dbus_peer.py");
    let address = broker.dbus_address();
    let mut all = vec![script, address.as_str()];
    all.extend_from_slice(args);
    let os: Vec<&std::ffi::OsStr> = all.iter().map(|a| a.as_ref()).collect();
    HeldPeer::start_mode(&[], "/usr/bin/python3".as_ref(), &os)
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl, gdbus and python3-dbus: install the Debian packages systemd, libglib2.0-bin, python3-dbus and python3-gi"
)]
#[test]
fn a_declared_interface_is_introspected_called_and_its_properties_watched_by_dbus_tools() {
    let broker = Broker::start_dbus(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bus, object) = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        let object = bus.serve_interface(PATH, greeter()).unwrap();
        bus.request_name(NAME, NameFlags::default()).await.unwrap();
        (bus, object)
    });

    // Introspection lists methods, properties and signals with their types.
    let (ok, out, err) = busctl(&broker, &["introspect", NAME, PATH]);
    assert!(ok, "{err}");
    for (member, kind, signature, result) in [
        (".Add", "method", "xx", "x"),
        (".Greet", "method", "s", "s"),
        (".Greetings", "property", "u", "0"),
        (".Motd", "property", "s", "\"hi\""),
        (".Greeted", "signal", "s", "-"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{member} ")))
            .unwrap_or_else(|| panic!("no {member}: {out}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&fields[1..4], [kind, signature, result], "{line}");
    }
    let gdbus = Command::new("gdbus")
        .args([
            "introspect",
            "-a",
            &broker.dbus_address(),
            "-d",
            NAME,
            "-o",
            PATH,
            "-x",
        ])
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&gdbus.stdout);
    assert!(
        xml.contains(r#"<property name="Motd" type="s" access="readwrite"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<arg name="arg0" type="x" direction="in"/>"#),
        "an argument nobody named: {xml}"
    );
    for named in [
        r#"<arg name="name" type="s" direction="in"/>"#,
        r#"<arg name="greeting" type="s" direction="out"/>"#,
    ] {
        assert!(
            xml.contains(named),
            "arg_names shows in introspection: {xml}"
        );
    }
    let gdbus_call = Command::new("gdbus")
        .args(["call", "-a", &broker.dbus_address(), "-d", NAME, "-o", PATH])
        .args(["-m", "org.pidbus.Greeter.Add", "40", "2"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&gdbus_call.stdout).trim(),
        "(int64 42,)"
    );
    let (ok, out, err) = busctl(&broker, &["tree", NAME]);
    assert!(ok, "{err}");
    assert!(out.contains("/org/pidbus/Greeter"), "{out}");

    // Typed calls, and wrong types refused before the handler.
    let call = ["call", NAME, PATH, IFACE];
    let (ok, out, err) = busctl(&broker, &[&call[..], &["Add", "xx", "40", "2"]].concat());
    assert!(ok, "{err}");
    assert_eq!(out, "x 42\n");
    let (ok, _, err) = busctl(&broker, &[&call[..], &["Add", "s", "forty"]].concat());
    assert!(!ok);
    assert!(
        err.contains("expected arguments of signature 'xx', got 's'"),
        "{err}"
    );
    let (ok, out, err) = busctl(&broker, &[&call[..], &["Nothing"]].concat());
    assert!(ok && out.is_empty(), "{out} {err}");

    // Properties: get, set, read-only refused, PropertiesChanged seen.
    let rule =
        "type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'";
    let mut watcher = python_peer(&broker, &["listen", rule]);
    assert_eq!(watcher.next_line()["member"], "NameAcquired");
    let (ok, out, err) = busctl(&broker, &["get-property", NAME, PATH, IFACE, "Motd"]);
    assert!(ok, "{err}");
    assert_eq!(out, "s \"hi\"\n");
    let (ok, _, err) = busctl(
        &broker,
        &["set-property", NAME, PATH, IFACE, "Motd", "s", "bonjour"],
    );
    assert!(ok, "{err}");
    let changed = watcher.next_line();
    assert_eq!(changed["args"][0], IFACE, "{changed}");
    assert!(
        changed["args"][1].as_str().unwrap().contains("bonjour"),
        "{changed}"
    );
    let (ok, _, err) = busctl(
        &broker,
        &["set-property", NAME, PATH, IFACE, "Greetings", "u", "7"],
    );
    assert!(!ok, "a read-only property was set");
    assert!(!err.is_empty());
    let (ok, _, _) = busctl(
        &broker,
        &["set-property", NAME, PATH, IFACE, "Motd", "u", "7"],
    );
    assert!(!ok, "a property was set with a value of the wrong type");
    runtime
        .block_on(object.set_property("Greetings", 5u32))
        .unwrap();
    let changed = watcher.next_line();
    assert!(
        changed["args"][1].as_str().unwrap().contains('5'),
        "{changed}"
    );
    let (ok, out, err) = busctl(&broker, &["get-property", NAME, PATH, IFACE, "Greetings"]);
    assert!(ok, "{err}");
    assert_eq!(out, "u 5\n");
    assert_eq!(object.property::<String>("Motd").unwrap(), "bonjour");

    // A D-Bus call that names no interface finds the declared member.
    let bare = python_peer(&broker, &["call-bare", NAME, PATH, "Greet", "Ada"]);
    let uid = rustix::process::geteuid().as_raw();
    assert_eq!(bare.report["result"], format!("hello Ada, uid {uid}"));
    drop(bus);
}

#[test]
fn a_typed_proxy_calls_reads_sets_and_follows_signals() {
    let broker = Broker::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let service = Connection::connect(broker.socket()).await.unwrap();
        let object = service.serve_interface(PATH, greeter()).unwrap();
        service
            .request_name(NAME, NameFlags::default())
            .await
            .unwrap();

        let client = Connection::connect(broker.socket()).await.unwrap();
        let proxy = Proxy::new(&client, NAME, PATH, IFACE).unwrap();
        let text: String = proxy.call("Greet", &("Ada",)).await.unwrap();
        let uid = rustix::process::geteuid().as_raw();
        assert_eq!(text, format!("hello Ada, uid {uid}"));
        let sum: i64 = proxy.call("Add", &(40i64, 2i64)).await.unwrap();
        assert_eq!(sum, 42);
        let err = proxy.call::<_, i64>("Add", &(1u8,)).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("expected arguments of signature 'xx', got 'y'"),
            "{err}"
        );
        let err = proxy.call::<_, ()>("Refuse", &()).await.unwrap_err();
        assert!(matches!(err, pidbus::Error::AccessDenied { .. }), "{err:?}");
        let err = proxy.call::<_, ()>("Missing", &()).await.unwrap_err();
        assert!(err.to_string().contains("Missing"), "{err}");

        assert_eq!(proxy.get::<u32>("Greetings").await.unwrap(), 0);
        proxy.set("Motd", "salut").await.unwrap();
        assert_eq!(proxy.get::<String>("Motd").await.unwrap(), "salut");
        assert!(proxy.set("Greetings", 3u32).await.is_err(), "read-only");
        let all = proxy.get_all().await.unwrap();
        assert_eq!(all.len(), 2);
        let xml = proxy.introspect().await.unwrap();
        assert!(xml.contains(r#"<method name="Greet">"#), "{xml}");

        let mut greeted = proxy.signals::<(String,)>("Greeted").await.unwrap();
        assert!(
            object.emit("Greeted", &(1u32,)).await.is_err(),
            "wrong type refused"
        );
        object.emit("Greeted", &("Ada",)).await.unwrap();
        let (who,) = greeted.next().await.unwrap().unwrap();
        assert_eq!(who, "Ada");
    });
}

#[test]
fn fallback_objects_serve_a_whole_subtree() {
    let broker = Broker::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let service = Connection::connect(broker.socket()).await.unwrap();
        service
            .serve_fallback("/org/pidbus/files", "org.pidbus.File", |call| async move {
                Response::new(&call.path().to_owned())
            })
            .unwrap();
        service
            .serve_fallback(
                "/org/pidbus/files/special",
                "org.pidbus.File",
                |_| async move { Response::new(&"special".to_owned()) },
            )
            .unwrap();
        service
            .request_name("org.pidbus.Files", NameFlags::default())
            .await
            .unwrap();
        let client = Connection::connect(broker.socket()).await.unwrap();
        for (path, want) in [
            ("/org/pidbus/files/a/b", "/org/pidbus/files/a/b"),
            ("/org/pidbus/files", "/org/pidbus/files"),
            ("/org/pidbus/files/special/x", "special"),
        ] {
            let got: String = client
                .call("org.pidbus.Files", path, "org.pidbus.File", "Path", &())
                .await
                .unwrap();
            assert_eq!(got, want);
        }
        let err = client
            .call::<_, String>(
                "org.pidbus.Files",
                "/org/pidbus/filesx",
                "org.pidbus.File",
                "Path",
                &(),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("no object at /org/pidbus/filesx"),
            "{err}"
        );
    });
}

#[cfg_attr(
    pidbus_without_dbus_tools,
    ignore = "needs busctl and python3-dbus: install the Debian packages systemd, python3-dbus and python3-gi"
)]
#[test]
fn an_object_manager_lists_its_objects_and_announces_changes() {
    let broker = Broker::start_dbus(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bus = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        bus.serve_object_manager("/org/pidbus").unwrap();
        bus.serve_interface(PATH, greeter()).unwrap();
        bus.request_name(NAME, NameFlags::default()).await.unwrap();
        bus
    });
    let (ok, out, err) = busctl(
        &broker,
        &[
            "call",
            NAME,
            "/org/pidbus",
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
            "--json=short",
        ],
    );
    assert!(ok, "{err}");
    let objects: serde_json::Value = serde_json::from_str(&out).unwrap();
    let greeter = &objects["data"][0][PATH][IFACE];
    assert_eq!(greeter["Greetings"]["data"], 0, "{out}");
    assert_eq!(greeter["Motd"]["data"], "hi", "{out}");
    let (ok, out, _) = busctl(&broker, &["introspect", NAME, "/org/pidbus"]);
    assert!(
        ok && out.contains("org.freedesktop.DBus.ObjectManager"),
        "{out}"
    );

    let rule = "type='signal',interface='org.freedesktop.DBus.ObjectManager'";
    let mut watcher = python_peer(&broker, &["listen", rule]);
    assert_eq!(watcher.next_line()["member"], "NameAcquired");
    runtime.block_on(async {
        let child = Interface::new("org.pidbus.Child")
            .unwrap()
            .property("Age", Access::Read, 1u32);
        bus.serve_interface("/org/pidbus/child", child).unwrap();
    });
    let added = watcher.next_line();
    assert_eq!(added["member"], "InterfacesAdded", "{added}");
    assert_eq!(added["args"][0], "/org/pidbus/child");
    runtime.block_on(async {
        assert!(bus.unserve("/org/pidbus/child", "org.pidbus.Child"));
    });
    let removed = watcher.next_line();
    assert_eq!(removed["member"], "InterfacesRemoved", "{removed}");
    assert!(
        removed["args"][1]
            .as_str()
            .unwrap()
            .contains("org.pidbus.Child"),
        "{removed}"
    );
}

#[tokio::test]
async fn member_and_argument_names_that_do_not_fit_are_refused_when_served() {
    let broker = Broker::start();
    let bus = Connection::connect(broker.socket()).await.unwrap();
    let cases = [
        (
            greeter().arg_names("Add", &["a"], &["sum"]),
            "2 in argument(s)",
        ),
        (
            greeter().arg_names("Add", &["a", "b c"], &["sum"]),
            "\"b c\" is not an argument name",
        ),
        (greeter().arg_names("Missing", &[], &[]), "does not declare"),
        (
            greeter().method("Not.A.Member", |_, (): ()| async move { Ok(()) }),
            "Not.A.Member",
        ),
        (greeter().signal::<()>("1st"), "1st"),
    ];
    for (interface, why) in cases {
        let refused = bus
            .serve_interface("/org/pidbus/Bad", interface)
            .unwrap_err();
        assert!(refused.to_string().contains(why), "{refused}");
    }
}

#[tokio::test]
async fn sdk_errors_in_a_handler_answer_its_caller_through_the_question_mark() {
    let broker = Broker::start();
    let service = Connection::connect(broker.socket()).await.unwrap();
    let inner = service.clone();
    let relay = Interface::new("org.pidbus.Relay").unwrap().method(
        "OwnerOf",
        move |_, (name,): (String,)| {
            let bus = inner.clone();
            async move {
                // A pidbus::Error, turned into this method's answer by `?`.
                let owner = bus.name_owner(&name).await?;
                Ok(owner.to_string())
            }
        },
    );
    let _object = service.serve_interface("/org/pidbus/Relay", relay).unwrap();
    service
        .request_name("org.pidbus.Relay", NameFlags::default())
        .await
        .unwrap();
    let client = Connection::connect(broker.socket()).await.unwrap();
    let ask = |name: &'static str| {
        let client = client.clone();
        async move {
            client
                .call::<_, String>(
                    "org.pidbus.Relay",
                    "/org/pidbus/Relay",
                    "org.pidbus.Relay",
                    "OwnerOf",
                    &(name,),
                )
                .await
        }
    };
    assert_eq!(
        ask("org.pidbus.Relay").await.unwrap(),
        service.unique_id().to_string()
    );
    match ask("org.pidbus.Nobody.Here").await {
        Err(pidbus::Error::Failed { message, .. }) => {
            assert!(message.contains("org.pidbus.Nobody.Here"), "{message}")
        }
        other => panic!("the inner call's failure is the method's: {other:?}"),
    }
    match ask("not a name").await {
        Err(pidbus::Error::Failed { message, .. }) => {
            assert!(message.contains("not a name"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A read-write property's setter hook sees each `Set` (busctl's, here)
/// with its verified caller, may refuse it, and stores what it returns.
#[test]
fn a_setter_hook_validates_refuses_by_caller_and_stores_what_it_returns() {
    let broker = Broker::start_dbus(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_bus, _object) = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        let speaker = Interface::new("org.pidbus.Speaker")
            .unwrap()
            .property("Volume", Access::ReadWrite, 50u32)
            .on_set("Volume", |call, volume: u32| async move {
                if call.caller().uid != 0 {
                    return Err(MethodError::access_denied("only root sets the volume"));
                }
                if volume > 100 {
                    return Err(MethodError::invalid_args("the volume goes up to 100"));
                }
                // Stored in steps of ten.
                Ok(volume / 10 * 10)
            });
        let object = bus.serve_interface("/org/pidbus/Speaker", speaker).unwrap();
        bus.request_name("org.pidbus.Speaker", NameFlags::default())
            .await
            .unwrap();
        (bus, object)
    });
    let property = [
        "org.pidbus.Speaker",
        "/org/pidbus/Speaker",
        "org.pidbus.Speaker",
        "Volume",
    ];
    let set = |value: &str| {
        busctl(
            &broker,
            &[&["set-property"][..], &property, &["u", value]].concat(),
        )
    };
    let (ok, _, err) = set("150");
    assert!(
        !ok && err.contains("the volume goes up to 100"),
        "over 100 is refused: {err}"
    );
    let (ok, _, err) = set("75");
    assert!(ok, "{err}");
    let (ok, out, err) = busctl(&broker, &[&["get-property"][..], &property].concat());
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "u 70", "what the hook returned is stored");
    let out = Command::new(pidbus_tests::AS_NOBODY[0])
        .args(&pidbus_tests::AS_NOBODY[1..])
        .arg("busctl")
        .arg(format!("--address={}", broker.dbus_address()))
        .arg("set-property")
        .args(property)
        .args(["u", "20"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Access denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A handler reaches its own object (properties, signals) and its
/// connection from the call, with no handle captured beforehand.
#[test]
fn a_handler_sets_its_objects_property_emits_its_signal_and_uses_its_connection() {
    let broker = Broker::start_dbus(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bus, mut counted) = runtime.block_on(async {
        let bus = Connection::connect(broker.socket()).await.unwrap();
        let counter = Interface::new("org.pidbus.Counter")
            .unwrap()
            .property("Count", Access::Read, 0u32)
            .signal::<(u32,)>("Counted")
            .method("Add", |call, (n,): (u32,)| async move {
                let object = call
                    .object()
                    .ok_or_else(|| MethodError::invalid_args("no object"))?;
                let count = object.property::<u32>("Count")? + n;
                object.set_property("Count", count).await?;
                object.emit("Counted", &(count,)).await?;
                Ok(count)
            })
            .method("Owner", |call, (): ()| async move {
                let bus = call.connection()?;
                Ok(bus.name_owner("org.pidbus.Counter").await?.to_string())
            });
        let object = bus.serve_interface("/org/pidbus/Counter", counter).unwrap();
        // The object lives on through its handlers' calls: the handle
        // returned here is not needed.
        drop(object);
        bus.request_name("org.pidbus.Counter", NameFlags::default())
            .await
            .unwrap();
        let client = Connection::connect(broker.socket()).await.unwrap();
        let counted = client
            .subscribe(pidbus::MatchRule {
                interface: Some("org.pidbus.Counter".into()),
                member: Some("Counted".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        (bus, (client, counted))
    });
    let call = [
        "org.pidbus.Counter",
        "/org/pidbus/Counter",
        "org.pidbus.Counter",
    ];
    let (ok, out, err) = busctl(
        &broker,
        &[&["call"][..], &call, &["Add", "u", "5"]].concat(),
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "u 5");
    let (ok, out, err) = busctl(
        &broker,
        &[&["get-property"][..], &call, &["Count"]].concat(),
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "u 5", "the handler set the property");
    let signal = runtime.block_on(async {
        tokio::time::timeout(pidbus_tests::PATIENCE, counted.1.next())
            .await
            .unwrap()
            .unwrap()
    });
    let (count,): (u32,) = signal.args().unwrap();
    assert_eq!(count, 5, "the handler emitted the signal");
    let (ok, out, err) = busctl(&broker, &[&["call"][..], &call, &["Owner"]].concat());
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("s \"{}\"", bus.unique_id()));
    drop(counted);
}

/// The declarative form: `#[interface]` on an impl block, served, called
/// from busctl and gdbus, its arguments named in introspection, its
/// `#[authorize]` decided by the bus before the body runs.
mod declared {
    use super::*;
    use pidbus::{Caller, interface};

    struct Greeter {
        greeting: String,
    }

    #[interface(name = "org.pidbus.Declared")]
    impl Greeter {
        #[dbus(out_args("greeting"))]
        async fn greet(&self, caller: &Caller, name: String) -> String {
            format!("{} {name}, uid {}", self.greeting, caller.uid)
        }

        #[authorize("org.pidbus.test.shout")]
        async fn shout(&self, name: String) -> Result<String, MethodError> {
            Ok(name.to_uppercase())
        }

        #[dbus(name = "Sum", deprecated)]
        async fn add_up(&self, a: i64, b: i64) -> i64 {
            a + b
        }

        #[property]
        fn greetings() -> u32 {
            0
        }

        #[property(readwrite)]
        #[dbus(annotate("org.freedesktop.DBus.Property.EmitsChangedSignal", "true"))]
        fn motd() -> String {
            "hi".into()
        }

        /// Decides each `Set` of `Motd`: root only, not empty, trimmed.
        #[setter(motd)]
        async fn set_motd(&self, caller: &Caller, motd: String) -> Result<String, MethodError> {
            if caller.uid != 0 {
                return Err(MethodError::access_denied("only root sets the motd"));
            }
            if motd.trim().is_empty() {
                return Err(MethodError::invalid_args("an empty motd"));
            }
            Ok(motd.trim().to_owned())
        }

        #[signal]
        async fn counted(object: &pidbus::ObjectHandle, greetings: u32) -> pidbus::Result<()> {}

        /// Counts its calls in the object's `Greetings` property.
        async fn count(&self, object: &pidbus::ObjectHandle) -> Result<u32, MethodError> {
            let greetings = object.property::<u32>("Greetings")? + 1;
            object.set_property("Greetings", greetings).await?;
            Self::counted(object, greetings).await?;
            Ok(greetings)
        }

        async fn owner(&self, bus: &Connection) -> Result<String, MethodError> {
            Ok(bus.name_owner("org.pidbus.Declared").await?.to_string())
        }
    }

    #[pidbus::proxy(
        interface = "org.pidbus.Declared",
        default_service = "org.pidbus.Declared",
        default_path = "/org/pidbus/Declared"
    )]
    trait Declared {
        async fn greet(&self, name: String) -> pidbus::Result<String>;
        async fn shout(&self, name: String) -> pidbus::Result<String>;
        #[dbus(name = "Sum")]
        async fn add_up(&self, a: i64, b: i64) -> pidbus::Result<i64>;
        async fn count(&self) -> pidbus::Result<u32>;
        async fn owner(&self) -> pidbus::Result<String>;
        #[property]
        async fn greetings(&self) -> pidbus::Result<u32>;
        #[signal]
        async fn counted(&self) -> pidbus::Result<pidbus::TypedSignals<(u32,)>>;
    }

    const POLICY: &str = "[defaults]\nconnect = \"allow\"\nown = \"allow\"\ncall = \"allow\"\nreceive = \"allow\"\n\n\
        [[action]]\nid = \"org.pidbus.test.shout\"\ndefault = \"deny\"\n\n\
        [[rule]]\nkind = \"action\"\nname = \"org.pidbus.test.shout\"\nuser = \"root\"\ndecision = \"allow\"\n";

    #[test]
    fn a_declared_interface_is_served_named_and_authorized() {
        let dir = pidbus_tests::PublicDir::new("declared");
        let policy = pidbus_tests::write_policy(&dir, "policy.toml", POLICY);
        let broker = Broker::start_dbus(&["--policy", &policy]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _served = runtime.block_on(async {
            let bus = Connection::connect(broker.socket()).await.unwrap();
            let greeter = Greeter {
                greeting: "hello".into(),
            };
            let object = bus
                .serve_interface("/org/pidbus/Declared", greeter.into_interface().unwrap())
                .unwrap();
            bus.request_name("org.pidbus.Declared", NameFlags::default())
                .await
                .unwrap();
            (bus, object)
        });
        let call = [
            "org.pidbus.Declared",
            "/org/pidbus/Declared",
            "org.pidbus.Declared",
        ];
        // The generated proxy, from another connection.
        runtime.block_on(async {
            let client = Connection::connect(broker.socket()).await.unwrap();
            let proxy = DeclaredProxy::connect(&client).unwrap();
            let mut counted = proxy.counted().await.unwrap();
            assert_eq!(
                proxy.greet("proxy".into()).await.unwrap(),
                "hello proxy, uid 0"
            );
            assert_eq!(proxy.add_up(40, 2).await.unwrap(), 42);
            assert_eq!(proxy.shout("root may".into()).await.unwrap(), "ROOT MAY");
            assert_eq!(proxy.count().await.unwrap(), 1);
            assert_eq!(proxy.count().await.unwrap(), 2);
            let greetings = proxy.greetings().await.unwrap();
            assert_eq!(greetings, 2, "the method set its object's property");
            let first = tokio::time::timeout(pidbus_tests::PATIENCE, counted.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(first, (1,), "the #[signal] was emitted");
            assert!(proxy.owner().await.unwrap().starts_with(':'));
        });
        let (ok, out, err) = busctl(
            &broker,
            &[&["call"][..], &call, &["Greet", "s", "you"]].concat(),
        );
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "s \"hello you, uid 0\"");
        let (ok, out, err) = busctl(
            &broker,
            &[&["call"][..], &call, &["Sum", "xx", "40", "2"]].concat(),
        );
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "x 42");
        let gdbus = Command::new("gdbus")
            .args([
                "call",
                "-a",
                &broker.dbus_address(),
                "-d",
                call[0],
                "-o",
                call[1],
            ])
            .args(["-m", "org.pidbus.Declared.Shout", "quiet"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&gdbus.stdout).trim(), "('QUIET',)");
        let xml = Command::new("gdbus")
            .args([
                "introspect",
                "-a",
                &broker.dbus_address(),
                "-d",
                call[0],
                "-o",
                call[1],
                "-x",
            ])
            .output()
            .unwrap();
        let xml = String::from_utf8_lossy(&xml.stdout);
        for named in [
            r#"<property name="Greetings" type="u" access="read"/>"#,
            r#"<property name="Motd" type="s" access="readwrite">"#,
            r#"<annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="true"/>"#,
            r#"<annotation name="org.freedesktop.DBus.Deprecated" value="true"/>"#,
            r#"<signal name="Counted">"#,
            r#"<arg name="name" type="s" direction="in"/>"#,
            r#"<arg name="greeting" type="s" direction="out"/>"#,
            r#"<arg name="a" type="x" direction="in"/>"#,
            r#"<arg name="b" type="x" direction="in"/>"#,
        ] {
            assert!(xml.contains(named), "{named}: {xml}");
        }
        // The declared setter: trims, refuses an empty value and nobody.
        let motd = [&["set-property"][..], &call, &["Motd", "s"]].concat();
        let (ok, _, err) = busctl(&broker, &[&motd[..], &["  news  "]].concat());
        assert!(ok, "{err}");
        let (ok, out, err) = busctl(&broker, &[&["get-property"][..], &call, &["Motd"]].concat());
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "s \"news\"");
        let (ok, _, err) = busctl(&broker, &[&motd[..], &["   "]].concat());
        assert!(!ok && err.contains("an empty motd"), "{err}");
        let nobody = Command::new(pidbus_tests::AS_NOBODY[0])
            .args(&pidbus_tests::AS_NOBODY[1..])
            .arg("busctl")
            .arg(format!("--address={}", broker.dbus_address()))
            .args(&motd)
            .arg("mine")
            .output()
            .unwrap();
        assert!(!nobody.status.success());
        assert!(String::from_utf8_lossy(&nobody.stderr).contains("Access denied"));

        // Nobody may not shout: the bus says so before the body runs
        // (dbus-send prints the error's text).
        let out = Command::new(pidbus_tests::AS_NOBODY[0])
            .args(&pidbus_tests::AS_NOBODY[1..])
            .arg("dbus-send")
            .arg(format!("--bus={}", broker.dbus_address()))
            .args([
                "--print-reply",
                "--dest=org.pidbus.Declared",
                "/org/pidbus/Declared",
            ])
            .args(["org.pidbus.Declared.Shout", "string:loud"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not allowed") && err.contains("policy.toml"),
            "{err}"
        );
    }
}
