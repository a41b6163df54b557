//! Choosing an endpoint for one attempt: the provider's balance mode applied to the endpoints that
//! are up and not yet tried by this request.
//!
//! - `round_robin`: the smooth weighted schedule, skipping endpoints that are out or tried;
//! - `least_requests`: fewest in-flight requests per unit of weight, ties rotated;
//! - `p2c_latency`: two weighted-random candidates, the one with the lower latency moving average
//!   times (in-flight + 1) wins (an unmeasured endpoint counts as fastest, so it gets measured).
//!
//! An ejected endpoint whose back-off is over gets exactly one trial request. When every untried
//! endpoint is out, the least recently failed one is tried anyway: ejection must never leave a
//! provider with nothing to send to. Selection only reads atomics and never allocates.

use super::state::{now_ms, Availability, EndpointState};
use super::Provider;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How a provider spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastRequests,
    P2cLatency,
}

/// Endpoints already tried by one request (a provider has at most 256).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried([u64; 4]);

impl Tried {
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    #[inline]
    pub fn insert(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    #[inline]
    pub fn remove(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.0 = [0; 4];
    }
}

/// The chosen endpoint, and whether the request is its trial after an ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub trial: bool,
}

/// Picks an endpoint of `provider` not in `tried`, or `None` when every endpoint was tried.
pub fn select(provider: &Provider, states: &[Arc<EndpointState>], tried: &Tried) -> Option<Pick> {
    let n = states.len();
    if tried.len() >= n {
        return None;
    }
    let now = now_ms();
    let picked = match provider.balance {
        Balance::RoundRobin => round_robin(provider, states, tried, now),
        Balance::LeastRequests => least_requests(provider, states, tried, now),
        Balance::P2cLatency => p2c(provider, states, tried, now),
    };
    picked.or_else(|| least_recently_failed(states, tried))
}

/// Up endpoints are taken as they are; a due trial is taken only if this request wins it.
#[inline]
fn usable(state: &EndpointState, now: u64) -> Option<bool> {
    match state.availability(now) {
        Availability::Up => Some(false),
        Availability::TrialDue if state.claim_trial() => Some(true),
        _ => None,
    }
}

fn round_robin(
    provider: &Provider,
    states: &[Arc<EndpointState>],
    tried: &Tried,
    now: u64,
) -> Option<Pick> {
    let schedule = &provider.schedule;
    for _ in 0..schedule.len() {
        let index = schedule[provider.turn() % schedule.len()] as usize;
        if tried.contains(index) {
            continue;
        }
        if let Some(trial) = usable(&states[index], now) {
            return Some(Pick { index, trial });
        }
    }
    None
}

fn least_requests(
    provider: &Provider,
    states: &[Arc<EndpointState>],
    tried: &Tried,
    now: u64,
) -> Option<Pick> {
    let n = states.len();
    // Rotating the scan start spreads ties instead of piling them on the first endpoint.
    let start = provider.turn() % n;
    let mut best: Option<(usize, u64, u64)> = None; // (index, in_flight, weight)
    for k in 0..n {
        let i = (start + k) % n;
        if tried.contains(i) {
            continue;
        }
        match states[i].availability(now) {
            Availability::Up => {}
            // A due trial goes first: it is how an ejected endpoint comes back.
            Availability::TrialDue if states[i].claim_trial() => {
                return Some(Pick {
                    index: i,
                    trial: true,
                })
            }
            _ => continue,
        }
        let load = u64::from(states[i].in_flight());
        let weight = u64::from(provider.endpoints[i].weight.max(1));
        // load/weight < best_load/best_weight, without division
        if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
            best = Some((i, load, weight));
        }
    }
    best.map(|(index, _, _)| Pick {
        index,
        trial: false,
    })
}

