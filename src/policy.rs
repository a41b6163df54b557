//! The compiled policy snapshot the data plane reads. One [`Policy`] is immutable once built; reloads
//! build a new one and swap it in whole (see [`PolicyStore`]), so a request always sees one
//! consistent policy from its first phase to its last.
//!
//! Everything a request needs is resolved here ahead of time: a key carries its workload and its
//! effective model and operation sets, a model carries its provider, a provider carries its
//! prebuilt credential header and endpoint schedule. The request path does one SHA-256 and one map
//! lookup to find a key, and no string formatting to route it.
//!
//! What only takes effect when the gateway starts (listeners, threads, accounting sinks) is kept
//! apart in [`startup`]: a reload carries it but nothing applies it.

pub mod guardrails;
pub mod startup;

use crate::domain::{KeyStatus, Operation, ProviderFormat};
use crate::keys::secret::KeyDigest;
use crate::limits::budget::BudgetSpec;
use crate::limits::LimitSpec;
use crate::metrics::{
    KeyCounts, KeyHandles, KeyRef as MetricsKey, ModelHandles, ModelRef as MetricsModel,
};
use crate::upstream::azure::AzureTarget;
use crate::upstream::Provider;
pub use crate::usage::cost::Price;
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use guardrails::Guardrails;
use ipnet::IpNet;
use startup::StartupSettings;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A complete, validated policy.
#[derive(Debug)]
pub struct Policy {
    pub config_path: PathBuf,
    /// Not a startup setting: every load reads the keys from the directory its main file names,
    /// and key commands write there; only the file watcher keeps following the one it armed.
    pub keys_dir: PathBuf,
    /// Short SHA-256 over every file the policy was read from; equal digests mean equal policies.
    pub digest: String,
    /// SHA-256 of the main file: a reload whose main file is unchanged reuses the keys whose
    /// files are unchanged too.
    pub(crate) config_hash: [u8; 32],
    /// What the load that built this policy had to do.
    pub load_stats: LoadStats,
    /// What the server is built from; a reload carries these but does not apply them.
    pub startup: StartupSettings,
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive whole.
    pub body_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// How long a console login lasts (`admin.session_ttl`); applies to logins after a reload.
    pub session_ttl: Duration,
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Indexed by [`Model::index`].
    pub models: Vec<Arc<Model>>,
    models_by_name: HashMap<Box<str>, Arc<Model>>,
    pub workloads: BTreeMap<String, Arc<Workload>>,
    /// The names of the guardrails defined, in name order: what a key may add or switch off.
    pub guardrail_names: Vec<String>,
    keys_by_digest: HashMap<KeyDigest, KeyEntry, BuildHasherDefault<DigestHasher>>,
    pub keys_by_id: BTreeMap<String, Arc<Key>>,
    pub management_audit_file: PathBuf,
}

/// What a digest finds: the key, and when this particular secret stops working (set for secrets
/// replaced by a rotation with a grace period).
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub key: Arc<Key>,
    pub valid_until: Option<DateTime<Utc>>,
}

/// A model name clients may send, and where it goes.
#[derive(Debug)]
pub struct Model {
    pub index: usize,
    pub name: String,
    pub provider: Arc<Provider>,
    /// Set only when the upstream name differs from `name`, i.e. when the body must be rewritten.
    pub upstream_model: Option<String>,
    pub price: Option<Price>,
    /// Output tokens reserved against budgets when a request names no maximum of its own.
    pub max_output_tokens: Option<u64>,
    /// This model's metric handles, resolved on first use.
    pub metrics: OnceLock<ModelHandles>,
    /// Indices of the models tried, in order, when this one fails (see `upstream::attempt`).
    pub fallbacks: Vec<usize>,
    /// Azure OpenAI: the deployment and its paths; set exactly when the provider is `azure`.
    pub azure: Option<AzureTarget>,
}

impl Model {
    /// The model's labels and handle slot, for the metrics.
    pub fn metrics_ref(&self) -> MetricsModel<'_> {
        MetricsModel {
            index: self.index,
            name: &self.name,
            provider: &self.provider.name,
            handles: &self.metrics,
        }
    }

    /// The model name the provider is sent.
    pub fn upstream_name(&self) -> &str {
        self.upstream_model.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug)]
pub struct Workload {
    pub name: String,
    pub description: Option<String>,
    pub models: ModelSet,
    pub operations: OperationSet,
    pub limits: LimitSpec,
    /// `guardrail_defaults` and the workload's own guardrails; `None` when there are none.
    pub guardrails: Option<Arc<Guardrails>>,
}

