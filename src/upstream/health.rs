//! Active health checks: a background service that GETs each endpoint's health path at its
//! provider's interval and feeds the results to the endpoint's live state, off the request path.
//!
//! The probe itself is pingora-load-balancing's [`HttpHealthCheck`] (a 200 is healthy), built per
//! endpoint with the provider's trust and connect timeout; consecutive-result thresholds are kept
//! in [`EndpointState`] so that they survive reloads like the rest of the endpoint's state.

use super::state::{EndpointState, UpstreamRegistry};
use super::Provider;
use crate::policy::PolicyStore;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How often the service looks for due checks (the finest useful interval).
const TICK: Duration = Duration::from_millis(100);
/// A check waits at most this long (or its interval, if shorter) for its answer.
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The background service; add it to the server next to the proxy.
pub struct HealthChecks {
    pub store: PolicyStore,
    pub registry: Arc<UpstreamRegistry>,
}

/// One endpoint's probe, rebuilt when a reload replaces its provider.
struct Probe {
    provider: Arc<Provider>,
    index: usize,
    check: Arc<HttpHealthCheck>,
    state: Arc<EndpointState>,
    next_due: Instant,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut probes: HashMap<(String, String), Probe> = HashMap::new();
        let mut running: JoinSet<()> = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            while running.try_join_next().is_some() {}
            self.refresh(&mut probes);
            let now = Instant::now();
            for probe in probes.values_mut() {
                if now < probe.next_due {
                    continue;
                }
                let Some(spec) = probe.provider.health_check.clone() else {
                    continue;
                };
                probe.next_due = now + spec.interval;
                let Some(addr) = probe.provider.endpoints[probe.index].addr() else {
                    probe
                        .state
                        .record_check(false, spec.healthy_after, spec.unhealthy_after);
                    continue;
                };
                let backend = Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                    weight: 1,
                    ext: Default::default(),
                };
                let (check, state) = (probe.check.clone(), probe.state.clone());
                // Each probe runs on its own so that one slow endpoint delays no other check.
                running.spawn(async move {
                    let result = check.check(&backend).await;
                    if let Err(e) = &result {
                        tracing::debug!(endpoint = %state.url, error = %e, "health check failed");
                    }
                    state.record_check(result.is_ok(), spec.healthy_after, spec.unhealthy_after);
                });
            }
        }
    }
}

impl HealthChecks {
    /// Brings `probes` in line with the live policy: new endpoints get a probe, replaced
    /// providers a rebuilt one, removed ones none.
    fn refresh(&self, probes: &mut HashMap<(String, String), Probe>) {
        let policy = self.store.load();
        probes.retain(|(name, _), p| {
            policy
                .providers
                .get(name)
                .is_some_and(|live| Arc::ptr_eq(live, &p.provider))
        });
        for (name, provider) in &policy.providers {
            let Some(spec) = &provider.health_check else {
                continue;
            };
            let states = self.registry.states(provider);
            for (index, endpoint) in provider.endpoints.iter().enumerate() {
                let key = (name.clone(), endpoint.url.clone());
                if probes.contains_key(&key) {
                    continue;
                }
                let Some(check) = build_check(provider, index, spec.interval, &spec.path) else {
                    continue;
                };
                probes.insert(
                    key,
                    Probe {
                        provider: provider.clone(),
                        index,
                        check: Arc::new(check),
                        state: states[index].clone(),
                        next_due: Instant::now(),
                    },
                );
            }
        }
    }
}

fn build_check(
    provider: &Provider,
    index: usize,
    interval: Duration,
    path: &str,
) -> Option<HttpHealthCheck> {
    let endpoint = provider.endpoints.get(index)?;
    let mut check = HttpHealthCheck::new(&endpoint.host, endpoint.tls);
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).ok()?;
    req.insert_header(http::header::HOST, endpoint.authority.clone())
        .ok()?;
    check.req = req;
    // Only a placeholder address: the check targets the backend it is given.
    check.peer_template = provider.check_peer(index, interval.min(MAX_CHECK_TIMEOUT))?;
    check.reuse_connection = true;
    Some(check)
}
