//! The keys directory: every key file read, parsed and compiled, spread over a few threads; the
//! files a reload can take from the serving policy recognised without reading them; and what
//! spans files (an id or a hash used twice) checked afterwards.

use super::keys::{compile_key, CompiledKey, KeyContext};
use super::source::{read_text_stamped, read_yaml, OpenFrom};
use super::{field, Problems};
use crate::config::schema::KeyFile;
use crate::config::stamp;
use crate::config::Problem;
use crate::keys::secret::KeyDigest;
use crate::policy::{Key, LoadStats};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Reads and compiles every `*.yaml`/`*.yml` in `dir`, in name order. Hidden entries are
/// skipped: they are editor temp files, or the `..data` machinery of Kubernetes ConfigMap volumes.
///
/// Each file is read, parsed and compiled into its keys on a worker thread, which drops the text
/// and the parsed form at once: at 100,000 keys, holding every parsed file until a later pass
/// would double what a load holds at its peak. What spans files (an id or a hash used twice) is
/// checked afterwards, in name order.
pub(super) fn read_keys(
    dir: &Path,
    context: &KeyContext<'_>,
    problems: &mut Problems,
    hasher: &mut Sha256,
) -> (Vec<Arc<Key>>, LoadStats) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.add(dir, "", format!("cannot read keys directory: {e}"));
            return (Vec::new(), LoadStats::default());
        }
    };
    let mut names: Vec<std::ffi::OsString> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_str().unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                // The entry's own type avoids a stat per file; symlinks (ConfigMaps) are followed.
                && e.file_type().is_ok_and(|t| t.is_file() || (t.is_symlink() && e.path().is_file()))
        })
        .map(|e| e.file_name())
        .collect();
    // By name: comparing whole paths component by component costs more than the sort itself.
    names.sort_unstable();

    // Reading and parsing dominate a load of many keys: spread the files over a few threads.
    // They take batches as they go, so a thread slowed down (on a shared host, by another
    // guest) leaves more of the work to the others. Each file's outcome is kept in name order,
    // so keys, problems and the digest are the same whatever the thread count.
    const BATCH: usize = 512;
    let dir_handle = std::fs::File::open(dir).ok();
    let open_from = dir_handle.as_ref().map_or(OpenFrom::Path, OpenFrom::Dir);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(names.len().div_ceil(BATCH).max(1));
    let next_batch = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let batch = next_batch.fetch_add(1, Ordering::Relaxed);
            let start = batch * BATCH;
            if start >= names.len() {
                return done;
            }
            let part = &names[start..(start + BATCH).min(names.len())];
            let outcomes: Vec<FileOutcome> = part
                .iter()
                .map(|name| read_key_file(&dir.join(name), open_from, context))
                .collect();
            done.push((batch, outcomes));
        }
    };
    let mut batches: Vec<(usize, Vec<FileOutcome>)> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = work();
        for helper in helpers {
            all.extend(
                helper
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
        }
        all
    });
    batches.sort_unstable_by_key(|(batch, _)| *batch);
    // Sized up front, as below: grown by doubling, the vector would briefly exist twice.
    let mut outcomes = Vec::with_capacity(names.len());
    for (_, batch) in batches {
        outcomes.extend(batch);
    }

    let mut seen_ids: HashMap<&str, &Path> = HashMap::with_capacity(outcomes.len());
    let mut seen_digests: HashMap<KeyDigest, &str> = HashMap::with_capacity(outcomes.len());
    let mut cross_file = Vec::new();
    let mut count = 0;
    let mut stats = LoadStats {
        key_files: outcomes.len(),
        ..LoadStats::default()
    };
    for (outcome, name) in outcomes.iter().zip(&names) {
        stats.key_files_read += usize::from(outcome.read);
        stats.keys_reused += usize::from(outcome.reused);
        hasher.update(name.as_encoded_bytes());
        hasher.update([0]);
        hasher.update(outcome.text_hash);
        for key in &outcome.keys {
            count += 1;
            let (id, file, prefix) = key.origin();
            if let Some(other) = seen_ids.insert(id, file) {
                cross_file.push(Problem {
                    file: file.to_path_buf(),
                    field: field(prefix, "id"),
                    message: format!("key id `{id}` is also defined in {}", other.display()),
                });
            }
            for (digest, at) in key.digests() {
                if let Some(other) = seen_digests.insert(digest, id) {
                    cross_file.push(Problem {
                        file: file.to_path_buf(),
                        field: at.field(prefix),
                        message: format!("the same hash is used by key `{other}`"),
                    });
                }
            }
        }
    }
    drop((seen_ids, seen_digests, names));
    // Sized up front: grown by doubling, the vector would briefly exist twice.
    let mut keys = Vec::with_capacity(count);
    for outcome in outcomes {
        problems.list.extend(outcome.problems.list);
        keys.extend(outcome.keys.into_iter().filter_map(|k| match k {
            CompiledKey::Ok { key, .. } => Some(key),
            CompiledKey::Broken(_) => None,
        }));
    }
    problems.list.extend(cross_file);
    (keys, stats)
}

