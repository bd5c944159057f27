//! D-Bus error names and the bus's error codes, both ways.

use crate::message::{ErrorCode, ErrorReply};

/// `org.freedesktop.DBus.Error.` and a name.
macro_rules! dbus_error {
    ($name:literal) => {
        concat!("org.freedesktop.DBus.Error.", $name)
    };
}

/// The generic failure.
pub const FAILED: &str = dbus_error!("Failed");
/// Bad arguments to a method.
pub const INVALID_ARGS: &str = dbus_error!("InvalidArgs");
/// No such method.
pub const UNKNOWN_METHOD: &str = dbus_error!("UnknownMethod");
/// No such object.
pub const UNKNOWN_OBJECT: &str = dbus_error!("UnknownObject");
/// No such interface.
pub const UNKNOWN_INTERFACE: &str = dbus_error!("UnknownInterface");
/// No such property.
pub const UNKNOWN_PROPERTY: &str = dbus_error!("UnknownProperty");
/// A property that cannot be set.
pub const PROPERTY_READ_ONLY: &str = dbus_error!("PropertyReadOnly");
/// Nobody owns the name (driver queries).
pub const NAME_HAS_NO_OWNER: &str = dbus_error!("NameHasNoOwner");
/// Nobody owns the name and it cannot be activated (calls).
pub const SERVICE_UNKNOWN: &str = dbus_error!("ServiceUnknown");
/// A match rule that cannot be parsed.
pub const MATCH_RULE_INVALID: &str = dbus_error!("MatchRuleInvalid");
/// `RemoveMatch` of a rule the connection does not hold.
pub const MATCH_RULE_NOT_FOUND: &str = dbus_error!("MatchRuleNotFound");
/// The policy denies it.
pub const ACCESS_DENIED: &str = dbus_error!("AccessDenied");
/// A quota or limit refused it.
pub const LIMITS_EXCEEDED: &str = dbus_error!("LimitsExceeded");
/// A request this connection cannot make as it is set up.
pub const NOT_SUPPORTED: &str = dbus_error!("NotSupported");
/// No reply came (timeout, or the callee left).
pub const NO_REPLY: &str = dbus_error!("NoReply");
/// The process id of a connection is not known.
pub const UNIX_PROCESS_ID_UNKNOWN: &str = dbus_error!("UnixProcessIdUnknown");
/// No SELinux label.
pub const SELINUX_CONTEXT_UNKNOWN: &str = dbus_error!("SELinuxSecurityContextUnknown");
/// No audit data.
pub const ADT_AUDIT_DATA_UNKNOWN: &str = dbus_error!("AdtAuditDataUnknown");
/// A message was sent by a process other than the connection's.
pub const SENDER_MISMATCH: &str = "org.pidbus.Error.SenderMismatch";

/// The D-Bus error name a D-Bus peer is given for `error`: the service's
/// own name if it gave one, else the standard name of its code.
pub fn name_of(error: &ErrorReply) -> &str {
    if let Some(name) = &error.name {
        return name;
    }
    match error.code {
        ErrorCode::NoSuchName => SERVICE_UNKNOWN,
        ErrorCode::AccessDenied => ACCESS_DENIED,
        ErrorCode::Timeout | ErrorCode::PeerGone => NO_REPLY,
        ErrorCode::LimitsExceeded | ErrorCode::RecordTooLarge => LIMITS_EXCEEDED,
        ErrorCode::InvalidArgs | ErrorCode::InvalidName | ErrorCode::MalformedMessage => {
            INVALID_ARGS
        }
        ErrorCode::UnknownMethod => UNKNOWN_METHOD,
        ErrorCode::UnknownObject => dbus_error!("UnknownObject"),
        ErrorCode::UnknownInterface => UNKNOWN_INTERFACE,
        ErrorCode::SenderMismatch => SENDER_MISMATCH,
        _ => FAILED,
    }
}

/// The code of a D-Bus error name, for a native caller (the name itself
/// travels with it).
pub fn code_of(name: &str) -> ErrorCode {
    match name {
        SERVICE_UNKNOWN | NAME_HAS_NO_OWNER => ErrorCode::NoSuchName,
        ACCESS_DENIED => ErrorCode::AccessDenied,
        NO_REPLY | dbus_error!("Timeout") | dbus_error!("TimedOut") => ErrorCode::Timeout,
        LIMITS_EXCEEDED => ErrorCode::LimitsExceeded,
        INVALID_ARGS | dbus_error!("InvalidSignature") => ErrorCode::InvalidArgs,
        UNKNOWN_METHOD => ErrorCode::UnknownMethod,
        dbus_error!("UnknownObject") => ErrorCode::UnknownObject,
        UNKNOWN_INTERFACE => ErrorCode::UnknownInterface,
        SENDER_MISMATCH => ErrorCode::SenderMismatch,
        _ => ErrorCode::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip_for_the_standard_errors() {
        for code in [
            ErrorCode::NoSuchName,
            ErrorCode::AccessDenied,
            ErrorCode::Timeout,
            ErrorCode::LimitsExceeded,
            ErrorCode::InvalidArgs,
            ErrorCode::UnknownMethod,
            ErrorCode::UnknownObject,
            ErrorCode::UnknownInterface,
            ErrorCode::Failed,
        ] {
            let name = name_of(&ErrorReply::broker(None, code, "x")).to_owned();
            assert_eq!(code_of(&name), code, "{name}");
        }
        let named = ErrorReply {
            name: Some("org.example.Error.Sad".into()),
            ..ErrorReply::broker(None, ErrorCode::Failed, "x")
        };
        assert_eq!(name_of(&named), "org.example.Error.Sad");
    }
}
