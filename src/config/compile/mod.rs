//! Turns parsed files into a [`Policy`], collecting every problem on the way.

use super::env;
use super::schema::{
    BalanceFile, BudgetFile, BudgetModeFile, ConfigFile, HealthCheckFile, KeyFile, RateLimitFile,
};
use super::stamp;
use super::{LoadOptions, PolicyErrors, Problem};
use crate::accounting::audit::AuditTarget;
use crate::keys::secret::KeyDigest;
use crate::limits::budget::{BudgetMode, BudgetSpec};
use crate::limits::{LimitKind, LimitSpec, WindowSpec};
use crate::policy::startup::{MockProviderSettings, ServerSettings, StartupSettings};
use crate::policy::{
    Key, LoadStats, Model, ModelSet, OperationSet, Policy, PolicyParts, Price, Workload,
};
use crate::upstream::balance::Balance;
use crate::upstream::{
    EndpointSpec, HealthCheckSpec, Provider, ProviderSpec, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_RETRIES,
};
use crate::usage::cost::UsdNanos;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Key ids are file stems and metric label values: keep them short and shell-safe.
pub const KEY_ID_RULE: &str = "1 to 64 characters of A-Z a-z 0-9 . _ -, not starting with `.`";

const MAX_WEIGHT: u32 = 1000;
const MAX_ENDPOINTS: usize = 256;
const MAX_RETRIES: i64 = 10;
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const MAX_CHECK_THRESHOLD: i64 = 100;

/// Whether `id` may name a key.
pub fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Collects problems against the file being read.
struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    fn add(&mut self, file: &Path, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            file: file.to_path_buf(),
            field: field.into(),
            message: message.into(),
        });
    }
}

fn read_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, Problem> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        if let Some(at) = inner.location().filter(|_| !message.contains("line ")) {
            message.push_str(&format!(" at line {} column {}", at.line(), at.column()));
        }
        Problem {
            file: file.to_path_buf(),
            field: if field == "." { String::new() } else { field },
            message,
        }
    })
}

/// Where a file is opened from: by its whole path, or by its name in a directory already open.
/// Opening 100,000 key files by name relative to the keys directory spares the kernel a walk of
/// every directory above it per file.
#[derive(Clone, Copy)]
enum OpenFrom<'a> {
    Path,
    Dir(&'a std::fs::File),
}

