//! What the whole-broker targets share: a broker in this process, and the
//! driver calls they send it.

use std::path::PathBuf;

use pidbus_protocol::dbus::header::{self, Header, MessageType};

/// The sockets of a broker started in this process.
pub struct Sockets {
    /// The native socket.
    pub native: PathBuf,
    /// The D-Bus socket.
    pub dbus: PathBuf,
}

/// Starts a broker on its own thread, listening on both sockets in a
/// scratch directory named after `target`, and waits until it listens.
pub fn start_broker(target: &str) -> Sockets {
    let dir = std::env::temp_dir().join(format!("pidbus-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let sockets = Sockets {
        native: dir.join("bus.sock"),
        dbus: dir.join("dbus.sock"),
    };
    let mut config = pidbus_broker::Config::new(sockets.native.clone());
    config.dbus_listen = vec![sockets.dbus.clone()];
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the broker's runtime");
        runtime
            .block_on(pidbus_broker::run(config, std::future::pending()))
            .expect("the broker runs");
    });
    while !(sockets.native.exists() && sockets.dbus.exists()) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    sockets
}

/// A call of the driver's `interface.member`, with no arguments.
pub fn driver_call(serial: u32, interface: &str, member: &str) -> Vec<u8> {
    let header = Header {
        destination: Some("org.freedesktop.DBus".into()),
        path: Some("/org/freedesktop/DBus".into()),
        interface: Some(interface.into()),
        member: Some(member.into()),
        ..Header::new(MessageType::MethodCall, serial)
    };
    header::encode(&header, &[])
}

/// The `Hello` every connection sends first, with serial 1.
pub fn hello() -> Vec<u8> {
    driver_call(1, "org.freedesktop.DBus", "Hello")
}
