//! Booking finished requests, off the request path.
//!
//! The proxy hands each finished request to the [`Recorder`] as a [`RequestRecord`] (a channel
//! send that wakes nobody; nothing is formatted or written on a Pingora thread). One background thread writes the
//! audit line and folds the request into per-day usage totals, which it commits to the usage
//! database in one transaction every [`FLUSH_EVERY`], so a `kill -9` loses at most that much
//! accounting. Budgets do not wait for it: live spend is settled in the limit state at once.

pub mod audit;
pub mod report;

use crate::limits;
use crate::policy::{Key, Model};
use crate::state::sqlite::{DayKey, UsageDb};
use crate::state::DayUsage;
use crate::usage::cost::UsdNanos;
use crate::usage::Usage;
use audit::{AuditTarget, AuditWriter};
use chrono::{DateTime, NaiveDate};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often usage is committed and the audit log flushed: the most accounting a crash can lose.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// One finished request, as booked.
#[derive(Debug)]
pub struct RequestRecord {
    pub finished_at_ms: u64,
    pub request_id: String,
    pub key: Option<Arc<Key>>,
    pub client_ip: Option<IpAddr>,
    pub method: http::Method,
    pub path: Cow<'static, str>,
    /// The model that answered (a fallback's, when one was used).
    pub model: Option<Arc<Model>>,
    pub endpoint: Option<usize>,
    pub stream: bool,
    /// What the client was sent; 0 when it got no response at all.
    pub status: u16,
    pub usage: Usage,
    pub cost: UsdNanos,
    /// Token counts estimated (a cut stream without the provider's usage report).
    pub estimated: bool,
    /// Whether the request was admitted and sent upstream, i.e. belongs in the usage totals.
    pub billable: bool,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    /// The refusal category when keygate refused the request (`auth`, `rate`, `budget`, …).
    pub refusal: Option<&'static str>,
    /// keygate's error code, when the request failed or was refused.
    pub error: Option<&'static str>,
}

impl RequestRecord {
    pub fn endpoint_url(&self) -> Option<&str> {
        let model = self.model.as_deref()?;
        Some(model.provider.endpoints.get(self.endpoint?)?.url.as_str())
    }

    fn day(&self) -> NaiveDate {
        DateTime::from_timestamp_millis(self.finished_at_ms as i64)
            .unwrap_or_default()
            .date_naive()
    }
}

// Records are nearly every message, so their size is the enum's size anyway.
#[allow(clippy::large_enum_variant)]
enum Message {
    /// Unboxed: the channel stores messages in blocks of a few dozen, so a record costs no
    /// allocation of its own, and no free on the other thread (where freeing is dearer).
    Record(RequestRecord),
    Flush(mpsc::SyncSender<()>),
}

/// The accounting thread's mailbox.
pub struct Recorder {
    tx: Mutex<Option<mpsc::Sender<Message>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The thread to unpark for a flush; records never wake it (a wake-up per request would cost
    /// a context switch per request).
    booker: Option<std::thread::Thread>,
}

impl Recorder {
    /// Starts the accounting thread with its sinks (either may be absent).
    pub fn start(db: Option<UsageDb>, audit: Option<(AuditTarget, AuditWriter)>) -> Recorder {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("keygate-accounting".into())
            .spawn(move || Booker::new(db, audit).run(rx))
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the accounting thread; usage will not be persisted");
        }
        Recorder {
            tx: Mutex::new(Some(tx)),
            booker: thread.as_ref().map(|t| t.thread().clone()),
            thread: Mutex::new(thread),
        }
    }

