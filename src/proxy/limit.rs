//! Limit: admission of an authorized request against the request and token windows, the
//! concurrency caps and the budgets of its key and of the key's workload, both at once, through
//! the [`Limits`] the gateway was built with. An admitted request leaves with its
//! [`Admitted`] value; the body goes on as its provider must receive it (see
//! [`body::for_provider`]).

use super::authorize::Request;
use super::body;
use super::ctx::Admitted;
use super::refusal::Refusal;
use crate::domain::Operation;
use crate::limits::{self, AdmitError, Demand, Limits, RateStatus, RefusalKind, ScopeRef, Slots};
use crate::policy::{Key, Model};
use crate::usage::cost::UsdNanos;
use std::sync::Arc;

/// Output tokens reserved against a budget when neither the request nor the model bounds them.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 4096;

/// [`DEFAULT_OUTPUT_RESERVE`] for a reasoning model, whose hidden reasoning is billed as output:
/// OpenAI advises leaving room for at least 25,000 tokens of reasoning and output.
pub const REASONING_OUTPUT_RESERVE: u64 = 32_768;

/// A request counts against its key and the key's workload, both at once.
fn scopes(key: &Key) -> [ScopeRef<'_>; 2] {
    [
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
    ]
}

/// Takes the key's and the workload's concurrency slots, before the body is read.
pub fn hold_slots(
    limits: &Limits,
    key: &Key,
    rate: &mut Option<RateStatus>,
) -> Result<Slots, Refusal> {
    limits
        .hold_slots(&scopes(key), limits::now_ms())
        .map_err(|refusal| {
            if rate_limited(key) {
                *rate = Some(refusal.status);
            }
            Refusal::ConcurrencyLimited {
                limit: refusal.limit,
                retry_after: refusal.retry_after,
            }
        })
}

fn rate_limited(key: &Key) -> bool {
    !key.limits.windows.is_empty() || !key.workload.limits.windows.is_empty()
}

/// Admits `request` for `key`, which holds `slots`, or refuses it. `rate` receives the figures
/// for the `x-ratelimit-*` headers either way, for keys with rate limits.
pub async fn admit(
    limits: &Limits,
    key: Arc<Key>,
    request: Request,
    slots: Slots,
    rate: &mut Option<RateStatus>,
) -> Result<Admitted, Refusal> {
    let Request {
        operation,
        model,
        body,
        facts,
    } = request;
    // A body the provider cannot take is refused before it counts against any limit.
    let upstream = body::for_provider(operation, &model, &body, &facts)?;
    let requested_output = upstream.max_output_tokens.or(facts.max_output_tokens);
    let scopes = scopes(&key);
    let rate_limited = rate_limited(&key);
    // Counting tokens is free upstream and generates nothing: it books a request, no tokens.
    let token_estimate = match operation {
        Operation::CountTokens => 0,
        _ => limits::estimate_prompt_tokens(body.len()),
    };
    let budgeted = key.limits.budget.is_some() || key.workload.limits.budget.is_some();
    let demand = Demand {
        tokens: token_estimate,
        cost: match (&model.price, budgeted) {
            (Some(price), true) if operation != Operation::CountTokens => {
                // Each of `n` (or `best_of`) choices may run to the output bound, and is billed.
                let choices = facts.n.max(facts.best_of).unwrap_or(1).max(1);
                let output = output_reserve(operation, requested_output, &model);
                price.worst_case(token_estimate, output.saturating_mul(choices))
            }
            _ => UsdNanos::ZERO,
        },
    };
    let admission = match limits.admit(&scopes, demand, slots, limits::now_ms()).await {
        Ok(admission) => {
            *rate = rate_limited.then_some(admission.status);
            admission
        }
        Err(AdmitError::Unavailable) => return Err(Refusal::StateUnavailable),
        Err(AdmitError::Refused(refusal)) => {
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
    Ok(Admitted {
        key,
        operation,
        model,
        stream: facts.stream,
        body: upstream.body,
        client_body: body,
        model_span: facts.model_span,
        admission,
        token_estimate,
        added_include_usage: upstream.added_include_usage,
        translation: upstream.translation,
    })
}

/// Output tokens one choice of a request may produce, for its budget reservation: its own bound,
/// capped by the model's, or the model's, or [`DEFAULT_OUTPUT_RESERVE`]
/// ([`REASONING_OUTPUT_RESERVE`] for a reasoning model). Embeddings produce none.
///
/// The reasoning default bounds the reservation only, never a request: one that asks for more
/// output is reserved at what it asks.
fn output_reserve(operation: Operation, requested: Option<u64>, model: &Model) -> u64 {
    if operation == Operation::Embeddings {
        return 0;
    }
    match (requested, model.max_output_tokens) {
        (Some(r), Some(m)) => r.min(m),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) if is_reasoning(model.upstream_name()) => REASONING_OUTPUT_RESERVE,
        (None, None) => DEFAULT_OUTPUT_RESERVE,
    }
}

/// OpenAI's reasoning models by name: the o-series (`o1`, `o3-mini`, `o4-mini-2025-04-16`) and
/// `gpt-5*`, after any provider prefix such as `openai/`.
fn is_reasoning(name: &str) -> bool {
    let name = name.rsplit('/').next().unwrap_or(name).as_bytes();
    let starts = |prefix: &[u8]| {
        name.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    let o_series = [b"o1", b"o3", b"o4"]
        .iter()
        .any(|p| starts(*p) && matches!(name.get(2), None | Some(b'-')));
    o_series || starts(b"gpt-5")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_models_by_name() {
        for name in [
            "o1",
            "o3-mini",
            "O4-mini-2025-04-16",
            "openai/o3",
            "gpt-5",
            "gpt-5.1-mini",
        ] {
            assert!(is_reasoning(name), "{name}");
        }
        for name in [
            "gpt-4o",
            "o10",
            "o3x",
            "gpt-4.1",
            "my-o3",
            "",
            "o",
            "claude-opus-4",
        ] {
            assert!(!is_reasoning(name), "{name}");
        }
    }
}
