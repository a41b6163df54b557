//! Route: which endpoint serves an admitted request, and what follows when an attempt fails.
//!
//! The peer is an endpoint of the current model's provider, chosen by its balance mode among
//! those up and not yet tried by this request. Pingora reports each failure through a different
//! hook (connect, proxying, a 429/5xx header, a stalled stream); each lands here, feeds the
//! endpoint's health, and asks the request's attempt state machine (`upstream::attempt`) whether
//! to retry, fall back to another model, or give up.

use super::body;
use super::ctx::{Admitted, RequestCtx};
use super::refusal::Refusal;
use crate::metrics::Metrics;
use crate::policy::Model;
use crate::upstream::attempt::{Next, Outcome};
use crate::upstream::balance;
use crate::upstream::state::{FailureKind, UpstreamRegistry};
use crate::upstream::watchdog::{self, Expired, Watchdog};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::Instant;

/// The peer for the next attempt; switches to a fallback model first when one is due.
pub fn peer(upstreams: &UpstreamRegistry, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    ctx.upstream_started.get_or_insert_with(Instant::now);
    // A new attempt: the last one's watchdog must not act on (or report for) this one.
    ctx.watchdog = None;
    let Some(admitted) = ctx.admitted.as_mut() else {
        return Error::e_explain(ErrorType::InternalError, "routing a request not admitted");
    };
    let attempts = &mut ctx.upstream;
    loop {
        if let Some(fallback) = attempts.take_fallback() {
            if let Some(primary) = attempts.primary() {
                upstreams.record_fallback(&primary.name, &fallback.name);
            }
            switch_model(admitted, fallback, &ctx.request_id, &mut ctx.failure)?;
            attempts.start_model(&admitted.model, Instant::now());
        }
        let model = &admitted.model;
        let now = Instant::now();
        if !attempts.started() {
            attempts.start_model(model, now);
        }
        let provider = &model.provider;
        let outcome = if attempts.past_deadline(now) {
            Outcome::Timeout
        } else {
            let states = upstreams.states(provider);
            match balance::select(provider, states, attempts.tried()) {
                Some(pick) => match provider.peer(pick.index, attempts.remaining(now)) {
                    Some(peer) => {
                        attempts.begin(pick.index, &states[pick.index], pick.trial);
                        return Ok(Box::new(peer));
                    }
                    None => {
                        // no address yet: count as a connect failure and look further
                        attempts.skip_unreachable(pick.index);
                        states[pick.index].record_failure(FailureKind::Connect);
                        Outcome::ConnectFailed
                    }
                },
                None => Outcome::ConnectFailed,
            }
        };
        match attempts.after_failure(outcome, provider, &ctx.policy, Some(&admitted.key)) {
            Next::Retry | Next::Fallback => continue,
            Next::GiveUp if outcome == Outcome::Timeout => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    "the provider's total timeout is spent",
                )
            }
            Next::GiveUp => {
                ctx.failure = Some(Refusal::UpstreamUnavailable);
                return Error::e_explain(
                    ErrorType::ConnectNoRoute,
                    "no endpoint of the provider is left to try",
                );
            }
        }
    }
}

/// Routes the rest of the request to `fallback`: its provider and credential, the body as its
/// provider must receive it (made again from the client's body: the fallback may speak another
/// API), and the accounting that reads the admitted model. A body the fallback's API cannot
/// take ends the request with that refusal.
fn switch_model(
    admitted: &mut Admitted,
    fallback: Arc<Model>,
    request_id: &str,
    failure: &mut Option<Refusal>,
) -> Result<()> {
    let facts = body::RequestFacts {
        model: String::new(),
        model_span: admitted.model_span,
        stream: admitted.stream,
        max_output_tokens: None,
        n: None,
        best_of: None,
    };
    let upstream =
        match body::for_provider(admitted.operation, &fallback, &admitted.client_body, &facts) {
            Ok(upstream) => upstream,
            Err(refusal) => {
                *failure = Some(refusal);
                return Error::e_explain(
                    ErrorType::InternalError,
                    "the fallback's API cannot take the request",
                );
            }
        };
    admitted.body = upstream.body;
    admitted.added_include_usage = upstream.added_include_usage;
    admitted.translation = upstream.translation;
    tracing::info!(request_id, from = %admitted.model.name, to = %fallback.name, "falling back");
    admitted.model = fallback;
    Ok(())
}

/// What follows a failed attempt: retry, fallback (chosen now, switched to by the next
/// [`peer`]) or give up.
fn decide(ctx: &mut RequestCtx, outcome: Outcome) -> Next {
    let Some(admitted) = ctx.admitted.as_ref() else {
        return Next::GiveUp;
    };
    ctx.upstream.after_failure(
        outcome,
        &admitted.model.provider,
        &ctx.policy,
        Some(&admitted.key),
    )
}

/// A connect failure (refused, unreachable, TLS, timeout): nothing was sent, so another
/// endpoint or a fallback may be tried.
pub fn connect_failed(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    if let Some(attempt) = ctx.upstream.current() {
        attempt.state.record_failure(FailureKind::Connect);
    }
    let retry = decide(ctx, Outcome::ConnectFailed) != Next::GiveUp;
    e.set_retry(retry);
    e
}

