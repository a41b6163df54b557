//! [`FleetLimits`]: limit state shared by every instance of a fleet through Redis.
//!
//! Admission of a request is one Lua script ([`admit.lua`](admit.lua)), called by its SHA (and
//! loaded again if Redis lost it): it checks every window, concurrency cap and budget of the
//! key and its workload against Redis's own clock and counts all of them, or none. The windows
//! are the two epoch-aligned counters of [`super::window`] with the same estimate and bound.
//! Concurrency slots and budget reservations are leases: members of a sorted set scored by their
//! expiry, renewed by the instance holding them while the request runs, so a crashed instance's
//! slots and reservations come back after one lease TTL and a reservation never leaks. The
//! request's end (real tokens, real cost, slots given back) is settled from a background task,
//! never on the request path, by one script ([`settle.lua`](settle.lua)) per batch of requests
//! that ended together, summed per key.
//!
//! Concurrency is also held locally before the body is read (slow uploads count against this
//! instance's share at once); the fleet-wide lease is taken by the admission script. A window
//! found over its limit is refused locally until the time the script said it frees, without a
//! round trip.
//!
//! Every Redis key of a request carries its workload in a `{hash tag}`, so that a key's and its
//! workload's counters sit in one Cluster slot and one script can count both.
//!
//! When Redis cannot be reached within `timeout`, `on_error` decides: admit on this instance's
//! own counters without refusing (`fail_open`), refuse with `state_unavailable`
//! (`fail_closed`), or enforce every limit per instance (`local`), until Redis answers again.

mod conn;
pub mod revocation;
pub mod usage;

use super::budget::{BudgetMode, BudgetSpec, Calendar, Period};
use super::memory::{self, MemoryLimits};
use super::*;
use crate::metrics::Metrics;
use arc_swap::{ArcSwap, ArcSwapOption};
use conn::Conn;
use redis::Script;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// The `state` section for `backend: redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    pub target: RedisTarget,
    pub prefix: String,
    /// The longest a request waits for Redis.
    pub timeout: Duration,
    /// How long a slot or reservation outlives an instance that stopped renewing it.
    pub lease_ttl: Duration,
    pub on_error: OnError,
}

/// Which Redis deployment holds the state.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Url(String),
    Cluster(Vec<String>),
    Sentinel { master: String, nodes: Vec<String> },
}

/// URLs may carry a password; what is printed never does.
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn redacted(text: &str) -> String {
            match url::Url::parse(text) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("redacted"));
                    }
                    u.to_string()
                }
                Err(_) => "<invalid url>".to_owned(),
            }
        }
        match self {
            RedisTarget::Url(u) => write!(f, "Url({})", redacted(u)),
            RedisTarget::Cluster(nodes) => f
                .debug_list()
                .entries(nodes.iter().map(|n| redacted(n)))
                .finish(),
            RedisTarget::Sentinel { master, nodes } => write!(
                f,
                "Sentinel({master}, {:?})",
                nodes.iter().map(|n| redacted(n)).collect::<Vec<_>>()
            ),
        }
    }
}

/// What admission does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Admit; count on this instance only, refusing nothing.
    FailOpen,
    /// Refuse with `state_unavailable`.
    FailClosed,
    /// Enforce every limit on this instance alone.
    Local,
}

impl OnError {
    fn as_str(self) -> &'static str {
        match self {
            OnError::FailOpen => "fail_open",
            OnError::FailClosed => "fail_closed",
            OnError::Local => "local",
        }
    }
}

/// A failed Redis call.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("not connected to Redis yet")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the admission script")]
    Reply,
}

impl StateError {
    fn result(&self) -> &'static str {
        match self {
            StateError::Timeout(_) => "timeout",
            _ => "error",
        }
    }
}

/// How long admission skips Redis after a failed call, before trying it again.
const RETRY_AFTER_FAILURE_MS: u64 = 500;
/// How long a background call (settlement, renewal, probe) may take.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// What the request path and the background tasks share.
struct Shared {
    settings: FleetSettings,
    /// The background tasks' connection, driven by the state runtime.
    conn: ArcSwapOption<Conn>,
    /// The request path's connections, one per data-plane thread, each driven by that thread's
    /// runtime: an admission's round trip then stays on the thread that waits for it, instead
    /// of being handed to the state runtime's thread and back (two wakeups of another thread per
    /// request, which cost more than the round trip on a busy core).
    request_conns: ArcSwap<HashMap<std::thread::ThreadId, RequestConn>>,
    /// Bumped when the background connection is replaced (a sentinel's master moved), so that
    /// the request path's connections are opened again too.
    generation: AtomicU64,
    admit: Script,
    settle: Script,
    renew: Script,
    guard: Script,
    /// Leases of requests in flight, renewed until they end.
    live: Mutex<HashMap<u64, Arc<LeaseKeys>>>,
    next_lease: AtomicU64,
    /// This process's part of every lease name, so that instances never collide.
    instance: String,
    /// Until when (local ms) admission does not try Redis, after a failure.
    down_until_ms: AtomicU64,
    finished: mpsc::UnboundedSender<Finished>,
    /// Ends a batch's wait for more finished requests: an urgent one is queued, or a flush.
    finish_now: tokio::sync::Notify,
    /// Finished requests queued or being settled, for [`FleetLimits::flush`].
    unsettled: AtomicU64,
    metrics: Arc<Metrics>,
    /// The fleet's spend per budgeted scope as Redis last reported it.
    spend: Mutex<HashMap<ScopeId, SeenSpend>>,
}

/// A data-plane thread's connection: ready, or being opened by a task on that thread's runtime.
#[derive(Clone)]
enum RequestConn {
    Opening { generation: u64 },
    Ready { generation: u64, conn: Conn },
}

#[derive(Debug, Clone, Copy)]
struct SeenSpend {
    at: Calendar,
    today: u64,
    month: u64,
    reserved: u64,
}

