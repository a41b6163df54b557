//! Support for the chaos suites (`hostile_clients`, `hostile_upstreams`, `crash_safety`): a
//! watch for panics on the gateway's threads, raw-socket clients, a scripted raw-TCP upstream
//! that can lie about lengths, stall or reset, and reading the books the gateway kept.
#![allow(dead_code)]

use crate::common::upstream::{MockUpstream, Reply};
use crate::common::{client, key_file, TestGateway};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------------------------

/// Panics raised by code outside the test files: the gateway runs in this process, so one on a
/// Pingora thread lands here even when Pingora survives it by dropping the connection.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs the panic watch (once per test binary).
pub fn watch_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/"));
            if !in_tests {
                let at = info.location().map(|l| l.to_string()).unwrap_or_default();
                PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{info} at {at}"));
            }
            previous(info);
        }));
    });
}

/// Fails the test if anything outside the test code panicked so far.
pub fn assert_no_panics() {
    let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(panics.is_empty(), "the gateway panicked: {panics:#?}");
}

// ---------------------------------------------------------------------------------------------
// A gateway with books
// ---------------------------------------------------------------------------------------------

/// A gateway under test, with its key and a healthy upstream beside the one under test.
pub struct Chaos {
    pub gw: TestGateway,
    pub secret: String,
    pub healthy: MockUpstream,
}

/// A gateway whose model `m1` goes to `upstream` (provider `p1`, with `provider_extra` added:
/// timeouts, retries) and model `ok` to a healthy mock, both priced $1000/Mtok each way, with
/// usage persisted and audited under its directory.
pub async fn gateway(upstream: &str, provider_extra: &str) -> Chaos {
    watch_panics();
    let healthy = MockUpstream::start("healthy", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let config = format!(
        r#"state_dir: state
audit_log: state/audit.jsonl
providers:
  p1:
    format: openai
    api_key: {PROVIDER_KEY}
    endpoints:
      - {{url: "{upstream}"}}
{provider_extra}
  healthy:
    format: openai
    api_key: {PROVIDER_KEY}
    endpoints:
      - {{url: "{}"}}
models:
  m1:
    provider: p1
    price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
  ok:
    provider: healthy
    price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
workloads:
  app:
    models: [m1, ok]
"#,
        healthy.url()
    );
    let gw = TestGateway::start(&config, &[("k".into(), yaml)]);
    Chaos {
        gw,
        secret,
        healthy,
    }
}

/// The provider credential the chaos gateways send upstream.
pub const PROVIDER_KEY: &str = "sk-provider-secret-0123456789";

/// A chat request body for `model`.
pub fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": "Say something, please."}]})
}

/// POSTs a chat request for `model`.
pub async fn post_chat(c: &Chaos, body: &Value) -> reqwest::Response {
    client()
        .post(c.gw.url("/v1/chat/completions"))
        .bearer_auth(&c.secret)
        .json(body)
        .send()
        .await
        .expect("the gateway answers")
}

/// Asserts that the gateway still serves a normal request (to the healthy upstream), and that
/// nothing panicked.
pub async fn still_serves(c: &Chaos) {
    let resp = post_chat(c, &chat("ok", false)).await;
    assert_eq!(resp.status(), 200, "a normal request afterwards");
    let body: Value = resp.json().await.expect("a completion");
    assert_eq!(body["usage"]["total_tokens"], 12, "{body}");
    assert_no_panics();
}

