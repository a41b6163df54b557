//! The data plane's client connections: the `server.keepalive_timeout`, `server.header_timeout`
//! and `server.max_connections` limits, many idle connections at once, and connections kept
//! usable (or closed with `Connection: close`) after an error.
//!
//! These tests speak HTTP/1.1 over raw sockets, so that they control exactly which connection each
//! request uses and can see the moment the gateway closes one.

mod common;

use common::upstream::{dead_port, MockUpstream, Reply};
use common::{key_file, one_model_policy, TestGateway};
use serde_json::json;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something the gateway must do after a timeout of about a second.
const CLOSE_WITHIN: Duration = Duration::from_secs(6);

/// Taken shared by every test that starts a gateway, and exclusively by the one that measures
/// this process's resident memory, so that no other test's gateway counts in its figure.
static MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// One client connection to the gateway.
struct Conn {
    stream: TcpStream,
    /// Bytes read past the end of the last response.
    buf: Vec<u8>,
}

/// A response as read from the wire: status, headers (names in lower case) and body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "error body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        v["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

impl Conn {
    async fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the gateway");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads one response with a `content-length` body (every answer these tests provoke has one).
    async fn response(&mut self) -> io::Result<Response> {
        tokio::time::timeout(Duration::from_secs(10), self.read_response())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response within 10s"))?
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no content-length in {head:?}")))?;
        self.buf.drain(..head_end + 4);
        while self.buf.len() < length {
            self.fill().await?;
        }
        let body = self.buf.drain(..length).collect();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the gateway closed the connection",
            )),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Whether the gateway closes the connection (end of stream or a reset) within `limit`,
    /// reading and discarding anything it sends before.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let wait = async {
            let mut chunk = [0u8; 1024];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

fn get_models(secret: &str) -> Vec<u8> {
    format!("GET /v1/models HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {secret}\r\n\r\n")
        .into_bytes()
}

fn chat(secret: &str, model: &str) -> Vec<u8> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {secret}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A gateway with model `m1` at `upstream`, one key for it, and `server` as its server section.
fn gateway(upstream: &str, server: &str) -> (TestGateway, String) {
    let (secret, yaml) = key_file("app", "");
    let policy = one_model_policy(upstream, &format!("server: {server}\n"));
    (TestGateway::start(&policy, &[("k1".into(), yaml)]), secret)
}