/// What one key file contributed: its keys, its problems, and its content hash for the policy
/// digest (its name is in the list `read_keys` keeps, in the same order).
struct FileOutcome {
    /// Whether the file had to be read (not recognised by its stamp).
    read: bool,
    /// Whether its key was taken from the serving policy.
    reused: bool,
    text_hash: [u8; 32],
    keys: SmallVec<[CompiledKey; 1]>,
    problems: Problems,
}

impl FileOutcome {
    /// The outcome of a file whose key the serving policy already has.
    fn reusing(mut self, key: &Arc<Key>) -> FileOutcome {
        if let Some(hash) = key.source_hash {
            self.text_hash = hash;
        }
        self.reused = true;
        self.keys.push(CompiledKey::Ok {
            key: key.clone(),
            field_prefix: String::new(),
        });
        self
    }
}

fn read_key_file(file: &Path, from: OpenFrom<'_>, context: &KeyContext<'_>) -> FileOutcome {
    let mut out = FileOutcome {
        read: false,
        reused: false,
        text_hash: [0; 32],
        keys: SmallVec::new(),
        problems: Problems { list: Vec::new() },
    };
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let overlay = context
        .overlay
        .filter(|o| file.file_name() == Some(o.file_name));
    // The file as a lifecycle change would write it is compiled, never the serving policy's key.
    let previous = context.previous(&stem, file).filter(|_| overlay.is_none());
    if let Some(key) = previous {
        let known = key.stamp.load(Ordering::Relaxed);
        // A settled file the watcher saw no change to is what it was: no need to look.
        let unchanged = known != stamp::NONE
            && (context.changed_key_files.is_some_and(|changed| {
                !changed.contains(file.file_name().unwrap_or_default().as_encoded_bytes())
            }) || std::fs::metadata(file)
                .is_ok_and(|m| stamp::of(&m, SystemTime::now()) == known));
        if unchanged {
            return out.reusing(key);
        }
    }
    out.read = true;
    let read = match overlay {
        Some(o) => Ok((o.text.to_owned(), stamp::NONE, Some(SystemTime::now()))),
        None => read_text_stamped(file, from),
    };
    let (text, stamp, modified) = match read {
        Ok(read) => read,
        Err(p) => {
            out.problems.list.push(p);
            return out;
        }
    };
    let modified = modified.map(chrono::DateTime::<chrono::Utc>::from);
    out.text_hash = Sha256::digest(text.as_bytes()).into();
    if let Some(key) = previous.filter(|key| key.source_hash == Some(out.text_hash)) {
        // Same text under a newer stamp (touched, or read too soon after its last write).
        key.stamp.store(stamp, Ordering::Relaxed);
        return out.reusing(key);
    }
    if looks_like_list(&text) {
        match read_yaml::<Vec<KeyFile>>(file, &text) {
            Ok(list) => {
                drop(text);
                for (i, key) in list.into_iter().enumerate() {
                    let field_prefix = format!("[{i}]");
                    match key.id.clone() {
                        Some(id) => out.keys.push(compile_key(
                            id,
                            // Keys of a list file are compiled again on every load.
                            (file, None, stamp::NONE, modified),
                            field_prefix,
                            key,
                            context,
                            &mut out.problems,
                        )),
                        None => out.problems.list.push(Problem {
                            file: file.to_path_buf(),
                            field: format!("{field_prefix}.id"),
                            message: "keys in a list file need an `id`".to_owned(),
                        }),
                    }
                }
            }
            Err(p) => out.problems.list.push(p),
        }
    } else {
        let parsed =
            crate::config::flat::parse::<KeyFile>(&text).map_or_else(|| read_yaml(file, &text), Ok);
        match parsed {
            Ok(key) => {
                drop(text);
                if let Some(id) = key.id.as_deref().filter(|id| *id != stem) {
                    out.problems.list.push(Problem {
                        file: file.to_path_buf(),
                        field: "id".to_owned(),
                        message: format!("`{id}` differs from the file name `{stem}`; a single-key file's id is its file name"),
                    });
                }
                out.keys.push(compile_key(
                    stem,
                    (file, Some(out.text_hash), stamp, modified),
                    String::new(),
                    key,
                    context,
                    &mut out.problems,
                ));
            }
            Err(p) => out.problems.list.push(p),
        }
    }
    out
}

