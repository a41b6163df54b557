//! Embedded mock upstream, OpenAI- and Anthropic-compatible.
//!
//! This module owns the `mock_provider` listener: a small HTTP server that runs inside the
//! keygate process and answers like OpenAI does (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses`, `/v1/models`, plus `/health`) and like Anthropic's Messages
//! API does (`/v1/messages`, `/v1/messages/count_tokens`). It exists so that a new
//! user can try the gateway end to end — virtual keys, limits, accounting, streaming — before
//! they have a real provider key, and so that tests have a deterministic upstream.
//!
//! Replies are deterministic: the text is a fixed sentence cut to the request's token limit
//! (one word = one token = one stream delta), and usage numbers are derived from the request
//! (prompt tokens = ceil(prompt bytes / 4), at least 1). That lets anyone check the gateway's
//! accounting by hand.
//!
//! It implements [`HttpServerApp`] directly instead of Pingora's `ServeHttp`, because `ServeHttp`
//! must build the whole response before returning and so cannot stream SSE events with a delay
//! between them. All response bodies are built by pure functions; the socket code here only
//! reads the request and writes what those functions return. The pure side is split by concern:
//!
//! - `routes`: the route and the credential check, then dispatch to an endpoint;
//! - `request`: the JSON body and the parameters several endpoints share;
//! - `chat`, `completions`, `embeddings`, `responses_api`, `messages`: one module per endpoint
//!   family;
//! - `tokens`: the stand-in tokenizer, the reply and the usage objects;
//! - `response`: the response values and OpenAI's error body;
//! - `stream`: SSE framing, and the writer that paces events onto the wire.

mod chat;
mod completions;
mod embeddings;
mod messages;
mod request;
mod response;
mod responses_api;
mod routes;
mod stream;
#[cfg(test)]
mod test_support;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use tracing::debug;

use response::{error_response, Meta, MockResponse};
use routes::{check_head, respond, Credentials};
use stream::write_response;

/// Request bodies above this are refused with 413: the mock buffers the whole body, and no
/// realistic prompt sent to it needs more.
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

/// Unanswered request bodies up to this size are drained so the connection can be reused;
/// larger (or chunked) ones make us close instead of reading megabytes nobody wants.
const MAX_DRAIN_ON_REJECT: u64 = 1024 * 1024;

/// Settings of the embedded mock provider (the policy's `mock_provider` section, minus `listen`).
#[derive(Clone)]
pub struct MockProviderConfig {
    /// When `Some`, requests must carry `Authorization: Bearer <key>` or `api-key: <key>`,
    /// otherwise they get OpenAI's 401 `invalid_api_key` error; Messages API requests must carry
    /// `x-api-key: <key>`, otherwise they get Anthropic's 401 `authentication_error`.
    pub api_key: Option<String>,
    /// Pause between SSE events of a streamed reply (the first event is sent at once).
    pub stream_delay: Duration,
}

impl Default for MockProviderConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            stream_delay: Duration::from_millis(20),
        }
    }
}

// Hand-written so the key never ends up in logs through `{:?}`.
impl std::fmt::Debug for MockProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProviderConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("stream_delay", &self.stream_delay)
            .finish()
    }
}

/// The mock provider application; serve it with [`mock_provider_service`].
#[derive(Debug)]
pub struct MockProvider {
    config: MockProviderConfig,
}

impl MockProvider {
    /// Creates the app; [`mock_provider_service`] wraps it in a listening service.
    pub fn new(config: MockProviderConfig) -> Self {
        Self { config }
    }
}

/// Builds the Pingora service listening on `listen` (e.g. "127.0.0.1:18181").
///
/// The address is not checked here: Pingora binds it when the server starts, so the policy
/// loader should validate it first.
pub fn mock_provider_service(
    server_conf: &Arc<ServerConf>,
    listen: &str,
    config: MockProviderConfig,
) -> Service<MockProvider> {
    // Taken for symmetry with `http_proxy_service`; a plain listening service has no use for the
    // server-wide configuration yet.
    let _ = server_conf;
    let mut service = Service::new(
        "keygate mock provider".to_string(),
        MockProvider::new(config),
    );
    service.add_tcp(listen);
    service
}

#[async_trait]
impl HttpServerApp for MockProvider {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            // The client closed an idle keep-alive connection: normal, nothing to answer.
            Ok(false) => return None,
            Err(e) => {
                debug!(error = %e, "mock provider: failed to read request header");
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }

        let response = self.handle(&mut session).await?;
        let status = response.status;
        if let Err(e) = write_response(&mut session, response, self.config.stream_delay).await {
            // Most often the client went away mid-stream; there is nobody left to tell.
            debug!(error = %e, status, "mock provider: failed to write response");
            return None;
        }

        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => {
                reusable.map(|stream| ReusedHttpStream::from_reusable_stream(stream, settings))
            }
            Err(e) => {
                debug!(error = %e, "mock provider: failed to finish request");
                None
            }
        }
    }
}

