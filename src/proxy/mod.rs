//! The data plane: Pingora's [`ProxyHttp`] implemented as the request's journey through keygate.
//!
//! `request_filter` authenticates the key, authorizes the operation, reads the body, authorizes
//! the model and admits the request against its limits and budgets; `upstream_peer` routes to an
//! endpoint of the model's provider; the upstream filters swap the virtual key for the provider
//! credential and forward the body; the response filters pass the response through unbuffered
//! while reading its token usage; `logging` accounts: it settles tokens and cost and hands the
//! request's record to the accounting thread.

pub mod auth;
pub mod body;
pub mod ctx;
pub mod errors;
pub mod head;
pub mod routes;

use crate::accounting::{Recorder, RequestRecord};
use crate::domain::Operation;
use crate::limits::guard::AuthGuard;
use crate::limits::{self, ip, Demand, LimitState, MemoryLimits, RefusalKind, ScopeRef};
use crate::metrics::{Metrics, RequestFigures};
use crate::policy::{Model, Policy, PolicyStore};
use crate::shutdown::Drain;
use crate::upstream::attempt::{Next, Outcome};
use crate::upstream::balance;
use crate::upstream::state::{FailureKind, UpstreamRegistry};
use crate::upstream::watchdog::{self, Expired, Watchdog};
use crate::usage::cost::UsdNanos;
use crate::usage::{
    request_with_include_usage, BodyKind, ContentEncoding, Usage, UsageChunkStripper,
    UsageExtractor,
};
use async_trait::async_trait;
use bytes::Bytes;
use ctx::RequestCtx;
use errors::ApiError;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use routes::{NoRoute, Route};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// Output tokens reserved against a budget when neither the request nor the model bounds them.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 4096;

/// The keygate proxy: the live policy and the state that outlives policy snapshots.
pub struct Gateway {
    policy: PolicyStore,
    limits: Arc<MemoryLimits>,
    guard: AuthGuard,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    upstreams: Arc<UpstreamRegistry>,
}

impl Gateway {
    pub fn new(
        policy: PolicyStore,
        limits: Arc<MemoryLimits>,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
    ) -> Self {
        let (max_failures, per) = policy.load().startup.auth_guard;
        Gateway {
            policy,
            limits,
            guard: AuthGuard::new(max_failures, per),
            recorder,
            metrics,
            drain,
            upstreams: Arc::new(UpstreamRegistry::new()),
        }
    }

    /// Shares `registry` (endpoint health, load and counters) with the rest of the server.
    pub fn with_upstreams(mut self, registry: Arc<UpstreamRegistry>) -> Self {
        self.upstreams = registry;
        self
    }

