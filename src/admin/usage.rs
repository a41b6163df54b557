//! Usage reports of a key or workload: persisted usage from the usage database (or the fleet's,
//! from Redis), beside its budget's live spend; a key's usage per day and per model for the
//! console's charts, and its latest requests.

use super::{error, not_found, AdminApi, Reply};
use crate::accounting::activity::RECENT_PER_KEY;
use crate::accounting::report;
use crate::state::{ReportRow, UsageFilter, UsageGroup};
use crate::usage::cost::UsdNanos;
use chrono::{DateTime, SecondsFormat, Utc};
use http::StatusCode;
use serde_json::{json, Value};

impl AdminApi {
    /// Usage of a key or workload from the database (`?since=&until=` days, `?by=day|model|…`),
    /// with its budget's live spend.
    pub(super) async fn usage(&self, scope: &'static str, name: &str, query: &str) -> Reply {
        let policy = self.reloader.store().load_full();
        let (budget, workload) = match scope {
            "key" => match policy.keys_by_id.get(name) {
                Some(k) => (k.limits.budget.clone(), Some(k.workload.name.clone())),
                None => return not_found(name),
            },
            _ => match policy.workloads.get(name) {
                Some(w) => (w.limits.budget.clone(), None),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "not_found_error",
                        "workload_not_found",
                        format!("No workload `{name}`."),
                    )
                }
            },
        };
        let mut filter = UsageFilter::default();
        let mut by = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let bad = |what: &str| {
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    format!("`{k}` must be {what}, not `{v}`"),
                )
            };
            match &*k {
                "since" | "until" => match v.parse() {
                    Ok(day) if k == "since" => filter.since = Some(day),
                    Ok(day) => filter.until = Some(day),
                    Err(_) => return bad("a date like 2026-11-01"),
                },
                "by" => match UsageGroup::parse(&v) {
                    Some(g) => by = Some(g),
                    None => return bad("day, model, key or workload"),
                },
                _ => return bad("one of since, until, by (unknown parameter)"),
            }
        }
        match scope {
            "key" => filter.key = Some(name.to_owned()),
            _ => filter.workload = Some(name.to_owned()),
        }
        let figures = self.limits.spend(scope, name, crate::limits::now_ms());
        let budget_view = report::budget_json(budget.as_deref(), &figures);
        let fleet_usage = match self.limits.fleet() {
            None => None,
            Some(fleet) => {
                let workloads = vec![workload.clone().unwrap_or_else(|| name.to_owned())];
                Some(
                    match fleet.usage_report(workloads, filter.clone(), by).await {
                        Ok((rows, total)) => json!({"rows": rows, "total": total}),
                        Err(e) => json!({"error": e.to_string()}),
                    },
                )
            }
        };
        let usage = match policy.startup.state_dir.clone() {
            None => json!(null),
            Some(dir) => {
                let result =
                    tokio::task::spawn_blocking(move || report::query(&dir, &filter, by)).await;
                match result {
                    Ok(Ok((rows, total))) => json!({
                        "by": by.map(|b| format!("{b:?}").to_lowercase()),
                        "rows": rows,
                        "total": total,
                    }),
                    Ok(Err(crate::state::sqlite::StateError::Missing(_))) => json!(null),
                    Ok(Err(e)) => {
                        return error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "api_error",
                            "internal_error",
                            e.to_string(),
                        )
                    }
                    Err(e) => {
                        return error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "api_error",
                            "internal_error",
                            e.to_string(),
                        )
                    }
                }
            }
        };
        let mut body = json!({
            "scope": scope,
            "name": name,
            "workload": workload,
            "budget": budget_view,
            "usage": usage,
        });
        if let Some(fleet) = fleet_usage {
            body["fleet_usage"] = fleet;
        }
        (StatusCode::OK, body)
    }
}

/// Days a usage chart covers unless asked otherwise, and at most.
const CHART_DAYS: u32 = 30;
const MAX_CHART_DAYS: u32 = 366;

/// Recent requests listed unless asked otherwise, and at most.
const RECENT: usize = 50;

/// The value of the one query parameter `name` (from 1 to `max`, else `default`), or the 400
/// for a bad value or any other parameter.
fn count_param(query: &str, name: &str, default: u32, max: u32) -> Result<u32, Reply> {
    let mut out = default;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match v.parse::<u32>().ok().filter(|n| (1..=max).contains(n)) {
            Some(n) if k == name => out = n,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    format!(
                    "the only parameter is `{name}`, a whole number from 1 to {max}; not `{k}={v}`"
                ),
                ))
            }
        }
    }
    Ok(out)
}

