//! Booking finished requests, off the request path.
//!
//! The proxy hands each finished request to the [`Recorder`] as a [`RequestRecord`] (a channel
//! send that wakes nobody; nothing is formatted or written on a Pingora thread). One background
//! thread folds the requests into per-day usage totals, which it commits to the usage database
//! in one transaction every [`FLUSH_EVERY`], so a `kill -9` loses at most that much accounting,
//! and passes each record on to a second thread that writes its audit line. Budgets do not wait
//! for either: live spend is settled in the limit state at once.
//!
//! Both queues hold at most [`QUEUE_CAPACITY`] records, so a sink that stops taking lines (a
//! stdout pipe nobody reads) cannot grow memory. What overflows is an audit line, never usage: a
//! request that finds the first queue full has its usage folded into shared totals the booking
//! thread picks up, and a full audit queue only costs the line. Every line lost is counted in
//! `keygate_audit_dropped_total`.
//!
//! The booking thread also keeps the [`activity::Activity`] the admin API reads (last use, latest
//! requests, today's figures), and persists when each key was last used beside its usage.
//!
//! Both threads run below the data plane's priority ([`crate::priority`]), so that their bursts
//! wait for the requests on their core rather than the other way round, and offer the core back
//! every few dozen records unless their queue is filling up.

pub mod activity;
pub mod audit;
mod queue;
pub mod report;

use crate::limits;
use crate::policy::guardrails::Fired;
use crate::policy::{Key, Model};
use crate::priority::Slices;
use crate::state::sqlite::{DayKey, DayKeyParts, UsageDb};
use crate::state::DayUsage;
use crate::usage::cost::UsdNanos;
use crate::usage::Usage;
use activity::Activity;
use audit::{AuditTarget, AuditWriter};
use chrono::{DateTime, NaiveDate};
use prometheus::IntCounter;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The refusal reason of a request a guardrail blocked, counted in the usage view.
const BLOCKED: &str = "content_policy_violation";

/// How often usage is committed and the audit log flushed: the most accounting a crash can lose.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Records each accounting queue holds: a round's worth of requests at tens of thousands a
/// second, and a few megabytes at most.
pub const QUEUE_CAPACITY: usize = 16_384;

/// How long stopping waits for the audit thread to write what it holds, before leaving a stuck
/// sink behind rather than hanging the shutdown.
const AUDIT_STOP_WAIT: Duration = Duration::from_secs(5);

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
    /// The guardrails that fired on the request; empty when none did.
    pub guardrails: Vec<Fired>,
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
    /// Unboxed: the channel stores messages in its own slots, allocated a block at a time, so a
    /// record costs no allocation of its own, and no free on the other thread (where freeing is
    /// dearer).
    Record(RequestRecord),
    Flush(mpsc::SyncSender<()>),
}

/// Usage of requests that found the booking queue full, for the booking thread to pick up.
type Spilled = Arc<Mutex<HashMap<DayKey, DayUsage>>>;

