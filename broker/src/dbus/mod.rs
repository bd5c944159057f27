//! The D-Bus face: the D-Bus wire protocol on `SOCK_STREAM`, so that
//! busctl, gdbus, dbus-send, sd-bus, GLib and zbus programs use the bus
//! unchanged — with the identity, policy and quotas of the native face.
//!
//! [`listener`] accepts; [`connection`] runs one connection (SASL in
//! [`sasl`], `Hello`, then each message proven, checked and routed);
//! [`driver`] is the bus's own object `org.freedesktop.DBus`; [`wire`]
//! writes the core's messages as D-Bus messages; [`polkit`] is the polkit
//! authority `org.freedesktop.PolicyKit1`; [`errors`] maps error
//! names. The header and body format is the protocol crate's
//! [`pidbus_protocol::dbus`], shared with the tools.

pub mod connection;
pub mod driver;
pub mod errors;
pub mod listener;
pub mod polkit;
pub mod refusal;
pub mod sasl;
pub mod stream;
pub mod wire;