/// A virtual key, with its workload's restrictions already folded in.
#[derive(Debug)]
pub struct Key {
    pub id: Box<str>,
    pub digest: KeyDigest,
    // Boxed strings here and below: a policy holds 100,000 of these, and every 8 bytes cut from
    // a key count in its load time (each fresh page is a fault) as much as in its memory.
    pub hint: Option<Box<str>>,
    pub workload: Arc<Workload>,
    pub owner: Option<Box<str>>,
    pub description: Option<Box<str>>,
    /// The key's own list intersected with its workload's.
    pub models: ModelSet,
    pub operations: OperationSet,
    /// The key's own limits; its workload's apply as well.
    pub limits: LimitSpec,
    /// Its workload's guardrails with the key's own additions and switch-offs; `None` when none
    /// apply.
    pub guardrails: Option<Arc<Guardrails>>,
    pub status: KeyStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    /// When its file was last modified, as the load that compiled it saw.
    pub updated_at: Option<DateTime<Utc>>,
    /// Rotated-out secrets still inside their grace period: `(digest, valid_until)`.
    pub previous: Box<[(KeyDigest, DateTime<Utc>)]>,
    /// This key's metric handles, resolved on its first request. Boxed: most keys of a large
    /// policy see no request in a snapshot's life, and inline the handles would double a key's size.
    pub metrics: OnceLock<Box<KeyHandles>>,
    /// Which file the key came from, for messages and for the lifecycle commands.
    pub file: Box<Path>,
    /// SHA-256 of that file's text, to recognise an unchanged file on the next reload; `None`
    /// for a key of a list file, which every load compiles again.
    pub(crate) source_hash: Option<[u8; 32]>,
    /// The file's stamp when last read with this text (`config::stamp`), so that the next reload
    /// can tell it unchanged without reading it; updated when a reload reads the same text again.
    pub(crate) stamp: std::sync::atomic::AtomicU64,
}

impl Key {
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The key's labels and handle slot, for the metrics.
    pub fn metrics_ref(&self) -> MetricsKey<'_> {
        MetricsKey {
            id: &self.id,
            workload: &self.workload.name,
            handles: &self.metrics,
        }
    }
}

/// A set of model indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSet {
    // A boxed slice: one of these per key of a policy of 100,000.
    words: Box<[u64]>,
}

impl ModelSet {
    pub fn insert(&mut self, index: usize) {
        let word = index / 64;
        if self.words.len() <= word {
            let mut words = std::mem::take(&mut self.words).into_vec();
            words.resize(word + 1, 0);
            self.words = words.into_boxed_slice();
        }
        self.words[word] |= 1 << (index % 64);
    }

