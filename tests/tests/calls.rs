//! Method calls against the real broker: routing, the verified caller,
//! reply tracking, timeouts, callees that die, descriptors.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use pidbus::{Connection, Error, MethodCall, MethodError, NameFlags, Response};
use pidbus_protocol::ErrorCode;
use pidbus_protocol::dbus::header::{self, Header, MessageType};
use pidbus_protocol::dbus::value::{Value, marshal};
use pidbus_tests::raw::{DRIVER, DRIVER_PATH, RawPeer};
use pidbus_tests::{AS_NOBODY, Broker, HeldPeer, binary, can_run_privileged};
use serde_json::json;

const PATH: &str = "/org/pidbus/Echo";
const IFACE: &str = "org.pidbus.Echo";
const NAME: &str = "org.pidbus.Echo";

/// An echo service like `examples/echo.rs`, in this process.
async fn echo_service(broker: &Broker) -> Connection {
    let bus = Connection::connect(broker.socket()).await.unwrap();
    bus.serve(PATH, IFACE, |mut call| async move {
        match call.member() {
            "Echo" => Response::raw(call.signature(), call.body().to_vec())
                .map(|r| r.with_fds(call.take_fds())),
            "WhoCalledMe" => Response::new(&pidbus::CallerFacts::from(call.caller())),
            "Add" => {
                let (a, b): (i64, i64) = call.args()?;
                Response::new(&(a + b))
            }
            "Fail" => Err(MethodError::failed("org.pidbus.Error.Sad", "as asked")),
            other => Err(MethodError::unknown_method(other)),
        }
    })
    .unwrap();
    bus.request_name(NAME, NameFlags::default()).await.unwrap();
    bus
}

#[tokio::test]
async fn calls_reach_the_service_by_name_or_unique_id_with_typed_arguments() {
    let broker = Broker::start();
    let service = echo_service(&broker).await;
    let client = Connection::connect(broker.socket()).await.unwrap();
    let value = (
        std::collections::BTreeMap::from([("a".to_owned(), vec![1u32, 2, 3])]),
        "text".to_owned(),
    );
    let back: (std::collections::BTreeMap<String, Vec<u32>>, String) = client
        .call(NAME, PATH, IFACE, "Echo", &value)
        .await
        .unwrap();
    assert_eq!(back, value);
    let by_id = service.unique_id().to_string();
    let sum: i64 = client
        .call(&by_id, PATH, IFACE, "Add", &(40i64, 2i64))
        .await
        .unwrap();
    assert_eq!(sum, 42);

    let who: pidbus::CallerFacts = client
        .call(NAME, PATH, IFACE, "WhoCalledMe", &())
        .await
        .unwrap();
    let me = client.identity();
    assert_eq!(who.id, client.unique_id().to_string());
    assert_eq!(
        (who.uid, who.gid, Some(who.pidfs_id)),
        (me.uid, me.gid, me.pidfs_id)
    );
    assert_eq!(
        who.pid,
        std::process::id(),
        "same pid namespace: the pid is visible"
    );
}

