//! Prometheus metrics, in a registry owned by one gateway instance (so several in-process
//! gateways, as in tests, never mix counts). Served as text on the admin listener's `/metrics`.
//!
//! Label values come only from the policy (key ids, workloads, models, providers, endpoints) and
//! from fixed sets (status classes, refusal reasons), never from raw client input, so the number
//! of series stays bounded. The request path records through handles resolved once per key,
//! model and snapshot ([`KeyHandles`], [`ModelHandles`], kept in `OnceLock` slots on the policy
//! objects): after the first request of a key, recording is a few atomic adds with no label
//! formatting or map lookups. Series that would be mostly zero (each refusal reason, each status
//! class) are created on first use, so 100,000 idle keys cost no series at all.

use crate::limits::budget::BudgetSpec;
use crate::limits::budget::Period;
use crate::limits::Limits;
use prometheus::core::Collector;
use prometheus::{
    Counter, CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

/// Refusal reasons, the `reason` label of `keygate_refusals_total`: the error codes of
/// [`Refusal`](crate::proxy::refusal::Refusal::reason), so that a policy refusal
/// (`model_not_allowed`) and a client's typo (`model_not_found`) are told apart.
pub const REFUSAL_REASONS: [&str; 20] = [
    "missing_api_key",
    "invalid_api_key",
    "key_expired",
    "key_paused",
    "auth_guard",
    "ip_not_allowed",
    "operation_not_allowed",
    "model_not_found",
    "model_not_allowed",
    "invalid_request",
    "request_too_large",
    "request_timeout",
    "unknown_route",
    "method_not_allowed",
    "rate_limit_exceeded",
    "concurrency_limit_exceeded",
    "budget_exceeded",
    "content_policy_violation",
    "moderation_unavailable",
    "response_blocked",
];

/// Latency buckets of calls to Redis, from 0.1 ms (loopback) to the longest a call may wait.
const STATE_LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

/// Response status classes; `none` when the client got no response (it left, or a stream was cut
/// before its headers).
const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Latency buckets from 0.5 ms to 10 min: gateway overhead at the bottom, long generations at
/// the top.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 600.0,
];

pub struct Metrics {
    registry: Registry,
    /// Policy reloads by result: `swapped`, `unchanged`, `failed`.
    pub policy_reloads: IntCounterVec,
    /// 1 for the digest of the policy being served, so a fleet can be compared at a glance.
    pub policy_info: IntGaugeVec,
    /// Keys in the active policy by status.
    pub keys: IntGaugeVec,
    requests: IntCounterVec,
    refusals: IntCounterVec,
    prompt_tokens: IntCounterVec,
    completion_tokens: IntCounterVec,
    cached_tokens: IntCounterVec,
    cache_write_tokens: IntCounterVec,
    cost_usd: CounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    time_to_first_byte: HistogramVec,
    in_flight: IntGaugeVec,
    budget_spent: GaugeVec,
    budget_limit: GaugeVec,
    /// Upstream figures published by the upstream module at scrape time.
    pub upstream_health: IntGaugeVec,
    pub upstream_errors: IntCounterVec,
    /// The provider refused keygate's credential (401 or 403).
    upstream_auth_failures: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub upstream_connections: IntCounterVec,
    /// Guardrail findings acted on, by key, workload, guardrail and action.
    guardrail_actions: IntCounterVec,
    /// Audit lines lost to a full accounting queue (their usage is still counted).
    pub audit_dropped: IntCounter,
    /// Calls to the shared limit state (fleet mode), by operation and result.
    pub state_operations: IntCounterVec,
    /// Latency of calls to the shared limit state, by operation.
    pub state_latency: HistogramVec,
    /// 1 for the limit-state backend in use.
    pub state_backend: IntGaugeVec,
    /// 1 while the limit state answers (always, for the memory backend).
    pub state_healthy: IntGauge,
    /// Refusals of requests that never identified a key.
    anonymous_refusals: [OnceLock<IntCounter>; REFUSAL_REASONS.len()],
}

/// A key's metric handles.
pub struct KeyHandles {
    refusals: [OnceLock<IntCounter>; REFUSAL_REASONS.len()],
    in_flight: IntGauge,
    /// By model index.
    models: Box<[OnceLock<KeyModelHandles>]>,
}

/// A key's handles for one model.
struct KeyModelHandles {
    requests: [OnceLock<IntCounter>; STATUS_CLASSES.len()],
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
    cached_tokens: IntCounter,
    cache_write_tokens: IntCounter,
    cost_usd: Counter,
}

impl std::fmt::Debug for KeyHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHandles")
    }
}

