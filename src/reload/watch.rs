//! Noticing that the policy files changed: inotify where the kernel allows it, and a scan of the
//! watched directories' entries where it does not.
//!
//! Only the files that make up the policy count: the config file, key files (`*.yaml`/`*.yml`
//! not starting with a dot) and the `..`-named entries a Kubernetes ConfigMap volume swaps. An
//! audit log or editor swap file beside them must not set off reloads, and neither may the
//! reads a reload itself makes.

use notify::{RecursiveMode, Watcher};
use std::collections::HashSet;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// The shortest time between two scans of the polling fallback. A scan of a large keys
/// directory is slower: the wait is then stretched to ten times the scan, so polling never
/// takes more than about a tenth of a core.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Where the policy lives, and which of the names there belong to it.
#[derive(Debug, Clone)]
pub struct PolicyFiles {
    config_dir: PathBuf,
    config_name: OsString,
    keys_dir: PathBuf,
}

impl PolicyFiles {
    /// Relative paths are made absolute: file events name absolute paths, which a relative
    /// `--config` would otherwise never match.
    pub fn new(config_path: &Path, keys_dir: &Path) -> PolicyFiles {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let config_dir = config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        PolicyFiles {
            config_dir: absolute(&config_dir),
            config_name: config_path.file_name().unwrap_or_default().to_owned(),
            keys_dir: absolute(keys_dir),
        }
    }

    fn dirs(&self) -> Vec<&Path> {
        let mut dirs = vec![self.config_dir.as_path()];
        if self.keys_dir != self.config_dir {
            dirs.push(&self.keys_dir);
        }
        dirs
    }

    /// Whether `name`, an entry of `dir` (one of the watched directories), is part of the policy.
    fn holds(&self, dir: &Path, name: &std::ffi::OsStr) -> bool {
        let bytes = name.as_encoded_bytes();
        // A ConfigMap volume's `..data` link and the timestamped directory it points to.
        if bytes.starts_with(b"..") {
            return true;
        }
        let key_file =
            !bytes.starts_with(b".") && (bytes.ends_with(b".yaml") || bytes.ends_with(b".yml"));
        (dir == self.keys_dir && key_file)
            || (dir == self.config_dir
                && (name == self.config_name || dir.join(name) == self.keys_dir))
    }

    /// Whether a path from a file event names part of the policy. A path without a parent or
    /// name (the watched directory itself) counts: the directory was moved or removed.
    fn holds_path(&self, path: &Path) -> bool {
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => self.holds(dir, name),
            _ => true,
        }
    }

    /// What a watcher event may have changed in the policy, if anything. inotify also reports
    /// opens and reads, and a reload opens every key file: reacting to those would reload forever.
    fn change_from(&self, event: &notify::Result<notify::Event>) -> Option<Change> {
        use notify::event::{AccessKind, AccessMode, EventKind};
        let e = match event {
            // A lost-events overflow or other watcher error: reload everything to be safe.
            Err(_) => return Some(Change::Anything),
            Ok(e) => e,
        };
        match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return None,
            _ => {}
        }
        if e.paths.is_empty() || e.need_rescan() {
            return Some(Change::Anything);
        }
        let mut key_files = Vec::new();
        for path in e.paths.iter().filter(|p| self.holds_path(p)) {
            match (path.parent(), path.file_name()) {
                (Some(dir), Some(name))
                    if dir == self.keys_dir
                        && !name.as_encoded_bytes().starts_with(b"..")
                        && !(dir == self.config_dir && name == self.config_name) =>
                {
                    key_files.push(name.as_encoded_bytes().to_vec());
                }
                _ => return Some(Change::Anything),
            }
        }
        (!key_files.is_empty()).then_some(Change::KeyFiles(key_files))
    }
}

/// What changed, as far as the watcher can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Only these key files (names in the keys directory) were written, created or removed.
    KeyFiles(Vec<Vec<u8>>),
    /// Anything may have changed: the config file, a ConfigMap swap, the directories themselves,
    /// lost events, or a scan that cannot say which file.
    Anything,
}