/// `usage` of an audit line: `(prompt, completion, estimated)`.
pub fn charged(line: &Value) -> (u64, u64, bool) {
    (
        line["prompt_tokens"].as_u64().unwrap_or_default(),
        line["completion_tokens"].as_u64().unwrap_or_default(),
        line["estimated"].as_bool().unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------------

pub async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the gateway")
}

/// Reads until the peer closes or `limit` passes; returns what arrived and whether the peer
/// closed (`false`: still open at the limit).
pub async fn read_until_closed(sock: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status codes of the HTTP/1.1 responses in `bytes`, in order (bodies with a
/// Content-Length or chunked framing are skipped).
pub fn statuses(bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let Some(status) = head
            .strip_prefix("http/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
        else {
            break;
        };
        out.push(status);
        let body = &rest[end + 4..];
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        rest = match length {
            Some(n) => &body[n.min(body.len())..],
            None if head.contains("transfer-encoding: chunked") => match find(body, b"0\r\n\r\n") {
                Some(k) => &body[k + 5..],
                None => break,
            },
            None => break,
        };
    }
    out
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete HTTP/1.1 chat request with `secret`, as raw bytes.
pub fn raw_chat(secret: &str, model: &str, stream: bool) -> Vec<u8> {
    let body = chat(model, stream).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {secret}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// A scripted upstream
// ---------------------------------------------------------------------------------------------

/// One step of what a [`RawUpstream`] does after reading a request.
#[derive(Clone, Debug)]
pub enum Step {
    Send(Vec<u8>),
    /// The bytes one at a time (or in pieces of `.1`), `.2` apart.
    Trickle(Vec<u8>, usize, Duration),
    Sleep(Duration),
    /// Close with a TCP reset (SO_LINGER 0) instead of a FIN.
    Reset,
    /// Close normally (FIN).
    Close,
    /// Read the next request on the same connection and go on with the steps after this one.
    NextRequest,
}

/// A raw-TCP upstream that plays a script on every connection, so it can do what no HTTP
/// library would: lie about lengths, stall, trickle or reset. It records every request head.
pub struct RawUpstream {
    pub url: String,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(script: Vec<Step>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (heads.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((sock, _)) = accepted else { continue };
                        c.fetch_add(1, Ordering::SeqCst);
                        tasks.spawn(play(sock, script.clone(), h.clone()));
                    }
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
        });
        RawUpstream {
            url,
            heads,
            connections,
            task,
        }
    }

    /// The request heads received so far (lowercased).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head, and a Content-Length body); `false` if the peer went away first.
async fn read_request(sock: &mut TcpStream, heads: &Mutex<Vec<String>>) -> bool {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(end) = find(&seen, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if seen.len() >= end + 4 + len {
                heads.lock().unwrap().push(head);
                return true;
            }
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn play(mut sock: TcpStream, script: Vec<Step>, heads: Arc<Mutex<Vec<String>>>) {
    let _ = sock.set_nodelay(true);
    if !read_request(&mut sock, &heads).await {
        return;
    }
    for step in script {
        let ok = match step {
            Step::Send(bytes) => sock.write_all(&bytes).await.is_ok(),
            Step::Trickle(bytes, piece, gap) => {
                let mut ok = true;
                for p in bytes.chunks(piece.max(1)) {
                    if sock.write_all(p).await.is_err() {
                        ok = false;
                        break;
                    }
                    tokio::time::sleep(gap).await;
                }
                ok
            }
            Step::Sleep(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Step::Reset => {
                // Linger 0: the close sends RST at once (and so never blocks).
                let _ = rustix::net::sockopt::set_socket_linger(&sock, Some(Duration::ZERO));
                return;
            }
            Step::Close => {
                let _ = sock.shutdown().await;
                return;
            }
            Step::NextRequest => read_request(&mut sock, &heads).await,
        };
        if !ok {
            return;
        }
    }
    // Script done: keep the connection until the gateway closes it.
    let mut buf = [0u8; 1024];
    while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// An HTTP/1.1 response head with `headers` (each `name: value`).
pub fn head(status: u16, headers: &[&str]) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status} X\r\n");
    for line in headers {
        h.push_str(line);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// One chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:X}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// An SSE chat chunk carrying `text`.
pub fn sse_text(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "model": "m1",
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    )
}

/// An SSE chunk with the usage a provider reports when asked.
pub fn sse_usage(prompt: u64, completion: u64) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "model": "m1", "choices": [],
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}})
    )
}

/// A chat completion body with `usage` (raw JSON text, so it can hold any number).
pub fn completion_with_usage(usage: &str) -> String {
    format!(
        r#"{{"id":"c","object":"chat.completion","model":"m1","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello there"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
    )
}
