//! The main file's own settings, as opposed to its providers, models and workloads: the
//! listeners, the `server` section, the mock provider, the brute-force guard and the accounting
//! sinks, which the server is built from once ([`StartupSettings`]); and those that requests
//! read from the live policy, `max_body_bytes`, `server.body_timeout`, `trusted_proxies` and
//! `admin.session_ttl`.

use super::{parse_cidr, parse_duration, Problems};
use crate::accounting::audit::AuditTarget;
use crate::config::schema::{ConfigFile, OnErrorFile, StateBackendFile};
use crate::limits::fleet::{FleetSettings, OnError, RedisTarget};
use crate::policy::startup::{MockProviderSettings, ServerSettings, StartupSettings};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The main file's own settings, compiled.
pub(super) struct Settings {
    /// `None` when one of them has a problem.
    pub startup: Option<StartupSettings>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub session_ttl: Duration,
}

/// `server.body_timeout` when the policy does not set it.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// `admin.session_ttl` when the policy does not set it: a working day.
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);

/// The longest console session: past it a lost laptop's cookie would stay good for too long.
const MAX_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

pub(super) fn compile_settings(
    cfg: &Path,
    base: &Path,
    config: &ConfigFile,
    problems: &mut Problems,
) -> Settings {
    let listen = parse_addr(&config.listen)
        .map_err(|m| problems.add(cfg, "listen", m))
        .ok();
    let admin_listen = config.admin_listen.as_deref().and_then(|a| {
        parse_addr(a)
            .map_err(|m| problems.add(cfg, "admin_listen", m))
            .ok()
    });
    if config.max_body_bytes == 0 {
        problems.add(cfg, "max_body_bytes", "must be greater than zero");
    }
    let trusted_proxies: Vec<IpNet> = config
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            parse_cidr(c)
                .map_err(|m| problems.add(cfg, format!("trusted_proxies[{i}]"), m))
                .ok()
        })
        .collect();
    if config.server.threads == Some(0) {
        problems.add(cfg, "server.threads", "must be at least 1");
    }
    let grace_period = config.server.grace_period.as_deref().and_then(|g| {
        parse_duration(g)
            .map_err(|m| problems.add(cfg, "server.grace_period", m))
            .ok()
    });
    let drain_delay = config.server.drain_delay.as_deref().and_then(|g| {
        parse_duration(g)
            .map_err(|m| problems.add(cfg, "server.drain_delay", m))
            .ok()
    });
    let body_timeout = match config.server.body_timeout.as_deref() {
        None => DEFAULT_BODY_TIMEOUT,
        Some(t) => parse_duration(t)
            .map_err(|m| problems.add(cfg, "server.body_timeout", m))
            .unwrap_or(DEFAULT_BODY_TIMEOUT),
    };
    let session_ttl = match config.admin.session_ttl.as_deref() {
        None => DEFAULT_SESSION_TTL,
        Some(t) => parse_duration(t)
            .and_then(|d| {
                if d > MAX_SESSION_TTL {
                    Err("must be at most 7d".to_owned())
                } else {
                    Ok(d)
                }
            })
            .map_err(|m| problems.add(cfg, "admin.session_ttl", m))
            .unwrap_or(DEFAULT_SESSION_TTL),
    };
    let keepalive_timeout = config.server.keepalive_timeout.as_deref().and_then(|t| {
        parse_duration(t)
            .map_err(|m| problems.add(cfg, "server.keepalive_timeout", m))
            .ok()
    });
    let header_timeout = config.server.header_timeout.as_deref().and_then(|t| {
        parse_duration(t)
            .map_err(|m| problems.add(cfg, "server.header_timeout", m))
            .ok()
    });
    if config.server.max_connections == Some(0) {
        problems.add(cfg, "server.max_connections", "must be at least 1");
    }
    let mock_provider = config.mock_provider.as_ref().and_then(|m| {
        let listen =
            parse_addr(&m.listen).map_err(|e| problems.add(cfg, "mock_provider.listen", e));
        let delay = match m.stream_delay.as_deref() {
            None => Ok(Duration::from_millis(20)),
            Some(d) => humantime::parse_duration(d)
                .map_err(|e| problems.add(cfg, "mock_provider.stream_delay", e.to_string())),
        };
        Some(MockProviderSettings {
            listen: listen.ok()?,
            api_key: m.api_key.clone(),
            stream_delay: delay.ok()?,
        })
    });

    let auth_guard = {
        let g = &config.auth_guard;
        let max = u32::try_from(g.max_failures)
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| {
                problems.add(
                    cfg,
                    "auth_guard.max_failures",
                    "must be a whole number above zero",
                )
            })
            .ok();
        let per = parse_duration(&g.per)
            .map_err(|m| problems.add(cfg, "auth_guard.per", m))
            .ok();
        max.zip(per)
    };

    let state = compile_state(cfg, config, problems);

    let startup = listen
        .zip(auth_guard)
        .zip(state)
        .map(|((listen, auth_guard), state)| StartupSettings {
            listen,
            admin_listen,
            mock_provider,
            server: ServerSettings {
                threads: config.server.threads,
                work_stealing: config.server.work_stealing,
                grace_period,
                drain_delay,
                keepalive_timeout,
                header_timeout,
                max_connections: config.server.max_connections,
            },
            auth_guard,
            state_dir: config.state_dir.as_ref().map(|d| base.join(d)),
            audit_log: config.audit_log.as_deref().map(|target| match target {
                "-" => AuditTarget::Stdout,
                path => AuditTarget::File(base.join(path)),
            }),
            state,
        });
    Settings {
        startup,
        max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
        body_timeout,
        trusted_proxies,
        session_ttl,
    }
}

