//! Exercises the mock upstreams in `tests/common/upstream.rs` directly, so gateway tests
//! can rely on them.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::upstream::{dead_port, free_port, MockUpstream, Reply, TestCa};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_reply_and_request_is_recorded() {
    let up = MockUpstream::start(
        "alpha",
        Reply::Json {
            status: 201,
            body: json!({"hello": "world"}),
        },
    )
    .await;
    assert!(up.url().starts_with("http://127.0.0.1:"));
    assert_eq!(up.url(), format!("http://{}", up.addr()));

    let resp = client()
        .post(format!("{}/v1/things?x=1&y=2", up.url()))
        .header("x-test", "yes")
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-mock-name"], "alpha");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["content-length"], "17");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"hello": "world"}));

    assert_eq!(up.request_count(), 1);
    let reqs = up.requests();
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/things?x=1&y=2");
    assert_eq!(r.header("x-test"), Some("yes"));
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json(), json!({"a": 1}));
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_ok_echoes_model_and_set_reply_switches() {
    let up = MockUpstream::start("chat", Reply::chat_ok()).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", up.url());

    let resp = c
        .post(&url)
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})
    );

    up.set_reply(Reply::Json {
        status: 429,
        body: json!({"error": "slow down"}),
    });
    let resp = c.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-mock-name"], "chat");

    assert_eq!(up.request_count(), 2);
    // Keep-alive is offered; the client's pool may still open a second connection under load.
    assert!((1..=2).contains(&up.connection_count()));
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn large_and_chunked_bodies_are_recorded_intact() {
    const LEN: usize = 5 * 1024 * 1024;
    let up = MockUpstream::start(
        "big",
        Reply::Json {
            status: 200,
            body: json!({}),
        },
    )
    .await;
    let c = client();
    let data = pattern(LEN);

    // Content-Length body.
    let resp = c
        .post(format!("{}/upload", up.url()))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Chunked body, 64 KiB per chunk.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = c
        .post(format!("{}/upload-chunked", up.url()))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let reqs = up.wait_for_requests(2).await;
    assert_eq!(reqs[0].path, "/upload");
    assert_eq!(reqs[0].header("content-length"), Some("5242880"));
    assert_eq!(reqs[0].body.len(), LEN);
    assert!(reqs[0].body == data, "content-length body differs");
    assert_eq!(reqs[1].path, "/upload-chunked");
    assert_eq!(reqs[1].header("transfer-encoding"), Some("chunked"));
    assert_eq!(reqs[1].body.len(), LEN);
    assert!(reqs[1].body == data, "chunked body differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_are_separate_chunks_with_interval() {
    let events: Vec<String> = (0..3).map(|i| format!("data: {{\"n\":{i}}}\n\n")).collect();
    let interval = Duration::from_millis(200);
    let up = MockUpstream::start(
        "sse",
        Reply::Sse {
            events: events.clone(),
            interval,
        },
    )
    .await;

    let start = Instant::now();
    let resp = client()
        .post(format!("{}/v1/chat/completions", up.url()))
        .json(&json!({"stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-mock-name"], "sse");
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert!(resp.headers().get("content-length").is_none());

    let mut stream = resp.bytes_stream();
    let mut chunks = Vec::new();
    let mut first_at = None;
    while let Some(chunk) = stream.next().await {
        first_at.get_or_insert_with(|| start.elapsed());
        chunks.push(chunk.unwrap());
    }
    let total = start.elapsed();
    let first_at = first_at.expect("no chunk received");

    let received: Vec<String> = chunks
        .iter()
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    assert_eq!(received, events, "one chunk per event");
    assert!(
        first_at < interval,
        "first event should come immediately, came after {first_at:?}"
    );
    assert!(
        total >= interval * 2,
        "3 events 200ms apart took only {total:?}"
    );
    assert!(first_at < total);
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_stream_ok_is_openai_like() {
    let up = MockUpstream::start("s", Reply::chat_stream_ok("gpt-s")).await;
    let text = client()
        .post(format!("{}/v1/chat/completions", up.url()))
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let datas: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data: prefix"))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"));
    let usage: Value = serde_json::from_str(datas[datas.len() - 2]).unwrap();
    assert_eq!(usage["model"], "gpt-s");
    assert_eq!(usage["usage"]["total_tokens"], 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn delayed_reply_waits() {
    let delay = Duration::from_millis(300);
    let up = MockUpstream::start(
        "slow",
        Reply::Delayed {
            delay,
            reply: Box::new(Reply::Json {
                status: 200,
                body: json!({"ok": true}),
            }),
        },
    )
    .await;

    let start = Instant::now();
    let resp = client().get(up.url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        start.elapsed() >= delay,
        "replied after {:?}",
        start.elapsed()
    );

    // A client with a shorter timeout gives up; the request is still recorded.
    let err = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap()
        .get(up.url())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    up.wait_for_requests(2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_drops_connection_without_response() {
    let up = MockUpstream::start("reset", Reply::Reset).await;
    let err = client()
        .post(format!("{}/v1/chat/completions", up.url()))
        .body("{\"model\":\"m\"}")
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none(), "{err:?}");
    let reqs = up.wait_for_requests(1).await;
    assert_eq!(reqs[0].body.as_ref(), b"{\"model\":\"m\"}");

    // Raw check: the server closes without writing a single byte.
    let mut s = TcpStream::connect(up.addr()).await.unwrap();
    s.write_all(b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    assert!(buf.is_empty(), "got {:?}", String::from_utf8_lossy(&buf));
}

fn tls_connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_mock_trusted_by_test_ca() {
    let ca = TestCa::new();
    let up = MockUpstream::start_tls("secure", Reply::chat_ok(), &ca, "localhost").await;
    assert_eq!(up.url(), format!("https://localhost:{}", up.addr().port()));

    // The written PEM is the CA the client trusts.
    let dir = tempfile::tempdir().unwrap();
    let pem_path = ca.write_pem(dir.path());
    let pem = std::fs::read_to_string(&pem_path).unwrap();
    assert_eq!(pem, ca.ca_cert_pem);
    assert_eq!(
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
        ca.ca_cert_der()
    );

    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let mut tls = tls_connector(&pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let body = br#"{"model":"tls-model"}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-mock-name: secure"), "{text}");
    assert!(text.contains("\"model\":\"tls-model\""), "{text}");

    let reqs = up.wait_for_requests(1).await;
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].json()["model"], "tls-model");

    // A client trusting another CA is rejected.
    let other = TestCa::new();
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let res = tls_connector(&other.ca_cert_pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(res.is_err(), "handshake with an untrusted CA succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_leaf_for_ip_address() {
    let ca = TestCa::new();
    let up = MockUpstream::start_tls("ip", Reply::chat_ok(), &ca, "127.0.0.1").await;
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let mut tls = tls_connector(&ca.ca_cert_pem)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_frees_port_and_dead_port_refuses() {
    let up = MockUpstream::start("gone", Reply::chat_ok()).await;
    let addr = up.addr();
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    up.stop().await;
    let mut buf = [0u8; 1];
    assert_eq!(idle.read(&mut buf).await.unwrap_or(0), 0);
    assert!(TcpStream::connect(addr).await.is_err());

    let port = dead_port();
    let err = TcpStream::connect(("127.0.0.1", port)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    let port = free_port();
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("free_port is bindable");
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_stops_the_mock() {
    let up = MockUpstream::start("dropped", Reply::chat_ok()).await;
    let addr = up.addr();
    drop(up);
    // Dropping is asynchronous (the accept task is aborted); it completes promptly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "port still accepting after drop");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[should_panic(expected = "expected at least 1 request(s)")]
async fn wait_for_requests_panics_on_timeout() {
    let up = MockUpstream::start("idle", Reply::chat_ok()).await;
    up.wait_for_requests(1).await;
}
