//! Key management over the admin API: create, rotate, pause, resume and delete, each through
//! the lifecycle calls the CLI uses (so git stays the record), followed by a reload, and in fleet
//! mode announced to the other instances.

use super::{error, not_found, parse_json, AdminApi, Reply};
use crate::accounting::activity::KeyFigures;
use crate::config::schema::{BudgetFile, RateLimitFile};
use crate::domain::{KeyStatus, Operation};
use crate::keys::lifecycle::{
    Actor, Applied, AuditError, IssuedKey, KeyFiles, LifecycleError, NewKey,
};
use crate::keys::secret::KeyDigest;
use crate::keys::store::StoreError;
use crate::limits::budget::{BudgetMode, BudgetSpec, Period};
use crate::limits::fleet::revocation::{Action, Event};
use crate::limits::{LimitKind, PeriodFigures};
use crate::policy::{Key, Policy};
use crate::reload::ReloadOutcome;
use crate::usage::cost::UsdNanos;
use chrono::{DateTime, SecondsFormat, Utc};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

impl AdminApi {
    pub(super) async fn create(&self, body: &[u8], actor: Actor) -> Reply {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct CreateRequest {
            id: String,
            workload: String,
            owner: Option<String>,
            description: Option<String>,
            models: Option<Vec<String>>,
            operations: Option<Vec<Operation>>,
            expires_at: Option<DateTime<Utc>>,
            #[serde(default)]
            rate_limits: Vec<RateLimitFile>,
            max_concurrent: Option<i64>,
            allowed_ips: Option<Vec<String>>,
            budget: Option<BudgetFile>,
            #[serde(default)]
            guardrails: Vec<String>,
            #[serde(default)]
            guardrails_off: Vec<String>,
        }
        let request: CreateRequest = match parse_json(body) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        let id = request.id.clone();
        let settings = NewKey {
            workload: request.workload,
            owner: request.owner,
            description: request.description,
            models: request.models,
            operations: request.operations,
            expires_at: request.expires_at,
            rate_limits: request.rate_limits,
            max_concurrent: request.max_concurrent,
            allowed_ips: request.allowed_ips,
            budget: request.budget,
            guardrails: request.guardrails,
            guardrails_off: request.guardrails_off,
        };
        self.issue(
            id.clone(),
            move |files| files.create(&id, settings, &actor),
            StatusCode::CREATED,
        )
        .await
    }

    /// `PATCH /admin/keys/{id}`: a JSON merge patch over the key file's editable fields.
    pub(super) async fn update(&self, id: String, body: &[u8], actor: Actor) -> Reply {
        let patch: Value = match parse_json(body) {
            Ok(p) => p,
            Err(reply) => return reply,
        };
        self.write(id.clone(), move |files| files.update(&id, &patch, &actor))
            .await
    }

