//! D-Bus service files: the `.service` files that say which program
//! provides a well-known name, so the bus can start it when the name is
//! first called (the D-Bus specification's "Message Bus Starting
//! Services"). Read from directories, the first directory naming a
//! service winning, as dbus-daemon and dbus-broker do.
//!
//! ```text
//! [D-BUS Service]
//! Name=org.example.Echo
//! Exec=/usr/libexec/echo-service --bus
//! User=echo
//! SystemdService=echo.service
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pidbus_protocol::names as naming;
use tracing::warn;

use crate::bus::BusKind;

/// One service the bus can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFile {
    /// The well-known name it provides.
    pub name: String,
    /// The program and its arguments (`Exec=`, split as a shell would
    /// split it, without expansion).
    pub exec: Vec<String>,
    /// Who it runs as (`User=`; the broker's own user when absent).
    pub user: Option<String>,
    /// The systemd unit that provides it (`SystemdService=`).
    pub systemd_service: Option<String>,
    /// The file it came from.
    pub path: PathBuf,
}

/// Why a service file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceFileError {
    /// The file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is wrong at this line.
    #[error("{path}:{line}: {message}")]
    At {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file as a whole is wrong (a key missing, a name not matching).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The group holding a service's keys.
const GROUP: &str = "D-BUS Service";

impl ServiceFile {
    /// Parses the text of the file at `path`. On the system bus the file
    /// must be named after the service (`NAME.service`), as dbus-daemon's
    /// launch helper requires, so a file cannot claim a name it is not
    /// listed under.
    pub fn parse(path: &Path, text: &str, kind: BusKind) -> Result<Self, ServiceFileError> {
        let shown = path.display().to_string();
        let keys = read_group(&shown, text)?;
        let invalid = |message: String| ServiceFileError::Invalid {
            path: shown.clone(),
            message,
        };
        let name = keys
            .get("Name")
            .cloned()
            .ok_or_else(|| invalid(format!("no Name= in [{GROUP}]")))?;
        naming::validate_well_known_name(&name)
            .map_err(|e| invalid(format!("Name={name} is not a well-known bus name: {e}")))?;
        let exec_line = keys
            .get("Exec")
            .ok_or_else(|| invalid(format!("no Exec= in [{GROUP}]")))?;
        let exec = split_command_line(exec_line).map_err(|e| invalid(format!("Exec=: {e}")))?;
        if exec.is_empty() {
            return Err(invalid("Exec= names no program".to_owned()));
        }
        if kind == BusKind::System {
            let expected = format!("{name}.service");
            if path.file_name().and_then(|f| f.to_str()) != Some(expected.as_str()) {
                return Err(invalid(format!(
                    "on the system bus the file providing {name} must be named {expected}"
                )));
            }
        }
        Ok(ServiceFile {
            name,
            exec,
            user: keys.get("User").cloned(),
            systemd_service: keys.get("SystemdService").cloned(),
            path: path.to_owned(),
        })
    }
}

/// The keys of the `[D-BUS Service]` group (other groups are skipped, as
/// desktop-entry readers do).
fn read_group(path: &str, text: &str) -> Result<BTreeMap<String, String>, ServiceFileError> {
    let mut keys = BTreeMap::new();
    let mut group: Option<&str> = None;
    let mut seen_group = false;
    for (index, raw) in text.lines().enumerate() {
        let at = |message: String| ServiceFileError::At {
            path: path.to_owned(),
            line: index + 1,
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| at(format!("unterminated group header {line:?}")))?;
            if name == GROUP && seen_group {
                return Err(at(format!("a second [{GROUP}] group")));
            }
            seen_group |= name == GROUP;
            group = Some(name);
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| at(format!("expected KEY=VALUE, found {line:?}")))?;
        match group {
            None => return Err(at(format!("{key}= comes before the [{GROUP}] group"))),
            Some(GROUP) => {
                let key = key.trim();
                if keys
                    .insert(key.to_owned(), value.trim().to_owned())
                    .is_some()
                {
                    return Err(at(format!("{key}= is given twice")));
                }
            }
            Some(_) => {}
        }
    }
    if !seen_group {
        return Err(ServiceFileError::Invalid {
            path: path.to_owned(),
            message: format!("no [{GROUP}] group"),
        });
    }
    Ok(keys)
}

/// Splits a command line into words the way a POSIX shell would, without
/// expanding anything: `'…'` keeps everything, `"…"` keeps everything but
/// `\"`, `\\`, `\$` and `` \` ``, and a backslash outside quotes keeps the
/// next character.
pub fn split_command_line(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".to_owned()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".to_owned()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".to_owned()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("a backslash at the end of the line".to_owned()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The directories a bus of `kind` reads service files from when none
/// are configured, in order of precedence, as dbus-daemon's defaults
/// (the session bus after the XDG base directory specification).
pub fn default_directories(kind: BusKind) -> Vec<PathBuf> {
    match kind {
        BusKind::System => [
            "/usr/local/share/dbus-1/system-services",
            "/usr/share/dbus-1/system-services",
            "/lib/dbus-1/system-services",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
        BusKind::Session => {
            let home = std::env::var_os("HOME").map(PathBuf::from);
            let data_home = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| home.map(|h| h.join(".local/share")));
            let data_dirs = std::env::var("XDG_DATA_DIRS")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "/usr/local/share:/usr/share".to_owned());
            let mut dirs: Vec<PathBuf> = data_home.into_iter().collect();
            dirs.extend(
                data_dirs
                    .split(':')
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute()),
            );
            dirs.iter().map(|d| d.join("dbus-1/services")).collect()
        }
    }
}