/// The changes seen since the serving policy was read, for a reload to read only those files.
/// Kept across a failed reload: the serving policy is then still the old one, and a change made
/// beside the broken file must not be forgotten once the file is fixed.
#[derive(Debug, Default)]
pub struct Pending {
    anything: bool,
    key_files: HashSet<Vec<u8>>,
}

impl Pending {
    pub fn add(&mut self, change: Change) {
        match change {
            Change::KeyFiles(names) if !self.anything => self.key_files.extend(names),
            Change::KeyFiles(_) => {}
            Change::Anything => {
                self.anything = true;
                self.key_files.clear();
            }
        }
    }

    pub fn anything(&mut self) {
        self.add(Change::Anything);
    }

    pub fn everything() -> Pending {
        let mut pending = Pending::default();
        pending.anything();
        pending
    }

    /// The only key files that may differ from the serving policy's, or `None` when any may.
    pub fn key_files(&self) -> Option<&HashSet<Vec<u8>>> {
        (!self.anything).then_some(&self.key_files)
    }
}

/// How the policy files are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The kernel reports changes as they happen.
    Inotify,
    /// Scans of the directories' entries: the fallback where inotify is refused, most often
    /// because the per-user instance limit (`fs.inotify.max_user_instances`, 128 by default and
    /// shared by every container of one uid on a host) is used up.
    Poll,
}

/// A live watch; dropping it stops the watching.
pub enum Armed {
    Inotify {
        _watcher: notify::RecommendedWatcher,
    },
    Poll {
        _poller: Poller,
    },
}

impl Armed {
    pub fn backend(&self) -> Backend {
        match self {
            Armed::Inotify { .. } => Backend::Inotify,
            Armed::Poll { .. } => Backend::Poll,
        }
    }
}

/// Watches `files` and sends on `tx` whenever they may have changed. Falls back from inotify
/// to polling rather than leave the policy unwatched; `None` only when neither can start, and
/// then SIGHUP and `POST /admin/reload` still reload.
pub fn arm(files: &PolicyFiles, tx: UnboundedSender<Change>, backend: Backend) -> Option<Armed> {
    let armed = match backend {
        Backend::Inotify => arm_inotify(files, tx.clone()).map(|w| Armed::Inotify { _watcher: w }),
        Backend::Poll => Poller::start(files.clone(), tx.clone())
            .map(|p| Armed::Poll { _poller: p })
            .map_err(notify::Error::io),
    };
    match (armed, backend) {
        (Ok(armed), _) => Some(armed),
        (Err(e), Backend::Inotify) => {
            tracing::warn!(error = %e, min_interval_ms = POLL_INTERVAL.as_millis() as u64,
                "cannot watch the policy files with inotify; scanning them instead (raise fs.inotify.max_user_instances to avoid the scans)");
            arm(files, tx, Backend::Poll)
        }
        (Err(e), Backend::Poll) => {
            tracing::error!(error = %e, "cannot watch the policy files; reload with SIGHUP or POST /admin/reload");
            None
        }
    }
}

fn arm_inotify(
    files: &PolicyFiles,
    tx: UnboundedSender<Change>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let filter = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Some(change) = filter.change_from(&event) {
            let _ = tx.send(change);
        }
    })?;
    for dir in files.dirs() {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| e.add_path(dir.to_path_buf()))?;
    }
    Ok(watcher)
}

/// The polling fallback: a low-priority thread that folds what the kernel records about every
/// policy entry (inode, size, modification and change times to the nanosecond) into one
/// fingerprint, and reports when it differs from the last scan's.
pub struct Poller {
    stop: Arc<AtomicBool>,
}