    pub(super) async fn rotate(&self, id: String, body: &[u8], actor: Actor) -> Reply {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RotateRequest {
            grace: Option<String>,
        }
        let request: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
            RotateRequest::default()
        } else {
            match parse_json(body) {
                Ok(r) => r,
                Err(reply) => return reply,
            }
        };
        let grace = match request
            .grace
            .as_deref()
            .map(humantime::parse_duration)
            .transpose()
        {
            Ok(g) => g,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    format!("`grace` is not a duration like 1h: {e}"),
                )
            }
        };
        // Without grace the old secret stops at once, on every instance of a fleet.
        let retired = match grace {
            Some(g) if !g.is_zero() => None,
            _ => self
                .reloader
                .store()
                .load()
                .keys_by_id
                .get(id.as_str())
                .map(|k| revocation(Action::Rotate, &id, Some(k.digest))),
        };
        let reply = self
            .issue(
                id.clone(),
                move |files| files.rotate(&id, grace, &actor),
                StatusCode::OK,
            )
            .await;
        match retired {
            Some(event) => self.announce(reply, event).await,
            None => reply,
        }
    }

    /// In fleet mode, tells every instance about a successful pause, resume, delete or
    /// rotation, so that they act on it before their own files show it.
    pub(super) async fn announce(&self, reply: Reply, event: Event) -> Reply {
        let Some(fleet) = self.limits.fleet() else {
            return reply;
        };
        let (status, mut body) = reply;
        if status != StatusCode::OK {
            return (status, body);
        }
        let published = match fleet.publish_revocation(&event).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(key = %event.key, error = %e, "could not publish a revocation to the fleet");
                false
            }
        };
        body["fleet_event_published"] = json!(published);
        (status, body)
    }

    /// Runs a secret-issuing lifecycle call, reloads, and returns the secret once: also when the
    /// audit line failed after the key file was written, since that secret is the key's now.
    async fn issue<F>(&self, id: String, op: F, status: StatusCode) -> Reply
    where
        F: FnOnce(&KeyFiles) -> Result<Applied<IssuedKey>, LifecycleError> + Send + 'static,
    {
        match self.run(op).await {
            Ok(Applied { outcome, unaudited }) => {
                let reload = self.reload_after_write().await;
                let mut v = json!({
                    "id": id,
                    "secret": outcome.secret.secret,
                    "hint": outcome.secret.hint,
                    "reload": reload,
                });
                if let Some(until) = outcome.previous_valid_until {
                    v["previous_secret_valid_until"] = json!(until.to_rfc3339());
                }
                warn_unaudited(&id, unaudited, &mut v);
                (status, v)
            }
            Err(e) => lifecycle_error(&id, e),
        }
    }

    /// Runs a lifecycle call that issues no secret, reloads, and returns the key as now served.
    pub(super) async fn write<T, F>(&self, id: String, op: F) -> Reply
    where
        T: Send + 'static,
        F: FnOnce(&KeyFiles) -> Result<Applied<T>, LifecycleError> + Send + 'static,
    {
        match self.run(op).await {
            Ok(Applied { unaudited, .. }) => {
                let reload = self.reload_after_write().await;
                let policy = self.reloader.store().load_full();
                let now_ms = crate::limits::now_ms();
                let figures = self.activity.key(&id, now_ms);
                let key = policy
                    .keys_by_id
                    .get(&id)
                    .map(|k| key_view(&policy, k, &figures, Utc::now()));
                let mut v = json!({"id": id, "key": key, "reload": reload});
                warn_unaudited(&id, unaudited, &mut v);
                (StatusCode::OK, v)
            }
            Err(e) => lifecycle_error(&id, e),
        }
    }

    async fn run<T, F>(&self, op: F) -> Result<T, LifecycleError>
    where
        T: Send + 'static,
        F: FnOnce(&KeyFiles) -> Result<T, LifecycleError> + Send + 'static,
    {
        let serving = self.reloader.store().load_full();
        tokio::task::spawn_blocking(move || op(&KeyFiles::open_beside(serving)?))
            .await
            .unwrap_or_else(|e| Err(LifecycleError::Lock(std::io::Error::other(e.to_string()))))
    }

    async fn reload_after_write(&self) -> Value {
        match self.reloader.reload().await {
            Ok(outcome) => outcome_json(&outcome),
            Err(errors) => {
                json!({"ok": false, "problems": errors.0.iter().map(|p| p.to_string()).collect::<Vec<_>>()})
            }
        }
    }
}

pub(super) fn outcome_json(outcome: &ReloadOutcome) -> Value {
    match outcome {
        ReloadOutcome::Unchanged { digest } => {
            json!({"ok": true, "changed": false, "digest": digest})
        }
        ReloadOutcome::Swapped { from, to } => {
            json!({"ok": true, "changed": true, "previous_digest": from, "digest": to})
        }
    }
}

/// A change that stands without its audit line: said in the answer's `warning` and logged.
fn warn_unaudited(id: &str, unaudited: Option<AuditError>, v: &mut Value) {
    if let Some(e) = unaudited {
        tracing::warn!(key = id, error = %e, "admin key change not audited");
        v["warning"] = json!(e.to_string());
    }
}

pub(super) fn revocation(action: Action, key: &str, digest: Option<KeyDigest>) -> Event {
    Event {
        action,
        key: key.to_owned(),
        digest,
    }
}

fn lifecycle_error(id: &str, e: LifecycleError) -> Reply {
    let message = e.to_string();
    match e {
        LifecycleError::InvalidId(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_key_id",
            message,
        ),
        LifecycleError::GraceTooLong(_)
        | LifecycleError::ExpiryPast(_)
        | LifecycleError::ExpiryTooFar(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        ),
        LifecycleError::AuditUnavailable { .. } => {
            tracing::error!(key = id, error = %message, "admin key operation refused");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "audit_log_unavailable",
                message,
            )
        }
        LifecycleError::Store(StoreError::NotFound(_)) => not_found(id),
        LifecycleError::Store(StoreError::Exists(_)) => error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "key_exists",
            message,
        ),
        LifecycleError::InListFile(..) => error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "key_in_list_file",
            message,
        ),
        LifecycleError::Rejected(problems) | LifecycleError::Policy(problems) => {
            let (status, mut body) = error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "invalid_policy",
                message,
            );
            body["error"]["problems"] = problems.0.iter().map(|p| p.to_string()).collect();
            (status, body)
        }
        LifecycleError::NotEditable(_) | LifecycleError::UpdateNotAnObject(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        ),
        _ => {
            tracing::error!(key = id, error = %message, "admin key operation failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "internal_error",
                message,
            )
        }
    }
}

