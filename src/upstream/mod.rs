//! Providers and their endpoints: where a routed request goes and how keygate connects there.
//!
//! A [`Provider`] owns its credential (as a prebuilt header value), its endpoints and their
//! weighted round-robin schedule, its balance mode, retries, TLS trust and timeouts. Endpoint host
//! names are resolved off the request path (at policy load, and again by [`refresh_dns`]), so
//! picking a peer for a request reads a few atomics and builds an `HttpPeer` from a socket address.
//!
//! - [`state`]: live per-endpoint state kept across reloads (ejection, load, latency, counters);
//! - [`azure`]: the paths of Azure OpenAI deployments;
//! - [`balance`]: choosing the endpoint of one attempt;
//! - [`attempt`]: one request's way through attempts, retries and fallbacks;
//! - [`health`]: the active health-check background service;
//! - [`retire`]: closing the idle connections to endpoints a reload removed;
//! - [`watchdog`]: the per-attempt watchdog for the smaller of `first_byte` and `idle`.

pub mod attempt;
pub mod azure;
pub mod balance;
pub mod health;
#[cfg(target_os = "linux")]
pub mod retire;
pub mod state;
pub mod watchdog;

use crate::domain::ProviderFormat;
use arc_swap::ArcSwap;
use balance::Balance;
use http::{HeaderName, HeaderValue};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};
use state::EndpointState;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// LLMs may think for minutes before the first token, so the default silence allowance is long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_RETRIES: u32 = 2;
/// Long enough to carry a client's bursts over, short enough not to hold sockets the provider's
/// side has probably closed already.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A provider's share of the upstream keep-alive pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    /// Idle connections kept for reuse; `None` follows the data plane's `max_connections`.
    pub max_idle: Option<usize>,
    /// How long an idle connection waits for reuse before keygate closes it.
    pub idle_timeout: Duration,
}

/// The `anthropic-version` sent to a `format: anthropic` provider when neither the client nor
/// the provider's `anthropic_version` names one: the Messages API's current version.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Client headers that choose which provider account, project, subscription or deployment serves
/// and bills a request. The gateway's choice is its credential, and a tenant must not override it:
/// these are not forwarded unless the provider's `forward_headers` names them.
pub const ACCOUNT_HEADERS: [HeaderName; 5] = [
    // OpenAI: the organization and the project billed
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    // Azure API Management: the subscription billed (a credential in its own right)
    HeaderName::from_static("ocp-apim-subscription-key"),
    // Azure Machine Learning and AI Foundry online endpoints: the deployment that serves
    HeaderName::from_static("azureml-model-deployment"),
    // Google Cloud: the project billed and charged quota
    HeaderName::from_static("x-goog-user-project"),
];

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// Active health checks of a provider's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub path: String,
    pub interval: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// One LLM provider account: credential, endpoints, trust and timeouts.