/// A key file's text, and its stamp taken before reading: a write during the read then shows as a
/// changed stamp on the next load.
fn read_text_stamped(file: &Path, from: OpenFrom<'_>) -> Result<(String, stamp::Stamp), Problem> {
    let problem = |e: std::io::Error| Problem {
        file: file.to_path_buf(),
        field: String::new(),
        message: format!("cannot read: {e}"),
    };
    let opened = match (from, file.file_name()) {
        (OpenFrom::Dir(dir), Some(name)) => {
            use rustix::fs::{Mode, OFlags};
            rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map(std::fs::File::from)
                .map_err(std::io::Error::from)
        }
        _ => std::fs::File::open(file),
    }
    .map_err(problem)?;
    let meta = opened.metadata();
    let stamp = meta
        .as_ref()
        .map_or(stamp::NONE, |m| stamp::of(m, SystemTime::now()));
    // Sized from the metadata just taken. `File::read_to_string` would stat and seek again
    // first, and read once more to see the end: three more system calls per file in a load of
    // 100,000. One read that asks for a byte more than the file holds and gets exactly its size
    // has the whole file; anything else (a file that grew or shrank since) reads on to the end.
    let size = meta.map_or(0, |m| usize::try_from(m.len()).unwrap_or(0));
    let mut bytes = vec![0; size.saturating_add(1)];
    let first = (&opened).read(&mut bytes).map_err(problem)?;
    bytes.truncate(first);
    if first != size {
        (&opened)
            .take(u64::MAX)
            .read_to_end(&mut bytes)
            .map_err(problem)?;
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        problem(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    Ok((text, stamp))
}

fn read_text(file: &Path) -> Result<String, Problem> {
    read_text_stamped(file, OpenFrom::Path).map(|(text, _)| text)
}

fn base_dir(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(super) fn keys_dir_of(config_path: &Path) -> Result<PathBuf, PolicyErrors> {
    let text = read_text(config_path).map_err(|p| PolicyErrors(vec![p]))?;
    let config: ConfigFile = read_yaml(config_path, &text).map_err(|p| PolicyErrors(vec![p]))?;
    Ok(base_dir(config_path).join(config.keys_dir))
}

pub(super) fn load(
    config_path: &Path,
    options: LoadOptions,
    previous: Option<&Policy>,
    changed_key_files: Option<&HashSet<Vec<u8>>>,
) -> Result<Policy, PolicyErrors> {
    let mut problems = Problems { list: Vec::new() };
    let mut hasher = Sha256::new();

    let text = read_text(config_path).map_err(|p| PolicyErrors(vec![p]))?;
    hasher.update(text.as_bytes());
    let config_hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let config: ConfigFile = read_yaml(config_path, &text).map_err(|p| PolicyErrors(vec![p]))?;
    let base = base_dir(config_path);
    let keys_dir = base.join(&config.keys_dir);
    // Keys compile against the main file's workloads and models only, so with the same main
    // file an unchanged key file compiles to the same key.
    let reusable =
        previous.filter(|p| p.config_hash == config_hash && p.config_path == config_path);
    let policy = compile(
        config_path,
        &base,
        keys_dir,
        (config, config_hash),
        hasher,
        (reusable, changed_key_files),
        options,
        &mut problems,
    );
    if problems.list.is_empty() {
        Ok(policy.expect("a policy is built whenever there are no problems"))
    } else {
        Err(PolicyErrors(problems.list))
    }
}

/// What a key's own file needs from the rest of the policy to compile it.
struct KeyContext<'a> {
    model_index: &'a HashMap<&'a str, usize>,
    workloads: &'a BTreeMap<String, Arc<Workload>>,
    /// The serving policy's keys, when they were compiled against the same main file.
    reusable: Option<&'a BTreeMap<String, Arc<Key>>>,
    /// When known, the only key files that may differ from the serving policy's.
    changed_key_files: Option<&'a HashSet<Vec<u8>>>,
}

impl KeyContext<'_> {
    /// The serving policy's key `id`, if it came from the single-key file `file`.
    fn previous(&self, id: &str, file: &Path) -> Option<&Arc<Key>> {
        self.reusable?
            .get(id)
            // Byte equality: both paths are built the same way, and `Path`'s own comparison
            // walks components, a cost paid here for every file of every reload.
            .filter(|key| key.file.as_os_str() == file.as_os_str() && key.source_hash.is_some())
    }
}

/// Reads and compiles every `*.yaml`/`*.yml` in `dir`, in name order. Hidden entries are
/// skipped: they are editor temp files, or the `..data` machinery of Kubernetes ConfigMap volumes.
///
/// Each file is read, parsed and compiled into its keys on a worker thread, which drops the text
/// and the parsed form at once: at 100,000 keys, holding every parsed file until a later pass
/// would double what a load holds at its peak. What spans files (an id or a hash used twice) is
/// checked afterwards, in name order.
fn read_keys(
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

/// One key as its own file compiled it, before the checks that span files.
enum CompiledKey {
    Ok {
        key: Arc<Key>,
        /// `[i]` in a list file, empty in a single-key file.
        field_prefix: String,
    },
    /// A key with problems of its own, kept for the cross-file checks (rare, so boxed).
    Broken(Box<BrokenKey>),
}

struct BrokenKey {
    id: String,
    file: PathBuf,
    field_prefix: String,
    digests: Vec<(KeyDigest, DigestAt)>,
}

/// Where in a key's file a digest sits.
#[derive(Clone, Copy)]
enum DigestAt {
    Hash,
    Previous(usize),
}

impl DigestAt {
    fn field(self, prefix: &str) -> String {
        match self {
            DigestAt::Hash => field(prefix, "hash"),
            DigestAt::Previous(i) => field(prefix, &format!("previous_hashes[{i}].hash")),
        }
    }
}

impl CompiledKey {
    /// The key's id, file and field prefix.
    fn origin(&self) -> (&str, &Path, &str) {
        match self {
            CompiledKey::Ok { key, field_prefix } => (&key.id, &key.file, field_prefix),
            CompiledKey::Broken(b) => (&b.id, &b.file, &b.field_prefix),
        }
    }

    /// Every digest the key claims: its hash and those of rotated-out secrets.
    fn digests(&self) -> SmallVec<[(KeyDigest, DigestAt); 2]> {
        match self {
            CompiledKey::Ok { key, .. } => std::iter::once((key.digest, DigestAt::Hash))
                .chain(
                    key.previous
                        .iter()
                        .enumerate()
                        .map(|(i, (d, _))| (*d, DigestAt::Previous(i))),
                )
                .collect(),
            CompiledKey::Broken(b) => b.digests.iter().copied().collect(),
        }
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
    let previous = context.previous(&stem, file);
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
    let (text, stamp) = match read_text_stamped(file, from) {
        Ok(read) => read,
        Err(p) => {
            out.problems.list.push(p);
            return out;
        }
    };
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
                            (file, None, stamp::NONE),
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
            super::flat::parse::<KeyFile>(&text).map_or_else(|| read_yaml(file, &text), Ok);
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
                    (file, Some(out.text_hash), stamp),
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

fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 2s, 1m: {e}"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:8080 or [::]:8080"))
}

pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not a CIDR like 10.0.0.0/8 or 2001:db8::/32"))
}

