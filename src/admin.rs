//! The admin listener: Prometheus `/metrics`, `/healthz` (alive), `/readyz` (serving: 503
//! before the data plane listens and while draining for shutdown), and the key management API under
//! `/admin/`, which writes the same files the CLI writes (so git stays the record) and reloads
//! after each write, and reports usage and budgets per key and workload.
//!
//! The API is enabled only when `KEYGATE_ADMIN_TOKEN` is set; requests must carry the token as a
//! Bearer token, compared in constant time. A token too short to resist guessing, or one whose
//! name part is unclear, stops keygate at start rather than serving a weak API. Wrong tokens count
//! against the client address in the policy's `auth_guard` limits, kept apart from the data
//! plane's; past them the address gets 429 for wrong tokens, never for the right one, so a
//! guessing neighbour cannot lock operators out.

use crate::accounting::report;
use crate::domain::{KeyStatus, Operation};
use crate::keys::lifecycle::{
    Actor, Applied, AuditError, IssuedKey, KeyFiles, LifecycleError, NewKey,
};
use crate::keys::secret::KeyDigest;
use crate::keys::store::StoreError;
use crate::limits::fleet::revocation::{Action, Event};
use crate::limits::guard::AuthGuard;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::policy::{Key, Policy};
use crate::reload::{ReloadOutcome, Reloader};
use crate::state::{UsageFilter, UsageGroup};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Largest admin request body accepted.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// The shortest admin token accepted: 24 random characters are far beyond online guessing.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;

/// Why `KEYGATE_ADMIN_TOKEN` cannot be used. No message quotes any part of the value, which may
/// be the token itself.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("KEYGATE_ADMIN_TOKEN is not valid UTF-8")]
    NotUnicode,
    #[error(
        "KEYGATE_ADMIN_TOKEN must be NAME:TOKEN or a bare TOKEN without `:`, and the text before \
         its first `:` is not a NAME (letters, digits, `-` and `_`); a token that contains `:` is \
         written with a name, e.g. admin:TOKEN"
    )]
    BadName,
    #[error(
        "KEYGATE_ADMIN_TOKEN: the token may hold only printable ASCII characters other than space, \
         as clients send it in an Authorization header"
    )]
    BadCharacter,
    #[error(
        "KEYGATE_ADMIN_TOKEN: the token has {0} characters; at least {MIN_ADMIN_TOKEN_CHARS} are \
         required (e.g. `openssl rand -hex 24`)"
    )]
    TooShort(usize),
}

/// An admin credential: the token and the name it is audited under.
#[derive(Clone)]
pub struct AdminToken {
    pub name: String,
    token: Vec<u8>,
}