impl std::fmt::Debug for ModelHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelHandles")
    }
}

/// A model's latency histograms.
pub struct ModelHandles {
    request_duration: Histogram,
    upstream_duration: Histogram,
    time_to_first_byte: Histogram,
}

/// What the metrics need of a key: its labels, and where the policy snapshot caches its handles.
pub struct KeyRef<'a> {
    pub id: &'a str,
    pub workload: &'a str,
    pub handles: &'a OnceLock<Box<KeyHandles>>,
}

/// What the metrics need of a model: its labels, its index among the snapshot's models, and
/// where the snapshot caches its handles.
pub struct ModelRef<'a> {
    pub index: usize,
    pub name: &'a str,
    pub provider: &'a str,
    pub handles: &'a OnceLock<ModelHandles>,
}

/// Keys of the policy being served, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCounts {
    pub active: i64,
    pub paused: i64,
    pub expired: i64,
}

/// What one finished request contributes to the metrics.
pub struct RequestFigures {
    pub status: u16,
    pub refusal: Option<&'static str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    pub duration: Duration,
    pub upstream_duration: Option<Duration>,
    pub time_to_first_byte: Option<Duration>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let policy_reloads = IntCounterVec::new(
            Opts::new("keygate_policy_reloads_total", "Policy reloads by result."),
            &["result"],
        )
        .expect("valid metric");
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "keygate_policy_info",
                "The active policy's digest (value is always 1).",
            ),
            &["digest"],
        )
        .expect("valid metric");
        let keys = IntGaugeVec::new(
            Opts::new("keygate_keys", "Keys in the active policy by status."),
            &["status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(policy_reloads.clone()))
            .expect("unique metric");
        for g in [&policy_info, &keys] {
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
        }
        for result in ["swapped", "unchanged", "failed"] {
            policy_reloads.with_label_values(&[result]);
        }
        let int_counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["model", "provider"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let usage_labels = ["key", "workload", "model"];
        let cost_usd = CounterVec::new(
            Opts::new(
                "keygate_cost_usd_total",
                "Cost in USD at the model's price (the usage database is the billing record).",
            ),
            &usage_labels,
        )
        .expect("valid metric");
        registry
            .register(Box::new(cost_usd.clone()))
            .expect("unique metric");
        let audit_dropped = IntCounter::new(
            "keygate_audit_dropped_total",
            "Audit lines dropped because the accounting queue or the audit sink was full; usage totals still count their requests.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(audit_dropped.clone()))
            .expect("unique metric");
        let state_latency = HistogramVec::new(
            HistogramOpts::new(
                "keygate_state_latency_seconds",
                "Latency of calls to the shared limit state (Redis), by operation.",
            )
            .buckets(STATE_LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        let state_healthy = IntGauge::new(
            "keygate_state_healthy",
            "1 while the limit state answers; 0 while Redis cannot be reached.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(state_latency.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(state_healthy.clone()))
            .expect("unique metric");
        Metrics {
            state_operations: int_counter(
                "keygate_state_operations_total",
                "Calls to the shared limit state (Redis) by operation and result.",
                &["op", "result"],
            ),
            state_latency,
            state_backend: int_gauge(
                "keygate_state_backend",
                "1 for the limit-state backend in use: memory or redis.",
                &["backend"],
            ),
            state_healthy,
            requests: int_counter(
                "keygate_requests_total",
                "Requests that named a key and a model, by response status class.",
                &["key", "workload", "model", "provider", "status_class"],
            ),
            refusals: int_counter(
                "keygate_refusals_total",
                "Requests keygate refused itself, by key (`-` before one is known) and reason.",
                &["key", "reason"],
            ),
            prompt_tokens: int_counter(
                "keygate_prompt_tokens_total",
                "Prompt tokens, from provider responses (estimated for cut streams).",
                &usage_labels,
            ),
            completion_tokens: int_counter(
                "keygate_completion_tokens_total",
                "Completion tokens, from provider responses (estimated for cut streams).",
                &usage_labels,
            ),
            cached_tokens: int_counter(
                "keygate_cached_tokens_total",
                "Prompt tokens the provider served from its cache.",
                &usage_labels,
            ),
            cache_write_tokens: int_counter(
                "keygate_cache_write_tokens_total",
                "Prompt tokens the provider wrote to its cache (Anthropic's prompt caching).",
                &usage_labels,
            ),
            cost_usd,
            request_duration: histogram(
                "keygate_request_duration_seconds",
                "Whole request duration as keygate saw it, including streaming.",
            ),
            upstream_duration: histogram(
                "keygate_upstream_duration_seconds",
                "From the first upstream connection attempt to the end of the response.",
            ),
            time_to_first_byte: histogram(
                "keygate_time_to_first_byte_seconds",
                "Streams: from the request's arrival to the first response body byte.",
            ),
            in_flight: int_gauge(
                "keygate_in_flight_requests",
                "Admitted requests not yet finished (streams count until they end).",
                &["key"],
            ),
            budget_spent: gauge(
                "keygate_budget_spent_usd",
                "Spend in the current UTC period of scopes with a budget.",
                &["scope", "name", "period"],
            ),
            budget_limit: gauge(
                "keygate_budget_limit_usd",
                "The budget cap of the current period.",
                &["scope", "name", "period"],
            ),
            upstream_health: int_gauge(
                "keygate_upstream_health",
                "1 while an endpoint takes traffic, 0 while it is ejected.",
                &["provider", "endpoint"],
            ),
            upstream_errors: int_counter(
                "keygate_upstream_errors_total",
                "Upstream failures by kind: connect, timeout, reset, 5xx.",
                &["provider", "endpoint", "kind"],
            ),
            upstream_auth_failures: int_counter(
                "keygate_upstream_auth_failures_total",
                "Provider answers of 401 or 403: the provider refused keygate's credential.",
                &["provider"],
            ),
            upstream_retries: int_counter(
                "keygate_upstream_retries_total",
                "Requests retried on another endpoint.",
                &["provider"],
            ),
            fallbacks: int_counter(
                "keygate_fallbacks_total",
                "Requests answered by a fallback model.",
                &["model", "fallback"],
            ),
            upstream_connections: int_counter(
                "keygate_upstream_connections_total",
                "Upstream connections used, by whether they were reused from the pool.",
                &["provider", "reused"],
            ),
            guardrail_actions: int_counter(
                "keygate_guardrail_actions_total",
                "Guardrails that fired on a request, by key, workload, guardrail and the action taken.",
                &["key", "workload", "guardrail", "action"],
            ),
            audit_dropped,
            anonymous_refusals: Default::default(),
            registry,
            policy_reloads,
            policy_info,
            keys,
        }
    }

    /// The key's handles, resolved on its first request in this snapshot.
    pub fn key<'k>(&self, key: &KeyRef<'k>, models: usize) -> &'k KeyHandles {
        key.handles.get_or_init(|| {
            Box::new(KeyHandles {
                refusals: Default::default(),
                in_flight: self.in_flight.with_label_values(&[key.id]),
                models: (0..models).map(|_| OnceLock::new()).collect(),
            })
        })
    }

    fn model<'m>(&self, model: &ModelRef<'m>) -> &'m ModelHandles {
        model.handles.get_or_init(|| {
            let labels = [model.name, model.provider];
            ModelHandles {
                request_duration: self.request_duration.with_label_values(&labels),
                upstream_duration: self.upstream_duration.with_label_values(&labels),
                time_to_first_byte: self.time_to_first_byte.with_label_values(&labels),
            }
        })
    }

    /// An admitted request started.
    pub fn started(&self, key: KeyRef<'_>, models: usize) {
        self.key(&key, models).in_flight.inc();
    }

    /// A request finished; `admitted` says whether [`started`](Self::started) counted it.
    pub fn finished(
        &self,
        key: Option<KeyRef<'_>>,
        model: Option<ModelRef<'_>>,
        models: usize,
        admitted: bool,
        f: &RequestFigures,
    ) {
        let reason = f
            .refusal
            .and_then(|r| REFUSAL_REASONS.iter().position(|x| *x == r));
        let Some(key) = key else {
            if let Some(i) = reason {
                self.anonymous_refusals[i]
                    .get_or_init(|| self.refusals.with_label_values(&["-", REFUSAL_REASONS[i]]))
                    .inc();
            }
            return;
        };
        let handles = self.key(&key, models);
        if admitted {
            handles.in_flight.dec();
        }
        if let Some(i) = reason {
            handles.refusals[i]
                .get_or_init(|| {
                    self.refusals
                        .with_label_values(&[key.id, REFUSAL_REASONS[i]])
                })
                .inc();
        }
        let Some(model) = model else {
            return;
        };
        if let Some(slot) = handles.models.get(model.index) {
            let km = slot.get_or_init(|| {
                let labels = [key.id, key.workload, model.name];
                KeyModelHandles {
                    requests: Default::default(),
                    prompt_tokens: self.prompt_tokens.with_label_values(&labels),
                    completion_tokens: self.completion_tokens.with_label_values(&labels),
                    cached_tokens: self.cached_tokens.with_label_values(&labels),
                    cache_write_tokens: self.cache_write_tokens.with_label_values(&labels),
                    cost_usd: self.cost_usd.with_label_values(&labels),
                }
            });
            let class = match f.status {
                100..=599 => (f.status / 100) as usize,
                _ => 0,
            };
            km.requests[class]
                .get_or_init(|| {
                    self.requests.with_label_values(&[
                        key.id,
                        key.workload,
                        model.name,
                        model.provider,
                        STATUS_CLASSES[class],
                    ])
                })
                .inc();
            if f.prompt_tokens + f.completion_tokens > 0 {
                km.prompt_tokens.inc_by(f.prompt_tokens);
                km.completion_tokens.inc_by(f.completion_tokens);
                km.cached_tokens.inc_by(f.cached_tokens);
                km.cache_write_tokens.inc_by(f.cache_write_tokens);
                km.cost_usd.inc_by(f.cost_usd);
            }
        }
        let mh = self.model(&model);
        mh.request_duration.observe(f.duration.as_secs_f64());
        if let Some(d) = f.upstream_duration {
            mh.upstream_duration.observe(d.as_secs_f64());
        }
        if let Some(d) = f.time_to_first_byte {
            mh.time_to_first_byte.observe(d.as_secs_f64());
        }
    }

    /// The provider refused keygate's credential. Rare and alarming, so the label lookup on
    /// each is of no concern.
    pub fn upstream_auth_failed(&self, provider: &str) {
        self.upstream_auth_failures
            .with_label_values(&[provider])
            .inc();
    }

    /// A guardrail acted on a request of `key`. Guardrails fire on few requests, so the label
    /// lookup on each is of no concern; a request where none fired costs nothing here.
    pub fn guardrail_acted(&self, key: &str, workload: &str, guardrail: &str, action: &str) {
        self.guardrail_actions
            .with_label_values(&[key, workload, guardrail, action])
            .inc();
    }

    /// Publishes budget spend and caps of every key and workload with a budget (at scrape time,
    /// so the request path never touches these gauges).
    pub fn refresh_budgets<'p>(
        &self,
        scopes: impl Iterator<Item = (&'static str, &'p str, &'p BudgetSpec)>,
        limits: &Limits,
    ) {
        self.budget_spent.reset();
        self.budget_limit.reset();
        let now = crate::limits::now_ms();
        for (scope, name, budget) in scopes {
            for figures in limits.spend(scope, name, now) {
                let cap = match figures.period {
                    Period::Daily => budget.daily,
                    Period::Monthly => budget.monthly,
                };
                let Some(cap) = cap else { continue };
                let labels = [scope, name, figures.period.as_str()];
                self.budget_spent
                    .with_label_values(&labels)
                    .set(figures.spent.as_usd());
                self.budget_limit
                    .with_label_values(&labels)
                    .set(cap.as_usd());
            }
        }
    }

    /// Names of every metric family this registry exports (whether or not it has series yet).
    pub fn family_names(&self) -> Vec<String> {
        let mut names: Vec<String> = [
            self.policy_reloads.desc(),
            self.policy_info.desc(),
            self.keys.desc(),
            self.requests.desc(),
            self.refusals.desc(),
            self.prompt_tokens.desc(),
            self.completion_tokens.desc(),
            self.cached_tokens.desc(),
            self.cache_write_tokens.desc(),
            self.cost_usd.desc(),
            self.request_duration.desc(),
            self.upstream_duration.desc(),
            self.time_to_first_byte.desc(),
            self.in_flight.desc(),
            self.budget_spent.desc(),
            self.budget_limit.desc(),
            self.upstream_health.desc(),
            self.upstream_errors.desc(),
            self.upstream_auth_failures.desc(),
            self.upstream_retries.desc(),
            self.fallbacks.desc(),
            self.upstream_connections.desc(),
            self.guardrail_actions.desc(),
            self.audit_dropped.desc(),
            self.state_operations.desc(),
            self.state_latency.desc(),
            self.state_backend.desc(),
            self.state_healthy.desc(),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.fq_name.clone())
        .collect();
        names.sort();
        names
    }

    /// Records the policy with `digest` as the one being served, with its keys by status.
    pub fn set_active_policy(&self, digest: &str, keys: KeyCounts) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[digest]).set(1);
        self.keys.with_label_values(&["active"]).set(keys.active);
        self.keys.with_label_values(&["paused"]).set(keys.paused);
        self.keys.with_label_values(&["expired"]).set(keys.expired);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
