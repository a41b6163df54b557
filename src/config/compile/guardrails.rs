//! The `guardrails` and `guardrail_defaults` sections, and the effective guardrail list of each
//! workload and key: the defaults, then the workload's, then the key's own additions, less the
//! key's `guardrails_off`. Each definition is checked on its own (so a bad pattern is reported
//! at its guardrail), and each distinct list is compiled once into a shared [`Guardrails`].

use super::{parse_duration, Problems};
use crate::config::env;
use crate::config::schema::{
    ConfigFile, GuardrailActionFile, GuardrailFile, GuardrailSideFile, KeywordMatchFile,
    ModerationFormatFile, ModerationOnErrorFile, SecretsFile,
};
use crate::guardrails::moderation::{self, Moderation};
use crate::guardrails::{
    Action, ApplyTo, Detector, GuardrailSpec, PiiKind, Scanner, SecretKind, Side, Threshold,
};
use crate::policy::guardrails::{Guardrails, ModerationRule};
use http::HeaderValue;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a moderation service is waited for when its guardrail names no `timeout`.
pub const DEFAULT_MODERATION_TIMEOUT: Duration = Duration::from_secs(1);

/// One definition, checked.
enum Definition {
    Scan(GuardrailSpec),
    Moderation(Arc<str>, Moderation, Action),
}

/// The policy's guardrail definitions, and the lists compiled from them so far.
pub(super) struct Catalog {
    /// By name; a definition's index is its position in name order.
    index: HashMap<String, u16>,
    /// `None` for a definition with problems (already reported).
    definitions: Vec<Option<Definition>>,
    defaults: Vec<u16>,
    compiled: Mutex<HashMap<Box<[u16]>, Compiled>>,
}

/// A list compiled: `None` when it is empty or names a definition with problems.
type Compiled = Option<Arc<Guardrails>>;

pub(super) fn compile_catalog(cfg: &Path, config: &ConfigFile, problems: &mut Problems) -> Catalog {
    let mut client = None;
    let mut index = HashMap::new();
    let mut definitions = Vec::new();
    for (i, (name, g)) in config.guardrails.iter().enumerate() {
        index.insert(name.clone(), i as u16);
        let path = format!("guardrails.{name}");
        definitions.push(define(cfg, &path, name, g, &mut client, problems));
    }
    let mut catalog = Catalog {
        index,
        definitions,
        defaults: Vec::new(),
        compiled: Mutex::new(HashMap::new()),
    };
    catalog.defaults = catalog.resolve(
        cfg,
        "guardrail_defaults",
        &config.guardrail_defaults,
        problems,
    );
    catalog
}

