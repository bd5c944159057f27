//! Names on the bus and the rules they follow: well-known names, object
//! paths, interface and member names, and destinations.
//!
//! The rules are D-Bus's, so names carry over unchanged from a D-Bus service:
//!
//! - a **well-known name** is reverse-DNS: at least two elements separated by
//!   `.`, each made of `[A-Za-z0-9_-]` and not starting with a digit, at most
//!   255 bytes (`org.example.Music`);
//! - an **interface** follows the same rules without `-`;
//! - a **member** (method or signal name) is one element of `[A-Za-z0-9_]`,
//!   not starting with a digit, at most 255 bytes;
//! - an **object path** is `/` or `/`-separated elements of `[A-Za-z0-9_]`,
//!   with no empty element and no trailing `/` (`/org/example/Player`).
//!
//! A unique id (`:1.17`) names one connection; see [`Destination`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::message::PeerId;

/// Longest name of any kind, in bytes (as in D-Bus).
pub const MAX_NAME_LEN: usize = 255;

/// A name or path broke the naming rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    /// What was being checked ("well-known name", "object path", …).
    pub kind: &'static str,
    /// The offending text (truncated to a readable length).
    pub value: String,
    /// Which rule it broke.
    pub reason: String,
}

impl NameError {
    fn new(kind: &'static str, value: &str, reason: impl Into<String>) -> Self {
        NameError {
            kind,
            value: value.chars().take(80).collect(),
            reason: reason.into(),
        }
    }
}

/// Checks a well-known name such as `org.example.Music`.
pub fn validate_well_known_name(name: &str) -> Result<(), NameError> {
    const KIND: &str = "well-known name";
    if name.starts_with(':') {
        return Err(NameError::new(
            KIND,
            name,
            "names starting with ':' are unique ids, assigned by the broker",
        ));
    }
    validate_dotted(KIND, name, true)
}

/// Checks a bus name of either kind: a unique name (`:1.17`, whose
/// elements may start with a digit) or a well-known name.
pub fn validate_bus_name(name: &str) -> Result<(), NameError> {
    const KIND: &str = "bus name";
    match name.strip_prefix(':') {
        Some(rest) => {
            check_length(KIND, name)?;
            if !rest.contains('.') || rest.split('.').any(str::is_empty) {
                return Err(NameError::new(
                    KIND,
                    name,
                    "a unique name is ':' and at least two non-empty elements (':1.17')",
                ));
            }
            let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.';
            if let Some(c) = first_not(rest, allowed) {
                return Err(NameError::new(KIND, name, format!("{c:?} is not allowed")));
            }
            Ok(())
        }
        None => validate_well_known_name(name),
    }
}

/// Checks an error name such as `org.freedesktop.DBus.Error.Failed` (the
/// rules of interface names).
pub fn validate_error_name(name: &str) -> Result<(), NameError> {
    validate_dotted("error name", name, false)
}

/// Checks an interface name such as `org.example.Player`.
pub fn validate_interface(name: &str) -> Result<(), NameError> {
    validate_dotted("interface name", name, false)
}

/// Checks a member (method or signal) name such as `Play`.
pub fn validate_member(name: &str) -> Result<(), NameError> {
    const KIND: &str = "member name";
    check_length(KIND, name)?;
    validate_element(KIND, name, false)
}

/// Checks an object path such as `/org/example/Player`.
pub fn validate_object_path(path: &str) -> Result<(), NameError> {
    const KIND: &str = "object path";
    check_length_limit(KIND, path, usize::from(u16::MAX))?;
    let Some(rest) = path.strip_prefix('/') else {
        return Err(NameError::new(KIND, path, "it must start with '/'"));
    };
    if rest.is_empty() {
        return Ok(());
    }
    for element in rest.split('/') {
        if element.is_empty() {
            return Err(NameError::new(
                KIND,
                path,
                "it has an empty element ('//' or a trailing '/')",
            ));
        }
        if let Some(c) = first_not(element, |b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(NameError::new(
                KIND,
                path,
                format!("{c:?} is not allowed; use A-Z, a-z, 0-9 and _"),
            ));
        }
    }
    Ok(())
}

fn check_length(kind: &'static str, name: &str) -> Result<(), NameError> {
    check_length_limit(kind, name, MAX_NAME_LEN)
}

fn check_length_limit(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::new(kind, name, "it is empty"));
    }
    if name.len() > max {
        return Err(NameError::new(
            kind,
            name,
            format!("it is {} bytes long; the limit is {max}", name.len()),
        ));
    }
    Ok(())
}

fn validate_dotted(kind: &'static str, name: &str, allow_dash: bool) -> Result<(), NameError> {
    check_length(kind, name)?;
    if !name.contains('.') {
        return Err(NameError::new(
            kind,
            name,
            "it needs at least two elements separated by '.' (reverse DNS, e.g. org.example.App)",
        ));
    }
    for element in name.split('.') {
        if element.is_empty() {
            return Err(NameError::new(
                kind,
                name,
                "it has an empty element ('..', or a leading or trailing '.')",
            ));
        }
        validate_element(kind, element, allow_dash).map_err(|e| NameError {
            value: name.chars().take(80).collect(),
            ..e
        })?;
    }
    Ok(())
}

