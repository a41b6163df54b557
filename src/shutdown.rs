//! Readiness and graceful shutdown.
//!
//! On SIGTERM keygate first reports not-ready on `/readyz` while still serving for
//! `server.drain_delay`, so load balancers stop sending new requests before anything is refused;
//! then Pingora stops accepting and in-flight requests and streams get up to
//! `server.grace_period` to finish. The moment the last one ends (or the grace period runs out)
//! the fleet's settlements and the accounting are flushed and the process exits, rather than
//! sleeping out the whole grace period. SIGQUIT is Pingora's zero-downtime binary upgrade
//! (listening sockets handed to a new process started with `--upgrade`); SIGINT shuts down at
//! once.

use crate::accounting::Recorder;
use crate::limits::Limits;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Whether the instance should receive traffic, and how much it is still serving.
#[derive(Debug, Default)]
pub struct Drain {
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Drain {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard drops (on every path, with the request context).
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One request being served; see [`Drain::track`].
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The binary's signal handling: SIGTERM drains first, then terminates gracefully.
pub struct DrainingSignals {
    pub drain: Arc<Drain>,
    pub drain_delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; only SIGKILL stops this process");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                self.drain.draining.store(true, Ordering::Relaxed);
                tracing::info!(
                    drain_delay = ?self.drain_delay,
                    in_flight = self.drain.in_flight(),
                    "SIGTERM: /readyz now answers 503; still serving until load balancers notice"
                );
                tokio::select! {
                    _ = tokio::time::sleep(self.drain_delay) => {}
                    _ = int.recv() => return ShutdownSignal::FastShutdown,
                }
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Marks the instance ready once the data plane accepts connections; at shutdown, waits for
/// in-flight requests (up to the grace period), flushes accounting and, in the binary, exits.
pub struct Lifecycle {
    pub drain: Arc<Drain>,
    pub listen: SocketAddr,
    pub grace_period: Duration,
    pub recorder: Arc<Recorder>,
    pub limits: Arc<Limits>,
    /// Exit the process once drained (the binary); in-process servers (tests) just return.
    pub exit_when_drained: bool,
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let target = if self.listen.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.listen.port())
        } else {
            self.listen
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                connected = tokio::net::TcpStream::connect(target) => {
                    if let Ok(probe) = connected {
                        // Held, it would take one of `server.max_connections` until its
                        // header timeout.
                        drop(probe);
                        self.drain.ready.store(true, Ordering::Relaxed);
                        tracing::info!(listen = %self.listen, "ready");
                        let _ = shutdown.changed().await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.drain.draining.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + self.grace_period;
        while self.drain.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.drain.in_flight();
        let (recorder, limits) = (self.recorder.clone(), self.limits.clone());
        let _ = tokio::task::spawn_blocking(move || {
            limits.flush();
            recorder.flush();
        })
        .await;
        if self.exit_when_drained {
            tracing::info!(
                unfinished = left,
                "shutdown: requests drained and accounting flushed"
            );
            std::process::exit(0);
        }
    }
}