#[allow(clippy::too_many_arguments)]
fn compile(
    config_path: &Path,
    base: &Path,
    keys_dir: PathBuf,
    (config, config_hash): (ConfigFile, [u8; 32]),
    mut hasher: Sha256,
    (reusable, changed_key_files): (Option<&Policy>, Option<&HashSet<Vec<u8>>>),
    options: LoadOptions,
    problems: &mut Problems,
) -> Option<Policy> {
    let cfg = config_path;
    let listen = parse_addr(&config.listen)
        .map_err(|m| problems.add(cfg, "listen", m))
        .ok();
    let admin_listen = config.admin_listen.as_deref().and_then(|a| {
        parse_addr(a)
            .map_err(|m| problems.add(cfg, "admin_listen", m))
            .ok()
    });
    if config.max_body_bytes == 0 {
        problems.add(cfg, "max_body_bytes", "must be greater than zero");
    }
    let trusted_proxies: Vec<IpNet> = config
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            parse_cidr(c)
                .map_err(|m| problems.add(cfg, format!("trusted_proxies[{i}]"), m))
                .ok()
        })
        .collect();
    if config.server.threads == Some(0) {
        problems.add(cfg, "server.threads", "must be at least 1");
    }
    let grace_period = config.server.grace_period.as_deref().and_then(|g| {
        parse_duration(g)
            .map_err(|m| problems.add(cfg, "server.grace_period", m))
            .ok()
    });
    let drain_delay = config.server.drain_delay.as_deref().and_then(|g| {
        parse_duration(g)
            .map_err(|m| problems.add(cfg, "server.drain_delay", m))
            .ok()
    });
    let mock_provider = config.mock_provider.as_ref().and_then(|m| {
        let listen =
            parse_addr(&m.listen).map_err(|e| problems.add(cfg, "mock_provider.listen", e));
        let delay = match m.stream_delay.as_deref() {
            None => Ok(Duration::from_millis(20)),
            Some(d) => humantime::parse_duration(d)
                .map_err(|e| problems.add(cfg, "mock_provider.stream_delay", e.to_string())),
        };
        Some(MockProviderSettings {
            listen: listen.ok()?,
            api_key: m.api_key.clone(),
            stream_delay: delay.ok()?,
        })
    });

    let auth_guard = {
        let g = &config.auth_guard;
        let max = u32::try_from(g.max_failures)
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| {
                problems.add(
                    cfg,
                    "auth_guard.max_failures",
                    "must be a whole number above zero",
                )
            })
            .ok();
        let per = parse_duration(&g.per)
            .map_err(|m| problems.add(cfg, "auth_guard.per", m))
            .ok();
        max.zip(per)
    };

    let providers = compile_providers(cfg, base, &config, options, problems);

    // Models, in name order, each with a stable index for the model sets of workloads and keys.
    let mut models: Vec<Arc<Model>> = Vec::new();
    for (name, m) in &config.models {
        let path = format!("models.{name}");
        let Some(provider) = providers.get(&m.provider) else {
            problems.add(
                cfg,
                format!("{path}.provider"),
                format!("unknown provider `{}`", m.provider),
            );
            continue;
        };
        let price = m.price.as_ref().and_then(|p| {
            let fields = [
                ("input_per_mtok", Some(p.input_per_mtok)),
                ("output_per_mtok", Some(p.output_per_mtok)),
                ("cached_input_per_mtok", p.cached_input_per_mtok),
            ];
            let mut ok = true;
            for (f, v) in fields {
                if let Some(v) = v {
                    if !v.is_finite() || !(0.0..=1e6).contains(&v) {
                        problems.add(
                            cfg,
                            format!("{path}.price.{f}"),
                            "must be a number from 0 to 1000000 (USD per million tokens)",
                        );
                        ok = false;
                    }
                }
            }
            if !ok {
                return None;
            }
            Price::from_usd_per_mtok(p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok)
        });
        let max_output_tokens = m.max_output_tokens.and_then(|n| match u64::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                problems.add(
                    cfg,
                    format!("{path}.max_output_tokens"),
                    "must be a whole number above zero",
                );
                None
            }
        });
        if name.is_empty() {
            problems.add(cfg, "models", "a model name cannot be empty");
        }
        let upstream_model = m.upstream_model.clone().filter(|u| u != name);
        models.push(Arc::new(Model {
            index: models.len(),
            name: name.clone(),
            provider: provider.clone(),
            upstream_model,
            price,
            fallbacks: Vec::new(),
            max_output_tokens,
            metrics: Default::default(),
        }));
    }
    resolve_fallbacks(cfg, &config, &mut models, problems);
    let model_index: HashMap<&str, usize> =
        models.iter().map(|m| (m.name.as_str(), m.index)).collect();

    let mut workloads: BTreeMap<String, Arc<Workload>> = BTreeMap::new();
    for (name, w) in &config.workloads {
        let path = format!("workloads.{name}");
        let mut set = ModelSet::default();
        for (i, model) in w.models.iter().enumerate() {
            match model_index.get(model.as_str()) {
                Some(&idx) => set.insert(idx),
                None => problems.add(
                    cfg,
                    format!("{path}.models[{i}]"),
                    format!("unknown model `{model}`"),
                ),
            }
        }
        let operations = w
            .operations
            .as_ref()
            .map(|ops| ops.iter().copied().collect())
            .unwrap_or_else(OperationSet::all);
        let limits = compile_limits(
            cfg,
            &path,
            &w.rate_limits,
            w.max_concurrent,
            w.allowed_ips.as_deref(),
            w.budget.as_ref(),
            problems,
        );
        workloads.insert(
            name.clone(),
            Arc::new(Workload {
                name: name.clone(),
                description: w.description.clone(),
                models: set,
                operations,
                limits,
            }),
        );
    }

    if let Some(previous) = reusable {
        // The same main file compiled to these same workloads; the reused keys point at the
        // serving policy's, so the new policy must hold those very ones.
        workloads = previous.workloads.clone();
    }
    let context = KeyContext {
        model_index: &model_index,
        workloads: &workloads,
        reusable: reusable.map(|p| &p.keys_by_id),
        changed_key_files,
    };
    let (keys, load_stats) = read_keys(&keys_dir, &context, problems, &mut hasher);
    let digest = hex::encode(&hasher.finalize()[..8]);

    if !problems.list.is_empty() {
        return None;
    }
    Some(Policy::assemble(PolicyParts {
        config_path: config_path.to_path_buf(),
        keys_dir,
        digest,
        config_hash,
        load_stats,
        startup: StartupSettings {
            listen: listen?,
            admin_listen,
            mock_provider,
            server: ServerSettings {
                threads: config.server.threads,
                work_stealing: config.server.work_stealing,
                grace_period,
                drain_delay,
            },
            auth_guard: auth_guard?,
            state_dir: config.state_dir.as_ref().map(|d| base.join(d)),
            audit_log: config.audit_log.as_deref().map(|target| match target {
                "-" => AuditTarget::Stdout,
                path => AuditTarget::File(base.join(path)),
            }),
        },
        max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
        trusted_proxies,
        providers,
        models,
        workloads,
        keys,
        management_audit_file: base.join(&config.management_audit_file),
    }))
}