#[tokio::test]
async fn every_failure_is_a_typed_error() {
    let broker = Broker::start();
    let _service = echo_service(&broker).await;
    let client = Connection::connect(broker.socket()).await.unwrap();
    let err = client
        .call::<_, ()>("org.nobody.Here", PATH, IFACE, "Echo", &())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchName { .. }), "{err:?}");
    let err = client
        .call::<_, ()>(":1.999999", PATH, IFACE, "Echo", &())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchName { .. }), "{err:?}");
    let err = client
        .call::<_, i64>(NAME, PATH, IFACE, "Add", &"not numbers")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgs { .. }), "{err:?}");
    let err = client
        .call::<_, ()>(NAME, PATH, IFACE, "Nope", &())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownMethod {
                code: ErrorCode::UnknownMethod,
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .call::<_, ()>(NAME, "/other", IFACE, "Echo", &())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownMethod {
                code: ErrorCode::UnknownObject,
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .call::<_, ()>(NAME, PATH, "org.pidbus.Other", "Echo", &())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownMethod {
                code: ErrorCode::UnknownInterface,
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .call::<_, ()>(NAME, PATH, IFACE, "Fail", &())
        .await
        .unwrap_err();
    match err {
        Error::Failed {
            name,
            message,
            sender,
        } => {
            assert_eq!(name.as_deref(), Some("org.pidbus.Error.Sad"));
            assert_eq!(message, "as asked");
            assert_eq!(sender, Some(_service.unique_id()));
        }
        other => panic!("{other:?}"),
    }
    let err = MethodCall::new(NAME, "no/slash", IFACE, "Echo").unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
}

/// A service that answers nothing: its calls wait for the broker.
async fn silent_service(
    broker: &Broker,
    name: &str,
) -> (Connection, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let bus = Connection::connect(broker.socket()).await.unwrap();
    bus.serve("/org/pidbus/Test", "org.pidbus.Test", move |call| {
        let _ = tx.send(call.member().to_owned());
        std::future::pending()
    })
    .unwrap();
    bus.request_name(name, NameFlags::default()).await.unwrap();
    (bus, rx)
}

#[tokio::test]
async fn an_unanswered_call_times_out_with_its_own_timeout() {
    let broker = Broker::start();
    let (_service, mut calls) = silent_service(&broker, "org.pidbus.Silent").await;
    let client = Connection::connect(broker.socket()).await.unwrap();
    let call = MethodCall::new(
        "org.pidbus.Silent",
        "/org/pidbus/Test",
        "org.pidbus.Test",
        "Wait",
    )
    .unwrap()
    .timeout(Duration::from_millis(200));
    let err = client.call_method(call).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(
        calls.recv().await.as_deref(),
        Some("Wait"),
        "the call was delivered"
    );
}

#[tokio::test]
async fn no_reply_calls_are_delivered_and_tracked_by_nobody() {
    let broker = Broker::start();
    let (_service, mut calls) = silent_service(&broker, "org.pidbus.Silent").await;
    let client = Connection::connect(broker.socket()).await.unwrap();
    let call = MethodCall::new(
        "org.pidbus.Silent",
        "/org/pidbus/Test",
        "org.pidbus.Test",
        "Fire",
    )
    .unwrap();
    client.call_no_reply(call).await.unwrap();
    assert_eq!(calls.recv().await.as_deref(), Some("Fire"));
}

// Multi-threaded: reading the callee's output blocks one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_killed_mid_call_fails_the_call_with_peer_gone_not_timeout() {
    let broker = Broker::start();
    let mut callee = HeldPeer::start_mode(
        &[],
        &binary("pidbus-test-peer"),
        &[
            "serve-silently".as_ref(),
            broker.socket().as_os_str(),
            "org.pidbus.Doomed".as_ref(),
        ],
    );
    let client = Connection::connect(broker.socket()).await.unwrap();
    let call = MethodCall::new(
        "org.pidbus.Doomed",
        "/org/pidbus/Test",
        "org.pidbus.Test",
        "Hang",
    )
    .unwrap()
    .timeout(Duration::from_secs(600));
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.call_method(call).await }
    });
    assert_eq!(
        callee.next_line()["call"],
        "Hang",
        "the callee has the call"
    );
    callee.kill();
    let outcome = tokio::time::timeout(pidbus_tests::PATIENCE, pending)
        .await
        .expect("the call must end")
        .unwrap();
    match outcome {
        Err(Error::PeerGone { message }) => {
            assert_eq!(
                message,
                "Message recipient disconnected from message bus without replying"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn requests_on_one_connection_are_handled_concurrently() {
    let broker = Broker::start();
    let service = Connection::connect(broker.socket()).await.unwrap();
    // Each call waits until both have arrived: only concurrent handling ends.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    service
        .serve("/org/pidbus/Test", "org.pidbus.Test", move |_call| {
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                Ok(Response::empty())
            }
        })
        .unwrap();
    let dest = service.unique_id().to_string();
    let client = Connection::connect(broker.socket()).await.unwrap();
    let one = client.call::<_, ()>(&dest, "/org/pidbus/Test", "org.pidbus.Test", "Meet", &());
    let two = client.call::<_, ()>(&dest, "/org/pidbus/Test", "org.pidbus.Test", "Meet", &());
    let (one, two) = tokio::time::timeout(pidbus_tests::PATIENCE, async { tokio::join!(one, two) })
        .await
        .expect("both calls complete");
    one.unwrap();
    two.unwrap();
}

/// A method return from `from` answering `caller`'s call `serial` with
/// the string `value`.
fn ret(from: &RawPeer, caller: &str, serial: u32, value: &str) -> Vec<u8> {
    let (signature, body) = marshal(&[Value::string(value)]).unwrap();
    let header = Header {
        destination: Some(caller.to_owned()),
        reply_serial: Some(serial),
        signature,
        ..Header::new(MessageType::MethodReturn, from.next_serial())
    };
    header::encode(&header, &body)
}

/// Sends `record` on `peer`, then makes a round trip to the driver: the
/// broker handles a connection's messages in order, so once the driver
/// answered, `record` was handled.
async fn send_and_settle(peer: &RawPeer, record: &[u8]) {
    peer.send_raw(record, &[]).await.unwrap();
    let answer = peer.call_driver(DRIVER, "GetId", &[]).await.unwrap();
    assert_eq!(answer.error_name(), None, "{answer:?}");
}

#[tokio::test]
async fn only_the_callee_may_answer_an_outstanding_call_and_only_once() {
    let broker = Broker::start();
    let callee = pidbus_tests::raw_handshaken(broker.socket()).await;
    let stranger = pidbus_tests::raw_handshaken(broker.socket()).await;
    let args = [Value::string("org.pidbus.Raw"), Value::UInt32(0)];
    let owned = callee
        .call_driver(DRIVER, "RequestName", &args)
        .await
        .unwrap();
    assert_eq!(owned.args, [Value::UInt32(1)], "primary owner");

    let client = Connection::connect(broker.socket()).await.unwrap();
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call::<_, String>("org.pidbus.Raw", "/", "org.pidbus.Raw", "Ask", &())
                .await
        }
    });
    let call = tokio::time::timeout(
        pidbus_tests::PATIENCE,
        callee.next_such(|m| m.header.kind == MessageType::MethodCall),
    )
    .await
    .expect("the call reaches the callee")
    .unwrap();
    let caller = call.header.sender.clone().unwrap();
    assert_eq!(caller, client.unique_id().to_string());
    let serial = call.header.serial;

    // A third peer cannot answer it…
    send_and_settle(
        &stranger,
        &ret(&stranger, &caller, serial, "from a stranger"),
    )
    .await;
    // …nor can the callee answer a call that does not exist.
    send_and_settle(&callee, &ret(&callee, &caller, serial + 1000, "unknown")).await;
    // The callee answers once; a second answer is dropped.
    callee
        .send_raw(&ret(&callee, &caller, serial, "the answer"), &[])
        .await
        .unwrap();
    send_and_settle(&callee, &ret(&callee, &caller, serial, "again")).await;
    assert_eq!(pending.await.unwrap().unwrap(), "the answer");
    // Nothing else reached the client: its next call is answered as usual.
    let id: String = client
        .call(DRIVER, DRIVER_PATH, DRIVER, "GetId", &())
        .await
        .unwrap();
    assert!(!id.is_empty());
    assert_eq!(
        broker.log_count("disconnecting peer"),
        0,
        "dropped answers do not disconnect"
    );
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = rustix::pipe::pipe().unwrap();
    (std::fs::File::from(r), std::fs::File::from(w))
}