fn define(
    cfg: &Path,
    path: &str,
    name: &str,
    g: &GuardrailFile,
    client: &mut Option<moderation::Client>,
    problems: &mut Problems,
) -> Option<Definition> {
    let before = problems.list.len();
    let name: Arc<str> = name.into();
    let detectors = [
        g.keywords.is_some(),
        g.regex.is_some(),
        g.pii.is_some(),
        g.secrets.is_some(),
        g.prompt_injection.is_some(),
        g.moderation.is_some(),
    ];
    if detectors.iter().filter(|d| **d).count() != 1 {
        problems.add(
            cfg,
            path,
            "needs exactly one detector: `keywords`, `regex`, `pii`, `secrets`, `prompt_injection` or `moderation`",
        );
        return None;
    }
    if g.match_.is_some() && g.keywords.is_none() {
        problems.add(cfg, format!("{path}.match"), "applies to `keywords` only");
    }
    let action = match g.action {
        GuardrailActionFile::Block => Action::Block,
        GuardrailActionFile::Redact => Action::Redact,
        GuardrailActionFile::Log => Action::Log,
    };
    let apply_to = match &g.apply_to {
        None => ApplyTo::REQUEST,
        Some(sides) if sides.is_empty() => {
            problems.add(
                cfg,
                format!("{path}.apply_to"),
                "lists no side; use `[request]`, `[response]` or `[request, response]`",
            );
            ApplyTo::REQUEST
        }
        Some(sides) => {
            let sides: Vec<Side> = sides
                .iter()
                .map(|s| match s {
                    GuardrailSideFile::Request => Side::Request,
                    GuardrailSideFile::Response => Side::Response,
                })
                .collect();
            ApplyTo::from_sides(&sides)
        }
    };
    if let Some(m) = &g.moderation {
        if apply_to.response {
            problems.add(
                cfg,
                format!("{path}.apply_to"),
                "a moderation service checks requests only",
            );
        }
        if action == Action::Redact {
            problems.add(
                cfg,
                format!("{path}.action"),
                "a moderation service's verdict has nothing to redact; use `block` or `log`",
            );
        }
        let hook = moderation_hook(cfg, &format!("{path}.moderation"), m, client, problems)?;
        return (problems.list.len() == before)
            .then_some(Definition::Moderation(name, hook, action));
    }
    let detector = if let Some(words) = &g.keywords {
        Detector::Keywords {
            words: words.clone(),
            whole_word: g.match_ != Some(KeywordMatchFile::Substring),
        }
    } else if let Some(patterns) = &g.regex {
        Detector::Regex(patterns.clone())
    } else if let Some(kinds) = &g.pii {
        Detector::Pii(named_kinds(
            cfg,
            &format!("{path}.pii"),
            kinds,
            &PiiKind::ALL,
            PiiKind::as_str,
            problems,
        ))
    } else if let Some(secrets) = &g.secrets {
        let at = format!("{path}.secrets");
        Detector::Secrets(match secrets {
            SecretsFile::All(all) if all == "all" => SecretKind::ALL.to_vec(),
            SecretsFile::All(other) => {
                problems.add(
                    cfg,
                    at,
                    format!("`{other}` is neither `all` nor a list of secret kinds"),
                );
                Vec::new()
            }
            SecretsFile::Kinds(kinds) => named_kinds(
                cfg,
                &at,
                kinds,
                &SecretKind::ALL,
                SecretKind::as_str,
                problems,
            ),
        })
    } else {
        let threshold = g
            .prompt_injection
            .as_ref()
            .and_then(|p| p.threshold.as_deref());
        Detector::PromptInjection {
            threshold: match threshold {
                None | Some("medium") => Threshold::Medium,
                Some("low") => Threshold::Low,
                Some("high") => Threshold::High,
                Some(other) => {
                    problems.add(
                        cfg,
                        format!("{path}.prompt_injection.threshold"),
                        format!("`{other}` is not `low`, `medium` or `high`"),
                    );
                    Threshold::Medium
                }
            },
        }
    };
    let spec = GuardrailSpec {
        name,
        detector,
        action,
        apply_to,
    };
    // Compiled alone here so that a pattern's problem is reported at its own guardrail.
    if problems.list.len() == before {
        if let Err(e) = Scanner::compile(std::slice::from_ref(&spec)) {
            problems.add(cfg, path, e.to_string());
        }
    }
    (problems.list.len() == before).then_some(Definition::Scan(spec))
}

/// `names` as the kinds of `all` they name (deduplicated), each unknown one a problem.
fn named_kinds<K: Copy + Ord>(
    cfg: &Path,
    path: &str,
    names: &[String],
    all: &[K],
    name_of: fn(K) -> &'static str,
    problems: &mut Problems,
) -> Vec<K> {
    if names.is_empty() {
        problems.add(cfg, path, "lists nothing to look for");
    }
    let mut kinds = BTreeSet::new();
    for (i, n) in names.iter().enumerate() {
        match all.iter().find(|k| name_of(**k) == n) {
            Some(k) => {
                kinds.insert(*k);
            }
            None => {
                let known: Vec<&str> = all.iter().map(|k| name_of(*k)).collect();
                problems.add(
                    cfg,
                    format!("{path}[{i}]"),
                    format!("unknown kind `{n}`; known: {}", known.join(", ")),
                );
            }
        }
    }
    kinds.into_iter().collect()
}

