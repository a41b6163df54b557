//! The fleet's usage view: every instance adds each finished request to a per-day counter of its
//! key and model, in one Redis hash per workload and month (written beside `settle.lua`), so that
//! the admin usage endpoints and `keygate usage --fleet` show the whole fleet's current and
//! previous month. Longer history stays in each instance's usage database and audit log.

use super::conn::{self, Conn};
use super::{FleetSettings, StateError, BACKGROUND_TIMEOUT};
use crate::state::{ReportRow, UsageFilter, UsageGroup};
use crate::usage::cost::UsdNanos;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use std::collections::{BTreeMap, HashMap};

/// The suffix of each figure's field (`2026-12-05|key|model|r`), in the order `finish_group`
/// sums them: requests, prompt, completion, cached and cache-write tokens, cost (nano-dollars).
/// Old hashes lack the fields of figures added since; a missing field adds nothing.
pub const FIGURES: [&str; 6] = ["r", "p", "c", "k", "w", "n"];

/// The hash of `workload`'s usage in `month` (`2026-12`), in the workload's hash slot.
pub fn hash_key(prefix: &str, workload: &str, month: &str) -> String {
    format!("{prefix}:{{{workload}}}:usage:{month}")
}

/// `2026-12-05` and `2026-12` for a moment.
pub fn day_and_month(at_ms: u64) -> (String, String) {
    let at = DateTime::<Utc>::from_timestamp_millis(at_ms as i64).unwrap_or_default();
    (
        at.format("%Y-%m-%d").to_string(),
        at.format("%Y-%m").to_string(),
    )
}

/// The current and the previous month, as `2026-12`.
fn months(now_ms: u64) -> [String; 2] {
    let (_, this) = day_and_month(now_ms);
    let at = DateTime::<Utc>::from_timestamp_millis(now_ms as i64).unwrap_or_default();
    let (year, month) = if at.month() == 1 {
        (at.year() - 1, 12)
    } else {
        (at.year(), at.month() - 1)
    };
    [format!("{year:04}-{month:02}"), this]
}

/// Connects to the fleet's Redis and reports its usage (for the CLI).
pub async fn report_from(
    settings: &FleetSettings,
    workloads: &[String],
    filter: &UsageFilter,
    by: Option<UsageGroup>,
    now_ms: u64,
) -> Result<(Vec<ReportRow>, ReportRow), StateError> {
    let mut conn = conn::connect(&settings.target).await?;
    report(&mut conn, &settings.prefix, workloads, filter, by, now_ms).await
}

/// The usage of `workloads` in the current and previous month, filtered and grouped like the
/// usage database's reports.
pub async fn report(
    conn: &mut Conn,
    prefix: &str,
    workloads: &[String],
    filter: &UsageFilter,
    by: Option<UsageGroup>,
    now_ms: u64,
) -> Result<(Vec<ReportRow>, ReportRow), StateError> {
    let mut groups: BTreeMap<String, ReportRow> = BTreeMap::new();
    let mut total = row("total");
    for workload in workloads {
        if filter.workload.as_ref().is_some_and(|w| w != workload) {
            continue;
        }
        for month in months(now_ms) {
            let read = redis::cmd("HGETALL")
                .arg(hash_key(prefix, workload, &month))
                .to_owned();
            let fields = read.query_async::<HashMap<String, u64>>(conn);
            let fields = match tokio::time::timeout(BACKGROUND_TIMEOUT, fields).await {
                Err(_) => return Err(StateError::Timeout(BACKGROUND_TIMEOUT)),
                Ok(f) => f?,
            };
            for (field, value) in fields {
                let Some((day, key, model, figure)) = parse_field(&field) else {
                    continue;
                };
                if filter.key.as_ref().is_some_and(|k| k != key)
                    || filter.since.is_some_and(|s| day < s)
                    || filter.until.is_some_and(|u| day > u)
                {
                    continue;
                }
                add(&mut total, figure, value);
                if let Some(group) = by {
                    let name = match group {
                        UsageGroup::Day => day.to_string(),
                        UsageGroup::Model => model.to_owned(),
                        UsageGroup::Key => key.to_owned(),
                        UsageGroup::Workload => workload.clone(),
                    };
                    add(
                        groups.entry(name.clone()).or_insert_with(|| row(&name)),
                        figure,
                        value,
                    );
                }
            }
        }
    }
    Ok((groups.into_values().collect(), total))
}

/// `2026-12-05|key|model|r` → its parts. Key ids hold no `|`; a model name may.
fn parse_field(field: &str) -> Option<(NaiveDate, &str, &str, char)> {
    let (rest, figure) = field.rsplit_once('|')?;
    let (day, rest) = rest.split_once('|')?;
    let (key, model) = rest.split_once('|')?;
    let figure = figure.chars().next()?;
    Some((day.parse().ok()?, key, model, figure))
}

fn row(group: &str) -> ReportRow {
    ReportRow {
        group: group.to_owned(),
        requests: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        cached_tokens: 0,
        cache_write_tokens: 0,
        cost: UsdNanos::ZERO,
        estimated_requests: 0,
        // Blocked requests are booked in the usage database only.
        blocked_requests: 0,
    }
}

fn add(row: &mut ReportRow, figure: char, value: u64) {
    match figure {
        'r' => row.requests += value,
        'p' => row.prompt_tokens += value,
        'c' => row.completion_tokens += value,
        'k' => row.cached_tokens += value,
        'w' => row.cache_write_tokens += value,
        'n' => row.cost = UsdNanos(row.cost.0 + value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_months_are_read_back() {
        assert_eq!(
            parse_field("2026-12-05|ci-bot|org|gpt-4o|n"),
            Some((
                NaiveDate::from_ymd_opt(2026, 12, 5).unwrap(),
                "ci-bot",
                "org|gpt-4o",
                'n'
            ))
        );
        assert_eq!(parse_field("garbage"), None);
        let mut total = row("total");
        for (field, value) in [("k", 200), ("w", 30), ("w", 30), ("x", 5)] {
            let (.., figure) = parse_field(&format!("2026-12-05|k|m|{field}")).unwrap();
            add(&mut total, figure, value);
        }
        assert_eq!((total.cached_tokens, total.cache_write_tokens), (200, 60));
        // 2027-01-15 reads December too
        assert_eq!(months(1_800_000_000_000), ["2026-12", "2027-01"]);
    }
}
