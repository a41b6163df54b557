//! Account: the request's books, settled once it is over. Token windows and budgets get the real
//! figures in place of admission's estimates, the metrics count the request, and the accounting
//! thread gets its record for the audit log and the usage database. Nothing here blocks: the
//! record is handed over, not written.

use super::ctx::RequestCtx;
use super::paths;
use super::respond::classify;
use crate::accounting::{Recorder, RequestRecord};
use crate::limits::{self, Limits};
use crate::metrics::{Metrics, RequestFigures};
use crate::usage::cost::UsdNanos;
use crate::usage::{Usage, MAX_TOKENS};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;
use std::time::Instant;

/// Settles and records the finished request. `e` is the error that ended it, if one did.
pub fn account(
    limits: &Limits,
    metrics: &Metrics,
    recorder: &Recorder,
    session: &Session,
    e: Option<&Error>,
    ctx: &mut RequestCtx,
) {
    let now_ms = limits::now_ms();
    let measured = measured_usage(session, ctx);
    let (usage, estimated) = measured.unwrap_or_default();
    let mut cost = UsdNanos::ZERO;
    if let Some(admitted) = ctx.admitted.as_mut() {
        cost = admitted
            .model
            .price
            .map_or(UsdNanos::ZERO, |p| p.cost(&usage));
        // Without usage to settle to (an error status, a request never sent), the token
        // windows keep the prompt estimate: the provider may have read the prompt, and an
        // HTTP/2 upstream does not tell whether the request went out.
        if measured.is_some() {
            let actual = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            let delta = i64::try_from(actual).unwrap_or(i64::MAX)
                - i64::try_from(admitted.token_estimate).unwrap_or(i64::MAX);
            limits.charge_tokens(&mut admitted.admission, delta, now_ms);
        }
        limits.record_usage(&mut admitted.admission, &admitted.model.name, &usage);
        for crossed in limits.settle_cost(&mut admitted.admission, cost, now_ms) {
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
        Some(route) => Cow::Borrowed(paths::path_of(route)),
        // Unknown paths are client input: drop the query, bound the length.
        None => Cow::Owned(header.uri.path().chars().take(200).collect()),
    };
    let status = session.response_written().map_or(0, |h| h.status.as_u16());
    let first_byte = ctx.response.first_byte;
    let error = match &ctx.failure {
        Some(failure) => Some(failure.code()),
        // A stream cut after its headers went out has no keygate error, but is not a success.
        None => e.map(|e| match classify(e).code() {
            "internal_error" if first_byte.is_some() => "stream_interrupted",
            code => code,
        }),
    };
    let refusal = ctx.failure.as_ref().and_then(|f| f.reason());
    let admitted = ctx.admitted.is_some();
    let stream = ctx.stream();
    let finished = Instant::now();
    metrics.finished(
        ctx.key().map(|k| k.metrics_ref()),
        ctx.model().map(|m| m.metrics_ref()),
        ctx.policy.models.len(),
        admitted,
        &RequestFigures {
            status,
            refusal,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_tokens: usage.cached_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            cost_usd: cost.as_usd(),
            duration: finished.duration_since(ctx.started),
            upstream_duration: ctx.upstream_started.map(|t| finished.duration_since(t)),
            time_to_first_byte: first_byte
                .filter(|_| stream)
                .map(|t| t.duration_since(ctx.started)),
        },
    );
    if let Some(key) = ctx.key() {
        for fired in &ctx.guardrails {
            metrics.guardrail_acted(
                &key.id,
                &key.workload.name,
                &fired.guardrail,
                fired.action.as_str(),
            );
        }
    }
    tracing::debug!(
        request_id = %ctx.request_id,
        key = ctx.key().map_or("-", |k| &*k.id),
        model = ctx.model().map_or("-", |m| m.name.as_str()),
        status,
        error = error.unwrap_or("-"),
        fallbacks = ctx.upstream.fallbacks_taken(),
        elapsed_us = finished.duration_since(ctx.started).as_micros() as u64,
        "request done"
    );
    recorder.record(RequestRecord {
        finished_at_ms: now_ms,
        request_id: std::mem::take(&mut ctx.request_id),
        key: ctx.key().cloned(),
        client_ip: ctx.client_ip,
        method: header.method.clone(),
        path,
        model: ctx.model().cloned(),
        endpoint: ctx.upstream.endpoint(),
        stream,
        status,
        usage,
        cost,
        estimated,
        billable: admitted,
        latency: finished.duration_since(ctx.started),
        ttfb: first_byte.map(|t| t.duration_since(ctx.started)),
        refusal,
        error,
        guardrails: std::mem::take(&mut ctx.guardrails),
    });
}

/// The request's token usage, and whether it is estimated: the provider's own count when the
/// response carried one. A response cut before its usage, without one, or unreadable is charged
/// the prompt estimate (or, for an Anthropic stream cut after `message_start`, the prompt count
/// that event gave) plus the streamed text at about four characters a token. So is a request
/// the provider read but never answered (the client left first, or the provider went silent):
/// providers bill the prompt they read. `None` for requests that used nothing: refused, answered
/// with an error, or never sent.
fn measured_usage(session: &Session, ctx: &mut RequestCtx) -> Option<(Usage, bool)> {
    let admitted = ctx.admitted.as_ref()?;
    let estimate = |completion_tokens: u64| Usage {
        prompt_tokens: admitted.token_estimate,
        completion_tokens: completion_tokens.min(MAX_TOKENS),
        cached_tokens: 0,
        cache_write_tokens: 0,
    };
    match ctx.response.usage.as_mut() {
        Some(extractor) => {
            let reported = extractor.finish();
            let streamed = extractor.streamed_text_chars().div_ceil(4);
            Some(match reported {
                Some(usage) if extractor.usage_is_final() => (usage, false),
                // An Anthropic stream cut between its first event and its last: the prompt is
                // the provider's count, the output is estimated.
                Some(start) => (
                    Usage {
                        completion_tokens: start.completion_tokens.max(streamed).min(MAX_TOKENS),
                        ..start
                    },
                    true,
                ),
                None => (estimate(streamed), true),
            })
        }
        None if !ctx.upstream.got_header()
            && session.upstream_body_bytes_sent().is_some_and(|n| n > 0) =>
        {
            Some((estimate(0), true))
        }
        None => None,
    }
}