    /// Authenticate → authorize → read body → authorize model. `Ok(None)` means proceed upstream;
    /// `Ok(Some(bytes))` is a response keygate answers itself.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: &Arc<Policy>,
    ) -> Result<Option<Bytes>, ApiError> {
        let header = session.req_header();
        let route = routes::route(&header.method, header.uri.path()).map_err(|e| match e {
            NoRoute::UnknownPath => ApiError::unknown_route(header.uri.path()),
            NoRoute::WrongMethod => {
                ApiError::method_not_allowed(header.method.as_str(), header.uri.path())
            }
        })?;
        ctx.route = Some(route);

        // who is asking: the socket peer, or the client behind a trusted proxy
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let client_ip = ip::client_ip(
            peer,
            header
                .headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .map(|v| v.as_bytes()),
            &policy.trusted_proxies,
        );
        ctx.client_ip = Some(client_ip);

        // authenticate, unless this address has been guessing keys
        if self.guard.blocked(&client_ip) {
            return Err(ApiError::too_many_auth_failures(self.guard.retry_after()));
        }
        let secret = auth::presented_secret(&header.headers).ok_or_else(ApiError::missing_key)?;
        let key = auth::authenticate(policy, secret, chrono::Utc::now()).inspect_err(|e| {
            if e.code == "invalid_api_key" {
                self.guard.record_failure(&client_ip);
            }
        })?;
        ctx.key = Some(key.clone());

        // authorize the network
        for list in [&key.limits.allowed_ips, &key.workload.limits.allowed_ips]
            .into_iter()
            .flatten()
        {
            if !ip::allowed(client_ip, list) {
                return Err(ApiError::ip_not_allowed());
            }
        }

        // authorize the operation
        let operation = match route {
            Route::ListModels => return Ok(Some(list_models(policy, &key))),
            Route::Proxy(op) => op,
        };
        if !key.operations.contains(operation) {
            return Err(ApiError::operation_not_allowed(operation.as_str()));
        }

        // read the body and authorize the model it names
        let body = body::read_whole(session, policy.max_body_bytes).await?;
        let facts = body::inspect(&body)?;
        let model = policy
            .model(&facts.model)
            .ok_or_else(|| ApiError::model_not_found(&facts.model))?;
        if !key.models.contains(model.index) {
            return Err(ApiError::model_not_allowed(&facts.model));
        }
        ctx.model = Some(model.clone());

        // limit: the key's and its workload's windows and concurrency caps, both at once
        let scopes = [
            ScopeRef {
                kind: "key",
                name: &key.id,
                spec: &key.limits,
            },
            ScopeRef {
                kind: "workload",
                name: &key.workload.name,
                spec: &key.workload.limits,
            },
        ];
        let rate_limited =
            !key.limits.windows.is_empty() || !key.workload.limits.windows.is_empty();
        ctx.token_estimate = limits::estimate_prompt_tokens(body.len());
        let budgeted = key.limits.budget.is_some() || key.workload.limits.budget.is_some();
        let demand = Demand {
            tokens: ctx.token_estimate,
            cost: match (&model.price, budgeted) {
                (Some(price), true) => price.worst_case(
                    ctx.token_estimate,
                    output_reserve(operation, facts.max_output_tokens, model),
                ),
                _ => UsdNanos::ZERO,
            },
        };
        match self.limits.admit(&scopes, demand, limits::now_ms()) {
            Ok(admission) => {
                ctx.rate = rate_limited.then_some(admission.status);
                ctx.admission = Some(admission);
                self.metrics.started(&key, policy.models.len());
            }
            Err(refusal) => {
                ctx.rate = rate_limited.then_some(refusal.status);
                return Err(match refusal.kind {
                    RefusalKind::Rate => {
                        ApiError::rate_limited(&refusal.limit, refusal.retry_after)
                    }
                    RefusalKind::Concurrency => {
                        ApiError::concurrency_limited(&refusal.limit, refusal.retry_after)
                    }
                    RefusalKind::Budget => {
                        ApiError::budget_exceeded(&refusal.limit, refusal.retry_after)
                    }
                });
            }
        }
        ctx.stream = facts.stream;
        let mut body = match &model.upstream_model {
            Some(upstream) => body::rewrite_model(&body, facts.model_span, upstream),
            None => body,
        };
        // Usage must be counted on every stream; ask for it, and hide it from a client that didn't.
        if facts.stream && matches!(operation, Operation::Chat | Operation::Completions) {
            if let Some(with_usage) = request_with_include_usage(&body) {
                body = with_usage;
                ctx.added_include_usage = true;
            }
        }
        ctx.body = Some(body);
        Ok(None)
    }
}

/// Output tokens a request may produce, for its budget reservation: its own bound, capped by the
/// model's, or the model's, or [`DEFAULT_OUTPUT_RESERVE`]. Embeddings produce none.
fn output_reserve(operation: Operation, requested: Option<u64>, model: &Model) -> u64 {
    if operation == Operation::Embeddings {
        return 0;
    }
    match (requested, model.max_output_tokens) {
        (Some(r), Some(m)) => r.min(m),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => DEFAULT_OUTPUT_RESERVE,
    }
}

