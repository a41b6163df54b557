//! The upstream keep-alive pool: sized for the concurrency keygate serves, and each provider's
//! `pool.idle_timeout` closing connections nobody reuses.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{client, key_file, TestGateway};
use futures_util::future::join_all;
use serde_json::json;
use std::time::{Duration, Instant};

fn policy(upstream: &str, pool: &str) -> String {
    format!(
        "providers:\n  p1:\n    format: openai\n    api_key: sk-real\n    endpoints:\n      - {{url: \"{upstream}\"}}\n{pool}models:\n  m1:\n    provider: p1\nworkloads:\n  app:\n    models: [m1]\n"
    )
}

/// Sends `n` chat requests at once through one client and waits for all of them; every one must
/// succeed.
async fn burst(http: &reqwest::Client, gw: &TestGateway, secret: &str, n: usize) {
    let url = gw.url("/v1/chat/completions");
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]});
    let answers = join_all((0..n).map(|_| {
        http.post(&url)
            .bearer_auth(secret)
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
    }))
    .await;
    for answer in answers {
        let status = answer.expect("request answered").status();
        assert_eq!(status, 200);
    }
}

/// Polls `f` until it holds or `limit` passes; whether it held.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_burst_of_a_thousand_reuses_the_first_bursts_connections() {
    // Each request is held long enough for the whole burst to be in flight at once.
    let upstream = MockUpstream::start(
        "pooled",
        Reply::Delayed {
            delay: Duration::from_secs(1),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &format!("server:\n  threads: 2\n{}", policy(&upstream.url(), "")),
        &[("k".into(), yaml)],
    );
    let http = client();

    burst(&http, &gw, &secret, 1000).await;
    let first = upstream.connection_count();
    assert!(
        first > 500,
        "the first burst was concurrent enough to need many connections: {first}"
    );
    // Every connection of the first burst is back in the pool once its request is booked.
    gw.booked(1000).await;
    burst(&http, &gw, &secret, 1000).await;
    let total = upstream.connection_count();
    assert_eq!(upstream.request_count(), 2000);
    assert!(
        total <= 1050,
        "two bursts of 1,000 used {total} upstream connections (the first alone {first}): the \
         pool did not keep the first burst's connections"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_providers_idle_timeout() {
    let short = MockUpstream::start("short", Reply::chat_ok()).await;
    let long = MockUpstream::start("long", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let pool = "    pool: {max_idle: 16, idle_timeout: 300ms}\n";
    let gw_short = TestGateway::start(&policy(&short.url(), pool), &[("k".into(), yaml.clone())]);
    let gw_long = TestGateway::start(&policy(&long.url(), ""), &[("k".into(), yaml)]);
    let http = client();
    burst(&http, &gw_short, &secret, 4).await;
    burst(&http, &gw_long, &secret, 4).await;
    assert!(short.open_connections() > 0 && long.open_connections() > 0);

    assert!(
        eventually(Duration::from_secs(5), || short.open_connections() == 0).await,
        "idle connections still open {} s after a 300 ms idle_timeout: {}",
        5,
        short.open_connections()
    );
    // The default idle_timeout keeps them: the closing above was the setting's doing.
    assert!(long.open_connections() > 0);

    // A closed connection is not reused: the next request opens a new one and succeeds.
    let before = short.connection_count();
    burst(&http, &gw_short, &secret, 1).await;
    assert_eq!(short.connection_count(), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_closes_the_idle_connections_to_an_endpoint_it_removed() {
    let old = MockUpstream::start("old", Reply::chat_ok()).await;
    let new = MockUpstream::start("new", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&policy(&old.url(), ""), &[("k".into(), yaml)]);
    let http = client();
    burst(&http, &gw, &secret, 4).await;
    let kept = old.open_connections();
    assert!(kept > 0, "the pool keeps the old endpoint's connections");

    std::fs::write(
        &gw.config_path,
        std::fs::read_to_string(&gw.config_path)
            .unwrap()
            .replace(&old.url(), &new.url()),
    )
    .unwrap();
    gw.handles().reloader.reload_blocking().expect("reload");
    burst(&http, &gw, &secret, 2).await;
    assert_eq!(new.request_count(), 2);

    // Well within the 90 s default idle_timeout, which would otherwise keep them.
    assert!(
        eventually(Duration::from_secs(5), || old.open_connections() == 0).await,
        "{} of {kept} idle connections to the removed endpoint still open",
        old.open_connections()
    );
    // The endpoint that stayed keeps its connections.
    assert!(new.open_connections() > 0);
}
