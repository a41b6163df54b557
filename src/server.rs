//! Assembling the Pingora server: the data-plane proxy, the embedded mock provider when the policy
//! asks for it, the accounting sinks (usage database, audit log), and background upkeep (DNS
//! refresh, upstream health checks, flushing accounting on shutdown). The binary runs it until a signal; tests run
//! it in-process on a thread and stop it with [`RunningGateway::shutdown`].

use crate::accounting::audit::AuditWriter;
use crate::accounting::{self, Recorder};
use crate::admin::{AdminApi, AdminToken, AdminTokenError, AdminTokens, Sessions};
use crate::config::{self, LoadOptions, PolicyErrors};
use crate::limits::fleet::FleetLimits;
use crate::limits::{Limits, MemoryLimits};
use crate::listener::{ConnectionLimits, Connections};
use crate::metrics::Metrics;
use crate::mock_provider::{mock_provider_service, MockProviderConfig};
use crate::policy::{Policy, PolicyStore};
use crate::proxy::Gateway;
use crate::reload::{PolicyWatcher, Reloader};
use crate::shutdown::{Drain, Lifecycle};
use crate::state::sqlite::{StateError, UsageDb};
use crate::upstream::health::HealthChecks;
use crate::upstream::state::UpstreamRegistry;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often endpoint host names are re-resolved.
const DNS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the policy is invalid:\n{0}")]
    Policy(#[from] PolicyErrors),
    #[error("the gateway did not start listening on {0} within {1:?}")]
    NotListening(SocketAddr, Duration),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    #[error("cannot start the runtime of the shared limit state: {0}")]
    StateRuntime(std::io::Error),
    #[error("cannot open the audit log {target}: {source}")]
    AuditLog {
        target: String,
        source: std::io::Error,
    },
}

/// The parts of a built server that outlive the build: for triggering reloads, flushing
/// accounting and reading live counters.
#[derive(Clone)]
pub struct Handles {
    pub reloader: Arc<Reloader>,
    pub recorder: Arc<Recorder>,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
    /// Endpoint health, load and counters, kept across reloads.
    pub upstreams: Arc<UpstreamRegistry>,
}

/// How long `/readyz` reports draining on SIGTERM before the listeners close.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);

/// Loads the policy at `config_path` for serving (endpoint hosts resolved).
pub fn load_policy(config_path: &Path) -> Result<PolicyStore, PolicyErrors> {
    let policy = config::load(config_path, LoadOptions { resolve_dns: true })?;
    crate::reload::return_freed_memory();
    Ok(Arc::new(ArcSwap::from_pointee(policy)))
}

/// Builds the Pingora server for `store`'s current policy. `opt` carries Pingora's own command-line
/// options (e.g. `--upgrade` for a zero-downtime binary upgrade).
/// The process exits as soon as a graceful shutdown has drained.
pub fn build(store: &PolicyStore, opt: Option<Opt>) -> Result<(Server, Handles), ServeError> {
    build_with(store, opt, AdminTokens::from_env()?, Host::OwnProcess)
}

/// What a built server shares its process with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The process is the gateway: it exits once a graceful shutdown has drained.
    OwnProcess,
    /// Other servers start and stop in the same process (in-process tests). Each thread then
    /// steals work whatever the thread count: Pingora keeps its no-stealing runtimes' handles
    /// per thread id, and a later server's thread that reuses a stopped one's id would spawn
    /// onto the stopped runtime.
    Shared,
}

/// Opens the accounting sinks the policy names and the live limit state, whose budgets start
/// from the spend the usage database recorded (in fleet mode, the fallback's do; the fleet's
/// spend is in Redis).
fn open_accounting(
    policy: &Policy,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Limits>, Arc<Recorder>), ServeError> {
    let now_ms = crate::limits::now_ms();
    let (limits, db) = match &policy.startup.state_dir {
        Some(dir) => {
            let db = UsageDb::open(dir)?;
            let spend = accounting::persisted_spend(&db, now_ms)?;
            tracing::info!(
                database = %dir.join(crate::state::sqlite::DB_FILE).display(),
                scopes_with_spend = spend.len(),
                "usage database opened; budgets resume from its spend this month"
            );
            (MemoryLimits::with_persisted_spend(spend, now_ms), Some(db))
        }
        None => {
            tracing::warn!("no state_dir in the policy: usage and spend are not persisted");
            (MemoryLimits::new(), None)
        }
    };
    let audit = match &policy.startup.audit_log {
        Some(target) => {
            let writer = AuditWriter::open(target).map_err(|source| ServeError::AuditLog {
                target: target.to_string(),
                source,
            })?;
            Some((target.clone(), writer))
        }
        None => None,
    };
    let limits = match &policy.startup.state {
        None => {
            metrics.state_backend.with_label_values(&["memory"]).set(1);
            metrics.state_healthy.set(1);
            Limits::Memory(limits)
        }
        Some(fleet) => {
            tracing::info!(redis = ?fleet.target, on_error = ?fleet.on_error, "limit state shared in Redis");
            Limits::Fleet(
                FleetLimits::start(fleet.clone(), limits, metrics.clone())
                    .map_err(ServeError::StateRuntime)?,
            )
        }
    };
    let recorder = Recorder::start(db, audit, metrics.audit_dropped.clone());
    Ok((Arc::new(limits), Arc::new(recorder)))
}