impl Poller {
    fn start(files: PolicyFiles, tx: UnboundedSender<Change>) -> Result<Poller, std::io::Error> {
        let mut last = fingerprint(&files)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("keygate-policy-poll".to_owned())
            .spawn(move || {
                crate::priority::lower_this_thread();
                let mut wait = POLL_INTERVAL;
                loop {
                    std::thread::sleep(wait);
                    if stopped.load(Ordering::Relaxed) || tx.is_closed() {
                        return;
                    }
                    let scan_started = Instant::now();
                    // An unreadable directory reads as a change: the reload says what is wrong.
                    let now = fingerprint(&files).ok();
                    wait = POLL_INTERVAL.max(scan_started.elapsed() * 10);
                    if now.is_none() || now != Some(last) {
                        last = now.unwrap_or_default();
                        // A fingerprint cannot say which file changed.
                        if tx.send(Change::Anything).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(Poller { stop })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn fingerprint(files: &PolicyFiles) -> Result<u64, std::io::Error> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for dir in files.dirs() {
        let mut entries: Vec<(OsString, u64)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !files.holds(dir, &name) {
                continue;
            }
            let path = entry.path();
            if path == files.keys_dir {
                // Its entries are scanned on their own; its times change with every file
                // created in it, policy or not. Only its replacement counts here.
                let inode = std::fs::metadata(&path).map_or(0, |m| identity_of(&m));
                entries.push((name, inode));
                continue;
            }
            // A file removed between the listing and the stat reads as gone.
            let mut stamp =
                std::fs::symlink_metadata(&path).map_or(0, |m| crate::config::stamp::fold(&m));
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                // Through the link too: a ConfigMap swap changes what `..data/…` resolves to.
                stamp ^= std::fs::metadata(&path)
                    .map_or(1, |m| crate::config::stamp::fold(&m).rotate_left(1));
            }
            entries.push((name, stamp));
        }
        // Listing order is the directory's own, which need not survive a rewrite.
        entries.sort_unstable();
        dir.hash(&mut h);
        entries.hash(&mut h);
    }
    Ok(h.finish())
}

fn identity_of(meta: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.ino() ^ meta.dev().rotate_left(32)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> PolicyFiles {
        PolicyFiles::new(&dir.join("keygate.yaml"), &dir.join("keys.d"))
    }

    /// Arms `backend` on a fresh policy directory, runs `change` on it, and says whether an
    /// event arrived within `wait`.
    async fn notices(backend: Backend, wait: Duration, change: impl FnOnce(&Path)) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.d");
        std::fs::create_dir(&keys).unwrap();
        std::fs::write(dir.path().join("keygate.yaml"), "keys_dir: keys.d\n").unwrap();
        std::fs::write(keys.join("a.yaml"), "id: a\n").unwrap();
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let armed = arm(&files_in(dir.path()), tx, backend).expect("armed");
        assert_eq!(armed.backend(), backend);
        change(dir.path());
        tokio::time::timeout(wait, events.recv()).await.is_ok()
    }

    /// Replaces a key file by rename within the same second and at the same size, as a fast
    /// second edit would: only the inode and change time tell.
    fn rename_key(dir: &Path) {
        let keys = dir.join("keys.d");
        std::fs::write(keys.join(".a.tmp"), "id: b\n").unwrap();
        std::fs::rename(keys.join(".a.tmp"), keys.join("a.yaml")).unwrap();
    }

    fn write_beside(dir: &Path) {
        std::fs::write(dir.join("requests.jsonl"), "{}\n").unwrap();
        std::fs::write(dir.join("keys.d/.a.yaml.swp"), "x").unwrap();
        std::fs::write(dir.join("keys.d/notes.txt"), "x").unwrap();
        let _ = std::fs::read_to_string(dir.join("keys.d/a.yaml")).unwrap();
    }

    #[tokio::test]
    async fn both_backends_see_a_key_file_replaced_by_rename() {
        assert!(notices(Backend::Inotify, Duration::from_secs(2), rename_key).await);
        // Within a second of the write, as revocation needs, with room for this host's noise.
        assert!(notices(Backend::Poll, POLL_INTERVAL * 5 / 2, rename_key).await);
    }

    #[tokio::test]
    async fn both_backends_see_the_config_file_written_in_place() {
        let edit =
            |dir: &Path| std::fs::write(dir.join("keygate.yaml"), "keys_dir: keys.e\n").unwrap();
        assert!(notices(Backend::Inotify, Duration::from_secs(2), edit).await);
        assert!(notices(Backend::Poll, POLL_INTERVAL * 5 / 2, edit).await);
    }

    #[tokio::test]
    async fn neither_backend_reacts_to_files_that_are_not_policy_or_to_reads() {
        let quiet = POLL_INTERVAL * 3;
        assert!(!notices(Backend::Inotify, quiet, write_beside).await);
        assert!(!notices(Backend::Poll, quiet, write_beside).await);
    }

    #[test]
    fn an_event_names_the_key_files_it_changed_or_says_anything_may_have() {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode,
        };
        let files = files_in(Path::new("/etc/keygate"));
        let event = |kind: EventKind, paths: &[&str]| {
            let mut e = notify::Event::new(kind);
            e.paths = paths.iter().map(PathBuf::from).collect();
            files.change_from(&Ok(e))
        };
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let names = |n: &[&str]| {
            Some(Change::KeyFiles(
                n.iter().map(|n| n.as_bytes().to_vec()).collect(),
            ))
        };
        assert_eq!(
            event(
                rename,
                &[
                    "/etc/keygate/keys.d/.a.yaml.tmp",
                    "/etc/keygate/keys.d/a.yaml"
                ]
            ),
            names(&["a.yaml"])
        );
        assert_eq!(
            event(
                EventKind::Create(CreateKind::File),
                &["/etc/keygate/keys.d/b.yml"]
            ),
            names(&["b.yml"])
        );
        assert_eq!(
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/etc/keygate/keygate.yaml"]
            ),
            Some(Change::Anything)
        );
        assert_eq!(
            event(rename, &["/etc/keygate/keys.d/..data"]),
            Some(Change::Anything)
        );
        assert_eq!(
            event(rename, &["/etc/keygate/keys.d"]),
            Some(Change::Anything)
        );
        assert_eq!(event(EventKind::Any, &[]), Some(Change::Anything));
        assert_eq!(
            files.change_from(&Err(notify::Error::generic("queue overflow"))),
            Some(Change::Anything)
        );
        assert_eq!(
            event(
                EventKind::Access(AccessKind::Read),
                &["/etc/keygate/keys.d/a.yaml"]
            ),
            None
        );
        assert_eq!(
            event(
                EventKind::Create(CreateKind::File),
                &["/etc/keygate/audit.log"]
            ),
            None
        );
    }

