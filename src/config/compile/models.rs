//! The `models` section: each model's provider, upstream name, price, output cap and fallbacks.

use super::Problems;
use crate::config::schema::{ConfigFile, ModelFile};
use crate::domain::ProviderFormat;
use crate::policy::{Model, Price};
use crate::upstream::azure::{AzureError, AzureTarget};
use crate::upstream::Provider;
use crate::usage::cost::UsdPerMtok;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// The models in name order, each with a stable index for the model sets of workloads and keys.
pub(super) fn compile_models(
    cfg: &Path,
    config: &ConfigFile,
    providers: &BTreeMap<String, Arc<Provider>>,
    problems: &mut Problems,
) -> Vec<Arc<Model>> {
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
                ("cache_write_per_mtok", p.cache_write_per_mtok),
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
            Price::from_usd_per_mtok(UsdPerMtok {
                input: p.input_per_mtok,
                output: p.output_per_mtok,
                cached_input: p.cached_input_per_mtok,
                cache_write: p.cache_write_per_mtok,
            })
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
        let mut upstream_model = m.upstream_model.clone().filter(|u| u != name);
        let azure = compile_azure(cfg, &path, name, m, provider, problems);
        if let Some(target) = &azure {
            // The v1 API reads the deployment from the body's model.
            upstream_model = Some(target.deployment.clone()).filter(|d| d != name);
        }
        models.push(Arc::new(Model {
            index: models.len(),
            name: name.clone(),
            provider: provider.clone(),
            upstream_model,
            price,
            fallbacks: Vec::new(),
            max_output_tokens,
            metrics: Default::default(),
            azure,
        }));
    }
    resolve_fallbacks(cfg, config, &mut models, problems);
    models
}

/// The deployment of a model of an `azure` provider; `deployment` and `api_version` are refused
/// on any other.
fn compile_azure(
    cfg: &Path,
    path: &str,
    name: &str,
    m: &ModelFile,
    provider: &Provider,
    problems: &mut Problems,
) -> Option<AzureTarget> {
    if provider.format != ProviderFormat::Azure {
        for (field, set) in [
            ("deployment", m.deployment.is_some()),
            ("api_version", m.api_version.is_some()),
        ] {
            if set {
                problems.add(
                    cfg,
                    format!("{path}.{field}"),
                    "applies only to a model of a provider with `format: azure`",
                );
            }
        }
        return None;
    }
    if let (Some(d), Some(u)) = (&m.deployment, &m.upstream_model) {
        if d != u {
            problems.add(
                cfg,
                format!("{path}.upstream_model"),
                "an Azure model's upstream name is its `deployment`; set only that",
            );
        }
    }
    let deployment = m
        .deployment
        .as_deref()
        .or(m.upstream_model.as_deref())
        .unwrap_or(name);
    AzureTarget::new(deployment, m.api_version.as_deref())
        .map_err(|e| {
            let field = match e {
                AzureError::Deployment(_) if m.deployment.is_none() => "",
                AzureError::Deployment(_) => ".deployment",
                AzureError::ApiVersion(_) => ".api_version",
            };
            problems.add(cfg, format!("{path}{field}"), e.to_string());
        })
        .ok()
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
    let formats: Vec<_> = models.iter().map(|m| m.provider.format.wire()).collect();
    for model in models.iter_mut() {
        let Some(file) = config.models.get(&model.name) else {
            continue;
        };
        let mut fallbacks = Vec::new();
        let wire = model.provider.format.wire();
        for (i, name) in file.fallbacks.iter().enumerate() {
            let at = format!("models.{}.fallbacks[{i}]", model.name);
            match model_index.get(name.as_str()) {
                None => problems.add(cfg, at, format!("unknown model `{name}`")),
                Some(_) if *name == model.name => {
                    problems.add(cfg, at, "a model cannot be its own fallback")
                }
                // The body is forwarded as the client wrote it, in the primary's API.
                Some(&idx) if formats[idx] != wire => problems.add(
                    cfg,
                    at,
                    format!("`{name}` speaks another API than `{}`", model.name),
                ),
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
