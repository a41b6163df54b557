//! The brute-force guard: failed authentications per client IP, counted with pingora-limits'
//! estimator (a shared count-min sketch suits abuse limits, where over-counting is harmless), and
//! refused with 429 before any key lookup once over the limit.

use pingora_limits::rate::Rate;
use std::net::IpAddr;
use std::time::Duration;

pub struct AuthGuard {
    failures: Rate,
    max_failures: f64,
    per: Duration,
}

impl AuthGuard {
    /// `per` is rounded up to whole seconds: pingora-limits' windows under a second can race.
    pub fn new(max_failures: u32, per: Duration) -> AuthGuard {
        let per = Duration::from_secs(per.as_secs().max(1) + u64::from(per.subsec_nanos() > 0));
        AuthGuard {
            failures: Rate::new(per),
            max_failures: f64::from(max_failures),
            per,
        }
    }

    /// Whether `ip` is over the limit of failures.
    pub fn blocked(&self, ip: &IpAddr) -> bool {
        self.failures.rate_with(ip, |c| {
            c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
        }) >= self.max_failures
    }

    pub fn record_failure(&self, ip: &IpAddr) {
        self.failures.observe(ip, 1);
    }

    /// A conservative retry-after: one full window.
    pub fn retry_after(&self) -> Duration {
        self.per
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_per_ip_only() {
        let guard = AuthGuard::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!guard.blocked(&a));
            guard.record_failure(&a);
        }
        assert!(guard.blocked(&a));
        assert!(!guard.blocked(&b));
    }
}