pub struct Provider {
    pub name: String,
    pub format: ProviderFormat,
    /// The header that carries the credential upstream, with its value ready to insert.
    pub credential: Option<(http::HeaderName, HeaderValue)>,
    /// `format: anthropic`: the `anthropic-version` sent when the client sends none.
    pub anthropic_version: Option<HeaderValue>,
    /// The [`ACCOUNT_HEADERS`] removed from client requests: those `forward_headers` does not name.
    pub withheld_headers: Box<[HeaderName]>,
    pub endpoints: Vec<Endpoint>,
    pub(crate) schedule: Vec<u16>,
    pub(crate) next: AtomicUsize,
    pub balance: Balance,
    /// Further endpoints one request may try after a connect failure or an early reset.
    pub retries: u32,
    pub health_check: Option<HealthCheckSpec>,
    /// Live endpoint state from the registry, bound on first use of this snapshot.
    pub(crate) states: OnceLock<Box<[Arc<EndpointState>]>>,
    /// Per-provider CA list (system roots plus the provider's `ca_file`), when it has one.
    ca: Option<Arc<[WrappedX509]>>,
    /// Separates pooled connections by trust configuration: Pingora's pool key ignores the CA.
    group_key: u64,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// Deadline for the whole upstream exchange with this provider, retries included.
    pub total_timeout: Option<Duration>,
    pub pool: PoolSpec,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credential is deliberately absent.
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// One base URL of a provider.
#[derive(Debug)]
pub struct Endpoint {
    /// The URL as written in the policy, for logs and metrics.
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `Host` header value: the host, plus the port when it is not the scheme's default.
    pub authority: HeaderValue,
    /// Path prefix prepended to the request path (empty, or e.g. `/openai`), without trailing `/`.
    pub base_path: String,
    pub weight: u32,
    addrs: ArcSwap<Vec<SocketAddr>>,
}

/// What `Provider::new` needs; built by the policy compiler.
pub struct ProviderSpec {
    pub name: String,
    pub format: ProviderFormat,
    pub api_key: Option<String>,
    /// `format: anthropic` only; [`DEFAULT_ANTHROPIC_VERSION`] when unset.
    pub anthropic_version: Option<String>,
    /// The [`ACCOUNT_HEADERS`] forwarded from clients.
    pub forward_headers: Vec<HeaderName>,
    pub endpoints: Vec<EndpointSpec>,
    pub extra_ca_der: Vec<Vec<u8>>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Option<Duration>,
    pub balance: Balance,
    pub retries: u32,
    pub health_check: Option<HealthCheckSpec>,
    pub pool: PoolSpec,
}

pub struct EndpointSpec {
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub base_path: String,
    pub weight: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the API key cannot be sent in an HTTP header")]
    InvalidCredential,
    #[error("`anthropic_version` cannot be sent in an HTTP header")]
    InvalidAnthropicVersion,
    #[error("host `{0}` cannot be sent in an HTTP header")]
    InvalidHost(String),
    #[error("cannot read the system CA certificates: {0}")]
    SystemRoots(String),
}

impl Provider {
    pub fn new(spec: ProviderSpec) -> Result<Provider, ProviderError> {
        let credential = match &spec.api_key {
            Some(key) => {
                // Each API's own credential header, which its SDKs send.
                let (name, text) = match spec.format {
                    ProviderFormat::Openai => {
                        (http::header::AUTHORIZATION, format!("Bearer {key}"))
                    }
                    ProviderFormat::Anthropic => (X_API_KEY, key.clone()),
                    ProviderFormat::Azure => (API_KEY, key.clone()),
                };
                let mut value =
                    HeaderValue::try_from(text).map_err(|_| ProviderError::InvalidCredential)?;
                value.set_sensitive(true);
                Some((name, value))
            }
            None => None,
        };
        let anthropic_version = match spec.format {
            ProviderFormat::Anthropic => Some(
                HeaderValue::try_from(
                    spec.anthropic_version
                        .as_deref()
                        .unwrap_or(DEFAULT_ANTHROPIC_VERSION),
                )
                .map_err(|_| ProviderError::InvalidAnthropicVersion)?,
            ),
            _ => None,
        };
        let endpoints = spec
            .endpoints
            .into_iter()
            .map(Endpoint::new)
            .collect::<Result<Vec<_>, _>>()?;
        let schedule =
            smooth_weighted_schedule(&endpoints.iter().map(|e| e.weight).collect::<Vec<_>>());
        let ca = if spec.extra_ca_der.is_empty() {
            None
        } else {
            // A per-peer CA list replaces the system store in Pingora's rustls connector, so the
            // system roots are added here to keep public endpoints of the same provider working.
            let system = rustls_native_certs::load_native_certs()
                .map_err(|e| ProviderError::SystemRoots(e.to_string()))?;
            let list: Vec<WrappedX509> = system
                .into_iter()
                .map(|c| c.as_ref().to_vec())
                .chain(spec.extra_ca_der.iter().cloned())
                .filter(|der| x509_parses(der))
                .map(|der| WrappedX509::new(der, parse_x509))
                .collect();
            Some(Arc::from(list))
        };
        let group_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            spec.name.hash(&mut h);
            spec.extra_ca_der.hash(&mut h);
            h.finish()
        };
        let withheld_headers = ACCOUNT_HEADERS
            .iter()
            .filter(|name| !spec.forward_headers.contains(name))
            .cloned()
            .collect();
        Ok(Provider {
            name: spec.name,
            format: spec.format,
            credential,
            anthropic_version,
            withheld_headers,
            endpoints,
            schedule,
            next: AtomicUsize::new(0),
            balance: spec.balance,
            retries: spec.retries,
            health_check: spec.health_check,
            states: OnceLock::new(),
            ca,
            group_key,
            connect_timeout: spec.connect_timeout,
            first_byte_timeout: spec.first_byte_timeout,
            idle_timeout: spec.idle_timeout,
            total_timeout: spec.total_timeout,
            pool: spec.pool,
        })
    }