/// The `state` section: `Some(None)` for the memory backend, `None` when it has a problem.
fn compile_state(
    cfg: &Path,
    config: &ConfigFile,
    problems: &mut Problems,
) -> Option<Option<FleetSettings>> {
    let Some(state) = &config.state else {
        return Some(None);
    };
    let redis = match (state.backend, &state.redis) {
        (StateBackendFile::Memory, None) => return Some(None),
        (StateBackendFile::Memory, Some(_)) => {
            problems.add(cfg, "state.redis", "is only read with `backend: redis`");
            return None;
        }
        (StateBackendFile::Redis, None) => {
            problems.add(cfg, "state.redis", "is required with `backend: redis`");
            return None;
        }
        (StateBackendFile::Redis, Some(redis)) => redis,
    };
    let target = match (&redis.url, &redis.cluster, &redis.sentinel) {
        (Some(url), None, None) => check_redis_url(url)
            .map_err(|m| problems.add(cfg, "state.redis.url", m))
            .ok()
            .map(|()| RedisTarget::Url(url.clone())),
        (None, Some(nodes), None) if !nodes.is_empty() => {
            let mut ok = true;
            for (i, node) in nodes.iter().enumerate() {
                if let Err(m) = check_redis_url(node) {
                    problems.add(cfg, format!("state.redis.cluster[{i}]"), m);
                    ok = false;
                }
            }
            ok.then(|| RedisTarget::Cluster(nodes.clone()))
        }
        (None, None, Some(s)) if !s.nodes.is_empty() && !s.master.is_empty() => {
            let mut ok = true;
            for (i, node) in s.nodes.iter().enumerate() {
                if let Err(m) = check_redis_url(node) {
                    problems.add(cfg, format!("state.redis.sentinel.nodes[{i}]"), m);
                    ok = false;
                }
            }
            ok.then(|| RedisTarget::Sentinel {
                master: s.master.clone(),
                nodes: s.nodes.clone(),
            })
        }
        _ => {
            problems.add(
                cfg,
                "state.redis",
                "needs exactly one of `url`, a non-empty `cluster` list, or `sentinel` with a `master` and `nodes`",
            );
            None
        }
    };
    let duration =
        |field: &str, text: Option<&str>, default: Duration, problems: &mut Problems| match text {
            None => Some(default),
            Some(t) => parse_duration(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    problems.add(
                        cfg,
                        format!("state.redis.{field}"),
                        format!("`{t}` is not a duration above zero like 50ms"),
                    )
                })
                .ok(),
        };
    let timeout = duration(
        "timeout",
        redis.timeout.as_deref(),
        Duration::from_millis(50),
        problems,
    );
    let lease_ttl = duration(
        "lease_ttl",
        redis.lease_ttl.as_deref(),
        Duration::from_secs(30),
        problems,
    );
    let prefix = redis.prefix.clone().unwrap_or_else(|| "kg".to_owned());
    if prefix.contains(['{', '}']) {
        problems.add(cfg, "state.redis.prefix", "must not contain `{` or `}`");
        return None;
    }
    Some(Some(FleetSettings {
        target: target?,
        prefix,
        timeout: timeout?,
        lease_ttl: lease_ttl?,
        on_error: match state.on_error {
            OnErrorFile::FailOpen => OnError::FailOpen,
            OnErrorFile::FailClosed => OnError::FailClosed,
            OnErrorFile::Local => OnError::Local,
        },
    }))
}

fn check_redis_url(text: &str) -> Result<(), String> {
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => Ok(()),
        _ => Err("must be a URL like redis://127.0.0.1:6379/0 (rediss:// for TLS)".to_owned()),
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:8080 or [::]:8080"))
}