/// The accounting thread's mailbox.
pub struct Recorder {
    tx: Mutex<Option<queue::Sender<Message>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The thread to unpark for a flush; records never wake it (a wake-up per request would cost
    /// a context switch per request).
    booker: Option<std::thread::Thread>,
    /// Present with a usage database.
    spilled: Option<Spilled>,
    /// Present with an audit log.
    auditor: Option<Auditor>,
    activity: Arc<Activity>,
}

/// The audit thread, as the recorder sees it.
struct Auditor {
    dropped: IntCounter,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Disconnected once the thread has ended.
    ended: Mutex<mpsc::Receiver<()>>,
}

impl Recorder {
    /// Starts the accounting threads with their sinks (either may be absent); audit lines lost to
    /// a full queue are counted in `audit_dropped`. The activity figures start from what the
    /// usage database holds.
    pub fn start(
        db: Option<UsageDb>,
        audit: Option<(AuditTarget, AuditWriter)>,
        audit_dropped: IntCounter,
    ) -> Recorder {
        let now_ms = limits::now_ms();
        let seed = match db.as_ref().map(|db| persisted_activity(db, now_ms)) {
            Some(Ok(seed)) => seed,
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot read today's usage and last uses; the admin API's figures start from zero");
                activity::Seed::default()
            }
            None => activity::Seed::default(),
        };
        let activity = Arc::new(Activity::new(seed, now_ms));
        let spilled = db.as_ref().map(|_| Spilled::default());
        let (audit_queue, auditor) = match audit {
            Some((target, writer)) => {
                let (tx, rx) = queue::bounded(QUEUE_CAPACITY);
                let (ended_tx, ended) = mpsc::channel::<()>();
                let thread = std::thread::Builder::new()
                    .name("keygate-audit".into())
                    .spawn(move || {
                        let _ended = ended_tx;
                        crate::priority::lower_this_thread();
                        write_audit(target, writer, rx);
                    })
                    .ok();
                if thread.is_none() {
                    tracing::error!("could not start the audit thread; no audit lines are written");
                }
                let queue = thread.as_ref().map(|t| AuditQueue {
                    tx,
                    thread: t.thread().clone(),
                });
                let auditor = Auditor {
                    dropped: audit_dropped.clone(),
                    thread: Mutex::new(thread),
                    ended: Mutex::new(ended),
                };
                (queue, Some(auditor))
            }
            None => (None, None),
        };
        let (tx, rx) = queue::bounded(QUEUE_CAPACITY);
        let booker = Booker {
            db,
            pending: HashMap::new(),
            last_used: HashMap::new(),
            activity: activity.clone(),
            spilled: spilled.clone(),
            audit: audit_queue,
            audit_dropped,
            db_failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("keygate-accounting".into())
            .spawn(move || {
                crate::priority::lower_this_thread();
                booker.run(rx)
            })
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the accounting thread; usage will not be persisted");
        }
        Recorder {
            activity,
            tx: Mutex::new(Some(tx)),
            booker: thread.as_ref().map(|t| t.thread().clone()),
            thread: Mutex::new(thread),
            spilled,
            auditor,
        }
    }

    /// What the booking thread keeps of recent use, for the admin API.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Queues a finished request. Never blocks: with the queue full, the request's usage is
    /// kept in the spilled totals and only its audit line is lost.
    pub fn record(&self, record: RequestRecord) {
        let sent = {
            let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            match tx.as_ref() {
                Some(tx) => tx.try_send(Message::Record(record)),
                None => return,
            }
        };
        if let Err(TrySendError::Full(Message::Record(record))) = sent {
            if let Some(spilled) = &self.spilled {
                fold(
                    &mut spilled.lock().unwrap_or_else(|e| e.into_inner()),
                    &record,
                );
            }
            if let Some(auditor) = &self.auditor {
                auditor.dropped.inc();
            }
            // A burst filled the queue while the booker slept: let it drain now.
            if let Some(t) = &self.booker {
                t.unpark();
            }
        }
    }

