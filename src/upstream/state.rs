//! Live endpoint state that outlives policy snapshots: health (passive ejection and active checks),
//! load (in-flight requests, latency moving average) and the counters the metrics layer reads.
//!
//! State is keyed by (provider name, endpoint URL) in an [`UpstreamRegistry`] owned by the server,
//! and each snapshot's [`Provider`] finds its endpoints' state once, through a `OnceLock` slot, so
//! the request path only touches atomics. A reload that keeps an endpoint keeps its ejection,
//! latency and counters.

use super::Provider;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Consecutive failures (connect failures, resets, timeouts, 5xx) that eject an endpoint.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// The first ejection lasts this long; each failed trial after it doubles it, up to the cap.
pub const EJECT_BASE: Duration = Duration::from_secs(1);
pub const EJECT_MAX: Duration = Duration::from_secs(60);

/// Weight of a new latency sample in the moving average, as a shift (1/8).
const EWMA_SHIFT: u32 = 3;

/// Milliseconds since the process's first use of endpoint state, never 0 (0 means "unset").
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Whether an endpoint may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Up,
    /// Ejected, but its back-off is over: one trial request may go.
    TrialDue,
    Down,
}

/// What went wrong on an attempt, for counters and ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Refused, unreachable, TLS failure, or connect timeout.
    Connect,
    /// The connection broke before a response header (or mid-response).
    Reset,
    /// No response byte in time.
    Timeout,
    /// A 5xx answer.
    Status5xx,
}

/// One endpoint's live state and counters.
#[derive(Debug)]
pub struct EndpointState {
    pub provider: Box<str>,
    pub url: Box<str>,
    in_flight: AtomicU32,
    /// Latency to the response header, microseconds; 0 until the first sample.
    ewma_us: AtomicU64,
    consecutive_failures: AtomicU32,
    /// `now_ms` until which the endpoint is out; 0 when it is not ejected.
    ejected_until: AtomicU64,
    /// How many back-offs in a row: the next one lasts `EJECT_BASE * 2^level`.
    eject_level: AtomicU32,
    last_failure: AtomicU64,
    /// A trial request is on its way to an ejected endpoint.
    trial: AtomicBool,
    /// The active health check reports the endpoint down.
    check_down: AtomicBool,
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    selections: AtomicU64,
    retries: AtomicU64,
    ejections: AtomicU64,
    connections_new: AtomicU64,
    connections_reused: AtomicU64,
    errors_connect: AtomicU64,
    errors_timeout: AtomicU64,
    errors_reset: AtomicU64,
    errors_5xx: AtomicU64,
    checks_failed: AtomicU64,
}

/// A point-in-time copy of one endpoint's state and counters, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub provider: String,
    pub url: String,
    /// Passively ejected right now (its back-off may be over, awaiting a trial).
    pub ejected: bool,
    /// Marked down by the active health check.
    pub check_down: bool,
    pub in_flight: u32,
    pub latency_ewma_us: u64,
    pub selections: u64,
    /// Retries that left this endpoint for another one.
    pub retries: u64,
    pub ejections: u64,
    pub connections_new: u64,
    pub connections_reused: u64,
    pub errors_connect: u64,
    pub errors_timeout: u64,
    pub errors_reset: u64,
    pub errors_5xx: u64,
    pub checks_failed: u64,
}

impl EndpointStats {
    /// Up: neither ejected nor failing its health check.
    pub fn healthy(&self) -> bool {
        !self.ejected && !self.check_down
    }
}

impl EndpointState {
    fn new(provider: &str, url: &str) -> EndpointState {
        EndpointState {
            provider: provider.into(),
            url: url.into(),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            eject_level: AtomicU32::new(0),
            last_failure: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            check_down: AtomicBool::new(false),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            counters: Counters::default(),
        }
    }

