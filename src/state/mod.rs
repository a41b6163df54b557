//! State backends: where usage and spend outlive the process.
//!
//! Live counters (windows, concurrency, budget spend and reservations) sit behind
//! [`crate::limits::LimitState`]; this module holds what is persisted underneath them: per-day
//! usage totals in SQLite ([`sqlite::UsageDb`]), written in batches by the accounting thread and
//! read back at start-up so budgets resume from the recorded spend, and by the usage reports.

pub mod sqlite;

use crate::usage::cost::UsdNanos;
use chrono::NaiveDate;
use serde::Serialize;

/// Totals of one (day, key, workload, model) row, or of a batch headed for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayUsage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache (Anthropic's prompt caching).
    pub cache_write_tokens: u64,
    pub cost: UsdNanos,
    /// Requests whose token counts were estimated (cut streams without a usage report).
    pub estimated_requests: u64,
    /// Requests a guardrail blocked (not among `requests`: they never reached the provider).
    pub blocked_requests: u64,
}

impl DayUsage {
    /// Adds `other`, each total saturating.
    pub fn add(&mut self, other: &DayUsage) {
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.cost = self.cost.saturating_add(other.cost);
        self.estimated_requests = self
            .estimated_requests
            .saturating_add(other.estimated_requests);
        self.blocked_requests = self.blocked_requests.saturating_add(other.blocked_requests);
    }
}

/// Which rows a report covers.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub key: Option<String>,
    pub workload: Option<String>,
    /// Inclusive UTC days.
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
}

/// How a report groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageGroup {
    Day,
    Model,
    Key,
    Workload,
}

impl UsageGroup {
    /// `day`, `model`, `key` or `workload`, as the CLI spells them.
    pub fn parse(text: &str) -> Option<UsageGroup> {
        <UsageGroup as clap::ValueEnum>::from_str(text, false).ok()
    }
}

/// One line of a usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// The day, model, key or workload of this row; `total` when ungrouped.
    pub group: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    #[serde(rename = "cost_usd", serialize_with = "usd")]
    pub cost: UsdNanos,
    pub estimated_requests: u64,
    pub blocked_requests: u64,
}

/// Dollars as a JSON number with the integer's precision (nano-dollars: nine decimals).
pub fn usd<S: serde::Serializer>(amount: &UsdNanos, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(amount.as_usd())
}
