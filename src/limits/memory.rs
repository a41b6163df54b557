//! [`MemoryLimits`]: the limit state of one process. Each scope's windows and spend sit behind
//! their own mutex and its in-flight count in an atomic, so requests of different keys never
//! contend, and a scope is found through the policy snapshot's cached slot rather than a map
//! lookup on every request.

use super::budget::{BudgetSpec, Calendar, Period, Spend};
use super::window::WindowCounter;
use super::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock};

/// The counters of one scope.
#[derive(Debug)]
pub struct Scope {
    /// What the scope is registered under, for alerts.
    id: ScopeId,
    inner: Mutex<ScopeCounters>,
    /// Outside the lock, so that a request's end releases its slot with one atomic step.
    in_flight: AtomicU32,
}

impl Scope {
    fn new(id: ScopeId) -> Self {
        Scope {
            id,
            inner: Mutex::default(),
            in_flight: AtomicU32::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct ScopeCounters {
    /// One counter per (kind, window length): changing a limit's value keeps its counter.
    windows: Vec<(LimitKind, u64, WindowCounter)>,
    spend: Spend,
}

impl ScopeCounters {
    fn counter(&mut self, kind: LimitKind, per_ms: u64, now_ms: u64) -> &mut WindowCounter {
        let pos = match self
            .windows
            .iter()
            .position(|(k, p, _)| *k == kind && *p == per_ms)
        {
            Some(pos) => pos,
            None => {
                self.windows.push((kind, per_ms, WindowCounter::default()));
                self.windows.len() - 1
            }
        };
        let counter = &mut self.windows[pos].2;
        counter.roll(now_ms, per_ms);
        counter
    }
}

/// Concurrency slots a request holds, taken before its body is read so that a slow upload counts
/// against its key's cap. Dropping them gives them back, which makes the release happen on every
/// path: refusal, success, error, client disconnect, upstream failure.
#[derive(Debug, Default)]
pub struct Slots(SmallVec<[Arc<Scope>; 2]>);

impl Drop for Slots {
    fn drop(&mut self) {
        for scope in &self.0 {
            scope.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An admitted request's hold on its scopes: its slots, and its budget reservation until settled.
#[derive(Debug)]
pub struct Admission {
    /// A key and its workload: inline, no allocation per request.
    scopes: SmallVec<[Held; 2]>,
    slots: Slots,
    pub status: RateStatus,
    /// The cost reserved in every scope with a budget, and when; zero once settled.
    reserved: UsdNanos,
    reserved_at: Calendar,
    /// When the token estimate was charged, which picks the windows a refund goes back to.
    charged_at_ms: u64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            scopes: SmallVec::new(),
            slots: Slots::default(),
            status: RateStatus::default(),
            reserved: UsdNanos::ZERO,
            reserved_at: Calendar { day: 0, month: 0 },
            charged_at_ms: 0,
        }
    }
}

impl Admission {
    /// This admission, holding `slots` as well (fleet mode: the local pre-hold).
    pub(super) fn holding(mut self, slots: Slots) -> Admission {
        self.slots = slots;
        self
    }
}

/// What an admission holds in one scope.
#[derive(Debug)]
struct Held {
    scope: Arc<Scope>,
    /// The scope's budget when the request reserved against it (for settling and alerts).
    budget: Option<Arc<BudgetSpec>>,
    /// The request counted in the scope's token windows, so later charges go there too.
    charges_tokens: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        for held in &self.scopes {
            // A request that ends unsettled (refused upstream, failed) costs nothing.
            if held.budget.is_some() && self.reserved > UsdNanos::ZERO {
                let mut c = held.scope.inner.lock().unwrap_or_else(|e| e.into_inner());
                c.spend.release(self.reserved, self.reserved_at);
            }
        }
    }
}

/// In-process limit state.
#[derive(Debug, Default)]
pub struct MemoryLimits {
    scopes: RwLock<HashMap<ScopeId, Arc<Scope>>>,
}
impl MemoryLimits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits whose budgets start from what earlier runs spent today and this month (`at`).
    pub fn with_persisted_spend(spend: HashMap<ScopeId, PersistedSpend>, at_ms: u64) -> Self {
        let cal = Calendar::at_ms(at_ms);
        let limits = MemoryLimits::default();
        let mut scopes = limits.scopes.write().unwrap_or_else(|e| e.into_inner());
        for (id, p) in spend {
            let scope = Scope::new(id.clone());
            {
                let mut counters = scope.inner.lock().unwrap_or_else(|e| e.into_inner());
                counters.spend.period(Period::Daily, cal).spent = p.today;
                counters.spend.period(Period::Monthly, cal).spent = p.this_month;
            }
            scopes.insert(id, Arc::new(scope));
        }
        drop(scopes);
        limits
    }

    fn scope<'s>(&self, scope: &ScopeRef<'s>) -> &'s Arc<Scope> {
        scope.spec.slot.get_or_init(|| {
            let key = (scope.kind, Box::<str>::from(scope.name));
            if let Some(s) = self
                .scopes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            {
                return s.clone();
            }
            self.scopes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_insert_with_key(|id| Arc::new(Scope::new(id.clone())))
                .clone()
        })
    }