impl Shared {
    fn record(&self, op: &str, result: &str) {
        self.record_n(op, result, 1);
    }

    fn record_n(&self, op: &str, result: &str, n: u64) {
        self.metrics
            .state_operations
            .with_label_values(&[op, result])
            .inc_by(n);
    }

    fn healthy(&self, yes: bool) {
        self.metrics.state_healthy.set(i64::from(yes));
    }

    fn failed(&self, op: &str, e: &StateError) {
        self.record(op, e.result());
        self.healthy(false);
        self.down_until_ms
            .store(now_ms() + RETRY_AFTER_FAILURE_MS, Ordering::Relaxed);
    }

    fn conn(&self) -> Result<Conn, StateError> {
        self.conn
            .load()
            .as_deref()
            .cloned()
            .ok_or(StateError::NotConnected)
    }

    /// This thread's own connection if it has one, else the background connection (while this
    /// thread's is opened, on this thread's runtime).
    fn request_conn(self: &Arc<Self>) -> Result<Conn, StateError> {
        let generation = self.generation.load(Ordering::Acquire);
        let thread = std::thread::current().id();
        match self.request_conns.load().get(&thread) {
            Some(RequestConn::Ready {
                generation: g,
                conn,
            }) if *g == generation => return Ok(conn.clone()),
            Some(RequestConn::Opening { generation: g }) if *g == generation => return self.conn(),
            _ => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.conn();
        };
        self.set_request_conn(thread, RequestConn::Opening { generation });
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            match conn::connect(&shared.settings.target).await {
                Ok(conn) => {
                    shared.set_request_conn(thread, RequestConn::Ready { generation, conn })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a request-path connection to Redis");
                    shared.record("connect", "error");
                    // The next admission on this thread tries again.
                    shared.request_conns.rcu(|conns| {
                        let mut conns = HashMap::clone(conns);
                        conns.remove(&thread);
                        conns
                    });
                }
            }
        });
        self.conn()
    }

    fn set_request_conn(&self, thread: std::thread::ThreadId, conn: RequestConn) {
        self.request_conns.rcu(|conns| {
            let mut conns = HashMap::clone(conns);
            conns.insert(thread, conn.clone());
            conns
        });
    }

    /// Runs `script` within `limit` on `conn`, timing it.
    async fn invoke_on<T: redis::FromRedisValue>(
        &self,
        mut conn: Conn,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
        limit: Duration,
    ) -> Result<T, StateError> {
        let started = std::time::Instant::now();
        let reply = tokio::time::timeout(limit, invocation.invoke_async(&mut conn)).await;
        self.metrics
            .state_latency
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match reply {
            Err(_) => Err(StateError::Timeout(limit)),
            Ok(r) => Ok(r?),
        }
    }

    /// Runs `script` within `limit` on the request path: on this thread's connection.
    async fn invoke_here<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
        limit: Duration,
    ) -> Result<T, StateError> {
        let conn = self.request_conn()?;
        self.invoke_on(conn, op, invocation, limit).await
    }

    /// Runs `script` within `limit` on the background connection.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
        limit: Duration,
    ) -> Result<T, StateError> {
        let conn = self.conn()?;
        self.invoke_on(conn, op, invocation, limit).await
    }

    fn remember_spend(&self, id: &ScopeId, at: Calendar, today: u64, month: u64, reserved: u64) {
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let seen = SeenSpend {
            at,
            today,
            month,
            reserved,
        };
        match spend.get_mut(id) {
            Some(s) => *s = seen,
            None => {
                spend.insert(id.clone(), seen);
            }
        }
    }
}

/// The Redis keys of one admitted request, for renewing and finishing it.
#[derive(Debug)]
struct LeaseKeys {
    /// The member naming this request in lease and reservation sets.
    member: String,
    /// The workload, whose hash tag every key of the request carries.
    tag: Box<str>,
    key_id: Box<str>,
    /// Token windows with their length in ms.
    token_windows: Vec<(String, u64)>,
    lease_sets: Vec<String>,
    budgets: Vec<BudgetKeys>,
    /// The cost reserved in each budget at admission (nano-dollars), which names the request's
    /// member in reservation sets.
    reserved: u64,
}

#[derive(Debug)]
struct BudgetKeys {
    hash: String,
    reservations: String,
    scope: ScopeId,
    spec: Arc<BudgetSpec>,
}

impl LeaseKeys {
    fn renewable(&self, reserved: bool) -> bool {
        !self.lease_sets.is_empty() || (reserved && !self.budgets.is_empty())
    }
}

/// A request's hold on the fleet's state: dropping it sends the request's end (tokens, cost,
/// slots and reservation given back) to the background task.
pub struct Lease {
    id: u64,
    keys: Arc<LeaseKeys>,
    /// Whether Redis may have counted this request: set before the admission call, so that a
    /// request cancelled while waiting for Redis still gives back what the script took.
    armed: bool,
    renewed: bool,
    /// Whether a scope of the request was more than half used at admission: then its end is
    /// sent at once, since holding its slot, reservation or estimate a little longer could
    /// refuse another request.
    urgent: bool,
    token_delta: i64,
    cost: UsdNanos,
    /// The model and its usage (prompt, completion, cached, cache-write tokens), for the fleet's
    /// usage view.
    usage: Option<(Box<str>, [u64; 4])>,
    admitted_at_ms: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("member", &self.keys.member)
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub(super) fn charge_tokens(&mut self, delta: i64) {
        self.token_delta = self.token_delta.saturating_add(delta);
    }

    pub(super) fn settle(&mut self, actual: UsdNanos) {
        self.cost = actual;
    }

