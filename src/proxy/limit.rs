//! Limit: admission of an authorized request against the request and token windows, the
//! concurrency caps and the budgets of its key and of the key's workload, both at once, through
//! the [`LimitState`] the gateway was built with. An admitted request leaves with its
//! [`Admitted`] value; the body goes on rewritten for the upstream model and, on streams, asking
//! for the usage that accounting needs.

use super::authorize::Request;
use super::body::{self, request_with_include_usage};
use super::ctx::Admitted;
use super::refusal::Refusal;
use crate::domain::Operation;
use crate::limits::{self, Demand, LimitState, RateStatus, RefusalKind, ScopeRef};
use crate::policy::{Key, Model};
use crate::usage::cost::UsdNanos;
use std::sync::Arc;

/// Output tokens reserved against a budget when neither the request nor the model bounds them.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 4096;

/// Admits `request` for `key`, or refuses it. `rate` receives the figures for the
/// `x-ratelimit-*` headers either way, for keys with rate limits.
pub fn admit(
    limits: &dyn LimitState,
    key: Arc<Key>,
    request: Request,
    rate: &mut Option<RateStatus>,
) -> Result<Admitted, Refusal> {
    let Request {
        operation,
        model,
        body,
        facts,
    } = request;
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
    let rate_limited = !key.limits.windows.is_empty() || !key.workload.limits.windows.is_empty();
    let token_estimate = limits::estimate_prompt_tokens(body.len());
    let budgeted = key.limits.budget.is_some() || key.workload.limits.budget.is_some();
    let demand = Demand {
        tokens: token_estimate,
        cost: match (&model.price, budgeted) {
            (Some(price), true) => price.worst_case(
                token_estimate,
                output_reserve(operation, facts.max_output_tokens, &model),
            ),
            _ => UsdNanos::ZERO,
        },
    };
    let admission = match limits.admit(&scopes, demand, limits::now_ms()) {
        Ok(admission) => {
            *rate = rate_limited.then_some(admission.status);
            admission
        }
        Err(refusal) => {
            *rate = rate_limited.then_some(refusal.status);
            return Err(match refusal.kind {
                RefusalKind::Rate => Refusal::RateLimited {
                    limit: refusal.limit,
                    retry_after: refusal.retry_after,
                },
                RefusalKind::Concurrency => Refusal::ConcurrencyLimited {
                    limit: refusal.limit,
                    retry_after: refusal.retry_after,
                },
                RefusalKind::Budget => Refusal::BudgetExceeded {
                    limit: refusal.limit,
                    resets_in: refusal.retry_after,
                },
            });
        }
    };
    let mut body = match &model.upstream_model {
        Some(upstream) => body::rewrite_model(&body, facts.model_span, upstream),
        None => body,
    };
    // Usage must be counted on every stream; ask for it, and hide it from a client that didn't.
    let mut added_include_usage = false;
    if facts.stream && matches!(operation, Operation::Chat | Operation::Completions) {
        if let Some(with_usage) = request_with_include_usage(&body) {
            body = with_usage;
            added_include_usage = true;
        }
    }
    Ok(Admitted {
        key,
        model,
        stream: facts.stream,
        body,
        admission,
        token_estimate,
        added_include_usage,
    })
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
