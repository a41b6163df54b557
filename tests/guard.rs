//! The brute-force guard end to end, with clients bound to distinct loopback addresses (all of
//! 127.0.0.0/8 is local on Linux): failures are counted exactly per address, and a valid key is
//! never refused, whatever its address has failed before.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{error_of, key_file, TestGateway};
use futures_util::{stream, StreamExt};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const MAX_FAILURES: usize = 2;
const OFFENDERS: u16 = 2_000;
const FRESH: u16 = 50;

/// A loopback address per index, in a /16 of its own (`net`), never 127.0.0.1.
fn loopback(net: u8, i: u16) -> IpAddr {
    let [hi, lo] = i.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, net, hi, lo.wrapping_add(1)))
}

/// A client whose connections leave from `from`.
fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn chat() -> serde_json::Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]})
}

async fn send(http: &reqwest::Client, url: &str, secret: &str) -> reqwest::Response {
    http.post(url)
        .bearer_auth(secret)
        .json(&chat())
        .send()
        .await
        .expect("request sent")
}

fn guess() -> String {
    keygate::keys::secret::generate().unwrap().secret
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_from_many_addresses_lock_out_no_valid_key() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &format!(
            "auth_guard: {{max_failures: {MAX_FAILURES}, per: 10m}}\n{}",
            common::one_model_policy(&up.url(), "")
        ),
        &[("k".into(), yaml)],
    );
    let url = gw.url("/v1/chat/completions");

    // Every offender fails exactly up to the threshold, so none of these guesses may be refused
    // (asserted below, with the other figures).
    let statuses: Vec<u16> = stream::iter(0..OFFENDERS)
        .map(|i| {
            let url = url.clone();
            async move {
                let http = client_from(loopback(10, i));
                let mut statuses = Vec::new();
                for _ in 0..MAX_FAILURES {
                    statuses.push(send(&http, &url, &guess()).await.status().as_u16());
                }
                statuses
            }
        })
        .buffer_unordered(32)
        .flat_map(stream::iter)
        .collect()
        .await;
    assert_eq!(statuses.len(), usize::from(OFFENDERS) * MAX_FAILURES);
    let refused_offenders = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "guesses get 401 or 429"
    );

    // Counting is exact: another address's failures never count against a fresh one (a shared
    // sketch of counters over-counts most addresses once thousands have failed).
    let mut refused_fresh = 0;
    for i in 0..FRESH {
        let r = send(&client_from(loopback(20, i)), &url, &guess()).await;
        match r.status().as_u16() {
            429 => refused_fresh += 1,
            status => assert_eq!(status, 401),
        }
    }

    // A valid key passes from a fresh address and from an offender's.
    let fresh = client_from(loopback(30, 0));
    let valid_fresh = send(&fresh, &url, &secret).await.status().as_u16();
    let offender = client_from(loopback(10, 7));
    let valid_offender = send(&offender, &url, &secret).await.status().as_u16();
    assert_eq!(
        (
            refused_offenders,
            refused_fresh,
            valid_fresh,
            valid_offender
        ),
        (0, 0, 200, 200),
        "(guesses under the threshold refused, of {}; first guesses from fresh addresses refused, \
         of {FRESH}; a valid key from a fresh address; from an offender's)",
        statuses.len()
    );

    // The offender's next guess is refused by the guard, and its valid key still passes.
    let r = send(&offender, &url, &guess()).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_of(r).await,
        (429, "rate_limit_error".into(), "rate_limit_exceeded".into())
    );
    assert_eq!(send(&offender, &url, &secret).await.status(), 200);
    assert_eq!(up.request_count(), 3);
    // Metrics tell the guard's refusal apart from a key's rate limit; they are counted in the
    // logging phase, which may end after the client has its answer.
    let refused_by_guard = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("keygate_refusals_total{")
                && l.contains(r#"reason="auth_guard""#)
                && l.ends_with(" 1")
        })
    };
    let mut tries = 0;
    while !refused_by_guard(&String::from_utf8_lossy(&gw.handles().metrics.render())) {
        tries += 1;
        assert!(
            tries < 100,
            "no refusal with reason auth_guard in the metrics"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