    /// A Pingora peer for endpoint `index`, or `None` while its host has no known address.
    /// `remaining` is what is left of the request's total deadline; no timeout may outlast it.
    ///
    /// Pingora 0.9.1 applies one read timeout to every upstream read of an attempt, the wait
    /// for the response header and each body read alike; it cannot tell the first byte from a
    /// pause mid-stream. The read timeout is the larger of `first_byte` and `idle`, so that
    /// neither fires early; when they differ, the proxy arms a [`watchdog`] for the smaller one
    /// (`first_byte` up to the response header, or `idle` from there on).
    pub fn peer(&self, index: usize, remaining: Option<Duration>) -> Option<HttpPeer> {
        let endpoint = self.endpoints.get(index)?;
        let addr = {
            let addrs = endpoint.addrs.load();
            *addrs.first()?
        };
        let cap = |d: Duration| remaining.map_or(d, |r| d.min(r).max(Duration::from_millis(1)));
        // The SNI only matters to TLS; left empty otherwise, there is no copy of the host to make
        // and none to hash into the peer's connection-pool key.
        let sni = if endpoint.tls {
            endpoint.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, endpoint.tls, sni);
        peer.group_key = self.group_key;
        peer.options.connection_timeout = Some(cap(self.connect_timeout));
        // covers the TLS handshake too, which `connection_timeout` (TCP only) does not
        peer.options.total_connection_timeout = Some(cap(self.connect_timeout));
        peer.options.read_timeout = Some(cap(self.first_byte_timeout.max(self.idle_timeout)));
        peer.options.write_timeout = Some(cap(self.idle_timeout));
        peer.options.idle_timeout = Some(self.pool.idle_timeout);
        // The client gets canonical header names whatever the provider sent (`proxy::head`), so
        // the provider's spelling is not kept to begin with.
        peer.options.h1_keep_header_case = false;
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(ca.clone());
        }
        Some(peer)
    }

    /// A peer for the active health check of endpoint `index` (same trust, own timeouts).
    pub(crate) fn check_peer(&self, index: usize, timeout: Duration) -> Option<HttpPeer> {
        let mut peer = self.peer(index, Some(timeout))?;
        peer.options.connection_timeout = Some(self.connect_timeout.min(timeout));
        peer.options.total_connection_timeout = Some(self.connect_timeout.min(timeout));
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        Some(peer)
    }

    /// Resolves every endpoint's host now (blocking DNS; never call on a request thread).
    pub fn resolve_blocking(&self) -> Vec<(String, std::io::Error)> {
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            if let Err(e) = endpoint.resolve_blocking() {
                failures.push((endpoint.url.clone(), e));
            }
        }
        failures
    }
}

impl Endpoint {
    fn new(spec: EndpointSpec) -> Result<Endpoint, ProviderError> {
        let default_port = if spec.tls { 443 } else { 80 };
        let host_for_header = if spec.host.contains(':') {
            format!("[{}]", spec.host)
        } else {
            spec.host.clone()
        };
        let authority = if spec.port == default_port {
            host_for_header
        } else {
            format!("{host_for_header}:{}", spec.port)
        };
        let authority = HeaderValue::try_from(authority)
            .map_err(|_| ProviderError::InvalidHost(spec.host.clone()))?;
        let literal = spec
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, spec.port));
        Ok(Endpoint {
            url: spec.url,
            tls: spec.tls,
            host: spec.host,
            port: spec.port,
            authority,
            base_path: spec.base_path,
            weight: spec.weight,
            addrs: ArcSwap::from_pointee(literal.into_iter().collect()),
        })
    }

    /// The address connections go to now, if the host has been resolved.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addrs.load().first().copied()
    }

    pub fn has_literal_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    fn resolve_blocking(&self) -> std::io::Result<()> {
        if self.has_literal_ip() {
            return Ok(());
        }
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(std::io::Error::other("no addresses"));
        }
        self.addrs.store(Arc::new(addrs));
        Ok(())
    }

    async fn resolve(&self) -> std::io::Result<()> {
        if self.has_literal_ip() {
            return Ok(());
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::other("no addresses"));
        }
        self.addrs.store(Arc::new(addrs));
        Ok(())
    }
}

