//! Fleet mode end to end: two gateway instances (each with its own copy of the keys directory)
//! share their limits through a real redis-server that each test starts on a free loopback port
//! with its own temporary directory, and stops.

mod common;

use common::upstream::{free_port, MockUpstream, Reply, TestCa};
use common::{client, error_of, key_file, keygate_bin, post_json, TestGateway};
use redis::Commands;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server of this test's own.
struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut server = RedisServer {
            child: Self::spawn(port, dir.path()),
            port,
            dir,
        };
        server.wait_ready();
        server
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = self.url();
        loop {
            let pong = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty server on the same port, as after a crash without persistence.
    fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.port, self.dir.path());
        self.wait_ready();
    }

    /// Scripts run so far: EVALSHA and EVAL calls, less those that failed (the first EVALSHA
    /// after a start answers NOSCRIPT, then the script is loaded and called again).
    fn script_calls(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .unwrap();
        let field = |line: &str, name: &str| -> u64 {
            line.split([':', ','])
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .map(|l| field(l, "calls") - field(l, "failed_calls"))
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The fleet `state` section, then the one-model policy.
fn fleet_policy(upstream: &str, redis: &str, on_error: &str, head: &str, extra: &str) -> String {
    format!(
        "{head}state:\n  backend: redis\n  redis:\n    url: {redis}\n    prefix: kg\n    timeout: 1s\n    lease_ttl: 1500ms\n  on_error: {on_error}\n{}",
        common::one_model_policy(upstream, extra)
    )
}

fn chat() -> Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]})
}

