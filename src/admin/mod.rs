//! The admin listener: Prometheus `/metrics`, `/healthz` (alive), `/readyz` (serving: 503
//! before the data plane listens and while draining for shutdown), and the admin API under
//! `/admin/`, routed here to the file of its concern: who may call it (`auth`), key management
//! (`keys`), usage reports (`usage`); and the web console under `/ui/` (`console`).

mod auth;
mod console;
mod key_list;
mod keys;
mod overview;
mod session;
mod usage;

pub use auth::{
    AdminToken, AdminTokenError, AdminTokens, Role, TokenProblem, MIN_ADMIN_TOKEN_CHARS,
};
pub use session::Sessions;

use crate::domain::KeyStatus;
use crate::keys::lifecycle::Actor;
use crate::limits::fleet::revocation::Action;
use crate::limits::guard::AuthGuard;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use async_trait::async_trait;
use auth::{is_write, Caller, Refused};
use http::{Method, Response, StatusCode};
use keys::{outcome_json, revocation};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Largest admin request body accepted.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// The admin HTTP application.
pub struct AdminApi {
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
    pub tokens: AdminTokens,
    /// Console logins.
    pub sessions: Sessions,
    /// Recent use, from the accounting thread.
    pub activity: Arc<crate::accounting::activity::Activity>,
    /// What key searches look in, per policy snapshot.
    pub search: key_list::SearchCache,
    /// Wrong admin tokens per client address.
    pub login_guard: AuthGuard,
    /// Live budget spend and reservations.
    pub limits: Arc<Limits>,
    pub drain: Arc<crate::shutdown::Drain>,
    pub upstreams: Arc<crate::upstream::state::UpstreamRegistry>,
}

type Reply = (StatusCode, Value);

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
        if console::owns(&path) {
            let headers = &session.req_header().headers;
            return console::respond(&method, &path, headers, || {
                session::cookie(headers)
                    .is_some_and(|c| matches!(self.sessions.lookup(c), session::Lookup::Found(_)))
            });
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
        let Some(rest) = path.strip_prefix("/admin/") else {
            return json_response(error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "unknown_route",
                format!("Unknown admin URL: {path}"),
            ));
        };
        let started = std::time::Instant::now();
        let mut response = self.admin_route(session, &method, rest).await;
        // Server time, so that clients (and tests) tell keygate's work from the network's.
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(value) = http::HeaderValue::from_str(&format!("app;dur={ms:.1}")) {
            response.headers_mut().insert("server-timing", value);
        }
        response
    }
}

impl AdminApi {
    /// `/admin/…`: who calls, whether they may, then the route.
    async fn admin_route(
        &self,
        session: &mut ServerSession,
        method: &Method,
        rest: &str,
    ) -> Response<Vec<u8>> {
        if self.tokens.is_empty() {
            return json_response(error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "admin_disabled",
                "The admin API is disabled: set KEYGATE_ADMIN_TOKENS or KEYGATE_ADMIN_TOKEN to enable it.",
            ));
        }
        let rest = rest.trim_end_matches('/');
        if rest == "session" && method == Method::POST {
            return self.login(session).await;
        }
        let caller = match self.authenticate(session) {
            Ok(caller) => caller,
            Err(Refused::Reply(reply)) => return json_response(reply),
            Err(Refused::Throttled(after)) => return throttled(after),
        };
        if rest == "session" {
            return self.session_route(session, method, &caller);
        }
        if is_write(method) && caller.role != Role::Admin {
            return json_response(error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "forbidden",
                format!(
                    "`{}` is a {} token, which may read but not change anything.",
                    caller.name,
                    caller.role.as_str()
                ),
            ));
        }
        json_response(self.admin(session, method, rest, &caller).await)
    }
}
impl AdminApi {
    async fn admin(
        &self,
        session: &mut ServerSession,
        method: &Method,
        rest: &str,
        caller: &Caller,
    ) -> Reply {
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        let actor = Actor(format!("admin:{}", caller.name));
        let query = session.req_header().uri.query().unwrap_or("").to_owned();
        let segments: Vec<&str> = rest.split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["overview"]) => self.overview(),
            (&Method::GET, ["catalog"]) => self.catalog(),
            (&Method::GET, ["keys"]) => self.list_keys(&query),
            (&Method::GET, ["keys", id]) => self.key_detail(id),
            (&Method::GET, ["keys", id, "usage"]) => self.usage("key", id, &query).await,
            (&Method::GET, ["keys", id, "usage", "daily"]) => {
                self.key_usage_daily(id, &query).await
            }
            (&Method::GET, ["keys", id, "usage", "models"]) => {
                self.key_usage_models(id, &query).await
            }
            (&Method::GET, ["keys", id, "requests"]) => self.key_requests(id, &query),
            (&Method::GET, ["workloads"]) => self.workloads(),
            (&Method::GET, ["workloads", name]) => self.workload(name),
            (&Method::GET, ["workloads", name, "usage"]) => {
                self.usage("workload", name, &query).await
            }
            (&Method::POST, ["keys"]) => self.create(&body, actor).await,
            (&Method::PATCH, ["keys", id]) => self.update((*id).to_owned(), &body, actor).await,
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
