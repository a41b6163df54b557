//! How often a request goes upstream: at most `1 + retries` times per model, whatever kind of
//! connection broke under it.
//!
//! The upstream here is a bare HTTP/1.1 server that counts every request it reads whole, answers
//! the first request of each connection and resets (RST) the connection on any later one: a
//! provider that read a POST on a pooled connection and then dropped it, which from keygate's side
//! looks exactly like a pooled connection the provider had closed while idle.

mod common;

use common::upstream::read_request;
use common::{client, error_of, key_file, one_model_policy, TestGateway};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","model":"m1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// Answers the first request of every connection, resets the connection on the next one.
struct ResettingUpstream {
    port: u16,
    /// Requests read whole, on every connection.
    read: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ResettingUpstream {
    async fn start() -> ResettingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, counter.clone()));
            }
        });
        ResettingUpstream { port, read, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests_read(&self) -> usize {
        self.read.load(Ordering::SeqCst)
    }
}

impl Drop for ResettingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, read: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    for nth in 0.. {
        if read_request(&mut stream, &mut buf).await.is_none() {
            return;
        }
        read.fetch_add(1, Ordering::SeqCst);
        if nth > 0 {
            // SO_LINGER 0: the close sends RST, as a provider dropping the connection does.
            let _ = stream.set_zero_linger();
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            ANSWER.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(ANSWER.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

async fn gateway(up: &ResettingUpstream, retries: u32) -> (TestGateway, String) {
    let (secret, yaml) = key_file("app", "");
    let config = one_model_policy(&up.url(), "").replace(
        "    api_key: sk-real\n",
        &format!("    api_key: sk-real\n    retries: {retries}\n"),
    );
    let gw = TestGateway::start(&config, &[("k".into(), yaml)]);
    (gw, secret)
}

async fn chat(gw: &TestGateway, secret: &str) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request sent")
}

/// Sends a first request (which leaves its upstream connection in Pingora's pool) and waits
/// until the pool holds it, so the second request goes out on it.
async fn pool_one_connection(gw: &TestGateway, secret: &str, up: &ResettingUpstream) {
    assert_eq!(chat(gw, secret).await.status(), 200);
    assert_eq!(up.requests_read(), 1);
    // The connection goes back to the pool once the response is finished on keygate's side,
    // which may be a moment after the client has read it.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

fn pooled_connections(gw: &TestGateway) -> u64 {
    gw.handles()
        .upstreams
        .snapshot()
        .iter()
        .map(|s| s.connections_reused)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_read_on_a_pooled_connection_is_not_resent_without_retries() {
    let up = ResettingUpstream::start().await;
    let (gw, secret) = gateway(&up, 0).await;
    pool_one_connection(&gw, &secret, &up).await;

    let resp = chat(&gw, &secret).await;
    assert_eq!(
        pooled_connections(&gw),
        1,
        "the second request went on the pooled connection"
    );
    assert_eq!(
        up.requests_read(),
        2,
        "with retries: 0 the provider read the second request exactly once"
    );
    let (status, kind, code) = error_of(resp).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (502, "api_error", "upstream_unavailable")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_that_broke_is_retried_within_retries_on_the_same_endpoint() {
    let up = ResettingUpstream::start().await;
    let (gw, secret) = gateway(&up, 1).await;
    pool_one_connection(&gw, &secret, &up).await;

    // The only endpoint is tried again, on a fresh connection, as the one retry.
    assert_eq!(chat(&gw, &secret).await.status(), 200);
    assert_eq!(pooled_connections(&gw), 1);
    assert_eq!(
        up.requests_read(),
        3,
        "1 + 1 for the first request, 1 for the second"
    );
}