    #[test]
    fn pending_changes_add_up_until_anything_covers_them() {
        let mut pending = Pending::default();
        assert_eq!(pending.key_files().map(HashSet::len), Some(0));
        pending.add(Change::KeyFiles(vec![b"a.yaml".to_vec()]));
        pending.add(Change::KeyFiles(vec![
            b"b.yaml".to_vec(),
            b"a.yaml".to_vec(),
        ]));
        assert_eq!(pending.key_files().map(HashSet::len), Some(2));
        pending.add(Change::Anything);
        pending.add(Change::KeyFiles(vec![b"c.yaml".to_vec()]));
        assert_eq!(pending.key_files(), None);
        assert_eq!(Pending::everything().key_files(), None);
    }

    #[test]
    fn configmap_entries_and_a_keys_dir_beside_the_config_belong_to_the_policy() {
        let files = files_in(Path::new("/etc/keygate"));
        let holds = |p: &str| files.holds_path(Path::new(p));
        assert!(holds("/etc/keygate/keygate.yaml"));
        assert!(holds("/etc/keygate/..data"));
        assert!(holds("/etc/keygate/..2026_11_23_10_00_00.123"));
        assert!(holds("/etc/keygate/keys.d"));
        assert!(holds("/etc/keygate/keys.d/a.yml"));
        assert!(holds("/etc/keygate/keys.d/..data"));
        assert!(!holds("/etc/keygate/other.yaml"));
        assert!(!holds("/etc/keygate/keys.d/.a.yaml.tmp"));
        assert!(!holds("/etc/keygate/keys.d/README.md"));
    }

    #[test]
    fn a_relative_config_path_matches_the_absolute_paths_of_file_events() {
        let files = PolicyFiles::new(Path::new("conf/keygate.yaml"), Path::new("conf/keys.d"));
        let cwd = std::env::current_dir().unwrap();
        assert!(files.holds_path(&cwd.join("conf/keygate.yaml")));
        assert!(files.holds_path(&cwd.join("conf/keys.d/new.yaml")));
        let bare = PolicyFiles::new(Path::new("keygate.yaml"), Path::new("keys.d"));
        assert!(bare.holds_path(&cwd.join("keygate.yaml")));
    }
}