impl AdminToken {
    /// Parses `KEYGATE_ADMIN_TOKEN` (surrounding whitespace ignored). With a `:`, the text before
    /// the first one is always the name (audited as `admin:NAME`) and the rest is the token, which
    /// may itself contain `:`; without one, the value is the token (audited as `admin:admin`).
    /// The name part is never guessed from its characters, so a value means one thing only.
    pub fn parse(value: &str) -> Result<AdminToken, AdminTokenError> {
        let value = value.trim();
        let (name, token) = match value.split_once(':') {
            Some((name, token)) => {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    return Err(AdminTokenError::BadName);
                }
                (name, token)
            }
            None => ("admin", value),
        };
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminTokenError::BadCharacter);
        }
        if token.len() < MIN_ADMIN_TOKEN_CHARS {
            return Err(AdminTokenError::TooShort(token.len()));
        }
        Ok(AdminToken {
            name: name.to_owned(),
            token: token.as_bytes().to_vec(),
        })
    }

    /// The token `KEYGATE_ADMIN_TOKEN` sets; unset or empty leaves the admin API disabled.
    pub fn from_env() -> Result<Option<AdminToken>, AdminTokenError> {
        match std::env::var("KEYGATE_ADMIN_TOKEN") {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(AdminTokenError::NotUnicode),
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => Self::parse(&value).map(Some),
        }
    }

    fn matches(&self, presented: &[u8]) -> bool {
        // ct_eq on slices of different lengths returns false without revealing where they differ.
        self.token.ct_eq(presented).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The admin HTTP application.
pub struct AdminApi {
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
    pub token: Option<AdminToken>,
    /// Wrong admin tokens per client address.
    pub login_guard: AuthGuard,
    /// Live budget spend and reservations.
    pub limits: Arc<Limits>,
    pub drain: Arc<crate::shutdown::Drain>,
    pub upstreams: Arc<crate::upstream::state::UpstreamRegistry>,
}

type Reply = (StatusCode, Value);

/// Why an admin request is not let in.
enum Refused {
    Reply(Reply),
    /// Too many wrong tokens from the address; retry after this long.
    Throttled(Duration),
}

fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Reply {
    (
        status,
        json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}}),
    )
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        if method == Method::GET && path == "/metrics" {
            let policy = self.reloader.store().load();
            self.metrics.refresh_budgets(policy.budgets(), &self.limits);
            self.upstreams.publish(&self.metrics);
            return build(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            );
        }
        if method == Method::GET && path == "/healthz" {
            return json_response((StatusCode::OK, json!({"status": "ok"})));
        }
        if method == Method::GET && path == "/readyz" {
            let status = if self.drain.is_ready() && !self.limits.ready() {
                (StatusCode::SERVICE_UNAVAILABLE, "state_unavailable")
            } else if self.drain.is_ready() {
                (StatusCode::OK, "ready")
            } else if self.drain.is_draining() {
                (StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "starting")
            };
            return json_response((
                status.0,
                json!({
                    "status": status.1,
                    "policy_digest": self.reloader.store().load().digest,
                    "in_flight": self.drain.in_flight(),
                }),
            ));
        }
        let reply = match path.strip_prefix("/admin/") {
            Some(rest) => match self.login(session) {
                Ok(token) => self.admin(session, &method, rest, token).await,
                Err(Refused::Reply(reply)) => reply,
                Err(Refused::Throttled(after)) => return throttled(after),
            },
            None => error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "unknown_route",
                format!("Unknown admin URL: {path}"),
            ),
        };
        json_response(reply)
    }
}

