//! The bus's own objects fuzzed as dfuzzer fuzzes a D-Bus service, in a
//! bounded test: every method the driver (`org.freedesktop.DBus` at
//! `/org/freedesktop/DBus`) and the polkit authority
//! (`org.freedesktop.PolicyKit1` at `/org/freedesktop/PolicyKit1/Authority`)
//! introspect is called over the D-Bus socket with random and edge-case
//! arguments of its signature, and with arguments of other signatures.
//! Each call must be answered — a reply, or an error with a well-formed
//! name and a message — on a connection that stays up, and a bystander
//! must still be answered after every method.
//!
//! The arguments come from a seeded generator: a failure prints the seed,
//! and `PIDBUS_FUZZ_SEED=N` replays it (`PIDBUS_FUZZ_ROUNDS=N` runs longer).

use std::os::fd::AsFd;

use pidbus_protocol::dbus::header::{Header, MessageType};
use pidbus_protocol::dbus::signature::complete_types;
use pidbus_protocol::dbus::value::{Value, marshal, unmarshal};
use pidbus_protocol::names;
use pidbus_tests::Broker;
use pidbus_tests::raw::{DRIVER, DRIVER_PATH, method_call};
use pidbus_tests::raw_dbus::RawDbus;

/// Calls per method, each with fresh arguments.
const ROUNDS: usize = 40;
/// One in this many calls uses arguments of another signature.
const WRONG_SIGNATURE_EVERY: u64 = 5;

/// An object of the bus to fuzz.
struct Target {
    destination: &'static str,
    path: &'static str,
}

const TARGETS: &[Target] = &[
    Target {
        destination: DRIVER,
        path: DRIVER_PATH,
    },
    Target {
        destination: "org.freedesktop.PolicyKit1",
        path: "/org/freedesktop/PolicyKit1/Authority",
    },
];

/// A method as introspection shows it.
#[derive(Debug)]
struct Method {
    interface: String,
    name: String,
    /// The types of its input arguments, concatenated.
    input: String,
}