    pub fn contains(&self, index: usize) -> bool {
        self.words
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    pub fn intersection(&self, other: &ModelSet) -> ModelSet {
        ModelSet {
            words: self
                .words
                .iter()
                .zip(&other.words)
                .map(|(a, b)| a & b)
                .collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

/// A set of operations as a bit mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationSet(u8);

impl OperationSet {
    pub fn all() -> OperationSet {
        Operation::ALL.into_iter().collect()
    }

    pub fn contains(self, op: Operation) -> bool {
        self.0 & Self::bit(op) != 0
    }

    pub fn intersection(self, other: OperationSet) -> OperationSet {
        OperationSet(self.0 & other.0)
    }

    fn bit(op: Operation) -> u8 {
        1 << (op as u8)
    }

    pub fn iter(self) -> impl Iterator<Item = Operation> {
        Operation::ALL
            .into_iter()
            .filter(move |op| self.contains(*op))
    }
}

impl FromIterator<Operation> for OperationSet {
    fn from_iter<I: IntoIterator<Item = Operation>>(iter: I) -> Self {
        OperationSet(iter.into_iter().fold(0, |acc, op| acc | Self::bit(op)))
    }
}

/// How much of a policy's load was work: key files read, and keys taken from the policy it
/// replaced rather than compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    pub key_files: usize,
    pub key_files_read: usize,
    pub keys_reused: usize,
}

/// Parts of a [`Policy`] that `compile` fills in; kept apart so the lookup maps stay private.
pub(crate) struct PolicyParts {
    pub config_path: PathBuf,
    pub keys_dir: PathBuf,
    pub digest: String,
    pub config_hash: [u8; 32],
    pub load_stats: LoadStats,
    pub startup: StartupSettings,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub session_ttl: Duration,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub models: Vec<Arc<Model>>,
    pub workloads: BTreeMap<String, Arc<Workload>>,
    pub keys: Vec<Arc<Key>>,
    pub guardrail_names: Vec<String>,
    pub management_audit_file: PathBuf,
}

impl Policy {
    /// Every key and workload with a budget, as `("key" | "workload", name, budget)`.
    pub fn budgets(&self) -> impl Iterator<Item = (&'static str, &str, &BudgetSpec)> {
        let keys = self.keys_by_id.values().map(|k| ("key", &*k.id, &k.limits));
        let workloads = self
            .workloads
            .values()
            .map(|w| ("workload", w.name.as_str(), &w.limits));
        keys.chain(workloads)
            .filter_map(|(scope, name, limits)| Some((scope, name, &**limits.budget.as_ref()?)))
    }

    /// The keys by status at `now`; an expired key counts as expired whatever its status.
    pub fn key_counts(&self, now: DateTime<Utc>) -> KeyCounts {
        let mut counts = KeyCounts::default();
        for key in self.keys_by_id.values() {
            match key.status {
                _ if key.is_expired_at(now) => counts.expired += 1,
                KeyStatus::Active => counts.active += 1,
                KeyStatus::Paused => counts.paused += 1,
            }
        }
        counts
    }

    pub(crate) fn assemble(parts: PolicyParts) -> Policy {
        let models_by_name = parts
            .models
            .iter()
            .map(|m| (Box::<str>::from(m.name.as_str()), m.clone()))
            .collect();
        let mut keys_by_digest =
            HashMap::with_capacity_and_hasher(parts.keys.len(), Default::default());
        // Collected rather than inserted one by one: keys come in file-name order, and a sorted
        // input lets the tree be built in one pass instead of a search per key.
        let keys_by_id: BTreeMap<String, Arc<Key>> = parts
            .keys
            .iter()
            .map(|key| (String::from(&*key.id), key.clone()))
            .collect();
        for key in parts.keys {
            for (digest, until) in &key.previous {
                keys_by_digest.insert(
                    *digest,
                    KeyEntry {
                        key: key.clone(),
                        valid_until: Some(*until),
                    },
                );
            }
            keys_by_digest.insert(
                key.digest,
                KeyEntry {
                    key: key.clone(),
                    valid_until: None,
                },
            );
        }
        Policy {
            config_path: parts.config_path,
            keys_dir: parts.keys_dir,
            digest: parts.digest,
            config_hash: parts.config_hash,
            load_stats: parts.load_stats,
            startup: parts.startup,
            max_body_bytes: parts.max_body_bytes,
            body_timeout: parts.body_timeout,
            session_ttl: parts.session_ttl,
            trusted_proxies: parts.trusted_proxies,
            providers: parts.providers,
            models: parts.models,
            models_by_name,
            workloads: parts.workloads,
            guardrail_names: parts.guardrail_names,
            keys_by_digest,
            keys_by_id,
            management_audit_file: parts.management_audit_file,
        }
    }

    /// The key whose secret (current, or rotated out within its grace) hashes to `digest`.
    #[inline]
    pub fn key_by_digest(&self, digest: &KeyDigest) -> Option<&KeyEntry> {
        self.keys_by_digest.get(digest)
    }

    #[inline]
    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.models_by_name.get(name)
    }

    pub fn provider_format(&self, name: &str) -> Option<ProviderFormat> {
        self.providers.get(name).map(|p| p.format)
    }
}

/// The live policy, swapped atomically on reload. Readers take one `Arc` per request.
pub type PolicyStore = Arc<ArcSwap<Policy>>;

/// Passes through the `u64` that [`KeyDigest`]'s `Hash` writes, so a key lookup costs no hashing
/// beyond the SHA-256 already done.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-digest keys; fold bytes in so the hasher stays correct in general.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_set_operations() {
        let mut a = ModelSet::default();
        a.insert(1);
        a.insert(70);
        let mut b = ModelSet::default();
        b.insert(70);
        b.insert(3);
        assert!(a.contains(70) && a.contains(1) && !a.contains(3));
        let both = a.intersection(&b);
        assert_eq!(both.iter().collect::<Vec<_>>(), vec![70]);
        assert!(!ModelSet::default().contains(5));
    }

    #[test]
    fn operation_set_operations() {
        let s: OperationSet = [Operation::Chat, Operation::Embeddings]
            .into_iter()
            .collect();
        assert!(s.contains(Operation::Chat) && !s.contains(Operation::Responses));
        let t = s.intersection([Operation::Chat].into_iter().collect());
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![Operation::Chat]);
        assert_eq!(OperationSet::all().iter().count(), Operation::ALL.len());
    }
}
