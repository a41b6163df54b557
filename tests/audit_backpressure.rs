//! The accounting queues are bounded: an audit sink that stops taking lines (a stdout pipe nobody
//! reads, a stalled log shipper) neither grows memory nor holds up the usage totals. Alone in its
//! test binary, so that the process's resident memory is this test's.

use keygate::accounting::audit::{AuditTarget, AuditWriter};
use keygate::accounting::{Recorder, RequestRecord, QUEUE_CAPACITY};
use keygate::config::{self, LoadOptions};
use keygate::metrics::Metrics;
use keygate::state::sqlite::UsageDb;
use keygate::state::UsageFilter;
use keygate::usage::cost::UsdNanos;
use keygate::usage::Usage;
use std::borrow::Cow;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn policy(dir: &Path) -> keygate::policy::Policy {
    std::fs::create_dir_all(dir.join("keys.d")).unwrap();
    let secret = keygate::keys::secret::generate().unwrap();
    std::fs::write(
        dir.join("keys.d/k.yaml"),
        format!("hash: \"{}\"\nworkload: app\n", secret.digest),
    )
    .unwrap();
    let path = dir.join("keygate.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:1\nproviders:\n  p:\n    format: openai\n    endpoints: [{url: \"http://127.0.0.1:2/v1\"}]\nmodels:\n  m1: {provider: p}\nworkloads:\n  app: {models: [m1]}\n",
    )
    .unwrap();
    config::load(&path, LoadOptions { resolve_dns: false }).unwrap()
}

#[test]
fn a_stalled_audit_sink_drops_lines_not_usage_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy(dir.path());
    let key = policy.keys_by_id["k"].clone();
    let model = policy.model("m1").unwrap().clone();

    // The audit log is a pipe whose reader never reads.
    let fifo = dir.path().join("audit.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let target = AuditTarget::File(fifo);
    let writer = AuditWriter::open(&target).unwrap();
    let state = dir.path().join("state");
    let metrics = Metrics::new();
    let db = UsageDb::open(&state).unwrap();
    let recorder = Recorder::start(
        Some(db),
        Some((target, writer)),
        metrics.audit_dropped.clone(),
    );
    // Declared after the recorder, so that it is closed first even if an assertion fails: the
    // writer then gets EPIPE instead of waiting forever.
    let reader = reader;

    const REQUESTS: u64 = 400_000;
    let before = resident();
    for i in 0..REQUESTS {
        recorder.record(RequestRecord {
            finished_at_ms: 1_764_000_000_000 + i / 100,
            request_id: format!("req_{i:032x}"),
            key: Some(key.clone()),
            client_ip: Some([127, 0, 0, 1].into()),
            method: http::Method::POST,
            path: Cow::Borrowed("/v1/chat/completions"),
            model: Some(model.clone()),
            endpoint: Some(0),
            stream: false,
            status: 200,
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_tokens: 0,
                cache_write_tokens: 0,
            },
            cost: UsdNanos(15),
            estimated: false,
            billable: true,
            latency: Duration::from_millis(3),
            ttfb: None,
            refusal: None,
            error: None,
            guardrails: Vec::new(),
        });
    }
    let grown = resident().saturating_sub(before);
    recorder.flush();

    let db = UsageDb::open_read_only(&state).unwrap();
    let report = db.report(&UsageFilter::default(), None).unwrap();
    let total = report.first().expect("usage was persisted");
    assert_eq!(
        (total.requests, total.prompt_tokens, total.cost),
        (REQUESTS, 10 * REQUESTS, UsdNanos(15 * REQUESTS)),
        "every request's usage is persisted while the audit sink is stalled"
    );
    assert!(
        grown < 32 << 20,
        "{REQUESTS} records queued behind a stalled sink grew memory by {} MiB",
        grown >> 20
    );
    // Lost: every line but those the two queues, the writer's buffer and the pipe took.
    let dropped = metrics.audit_dropped.get();
    let kept = 2 * QUEUE_CAPACITY as u64 + 2_000;
    assert!(
        (REQUESTS - kept..=REQUESTS).contains(&dropped),
        "{dropped} audit lines counted as dropped"
    );
    // Stopping does not wait forever on the stalled sink.
    recorder.stop();
    drop(reader);
}