/// Fills in each model's `fallbacks` as model indices. Only the primary's list is followed at
/// request time, so fallbacks of fallbacks are allowed and never chained.
fn resolve_fallbacks(
    cfg: &Path,
    config: &ConfigFile,
    models: &mut [Arc<Model>],
    problems: &mut Problems,
) {
    let model_index: HashMap<String, usize> =
        models.iter().map(|m| (m.name.clone(), m.index)).collect();
    for model in models.iter_mut() {
        let Some(file) = config.models.get(&model.name) else {
            continue;
        };
        let mut fallbacks = Vec::new();
        for (i, name) in file.fallbacks.iter().enumerate() {
            let at = format!("models.{}.fallbacks[{i}]", model.name);
            match model_index.get(name.as_str()) {
                None => problems.add(cfg, at, format!("unknown model `{name}`")),
                Some(_) if *name == model.name => {
                    problems.add(cfg, at, "a model cannot be its own fallback")
                }
                Some(idx) if fallbacks.contains(idx) => {
                    problems.add(cfg, at, format!("`{name}` is listed twice"))
                }
                Some(&idx) => fallbacks.push(idx),
            }
        }
        if let Some(m) = Arc::get_mut(model) {
            m.fallbacks = fallbacks;
        }
    }
}

fn compile_providers(
    cfg: &Path,
    base: &Path,
    config: &ConfigFile,
    options: LoadOptions,
    problems: &mut Problems,
) -> BTreeMap<String, Arc<Provider>> {
    let mut providers = BTreeMap::new();
    for (name, p) in &config.providers {
        let path = format!("providers.{name}");
        let before = problems.list.len();
        let lookup = |var: &str| std::env::var(var).ok();
        let api_key = p.api_key.as_deref().and_then(|k| {
            env::expand(k, lookup)
                .map_err(|m| problems.add(cfg, format!("{path}.api_key"), m))
                .ok()
        });
        if p.endpoints.is_empty() {
            problems.add(
                cfg,
                format!("{path}.endpoints"),
                "at least one endpoint is required",
            );
        }
        if p.endpoints.len() > MAX_ENDPOINTS {
            problems.add(
                cfg,
                format!("{path}.endpoints"),
                format!("at most {MAX_ENDPOINTS} endpoints"),
            );
        }
        let mut endpoints = Vec::new();
        for (i, e) in p.endpoints.iter().enumerate() {
            let epath = format!("{path}.endpoints[{i}]");
            if !(1..=MAX_WEIGHT).contains(&e.weight) {
                problems.add(
                    cfg,
                    format!("{epath}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT}"),
                );
            }
            let url = match env::expand(&e.url, lookup) {
                Ok(u) => u,
                Err(m) => {
                    problems.add(cfg, format!("{epath}.url"), m);
                    continue;
                }
            };
            match parse_endpoint_url(&url) {
                Ok(mut spec) => {
                    spec.weight = e.weight;
                    endpoints.push(spec);
                }
                Err(m) => problems.add(cfg, format!("{epath}.url"), m),
            }
        }
        let mut extra_ca_der = Vec::new();
        if let Some(ca) = &p.ca_file {
            match env::expand(ca, lookup) {
                Ok(ca) => match read_ca_file(&base.join(ca)) {
                    Ok(ders) => extra_ca_der = ders,
                    Err(m) => problems.add(cfg, format!("{path}.ca_file"), m),
                },
                Err(m) => problems.add(cfg, format!("{path}.ca_file"), m),
            }
        }
        let mut timeout = |value: &Option<String>, field_name: &str, default: Duration| {
            value.as_deref().map_or(Some(default), |t| {
                parse_duration(t)
                    .map_err(|m| problems.add(cfg, format!("{path}.timeouts.{field_name}"), m))
                    .ok()
            })
        };
        let connect_timeout = timeout(&p.timeouts.connect, "connect", DEFAULT_CONNECT_TIMEOUT);
        let idle_timeout = timeout(&p.timeouts.idle, "idle", DEFAULT_IDLE_TIMEOUT);
        // Unset, the wait for the first byte is the silence allowance, as before it existed.
        let first_byte_timeout = timeout(
            &p.timeouts.first_byte,
            "first_byte",
            idle_timeout.unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT),
        );
        let total_timeout = p.timeouts.total.as_deref().and_then(|t| {
            parse_duration(t)
                .map_err(|m| problems.add(cfg, format!("{path}.timeouts.total"), m))
                .ok()
        });
        if let Some(total) = total_timeout {
            // Defaults longer than `total` are fine (the total caps them); a value written
            // longer than it is a mistake.
            for (name, value) in [
                ("connect", p.timeouts.connect.as_ref().and(connect_timeout)),
                (
                    "first_byte",
                    p.timeouts.first_byte.as_ref().and(first_byte_timeout),
                ),
                ("idle", p.timeouts.idle.as_ref().and(idle_timeout)),
            ] {
                if value.is_some_and(|v| v > total) {
                    problems.add(
                        cfg,
                        format!("{path}.timeouts.{name}"),
                        format!(
                            "is longer than `timeouts.total` ({}), so it could never fire",
                            humantime::format_duration(total)
                        ),
                    );
                }
            }
        }
        let retries = match p.retries {
            None => DEFAULT_RETRIES,
            Some(n) if (0..=MAX_RETRIES).contains(&n) => n as u32,
            Some(_) => {
                problems.add(
                    cfg,
                    format!("{path}.retries"),
                    format!("must be a whole number from 0 to {MAX_RETRIES}"),
                );
                0
            }
        };
        let health_check = p
            .health_check
            .as_ref()
            .and_then(|h| compile_health_check(cfg, &path, h, problems));
        if problems.list.len() != before {
            continue;
        }
        let spec = ProviderSpec {
            name: name.clone(),
            format: p.format,
            api_key,
            endpoints,
            extra_ca_der,
            connect_timeout: connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            first_byte_timeout: first_byte_timeout.unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT),
            idle_timeout: idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            total_timeout,
            balance: match p.balance {
                BalanceFile::RoundRobin => Balance::RoundRobin,
                BalanceFile::LeastRequests => Balance::LeastRequests,
                BalanceFile::P2cLatency => Balance::P2cLatency,
            },
            retries,
            health_check,
        };
        match Provider::new(spec) {
            Ok(provider) => {
                if options.resolve_dns {
                    for (url, e) in provider.resolve_blocking() {
                        // Not fatal: DNS may be back by the next refresh, and other endpoints serve.
                        tracing::warn!(provider = %name, endpoint = %url, error = %e, "cannot resolve endpoint host");
                    }
                }
                providers.insert(name.clone(), Arc::new(provider));
            }
            Err(e) => problems.add(cfg, path, e.to_string()),
        }
    }
    providers
}