    #[inline]
    pub fn availability(&self, now: u64) -> Availability {
        if self.check_down.load(Ordering::Relaxed) {
            return Availability::Down;
        }
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => Availability::Up,
            until if now < until => Availability::Down,
            _ if self.trial.load(Ordering::Relaxed) => Availability::Down,
            _ => Availability::TrialDue,
        }
    }

    /// Claims the single trial request of an ejected endpoint whose back-off is over.
    #[inline]
    pub fn claim_trial(&self) -> bool {
        self.trial
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn latency_ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    pub fn last_failure(&self) -> u64 {
        self.last_failure.load(Ordering::Relaxed)
    }

    /// Starts an attempt: counts it in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>, trial: bool) -> AttemptGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.counters.selections.fetch_add(1, Ordering::Relaxed);
        AttemptGuard {
            state: self.clone(),
            trial,
            started: Instant::now(),
        }
    }

    /// A response header arrived `latency` after the attempt started.
    pub fn record_latency(&self, latency: Duration) {
        let sample = latency.as_micros().max(1) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        // Lost updates under contention only drop a sample; the average stays meaningful.
        let new = if old == 0 {
            sample
        } else {
            let old = old as i64;
            (old + ((sample as i64 - old) >> EWMA_SHIFT)).max(1) as u64
        };
        self.ewma_us.store(new, Ordering::Relaxed);
    }

    /// The endpoint answered: it is healthy again, whatever happened before.
    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
            self.eject_level.store(0, Ordering::Relaxed);
            tracing::info!(provider = %self.provider, endpoint = %self.url, "endpoint restored");
        }
        self.trial.store(false, Ordering::Release);
    }

    /// Counts a failure and ejects the endpoint once failures pile up (or its trial failed).
    pub fn record_failure(&self, kind: FailureKind) {
        let counter = match kind {
            FailureKind::Connect => &self.counters.errors_connect,
            FailureKind::Reset => &self.counters.errors_reset,
            FailureKind::Timeout => &self.counters.errors_timeout,
            FailureKind::Status5xx => &self.counters.errors_5xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        self.last_failure.store(now, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let was_trial = self.trial.swap(false, Ordering::AcqRel);
        let ejected = self.ejected_until.load(Ordering::Relaxed) != 0;
        if was_trial || (!ejected && failures >= EJECT_AFTER_FAILURES) {
            let level = if was_trial {
                self.eject_level.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                self.eject_level.load(Ordering::Relaxed)
            };
            let backoff = EJECT_BASE
                .saturating_mul(1u32 << level.min(16))
                .min(EJECT_MAX);
            self.ejected_until
                .store(now + backoff.as_millis() as u64, Ordering::Relaxed);
            self.counters.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(provider = %self.provider, endpoint = %self.url, ?kind, ?backoff, "endpoint ejected");
        }
    }

    /// A retry is leaving this endpoint for another one.
    pub fn record_retry(&self) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_connection(&self, reused: bool) {
        let counter = if reused {
            &self.counters.connections_reused
        } else {
            &self.counters.connections_new
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One active health check result, with the provider's thresholds.
    pub fn record_check(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) {
        if ok {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= healthy_after && self.check_down.swap(false, Ordering::Relaxed) {
                tracing::info!(provider = %self.provider, endpoint = %self.url, "endpoint passes its health check again");
            }
            // A passing check stands in for the trial request of an ejected endpoint.
            let until = self.ejected_until.load(Ordering::Relaxed);
            if until != 0 && now_ms() >= until && !self.check_down.load(Ordering::Relaxed) {
                self.record_success();
            }
        } else {
            self.counters.checks_failed.fetch_add(1, Ordering::Relaxed);
            self.check_successes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= unhealthy_after && !self.check_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(provider = %self.provider, endpoint = %self.url, "endpoint fails its health check");
            }
        }
    }

    pub fn stats(&self) -> EndpointStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EndpointStats {
            provider: self.provider.to_string(),
            url: self.url.to_string(),
            ejected: self.ejected_until.load(Ordering::Relaxed) != 0,
            check_down: self.check_down.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            latency_ewma_us: self.latency_ewma_us(),
            selections: get(&c.selections),
            retries: get(&c.retries),
            ejections: get(&c.ejections),
            connections_new: get(&c.connections_new),
            connections_reused: get(&c.connections_reused),
            errors_connect: get(&c.errors_connect),
            errors_timeout: get(&c.errors_timeout),
            errors_reset: get(&c.errors_reset),
            errors_5xx: get(&c.errors_5xx),
            checks_failed: get(&c.checks_failed),
        }
    }
}

/// An attempt on an endpoint: counted in flight while it lives.
#[derive(Debug)]
pub struct AttemptGuard {
    pub state: Arc<EndpointState>,
    /// This attempt is the trial request of an ejected endpoint.
    trial: bool,
    pub started: Instant,
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        // A trial that ended without a verdict (e.g. the client left) frees the way for another.
        if self.trial {
            self.state.trial.store(false, Ordering::Release);
        }
    }
}

/// Fallbacks taken, per (primary model, fallback model).
type FallbackKey = (Box<str>, Box<str>);
/// (provider name, endpoint URL).
type EndpointKey = (Box<str>, Box<str>);

/// Endpoint state for every (provider, endpoint URL) ever configured in this process.
#[derive(Debug, Default)]
pub struct UpstreamRegistry {
    endpoints: RwLock<HashMap<EndpointKey, Arc<EndpointState>>>,
    fallbacks: RwLock<HashMap<FallbackKey, AtomicU64>>,
}

