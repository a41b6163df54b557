//! A provider that reports absurd token counts (1.8e19, past what SQLite's integer column and a
//! sum of two u64 hold). The counts are clamped per request, sums saturate, nothing panics, and
//! the stored totals never keep the gateway from starting again. Its own test binary: a panic
//! here would otherwise show in every test that watches the shared process for panics.

mod chaos;
mod common;

use chaos::*;
use serde_json::Value;
use std::time::Duration;

const FAST_TIMEOUTS: &str =
    "    retries: 0\n    timeouts: {connect: 1s, first_byte: 500ms, idle: 500ms}";

async fn body_of(resp: reqwest::Response) -> Vec<u8> {
    let read = tokio::time::timeout(Duration::from_secs(15), resp.bytes());
    read.await
        .expect("the response ends")
        .expect("a whole body")
        .to_vec()
}

/// The clamp the issue names: no request is charged more than this many tokens of either kind.
const TOKEN_CLAMP: u64 = 1_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_token_counts_are_clamped_and_the_database_still_opens() {
    let body = completion_with_usage(
        r#"{"prompt_tokens":18000000000000000000,"completion_tokens":18000000000000000000,"total_tokens":36000000000000000000}"#,
    );
    let response = [
        head(
            200,
            &[
                "content-type: application/json",
                &format!("content-length: {}", body.len()),
            ],
        ),
        body.into_bytes(),
    ]
    .concat();
    let up = RawUpstream::start(vec![
        Step::Send(response.clone()),
        Step::NextRequest,
        Step::Send(response),
    ])
    .await;
    let mut c = gateway(&up.url, FAST_TIMEOUTS).await;
    for _ in 0..2 {
        let resp = post_chat(&c, &chat("m1", false)).await;
        assert_eq!(resp.status(), 200);
        body_of(resp).await;
    }
    let lines = c.gw.booked(2).await;
    assert_no_panics();
    assert_eq!(lines.len(), 2, "both requests are booked");
    for line in &lines {
        let (prompt, completion, _) = charged(line);
        assert!(
            prompt <= TOKEN_CLAMP && completion <= TOKEN_CLAMP,
            "clamped: {line}"
        );
        assert!(line["cost_usd"].as_f64().is_some_and(f64::is_finite));
    }
    // A restart reads the stored totals back: they must still be integers it can open.
    c.gw.running.take().expect("running").shutdown();
    let restarted = keygate::server::RunningGateway::start(&c.gw.config_path, None);
    let restarted = restarted.unwrap_or_else(|e| panic!("the gateway no longer starts: {e}"));
    c.gw.running = Some(restarted);
    let out = std::process::Command::new(common::keygate_bin())
        .args(["usage", "--json", "--config"])
        .arg(&c.gw.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let total = report["total"]["prompt_tokens"].as_u64();
    assert!(total.is_some_and(|t| t <= 2 * TOKEN_CLAMP), "{report}");
    still_serves(&c).await;
}
