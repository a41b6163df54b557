//! Following the policy files live. A reload reads and validates everything into a new snapshot
//! off the request threads and swaps it in atomically; requests in flight finish on the snapshot
//! they started with. A bad policy is refused with every problem logged, and the last good one
//! keeps serving.
//!
//! Triggers: changes to the policy's files (`watch`: inotify, or scans where the kernel refuses
//! it; debounced), SIGHUP, and `POST /admin/reload`.

use crate::config::{self, LoadOptions, PolicyErrors};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyStore};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod watch;

/// Quiet time after the last file event before reloading: editors and `git checkout` write
/// several files in a burst, and one reload should see them all.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Upper bound on the wait under a continuous stream of events.
const DEBOUNCE_MAX: Duration = Duration::from_millis(300);

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files hold the policy already served.
    Unchanged {
        digest: String,
    },
    Swapped {
        from: String,
        to: String,
    },
}

/// Reloads the policy at `config_path` into `store`.
pub struct Reloader {
    config_path: PathBuf,
    store: PolicyStore,
    metrics: Arc<Metrics>,
    /// One reload at a time, so a slow older load never overwrites a newer one. Holds when the
    /// last load started reading the files.
    serial: Mutex<Option<std::time::Instant>>,
}

impl Reloader {
    pub fn new(config_path: &Path, store: PolicyStore, metrics: Arc<Metrics>) -> Reloader {
        let policy = store.load();
        metrics.set_active_policy(&policy.digest, policy.key_counts(chrono::Utc::now()));
        Reloader {
            config_path: config_path.to_path_buf(),
            store,
            metrics,
            serial: Mutex::new(None),
        }
    }

    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    /// Loads and swaps now. Blocking (file reads, DNS): never call it on a request thread.
    pub fn reload_blocking(&self) -> Result<ReloadOutcome, PolicyErrors> {
        self.reload_unless_read_since(None, None)
            .expect("an unconditional reload always runs")
    }

    /// Reloads unless a load already started reading the files after `since`: that load saw
    /// every change made before `since`, so the watcher need not repeat what an admin call or a
    /// lifecycle command just did. `None` when skipped.
    ///
    /// `changed_key_files`, when known, names every key file that may differ from the serving
    /// policy's: the others are taken from it without even a `stat`.
    pub fn reload_unless_read_since(
        &self,
        since: Option<std::time::Instant>,
        changed_key_files: Option<&HashSet<Vec<u8>>>,
    ) -> Option<Result<ReloadOutcome, PolicyErrors>> {
        let mut last_read = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(since), Some(read)) = (since, *last_read) {
            if read >= since {
                return None;
            }
        }
        *last_read = Some(std::time::Instant::now());
        Some(self.load_and_swap(changed_key_files))
    }

    fn load_and_swap(
        &self,
        changed_key_files: Option<&HashSet<Vec<u8>>>,
    ) -> Result<ReloadOutcome, PolicyErrors> {
        let current = self.store.load_full();
        match load_at_low_priority(&self.config_path, &current, changed_key_files) {
            Ok(next) if next.digest == current.digest => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["unchanged"])
                    .inc();
                Ok(ReloadOutcome::Unchanged {
                    digest: next.digest,
                })
            }
            Ok(next) => {
                warn_about_restart_only_settings(&current, &next);
                let outcome = ReloadOutcome::Swapped {
                    from: current.digest.clone(),
                    to: next.digest.clone(),
                };
                self.metrics
                    .set_active_policy(&next.digest, next.key_counts(chrono::Utc::now()));
                let stats = next.load_stats;
                let old = self.store.swap(Arc::new(next));
                drop(current);
                release_off_request_path(old);
                self.metrics
                    .policy_reloads
                    .with_label_values(&["swapped"])
                    .inc();
                tracing::info!(
                    ?outcome,
                    key_files = stats.key_files,
                    read = stats.key_files_read,
                    keys_reused = stats.keys_reused,
                    "policy reloaded"
                );
                Ok(outcome)
            }
            Err(errors) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["failed"])
                    .inc();
                for problem in &errors.0 {
                    tracing::error!(%problem, "policy reload refused; the previous policy keeps serving");
                }
                Err(errors)
            }
        }
    }

    /// [`Self::reload_blocking`] on tokio's blocking pool.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadOutcome, PolicyErrors> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload_blocking())
            .await
            .unwrap_or_else(|e| {
                Err(PolicyErrors(vec![config::Problem {
                    file: PathBuf::new(),
                    field: String::new(),
                    message: format!("reload task failed: {e}"),
                }]))
            })
    }
}

/// `config::load` on a thread of its own at background priority ([`crate::priority`]; its
/// file-reading helpers inherit it). A thread of its own, because a lowered priority cannot be
/// raised back without privileges, and the calling thread may belong to tokio's blocking pool.
fn load_at_low_priority(
    config_path: &Path,
    serving: &Policy,
    changed_key_files: Option<&HashSet<Vec<u8>>>,
) -> Result<Policy, PolicyErrors> {
    let options = LoadOptions { resolve_dns: true };
    let load = || match changed_key_files {
        Some(changed) => config::load_reusing_all_but(config_path, options, serving, changed),
        None => config::load_reusing(config_path, options, serving),
    };
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("keygate-policy-load".to_owned())
            .spawn_scoped(scope, || {
                crate::priority::lower_this_thread();
                let loaded = load();
                return_freed_memory();
                loaded
            });
        match spawned {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the policy load thread; loading at normal priority");
                load()
            }
        }
    })
}