/// A failure after connecting: before any response byte reached the client, a reset is retried
/// and a timeout (or keygate dropping a 429/5xx) moves to a fallback; after, nothing.
pub fn proxy_failed(
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    response_written: bool,
    client_reused: bool,
) -> Box<Error> {
    // The watchdog's shutdown surfaces as whatever error Pingora saw first on the upstream
    // socket; a client gone at the same moment stays the client's doing.
    if let Some(w) = ctx.watchdog.take().filter(Watchdog::fired) {
        if matches!(e.esource(), ErrorSource::Upstream) {
            e = Expired(w.guard()).replace(e);
        }
    }
    if ctx.upstream.take_replacing_response() {
        // keygate's own signal from `response_header`: the fallback is already chosen
        e.set_retry(true);
        return e;
    }
    if ctx.failure == Some(Refusal::UpstreamAuthFailed) {
        // also `response_header`'s doing: the endpoint answered, and no other would accept the
        // credential either
        e.set_retry(false);
        return e;
    }
    let upstream_side = matches!(e.esource(), ErrorSource::Upstream);
    let timeout = matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    // A pooled connection broken before any response: most likely closed by the endpoint as idle,
    // which is not the endpoint's fault.
    let stale = client_reused && !timeout && !response_written && !ctx.upstream.got_header();
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
    } else if stale && !ctx.upstream.wrote_head() {
        Outcome::Unsent
    } else if stale {
        Outcome::StaleConnection
    } else {
        Outcome::ResetEarly
    };
    let retry = upstream_side && !response_written && decide(ctx, outcome) != Next::GiveUp;
    e.set_retry(retry);
    e
}

/// Counts a pooled or new connection, and arms the attempt's watchdog when the provider's
/// `first_byte` and `idle` differ (Pingora's one read timeout is the larger).
pub fn connected(
    ctx: &mut RequestCtx,
    reused: bool,
    peer: &HttpPeer,
    #[cfg(unix)] fd: std::os::unix::io::RawFd,
) {
    if let Some(attempt) = ctx.upstream.current() {
        attempt.state.record_connection(reused);
    }
    #[cfg(unix)]
    if let Some(admitted) = &ctx.admitted {
        let provider = &admitted.model.provider;
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
}

/// The provider answered: feed its latency and health, drop a 429/5xx in favour of a fallback
/// while nothing has reached the client, and replace a refusal of keygate's credential.
pub fn response_header(
    ctx: &mut RequestCtx,
    header: &ResponseHeader,
    response_written: bool,
    metrics: &Metrics,
) -> Result<()> {
    if let Some(w) = ctx.watchdog.as_mut() {
        match w.header_arrived(header) {
            Ok(true) => {}
            Ok(false) => ctx.watchdog = None,
            Err(expired) => {
                ctx.watchdog = None;
                return Err(expired.error());
            }
        }
    }
    let status = header.status.as_u16();
    ctx.upstream.header_arrived();
    if let Some(attempt) = ctx.upstream.current() {
        attempt.state.record_latency(attempt.started.elapsed());
        if status >= 500 {
            attempt.state.record_failure(FailureKind::Status5xx);
        } else if status >= 200 {
            attempt.state.record_success();
        }
    }
    if status == 401 || status == 403 {
        return Err(credential_refused(ctx, status, metrics));
    }
    if (status == 429 || status >= 500)
        && !response_written
        && decide(ctx, Outcome::Status(status)) == Next::Fallback
    {
        ctx.upstream.replace_response();
        return Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "provider error replaced by a fallback",
        )
        .into_up());
    }
    Ok(())
}

/// The provider refused keygate's own credential. Its body goes nowhere (it may quote that
/// credential, and it would tell the tenant their key is wrong); the client gets
/// `upstream_auth_failed` instead. Every endpoint holds the same credential, so there is neither
/// a retry nor a fallback.
fn credential_refused(ctx: &mut RequestCtx, status: u16, metrics: &Metrics) -> Box<Error> {
    if let Some(attempt) = ctx.upstream.current() {
        let state = &attempt.state;
        tracing::warn!(
            request_id = %ctx.request_id,
            provider = %state.provider,
            endpoint = %state.url,
            status,
            "the provider refused keygate's credential"
        );
        metrics.upstream_auth_failed(&state.provider);
    }
    ctx.failure = Some(Refusal::UpstreamAuthFailed);
    Error::explain(
        ErrorType::HTTPStatus(status),
        "the provider refused keygate's credential",
    )
    .into_up()
}

/// Enforces the total deadline on a response still streaming: past it, the stream is cut. Each
/// chunk also restarts the idle watchdog's clock.
pub fn response_chunk(ctx: &mut RequestCtx, end_of_stream: bool) -> Result<()> {
    if !end_of_stream && ctx.upstream.past_deadline(Instant::now()) {
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
    Ok(())
}
