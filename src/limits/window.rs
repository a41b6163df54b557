//! The sliding-window estimate: two fixed windows aligned to multiples of the window length since
//! the Unix epoch, and the weighted sum `previous × (1 − elapsed fraction) + current`.
//!
//! Alignment to the epoch (rather than to a key's first request) makes every instance of a fleet
//! agree on window boundaries, so the same arithmetic can run in a shared store.
//!
//! # Error bound
//! The current aligned window never admits more than the limit (the estimate is at least the
//! current count). A sliding window of the same length spans at most two aligned windows, so it
//! sees at most 2 × limit — reached only by a burst at the very end of one window followed by a
//! burst right after the next one starts. For traffic spread evenly, the estimate is exact; for
//! steady hammering the admitted rate converges to the limit.

use std::time::Duration;

/// A counter of one sliding window, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounter {
    /// Index of the current aligned window (`now_ms / per_ms`).
    pub index: u64,
    pub current: u64,
    pub previous: u64,
}

impl WindowCounter {
    /// Moves the counter to the window containing `now_ms`.
    pub fn roll(&mut self, now_ms: u64, per_ms: u64) {
        let index = now_ms / per_ms;
        if index == self.index {
            return;
        }
        self.previous = if index == self.index + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.index = index;
    }

    /// Fraction of the current window already elapsed at `now_ms`.
    fn elapsed_fraction(&self, now_ms: u64, per_ms: u64) -> f64 {
        (now_ms.saturating_sub(self.index * per_ms)) as f64 / per_ms as f64
    }

    /// The sliding estimate at `now_ms` (after [`Self::roll`]).
    pub fn estimate(&self, now_ms: u64, per_ms: u64) -> f64 {
        self.previous as f64 * (1.0 - self.elapsed_fraction(now_ms, per_ms)) + self.current as f64
    }

    /// How long from `now_ms` until `cost` more fits under `limit` (zero if it fits now).
    pub fn wait_for(&self, now_ms: u64, per_ms: u64, limit: u64, cost: u64) -> Duration {
        let limit = limit as f64;
        let cost = cost as f64;
        if self.estimate(now_ms, per_ms) + cost <= limit {
            return Duration::ZERO;
        }
        let window_start = self.index * per_ms;
        let at_ms = if self.current as f64 + cost <= limit && self.previous > 0 {
            // Within this window, as the previous window's weight fades.
            let fraction = 1.0 - (limit - cost - self.current as f64) / self.previous as f64;
            window_start as f64 + fraction * per_ms as f64
        } else if self.current > 0 && cost <= limit {
            // In the next window, once this window's count (then "previous") has faded enough.
            let fraction = (1.0 - (limit - cost) / self.current as f64).max(0.0);
            (window_start + per_ms) as f64 + fraction * per_ms as f64
        } else {
            // A cost larger than the limit never fits; report a full window.
            (now_ms + per_ms) as f64
        };
        Duration::from_millis((at_ms.ceil() as u64).saturating_sub(now_ms).max(1))
    }

    /// How long until the estimate is back to zero, i.e. the window is fully reset.
    pub fn until_reset(&self, now_ms: u64, per_ms: u64) -> Duration {
        let window_end = (self.index + 1) * per_ms;
        let at = if self.current > 0 {
            window_end + per_ms
        } else if self.previous > 0 {
            window_end
        } else {
            now_ms
        };
        Duration::from_millis(at.saturating_sub(now_ms))
    }
}

/// Formats a duration as OpenAI's rate-limit headers do (Go's duration form): `12ms`, `1.5s`, `6m0s`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let seconds = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        let text = format!("{}.{:03}", rest / 1000, rest % 1000);
        format!("{}s", text.trim_end_matches('0'))
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER: u64 = 10_000;

    #[test]
    fn rolls_and_weights_the_previous_window() {
        let mut w = WindowCounter::default();
        w.roll(5_000, PER);
        w.current = 10;
        assert_eq!(w.estimate(5_000, PER), 10.0);
        w.roll(12_500, PER); // a quarter into the next window
        assert_eq!((w.previous, w.current), (10, 0));
        assert_eq!(w.estimate(12_500, PER), 7.5);
        w.roll(35_000, PER); // two windows later: all forgotten
        assert_eq!((w.previous, w.current), (0, 0));
    }

    #[test]
    fn wait_is_exact_for_both_cases() {
        // limit 10; previous 10, current 5 at 50%: estimate 10, the next fits when 10(1-f)+5+1 <= 10 → f = 0.6
        let w = WindowCounter {
            index: 1,
            current: 5,
            previous: 10,
        };
        assert_eq!(w.wait_for(15_000, PER, 10, 1), Duration::from_millis(1_000));
        // current full: wait into the next window until 10(1-f)+1 <= 10 → f = 0.1
        let w = WindowCounter {
            index: 1,
            current: 10,
            previous: 0,
        };
        assert_eq!(w.wait_for(15_000, PER, 10, 1), Duration::from_millis(6_000));
        assert_eq!(
            WindowCounter {
                index: 1,
                current: 3,
                previous: 0
            }
            .wait_for(15_000, PER, 10, 1),
            Duration::ZERO
        );
        // after waiting, the request fits
        let w = WindowCounter {
            index: 1,
            current: 5,
            previous: 10,
        };
        assert!(w.estimate(16_000, PER) + 1.0 <= 10.0);
    }

    #[test]
    fn reset_times() {
        let w = WindowCounter {
            index: 1,
            current: 1,
            previous: 0,
        };
        assert_eq!(w.until_reset(15_000, PER), Duration::from_millis(15_000));
        let w = WindowCounter {
            index: 1,
            current: 0,
            previous: 3,
        };
        assert_eq!(w.until_reset(15_000, PER), Duration::from_millis(5_000));
        assert_eq!(
            WindowCounter::default().until_reset(15_000, PER),
            Duration::ZERO
        );
    }

    #[test]
    fn openai_durations() {
        assert_eq!(openai_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_millis(61_250)), "1m1.25s");
        assert_eq!(
            openai_duration(Duration::from_secs(3600 * 25 + 1)),
            "25h0m1s"
        );
        assert_eq!(openai_duration(Duration::ZERO), "0ms");
    }
}
