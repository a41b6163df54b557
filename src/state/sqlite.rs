//! Usage persisted in SQLite: one row per UTC day, key, workload and model, with request, token
//! and cost totals. Rows are added to in batched transactions by the accounting thread; reports
//! and the spend budgets start from are read back with plain SQL, so operators can query the same
//! file with the `sqlite3` shell.
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a committed batch survives the
//! process being killed (only a power loss can drop the last commits), and readers such as
//! `keygate usage` never block the writer.
//!
//! Totals saturate rather than overflow: SQLite turns an integer sum past `i64::MAX` into a REAL
//! and its `SUM()` fails on one, and spend is read back at every start. So additions are capped
//! at `i64::MAX` in SQL, and totals are summed here, saturating, from values read leniently (a
//! REAL an older keygate stored reads as the cap), so that no stored value can stop a start.

use super::{DayUsage, ReportRow, UsageFilter, UsageGroup};
use crate::accounting::activity::{Periods, PeriodsByName, Totals};
use crate::limits::{PersistedSpend, ScopeId};
use crate::usage::cost::UsdNanos;
use chrono::NaiveDate;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The database file inside `state_dir`.
pub const DB_FILE: &str = "usage.db";

const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("usage database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("usage database {path} has schema version {found}; this keygate knows version {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: i64 },
    #[error("no usage database at {0} (the gateway creates it on its first start)")]
    Missing(PathBuf),
}

/// A connection to the usage database.
pub struct UsageDb {
    conn: Connection,
    path: PathBuf,
}