#[tokio::test]
async fn descriptors_travel_with_calls_and_replies_intact_and_are_not_leaked() {
    let broker = Broker::start();
    let _service = echo_service(&broker).await;
    let client = Connection::connect(broker.socket()).await.unwrap();
    let baseline = broker.fd_count();
    for round in 0..20 {
        let (mut reader, writer) = pipe();
        let call = MethodCall::new(NAME, PATH, IFACE, "Echo")
            .unwrap()
            .args(&round)
            .unwrap()
            .fds(vec![OwnedFd::from(writer)]);
        let reply = client.call_method(call).await.unwrap();
        assert_eq!(reply.decode::<i32>().unwrap(), round);
        assert_eq!(reply.fds.len(), 1, "the descriptor came back");
        let mut back = std::fs::File::from(reply.fds.into_iter().next().unwrap());
        back.write_all(b"through the bus").unwrap();
        drop(back);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the bus", "the same pipe, end to end");
    }
    broker.wait_for_fd_count(baseline);
}

#[cfg_attr(
    pidbus_unprivileged,
    ignore = "needs root (other users, namespaces): run the tests as root"
)]
#[tokio::test]
async fn who_called_me_reports_another_users_client_by_uid_and_pidfs_id() {
    if !can_run_privileged("who_called_me_reports_another_users_client_by_uid_and_pidfs_id") {
        return;
    }
    let broker = Broker::start();
    let _service = echo_service(&broker).await;
    let peer_binary = broker.dir().public_binary("pidbus-test-peer");
    let socket = broker.socket().to_owned();
    let mut client = tokio::task::spawn_blocking(move || {
        HeldPeer::start_mode(
            &AS_NOBODY,
            &peer_binary,
            &["call-who".as_ref(), socket.as_os_str()],
        )
    })
    .await
    .unwrap();
    // setpriv execs the peer: same pid. It waits for us, so it is alive
    // while we take its pidfd.
    let pid = client.child.id();
    let pidfd = pidbus_protocol::pidfd::pidfd_open(pid).unwrap();
    let pidfs_id = pidbus_protocol::pidfd::pidfs_id(pidfd.as_fd()).unwrap();
    let caller = &client.report["caller"];
    assert_eq!(client.report["self_pid"], pid);
    assert_eq!(caller["uid"], 65534);
    assert_eq!(caller["gid"], 65534);
    assert_eq!(caller["groups"], json!([]));
    assert_eq!(caller["pidfs_id"], json!(pidfs_id));
    assert_eq!(caller["pid"], pid, "the service shares our pid namespace");
    drop(client.child.stdin.take());
    let status = tokio::task::spawn_blocking(move || client.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_handler_that_panics_answers_failed_and_the_service_serves_on() {
    let broker = Broker::start();
    let service = Connection::connect(broker.socket()).await.unwrap();
    service
        .serve("/p", "org.pidbus.Panics", |call| async move {
            if call.member() == "Panic" {
                panic!("on purpose");
            }
            Response::new(&"fine")
        })
        .unwrap();
    let client = Connection::connect(broker.socket()).await.unwrap();
    let id = service.unique_id().to_string();
    let err = client
        .call::<_, ()>(&id, "/p", "org.pidbus.Panics", "Panic", &())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("panicked: on purpose"), "{err}");
    let fine: String = client
        .call(&id, "/p", "org.pidbus.Panics", "Other", &())
        .await
        .unwrap();
    assert_eq!(fine, "fine");
}