impl UpstreamRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The live state of `provider`'s endpoints, in endpoint order; resolved once per snapshot.
    #[inline]
    pub fn states<'p>(&self, provider: &'p Provider) -> &'p [Arc<EndpointState>] {
        provider.states.get_or_init(|| {
            let mut map = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
            provider
                .endpoints
                .iter()
                .map(|e| {
                    map.entry((provider.name.as_str().into(), e.url.as_str().into()))
                        .or_insert_with(|| Arc::new(EndpointState::new(&provider.name, &e.url)))
                        .clone()
                })
                .collect()
        })
    }

    pub fn record_fallback(&self, primary: &str, fallback: &str) {
        if let Some(c) = self
            .fallbacks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(primary.into(), fallback.into()))
        {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.fallbacks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry((primary.into(), fallback.into()))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Every endpoint's state and counters, sorted by provider and URL.
    pub fn snapshot(&self) -> Vec<EndpointStats> {
        let map = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<EndpointStats> = map.values().map(|s| s.stats()).collect();
        out.sort_by(|a, b| (&a.provider, &a.url).cmp(&(&b.provider, &b.url)));
        out
    }

    /// One endpoint's stats.
    pub fn endpoint(&self, provider: &str, url: &str) -> Option<EndpointStats> {
        let map = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        map.get(&(provider.into(), url.into())).map(|s| s.stats())
    }

    /// Fallbacks taken as `(primary, fallback, count)`, sorted.
    pub fn fallbacks(&self) -> Vec<(String, String, u64)> {
        let map = self.fallbacks.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|((p, f), c)| (p.to_string(), f.to_string(), c.load(Ordering::Relaxed)))
            .collect();
        out.sort();
        out
    }

    /// Publishes the counters (health, errors, retries, connections, fallbacks) to `metrics` at
    /// scrape time; the request path only bumps the registry's own atomics.
    pub fn publish(&self, metrics: &Metrics) {
        fn set(c: &prometheus::IntCounter, v: u64) {
            c.reset();
            c.inc_by(v);
        }
        let mut retries: std::collections::BTreeMap<String, u64> = Default::default();
        let mut connections: std::collections::BTreeMap<(String, bool), u64> = Default::default();
        for e in self.snapshot() {
            let (p, u) = (e.provider.as_str(), e.url.as_str());
            metrics
                .upstream_health
                .with_label_values(&[p, u])
                .set(i64::from(e.healthy()));
            for (kind, n) in [
                ("connect", e.errors_connect),
                ("timeout", e.errors_timeout),
                ("reset", e.errors_reset),
                ("5xx", e.errors_5xx),
            ] {
                set(&metrics.upstream_errors.with_label_values(&[p, u, kind]), n);
            }
            *retries.entry(e.provider.clone()).or_default() += e.retries;
            *connections.entry((e.provider.clone(), false)).or_default() += e.connections_new;
            *connections.entry((e.provider, true)).or_default() += e.connections_reused;
        }
        for (p, n) in retries {
            set(
                &metrics.upstream_retries.with_label_values(&[p.as_str()]),
                n,
            );
        }
        for ((p, reused), n) in connections {
            let reused = if reused { "true" } else { "false" };
            set(
                &metrics
                    .upstream_connections
                    .with_label_values(&[p.as_str(), reused]),
                n,
            );
        }
        for (primary, fallback, n) in self.fallbacks() {
            set(
                &metrics
                    .fallbacks
                    .with_label_values(&[primary.as_str(), fallback.as_str()]),
                n,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_backs_off_and_a_success_restores() {
        let s = Arc::new(EndpointState::new("p", "http://a"));
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            s.record_failure(FailureKind::Connect);
        }
        assert_eq!(s.availability(now_ms()), Availability::Up);
        s.record_failure(FailureKind::Status5xx);
        let until = s.ejected_until.load(Ordering::Relaxed);
        assert_eq!(s.availability(now_ms()), Availability::Down);
        assert_eq!(s.availability(until), Availability::TrialDue);
        // a failed trial doubles the back-off
        assert!(s.claim_trial());
        assert_eq!(
            s.availability(until),
            Availability::Down,
            "one trial at a time"
        );
        s.record_failure(FailureKind::Connect);
        let until2 = s.ejected_until.load(Ordering::Relaxed);
        assert!(until2 >= now_ms() + 1900, "second back-off is about 2s");
        assert_eq!(s.stats().ejections, 2);
        s.record_success();
        assert_eq!(s.availability(now_ms()), Availability::Up);
        assert_eq!(s.eject_level.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_dropped_trial_frees_the_next_one() {
        let s = Arc::new(EndpointState::new("p", "http://a"));
        for _ in 0..EJECT_AFTER_FAILURES {
            s.record_failure(FailureKind::Reset);
        }
        let until = s.ejected_until.load(Ordering::Relaxed);
        assert!(s.claim_trial());
        let guard = s.begin(true);
        assert_eq!(s.in_flight(), 1);
        drop(guard);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.availability(until), Availability::TrialDue);
    }

    #[test]
    fn health_check_thresholds() {
        let s = EndpointState::new("p", "http://a");
        s.record_check(false, 2, 2);
        assert_eq!(s.availability(now_ms()), Availability::Up);
        s.record_check(false, 2, 2);
        assert_eq!(s.availability(now_ms()), Availability::Down);
        s.record_check(true, 2, 2);
        assert_eq!(s.availability(now_ms()), Availability::Down);
        s.record_check(true, 2, 2);
        assert_eq!(s.availability(now_ms()), Availability::Up);
    }

    #[test]
    fn latency_average_moves_toward_samples() {
        let s = EndpointState::new("p", "http://a");
        s.record_latency(Duration::from_millis(80));
        assert_eq!(s.latency_ewma_us(), 80_000);
        s.record_latency(Duration::from_millis(160));
        assert_eq!(s.latency_ewma_us(), 90_000);
    }
}
