//! The `workloads` section, and the limits a workload and a key both carry: rate windows,
//! concurrency, IP allowlists and budgets.

use super::guardrails::Catalog;
use super::{field, parse_cidr, parse_duration, Problems};
use crate::config::schema::{BudgetFile, BudgetModeFile, ConfigFile, RateLimitFile};
use crate::limits::budget::{BudgetMode, BudgetSpec};
use crate::limits::{LimitKind, LimitSpec, WindowSpec};
use crate::policy::{ModelSet, OperationSet, Workload};
use crate::usage::cost::UsdNanos;
use smallvec::SmallVec;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn compile_workloads(
    cfg: &Path,
    config: &ConfigFile,
    model_index: &HashMap<&str, usize>,
    catalog: &Catalog,
    problems: &mut Problems,
) -> BTreeMap<String, Arc<Workload>> {
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
        let guardrails =
            catalog.for_workload(cfg, &format!("{path}.guardrails"), &w.guardrails, problems);
        workloads.insert(
            name.clone(),
            Arc::new(Workload {
                name: name.clone(),
                description: w.description.clone(),
                models: set,
                operations,
                limits,
                guardrails,
            }),
        );
    }
    workloads
}

const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Compiles `rate_limits`, `max_concurrent` and `allowed_ips` of a key (`prefix` "" or "[i]")
/// or a workload (`prefix` "workloads.NAME").
pub(super) fn compile_limits(
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