/// [`build`] with explicit admin tokens; also returns the handles, for callers that trigger
/// reloads or read accounting themselves.
pub fn build_with(
    store: &PolicyStore,
    opt: Option<Opt>,
    admin_tokens: AdminTokens,
    host: Host,
) -> Result<(Server, Handles), ServeError> {
    let policy = store.load_full();
    if let Some(open_files) = crate::listener::raise_open_file_limit() {
        tracing::debug!(open_files, "open-file limit");
    }
    let upstreams = Arc::new(UpstreamRegistry::new());
    let metrics = Arc::new(Metrics::new());
    let drain = Arc::new(Drain::default());
    let (limits, recorder) = open_accounting(&policy, &metrics)?;
    let reloader = Arc::new(Reloader::new(
        &policy.config_path,
        store.clone(),
        metrics.clone(),
    ));
    let settings = &policy.startup;
    let grace = settings.server.grace_period.unwrap_or(DEFAULT_GRACE_PERIOD);
    let (threads, work_stealing) =
        data_plane_threads(settings.server.threads, settings.server.work_stealing);
    let work_stealing = work_stealing || host == Host::Shared;
    let connection_limits = ConnectionLimits::from_settings(&settings.server);
    match crate::listener::reserve_descriptor_table(connection_limits.max_connections) {
        Ok(highest) => tracing::debug!(highest, "descriptor table grown"),
        Err(e) => {
            tracing::warn!(error = %e, "could not grow the descriptor table ahead; it grows as connections open, pausing the data plane each time it doubles")
        }
    }
    let pool = crate::upstream::pool_capacity(
        policy.providers.values(),
        connection_limits.max_connections,
    );
    tracing::debug!(idle_connections = pool, "upstream keep-alive pool");
    let conf = ServerConf {
        threads,
        work_stealing,
        // Pingora keeps one pool for all threads and sizes it at this times the thread count.
        upstream_keepalive_pool_size: pool.div_ceil(threads.max(1)),
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let gateway = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(
            store.clone(),
            limits.clone(),
            recorder.clone(),
            metrics.clone(),
            drain.clone(),
        )
        .with_upstreams(upstreams.clone())
        .with_data_plane_threads(threads),
    );
    let mut proxy = Service::new(
        "keygate data plane".to_owned(),
        Connections::new(gateway, connection_limits),
    );
    // No read buffer under client connections: Pingora's 64 KiB default is allocated when a
    // connection is accepted and held until it closes, most of what an open stream or an idle
    // kept-alive connection costs (docs/performance.md, Concurrency), while every read above it
    // already goes into a buffer of its own (the request loop's, the session's head and body
    // buffers). The write side keeps Pingora's one-segment buffer.
    proxy.add_listener(ListenerConfig::tcp(settings.listen.to_string()).l4_buffer(
        L4BufferSettings {
            read: Some(0),
            write: None,
        },
    ));
    server.add_service(proxy);

    if let Some(mock) = &settings.mock_provider {
        let service = mock_provider_service(
            &server.configuration,
            &mock.listen.to_string(),
            MockProviderConfig {
                api_key: mock.api_key.clone(),
                stream_delay: mock.stream_delay,
            },
        );
        server.add_service(service);
    }

    if let Some(admin_listen) = settings.admin_listen {
        let app = AdminApi {
            reloader: reloader.clone(),
            metrics: metrics.clone(),
            tokens: admin_tokens,
            sessions: Sessions::default(),
            activity: recorder.activity().clone(),
            search: Default::default(),
            login_guard: crate::limits::guard::AuthGuard::new(
                settings.auth_guard.0,
                settings.auth_guard.1,
            ),
            limits: limits.clone(),
            drain: drain.clone(),
            upstreams: upstreams.clone(),
        };
        let mut admin = Service::new("keygate admin".to_owned(), HttpServer::new_app(app));
        admin.add_tcp(&admin_listen.to_string());
        server.add_service(admin);
    }

    server.add_service(background_service(
        "keygate policy watcher",
        PolicyWatcher {
            reloader: reloader.clone(),
        },
    ));
    server.add_service(background_service(
        "keygate dns refresh",
        DnsRefresh {
            store: store.clone(),
        },
    ));
    server.add_service(background_service(
        "keygate health checks",
        HealthChecks {
            store: store.clone(),
            registry: upstreams.clone(),
        },
    ));
    #[cfg(target_os = "linux")]
    server.add_service(background_service(
        "keygate retired endpoints",
        crate::upstream::retire::RetiredEndpoints {
            store: store.clone(),
            registry: upstreams.clone(),
        },
    ));
    server.add_service(background_service(
        "keygate lifecycle",
        Lifecycle {
            drain: drain.clone(),
            listen: settings.listen,
            grace_period: grace,
            recorder: recorder.clone(),
            limits: limits.clone(),
            exit_when_drained: host == Host::OwnProcess,
        },
    ));
    Ok((
        server,
        Handles {
            reloader,
            recorder,
            limits,
            metrics,
            drain,
            upstreams,
        },
    ))
}

