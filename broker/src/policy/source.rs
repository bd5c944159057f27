//! Where a bus's policy comes from, and is read again from on reload: a
//! base — the file `--policy` names, or a policy compiled into the broker
//! — and drop-ins read after it, in file-name order, from directories.
//!
//! Drop-ins are how a policy is meant to change, as `system.d` is for
//! dbus-daemon: a package or an administrator adds a file beside the
//! built-in policy instead of copying all of it. A file in a later
//! directory replaces one of the same name in an earlier directory (the
//! administrator's `/etc` over the packages' `/usr/share`), and since the
//! last matching rule wins, a drop-in's rules override the base's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::file::Layer;
use super::{Policy, PolicyError};

/// The first of `paths` that exists.
fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The directories the system bus reads drop-ins from, in order.
pub const SYSTEM_DROP_INS: &[&str] = &["/usr/share/pidbus/system.d", "/etc/pidbus/system.d"];
/// The directories every session bus reads drop-ins from, in order (then
/// the user's own, `$XDG_CONFIG_HOME/pidbus/session.d`).
pub const SESSION_DROP_INS: &[&str] = &["/usr/share/pidbus/session.d", "/etc/pidbus/session.d"];

/// The policy's first layer.
#[derive(Debug, Clone)]
enum Base {
    /// A file (`--policy`).
    File(PathBuf),
    /// A policy compiled into the broker.
    BuiltIn {
        /// How it is named in rules' origins.
        name: &'static str,
        /// Its text.
        text: &'static str,
    },
}

/// Where a bus's policy comes from (and is re-read from on reload).
#[derive(Debug, Clone)]
pub struct PolicySource {
    base: Base,
    /// The D-Bus bus configuration whose XML `<policy>` rules come after
    /// the base (see [`super::xml`]).
    dbus_config: Option<PathBuf>,
    drop_in_dirs: Vec<PathBuf>,
}

impl PolicySource {
    /// The file at `path`, then its drop-ins in `PATH.d/*.toml`.
    pub fn file(path: PathBuf) -> Self {
        let mut dir = path.as_os_str().to_owned();
        dir.push(".d");
        PolicySource {
            base: Base::File(path),
            dbus_config: None,
            drop_in_dirs: vec![PathBuf::from(dir)],
        }
    }

    /// The shipped system policy (`pidbusd --system` without `--policy`),
    /// then the drop-ins of [`SYSTEM_DROP_INS`].
    pub fn system() -> Self {
        PolicySource {
            base: Base::BuiltIn {
                name: "built-in system policy",
                text: super::SYSTEM_DEFAULT,
            },
            dbus_config: first_existing(super::xml::SYSTEM_CONFIGS),
            drop_in_dirs: SYSTEM_DROP_INS.iter().map(PathBuf::from).collect(),
        }
    }

    /// The shipped session policy (the session bus without `--policy`),
    /// then the drop-ins of [`SESSION_DROP_INS`] and the user's own.
    pub fn session() -> Self {
        let mut drop_in_dirs: Vec<PathBuf> = SESSION_DROP_INS.iter().map(PathBuf::from).collect();
        drop_in_dirs.extend(user_config_dir().map(|dir| dir.join("pidbus/session.d")));
        PolicySource {
            base: Base::BuiltIn {
                name: "built-in session policy",
                text: super::SESSION_DEFAULT,
            },
            dbus_config: first_existing(super::xml::SESSION_CONFIGS),
            drop_in_dirs,
        }
    }

    /// The open development policy (a bare `--listen`), with no drop-ins.
    pub fn open() -> Self {
        PolicySource {
            base: Base::BuiltIn {
                name: "built-in open policy",
                text: super::OPEN_DEFAULT,
            },
            dbus_config: None,
            drop_in_dirs: Vec::new(),
        }
    }

    /// Reads drop-ins from `dirs` too, after the others (`--policy-dir`).
    pub fn with_drop_in_dirs(mut self, dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        self.drop_in_dirs.extend(dirs);
        self
    }

    /// Reads the XML `<policy>` of the D-Bus bus configuration `config`
    /// (after the base, before the drop-ins), or none.
    pub fn with_dbus_config(mut self, config: Option<PathBuf>) -> Self {
        self.dbus_config = config;
        self
    }

    /// Reads the D-Bus bus configuration as `--dbus-config` names it: a
    /// path, or `none` for none (which overrides a default).
    pub fn with_dbus_config_arg(self, arg: PathBuf) -> Self {
        let none = arg.as_os_str() == "none";
        self.with_dbus_config((!none).then_some(arg))
    }

    /// The D-Bus bus configuration read, if any.
    pub fn dbus_config(&self) -> Option<&Path> {
        self.dbus_config.as_deref()
    }

    /// The directories drop-ins are read from, in order.
    pub fn drop_in_dirs(&self) -> &[PathBuf] {
        &self.drop_in_dirs
    }

    /// Reads and checks the policy: the base, the D-Bus XML policy, then
    /// every drop-in. What the XML policy skipped is logged (WARN).
    pub fn load(&self) -> Result<Policy, PolicyError> {
        let (policy, mut errors) = self.layers(|note| warn!("D-Bus XML policy: {note}"))?;
        match errors.is_empty() {
            true => Ok(policy),
            false => Err(errors.swap_remove(0)),
        }
    }

    /// Reads and checks the policy, going on past errors: every one found,
    /// in file order, or the policy if there is none. What the XML policy
    /// skipped goes to `note`.
    pub fn check(&self, note: impl FnMut(&str)) -> Result<Policy, Vec<PolicyError>> {
        match self.layers(note).map_err(|e| vec![e])? {
            (policy, errors) if errors.is_empty() => Ok(policy),
            (_, errors) => Err(errors),
        }
    }