impl AdminApi {
    /// The admin token, if the request presents it; otherwise the response that refuses it. A
    /// wrong token counts against the client address; a missing one guesses nothing and does not.
    fn login(&self, session: &ServerSession) -> Result<&AdminToken, Refused> {
        let Some(token) = &self.token else {
            return Err(Refused::Reply(error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "admin_disabled",
                "The admin API is disabled: set KEYGATE_ADMIN_TOKEN to enable it.",
            )));
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if token.matches(presented.as_bytes()) {
            return Ok(token);
        }
        let unauthorized = || {
            Refused::Reply(error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_admin_token",
                "Missing or incorrect admin token.",
            ))
        };
        if presented.is_empty() {
            return Err(unauthorized());
        }
        // The admin listener is TCP only, so the peer is always an internet address.
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        if let Some(after) = self.login_guard.record_failure(client) {
            return Err(Refused::Throttled(after));
        }
        Err(unauthorized())
    }

    async fn admin(
        &self,
        session: &mut ServerSession,
        method: &Method,
        rest: &str,
        token: &AdminToken,
    ) -> Reply {
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        let actor = Actor(format!("admin:{}", token.name));
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["keys"]) => {
                let policy = self.reloader.store().load_full();
                let keys: Vec<Value> = policy
                    .keys_by_id
                    .values()
                    .map(|k| key_view(&policy, k))
                    .collect();
                (StatusCode::OK, json!({"object": "list", "data": keys}))
            }
            (&Method::GET, ["keys", id]) => {
                let policy = self.reloader.store().load_full();
                match policy.keys_by_id.get(*id) {
                    Some(k) => (StatusCode::OK, key_view(&policy, k)),
                    None => not_found(id),
                }
            }
            (&Method::GET, ["keys", id, "usage"]) => {
                let query = session.req_header().uri.query().unwrap_or("").to_owned();
                self.usage("key", id, &query).await
            }
            (&Method::GET, ["workloads", name, "usage"]) => {
                let query = session.req_header().uri.query().unwrap_or("").to_owned();
                self.usage("workload", name, &query).await
            }
            (&Method::POST, ["keys"]) => self.create(&body, actor).await,
            (&Method::POST, ["keys", id, action]) => {
                let id = (*id).to_owned();
                match *action {
                    "rotate" => self.rotate(id, &body, actor).await,
                    "pause" => {
                        let event = revocation(Action::Pause, &id, None);
                        let reply = self
                            .write(id.clone(), move |files| {
                                files.set_status(&id, KeyStatus::Paused, &actor)
                            })
                            .await;
                        self.announce(reply, event).await
                    }
                    "resume" => {
                        let event = revocation(Action::Resume, &id, None);
                        let reply = self
                            .write(id.clone(), move |files| {
                                files.set_status(&id, KeyStatus::Active, &actor)
                            })
                            .await;
                        self.announce(reply, event).await
                    }
                    _ => unknown(method, rest),
                }
            }
            (&Method::DELETE, ["keys", id]) => {
                let id = (*id).to_owned();
                let event = revocation(Action::Delete, &id, None);
                let reply = self
                    .write(id.clone(), move |files| files.delete(&id, &actor))
                    .await;
                self.announce(reply, event).await
            }
            (&Method::POST, ["reload"]) => match self.reloader.reload().await {
                Ok(outcome) => (StatusCode::OK, outcome_json(&outcome)),
                Err(errors) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error": {
                        "message": "The policy is invalid; the previous policy keeps serving.",
                        "type": "invalid_request_error", "param": null, "code": "invalid_policy",
                        "problems": errors.0.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    }}),
                ),
            },
            _ => unknown(method, rest),
        }
    }

    /// Usage of a key or workload from the database (`?since=&until=` days, `?by=day|model|…`),
    /// with its budget's live spend.
    async fn usage(&self, scope: &'static str, name: &str, query: &str) -> Reply {
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

    async fn create(&self, body: &[u8], actor: Actor) -> Reply {
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
        };
        self.issue(
            id.clone(),
            move |files| files.create(&id, settings, &actor),
            StatusCode::CREATED,
        )
        .await
    }

    async fn rotate(&self, id: String, body: &[u8], actor: Actor) -> Reply {
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
    async fn announce(&self, reply: Reply, event: Event) -> Reply {
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
    async fn write<T, F>(&self, id: String, op: F) -> Reply
    where
        T: Send + 'static,
        F: FnOnce(&KeyFiles) -> Result<Applied<T>, LifecycleError> + Send + 'static,
    {
        match self.run(op).await {
            Ok(Applied { unaudited, .. }) => {
                let reload = self.reload_after_write().await;
                let policy = self.reloader.store().load_full();
                let key = policy.keys_by_id.get(&id).map(|k| key_view(&policy, k));
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

/// An admin request body, or the 400 that says why it is not one.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            format!("Invalid JSON body: {e}"),
        )
    })
}

fn outcome_json(outcome: &ReloadOutcome) -> Value {
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

/// 429 for an address past its limit of wrong tokens, with `retry-after` and `retry-after-ms`
/// as the data plane's 429s carry them.
fn throttled(after: Duration) -> Response<Vec<u8>> {
    let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    let secs = ms.div_ceil(1000);
    let mut response = json_response(error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "rate_limit_exceeded",
        format!("Too many wrong admin tokens from this address; retry in {secs} s."),
    ));
    let headers = response.headers_mut();
    headers.insert(http::header::RETRY_AFTER, secs.into());
    headers.insert(http::HeaderName::from_static("retry-after-ms"), ms.into());
    response
}

fn not_found(id: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "key_not_found",
        format!("No key `{id}`."),
    )
}