impl UsageDb {
    /// Opens (creating if needed) the database in `state_dir` for writing.
    pub fn open(state_dir: &Path) -> Result<UsageDb, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|source| StateError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let db = UsageDb { conn, path };
        db.init().map_err(|source| db.error(source))?;
        db.check_version()?;
        Ok(db)
    }

    /// Opens an existing database read-only (reports while the gateway runs).
    pub fn open_read_only(state_dir: &Path) -> Result<UsageDb, StateError> {
        let path = state_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StateError::Missing(path));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StateError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let db = UsageDb { conn, path };
        db.conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| db.error(e))?;
        db.check_version()?;
        Ok(db)
    }

    fn error(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn init(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(Duration::from_secs(5))?;
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1);
             CREATE TABLE IF NOT EXISTS usage_daily (
                 day TEXT NOT NULL,                 -- YYYY-MM-DD, UTC
                 key_id TEXT NOT NULL,
                 workload TEXT NOT NULL,
                 model TEXT NOT NULL,
                 requests INTEGER NOT NULL,
                 prompt_tokens INTEGER NOT NULL,
                 completion_tokens INTEGER NOT NULL,
                 cached_tokens INTEGER NOT NULL,
                 cost_nanos INTEGER NOT NULL,       -- USD × 10^9
                 estimated_requests INTEGER NOT NULL,
                 blocked_requests INTEGER NOT NULL DEFAULT 0,
                 cache_write_tokens INTEGER NOT NULL DEFAULT 0, -- last, where ALTER TABLE puts it
                 PRIMARY KEY (day, key_id, workload, model)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS usage_daily_by_workload ON usage_daily (workload, day);
             CREATE TABLE IF NOT EXISTS key_last_used (
                 key_id TEXT PRIMARY KEY,
                 last_used_ms INTEGER NOT NULL      -- Unix epoch milliseconds
             ) WITHOUT ROWID;",
        )?;
        // A database an older keygate created lacks these columns; those keygates write rows
        // without them, which the defaults keep valid, so the schema version stays.
        for column in ADDED_COLUMNS {
            if !self.has_column(column)? {
                self.conn.execute_batch(&format!(
                    "ALTER TABLE usage_daily ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
                ))?;
            }
        }
        Ok(())
    }

    fn has_column(&self, name: &str) -> rusqlite::Result<bool> {
        self.conn
            .prepare("SELECT 1 FROM pragma_table_info('usage_daily') WHERE name = ?1")?
            .exists([name])
    }

    /// `column` if the table has it, else `0`: a database opened read-only is not migrated.
    fn column_or_zero<'a>(&self, column: &'a str) -> Result<&'a str, StateError> {
        match self.has_column(column) {
            Ok(true) => Ok(column),
            Ok(false) => Ok("0"),
            Err(e) => Err(self.error(e)),
        }
    }

    fn check_version(&self) -> Result<(), StateError> {
        let found: i64 = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))?
            .unwrap_or(SCHEMA_VERSION);
        if found != SCHEMA_VERSION {
            return Err(StateError::Schema {
                path: self.path.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Adds a batch of per-day totals in one transaction.
    pub fn add(&mut self, batch: &HashMap<DayKey, DayUsage>) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(err)?;
            for (k, u) in batch {
                upsert
                    .execute(params![
                        k.day.format("%Y-%m-%d").to_string(),
                        &*k.key_id,
                        &*k.workload,
                        &*k.model,
                        sql_int(u.requests),
                        sql_int(u.prompt_tokens),
                        sql_int(u.completion_tokens),
                        sql_int(u.cached_tokens),
                        sql_int(u.cache_write_tokens),
                        sql_int(u.cost.0),
                        sql_int(u.estimated_requests),
                        sql_int(u.blocked_requests),
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Records when keys were last used; a time never moves back.
    pub fn record_last_used(
        &mut self,
        last_used: &HashMap<Box<str>, u64>,
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO key_last_used (key_id, last_used_ms) VALUES (?1, ?2)
                     ON CONFLICT (key_id) DO UPDATE
                     SET last_used_ms = MAX(last_used_ms, excluded.last_used_ms)",
                )
                .map_err(err)?;
            for (key, ms) in last_used {
                upsert.execute(params![&**key, sql_int(*ms)]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// When each key was last used, in Unix epoch milliseconds.
    pub fn last_used(&self) -> Result<HashMap<Box<str>, u64>, StateError> {
        let mut stmt = match self
            .conn
            .prepare("SELECT key_id, last_used_ms FROM key_last_used")
        {
            Ok(stmt) => stmt,
            // A database no gateway of this version has opened yet knows no last use.
            Err(e) if e.to_string().contains("no such table") => return Ok(HashMap::new()),
            Err(e) => return Err(self.error(e)),
        };
        let mut rows = stmt.query([]).map_err(|e| self.error(e))?;
        let mut out = HashMap::new();
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            let id = row.get_ref(0).and_then(|v| Ok(v.as_str()?.into()));
            let ms = row.get_ref(1).map(stored);
            if let (Ok(id), Ok(ms)) = (id, ms) {
                out.insert(id, ms);
            }
        }
        Ok(out)
    }

    /// Each key's and workload's billable requests, tokens and cost on `today` and in the month
    /// starting `month_start`.
    pub fn periods(
        &self,
        today: NaiveDate,
        month_start: NaiveDate,
    ) -> Result<(PeriodsByName, PeriodsByName), StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key_id, workload, day = ?1, requests, prompt_tokens, completion_tokens,
                        cost_nanos, blocked_requests
                 FROM usage_daily WHERE day >= ?2",
            )
            .map_err(|e| self.error(e))?;
        let mut rows = stmt
            .query(params![
                today.format("%Y-%m-%d").to_string(),
                month_start.format("%Y-%m-%d").to_string()
            ])
            .map_err(|e| self.error(e))?;
        let (mut keys, mut workloads) = (HashMap::new(), HashMap::new());
        let add = |map: &mut HashMap<Box<str>, Periods>, name: &str, today: bool, t: Totals| {
            let p: &mut Periods = map.entry(name.into()).or_default();
            if today {
                p.today = p.today.plus(t);
            }
            p.month = p.month.plus(t);
        };
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            let read = || -> rusqlite::Result<(String, String, bool, Totals)> {
                let n = |i: usize| row.get_ref(i).map(stored);
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    Totals {
                        requests: n(3)?,
                        tokens: n(4)?.saturating_add(n(5)?),
                        cost: UsdNanos(n(6)?),
                        blocked: n(7)?,
                    },
                ))
            };
            let (key, workload, today, t) = read().map_err(|e| self.error(e))?;
            add(&mut keys, &key, today, t);
            add(&mut workloads, &workload, today, t);
        }
        Ok((keys, workloads))
    }

    /// What every key and workload spent on `today` and in the month starting `month_start`.
    pub fn spend(
        &self,
        today: NaiveDate,
        month_start: NaiveDate,
    ) -> Result<HashMap<ScopeId, PersistedSpend>, StateError> {
        let mut out = HashMap::new();
        let today = today.format("%Y-%m-%d").to_string();
        let month_start = month_start.format("%Y-%m-%d").to_string();
        for (kind, column) in [("key", "key_id"), ("workload", "workload")] {
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "SELECT {column}, day = ?1, cost_nanos FROM usage_daily WHERE day >= ?2
                     ORDER BY 1"
                ))
                .map_err(|e| self.error(e))?;
            let rows = stmt
                .query(params![today, month_start])
                .map_err(|e| self.error(e))?;
            let totals = fold_groups(rows, |spend: &mut PersistedSpend, r| {
                let cost = UsdNanos(stored(r.get_ref(2)?));
                if r.get::<_, bool>(1)? {
                    spend.today = spend.today.saturating_add(cost);
                }
                spend.this_month = spend.this_month.saturating_add(cost);
                Ok(())
            })
            .map_err(|e| self.error(e))?;
            out.extend(
                totals
                    .into_iter()
                    .map(|(name, spend)| ((kind, name.into_boxed_str()), spend)),
            );
        }
        Ok(out)
    }

    /// Totals matching `filter`, grouped by `group` (or one total row), in group order.
    pub fn report(
        &self,
        filter: &UsageFilter,
        group: Option<UsageGroup>,
    ) -> Result<Vec<ReportRow>, StateError> {
        let column = match group {
            Some(UsageGroup::Day) => "day",
            Some(UsageGroup::Model) => "model",
            Some(UsageGroup::Key) => "key_id",
            Some(UsageGroup::Workload) => "workload",
            None => "'total'",
        };
        let cache_write = self.column_or_zero("cache_write_tokens")?;
        let blocked = self.column_or_zero("blocked_requests")?;
        let sql = format!(
            "SELECT {column}, requests, prompt_tokens, completion_tokens, cached_tokens,
                    {cache_write}, cost_nanos, estimated_requests, {blocked}
             FROM usage_daily
             WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR workload = ?2)
               AND (?3 IS NULL OR day >= ?3) AND (?4 IS NULL OR day <= ?4)
             ORDER BY 1"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.error(e))?;
        let date = |d: Option<NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
        let rows = stmt
            .query(params![
                filter.key.as_deref(),
                filter.workload.as_deref(),
                date(filter.since),
                date(filter.until),
            ])
            .map_err(|e| self.error(e))?;
        let totals = fold_groups(rows, |total: &mut DayUsage, r| {
            let n = |i: usize| r.get_ref(i).map(stored);
            total.add(&DayUsage {
                requests: n(1)?,
                prompt_tokens: n(2)?,
                completion_tokens: n(3)?,
                cached_tokens: n(4)?,
                cache_write_tokens: n(5)?,
                cost: UsdNanos(n(6)?),
                estimated_requests: n(7)?,
                blocked_requests: n(8)?,
            });
            Ok(())
        })
        .map_err(|e| self.error(e))?;
        Ok(totals
            .into_iter()
            .map(|(group, t)| ReportRow {
                group,
                requests: t.requests,
                prompt_tokens: t.prompt_tokens,
                completion_tokens: t.completion_tokens,
                cached_tokens: t.cached_tokens,
                cache_write_tokens: t.cache_write_tokens,
                cost: t.cost,
                estimated_requests: t.estimated_requests,
                blocked_requests: t.blocked_requests,
            })
            .collect())
    }
}

