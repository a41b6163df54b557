//! One key, compiled against the rest of the policy: its id and digests checked, its workload
//! found, and its own models, operations and limits narrowed to what the workload allows.

use super::guardrails::Catalog;
use super::workloads::compile_limits;
use super::{field, Problems};
use crate::config::schema::KeyFile;
use crate::config::stamp;
use crate::config::KeyFileOverlay;
use crate::keys::secret::KeyDigest;
use crate::policy::{Key, ModelSet, OperationSet, Workload};
use chrono::{DateTime, Utc};
use smallvec::SmallVec;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Key ids are file stems and metric label values: keep them short and shell-safe.
pub const KEY_ID_RULE: &str = "1 to 64 characters of A-Z a-z 0-9 . _ -, not starting with `.`";

/// Whether `id` may name a key.
pub fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What a key's own file needs from the rest of the policy to compile it.
pub(super) struct KeyContext<'a> {
    pub model_index: &'a HashMap<&'a str, usize>,
    pub workloads: &'a BTreeMap<String, Arc<Workload>>,
    pub guardrails: &'a Catalog,
    /// The serving policy's keys, when they were compiled against the same main file.
    pub reusable: Option<&'a BTreeMap<String, Arc<Key>>>,
    /// When known, the only key files that may differ from the serving policy's.
    pub changed_key_files: Option<&'a HashSet<Vec<u8>>>,
    /// One key file's text in place of what the directory holds (a change being checked).
    pub overlay: Option<&'a KeyFileOverlay<'a>>,
}

impl KeyContext<'_> {
    /// The serving policy's key `id`, if it came from the single-key file `file`.
    pub(super) fn previous(&self, id: &str, file: &Path) -> Option<&Arc<Key>> {
        self.reusable?
            .get(id)
            // Byte equality: both paths are built the same way, and `Path`'s own comparison
            // walks components, a cost paid here for every file of every reload.
            .filter(|key| key.file.as_os_str() == file.as_os_str() && key.source_hash.is_some())
    }
}

/// One key as its own file compiled it, before the checks that span files.
pub(super) enum CompiledKey {
    Ok {
        key: Arc<Key>,
        /// `[i]` in a list file, empty in a single-key file.
        field_prefix: String,
    },
    /// A key with problems of its own, kept for the cross-file checks (rare, so boxed).
    Broken(Box<BrokenKey>),
}

pub(super) struct BrokenKey {
    id: String,
    file: PathBuf,
    field_prefix: String,
    digests: Vec<(KeyDigest, DigestAt)>,
}

/// Where in a key's file a digest sits.
#[derive(Clone, Copy)]
pub(super) enum DigestAt {
    Hash,
    Previous(usize),
}

impl DigestAt {
    pub(super) fn field(self, prefix: &str) -> String {
        match self {
            DigestAt::Hash => field(prefix, "hash"),
            DigestAt::Previous(i) => field(prefix, &format!("previous_hashes[{i}].hash")),
        }
    }
}

impl CompiledKey {
    /// The key's id, file and field prefix.
    pub(super) fn origin(&self) -> (&str, &Path, &str) {
        match self {
            CompiledKey::Ok { key, field_prefix } => (&key.id, &key.file, field_prefix),
            CompiledKey::Broken(b) => (&b.id, &b.file, &b.field_prefix),
        }
    }

    /// Every digest the key claims: its hash and those of rotated-out secrets.
    pub(super) fn digests(&self) -> SmallVec<[(KeyDigest, DigestAt); 2]> {
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

/// Compiles one key against the rest of the policy. Its problems go to `problems`; a key with
/// any is returned as [`CompiledKey::Broken`], still taking part in the cross-file checks.
pub(super) fn compile_key(
    id: String,
    (file, source_hash, stamp, modified): (
        &Path,
        Option<[u8; 32]>,
        stamp::Stamp,
        Option<DateTime<Utc>>,
    ),
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
    let guardrails = context.guardrails.for_key(
        file,
        p,
        workload.and_then(|w| w.guardrails.as_ref()),
        (&src.guardrails, &src.guardrails_off),
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
                guardrails,
                status: src.status,
                expires_at: src.expires_at,
                created_at: src.created_at,
                updated_at: modified,
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
    fn key_ids() {
        assert!(valid_key_id("support-bot.prod_1"));
        assert!(!valid_key_id(""));
        assert!(!valid_key_id(".hidden"));
        assert!(!valid_key_id("a/b"));
        assert!(!valid_key_id(&"x".repeat(65)));
    }
}
