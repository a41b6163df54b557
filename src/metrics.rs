//! Prometheus metrics, in a registry owned by one gateway instance (so several in-process
//! gateways, as in tests, never mix counts). Served as text on the admin listener's `/metrics`.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Policy reloads by result: `swapped`, `unchanged`, `failed`.
    pub policy_reloads: IntCounterVec,
    /// 1 for the digest of the policy being served, so a fleet can be compared at a glance.
    pub policy_info: IntGaugeVec,
    /// Keys in the active policy by status.
    pub keys: IntGaugeVec,
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
        Metrics {
            registry,
            policy_reloads,
            policy_info,
            keys,
        }
    }

    /// Records `policy` as the one being served.
    pub fn set_active_policy(&self, policy: &crate::policy::Policy) {
        self.policy_info.reset();
        self.policy_info
            .with_label_values(&[policy.digest.as_str()])
            .set(1);
        let now = chrono::Utc::now();
        let (mut active, mut paused, mut expired) = (0, 0, 0);
        for key in policy.keys_by_id.values() {
            match key.status {
                _ if key.is_expired_at(now) => expired += 1,
                crate::config::schema::KeyStatus::Active => active += 1,
                crate::config::schema::KeyStatus::Paused => paused += 1,
            }
        }
        self.keys.with_label_values(&["active"]).set(active);
        self.keys.with_label_values(&["paused"]).set(paused);
        self.keys.with_label_values(&["expired"]).set(expired);
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