/// Every usable service file in `directories`, by name: a name found in
/// an earlier directory (or earlier in one, by file name) wins. A file
/// that cannot be used is logged and skipped, never fatal: one broken
/// package must not take every other service's activation with it. A
/// directory that does not exist is no error.
pub fn load(directories: &[PathBuf], kind: BusKind) -> BTreeMap<String, ServiceFile> {
    let mut services = BTreeMap::new();
    for directory in directories {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(directory) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "service"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!(directory = %directory.display(), error = %e, "cannot read a service directory");
                continue;
            }
        };
        files.sort();
        for path in files {
            match read(&path, kind) {
                Ok(service) => {
                    if let Some(earlier) = services.get(&service.name) {
                        let earlier: &ServiceFile = earlier;
                        warn!(
                            name = %service.name,
                            file = %path.display(),
                            used = %earlier.path.display(),
                            "service file ignored: an earlier file provides the same name"
                        );
                        continue;
                    }
                    services.insert(service.name.clone(), service);
                }
                Err(e) => warn!(error = %e, "service file ignored"),
            }
        }
    }
    services
}

fn read(path: &Path, kind: BusKind) -> Result<ServiceFile, ServiceFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ServiceFileError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    ServiceFile::parse(path, &text, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceFile, ServiceFileError> {
        ServiceFile::parse(
            Path::new("/d/org.example.Echo.service"),
            text,
            BusKind::System,
        )
    }

    #[test]
    fn a_complete_file_gives_every_key() {
        let service = parse(
            "# comment\n[D-BUS Service]\nName=org.example.Echo\nExec=/bin/echo-svc --flag 'two words'\nUser=nobody\nSystemdService=echo.service\n\n[Other]\nName=ignored\n",
        )
        .unwrap();
        assert_eq!(service.name, "org.example.Echo");
        assert_eq!(service.exec, ["/bin/echo-svc", "--flag", "two words"]);
        assert_eq!(service.user.as_deref(), Some("nobody"));
        assert_eq!(service.systemd_service.as_deref(), Some("echo.service"));
    }

    #[test]
    fn missing_keys_bad_names_and_misnamed_system_files_are_refused() {
        let no_exec = parse("[D-BUS Service]\nName=org.example.Echo\n").unwrap_err();
        assert!(no_exec.to_string().contains("no Exec="), "{no_exec}");
        let no_name = parse("[D-BUS Service]\nExec=/bin/true\n").unwrap_err();
        assert!(no_name.to_string().contains("no Name="), "{no_name}");
        let bad = parse("[D-BUS Service]\nName=not a name\nExec=/bin/true\n").unwrap_err();
        assert!(bad.to_string().contains("not a well-known"), "{bad}");
        let misnamed =
            parse("[D-BUS Service]\nName=org.example.Other\nExec=/bin/true\n").unwrap_err();
        assert!(misnamed.to_string().contains("must be named"), "{misnamed}");
        let twice = parse("[D-BUS Service]\nName=a.b\nName=a.c\nExec=/bin/true\n").unwrap_err();
        assert!(
            matches!(twice, ServiceFileError::At { line: 3, .. }),
            "{twice}"
        );
        let no_group = parse("Name=org.example.Echo\n").unwrap_err();
        assert!(no_group.to_string().contains("before the"), "{no_group}");
    }

    #[test]
    fn a_session_file_may_be_named_freely() {
        let service = ServiceFile::parse(
            Path::new("/d/echo.service"),
            "[D-BUS Service]\nName=org.example.Echo\nExec=/bin/true\n",
            BusKind::Session,
        )
        .unwrap();
        assert_eq!(service.user, None);
    }

    #[test]
    fn command_lines_split_as_a_shell_splits_them() {
        let split = |s: &str| split_command_line(s).unwrap();
        assert_eq!(split("  a  b\tc "), ["a", "b", "c"]);
        assert_eq!(
            split(r#"a "b \"c\" \n" 'd $e' f\ g"#),
            ["a", r#"b "c" \n"#, "d $e", "f g"]
        );
        assert_eq!(split("''"), [""]);
        assert!(split_command_line("'open").is_err());
        assert!(split_command_line("\"open").is_err());
        assert!(split_command_line("end\\").is_err());
    }

    #[test]
    fn the_first_directory_providing_a_name_wins_and_broken_files_are_skipped() {
        let root = std::env::temp_dir().join(format!("pidbus-services-{}", std::process::id()));
        let (first, second) = (root.join("first"), root.join("second"));
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        let write =
            |dir: &Path, file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
        write(
            &first,
            "a.service",
            "[D-BUS Service]\nName=org.example.A\nExec=/bin/first\n",
        );
        write(
            &first,
            "broken.service",
            "[D-BUS Service]\nName=org.example.B\n",
        );
        write(
            &first,
            "notes.txt",
            "[D-BUS Service]\nName=org.example.C\nExec=/bin/c\n",
        );
        write(
            &second,
            "a.service",
            "[D-BUS Service]\nName=org.example.A\nExec=/bin/second\n",
        );
        write(
            &second,
            "b.service",
            "[D-BUS Service]\nName=org.example.B\nExec=/bin/b\n",
        );
        let services = load(&[first, root.join("absent"), second], BusKind::Session);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            services.keys().collect::<Vec<_>>(),
            ["org.example.A", "org.example.B"]
        );
        assert_eq!(services["org.example.A"].exec, ["/bin/first"]);
        assert_eq!(services["org.example.B"].exec, ["/bin/b"]);
    }
}