    /// The windows of `scopes` as they stand, counting nothing: for the headers of a refusal
    /// decided before the windows were consulted.
    fn window_status(&self, scopes: &[ScopeRef<'_>], now_ms: u64) -> RateStatus {
        let mut status = RateStatus::default();
        for scope_ref in scopes.iter().filter(|s| !s.spec.windows.is_empty()) {
            let scope = self.scope(scope_ref);
            let mut counters = scope.inner.lock().unwrap_or_else(|e| e.into_inner());
            for w in &scope_ref.spec.windows {
                let per_ms = w.per_ms();
                let counter = counters.counter(w.kind, per_ms, now_ms);
                status.consider(
                    w.kind,
                    WindowStatus {
                        limit: w.limit,
                        remaining: counter.remaining(now_ms, per_ms, w.limit),
                        reset: counter.until_reset(now_ms, per_ms),
                    },
                );
            }
        }
        status
    }

    /// In-flight requests of a scope (for tests and metrics).
    pub fn in_flight(&self, kind: &'static str, name: &str) -> u32 {
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        scopes
            .get(&(kind, Box::<str>::from(name)))
            .map_or(0, |s| s.in_flight.load(Ordering::Relaxed))
    }
}

impl LimitState for MemoryLimits {
    fn spend(&self, kind: &'static str, name: &str, now_ms: u64) -> [PeriodFigures; 2] {
        let cal = Calendar::at_ms(now_ms);
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        let spend = scopes
            .get(&(kind, Box::<str>::from(name)))
            .map(|s| s.inner.lock().unwrap_or_else(|e| e.into_inner()).spend)
            .unwrap_or_default();
        Period::ALL.map(|period| {
            let (spent, reserved) = spend.current(period, cal);
            PeriodFigures {
                period,
                spent,
                reserved,
            }
        })
    }