    fn layers(
        &self,
        mut note: impl FnMut(&str),
    ) -> Result<(Policy, Vec<PolicyError>), PolicyError> {
        let mut layers = vec![match &self.base {
            Base::File(path) => Layer::Toml {
                name: path.display().to_string(),
                text: read(path)?,
            },
            Base::BuiltIn { name, text } => Layer::Toml {
                name: (*name).to_owned(),
                text: (*text).to_owned(),
            },
        }];
        if let Some(config) = &self.dbus_config {
            let xml = super::xml::load(config);
            for text in &xml.notes {
                note(text);
            }
            layers.push(Layer::Rules {
                name: format!(
                    "D-Bus XML policy of {} ({} files)",
                    config.display(),
                    xml.files.len()
                ),
                rules: xml.rules,
            });
        }
        for file in drop_ins(&self.drop_in_dirs)? {
            layers.push(Layer::Toml {
                name: file.display().to_string(),
                text: read(&file)?,
            });
        }
        Ok(super::file::parse_layers(layers))
    }
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.base {
            Base::File(path) => write!(f, "{}", path.display())?,
            Base::BuiltIn { name, .. } => f.write_str(name)?,
        }
        let dirs: Vec<String> = self
            .drop_in_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        if let Some(config) = &self.dbus_config {
            write!(f, ", the D-Bus XML policy of {}", config.display())?;
        }
        if !dirs.is_empty() {
            write!(f, " with drop-ins from {}", dirs.join(", "))?;
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The `*.toml` files of `dirs`, in file-name order; a later directory's
/// file replaces an earlier one's of the same name. A directory that does
/// not exist has none.
fn drop_ins(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, PolicyError> {
    let mut by_name = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(PolicyError::Read {
                    path: dir.display().to_string(),
                    source,
                });
            }
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "toml")
                && let Some(name) = path.file_name()
            {
                by_name.insert(name.to_owned(), path);
            }
        }
    }
    Ok(by_name.into_values().collect())
}

/// `$XDG_CONFIG_HOME`, else `$HOME/.config`.
fn user_config_dir() -> Option<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    from_env("XDG_CONFIG_HOME").or_else(|| from_env("HOME").map(|home| home.join(".config")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pidbus-policy-source-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn dbus_config_none_reads_none_and_overrides_the_default() {
        let system =
            PolicySource::system().with_dbus_config(Some("/usr/share/dbus-1/system.conf".into()));
        let none = system.with_dbus_config_arg(PathBuf::from("none"));
        assert_eq!(none.dbus_config(), None);
        let named = none.with_dbus_config_arg(PathBuf::from("/etc/bus.conf"));
        assert_eq!(named.dbus_config(), Some(Path::new("/etc/bus.conf")));
    }

    #[test]
    fn drop_ins_come_in_name_order_and_a_later_directory_replaces_a_file() {
        let root = temp_dir("order");
        let (usr, etc) = (root.join("usr"), root.join("etc"));
        std::fs::create_dir_all(&usr).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        for (dir, name) in [
            (&usr, "20-b.toml"),
            (&usr, "10-a.toml"),
            (&etc, "20-b.toml"),
            (&etc, "30-c.toml"),
            (&etc, "notes.txt"),
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let missing = root.join("missing");
        let files = drop_ins(&[usr.clone(), etc.clone(), missing]).unwrap();
        assert_eq!(
            files,
            [
                usr.join("10-a.toml"),
                etc.join("20-b.toml"),
                etc.join("30-c.toml")
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_drop_in_adds_an_action_to_the_built_in_policy_and_its_rule_wins() {
        let dir = temp_dir("layer");
        std::fs::write(
            dir.join("50-reboot.toml"),
            "[[action]]\nid = \"org.example.reboot\"\ndefault = \"deny\"\n\n\
             [[rule]]\nkind = \"action\"\nname = \"org.example.reboot\"\nuser = 0\ndecision = \"allow\"\n",
        )
        .unwrap();
        let source = PolicySource::system().with_drop_in_dirs([dir.clone()]);
        let policy = source.load().unwrap();
        let built_in = PolicySource::system().load().unwrap();
        assert_eq!(policy.rules().len(), built_in.rules().len() + 1);
        assert!(source.to_string().contains(&dir.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_check_names_every_error_not_only_the_first() {
        // Each bad rule is named; a file that is not TOML (or has a value
        // of the wrong type) is named once and skipped.
        let dir = temp_dir("all-errors");
        let base = dir.join("policy.toml");
        std::fs::write(
            &base,
            "[[rule]]\nkind = \"fly\"\ndecision = \"allow\"\n\n\
             [[rule]]\nkind = \"own\"\nname = \"org.?.x\"\ndecision = \"allow\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("policy.toml.d")).unwrap();
        std::fs::write(dir.join("policy.toml.d/a.toml"), "not toml [").unwrap();
        let errors = PolicySource::file(base).check(|_| {}).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{shown:#?}");
        assert!(shown[0].contains("policy.toml:2:"), "{shown:#?}");
        assert!(shown[1].contains("policy.toml:7:"), "{shown:#?}");
        assert!(shown[2].contains("a.toml:1:"), "{shown:#?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_drop_in_names_its_file_and_line() {
        let dir = temp_dir("broken");
        std::fs::write(dir.join("x.toml"), "[[rule]]\nkind = \"fly\"\n").unwrap();
        let error = PolicySource::session()
            .with_drop_in_dirs([dir.clone()])
            .load()
            .unwrap_err()
            .to_string();
        assert!(error.contains("x.toml:"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
