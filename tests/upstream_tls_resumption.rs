//! TLS to providers: a reconnect to a provider resumes the TLS session of an earlier connection
//! instead of a full handshake, for providers trusted through their own `ca_file` too, and so do
//! all the connections of a burst of reconnects.

mod common;

use common::upstream::{MockUpstream, Reply, TestCa};
use common::{client, key_file, TestGateway};
use futures_util::future::join_all;
use serde_json::json;
use std::time::{Duration, Instant};

fn config(ca_path: &std::path::Path, port: u16) -> String {
    // A short idle timeout closes each connection soon after its request, so every request
    // after that reconnects.
    format!(
        "providers:\n  p1:\n    format: openai\n    api_key: sk-real\n    ca_file: {}\n    endpoints:\n      - {{url: \"https://localhost:{port}\"}}\n    pool: {{idle_timeout: 100ms}}\nmodels:\n  m1:\n    provider: p1\nworkloads:\n  app:\n    models: [m1]\n",
        ca_path.display(),
    )
}

/// Waits until the upstream has no connection open; panics after a few seconds.
async fn all_closed(up: &MockUpstream) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle connections were not closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One chat request; it must succeed.
async fn chat(gw: &TestGateway, secret: &str) {
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request answered");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_to_a_provider_with_its_own_ca_resume_the_tls_session() {
    let ca = TestCa::new();
    let up = MockUpstream::start_tls("tls", Reply::chat_ok(), &ca, "localhost").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_pem(dir.path());
    let config = config(&ca_path, up.addr().port());
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&config, &[("k".into(), yaml)]);

    let reconnects = 5;
    for _ in 0..=reconnects {
        chat(&gw, &secret).await;
        all_closed(&up).await;
    }
    assert_eq!(up.connection_count(), reconnects + 1);
    let (full, resumed) = up.tls_handshakes();
    assert_eq!(
        (full, resumed),
        (1, reconnects),
        "only the first connection needs a full handshake"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_reconnects_resumes_every_session() {
    let ca = TestCa::new();
    // Each request is held long enough for the whole burst to be in flight at once, each on a
    // connection of its own.
    let reply = Reply::Delayed {
        delay: Duration::from_secs(1),
        reply: Box::new(Reply::chat_ok()),
    };
    let up = MockUpstream::start_tls("tls-burst", reply, &ca, "localhost").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_pem(dir.path());
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&config(&ca_path, up.addr().port()), &[("k".into(), yaml)]);

    // rustls's own session store keeps 8 TLS 1.3 tickets per server; a burst twice that size
    // needs more.
    let burst = 16;
    join_all((0..burst).map(|_| chat(&gw, &secret))).await;
    let first = up.connection_count();
    let (first_full, first_resumed) = up.tls_handshakes();
    assert_eq!(first_full + first_resumed, first);
    all_closed(&up).await;

    join_all((0..burst).map(|_| chat(&gw, &secret))).await;
    let reopened = up.connection_count() - first;
    assert!(
        reopened > 8,
        "the second burst reopened {reopened} connections, no more than rustls's default keeps tickets for"
    );
    let (full, resumed) = up.tls_handshakes();
    assert_eq!(
        (full - first_full, resumed - first_resumed),
        (0, reopened),
        "every reconnect of the second burst resumes a session of the first"
    );
}
