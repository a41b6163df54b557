//! One request's way through its upstream attempts: which endpoints it tried, how many retries it
//! used, which fallback comes next, its total deadline, and the decision after each failure.
//!
//! The rules: a connect failure or a reset before any response byte is retried on another
//! endpoint of the same provider, while `retries` and untried endpoints last. A timeout, a 429 or
//! a 5xx — or a provider with no endpoint left to try — moves to the model's next fallback that
//! the key may use. Nothing is retried once response bytes reached the client; the proxy checks
//! that before asking.
//!
//! A request reaches one model's provider at most `1 + retries` times. The provider may have read
//! (and may bill) every request it was sent, even one whose connection then broke, so each send
//! after the first is one of the `retries`; only a pooled connection that broke before the request
//! head was written, so that nothing reached the provider, is tried again without counting.

use super::balance::Tried;
use super::state::{AttemptGuard, EndpointState};
use super::Provider;
use crate::policy::{Key, Model, Policy};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts on a fresh connection after pooled ones broke before the request was written, beyond
/// `retries`.
const MAX_UNSENT_RETRIES: u32 = 3;

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused, unreachable, TLS failure or connect timeout: nothing was sent.
    ConnectFailed,
    /// The connection broke before any response byte.
    ResetEarly,
    /// A pooled connection broke before the request head was written to it: nothing reached the
    /// provider, so it is tried again on a fresh connection without spending a retry.
    Unsent,
    /// A pooled connection broke after the request was written and before any response byte.
    /// Most likely the provider closed it as idle just as it was reused, so the endpoint is not at
    /// fault and may be tried again, but the provider may also have read the request: the send
    /// spends a retry.
    StaleConnection,
    /// No response in time.
    Timeout,
    /// The provider answered with this status (429 or 5xx).
    Status(u16),
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Another endpoint of the same provider.
    Retry,
    /// The next fallback model (already chosen; see [`UpstreamAttempts::take_fallback`]).
    Fallback,
    /// Give the client the error.
    GiveUp,
}

/// Per-request upstream state, kept in the request context.
#[derive(Debug, Default)]
pub struct UpstreamAttempts {
    /// The model the client asked for; its `fallbacks` list is the one followed.
    primary: Option<Arc<Model>>,
    /// Endpoints of the current model's provider tried so far.
    tried: Tried,
    retries_used: u32,
    unsent_retries: u32,
    current_index: Option<usize>,
    /// Position in the primary's fallback list of the next candidate.
    next_fallback: usize,
    pending_fallback: Option<Arc<Model>>,
    deadline: Option<Instant>,
    current: Option<AttemptGuard>,
    /// The current attempt's response is being dropped for a fallback: the error that follows is
    /// keygate's own signal, not an upstream failure.
    replacing_response: bool,
    /// How many fallbacks this request took.
    fallbacks_taken: u32,
    /// The current attempt received a response header.
    got_header: bool,
    /// The current attempt's request head was written to its connection.
    wrote_head: bool,
}

impl UpstreamAttempts {
    /// Called once per model (the primary, then each fallback): a fresh provider to try.
    pub fn start_model(&mut self, model: &Arc<Model>, now: Instant) {
        if self.primary.is_none() {
            self.primary = Some(model.clone());
        }
        self.tried.clear();
        self.current_index = None;
        self.retries_used = 0;
        self.deadline = model.provider.total_timeout.map(|t| now + t);
    }

    /// Whether a model was started (the first `upstream_peer` call has happened).
    pub fn started(&self) -> bool {
        self.primary.is_some()
    }

    pub fn primary(&self) -> Option<&Arc<Model>> {
        self.primary.as_ref()
    }

