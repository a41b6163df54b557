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

    /// Takes `tokens` back from the aligned window `index`, if it is still the current or the
    /// previous one; a window already forgotten keeps nothing to take them from.
    pub fn refund(&mut self, index: u64, tokens: u64) {
        if index == self.index {
            self.current = self.current.saturating_sub(tokens);
        } else if index.checked_add(1) == Some(self.index) {
            self.previous = self.previous.saturating_sub(tokens);
        }
    }

    /// Fraction of the current window already elapsed at `now_ms`.
    fn elapsed_fraction(&self, now_ms: u64, per_ms: u64) -> f64 {
        (now_ms.saturating_sub(self.index * per_ms)) as f64 / per_ms as f64
    }

    /// The sliding estimate at `now_ms` (after [`Self::roll`]).
    pub fn estimate(&self, now_ms: u64, per_ms: u64) -> f64 {
        self.previous as f64 * (1.0 - self.elapsed_fraction(now_ms, per_ms)) + self.current as f64
    }

    /// The estimate times `per_ms`, in integers: exact, and free of the float conversions that
    /// otherwise dominate an admission check.
    #[inline]
    fn scaled_estimate(&self, now_ms: u64, per_ms: u64) -> u128 {
        u128::from(self.previous) * u128::from(self.rest_ms(now_ms, per_ms))
            + u128::from(self.current) * u128::from(per_ms)
    }

    /// What remains of the current window at `now_ms`: the weight of the previous one, in ms.
    #[inline]
    fn rest_ms(&self, now_ms: u64, per_ms: u64) -> u64 {
        per_ms - now_ms.saturating_sub(self.index * per_ms).min(per_ms)
    }

    /// Whether `cost` more stays within `limit` at `now_ms`.
    #[inline]
    pub fn fits(&self, now_ms: u64, per_ms: u64, limit: u64, cost: u64) -> bool {
        self.scaled_estimate(now_ms, per_ms) + u128::from(cost) * u128::from(per_ms)
            <= u128::from(limit) * u128::from(per_ms)
    }

    /// Whether the estimate is still under `limit` (a token window admits while it is).
    #[inline]
    pub fn below(&self, now_ms: u64, per_ms: u64, limit: u64) -> bool {
        self.scaled_estimate(now_ms, per_ms) < u128::from(limit) * u128::from(per_ms)
    }

    /// Whole units left under `limit` at `now_ms`:
    /// `floor((limit·per − previous·rest − current·per) / per)`
    /// `= limit − current − ceil(previous·rest / per)`, where `rest` is what remains of the window.
    #[inline]
    pub fn remaining(&self, now_ms: u64, per_ms: u64, limit: u64) -> u64 {
        let fading = u128::from(self.previous) * u128::from(self.rest_ms(now_ms, per_ms));
        // A 128-bit division is a library call; the product nearly always fits 64 bits.
        let faded = match u64::try_from(fading) {
            Ok(fading) => fading.div_ceil(per_ms),
            Err(_) => fading.div_ceil(u128::from(per_ms)) as u64,
        };
        limit.saturating_sub(self.current).saturating_sub(faded)
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
/// Written on the stack and without `core::fmt`, whose machinery cost more than the rest of the
/// response head's edits: two of these go into every response of a rate-limited key.
pub fn openai_duration(d: Duration) -> ShortText {
    // The longest form, `5124095576030h25m51.615s` for u64::MAX ms, fits.
    let mut text = ShortText::default();
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms < 1000 {
        text.push_number(ms);
        text.push(b"ms");
        return text;
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (seconds, millis) = (rest / 1000, rest % 1000);
    if hours > 0 {
        text.push_number(hours);
        text.push(b"h");
    }
    if hours > 0 || minutes > 0 {
        text.push_number(minutes);
        text.push(b"m");
    }
    text.push_number(seconds);
    if millis > 0 {
        // three digits, trailing zeros dropped: `.005`, `.25`, `.5`
        let digits = [millis / 100, millis / 10 % 10, millis % 10].map(|d| b'0' + d as u8);
        let len = 3 - digits.iter().rev().take_while(|&&d| d == b'0').count();
        text.push(b".");
        text.push(&digits[..len]);
    }
    text.push(b"s");
    text
}

/// A short ASCII text built without allocating.
#[derive(Clone, Copy, Default)]
pub struct ShortText {
    bytes: [u8; 32],
    len: usize,
}

impl ShortText {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever appended.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }

    /// Appends `ascii`; what would not fit is dropped (no caller comes near the capacity).
    fn push(&mut self, ascii: &[u8]) {
        let end = (self.len + ascii.len()).min(self.bytes.len());
        self.bytes[self.len..end].copy_from_slice(&ascii[..end - self.len]);
        self.len = end;
    }

    fn push_number(&mut self, n: u64) {
        self.push(itoa::Buffer::new().format(n).as_bytes());
    }
}

impl std::fmt::Debug for ShortText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq<&str> for ShortText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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
    fn integer_checks_match_the_weighted_estimate() {
        for previous in [0, 1, 7, 10, 999] {
            for current in [0, 1, 3, 10, 1000] {
                let w = WindowCounter {
                    index: 1,
                    current,
                    previous,
                };
                for now in (PER..2 * PER).step_by(250) {
                    let estimate = w.estimate(now, PER);
                    for limit in [1, 5, 10, 11, 500, 2000] {
                        // Where the float lands within rounding of the limit, only the
                        // integers are right.
                        let limit_f = limit as f64;
                        if (estimate + 1.0 - limit_f).abs() > 1e-9 {
                            assert_eq!(
                                w.fits(now, PER, limit, 1),
                                estimate + 1.0 <= limit_f,
                                "{w:?} at {now}, limit {limit}"
                            );
                        }
                        if (estimate - limit_f).abs() > 1e-9 {
                            assert_eq!(w.below(now, PER, limit), estimate < limit_f);
                        }
                        // Exactly what still fits; the float form can round a whole unit off.
                        let remaining = w.remaining(now, PER, limit);
                        let float = (limit as f64 - estimate).max(0.0).floor() as u64;
                        assert!(remaining.abs_diff(float) <= 1);
                        assert!(remaining == 0 || w.fits(now, PER, limit, remaining));
                        assert!(!w.fits(now, PER, limit, remaining + 1));
                    }
                }
            }
        }
        let huge = WindowCounter {
            index: 1,
            current: u64::MAX / 2,
            previous: u64::MAX / 2,
        };
        assert!(!huge.fits(PER, PER, u64::MAX / 2, 1));
        assert_eq!(huge.remaining(PER, PER, u64::MAX), 1);
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
        assert_eq!(openai_duration(Duration::from_millis(1005)), "1.005s");
        assert_eq!(openai_duration(Duration::from_millis(3_600_000)), "1h0m0s");
        assert_eq!(
            openai_duration(Duration::from_millis(u64::MAX)),
            "5124095576030h25m51.615s"
        );
    }
}
