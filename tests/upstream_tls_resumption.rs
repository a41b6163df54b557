//! TLS to providers: a reconnect to a provider resumes the TLS session of an earlier connection
//! instead of a full handshake, for providers trusted through their own `ca_file` too.

mod common;

use common::upstream::{MockUpstream, Reply, TestCa};
use common::{client, key_file, TestGateway};
use serde_json::json;
use std::time::{Duration, Instant};

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
    // A short idle timeout closes each connection between requests, so every request reconnects.
    let config = format!(
        "providers:\n  p1:\n    format: openai\n    api_key: sk-real\n    ca_file: {}\n    endpoints:\n      - {{url: \"https://localhost:{}\"}}\n    pool: {{idle_timeout: 100ms}}\nmodels:\n  m1:\n    provider: p1\nworkloads:\n  app:\n    models: [m1]\n",
        ca_path.display(),
        up.addr().port()
    );
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&config, &[("k".into(), yaml)]);

    let reconnects = 5;
    for _ in 0..=reconnects {
        chat(&gw, &secret).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while up.open_connections() > 0 {
            assert!(
                Instant::now() < deadline,
                "the idle connection was not closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(up.connection_count(), reconnects + 1);
    let (full, resumed) = up.tls_handshakes();
    assert_eq!(
        (full, resumed),
        (1, reconnects),
        "only the first connection needs a full handshake"
    );
}
