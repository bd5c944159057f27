//! Cgroup paths, known by cgroup id. The kernel names a process's cgroup
//! by id in the same `PIDFD_GET_INFO` that gives its pid; the path (what a
//! process's units are read from) is read from `/proc/PID/cgroup` the
//! first time an id is seen, kept only once it is proven to be that id's
//! (a cgroup directory's inode number is its id, never reused during a
//! boot), and found by id from then on: a connection from a known cgroup
//! costs no `/proc` file.
//!
//! A cgroup renamed after its path was learnt keeps its old path here.
//! The kernel renames a cgroup only within its parent, so a user can only
//! rename cgroups of a subtree delegated to them, whose names they chose
//! anyway; systemd renames none.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

/// How many paths are kept; past it the table starts again empty (a
/// machine with more live cgroups than this only loses the shortcut).
const MAX_KNOWN: usize = 4096;

/// The cgroup v2 filesystem's magic number (`statfs`).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Paths of cgroups by id, as the broker's cgroup namespace shows them.
#[derive(Debug)]
pub struct CgroupPaths {
    /// Where cgroup v2 is mounted in the broker's mount namespace; `None`
    /// when it is not, and nothing is learnt.
    root: Option<PathBuf>,
    known: Mutex<HashMap<u64, String>>,
}

impl Default for CgroupPaths {
    /// A table that learns nothing.
    fn default() -> Self {
        CgroupPaths {
            root: None,
            known: Mutex::new(HashMap::new()),
        }
    }
}

impl CgroupPaths {
    /// The table for cgroup v2 where the broker's mount namespace has it
    /// (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid system);
    /// one that learns nothing if it has none.
    pub fn system() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        match cgroup2_mount_point(&mountinfo) {
            Some(root) => Self::mounted_at(root),
            None => Self::default(),
        }
    }

    /// The table for cgroup v2 mounted at `root`; learns nothing if
    /// `root` is not a cgroup v2 mount.
    pub fn mounted_at(root: PathBuf) -> Self {
        let is_cgroup2 = rustix::fs::statfs(&root).is_ok_and(|fs| {
            #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
            let kind = fs.f_type as u64;
            kind == CGROUP2_SUPER_MAGIC
        });
        CgroupPaths {
            root: is_cgroup2.then_some(root),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The path of cgroup `id`, if it was learnt.
    pub fn path_of(&self, id: u64) -> Option<String> {
        self.lock().get(&id).cloned()
    }

    /// Keeps `path` as the path of cgroup `id` if the directory it names
    /// is that cgroup; a process read between two migrations never teaches
    /// a wrong pair.
    pub fn learn(&self, id: u64, path: &str) {
        let Some(root) = &self.root else {
            return;
        };
        let dir = root.join(path.trim_start_matches('/'));
        if !std::fs::metadata(&dir).is_ok_and(|meta| meta.is_dir() && meta.ino() == id) {
            return;
        }
        let mut known = self.lock();
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(id, path.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The first mount of a whole cgroup v2 hierarchy (its root, `/`) in
/// `mountinfo` (the format of `/proc/self/mountinfo`).
fn cgroup2_mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        let mut fields = mount.split(' ').skip(3);
        let (root, point) = (fields.next()?, fields.next()?);
        (filesystem.starts_with("cgroup2 ") && root == "/").then(|| PathBuf::from(point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// This process's cgroup path and id, as the broker would see them.
    fn own_cgroup() -> Option<(String, u64)> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = crate::os::identity::unified_cgroup(&text)?;
        let pidfd = pidbus_protocol::pidfd::pidfd_open(std::process::id()).ok()?;
        let (_, id) = pidbus_protocol::pidfd::pidfd_state_and_cgroup(pidfd.as_fd()).ok()?;
        Some((path, id?))
    }

    #[test]
    fn a_path_is_learnt_only_for_its_own_id() {
        let Some((path, id)) = own_cgroup() else {
            eprintln!("SKIPPED: no cgroup v2 or no PIDFD_GET_INFO cgroup id here");
            return;
        };
        let paths = CgroupPaths::system();
        paths.learn(id + 1, &path);
        assert_eq!(paths.path_of(id + 1), None, "a wrong pair is refused");
        paths.learn(id, &path);
        assert_eq!(paths.path_of(id), Some(path), "id {id}");
    }

    #[test]
    fn the_cgroup2_mount_is_found_on_pure_and_hybrid_systems() {
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
                      41 30 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_point(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_point(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A bind mount of a subtree is not the hierarchy's root.
        let subtree = "50 24 0:30 /user.slice /mnt rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_point(subtree), None);
    }

    #[test]
    fn without_a_cgroup2_mount_nothing_is_learnt() {
        let paths = CgroupPaths::mounted_at(std::env::temp_dir());
        paths.learn(1, "/");
        assert_eq!(paths.path_of(1), None);
    }
}
