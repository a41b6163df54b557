//! The console's summary pages over the admin API: the overview (today's and this month's
//! figures, error rate, latency, refusals, top spenders, endpoint health), the workloads with
//! their keys and spend, and the catalog of models and operations a key form can offer. Every
//! figure comes from the activity the accounting thread keeps, the policy and the endpoint
//! registry: nothing here reads a file or the database.

use super::{error, AdminApi, Reply};
use crate::accounting::activity::{Periods, Totals};
use crate::domain::Operation;
use crate::policy::{Policy, Workload};
use crate::usage::cost::UsdNanos;
use http::StatusCode;
use serde_json::{json, Value};

/// Keys the overview lists as top spenders.
const TOP_KEYS: usize = 5;

/// Keys a workload's page lists by usage: a workload may have 100,000 keys, most of them idle.
const WORKLOAD_KEYS: usize = 100;

fn totals_json(t: &Totals) -> Value {
    json!({
        "requests": t.requests,
        "tokens": t.tokens,
        "cost_usd": t.cost.as_usd(),
        "blocked_requests": t.blocked,
    })
}

impl AdminApi {
    pub(super) fn overview(&self) -> Reply {
        let policy = self.reloader.store().load_full();
        let now_ms = crate::limits::now_ms();
        let (all, health) = self.activity.overview(now_ms);
        let error_rate = if health.answered == 0 {
            0.0
        } else {
            health.errors as f64 / health.answered as f64
        };
        let top_keys: Vec<Value> = self
            .activity
            .top_spenders(TOP_KEYS, now_ms)
            .into_iter()
            .map(|(id, t)| {
                json!({
                    "id": id,
                    "workload": policy.keys_by_id.get(&*id).map(|k| k.workload.name.as_str()),
                    "requests": t.requests,
                    "cost_usd": t.cost.as_usd(),
                })
            })
            .collect();
        let mut upstreams = Vec::new();
        for provider in policy.providers.values() {
            for endpoint in &provider.endpoints {
                let stats = self.upstreams.endpoint(&provider.name, &endpoint.url);
                let state = match &stats {
                    Some(s) if s.check_down => "down",
                    Some(s) if s.ejected => "ejected",
                    _ => "healthy",
                };
                upstreams.push(json!({
                    "provider": provider.name,
                    "url": endpoint.url,
                    "healthy": state == "healthy",
                    "state": state,
                    "in_flight": stats.as_ref().map_or(0, |s| s.in_flight),
                }));
            }
        }
        (
            StatusCode::OK,
            json!({
                "today": totals_json(&all.today),
                "month": totals_json(&all.month),
                "error_rate": error_rate,
                "latency_ms": {"p50": health.p50_ms, "p95": health.p95_ms},
                "refusals": health.refusals,
                "top_keys": top_keys,
                "upstreams": upstreams,
            }),
        )
    }

    pub(super) fn workloads(&self) -> Reply {
        let policy = self.reloader.store().load_full();
        let spend = self.activity.workloads(crate::limits::now_ms());
        let keys = keys_per_workload(&policy);
        let list: Vec<Value> = policy
            .workloads
            .values()
            .map(|w| {
                workload_view(
                    &policy,
                    w,
                    keys.get(w.name.as_str()).copied().unwrap_or(0),
                    &spend.get(w.name.as_str()).copied().unwrap_or_default(),
                )
            })
            .collect();
        (StatusCode::OK, json!({ "workloads": list }))
    }

    pub(super) fn workload(&self, name: &str) -> Reply {
        let policy = self.reloader.store().load_full();
        let Some(workload) = policy.workloads.get(name) else {
            return workload_not_found(name);
        };
        let now_ms = crate::limits::now_ms();
        let spend = self.activity.workloads(now_ms);
        let keys: Vec<_> = policy
            .keys_by_id
            .values()
            .filter(|k| k.workload.name == name)
            .collect();
        let figures = self.activity.figures(keys.iter().map(|k| &*k.id), now_ms);
        let mut by_key: Vec<(&str, Periods)> = keys
            .iter()
            .zip(figures)
            .map(|(k, f)| (&*k.id, f.periods))
            .filter(|(_, p)| p.month.requests > 0 || p.month.blocked > 0)
            .collect();
        by_key.sort_by(|a, b| b.1.month.cost.cmp(&a.1.month.cost).then(a.0.cmp(b.0)));
        by_key.truncate(WORKLOAD_KEYS);
        let mut view = workload_view(
            &policy,
            workload,
            keys.len(),
            &spend.get(name).copied().unwrap_or_default(),
        );
        view["usage_by_key"] = by_key
            .into_iter()
            .map(|(id, p)| {
                json!({
                    "key": id,
                    "today": totals_json(&p.today),
                    "month": totals_json(&p.month),
                })
            })
            .collect();
        (StatusCode::OK, view)
    }

    pub(super) fn catalog(&self) -> Reply {
        let policy = self.reloader.store().load_full();
        let models: Vec<Value> = policy
            .models
            .iter()
            .map(|m| json!({"name": m.name, "provider": m.provider.name}))
            .collect();
        let operations: Vec<&str> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        let guardrails: Vec<&str> = policy.guardrail_names.iter().map(String::as_str).collect();
        let workloads: Vec<Value> = policy
            .workloads
            .values()
            .map(|w| {
                json!({
                    "name": w.name,
                    "description": w.description,
                    "models": model_names(&policy, w),
                    "operations": w.operations.iter().map(Operation::as_str).collect::<Vec<_>>(),
                    "guardrails": guardrail_names(w),
                })
            })
            .collect();
        (
            StatusCode::OK,
            json!({
                "models": models,
                "operations": operations,
                "guardrails": guardrails,
                "workloads": workloads,
            }),
        )
    }
}

fn model_names<'p>(policy: &'p Policy, w: &Workload) -> Vec<&'p str> {
    w.models
        .iter()
        .filter_map(|i| policy.models.get(i))
        .map(|m| m.name.as_str())
        .collect()
}

fn guardrail_names(w: &Workload) -> Vec<&str> {
    w.guardrails
        .as_deref()
        .map_or_else(Vec::new, |g| g.names().collect())
}

fn keys_per_workload(policy: &Policy) -> std::collections::HashMap<&str, usize> {
    let mut counts = std::collections::HashMap::new();
    for key in policy.keys_by_id.values() {
        *counts.entry(key.workload.name.as_str()).or_default() += 1;
    }
    counts
}

fn workload_view(policy: &Policy, w: &Workload, keys: usize, spend: &Periods) -> Value {
    let budget = w.limits.budget.as_deref().map(|b| {
        json!({
            "daily_usd": b.daily.map(UsdNanos::as_usd),
            "monthly_usd": b.monthly.map(UsdNanos::as_usd),
            "mode": match b.mode {
                crate::limits::budget::BudgetMode::Enforce => "enforce",
                crate::limits::budget::BudgetMode::Track => "track",
            },
        })
    });
    json!({
        "name": w.name,
        "description": w.description,
        "models": model_names(policy, w),
        "operations": w.operations.iter().map(Operation::as_str).collect::<Vec<_>>(),
        "guardrails": guardrail_names(w),
        "keys": keys,
        "blocked_today": spend.today.blocked,
        "requests_today": spend.today.requests,
        "spend_today_usd": spend.today.cost.as_usd(),
        "spend_month_usd": spend.month.cost.as_usd(),
        "budget": budget,
    })
}

pub(super) fn workload_not_found(name: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "workload_not_found",
        format!("No workload `{name}`."),
    )
}
