//! Usage reports of a key or workload: persisted usage from the usage database (or the fleet's,
//! from Redis), beside its budget's live spend.

use super::{error, not_found, AdminApi, Reply};
use crate::accounting::report;
use crate::state::{UsageFilter, UsageGroup};
use http::StatusCode;
use serde_json::json;

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