/// Whether a key file holds a YAML list of keys rather than one key, judged from its first
/// meaningful line (cheaper than parsing the whole file twice).
fn looks_like_list(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty() && !l.starts_with('#') && *l != "---")
        .is_some_and(|l| l.starts_with("- ") || l == "-" || l.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::*;
    use crate::config::LoadOptions;
    use crate::policy::Policy;
    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::time::Duration;

    const CONFIG: &str = "keys_dir: keys.d
listen: 127.0.0.1:9
providers:
  p1:
    format: openai
    api_key: sk-real
    endpoints:
      - {url: \"http://127.0.0.1:9\", weight: 1}
models:
  m1:
    provider: p1
workloads:
  w1:
    models: [m1]
";

    fn key_text(n: u8, extra: &str) -> String {
        format!(
            "hash: \"sha256:{}\"\nworkload: w1\n{extra}",
            format!("{n:02x}").repeat(32)
        )
    }

    /// A directory holding `keygate.yaml` (CONFIG) and an empty `keys.d`: (the directory, the
    /// config file, the keys directory).
    fn policy_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.d");
        std::fs::create_dir(&keys).unwrap();
        write(dir.path(), "keygate.yaml", CONFIG);
        let config = dir.path().join("keygate.yaml");
        (dir, config, keys)
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// Loads with and without `previous`: both must give the same policy.
    fn reload(config: &Path, previous: &Policy) -> Policy {
        let reused = load(config, LoadOptions::default(), Some(previous), None, None).unwrap();
        let fresh = load(config, LoadOptions::default(), None, None, None).unwrap();
        assert_eq!(reused.digest, fresh.digest);
        let summary = |p: &Policy| {
            p.keys_by_id
                .values()
                .map(|k| {
                    format!(
                        "{} {:?} {:?} {}",
                        k.id, k.status, k.limits.windows, k.workload.name
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(summary(&reused), summary(&fresh));
        reused
    }

    #[test]
    fn a_reload_reuses_the_keys_of_unchanged_files_only() {
        let (dir, config, keys) = policy_dir();
        write(&keys, "a.yaml", &key_text(1, ""));
        write(&keys, "b.yaml", &key_text(2, ""));
        let list = format!(
            "- id: c\n  hash: \"sha256:{}\"\n  workload: w1\n",
            "03".repeat(32)
        );
        write(&keys, "list.yaml", &list);
        // A list file named like one of its keys: its keys are never taken for a single key's.
        let pair = format!(
            "- id: pair\n  hash: \"sha256:{}\"\n  workload: w1\n- id: other\n  hash: \"sha256:{}\"\n  workload: w1\n",
            "05".repeat(32),
            "06".repeat(32)
        );
        write(&keys, "pair.yaml", &pair);
        let first = load(&config, LoadOptions::default(), None, None, None).unwrap();
        let same =
            |a: &Policy, b: &Policy, id: &str| Arc::ptr_eq(&a.keys_by_id[id], &b.keys_by_id[id]);

        // Nothing changed: single-key files are reused, a list file is compiled again.
        let second = reload(&config, &first);
        assert!(same(&first, &second, "a") && same(&first, &second, "b"));
        assert!(!same(&first, &second, "c") && !same(&first, &second, "pair"));
        assert!(second.keys_by_id.contains_key("other"));
        assert!(Arc::ptr_eq(
            &second.keys_by_id["a"].workload,
            &second.workloads["w1"]
        ));

        // One key file changed: only that key is compiled again, and shows the change.
        write(&keys, "b.yaml", &key_text(2, "status: paused\n"));
        let third = reload(&config, &second);
        assert!(same(&second, &third, "a"));
        assert!(!same(&second, &third, "b"));
        assert_eq!(
            third.keys_by_id["b"].status,
            crate::domain::KeyStatus::Paused
        );

        // The same text under another name is another key, compiled from its own file.
        std::fs::rename(keys.join("a.yaml"), keys.join("d.yaml")).unwrap();
        let fourth = reload(&config, &third);
        assert!(!fourth.keys_by_id.contains_key("a"));
        assert_eq!(*fourth.keys_by_id["d"].file, *keys.join("d.yaml"));

        // A changed main file compiles every key again, against its new workloads.
        write(
            dir.path(),
            "keygate.yaml",
            &CONFIG.replace(
                "models: [m1]\n",
                "models: [m1]\n    rate_limits: [{requests: 5, per: 1m}]\n",
            ),
        );
        let fifth = reload(&config, &fourth);
        assert!(!same(&fourth, &fifth, "b"));
        let workload = &fifth.keys_by_id["b"].workload;
        assert!(Arc::ptr_eq(workload, &fifth.workloads["w1"]));
        assert_eq!(workload.limits.windows.len(), 1);

        // Settled files (last changed over a second ago) are recognised by their stamp, without
        // being read; a file written since is read, and compiled again if its text changed.
        std::thread::sleep(Duration::from_millis(1_100));
        let settling = reload(&config, &fifth);
        assert_eq!(settling.load_stats.key_files_read, 4);
        assert_eq!(settling.load_stats.keys_reused, 2);
        let settled = reload(&config, &settling);
        assert_eq!(
            settled.load_stats,
            LoadStats {
                key_files: 4,
                key_files_read: 2, // the list files
                keys_reused: 2,
            }
        );
        write(&keys, "b.yaml", &key_text(2, "status: active\n"));
        let after_write = reload(&config, &settled);
        assert_eq!(after_write.load_stats.key_files_read, 3);
        assert!(same(&settled, &after_write, "d"));
        assert!(!same(&settled, &after_write, "b"));
        assert_eq!(
            after_write.keys_by_id["b"].status,
            crate::domain::KeyStatus::Active
        );
        let fifth = after_write;

        // A broken key file is refused as on a first load, whatever could be reused.
        write(&keys, "b.yaml", "hash: nope\nworkload: w1\n");
        let errors = load(&config, LoadOptions::default(), Some(&fifth), None, None).unwrap_err();
        assert!(errors.0.iter().any(|p| p.field == "hash"), "{errors:?}");
    }

    #[test]
    fn files_spread_over_threads_come_back_in_name_order() {
        let (_dir, config, keys) = policy_dir();
        // Three batches; the first and the last file share a hash.
        let n = 1_300;
        for i in 0..n {
            let hash = if i == n - 1 { 0 } else { i };
            write(
                &keys,
                &format!("k{i:04}.yaml"),
                &format!("hash: \"sha256:{hash:064x}\"\nworkload: w1\n"),
            );
        }
        let errors = load(&config, LoadOptions::default(), None, None, None).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors:?}");
        assert!(errors.0[0].file.ends_with("k1299.yaml"), "{errors:?}");
        assert!(errors.0[0].message.contains("`k0000`"), "{errors:?}");

        write(
            &keys,
            "k1299.yaml",
            &format!("hash: \"sha256:{:064x}\"\nworkload: w1\n", n),
        );
        let policy = load(&config, LoadOptions::default(), None, None, None).unwrap();
        assert_eq!(policy.keys_by_id.len(), n);
        assert_eq!(policy.load_stats.key_files, n);
        assert_eq!(
            policy.digest,
            load(&config, LoadOptions::default(), None, None, None)
                .unwrap()
                .digest
        );
    }

    #[test]
    fn a_reload_told_which_key_files_changed_looks_at_those_and_new_files_only() {
        let (_dir, config, keys) = policy_dir();
        write(&keys, "a.yaml", &key_text(1, ""));
        write(&keys, "b.yaml", &key_text(2, ""));
        // Settled, so that their stamps are kept.
        std::thread::sleep(Duration::from_millis(1_100));
        let first = load(&config, LoadOptions::default(), None, None, None).unwrap();
        let changed = |names: &[&str]| -> HashSet<Vec<u8>> {
            names.iter().map(|n| n.as_bytes().to_vec()).collect()
        };
        let reload_told = |previous: &Policy, names: &[&str]| {
            load(
                &config,
                LoadOptions::default(),
                Some(previous),
                Some(&changed(names)),
                None,
            )
            .unwrap()
        };

        write(&keys, "b.yaml", &key_text(2, "status: paused\n"));
        write(&keys, "c.yaml", &key_text(3, ""));
        let second = reload_told(&first, &["b.yaml", "c.yaml"]);
        assert_eq!(second.load_stats.key_files_read, 2);
        assert!(Arc::ptr_eq(&first.keys_by_id["a"], &second.keys_by_id["a"]));
        assert_eq!(
            second.keys_by_id["b"].status,
            crate::domain::KeyStatus::Paused
        );
        assert!(second.keys_by_id.contains_key("c"));

        // What the watcher did not name is not even looked at: this is why the watcher must
        // name every change (and why a failed reload keeps its names for the next one).
        write(&keys, "a.yaml", &key_text(1, "status: paused\n"));
        std::thread::sleep(Duration::from_millis(1_100));
        let third = reload_told(&second, &[]);
        assert_eq!(
            third.load_stats.key_files_read, 2,
            "b and c, written just before their read"
        );
        assert!(Arc::ptr_eq(&second.keys_by_id["a"], &third.keys_by_id["a"]));
        let fourth = reload_told(&third, &["a.yaml"]);
        assert_eq!(
            fourth.keys_by_id["a"].status,
            crate::domain::KeyStatus::Paused
        );

        // A removed file is gone whatever the names say: the directory is listed every time.
        std::fs::remove_file(keys.join("b.yaml")).unwrap();
        let fifth = reload_told(&fourth, &[]);
        assert!(!fifth.keys_by_id.contains_key("b"));
    }
}
