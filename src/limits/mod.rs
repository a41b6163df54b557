//! Per-key and per-workload limits: sliding-window request and token rates, concurrency caps,
//! daily and monthly budgets, IP allowlists, and the brute-force guard on failed authentications.
//!
//! Counting is exact per scope (one counter set per key id and per workload name), so no key is
//! ever refused because of another key's traffic. The counters live outside the policy snapshot,
//! keyed by id, so reloads and rotations keep them, and a changed limit applies at once to the
//! running window. [`Limits`] is the limit state a gateway runs on: [`MemoryLimits`] in process
//! (the [`LimitState`] interface), or [`fleet::FleetLimits`] in Redis, shared by a fleet.

pub mod budget;
pub mod fleet;
pub mod guard;
pub mod ip;
mod memory;
pub mod window;

pub use memory::{Admission as LocalAdmission, MemoryLimits, Slots};

use crate::usage::cost::UsdNanos;
use budget::{BudgetAlert, BudgetSpec, Period};
use ipnet::IpNet;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a shutdown waits for finished requests to be settled in the shared state.
const SHUTDOWN_SETTLE_LIMIT: Duration = Duration::from_secs(3);

/// What a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Requests,
    Tokens,
}

/// One configured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: LimitKind,
    pub limit: u64,
    pub per: Duration,
}

impl WindowSpec {
    fn per_ms(&self) -> u64 {
        self.per.as_millis().max(1) as u64
    }

    /// `600 requests per 1m`, for messages.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        };
        format!(
            "{} {what} per {}",
            self.limit,
            humantime::format_duration(self.per)
        )
    }
}

/// The limits of one key or workload, compiled from the policy.
#[derive(Debug, Default)]
pub struct LimitSpec {
    // Boxed slices rather than vectors: a policy holds one of these per key.
    pub windows: Box<[WindowSpec]>,
    pub max_concurrent: Option<u32>,
    pub allowed_ips: Option<Box<[IpNet]>>,
    /// Shared, so that an admission holds on to it for settling with a reference count rather
    /// than a copy.
    pub budget: Option<Arc<BudgetSpec>>,
    /// This scope's counters in the live [`MemoryLimits`], found on first use per snapshot.
    pub(crate) slot: OnceLock<Arc<memory::Scope>>,
}

impl LimitSpec {
    pub fn new(
        windows: Vec<WindowSpec>,
        max_concurrent: Option<u32>,
        allowed_ips: Option<Vec<IpNet>>,
        budget: Option<BudgetSpec>,
    ) -> Self {
        LimitSpec {
            windows: windows.into_boxed_slice(),
            max_concurrent,
            allowed_ips: allowed_ips.map(Vec::into_boxed_slice),
            budget: budget.map(Arc::new),
            slot: OnceLock::new(),
        }
    }

    /// Whether any counting is needed for this scope.
    pub fn counts(&self) -> bool {
        !self.windows.is_empty() || self.max_concurrent.is_some() || self.budget.is_some()
    }
}

/// The figures of one window, for OpenAI's `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStatus {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

/// The most constrained request and token windows of a request's scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateStatus {
    pub requests: Option<WindowStatus>,
    pub tokens: Option<WindowStatus>,
}

impl RateStatus {
    fn consider(&mut self, kind: LimitKind, status: WindowStatus) {
        let slot = match kind {
            LimitKind::Requests => &mut self.requests,
            LimitKind::Tokens => &mut self.tokens,
        };
        if slot.is_none_or(|s| status.remaining < s.remaining) {
            *slot = Some(status);
        }
    }
}

/// Which kind of limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Rate,
    Concurrency,
    Budget,
}

/// Why a request was refused by a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRefusal {
    pub kind: RefusalKind,
    /// The limit that refused, e.g. `key ci-bot: 600 requests per 1m`.
    pub limit: String,
    /// When the request would be admitted (for `retry-after`); for a budget, when its period ends.
    pub retry_after: Duration,
    pub status: RateStatus,
}

/// What a request asks of its scopes at admission.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    /// Estimated prompt tokens, charged to token windows until the real count is known.
    pub tokens: u64,
    /// Worst-case cost, reserved against budgets until the real cost is known.
    pub cost: UsdNanos,
}