fn moderation_hook(
    cfg: &Path,
    path: &str,
    m: &crate::config::schema::ModerationFile,
    client: &mut Option<moderation::Client>,
    problems: &mut Problems,
) -> Option<Moderation> {
    let lookup = |var: &str| std::env::var(var).ok();
    let url = match env::expand(&m.url, lookup).map(|u| reqwest::Url::parse(&u)) {
        Ok(Ok(url)) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Some(url)
        }
        Ok(_) => {
            problems.add(
                cfg,
                format!("{path}.url"),
                "must be an http:// or https:// URL",
            );
            None
        }
        Err(e) => {
            problems.add(cfg, format!("{path}.url"), e);
            None
        }
    };
    let authorization = match &m.api_key {
        None => None,
        Some(key) => match env::expand(key, lookup) {
            Ok(key) => match HeaderValue::from_str(&format!("Bearer {key}")) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    Some(v)
                }
                Err(_) => {
                    problems.add(
                        cfg,
                        format!("{path}.api_key"),
                        "holds characters a header cannot carry",
                    );
                    None
                }
            },
            Err(e) => {
                problems.add(cfg, format!("{path}.api_key"), e);
                None
            }
        },
    };
    let timeout = match m.timeout.as_deref().map(parse_duration) {
        None => DEFAULT_MODERATION_TIMEOUT,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            problems.add(cfg, format!("{path}.timeout"), e);
            DEFAULT_MODERATION_TIMEOUT
        }
    };
    let client = match client {
        Some(c) => c.clone(),
        None => match moderation::Client::new() {
            Ok(c) => client.insert(c).clone(),
            Err(e) => {
                problems.add(cfg, path, e.to_string());
                return None;
            }
        },
    };
    Some(Moderation {
        url: url?,
        format: match m.format {
            None | Some(ModerationFormatFile::Openai) => moderation::Format::OpenAi,
            Some(ModerationFormatFile::Webhook) => moderation::Format::Webhook,
        },
        authorization,
        timeout,
        on_error: match m.on_error {
            None | Some(ModerationOnErrorFile::Block) => moderation::OnError::Block,
            Some(ModerationOnErrorFile::Allow) => moderation::OnError::Allow,
        },
        client,
    })
}