fn validate_element(kind: &'static str, element: &str, allow_dash: bool) -> Result<(), NameError> {
    if element.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(NameError::new(
            kind,
            element,
            format!("element {element:?} starts with a digit"),
        ));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || (allow_dash && b == b'-');
    if let Some(c) = first_not(element, allowed) {
        let set = if allow_dash {
            "A-Z, a-z, 0-9, _ and -"
        } else {
            "A-Z, a-z, 0-9 and _"
        };
        return Err(NameError::new(
            kind,
            element,
            format!("{c:?} is not allowed; use {set}"),
        ));
    }
    Ok(())
}

/// The first character of `text` whose byte `allowed` refuses. Names are
/// checked byte by byte (every allowed character is ASCII, so the first
/// byte refused starts a character): a name is checked in every message
/// header, and this allocates nothing and decodes no UTF-8.
fn first_not(text: &str, allowed: impl Fn(u8) -> bool) -> Option<char> {
    let at = text.bytes().position(|b| !allowed(b))?;
    text.get(at..).and_then(|rest| rest.chars().next())
}

/// Where a call or a unicast signal goes: one connection by its unique id,
/// or whoever currently owns a well-known name.
///
/// Text form: `:1.17` or `org.example.Music`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Destination {
    /// A connection by unique id.
    Unique(PeerId),
    /// The primary owner of a well-known name.
    Name(String),
}

impl Destination {
    /// Checks the name rules (a unique id is always well-formed).
    pub fn validate(&self) -> Result<(), NameError> {
        match self {
            Destination::Unique(_) => Ok(()),
            Destination::Name(name) => validate_well_known_name(name),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Unique(id) => id.fmt(f),
            Destination::Name(name) => f.write_str(name),
        }
    }
}

impl FromStr for Destination {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(':') {
            Some(_) => s
                .parse()
                .map(Destination::Unique)
                .map_err(|_| NameError::new("unique id", s, "expected ':1.' followed by a number")),
            None => {
                validate_well_known_name(s)?;
                Ok(Destination::Name(s.to_owned()))
            }
        }
    }
}

impl From<PeerId> for Destination {
    fn from(id: PeerId) -> Self {
        Destination::Unique(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_names_follow_reverse_dns_rules() {
        for good in ["org.example.Music", "a.b", "org.pidbus-test._x9", "A_.B-"] {
            assert_eq!(validate_well_known_name(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("org", "at least two elements"),
            ("", "empty"),
            ("org..x", "empty element"),
            (".org.x", "empty element"),
            ("org.x.", "empty element"),
            ("org.9x", "starts with a digit"),
            ("org.ex ample", "' ' is not allowed"),
            (":1.5", "unique ids"),
            ("org.é.x", "is not allowed"),
        ] {
            let err = validate_well_known_name(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let long = format!("org.{}", "x".repeat(300));
        assert!(
            validate_well_known_name(&long)
                .unwrap_err()
                .to_string()
                .contains("limit is 255")
        );
    }

    #[test]
    fn interfaces_members_and_paths() {
        assert!(validate_interface("org.example.Player").is_ok());
        assert!(validate_interface("org.example-x.Player").is_err());
        assert!(validate_member("Play_2").is_ok());
        assert!(validate_member("Play.Now").is_err());
        assert!(validate_member("2Play").is_err());
        assert!(validate_object_path("/").is_ok());
        assert!(validate_object_path("/org/example/Player_1").is_ok());
        for bad in ["", "org", "/org/", "//", "/org//x", "/org/ex-ample"] {
            assert!(validate_object_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_character_refused_is_named_whole_even_when_not_ascii() {
        let reason = |r: Result<(), NameError>| r.expect_err("refused").reason;
        assert!(reason(validate_interface("org.exämple.Player")).contains("'ä'"));
        assert!(reason(validate_member("Play✓")).contains("'✓'"));
        assert!(reason(validate_object_path("/org/ex ample")).contains("' '"));
        assert!(reason(validate_bus_name(":1.é")).contains("'é'"));
    }

    #[test]
    fn destinations_parse_and_print() {
        assert_eq!(":1.17".parse(), Ok(Destination::Unique(PeerId(17))));
        assert!(":17".parse::<Destination>().is_err());
        assert!(":2.17".parse::<Destination>().is_err());
        assert_eq!(validate_bus_name(":1.17"), Ok(()));
        assert!(validate_bus_name(":17").is_err());
        assert!(validate_bus_name(":1.").is_err());
        assert_eq!(
            "org.example.Music".parse(),
            Ok(Destination::Name("org.example.Music".into()))
        );
        assert!(":x".parse::<Destination>().is_err());
        assert!("nodots".parse::<Destination>().is_err());
        assert_eq!(Destination::Unique(PeerId(3)).to_string(), ":1.3");
    }
}
