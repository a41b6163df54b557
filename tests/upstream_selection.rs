//! Upstream peer selection end to end: weighted spread, passive ejection and return, retries,
//! fallbacks across providers, least-requests balancing and each upstream timeout.

mod common;

use common::upstream::{MockUpstream, Reply, TestCa};
use common::{client, error_of, key_file, TestGateway};
use futures_util::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The live figures of provider `p1`'s endpoint at `url`.
fn p1_stats(gw: &TestGateway, url: &str) -> keygate::upstream::state::EndpointStats {
    gw.handles()
        .upstreams
        .endpoint("p1", url)
        .expect("the endpoint is registered")
}

fn chat(model: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

fn endpoints(list: &[(&str, u32)]) -> String {
    list.iter()
        .map(|(u, w)| format!("      - {{url: \"{u}\", weight: {w}}}\n"))
        .collect()
}

/// A gateway whose one provider `p1` has `eps`, plus `extra` lines, and one key; its secret.
fn gateway_on(eps: &[(&str, u32)], extra: &str) -> (String, TestGateway) {
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&one_provider(eps, extra), &[("k".into(), yaml)]);
    (secret, gw)
}

/// Provider `p1` over `eps` with `extra` provider lines, model `m1` on it, workload `app`.
fn one_provider(eps: &[(&str, u32)], extra: &str) -> String {
    format!(
        "providers:\n  p1:\n    format: openai\n    api_key: sk-one\n    endpoints:\n{}{extra}models:\n  m1:\n    provider: p1\nworkloads:\n  app:\n    models: [m1]\n",
        endpoints(eps)
    )
}

/// `primary` on p1 (`p1_extra` lines) falling back to `backup` on p2 (upstream name
/// `backup-upstream`, credential sk-two). Workload `both` may use both, `only` just the primary.
fn with_fallback(p1: &str, p2: &str, p1_extra: &str) -> String {
    format!(
        r#"providers:
  p1:
    format: openai
    api_key: sk-one
    endpoints:
      - {{url: "{p1}"}}
{p1_extra}  p2:
    format: openai
    api_key: sk-two
    endpoints:
      - {{url: "{p2}"}}
models:
  primary:
    provider: p1
    fallbacks: [backup]
  backup:
    provider: p2
    upstream_model: backup-upstream
workloads:
  both:
    models: [primary, backup]
  only:
    models: [primary]
"#
    )
}

async fn post(gw: &TestGateway, secret: &str, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

fn sse_events(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"w{i}\"}}}}]}}\n\n"))
        .collect()
}

