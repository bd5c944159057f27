//! How pidbusctl prints: aligned tables and key/value lists for people,
//! JSON for scripts, colour only for a terminal.

use std::io::{IsTerminal, Write};

use pidbus::blocking::PidFd;
use pidbus::{ExitStatus, Message, PeerInfo, ProcessState};
use pidbus_protocol::dbus::value::{Value as DbusValue, unmarshal};
use serde::Serialize;
use serde_json::{Value, json};

use crate::AnyResult;

/// ANSI colours, used only when the stream is a terminal, `NO_COLOR` is
/// unset (<https://no-color.org>) and `TERM` is not `dumb`.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    enabled: bool,
}

impl Style {
    /// For what is printed on stdout.
    pub fn stdout() -> Self {
        Self::when(std::io::stdout().is_terminal())
    }

    /// For what is printed on stderr.
    pub fn stderr() -> Self {
        Self::when(std::io::stderr().is_terminal())
    }

    fn when(terminal: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Style {
            enabled: terminal && !no_color && !dumb,
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.enabled {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Table headers and keys: bold.
    pub fn header(self, text: &str) -> String {
        self.paint("1", text)
    }

    /// Allowed, success: green.
    pub fn good(self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Denied, errors: red.
    pub fn bad(self, text: &str) -> String {
        self.paint("31", text)
    }

    /// An allow/deny verdict word, coloured by its outcome.
    pub fn verdict(self, allowed: bool, text: &str) -> String {
        if allowed {
            self.good(text)
        } else {
            self.bad(text)
        }
    }
}

/// A peer as printed: the unique id and the identity's fields side by side.
#[derive(Debug, Serialize)]
pub struct PeerView<'a> {
    id: String,
    pid: u32,
    uid: u32,
    gid: u32,
    groups: &'a [u32],
    pidfs_id: Option<u64>,
    start_time: Option<u64>,
    boot_id: &'a str,
    exe: Option<&'a str>,
    exe_unverified: Option<&'a str>,
    unit: Option<&'a str>,
    user_unit: Option<&'a str>,
    cgroup: Option<&'a str>,
    label: Option<&'a str>,
    sender_proof: &'static str,
    /// The kernel withheld the exe and namespaces from the broker.
    facts_withheld: bool,
}

impl<'a> From<&'a PeerInfo> for PeerView<'a> {
    fn from(peer: &'a PeerInfo) -> Self {
        let i = &peer.identity;
        PeerView {
            id: peer.id.to_string(),
            pid: i.pid,
            uid: i.uid,
            gid: i.gid,
            groups: &i.groups,
            pidfs_id: i.pidfs_id,
            start_time: i.start_time,
            boot_id: &i.boot_id,
            exe: i.exe.as_deref(),
            exe_unverified: i.exe_unverified.as_deref(),
            unit: i.unit.as_deref(),
            user_unit: i.user_unit.as_deref(),
            cgroup: i.cgroup.as_deref(),
            label: i.label.as_deref(),
            sender_proof: sender_proof(i),
            facts_withheld: i.facts_withheld,
        }
    }
}

/// `authorize`'s answer: the verdict and the rule that decided.
pub fn print_authorization(
    out: &mut impl Write,
    answer: &pidbus::Authorization,
    as_json: bool,
) -> std::io::Result<()> {
    if as_json {
        let value = serde_json::json!({"allowed": answer.allowed, "rule": answer.rule});
        writeln!(out, "{value}")
    } else {
        let verdict = if answer.allowed { "allowed" } else { "denied" };
        let verdict = Style::stdout().verdict(answer.allowed, verdict);
        writeln!(out, "{verdict} ({})", answer.rule)
    }
}

/// What `pidfd` and `wait` print about a process.
#[derive(Debug, Serialize)]
pub struct ProcessView {
    target: String,
    peer: Option<String>,
    pid: Option<u32>,
    pidfs_id: Option<u64>,
    alive: bool,
    exited: bool,
    reaped: bool,
    code: Option<i32>,
    signal: Option<i32>,
}

impl ProcessView {
    pub fn new(target: &str, pidfd: &PidFd, pid: Option<u32>, state: ProcessState) -> Self {
        let status = match state {
            ProcessState::Reaped(status) => status,
            ProcessState::Running | ProcessState::Exited => None,
        };
        ProcessView {
            target: target.to_owned(),
            peer: pidfd.peer().map(|p| p.to_string()),
            pid,
            pidfs_id: pidfd.pidfs_id(),
            alive: state == ProcessState::Running,
            exited: state != ProcessState::Running,
            reaped: matches!(state, ProcessState::Reaped(_)),
            code: status.and_then(ExitStatus::code),
            signal: status.and_then(ExitStatus::signal),
        }
    }

    pub fn print(&self, out: &mut impl Write, as_json: bool) -> AnyResult {
        if as_json {
            serde_json::to_writer(&mut *out, self)?;
            writeln!(out)?;
            return Ok(());
        }
        let how = match (self.alive, self.reaped, self.code, self.signal) {
            (true, ..) => "running".to_owned(),
            (false, _, Some(code), _) => format!("exited with code {code}"),
            (false, _, _, Some(signal)) => format!("killed by signal {signal}"),
            (false, false, ..) => {
                "exited; not reaped by its parent yet, so how it ended is not known".to_owned()
            }
            (false, true, ..) => "exited; the kernel cannot tell how it ended here".to_owned(),
        };
        writeln!(
            out,
            "{} (peer {}, pid {}, pidfs id {}): {how}",
            self.target,
            or_dash(self.peer.as_deref()),
            self.pid
                .map_or_else(|| "not visible here".to_owned(), |p| p.to_string()),
            or_dash(self.pidfs_id),
        )?;
        Ok(())
    }
}

/// A body as JSON: its arguments in an array, each as JSON says it best
/// (a dict with string keys as an object, a struct as an array, a variant
/// as its value); a body that cannot be read is shown as
/// `{"undecodable": "<hex>", "signature": …}`.
pub fn body_json(signature: &str, body: &[u8]) -> Value {
    match unmarshal(signature, body) {
        Ok(values) => Value::Array(values.iter().map(value_json).collect()),
        Err(e) => {
            let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
            json!({ "undecodable": hex, "signature": signature, "error": e.to_string() })
        }
    }
}

fn value_json(value: &DbusValue) -> Value {
    match value {
        DbusValue::Byte(v) => json!(v),
        DbusValue::Bool(v) => json!(v),
        DbusValue::Int16(v) => json!(v),
        DbusValue::UInt16(v) => json!(v),
        DbusValue::Int32(v) => json!(v),
        DbusValue::UInt32(v) | DbusValue::UnixFd(v) => json!(v),
        DbusValue::Int64(v) => json!(v),
        DbusValue::UInt64(v) => json!(v),
        DbusValue::Double(v) => json!(v),
        DbusValue::String(v) | DbusValue::ObjectPath(v) | DbusValue::Signature(v) => json!(v),
        DbusValue::Variant(inner) => value_json(inner),
        DbusValue::Array { element, items }
            if element.starts_with("{s") || element.starts_with("{o") =>
        {
            let map = items
                .iter()
                .filter_map(|item| match item {
                    DbusValue::DictEntry(k, v) => Some((k.as_str()?.to_owned(), value_json(v))),
                    _ => None,
                })
                .collect();
            Value::Object(map)
        }
        DbusValue::Array { items, .. } => Value::Array(items.iter().map(value_json).collect()),
        DbusValue::Struct(fields) => Value::Array(fields.iter().map(value_json).collect()),
        DbusValue::DictEntry(k, v) => json!([value_json(k), value_json(v)]),
    }
}

/// A body as `busctl` prints one: the signature, then each value as
/// `busctl call` would take it (strings quoted).
pub fn body_text(signature: &str, body: &[u8]) -> String {
    match unmarshal(signature, body) {
        Ok(values) => {
            let mut words = vec![signature.to_owned()];
            for value in &values {
                value_words(value, &mut words);
            }
            words.join(" ")
        }
        Err(e) => format!("(undecodable body of signature {signature:?}: {e})"),
    }
}

fn value_words(value: &DbusValue, words: &mut Vec<String>) {
    match value {
        DbusValue::String(s) | DbusValue::ObjectPath(s) | DbusValue::Signature(s) => {
            words.push(format!("{s:?}"));
        }
        DbusValue::Variant(inner) => {
            words.push(inner.signature());
            value_words(inner, words);
        }
        DbusValue::Array { items, .. } => {
            words.push(items.len().to_string());
            for item in items {
                value_words(item, words);
            }
        }
        DbusValue::Struct(fields) => fields.iter().for_each(|f| value_words(f, words)),
        DbusValue::DictEntry(k, v) => {
            value_words(k, words);
            value_words(v, words);
        }
        DbusValue::Bool(v) => words.push(v.to_string()),
        DbusValue::Byte(v) => words.push(v.to_string()),
        DbusValue::Int16(v) => words.push(v.to_string()),
        DbusValue::UInt16(v) => words.push(v.to_string()),
        DbusValue::Int32(v) => words.push(v.to_string()),
        DbusValue::UInt32(v) | DbusValue::UnixFd(v) => words.push(v.to_string()),
        DbusValue::Int64(v) => words.push(v.to_string()),
        DbusValue::UInt64(v) => words.push(v.to_string()),
        DbusValue::Double(v) => words.push(v.to_string()),
    }
}

/// A delivered message as one line of text, for `monitor`: its kind,
/// sender → destination, what it is, the serial that pairs a call with its
/// answer, and its body as busctl prints one.
/// One signal as a line: `signal FROM → TO PATH INTERFACE.MEMBER ARGS`
/// (`TO` is `*` for a broadcast), as `monitor` and `listen` print it.
pub fn signal_text(
    from: &str,
    to: &str,
    [path, interface, member]: [&str; 3],
    signature: &str,
    body: &[u8],
) -> String {
    format!(
        "signal {from} → {to} {path} {interface}.{member} {}",
        body_text(signature, body)
    )
}

pub fn message_text(copy: &pidbus::Monitored) -> String {
    let from = copy
        .sender
        .map_or_else(|| "org.freedesktop.DBus".to_owned(), |s| s.to_string());
    let to = copy
        .destination
        .map_or_else(|| "*".to_owned(), |d| d.to_string());
    match &*copy.message {
        Message::Incoming(call) => format!(
            "call   {from} → {} {} {}.{} serial={} {}",
            call.destination,
            call.path,
            call.interface,
            call.member,
            call.caller_serial,
            body_text(&call.signature, &call.body)
        ),
        Message::Return(answer) => format!(
            "return {from} → {to} reply_serial={} {}",
            answer.reply_to,
            body_text(&answer.signature, &answer.body)
        ),
        Message::Error(error) => format!(
            "error  {from} → {to} reply_serial={} {}: {}",
            error
                .reply_to
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            error
                .name
                .clone()
                .unwrap_or_else(|| format!("{:?}", error.code)),
            error.message
        ),
        Message::Signal(signal) => signal_text(
            &from,
            &to,
            [&signal.path, &signal.interface, &signal.member],
            &signal.signature,
            &signal.body,
        ),
        Message::Event(event) => {
            let what = match event {
                pidbus::BusEvent::NameAcquired { name } => format!("NameAcquired {name}"),
                pidbus::BusEvent::NameLost { name } => format!("NameLost {name}"),
                pidbus::BusEvent::NameOwnerChanged {
                    name,
                    old_owner,
                    new_owner,
                } => format!(
                    "NameOwnerChanged {name} {} → {}",
                    or_dash(*old_owner),
                    or_dash(*new_owner)
                ),
            };
            format!("event  → {to} {what}")
        }
        other => format!("{}   {from} → {to}", other.kind()),
    }
}

/// A delivered message as one JSON object, for `monitor`.
pub fn message_json(message: &Message) -> Value {
    match message {
        Message::Incoming(call) => json!({
            "type": "call",
            "call_id": call.call_id,
            "caller": call.caller,
            "path": call.path,
            "interface": call.interface,
            "member": call.member,
            "no_reply": call.no_reply,
            "caller_serial": call.caller_serial,
            "signature": call.signature,
            "body": body_json(&call.signature, &call.body),
        }),
        Message::Return(answer) => json!({
            "type": "return",
            "reply_to": answer.reply_to,
            "signature": answer.signature,
            "body": body_json(&answer.signature, &answer.body),
        }),
        Message::Error(error) => json!({
            "type": "error",
            "reply_to": error.reply_to,
            "code": format!("{:?}", error.code),
            "name": error.name,
            "message": error.message,
        }),
        Message::Signal(signal) => json!({
            "type": "signal",
            "path": signal.path,
            "interface": signal.interface,
            "member": signal.member,
            "signature": signal.signature,
            "body": body_json(&signal.signature, &signal.body),
        }),
        Message::Event(event) => json!({ "type": "event", "event": event }),
        other => json!({ "type": other.kind() }),
    }
}

/// How far the broker can prove who sent each of the peer's messages.
fn sender_proof(identity: &pidbus::ProcessIdentity) -> &'static str {
    match identity.sender_proof_forgeable {
        true => "forgeable",
        false => "kernel",
    }
}

/// A value, or `-` when there is none.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One peer's identity, one `key  value` line per field.
pub fn print_identity(out: &mut impl Write, peer: &PeerInfo) -> std::io::Result<()> {
    let i = &peer.identity;
    let groups: Vec<String> = i.groups.iter().map(u32::to_string).collect();
    let rows = [
        ("id", peer.id.to_string()),
        ("pid", i.pid.to_string()),
        ("uid", i.uid.to_string()),
        ("gid", i.gid.to_string()),
        (
            "groups",
            if groups.is_empty() {
                "-".to_owned()
            } else {
                groups.join(",")
            },
        ),
        ("pidfs_id", or_dash(i.pidfs_id)),
        ("start_time", or_dash(i.start_time)),
        ("boot_id", i.boot_id.clone()),
        ("exe", or_dash(i.exe.as_deref())),
        ("exe_unverified", or_dash(i.exe_unverified.as_deref())),
        ("unit", or_dash(i.unit.as_deref())),
        ("user_unit", or_dash(i.user_unit.as_deref())),
        ("cgroup", or_dash(i.cgroup.as_deref())),
        ("label", or_dash(i.label.as_deref())),
        ("sender_proof", sender_proof(i).to_owned()),
        (
            "facts",
            if i.facts_withheld {
                "exe and namespaces withheld from the broker (it lacks CAP_SYS_PTRACE)".to_owned()
            } else {
                "all read".to_owned()
            },
        ),
    ];
    let style = Style::stdout();
    for (key, value) in rows {
        writeln!(out, "{}  {value}", style.header(&format!("{key:<14}")))?;
    }
    Ok(())
}

/// Peers as a table, one row each.
pub fn print_peer_table(out: &mut impl Write, peers: &[PeerInfo]) -> std::io::Result<()> {
    let header = ["ID", "PID", "UID", "GID", "PIDFS_ID", "UNIT", "EXE"];
    let rows: Vec<[String; 7]> = peers
        .iter()
        .map(|p| {
            let i = &p.identity;
            [
                p.id.to_string(),
                i.pid.to_string(),
                i.uid.to_string(),
                i.gid.to_string(),
                or_dash(i.pidfs_id),
                or_dash(i.unit.as_deref()),
                or_dash(i.exe.as_deref()),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    print_table(out, &header, &rows)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Padded before painting: escape codes take no room on screen.
    let pad = |row: &[String]| -> String {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        cells.join("  ").trim_end().to_owned()
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    writeln!(out, "{}", Style::stdout().header(&pad(&header)))?;
    for row in rows {
        writeln!(out, "{}", pad(row))?;
    }
    Ok(())
}