    pub(super) fn record_usage(&mut self, model: &str, usage: &crate::usage::Usage) {
        self.usage = Some((
            model.into(),
            [
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
                usage.cache_write_tokens,
            ],
        ));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.renewed {
            self.shared
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.id);
        }
        if !self.armed {
            return;
        }
        // The receiver lives as long as the state runtime; after shutdown the leases expire.
        self.shared.unsettled.fetch_add(1, Ordering::AcqRel);
        let sent = self.shared.finished.send(Finished {
            keys: Arc::clone(&self.keys),
            token_delta: self.token_delta,
            cost: self.cost,
            usage: self.usage.take(),
            admitted_at_ms: self.admitted_at_ms,
            at_ms: now_ms(),
            urgent: self.urgent,
        });
        if sent.is_err() {
            self.shared.unsettled.fetch_sub(1, Ordering::AcqRel);
        } else if self.urgent {
            self.shared.finish_now.notify_one();
        }
    }
}

/// A finished request, on its way to Redis.
struct Finished {
    keys: Arc<LeaseKeys>,
    token_delta: i64,
    cost: UsdNanos,
    usage: Option<(Box<str>, [u64; 4])>,
    admitted_at_ms: u64,
    at_ms: u64,
    urgent: bool,
}

/// A rate refusal remembered until its window frees.
struct CachedRefusal {
    until_ms: u64,
    refusal: LimitRefusal,
}

/// Limit state in Redis, shared by a fleet.
pub struct FleetLimits {
    /// Local pre-holds of concurrency slots, and every limit while Redis is unreachable.
    local: MemoryLimits,
    shared: Arc<Shared>,
    refused: Mutex<HashMap<String, CachedRefusal>>,
    revocations: Arc<revocation::Revocations>,
    /// Drives the connection and the background tasks.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FleetLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLimits")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for FleetLimits {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so it is safe wherever the last reference drops.
            rt.shutdown_background();
        }
    }
}

/// A budget cap for the script: `-1` for none.
fn cap_arg(cap: Option<UsdNanos>) -> i64 {
    cap.map_or(-1, |c| i64::try_from(c.0).unwrap_or(i64::MAX))
}

