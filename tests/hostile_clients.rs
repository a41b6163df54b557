//! Hostile clients: garbage bytes, an HTTP/2 preface on the HTTP/1 port, a megabyte of headers,
//! half-closed sockets, pipelined requests, a thousand idle connections, and a client that stops
//! reading a stream. Each case checks that the client gets an answer or a clean close (never a
//! hang), that nothing panicked, and that the gateway still serves a normal request afterwards.

mod chaos;
mod common;

use chaos::*;
use common::upstream::{MockUpstream, Reply};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Long enough for any answer; a connection still open after it is a hang.
const ANSWER: Duration = Duration::from_secs(10);

async fn healthy_gateway() -> (Chaos, MockUpstream) {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let c = gateway(&up.url(), "").await;
    (c, up)
}

/// The status of the one response in `bytes`, if any.
fn status_of(bytes: &[u8]) -> Option<u16> {
    statuses(bytes).first().copied()
}

/// Sends `bytes`, half-closes, and requires a 4xx answer or a close, in time.
async fn refused_or_closed(port: u16, bytes: &[u8]) {
    let mut sock = connect(port).await;
    // The gateway may close before reading everything: a failed write is a close too.
    if sock.write_all(bytes).await.is_ok() {
        let _ = sock.shutdown().await;
    }
    let (answer, closed) = read_until_closed(&mut sock, ANSWER).await;
    assert!(closed, "the connection was left hanging");
    if let Some(status) = status_of(&answer) {
        assert!(
            (400..500).contains(&status),
            "{status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes() {
    let (c, _up) = healthy_gateway().await;
    let mut noise = Vec::new();
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..16 * 1024 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let tls_client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec();
    let cases: Vec<Vec<u8>> = vec![
        noise,
        b"\r\n\r\n\r\n\r\n".to_vec(),
        b"\x00\x00\x00\x00\xff\xff\xff\xff".to_vec(),
        tls_client_hello,
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: -5\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nZZZ\r\n".to_vec(),
        b"GET /\x00\x01 HTTP/1.1\r\nhost: \xff\r\n\r\n".to_vec(),
        [b"GET /".as_slice(), &vec![b'a'; 100 * 1024]].concat(),
    ];
    for case in &cases {
        refused_or_closed(c.gw.port, case).await;
    }
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_on_the_http1_port() {
    let (c, _up) = healthy_gateway().await;
    let mut sock = connect(c.gw.port).await;
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame, as every HTTP/2 client sends next.
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    sock.write_all(&preface).await.unwrap();
    let (answer, closed) = read_until_closed(&mut sock, ANSWER).await;
    assert!(closed, "the connection was left hanging");
    if let Some(status) = status_of(&answer) {
        assert!((400..=505).contains(&status), "{status}");
    }
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_headers() {
    let (c, _up) = healthy_gateway().await;
    let body = chat("ok", false).to_string();
    let request = |headers: String| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n{headers}\r\n{body}",
            c.secret,
            body.len()
        )
        .into_bytes()
    };
    // Many headers, then one huge one: a MiB either way.
    let many: String = (0..1024)
        .map(|i| format!("x-pad-{i}: {}\r\n", "v".repeat(1000)))
        .collect();
    let huge = format!("x-huge: {}\r\n", "v".repeat(1 << 20));
    for headers in [many, huge] {
        let mut sock = connect(c.gw.port).await;
        let _ = sock.write_all(&request(headers)).await;
        let (answer, closed) = read_until_closed(&mut sock, ANSWER).await;
        assert!(closed, "the connection was left hanging");
        if let Some(status) = status_of(&answer) {
            assert!((400..500).contains(&status), "{status}");
        }
    }
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_sockets() {
    let (c, _up) = healthy_gateway().await;
    // The head promises a body that never comes: the client has shut its side after the head.
    let head_only = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n",
        c.secret
    );
    refused_or_closed(c.gw.port, head_only.as_bytes()).await;
    // A whole request, then the client's side shut. Pingora may answer, or take the shutdown for
    // the client leaving (as most proxies do) and close: either way the request is booked.
    let mut sock = connect(c.gw.port).await;
    sock.write_all(&raw_chat(&c.secret, "ok", false))
        .await
        .unwrap();
    sock.shutdown().await.unwrap();
    let (answer, closed) = read_until_closed(&mut sock, ANSWER).await;
    assert!(closed, "the connection was left hanging");
    let got = statuses(&answer);
    assert!(got == [200] || answer.is_empty(), "{got:?}");
    let lines = c.gw.booked(2).await;
    assert_eq!(lines.len(), 2, "both requests are booked: {lines:?}");
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests() {
    let (c, _up) = healthy_gateway().await;
    let bad_key = String::from_utf8(raw_chat("kg_not_a_key", "ok", false)).unwrap();
    let good = String::from_utf8(raw_chat(&c.secret, "ok", false)).unwrap();
    let pipeline = [good.as_str(), &good, &bad_key, &good].concat();
    let mut sock = connect(c.gw.port).await;
    sock.write_all(pipeline.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + ANSWER;
    let mut buf = vec![0u8; 64 * 1024];
    // Responses come in order. Pingora (pipelining off, its default) answers the first and then
    // closes, which RFC 9112 allows: the client retries the rest on a new connection.
    while statuses(&answer).len() < 4 {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => panic!(
                "pipelined requests left hanging after {:?}",
                statuses(&answer)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let got = statuses(&answer);
    assert!(!got.is_empty(), "no answer to pipelined requests");
    assert_eq!(got[..], [200, 200, 401, 200][..got.len()], "in order");
    // Each request the gateway answered reached the provider once; none was invented.
    let answered_ok = got.iter().filter(|&&s| s == 200).count();
    assert_eq!(c.healthy.request_count(), answered_ok);
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections() {
    let (c, _up) = healthy_gateway().await;
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut sock = connect(c.gw.port).await;
        if i % 2 == 1 {
            // Half of them start a request and stop mid-head.
            sock.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
                .await
                .unwrap();
        }
        idle.push(sock);
    }
    still_serves(&c).await;
    drop(idle);
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream() {
    // A long, slow stream: far more than the socket buffers hold, so the gateway's writes block.
    let text = "x".repeat(16 * 1024);
    let events: Vec<String> = (0..800).map(|_| sse_text(&text)).collect();
    let up = MockUpstream::start(
        "slow",
        Reply::Sse {
            events,
            interval: Duration::from_millis(2),
        },
    )
    .await;
    let c = gateway(&up.url(), "").await;
    let mut sock = connect(c.gw.port).await;
    sock.write_all(&raw_chat(&c.secret, "m1", true))
        .await
        .unwrap();
    // Reads nothing for a while, then goes away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(sock);
    let lines = c.gw.booked(1).await;
    assert_eq!(lines.len(), 1, "the request is booked");
    let line = &lines[0];
    assert_eq!(line["status"], 200);
    assert!(!line["error"].is_null(), "a stream the client left: {line}");
    let (prompt, completion, estimated) = charged(line);
    assert!(
        estimated && prompt > 0 && completion > 0,
        "charged what was streamed: {line}"
    );
    still_serves(&c).await;
}
