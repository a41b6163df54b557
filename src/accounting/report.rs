//! Usage reports: the table `keygate usage` prints and the JSON the admin API returns for a key or
//! workload (persisted usage, plus live budget spend, reservations and what remains).

use crate::limits::budget::{BudgetMode, BudgetSpec, Period};
use crate::limits::PeriodFigures;
use crate::state::sqlite::{StateError, UsageDb};
use crate::state::{ReportRow, UsageFilter, UsageGroup};
use crate::usage::cost::UsdNanos;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// Rows grouped as asked, and the total over all of them.
pub fn query(
    state_dir: &Path,
    filter: &UsageFilter,
    by: Option<UsageGroup>,
) -> Result<(Vec<ReportRow>, ReportRow), StateError> {
    let db = UsageDb::open_read_only(state_dir)?;
    let rows = match by {
        Some(group) => db.report(filter, Some(group))?,
        None => Vec::new(),
    };
    let total = db
        .report(filter, None)?
        .pop()
        .unwrap_or_else(|| empty_row("total"));
    Ok((rows, total))
}

fn empty_row(group: &str) -> ReportRow {
    ReportRow {
        group: group.to_owned(),
        requests: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        cached_tokens: 0,
        cache_write_tokens: 0,
        cost: UsdNanos::ZERO,
        estimated_requests: 0,
        blocked_requests: 0,
    }
}

/// A plain-text table: one line per row, then the total.
pub fn table(by: Option<UsageGroup>, rows: &[ReportRow], total: &ReportRow) -> String {
    let title = match by {
        Some(UsageGroup::Day) => "DAY",
        Some(UsageGroup::Model) => "MODEL",
        Some(UsageGroup::Key) => "KEY",
        Some(UsageGroup::Workload) => "WORKLOAD",
        None => "",
    };
    let width = rows
        .iter()
        .map(|r| r.group.chars().count())
        .chain([title.len(), 5])
        .max()
        .unwrap_or(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{title:<width$}  {:>10}  {:>14}  {:>14}  {:>12}  {:>12}  {:>14}  {:>9}  {:>9}",
        "REQUESTS",
        "PROMPT",
        "COMPLETION",
        "CACHED",
        "CACHE_WRITE",
        "COST_USD",
        "ESTIMATED",
        "BLOCKED"
    );
    for row in rows.iter().chain(std::iter::once(total)) {
        let _ = writeln!(
            out,
            "{:<width$}  {:>10}  {:>14}  {:>14}  {:>12}  {:>12}  {:>14}  {:>9}  {:>9}",
            row.group,
            row.requests,
            row.prompt_tokens,
            row.completion_tokens,
            row.cached_tokens,
            row.cache_write_tokens,
            row.cost.to_string(),
            row.estimated_requests,
            row.blocked_requests
        );
    }
    out
}

/// A budget and its live figures: for each period the cap, what was spent, what requests in
/// flight have reserved, and what remains.
pub fn budget_json(spec: Option<&BudgetSpec>, figures: &[PeriodFigures; 2]) -> Value {
    let mut periods = serde_json::Map::new();
    for f in figures {
        let cap = spec.and_then(|s| match f.period {
            Period::Daily => s.daily,
            Period::Monthly => s.monthly,
        });
        periods.insert(
            f.period.as_str().to_owned(),
            json!({
                "limit_usd": cap.map(UsdNanos::as_usd),
                "spent_usd": f.spent.as_usd(),
                "reserved_usd": f.reserved.as_usd(),
                "remaining_usd": cap.map(|c| c.saturating_sub(f.spent).saturating_sub(f.reserved).as_usd()),
            }),
        );
    }
    json!({
        "mode": spec.map(|s| match s.mode {
            BudgetMode::Enforce => "enforce",
            BudgetMode::Track => "track",
        }),
        "alert_at": spec.map(|s| s.alert_at.iter().map(|p| f64::from(*p) / 1000.0).collect::<Vec<_>>()),
        "periods": periods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    #[test]
    fn budget_json_shows_remaining_after_reservations() {
        let spec = BudgetSpec {
            daily: Some(UsdNanos(10_000_000_000)),
            monthly: None,
            mode: BudgetMode::Enforce,
            alert_at: smallvec![500],
        };
        let v = budget_json(
            Some(&spec),
            &[
                PeriodFigures {
                    period: Period::Daily,
                    spent: UsdNanos(2_500_000_000),
                    reserved: UsdNanos(500_000_000),
                },
                PeriodFigures {
                    period: Period::Monthly,
                    spent: UsdNanos(7_000_000_000),
                    reserved: UsdNanos::ZERO,
                },
            ],
        );
        assert_eq!(v["mode"], "enforce");
        assert_eq!(v["periods"]["daily"]["remaining_usd"], 7.0);
        assert!(v["periods"]["monthly"]["limit_usd"].is_null());
        assert_eq!(v["periods"]["monthly"]["spent_usd"], 7.0);
    }

    #[test]
    fn table_aligns_and_ends_with_the_total() {
        let mut row = empty_row("2026-11-23");
        row.requests = 3;
        row.cached_tokens = 200;
        row.cache_write_tokens = 30;
        row.cost = UsdNanos(1_500_000);
        let mut total = row.clone();
        total.group = "total".into();
        let t = table(Some(UsageGroup::Day), &[row], &total);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("DAY"));
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        let col = |name: &str| cols[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(
            (col("CACHED"), col("CACHE_WRITE"), col("COST_USD")),
            ("200", "30", "0.001500")
        );
        // Every line is as wide as the header: the columns line up.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        assert!(lines[2].starts_with("total"));
    }
}