impl MockProvider {
    /// Routes, authenticates, reads the body and builds the response. `None` means the request
    /// body could not be read and the connection should just be dropped.
    async fn handle(&self, session: &mut ServerSession) -> Option<MockResponse> {
        let head = {
            let req = session.req_header();
            let value = |name: &str| req.headers.get(name).map(|v| v.as_bytes());
            let credentials = Credentials {
                authorization: req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
                api_key: value("api-key"),
                x_api_key: value("x-api-key"),
            };
            check_head(&self.config, &req.method, req.uri.path(), credentials)
        };
        let route = match head {
            Ok(route) => route,
            Err(rejection) => {
                if !cheap_to_drain(session) {
                    session.set_keepalive(None);
                }
                return Some(rejection);
            }
        };

        if expects_continue(session) {
            if let Err(e) = session.write_continue_response().await {
                debug!(error = %e, "mock provider: failed to write 100 Continue");
                return None;
            }
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_REQUEST_BODY {
                        // The rest of the body is still on the wire; the connection is unusable.
                        session.set_keepalive(None);
                        return Some(error_response(
                            413,
                            &format!("Request body exceeds {MAX_REQUEST_BODY} bytes"),
                            "invalid_request_error",
                            None,
                            Some("request_too_large"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "mock provider: failed to read request body");
                    return None;
                }
            }
        }

        Some(respond(&route, &body, &Meta::fresh()))
    }
}

/// Whether `finish()` may drain the unread body of a rejected request instead of closing: only
/// for small bodies with a known length, and never when the client is waiting for
/// `100 Continue` (it would not send the body at all).
fn cheap_to_drain(session: &mut ServerSession) -> bool {
    if session.is_body_done() {
        return true;
    }
    if expects_continue(session) {
        return false;
    }
    session
        .get_header(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len <= MAX_DRAIN_ON_REJECT)
}

fn expects_continue(session: &ServerSession) -> bool {
    session
        .get_header(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads until the buffer ends with `end`; the socket has a read timeout, so a missing
    /// terminator fails the test instead of hanging it.
    fn read_until(conn: &mut std::net::TcpStream, end: &[u8]) -> String {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.ends_with(end) {
            let n = conn.read(&mut chunk).expect("read from mock provider");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(buf).expect("utf8 response")
    }

    /// The framing is Pingora's, not ours, so check it on a real socket: a stream must be
    /// chunked (Pingora would otherwise close-delimit it) and the connection must be reusable
    /// after it.
    #[test]
    fn streams_over_a_socket_and_keeps_the_connection() {
        use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        use std::sync::Mutex;
        use tokio::sync::oneshot;

        struct StopOn(Mutex<Option<oneshot::Receiver<()>>>);
        #[async_trait]
        impl ShutdownSignalWatch for StopOn {
            async fn recv(&self) -> ShutdownSignal {
                let rx = self.0.lock().ok().and_then(|mut rx| rx.take());
                if let Some(rx) = rx {
                    let _ = rx.await;
                }
                ShutdownSignal::FastShutdown
            }
        }

        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let (stop, stop_rx) = oneshot::channel();
        let listen = addr.clone();
        let server = std::thread::spawn(move || {
            let mut server = Server::new_with_opt_and_conf(
                None,
                ServerConf {
                    threads: 1,
                    grace_period_seconds: Some(0),
                    graceful_shutdown_timeout_seconds: Some(0),
                    ..Default::default()
                },
            );
            server.bootstrap();
            let config = MockProviderConfig {
                api_key: Some("sk-test".to_string()),
                stream_delay: Duration::from_millis(5),
            };
            let service = mock_provider_service(&server.configuration, &listen, config);
            server.add_service(service);
            server.run(RunArgs {
                shutdown_signal: Box::new(StopOn(Mutex::new(Some(stop_rx)))),
            });
        });

        let mut conn = (0..300)
            .find_map(|_| {
                TcpStream::connect(&addr).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(10));
                    None
                })
            })
            .expect("mock provider did not start");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");

        let body = concat!(
            r#"{"model":"m","stream":true,"max_tokens":2,"#,
            r#""messages":[{"role":"user","content":"hi"}]}"#
        );
        write!(
            conn,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-test\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write request");
        let streamed = read_until(&mut conn, b"\r\n0\r\n\r\n");
        let lower = streamed.to_ascii_lowercase();
        assert!(streamed.starts_with("HTTP/1.1 200"), "{streamed}");
        assert!(lower.contains("transfer-encoding: chunked"), "{streamed}");
        assert!(
            lower.contains("content-type: text/event-stream"),
            "{streamed}"
        );
        assert!(lower.contains("connection: keep-alive"), "{streamed}");
        assert!(streamed.contains(r#""content":" is""#), "{streamed}");
        assert!(streamed.contains("data: [DONE]\n\n"), "{streamed}");

        write!(conn, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n").expect("write request");
        let health = read_until(&mut conn, br#"{"status":"ok"}"#);
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(
            health.to_ascii_lowercase().contains("content-length: 15"),
            "{health}"
        );

        let _ = stop.send(());
        server.join().expect("server thread");
    }

    #[test]
    fn config_debug_hides_key() {
        let c = MockProviderConfig {
            api_key: Some("sk-secret".to_string()),
            stream_delay: Duration::from_millis(5),
        };
        assert!(!format!("{c:?}").contains("sk-secret"));
    }
}