    /// Time left before the current model's total deadline (`None`: no deadline).
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(now))
    }

    pub fn past_deadline(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Starts an attempt on endpoint `index`; the previous attempt's in-flight count ends.
    pub fn begin(&mut self, index: usize, state: &Arc<EndpointState>, trial: bool) {
        self.tried.insert(index);
        self.got_header = false;
        self.wrote_head = false;
        self.current_index = Some(index);
        self.current = Some(state.begin(trial));
    }

    /// The attempt in progress (or the last one).
    pub fn current(&self) -> Option<&AttemptGuard> {
        self.current.as_ref()
    }

    /// How many fallbacks this request took.
    pub fn fallbacks_taken(&self) -> u32 {
        self.fallbacks_taken
    }

    /// The endpoint (an index into the current model's provider) of the attempt in progress.
    pub fn endpoint(&self) -> Option<usize> {
        self.current_index
    }

    pub fn tried(&self) -> &Tried {
        &self.tried
    }

    /// Endpoint `index` has no address to connect to: it counts as tried for this model.
    pub fn skip_unreachable(&mut self, index: usize) {
        self.tried.insert(index);
    }

    /// The current attempt received its response header.
    pub fn header_arrived(&mut self) {
        self.got_header = true;
    }

    /// Whether the current attempt received a response header.
    pub fn got_header(&self) -> bool {
        self.got_header
    }

    /// The current attempt's request head was written to its connection.
    pub fn head_written(&mut self) {
        self.wrote_head = true;
    }

    /// Whether the current attempt's request head was written to its connection.
    pub fn wrote_head(&self) -> bool {
        self.wrote_head
    }

    /// The current response is dropped for the fallback already chosen.
    pub fn replace_response(&mut self) {
        self.replacing_response = true;
    }

    /// Whether the failure now being reported is keygate dropping a response for a fallback;
    /// asked once per failure.
    pub fn take_replacing_response(&mut self) -> bool {
        std::mem::take(&mut self.replacing_response)
    }

    /// The fallback chosen by the last [`Next::Fallback`], to switch to now.
    pub fn take_fallback(&mut self) -> Option<Arc<Model>> {
        self.pending_fallback.take()
    }

    /// Decides what follows a failed attempt of the current model on `provider`.
    pub fn after_failure(
        &mut self,
        outcome: Outcome,
        provider: &Provider,
        policy: &Policy,
        key: Option<&Key>,
    ) -> Next {
        let pooled = matches!(outcome, Outcome::Unsent | Outcome::StaleConnection);
        if pooled {
            // The endpoint closed a pooled connection, which says nothing of its health.
            if let Some(index) = self.current_index {
                self.tried.remove(index);
            }
        }
        if outcome == Outcome::Unsent && self.unsent_retries < MAX_UNSENT_RETRIES {
            self.unsent_retries += 1;
            return Next::Retry;
        }
        let early_break = pooled || matches!(outcome, Outcome::ConnectFailed | Outcome::ResetEarly);
        if early_break
            && self.retries_used < provider.retries
            && self.tried.len() < provider.endpoints.len()
        {
            self.retries_used += 1;
            if let Some(current) = &self.current {
                current.state.record_retry();
            }
            return Next::Retry;
        }
        match self.next_allowed_fallback(policy, key) {
            Some(model) => {
                self.pending_fallback = Some(model);
                self.fallbacks_taken += 1;
                Next::Fallback
            }
            None => Next::GiveUp,
        }
    }

    /// The next model in the primary's list that the key may use; skipped ones are not revisited.
    fn next_allowed_fallback(&mut self, policy: &Policy, key: Option<&Key>) -> Option<Arc<Model>> {
        let primary = self.primary.as_ref()?;
        let key = key?;
        while let Some(&index) = primary.fallbacks.get(self.next_fallback) {
            self.next_fallback += 1;
            if key.models.contains(index) {
                if let Some(model) = policy.models.get(index) {
                    return Some(model.clone());
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, LoadOptions};

    /// `a` on p1 (two endpoints, one retry) falls back to `b` then `c` (on p2: one endpoint, no
    /// retries); the key may use a and c.
    fn policy() -> (tempfile::TempDir, Arc<Policy>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys.d")).unwrap();
        let s = crate::keys::secret::generate().unwrap();
        std::fs::write(
            dir.path().join("keys.d/k.yaml"),
            format!("hash: \"{}\"\nworkload: w\n", s.digest),
        )
        .unwrap();
        let config = r#"listen: 127.0.0.1:1
providers:
  p1:
    format: openai
    retries: 1
    endpoints: [{url: "http://127.0.0.1:2"}, {url: "http://127.0.0.1:3"}]
  p2:
    format: openai
    retries: 0
    endpoints: [{url: "http://127.0.0.1:4"}]
models:
  a: {provider: p1, fallbacks: [b, c]}
  b: {provider: p2}
  c: {provider: p2}
workloads:
  w: {models: [a, c]}
"#;
        let path = dir.path().join("keygate.yaml");
        std::fs::write(&path, config).unwrap();
        let policy = config::load(&path, LoadOptions { resolve_dns: false }).unwrap();
        (dir, Arc::new(policy))
    }

    #[test]
    fn retries_then_the_first_fallback_the_key_may_use() {
        let (_dir, policy) = policy();
        let key = policy.keys_by_id["k"].clone();
        let a = policy.model("a").unwrap().clone();
        let registry = super::super::state::UpstreamRegistry::new();
        let states = registry.states(&a.provider);
        let mut up = UpstreamAttempts::default();
        up.start_model(&a, Instant::now());
        up.begin(0, &states[0], false);
        let decide =
            |up: &mut UpstreamAttempts, o| up.after_failure(o, &a.provider, &policy, Some(&key));
        assert_eq!(decide(&mut up, Outcome::ConnectFailed), Next::Retry);
        up.begin(1, &states[1], false);
        // the one retry is spent and both endpoints tried: `b` is not allowed, so `c`
        assert_eq!(decide(&mut up, Outcome::ResetEarly), Next::Fallback);
        assert_eq!(up.take_fallback().map(|m| m.name.clone()), Some("c".into()));
        assert_eq!(states[0].stats().retries, 1);
        // nothing is left after `c`
        assert_eq!(decide(&mut up, Outcome::Status(503)), Next::GiveUp);
    }

    #[test]
    fn timeouts_and_statuses_go_straight_to_a_fallback() {
        let (_dir, policy) = policy();
        let key = policy.keys_by_id["k"].clone();
        let a = policy.model("a").unwrap().clone();
        let registry = super::super::state::UpstreamRegistry::new();
        let states = registry.states(&a.provider);
        for outcome in [Outcome::Timeout, Outcome::Status(429), Outcome::Status(502)] {
            let mut up = UpstreamAttempts::default();
            up.start_model(&a, Instant::now());
            up.begin(0, &states[0], false);
            assert_eq!(
                up.after_failure(outcome, &a.provider, &policy, Some(&key)),
                Next::Fallback,
                "{outcome:?}"
            );
            assert_eq!(up.fallbacks_taken, 1);
        }
        // without a key (cannot happen past admission) nothing is allowed
        let mut up = UpstreamAttempts::default();
        up.start_model(&a, Instant::now());
        assert_eq!(
            up.after_failure(Outcome::Timeout, &a.provider, &policy, None),
            Next::GiveUp
        );
    }

    #[test]
    fn a_pooled_connection_that_sent_nothing_retries_the_same_endpoint_a_few_times() {
        let (_dir, policy) = policy();
        let key = policy.keys_by_id["k"].clone();
        let b = policy.model("b").unwrap().clone();
        let registry = super::super::state::UpstreamRegistry::new();
        let states = registry.states(&b.provider);
        let mut up = UpstreamAttempts::default();
        up.start_model(&b, Instant::now());
        for _ in 0..MAX_UNSENT_RETRIES {
            up.begin(0, &states[0], false);
            let next = up.after_failure(Outcome::Unsent, &b.provider, &policy, Some(&key));
            assert_eq!(next, Next::Retry);
            assert!(!up.tried.contains(0), "the endpoint may be picked again");
        }
        assert_eq!(up.retries_used, 0, "nothing was sent, no retry spent");
        up.begin(0, &states[0], false);
        // `b` has no retries and no fallbacks
        assert_eq!(
            up.after_failure(Outcome::Unsent, &b.provider, &policy, Some(&key)),
            Next::GiveUp
        );
    }

    #[test]
    fn a_pooled_connection_that_broke_after_the_send_spends_a_retry() {
        let (_dir, policy) = policy();
        let key = policy.keys_by_id["k"].clone();
        let b = policy.model("b").unwrap().clone();
        let a = policy.model("a").unwrap().clone();
        let registry = super::super::state::UpstreamRegistry::new();
        // `b` has no retries: the request was sent once and is not sent again
        let states = registry.states(&b.provider);
        let mut up = UpstreamAttempts::default();
        up.start_model(&b, Instant::now());
        up.begin(0, &states[0], false);
        assert_eq!(
            up.after_failure(Outcome::StaleConnection, &b.provider, &policy, Some(&key)),
            Next::GiveUp
        );
        // `a` has one: spent on the same endpoint, then the fallback
        let states = registry.states(&a.provider);
        let mut up = UpstreamAttempts::default();
        up.start_model(&a, Instant::now());
        up.begin(0, &states[0], false);
        let decide = |up: &mut UpstreamAttempts| {
            up.after_failure(Outcome::StaleConnection, &a.provider, &policy, Some(&key))
        };
        assert_eq!(decide(&mut up), Next::Retry);
        assert!(!up.tried.contains(0), "the endpoint may be picked again");
        up.begin(0, &states[0], false);
        assert_eq!(decide(&mut up), Next::Fallback);
        assert_eq!(up.retries_used, 1);
    }
}