/// Adds a batch to its rows; each total stops at `i64::MAX` instead of turning into a REAL.
const UPSERT: &str = "INSERT INTO usage_daily (day, key_id, workload, model, requests,
        prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, cost_nanos,
        estimated_requests, blocked_requests)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
    ON CONFLICT (day, key_id, workload, model) DO UPDATE SET
        requests = CASE WHEN requests > 9223372036854775807 - excluded.requests
            THEN 9223372036854775807 ELSE requests + excluded.requests END,
        prompt_tokens = CASE WHEN prompt_tokens > 9223372036854775807 - excluded.prompt_tokens
            THEN 9223372036854775807 ELSE prompt_tokens + excluded.prompt_tokens END,
        completion_tokens =
            CASE WHEN completion_tokens > 9223372036854775807 - excluded.completion_tokens
            THEN 9223372036854775807 ELSE completion_tokens + excluded.completion_tokens END,
        cached_tokens = CASE WHEN cached_tokens > 9223372036854775807 - excluded.cached_tokens
            THEN 9223372036854775807 ELSE cached_tokens + excluded.cached_tokens END,
        cache_write_tokens =
            CASE WHEN cache_write_tokens > 9223372036854775807 - excluded.cache_write_tokens
            THEN 9223372036854775807 ELSE cache_write_tokens + excluded.cache_write_tokens END,
        cost_nanos = CASE WHEN cost_nanos > 9223372036854775807 - excluded.cost_nanos
            THEN 9223372036854775807 ELSE cost_nanos + excluded.cost_nanos END,
        estimated_requests =
            CASE WHEN estimated_requests > 9223372036854775807 - excluded.estimated_requests
            THEN 9223372036854775807 ELSE estimated_requests + excluded.estimated_requests END,
        blocked_requests =
            CASE WHEN blocked_requests > 9223372036854775807 - excluded.blocked_requests
            THEN 9223372036854775807 ELSE blocked_requests + excluded.blocked_requests END";

