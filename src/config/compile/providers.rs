//! The `providers` section: each provider's credential, endpoints, CA bundle, timeouts, balancing,
//! retries and health checks, built into an [`upstream::Provider`](Provider) (whose endpoint
//! hosts are resolved here when serving).

use super::{parse_duration, Problems};
use crate::config::env;
use crate::config::schema::{BalanceFile, ConfigFile, HealthCheckFile};
use crate::config::LoadOptions;
use crate::domain::ProviderFormat;
use crate::upstream::balance::Balance;
use crate::upstream::{
    EndpointSpec, HealthCheckSpec, Provider, ProviderSpec, ACCOUNT_HEADERS,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_RETRIES,
};
use http::HeaderName;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const MAX_WEIGHT: u32 = 1000;
const MAX_ENDPOINTS: usize = 256;
const MAX_RETRIES: i64 = 10;
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const MAX_CHECK_THRESHOLD: i64 = 100;

pub(super) fn compile_providers(
    cfg: &Path,
    base: &Path,
    config: &ConfigFile,
    options: LoadOptions,
    problems: &mut Problems,
) -> BTreeMap<String, Arc<Provider>> {
    let mut providers = BTreeMap::new();
    for (name, p) in &config.providers {
        let path = format!("providers.{name}");
        let before = problems.list.len();
        let lookup = |var: &str| std::env::var(var).ok();
        let api_key = p.api_key.as_deref().and_then(|k| {
            env::expand(k, lookup)
                .map_err(|m| problems.add(cfg, format!("{path}.api_key"), m))
                .ok()
        });
        let anthropic_version = match (&p.anthropic_version, p.format) {
            (None, _) => None,
            (Some(v), ProviderFormat::Anthropic) => {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                    problems.add(
                        cfg,
                        format!("{path}.anthropic_version"),
                        format!("`{v}` is not a version such as `2023-06-01`"),
                    );
                }
                Some(v.clone())
            }
            (Some(_), _) => {
                problems.add(
                    cfg,
                    format!("{path}.anthropic_version"),
                    "applies only to a provider with `format: anthropic`",
                );
                None
            }
        };
        let forward_headers = compile_forward_headers(cfg, &path, &p.forward_headers, problems);
        if p.endpoints.is_empty() {
            problems.add(
                cfg,
                format!("{path}.endpoints"),
                "at least one endpoint is required",
            );
        }
        if p.endpoints.len() > MAX_ENDPOINTS {
            problems.add(
                cfg,
                format!("{path}.endpoints"),
                format!("at most {MAX_ENDPOINTS} endpoints"),
            );
        }
        let mut endpoints = Vec::new();
        for (i, e) in p.endpoints.iter().enumerate() {
            let epath = format!("{path}.endpoints[{i}]");
            if !(1..=MAX_WEIGHT).contains(&e.weight) {
                problems.add(
                    cfg,
                    format!("{epath}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT}"),
                );
            }
            let url = match env::expand(&e.url, lookup) {
                Ok(u) => u,
                Err(m) => {
                    problems.add(cfg, format!("{epath}.url"), m);
                    continue;
                }
            };
            match parse_endpoint_url(&url) {
                Ok(mut spec) => {
                    spec.weight = e.weight;
                    endpoints.push(spec);
                }
                Err(m) => problems.add(cfg, format!("{epath}.url"), m),
            }
        }
        let mut extra_ca_der = Vec::new();
        if let Some(ca) = &p.ca_file {
            match env::expand(ca, lookup) {
                Ok(ca) => match read_ca_file(&base.join(ca)) {
                    Ok(ders) => extra_ca_der = ders,
                    Err(m) => problems.add(cfg, format!("{path}.ca_file"), m),
                },
                Err(m) => problems.add(cfg, format!("{path}.ca_file"), m),
            }
        }
        let mut timeout = |value: &Option<String>, field_name: &str, default: Duration| {
            value.as_deref().map_or(Some(default), |t| {
                parse_duration(t)
                    .map_err(|m| problems.add(cfg, format!("{path}.timeouts.{field_name}"), m))
                    .ok()
            })
        };
        let connect_timeout = timeout(&p.timeouts.connect, "connect", DEFAULT_CONNECT_TIMEOUT);
        let idle_timeout = timeout(&p.timeouts.idle, "idle", DEFAULT_IDLE_TIMEOUT);
        // Unset, the wait for the first byte is the silence allowance, as before it existed.
        let first_byte_timeout = timeout(
            &p.timeouts.first_byte,
            "first_byte",
            idle_timeout.unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT),
        );
        let total_timeout = p.timeouts.total.as_deref().and_then(|t| {
            parse_duration(t)
                .map_err(|m| problems.add(cfg, format!("{path}.timeouts.total"), m))
                .ok()
        });
        if let Some(total) = total_timeout {
            // Defaults longer than `total` are fine (the total caps them); a value written
            // longer than it is a mistake.
            for (name, value) in [
                ("connect", p.timeouts.connect.as_ref().and(connect_timeout)),
                (
                    "first_byte",
                    p.timeouts.first_byte.as_ref().and(first_byte_timeout),
                ),
                ("idle", p.timeouts.idle.as_ref().and(idle_timeout)),
            ] {
                if value.is_some_and(|v| v > total) {
                    problems.add(
                        cfg,
                        format!("{path}.timeouts.{name}"),
                        format!(
                            "is longer than `timeouts.total` ({}), so it could never fire",
                            humantime::format_duration(total)
                        ),
                    );
                }
            }
        }
        let retries = match p.retries {
            None => DEFAULT_RETRIES,
            Some(n) if (0..=MAX_RETRIES).contains(&n) => n as u32,
            Some(_) => {
                problems.add(
                    cfg,
                    format!("{path}.retries"),
                    format!("must be a whole number from 0 to {MAX_RETRIES}"),
                );
                0
            }
        };
        let health_check = p
            .health_check
            .as_ref()
            .and_then(|h| compile_health_check(cfg, &path, h, problems));
        if problems.list.len() != before {
            continue;
        }
        let spec = ProviderSpec {
            name: name.clone(),
            format: p.format,
            api_key,
            anthropic_version,
            forward_headers,
            endpoints,
            extra_ca_der,
            connect_timeout: connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            first_byte_timeout: first_byte_timeout.unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT),
            idle_timeout: idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            total_timeout,
            balance: match p.balance {
                BalanceFile::RoundRobin => Balance::RoundRobin,
                BalanceFile::LeastRequests => Balance::LeastRequests,
                BalanceFile::P2cLatency => Balance::P2cLatency,
            },
            retries,
            health_check,
        };
        match Provider::new(spec) {
            Ok(provider) => {
                if options.resolve_dns {
                    for (url, e) in provider.resolve_blocking() {
                        // Not fatal: DNS may be back by the next refresh, and other endpoints serve.
                        tracing::warn!(provider = %name, endpoint = %url, error = %e, "cannot resolve endpoint host");
                    }
                }
                providers.insert(name.clone(), Arc::new(provider));
            }
            Err(e) => problems.add(cfg, path, e.to_string()),
        }
    }
    providers
}

