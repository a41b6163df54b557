//! Assembling the Pingora server: the data-plane proxy, the embedded mock provider when the policy
//! asks for it, and background upkeep (DNS refresh, upstream health checks). The binary runs it until a signal; tests run
//! it in-process on a thread and stop it with [`RunningGateway::shutdown`].

use crate::admin::{AdminApi, AdminToken};
use crate::config::{self, LoadOptions, PolicyErrors};
use crate::limits::MemoryLimits;
use crate::metrics::Metrics;
use crate::mock_provider::{mock_provider_service, MockProviderConfig};
use crate::policy::{Policy, PolicyStore};
use crate::proxy::Gateway;
use crate::reload::{PolicyWatcher, Reloader};
use crate::upstream::health::HealthChecks;
use crate::upstream::state::UpstreamRegistry;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
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
}

/// Loads the policy at `config_path` for serving (endpoint hosts resolved).
pub fn load_policy(config_path: &Path) -> Result<PolicyStore, PolicyErrors> {
    let policy = config::load(config_path, LoadOptions { resolve_dns: true })?;
    Ok(Arc::new(ArcSwap::from_pointee(policy)))
}

/// Builds the Pingora server for `store`'s current policy. `opt` carries Pingora's own command-line
/// options (e.g. `--upgrade` for a zero-downtime binary upgrade).
pub fn build(store: &PolicyStore, opt: Option<Opt>) -> Server {
    build_with(store, opt, AdminToken::from_env()).0
}

/// [`build`] with an explicit admin token; also returns the reloader, for callers that trigger
/// reloads themselves.
pub fn build_with(
    store: &PolicyStore,
    opt: Option<Opt>,
    admin_token: Option<AdminToken>,
) -> (Server, Arc<Reloader>) {
    let (server, reloader, _) = build_all(store, opt, admin_token);
    (server, reloader)
}

/// [`build_with`], also returning the upstream registry (endpoint health, load and counters).
pub fn build_all(
    store: &PolicyStore,
    opt: Option<Opt>,
    admin_token: Option<AdminToken>,
) -> (Server, Arc<Reloader>, Arc<UpstreamRegistry>) {
    let policy = store.load_full();
    let upstreams = Arc::new(UpstreamRegistry::new());
    let metrics = Arc::new(Metrics::new());
    let limits = Arc::new(MemoryLimits::new());
    let reloader = Arc::new(Reloader::new(
        &policy.config_path,
        store.clone(),
        metrics.clone(),
    ));
    let grace = policy.grace_period.unwrap_or(DEFAULT_GRACE_PERIOD);
    let conf = ServerConf {
        threads: policy
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(store.clone(), limits.clone()).with_upstreams(upstreams.clone()),
        "keygate data plane",
    );
    proxy.add_tcp(&policy.listen.to_string());
    server.add_service(proxy);

    if let Some(mock) = &policy.mock_provider {
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

    if let Some(admin_listen) = policy.admin_listen {
        let app = AdminApi {
            reloader: reloader.clone(),
            metrics,
            token: admin_token,
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
    (server, reloader, upstreams)
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

/// A gateway running in this process, on its own thread.
pub struct RunningGateway {
    pub store: PolicyStore,
    pub reloader: Arc<Reloader>,
    pub upstreams: Arc<UpstreamRegistry>,
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
        let store = load_policy(config_path)?;
        let policy: Arc<Policy> = store.load_full();
        let listen = policy.listen;
        let (server, reloader, upstreams) = build_all(&store, None, admin_token);
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
            upstreams,
            listen,
            stop: Some(tx),
            thread: Some(thread),
        };
        let mut waits = vec![listen];
        waits.extend(policy.mock_provider.as_ref().map(|m| m.listen));
        waits.extend(policy.admin_listen);
        let limit = Duration::from_secs(10);
        for addr in waits {
            if !wait_listening(addr, limit) {
                running.stop_and_join();
                return Err(ServeError::NotListening(addr, limit));
            }
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