/// Waits until the instance has connected to Redis.
async fn connected(gw: &TestGateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.handles().metrics.state_healthy.get() != 1 {
        assert!(Instant::now() < deadline, "the gateway never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sleeps until at least 60% of an epoch-aligned window of `per_ms` is left.
async fn early_in_window(per_ms: u64) {
    let into = keygate::limits::now_ms() % per_ms;
    if into > per_ms * 4 / 10 {
        tokio::time::sleep(Duration::from_millis(per_ms - into + 50)).await;
    }
}

/// Two instances of `policy` with the key `id`, each connected to Redis.
async fn two_connected(policy: &str, id: &str, key_yaml: String) -> (TestGateway, TestGateway) {
    let a = TestGateway::start(policy, &[(id.into(), key_yaml.clone())]);
    let b = TestGateway::start(policy, &[(id.into(), key_yaml)]);
    connected(&a).await;
    connected(&b).await;
    (a, b)
}

/// Requests whose end this instance has settled in Redis.
fn settled(gw: &TestGateway) -> u64 {
    let ops = &gw.handles().metrics.state_operations;
    ops.with_label_values(&["finish", "ok"]).get()
}

/// Polls `check` for up to ten seconds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_window_admits_its_limit_across_two_instances() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "rate_limits:\n  - {requests: 20, per: 10s}\n");
    let policy = fleet_policy(&up.url(), &redis.url(), "fail_closed", "", "");
    let (a, b) = two_connected(&policy, "k", yaml).await;
    early_in_window(10_000).await;
    let before = redis.script_calls();
    let mut admitted = [0u32; 2];
    for i in 0..60 {
        let gw = [&a, &b][i % 2];
        let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &chat()).await;
        match resp.status().as_u16() {
            200 => admitted[i % 2] += 1,
            429 => {
                assert_eq!(resp.headers()["x-ratelimit-limit-requests"], "20");
                assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
                assert_eq!(error_of(resp).await.2, "rate_limit_exceeded");
            }
            s => panic!("unexpected status {s}: {}", resp.text().await.unwrap()),
        }
    }
    println!("admitted per instance: {admitted:?}");
    assert_eq!(admitted[0] + admitted[1], 20, "{admitted:?}");
    assert_eq!(admitted, [10, 10], "alternated requests split evenly");
    // Per admitted request one admission script; none for the refusals answered locally (at
    // most one per instance learns from Redis that the window is full). Off the request path,
    // every admitted request is settled, in batches: with no token window, concurrency cap or
    // budget to settle, a batch only adds to the usage view, without a script.
    eventually("every request settled", || settled(&a) + settled(&b) == 20).await;
    let calls = redis.script_calls() - before;
    assert!((20..=22).contains(&calls), "{calls} script calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_window_is_shared_and_charged_with_real_usage() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "rate_limits:\n  - {tokens: 100, per: 1h}\n");
    let policy = fleet_policy(&up.url(), &redis.url(), "fail_closed", "", "");
    let (a, b) = two_connected(&policy, "k", yaml).await;
    let window = "kg:{app}:key:k:t3600000";
    let mut conn = redis.conn();
    let mut admitted = 0u64;
    for i in 0..20 {
        let gw = [&a, &b][i % 2];
        let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &chat()).await;
        if resp.status() == 429 {
            assert_eq!(error_of(resp).await.2, "rate_limit_exceeded");
            continue;
        }
        assert_eq!(resp.status(), 200);
        admitted += 1;
        // Each response used 7 + 5 tokens, which replace the estimate once settled.
        eventually("the real usage in Redis", || {
            conn.hget::<_, _, Option<u64>>(window, "c").unwrap() == Some(12 * admitted)
        })
        .await;
    }
    // Admitted while under 100: 12 × 8 = 96 lets a ninth in, 108 refuses the rest.
    assert_eq!(admitted, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrent_holds_across_two_instances_with_slow_streams() {
    let redis = RedisServer::start();
    let slow = Reply::Sse {
        events: (0..40)
            .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
            .collect(),
        interval: Duration::from_millis(100),
    };
    let up = MockUpstream::start("up", slow).await;
    let (secret, yaml) = key_file("app", "max_concurrent: 2\n");
    let policy = fleet_policy(&up.url(), &redis.url(), "fail_closed", "", "");
    let (a, b) = two_connected(&policy, "k", yaml).await;
    let url = |gw: &TestGateway| gw.url("/v1/chat/completions");
    let first = post_json(&url(&a), &secret, &chat()).await;
    assert_eq!(first.status(), 200);
    let second = post_json(&url(&b), &secret, &chat()).await;
    assert_eq!(second.status(), 200);
    for gw in [&a, &b] {
        let resp = post_json(&url(gw), &secret, &chat()).await;
        assert_eq!(
            error_of(resp).await,
            (
                429,
                "rate_limit_error".to_owned(),
                "concurrency_limit_exceeded".to_owned()
            )
        );
    }
    // The first stream ends: its slot comes back to the fleet, on the other instance too.
    first.bytes().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        let resp = post_json(&url(&b), &secret, &chat()).await;
        if resp.status() == 200 {
            break resp;
        }
        assert_eq!(resp.status(), 429);
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop((second, third));
    let mut conn = redis.conn();
    eventually("every lease given back", || {
        conn.zcard::<_, u64>("kg:{app}:key:k:slots").unwrap() == 0
    })
    .await;
}

/// Requests finished together are settled in one batch, summed per key: estimates above and
/// below the real usage, a concurrency cap and a budget, all booked exactly with nothing left
/// held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_settled_in_one_batch_book_exactly_their_real_usage() {
    let redis = RedisServer::start();
    let up = MockUpstream::start(
        "up",
        Reply::Delayed {
            delay: Duration::from_millis(30),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let (secret, yaml) = key_file(
        "app",
        "budget: {daily_usd: 100}\nrate_limits: [{tokens: 1000000, per: 1h}]\nmax_concurrent: 64\n",
    );
    let policy = priced(&up.url(), &redis.url(), "");
    let (a, b) = two_connected(&policy, "k", yaml).await;
    // Not within the hour's last half minute, so that the whole test falls in one window.
    let left = 3_600_000 - keygate::limits::now_ms() % 3_600_000;
    if left < 30_000 {
        tokio::time::sleep(Duration::from_millis(left + 50)).await;
    }
    // Every response uses 7 + 5 tokens: `max_tokens: 500` is estimated above that (a refund),
    // `max_tokens: 1` below it (a further charge).
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let url = [&a, &b][i % 2].url("/v1/chat/completions");
            let max_tokens = if i % 4 < 2 { 500 } else { 1 };
            let body = json!({"model": "m1", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": "hi"}]});
            let secret = secret.clone();
            tokio::spawn(async move { post_json(&url, &secret, &body).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    eventually("every request settled", || settled(&a) + settled(&b) == 40).await;
    let mut conn = redis.conn();
    let day = keygate::limits::now_ms() / 86_400_000;
    let hash = "kg:{app}:key:k:budget";
    assert_eq!(
        conn.hget::<_, _, u64>("kg:{app}:key:k:t3600000", "c")
            .unwrap(),
        40 * 12,
        "the window holds the real usage"
    );
    assert_eq!(
        conn.hget::<_, _, u64>(hash, format!("d:{day}")).unwrap(),
        40 * 12_000_000
    );
    assert_eq!(
        conn.hget::<_, _, i64>(hash, "r").unwrap(),
        0,
        "a reservation leaked"
    );
    assert_eq!(conn.zcard::<_, u64>("kg:{app}:key:k:reserved").unwrap(), 0);
    assert_eq!(conn.zcard::<_, u64>("kg:{app}:key:k:slots").unwrap(), 0);
}

/// A slot is given back as soon as its request ends when its cap is nearly reached, not after
/// the wait that batches other requests' ends. One request at a time under `max_concurrent: 1`,
/// each sent the moment the previous one answered, alternately through two instances: a few
/// still find the slot held, since it is given back after the response (off the request path):
/// 3 to 44 of 200 measured, more when the other tests run beside it; held for the batching wait,
/// most would (154 to 156).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_requests_under_a_cap_of_one_find_the_slot_given_back() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "max_concurrent: 1\n");
    let policy = fleet_policy(&up.url(), &redis.url(), "fail_closed", "", "");
    let (a, b) = two_connected(&policy, "k", yaml).await;
    // Connections kept alive, so that the next request follows within a fraction of the wait
    // a finished request's end may otherwise have before it is sent to Redis.
    let client = common::client();
    let urls = [a.url("/v1/chat/completions"), b.url("/v1/chat/completions")];
    let mut refused = 0;
    for i in 0..200 {
        let resp = client
            .post(&urls[i % 2])
            .bearer_auth(&secret)
            .json(&chat())
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {}
            429 => {
                assert_eq!(error_of(resp).await.2, "concurrency_limit_exceeded");
                refused += 1;
            }
            s => panic!("request {i}: {s} {}", resp.text().await.unwrap()),
        }
    }
    println!("refused {refused} of 200");
    assert!(refused <= 80, "{refused} of 200 found the slot still held");
}

/// A shutdown settles the requests that already ended before it stops: their real cost is
/// booked in the fleet's budget and their reservations given back, rather than the reservations
/// merely expiring with the cost never booked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_settles_the_requests_that_ended_before_it() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "budget: {daily_usd: 100}\n");
    let mut gw = TestGateway::start(&priced(&up.url(), &redis.url(), ""), &[("k".into(), yaml)]);
    connected(&gw).await;
    let body =
        json!({"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..3 {
        let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &body).await;
        assert_eq!(resp.status(), 200);
    }
    let running = gw.running.take().expect("running");
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .unwrap();
    let mut conn = redis.conn();
    let day = keygate::limits::now_ms() / 86_400_000;
    let hash = "kg:{app}:key:k:budget";
    assert_eq!(
        conn.hget::<_, _, Option<u64>>(hash, format!("d:{day}"))
            .unwrap(),
        Some(3 * 12_000_000),
        "the cost of every request is booked"
    );
    assert_eq!(
        conn.hget::<_, _, i64>(hash, "r").unwrap(),
        0,
        "a reservation is left"
    );
    assert_eq!(conn.zcard::<_, u64>("kg:{app}:key:k:reserved").unwrap(), 0);
}

/// A policy with a priced model: each chat costs (7 + 5) × $0.001 = $0.012.
fn priced(upstream: &str, redis: &str, head: &str) -> String {
    fleet_policy(upstream, redis, "fail_closed", head, "").replace(
        "    provider: p1\n",
        "    provider: p1\n    price: {input_per_mtok: 1000, output_per_mtok: 1000}\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_holds_under_fifty_concurrent_requests_over_two_instances() {
    let redis = RedisServer::start();
    let up = MockUpstream::start(
        "up",
        Reply::Delayed {
            delay: Duration::from_millis(50),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "budget: {daily_usd: 0.12}\n");
    let policy = priced(&up.url(), &redis.url(), "");
    let (a, b) = two_connected(&policy, "capped", yaml).await;
    let body =
        json!({"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let url = [&a, &b][i % 2].url("/v1/chat/completions");
            let (secret, body) = (secret.clone(), body.clone());
            tokio::spawn(async move { post_json(&url, &secret, &body).await })
        })
        .collect();
    let mut admitted = 0u64;
    for t in tasks {
        let resp = t.await.unwrap();
        if resp.status() == 200 {
            admitted += 1;
        } else {
            assert_eq!(error_of(resp).await.2, "budget_exceeded");
        }
    }
    assert!(admitted >= 1);
    let day = keygate::limits::now_ms() / 86_400_000;
    let hash = "kg:{app}:key:capped:budget";
    let mut conn = redis.conn();
    eventually("every request settled", || {
        conn.hget::<_, _, Option<u64>>(hash, format!("d:{day}"))
            .unwrap()
            .unwrap_or(0)
            == admitted * 12_000_000
    })
    .await;
    let spent: u64 = conn.hget(hash, format!("d:{day}")).unwrap();
    println!("admitted {admitted}, fleet spend {spent} nano-dollars of 120000000");
    assert!(
        spent <= 120_000_000 + 12_000_000,
        "spend {spent} overshoots"
    );
    // No reservation is left behind.
    let reserved: i64 = conn.hget(hash, "r").unwrap();
    assert_eq!(reserved, 0);
    let members: u64 = conn.zcard("kg:{app}:key:capped:reserved").unwrap();
    assert_eq!(members, 0);
    let fields: Vec<String> = conn.hkeys(hash).unwrap();
    assert!(
        fields.iter().all(|f| !f.starts_with("l:")),
        "reservation amounts left: {fields:?}"
    );
    // Settled sequentially now, the cap is reached within one request.
    loop {
        let resp = post_json(&b.url("/v1/chat/completions"), &secret, &body).await;
        if resp.status() != 200 {
            assert_eq!(error_of(resp).await.2, "budget_exceeded");
            break;
        }
        admitted += 1;
        eventually("settled", || {
            conn.hget::<_, _, u64>(hash, format!("d:{day}")).unwrap() == admitted * 12_000_000
        })
        .await;
    }
    let spent: u64 = conn.hget(hash, format!("d:{day}")).unwrap();
    // A reservation is the prompt estimate plus max_tokens, under $0.03.
    assert!(
        spent <= 120_000_000 && spent + 30_000_000 > 120_000_000,
        "stopped at {spent}"
    );
}

/// An upstream whose streams run for a minute, so that a request holds its slot and reservation.
fn slow_stream() -> Reply {
    Reply::Sse {
        events: (0..600)
            .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
            .collect(),
        interval: Duration::from_millis(100),
    }
}

/// Instance A as a process of its own (so that it can be killed with SIGKILL), its files (kept
/// while it runs), and the stream it admitted for `secret`.
#[expect(
    clippy::zombie_processes,
    reason = "the caller kills and waits for the process; a failed assertion ends the test run"
)]
async fn instance_holding_a_stream(
    policy: &str,
    yaml: &str,
    secret: &str,
) -> (TestGateway, Child, reqwest::Response) {
    let a = TestGateway::prepare(policy, &[("k".into(), yaml.to_string())]);
    let process = Command::new(keygate_bin())
        .args(["serve", "--config"])
        .arg(&a.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", a.port)).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let resp = post_json(&a.url("/v1/chat/completions"), secret, &chat()).await;
        if resp.status() == 200 {
            return (a, process, resp);
        }
        // Until the process has reached Redis (`fail_closed`).
        assert_eq!(error_of(resp).await.2, "state_unavailable");
        assert!(Instant::now() < deadline, "instance A never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_slots_and_reservations_return_after_the_lease_ttl() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", slow_stream()).await;
    let (secret, yaml) = key_file("app", "max_concurrent: 1\nbudget: {daily_usd: 10}\n");
    let policy = priced(&up.url(), &redis.url(), "");
    let (_a, mut process, stream) = instance_holding_a_stream(&policy, &yaml, &secret).await;
    let b = TestGateway::start(&policy, &[("k".into(), yaml)]);
    connected(&b).await;
    let mut conn = redis.conn();
    assert_eq!(conn.zcard::<_, u64>("kg:{app}:key:k:slots").unwrap(), 1);
    assert_eq!(conn.zcard::<_, u64>("kg:{app}:key:k:reserved").unwrap(), 1);
    let url = b.url("/v1/chat/completions");
    let resp = post_json(&url, &secret, &chat()).await;
    assert_eq!(error_of(resp).await.2, "concurrency_limit_exceeded");
    // While A runs, it renews its lease past the TTL.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = post_json(&url, &secret, &chat()).await;
    assert_eq!(
        error_of(resp).await.2,
        "concurrency_limit_exceeded",
        "a live holder keeps its slot beyond one TTL"
    );
    process.kill().unwrap();
    process.wait().unwrap();
    drop(stream);
    let killed = Instant::now();
    let resp = loop {
        let resp = post_json(&url, &secret, &chat()).await;
        if resp.status() == 200 {
            break resp;
        }
        assert_eq!(error_of(resp).await.2, "concurrency_limit_exceeded");
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "slot back {:?} after kill -9 (lease TTL 1.5 s)",
        killed.elapsed()
    );
    drop(resp);
    // B's own request is over: nothing is held or reserved any more, the dead one's included.
    eventually("no lease or reservation left", || {
        conn.zcard::<_, u64>("kg:{app}:key:k:slots").unwrap() == 0
            && conn.zcard::<_, u64>("kg:{app}:key:k:reserved").unwrap() == 0
            && conn
                .hget::<_, _, i64>("kg:{app}:key:k:budget", "r")
                .unwrap()
                == 0
    })
    .await;
}

/// A crashed holder's reservation is given back however long nobody used the budget: it does not
/// vanish with its set and stay counted in the reserved total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_reservation_is_given_back_after_a_quiet_spell() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", slow_stream()).await;
    let (secret, yaml) = key_file("app", "budget: {daily_usd: 10}\n");
    let policy = priced(&up.url(), &redis.url(), "");
    let (_a, mut process, stream) = instance_holding_a_stream(&policy, &yaml, &secret).await;
    let mut conn = redis.conn();
    let reserved = || {
        redis
            .conn()
            .hget::<_, _, i64>("kg:{app}:key:k:budget", "r")
            .unwrap()
    };
    assert!(reserved() > 0);
    process.kill().unwrap();
    process.wait().unwrap();
    drop(stream);
    // Longer than any expiry tied to the lease TTL (1.5 s), with no request on the budget.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(
        reserved() > 0,
        "nobody has given the dead reservation back yet"
    );
    let b = TestGateway::start(&policy, &[("k".into(), yaml)]);
    connected(&b).await;
    let resp = post_json(&b.url("/v1/chat/completions"), &secret, &chat()).await;
    assert_eq!(resp.status(), 200);
    drop(resp);
    eventually("the dead reservation given back", || {
        conn.zcard::<_, u64>("kg:{app}:key:k:reserved").unwrap() == 0 && reserved() == 0
    })
    .await;
}

/// Redis killed under traffic, then restarted, with `on_error: mode`. Returns what the requests
/// answered while it was down.
async fn redis_down(mode: &str) -> Vec<(u16, String)> {
    let mut redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "rate_limits:\n  - {requests: 3, per: 1h}\n");
    let admin_port = free_port();
    let policy = fleet_policy(
        &up.url(),
        &redis.url(),
        mode,
        &format!("admin_listen: 127.0.0.1:{admin_port}\n"),
        "",
    )
    .replace("timeout: 1s", "timeout: 100ms");
    let gw = TestGateway::start(&policy, &[("k".into(), yaml)]);
    connected(&gw).await;
    let url = gw.url("/v1/chat/completions");
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    assert_eq!(post_json(&url, &secret, &chat()).await.status(), 200);
    let window = "kg:{app}:key:k:r3600000";
    assert_eq!(redis.conn().hget::<_, _, u64>(window, "c").unwrap(), 1);

    redis.kill();
    let mut answers = Vec::new();
    for _ in 0..5 {
        let sent = Instant::now();
        let resp = post_json(&url, &secret, &chat()).await;
        // Bounded by the timeout (100 ms), with room for a loaded machine: never a hang.
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "{:?}",
            sent.elapsed()
        );
        let status = resp.status().as_u16();
        let code = if status == 200 {
            String::new()
        } else {
            let (_, kind, code) = error_of(resp).await;
            format!("{kind}/{code}")
        };
        answers.push((status, code));
    }
    eventually("the health gauge to fall", || {
        gw.handles().metrics.state_healthy.get() == 0
    })
    .await;
    let ready = client()
        .get(&readyz)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(
        ready,
        if mode == "fail_closed" { 503 } else { 200 },
        "{mode}"
    );
    let metrics = common::get_text(&format!("http://127.0.0.1:{admin_port}/metrics")).await;
    assert!(
        metrics.contains(&format!(
            "keygate_state_operations_total{{op=\"admit\",result=\"{mode}\"}}"
        )),
        "{metrics}"
    );

    redis.restart();
    connected(&gw).await;
    // A data-plane thread's own connection finds Redis gone only when it next uses it, so the
    // first admission there may still fail over to `on_error`; the next ones count again.
    let counted = || redis.conn().hget::<_, _, Option<u64>>(window, "c").unwrap();
    eventually_async(|| async {
        post_json(&url, &secret, &chat()).await.status() == 200 && counted().is_some()
    })
    .await;
    // Counting resumed in the fresh Redis: the first request it saw is its only one.
    assert_eq!(counted(), Some(1));
    assert_eq!(client().get(&readyz).send().await.unwrap().status(), 200);
    answers
}

async fn eventually_async<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_open_admits_everything() {
    let answers = redis_down("fail_open").await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_closed_refuses_with_state_unavailable() {
    let answers = redis_down("fail_closed").await;
    assert!(
        answers
            .iter()
            .all(|(s, c)| *s == 503 && c == "api_error/state_unavailable"),
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_local_enforces_limits_per_instance() {
    let answers = redis_down("local").await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    // The instance's own window is empty: its limit of 3 applies to it alone.
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{answers:?}");
}

const ADMIN_TOKEN: &str = "ops:fleet-admin-token-0123456789abcdef";

async fn admin_post(gw: &TestGateway, path: &str, body: Option<Value>) -> Value {
    let mut req = client()
        .post(format!("http://127.0.0.1:{}{path}", gw.admin_port()))
        .bearer_auth("fleet-admin-token-0123456789abcdef");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Instances with admin listeners, sharing `redis`.
fn two_with_admin(
    up: &MockUpstream,
    redis: &RedisServer,
    keys: &[(String, String)],
    extra: &str,
) -> (TestGateway, TestGateway) {
    two_with_admin_of(keys, |head| {
        fleet_policy(&up.url(), &redis.url(), "fail_closed", head, extra)
    })
}

/// Instances with admin listeners, each with the policy `policy` makes of its `admin_listen` line.
fn two_with_admin_of(
    keys: &[(String, String)],
    policy: impl Fn(&str) -> String,
) -> (TestGateway, TestGateway) {
    let start = || {
        let head = format!("admin_listen: 127.0.0.1:{}\n", free_port());
        TestGateway::prepare(&policy(&head), keys).boot_with_admin(Some(ADMIN_TOKEN))
    };
    (start(), start())
}

/// `policy` with an Anthropic model `c1` at `upstream` beside `m1`, in the workload `app`.
fn with_claude(policy: &str, upstream: &str) -> String {
    policy
        .replace(
            "models:\n  m1:\n",
            &format!(
                "  p2:\n    format: anthropic\n    api_key: sk-ant-real\n    endpoints:\n      - {{url: \"{upstream}\"}}\nmodels:\n  c1:\n    provider: p2\n  m1:\n"
            ),
        )
        .replace("    models: [m1]\n", "    models: [m1, c1]\n")
}

/// The chat echo, or on the Messages API a message that wrote 30 prompt tokens to Anthropic's
/// prompt cache and read 200 from it.
fn chat_or_message(path: &str, _: &Value) -> Reply {
    if !path.starts_with("/v1/messages") {
        return Reply::ChatEcho;
    }
    Reply::Json {
        status: 200,
        body: json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 7, "cache_creation_input_tokens": 30,
                      "cache_read_input_tokens": 200, "output_tokens": 12}
        }),
    }
}

/// Time from now until `url` refuses `secret` with `code`.
async fn refused_within(url: &str, secret: &str, code: &str) -> Duration {
    let start = Instant::now();
    loop {
        let resp = post_json(url, secret, &chat()).await;
        if resp.status() != 200 {
            assert_eq!(error_of(resp).await.2, code);
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_paused_or_rotated_on_one_instance_is_refused_by_the_other_within_a_second() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (paused_secret, paused_yaml) = key_file("app", "");
    let (rotated_secret, rotated_yaml) = key_file("app", "");
    let (a, b) = two_with_admin(
        &up,
        &redis,
        &[
            ("paused".into(), paused_yaml.clone()),
            ("rotated".into(), rotated_yaml),
        ],
        "",
    );
    connected(&a).await;
    connected(&b).await;
    let url_b = b.url("/v1/chat/completions");
    for secret in [&paused_secret, &rotated_secret] {
        assert_eq!(post_json(&url_b, secret, &chat()).await.status(), 200);
    }

    let reply = admin_post(&a, "/admin/keys/paused/pause", None).await;
    assert_eq!(reply["fleet_event_published"], true, "{reply}");
    let took = refused_within(&url_b, &paused_secret, "key_paused").await;
    println!("paused on A → refused by B after {took:?}");
    assert!(took < Duration::from_secs(1));

    let reply = admin_post(&a, "/admin/keys/rotated/rotate", None).await;
    assert_eq!(reply["fleet_event_published"], true, "{reply}");
    let took = refused_within(&url_b, &rotated_secret, "invalid_api_key").await;
    println!("rotated on A → old secret refused by B after {took:?}");
    assert!(took < Duration::from_secs(1));
    // B's own files still hold the old secret: only the event refuses it.
    assert!(std::fs::read_to_string(b.keys_dir().join("paused.yaml"))
        .unwrap()
        .lines()
        .all(|l| !l.starts_with("status")));

    // An instance that starts later (or reconnects) reads the events it missed.
    let (c, _) = two_with_admin(&up, &redis, &[("paused".into(), paused_yaml)], "");
    connected(&c).await;
    let url_c = c.url("/v1/chat/completions");
    refused_within(&url_c, &paused_secret, "key_paused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_rotation_keep_the_shared_counters() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "rate_limits:\n  - {requests: 6, per: 1h}\n");
    let (a, b) = two_with_admin(&up, &redis, &[("k".into(), yaml)], "");
    connected(&a).await;
    connected(&b).await;
    for gw in [&a, &b, &a] {
        let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &chat()).await;
        assert_eq!(resp.status(), 200);
    }
    // Rotation on A; B gets the new file as a GitOps sync would deliver it.
    let rotated = admin_post(&a, "/admin/keys/k/rotate", Some(json!({"grace": "1h"}))).await;
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    std::fs::copy(a.keys_dir().join("k.yaml"), b.keys_dir().join("k.yaml")).unwrap();
    b.handles().reloader.reload().await.unwrap();
    a.handles().reloader.reload().await.unwrap();
    let mut admitted = 0;
    for i in 0..8 {
        let gw = [&a, &b][i % 2];
        let resp = post_json(&gw.url("/v1/chat/completions"), &new_secret, &chat()).await;
        match resp.status().as_u16() {
            200 => admitted += 1,
            _ => assert_eq!(error_of(resp).await.2, "rate_limit_exceeded"),
        }
    }
    assert_eq!(
        admitted, 3,
        "the 3 requests before the rotation still count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_view_shows_the_whole_fleet() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::Pick(chat_or_message)).await;
    let (free, free_yaml) = key_file("app", "");
    let (limited, limited_yaml) = key_file("app", "rate_limits:\n  - {requests: 100, per: 1h}\n");
    let (cached, cached_yaml) = key_file("app", "");
    let keys = [
        ("free".into(), free_yaml),
        ("limited".into(), limited_yaml),
        ("cached".into(), cached_yaml),
    ];
    // Each instance also keeps its own usage database, which the admin endpoint shows beside.
    let (a, b) = two_with_admin_of(&keys, |head| {
        let head = format!("{head}state_dir: state\n");
        let policy = fleet_policy(&up.url(), &redis.url(), "fail_closed", &head, "");
        with_claude(&policy, &up.url())
    });
    connected(&a).await;
    connected(&b).await;
    for (i, secret) in [&free, &free, &free, &limited, &limited].iter().enumerate() {
        let gw = [&a, &b][i % 2];
        let resp = post_json(&gw.url("/v1/chat/completions"), secret, &chat()).await;
        assert_eq!(resp.status(), 200);
    }
    let message = json!({"model": "c1", "max_tokens": 10,
                         "messages": [{"role": "user", "content": "hi"}]});
    for gw in [&a, &b] {
        let resp = post_json(&gw.url("/v1/messages"), &cached, &message).await;
        assert_eq!(resp.status(), 200);
    }
    let usage_of = |key: &'static str| {
        let url = format!(
            "http://127.0.0.1:{}/admin/keys/{key}/usage?by=model",
            a.admin_port()
        );
        async move {
            let resp = client()
                .get(url)
                .bearer_auth("fleet-admin-token-0123456789abcdef")
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let free_usage = usage_of("free").await;
        let limited_usage = usage_of("limited").await;
        let cached_usage = usage_of("cached").await;
        if free_usage["fleet_usage"]["total"]["requests"] == 3
            && limited_usage["fleet_usage"]["total"]["requests"] == 2
            && cached_usage["fleet_usage"]["total"]["requests"] == 2
            && cached_usage["usage"]["total"]["requests"] == 1
        {
            assert_eq!(free_usage["fleet_usage"]["total"]["prompt_tokens"], 21);
            assert_eq!(free_usage["fleet_usage"]["rows"][0]["group"], "m1");
            // No cache-write field was written, as in a hash an older keygate wrote: zero.
            assert_eq!(free_usage["fleet_usage"]["total"]["cache_write_tokens"], 0);
            // Both instances' cache reads and writes in Redis; A's alone in its database.
            let cache = |usage: &Value| {
                (
                    usage["total"]["cached_tokens"].clone(),
                    usage["total"]["cache_write_tokens"].clone(),
                )
            };
            assert_eq!(
                cache(&cached_usage["fleet_usage"]),
                (json!(400), json!(60)),
                "{cached_usage}"
            );
            assert_eq!(
                cached_usage["fleet_usage"]["rows"][0]["group"], "c1",
                "{cached_usage}"
            );
            assert_eq!(
                cache(&cached_usage["usage"]),
                (json!(200), json!(30)),
                "{cached_usage}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{free_usage} {limited_usage} {cached_usage}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = Command::new(keygate_bin())
        .args(["usage", "--fleet", "--by", "key", "--config"])
        .arg(&b.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let cell = |group: &str, column: &str| {
        let at = header.iter().position(|h| *h == column)?;
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(group))
            .and_then(|l| l.split_whitespace().nth(at))
            .map(str::to_owned)
    };
    assert_eq!(cell("free", "REQUESTS").as_deref(), Some("3"), "{table}");
    assert_eq!(cell("limited", "REQUESTS").as_deref(), Some("2"), "{table}");
    assert_eq!(cell("cached", "REQUESTS").as_deref(), Some("2"), "{table}");
    assert_eq!(cell("total", "REQUESTS").as_deref(), Some("7"), "{table}");
    assert_eq!(cell("free", "CACHE_WRITE").as_deref(), Some("0"), "{table}");
    assert_eq!(cell("cached", "CACHED").as_deref(), Some("400"), "{table}");
    assert_eq!(
        cell("cached", "CACHE_WRITE").as_deref(),
        Some("60"),
        "{table}"
    );
    assert_eq!(
        cell("total", "CACHE_WRITE").as_deref(),
        Some("60"),
        "{table}"
    );
}

#[test]
fn check_names_every_problem_of_the_state_section() {
    let cases = [
        ("state: {backend: redis}\n", "state.redis"),
        (
            "state: {backend: redis, redis: {url: \"http://127.0.0.1:6379\"}}\n",
            "state.redis.url",
        ),
        (
            "state: {backend: redis, redis: {url: \"redis://127.0.0.1:6379\", cluster: [\"redis://127.0.0.1:7000\"]}}\n",
            "state.redis",
        ),
        (
            "state: {backend: redis, redis: {url: \"redis://127.0.0.1:6379\", timeout: soon}}\n",
            "state.redis.timeout",
        ),
        (
            "state: {backend: memory, redis: {url: \"redis://127.0.0.1:6379\"}}\n",
            "state.redis",
        ),
        ("state: {backend: redis, on_error: maybe}\n", "on_error"),
    ];
    for (state, field) in cases {
        let gw = TestGateway::prepare(
            &format!(
                "{state}{}",
                common::one_model_policy("http://127.0.0.1:9", "")
            ),
            &[],
        );
        let out = Command::new(keygate_bin())
            .args(["check", "--config"])
            .arg(&gw.config_path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{state} was accepted");
        assert!(said.contains(field), "{state}: {said}");
    }
}

/// Three cluster-enabled redis-servers joined into one Redis Cluster.
struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let port = free_port();
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ])
                    .args(["--save", "", "--appendonly", "no", "--dir"])
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let mut node = RedisServer { child, port, dir };
                node.wait_ready();
                node
            })
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed with redis-server");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.conn())
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster never formed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_and_its_workload_are_counted_in_one_script_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "rate_limits:\n  - {requests: 5, per: 1h}\n");
    let nodes: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("\"{}\"", n.url()))
        .collect();
    let policy = fleet_policy(&up.url(), "x", "fail_closed", "", "")
        .replace("url: x", &format!("cluster: [{}]", nodes.join(", ")));
    let policy = policy.replace(
        "    models: [m1]\n",
        "    models: [m1]\n    rate_limits: [{requests: 100, per: 1h}]\n",
    );
    let (a, b) = two_connected(&policy, "k", yaml).await;
    let mut admitted = 0;
    for i in 0..8 {
        let gw = [&a, &b][i % 2];
        let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &chat()).await;
        match resp.status().as_u16() {
            200 => admitted += 1,
            _ => assert_eq!(error_of(resp).await.2, "rate_limit_exceeded"),
        }
    }
    assert_eq!(admitted, 5);
    // The key's and the workload's counters share the workload's hash slot.
    let holders: Vec<u16> = cluster
        .nodes
        .iter()
        .filter(|n| {
            redis::cmd("KEYS")
                .arg("kg:*")
                .query::<Vec<String>>(&mut n.conn())
                .unwrap()
                .len()
                >= 2
        })
        .map(|n| n.port)
        .collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brute_force_guard_counts_failures_across_the_fleet() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let policy = fleet_policy(
        &up.url(),
        &redis.url(),
        "fail_closed",
        "auth_guard: {max_failures: 4, per: 1h}\n",
        "",
    );
    let (a, b) = two_connected(&policy, "k", yaml).await;
    let mut answers = Vec::new();
    for i in 0..6 {
        let (wrong, _) = key_file("app", "");
        let gw = [&a, &b][i % 2];
        let resp = post_json(&gw.url("/v1/chat/completions"), &wrong, &chat()).await;
        answers.push(error_of(resp).await);
    }
    let codes: Vec<(u16, &str)> = answers.iter().map(|(s, _, c)| (*s, c.as_str())).collect();
    // Each instance alone has seen three failures, under its limit of four: only the fleet's
    // count refuses the fifth.
    assert_eq!(
        codes,
        [
            (401, "invalid_api_key"),
            (401, "invalid_api_key"),
            (401, "invalid_api_key"),
            (401, "invalid_api_key"),
            (429, "rate_limit_exceeded"),
            (429, "rate_limit_exceeded"),
        ]
    );
    // The right key from the same address still passes.
    for gw in [&a, &b] {
        let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &chat()).await;
        assert_eq!(resp.status(), 200);
    }
}

/// Redis forgetting its scripts (a restart with persistence, a failover, `SCRIPT FLUSH`) loses
/// no settlement: the settling script is loaded again and sent once, and the keys it writes
/// still expire by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_survive_redis_forgetting_its_scripts() {
    let redis = RedisServer::start();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file(
        "app",
        "budget: {daily_usd: 100}\nrate_limits: [{tokens: 1000000, per: 1m}]\nmax_concurrent: 4\n",
    );
    let gw = TestGateway::start(&priced(&up.url(), &redis.url(), ""), &[("k".into(), yaml)]);
    connected(&gw).await;
    let body =
        json!({"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let url = gw.url("/v1/chat/completions");
    assert_eq!(post_json(&url, &secret, &body).await.status(), 200);
    let day = keygate::limits::now_ms() / 86_400_000;
    let hash = "kg:{app}:key:k:budget";
    let mut conn = redis.conn();
    eventually("the first request settled", || {
        conn.hget::<_, _, Option<u64>>(hash, format!("d:{day}"))
            .unwrap()
            .is_some()
    })
    .await;
    let one: u64 = conn.hget(hash, format!("d:{day}")).unwrap();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut conn)
        .unwrap();
    for _ in 0..3 {
        assert_eq!(post_json(&url, &secret, &body).await.status(), 200);
    }
    eventually("three more settled, each once", || {
        conn.hget::<_, _, u64>(hash, format!("d:{day}")).unwrap() == 4 * one
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        conn.hget::<_, _, u64>(hash, format!("d:{day}")).unwrap(),
        4 * one
    );
    assert_eq!(
        conn.hget::<_, _, i64>(hash, "r").unwrap(),
        0,
        "a reservation leaked"
    );
    assert_eq!(conn.zcard::<_, u64>("kg:{app}:key:k:reserved").unwrap(), 0);
    assert_eq!(conn.zcard::<_, u64>("kg:{app}:key:k:slots").unwrap(), 0);
    for key in ["kg:{app}:key:k:budget", "kg:{app}:key:k:t60000"] {
        let ttl: i64 = conn.pttl(key).unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}

/// A policy whose `state.redis` section is `redis_section` (indented by four spaces).
fn fleet_policy_with(upstream: &str, redis_section: &str) -> String {
    format!(
        "state:\n  backend: redis\n  redis:\n{redis_section}    prefix: kg\n    timeout: 1s\n  on_error: fail_closed\n{}",
        common::one_model_policy(upstream, "")
    )
}

/// Sends `n` chats to each of `urls` in turn; the statuses, in order.
async fn statuses(urls: &[String], secret: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        for url in urls {
            out.push(post_json(url, secret, &chat()).await.status().as_u16());
        }
    }
    out
}

/// `sentinel: {master, nodes}`: the instances find the master through a real Redis Sentinel and
/// share its counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_find_the_master_through_a_sentinel() {
    let master = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor kgmaster 127.0.0.1 {} 1\n",
            dir.path().display(),
            master.port
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (.ci/run installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the sentinel did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "rate_limits:\n  - {requests: 5, per: 10s}\n");
    let policy = fleet_policy_with(
        &up.url(),
        &format!("    sentinel: {{master: kgmaster, nodes: [\"redis://127.0.0.1:{port}\"]}}\n"),
    );
    let (a, b) = two_connected(&policy, "k", yaml).await;
    early_in_window(10_000).await;
    let urls = [a.url("/v1/chat/completions"), b.url("/v1/chat/completions")];
    let got = statuses(&urls, &secret, 4).await;
    assert_eq!(got.iter().filter(|&&s| s == 200).count(), 5, "{got:?}");
    assert!(got.iter().all(|&s| s == 200 || s == 429), "{got:?}");
    let counted: u64 = master.conn().hget("kg:{app}:key:k:r10000", "c").unwrap();
    assert_eq!(counted, 5, "the master behind the sentinel holds the count");
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}

/// `rediss://`: two instances (processes, trusting a test CA through SSL_CERT_FILE, as they
/// would a system root) share their counters over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_counters_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write_pem(dir.path());
    let (cert, key) = ca.issue_pem("127.0.0.1");
    std::fs::write(dir.path().join("redis.crt"), cert).unwrap();
    std::fs::write(dir.path().join("redis.key"), key).unwrap();
    let port = free_port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(dir.path().join("redis.crt"))
        .arg("--tls-key-file")
        .arg(dir.path().join("redis.key"))
        .arg("--tls-ca-cert-file")
        .arg(&ca_file)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (.ci/run installs it)");
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "rate_limits:\n  - {requests: 5, per: 10s}\n");
    let policy = fleet_policy_with(
        &up.url(),
        &format!("    url: rediss://127.0.0.1:{port}/0\n"),
    );
    let mut processes = Vec::new();
    let mut urls = Vec::new();
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let gw = TestGateway::prepare(&policy, &[("k".into(), yaml.clone())]);
        processes.push(
            Command::new(keygate_bin())
                .args(["serve", "--config"])
                .arg(&gw.config_path)
                .env("SSL_CERT_FILE", &ca_file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        urls.push(gw.url("/v1/chat/completions"));
        gateways.push(gw);
    }
    // Until both listen; then `fail_closed` refuses until each has reached Redis over TLS.
    let deadline = Instant::now() + Duration::from_secs(20);
    for gw in &gateways {
        while std::net::TcpStream::connect(("127.0.0.1", gw.port)).is_err() {
            assert!(Instant::now() < deadline, "a gateway did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    early_in_window(10_000).await;
    let mut got = Vec::new();
    while got.len() < 8 {
        let url = &urls[got.len() % 2];
        let resp = post_json(url, &secret, &chat()).await;
        let status = resp.status().as_u16();
        if status == 503 {
            assert_eq!(error_of(resp).await.2, "state_unavailable");
            assert!(
                Instant::now() < deadline,
                "a gateway never reached Redis over TLS"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        got.push(status);
    }
    assert_eq!(got.iter().filter(|&&s| s == 200).count(), 5, "{got:?}");
    assert!(got.iter().all(|&s| s == 200 || s == 429), "{got:?}");
    for mut p in processes {
        let _ = p.kill();
        let _ = p.wait();
    }
    let _ = server.kill();
    let _ = server.wait();
}
