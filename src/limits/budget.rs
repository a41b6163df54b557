//! Daily and monthly spending caps per key and workload, in UTC calendar periods.
//!
//! A budget is checked at admission against what was spent in the period plus what requests
//! still in flight have reserved: each request reserves its worst-case cost (prompt estimate plus
//! its maximum output at the model's price) and settles to its real cost when it ends. Fifty
//! concurrent requests therefore cannot all slip under a cap that only one of them fits: the
//! overshoot is bounded by the gap between a reservation and the real cost, which is zero unless
//! a provider bills more than `max_tokens` allows. `track` mode counts and alerts but never refuses.

use crate::usage::cost::UsdNanos;
use chrono::{Datelike, TimeZone, Utc};
use smallvec::SmallVec;

/// Whether a budget refuses requests or only watches spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BudgetMode {
    #[default]
    Enforce,
    Track,
}

/// A key's or workload's budget, compiled from the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpec {
    pub daily: Option<UsdNanos>,
    pub monthly: Option<UsdNanos>,
    pub mode: BudgetMode,
    /// Fractions of a cap, in per-mille, at which a one-time alert fires per period (ascending).
    pub alert_at: SmallVec<[u16; 4]>,
}

/// A calendar period of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Daily,
    Monthly,
}

impl Period {
    pub const ALL: [Period; 2] = [Period::Daily, Period::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Monthly => "monthly",
        }
    }
}

/// Which day and month a moment falls in, as plain numbers that order and compare cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    /// Days since 1970-01-01 (UTC).
    pub day: u32,
    /// `year × 12 + month0`.
    pub month: u32,
}

impl Calendar {
    pub fn at_ms(now_ms: u64) -> Calendar {
        let day = (now_ms / 86_400_000) as u32;
        let date = Utc
            .timestamp_millis_opt(now_ms as i64)
            .single()
            .unwrap_or_default();
        Calendar {
            day,
            month: date.year().max(0) as u32 * 12 + date.month0(),
        }
    }

    fn id(self, period: Period) -> u32 {
        match period {
            Period::Daily => self.day,
            Period::Monthly => self.month,
        }
    }

    /// The first day (days since the epoch) of this calendar's month.
    pub fn month_start_day(self) -> u32 {
        let (year, month0) = ((self.month / 12) as i32, self.month % 12);
        Utc.with_ymd_and_hms(year, month0 + 1, 1, 0, 0, 0)
            .single()
            .map_or(self.day, |d| (d.timestamp() / 86_400) as u32)
    }

    /// Time until the period ends, for messages.
    pub fn until_end(self, period: Period, now_ms: u64) -> std::time::Duration {
        let end_day = match period {
            Period::Daily => self.day + 1,
            Period::Monthly => {
                let next = Calendar {
                    day: self.day,
                    month: self.month + 1,
                };
                next.month_start_day()
            }
        };
        std::time::Duration::from_millis((end_day as u64 * 86_400_000).saturating_sub(now_ms))
    }
}

/// Spend of one scope in one period.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PeriodSpend {
    pub id: u32,
    pub spent: UsdNanos,
    pub reserved: UsdNanos,
    /// Bit `i` set once `alert_at[i]` fired in this period.
    pub alerted: u8,
}

impl PeriodSpend {
    fn roll(&mut self, id: u32) {
        if self.id != id {
            // Reservations made in the old period settle into it (and are ignored) on release.
            *self = PeriodSpend {
                id,
                ..Default::default()
            };
        }
    }
}

/// Spend of one scope: today and this month.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spend {
    pub daily: PeriodSpend,
    pub monthly: PeriodSpend,
}

impl Spend {
    pub fn period(&mut self, period: Period, cal: Calendar) -> &mut PeriodSpend {
        let p = match period {
            Period::Daily => &mut self.daily,
            Period::Monthly => &mut self.monthly,
        };
        p.roll(cal.id(period));
        p
    }

    /// Spend and reservations as of `cal` (zero for a period that has ended).
    pub fn current(&self, period: Period, cal: Calendar) -> (UsdNanos, UsdNanos) {
        let p = match period {
            Period::Daily => &self.daily,
            Period::Monthly => &self.monthly,
        };
        if p.id == cal.id(period) {
            (p.spent, p.reserved)
        } else {
            (UsdNanos::ZERO, UsdNanos::ZERO)
        }
    }

    /// Refuses `reserve` when it would take an enforced cap over; returns the period that refused.
    pub fn check(
        &mut self,
        spec: &BudgetSpec,
        reserve: UsdNanos,
        cal: Calendar,
    ) -> Option<(Period, UsdNanos)> {
        if spec.mode == BudgetMode::Track {
            return None;
        }
        for (period, cap) in [(Period::Daily, spec.daily), (Period::Monthly, spec.monthly)] {
            let Some(cap) = cap else { continue };
            let p = self.period(period, cal);
            let committed = p.spent.saturating_add(p.reserved);
            // Spend equal to the cap is allowed; a request that costs nothing always fits.
            if committed.saturating_add(reserve) > cap {
                return Some((period, cap));
            }
        }
        None
    }

    pub fn reserve(&mut self, amount: UsdNanos, cal: Calendar) {
        for period in Period::ALL {
            let p = self.period(period, cal);
            p.reserved = p.reserved.saturating_add(amount);
        }
    }