impl AdminApi {
    /// Key `id`'s persisted usage over the last `days` UTC days ending today, grouped by `by`.
    async fn key_usage_rows(
        &self,
        id: &str,
        days: u32,
        by: UsageGroup,
    ) -> Result<Option<Vec<ReportRow>>, Reply> {
        let policy = self.reloader.store().load_full();
        if !policy.keys_by_id.contains_key(id) {
            return Err(not_found(id));
        }
        let Some(dir) = policy.startup.state_dir.clone() else {
            return Ok(None);
        };
        let today = Utc::now().date_naive();
        let filter = UsageFilter {
            key: Some(id.to_owned()),
            since: Some(today - chrono::Days::new(u64::from(days - 1))),
            until: Some(today),
            ..UsageFilter::default()
        };
        match tokio::task::spawn_blocking(move || report::query(&dir, &filter, Some(by))).await {
            Ok(Ok((rows, _))) => Ok(Some(rows)),
            Ok(Err(crate::state::sqlite::StateError::Missing(_))) => Ok(Some(Vec::new())),
            Ok(Err(e)) => Err(internal(e.to_string())),
            Err(e) => Err(internal(e.to_string())),
        }
    }

    /// `GET /admin/keys/{id}/usage/daily?days=30`: one entry per day, oldest first, days without
    /// use as zeros. Today's entry is the live figure (the database lags by a booking round).
    pub(super) async fn key_usage_daily(&self, id: &str, query: &str) -> Reply {
        let days = match count_param(query, "days", CHART_DAYS, MAX_CHART_DAYS) {
            Ok(d) => d,
            Err(reply) => return reply,
        };
        let rows = match self.key_usage_rows(id, days, UsageGroup::Day).await {
            Ok(rows) => rows.unwrap_or_default(),
            Err(reply) => return reply,
        };
        let today = Utc::now().date_naive();
        let live = self.activity.key(id, crate::limits::now_ms()).periods.today;
        let list: Vec<Value> = (0..days)
            .rev()
            .map(|back| {
                let day = today - chrono::Days::new(u64::from(back));
                let name = day.format("%Y-%m-%d").to_string();
                let (requests, tokens, cost, blocked) = if back == 0 {
                    (live.requests, live.tokens, live.cost, live.blocked)
                } else {
                    rows.iter()
                        .find(|r| r.group == name)
                        .map_or((0, 0, UsdNanos::ZERO, 0), |r| {
                            (
                                r.requests,
                                r.prompt_tokens.saturating_add(r.completion_tokens),
                                r.cost,
                                r.blocked_requests,
                            )
                        })
                };
                json!({
                    "day": name,
                    "requests": requests,
                    "tokens": tokens,
                    "cost_usd": cost.as_usd(),
                    "blocked_requests": blocked,
                })
            })
            .collect();
        (StatusCode::OK, json!({ "days": list }))
    }

    /// `GET /admin/keys/{id}/usage/models?days=30`: persisted usage per model, highest cost first.
    pub(super) async fn key_usage_models(&self, id: &str, query: &str) -> Reply {
        let days = match count_param(query, "days", CHART_DAYS, MAX_CHART_DAYS) {
            Ok(d) => d,
            Err(reply) => return reply,
        };
        let mut rows = match self.key_usage_rows(id, days, UsageGroup::Model).await {
            Ok(rows) => rows.unwrap_or_default(),
            Err(reply) => return reply,
        };
        rows.sort_by(|a, b| b.cost.cmp(&a.cost).then_with(|| a.group.cmp(&b.group)));
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "model": r.group,
                    "requests": r.requests,
                    "tokens": r.prompt_tokens.saturating_add(r.completion_tokens),
                    "cost_usd": r.cost.as_usd(),
                    "blocked_requests": r.blocked_requests,
                })
            })
            .collect();
        (StatusCode::OK, json!({ "models": list }))
    }

    /// `GET /admin/keys/{id}/requests?limit=50`: the key's latest requests, newest first.
    pub(super) fn key_requests(&self, id: &str, query: &str) -> Reply {
        let limit = match count_param(query, "limit", RECENT as u32, RECENT_PER_KEY as u32) {
            Ok(n) => n as usize,
            Err(reply) => return reply,
        };
        if !self.reloader.store().load().keys_by_id.contains_key(id) {
            return not_found(id);
        }
        let list: Vec<Value> = self
            .activity
            .recent(id, limit)
            .into_iter()
            .map(|r| {
                json!({
                    "time": DateTime::from_timestamp_millis(r.finished_at_ms as i64)
                        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
                    "request_id": r.request_id,
                    "model": r.model,
                    "status": r.status,
                    "tokens": r.tokens,
                    "cost_usd": r.cost.as_usd(),
                    "latency_ms": r.latency_ms,
                    "refusal_reason": r.refusal,
                    "error": r.error,
                    "guardrails": r.guardrails.iter().map(|f| json!({
                        "guardrail": &*f.guardrail,
                        "rule": f.rule.name(),
                        "action": f.action.as_str(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        (StatusCode::OK, json!({ "requests": list }))
    }
}

fn internal(message: String) -> Reply {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        "internal_error",
        message,
    )
}