    /// Waits until everything queued so far is committed and its audit lines written (tests,
    /// shutdown), for ten seconds at most: an audit sink may take nothing.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        // Past the bound: a full queue must not lose the flush, and the booker drains it at once.
        let sent = match self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(tx) => tx.send_past_the_bound(Message::Flush(ack)).is_ok(),
            None => false,
        };
        if sent {
            if let Some(t) = &self.booker {
                t.unpark();
            }
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Commits what is queued, writes its audit lines, and stops the threads.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        let Some(auditor) = &self.auditor else {
            return;
        };
        let Some(thread) = auditor
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let ended = auditor.ended.lock().unwrap_or_else(|e| e.into_inner());
        match ended.recv_timeout(AUDIT_STOP_WAIT) {
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("the audit log takes no more lines; its last lines are lost");
            }
            _ => {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Adds `r` to the totals of its day, key, workload and model, if it is billable or a guardrail
/// blocked it.
fn fold(totals: &mut HashMap<DayKey, DayUsage>, r: &RequestRecord) {
    let (Some(key), Some(model)) = (r.key.as_deref(), r.model.as_deref()) else {
        return;
    };
    let blocked = r.refusal == Some(BLOCKED);
    if !r.billable && !blocked {
        return;
    }
    let day = r.day();
    let names = (
        day,
        &*key.id,
        key.workload.name.as_str(),
        model.name.as_str(),
    );
    // Looked up by the borrowed names first: a day's totals already there cost no copies.
    let day_totals = match totals.get_mut(&names as &dyn DayKeyParts) {
        Some(day_totals) => day_totals,
        None => totals
            .entry(DayKey {
                day,
                key_id: names.1.into(),
                workload: names.2.into(),
                model: names.3.into(),
            })
            .or_default(),
    };
    day_totals.add(&DayUsage {
        requests: u64::from(r.billable),
        prompt_tokens: r.usage.prompt_tokens,
        completion_tokens: r.usage.completion_tokens,
        cached_tokens: r.usage.cached_tokens,
        cache_write_tokens: r.usage.cache_write_tokens,
        cost: r.cost,
        estimated_requests: u64::from(r.estimated),
        blocked_requests: u64::from(blocked),
    });
}

/// What the audit thread is sent.
// Records are nearly every message, as above.
#[allow(clippy::large_enum_variant)]
enum AuditMessage {
    Line(RequestRecord),
    Flush(mpsc::SyncSender<()>),
}

/// The audit thread's mailbox, as the booking thread sees it.
struct AuditQueue {
    tx: queue::Sender<AuditMessage>,
    /// Woken once a round, when the round's lines are queued.
    thread: std::thread::Thread,
}

/// The booking thread's state.
struct Booker {
    db: Option<UsageDb>,
    pending: HashMap<DayKey, DayUsage>,
    /// Keys used since the last flush, and when last.
    last_used: HashMap<Box<str>, u64>,
    activity: Arc<Activity>,
    spilled: Option<Spilled>,
    audit: Option<AuditQueue>,
    audit_dropped: IntCounter,
    /// Whether the last write failed, so a broken disk is reported once, not per batch.
    db_failing: bool,
}

impl Booker {
    /// Sleeps until the next flush is due (or a flush is asked for), then books everything
    /// queued meanwhile in one go.
    fn run(mut self, rx: queue::Receiver<Message>) {
        let mut last_flush = Instant::now();
        let mut slices = Slices::default();
        loop {
            std::thread::park_timeout(FLUSH_EVERY.saturating_sub(last_flush.elapsed()));
            let mut acks = Vec::new();
            let disconnected = loop {
                match rx.try_recv() {
                    Ok(Message::Record(r)) => {
                        self.book(r);
                        slices.item_done(|| falling_behind(&rx));
                    }
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
                // The audit thread acknowledges once the lines before it are written; when it
                // cannot take the flush, it is not waited for.
                let unsent = match &self.audit {
                    Some(audit) => match audit.tx.try_send(AuditMessage::Flush(ack)) {
                        Ok(()) => None,
                        Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => Some(m),
                    },
                    None => Some(AuditMessage::Flush(ack)),
                };
                if let Some(AuditMessage::Flush(ack)) = unsent {
                    let _ = ack.send(());
                }
            }
            if disconnected {
                // Dropping the queue tells the audit thread to finish.
                if let Some(audit) = self.audit.take() {
                    audit.thread.unpark();
                }
                return;
            }
            if let Some(audit) = &self.audit {
                audit.thread.unpark();
            }
        }
    }

    fn book(&mut self, r: RequestRecord) {
        self.activity.note(&r);
        if self.db.is_some() {
            fold(&mut self.pending, &r);
            if let Some(key) = &r.key {
                // Looked up before inserting: a key already there costs no copy of its id.
                let at = match self.last_used.get_mut(&*key.id) {
                    Some(at) => at,
                    None => self.last_used.entry(key.id.clone()).or_default(),
                };
                *at = (*at).max(r.finished_at_ms);
            }
        }
        if let Some(audit) = &self.audit {
            if audit.tx.try_send(AuditMessage::Line(r)).is_err() {
                self.audit_dropped.inc();
            }
        }
    }

    fn flush(&mut self) {
        if let Some(spilled) = &self.spilled {
            let spilled = std::mem::take(&mut *spilled.lock().unwrap_or_else(|e| e.into_inner()));
            for (key, usage) in spilled {
                self.pending.entry(key).or_default().add(&usage);
            }
        }
        if let Some(db) = self.db.as_mut().filter(|_| !self.last_used.is_empty()) {
            // Like usage, kept for the next round when the write fails.
            if db.record_last_used(&self.last_used).is_ok() {
                self.last_used.clear();
            }
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

/// The audit thread: once a round (when the booking thread wakes it), writes the lines queued
/// and flushes them, so the sink gets a round's lines in one write.
fn write_audit(target: AuditTarget, mut writer: AuditWriter, rx: queue::Receiver<AuditMessage>) {
    let mut failing = false;
    let mut report = |result| {
        report_failure(&mut failing, result, || {
            format!("cannot write the audit log {target}")
        })
    };
    let mut slices = Slices::default();
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        let ended = loop {
            match rx.try_recv() {
                Ok(AuditMessage::Line(r)) => {
                    report(writer.write(&r));
                    slices.item_done(|| falling_behind(&rx));
                }
                Ok(AuditMessage::Flush(ack)) => {
                    report(writer.flush());
                    let _ = ack.send(());
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        report(writer.flush());
        if ended {
            return;
        }
    }
}

/// Whether a bookkeeping loop is falling behind its queue: past a quarter of the bound (4,096
/// records, a flush interval's worth at 16,000 requests a second) it stops offering its core
/// (`priority::Slices`) until it has caught up.
fn falling_behind<T>(rx: &queue::Receiver<T>) -> bool {
    rx.backlog() > QUEUE_CAPACITY / 4
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

/// What the usage database holds of this UTC day and month, and of the keys' last use, for the
/// activity figures to start from.
pub fn persisted_activity(
    db: &UsageDb,
    now_ms: u64,
) -> Result<activity::Seed, crate::state::sqlite::StateError> {
    let cal = limits::budget::Calendar::at_ms(now_ms);
    let (keys, workloads) = db.periods(date_of(cal.day), date_of(cal.month_start_day()))?;
    Ok(activity::Seed {
        keys,
        workloads,
        last_used_ms: db.last_used()?,
    })
}

fn date_of(day: u32) -> NaiveDate {
    DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .unwrap_or_default()
        .date_naive()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::{niceness_of_this_thread, BACKGROUND_NICENESS};
    use std::time::Duration;

    /// The niceness of every thread of this process whose name starts with `prefix`.
    fn niceness_of_threads(prefix: &str) -> Vec<i32> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            // A thread may end while we look.
            let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
                continue;
            };
            if !comm.starts_with(prefix) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
                continue;
            };
            // After the name in parentheses, the niceness is the 17th field.
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            found.push(after_name.split(' ').nth(16).unwrap().parse().unwrap());
        }
        found
    }

    #[test]
    fn the_booking_and_audit_threads_run_at_background_priority() {
        let dir = tempfile::tempdir().unwrap();
        let target = AuditTarget::File(dir.path().join("audit.jsonl"));
        let writer = AuditWriter::open(&target).unwrap();
        let dropped = IntCounter::new("dropped", "lines").unwrap();
        let expected = niceness_of_this_thread().max(BACKGROUND_NICENESS);
        let recorder = Recorder::start(None, Some((target, writer)), dropped);
        // Each thread lowers itself as it starts.
        let lowered = |prefix: &str| {
            let found = niceness_of_threads(prefix);
            !found.is_empty() && found.iter().all(|&niceness| niceness == expected)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(lowered("keygate-account") && lowered("keygate-audit")) {
            assert!(
                Instant::now() < deadline,
                "booking {:?}, audit {:?}, expected {expected}",
                niceness_of_threads("keygate-account"),
                niceness_of_threads("keygate-audit")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(recorder);
    }
}
