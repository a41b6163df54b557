//! What the console and the admin API show of recent use, kept in memory by the accounting
//! thread as it books each finished request (never on a request thread): when each key was last
//! used, each key's latest requests, and this UTC day's and month's requests, tokens and cost per
//! key, per workload and in all (with the requests a guardrail blocked), and today's error rate,
//! latency and refusals.
//!
//! The totals follow the usage database's rules (billable requests, and blocked ones counted
//! apart) and are seeded from it
//! at start, so a restart keeps them; last-used times are persisted beside usage. The latest
//! requests are kept for the most recently used keys only ([`RECENT_KEYS`] of them, each with at
//! most [`RECENT_PER_KEY`]), so that a policy of 100,000 busy keys cannot grow memory without
//! bound.

use super::{RequestRecord, BLOCKED};
use crate::limits::budget::Calendar;
use crate::policy::guardrails::Fired;
use crate::usage::cost::UsdNanos;
use hashlink::LruCache;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

/// Requests kept per key.
pub const RECENT_PER_KEY: usize = 100;

/// Keys whose latest requests are kept; the least recently used one's go first.
pub const RECENT_KEYS: usize = 4096;

/// Requests, tokens and cost; and requests a guardrail blocked, which are not among `requests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub tokens: u64,
    pub cost: UsdNanos,
    pub blocked: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        *self = self.plus(other);
    }

    /// The sum, each total saturating.
    pub fn plus(self, other: Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_add(other.requests),
            tokens: self.tokens.saturating_add(other.tokens),
            cost: self.cost.saturating_add(other.cost),
            blocked: self.blocked.saturating_add(other.blocked),
        }
    }
}

/// Totals of this UTC day and month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Periods {
    pub today: Totals,
    pub month: Totals,
}

impl Periods {
    fn add(&mut self, t: Totals) {
        self.today.add(t);
        self.month.add(t);
    }
}

/// One finished request, as the key's recent requests list it.
#[derive(Debug, Clone)]
pub struct Recent {
    pub finished_at_ms: u64,
    pub request_id: Box<str>,
    pub model: Option<Box<str>>,
    pub status: u16,
    pub tokens: u64,
    pub cost: UsdNanos,
    pub latency_ms: u64,
    /// The refusal's metrics reason, when keygate refused it.
    pub refusal: Option<&'static str>,
    pub error: Option<&'static str>,
    /// The guardrails that fired on it, as its audit line lists them.
    pub guardrails: Box<[Fired]>,
}

/// Totals per key id or workload name.
pub type PeriodsByName = HashMap<Box<str>, Periods>;

/// A key's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyFigures {
    /// Milliseconds since the Unix epoch; 0 for never (as far as is known).
    pub last_used_ms: u64,
    pub periods: Periods,
}

/// Today's health of the requests this process finished.
#[derive(Debug, Clone)]
pub struct DayHealth {
    /// Requests answered (with any status).
    pub answered: u64,
    /// Of those, answered with a status of 500 or more.
    pub errors: u64,
    /// Milliseconds, median and 95th percentile, of requests sent upstream; `None` before any.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub refusals: BTreeMap<&'static str, u64>,
}

struct State {
    /// The UTC day and month start the figures are for, as days since the epoch.
    day: u32,
    month_start: u32,
    keys: HashMap<Box<str>, KeyFigures>,
    workloads: HashMap<Box<str>, Periods>,
    all: Periods,
    recent: LruCache<Box<str>, VecDeque<Recent>>,
    answered: u64,
    errors: u64,
    /// Latency in milliseconds, three significant figures.
    latency: Histogram<u64>,
    refusals: BTreeMap<&'static str, u64>,
}

impl State {
    /// Starts a new day (and month) when `now_ms` is in one.
    fn roll(&mut self, now_ms: u64) {
        let cal = Calendar::at_ms(now_ms);
        if cal.day <= self.day {
            return;
        }
        let new_month = cal.month_start_day() != self.month_start;
        let reset = |p: &mut Periods| {
            p.today = Totals::default();
            if new_month {
                p.month = Totals::default();
            }
        };
        self.keys.values_mut().for_each(|k| reset(&mut k.periods));
        self.workloads.values_mut().for_each(reset);
        reset(&mut self.all);
        self.answered = 0;
        self.errors = 0;
        self.latency.reset();
        self.refusals.clear();
        self.day = cal.day;
        self.month_start = cal.month_start_day();
    }
}

