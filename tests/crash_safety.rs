//! Crash safety: the real binary under concurrent traffic, killed with SIGKILL and restarted.
//! The usage database opens again, is intact, holds whole batches only, and has lost at most the
//! requests of the documented flush interval (`accounting::FLUSH_EVERY`, docs/operations.md).

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{client, key_file, keygate_bin, TestGateway};
use keygate::accounting::FLUSH_EVERY;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Each mock completion reports 7 + 5 tokens; at $1000/Mtok that is $0.012, in nano-dollars.
const COST_NANOS: u64 = 12 * 1_000_000;

/// What a commit may take beyond the flush interval on a busy machine: the database write and
/// the scheduling of the accounting thread.
const COMMIT_SLACK: Duration = Duration::from_millis(250);

struct Gateway(Child);

impl Gateway {
    fn start(config: &Path, port: u16) -> Gateway {
        let child = Command::new(keygate_bin())
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let gateway = Gateway(child);
        common::wait_until_listening(port);
        gateway
    }

    fn kill9(&mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(requests, cost_nanos)` persisted, read from the database directly after an integrity check.
fn persisted(state: &Path) -> (u64, u64) {
    let db = rusqlite::Connection::open_with_flags(
        state.join("usage.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the usage database opens");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    db.query_row(
        "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(cost_nanos), 0) FROM usage_daily",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .unwrap()
}

/// `keygate usage` reads the same database: it opens for the operator too.
fn reported_requests(config: &Path) -> u64 {
    let out = Command::new(keygate_bin())
        .args(["usage", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["total"]["requests"].as_u64().unwrap()
}

/// Sends chat requests from `workers` tasks until `stop`; returns when each 200 came back.
async fn traffic(
    url: String,
    secret: String,
    workers: usize,
    stop: Arc<Mutex<bool>>,
) -> (Vec<Instant>, usize) {
    let done = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, secret, stop, done, sent) = (
            url.clone(),
            secret.clone(),
            stop.clone(),
            done.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = client();
            let body = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]});
            while !*stop.lock().unwrap() {
                *sent.lock().unwrap() += 1;
                let answered = match http
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !answered {
                    // The gateway was killed under this request.
                    break;
                }
                done.lock().unwrap().push(Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let done = done.lock().unwrap().clone();
    let sent = *sent.lock().unwrap();
    (done, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_traffic_loses_at_most_the_flush_interval() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::prepare(
        &format!(
            r#"state_dir: state
providers:
  p1:
    format: openai
    api_key: sk-provider
    endpoints:
      - {{url: "{}"}}
models:
  m1:
    provider: p1
    price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
workloads:
  app:
    models: [m1]
"#,
            up.url()
        ),
        &[("k".into(), yaml)],
    );
    let state = gw.dir.path().join("state");
    let url = gw.url("/v1/chat/completions");
    let mut before = 0;
    for round in 0..3 {
        let mut gateway = Gateway::start(&gw.config_path, gw.port);
        let stop = Arc::new(Mutex::new(false));
        let load = tokio::spawn(traffic(url.clone(), secret.clone(), 4, stop.clone()));
        // Killed while requests are in flight, at a different point of the flush cycle each round.
        tokio::time::sleep(Duration::from_millis(1200 + 90 * round)).await;
        gateway.kill9();
        let killed_at = Instant::now();
        *stop.lock().unwrap() = true;
        let (done, sent) = load.await.unwrap();
        assert!(
            done.len() > 10,
            "round {round}: traffic ran ({} requests)",
            done.len()
        );

        let (requests, cost) = persisted(&state);
        assert_eq!(reported_requests(&gw.config_path), requests);
        let persisted_now = requests - before;
        // Older than the flush interval (and a commit's time) at the kill: must be on disk.
        let window = FLUSH_EVERY + COMMIT_SLACK;
        let must = done
            .iter()
            .filter(|t| killed_at.duration_since(**t) > window)
            .count() as u64;
        assert!(
            persisted_now >= must && persisted_now <= sent as u64,
            "round {round}: {persisted_now} persisted; {must} finished more than {window:?} before the kill, {sent} sent"
        );
        // Batches are whole: every persisted request brought its cost.
        assert_eq!(cost, requests * COST_NANOS, "round {round}");
        before = requests;
    }

    // After the last kill the database still opens for serving, and the request a restarted
    // gateway serves is on disk once the flush interval has passed.
    let mut gateway = Gateway::start(&gw.config_path, gw.port);
    let resp = client()
        .post(&url)
        .bearer_auth(&secret)
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(FLUSH_EVERY + COMMIT_SLACK).await;
    gateway.kill9();
    assert_eq!(persisted(&state).0, before + 1);
}