    fn hold_slots(&self, scopes: &[ScopeRef<'_>], now_ms: u64) -> Result<Slots, LimitRefusal> {
        let mut slots = Slots::default();
        for scope_ref in scopes {
            let Some(max) = scope_ref.spec.max_concurrent else {
                continue;
            };
            let scope = self.scope(scope_ref);
            let taken = scope
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok();
            if !taken {
                // `slots` goes out of scope here, giving back what this request took so far.
                return Err(LimitRefusal {
                    kind: RefusalKind::Concurrency,
                    limit: format!(
                        "{} {}: {max} concurrent requests",
                        scope_ref.kind, scope_ref.name
                    ),
                    retry_after: Duration::from_secs(1),
                    status: self.window_status(scopes, now_ms),
                });
            }
            slots.0.push(Arc::clone(scope));
        }
        Ok(slots)
    }

    fn admit(
        &self,
        scopes: &[ScopeRef<'_>],
        demand: Demand,
        slots: Slots,
        now_ms: u64,
    ) -> Result<Admission, LimitRefusal> {
        let active: SmallVec<[(&ScopeRef<'_>, &Arc<Scope>); 2]> = scopes
            .iter()
            .filter(|s| s.spec.counts())
            .map(|s| (s, self.scope(s)))
            .collect();
        if active.is_empty() {
            let mut admission = Admission::default();
            admission.slots = slots;
            return Ok(admission);
        }
        // Locks are taken in the order given (key before workload) and held together, so the
        // check and the count are one step for every scope involved.
        let mut guards: SmallVec<[_; 2]> = active
            .iter()
            .map(|(_, scope)| scope.inner.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        // Calendar arithmetic only for requests that have a budget to check.
        let budgeted = active.iter().any(|(s, _)| s.spec.budget.is_some());
        let cal = if budgeted {
            Calendar::at_ms(now_ms)
        } else {
            Calendar { day: 0, month: 0 }
        };

        // One pass that checks and counts together: nearly every request is admitted, so the
        // count is made at once and taken back in the rare refusal. Exact, because a scope's
        // windows never share a counter (the policy refuses two of one kind and length).
        let mut refusal: Option<LimitRefusal> = None;
        let mut admission = Admission::default();
        admission.reserved_at = cal;
        admission.charged_at_ms = now_ms;
        for ((scope_ref, scope), counters) in active.iter().zip(guards.iter_mut()) {
            let spec = scope_ref.spec;
            let mut charges_tokens = false;
            for w in &spec.windows {
                let per_ms = w.per_ms();
                let counter = counters.counter(w.kind, per_ms, now_ms);
                let (fits, count) = match w.kind {
                    LimitKind::Requests => (counter.fits(now_ms, per_ms, w.limit, 1), 1),
                    LimitKind::Tokens => {
                        charges_tokens = true;
                        (counter.below(now_ms, per_ms, w.limit), demand.tokens)
                    }
                };
                if !fits {
                    let wait = counter.wait_for(now_ms, per_ms, w.limit, 1);
                    // A rate limit outranks a concurrency cap; among rates, the longest wait.
                    if refusal
                        .as_ref()
                        .is_none_or(|r| r.kind != RefusalKind::Rate || wait > r.retry_after)
                    {
                        refusal = Some(LimitRefusal {
                            kind: RefusalKind::Rate,
                            limit: format!(
                                "{} {}: {}",
                                scope_ref.kind,
                                scope_ref.name,
                                w.describe()
                            ),
                            retry_after: wait,
                            status: RateStatus::default(),
                        });
                    }
                }
                counter.current += count;
                admission.status.consider(
                    w.kind,
                    WindowStatus {
                        limit: w.limit,
                        remaining: counter.remaining(now_ms, per_ms, w.limit),
                        reset: counter.until_reset(now_ms, per_ms),
                    },
                );
            }
            if let Some(budget) = &spec.budget {
                if refusal.is_none() {
                    if let Some((period, cap)) = counters.spend.check(budget, demand.cost, cal) {
                        refusal = Some(LimitRefusal {
                            kind: RefusalKind::Budget,
                            limit: format!(
                                "{} {}: {} budget of ${cap}",
                                scope_ref.kind,
                                scope_ref.name,
                                period.as_str()
                            ),
                            retry_after: cal.until_end(period, now_ms),
                            status: RateStatus::default(),
                        });
                    }
                }
            }
            admission.scopes.push(Held {
                scope: Arc::clone(scope),
                budget: spec.budget.clone(),
                charges_tokens,
            });
        }

        if let Some(mut refusal) = refusal {
            // Take the counts back; the status then shows the windows as the refusal found them.
            let mut status = RateStatus::default();
            for ((scope_ref, _), counters) in active.iter().zip(guards.iter_mut()) {
                for w in &scope_ref.spec.windows {
                    let per_ms = w.per_ms();
                    let counter = counters.counter(w.kind, per_ms, now_ms);
                    counter.current -= match w.kind {
                        LimitKind::Requests => 1,
                        LimitKind::Tokens => demand.tokens,
                    };
                    status.consider(
                        w.kind,
                        WindowStatus {
                            limit: w.limit,
                            remaining: counter.remaining(now_ms, per_ms, w.limit),
                            reset: counter.until_reset(now_ms, per_ms),
                        },
                    );
                }
            }
            drop(guards);
            // Nothing was reserved, so dropping the admission must release no budget.
            admission.scopes.clear();
            refusal.status = status;
            return Err(refusal);
        }
        for (held, counters) in admission.scopes.iter().zip(guards.iter_mut()) {
            if held.budget.is_some() {
                counters.spend.reserve(demand.cost, cal);
            }
        }
        drop(guards);
        admission.reserved = demand.cost;
        admission.slots = slots;
        Ok(admission)
    }

    fn charge_tokens(&self, admission: &Admission, delta: i64, now_ms: u64) {
        if delta == 0 {
            return;
        }
        for held in &admission.scopes {
            if !held.charges_tokens {
                continue;
            }
            let mut c = held.scope.inner.lock().unwrap_or_else(|e| e.into_inner());
            // Every token window of the scope: the ones the request counted in, unless a reload
            // changed a window's length meanwhile, when the new one takes the charge.
            for (kind, per_ms, counter) in &mut c.windows {
                if *kind != LimitKind::Tokens {
                    continue;
                }
                counter.roll(now_ms, *per_ms);
                if delta > 0 {
                    counter.current = counter.current.saturating_add(delta.unsigned_abs());
                } else {
                    // Taken from the current window, a refund would hand a later window tokens
                    // it never counted.
                    counter.refund(admission.charged_at_ms / *per_ms, delta.unsigned_abs());
                }
            }
        }
    }

    fn settle_cost(
        &self,
        admission: &mut Admission,
        actual: UsdNanos,
        now_ms: u64,
    ) -> SmallVec<[ScopedAlert; 1]> {
        let mut alerts = SmallVec::new();
        let cal = Calendar::at_ms(now_ms);
        let reserved = std::mem::take(&mut admission.reserved);
        for held in &mut admission.scopes {
            let Some(budget) = held.budget.take() else {
                continue;
            };
            let mut c = held.scope.inner.lock().unwrap_or_else(|e| e.into_inner());
            let crossed = c
                .spend
                .settle(&budget, reserved, admission.reserved_at, actual, cal);
            drop(c);
            for alert in crossed {
                alerts.push(ScopedAlert {
                    kind: held.scope.id.0,
                    name: held.scope.id.1.clone(),
                    alert,
                });
            }
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both steps of a request's admission, as the proxy takes them.
    fn admit(
        limits: &MemoryLimits,
        scopes: &[ScopeRef<'_>],
        demand: Demand,
        now_ms: u64,
    ) -> Result<Admission, LimitRefusal> {
        let slots = limits.hold_slots(scopes, now_ms)?;
        limits.admit(scopes, demand, slots, now_ms)
    }

    /// A request counted against one scope only.
    fn one<'a>(kind: &'static str, name: &'a str, spec: &'a LimitSpec) -> [ScopeRef<'a>; 1] {
        [ScopeRef { kind, name, spec }]
    }

    fn spec(windows: &[(LimitKind, u64, u64)], max_concurrent: Option<u32>) -> LimitSpec {
        LimitSpec {
            windows: windows
                .iter()
                .map(|&(kind, limit, secs)| WindowSpec {
                    kind,
                    limit,
                    per: Duration::from_secs(secs),
                })
                .collect(),
            max_concurrent,
            ..Default::default()
        }
    }

    #[test]
    fn request_window_admits_up_to_the_limit_then_tells_when() {
        let limits = MemoryLimits::new();
        let key = spec(&[(LimitKind::Requests, 3, 10)], None);
        let scopes = one("key", "k", &key);
        let t = 1_000_000_000;
        for i in 0..3 {
            let a = admit(&limits, &scopes, Demand::default(), t).unwrap();
            assert_eq!(a.status.requests.unwrap().remaining, 2 - i);
        }
        let r = admit(&limits, &scopes, Demand::default(), t).unwrap_err();
        assert_eq!(r.kind, RefusalKind::Rate);
        assert!(r.limit.contains("key k: 3 requests per 10s"), "{}", r.limit);
        // 3 in this window: the next fits once 3 × (1 − f) + 1 ≤ 3 in the next one, f = 1/3
        assert_eq!(r.retry_after, Duration::from_millis(10_000 + 3_334));
        // it is admitted exactly when retry-after says
        assert!(admit(
            &limits,
            &scopes,
            Demand::default(),
            t + r.retry_after.as_millis() as u64
        )
        .is_ok());
    }

    #[test]
    fn scopes_are_isolated_and_both_must_pass() {
        let limits = MemoryLimits::new();
        let k1 = spec(&[(LimitKind::Requests, 1, 60)], None);
        let k2 = spec(&[(LimitKind::Requests, 5, 60)], None);
        let wl = spec(&[(LimitKind::Requests, 2, 60)], None);
        let t = 5_000;
        let s1 = [
            ScopeRef {
                kind: "key",
                name: "k1",
                spec: &k1,
            },
            ScopeRef {
                kind: "workload",
                name: "w",
                spec: &wl,
            },
        ];
        let s2 = [
            ScopeRef {
                kind: "key",
                name: "k2",
                spec: &k2,
            },
            ScopeRef {
                kind: "workload",
                name: "w",
                spec: &wl,
            },
        ];
        assert!(admit(&limits, &s1, Demand::default(), t).is_ok());
        assert!(admit(&limits, &s1, Demand::default(), t)
            .unwrap_err()
            .limit
            .starts_with("key k1"));
        assert!(admit(&limits, &s2, Demand::default(), t).is_ok());
        assert!(admit(&limits, &s2, Demand::default(), t)
            .unwrap_err()
            .limit
            .starts_with("workload w"));
        // a refused request counted nothing: k2 alone still has room
        let alone = one("key", "k2", &k2);
        assert_eq!(
            admit(&limits, &alone, Demand::default(), t)
                .unwrap()
                .status
                .requests
                .unwrap()
                .remaining,
            3
        );
    }

    #[test]
    fn a_refusal_by_a_later_scope_takes_back_the_earlier_counts() {
        let limits = MemoryLimits::new();
        let key = spec(
            &[
                (LimitKind::Requests, 10, 60),
                (LimitKind::Tokens, 1_000, 60),
            ],
            Some(5),
        );
        let workload = spec(&[], Some(1));
        let scopes = [
            ScopeRef {
                kind: "key",
                name: "k",
                spec: &key,
            },
            ScopeRef {
                kind: "workload",
                name: "w",
                spec: &workload,
            },
        ];
        let demand = Demand {
            tokens: 100,
            ..Demand::default()
        };
        let t = 7_000;
        let held = admit(&limits, &scopes, demand, t).unwrap();
        let refused = admit(&limits, &scopes, demand, t).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Concurrency);
        assert_eq!(refused.status.requests.unwrap().remaining, 9);
        assert_eq!(refused.status.tokens.unwrap().remaining, 900);
        assert_eq!(limits.in_flight("key", "k"), 1);
        drop(held);
        assert_eq!(limits.in_flight("key", "k"), 0);
        assert_eq!(limits.in_flight("workload", "w"), 0);
        let next = admit(&limits, &scopes, demand, t).unwrap();
        assert_eq!(next.status.requests.unwrap().remaining, 8);
        assert_eq!(next.status.tokens.unwrap().remaining, 800);
    }

    #[test]
    fn concurrency_slots_are_released_on_drop() {
        let limits = MemoryLimits::new();
        let key = spec(&[], Some(2));
        let scopes = one("key", "k", &key);
        let a = admit(&limits, &scopes, Demand::default(), 1).unwrap();
        let b = admit(&limits, &scopes, Demand::default(), 1).unwrap();
        let r = admit(&limits, &scopes, Demand::default(), 1).unwrap_err();
        assert_eq!(r.kind, RefusalKind::Concurrency);
        assert_eq!(limits.in_flight("key", "k"), 2);
        drop(a);
        let c = admit(&limits, &scopes, Demand::default(), 1).unwrap();
        drop((b, c));
        assert_eq!(limits.in_flight("key", "k"), 0);
    }

    #[test]
    fn token_windows_admit_while_under_and_take_charges() {
        let limits = MemoryLimits::new();
        let key = spec(&[(LimitKind::Tokens, 100, 60)], None);
        let scopes = one("key", "k", &key);
        let a = admit(
            &limits,
            &scopes,
            Demand {
                tokens: 10,
                cost: UsdNanos::ZERO,
            },
            1_000,
        )
        .unwrap();
        limits.charge_tokens(&a, 150, 1_000); // the response used far more than estimated
        let r = admit(
            &limits,
            &scopes,
            Demand {
                tokens: 10,
                cost: UsdNanos::ZERO,
            },
            1_000,
        )
        .unwrap_err();
        assert!(r.limit.contains("100 tokens"));
        assert_eq!(r.status.tokens.unwrap().remaining, 0);
    }

    #[test]
    fn a_refund_lands_on_the_window_it_was_charged_to() {
        let limits = MemoryLimits::new();
        let key = spec(&[(LimitKind::Tokens, 1_000, 10)], None);
        let scopes = one("key", "k", &key);
        let demand = |tokens| Demand {
            tokens,
            cost: UsdNanos::ZERO,
        };
        let window = |t| admit(&limits, &scopes, demand(0), t).unwrap().status.tokens;
        // Estimated at 400 tokens late in one window; it used 100, known in the next window,
        // where another request has been charged 300 meanwhile.
        let early = admit(&limits, &scopes, demand(400), 19_000).unwrap();
        let _other = admit(&limits, &scopes, demand(300), 20_000).unwrap();
        limits.charge_tokens(&early, 100 - 400, 25_000);
        // half of the previous window's 100 still weighs, with the next window's 300
        assert_eq!(window(25_000).unwrap().remaining, 1_000 - 50 - 300);
        // A refund for a window gone altogether is dropped.
        let late = admit(&limits, &scopes, demand(200), 35_000).unwrap();
        let _now = admit(&limits, &scopes, demand(100), 50_000).unwrap();
        limits.charge_tokens(&late, -200, 50_000);
        assert_eq!(window(50_000).unwrap().remaining, 1_000 - 100);
        // A charge above the estimate lands where the usage becomes known: the window of 110
        // is the previous one by then, and weighs 90%.
        let big = admit(&limits, &scopes, demand(10), 51_000).unwrap();
        limits.charge_tokens(&big, 90, 61_000);
        assert_eq!(window(61_000).unwrap().remaining, 1_000 - 90 - 99);
    }

    #[test]
    fn counters_survive_a_new_spec_with_another_value() {
        let limits = MemoryLimits::new();
        let old = spec(&[(LimitKind::Requests, 2, 60)], None);
        let t = 7_000;
        for _ in 0..2 {
            admit(&limits, &one("key", "k", &old), Demand::default(), t).unwrap();
        }
        // a reload raises the limit: a new spec object, the same running window
        let raised = spec(&[(LimitKind::Requests, 3, 60)], None);
        let a = admit(&limits, &one("key", "k", &raised), Demand::default(), t).unwrap();
        assert_eq!(a.status.requests.unwrap().remaining, 0);
    }

    fn budgeted(daily: u64) -> LimitSpec {
        LimitSpec {
            budget: Some(Arc::new(BudgetSpec {
                daily: Some(UsdNanos(daily)),
                monthly: None,
                mode: budget::BudgetMode::Enforce,
                alert_at: SmallVec::from_slice(&[500]),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn budgets_hold_reservations_and_release_unsettled_ones() {
        let limits = MemoryLimits::new();
        let key = budgeted(100);
        let scopes = one("key", "k", &key);
        let t = 1_000_000_000_000;
        let demand = Demand {
            tokens: 0,
            cost: UsdNanos(40),
        };
        let mut a = admit(&limits, &scopes, demand, t).unwrap();
        let b = admit(&limits, &scopes, demand, t).unwrap();
        let r = admit(&limits, &scopes, demand, t).unwrap_err();
        assert_eq!(r.kind, RefusalKind::Budget);
        assert!(r.limit.contains("daily budget of $0.000000"), "{}", r.limit);
        // a settles at its real cost and crosses the 50% alert; b fails and releases its hold
        let alerts = limits.settle_cost(&mut a, UsdNanos(55), t);
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].kind, &*alerts[0].name), ("key", "k"));
        drop(b);
        let [daily, _] = limits.spend("key", "k", t);
        assert_eq!(
            (daily.spent, daily.reserved),
            (UsdNanos(55), UsdNanos::ZERO)
        );
        // settling twice changes nothing
        assert!(limits.settle_cost(&mut a, UsdNanos(55), t).is_empty());
        drop(a);
        assert_eq!(limits.spend("key", "k", t)[0].spent, UsdNanos(55));
        assert!(admit(&limits, &scopes, demand, t).is_ok());
    }

    #[test]
    fn persisted_spend_is_where_budgets_start() {
        let t = 1_000_000_000_000;
        let mut persisted = HashMap::new();
        persisted.insert(
            ("workload", Box::<str>::from("w")),
            PersistedSpend {
                today: UsdNanos(90),
                this_month: UsdNanos(500),
            },
        );
        let limits = MemoryLimits::with_persisted_spend(persisted, t);
        let wl = budgeted(100);
        let scopes = one("workload", "w", &wl);
        let over = Demand {
            tokens: 0,
            cost: UsdNanos(11),
        };
        assert_eq!(
            admit(&limits, &scopes, over, t).unwrap_err().kind,
            RefusalKind::Budget
        );
        let fits = Demand {
            tokens: 0,
            cost: UsdNanos(10),
        };
        assert!(admit(&limits, &scopes, fits, t).is_ok());
        let [daily, monthly] = limits.spend("workload", "w", t);
        assert_eq!((daily.spent, monthly.spent), (UsdNanos(90), UsdNanos(500)));
    }
}
