//! Prices and costs in integer nano-dollars.
//!
//! Money never passes through floating point after the policy is read: a price is held as
//! micro-dollars per million tokens (exact for any price written with up to six decimals), and a
//! request's cost is `tokens × price / 1000` nano-dollars, rounded once per request to the
//! nearest nano-dollar. Summing millions of requests therefore drifts by at most half a
//! nano-dollar per request, and every total is reproducible to the last digit.

use super::Usage;
use std::fmt;

/// An amount of US dollars in nano-dollars (10⁻⁹ USD). `u64` holds up to about 18 billion USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsdNanos(pub u64);

/// Nano-dollars in one dollar.
pub const NANOS_PER_USD: u64 = 1_000_000_000;

impl UsdNanos {
    pub const ZERO: UsdNanos = UsdNanos(0);

    /// Reads a policy amount such as `20` or `0.15`. `None` when negative, not finite or too large.
    pub fn from_usd(usd: f64) -> Option<UsdNanos> {
        let nanos = (usd * NANOS_PER_USD as f64).round();
        (usd.is_finite() && usd >= 0.0 && nanos < u64::MAX as f64).then_some(UsdNanos(nanos as u64))
    }

    /// As dollars, for JSON and metrics (the integer stays the record of truth).
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD as f64
    }

    pub fn saturating_add(self, other: UsdNanos) -> UsdNanos {
        UsdNanos(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: UsdNanos) -> UsdNanos {
        UsdNanos(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for UsdNanos {
    /// `12.345678` (dollars with six decimals, truncated: never shows more than was spent).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0 / 1000;
        write!(f, "{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    }
}

/// A model's price, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// Cached prompt tokens; the input price when the model has no separate one.
    pub cached_input: u64,
    /// Prompt tokens written to the provider's cache; the input price when the model has no
    /// separate one.
    pub cache_write: u64,
}

/// A model's price as the policy writes it: USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsdPerMtok {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
}

impl Price {
    /// From the policy's USD-per-million-tokens figures. `None` when one is negative or absurd.
    pub fn from_usd_per_mtok(usd: UsdPerMtok) -> Option<Price> {
        let micros = |usd: f64| {
            let m = (usd * 1e6).round();
            (usd.is_finite() && usd >= 0.0 && m < 1e15).then_some(m as u64)
        };
        let input = micros(usd.input)?;
        let or_input = |price: Option<f64>| price.map_or(Some(input), micros);
        Some(Price {
            input,
            output: micros(usd.output)?,
            cached_input: or_input(usd.cached_input)?,
            cache_write: or_input(usd.cache_write)?,
        })
    }

    /// The cost of `usage`: uncached prompt, cached prompt, cache-write prompt and completion
    /// tokens each at their price.
    pub fn cost(&self, usage: &Usage) -> UsdNanos {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
        let uncached = usage.prompt_tokens - cached - written;
        // u128: tokens (≤ 2⁶⁴) × price (< 10¹⁵) cannot overflow before the division.
        let micro_mtok = uncached as u128 * self.input as u128
            + cached as u128 * self.cached_input as u128
            + written as u128 * self.cache_write as u128
            + usage.completion_tokens as u128 * self.output as u128;
        // micro-dollars per million tokens × tokens / 1000 = nano-dollars; rounded half up.
        let nanos = (micro_mtok + 500) / 1000;
        UsdNanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The most a request can cost: `max_output` completion tokens, and every prompt token at
    /// the dearest of the prompt prices (a cache write usually costs more than plain input).
    pub fn worst_case(&self, prompt_tokens: u64, max_output: u64) -> UsdNanos {
        let all_at = |cached_tokens, cache_write_tokens| {
            self.cost(&Usage {
                prompt_tokens,
                completion_tokens: max_output,
                cached_tokens,
                cache_write_tokens,
            })
        };
        all_at(0, 0)
            .max(all_at(prompt_tokens, 0))
            .max(all_at(0, prompt_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(p: u64, c: u64, cached: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
            cache_write_tokens: 0,
        }
    }

    fn price(input: f64, output: f64, cached_input: Option<f64>) -> Option<Price> {
        Price::from_usd_per_mtok(UsdPerMtok {
            input,
            output,
            cached_input,
            cache_write: None,
        })
    }

    #[test]
    fn prices_are_exact_to_the_micro_dollar_per_mtok() {
        let p = price(2.5, 10.0, Some(1.25)).unwrap();
        assert_eq!(
            (p.input, p.output, p.cached_input, p.cache_write),
            (2_500_000, 10_000_000, 1_250_000, 2_500_000)
        );
        let cheap = price(0.0375, 0.15, None).unwrap();
        assert_eq!((cheap.input, cheap.cached_input), (37_500, 37_500));
        assert!(price(-1.0, 1.0, None).is_none());
        assert!(price(f64::NAN, 1.0, None).is_none());
    }

    #[test]
    fn cache_writes_and_reads_are_priced_apart() {
        // Claude Sonnet's prices: $3 input, $15 output, $0.30 cache read, $3.75 cache write.
        let p = Price::from_usd_per_mtok(UsdPerMtok {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write: Some(3.75),
        })
        .unwrap();
        // 100 plain + 2000 read + 1000 written prompt tokens, 50 output tokens
        let u = Usage {
            prompt_tokens: 3100,
            completion_tokens: 50,
            cached_tokens: 2000,
            cache_write_tokens: 1000,
        };
        assert_eq!(
            p.cost(&u),
            UsdNanos(100 * 3000 + 2000 * 300 + 1000 * 3750 + 50 * 15_000)
        );
        // the worst case of a reservation is every prompt token written to the cache
        assert_eq!(p.worst_case(1000, 10), UsdNanos(1000 * 3750 + 10 * 15_000));
        // more cache tokens than prompt tokens (a provider bug) never underflows
        let odd = Usage {
            prompt_tokens: 10,
            completion_tokens: 0,
            cached_tokens: 6,
            cache_write_tokens: 50,
        };
        assert_eq!(p.cost(&odd), UsdNanos(6 * 300 + 4 * 3750));
    }

    #[test]
    fn cost_splits_cached_prompt_tokens() {
        let p = price(2.5, 10.0, Some(1.25)).unwrap();
        // 1000 uncached × 2.5 + 1000 cached × 1.25 + 500 × 10, per million tokens
        let cost = p.cost(&usage(2000, 500, 1000));
        assert_eq!(cost, UsdNanos(2_500_000 + 1_250_000 + 5_000_000));
        assert_eq!(cost.to_string(), "0.008750");
        // more cached than prompt tokens (a provider bug) never underflows
        assert_eq!(p.cost(&usage(10, 0, 50)), UsdNanos(12_500));
    }

    #[test]
    fn a_million_requests_sum_without_drift() {
        // $0.15/Mtok: one token costs 0.15 micro-dollars = 150 nano-dollars, exactly
        let p = price(0.15, 0.6, None).unwrap();
        let one = p.cost(&usage(7, 3, 0));
        let total = (0..1_000_000).fold(UsdNanos::ZERO, |sum, _| sum.saturating_add(one));
        assert_eq!(total, UsdNanos(1_000_000 * (7 * 150 + 3 * 600)));
        assert_eq!(total.to_string(), "2.850000");
    }

    #[test]
    fn worst_case_assumes_no_cache_discount() {
        let p = price(1.0, 2.0, Some(0.5)).unwrap();
        assert_eq!(p.worst_case(1000, 100), UsdNanos(1_000_000 + 200_000));
    }

    #[test]
    fn usd_amounts_round_trip() {
        assert_eq!(UsdNanos::from_usd(20.0), Some(UsdNanos(20 * NANOS_PER_USD)));
        assert_eq!(UsdNanos::from_usd(0.1), Some(UsdNanos(100_000_000)));
        assert_eq!(UsdNanos::from_usd(-0.5), None);
        assert_eq!(UsdNanos(1_234_567_891).to_string(), "1.234567");
        assert!((UsdNanos(1_500_000_000).as_usd() - 1.5).abs() < 1e-12);
    }
}