struct DnsRefresh {
    store: PolicyStore,
}

#[async_trait]
impl BackgroundService for DnsRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(DNS_REFRESH_INTERVAL) => {
                    let policy = self.store.load_full();
                    crate::upstream::refresh_dns(policy.providers.values()).await;
                }
            }
        }
    }
}

/// The data plane's thread count, and whether its threads steal each other's tasks.
///
/// A lone thread has no one to steal from, and without stealing Pingora runs each thread on a
/// single-threaded tokio runtime, whose wakeups need no cross-thread queues, so less CPU per
/// request on one pinned core (docs/performance.md). With several threads sharing busy cores,
/// stealing keeps them evenly loaded and measured faster.
fn data_plane_threads(threads: Option<usize>, work_stealing: Option<bool>) -> (usize, bool) {
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (threads, work_stealing.unwrap_or(threads > 1))
}

/// A gateway running in this process, on its own thread.
pub struct RunningGateway {
    pub store: PolicyStore,
    pub reloader: Arc<Reloader>,
    pub handles: Handles,
    pub listen: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct OneshotSignal(Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for OneshotSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().ok().and_then(|mut r| r.take());
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

impl RunningGateway {
    /// Loads `config_path`, starts every service and waits until the data plane accepts connections.
    pub fn start(
        config_path: &Path,
        admin_token: Option<AdminToken>,
    ) -> Result<RunningGateway, ServeError> {
        Self::start_with_tokens(config_path, admin_token.into())
    }

    /// [`Self::start`] with any set of admin tokens (`KEYGATE_ADMIN_TOKENS`'s, say).
    pub fn start_with_tokens(
        config_path: &Path,
        admin_tokens: AdminTokens,
    ) -> Result<RunningGateway, ServeError> {
        let store = load_policy(config_path)?;
        let policy: Arc<Policy> = store.load_full();
        let listen = policy.startup.listen;
        let (server, handles) = build_with(&store, None, admin_tokens, Host::Shared)?;
        let reloader = handles.reloader.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let signal = OneshotSignal(Mutex::new(Some(rx)));
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            });
        });
        let mut running = RunningGateway {
            store,
            reloader,
            handles,
            listen,
            stop: Some(tx),
            thread: Some(thread),
        };
        let mut waits = vec![listen];
        waits.extend(policy.startup.mock_provider.as_ref().map(|m| m.listen));
        waits.extend(policy.startup.admin_listen);
        let limit = Duration::from_secs(10);
        for addr in waits {
            if !wait_listening(addr, limit) {
                running.stop_and_join();
                return Err(ServeError::NotListening(addr, limit));
            }
        }
        // Ready (as `/readyz` reports it) follows the listener within one probe interval.
        let deadline = Instant::now() + limit;
        while !running.handles.drain.is_ready() {
            if Instant::now() > deadline {
                running.stop_and_join();
                return Err(ServeError::NotListening(listen, limit));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(running)
    }

    /// Stops every service and waits for the server thread to end.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.handles.limits.flush();
        self.handles.recorder.flush();
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn wait_listening(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_steal_work_only_when_there_are_several_unless_configured() {
        assert_eq!(data_plane_threads(Some(1), None), (1, false));
        assert_eq!(data_plane_threads(Some(4), None), (4, true));
        assert_eq!(data_plane_threads(Some(4), Some(false)), (4, false));
        assert_eq!(data_plane_threads(Some(1), Some(true)), (1, true));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(data_plane_threads(None, None), (cpus, cpus > 1));
    }
}