impl AdminApi {
    /// `GET /admin/keys/{id}`: the key with its budget's state per period.
    pub(super) fn key_detail(&self, id: &str) -> Reply {
        let policy = self.reloader.store().load_full();
        let Some(key) = policy.keys_by_id.get(id) else {
            return not_found(id);
        };
        let now_ms = crate::limits::now_ms();
        let figures = self.activity.key(id, now_ms);
        let mut view = key_view(&policy, key, &figures, Utc::now());
        // The key's own guardrail settings are in its file only (the policy keeps the effective
        // list); a key of a list file has no file of its own, and no settings to edit here.
        let own = key
            .file
            .parent()
            .and_then(|dir| crate::keys::store::read_key(dir, id).ok());
        view["guardrails"] = json!(own.as_ref().map(|f| &f.guardrails));
        view["guardrails_off"] = json!(own.as_ref().map(|f| &f.guardrails_off));
        let spend = self.limits.spend("key", id, now_ms);
        view["budget_state"] = budget_state(key.limits.budget.as_deref(), &spend);
        (StatusCode::OK, view)
    }
}

/// A key as the admin API shows it: everything but the secret, with its recent use.
pub(super) fn key_view(
    policy: &Policy,
    key: &Key,
    figures: &KeyFigures,
    now: DateTime<Utc>,
) -> Value {
    let models: Vec<&str> = key
        .models
        .iter()
        .filter_map(|i| policy.models.get(i))
        .map(|m| m.name.as_str())
        .collect();
    let operations: Vec<&str> = key.operations.iter().map(Operation::as_str).collect();
    let limits = &key.limits;
    let rate_limits: Vec<Value> = limits
        .windows
        .iter()
        .map(|w| {
            let kind = match w.kind {
                LimitKind::Requests => "requests",
                LimitKind::Tokens => "tokens",
            };
            json!({ kind: w.limit, "per": humantime::format_duration(w.per).to_string() })
        })
        .collect();
    let budget = limits.budget.as_deref().map(|b| {
        json!({
            "daily_usd": b.daily.map(UsdNanos::as_usd),
            "monthly_usd": b.monthly.map(UsdNanos::as_usd),
            "mode": match b.mode { BudgetMode::Enforce => "enforce", BudgetMode::Track => "track" },
            "alert_at": b.alert_at.iter().map(|p| f64::from(*p) / 1000.0).collect::<Vec<_>>(),
        })
    });
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    let last_used = (figures.last_used_ms > 0)
        .then(|| DateTime::from_timestamp_millis(figures.last_used_ms as i64))
        .flatten();
    json!({
        "id": key.id,
        "hint": key.hint,
        "workload": key.workload.name,
        "owner": key.owner,
        "description": key.description,
        "models": models,
        "operations": operations,
        "rate_limits": rate_limits,
        "max_concurrent": limits.max_concurrent,
        "allowed_ips": limits.allowed_ips.as_deref().map(|ips| ips.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "budget": budget,
        "status": status_of(key, now),
        "expired": key.is_expired_at(now),
        "expires_at": time(key.expires_at),
        "created_at": time(key.created_at),
        "updated_at": time(key.updated_at),
        "last_used_at": time(last_used),
        "guardrails_effective": key.guardrails.as_deref().map_or_else(Vec::new, |g| g.names().collect()),
        "requests_today": figures.periods.today.requests,
        "blocked_today": figures.periods.today.blocked,
        "blocked_month": figures.periods.month.blocked,
        "spend_today_usd": figures.periods.today.cost.as_usd(),
        "budget_daily_usd": limits.budget.as_deref().and_then(|b| b.daily).map(UsdNanos::as_usd),
        "previous_secrets_valid_until": key.previous.iter().map(|(_, until)| until).collect::<Vec<_>>(),
    })
}

/// `active`, `paused` or `expired` (whatever the file says, once past its expiry).
pub(super) fn status_of(key: &Key, now: DateTime<Utc>) -> &'static str {
    match key.status {
        _ if key.is_expired_at(now) => "expired",
        KeyStatus::Active => "active",
        KeyStatus::Paused => "paused",
    }
}

/// A budget's state per period: cap, spent, reserved by requests in flight, and what remains.
pub(super) fn budget_state(budget: Option<&BudgetSpec>, figures: &[PeriodFigures; 2]) -> Value {
    let mut out = serde_json::Map::new();
    for f in figures {
        let (name, cap) = match f.period {
            Period::Daily => ("day", budget.and_then(|b| b.daily)),
            Period::Monthly => ("month", budget.and_then(|b| b.monthly)),
        };
        out.insert(
            name.to_owned(),
            json!({
                "limit_usd": cap.map(UsdNanos::as_usd),
                "spent_usd": f.spent.as_usd(),
                "reserved_usd": f.reserved.as_usd(),
                "remaining_usd": cap.map(|c| c.saturating_sub(f.spent).saturating_sub(f.reserved).as_usd()),
            }),
        );
    }
    Value::Object(out)
}