impl Catalog {
    /// The definitions `names` (at `path` of `file`) name; unknown ones are problems.
    pub(super) fn resolve(
        &self,
        file: &Path,
        path: &str,
        names: &[String],
        problems: &mut Problems,
    ) -> Vec<u16> {
        let mut ids = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            match self.index.get(name) {
                Some(&id) => ids.push(id),
                None => problems.add(
                    file,
                    format!("{path}[{i}]"),
                    format!("unknown guardrail `{name}`"),
                ),
            }
        }
        ids
    }

    /// The defaults and a workload's own list, compiled.
    pub(super) fn for_workload(
        &self,
        file: &Path,
        path: &str,
        own: &[String],
        problems: &mut Problems,
    ) -> Option<Arc<Guardrails>> {
        let mut ids = self.defaults.clone();
        ids.extend(self.resolve(file, path, own, problems));
        self.compiled(file, path, ids, problems)
    }

    /// A key's list: its workload's, with the key's additions, less what it switches off.
    pub(super) fn for_key(
        &self,
        file: &Path,
        prefix: &str,
        workload: Option<&Arc<Guardrails>>,
        (add, off): (&[String], &[String]),
        problems: &mut Problems,
    ) -> Option<Arc<Guardrails>> {
        if add.is_empty() && off.is_empty() {
            return workload.cloned();
        }
        let add_at = super::field(prefix, "guardrails");
        let off_at = super::field(prefix, "guardrails_off");
        let mut ids: Vec<u16> = workload.map(|g| g.ids.to_vec()).unwrap_or_default();
        ids.extend(self.resolve(file, &add_at, add, problems));
        let off = self.resolve(file, &off_at, off, problems);
        ids.retain(|id| !off.contains(id));
        self.compiled(file, &add_at, ids, problems)
    }

    /// Makes `previous`'s lists this catalog's own, so that keys compiled now share them with
    /// the keys a reload keeps (possible only when the main file, hence every index, is the same).
    pub(super) fn adopt(&self, previous: impl Iterator<Item = Arc<Guardrails>>) {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        for g in previous {
            compiled.entry(g.ids.clone()).or_insert(Some(g));
        }
    }

    /// The compiled list `ids`, built once per distinct list; `None` for an empty list, and for
    /// one that names a definition with problems (reported already) or cannot be compiled.
    fn compiled(
        &self,
        file: &Path,
        path: &str,
        mut ids: Vec<u16>,
        problems: &mut Problems,
    ) -> Option<Arc<Guardrails>> {
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return None;
        }
        let ids = ids.into_boxed_slice();
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = compiled.get(&ids) {
            return done.clone();
        }
        let built = self.build(&ids).map_err(|e| problems.add(file, path, e));
        let built = built.ok().flatten().map(Arc::new);
        compiled.insert(ids, built.clone());
        built
    }

    fn build(&self, ids: &[u16]) -> Result<Option<Guardrails>, String> {
        let mut specs = Vec::new();
        let mut moderation = Vec::new();
        for &id in ids {
            match &self.definitions[usize::from(id)] {
                None => return Ok(None),
                Some(Definition::Scan(spec)) => specs.push(spec.clone()),
                Some(Definition::Moderation(name, hook, action)) => {
                    moderation.push(ModerationRule {
                        name: name.clone(),
                        hook: hook.clone(),
                        action: *action,
                    })
                }
            }
        }
        let scanner = Scanner::compile(&specs).map_err(|e| e.to_string())?;
        Ok(Some(Guardrails {
            ids: ids.into(),
            scans_requests: specs.iter().any(|s| s.apply_to.request),
            scans_responses: specs.iter().any(|s| s.apply_to.response),
            scanner,
            moderation: moderation.into_boxed_slice(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load, load_reusing, LoadOptions};
    use std::sync::Arc;

    const CONFIG: &str = "listen: 127.0.0.1:9
providers:
  p1:
    format: openai
    endpoints:
      - {url: \"http://127.0.0.1:9\"}
models:
  m1: {provider: p1}
workloads:
  w1: {models: [m1], guardrails: [pii]}
  w2: {models: [m1]}
guardrails:
  pii: {pii: [email], action: redact}
  words: {keywords: [falcon], action: block}
  secrets: {secrets: all, action: block}
guardrail_defaults: [secrets]
";

    #[test]
    fn each_distinct_list_is_compiled_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.d");
        std::fs::create_dir(&keys).unwrap();
        std::fs::write(dir.path().join("keygate.yaml"), CONFIG).unwrap();
        let key = |n: u8, workload: &str, extra: &str| {
            let text = format!(
                "hash: \"sha256:{}\"\nworkload: {workload}\n{extra}",
                format!("{n:02x}").repeat(32)
            );
            std::fs::write(keys.join(format!("k{n}.yaml")), text).unwrap();
        };
        key(1, "w1", "");
        key(2, "w1", "guardrails: [words]\n");
        key(3, "w1", "guardrails: [words]\n");
        key(4, "w2", "guardrails: [pii, words]\n");
        key(5, "w2", "guardrails_off: [secrets]\n");
        key(6, "w1", "guardrails: [pii]\n");
        let config = dir.path().join("keygate.yaml");
        let policy = load(&config, LoadOptions::default()).unwrap();
        let g = |id: &str| policy.keys_by_id[id].guardrails.clone();
        let same = |a: &Option<Arc<_>>, b: &Option<Arc<_>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let workload = policy.workloads["w1"].guardrails.clone();
        assert!(same(&g("k1"), &workload));
        // adding what the workload already applies changes nothing
        assert!(same(&g("k6"), &workload));
        assert!(same(&g("k2"), &g("k3")));
        // the same list reached from another workload is the same value
        assert!(same(&g("k2"), &g("k4")));
        assert_eq!(g("k2").unwrap().scanner.len(), 3);
        // switching off the only guardrail leaves none
        assert!(g("k5").is_none());

        // A reload with the same main file shares the lists of the keys it compiles anew.
        key(7, "w1", "");
        let reloaded = load_reusing(&config, LoadOptions::default(), &policy).unwrap();
        let fresh = reloaded.keys_by_id["k7"].guardrails.clone();
        assert!(same(&fresh, &workload));
    }
}
