//! Mock upstreams for integration tests.
//!
//! A [`MockUpstream`] is a small HTTP/1.1 server (optionally over TLS) on
//! `127.0.0.1:<ephemeral>` that records every request it receives (after reading the
//! full body) and answers with a configurable [`Reply`]. It runs as tasks on the tokio
//! runtime of the calling test; dropping it stops accepting, frees the port and closes
//! the connections it still holds.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How long [`MockUpstream::wait_for_requests`] waits before panicking.
const WAIT_DEADLINE: Duration = Duration::from_secs(5);

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// One request as the mock received it (body fully read).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path plus query string, e.g. `/v1/chat/completions?x=1`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    /// The value of header `name` as a string (None if absent or not valid UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics with the raw body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "recorded body of {} {} is not JSON ({e}): {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What a [`MockUpstream`] answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// JSON body with this status (content-type application/json, content-length set).
    Json { status: u16, body: Value },
    /// SSE: each event string is written as its own body frame (chunked transfer),
    /// `interval` between them, the first one immediately; content-type text/event-stream.
    Sse {
        events: Vec<String>,
        interval: Duration,
    },
    /// Wait `delay` before sending the reply (to exercise gateway timeouts).
    Delayed { delay: Duration, reply: Box<Reply> },
    /// Accept the connection, read the request, then drop the connection without any response.
    Reset,
    /// 200 with an OpenAI-like `chat.completion` echoing the request's `model`
    /// (see [`Reply::chat_ok`]).
    ChatEcho,
    /// Like `Sse`, but after the events the connection is aborted mid-body (no terminating chunk).
    SseThenReset {
        events: Vec<String>,
        interval: Duration,
    },
    /// `reply` with these extra response headers.
    WithHeaders {
        headers: Vec<(String, String)>,
        reply: Box<Reply>,
    },
    /// The reply this function picks from the request's path (with its query) and JSON body
    /// (`null` if the body is not JSON): for clients that mix calls, such as an SDK script.
    Pick(fn(&str, &Value) -> Reply),
}

impl Reply {
    /// OpenAI-like chat.completion JSON echoing the request's `model` (JSON null if the
    /// request body has none), usage `{prompt_tokens: 7, completion_tokens: 5, total_tokens: 12}`.
    pub fn chat_ok() -> Reply {
        Reply::ChatEcho
    }

    /// OpenAI-like streaming chat completion for `model`: three `chat.completion.chunk`
    /// events, a final chunk carrying usage `{7, 5, 12}`, then `data: [DONE]`,
    /// 10 ms apart.
    pub fn chat_stream_ok(model: &str) -> Reply {
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let mut events: Vec<String> = [
            chunk(
                json!({"role": "assistant", "content": "Hello"}),
                Value::Null,
            ),
            chunk(json!({"content": " from"}), Value::Null),
            chunk(json!({"content": " mock"}), json!("stop")),
            json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
            }),
        ]
        .iter()
        .map(|v| format!("data: {v}\n\n"))
        .collect();
        events.push("data: [DONE]\n\n".to_owned());
        Reply::Sse {
            events,
            interval: Duration::from_millis(10),
        }
    }
}

/// State shared between the handle and the server tasks.
struct Shared {
    name: String,
    addr: SocketAddr,
    reply: Mutex<Reply>,
    requests: Mutex<Vec<RecordedRequest>>,
    recorded: Notify,
    connections: AtomicUsize,
}

impl Shared {
    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        // A panicking test thread must not turn every later assertion into a poison error.
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reply(&self) -> MutexGuard<'_, Reply> {
        self.reply.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A recording mock upstream; see the module docs.
pub struct MockUpstream {
    url: String,
    shared: Arc<Shared>,
    accept_task: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Plain HTTP/1.1 on 127.0.0.1:<ephemeral>. `name` is returned in an `x-mock-name`
    /// response header on every reply.
    pub async fn start(name: &str, reply: Reply) -> MockUpstream {
        Self::spawn(name, reply, None, |addr| format!("http://{addr}")).await
    }

    /// Plain HTTP/1.1 on `127.0.0.1:port` (e.g. to restart a stopped mock on its old port).
    pub async fn start_on(name: &str, reply: Reply, port: u16) -> MockUpstream {
        Self::spawn_on(name, reply, None, port, |addr| format!("http://{addr}")).await
    }