    /// Queues a finished request. Never blocks.
    pub fn record(&self, record: RequestRecord) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(Message::Record(record));
        }
    }

    /// Waits until everything queued so far is written and committed (tests, shutdown).
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        let sent = {
            let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            tx.as_ref()
                .is_some_and(|tx| tx.send(Message::Flush(ack)).is_ok())
        };
        if sent {
            if let Some(t) = &self.booker {
                t.unpark();
            }
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Writes what is queued and stops the thread.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The accounting thread's state.
struct Booker {
    db: Option<UsageDb>,
    audit: Option<(AuditTarget, AuditWriter)>,
    pending: HashMap<DayKey, DayUsage>,
    /// Whether the last write failed, so a broken disk is reported once, not per batch.
    db_failing: bool,
    audit_failing: bool,
}

impl Booker {
    fn new(db: Option<UsageDb>, audit: Option<(AuditTarget, AuditWriter)>) -> Booker {
        Booker {
            db,
            audit,
            pending: HashMap::new(),
            db_failing: false,
            audit_failing: false,
        }
    }

    /// Sleeps until the next flush is due (or a flush is asked for), then books everything
    /// queued meanwhile in one go.
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let mut last_flush = Instant::now();
        loop {
            std::thread::park_timeout(FLUSH_EVERY.saturating_sub(last_flush.elapsed()));
            let mut acks = Vec::new();
            let disconnected = loop {
                match rx.try_recv() {
                    Ok(Message::Record(r)) => self.book(&r),
                    Ok(Message::Flush(ack)) => acks.push(ack),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            if disconnected || !acks.is_empty() || last_flush.elapsed() >= FLUSH_EVERY {
                self.flush();
                last_flush = Instant::now();
            }
            for ack in acks {
                let _ = ack.send(());
            }
            if disconnected {
                return;
            }
        }
    }

    fn book(&mut self, r: &RequestRecord) {
        if let Some((target, writer)) = &mut self.audit {
            let written = writer.write(r);
            report_failure(&mut self.audit_failing, written, || {
                format!("cannot write the audit log {target}")
            });
        }
        if !r.billable || self.db.is_none() {
            return;
        }
        let (Some(key), Some(model)) = (r.key.as_deref(), r.model.as_deref()) else {
            return;
        };
        let row = self
            .pending
            .entry(DayKey {
                day: r.day(),
                key_id: (&*key.id).into(),
                workload: key.workload.name.as_str().into(),
                model: model.name.as_str().into(),
            })
            .or_default();
        row.requests = row.requests.saturating_add(1);
        row.prompt_tokens = row.prompt_tokens.saturating_add(r.usage.prompt_tokens);
        row.completion_tokens = row
            .completion_tokens
            .saturating_add(r.usage.completion_tokens);
        row.cached_tokens = row.cached_tokens.saturating_add(r.usage.cached_tokens);
        row.cost = row.cost.saturating_add(r.cost);
        row.estimated_requests = row
            .estimated_requests
            .saturating_add(u64::from(r.estimated));
    }

    fn flush(&mut self) {
        if let Some((target, writer)) = &mut self.audit {
            let flushed = writer.flush();
            report_failure(&mut self.audit_failing, flushed, || {
                format!("cannot write the audit log {target}")
            });
        }
        if self.pending.is_empty() {
            return;
        }
        if let Some(db) = &mut self.db {
            // On failure the batch stays pending and is retried with the next one.
            let added = db.add(&self.pending);
            if added.is_ok() {
                self.pending.clear();
            }
            report_failure(&mut self.db_failing, added, || {
                "cannot persist usage (kept in memory, retrying)".to_owned()
            });
        }
    }
}

fn report_failure<E: std::fmt::Display>(
    failing: &mut bool,
    result: Result<(), E>,
    what: impl FnOnce() -> String,
) {
    match result {
        Err(e) if !*failing => {
            *failing = true;
            tracing::error!(error = %e, "{}", what());
        }
        Err(_) => {}
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!("accounting writes work again");
        }
        Ok(()) => {}
    }
}

/// The spend each key and workload persisted for today and this month, for budgets to start from.
pub fn persisted_spend(
    db: &UsageDb,
    now_ms: u64,
) -> Result<HashMap<limits::ScopeId, limits::PersistedSpend>, crate::state::sqlite::StateError> {
    let cal = limits::budget::Calendar::at_ms(now_ms);
    let date = |day: u32| {
        DateTime::from_timestamp(day as i64 * 86_400, 0)
            .unwrap_or_default()
            .date_naive()
    };
    db.spend(date(cal.day), date(cal.month_start_day()))
}