impl Gateway {
    /// Settles the request's books: token windows and budgets get the real figures, and the
    /// accounting thread gets the record.
    fn account(&self, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let now_ms = limits::now_ms();
        let (usage, estimated) = measured_usage(ctx);
        let cost = match (&ctx.model, ctx.admission.is_some()) {
            (Some(model), true) => model.price.map_or(UsdNanos::ZERO, |p| p.cost(&usage)),
            _ => UsdNanos::ZERO,
        };
        if let Some(admission) = ctx.admission.as_mut() {
            // Tokens are charged only when a response was read; an admission without one
            // keeps its prompt estimate, as the provider may have billed the prompt.
            if ctx.usage.is_some() {
                let actual = usage.prompt_tokens + usage.completion_tokens;
                let delta = actual as i64 - ctx.token_estimate as i64;
                self.limits.charge_tokens(admission, delta, now_ms);
            }
            for crossed in self.limits.settle_cost(admission, cost, now_ms) {
                tracing::warn!(
                    request_id = %ctx.request_id,
                    scope = crossed.kind,
                    name = %crossed.name,
                    period = crossed.alert.period.as_str(),
                    threshold = f64::from(crossed.alert.permille) / 1000.0,
                    spent_usd = %crossed.alert.spent,
                    budget_usd = %crossed.alert.cap,
                    "budget alert: spend crossed a threshold"
                );
            }
        }
        let header = session.req_header();
        let path: Cow<'static, str> = match ctx.route {
            Some(route) => Cow::Borrowed(routes::path_of(route)),
            None => {
                // Unknown paths are client input: drop the query, bound the length.
                let p = header.uri.path();
                Cow::Owned(p.chars().take(200).collect())
            }
        };
        let status = session.response_written().map_or(0, |h| h.status.as_u16());
        let failure = ctx.failure.as_ref();
        let error = failure.map(|f| f.code).or_else(|| {
            // A stream cut after its headers went out has no keygate error, but is not a success.
            e.map(|e| match classify(e).code {
                "internal_error" if ctx.first_byte.is_some() => "stream_interrupted",
                code => code,
            })
        });
        let finished = std::time::Instant::now();
        let models = ctx.policy.as_ref().map_or(0, |p| p.models.len());
        self.metrics.finished(
            ctx.key.as_deref(),
            ctx.model.as_deref(),
            models,
            ctx.admission.is_some(),
            &RequestFigures {
                status,
                refusal: failure.and_then(|f| f.reason),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cached_tokens: usage.cached_tokens,
                cost_usd: cost.as_usd(),
                duration: finished.duration_since(ctx.started),
                upstream_duration: ctx.upstream_started.map(|t| finished.duration_since(t)),
                time_to_first_byte: ctx
                    .first_byte
                    .filter(|_| ctx.stream)
                    .map(|t| t.duration_since(ctx.started)),
            },
        );
        tracing::debug!(
            request_id = %ctx.request_id,
            key = ctx.key.as_ref().map_or("-", |k| &*k.id),
            model = ctx.model.as_ref().map_or("-", |m| m.name.as_str()),
            status,
            error = error.unwrap_or("-"),
            elapsed_us = finished.duration_since(ctx.started).as_micros() as u64,
            "request done"
        );
        self.recorder.record(RequestRecord {
            finished_at_ms: now_ms,
            request_id: std::mem::take(&mut ctx.request_id),
            key: ctx.key.clone(),
            client_ip: ctx.client_ip,
            method: header.method.clone(),
            path,
            model: ctx.model.clone(),
            endpoint: ctx.endpoint,
            stream: ctx.stream,
            status,
            usage,
            cost,
            estimated,
            billable: ctx.admission.is_some(),
            latency: finished.duration_since(ctx.started),
            ttfb: ctx.first_byte.map(|t| t.duration_since(ctx.started)),
            refusal: failure.and_then(|f| f.reason),
            error,
        });
    }
}

/// The request's token usage: the provider's own count when the response carried one; for a
/// response cut before its usage (or without one), the prompt estimate plus the streamed text at
/// about four characters a token, marked estimated. Requests without a successful response used
/// nothing.
fn measured_usage(ctx: &mut RequestCtx) -> (Usage, bool) {
    let Some(extractor) = ctx.usage.as_mut() else {
        return (Usage::default(), false);
    };
    match extractor.finish() {
        Some(usage) => (usage, false),
        None => (
            Usage {
                prompt_tokens: ctx.token_estimate,
                completion_tokens: extractor.streamed_text_chars().div_ceil(4),
                cached_tokens: 0,
            },
            true,
        ),
    }
}

