//! The data plane: Pingora's [`ProxyHttp`] implemented as the request's journey through keygate,
//! authenticate → authorize (then inspect, for keys with guardrails) → limit → route → forward →
//! respond → account.
//!
//! This file holds only the hooks, in the order Pingora calls them; each delegates to the module
//! of its step. Admission (the first three steps) yields one [`ctx::Admitted`] value, so every
//! later phase works on a request that passed all of them, and anything keygate answers itself is
//! a [`refusal::Refusal`]. ARCHITECTURE.md draws the whole journey.

pub mod account;
pub mod authenticate;
pub mod authorize;
pub mod body;
pub mod ctx;
pub mod dialect;
pub mod forward;
pub mod head;
pub mod inspect;
pub mod inspect_response;
pub mod limit;
pub mod paths;
pub mod refusal;
pub mod respond;
pub mod route;
pub mod texts;
pub mod together;

use crate::accounting::Recorder;
use crate::limits::fleet::revocation::Revoked;
use crate::limits::guard::AuthGuard;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::policy::{Key, PolicyStore};
use crate::shutdown::Drain;
use crate::upstream::state::UpstreamRegistry;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::{Admitted, RequestCtx};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use refusal::Refusal;
use std::ops::RangeInclusive;
use std::sync::Arc;

/// The keygate proxy: the live policy and the state that outlives policy snapshots.
pub struct Gateway {
    policy: PolicyStore,
    limits: Arc<Limits>,
    guard: AuthGuard,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    upstreams: Arc<UpstreamRegistry>,
    /// For how many requests in flight to one endpoint a request's writes wait for the others'
    /// (`together`).
    together: RangeInclusive<u32>,
}

impl Gateway {
    pub fn new(
        policy: PolicyStore,
        limits: Arc<Limits>,
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
            together: together::in_flight_range(1),
        }
    }

    /// Shares `registry` (endpoint health, load and counters) with the rest of the server.
    pub fn with_upstreams(mut self, registry: Arc<UpstreamRegistry>) -> Self {
        self.upstreams = registry;
        self
    }

    /// Sizes what depends on the data plane's thread count (the server's `threads`): the in-flight
    /// range of `together`.
    pub fn with_data_plane_threads(mut self, threads: usize) -> Self {
        self.together = together::in_flight_range(threads);
        self
    }

    /// Authenticate → authorize → limit.
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Admit, Refusal> {
        let header = session.req_header();
        let route = paths::resolve(header)?;
        ctx.route = Some(route);
        let client_ip = authenticate::client_ip(session, &ctx.policy);
        ctx.client_ip = Some(client_ip);
        let key = match authenticate::authenticate(
            &self.guard,
            &ctx.policy,
            &header.headers,
            client_ip,
        ) {
            // A wrong secret this instance let through counts against the fleet's guard too.
            Err(Refusal::InvalidKey) => {
                let guard = ctx.policy.startup.auth_guard;
                return Err(
                    match self.limits.shared_auth_failure(client_ip, guard).await {
                        Some(retry_after) => Refusal::AuthGuard { retry_after },
                        None => Refusal::InvalidKey,
                    },
                );
            }
            other => other?,
        };
        ctx.named.key = Some(key.clone());
        match self.limits.revoked(&key) {
            None => {}
            Some(Revoked::Paused) => return Err(Refusal::KeyPaused),
            Some(Revoked::Invalid) => return Err(Refusal::InvalidKey),
        }
        authorize::key(&key, client_ip)?;
        let Some(operation) = authorize::operation(&key, route)? else {
            return Ok(Admit::ListModels(key));
        };
        let slots = limit::hold_slots(&self.limits, &key, &mut ctx.rate)?;
        let mut request =
            authorize::model(session, &ctx.policy, &key, operation, &mut ctx.named.model).await?;
        if let Some(guardrails) = key.guardrails.as_deref().filter(|g| g.on_requests()) {
            let shape = texts::Shape::of(operation);
            inspect::request(guardrails, shape, &mut request, &mut ctx.guardrails).await?;
        }
        let admitted = limit::admit(&self.limits, key, request, slots, &mut ctx.rate).await?;
        self.metrics
            .started(admitted.key.metrics_ref(), ctx.policy.models.len());
        ctx.named = Default::default();
        Ok(Admit::Forward(admitted))
    }
}