/// The shared figures: written by the accounting thread, read by the admin API.
pub struct Activity {
    state: Mutex<State>,
}

/// What the usage database holds for the current day and month, to start from.
#[derive(Debug, Default)]
pub struct Seed {
    pub keys: PeriodsByName,
    pub workloads: PeriodsByName,
    pub last_used_ms: HashMap<Box<str>, u64>,
}

impl Activity {
    /// Figures for the day and month of `now_ms`, starting from `seed`.
    pub fn new(seed: Seed, now_ms: u64) -> Activity {
        let cal = Calendar::at_ms(now_ms);
        let mut keys: HashMap<Box<str>, KeyFigures> = seed
            .keys
            .into_iter()
            .map(|(id, periods)| {
                (
                    id,
                    KeyFigures {
                        last_used_ms: 0,
                        periods,
                    },
                )
            })
            .collect();
        for (id, ms) in seed.last_used_ms {
            keys.entry(id).or_default().last_used_ms = ms;
        }
        let mut all = Periods::default();
        for p in seed.workloads.values() {
            all.today.add(p.today);
            all.month.add(p.month);
        }
        Activity {
            state: Mutex::new(State {
                day: cal.day,
                month_start: cal.month_start_day(),
                keys,
                workloads: seed.workloads,
                all,
                recent: LruCache::new(RECENT_KEYS),
                answered: 0,
                errors: 0,
                latency: Histogram::new(3).expect("3 significant figures are supported"),
                refusals: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Books one finished request (the accounting thread).
    pub fn note(&self, r: &RequestRecord) {
        let mut state = self.state();
        state.roll(r.finished_at_ms);
        let latency_ms = u64::try_from(r.latency.as_millis()).unwrap_or(u64::MAX);
        if r.status != 0 {
            state.answered += 1;
            if r.status >= 500 {
                state.errors += 1;
            }
        }
        if r.billable {
            // Saturating: a latency past the histogram's range counts as its highest.
            state.latency.saturating_record(latency_ms);
        }
        if let Some(reason) = r.refusal {
            *state.refusals.entry(reason).or_default() += 1;
        }
        let Some(key) = r.key.as_deref() else {
            return;
        };
        let tokens = r
            .usage
            .prompt_tokens
            .saturating_add(r.usage.completion_tokens);
        // As the usage database books them: billable requests, and blocked ones apart.
        let blocked = r.refusal == Some(BLOCKED);
        let booked = ((r.billable || blocked) && r.model.is_some()).then_some(Totals {
            requests: u64::from(r.billable),
            tokens,
            cost: r.cost,
            blocked: u64::from(blocked),
        });
        let figures = match state.keys.get_mut(&*key.id) {
            Some(f) => f,
            None => state.keys.entry(key.id.clone()).or_default(),
        };
        figures.last_used_ms = figures.last_used_ms.max(r.finished_at_ms);
        if let Some(t) = booked {
            figures.periods.add(t);
            match state.workloads.get_mut(key.workload.name.as_str()) {
                Some(w) => w.add(t),
                None => {
                    let mut w = Periods::default();
                    w.add(t);
                    state.workloads.insert(key.workload.name.as_str().into(), w);
                }
            }
            state.all.add(t);
        }
        let recent = Recent {
            finished_at_ms: r.finished_at_ms,
            request_id: r.request_id.as_str().into(),
            model: r.model.as_deref().map(|m| m.name.as_str().into()),
            status: r.status,
            tokens,
            cost: r.cost,
            latency_ms,
            refusal: r.refusal,
            error: r.error,
            guardrails: r.guardrails.as_slice().into(),
        };
        let list = match state.recent.get_mut(&*key.id) {
            Some(list) => list,
            None => {
                state.recent.insert(key.id.clone(), VecDeque::new());
                state
                    .recent
                    .get_mut(&*key.id)
                    .expect("the list was just inserted")
            }
        };
        if list.len() == RECENT_PER_KEY {
            list.pop_front();
        }
        list.push_back(recent);
    }

    /// Key `id`'s figures as of `now_ms`.
    pub fn key(&self, id: &str, now_ms: u64) -> KeyFigures {
        let mut state = self.state();
        state.roll(now_ms);
        state.keys.get(id).copied().unwrap_or_default()
    }

    /// The figures of each key of `ids` as of `now_ms`, in that order, under one lock.
    pub fn figures<'a>(&self, ids: impl Iterator<Item = &'a str>, now_ms: u64) -> Vec<KeyFigures> {
        let mut state = self.state();
        state.roll(now_ms);
        ids.map(|id| state.keys.get(id).copied().unwrap_or_default())
            .collect()
    }

    /// The keys whose `value` is not `None`, in id order, with their figures as of `now_ms`:
    /// sorting a listing by a figure then touches the keys that have one, not every key.
    pub fn valued(
        &self,
        now_ms: u64,
        value: impl Fn(&KeyFigures) -> Option<u64>,
    ) -> Vec<(Box<str>, KeyFigures)> {
        let mut state = self.state();
        state.roll(now_ms);
        let mut out: Vec<(Box<str>, KeyFigures)> = state
            .keys
            .iter()
            .filter(|(_, f)| value(f).is_some())
            .map(|(id, f)| (id.clone(), *f))
            .collect();
        drop(state);
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The `n` keys that spent most today as of `now_ms`, highest first (ties by id).
    pub fn top_spenders(&self, n: usize, now_ms: u64) -> Vec<(Box<str>, Totals)> {
        let mut state = self.state();
        state.roll(now_ms);
        let mut spenders: Vec<(&Box<str>, Totals)> = state
            .keys
            .iter()
            .filter(|(_, f)| f.periods.today.requests > 0)
            .map(|(id, f)| (id, f.periods.today))
            .collect();
        spenders.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then_with(|| a.0.cmp(b.0)));
        spenders
            .into_iter()
            .take(n)
            .map(|(id, t)| (id.clone(), t))
            .collect()
    }

    /// Every workload's totals as of `now_ms`.
    pub fn workloads(&self, now_ms: u64) -> HashMap<Box<str>, Periods> {
        let mut state = self.state();
        state.roll(now_ms);
        state.workloads.clone()
    }

    /// Totals over every key as of `now_ms`, and today's health.
    pub fn overview(&self, now_ms: u64) -> (Periods, DayHealth) {
        let mut state = self.state();
        state.roll(now_ms);
        let percentile =
            |q: f64| (!state.latency.is_empty()).then(|| state.latency.value_at_quantile(q));
        let health = DayHealth {
            answered: state.answered,
            errors: state.errors,
            p50_ms: percentile(0.50),
            p95_ms: percentile(0.95),
            refusals: state.refusals.clone(),
        };
        (state.all, health)
    }

    /// Key `id`'s latest requests, newest first, at most `limit`.
    pub fn recent(&self, id: &str, limit: usize) -> Vec<Recent> {
        let state = self.state();
        state
            .recent
            .peek(id)
            .map(|list| list.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;

    #[test]
    fn a_new_day_starts_today_from_zero_and_a_new_month_the_month() {
        // 2026-01-30 and 2026-01-31, then 2026-02-01.
        let jan_30 = 20_483 * DAY_MS;
        let mut seed = Seed::default();
        let t = Totals {
            requests: 2,
            tokens: 30,
            cost: UsdNanos(5),
            blocked: 1,
        };
        seed.keys.insert("k".into(), Periods { today: t, month: t });
        seed.last_used_ms.insert("k".into(), jan_30);
        let activity = Activity::new(seed, jan_30);
        assert_eq!(activity.key("k", jan_30).periods.today, t);
        let next_day = activity.key("k", jan_30 + DAY_MS);
        assert_eq!(next_day.periods.today, Totals::default());
        assert_eq!(next_day.periods.month, t);
        assert_eq!(next_day.last_used_ms, jan_30);
        let next_month = activity.key("k", jan_30 + 2 * DAY_MS);
        assert_eq!(next_month.periods.month, Totals::default());
    }
}