impl Gateway {
    /// What follows a failed attempt: retry, fallback (chosen now, switched to by the next
    /// `upstream_peer`) or give up.
    fn decide(&self, ctx: &mut RequestCtx, outcome: Outcome) -> Next {
        let (Some(model), Some(policy)) = (ctx.model.clone(), ctx.policy.clone()) else {
            return Next::GiveUp;
        };
        let key = ctx.key.clone();
        ctx.upstream
            .after_failure(outcome, &model.provider, &policy, key.as_deref())
    }

    /// Routes the rest of the request to `fallback`: its provider and credential, its upstream
    /// model name in the body, and the accounting that reads `ctx.model`.
    fn switch_model(&self, ctx: &mut RequestCtx, fallback: Arc<Model>) -> Result<()> {
        let body = ctx.body.clone().unwrap_or_default();
        let facts = body::inspect(&body).map_err(|_| {
            Error::explain(
                ErrorType::InternalError,
                "the forwarded body lost its model",
            )
        })?;
        ctx.body = Some(body::rewrite_model(
            &body,
            facts.model_span,
            fallback.upstream_name(),
        ));
        if let Some(primary) = ctx.upstream.primary() {
            self.upstreams
                .record_fallback(&primary.name, &fallback.name);
        }
        tracing::info!(request_id = %ctx.request_id, from = ctx.model.as_ref().map_or("-", |m| m.name.as_str()), to = %fallback.name, "falling back");
        ctx.upstream
            .start_model(&fallback, std::time::Instant::now());
        ctx.endpoint = None;
        ctx.model = Some(fallback);
        Ok(())
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

fn list_models(policy: &Policy, key: &crate::policy::Key) -> Bytes {
    let data: Vec<serde_json::Value> = key
        .models
        .iter()
        .filter_map(|i| policy.models.get(i))
        .map(|m| {
            serde_json::json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": m.provider.name,
            })
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default(),
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// None. Pingora's default is a response-compression module, disabled, that every request
    /// would still build and consult; keygate passes bodies through as the provider encoded them.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Authenticate, authorize and read the request; answer refusals and `/v1/models` directly.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.in_flight = Some(self.drain.track());
        ctx.request_id = ctx::request_id(
            session
                .req_header()
                .headers
                .get(head::X_REQUEST_ID)
                .map(|v| v.as_bytes()),
        );
        let policy = self.policy.load_full();
        ctx.policy = Some(policy.clone());
        match self.admit(session, ctx, &policy).await {
            Ok(None) => Ok(false),
            Ok(Some(body)) => {
                let mut h = ResponseHeader::build(200, Some(3))?;
                h.insert_header("content-type", "application/json")?;
                h.insert_header("content-length", body.len())?;
                h.insert_header("x-request-id", ctx.request_id.as_str())?;
                session.write_response_header(Box::new(h), false).await?;
                session.write_response_body(Some(body), true).await?;
                Ok(true)
            }
            Err(refusal) => {
                body::discard_rest(session).await;
                errors::respond(session, &refusal, &ctx.request_id, ctx.rate.as_ref()).await?;
                ctx.failure = Some(refusal);
                Ok(true)
            }
        }
    }

    /// Route: an endpoint of the current model's provider, chosen by its balance mode among those
    /// up and not yet tried by this request; switches to a fallback model first when one is due.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_started
            .get_or_insert_with(std::time::Instant::now);
        // A new attempt: the last one's watchdog must not act on (or report for) this one.
        ctx.watchdog = None;
        loop {
            if let Some(fallback) = ctx.upstream.take_fallback() {
                self.switch_model(ctx, fallback)?;
            }
            let Some(model) = ctx.model.clone() else {
                return Error::e_explain(ErrorType::InternalError, "no model routed");
            };
            let now = std::time::Instant::now();
            if !ctx.upstream.started() {
                ctx.upstream.start_model(&model, now);
            }
            let provider = &model.provider;
            let outcome = if ctx.upstream.past_deadline(now) {
                Outcome::Timeout
            } else {
                let states = self.upstreams.states(provider);
                match balance::select(provider, states, &ctx.upstream.tried) {
                    Some(pick) => {
                        let remaining = ctx.upstream.remaining(now);
                        match provider.peer(pick.index, remaining) {
                            Some(peer) => {
                                ctx.upstream
                                    .begin(pick.index, &states[pick.index], pick.trial);
                                ctx.endpoint = Some(pick.index);
                                ctx.attempts += 1;
                                return Ok(Box::new(peer));
                            }
                            None => {
                                // no address yet: count as a connect failure and look further
                                ctx.upstream.tried.insert(pick.index);
                                states[pick.index].record_failure(FailureKind::Connect);
                                Outcome::ConnectFailed
                            }
                        }
                    }
                    None => Outcome::ConnectFailed,
                }
            };
            let key = ctx.key.clone();
            let Some(policy) = ctx.policy.clone() else {
                return Error::e_explain(ErrorType::InternalError, "no policy snapshot");
            };
            match ctx
                .upstream
                .after_failure(outcome, provider, &policy, key.as_deref())
            {
                Next::Retry | Next::Fallback => continue,
                Next::GiveUp if outcome == Outcome::Timeout => {
                    return Error::e_explain(
                        ErrorType::ConnectTimedout,
                        "the provider's total timeout is spent",
                    )
                }
                Next::GiveUp => {
                    ctx.failure = Some(ApiError::upstream_unavailable());
                    return Error::e_explain(
                        ErrorType::ConnectNoRoute,
                        "no endpoint of the provider is left to try",
                    );
                }
            }
        }
    }