fn compile_health_check(
    cfg: &Path,
    path: &str,
    h: &HealthCheckFile,
    problems: &mut Problems,
) -> Option<HealthCheckSpec> {
    let before = problems.list.len();
    let at = format!("{path}.health_check");
    if !h.path.starts_with('/') || h.path.bytes().any(|b| b.is_ascii_whitespace()) {
        problems.add(
            cfg,
            format!("{at}.path"),
            format!(
                "`{}` must be a path starting with `/`, without spaces",
                h.path
            ),
        );
    }
    let interval = match h.interval.as_deref().map(parse_duration) {
        None => DEFAULT_CHECK_INTERVAL,
        Some(Ok(d)) if (MIN_CHECK_INTERVAL..=MAX_CHECK_INTERVAL).contains(&d) => d,
        Some(Ok(_)) => {
            problems.add(
                cfg,
                format!("{at}.interval"),
                "must be between 100ms and 1h",
            );
            DEFAULT_CHECK_INTERVAL
        }
        Some(Err(m)) => {
            problems.add(cfg, format!("{at}.interval"), m);
            DEFAULT_CHECK_INTERVAL
        }
    };
    let mut threshold = |value: Option<i64>, name: &str, default: u32| match value {
        None => default,
        Some(n) if (1..=MAX_CHECK_THRESHOLD).contains(&n) => n as u32,
        Some(_) => {
            problems.add(
                cfg,
                format!("{at}.{name}"),
                format!("must be a whole number from 1 to {MAX_CHECK_THRESHOLD}"),
            );
            default
        }
    };
    let unhealthy_after = threshold(h.unhealthy_after, "unhealthy_after", 3);
    let healthy_after = threshold(h.healthy_after, "healthy_after", 2);
    (problems.list.len() == before).then(|| HealthCheckSpec {
        path: h.path.clone(),
        interval,
        unhealthy_after,
        healthy_after,
    })
}