    /// Same over TLS with a certificate for `dns_name` (a DNS name or an IP address)
    /// issued by `ca`. ALPN offers `http/1.1` only.
    pub async fn start_tls(name: &str, reply: Reply, ca: &TestCa, dns_name: &str) -> MockUpstream {
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config(dns_name)));
        let host = dns_name.to_owned();
        Self::spawn(name, reply, Some(acceptor), move |addr| {
            format!("https://{host}:{}", addr.port())
        })
        .await
    }

    async fn spawn(
        name: &str,
        reply: Reply,
        tls: Option<TlsAcceptor>,
        url: impl FnOnce(SocketAddr) -> String,
    ) -> MockUpstream {
        Self::spawn_on(name, reply, tls, 0, url).await
    }

    async fn spawn_on(
        name: &str,
        reply: Reply,
        tls: Option<TlsAcceptor>,
        port: u16,
        url: impl FnOnce(SocketAddr) -> String,
    ) -> MockUpstream {
        // Fail in the test, not later inside a connection task.
        HeaderValue::from_str(name).expect("mock upstream: name must be a valid header value");
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("mock upstream: bind 127.0.0.1");
        let addr = listener.local_addr().expect("mock upstream: local_addr");
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            addr,
            reply: Mutex::new(reply),
            requests: Mutex::new(Vec::new()),
            recorded: Notify::new(),
            connections: AtomicUsize::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, tls, shared.clone()));
        MockUpstream {
            url: url(addr),
            shared,
            accept_task: Some(accept_task),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://<dns_name>:PORT` for a TLS mock.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// All requests recorded so far, in arrival order (a snapshot).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests().len()
    }

    /// Number of TCP connections accepted so far (to observe keep-alive / pooling).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Change the reply for requests that arrive from now on.
    pub fn set_reply(&self, reply: Reply) {
        *self.shared.reply() = reply;
    }

    /// Wait until at least `n` requests were recorded; panics after a few seconds.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        loop {
            // Register interest before checking, so a request recorded in between is not missed.
            let notified = self.shared.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let requests = self.shared.requests();
                if requests.len() >= n {
                    return requests.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let requests = self.shared.requests();
                let seen: Vec<String> = requests
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect();
                panic!(
                    "mock upstream '{}' ({}): expected at least {n} request(s) within {:?}, got {}: {seen:?}",
                    self.shared.name,
                    self.shared.addr,
                    WAIT_DEADLINE,
                    requests.len(),
                );
            }
        }
    }

    /// Stop accepting and close all connections; when this returns the port is free.
    /// (Dropping does the same, but asynchronously.)
    pub async fn stop(mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
            // A cancelled task's future (listener and connection set) is dropped before
            // its JoinHandle resolves.
            let _ = task.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            // Dropping the accept loop drops the listener and its JoinSet, which aborts
            // every connection task.
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        eprintln!("mock upstream '{}': accept failed: {e}", shared.name);
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve_connection(stream, tls.clone(), shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_http(TokioIo::new(stream), shared).await,
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls_stream) => serve_http(TokioIo::new(tls_stream), shared).await,
            Err(e) => eprintln!("mock upstream '{}': TLS handshake failed: {e}", shared.name),
        },
    }
}

async fn serve_http<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, shared.clone()));
    // Errors here are connection-level (client went away, Reply::Reset): nothing to report.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.to_string());
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path,
        headers: parts.headers,
        body: body.clone(),
    };
    let mut reply = shared.reply().clone();
    let pick_from = (
        recorded.path.clone(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    );
    shared.requests().push(recorded);
    shared.recorded.notify_waiters();

    let mut extra_headers = Vec::new();
    let mut response = loop {
        match reply {
            Reply::WithHeaders {
                headers,
                reply: next,
            } => {
                extra_headers.extend(headers);
                reply = *next;
            }
            Reply::Pick(pick) => reply = pick(&pick_from.0, &pick_from.1),
            Reply::Delayed { delay, reply: next } => {
                tokio::time::sleep(delay).await;
                reply = *next;
            }
            // An error from the service makes hyper close the connection without a response.
            Reply::Reset => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "mock upstream: Reply::Reset",
                ))
            }
            Reply::Json { status, body } => break json_response(&shared.name, status, &body),
            Reply::ChatEcho => {
                let model = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("model").cloned())
                    .unwrap_or(Value::Null);
                break json_response(&shared.name, 200, &chat_completion(model));
            }
            Reply::Sse { events, interval } => {
                break sse_response(&shared.name, events, interval, false)
            }
            Reply::SseThenReset { events, interval } => {
                break sse_response(&shared.name, events, interval, true)
            }
        }
    };
    for (name, value) in extra_headers {
        response.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("mock upstream: header name"),
            HeaderValue::from_str(&value).expect("mock upstream: header value"),
        );
    }
    Ok(response)
}