    /// A failed connect counts against the endpoint and is retried on another one, or on a
    /// fallback model, while the provider's retries and the model's fallbacks last.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(attempt) = ctx.upstream.current() {
            attempt.state.record_failure(FailureKind::Connect);
        }
        let retry = self.decide(ctx, Outcome::ConnectFailed) != Next::GiveUp;
        e.set_retry(retry);
        e
    }

    /// Failures after connecting: before any response byte reached the client, a reset is
    /// retried and a timeout (or keygate dropping a 429/5xx) moves to a fallback; after, nothing.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // The watchdog's shutdown surfaces as whatever error Pingora saw first on the upstream
        // socket; a client gone at the same moment stays the client's doing.
        if let Some(w) = ctx.watchdog.take().filter(Watchdog::fired) {
            if matches!(e.esource(), ErrorSource::Upstream) {
                e = Expired(w.guard()).replace(e);
            }
        }
        if std::mem::take(&mut ctx.upstream.replacing_response) {
            // keygate's own signal from upstream_response_filter: the fallback is already chosen
            e.set_retry(true);
            return e;
        }
        let upstream_side = matches!(e.esource(), ErrorSource::Upstream);
        let timeout = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let before_response = session.response_written().is_none();
        // A pooled connection the upstream had closed: not the endpoint's fault.
        let stale = client_reused && !timeout && before_response && !ctx.upstream.got_header;
        if upstream_side && !stale {
            if let Some(attempt) = ctx.upstream.current() {
                attempt.state.record_failure(if timeout {
                    FailureKind::Timeout
                } else {
                    FailureKind::Reset
                });
            }
        }
        let outcome = if timeout {
            Outcome::Timeout
        } else if stale {
            Outcome::StaleConnection
        } else {
            Outcome::ResetEarly
        };
        let retry = upstream_side && before_response && self.decide(ctx, outcome) != Next::GiveUp;
        e.set_retry(retry);
        e
    }

    /// Counts pooled versus new upstream connections, and arms the attempt's watchdog when the
    /// provider's `first_byte` and `idle` differ (Pingora's one read timeout is the larger).
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(attempt) = ctx.upstream.current() {
            attempt.state.record_connection(reused);
        }
        // A multiplexed (h2) connection carries other requests' frames, which a cork would delay.
        #[cfg(target_os = "linux")]
        if ctx.body.as_ref().is_some_and(|b| !b.is_empty()) && peer.options.alpn == ALPN::H1 {
            crate::upstream::cork::join_head_and_body(fd);
        }
        #[cfg(unix)]
        if let Some(model) = &ctx.model {
            let provider = &model.provider;
            let plan = watchdog::plan(
                provider.first_byte_timeout,
                provider.idle_timeout,
                peer.options.read_timeout,
            );
            // Shutting down a multiplexed (h2) connection would cut other requests' streams too.
            if let (Some((guard, limit)), ALPN::H1) = (plan, &peer.options.alpn) {
                ctx.watchdog = Watchdog::arm(fd, guard, limit);
            }
        }
        Ok(())
    }

    /// The provider answered: feed its latency and health, and drop a 429/5xx in favour of a
    /// fallback while nothing has reached the client.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(w) = ctx.watchdog.as_mut() {
            match w.header_arrived(upstream_response) {
                Ok(true) => {}
                Ok(false) => ctx.watchdog = None,
                Err(expired) => {
                    ctx.watchdog = None;
                    return Err(expired.error());
                }
            }
        }
        let status = upstream_response.status.as_u16();
        ctx.upstream.got_header = true;
        if let Some(attempt) = ctx.upstream.current() {
            attempt.state.record_latency(attempt.started.elapsed());
            if status >= 500 {
                attempt.state.record_failure(FailureKind::Status5xx);
            } else if status >= 200 {
                attempt.state.record_success();
            }
        }
        if (status == 429 || status >= 500)
            && session.response_written().is_none()
            && self.decide(ctx, Outcome::Status(status)) == Next::Fallback
        {
            ctx.upstream.replacing_response = true;
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "provider error replaced by a fallback",
            )
            .into_up());
        }
        Ok(())
    }

    /// Enforces the total deadline on a response still streaming: past it, the stream is cut.
    /// Each chunk also restarts the idle watchdog's clock.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if !end_of_stream && ctx.upstream.past_deadline(std::time::Instant::now()) {
            return Error::e_explain(
                ErrorType::ReadTimedout,
                "the provider's total timeout ran out mid-response",
            );
        }
        if let Some(w) = ctx.watchdog.as_mut() {
            if end_of_stream {
                let ended = w.body_ended();
                ctx.watchdog = None;
                ended.map_err(Expired::error)?;
            } else {
                w.touch();
            }
        }
        Ok(None)
    }

    /// Forward: swap the virtual key for the provider credential, address the endpoint.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let model = ctx.model.as_ref().expect("request_filter set the model");
        let provider = &model.provider;
        let endpoint = &provider.endpoints[ctx.endpoint.expect("upstream_peer set the endpoint")];
        let body_len = ctx.body.as_ref().map_or(0, Bytes::len);
        let mut values = head::Values::with_capacity(head::VALUES_CAPACITY);
        // the credential, host, request id, content length and accept-encoding
        head::edit_request(upstream, 5, |parts| {
            let headers = &mut parts.headers;
            // every header a virtual key can arrive in
            headers.remove(http::header::AUTHORIZATION);
            for name in &auth::OTHER_KEY_HEADERS {
                headers.remove(name);
            }
            if let Some((name, value)) = &provider.credential {
                head::set(headers, name.clone(), value.clone())?;
            }
            head::set(headers, http::header::HOST, endpoint.authority.clone())?;
            head::set_request_id(headers, &mut values, &ctx.request_id)?;
            // The body is complete and framed by Content-Length: nothing is left to negotiate.
            headers.remove(http::header::TRANSFER_ENCODING);
            headers.remove(http::header::EXPECT);
            let content_length = values.number(body_len as u64)?;
            head::set(headers, http::header::CONTENT_LENGTH, content_length)?;
            if ctx.added_include_usage {
                // The usage chunk is removed from the stream on its way back, which needs plain
                // bytes.
                let identity = HeaderValue::from_static("identity");
                head::set(headers, http::header::ACCEPT_ENCODING, identity)?;
            }
            if !endpoint.base_path.is_empty() {
                let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                parts.uri = format!("{}{}", endpoint.base_path, path_and_query)
                    .parse()
                    .map_err(|_| {
                        Error::explain(ErrorType::InternalError, "invalid upstream path")
                    })?;
            }
            Ok(())
        })
    }

    /// Pingora replays the buffered tail of the body here; send the whole (possibly rewritten) body.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if end_of_stream {
            *body = ctx.body.clone();
        } else {
            // Cannot happen with a fully pre-read body; never forward a partial one.
            *body = None;
        }
        Ok(())
    }

    /// Responses pass through unchanged but for the request id and, for a rate-limited key, its
    /// `x-ratelimit-*` headers (and header names in canonical case: see [`head`]).
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        head::edit_response(
            upstream_response,
            &ctx.request_id,
            ctx.rate.as_ref(),
            0,
            |_, _| Ok(()),
        )?;
        // account: read usage from successful responses without holding any byte back
        if upstream_response.status.is_success() && ctx.admission.is_some() {
            let headers = &upstream_response.headers;
            let is_sse = headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let encoding = ContentEncoding::from_header(
                headers
                    .get(http::header::CONTENT_ENCODING)
                    .map(|v| v.as_bytes()),
            );
            if let Some(encoding) = encoding {
                let kind = if is_sse {
                    BodyKind::Sse
                } else {
                    BodyKind::Json
                };
                ctx.usage = Some(UsageExtractor::new(kind, encoding));
                if ctx.added_include_usage && is_sse && encoding == ContentEncoding::Identity {
                    ctx.stripper = Some(UsageChunkStripper::new());
                    // The client receives fewer bytes than the provider sent.
                    upstream_response.remove_header(&http::header::CONTENT_LENGTH);
                }
            }
        }
        Ok(())
    }

    /// Counts tokens as the body passes; the chunk itself goes on untouched.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(chunk) = body.as_ref() {
            if ctx.first_byte.is_none() && !chunk.is_empty() {
                ctx.first_byte = Some(std::time::Instant::now());
            }
            if let Some(extractor) = ctx.usage.as_mut() {
                extractor.feed(chunk);
            }
        }
        if let Some(stripper) = ctx.stripper.as_mut() {
            let mut out = body.take().map(|chunk| stripper.filter(&chunk));
            if end_of_stream {
                let rest = stripper.finish();
                if !rest.is_empty() {
                    out = Some(match out {
                        Some(head) if !head.is_empty() => [head, rest].concat().into(),
                        _ => rest,
                    });
                }
            }
            // An empty chunk would read as the end of a chunked body: send nothing instead.
            *body = out.filter(|b| !b.is_empty());
        }
        Ok(None)
    }

    /// Every failure after admission becomes an OpenAI-shaped error, if the client can still get one.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = ctx.failure.clone().unwrap_or_else(|| classify(e));
        ctx.failure = Some(error.clone());
        let client_gone = matches!(e.esource(), ErrorSource::Downstream)
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        let code = if client_gone || session.response_written().is_some() {
            // Headers already went out (e.g. a stream cut mid-way): the connection is the only signal left.
            0
        } else {
            if ctx.request_id.is_empty() {
                ctx.request_id = ctx::request_id(None);
            }
            if let Err(write_error) =
                errors::respond(session, &error, &ctx.request_id, ctx.rate.as_ref()).await
            {
                tracing::debug!(request_id = %ctx.request_id, error = %write_error, "could not send error response");
            }
            error.status
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Account: settle tokens and cost (a cut stream is charged what was seen) and book the request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.watchdog = None;
        if let Some(e) = e {
            tracing::debug!(request_id = %ctx.request_id, error = %e, "request failed");
        }
        self.account(session, e, ctx);
    }
}

/// Maps a Pingora failure to what the client is told.
fn classify(e: &Error) -> ApiError {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => ApiError::upstream_timeout(),
        ErrorType::HTTPStatus(400) => ApiError::invalid_request("The request could not be read."),
        _ if matches!(e.esource(), ErrorSource::Upstream) => ApiError::upstream_unavailable(),
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => ApiError::upstream_unavailable(),
        _ => ApiError::internal(),
    }
}