/// Columns later keygates added to `usage_daily`, each an integer defaulting to 0; `init` adds
/// those a database lacks.
const ADDED_COLUMNS: [&str; 2] = ["blocked_requests", "cache_write_tokens"];

/// SQLite integers are signed: a value beyond `i64::MAX` is stored as that.
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored total as a count: integers as they are (never below zero), a REAL (what SQLite made
/// of an overflowing sum before additions were capped) up to `i64::MAX`, anything else zero.
fn stored(value: ValueRef<'_>) -> u64 {
    match value {
        ValueRef::Integer(n) => n.max(0) as u64,
        // `as` saturates, and takes NaN to zero
        ValueRef::Real(f) => (f as u64).min(i64::MAX as u64),
        _ => 0,
    }
}

/// Folds rows ordered by their first column (the group's name) into one total per group, in
/// that order; `add` adds one row to its group's total.
fn fold_groups<T: Default>(
    mut rows: rusqlite::Rows<'_>,
    mut add: impl FnMut(&mut T, &Row<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<Vec<(String, T)>> {
    let mut groups: Vec<(String, T)> = Vec::new();
    while let Some(row) = rows.next()? {
        let name = row.get_ref(0)?.as_str()?;
        if groups.last().is_none_or(|(last, _)| last != name) {
            groups.push((name.to_owned(), T::default()));
        }
        if let Some((_, total)) = groups.last_mut() {
            add(total, row)?;
        }
    }
    Ok(groups)
}

/// The identity of one persisted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayKey {
    pub day: NaiveDate,
    pub key_id: Box<str>,
    pub workload: Box<str>,
    pub model: Box<str>,
}

/// A day key as borrowed names, for looking totals up without copying them: a map keyed by
/// [`DayKey`] finds an entry by `&(day, key_id, workload, model) as &dyn DayKeyParts`.
pub trait DayKeyParts {
    fn parts(&self) -> (NaiveDate, &str, &str, &str);
}

impl DayKeyParts for DayKey {
    fn parts(&self) -> (NaiveDate, &str, &str, &str) {
        (self.day, &self.key_id, &self.workload, &self.model)
    }
}

impl DayKeyParts for (NaiveDate, &str, &str, &str) {
    fn parts(&self) -> (NaiveDate, &str, &str, &str) {
        *self
    }
}

impl<'a> Borrow<dyn DayKeyParts + 'a> for DayKey {
    fn borrow(&self) -> &(dyn DayKeyParts + 'a) {
        self
    }
}

// The key and its borrowed form hash and compare by the same parts, as `Borrow` requires.
impl Hash for DayKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl Hash for dyn DayKeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn DayKeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn DayKeyParts + '_ {}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn row(d: &str, key: &str, workload: &str, model: &str) -> DayKey {
        DayKey {
            day: day(d),
            key_id: key.into(),
            workload: workload.into(),
            model: model.into(),
        }
    }

    #[test]
    fn a_day_key_is_found_by_its_borrowed_names_and_only_by_them() {
        let mut totals = HashMap::new();
        totals.insert(row("2026-03-01", "k1", "app", "gpt-4o"), usage(1, 10));
        let names = (day("2026-03-01"), "k1", "app", "gpt-4o");
        let found = totals.get(&names as &dyn DayKeyParts);
        assert_eq!(found.map(|u| u.requests), Some(1));
        for other in [
            (day("2026-03-02"), "k1", "app", "gpt-4o"),
            (day("2026-03-01"), "k2", "app", "gpt-4o"),
            (day("2026-03-01"), "k1", "batch", "gpt-4o"),
            (day("2026-03-01"), "k1", "app", "gpt-4o-mini"),
            // the names' boundaries count, not just their concatenation
            (day("2026-03-01"), "k1a", "pp", "gpt-4o"),
        ] {
            assert!(
                !totals.contains_key(&other as &dyn DayKeyParts),
                "{other:?}"
            );
        }
    }

    fn usage(requests: u64, cost: u64) -> DayUsage {
        DayUsage {
            requests,
            prompt_tokens: requests * 10,
            completion_tokens: requests * 5,
            cached_tokens: 0,
            cache_write_tokens: requests * 3,
            cost: UsdNanos(cost),
            estimated_requests: 0,
            blocked_requests: requests % 2,
        }
    }

    #[test]
    fn batches_add_up_and_spend_reads_back_per_scope() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = UsageDb::open(dir.path()).unwrap();
        let mut batch = HashMap::new();
        batch.insert(row("2026-11-01", "a", "w", "m1"), usage(2, 100));
        batch.insert(row("2026-11-23", "a", "w", "m1"), usage(1, 10));
        batch.insert(row("2026-11-23", "b", "w", "m2"), usage(3, 30));
        batch.insert(row("2026-10-31", "a", "w", "m1"), usage(9, 9000));
        db.add(&batch).unwrap();
        db.add(&batch).unwrap();
        drop(db);

        let db = UsageDb::open_read_only(dir.path()).unwrap();
        let spend = db.spend(day("2026-11-23"), day("2026-11-01")).unwrap();
        let get = |k: &'static str, n: &str| spend[&(k, Box::<str>::from(n))];
        assert_eq!(get("key", "a").today, UsdNanos(20));
        assert_eq!(get("key", "a").this_month, UsdNanos(220));
        assert_eq!(get("workload", "w").this_month, UsdNanos(280));

        let by_model = db
            .report(
                &UsageFilter {
                    since: Some(day("2026-11-01")),
                    ..Default::default()
                },
                Some(UsageGroup::Model),
            )
            .unwrap();
        let got: Vec<_> = by_model
            .iter()
            .map(|r| (r.group.as_str(), r.requests, r.cost))
            .collect();
        assert_eq!(got, [("m1", 6, UsdNanos(220)), ("m2", 6, UsdNanos(60))]);
        let total = db
            .report(
                &UsageFilter {
                    key: Some("a".into()),
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(total[0].requests, 24);
        assert_eq!(total[0].prompt_tokens, 240);
        assert_eq!(total[0].cache_write_tokens, 72);
        // usage(2, _), usage(1, _) and usage(9, _), twice: one blocked each for 1 and 9
        assert_eq!(total[0].blocked_requests, 4);
    }

    #[test]
    fn a_database_without_the_blocked_column_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta VALUES ('schema_version', 1);
             CREATE TABLE usage_daily (day TEXT NOT NULL, key_id TEXT NOT NULL,
                 workload TEXT NOT NULL, model TEXT NOT NULL, requests INTEGER NOT NULL,
                 prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
                 cached_tokens INTEGER NOT NULL, cost_nanos INTEGER NOT NULL,
                 estimated_requests INTEGER NOT NULL,
                 PRIMARY KEY (day, key_id, workload, model)) WITHOUT ROWID;
             INSERT INTO usage_daily VALUES ('2026-11-23', 'a', 'w', 'm', 3, 0, 0, 0, 7, 0);",
        )
        .unwrap();
        drop(conn);
        // Read-only, the old file reads as having blocked nothing.
        let old = UsageDb::open_read_only(dir.path()).unwrap();
        let total = &old.report(&UsageFilter::default(), None).unwrap()[0];
        assert_eq!((total.requests, total.blocked_requests), (3, 0));
        drop(old);
        let mut db = UsageDb::open(dir.path()).unwrap();
        let mut batch = HashMap::new();
        batch.insert(row("2026-11-23", "a", "w", "m"), usage(1, 1));
        db.add(&batch).unwrap();
        let total = &db.report(&UsageFilter::default(), None).unwrap()[0];
        assert_eq!(
            (
                total.requests,
                total.blocked_requests,
                total.cache_write_tokens
            ),
            (4, 1, 3)
        );
    }

    #[test]
    fn a_database_without_the_cache_write_column_gets_it_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        // The schema keygate created before it persisted cache writes.
        conn.execute_batch(
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta VALUES ('schema_version', 1);
             CREATE TABLE usage_daily (
                 day TEXT NOT NULL,
                 key_id TEXT NOT NULL,
                 workload TEXT NOT NULL,
                 model TEXT NOT NULL,
                 requests INTEGER NOT NULL,
                 prompt_tokens INTEGER NOT NULL,
                 completion_tokens INTEGER NOT NULL,
                 cached_tokens INTEGER NOT NULL,
                 cost_nanos INTEGER NOT NULL,
                 estimated_requests INTEGER NOT NULL,
                 blocked_requests INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (day, key_id, workload, model)
             ) WITHOUT ROWID;
             CREATE INDEX usage_daily_by_workload ON usage_daily (workload, day);
             CREATE TABLE key_last_used (key_id TEXT PRIMARY KEY, last_used_ms INTEGER NOT NULL)
                 WITHOUT ROWID;
             INSERT INTO usage_daily VALUES ('2026-11-23', 'a', 'w', 'm', 3, 30, 15, 20, 7, 1, 1);
             INSERT INTO usage_daily VALUES ('2026-11-22', 'b', 'w', 'm', 2, 20, 10, 0, 5, 0, 0);
             INSERT INTO key_last_used VALUES ('a', 1764000000000);",
        )
        .unwrap();
        drop(conn);
        // Read-only, the old file is not changed and reads as having written nothing to caches.
        let old = UsageDb::open_read_only(dir.path()).unwrap();
        let total = &old.report(&UsageFilter::default(), None).unwrap()[0];
        assert_eq!((total.requests, total.cache_write_tokens), (5, 0));
        assert!(!old.has_column("cache_write_tokens").unwrap());
        drop(old);

        let mut db = UsageDb::open(dir.path()).unwrap();
        let mut batch = HashMap::new();
        batch.insert(row("2026-11-23", "a", "w", "m"), usage(2, 4));
        batch.insert(row("2026-11-24", "a", "w", "m"), usage(1, 1));
        db.add(&batch).unwrap();
        drop(db);
        // A second open finds the column and leaves the table alone.
        let mut db = UsageDb::open(dir.path()).unwrap();
        db.add(&batch).unwrap();

        let by_day = db
            .report(&UsageFilter::default(), Some(UsageGroup::Day))
            .unwrap();
        let got: Vec<_> = by_day
            .iter()
            .map(|r| {
                (
                    r.group.as_str(),
                    r.requests,
                    r.prompt_tokens,
                    r.cached_tokens,
                    r.cache_write_tokens,
                    r.cost,
                    r.estimated_requests,
                    r.blocked_requests,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("2026-11-22", 2, 20, 0, 0, UsdNanos(5), 0, 0),
                // the old row, then usage(2, 4) twice: 2 × 3 tokens written each time
                ("2026-11-23", 7, 70, 20, 12, UsdNanos(15), 1, 1),
                ("2026-11-24", 2, 20, 0, 6, UsdNanos(2), 0, 2),
            ]
        );
        assert_eq!(
            db.last_used().unwrap()[&Box::<str>::from("a")],
            1764000000000
        );
        let spend = db.spend(day("2026-11-24"), day("2026-11-01")).unwrap();
        assert_eq!(spend[&("key", "b".into())].this_month, UsdNanos(5));
    }

    #[test]
    fn totals_saturate_and_no_stored_value_stops_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = UsageDb::open(dir.path()).unwrap();
        let huge = DayUsage {
            requests: 1,
            prompt_tokens: u64::MAX,
            completion_tokens: i64::MAX as u64,
            cached_tokens: 0,
            cache_write_tokens: u64::MAX,
            cost: UsdNanos(u64::MAX),
            estimated_requests: 0,
            blocked_requests: 0,
        };
        let mut batch = HashMap::new();
        batch.insert(row("2026-11-23", "a", "w", "m"), huge);
        batch.insert(row("2026-11-24", "a", "w", "m"), huge);
        for _ in 0..3 {
            db.add(&batch).unwrap();
        }
        // A value an older keygate let overflow into a REAL, in the row of another key.
        db.conn
            .execute(
                "INSERT INTO usage_daily (day, key_id, workload, model, requests, prompt_tokens,
                     completion_tokens, cached_tokens, cost_nanos, estimated_requests)
                 VALUES ('2026-11-23', 'b', 'w', 'm', 1, 1.8e19, 5, 0, 3.6e19, 0)",
                [],
            )
            .unwrap();
        drop(db);

        let mut db = UsageDb::open(dir.path()).unwrap();
        // Each row holds at most i64::MAX; sums of rows saturate at u64::MAX.
        let spend = db.spend(day("2026-11-24"), day("2026-11-01")).unwrap();
        let max = UsdNanos(i64::MAX as u64);
        let a = spend[&("key", "a".into())];
        assert_eq!((a.today, a.this_month), (max, UsdNanos(u64::MAX - 1)));
        assert_eq!(spend[&("key", "b".into())].this_month, max);
        assert_eq!(
            spend[&("workload", "w".into())].this_month,
            UsdNanos(u64::MAX)
        );
        let total = &db.report(&UsageFilter::default(), None).unwrap()[0];
        assert_eq!(
            (total.requests, total.prompt_tokens, total.completion_tokens),
            (7, u64::MAX, u64::MAX)
        );
        // Two rows at i64::MAX; the REAL row was written without the column.
        assert_eq!(total.cache_write_tokens, u64::MAX - 1);
        // The REAL row takes further batches as integers again.
        batch.clear();
        batch.insert(row("2026-11-23", "b", "w", "m"), usage(1, 1));
        db.add(&batch).unwrap();
        let b = &db
            .report(
                &UsageFilter {
                    key: Some("b".into()),
                    ..Default::default()
                },
                Some(UsageGroup::Key),
            )
            .unwrap()[0];
        assert_eq!(
            (
                b.requests,
                b.prompt_tokens,
                b.completion_tokens,
                b.cached_tokens,
                b.cache_write_tokens,
                b.cost
            ),
            (2, i64::MAX as u64, 10, 0, 3, max)
        );
    }

    #[test]
    fn a_missing_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = UsageDb::open_read_only(dir.path()).err().unwrap();
        assert!(e.to_string().contains("no usage database"), "{e}");
    }
}