#[test]
fn every_method_of_the_bus_answers_random_and_wrong_arguments_and_the_bus_stays_up() {
    let broker = Broker::start_dbus(&[]);
    let seed = std::env::var("PIDBUS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05ee_db05);
    let rounds = std::env::var("PIDBUS_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    let mut rng = Rng(seed);
    let null = std::fs::File::open("/dev/null").unwrap();
    let (mut calls, mut replies) = (0, 0);
    for target in TARGETS {
        let methods = introspect(&broker, target);
        assert!(
            methods.len() >= 3,
            "{} introspects too few methods: {methods:?}",
            target.destination
        );
        for method in &methods {
            let (mut client, _) = RawDbus::joined(&broker);
            for round in 0..rounds {
                let signature = if rng.below(WRONG_SIGNATURE_EVERY) == 0 {
                    rng.pick(WRONG_SIGNATURES).to_string()
                } else {
                    method.input.clone()
                };
                let args = arguments(&signature, &mut rng);
                let (signature_sent, body) = marshal(&args).unwrap();
                let serial = u32::try_from(round + 2).unwrap();
                let mut header = Header::new(MessageType::MethodCall, serial);
                header.destination = Some(target.destination.into());
                header.path = Some(target.path.into());
                header.interface = Some(method.interface.clone());
                header.member = Some(method.name.clone());
                header.signature = signature_sent;
                let fds = usize::from(signature.contains('h'));
                header.unix_fds = u32::try_from(fds).unwrap();
                let bytes = pidbus_protocol::dbus::header::encode(&header, &body);
                let context = || {
                    format!(
                        "seed {seed}: {}.{}({signature}) with {args:?}",
                        method.interface, method.name
                    )
                };
                let attached = [null.as_fd()];
                client
                    .send_with_fds(&bytes, &attached[..fds])
                    .unwrap_or_else(|e| {
                        panic!("{}: the bus closed the connection: {e}", context())
                    });
                let (answer, answer_body) = client
                    .answer()
                    .unwrap_or_else(|| panic!("{}: the bus closed the connection", context()));
                assert_eq!(answer.reply_serial, Some(serial), "{}", context());
                check_answer(&answer, &answer_body, &context);
                calls += 1;
                replies += usize::from(answer.kind == MessageType::MethodReturn);
                if answer.kind == MessageType::MethodReturn && method.name == "BecomeMonitor" {
                    // It asked to be a monitor and is one: it may send no
                    // more (the bus would close it), as D-Bus says.
                    client = RawDbus::joined(&broker).0;
                }
            }
            bystander_answered(&broker, &method.name);
        }
    }
    println!("{calls} calls answered, {replies} of them with a reply (seed {seed})");
    // Not only errors: many arguments were ones the methods accept.
    assert!(replies * 5 > calls, "{replies} replies to {calls} calls");
}

/// The methods `target` introspects, with their input signatures.
fn introspect(broker: &Broker, target: &Target) -> Vec<Method> {
    let (mut client, _) = RawDbus::joined(broker);
    client.send(&method_call(
        2,
        target.destination,
        target.path,
        "org.freedesktop.DBus.Introspectable",
        "Introspect",
        &[],
    ));
    let (answer, body) = client.answer().expect("Introspect answered");
    assert_eq!(
        answer.kind,
        MessageType::MethodReturn,
        "{}",
        target.destination
    );
    let xml = unmarshal(&answer.signature, &body).unwrap();
    methods_in(xml[0].as_str().unwrap())
}

/// Reads methods and their `in` arguments out of introspection XML.
fn methods_in(xml: &str) -> Vec<Method> {
    let mut methods: Vec<Method> = Vec::new();
    let mut interface = String::new();
    // Whether the arguments read now are the last method's (not a
    // signal's, nor after its end).
    let mut in_method = false;
    for tag in xml.split('<').skip(1) {
        let tag = tag.split('>').next().unwrap_or_default();
        let attribute = |name: &str| {
            let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
            let end = tag[start..].find('"')? + start;
            Some(tag[start..end].to_owned())
        };
        if tag.starts_with("interface ") {
            interface = attribute("name").unwrap_or_default();
        } else if tag.starts_with("method ") {
            methods.push(Method {
                interface: interface.clone(),
                name: attribute("name").unwrap_or_default(),
                input: String::new(),
            });
            in_method = !tag.ends_with('/');
        } else if tag.starts_with("signal ") || tag.starts_with("/method") {
            in_method = false;
        } else if tag.starts_with("arg ")
            && in_method
            && attribute("direction").as_deref() != Some("out")
            && let Some(method) = methods.last_mut()
        {
            method.input += &attribute("type").unwrap_or_default();
        }
    }
    methods
}

/// An answer is a reply, or an error whose name is a valid error name
/// and whose first argument, if any, says something.
fn check_answer(answer: &Header, body: &[u8], context: &impl Fn() -> String) {
    match answer.kind {
        MessageType::MethodReturn => {}
        MessageType::Error => {
            let name = answer.error_name.as_deref().unwrap_or_default();
            assert!(
                names::validate_interface(name).is_ok(),
                "{}: error name {name:?}",
                context()
            );
            let args = unmarshal(&answer.signature, body).unwrap();
            if let Some(text) = args.first().and_then(Value::as_str) {
                assert!(!text.is_empty(), "{}: {name} with no message", context());
            }
        }
        other => panic!("{}: answered with a {other:?}", context()),
    }
}

/// Someone else connects and is answered.
fn bystander_answered(broker: &Broker, after: &str) {
    let (mut bystander, _) = RawDbus::joined(broker);
    bystander.send(&method_call(2, DRIVER, DRIVER_PATH, DRIVER, "GetId", &[]));
    let (answer, _) = bystander
        .answer()
        .unwrap_or_else(|| panic!("a bystander is not answered after fuzzing {after}"));
    assert_eq!(answer.kind, MessageType::MethodReturn, "after {after}");
}

/// Signatures to call a method with instead of its own.
const WRONG_SIGNATURES: &[&str] = &[
    "", "s", "u", "b", "ss", "su", "as", "ay", "a{sv}", "a{ss}", "v", "(sa{sv})", "h", "ssssss",
    "ii", "o", "g", "ad", "aas",
];

/// Strings that mean something to the bus, and some that mean nothing.
const STRINGS: &[&str] = &[
    "",
    ":1.0",
    ":1.1",
    ":1.4294967295",
    ":0.1",
    "org.freedesktop.DBus",
    "org.freedesktop.PolicyKit1",
    "org.pidbus.Fuzz",
    "org.pidbus.Fuzz.a-b_c",
    ".org.x",
    "org..x",
    "1org.x",
    "org",
    "type='signal'",
    "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='x'",
    "type='method_call',eavesdrop='true'",
    "arg0namespace='org.x',path_namespace='/'",
    "arg64='x'",
    "type='nonsense'",
    "sender=",
    "unix-process",
    "unix-session",
    "system-bus-name",
    "org.freedesktop.policykit.exec",
    "org.freedesktop.login1.power-off",
    "x",
    "é☃ unicode",
    "PATH",
    "with=equals",
    "/",
];

/// Arguments of `signature`, random but well-formed.
fn arguments(signature: &str, rng: &mut Rng) -> Vec<Value> {
    complete_types(signature)
        .unwrap()
        .into_iter()
        .map(|ty| value(ty, rng, 0))
        .collect()
}

fn value(ty: &str, rng: &mut Rng, depth: usize) -> Value {
    let edge_u64 = |rng: &mut Rng| match rng.below(4) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.below(8),
        _ => rng.next(),
    };
    match ty.as_bytes()[0] {
        b'y' => Value::Byte(edge_u64(rng) as u8),
        b'b' => Value::Bool(rng.below(2) == 0),
        b'n' => Value::Int16(edge_u64(rng) as i16),
        b'q' => Value::UInt16(edge_u64(rng) as u16),
        b'i' => Value::Int32(edge_u64(rng) as i32),
        b'u' => Value::UInt32(edge_u64(rng) as u32),
        b'x' => Value::Int64(edge_u64(rng) as i64),
        b't' => Value::UInt64(edge_u64(rng)),
        b'd' => Value::Double(rng.pick(&[0.0, -1.5, f64::NAN, f64::INFINITY, 1e300])),
        b'h' => Value::UnixFd(0),
        b's' => Value::string(string(rng)),
        b'o' => Value::ObjectPath(
            rng.pick(&[
                "/",
                "/org/freedesktop/DBus",
                "/a/b_c/D1",
                "/org/freedesktop/PolicyKit1/Authority",
            ])
            .into(),
        ),
        b'g' => Value::Signature(rng.pick(&["", "s", "a{sv}", "(ii)", "v", "aay"]).into()),
        b'v' => {
            let inner = if depth >= 3 {
                "s"
            } else {
                rng.pick(&["s", "u", "b", "as", "a{sv}", "(su)", "v", "ay", "o"])
            };
            Value::Variant(Box::new(value(inner, rng, depth + 1)))
        }
        b'a' => {
            let element = &ty[1..];
            let count = if depth >= 3 { 0 } else { rng.below(5) as usize };
            let items = (0..count).map(|_| value(element, rng, depth + 1)).collect();
            Value::Array {
                element: element.to_owned(),
                items,
            }
        }
        b'{' => {
            let inner = complete_types(&ty[1..ty.len() - 1]).unwrap();
            Value::DictEntry(
                Box::new(value(inner[0], rng, depth + 1)),
                Box::new(value(inner[1], rng, depth + 1)),
            )
        }
        b'(' => Value::Struct(
            complete_types(&ty[1..ty.len() - 1])
                .unwrap()
                .into_iter()
                .map(|field| value(field, rng, depth + 1))
                .collect(),
        ),
        other => panic!("no generator for type {}", other as char),
    }
}

/// A string from the list, or random printable text up to 300 bytes.
fn string(rng: &mut Rng) -> String {
    if rng.below(3) > 0 {
        return rng.pick(STRINGS).to_owned();
    }
    let len = rng.pick(&[1, 2, 254, 255, 256, 300]);
    (0..len)
        .map(|_| char::from(b' ' + rng.below(95) as u8))
        .collect()
}

/// xorshift64*: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[test]
fn introspection_xml_is_read_into_methods_and_their_inputs() {
    let xml = r#"<node><interface name="a.B">
        <method name="M"><arg direction="in" type="s"/><arg type="u" direction="in"/><arg direction="out" type="b"/></method>
        <method name="N"/>
        <signal name="S"><arg type="s"/></signal>
        </interface></node>"#;
    let methods = methods_in(xml);
    let shown: Vec<(&str, &str, &str)> = methods
        .iter()
        .map(|m| (m.interface.as_str(), m.name.as_str(), m.input.as_str()))
        .collect();
    assert_eq!(shown, [("a.B", "M", "su"), ("a.B", "N", "")]);
}