/// Hands the memory a policy load freed back to the OS now. Parsing 100,000 key files frees a few
/// hundred megabytes of intermediate data at once; mimalloc (the binary's allocator) would keep
/// those pages for its purge delay and reuse, and the process would sit at several times the
/// live policy's size (`benches/policy_swap.rs`: 88 MiB held after this, 151-361 MiB before).
/// Runs off the request path: after a load, and after an old policy is dropped.
pub fn return_freed_memory() {
    // SAFETY: no arguments but a flag; mimalloc collects its own free lists. Harmless (an empty
    // heap) where mimalloc is not the global allocator, as in tests.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Waits (bounded) for requests still on the old snapshot to finish, so that freeing a large
/// policy happens here on the reload thread rather than on whichever request drops it last.
/// Runs on a thread of its own so the next reload need not wait for slow streams.
fn release_off_request_path(old: Arc<Policy>) {
    let spawned = std::thread::Builder::new()
        .name("keygate-policy-release".to_owned())
        .spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
            return_freed_memory();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the policy release thread; the old policy is freed by its last request");
    }
}

/// Logs each setting `next` changes that the running server keeps as it was built.
fn warn_about_restart_only_settings(current: &Policy, next: &Policy) {
    let mut changed = next.startup.changed_from(&current.startup);
    // Not a startup setting (the new policy's keys come from the new directory), but the
    // watcher keeps following the directory it armed.
    if next.keys_dir != current.keys_dir {
        changed.push("keys_dir".to_owned());
    }
    // The pool is sized once; each provider's `idle_timeout` applies from the next request.
    let max_connections =
        crate::listener::ConnectionLimits::from_settings(&current.startup.server).max_connections;
    let pool = |p: &Policy| crate::upstream::pool_capacity(p.providers.values(), max_connections);
    if pool(next) != pool(current) {
        changed.push("providers.*.pool.max_idle".to_owned());
    }
    for setting in &changed {
        tracing::warn!(
            setting = setting.as_str(),
            "changed in the policy; it takes effect only after a restart"
        );
    }
}

/// The background service that turns file events and SIGHUP into reloads.
pub struct PolicyWatcher {
    pub reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for PolicyWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel::<watch::Change>();
        // Only the paths are kept: holding the snapshot itself would keep every old policy alive.
        let files = {
            let policy = self.reloader.store.load();
            watch::PolicyFiles::new(&policy.config_path, &policy.keys_dir)
        };
        let watcher = watch::arm(&files, tx, watch::Backend::Inotify);
        if let Some(w) = &watcher {
            tracing::debug!(backend = ?w.backend(), "watching the policy files");
        }
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        // A file changed between the startup load and the watches being armed raised no event:
        // one load now catches it. Unchanged keys are reused, so it costs little.
        let mut catch_up = watcher.is_some();
        // Changes since the serving policy was read. Those still queued in `events` when a load
        // starts are not in it: the next round reads them.
        let mut pending = watch::Pending::default();
        loop {
            if std::mem::take(&mut catch_up) {
                let reloader = self.reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload_blocking()).await;
                continue;
            }
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                // An operator's explicit reload reads every file.
                _ = hup => pending.anything(),
                Some(change) = events.recv() => {
                    pending.add(change);
                    let started = tokio::time::Instant::now();
                    while let Ok(Some(change)) = tokio::time::timeout(DEBOUNCE, events.recv()).await {
                        pending.add(change);
                        if started.elapsed() >= DEBOUNCE_MAX {
                            break;
                        }
                    }
                }
            }
            // Errors are logged and counted by the reloader; the old policy keeps serving, and
            // `pending` keeps what it has not read yet.
            let settled = std::time::Instant::now();
            let reloader = self.reloader.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let outcome = reloader.reload_unless_read_since(Some(settled), pending.key_files());
                (outcome, pending)
            })
            .await;
            pending = match joined {
                // Served now, or already read by a later load: nothing is pending any more.
                Ok((None | Some(Ok(_)), _)) => watch::Pending::default(),
                Ok((Some(Err(_)), kept)) => kept,
                Err(_) => watch::Pending::everything(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_warns_about_exactly_the_restart_settings_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys.d")).unwrap();
        let config = dir.path().join("keygate.yaml");
        std::fs::write(&config, "listen: 127.0.0.1:1\nserver: {threads: 1}\n").unwrap();
        let policy = config::load(&config, LoadOptions::default()).unwrap();
        let store: PolicyStore = Arc::new(arc_swap::ArcSwap::from_pointee(policy));
        let reloader = Reloader::new(&config, store, Arc::new(Metrics::new()));
        // Two restart settings and one applied at once, which is not warned about.
        std::fs::write(
            &config,
            "listen: 127.0.0.1:2\nserver: {threads: 2}\nmax_body_bytes: 1000\n",
        )
        .unwrap();

        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let log = log.clone();
            move || CapturedLog(log.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(writer)
            .finish();
        let outcome = tracing::subscriber::with_default(subscriber, || reloader.reload_blocking());
        assert!(
            matches!(outcome, Ok(ReloadOutcome::Swapped { .. })),
            "{outcome:?}"
        );

        let log = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        let warned: Vec<String> = log
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["level"] == "WARN")
            .map(|event| event["fields"]["setting"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(warned, ["listen", "server.threads"], "{log}");
    }

    struct CapturedLog(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for CapturedLog {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
