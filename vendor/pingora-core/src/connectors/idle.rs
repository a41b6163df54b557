// keygate patch: this module is new.

//! The idle connections of a [`TransportConnector`](super::TransportConnector)'s pool, watched by
//! one task per connector instead of one task per connection.
//!
//! 0.9.1 spawns a task for every connection it puts back in the pool. The task holds the
//! connection locked while it waits for the peer to close it or for its idle timeout, so the next
//! request that takes the connection has to wait for that task to notice and let go: a task spawn
//! when a request ends, and for the next request on the connection a yield, a run of the watcher
//! and a second poll of the request's whole future. Here a connection put back is only filed; one
//! sweeper per connector closes the connections whose idle timeout has passed (on time: it wakes
//! for the earliest) and, at least once a second, those the peer has closed or sent unexpected
//! data on. A connection taken for reuse is checked the same way then, as in 0.9.1.

use super::test_reusable_stream;
use crate::protocols::{Stream, UniqueIDType};
use parking_lot::Mutex;
use pingora_pool::{ConnectionMeta, ConnectionPool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a connection the peer closed may stay open in the pool at most.
pub(crate) const CLOSED_CHECK_INTERVAL: Duration = Duration::from_secs(1);

type Pool = ConnectionPool<Arc<tokio::sync::Mutex<Stream>>>;

/// A connection in the pool as the sweeper knows it.
struct Idle {
    meta: ConnectionMeta,
    deadline: Option<Instant>,
    /// Gone once the connection is taken from the pool (or dropped by it).
    stream: Weak<tokio::sync::Mutex<Stream>>,
}

/// The connections of one pool that the sweeper watches.
pub(crate) struct IdleConnections {
    connections: Mutex<HashMap<(u64, UniqueIDType), Idle>>,
    /// Wakes the sweeper for a deadline earlier than its next pass.
    wake: Arc<Notify>,
    /// When the sweeper's next pass is due, in milliseconds since `epoch`.
    next_pass_ms: AtomicU64,
    sweeping: AtomicBool,
    epoch: Instant,
}

impl IdleConnections {
    pub(crate) fn new() -> Self {
        IdleConnections {
            connections: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            next_pass_ms: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    /// Files `stream`, just put in `pool` under `meta`, for the sweeper; starts the sweeper on the
    /// current runtime the first time.
    pub(crate) fn watch(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        unexpected_data_conn_count: &Arc<AtomicU64>,
        meta: ConnectionMeta,
        stream: &Arc<tokio::sync::Mutex<Stream>>,
        idle_timeout: Option<Duration>,
    ) {
        let deadline = idle_timeout.map(|t| Instant::now() + t);
        let key = (meta.key, meta.id);
        let idle = Idle {
            meta,
            deadline,
            stream: Arc::downgrade(stream),
        };
        // A descriptor number reused by a new connection replaces the old entry, whose
        // connection has left the pool.
        self.connections.lock().insert(key, idle);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            let rt = pingora_runtime::current_handle();
            rt.spawn(sweep_until_gone(
                Arc::downgrade(self),
                self.wake.clone(),
                Arc::downgrade(pool),
                unexpected_data_conn_count.clone(),
            ));
        } else if let Some(deadline) = deadline {
            if self.millis(deadline) < self.next_pass_ms.load(Ordering::Acquire) {
                self.wake.notify_one();
            }
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Closes (takes out of `pool`) the connections past their deadline and those the peer
    /// closed; returns when the next pass is due.
    fn sweep(&self, pool: &Pool, unexpected_data_conn_count: &AtomicU64, now: Instant) -> Instant {
        let mut next = now + CLOSED_CHECK_INTERVAL;
        // Checked outside the lock, which connections released meanwhile (on other threads)
        // take to be filed: one pass may check thousands.
        let mut watched = {
            let mut connections = self.connections.lock();
            // Sized as before, so that the releases meanwhile do not grow it from nothing.
            let room = HashMap::with_capacity(connections.capacity());
            std::mem::replace(&mut *connections, room)
        };
        let mut closing = Vec::new();
        watched.retain(|_, idle| {
            // Held for this pass only. A request on another thread that takes this connection
            // from the pool meanwhile cannot have it to itself and connects anew (as 0.9.1 does
            // when it cannot unwrap a pooled connection); on one thread the two never overlap.
            let Some(stream) = idle.stream.upgrade() else {
                return false;
            };
            let expired = idle.deadline.is_some_and(|d| d <= now);
            // A connection being taken for reuse is locked by its taker, who checks it.
            let broken = !expired
                && stream
                    .try_lock()
                    .is_ok_and(|mut s| !test_reusable_stream(&mut s, unexpected_data_conn_count));
            if expired || broken {
                closing.push(idle.meta.clone());
                return false;
            }
            if let Some(deadline) = idle.deadline {
                next = next.min(deadline);
            }
            true
        });
        {
            let mut connections = self.connections.lock();
            for (key, idle) in watched {
                // One filed during the pass is the newer release of that descriptor.
                connections.entry(key).or_insert(idle);
            }
        }
        // Outside the lock: dropping a connection closes it.
        for meta in &closing {
            pool.pop_closed(meta);
        }
        self.next_pass_ms
            .store(self.millis(next), Ordering::Release);
        next
    }
}

/// The sweeper: passes over the pool's idle connections until the connector is dropped.
async fn sweep_until_gone(
    idle: Weak<IdleConnections>,
    wake: Arc<Notify>,
    pool: Weak<Pool>,
    unexpected_data_conn_count: Arc<AtomicU64>,
) {
    loop {
        let (Some(idle), Some(pool)) = (idle.upgrade(), pool.upgrade()) else {
            return;
        };
        let now = Instant::now();
        let next = idle.sweep(&pool, &unexpected_data_conn_count, now);
        // Not held while waiting: the sweeper must not keep the pool alive.
        drop((idle, pool));
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::TransportConnector;
    use crate::protocols::Stream;
    use crate::upstreams::peer::{BasicPeer, Peer};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A listener, a peer for it and a connector whose pool its connections go to.
    struct Pooled {
        listener: TcpListener,
        peer: BasicPeer,
        connector: TransportConnector,
    }

    impl Pooled {
        async fn new() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let peer = BasicPeer::new(&listener.local_addr().unwrap().to_string());
            let connector = TransportConnector::new(None);
            Pooled {
                listener,
                peer,
                connector,
            }
        }

        /// A new connection: the connector's end, and the listener's end to hold or close.
        async fn connect(&self) -> (Stream, TcpStream) {
            let stream = self.connector.new_stream(&self.peer).await.unwrap();
            (stream, self.listener.accept().await.unwrap().0)
        }

        fn release(&self, stream: Stream, idle_timeout: Option<Duration>) {
            let key = self.peer.reuse_hash();
            self.connector.release_stream(stream, key, idle_timeout);
        }
    }

    /// Reads until the connector's side of `server` closes it; `None` if it stays open `within`.
    async fn closed_within(server: &mut TcpStream, within: Duration) -> Option<()> {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(within, server.read(&mut buf)).await {
            Ok(Ok(0)) => Some(()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_at_its_idle_timeout() {
        let pooled = Pooled::new().await;
        let (stream, mut server) = pooled.connect().await;
        pooled.release(stream, Some(Duration::from_millis(300)));
        // still open before its timeout
        assert!(closed_within(&mut server, Duration::from_millis(150))
            .await
            .is_none());
        assert!(closed_within(&mut server, Duration::from_millis(600))
            .await
            .is_some());
        let (_, reused) = pooled.connector.get_stream(&pooled.peer).await.unwrap();
        assert!(!reused);
    }

    #[tokio::test]
    async fn a_shorter_timeout_than_the_next_pass_is_kept() {
        let pooled = Pooled::new().await;
        let (long, _long_server) = pooled.connect().await;
        pooled.release(long, Some(Duration::from_secs(60)));
        // the sweeper now sleeps for a second; this one must go before that
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (short, mut short_server) = pooled.connect().await;
        pooled.release(short, Some(Duration::from_millis(100)));
        assert!(closed_within(&mut short_server, Duration::from_millis(500))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_leaves_the_pool() {
        let pooled = Pooled::new().await;
        let (stream, server) = pooled.connect().await;
        pooled.release(stream, None);
        drop(server);
        // the sweeper's next pass finds it closed and drops it: the client side's socket goes
        tokio::time::sleep(super::CLOSED_CHECK_INTERVAL + Duration::from_millis(300)).await;
        let key = pooled.peer.reuse_hash();
        assert!(pooled.connector.connection_pool.get(&key).is_none());
    }

    #[tokio::test]
    async fn a_pooled_connection_is_taken_without_waiting_for_a_watcher() {
        use futures::FutureExt;
        let pooled = Pooled::new().await;
        let (stream, _server) = pooled.connect().await;
        pooled.release(stream, Some(Duration::from_secs(60)));
        // let the sweeper run once
        tokio::time::sleep(Duration::from_millis(10)).await;
        // no other task has to run first: the first poll finds it
        let reused = pooled.connector.reused_stream(&pooled.peer).now_or_never();
        assert!(matches!(reused, Some(Some(_))));
    }
}