/// A model list on a new connection, for checking that the gateway still serves.
async fn serves(port: u16, secret: &str) {
    let mut c = Conn::open(port).await;
    c.send(&get_models(secret)).await.unwrap();
    let r = c.response().await.expect("the gateway answers");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn connection_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:1\nserver: {keepalive_timeout: 0s, header_timeout: soon, max_connections: 0}\n",
    )
    .unwrap();
    let errors = keygate::config::load(&config, keygate::config::LoadOptions::default())
        .expect_err("the server section is invalid");
    let fields: Vec<&str> = errors.0.iter().map(|p| p.field.as_str()).collect();
    for field in [
        "server.keepalive_timeout",
        "server.header_timeout",
        "server.max_connections",
    ] {
        assert!(fields.contains(&field), "{field} is reported: {errors}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let _shared = MEMORY.read().await;
    let (gw, secret) = gateway(
        "http://127.0.0.1:9",
        "{keepalive_timeout: 1s, header_timeout: 30s}",
    );
    let mut c = Conn::open(gw.port).await;
    for _ in 0..2 {
        c.send(&get_models(&secret)).await.unwrap();
        let r = c
            .response()
            .await
            .expect("a response on the kept-alive connection");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    let idle_since = Instant::now();
    assert!(
        c.closed_within(CLOSE_WITHIN).await,
        "an idle connection was still open {CLOSE_WITHIN:?} after its last response (keepalive_timeout: 1s)"
    );
    let idle = idle_since.elapsed();
    eprintln!("idle connection closed after {idle:?} (keepalive_timeout: 1s)");
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
    serves(gw.port, &secret).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_sends_nothing_is_closed_after_header_timeout() {
    let _shared = MEMORY.read().await;
    let (gw, secret) = gateway(
        "http://127.0.0.1:9",
        "{keepalive_timeout: 30s, header_timeout: 1s}",
    );
    let mut c = Conn::open(gw.port).await;
    let opened = Instant::now();
    assert!(
        c.closed_within(CLOSE_WITHIN).await,
        "a silent connection was still open after {CLOSE_WITHIN:?} (header_timeout: 1s)"
    );
    let open_for = opened.elapsed();
    eprintln!("silent connection closed after {open_for:?} (header_timeout: 1s)");
    assert!(
        open_for >= Duration::from_millis(900),
        "closed after {open_for:?}"
    );
    serves(gw.port, &secret).await;
}

/// Sends `head` a byte every 200 ms until the gateway closes the connection; returns how long
/// that took, or `None` if the whole head went out (or `CLOSE_WITHIN` passed) first.
async fn trickle(c: &mut Conn, head: &[u8]) -> Option<Duration> {
    let started = Instant::now();
    for byte in head {
        if c.send(std::slice::from_ref(byte)).await.is_err() {
            return Some(started.elapsed());
        }
        if c.closed_within(Duration::from_millis(200)).await {
            return Some(started.elapsed());
        }
        if started.elapsed() > CLOSE_WITHIN {
            return None;
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_head_is_cut_after_header_timeout() {
    let _shared = MEMORY.read().await;
    let (gw, secret) = gateway(
        "http://127.0.0.1:9",
        "{keepalive_timeout: 30s, header_timeout: 1s}",
    );
    // Long enough to take far more than CLOSE_WITHIN at five bytes a second.
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(100)
    );

    let mut fresh = Conn::open(gw.port).await;
    let cut = trickle(&mut fresh, head.as_bytes()).await;
    eprintln!("slowloris on a new connection cut after {cut:?} (header_timeout: 1s)");
    let cut = cut.expect("a head trickled a byte every 200 ms was not cut (header_timeout: 1s)");
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}");

    // On a kept-alive connection the deadline counts from the next head's first byte.
    let mut reused = Conn::open(gw.port).await;
    reused.send(&get_models(&secret)).await.unwrap();
    assert_eq!(reused.response().await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = trickle(&mut reused, head.as_bytes()).await;
    eprintln!("slowloris on a kept-alive connection cut after {cut:?} (header_timeout: 1s)");
    let cut = cut.expect("a trickled second head was not cut (header_timeout: 1s)");
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}");

    serves(gw.port, &secret).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_max_connections_are_refused_and_closed() {
    let _shared = MEMORY.read().await;
    const MAX: usize = 3;
    let (gw, secret) = gateway("http://127.0.0.1:9", &format!("{{max_connections: {MAX}}}"));

    // The start-up probe's connections may still be open for a moment: retry until MAX
    // connections of this test are served at once.
    let mut open = Vec::new();
    let deadline = Instant::now() + CLOSE_WITHIN;
    while open.len() < MAX {
        assert!(
            Instant::now() < deadline,
            "only {} connections served",
            open.len()
        );
        let mut c = Conn::open(gw.port).await;
        c.send(&get_models(&secret)).await.unwrap();
        match c.response().await {
            Ok(r) if r.status == 200 => open.push(c),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    let mut extra = Conn::open(gw.port).await;
    let _ = extra.send(&get_models(&secret)).await;
    let r = extra
        .response()
        .await
        .expect("connection past the limit gets an answer");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "connection_limit_exceeded");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert!(
        extra.closed_within(CLOSE_WITHIN).await,
        "the refused connection is closed"
    );

    for c in &mut open {
        c.send(&get_models(&secret)).await.unwrap();
        assert_eq!(c.response().await.unwrap().status, 200);
    }

    // A closed connection frees its place.
    drop(open.pop());
    let deadline = Instant::now() + CLOSE_WITHIN;
    loop {
        let mut c = Conn::open(gw.port).await;
        c.send(&get_models(&secret)).await.unwrap();
        let r = c.response().await.expect("an answer");
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The process's resident memory, from /proc/self/status.
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Makes sure this process may open `needed` descriptors, raising its soft limit if it must.
fn allow_descriptors(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < needed {
            assert!(
                limit.rlim_max >= needed,
                "this test needs {needed} open files; the hard limit is {}",
                limit.rlim_max
            );
            limit.rlim_cur = needed;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_idle_connections_leave_the_gateway_serving_in_bounded_memory() {
    let _alone = MEMORY.write().await;
    const IDLE: usize = 2_000;
    // Both ends of every connection live in this process.
    allow_descriptors(2 * IDLE as u64 + 1_000);
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (gw, secret) = gateway(
        &up.url(),
        "{keepalive_timeout: 60s, header_timeout: 60s, max_connections: 3000}",
    );
    serves(gw.port, &secret).await;
    let before = vm_rss_kib();

    // Half of them silent since they connected, half kept alive after a request.
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE / 2 {
        idle.push(Conn::open(gw.port).await);
    }
    for i in 0..IDLE / 2 {
        let mut c = Conn::open(gw.port).await;
        c.send(&get_models(&secret)).await.unwrap();
        let r = c.response().await.expect("served while others idle");
        assert_eq!(r.status, 200, "connection {i}: {r:?}");
        idle.push(c);
    }

    let client = common::client();
    for _ in 0..5 {
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("a request while 2,000 connections idle");
        assert_eq!(resp.status(), 200);
    }
    serves(gw.port, &secret).await;

    let after = vm_rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!(
        "VmRSS {before} KiB -> {after} KiB with {IDLE} idle connections open: +{growth} KiB, \
         {} bytes a connection (client and gateway sides together)",
        growth * 1024 / IDLE as u64
    );
    assert!(
        growth < 200 * 1024,
        "resident memory grew by {growth} KiB for {IDLE} idle connections"
    );

    // They were kept, not dropped to make room: a sample of them still serves.
    for c in idle.iter_mut().step_by(97) {
        c.send(&get_models(&secret)).await.unwrap();
        assert_eq!(c.response().await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn four_requests_on_one_connection_to_a_down_upstream_all_get_502() {
    let _shared = MEMORY.read().await;
    let down = format!("http://127.0.0.1:{}", dead_port());
    let (gw, secret) = gateway(&down, "{}");
    let mut c = Conn::open(gw.port).await;
    for i in 1..=4 {
        c.send(&chat(&secret, "m1"))
            .await
            .unwrap_or_else(|e| panic!("request {i} could not be sent: {e}"));
        let r = c
            .response()
            .await
            .unwrap_or_else(|e| panic!("request {i} on the kept-alive connection: {e}"));
        assert_eq!(r.status, 502, "request {i}: {r:?}");
        assert_eq!(r.error_code(), "upstream_unavailable", "request {i}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "request {i}");
    }

    // A chunked body cannot be told from bytes sent after it, so that connection is not kept;
    // the answer says so.
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {secret}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    c.send(chunked.as_bytes()).await.unwrap();
    let r = c
        .response()
        .await
        .expect("an answer to the chunked request");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed_within(CLOSE_WITHIN).await,
        "the connection is closed as announced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_pipelined_behind_a_failed_one_is_not_left_waiting() {
    let _shared = MEMORY.read().await;
    let down = format!("http://127.0.0.1:{}", dead_port());
    let (gw, secret) = gateway(&down, "{keepalive_timeout: 30s}");
    let mut c = Conn::open(gw.port).await;
    // Both requests in one write: the gateway reads the second with the first one's body.
    let mut two = chat(&secret, "m1");
    two.extend_from_slice(&chat(&secret, "m1"));
    c.send(&two).await.unwrap();
    let r = c.response().await.expect("an answer to the first request");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "the second request was read with the first and cannot be answered"
    );
    assert!(
        c.closed_within(CLOSE_WITHIN).await,
        "the connection is closed as announced, not left waiting for keepalive_timeout"
    );
}