    /// Drops a reservation made at `reserved_at` without booking anything (a request that ended
    /// without cost). A period that has rolled over since holds no reservation to drop.
    pub fn release(&mut self, reserved: UsdNanos, reserved_at: Calendar) {
        for (p, id) in [
            (&mut self.daily, reserved_at.day),
            (&mut self.monthly, reserved_at.month),
        ] {
            if p.id == id {
                p.reserved = p.reserved.saturating_sub(reserved);
            }
        }
    }

    /// Releases a reservation made at `reserved_at` and books `actual` at `cal`; returns the
    /// alerts this spend crossed, each once per period.
    pub fn settle(
        &mut self,
        spec: &BudgetSpec,
        reserved: UsdNanos,
        reserved_at: Calendar,
        actual: UsdNanos,
        cal: Calendar,
    ) -> SmallVec<[BudgetAlert; 1]> {
        let mut alerts = SmallVec::new();
        for period in Period::ALL {
            let p = self.period(period, cal);
            if reserved_at.id(period) == p.id {
                p.reserved = p.reserved.saturating_sub(reserved);
            }
            p.spent = p.spent.saturating_add(actual);
            let cap = match period {
                Period::Daily => spec.daily,
                Period::Monthly => spec.monthly,
            };
            let Some(cap) = cap.filter(|c| c.0 > 0) else {
                continue;
            };
            for (i, &permille) in spec.alert_at.iter().enumerate().take(8) {
                let threshold = (cap.0 as u128 * permille as u128 / 1000) as u64;
                if p.alerted & (1 << i) == 0 && p.spent.0 >= threshold {
                    p.alerted |= 1 << i;
                    alerts.push(BudgetAlert {
                        period,
                        permille,
                        spent: p.spent,
                        cap,
                    });
                }
            }
        }
        alerts
    }
}

/// A budget crossed one of its `alert_at` fractions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetAlert {
    pub period: Period,
    pub permille: u16,
    pub spent: UsdNanos,
    pub cap: UsdNanos,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(daily: u64, monthly: Option<u64>, mode: BudgetMode) -> BudgetSpec {
        BudgetSpec {
            daily: Some(UsdNanos(daily)),
            monthly: monthly.map(UsdNanos),
            mode,
            alert_at: SmallVec::from_slice(&[500, 800]),
        }
    }

    #[test]
    fn calendar_periods_are_utc() {
        // 2026-03-31T23:59:59.999Z and a millisecond later
        let before = Calendar::at_ms(1_775_001_599_999);
        let after = Calendar::at_ms(1_775_001_600_000);
        assert_eq!(after.day, before.day + 1);
        assert_eq!(after.month, before.month + 1);
        assert_eq!(before.month, 2026 * 12 + 2);
        assert_eq!(after.month_start_day(), after.day);
        assert_eq!(before.month_start_day(), before.day - 30);
        assert_eq!(
            before.until_end(Period::Monthly, 1_775_001_599_999),
            std::time::Duration::from_millis(1)
        );
    }

    #[test]
    fn reservations_count_against_the_cap_until_settled() {
        let s = spec(100, None, BudgetMode::Enforce);
        let cal = Calendar::at_ms(1_000_000_000_000);
        let mut spend = Spend::default();
        for _ in 0..3 {
            assert!(spend.check(&s, UsdNanos(30), cal).is_none());
            spend.reserve(UsdNanos(30), cal);
        }
        assert_eq!(
            spend.check(&s, UsdNanos(30), cal),
            Some((Period::Daily, UsdNanos(100)))
        );
        // one settles cheaper than reserved: room again
        let alerts = spend.settle(&s, UsdNanos(30), cal, UsdNanos(5), cal);
        assert!(alerts.is_empty());
        assert!(spend.check(&s, UsdNanos(30), cal).is_none());
        assert_eq!(
            spend.current(Period::Daily, cal),
            (UsdNanos(5), UsdNanos(60))
        );
    }

    #[test]
    fn alerts_fire_once_per_period_and_track_never_refuses() {
        let s = spec(100, Some(1000), BudgetMode::Track);
        let cal = Calendar::at_ms(1_000_000_000_000);
        let mut spend = Spend::default();
        let a = spend.settle(&s, UsdNanos(0), cal, UsdNanos(60), cal);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].period, a[0].permille), (Period::Daily, 500));
        assert!(spend
            .settle(&s, UsdNanos(0), cal, UsdNanos(1), cal)
            .is_empty());
        assert!(spend.check(&s, UsdNanos(10_000), cal).is_none());
        // the next day starts over, the month does not
        let tomorrow = Calendar::at_ms(1_000_000_000_000 + 86_400_000);
        assert_eq!(tomorrow.month, cal.month);
        let a = spend.settle(&s, UsdNanos(0), tomorrow, UsdNanos(90), tomorrow);
        let got: Vec<_> = a.iter().map(|a| (a.period, a.permille)).collect();
        assert_eq!(got, [(Period::Daily, 500), (Period::Daily, 800)]);
        assert_eq!(spend.current(Period::Monthly, tomorrow).0, UsdNanos(151));
    }

    #[test]
    fn a_reservation_from_yesterday_does_not_reduce_today() {
        let s = spec(100, None, BudgetMode::Enforce);
        let day1 = Calendar::at_ms(1_000_000_000_000);
        let day2 = Calendar::at_ms(1_000_000_000_000 + 86_400_000);
        let mut spend = Spend::default();
        spend.reserve(UsdNanos(50), day1);
        spend.reserve(UsdNanos(20), day2);
        spend.settle(&s, UsdNanos(50), day1, UsdNanos(40), day2);
        assert_eq!(
            spend.current(Period::Daily, day2),
            (UsdNanos(40), UsdNanos(20))
        );
    }
}