impl FleetLimits {
    /// Starts the state runtime, which connects (and keeps reconnecting) in the background:
    /// the gateway starts whether or not Redis is up, under `on_error` until it is.
    pub fn start(
        settings: FleetSettings,
        local: MemoryLimits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<FleetLimits> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keygate-state")
            .enable_all()
            .build()?;
        let (finished, queue) = mpsc::unbounded_channel();
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).map_err(|e| std::io::Error::other(e.to_string()))?;
        metrics.state_backend.with_label_values(&["redis"]).set(1);
        metrics.state_healthy.set(0);
        let shared = Arc::new(Shared {
            settings,
            conn: ArcSwapOption::empty(),
            request_conns: ArcSwap::default(),
            generation: AtomicU64::new(0),
            admit: Script::new(include_str!("admit.lua")),
            settle: Script::new(include_str!("settle.lua")),
            renew: Script::new(include_str!("renew.lua")),
            guard: Script::new(include_str!("guard.lua")),
            live: Mutex::default(),
            next_lease: AtomicU64::new(1),
            instance: hex::encode(id),
            down_until_ms: AtomicU64::new(0),
            finished,
            finish_now: tokio::sync::Notify::new(),
            unsettled: AtomicU64::new(0),
            metrics,
            spend: Mutex::default(),
        });
        let revocations = Arc::new(revocation::Revocations::default());
        runtime.spawn(keep_connected(Arc::clone(&shared)));
        runtime.spawn(finish_requests(Arc::clone(&shared), queue));
        runtime.spawn(renew_leases(Arc::clone(&shared)));
        runtime.spawn(revocation::follow(
            Arc::clone(&shared),
            Arc::clone(&revocations),
        ));
        Ok(FleetLimits {
            local,
            shared,
            refused: Mutex::default(),
            revocations,
            runtime: Some(runtime),
        })
    }

    /// Waits, up to `limit`, until the ends of the requests finished so far are settled in Redis
    /// (or failed to be), without their batching wait: at shutdown, so that a request's real
    /// cost is booked before its reservation would merely expire. Blocks the calling thread.
    pub fn flush(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.shared.unsettled.load(Ordering::Acquire) > 0
            && std::time::Instant::now() < deadline
        {
            self.shared.finish_now.notify_one();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// This instance's own counters: concurrency pre-holds, and the fallback under `on_error`.
    pub fn local(&self) -> &MemoryLimits {
        &self.local
    }

    /// Keys revoked by events from other instances.
    pub fn revocations(&self) -> &revocation::Revocations {
        &self.revocations
    }

    /// Whether the gateway should report ready: not while Redis is down under `fail_closed`.
    pub fn ready(&self) -> bool {
        self.shared.settings.on_error != OnError::FailClosed
            || self.shared.metrics.state_healthy.get() == 1
    }

    /// Publishes a revocation to every instance; see [`revocation`].
    pub async fn publish_revocation(&self, event: &revocation::Event) -> Result<(), StateError> {
        let shared = Arc::clone(&self.shared);
        let fields = event.fields();
        let stream = revocation::stream_key(&shared.settings.prefix);
        // Run on the state runtime: the admin API's runtime does not drive this connection.
        let task = self.runtime.as_ref().map(|rt| {
            rt.spawn(async move {
                let mut conn = shared.conn()?;
                let keep_ms = revocation::KEEP.as_millis() as u64;
                // Entries older than KEEP are trimmed, and the stream itself expires when idle.
                let mut pipe = redis::pipe();
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("MINID")
                    .arg("~")
                    .arg(now_ms().saturating_sub(keep_ms))
                    .arg("*")
                    .arg(&fields)
                    .cmd("PEXPIRE")
                    .arg(&stream)
                    .arg(keep_ms);
                let call = pipe.query_async::<(String, i64)>(&mut conn);
                match tokio::time::timeout(BACKGROUND_TIMEOUT, call).await {
                    Err(_) => Err(StateError::Timeout(BACKGROUND_TIMEOUT)),
                    Ok(r) => r.map(drop).map_err(StateError::from),
                }
            })
        });
        let result = match task {
            Some(t) => t.await.unwrap_or(Err(StateError::NotConnected)),
            None => Err(StateError::NotConnected),
        };
        match &result {
            Ok(()) => self.shared.record("revoke", "ok"),
            Err(e) => self.shared.record("revoke", e.result()),
        }
        result
    }

    /// Counts a failed authentication from `ip` fleet-wide; the wait until one more would be
    /// counted when the address is over `max` failures per `per`. An address's IPv6 neighbours in
    /// its /64 count as one, as in the per-instance guard. Without Redis, the per-instance guard
    /// alone applies.
    pub async fn auth_failure(
        &self,
        ip: std::net::IpAddr,
        max: u32,
        per: Duration,
    ) -> Option<Duration> {
        if now_ms() < self.shared.down_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let origin = match ip {
            std::net::IpAddr::V6(v6) => {
                ipnet::Ipv6Net::new(v6, 64).map_or(ip, |net| std::net::IpAddr::V6(net.network()))
            }
            v4 => v4,
        };
        let mut invocation = self.shared.guard.prepare_invoke();
        invocation
            .key(format!("{}:guard:{origin}", self.shared.settings.prefix))
            .arg(per.as_millis() as u64)
            .arg(max);
        match self
            .shared
            .invoke_here::<u64>("guard", invocation, self.shared.settings.timeout)
            .await
        {
            Ok(0) => {
                self.shared.record("guard", "ok");
                None
            }
            Ok(wait_ms) => {
                self.shared.record("guard", "refused");
                Some(Duration::from_millis(wait_ms))
            }
            Err(e) => {
                self.shared.failed("guard", &e);
                None
            }
        }
    }

    /// Spend of a scope as Redis last reported it to this instance (admissions and settlements
    /// of budgeted scopes report it), or this instance's own figures before it did.
    pub fn spend(&self, kind: &'static str, name: &str, now_ms: u64) -> [PeriodFigures; 2] {
        let cal = Calendar::at_ms(now_ms);
        let seen = self
            .shared
            .spend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kind, Box::<str>::from(name)))
            .copied();
        match seen {
            Some(s) if s.at.month == cal.month => [
                PeriodFigures {
                    period: Period::Daily,
                    spent: UsdNanos(if s.at.day == cal.day { s.today } else { 0 }),
                    reserved: UsdNanos(s.reserved),
                },
                PeriodFigures {
                    period: Period::Monthly,
                    spent: UsdNanos(s.month),
                    reserved: UsdNanos(s.reserved),
                },
            ],
            _ => self.local.spend(kind, name, now_ms),
        }
    }

    fn key(&self, tag: &str, scope: &ScopeRef<'_>, what: std::fmt::Arguments<'_>) -> String {
        format!(
            "{}:{{{tag}}}:{}:{}:{what}",
            self.shared.settings.prefix, scope.kind, scope.name
        )
    }

    /// Checks and counts `scopes` fleet-wide in one round trip.
    pub async fn admit(
        &self,
        scopes: &[ScopeRef<'_>],
        demand: Demand,
        slots: Slots,
        now_ms: u64,
    ) -> Result<Admission, AdmitError> {
        let active: SmallVec<[&ScopeRef<'_>; 2]> =
            scopes.iter().filter(|s| s.spec.counts()).collect();
        let name_of = |kind: &str| scopes.iter().find(|s| s.kind == kind).map(|s| s.name);
        let tag = name_of("workload").unwrap_or_default();
        let id = self.shared.next_lease.fetch_add(1, Ordering::Relaxed);
        let mut keys = LeaseKeys {
            member: format!("{}:{id}", self.shared.instance),
            tag: tag.into(),
            key_id: name_of("key").unwrap_or_default().into(),
            token_windows: Vec::new(),
            lease_sets: Vec::new(),
            budgets: Vec::new(),
            reserved: demand.cost.0,
        };
        if active.is_empty() {
            // Nothing to count, but the request still goes into the fleet's usage view.
            return Ok(Admission {
                status: RateStatus::default(),
                local: memory::Admission::default().holding(slots),
                fleet: Some(self.lease(id, keys)),
            });
        }
        if let Some(refusal) = self.refused_locally(&active, now_ms) {
            self.shared.record("admit", "cached");
            return Err(AdmitError::Refused(refusal));
        }
        if now_ms < self.shared.down_until_ms.load(Ordering::Relaxed) {
            return self.on_error(scopes, demand, slots, now_ms);
        }
        let cal = Calendar::at_ms(now_ms);
        let ttl_ms = self.shared.settings.lease_ttl.as_millis() as u64;
        let mut invocation = self.shared.admit.prepare_invoke();
        invocation
            .arg(&keys.member)
            .arg(ttl_ms)
            .arg(demand.tokens)
            .arg(demand.cost.0)
            .arg(cal.day)
            .arg(cal.month)
            .arg(active.len());
        for scope in &active {
            let spec = scope.spec;
            invocation.arg(spec.windows.len());
            for w in spec.windows.iter() {
                let per_ms = w.per_ms();
                let (kind, letter) = match w.kind {
                    LimitKind::Requests => (0, 'r'),
                    LimitKind::Tokens => (1, 't'),
                };
                let key = self.key(tag, scope, format_args!("{letter}{per_ms}"));
                invocation.arg(kind).arg(per_ms).arg(w.limit).key(&key);
                if w.kind == LimitKind::Tokens {
                    keys.token_windows.push((key, per_ms));
                }
            }
            match spec.max_concurrent {
                Some(max) => {
                    let key = self.key(tag, scope, format_args!("slots"));
                    invocation.arg(max).key(&key);
                    keys.lease_sets.push(key);
                }
                None => {
                    invocation.arg(0);
                }
            }
            match &spec.budget {
                Some(budget) => {
                    let mode = match budget.mode {
                        BudgetMode::Enforce => 1,
                        BudgetMode::Track => 2,
                    };
                    let hash = self.key(tag, scope, format_args!("budget"));
                    let reservations = self.key(tag, scope, format_args!("reserved"));
                    invocation
                        .arg(mode)
                        .arg(cap_arg(budget.daily))
                        .arg(cap_arg(budget.monthly))
                        .key(&hash)
                        .key(&reservations);
                    keys.budgets.push(BudgetKeys {
                        hash,
                        reservations,
                        scope: (scope.kind, Box::from(scope.name)),
                        spec: Arc::clone(budget),
                    });
                }
                None => {
                    invocation.arg(0).arg(-1).arg(-1);
                }
            }
        }
        let mut lease = self.lease(id, keys);
        let reply: Vec<i64> = match self
            .shared
            .invoke_here("admit", invocation, self.shared.settings.timeout)
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(error = %e, on_error = self.shared.settings.on_error.as_str(), "fleet state unavailable at admission");
                self.shared.failed("admit", &e);
                // Whatever the script may have counted is given back by the lease's drop.
                drop(lease);
                return self.on_error(scopes, demand, slots, now_ms);
            }
        };
        self.shared.healthy(true);
        let outcome = self.read_admission(&active, &reply, cal, now_ms, &mut lease);
        match outcome {
            Ok(status) => {
                self.shared.record("admit", "ok");
                if lease.keys.renewable(demand.cost > UsdNanos::ZERO) {
                    lease.renewed = true;
                    self.shared
                        .live
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, Arc::clone(&lease.keys));
                }
                Ok(Admission {
                    status,
                    local: memory::Admission::default().holding(slots),
                    fleet: Some(lease),
                })
            }
            Err(refusal) => {
                self.shared.record("admit", "refused");
                lease.armed = false;
                Err(AdmitError::Refused(refusal))
            }
        }
    }

    /// A lease for `keys`, armed: its drop sends the request's end.
    fn lease(&self, id: u64, keys: LeaseKeys) -> Lease {
        Lease {
            id,
            keys: Arc::new(keys),
            armed: true,
            renewed: false,
            urgent: false,
            token_delta: 0,
            cost: UsdNanos::ZERO,
            usage: None,
            admitted_at_ms: now_ms(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// The fleet's usage of `workloads` this month and last, as `filter` and `by` ask.
    pub async fn usage_report(
        &self,
        workloads: Vec<String>,
        filter: crate::state::UsageFilter,
        by: Option<crate::state::UsageGroup>,
    ) -> Result<(Vec<crate::state::ReportRow>, crate::state::ReportRow), StateError> {
        let shared = Arc::clone(&self.shared);
        let task = self.runtime.as_ref().map(|rt| {
            rt.spawn(async move {
                let mut conn = shared.conn()?;
                usage::report(
                    &mut conn,
                    &shared.settings.prefix,
                    &workloads,
                    &filter,
                    by,
                    now_ms(),
                )
                .await
            })
        });
        match task {
            Some(t) => t.await.unwrap_or(Err(StateError::NotConnected)),
            None => Err(StateError::NotConnected),
        }
    }

    /// The admission script's reply: the rate figures if admitted, else the refusal.
    fn read_admission(
        &self,
        active: &[&ScopeRef<'_>],
        reply: &[i64],
        cal: Calendar,
        now_ms: u64,
        lease: &mut Lease,
    ) -> Result<RateStatus, LimitRefusal> {
        let mut figures = reply.iter().map(|&n| u64::try_from(n).unwrap_or(0));
        let mut next = || figures.next().unwrap_or(0);
        let (kind, at_scope, at, wait_ms) = (next(), next(), next(), next());
        let mut status = RateStatus::default();
        let mut urgent = false;
        for scope in active {
            for w in scope.spec.windows.iter() {
                let (remaining, reset) = (next(), next());
                urgent |= remaining.saturating_mul(2) < w.limit;
                status.consider(
                    w.kind,
                    WindowStatus {
                        limit: w.limit,
                        remaining,
                        reset: Duration::from_millis(reset),
                    },
                );
            }
        }
        for max in active.iter().filter_map(|s| s.spec.max_concurrent) {
            urgent |= next().saturating_mul(2) > u64::from(max);
        }
        for b in &lease.keys.budgets {
            let (today, month, reserved) = (next(), next(), next());
            urgent |= b.spec.mode == BudgetMode::Enforce
                && [(b.spec.daily, today), (b.spec.monthly, month)]
                    .into_iter()
                    .any(|(cap, spent)| {
                        cap.is_some_and(|c| (spent + reserved).saturating_mul(2) > c.0)
                    });
            self.shared
                .remember_spend(&b.scope, cal, today, month, reserved);
        }
        lease.urgent = urgent;
        let Some(scope) = usize::try_from(at_scope)
            .ok()
            .and_then(|s| s.checked_sub(1))
            .and_then(|s| active.get(s))
        else {
            return Ok(status);
        };
        let refusal = match kind {
            1 => {
                let window = scope.spec.windows.get((at as usize).saturating_sub(1));
                let refusal = LimitRefusal {
                    kind: RefusalKind::Rate,
                    limit: format!(
                        "{} {}: {}",
                        scope.kind,
                        scope.name,
                        window.map_or_else(String::new, |w| w.describe())
                    ),
                    retry_after: Duration::from_millis(wait_ms),
                    status,
                };
                self.refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        format!("{}:{}", scope.kind, scope.name),
                        CachedRefusal {
                            until_ms: now_ms + wait_ms,
                            refusal: refusal.clone(),
                        },
                    );
                refusal
            }
            2 => LimitRefusal {
                kind: RefusalKind::Concurrency,
                limit: format!(
                    "{} {}: {} concurrent requests",
                    scope.kind,
                    scope.name,
                    scope.spec.max_concurrent.unwrap_or(0)
                ),
                retry_after: Duration::from_millis(wait_ms),
                status,
            },
            _ => {
                let period = if at == 2 {
                    Period::Monthly
                } else {
                    Period::Daily
                };
                let cap = scope.spec.budget.as_ref().and_then(|b| match period {
                    Period::Daily => b.daily,
                    Period::Monthly => b.monthly,
                });
                LimitRefusal {
                    kind: RefusalKind::Budget,
                    limit: format!(
                        "{} {}: {} budget of ${}",
                        scope.kind,
                        scope.name,
                        period.as_str(),
                        cap.unwrap_or(UsdNanos::ZERO)
                    ),
                    retry_after: cal.until_end(period, now_ms),
                    status,
                }
            }
        };
        Err(refusal)
    }

    /// A window this instance already saw refused, while it is still full.
    fn refused_locally(&self, active: &[&ScopeRef<'_>], now_ms: u64) -> Option<LimitRefusal> {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.is_empty() {
            return None;
        }
        refused.retain(|_, c| c.until_ms > now_ms);
        active.iter().find_map(|scope| {
            let c = refused.get(&format!("{}:{}", scope.kind, scope.name))?;
            let mut refusal = c.refusal.clone();
            refusal.retry_after = Duration::from_millis(c.until_ms - now_ms);
            Some(refusal)
        })
    }

    /// Admission while Redis cannot be reached, as `on_error` says.
    fn on_error(
        &self,
        scopes: &[ScopeRef<'_>],
        demand: Demand,
        slots: Slots,
        now_ms: u64,
    ) -> Result<Admission, AdmitError> {
        let mode = self.shared.settings.on_error;
        self.shared.record("admit", mode.as_str());
        match mode {
            OnError::FailClosed => Err(AdmitError::Unavailable),
            OnError::Local => self
                .local
                .admit(scopes, demand, slots, now_ms)
                .map(Admission::local)
                .map_err(AdmitError::Refused),
            OnError::FailOpen => Ok(Admission::local(
                match self.local.admit(scopes, demand, Slots::default(), now_ms) {
                    Ok(counted) => counted.holding(slots),
                    Err(_) => memory::Admission::default().holding(slots),
                },
            )),
        }
    }
}

/// Connects, and keeps probing: a probe that fails marks the state unhealthy; one that answers
/// marks it healthy, which lets admission try Redis again at once.
async fn keep_connected(shared: Arc<Shared>) {
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let stale = matches!(shared.settings.target, RedisTarget::Sentinel { .. })
            && failing_since.is_some_and(|t| t.elapsed() > Duration::from_secs(2));
        if shared.conn.load().is_none() || stale {
            match conn::connect(&shared.settings.target).await {
                Ok(c) => {
                    shared.conn.store(Some(Arc::new(c)));
                    shared.generation.fetch_add(1, Ordering::AcqRel);
                    failing_since = None;
                }
                Err(e) => {
                    shared.record("connect", "error");
                    tracing::warn!(error = %e, "cannot connect to Redis; retrying");
                }
            }
        }
        if let Ok(mut c) = shared.conn() {
            let ping = redis::cmd("PING");
            let ping = ping.query_async::<String>(&mut c);
            match tokio::time::timeout(BACKGROUND_TIMEOUT, ping).await {
                Ok(Ok(_)) => {
                    failing_since = None;
                    shared.healthy(true);
                    shared.down_until_ms.store(0, Ordering::Relaxed);
                }
                _ => {
                    failing_since.get_or_insert_with(std::time::Instant::now);
                    shared.healthy(false);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The most finished requests sent to Redis in one pipeline.
const FINISH_BATCH: usize = 256;
/// How many pipelines of finished requests may be in flight at once.
const FINISH_PIPELINES: usize = 8;

/// How long the first finished request of a batch waits for others to join it, unless one of
/// them is urgent (a scope it counts in is more than half used). The data plane then wakes the
/// state thread once per batch instead of once per request, which on a shared core costs more
/// than the settling itself.
const FINISH_LINGER: Duration = Duration::from_millis(2);

/// Sends finished requests' ends to Redis in batches: whatever queued up while the previous
/// batches were under way, or within [`FINISH_LINGER`] of the first, goes in one pipeline per
/// workload (a pipeline's keys must share a hash slot on a cluster) as one settling script and
/// the batch's usage-view counters, each summed per key, so that a busy instance sends Redis a
/// few small writes per batch instead of a script per request.
async fn finish_requests(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Finished>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(FINISH_PIPELINES));
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(FINISH_BATCH);
        if queue.recv_many(&mut batch, FINISH_BATCH).await == 0 {
            return;
        }
        if batch.len() < FINISH_BATCH && !batch.iter().any(|done| done.urgent) {
            tokio::select! {
                _ = tokio::time::sleep(FINISH_LINGER) => {}
                _ = shared.finish_now.notified() => {}
            }
            while batch.len() < FINISH_BATCH {
                match queue.try_recv() {
                    Ok(done) => batch.push(done),
                    Err(_) => break,
                }
            }
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            batch.sort_unstable_by(|a, b| a.keys.tag.cmp(&b.keys.tag));
            for group in batch.chunk_by(|a, b| a.keys.tag == b.keys.tag) {
                finish_group(&shared, group).await;
            }
            // Settled or given up on: either way nothing is left to wait for.
            shared
                .unsettled
                .fetch_sub(batch.len() as u64, Ordering::AcqRel);
            drop(permit);
        });
    }
}

/// One pipeline: the settling script of the requests in `group` (all of one workload), then the
/// group's usage-view counters.
async fn finish_group(shared: &Shared, group: &[Finished]) {
    let settlement = Settlement::of(group);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let sha = shared.settle.get_hash();
    if let Some(cmd) = settlement.command(sha) {
        pipe.add_command(cmd);
    }
    let mut counters: HashMap<(String, String), [u64; 6]> = HashMap::new();
    let mut calendar: Option<(u64, (String, String))> = None;
    for done in group {
        let at_day = done.at_ms / 86_400_000;
        let (day, month) = match &calendar {
            Some((d, names)) if *d == at_day => names,
            _ => {
                &calendar
                    .insert((at_day, usage::day_and_month(done.at_ms)))
                    .1
            }
        };
        let (model, tokens) = done
            .usage
            .as_ref()
            .map_or(("-", [0; 4]), |(m, t)| (&**m, *t));
        let hash = usage::hash_key(&shared.settings.prefix, &done.keys.tag, month);
        let field = format!("{day}|{}|{model}|", done.keys.key_id);
        let sums = counters.entry((hash, field)).or_default();
        sums[0] += 1;
        for (sum, n) in sums[1..5].iter_mut().zip(tokens) {
            *sum += n;
        }
        sums[5] += done.cost.0;
    }
    let mut hashes: Vec<&str> = Vec::new();
    for ((hash, field), sums) in &counters {
        for (suffix, n) in usage::FIGURES.into_iter().zip(sums) {
            if *n > 0 {
                pipe.cmd("HINCRBY")
                    .arg(hash)
                    .arg(format!("{field}{suffix}"))
                    .arg(*n)
                    .ignore();
            }
        }
        if !hashes.contains(&hash.as_str()) {
            hashes.push(hash);
        }
    }
    // The current and the previous month are read; a little more is kept for the month's end.
    for hash in hashes {
        pipe.cmd("PEXPIRE").arg(hash).arg(5_616_000_000u64).ignore();
    }
    let requests = group.len() as u64;
    match run_settlement(shared, &pipe, &settlement, sha).await {
        Ok(spent) => {
            shared.record_n("finish", "ok", requests);
            settled(shared, &settlement.budgets, &spent);
        }
        Err(e) => {
            // The leases expire by themselves; only these requests' real figures are lost.
            tracing::warn!(error = %e, requests, "could not settle requests in Redis");
            shared.record_n("finish", e.result(), requests);
        }
    }
}

/// The entry of `items` that `index` files under `key`, added with `make` if there is none yet:
/// entries keep the order keys first came in, and a batch of hundreds of keys finds each by hash.
fn entry_for<'v, K: std::hash::Hash + Eq, T>(
    index: &mut HashMap<K, usize>,
    items: &'v mut Vec<T>,
    key: K,
    make: impl FnOnce() -> T,
) -> &'v mut T {
    let i = *index.entry(key).or_insert_with(|| {
        items.push(make());
        items.len() - 1
    });
    &mut items[i]
}

/// Sends a group's pipeline and reads its settling script's reply: the budgets' spend after
/// booking (none when the batch only added to the usage view).
async fn run_settlement(
    shared: &Shared,
    pipe: &redis::Pipeline,
    settlement: &Settlement<'_>,
    sha: &str,
) -> Result<Vec<i64>, StateError> {
    let mut reply = run_pipeline(shared, pipe).await?.into_iter().next();
    if let Some(Err(e)) = &reply {
        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
            // Redis lost its scripts (a restart or a failover). The usage counters beside the
            // script were applied already; only the script is sent again, once it is loaded.
            let mut resend = redis::pipe();
            if let Some(cmd) = settlement.command(sha) {
                resend.add_command(cmd);
            }
            shared.settle.load_async(&mut shared.conn()?).await?;
            reply = run_pipeline(shared, &resend).await?.into_iter().next();
        }
    }
    match reply {
        None => Ok(Vec::new()),
        Some(reply) => {
            Ok(redis::from_redis_value::<Vec<i64>>(reply?).map_err(redis::RedisError::from)?)
        }
    }
}

/// A batch of finished requests of one workload, summed per Redis key: the settling script's
/// keys and arguments (see settle.lua).
struct Settlement<'a> {
    windows: Vec<WindowSettlement<'a>>,
    leases: Vec<(&'a str, Vec<&'a str>)>,
    budgets: Vec<BudgetSettlement<'a>>,
}

