//! The brute-force guard: failed authentications counted exactly per client address, so that an
//! address guessing keys is refused while no other address is charged for its guesses.
//!
//! The guard is consulted only once a presented key has failed to authenticate, so a valid key
//! never meets it, and a request with one costs nothing here.
//!
//! An IPv4 address counts alone; an IPv6 address counts with its /64, the block one subscriber or
//! host is routinely given, so that walking through a prefix earns no fresh allowance. Each origin
//! keeps a sliding window ([`WindowCounter`]) on a monotonic clock. Memory is bounded: the origins
//! live in shards, each a map in the order of their latest counted failure, which is also the order
//! in which they expire; a failure first drops the expired origins at the front, and a new origin
//! evicts the oldest when its shard is full. Evicting forgets an offender early, which errs towards
//! letting a client try again, never towards refusing one.

use super::window::WindowCounter;
use hashlink::LinkedHashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Origins remembered at most, over all shards.
const CAPACITY: usize = 1 << 16;
/// Shards, so that threads counting failures of different origins rarely wait for each other.
const SHARDS: usize = 16;

pub struct AuthGuard {
    shards: Box<[Mutex<Shard>]>,
    /// Picks an origin's shard; seeded per process, so that no client can aim at one shard.
    spread: RandomState,
    shard_capacity: usize,
    max_failures: u64,
    per_ms: u64,
    started: Instant,
}

/// The origins of one shard, least recently failed first.
type Shard = LinkedHashMap<Origin, WindowCounter>;

/// What failures are counted against: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    V4(u32),
    V6Net(u64),
}

impl Origin {
    fn of(ip: IpAddr) -> Origin {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Origin::V4(v4.to_bits()),
            IpAddr::V6(v6) => Origin::V6Net((v6.to_bits() >> 64) as u64),
        }
    }
}

impl AuthGuard {
    pub fn new(max_failures: u32, per: Duration) -> AuthGuard {
        AuthGuard::with_capacity(max_failures, per, CAPACITY)
    }

    fn with_capacity(max_failures: u32, per: Duration, capacity: usize) -> AuthGuard {
        AuthGuard {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            spread: RandomState::new(),
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            max_failures: u64::from(max_failures),
            per_ms: u64::try_from(per.as_millis()).unwrap_or(u64::MAX).max(1),
            started: Instant::now(),
        }
    }

    /// Counts a failed authentication from `ip`, unless its origin has already failed
    /// `max_failures` times in the window: then the failure is refused rather than counted, and
    /// the answer is how long until one more would be let through.
    pub fn record_failure(&self, ip: IpAddr) -> Option<Duration> {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.record_failure_at(Origin::of(ip), now_ms)
    }

    fn record_failure_at(&self, origin: Origin, now_ms: u64) -> Option<Duration> {
        let (per, max) = (self.per_ms, self.max_failures);
        // Nothing in here can panic midway, so a poisoned lock still guards consistent counts.
        let mut shard = self.shards[self.shard_of(origin)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while shard
            .front()
            .is_some_and(|(_, w)| w.until_reset(now_ms, per).is_zero())
        {
            shard.pop_front();
        }
        if let Some(window) = shard.get_mut(&origin) {
            window.roll(now_ms, per);
            if !window.fits(now_ms, per, max, 1) {
                return Some(window.wait_for(now_ms, per, max, 1));
            }
            window.current = window.current.saturating_add(1);
            shard.to_back(&origin);
            return None;
        }
        if shard.len() >= self.shard_capacity {
            shard.pop_front();
        }
        let mut window = WindowCounter::default();
        window.roll(now_ms, per);
        window.current = 1;
        shard.insert(origin, window);
        None
    }

    fn shard_of(&self, origin: Origin) -> usize {
        self.spread.hash_one(origin) as usize % self.shards.len()
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_past_max_failures_per_address_only() {
        let guard = AuthGuard::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(guard.record_failure(ip("192.0.2.1")), None);
        }
        let retry = guard.record_failure(ip("192.0.2.1")).expect("refused");
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(120));
        assert_eq!(guard.record_failure(ip("192.0.2.2")), None);
    }

    #[test]
    fn counts_are_exact_across_many_addresses() {
        let guard = AuthGuard::new(2, Duration::from_secs(60));
        for i in 0..20_000u32 {
            let a = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            assert_eq!(guard.record_failure(a), None, "{a}");
        }
        assert_eq!(guard.remembered(), 20_000);
        assert_eq!(guard.record_failure(ip("10.0.0.5")), None);
        assert!(guard.record_failure(ip("10.0.0.5")).is_some());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let guard = AuthGuard::new(2, Duration::from_secs(60));
        assert_eq!(guard.record_failure(ip("2001:db8:1:2::1")), None);
        assert_eq!(guard.record_failure(ip("2001:db8:1:2:ffff::9")), None);
        assert!(guard.record_failure(ip("2001:db8:1:2:abcd::")).is_some());
        // the neighbouring /64 is another origin
        assert_eq!(guard.record_failure(ip("2001:db8:1:3::1")), None);
        assert_eq!(guard.remembered(), 2);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let guard = AuthGuard::new(1, Duration::from_secs(60));
        assert_eq!(guard.record_failure(ip("::ffff:192.0.2.1")), None);
        assert!(guard.record_failure(ip("192.0.2.1")).is_some());
        // not lumped into the /64 of all mapped addresses either
        assert_eq!(guard.record_failure(ip("::ffff:192.0.2.2")), None);
    }

    #[test]
    fn failures_age_out_of_the_window_and_memory() {
        let guard = AuthGuard::new(2, Duration::from_secs(10));
        let a = Origin::of(ip("192.0.2.1"));
        assert_eq!(guard.record_failure_at(a, 1_000), None);
        assert_eq!(guard.record_failure_at(a, 2_000), None);
        // refused until the window has slid past enough of the two failures
        assert_eq!(
            guard.record_failure_at(a, 5_000),
            Some(Duration::from_millis(10_000))
        );
        assert!(guard.record_failure_at(a, 14_000).is_some());
        assert_eq!(guard.record_failure_at(a, 15_000), None);
        // A failure counts for two windows at most; then its origin is dropped by the next
        // failure counted in the same shard.
        let neighbour = (1..)
            .map(Origin::V4)
            .find(|o| *o != a && guard.shard_of(*o) == guard.shard_of(a))
            .unwrap();
        assert_eq!(guard.record_failure_at(neighbour, 29_999), None);
        assert_eq!(guard.remembered(), 2);
        assert_eq!(guard.record_failure_at(neighbour, 30_000), None);
        assert_eq!(guard.remembered(), 1);
    }

    #[test]
    fn memory_is_capped_by_evicting_the_least_recent_failures() {
        let capacity = 4 * SHARDS;
        let guard = AuthGuard::with_capacity(1, Duration::from_secs(60), capacity);
        let origin = |i: u32| Origin::V4(0x0a00_0000 + i);
        for i in 0..10_000 {
            assert_eq!(guard.record_failure_at(origin(i), 1_000), None);
        }
        assert!(guard.remembered() <= capacity);
        // the latest failure of each shard is remembered; the first ones were evicted
        assert!(guard.record_failure_at(origin(9_999), 1_000).is_some());
        let forgotten = (0..100)
            .filter(|i| guard.record_failure_at(origin(*i), 1_000).is_none())
            .count();
        assert_eq!(forgotten, 100);
        assert!(guard.remembered() <= capacity);
    }
}