const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Compiles `rate_limits`, `max_concurrent` and `allowed_ips` of a key (`prefix` "" or "[i]")
/// or a workload (`prefix` "workloads.NAME").
fn compile_limits(
    file: &Path,
    prefix: &str,
    rate_limits: &[RateLimitFile],
    max_concurrent: Option<i64>,
    allowed_ips: Option<&[String]>,
    budget: Option<&BudgetFile>,
    problems: &mut Problems,
) -> LimitSpec {
    let mut windows = Vec::new();
    // Where each kept window came from, for messages.
    let mut origins = Vec::new();
    for (i, r) in rate_limits.iter().enumerate() {
        let at = field(prefix, &format!("rate_limits[{i}]"));
        let (kind, value) = match (r.requests, r.tokens) {
            (Some(n), None) => (LimitKind::Requests, n),
            (None, Some(n)) => (LimitKind::Tokens, n),
            _ => {
                problems.add(file, at, "needs exactly one of `requests` or `tokens`");
                continue;
            }
        };
        let per = match parse_duration(&r.per) {
            Ok(d) if (MIN_WINDOW..=MAX_WINDOW).contains(&d) => Some(d),
            Ok(_) => {
                problems.add(
                    file,
                    format!("{at}.per"),
                    format!("`{}` is outside 1s to 30d", r.per),
                );
                None
            }
            Err(m) => {
                problems.add(file, format!("{at}.per"), m);
                None
            }
        };
        if value <= 0 {
            let which = if kind == LimitKind::Requests {
                "requests"
            } else {
                "tokens"
            };
            problems.add(file, format!("{at}.{which}"), "must be greater than zero");
            continue;
        }
        // Windows of one kind and length share a counter, so a second one would count every
        // request twice.
        if let Some(j) = per.and_then(|per| {
            windows
                .iter()
                .position(|w: &WindowSpec| w.kind == kind && w.per == per)
        }) {
            problems.add(
                file,
                at,
                format!(
                    "repeats the kind and length of rate_limits[{}]; keep one of them",
                    origins[j]
                ),
            );
            continue;
        }
        if let Some(per) = per {
            origins.push(i);
            windows.push(WindowSpec {
                kind,
                limit: value as u64,
                per,
            });
        }
    }
    let max_concurrent = max_concurrent.and_then(|m| match u32::try_from(m) {
        Ok(m) if m > 0 => Some(m),
        _ => {
            problems.add(
                file,
                field(prefix, "max_concurrent"),
                "must be a whole number above zero",
            );
            None
        }
    });
    let allowed_ips = allowed_ips.map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, c)| {
                parse_cidr(c)
                    .map_err(|m| problems.add(file, field(prefix, &format!("allowed_ips[{i}]")), m))
                    .ok()
            })
            .collect()
    });
    let budget = budget.and_then(|b| compile_budget(file, prefix, b, problems));
    LimitSpec::new(windows, max_concurrent, allowed_ips, budget)
}