/// The account headers a provider forwards. Only those keygate withholds can be named: any other
/// client header is forwarded anyway, and one that carries the virtual key never is.
fn compile_forward_headers(
    cfg: &Path,
    path: &str,
    names: &[String],
    problems: &mut Problems,
) -> Vec<HeaderName> {
    let mut headers = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let at = format!("{path}.forward_headers[{i}]");
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) if ACCOUNT_HEADERS.contains(&header) => headers.push(header),
            Ok(_) => problems.add(
                cfg,
                at,
                format!(
                    "`{name}` is not an account header keygate withholds; `forward_headers` \
                     lists only {} (other client headers are forwarded anyway, and those that \
                     carry a key never are)",
                    ACCOUNT_HEADERS
                        .iter()
                        .map(HeaderName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Err(_) => problems.add(cfg, at, format!("`{name}` is not a header name")),
        }
    }
    headers
}

fn compile_health_check(
    cfg: &Path,
    path: &str,
    h: &HealthCheckFile,
    problems: &mut Problems,
) -> Option<HealthCheckSpec> {
    let before = problems.list.len();
    let at = format!("{path}.health_check");
    if !h.path.starts_with('/') || h.path.bytes().any(|b| b.is_ascii_whitespace()) {
        problems.add(
            cfg,
            format!("{at}.path"),
            format!(
                "`{}` must be a path starting with `/`, without spaces",
                h.path
            ),
        );
    }
    let interval = match h.interval.as_deref().map(parse_duration) {
        None => DEFAULT_CHECK_INTERVAL,
        Some(Ok(d)) if (MIN_CHECK_INTERVAL..=MAX_CHECK_INTERVAL).contains(&d) => d,
        Some(Ok(_)) => {
            problems.add(
                cfg,
                format!("{at}.interval"),
                "must be between 100ms and 1h",
            );
            DEFAULT_CHECK_INTERVAL
        }
        Some(Err(m)) => {
            problems.add(cfg, format!("{at}.interval"), m);
            DEFAULT_CHECK_INTERVAL
        }
    };
    let mut threshold = |value: Option<i64>, name: &str, default: u32| match value {
        None => default,
        Some(n) if (1..=MAX_CHECK_THRESHOLD).contains(&n) => n as u32,
        Some(_) => {
            problems.add(
                cfg,
                format!("{at}.{name}"),
                format!("must be a whole number from 1 to {MAX_CHECK_THRESHOLD}"),
            );
            default
        }
    };
    let unhealthy_after = threshold(h.unhealthy_after, "unhealthy_after", 3);
    let healthy_after = threshold(h.healthy_after, "healthy_after", 2);
    (problems.list.len() == before).then(|| HealthCheckSpec {
        path: h.path.clone(),
        interval,
        unhealthy_after,
        healthy_after,
    })
}

fn parse_endpoint_url(text: &str) -> Result<EndpointSpec, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(format!(
                "scheme `{other}` is not supported; use http or https"
            ))
        }
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(format!("`{text}` has no host")),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}` must not have a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials belong in `api_key`, not in the URL".to_owned());
    }
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    Ok(EndpointSpec {
        url: text.to_owned(),
        tls,
        host,
        port,
        base_path: url.path().trim_end_matches('/').to_owned(),
        weight: 1,
    })
}

fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut data.as_slice())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} contains no PEM certificates", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for der in &certs {
        store
            .add(rustls::pki_types::CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("{} holds an unusable certificate: {e}", path.display()))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        let e = parse_endpoint_url("https://api.openai.com").unwrap();
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("api.openai.com", 443, "")
        );
        let e = parse_endpoint_url("http://127.0.0.1:9000/openai/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("127.0.0.1", 9000, "/openai")
        );
        let e = parse_endpoint_url("http://[::1]:9000").unwrap();
        assert_eq!(e.host, "::1");
        assert!(parse_endpoint_url("ftp://x").is_err());
        assert!(parse_endpoint_url("not a url").is_err());
        assert!(parse_endpoint_url("https://u:p@x").is_err());
    }
}