fn chat_completion(model: Value) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from mock"},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    })
}

fn base_response(name: &str, status: u16, content_type: &'static str) -> http::response::Builder {
    let status = StatusCode::from_u16(status).expect("mock upstream: invalid status code");
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(
            "x-mock-name",
            HeaderValue::from_str(name).expect("mock upstream: name must be a valid header value"),
        )
}

fn json_response(name: &str, status: u16, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("serialize JSON reply"));
    base_response(name, status, "application/json")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .body(
            Full::new(bytes)
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        )
        .expect("build JSON response")
}

fn sse_response(
    name: &str,
    events: Vec<String>,
    interval: Duration,
    reset: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, ()>>(1);
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Ok(Bytes::from(event))).await.is_err() {
                return; // client went away
            }
        }
        if reset {
            tokio::time::sleep(interval).await;
            let _ = tx.send(Err(())).await;
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await? {
            Ok(event) => Some((Ok::<_, io::Error>(Frame::data(event)), rx)),
            // A body error makes hyper abort the connection mid-body.
            Err(()) => Some((Err(io::Error::other("mock upstream: reset mid-stream")), rx)),
        }
    });
    // No content-length: hyper uses chunked transfer, one chunk per frame.
    base_response(name, 200, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
        .expect("build SSE response")
}

/// A throwaway certificate authority for TLS tests.
pub struct TestCa {
    pub ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "keygate test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            ca_cert_pem: cert.pem(),
            ca_cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate in DER (e.g. for a rustls `RootCertStore`).
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.ca_cert_der.clone()
    }

    /// Writes the CA certificate to `dir/test-ca.pem` and returns that path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.ca_cert_pem)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A server certificate for `dns_name` (DNS name or IP address) signed by this CA,
    /// as `(cert_pem, pkcs8_key_pem)`; e.g. for the gateway's own TLS listener.
    pub fn issue_pem(&self, dns_name: &str) -> (String, String) {
        let (cert, key) = self.issue_leaf(dns_name);
        (cert.pem(), key.serialize_pem())
    }

    fn issue_leaf(&self, dns_name: &str) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(vec![dns_name.to_owned()])
            .unwrap_or_else(|e| panic!("invalid certificate name {dns_name:?}: {e}"));
        params.distinguished_name.push(DnType::CommonName, dns_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign leaf certificate");
        (cert, key)
    }

    fn server_config(&self, dns_name: &str) -> rustls::ServerConfig {
        let (cert, key) = self.issue_leaf(dns_name);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::from(key))
            .expect("rustls server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

/// A loopback port with nothing listening (bind :0, read the port, drop the listener):
/// a dead endpoint. Connecting to it is refused (unless something else grabs the port).
pub fn dead_port() -> u16 {
    ephemeral_port()
}

/// A free loopback port for the gateway's own listeners.
pub fn free_port() -> u16 {
    ephemeral_port()
}

/// A port the kernel just gave out and this process has not handed out before: the kernel may
/// give a released port again at once, and two tests running side by side must not both be told
/// to listen on it.
fn ephemeral_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Reads one HTTP/1 request (its head and the body its Content-Length announces) off `stream`,
/// for raw upstreams that script what the gateway sees. `buf` carries bytes read past it (a
/// pipelined or retried request). The head comes back in lower case, without its blank line;
/// `None` once the connection ends.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        fill(stream, buf).await?;
    }
    buf.drain(..head_end + length);
    Some(head)
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}
