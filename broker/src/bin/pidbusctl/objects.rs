//! What pidbusctl learns from a service's objects: introspection (read
//! here from its XML), the object tree, properties, and arguments given as
//! JSON checked against a method's introspected signature.

use std::io::Write;

use pidbus::MethodCall;
use pidbus::blocking::Connection;
use pidbus_protocol::dbus::value::{self, Value as DbusValue};
use serde_json::{Value, json};

use crate::output::{body_json, body_text, print_table};
use crate::{AnyResult, usage};

/// One member of an introspected interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `method`, `signal` or `property`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// A method's input types, a signal's arguments, a property's type.
    pub signature: String,
    /// A method's output types; a property's access.
    pub result: String,
}

/// An introspected interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Its name.
    pub name: String,
    /// Its methods, signals and properties, in document order.
    pub members: Vec<Member>,
}

/// An introspected object: its interfaces and child node names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Node {
    /// The interfaces.
    pub interfaces: Vec<InterfaceInfo>,
    /// Names of the child nodes.
    pub children: Vec<String>,
}

/// One tag of the XML: its name, attributes, whether it closes.
struct Tag<'a> {
    name: &'a str,
    attributes: Vec<(&'a str, String)>,
    closing: bool,
    empty: bool,
}

impl Tag<'_> {
    fn get(&self, key: &str) -> String {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// The tags of introspection XML, skipping comments, the doctype and text.
fn tags(xml: &str) -> impl Iterator<Item = Tag<'_>> {
    let mut rest = xml;
    std::iter::from_fn(move || {
        loop {
            let start = rest.find('<')?;
            let end = rest[start..].find('>')? + start;
            let inner = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if inner.starts_with('!') || inner.starts_with('?') {
                continue;
            }
            let closing = inner.starts_with('/');
            let empty = inner.ends_with('/');
            let inner = inner.trim_start_matches('/').trim_end_matches('/');
            let (name, mut attrs) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
            let mut attributes = Vec::new();
            while let Some(eq) = attrs.find('=') {
                let key = attrs[..eq].trim();
                let after = attrs[eq + 1..].trim_start();
                let quote = after.chars().next().unwrap_or('"');
                let Some(close) = after[1..].find(quote) else {
                    break;
                };
                attributes.push((key, unescape(&after[1..1 + close])));
                attrs = &after[close + 2..];
            }
            return Some(Tag {
                name,
                attributes,
                closing,
                empty,
            });
        }
    })
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Reads introspection XML.
pub fn parse(xml: &str) -> Node {
    let mut node = Node::default();
    let mut depth = 0usize;
    let mut member: Option<Member> = None;
    for tag in tags(xml) {
        match (tag.name, tag.closing) {
            ("node", false) => {
                if depth == 1 {
                    node.children.push(tag.get("name"));
                }
                if !tag.empty {
                    depth += 1;
                }
            }
            ("node", true) => depth = depth.saturating_sub(1),
            _ if depth != 1 => {}
            ("interface", false) => node.interfaces.push(InterfaceInfo {
                name: tag.get("name"),
                members: Vec::new(),
            }),
            ("method" | "signal", false) => {
                let kind = if tag.name == "method" {
                    "method"
                } else {
                    "signal"
                };
                let started = Member {
                    kind,
                    name: tag.get("name"),
                    signature: String::new(),
                    result: String::new(),
                };
                if tag.empty {
                    push_member(&mut node, started);
                } else {
                    member = Some(started);
                }
            }
            ("arg", false) => {
                if let Some(m) = member.as_mut() {
                    let out = tag.get("direction") == "out";
                    let target = if out { &mut m.result } else { &mut m.signature };
                    target.push_str(&tag.get("type"));
                }
            }
            ("method" | "signal", true) => {
                if let Some(m) = member.take() {
                    push_member(&mut node, m);
                }
            }
            ("property", false) => push_member(
                &mut node,
                Member {
                    kind: "property",
                    name: tag.get("name"),
                    signature: tag.get("type"),
                    result: tag.get("access"),
                },
            ),
            _ => {}
        }
    }
    node
}

fn push_member(node: &mut Node, member: Member) {
    if let Some(interface) = node.interfaces.last_mut() {
        interface.members.push(member);
    }
}

/// The introspection XML of `path` at `destination`.
pub fn introspect_xml(bus: &Connection, destination: &str, path: &str) -> AnyResult<String> {
    let call = MethodCall::new(
        destination,
        path,
        "org.freedesktop.DBus.Introspectable",
        "Introspect",
    )?;
    let (xml,): (String,) = bus.call_method(call)?.decode()?;
    Ok(xml)
}

/// `introspect DEST PATH [INTERFACE]`: members as busctl shows them, with
/// the current value of readable properties.
pub fn introspect(
    bus: &Connection,
    out: &mut impl Write,
    destination: &str,
    path: &str,
    only: Option<&str>,
    as_json: bool,
) -> AnyResult {
    let node = parse(&introspect_xml(bus, destination, path)?);
    let mut rows = Vec::new();
    let mut views = Vec::new();
    for interface in node
        .interfaces
        .iter()
        .filter(|i| only.is_none_or(|o| o == i.name))
    {
        rows.push(vec![
            interface.name.clone(),
            "interface".into(),
            "-".into(),
            "-".into(),
        ]);
        for member in &interface.members {
            let value = match member.kind {
                "property" if member.result.starts_with("read") => {
                    property_value(bus, destination, path, &interface.name, &member.name)
                }
                "method" => Some((member.result.clone(), Value::Null)),
                _ => None,
            };
            let shown = match (&value, member.kind) {
                (Some((text, _)), "property") => text.clone(),
                (Some((result, _)), _) if !result.is_empty() => result.clone(),
                _ => "-".into(),
            };
            rows.push(vec![
                format!(".{}", member.name),
                member.kind.into(),
                if member.signature.is_empty() {
                    "-".into()
                } else {
                    member.signature.clone()
                },
                shown,
            ]);
            views.push(json!({
                "interface": interface.name,
                "name": member.name,
                "type": member.kind,
                "signature": member.signature,
                "result": if member.kind == "property" { Value::Null } else { json!(member.result) },
                "access": if member.kind == "property" { json!(member.result) } else { Value::Null },
                "value": value.map(|(_, v)| v).unwrap_or(Value::Null),
            }));
        }
    }
    if as_json {
        serde_json::to_writer_pretty(&mut *out, &views)?;
        writeln!(out)?;
    } else {
        print_table(out, &["NAME", "TYPE", "SIGNATURE", "RESULT/VALUE"], &rows)?;
    }
    Ok(())
}

/// A property's value as busctl prints it (`s "hi"`) and as JSON.
fn property_value(
    bus: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    name: &str,
) -> Option<(String, Value)> {
    let (signature, body) = get_property_body(bus, destination, path, interface, name).ok()?;
    let text = body_text(&signature, &body);
    // busctl shows a property's value without its signature.
    let text = text
        .split_once(' ')
        .map_or(text.clone(), |(_, v)| v.to_owned());
    let json = body_json(&signature, &body)[0].clone();
    Some((text, json))
}

/// The variant's contents of property `name`: its signature and body.
fn get_property_body(
    bus: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    name: &str,
) -> AnyResult<(String, Vec<u8>)> {
    let call = MethodCall::new(destination, path, "org.freedesktop.DBus.Properties", "Get")?
        .args(&(interface, name))?;
    let reply = bus.call_method(call)?;
    let values = value::unmarshal(&reply.signature, &reply.body)?;
    let Some(DbusValue::Variant(inner)) = values.into_iter().next() else {
        return Err(format!("{interface}.{name}: Get did not return a variant").into());
    };
    Ok(value::marshal(&[*inner])?)
}

/// `get-property DEST PATH INTERFACE NAME…`.
pub fn get_property(
    bus: &Connection,
    out: &mut impl Write,
    destination: &str,
    path: &str,
    interface: &str,
    properties: &[String],
    as_json: bool,
) -> AnyResult {
    for name in properties {
        let (signature, body) = get_property_body(bus, destination, path, interface, name)?;
        if as_json {
            let value = &body_json(&signature, &body)[0];
            writeln!(
                out,
                "{}",
                json!({"name": name, "signature": signature, "value": value})
            )?;
        } else {
            writeln!(out, "{}", body_text(&signature, &body))?;
        }
    }
    Ok(())
}

/// `set-property DEST PATH INTERFACE NAME SIGNATURE VALUE…`.
pub fn set_property(
    bus: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    name: &str,
    words: &[String],
) -> AnyResult {
    let Some((signature, args)) = words.split_first() else {
        return Err(usage(
            "set-property needs the value's SIGNATURE and the value",
        ));
    };
    let values = value::parse_args(signature, args).map_err(|e| usage(e.to_string()))?;
    let [single] = <[DbusValue; 1]>::try_from(values).map_err(|_| {
        usage(format!(
            "a property holds one value; {signature:?} describes several"
        ))
    })?;
    let (sig, body) = value::marshal(&[
        DbusValue::string(interface),
        DbusValue::string(name),
        DbusValue::Variant(Box::new(single)),
    ])?;
    let call = MethodCall::new(destination, path, "org.freedesktop.DBus.Properties", "Set")?
        .body(&sig, body)?;
    bus.call_method(call)?;
    Ok(())
}

/// `tree DEST`: every object path below `/` the service's introspection
/// names, one a line (busctl's `tree --list`).
pub fn tree(bus: &Connection, out: &mut impl Write, destination: &str, as_json: bool) -> AnyResult {
    let mut paths = Vec::new();
    let mut todo = vec!["/".to_owned()];
    // Bounded: a service that names endless children is not walked forever.
    while let Some(path) = todo.pop().filter(|_| paths.len() < 10_000) {
        let node = match introspect_xml(bus, destination, &path) {
            Ok(xml) => parse(&xml),
            Err(_) if path != "/" => Node::default(),
            Err(e) => return Err(e),
        };
        for child in node.children.iter().rev() {
            let below = if path == "/" {
                format!("/{child}")
            } else {
                format!("{path}/{child}")
            };
            todo.push(below);
        }
        paths.push(path);
    }
    paths.sort();
    if as_json {
        serde_json::to_writer_pretty(&mut *out, &paths)?;
        writeln!(out)?;
    } else {
        for path in &paths {
            writeln!(out, "{path}")?;
        }
    }
    Ok(())
}

/// The input signature of method `member` of `interface` at `path`, from
/// the service's introspection.
pub fn method_signature(
    bus: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    member: &str,
) -> AnyResult<String> {
    let node = parse(&introspect_xml(bus, destination, path)?);
    node.interfaces
        .iter()
        .filter(|i| i.name == interface)
        .flat_map(|i| &i.members)
        .find(|m| m.kind == "method" && m.name == member)
        .map(|m| m.signature.clone())
        .ok_or_else(|| {
            format!("{destination} does not introspect a method {interface}.{member} at {path}")
                .into()
        })
}

/// Completion candidates: `names`, `paths DEST`, `interfaces DEST PATH`,
/// `members DEST PATH INTERFACE`.
pub fn candidates(bus: &Connection, words: &[&str]) -> AnyResult<Vec<String>> {
    Ok(match words {
        ["names"] if !crate::anybus::is_pidbus(bus) => {
            // Well-known names first, as on pidbus.
            let (mut names, unique): (Vec<String>, Vec<String>) = crate::anybus::list_names(bus)?
                .into_iter()
                .partition(|n| !n.starts_with(':'));
            names.extend(unique);
            names
        }
        ["names"] => {
            let mut names: Vec<String> = bus.names()?.into_iter().map(|n| n.name).collect();
            names.extend(bus.peers()?.into_iter().map(|p| p.id.to_string()));
            names
        }
        ["paths", destination] => {
            let mut out = Vec::new();
            tree(bus, &mut out, destination, false)?;
            String::from_utf8_lossy(&out)
                .lines()
                .map(str::to_owned)
                .collect()
        }
        ["interfaces", destination, path] => parse(&introspect_xml(bus, destination, path)?)
            .interfaces
            .into_iter()
            .map(|i| i.name)
            .collect(),
        ["members", destination, path, interface] => {
            parse(&introspect_xml(bus, destination, path)?)
                .interfaces
                .into_iter()
                .filter(|i| i.name == *interface)
                .flat_map(|i| i.members.into_iter().map(|m| m.name))
                .collect()
        }
        _ => {
            return Err(usage(
                "complete: names | paths DEST | interfaces DEST PATH | members DEST PATH INTERFACE",
            ));
        }
    })
}

/// JSON arguments (an array, one element per argument) as values of
/// `signature`, or an error naming the argument and type that do not fit.
pub fn json_args(signature: &str, json: &Value) -> AnyResult<Vec<DbusValue>> {
    let types = pidbus_protocol::dbus::signature::complete_types(signature)?;
    let items = match json {
        Value::Array(items) => items.clone(),
        other if types.len() == 1 => vec![other.clone()],
        _ => {
            return Err(format!(
                "the arguments must be a JSON array of {} values ({signature})",
                types.len()
            )
            .into());
        }
    };
    if items.len() != types.len() {
        return Err(format!(
            "the method takes {} arguments ({signature}); {} were given",
            types.len(),
            items.len()
        )
        .into());
    }
    types
        .iter()
        .zip(&items)
        .enumerate()
        .map(|(i, (kind, item))| {
            json_value(kind, item).map_err(|e| format!("argument {i} ({kind}): {e}").into())
        })
        .collect()
}

fn json_value(kind: &str, json: &Value) -> Result<DbusValue, String> {
    let wrong = || format!("{json} does not fit type '{kind}'");
    let int = |min: i128, max: i128| -> Result<i128, String> {
        let n = json
            .as_i64()
            .map(i128::from)
            .or_else(|| json.as_u64().map(i128::from))
            .ok_or_else(wrong)?;
        if n < min || n > max {
            return Err(format!("{n} is out of range for {kind}"));
        }
        Ok(n)
    };
    let code = kind.as_bytes()[0];
    Ok(match code {
        b'y' => DbusValue::Byte(int(0, 255)? as u8),
        b'b' => DbusValue::Bool(json.as_bool().ok_or_else(wrong)?),
        b'n' => DbusValue::Int16(int(i16::MIN.into(), i16::MAX.into())? as i16),
        b'q' => DbusValue::UInt16(int(0, u16::MAX.into())? as u16),
        b'i' => DbusValue::Int32(int(i32::MIN.into(), i32::MAX.into())? as i32),
        b'u' | b'h' => {
            let n = int(0, u32::MAX.into())? as u32;
            if code == b'h' {
                DbusValue::UnixFd(n)
            } else {
                DbusValue::UInt32(n)
            }
        }
        b'x' => DbusValue::Int64(int(i64::MIN.into(), i64::MAX.into())? as i64),
        b't' => DbusValue::UInt64(int(0, u64::MAX.into())? as u64),
        b'd' => DbusValue::Double(json.as_f64().ok_or_else(wrong)?),
        b's' => DbusValue::string(json.as_str().ok_or_else(wrong)?),
        b'o' => {
            let path = json.as_str().ok_or_else(wrong)?;
            pidbus_protocol::names::validate_object_path(path).map_err(|e| e.to_string())?;
            DbusValue::ObjectPath(path.to_owned())
        }
        b'g' => DbusValue::Signature(json.as_str().ok_or_else(wrong)?.to_owned()),
        b'v' => {
            return Err(
                "a variant cannot be given as JSON (its type is unknown); use SIGNATURE ARGS"
                    .into(),
            );
        }
        b'a' if kind.as_bytes().get(1) == Some(&b'{') => {
            let object = json.as_object().ok_or_else(wrong)?;
            let inner = &kind[2..kind.len() - 1];
            let key_kind = &inner[..1];
            let value_kind = &inner[1..];
            let items = object
                .iter()
                .map(|(k, v)| {
                    let key = match key_kind {
                        "s" | "o" | "g" => json_value(key_kind, &json!(k))?,
                        _ => json_value(
                            key_kind,
                            &serde_json::from_str(k)
                                .map_err(|_| format!("key {k:?} is not a {key_kind}"))?,
                        )?,
                    };
                    Ok(DbusValue::DictEntry(
                        Box::new(key),
                        Box::new(json_value(value_kind, v)?),
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            DbusValue::Array {
                element: format!("{{{inner}}}"),
                items,
            }
        }
        b'a' => {
            let element = &kind[1..];
            let items = json
                .as_array()
                .ok_or_else(wrong)?
                .iter()
                .map(|item| json_value(element, item))
                .collect::<Result<Vec<_>, String>>()?;
            DbusValue::Array {
                element: element.to_owned(),
                items,
            }
        }
        b'(' => {
            let fields = pidbus_protocol::dbus::signature::complete_types(&kind[1..kind.len() - 1])
                .map_err(|e| e.to_string())?;
            let items = json.as_array().ok_or_else(wrong)?;
            if items.len() != fields.len() {
                return Err(format!(
                    "{json} has {} fields; {kind} has {}",
                    items.len(),
                    fields.len()
                ));
            }
            DbusValue::Struct(
                fields
                    .iter()
                    .zip(items)
                    .map(|(f, item)| json_value(f, item))
                    .collect::<Result<Vec<_>, String>>()?,
            )
        }
        _ => return Err(format!("unsupported type {kind}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introspection_xml_is_read() {
        let xml = r#"<!DOCTYPE node PUBLIC "x" "y">
<node>
  <interface name="org.x.A">
    <method name="Add"><arg name="a" type="x" direction="in"/><arg type="x" direction="in"/><arg type="x" direction="out"/></method>
    <method name="Ping"/>
    <signal name="Changed"><arg type="a{sv}"/></signal>
    <property name="Count" type="u" access="read"/>
  </interface>
  <node name="child"/>
  <node name="other"><interface name="ignored"/></node>
</node>"#;
        let node = parse(xml);
        assert_eq!(node.children, ["child", "other"]);
        assert_eq!(node.interfaces.len(), 1);
        let members: Vec<(&str, &str, &str, &str)> = node.interfaces[0]
            .members
            .iter()
            .map(|m| {
                (
                    m.kind,
                    m.name.as_str(),
                    m.signature.as_str(),
                    m.result.as_str(),
                )
            })
            .collect();
        assert_eq!(
            members,
            [
                ("method", "Add", "xx", "x"),
                ("method", "Ping", "", ""),
                ("signal", "Changed", "a{sv}", ""),
                ("property", "Count", "u", "read"),
            ]
        );
    }

    #[test]
    fn json_arguments_follow_the_signature() {
        let values = json_args(
            "sxa{su}(ib)as",
            &json!(["a", -4, {"k": 7}, [1, true], ["x"]]),
        )
        .unwrap();
        let (sig, _) = value::marshal(&values).unwrap();
        assert_eq!(sig, "sxa{su}(ib)as");
        for (sig, args, why) in [
            ("u", json!([-1]), "out of range"),
            ("s", json!([1]), "does not fit type 's'"),
            ("ss", json!(["a"]), "takes 2 arguments"),
            ("y", json!([300]), "out of range"),
            ("(ii)", json!([[1]]), "has 1 fields"),
            ("v", json!([1]), "variant"),
        ] {
            let error = json_args(sig, &args).unwrap_err().to_string();
            assert!(error.contains(why), "{sig} {args}: {error}");
        }
    }
}