fn compile_budget(
    file: &Path,
    prefix: &str,
    budget: &BudgetFile,
    problems: &mut Problems,
) -> Option<BudgetSpec> {
    let before = problems.list.len();
    let mut cap = |name: &str, usd: Option<f64>| {
        usd.and_then(|usd| match UsdNanos::from_usd(usd) {
            Some(n) if usd > 0.0 && usd <= 1e9 => Some(n),
            _ => {
                problems.add(
                    file,
                    field(prefix, &format!("budget.{name}")),
                    "must be a dollar amount above zero",
                );
                None
            }
        })
    };
    let daily = cap("daily_usd", budget.daily_usd);
    let monthly = cap("monthly_usd", budget.monthly_usd);
    if budget.daily_usd.is_none() && budget.monthly_usd.is_none() {
        problems.add(
            file,
            field(prefix, "budget"),
            "needs `daily_usd`, `monthly_usd` or both",
        );
    }
    let mut alert_at: SmallVec<[u16; 4]> = SmallVec::new();
    for (i, &f) in budget.alert_at.iter().enumerate() {
        if f.is_finite() && f > 0.0 && f <= 1.0 && i < 8 {
            alert_at.push((f * 1000.0).round() as u16);
        } else {
            problems.add(
                file,
                field(prefix, &format!("budget.alert_at[{i}]")),
                "must be a fraction above 0 and at most 1 (at most 8 of them)",
            );
        }
    }
    alert_at.sort_unstable();
    alert_at.dedup();
    (problems.list.len() == before).then_some(BudgetSpec {
        daily,
        monthly,
        mode: match budget.mode {
            BudgetModeFile::Enforce => BudgetMode::Enforce,
            BudgetModeFile::Track => BudgetMode::Track,
        },
        alert_at,
    })
}