/// How many idle connections the one upstream keep-alive pool holds: the sum of every provider's
/// `max_idle`, where a provider that sets none may keep as many as the data plane has client
/// connections, since no more requests than that can be in flight to it at once.
pub fn pool_capacity<'a>(
    providers: impl Iterator<Item = &'a Arc<Provider>>,
    max_connections: usize,
) -> usize {
    providers
        .map(|p| p.pool.max_idle.unwrap_or(max_connections))
        .fold(0usize, usize::saturating_add)
        .max(1)
}

/// Re-resolves the host names of every endpoint of `providers`, keeping the last good answer on
/// failure. Run periodically from a background task so DNS changes are followed.
pub async fn refresh_dns<'a>(providers: impl Iterator<Item = &'a Arc<Provider>>) {
    for provider in providers {
        for endpoint in &provider.endpoints {
            if let Err(e) = endpoint.resolve().await {
                tracing::warn!(provider = %provider.name, endpoint = %endpoint.url, error = %e, "DNS refresh failed; keeping previous addresses");
            }
        }
    }
}

fn x509_parses(der: &[u8]) -> bool {
    let mut store = rustls::RootCertStore::empty();
    store
        .add(rustls::pki_types::CertificateDer::from(der))
        .is_ok()
}

/// Nginx's smooth weighted round robin, unrolled into one cycle of `sum(weights)` turns, so that
/// endpoints interleave (3/1/1 gives a b a c a, not a a a b c) and each gets exactly its share.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let best = (0..weights.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .expect("a provider has at least one endpoint");
        current[best] -= total;
        schedule.push(best as u16);
    }
    schedule
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A provider on loopback with one endpoint per weight.
    pub(crate) fn provider(weights: &[u32], balance: Balance) -> Provider {
        Provider::new(ProviderSpec {
            name: "p".into(),
            format: ProviderFormat::Openai,
            api_key: None,
            anthropic_version: None,
            forward_headers: Vec::new(),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| EndpointSpec {
                    url: format!("http://127.0.0.1:{}", 9000 + i),
                    tls: false,
                    host: "127.0.0.1".into(),
                    port: 9000 + i as u16,
                    base_path: String::new(),
                    weight,
                })
                .collect(),
            extra_ca_der: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            total_timeout: None,
            balance,
            retries: DEFAULT_RETRIES,
            health_check: None,
            pool: PoolSpec {
                max_idle: None,
                idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            },
        })
        .expect("test provider")
    }

    #[test]
    fn the_pool_holds_every_providers_max_idle_and_the_connection_limit_for_those_without() {
        let with = |max_idle| {
            let mut p = provider(&[1], Balance::RoundRobin);
            p.pool.max_idle = max_idle;
            Arc::new(p)
        };
        let providers = [with(Some(64)), with(None), with(Some(8))];
        assert_eq!(pool_capacity(providers.iter(), 1000), 64 + 1000 + 8);
        assert_eq!(pool_capacity(providers[..1].iter(), 1000), 64);
        assert_eq!(pool_capacity([].iter(), 1000), 1);
        // Each peer carries its provider's idle timeout to Pingora's pool.
        let mut p = provider(&[1], Balance::RoundRobin);
        p.pool.idle_timeout = Duration::from_secs(7);
        assert_eq!(
            p.peer(0, None).unwrap().options.idle_timeout,
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn schedule_is_proportional_and_interleaved() {
        let s = smooth_weighted_schedule(&[3, 1, 1]);
        assert_eq!(s, vec![0, 1, 0, 2, 0]);
        let s = smooth_weighted_schedule(&[1]);
        assert_eq!(s, vec![0]);
        let s = smooth_weighted_schedule(&[5, 2]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 2);
    }
}
