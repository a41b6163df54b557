//! Turns parsed files into a [`Policy`], collecting every problem on the way rather than stopping
//! at the first. This module reads the main file and puts the policy together from its parts,
//! each compiled by a module of its own, in the order their problems are reported:
//! [`settings`] (listeners, the server section, the guard, the accounting sinks), [`providers`],
//! [`models`], [`guardrails`] (the definitions, and each distinct list compiled once), [`workloads`]
//! (with the limits keys share), then the key files ([`key_files`],
//! each key by [`keys`]). [`source`] reads files for all of them.

mod guardrails;
mod key_files;
pub(super) mod keys;
mod models;
mod providers;
mod settings;
mod source;
mod workloads;

use super::schema::ConfigFile;
use super::{KeyFileOverlay, LoadOptions, PolicyErrors, Problem};
use crate::policy::{Policy, PolicyParts};
use ipnet::IpNet;
use keys::KeyContext;
use sha2::{Digest, Sha256};
use source::{read_text, read_yaml};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    overlay: Option<&KeyFileOverlay<'_>>,
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
        (reusable, changed_key_files, overlay),
        options,
        &mut problems,
    );
    if problems.list.is_empty() {
        Ok(policy.expect("a policy is built whenever there are no problems"))
    } else {
        Err(PolicyErrors(problems.list))
    }
}

/// What a load may take from the serving policy, which files it knows changed, and the one
/// file whose text it is given rather than reads.
type Reuse<'a> = (
    Option<&'a Policy>,
    Option<&'a HashSet<Vec<u8>>>,
    Option<&'a KeyFileOverlay<'a>>,
);

#[allow(clippy::too_many_arguments)]
fn compile(
    config_path: &Path,
    base: &Path,
    keys_dir: PathBuf,
    (config, config_hash): (ConfigFile, [u8; 32]),
    mut hasher: Sha256,
    (reusable, changed_key_files, overlay): Reuse<'_>,
    options: LoadOptions,
    problems: &mut Problems,
) -> Option<Policy> {
    let cfg = config_path;
    let settings = settings::compile_settings(cfg, base, &config, problems);
    let providers = providers::compile_providers(cfg, base, &config, options, problems);
    let models = models::compile_models(cfg, &config, &providers, problems);
    let model_index: HashMap<&str, usize> =
        models.iter().map(|m| (m.name.as_str(), m.index)).collect();
    let catalog = guardrails::compile_catalog(cfg, &config, problems);
    let mut workloads =
        workloads::compile_workloads(cfg, &config, &model_index, &catalog, problems);

    if let Some(previous) = reusable {
        // The same main file compiled to these same workloads; the reused keys point at the
        // serving policy's, so the new policy must hold those very ones.
        workloads = previous.workloads.clone();
        catalog.adopt(workloads.values().filter_map(|w| w.guardrails.clone()));
    }
    let context = KeyContext {
        model_index: &model_index,
        workloads: &workloads,
        guardrails: &catalog,
        reusable: reusable.map(|p| &p.keys_by_id),
        changed_key_files,
        overlay,
    };
    let (keys, load_stats) = key_files::read_keys(&keys_dir, &context, problems, &mut hasher);
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
        startup: settings.startup?,
        max_body_bytes: settings.max_body_bytes,
        body_timeout: settings.body_timeout,
        session_ttl: settings.session_ttl,
        trusted_proxies: settings.trusted_proxies,
        providers,
        models,
        workloads,
        keys,
        guardrail_names: config.guardrails.keys().cloned().collect(),
        management_audit_file: base.join(&config.management_audit_file),
    }))
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

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(crate::limits::ip::canonical_net)
        .map_err(|_| format!("`{text}` is not a CIDR like 10.0.0.0/8 or 2001:db8::/32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("2001:db8::/32").is_ok());
        assert!(parse_cidr("192.0.2.7").is_ok());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("banana").is_err());
        assert_eq!(parse_cidr("::ffff:10.0.0.0/104"), parse_cidr("10.0.0.0/8"));
    }
}