/// A budget alert with the scope it belongs to.
#[derive(Debug, Clone)]
pub struct ScopedAlert {
    pub kind: &'static str,
    pub name: Box<str>,
    pub alert: BudgetAlert,
}

/// One scope a request is counted against.
pub struct ScopeRef<'a> {
    /// `key` or `workload`, for messages.
    pub kind: &'static str,
    pub name: &'a str,
    pub spec: &'a LimitSpec,
}

/// The interface of limit state, which a shared store implements for fleets: check-and-count at
/// admission, charge what becomes known later, release at the end.
pub trait LimitState: Send + Sync {
    /// Takes a concurrency slot in every scope of `scopes` with a cap, or none when one is full.
    /// Called before the request's body is read, so that slow uploads count against the cap.
    fn hold_slots(&self, scopes: &[ScopeRef<'_>], now_ms: u64) -> Result<Slots, LimitRefusal>;
    /// Checks every window and budget of `scopes`; if all pass, counts the request (and
    /// `demand.tokens` against token windows) and reserves `demand.cost` against budgets. The
    /// admission keeps `slots` until it drops.
    fn admit(
        &self,
        scopes: &[ScopeRef<'_>],
        demand: Demand,
        slots: Slots,
        now_ms: u64,
    ) -> Result<LocalAdmission, LimitRefusal>;
    /// Adds `delta` tokens to the token windows of an admitted request: more than its estimate
    /// is charged to the current windows; less is refunded to the windows the estimate was
    /// charged to, or dropped once those have passed.
    fn charge_tokens(&self, admission: &LocalAdmission, delta: i64, now_ms: u64);
    /// Replaces the admission's reservation by the real cost (once; later calls do nothing).
    /// Returns the budget alerts the spend crossed.
    fn settle_cost(
        &self,
        admission: &mut LocalAdmission,
        actual: UsdNanos,
        now_ms: u64,
    ) -> SmallVec<[ScopedAlert; 1]>;
    /// Spend of a scope today and this month, including reservations of requests in flight.
    fn spend(&self, kind: &'static str, name: &str, now_ms: u64) -> [PeriodFigures; 2];
}

/// A request's hold on its limits, whatever the backend: its slots, its reservation and, in
/// fleet mode, its leases in Redis. Dropping it gives back whatever it holds, on every path.
#[derive(Debug, Default)]
pub struct Admission {
    pub status: RateStatus,
    local: memory::Admission,
    fleet: Option<fleet::Lease>,
}

impl Admission {
    fn local(local: memory::Admission) -> Admission {
        Admission {
            status: local.status,
            local,
            fleet: None,
        }
    }
}

/// Why admission did not admit.
#[derive(Debug)]
pub enum AdmitError {
    Refused(LimitRefusal),
    /// Fleet mode under `on_error: fail_closed`, while Redis cannot be reached.
    Unavailable,
}

/// The limit state a gateway runs on. An enum rather than a trait object, so that the memory
/// backend's admission stays a plain call: only the fleet's awaits Redis.
#[derive(Debug)]
pub enum Limits {
    Memory(MemoryLimits),
    Fleet(fleet::FleetLimits),
}

impl Limits {
    /// `memory` or `redis`, for metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Limits::Memory(_) => "memory",
            Limits::Fleet(_) => "redis",
        }
    }

    /// This instance's own counters.
    pub fn local(&self) -> &MemoryLimits {
        match self {
            Limits::Memory(m) => m,
            Limits::Fleet(f) => f.local(),
        }
    }

    /// See [`LimitState::hold_slots`]. In fleet mode these are this instance's pre-holds; the
    /// fleet-wide slots are taken by [`Self::admit`].
    pub fn hold_slots(&self, scopes: &[ScopeRef<'_>], now_ms: u64) -> Result<Slots, LimitRefusal> {
        self.local().hold_slots(scopes, now_ms)
    }

    /// See [`LimitState::admit`].
    pub async fn admit(
        &self,
        scopes: &[ScopeRef<'_>],
        demand: Demand,
        slots: Slots,
        now_ms: u64,
    ) -> Result<Admission, AdmitError> {
        match self {
            Limits::Memory(m) => m
                .admit(scopes, demand, slots, now_ms)
                .map(Admission::local)
                .map_err(AdmitError::Refused),
            Limits::Fleet(f) => f.admit(scopes, demand, slots, now_ms).await,
        }
    }

    /// See [`LimitState::charge_tokens`]; in fleet mode the charge goes with the request's end.
    pub fn charge_tokens(&self, admission: &mut Admission, delta: i64, now_ms: u64) {
        match &mut admission.fleet {
            Some(lease) => lease.charge_tokens(delta),
            None => self.local().charge_tokens(&admission.local, delta, now_ms),
        }
    }

    /// See [`LimitState::settle_cost`]. In fleet mode the cost is booked off the request path,
    /// and the background task logs the alerts the fleet's spend crossed.
    pub fn settle_cost(
        &self,
        admission: &mut Admission,
        actual: UsdNanos,
        now_ms: u64,
    ) -> SmallVec<[ScopedAlert; 1]> {
        match &mut admission.fleet {
            Some(lease) => {
                lease.settle(actual);
                SmallVec::new()
            }
            None => self
                .local()
                .settle_cost(&mut admission.local, actual, now_ms),
        }
    }

    /// In fleet mode, adds the request to the fleet's usage view when it ends.
    pub fn record_usage(
        &self,
        admission: &mut Admission,
        model: &str,
        usage: &crate::usage::Usage,
    ) {
        if let Some(lease) = &mut admission.fleet {
            lease.record_usage(model, usage);
        }
    }

    /// See [`LimitState::spend`].
    pub fn spend(&self, kind: &'static str, name: &str, now_ms: u64) -> [PeriodFigures; 2] {
        match self {
            Limits::Memory(m) => m.spend(kind, name, now_ms),
            Limits::Fleet(f) => f.spend(kind, name, now_ms),
        }
    }

    /// Whether the state lets the gateway serve: false only in fleet mode under
    /// `on_error: fail_closed` while Redis is down.
    pub fn ready(&self) -> bool {
        match self {
            Limits::Memory(_) => true,
            Limits::Fleet(f) => f.ready(),
        }
    }

    /// How to refuse `key` if another instance of the fleet revoked it.
    pub fn revoked(&self, key: &crate::policy::Key) -> Option<fleet::revocation::Revoked> {
        match self {
            Limits::Memory(_) => None,
            Limits::Fleet(f) => f.revocations().check(key),
        }
    }

    /// In fleet mode, counts a failed authentication from `ip` across the fleet (see
    /// [`fleet::FleetLimits::auth_failure`]); the wait when the address is over the limit.
    pub async fn shared_auth_failure(
        &self,
        ip: std::net::IpAddr,
        (max, per): (u32, Duration),
    ) -> Option<Duration> {
        match self {
            Limits::Memory(_) => None,
            Limits::Fleet(f) => f.auth_failure(ip, max, per).await,
        }
    }

    /// Settles what finished requests still owe the shared state (fleet mode; the memory
    /// backend has nothing pending). At shutdown, after the requests drained.
    pub fn flush(&self) {
        if let Some(fleet) = self.fleet() {
            fleet.flush(SHUTDOWN_SETTLE_LIMIT);
        }
    }

    /// The fleet's state, in fleet mode.
    pub fn fleet(&self) -> Option<&fleet::FleetLimits> {
        match self {
            Limits::Memory(_) => None,
            Limits::Fleet(f) => Some(f),
        }
    }
}

/// `("key", id)` or `("workload", name)`.
pub type ScopeId = (&'static str, Box<str>);

/// What a scope had spent, as read back from storage at start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistedSpend {
    pub today: UsdNanos,
    pub this_month: UsdNanos,
}

/// Spend figures of one scope and period, for metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodFigures {
    pub period: Period,
    pub spent: UsdNanos,
    pub reserved: UsdNanos,
}

/// Milliseconds since the Unix epoch, the clock of every window.
pub fn now_ms() -> u64 {
    // Every admission reads the clock. Windows are a second or longer and budgets run by the
    // day, so the kernel's coarse clock (a few milliseconds of resolution, a fraction of the
    // cost of the precise one) is exact enough.
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
            return (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000;
        }
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A rough prompt-token estimate from the request body size, charged at admission until the
/// provider's own count is known (about four bytes of JSON per token).
pub fn estimate_prompt_tokens(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(4)
}