/// Reads a streamed body to its end; `Err` when the stream was cut.
async fn read_stream(resp: reqwest::Response) -> Result<String, String> {
    let mut stream = resp.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => out.extend_from_slice(&c),
            Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&out))),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_3_1_1_hold_within_ten_percent_over_5000_requests() {
    let a = MockUpstream::start("a", Reply::chat_ok()).await;
    let b = MockUpstream::start("b", Reply::chat_ok()).await;
    let c = MockUpstream::start("c", Reply::chat_ok()).await;
    let (secret, gw) = gateway_on(&[(&a.url(), 3), (&b.url(), 1), (&c.url(), 1)], "");
    let total = 5000;
    let workers = 8;
    let http = client();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (http, url, secret) = (http.clone(), gw.url("/v1/chat/completions"), secret.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / workers {
                let r = http
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&chat("m1"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts = [a.request_count(), b.request_count(), c.request_count()];
    assert_eq!(counts.iter().sum::<usize>(), total);
    for (count, weight) in counts.iter().zip([3.0, 1.0, 1.0]) {
        let expected = total as f64 * weight / 5.0;
        assert!(
            (*count as f64 - expected).abs() <= expected * 0.10,
            "counts {counts:?}"
        );
    }
    let stats = gw.handles().upstreams.snapshot();
    assert_eq!(
        stats.iter().map(|s| s.selections).sum::<u64>(),
        total as u64
    );
    // keep-alive: upstream connections are pooled and reused under steady load
    let new: u64 = stats.iter().map(|s| s.connections_new).sum();
    let reused: u64 = stats.iter().map(|s| s.connections_reused).sum();
    assert_eq!(new + reused, total as u64);
    let ratio = reused as f64 / total as f64;
    assert!(ratio > 0.99, "reuse ratio {ratio} ({new} new)");
    eprintln!(
        "distribution 3/1/1 over {total}: {counts:?}; connections new {new}, reused {reused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_endpoint_is_ejected_without_failed_requests_and_returns_when_restarted() {
    let a = MockUpstream::start("a", Reply::chat_ok()).await;
    let b = MockUpstream::start("b", Reply::chat_ok()).await;
    let c = MockUpstream::start("c", Reply::chat_ok()).await;
    let b_url = b.url();
    let b_port = b.addr().port();
    let (secret, gw) = gateway_on(&[(&a.url(), 1), (&b_url, 1), (&c.url(), 1)], "");
    let registry = gw.handles().upstreams.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let http = client();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, url, secret) = (http.clone(), gw.url("/v1/chat/completions"), secret.clone());
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&chat("m1"))
                    .send()
                    .await;
                let good = match r {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if good { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.stop().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = registry.endpoint("p1", &b_url).unwrap();
        if s.ejected {
            break;
        }
        assert!(Instant::now() < deadline, "never ejected: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // traffic keeps flowing around the hole for a while
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = registry.endpoint("p1", &b_url).unwrap();
    assert!(during.ejections >= 1 && during.errors_connect + during.errors_reset >= 1);

    let b2 = MockUpstream::start_on("b2", Reply::chat_ok(), b_port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = registry.endpoint("p1", &b_url).unwrap();
        if !s.ejected && b2.request_count() >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "never returned: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed client requests");
    assert!(ok.load(Ordering::Relaxed) > 100);
    let s = registry.endpoint("p1", &b_url).unwrap();
    assert!(s.healthy(), "{s:?}");
    assert!(s.retries >= 1, "connect failures were retried: {s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_before_the_response_is_retried_on_another_endpoint() {
    let reset = MockUpstream::start("reset", Reply::Reset).await;
    let good = MockUpstream::start("good", Reply::chat_ok()).await;
    let (secret, gw) = gateway_on(&[(&reset.url(), 1), (&good.url(), 1)], "");
    for _ in 0..6 {
        let r = post(&gw, &secret, &chat("m1")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-mock-name"], "good");
    }
    assert!(
        reset.request_count() >= 1,
        "the resetting endpoint was tried"
    );
    // the retried request carried the whole body again
    for r in good.requests() {
        assert_eq!(r.json(), chat("m1"));
    }
    let s = p1_stats(&gw, &reset.url());
    assert!(s.errors_reset >= 1 && s.retries >= 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_mid_stream_cuts_the_stream_without_retry_or_fallback() {
    let cut = MockUpstream::start(
        "cut",
        Reply::SseThenReset {
            events: sse_events(2),
            interval: Duration::from_millis(50),
        },
    )
    .await;
    let backup = MockUpstream::start("backup", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("both", "");
    let gw = TestGateway::start(
        &with_fallback(&cut.url(), &backup.url(), ""),
        &[("k".into(), yaml)],
    );
    let mut body = chat("primary");
    body["stream"] = json!(true);
    let r = post(&gw, &secret, &body).await;
    assert_eq!(r.status(), 200);
    let outcome = read_stream(r).await;
    let err = outcome.expect_err("the stream must be cut");
    assert!(err.contains("w0"), "events before the cut arrived: {err}");
    assert_eq!(cut.request_count(), 1, "no retry after response bytes");
    assert_eq!(
        backup.request_count(),
        0,
        "no fallback after the first byte"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_503_falls_back_with_the_fallbacks_credential_and_upstream_model() {
    let down = MockUpstream::start(
        "down",
        Reply::Json {
            status: 503,
            body: json!({"error": {"message": "overloaded"}}),
        },
    )
    .await;
    let backup = MockUpstream::start("backup", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("both", "");
    let gw = TestGateway::start(
        &with_fallback(&down.url(), &backup.url(), ""),
        &[("k".into(), yaml)],
    );
    let r = post(&gw, &secret, &chat("primary")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-name"], "backup");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["model"], "backup-upstream");
    let rec = &backup.wait_for_requests(1).await[0];
    assert_eq!(rec.header("authorization"), Some("Bearer sk-two"));
    assert_eq!(rec.json()["model"], "backup-upstream");
    assert_eq!(rec.json()["messages"], chat("primary")["messages"]);
    let primary = &down.requests()[0];
    assert_eq!(primary.header("authorization"), Some("Bearer sk-one"));
    assert_eq!(primary.json()["model"], "primary");
    let registry = &gw.handles().upstreams;
    assert_eq!(
        registry.fallbacks(),
        vec![("primary".to_owned(), "backup".to_owned(), 1)]
    );
    assert_eq!(registry.endpoint("p1", &down.url()).unwrap().errors_5xx, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_falls_back_but_not_for_a_key_without_the_fallback_model() {
    let limited = MockUpstream::start(
        "limited",
        Reply::Json {
            status: 429,
            body: json!({"error": {"message": "slow down"}}),
        },
    )
    .await;
    let backup = MockUpstream::start("backup", Reply::chat_ok()).await;
    let (both, both_yaml) = key_file("both", "");
    let (only, only_yaml) = key_file("only", "");
    let gw = TestGateway::start(
        &with_fallback(&limited.url(), &backup.url(), ""),
        &[("both".into(), both_yaml), ("only".into(), only_yaml)],
    );
    let r = post(&gw, &only, &chat("primary")).await;
    assert_eq!(r.status(), 429, "the primary's error, untouched");
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["message"],
        "slow down"
    );
    assert_eq!(backup.request_count(), 0);
    let r = post(&gw, &both, &chat("primary")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-name"], "backup");
    assert_eq!(backup.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_byte_timeout_falls_back() {
    // Pingora's own read timeout, then the watchdog's (first_byte below idle)
    for timeouts in [
        "{first_byte: 500ms, idle: 500ms}",
        "{first_byte: 300ms, idle: 10s}",
    ] {
        let slow = MockUpstream::start(
            "slow",
            Reply::Delayed {
                delay: Duration::from_secs(5),
                reply: Box::new(Reply::chat_ok()),
            },
        )
        .await;
        let backup = MockUpstream::start("backup", Reply::chat_ok()).await;
        let (secret, yaml) = key_file("both", "");
        let gw = TestGateway::start(
            &with_fallback(
                &slow.url(),
                &backup.url(),
                &format!("    timeouts: {timeouts}\n"),
            ),
            &[("k".into(), yaml)],
        );
        let started = Instant::now();
        let r = post(&gw, &secret, &chat("primary")).await;
        assert_eq!(r.status(), 200, "{timeouts}");
        assert_eq!(r.headers()["x-mock-name"], "backup");
        assert!(started.elapsed() < Duration::from_secs(3), "{timeouts}");
        assert_eq!(
            slow.request_count(),
            1,
            "a timeout is not retried on the same provider"
        );
        let s = p1_stats(&gw, &slow.url());
        assert_eq!(s.errors_timeout, 1, "{timeouts}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn least_requests_steers_away_from_an_endpoint_holding_long_streams() {
    let busy = MockUpstream::start(
        "busy",
        Reply::Sse {
            events: sse_events(30),
            interval: Duration::from_millis(100),
        },
    )
    .await;
    let free = MockUpstream::start("free", Reply::chat_ok()).await;
    let (secret, gw) = gateway_on(
        &[(&busy.url(), 1), (&free.url(), 1)],
        "    balance: least_requests\n",
    );
    // open requests until a long stream is held on `busy`
    let mut held = Vec::new();
    while busy.request_count() < 1 {
        let r = post(&gw, &secret, &chat("m1")).await;
        assert_eq!(r.status(), 200);
        if r.headers()["x-mock-name"] == "busy" {
            held.push(r);
        } else {
            r.bytes().await.unwrap();
        }
        assert!(held.len() + free.request_count() < 20);
    }
    let before = busy.request_count();
    for _ in 0..20 {
        let r = post(&gw, &secret, &chat("m1")).await;
        assert_eq!(r.headers()["x-mock-name"], "free");
        r.bytes().await.unwrap();
    }
    assert_eq!(busy.request_count(), before);
    let s = p1_stats(&gw, &busy.url());
    assert_eq!(s.in_flight, 1, "{s:?}");
    drop(held);
}

/// A listener whose accept queue is full: connecting to it times out.
fn unaccepting_listener() -> (std::net::TcpListener, Vec<std::net::TcpStream>, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filler = Vec::new();
    for _ in 0..1000 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => filler.push(s),
            Err(_) => return (listener, filler, addr.port()),
        }
    }
    panic!("the accept queue never filled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_timeout_is_504() {
    let (_listener, _filler, port) = unaccepting_listener();
    let url = format!("http://127.0.0.1:{port}");
    let (secret, gw) = gateway_on(
        &[(&url, 1)],
        "    timeouts: {connect: 300ms}\n    retries: 0\n",
    );
    let started = Instant::now();
    let r = post(&gw, &secret, &chat("m1")).await;
    assert_eq!(
        error_of(r).await,
        (504, "api_error".into(), "upstream_timeout".into())
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let s = p1_stats(&gw, &url);
    assert_eq!(s.errors_connect, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_byte_timeout_is_504() {
    let slow = MockUpstream::start(
        "slow",
        Reply::Delayed {
            delay: Duration::from_secs(5),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let (secret, gw) = gateway_on(
        &[(&slow.url(), 1)],
        "    timeouts: {first_byte: 400ms, idle: 400ms}\n",
    );
    let started = Instant::now();
    let r = post(&gw, &secret, &chat("m1")).await;
    assert_eq!(
        error_of(r).await,
        (504, "api_error".into(), "upstream_timeout".into())
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(slow.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stream_is_cut() {
    // one event, then a pause far longer than `idle`
    let stalls = MockUpstream::start(
        "stalls",
        Reply::Sse {
            events: sse_events(2),
            interval: Duration::from_secs(5),
        },
    )
    .await;
    let (secret, gw) = gateway_on(
        &[(&stalls.url(), 1)],
        "    timeouts: {first_byte: 500ms, idle: 500ms}\n",
    );
    let started = Instant::now();
    let mut body = chat("m1");
    body["stream"] = json!(true);
    let r = post(&gw, &secret, &body).await;
    assert_eq!(r.status(), 200);
    let err = read_stream(r).await.expect_err("the stream must be cut");
    assert!(err.contains("w0"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let s = p1_stats(&gw, &stalls.url());
    assert_eq!(s.errors_timeout, 1);
}

/// `first_byte` below `idle`: Pingora's read timeout is `idle`, the watchdog enforces `first_byte`
/// up to the header and then leaves the body to `idle`.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_byte_shorter_than_idle_holds_on_its_own() {
    let upstream = MockUpstream::start(
        "silent",
        Reply::Delayed {
            delay: Duration::from_secs(10),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let (secret, gw) = gateway_on(
        &[(&upstream.url(), 1)],
        "    timeouts: {first_byte: 300ms, idle: 5s}\n",
    );
    let started = Instant::now();
    let r = post(&gw, &secret, &chat("m1")).await;
    assert_eq!(
        error_of(r).await,
        (504, "api_error".into(), "upstream_timeout".into())
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let s = p1_stats(&gw, &upstream.url());
    assert_eq!(s.errors_timeout, 1);

    // pauses longer than first_byte but shorter than idle, once the header is in: no cut
    upstream.set_reply(Reply::Sse {
        events: sse_events(3),
        interval: Duration::from_secs(1),
    });
    let mut body = chat("m1");
    body["stream"] = json!(true);
    let r = post(&gw, &secret, &body).await;
    assert_eq!(r.status(), 200);
    let text = read_stream(r).await.expect("the stream runs to its end");
    assert!(text.contains("w0") && text.contains("w2"), "{text}");
    let s = p1_stats(&gw, &upstream.url());
    assert_eq!(s.errors_timeout, 1);
}

/// `idle` below `first_byte`: Pingora's read timeout is `first_byte`, the watchdog enforces `idle`
/// from the header on. A cut stream is booked as estimated with the timeout as its error, and the
/// connection it was on is not used again.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_shorter_than_first_byte_holds_on_its_own() {
    let upstream = MockUpstream::start(
        "thinks",
        Reply::Delayed {
            delay: Duration::from_secs(1),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &format!(
            "audit_log: audit.jsonl\n{}",
            one_provider(
                &[(&upstream.url(), 1)],
                "    timeouts: {first_byte: 5s, idle: 300ms}\n",
            )
        ),
        &[("k".into(), yaml)],
    );
    // a wait for the header longer than idle but shorter than first_byte: answered
    let r = post(&gw, &secret, &chat("m1")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();

    // a header and one event, then silence: cut after idle, long before first_byte
    upstream.set_reply(Reply::Sse {
        events: sse_events(2),
        interval: Duration::from_secs(10),
    });
    let started = Instant::now();
    let mut body = chat("m1");
    body["stream"] = json!(true);
    let r = post(&gw, &secret, &body).await;
    assert_eq!(r.status(), 200);
    let err = read_stream(r).await.expect_err("the stream must be cut");
    assert!(err.contains("w0") && !err.contains("w1"), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let lines = audit(&gw, 2).await;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["status"], 200);
    assert_eq!(lines[1]["estimated"], true);
    assert_eq!(lines[1]["error"], "upstream_timeout", "{}", lines[1]);
    let s = p1_stats(&gw, &upstream.url());
    assert_eq!(s.errors_timeout, 1);

    // the shut-down connection is not pooled: the next request opens a new one and succeeds
    upstream.set_reply(Reply::chat_ok());
    let connections = upstream.connection_count();
    let r = post(&gw, &secret, &chat("m1")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(upstream.connection_count(), connections + 1);
}

/// The watchdog's shutdown ends a read through TLS as it does one on plain TCP.
#[tokio::test(flavor = "multi_thread")]
async fn the_idle_watchdog_cuts_a_tls_upstream_too() {
    let ca = TestCa::new();
    let upstream = MockUpstream::start_tls(
        "tls",
        Reply::Sse {
            events: sse_events(2),
            interval: Duration::from_secs(10),
        },
        &ca,
        "localhost",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, gw) = gateway_on(
        &[(&upstream.url(), 1)],
        &format!(
            "    ca_file: {}\n    timeouts: {{first_byte: 5s, idle: 300ms}}\n",
            ca.write_pem(dir.path()).display()
        ),
    );
    let started = Instant::now();
    let mut body = chat("m1");
    body["stream"] = json!(true);
    let r = post(&gw, &secret, &body).await;
    assert_eq!(r.status(), 200);
    let err = read_stream(r).await.expect_err("the stream must be cut");
    assert!(err.contains("w0"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let s = p1_stats(&gw, &upstream.url());
    assert_eq!(s.errors_timeout, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_total_timeout_bounds_the_wait_and_the_stream() {
    // before the header: 504
    let slow = MockUpstream::start(
        "slow",
        Reply::Delayed {
            delay: Duration::from_secs(5),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &one_provider(&[(&slow.url(), 1)], "    timeouts: {total: 600ms}\n"),
        &[("k".into(), yaml.clone())],
    );
    let started = Instant::now();
    let r = post(&gw, &secret, &chat("m1")).await;
    assert_eq!(
        error_of(r).await,
        (504, "api_error".into(), "upstream_timeout".into())
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(gw);

    // a stream that keeps talking past the deadline is cut there
    let chatty = MockUpstream::start(
        "chatty",
        Reply::Sse {
            events: sse_events(30),
            interval: Duration::from_millis(100),
        },
    )
    .await;
    let gw = TestGateway::start(
        &one_provider(&[(&chatty.url(), 1)], "    timeouts: {total: 800ms}\n"),
        &[("k".into(), yaml)],
    );
    let started = Instant::now();
    let mut body = chat("m1");
    body["stream"] = json!(true);
    let r = post(&gw, &secret, &body).await;
    assert_eq!(r.status(), 200);
    let err = read_stream(r).await.expect_err("the stream must be cut");
    assert!(err.contains("w0") && !err.contains("w29"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(2000));
}

#[tokio::test(flavor = "multi_thread")]
async fn active_health_checks_take_an_endpoint_out_and_bring_it_back() {
    let sick = MockUpstream::start("sick", Reply::chat_ok()).await;
    let well = MockUpstream::start("well", Reply::chat_ok()).await;
    let (secret, gw) = gateway_on(
        &[(&sick.url(), 1), (&well.url(), 1)],
            "    health_check: {path: /health, interval: 100ms, unhealthy_after: 2, healthy_after: 2}\n",
    );
    let registry = gw.handles().upstreams.clone();
    let wait_for = |healthy: bool| {
        let registry = registry.clone();
        let url = sick.url();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let s = registry.endpoint("p1", &url);
                if s.as_ref().is_some_and(|s| s.check_down != healthy) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "health never became {healthy}: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sick
        .requests()
        .iter()
        .any(|r| r.method == "GET" && r.path == "/health")
    {
        assert!(Instant::now() < deadline, "no health check arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(true).await;

    sick.set_reply(Reply::Json {
        status: 503,
        body: json!({}),
    });
    wait_for(false).await;
    let before = sick
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    for _ in 0..10 {
        let r = post(&gw, &secret, &chat("m1")).await;
        assert_eq!(r.headers()["x-mock-name"], "well");
    }
    let after = sick
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(
        before, after,
        "no request went to the endpoint failing its check"
    );

    sick.set_reply(Reply::chat_ok());
    wait_for(true).await;
    assert!(registry.endpoint("p1", &sick.url()).unwrap().checks_failed >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_state_survives_a_policy_reload() {
    let dead = format!("http://127.0.0.1:{}", common::upstream::dead_port());
    let live = MockUpstream::start("live", Reply::chat_ok()).await;
    let (secret, gw) = gateway_on(&[(&dead, 1), (&live.url(), 1)], "");
    for _ in 0..8 {
        assert_eq!(post(&gw, &secret, &chat("m1")).await.status(), 200);
    }
    let registry = gw.handles().upstreams.clone();
    assert!(registry.endpoint("p1", &dead).unwrap().ejected);
    // a changed policy (new weight) is a new snapshot with new Provider objects
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        text.replace(
            &format!("{{url: \"{}\", weight: 1}}", live.url()),
            &format!("{{url: \"{}\", weight: 2}}", live.url()),
        ),
    )
    .unwrap();
    let reloader = gw.running.as_ref().unwrap().reloader.clone();
    tokio::task::spawn_blocking(move || reloader.reload_blocking().unwrap())
        .await
        .unwrap();
    assert_eq!(
        gw.running.as_ref().unwrap().store.load().providers["p1"].endpoints[1].weight,
        2
    );
    let connects = registry.endpoint("p1", &dead).unwrap().errors_connect;
    for _ in 0..5 {
        assert_eq!(post(&gw, &secret, &chat("m1")).await.status(), 200);
    }
    let s = registry.endpoint("p1", &dead).unwrap();
    // a fresh state would have started from zero and been tried like a healthy endpoint
    assert!(s.ejected, "{s:?}");
    assert!(
        (connects..=connects + 1).contains(&s.errors_connect),
        "the ejected endpoint got at most its one trial: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_primary_falls_back_after_its_retries() {
    let dead = format!("http://127.0.0.1:{}", common::upstream::dead_port());
    let backup = MockUpstream::start("backup", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("both", "");
    let gw = TestGateway::start(
        &with_fallback(&dead, &backup.url(), ""),
        &[("k".into(), yaml)],
    );
    let r = post(&gw, &secret, &chat("primary")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-name"], "backup");
    let s = p1_stats(&gw, &dead);
    assert_eq!(s.errors_connect, 1, "one endpoint, tried once: {s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn p2c_latency_prefers_the_faster_endpoint() {
    let slow = MockUpstream::start(
        "slow",
        Reply::Delayed {
            delay: Duration::from_millis(60),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let fast = MockUpstream::start("fast", Reply::chat_ok()).await;
    let (secret, gw) = gateway_on(
        &[(&slow.url(), 1), (&fast.url(), 1)],
        "    balance: p2c_latency\n",
    );
    for _ in 0..200 {
        let r = post(&gw, &secret, &chat("m1")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // the slow one wins only when both draws land on it: about a quarter of the time
    let (s, f) = (slow.request_count(), fast.request_count());
    assert!(f > 2 * s, "slow {s}, fast {f}");
    assert!(
        s >= 10,
        "the slow endpoint still gets sampled: slow {s}, fast {f}"
    );
}

/// The audit log's lines once `n` requests are booked.
async fn audit(gw: &TestGateway, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        gw.handles().recorder.flush();
        let text = std::fs::read_to_string(gw.dir.path().join("audit.jsonl")).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_is_accounted_to_the_model_that_answered_and_a_cut_stream_as_estimated() {
    let down = MockUpstream::start(
        "down",
        Reply::Json {
            status: 503,
            body: json!({"error": {"message": "overloaded"}}),
        },
    )
    .await;
    let backup = MockUpstream::start("backup", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("both", "");
    let gw = TestGateway::start(
        &format!(
            "audit_log: audit.jsonl\n{}",
            with_fallback(&down.url(), &backup.url(), "")
        ),
        &[("k".into(), yaml)],
    );
    let r = post(&gw, &secret, &chat("primary")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let lines = audit(&gw, 1).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["model"], "backup");
    assert_eq!(lines[0]["provider"], "p2");
    assert_eq!(lines[0]["endpoint"], backup.url());
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["prompt_tokens"], 7);

    // a stream reset mid-way: no retry, and charged as estimated
    down.set_reply(Reply::SseThenReset {
        events: sse_events(2),
        interval: Duration::from_millis(30),
    });
    let mut body = chat("primary");
    body["stream"] = json!(true);
    let r = post(&gw, &secret, &body).await;
    assert!(read_stream(r).await.is_err());
    let lines = audit(&gw, 2).await;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["model"], "primary");
    assert_eq!(lines[1]["estimated"], true);
    assert_eq!(
        backup.request_count(),
        1,
        "no fallback after the first byte"
    );
}