struct WindowSettlement<'a> {
    key: &'a str,
    per_ms: u64,
    /// Tokens beyond the estimates, charged to the current window.
    more: u64,
    /// Tokens below the estimates, per index of the window the estimate was charged to.
    refunds: SmallVec<[(u64, u64); 2]>,
}

struct BudgetSettlement<'a> {
    keys: &'a BudgetKeys,
    at: Calendar,
    cost: u64,
    /// Reservation members and their amounts.
    reservations: Vec<(String, u64)>,
}

impl<'a> Settlement<'a> {
    fn of(group: &'a [Finished]) -> Settlement<'a> {
        let mut s = Settlement {
            windows: Vec::new(),
            leases: Vec::new(),
            budgets: Vec::new(),
        };
        // Each key's place in the lists above.
        let mut windows: HashMap<&str, usize> = HashMap::new();
        let mut leases: HashMap<&str, usize> = HashMap::new();
        let mut budgets: HashMap<(&str, u32), usize> = HashMap::new();
        for done in group {
            let keys = &*done.keys;
            if done.token_delta != 0 {
                for (key, per_ms) in &keys.token_windows {
                    let per_ms = (*per_ms).max(1);
                    let w = entry_for(&mut windows, &mut s.windows, key, || WindowSettlement {
                        key,
                        per_ms,
                        more: 0,
                        refunds: SmallVec::new(),
                    });
                    let tokens = done.token_delta.unsigned_abs();
                    if done.token_delta > 0 {
                        w.more += tokens;
                    } else {
                        let charged = done.admitted_at_ms / per_ms;
                        match w.refunds.iter_mut().find(|(i, _)| *i == charged) {
                            Some((_, less)) => *less += tokens,
                            None => w.refunds.push((charged, tokens)),
                        }
                    }
                }
            }
            for key in &keys.lease_sets {
                entry_for(&mut leases, &mut s.leases, key, || (key, Vec::new()))
                    .1
                    .push(&keys.member);
            }
            let at = Calendar::at_ms(done.at_ms);
            for b in &keys.budgets {
                // A day names its month too.
                let entry = entry_for(&mut budgets, &mut s.budgets, (&b.hash, at.day), || {
                    BudgetSettlement {
                        keys: b,
                        at,
                        cost: 0,
                        reservations: Vec::new(),
                    }
                });
                entry.cost += done.cost.0;
                if keys.reserved > 0 {
                    entry
                        .reservations
                        .push((format!("{}:{}", keys.member, keys.reserved), keys.reserved));
                }
            }
        }
        s
    }

    /// The script's call, or none when the batch only adds to the usage view.
    fn command(&self, sha: &str) -> Option<redis::Cmd> {
        if self.windows.is_empty() && self.leases.is_empty() && self.budgets.is_empty() {
            return None;
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha)
            .arg(self.windows.len() + self.leases.len() + 2 * self.budgets.len());
        for w in &self.windows {
            cmd.arg(w.key);
        }
        for (key, _) in &self.leases {
            cmd.arg(*key);
        }
        for b in &self.budgets {
            cmd.arg(&b.keys.hash).arg(&b.keys.reservations);
        }
        cmd.arg(self.windows.len())
            .arg(self.leases.len())
            .arg(self.budgets.len());
        for w in &self.windows {
            cmd.arg(w.per_ms).arg(w.more).arg(w.refunds.len());
            for (charged, less) in &w.refunds {
                cmd.arg(*charged).arg(*less);
            }
        }
        for (_, members) in &self.leases {
            cmd.arg(members.len());
            for m in members {
                cmd.arg(*m);
            }
        }
        for b in &self.budgets {
            cmd.arg(b.at.day)
                .arg(b.at.month)
                .arg(b.cost)
                .arg(b.reservations.len());
            for (member, _) in &b.reservations {
                cmd.arg(member);
            }
            for (_, amount) in &b.reservations {
                cmd.arg(*amount);
            }
        }
        Some(cmd)
    }
}

/// Sends `pipe`, bounded by the background timeout, with each command's own result.
async fn run_pipeline(
    shared: &Shared,
    pipe: &redis::Pipeline,
) -> Result<Vec<redis::RedisResult<redis::Value>>, StateError> {
    let mut conn = shared.conn()?;
    let started = std::time::Instant::now();
    let reply = tokio::time::timeout(BACKGROUND_TIMEOUT, pipe.query_async(&mut conn)).await;
    shared
        .metrics
        .state_latency
        .with_label_values(&["finish"])
        .observe(started.elapsed().as_secs_f64());
    match reply {
        Err(_) => Err(StateError::Timeout(BACKGROUND_TIMEOUT)),
        Ok(r) => Ok(r?),
    }
}

/// What a settled batch's budgets now show: alerts for the thresholds it crossed, and the
/// fleet's spend for the admin API and metrics.
fn settled(shared: &Shared, budgets: &[BudgetSettlement<'_>], spent: &[i64]) {
    for (b, pair) in budgets.iter().zip(spent.chunks(2)) {
        let today = pair.first().map_or(0, |&n| n.max(0) as u64);
        let month = pair.get(1).map_or(0, |&n| n.max(0) as u64);
        alert_crossings(b.keys, UsdNanos(b.cost), today, month);
        let reserved = shared
            .spend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&b.keys.scope)
            .map_or(0, |s| s.reserved);
        shared.remember_spend(&b.keys.scope, b.at, today, month, reserved);
    }
}

/// Logs the budget alerts a settlement crossed: the fleet's spend went from below a threshold to
/// at or above it with this batch, which happens on exactly one instance.
fn alert_crossings(b: &BudgetKeys, cost: UsdNanos, today: u64, month: u64) {
    for (period, cap, after) in [
        (Period::Daily, b.spec.daily, today),
        (Period::Monthly, b.spec.monthly, month),
    ] {
        let Some(cap) = cap.filter(|c| c.0 > 0) else {
            continue;
        };
        let before = after.saturating_sub(cost.0);
        for &permille in &b.spec.alert_at {
            let threshold = (cap.0 as u128 * permille as u128 / 1000) as u64;
            if before < threshold && after >= threshold {
                tracing::warn!(
                    scope = b.scope.0,
                    name = %b.scope.1,
                    period = period.as_str(),
                    threshold = f64::from(permille) / 1000.0,
                    spent_usd = %UsdNanos(after),
                    budget_usd = %cap,
                    "budget alert: fleet spend crossed a threshold"
                );
            }
        }
    }
}

/// Renews the leases of requests in flight, three times per lease TTL.
async fn renew_leases(shared: Arc<Shared>) {
    let every = shared.settings.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let live: Vec<Arc<LeaseKeys>> = shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let ttl_ms = shared.settings.lease_ttl.as_millis() as u64;
        for keys in live {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut invocation = shared.renew.prepare_invoke();
                invocation
                    .arg(&keys.member)
                    .arg(ttl_ms)
                    .arg(keys.lease_sets.len())
                    .arg(keys.reserved);
                for key in &keys.lease_sets {
                    invocation.key(key);
                }
                for b in &keys.budgets {
                    invocation.key(&b.reservations);
                }
                match shared
                    .invoke::<i64>("renew", invocation, BACKGROUND_TIMEOUT)
                    .await
                {
                    Ok(_) => shared.record("renew", "ok"),
                    Err(e) => shared.record("renew", e.result()),
                }
            });
        }
    }
}