fn p2c(
    provider: &Provider,
    states: &[Arc<EndpointState>],
    tried: &Tried,
    now: u64,
) -> Option<Pick> {
    let schedule = &provider.schedule;
    let r = splitmix64(provider.turn() as u64);
    // Two draws from the weighted schedule: weights shape the candidates, latency decides.
    let a = schedule[(r as u32 as usize) % schedule.len()] as usize;
    let b = schedule[((r >> 32) as usize) % schedule.len()] as usize;
    let cost = |i: usize| -> Option<u64> {
        if tried.contains(i) || states[i].availability(now) != Availability::Up {
            return None;
        }
        Some(states[i].latency_ewma_us() * (u64::from(states[i].in_flight()) + 1))
    };
    let winner = match (cost(a), cost(b)) {
        (Some(ca), Some(cb)) => Some(if cb < ca { b } else { a }),
        (Some(_), None) => Some(a),
        (None, Some(_)) => Some(b),
        (None, None) => None,
    };
    if let Some(index) = winner {
        return Some(Pick {
            index,
            trial: false,
        });
    }
    // Both draws unusable: scan for a due trial or the cheapest up endpoint.
    let mut best: Option<(usize, u64)> = None;
    for (i, state) in states.iter().enumerate() {
        if tried.contains(i) {
            continue;
        }
        match state.availability(now) {
            Availability::Up => {
                let c = state.latency_ewma_us() * (u64::from(state.in_flight()) + 1);
                if best.is_none_or(|(_, bc)| c < bc) {
                    best = Some((i, c));
                }
            }
            Availability::TrialDue if state.claim_trial() => {
                return Some(Pick {
                    index: i,
                    trial: true,
                })
            }
            _ => {}
        }
    }
    best.map(|(index, _)| Pick {
        index,
        trial: false,
    })
}

/// Every untried endpoint is out: the one whose last failure is oldest is the best bet.
fn least_recently_failed(states: &[Arc<EndpointState>], tried: &Tried) -> Option<Pick> {
    states
        .iter()
        .enumerate()
        .filter(|(i, _)| !tried.contains(*i))
        .min_by_key(|(_, s)| s.last_failure())
        .map(|(index, _)| Pick {
            index,
            trial: false,
        })
}

#[inline]
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Provider {
    /// The provider's turn counter: the round-robin position, the scan rotation, the p2c seed.
    #[inline]
    pub(crate) fn turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{FailureKind, UpstreamRegistry, EJECT_AFTER_FAILURES};
    use super::super::tests::provider;
    use super::*;

    #[test]
    fn round_robin_follows_weights_and_skips_tried() {
        let p = provider(&[3, 1, 1], Balance::RoundRobin);
        let reg = UpstreamRegistry::new();
        let states = reg.states(&p);
        let mut counts = [0; 3];
        for _ in 0..500 {
            counts[select(&p, states, &Tried::default()).unwrap().index] += 1;
        }
        assert_eq!(counts, [300, 100, 100]);
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(2);
        for _ in 0..10 {
            assert_eq!(select(&p, states, &tried).unwrap().index, 1);
        }
        tried.insert(1);
        assert_eq!(select(&p, states, &tried), None);
    }

    #[test]
    fn ejected_endpoints_are_skipped_but_never_all() {
        let p = provider(&[1, 1], Balance::RoundRobin);
        let reg = UpstreamRegistry::new();
        let states = reg.states(&p);
        for _ in 0..EJECT_AFTER_FAILURES {
            states[0].record_failure(FailureKind::Connect);
        }
        for _ in 0..10 {
            assert_eq!(select(&p, states, &Tried::default()).unwrap().index, 1);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        for _ in 0..EJECT_AFTER_FAILURES {
            states[1].record_failure(FailureKind::Connect);
        }
        // both out: the one that failed first is tried
        assert_eq!(select(&p, states, &Tried::default()).unwrap().index, 0);
    }

    #[test]
    fn least_requests_prefers_the_idle_endpoint() {
        let p = provider(&[1, 1, 1], Balance::LeastRequests);
        let reg = UpstreamRegistry::new();
        let states = reg.states(&p);
        let _busy: Vec<_> = (0..5).map(|_| states[0].begin(false)).collect();
        let _one = states[1].begin(false);
        for _ in 0..10 {
            assert_eq!(select(&p, states, &Tried::default()).unwrap().index, 2);
        }
    }

    #[test]
    fn p2c_prefers_the_faster_endpoint() {
        let p = provider(&[1, 1], Balance::P2cLatency);
        let reg = UpstreamRegistry::new();
        let states = reg.states(&p);
        states[0].record_latency(std::time::Duration::from_millis(200));
        states[1].record_latency(std::time::Duration::from_millis(10));
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[select(&p, states, &Tried::default()).unwrap().index] += 1;
        }
        // endpoint 0 wins only when both draws land on it (about a quarter of the time)
        assert!(counts[1] > 650 && counts[0] > 150, "{counts:?}");
    }

    #[test]
    fn tried_set() {
        let mut t = Tried::default();
        t.insert(0);
        t.insert(200);
        t.insert(300); // out of range: ignored
        assert!(t.contains(0) && t.contains(200) && !t.contains(1));
        assert_eq!(t.len(), 2);
        t.remove(200);
        assert!(!t.contains(200));
        t.clear();
        assert!(t.is_empty());
    }
}