/// Where admission sends a request.
// Moved once into the context; boxing the large variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Admit {
    Forward(Admitted),
    /// `GET /v1/models`, answered by keygate for this key.
    ListModels(Arc<Key>),
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora's future for a request keeps its context by value in several of its
    /// states at once (an argument, and the locals it was moved into), and that future lives as
    /// long as the request, a stream's whole life; boxed, the context is held once.
    type CTX = Box<RequestCtx>;

    /// Every request starts on the policy snapshot current at its arrival, and keeps it. Built in
    /// its box: `Box::new` would copy all of it in, the room its empty options keep for later
    /// included, into heap memory that at thousands of connections has left the cache.
    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::write(Box::new_uninit(), RequestCtx::new(self.policy.load_full()))
    }

    /// None. Pingora's default is a response-compression module, disabled, that every request
    /// would still build and consult; keygate passes bodies through as the provider encoded them.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// The head is read: its `server.header_timeout` no longer runs.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        crate::listener::head_received(session);
        Ok(())
    }

    /// Authenticate, authorize and limit; answer refusals and `/v1/models` directly.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.in_flight = Some(self.drain.track());
        let client_id = session.req_header().headers.get(head::X_REQUEST_ID);
        ctx.request_id = ctx::request_id(client_id.map(|v| v.as_bytes()));
        ctx.dialect = dialect::Dialect::of(session.req_header());
        match self.admit(session, ctx).await {
            Ok(Admit::Forward(admitted)) => {
                ctx.admitted = Some(admitted);
                return Ok(false);
            }
            Ok(Admit::ListModels(key)) => respond::list_models(session, ctx, &key).await?,
            Err(refusal) => respond::refuse(session, ctx, refusal).await?,
        }
        Ok(true)
    }

    /// Route: the endpoint for this attempt, and the others' sends to it to go out with.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let peer = route::peer(&self.upstreams, ctx)?;
        together::wait_for_the_others(ctx, &self.together).await;
        Ok(peer)
    }

    /// Route: a connect failure may be retried elsewhere.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        route::connect_failed(ctx, e)
    }

    /// Route: count the connection and arm the attempt's watchdog.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        route::connected(
            ctx,
            reused,
            peer,
            #[cfg(unix)]
            fd,
        );
        Ok(())
    }

    /// Forward: the provider's credential and address in the request head.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        forward::request_head(ctx, upstream)
    }

    /// Forward: the whole body, which keygate read before routing.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        forward::request_body(ctx, body, end_of_stream);
        Ok(())
    }

    /// Route: a failure after connecting may be retried or fall back while the client has
    /// nothing yet.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let response_written = session.response_written().is_some();
        route::proxy_failed(ctx, e, response_written, client_reused)
    }

    /// Route: the provider's status feeds its health, a 429/5xx may give way to a fallback, and
    /// a refusal of keygate's credential is replaced.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let response_written = session.response_written().is_some();
        route::response_header(ctx, upstream_response, response_written, &self.metrics)
    }

    /// Route: a response still streaming past its total deadline is cut.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        route::response_chunk(ctx, end_of_stream)?;
        Ok(None)
    }

    /// Respond: keygate's headers on the provider's response head, and the others' answers to go
    /// out with.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        respond::response_head(session, ctx, upstream_response)?;
        together::wait_for_the_others(ctx, &self.together).await;
        Ok(())
    }

    /// Respond: the body passes through while its usage is read (and, for keys with response
    /// guardrails, its text is inspected).
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        respond::response_chunk(session, ctx, body, end_of_stream)?;
        Ok(None)
    }

    /// Respond: a failed forward becomes an error the client's SDK understands.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        respond::failed(session, e, ctx).await
    }

    /// Account: settle tokens and cost (a cut stream is charged what was seen) and book the request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.watchdog = None;
        if let Some(e) = e {
            tracing::debug!(request_id = %ctx.request_id, error = %e, "request failed");
        }
        account::account(&self.limits, &self.metrics, &self.recorder, session, e, ctx);
    }
}