fn unknown(method: &Method, rest: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "unknown_route",
        format!("Unknown admin route: {method} /admin/{rest}"),
    )
}

fn revocation(action: Action, key: &str, digest: Option<KeyDigest>) -> Event {
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
        LifecycleError::Rejected(_) | LifecycleError::Policy(_) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            "invalid_policy",
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

/// A key as the admin API shows it: everything but the secret.
fn key_view(policy: &Policy, key: &Key) -> Value {
    let models: Vec<&str> = key
        .models
        .iter()
        .filter_map(|i| policy.models.get(i))
        .map(|m| m.name.as_str())
        .collect();
    let operations: Vec<&str> = key.operations.iter().map(Operation::as_str).collect();
    json!({
        "id": key.id,
        "hint": key.hint,
        "workload": key.workload.name,
        "owner": key.owner,
        "description": key.description,
        "models": models,
        "operations": operations,
        "status": match key.status { KeyStatus::Active => "active", KeyStatus::Paused => "paused" },
        "expired": key.is_expired_at(Utc::now()),
        "expires_at": key.expires_at,
        "created_at": key.created_at,
        "previous_secrets_valid_until": key.previous.iter().map(|(_, until)| until).collect::<Vec<_>>(),
    })
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ADMIN_BODY {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request_error",
                        "request_too_large",
                        "Admin request bodies are limited to 1 MiB.",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    "The request body could not be read.",
                ))
            }
        }
    }
}

fn json_response((status, value): Reply) -> Response<Vec<u8>> {
    build(
        status,
        "application/json",
        serde_json::to_vec(&value).unwrap_or_default(),
    )
}

fn build(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_with_and_without_names() {
        let t = AdminToken::parse("ops-bot:s3cret-0123456789abcdefghijkl").unwrap();
        assert_eq!(t.name, "ops-bot");
        assert!(t.matches(b"s3cret-0123456789abcdefghijkl"));
        assert!(!t.matches(b"ops-bot:s3cret-0123456789abcdefghijkl"));
        let t = AdminToken::parse("  plain-token-0123456789abcdefghij \n").unwrap();
        assert_eq!(t.name, "admin");
        assert!(t.matches(b"plain-token-0123456789abcdefghij"));
        assert!(!format!("{t:?}").contains("plain-token"));
    }

    #[test]
    fn the_first_colon_always_ends_the_name() {
        let t = AdminToken::parse("admin:a:b-0123456789abcdefghijklmn").unwrap();
        assert_eq!(t.name, "admin");
        assert!(t.matches(b"a:b-0123456789abcdefghijklmn"));
        for value in [
            "a.b:0123456789abcdefghijklmnop",
            ":0123456789abcdefghijklmnop",
            "x/y:0123456789abcdefghijklmnop",
        ] {
            assert!(
                matches!(AdminToken::parse(value), Err(AdminTokenError::BadName)),
                "{value}"
            );
        }
    }

    #[test]
    fn weak_tokens_are_refused() {
        let at_limit = "x".repeat(MIN_ADMIN_TOKEN_CHARS);
        assert!(AdminToken::parse(&at_limit).is_ok());
        assert!(matches!(
            AdminToken::parse(&at_limit[1..]),
            Err(AdminTokenError::TooShort(23))
        ));
        assert!(matches!(
            AdminToken::parse("ops:"),
            Err(AdminTokenError::TooShort(0))
        ));
        assert!(matches!(
            AdminToken::parse("ops:0123456789 abcdefghijklmnop"),
            Err(AdminTokenError::BadCharacter)
        ));
        assert!(matches!(
            AdminToken::parse("ops:0123456789abcdefghijklmnopé"),
            Err(AdminTokenError::BadCharacter)
        ));
    }
}