fn parse_endpoint_url(text: &str) -> Result<EndpointSpec, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(format!(
                "scheme `{other}` is not supported; use http or https"
            ))
        }
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(format!("`{text}` has no host")),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}` must not have a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials belong in `api_key`, not in the URL".to_owned());
    }
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    Ok(EndpointSpec {
        url: text.to_owned(),
        tls,
        host,
        port,
        base_path: url.path().trim_end_matches('/').to_owned(),
        weight: 1,
    })
}

fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut data.as_slice())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} contains no PEM certificates", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for der in &certs {
        store
            .add(rustls::pki_types::CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("{} holds an unusable certificate: {e}", path.display()))?;
    }
    Ok(certs)
}

/// Compiles one key against the rest of the policy. Its problems go to `problems`; a key with
/// any is returned as [`CompiledKey::Broken`], still taking part in the cross-file checks.
fn compile_key(
    id: String,
    (file, source_hash, stamp): (&Path, Option<[u8; 32]>, stamp::Stamp),
    field_prefix: String,
    src: KeyFile,
    context: &KeyContext<'_>,
    problems: &mut Problems,
) -> CompiledKey {
    let p = field_prefix.as_str();
    let before = problems.list.len();
    if !valid_key_id(&id) {
        problems.add(
            file,
            field(p, "id"),
            format!("`{id}` is not a valid key id ({KEY_ID_RULE})"),
        );
    }
    let digest = KeyDigest::parse(&src.hash);
    if digest.is_none() {
        problems.add(
            file,
            field(p, "hash"),
            "must be `sha256:` followed by 64 hex digits",
        );
    }
    let mut previous = Vec::new();
    for (i, prev) in src.previous_hashes.iter().enumerate() {
        match KeyDigest::parse(&prev.hash) {
            None => problems.add(
                file,
                DigestAt::Previous(i).field(p),
                "must be `sha256:` followed by 64 hex digits",
            ),
            Some(d) => previous.push((d, prev.valid_until)),
        }
    }
    let workload = context.workloads.get(&src.workload);
    if workload.is_none() {
        problems.add(
            file,
            field(p, "workload"),
            format!("unknown workload `{}`", src.workload),
        );
    }
    let mut models = workload.map(|w| w.models.clone()).unwrap_or_default();
    if let Some(list) = &src.models {
        let mut own = ModelSet::default();
        for (i, m) in list.iter().enumerate() {
            match context.model_index.get(m.as_str()) {
                Some(&idx) => {
                    if workload.is_some_and(|w| !w.models.contains(idx)) {
                        problems.add(
                            file,
                            field(p, &format!("models[{i}]")),
                            format!("model `{m}` is not allowed by workload `{}`", src.workload),
                        );
                    }
                    own.insert(idx);
                }
                None => problems.add(
                    file,
                    field(p, &format!("models[{i}]")),
                    format!("unknown model `{m}`"),
                ),
            }
        }
        models = models.intersection(&own);
    }
    let mut operations = workload.map(|w| w.operations).unwrap_or_default();
    if let Some(list) = &src.operations {
        for (i, op) in list.iter().enumerate() {
            if workload.is_some_and(|w| !w.operations.contains(*op)) {
                problems.add(
                    file,
                    field(p, &format!("operations[{i}]")),
                    format!(
                        "operation `{}` is not allowed by workload `{}`",
                        op.as_str(),
                        src.workload
                    ),
                );
            }
        }
        operations = operations.intersection(list.iter().copied().collect::<OperationSet>());
    }
    let limits = compile_limits(
        file,
        p,
        &src.rate_limits,
        src.max_concurrent,
        src.allowed_ips.as_deref(),
        src.budget.as_ref(),
        problems,
    );
    match (digest, workload) {
        (Some(digest), Some(workload)) if problems.list.len() == before => CompiledKey::Ok {
            key: Arc::new(Key {
                id: id.into(),
                digest,
                hint: src.hint.map(String::into_boxed_str),
                workload: workload.clone(),
                owner: src.owner.map(String::into_boxed_str),
                description: src.description.map(String::into_boxed_str),
                models,
                operations,
                limits,
                status: src.status,
                expires_at: src.expires_at,
                created_at: src.created_at,
                previous: previous.into_boxed_slice(),
                file: file.into(),
                source_hash,
                stamp: AtomicU64::new(stamp),
                metrics: Default::default(),
            }),
            field_prefix,
        },
        _ => CompiledKey::Broken(Box::new(BrokenKey {
            id,
            file: file.to_path_buf(),
            field_prefix,
            digests: digest
                .map(|d| (d, DigestAt::Hash))
                .into_iter()
                .chain(
                    src.previous_hashes
                        .iter()
                        .enumerate()
                        .filter_map(|(i, prev)| {
                            KeyDigest::parse(&prev.hash).map(|d| (d, DigestAt::Previous(i)))
                        }),
                )
                .collect(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        let e = parse_endpoint_url("https://api.openai.com").unwrap();
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("api.openai.com", 443, "")
        );
        let e = parse_endpoint_url("http://127.0.0.1:9000/openai/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("127.0.0.1", 9000, "/openai")
        );
        let e = parse_endpoint_url("http://[::1]:9000").unwrap();
        assert_eq!(e.host, "::1");
        assert!(parse_endpoint_url("ftp://x").is_err());
        assert!(parse_endpoint_url("not a url").is_err());
        assert!(parse_endpoint_url("https://u:p@x").is_err());
    }

    #[test]
    fn key_ids() {
        assert!(valid_key_id("support-bot.prod_1"));
        assert!(!valid_key_id(""));
        assert!(!valid_key_id(".hidden"));
        assert!(!valid_key_id("a/b"));
        assert!(!valid_key_id(&"x".repeat(65)));
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("2001:db8::/32").is_ok());
        assert!(parse_cidr("192.0.2.7").is_ok());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("banana").is_err());
    }

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
        let reused = load(config, LoadOptions::default(), Some(previous), None).unwrap();
        let fresh = load(config, LoadOptions::default(), None, None).unwrap();
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
        let first = load(&config, LoadOptions::default(), None, None).unwrap();
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
        let errors = load(&config, LoadOptions::default(), Some(&fifth), None).unwrap_err();
        assert!(errors.0.iter().any(|p| p.field == "hash"), "{errors:?}");
    }

    #[test]
    fn key_files_of_any_size_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0, 1, 511, 4096, 70_000] {
            let text: String = "key: value\n".chars().cycle().take(size).collect();
            let path = dir.path().join(format!("{size}.yaml"));
            std::fs::write(&path, &text).unwrap();
            assert_eq!(read_text(&path).unwrap(), text, "{size} bytes");
        }
        std::fs::write(dir.path().join("bad.yaml"), [b'a', 0xff, b'b']).unwrap();
        let problem = read_text(&dir.path().join("bad.yaml")).unwrap_err();
        assert!(problem.message.contains("UTF-8"), "{problem:?}");
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
        let errors = load(&config, LoadOptions::default(), None, None).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors:?}");
        assert!(errors.0[0].file.ends_with("k1299.yaml"), "{errors:?}");
        assert!(errors.0[0].message.contains("`k0000`"), "{errors:?}");

        write(
            &keys,
            "k1299.yaml",
            &format!("hash: \"sha256:{:064x}\"\nworkload: w1\n", n),
        );
        let policy = load(&config, LoadOptions::default(), None, None).unwrap();
        assert_eq!(policy.keys_by_id.len(), n);
        assert_eq!(policy.load_stats.key_files, n);
        assert_eq!(
            policy.digest,
            load(&config, LoadOptions::default(), None, None)
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
        let first = load(&config, LoadOptions::default(), None, None).unwrap();
        let changed = |names: &[&str]| -> HashSet<Vec<u8>> {
            names.iter().map(|n| n.as_bytes().to_vec()).collect()
        };
        let reload_told = |previous: &Policy, names: &[&str]| {
            load(
                &config,
                LoadOptions::default(),
                Some(previous),
                Some(&changed(names)),
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
