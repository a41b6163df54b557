//! Request bodies as clients send them: chunked bodies of any size up to `max_body_bytes`,
//! members that differ from a field keygate reads only in letter case, and bodies that arrive too
//! slowly; and response bodies at any pace, from large bursts to a trickle of small events.

mod common;

use common::upstream::{dead_port, MockUpstream, Reply};
use common::{client, error_of, key_file, one_model_policy, TestGateway};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Fixture {
    up: MockUpstream,
    gw: TestGateway,
    secret: String,
}

async fn fixture(extra: &str) -> Fixture {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&one_model_policy(&up.url(), extra), &[("k".into(), yaml)]);
    Fixture { up, gw, secret }
}

/// A chat body of about `size` bytes.
fn body_of(size: usize) -> String {
    json!({"model": "m1", "messages": [{"role": "user", "content": "x".repeat(size)}]}).to_string()
}

/// POSTs `body` with `Transfer-Encoding: chunked`, `chunk` bytes per chunk.
async fn post_chunked(
    gw: &TestGateway,
    secret: &str,
    body: &str,
    chunk: usize,
) -> reqwest::Response {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .as_bytes()
        .chunks(chunk)
        .map(|c| Ok(c.to_vec()))
        .collect();
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("request sent")
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_bodies_of_any_size_up_to_the_limit_arrive_whole() {
    let f = fixture("").await;
    // around Pingora's 64 KiB replay buffer, well past it, and chunks larger than it
    for (size, chunk) in [
        (60 * 1024, 8192),
        (70 * 1024, 8192),
        (1024 * 1024, 8192),
        (5 * 1024 * 1024, 256 * 1024),
    ] {
        let body = body_of(size);
        let resp = post_chunked(&f.gw, &f.secret, &body, chunk).await;
        assert_eq!(resp.status(), 200, "{size} bytes in {chunk}-byte chunks");
        let seen = f.up.requests().pop().unwrap();
        assert!(seen.body == body.as_bytes(), "{size} bytes arrived intact");
        assert_eq!(
            seen.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(seen.header("transfer-encoding"), None);
    }
    assert_eq!(f.up.request_count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_max_body_bytes_is_refused() {
    let f = fixture("max_body_bytes: 100000\n").await;
    let resp = post_chunked(&f.gw, &f.secret, &body_of(150_000), 8192).await;
    assert_eq!(
        error_of(resp).await,
        (
            413,
            "invalid_request_error".into(),
            "request_too_large".into()
        )
    );
    assert_eq!(f.up.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_chunked_body_is_sent_whole_again_on_a_retry() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    // the first endpoint refuses connections; round robin starts there
    let config = format!(
        r#"providers:
  p1:
    format: openai
    retries: 1
    endpoints:
      - {{url: "http://127.0.0.1:{}"}}
      - {{url: "{}"}}
models:
  m1: {{provider: p1}}
workloads:
  app: {{models: [m1]}}
"#,
        dead_port(),
        up.url()
    );
    let gw = TestGateway::start(&config, &[("k".into(), yaml)]);
    for _ in 0..2 {
        let body = body_of(300 * 1024);
        let resp = post_chunked(&gw, &secret, &body, 16 * 1024).await;
        assert_eq!(resp.status(), 200);
        assert!(up.requests().pop().unwrap().body == body.as_bytes());
    }
    let retried: u64 = gw
        .handles()
        .upstreams
        .snapshot()
        .iter()
        .map(|s| s.retries)
        .sum();
    assert!(retried >= 1, "one of the two requests was retried");
}

/// Writes a chunked request on `stream` and reads its whole response head and body.
async fn raw_chunked_exchange(
    stream: &mut TcpStream,
    port: u16,
    secret: &str,
    body: &str,
) -> String {
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {secret}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.as_bytes().chunks(10_000) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    read_response(stream).await
}

/// Reads one response framed by Content-Length; the head in lower case, then the body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&buf[end + 4..]));
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response within 10s")
            .unwrap();
        assert!(n > 0, "connection closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_chunked_body_leaves_the_connection_open_and_a_large_one_closes_it() {
    let f = fixture("").await;
    let mut stream = TcpStream::connect(("127.0.0.1", f.gw.port)).await.unwrap();
    for _ in 0..2 {
        let response =
            raw_chunked_exchange(&mut stream, f.gw.port, &f.secret, &body_of(1000)).await;
        assert!(response.starts_with("http/1.1 200"), "{response}");
    }
    // The body reader was set up again on the body keygate holds: bytes the client sent past the
    // body would be lost with it, so the connection is not kept.
    let response = raw_chunked_exchange(&mut stream, f.gw.port, &f.secret, &body_of(200_000)).await;
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut rest))
        .await
        .expect("closed within 10s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed");
    assert_eq!(f.up.request_count(), 3);
}

async fn refusal_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("a JSON error");
    (status, body["error"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_named_like_a_governed_field_in_another_case_is_refused() {
    let f = fixture("").await;
    for (body, member) in [
        (r#"{"model":"m1","MODEL":"pricey"}"#, "MODEL"),
        (r#"{"Model":"m1"}"#, "Model"),
        (r#"{"model":"m1","Stream":true}"#, "Stream"),
        (r#"{"model":"m1","Max_Tokens":10}"#, "Max_Tokens"),
        (
            r#"{"model":"m1","MAX_COMPLETION_TOKENS":10}"#,
            "MAX_COMPLETION_TOKENS",
        ),
        (
            r#"{"model":"m1","max_output_TOKENS":10}"#,
            "max_output_TOKENS",
        ),
        (
            r#"{"model":"m1","stream":true,"Stream_Options":null}"#,
            "Stream_Options",
        ),
        (r#"{"model":"m1","N":3}"#, "N"),
        (r#"{"model":"m1","Best_of":3}"#, "Best_of"),
        // an escaped name is read as the provider reads it
        (r#"{"model":"m1","\u004dODEL":"pricey"}"#, "MODEL"),
        // Go folds the long s and the Kelvin sign into ASCII letters
        ("{\"model\":\"m1\",\"\u{17f}tream\":true}", "\u{17f}tream"),
        (
            "{\"model\":\"m1\",\"max_to\u{212a}ens\":1}",
            "max_to\u{212a}ens",
        ),
    ] {
        let resp = client()
            .post(f.gw.url("/v1/chat/completions"))
            .bearer_auth(&f.secret)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, error) = refusal_of(resp).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!(error["code"], "invalid_request", "{body}");
        assert_eq!(error["param"], member, "{body}");
    }
    assert_eq!(f.up.request_count(), 0, "nothing was forwarded");

    // exact names, other members and nested ones pass
    let resp = client()
        .post(f.gw.url("/v1/chat/completions"))
        .bearer_auth(&f.secret)
        .header("content-type", "application/json")
        .body(r#"{"model":"m1","Models":1,"metadata":{"MODEL":"x"},"messages":[{"role":"user","content":"MODEL"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Sends a request head, then its body one byte every `pause`, until the connection ends or
/// `bytes` are sent; returns what came back.
async fn trickle(port: u16, secret: &str, chunked: bool, bytes: usize, pause: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {bytes}")
    };
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {secret}\r\n{framing}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        for _ in 0..bytes {
            let piece: &[u8] = if chunked { b"1\r\n \r\n" } else { b" " };
            if writer.write_all(piece).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut response)).await;
    writing.abort();
    String::from_utf8_lossy(&response).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_trickles_in_is_cut_at_the_body_timeout() {
    let f = fixture("server: {body_timeout: 1s}\n").await;
    for chunked in [false, true] {
        // 60 bytes at one every 100 ms would take 6 s
        let response = trickle(
            f.gw.port,
            &f.secret,
            chunked,
            60,
            Duration::from_millis(100),
        )
        .await;
        assert!(
            response.starts_with("http/1.1 408"),
            "chunked {chunked}: {response}"
        );
        assert!(response.contains("connection: close"), "{response}");
        let body: Value = serde_json::from_str(&response[response.find("\r\n\r\n").unwrap() + 4..])
            .unwrap_or_else(|e| panic!("{e}: {response}"));
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "request_timeout");
    }
    assert_eq!(f.up.request_count(), 0);
    // a body that arrives in time is unaffected
    let resp = post_chunked(&f.gw, &f.secret, &body_of(100_000), 4096).await;
    assert_eq!(resp.status(), 200);
}

/// A `chat.completion.chunk` event whose content is `size` copies of one letter.
fn chunk_of(letter: u8, size: usize) -> String {
    let content = char::from(letter).to_string().repeat(size);
    let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m1",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

/// keygate reads a provider's body in reads sized to what arrives (small while a stream trickles,
/// growing while reads come back full): every pace and every switch between them passes whole.
#[tokio::test(flavor = "multi_thread")]
async fn response_bodies_pass_whole_at_any_pace() {
    let mut events: Vec<String> = Vec::new();
    for i in 0..60u8 {
        let size = match i {
            0 => 300_000,
            1..=29 => 1 + usize::from(i) * 7,
            30..=34 => 70_000,
            _ => 3 + usize::from(i),
        };
        events.push(chunk_of(b'a' + i % 26, size));
    }
    events.push("data: [DONE]\n\n".to_owned());
    let expected: String = events.concat();
    let up = MockUpstream::start(
        "up",
        Reply::Sse {
            events,
            interval: Duration::from_millis(2),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&one_model_policy(&up.url(), ""), &[("k".into(), yaml)]);
    let streamed = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let body = streamed.text().await.unwrap();
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "the stream arrived altered");

    let content = "z".repeat(3 << 20);
    up.set_reply(Reply::Json {
        status: 200,
        body: json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}),
    });
    let whole = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    let answer: Value = whole.json().await.unwrap();
    assert!(answer["choices"][0]["message"]["content"] == content.as_str());
}
