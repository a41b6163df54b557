//! Embedded, OpenAI-compatible mock upstream.
//!
//! This module owns the `mock_provider` listener: a small HTTP server that runs inside the
//! keygate process and answers like OpenAI does (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses`, `/v1/models`, plus `/health`). It exists so that a new
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
//! between them. All response bodies are built by pure functions; the socket code only reads the
//! request, picks the route and writes what those functions return.

mod request;
mod response;
mod routes;
mod stream;
#[cfg(test)]
mod test_support;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::debug;

use request::{include_usage, is_stream, token_limit};
use response::{error_response, invalid_request, Meta, MockResponse};
use routes::{check_head, respond};
use stream::{sse_data, sse_event, sse_response, write_response, SSE_DONE};
use tokens::{
    approx_tokens, chat_prompt_bytes, completion_prompt_bytes, responses_prompt_bytes, Reply, Usage,
};

/// Request bodies above this are refused with 413: the mock buffers the whole body, and no
/// realistic prompt sent to it needs more.
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

/// Unanswered request bodies up to this size are drained so the connection can be reused;
/// larger (or chunked) ones make us close instead of reading megabytes nobody wants.
const MAX_DRAIN_ON_REJECT: u64 = 1024 * 1024;

const DEFAULT_EMBEDDING_DIMS: usize = 8;
const MAX_EMBEDDING_DIMS: usize = 4096;

/// Settings of the embedded mock provider (the policy's `mock_provider` section, minus `listen`).
#[derive(Clone)]
pub struct MockProviderConfig {
    /// When `Some`, requests must carry `Authorization: Bearer <key>` or `api-key: <key>`,
    /// otherwise they get OpenAI's 401 `invalid_api_key` error.
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
            check_head(
                &self.config,
                &req.method,
                req.uri.path(),
                req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
                req.headers.get("api-key").map(|v| v.as_bytes()),
            )
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

// ---------------------------------------------------------------------------------------------
// Pure part: routing, auth, request parsing and body building. No I/O below this line.
// ---------------------------------------------------------------------------------------------

// --- chat completions -------------------------------------------------------------------------

fn chat_completions(
    req: &Map<String, Value>,
    model: &str,
    meta: &Meta,
) -> Result<MockResponse, MockResponse> {
    let messages = match req.get("messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => {
            return Err(invalid_request(
                "Invalid type for 'messages': expected an array of objects.",
                Some("messages"),
                Some("invalid_type"),
            ))
        }
        None => {
            return Err(invalid_request(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            ))
        }
    };
    let reply = Reply::new(token_limit(req, &["max_completion_tokens", "max_tokens"])?);
    let usage = Usage {
        prompt: approx_tokens(chat_prompt_bytes(messages)),
        completion: reply.tokens(),
    };
    Ok(if is_stream(req) {
        sse_response(chat_stream_events(
            meta,
            model,
            &reply,
            usage,
            include_usage(req),
        ))
    } else {
        MockResponse::json(200, &chat_completion_json(meta, model, &reply, usage))
    })
}

fn chat_completion_json(meta: &Meta, model: &str, reply: &Reply, usage: Usage) -> Value {
    json!({
        "id": format!("chatcmpl-{}", meta.id),
        "object": "chat.completion",
        "created": meta.created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": reply.text(),
                "refusal": null,
                "annotations": []
            },
            "logprobs": null,
            "finish_reason": reply.finish_reason()
        }],
        "usage": usage.chat_json(),
        "system_fingerprint": null
    })
}

/// Role chunk, one chunk per word, the finish chunk, the usage chunk (only when asked for, and
/// then every other chunk carries `"usage": null`, as OpenAI does), and `[DONE]`.
fn chat_stream_events(
    meta: &Meta,
    model: &str,
    reply: &Reply,
    usage: Usage,
    include_usage: bool,
) -> Vec<Bytes> {
    let id = format!("chatcmpl-{}", meta.id);
    let chunk = |choices: Value, usage_value: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if let (Some(u), Some(obj)) = (usage_value, c.as_object_mut()) {
            obj.insert("usage".to_string(), u);
        }
        sse_data(&c)
    };
    let choice = |delta: Value, finish: Value| {
        json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish
        }])
    };
    let null_usage = || include_usage.then_some(Value::Null);

    let mut events = Vec::with_capacity(reply.words.len() + 4);
    events.push(chunk(
        choice(json!({"role": "assistant", "content": ""}), Value::Null),
        null_usage(),
    ));
    for delta in reply.deltas() {
        events.push(chunk(
            choice(json!({"content": delta}), Value::Null),
            null_usage(),
        ));
    }
    events.push(chunk(
        choice(json!({}), json!(reply.finish_reason())),
        null_usage(),
    ));
    if include_usage {
        events.push(chunk(json!([]), Some(usage.chat_json())));
    }
    events.push(Bytes::from_static(SSE_DONE));
    events
}

// --- legacy completions -----------------------------------------------------------------------

fn completions(
    req: &Map<String, Value>,
    model: &str,
    meta: &Meta,
) -> Result<MockResponse, MockResponse> {
    let reply = Reply::new(token_limit(req, &["max_tokens"])?);
    let usage = Usage {
        prompt: approx_tokens(completion_prompt_bytes(req.get("prompt"))),
        completion: reply.tokens(),
    };
    Ok(if is_stream(req) {
        sse_response(completion_stream_events(
            meta,
            model,
            &reply,
            usage,
            include_usage(req),
        ))
    } else {
        MockResponse::json(200, &completion_json(meta, model, &reply, usage))
    })
}

fn completion_json(meta: &Meta, model: &str, reply: &Reply, usage: Usage) -> Value {
    json!({
        "id": format!("cmpl-{}", meta.id),
        "object": "text_completion",
        "created": meta.created,
        "model": model,
        "choices": [{
            "text": reply.text(),
            "index": 0,
            "logprobs": null,
            "finish_reason": reply.finish_reason()
        }],
        "usage": usage.chat_json(),
        "system_fingerprint": null
    })
}

/// One chunk per word, a final empty-text chunk with the finish reason, the optional usage
/// chunk, and `[DONE]`. Legacy completions have no role chunk.
fn completion_stream_events(
    meta: &Meta,
    model: &str,
    reply: &Reply,
    usage: Usage,
    include_usage: bool,
) -> Vec<Bytes> {
    let id = format!("cmpl-{}", meta.id);
    let chunk = |choices: Value, usage_value: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": meta.created,
            "model": model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if let (Some(u), Some(obj)) = (usage_value, c.as_object_mut()) {
            obj.insert("usage".to_string(), u);
        }
        sse_data(&c)
    };
    let choice = |text: &str, finish: Value| {
        json!([{
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish
        }])
    };
    let null_usage = || include_usage.then_some(Value::Null);

    let mut events = Vec::with_capacity(reply.words.len() + 3);
    for delta in reply.deltas() {
        events.push(chunk(choice(&delta, Value::Null), null_usage()));
    }
    events.push(chunk(
        choice("", json!(reply.finish_reason())),
        null_usage(),
    ));
    if include_usage {
        events.push(chunk(json!([]), Some(usage.chat_json())));
    }
    events.push(Bytes::from_static(SSE_DONE));
    events
}

// --- embeddings -------------------------------------------------------------------------------

fn embeddings(req: &Map<String, Value>, model: &str) -> Result<MockResponse, MockResponse> {
    let invalid_input = || {
        invalid_request(
            "'input' must be a non-empty string, array of strings, array of tokens, or array \
             of token arrays.",
            Some("input"),
            Some("invalid_value"),
        )
    };
    let input = match req.get("input") {
        Some(input) => input,
        None => {
            return Err(invalid_request(
                "Missing required parameter: 'input'.",
                Some("input"),
                Some("missing_required_parameter"),
            ))
        }
    };
    let inputs = embedding_inputs(input).ok_or_else(invalid_input)?;

    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_EMBEDDING_DIMS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_EMBEDDING_DIMS as u64).contains(&n) => n as usize,
            _ => {
                return Err(invalid_request(
                    &format!(
                        "Invalid 'dimensions': expected an integer from 1 to {MAX_EMBEDDING_DIMS}."
                    ),
                    Some("dimensions"),
                    Some("invalid_value"),
                ))
            }
        },
    };
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(invalid_request(
                &format!("Invalid 'encoding_format': {other} is not one of ['float', 'base64']."),
                Some("encoding_format"),
                Some("invalid_value"),
            ))
        }
    };

    let prompt_tokens = approx_tokens(inputs.iter().map(|i| i.prompt_bytes).sum());
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(&input.key, dims);
            // The official Python SDK asks for base64 by default and decodes little-endian f32.
            let embedding = if base64 {
                let raw: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64_encode(&raw))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(MockResponse::json(
        200,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        }),
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EmbeddingInput {
    /// What the vector is derived from: the text, or the token array's JSON.
    key: Vec<u8>,
    /// Contribution to the prompt size; a pre-tokenised input counts 4 bytes per token so that
    /// it comes out as one token each.
    prompt_bytes: usize,
}

/// Splits `input` into embedding items the way OpenAI does: a string or one token array is one
/// item; an array of strings or of token arrays is one item each. `None` if malformed.
fn embedding_inputs(input: &Value) -> Option<Vec<EmbeddingInput>> {
    fn text(s: &str) -> EmbeddingInput {
        EmbeddingInput {
            key: s.as_bytes().to_vec(),
            prompt_bytes: s.len(),
        }
    }
    fn tokens(items: &[Value]) -> Option<EmbeddingInput> {
        if items.is_empty() || !items.iter().all(|t| t.as_u64().is_some()) {
            return None;
        }
        Some(EmbeddingInput {
            key: Value::Array(items.to_vec()).to_string().into_bytes(),
            prompt_bytes: items.len() * 4,
        })
    }
    match input {
        Value::String(s) => Some(vec![text(s)]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .map(|s| text(s.as_str().unwrap_or_default()))
                .collect(),
        ),
        Value::Array(items) if items.iter().all(Value::is_number) => Some(vec![tokens(items)?]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(inner) => tokens(inner),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A unit-length vector derived from SHA-256 of the input, so equal inputs embed equally
/// across runs and processes.
fn embedding_vector(key: &[u8], dims: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dims);
    let mut block: u32 = 0;
    while out.len() < dims {
        let digest = Sha256::new()
            .chain_update(block.to_le_bytes())
            .chain_update(key)
            .finalize();
        for pair in digest.chunks_exact(2) {
            if out.len() == dims {
                break;
            }
            let raw = u16::from_le_bytes([pair[0], pair[1]]);
            out.push(f32::from(raw) / 32767.5 - 1.0);
        }
        block = block.wrapping_add(1);
    }
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut out {
            *x /= norm;
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), as OpenAI's `encoding_format: "base64"` uses.
fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// --- responses --------------------------------------------------------------------------------

fn responses(
    req: &Map<String, Value>,
    model: &str,
    meta: &Meta,
) -> Result<MockResponse, MockResponse> {
    let reply = Reply::new(token_limit(req, &["max_output_tokens"])?);
    let usage = Usage {
        prompt: approx_tokens(responses_prompt_bytes(req.get("input"))),
        completion: reply.tokens(),
    };
    Ok(if is_stream(req) {
        sse_response(responses_stream_events(meta, model, req, &reply, usage))
    } else {
        MockResponse::json(
            200,
            &response_object(meta, model, req, Some((&reply, usage))),
        )
    })
}

/// The message output item. A reply cut by `max_output_tokens` is `incomplete`, as OpenAI
/// reports it.
fn response_message_item(meta: &Meta, reply: &Reply, done: bool) -> Value {
    let (status, content) = if done {
        let status = if reply.truncated {
            "incomplete"
        } else {
            "completed"
        };
        (status, json!([output_text_part(&reply.text())]))
    } else {
        ("in_progress", json!([]))
    };
    json!({
        "id": format!("msg_{}", meta.id),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content
    })
}

fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The `response` object; `finished` is `None` while in progress (no output, no usage).
fn response_object(
    meta: &Meta,
    model: &str,
    req: &Map<String, Value>,
    finished: Option<(&Reply, Usage)>,
) -> Value {
    let echo = |name: &str, default: Value| req.get(name).cloned().unwrap_or(default);
    let (status, incomplete_details, output, usage) = match finished {
        None => ("in_progress", Value::Null, json!([]), Value::Null),
        Some((reply, usage)) => {
            let output = json!([response_message_item(meta, reply, true)]);
            if reply.truncated {
                (
                    "incomplete",
                    json!({"reason": "max_output_tokens"}),
                    output,
                    usage.responses_json(),
                )
            } else {
                ("completed", Value::Null, output, usage.responses_json())
            }
        }
    };
    json!({
        "id": format!("resp_{}", meta.id),
        "object": "response",
        "created_at": meta.created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete_details,
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "model": model,
        "output": output,
        "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
        "previous_response_id": echo("previous_response_id", Value::Null),
        "reasoning": {"effort": null, "summary": null},
        "store": echo("store", json!(true)),
        "temperature": echo("temperature", json!(1.0)),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": echo("top_p", json!(1.0)),
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": echo("metadata", json!({}))
    })
}

/// The full event sequence OpenAI sends. The SDK's `responses.stream()` helper needs the
/// `output_item.added` / `content_part.added` events before any delta, so they are not
/// optional. The last event is `response.completed`, or `response.incomplete` when the reply
/// was cut by `max_output_tokens`; both carry the usage.
fn responses_stream_events(
    meta: &Meta,
    model: &str,
    req: &Map<String, Value>,
    reply: &Reply,
    usage: Usage,
) -> Vec<Bytes> {
    let item_id = format!("msg_{}", meta.id);
    let text = reply.text();
    let mut events = Vec::with_capacity(reply.words.len() + 8);
    let mut push = |kind: &str, mut payload: Value| {
        if let Some(obj) = payload.as_object_mut() {
            obj.insert("type".to_string(), json!(kind));
            obj.insert("sequence_number".to_string(), json!(events.len()));
        }
        events.push(sse_event(kind, &payload));
    };

    let in_progress = response_object(meta, model, req, None);
    push("response.created", json!({"response": in_progress}));
    push("response.in_progress", json!({"response": in_progress}));
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": response_message_item(meta, reply, false)}),
    );
    push(
        "response.content_part.added",
        json!({
            "item_id": item_id, "output_index": 0, "content_index": 0,
            "part": output_text_part("")
        }),
    );
    for delta in reply.deltas() {
        push(
            "response.output_text.delta",
            json!({
                "item_id": item_id, "output_index": 0, "content_index": 0,
                "delta": delta, "logprobs": []
            }),
        );
    }
    push(
        "response.output_text.done",
        json!({
            "item_id": item_id, "output_index": 0, "content_index": 0,
            "text": text, "logprobs": []
        }),
    );
    push(
        "response.content_part.done",
        json!({
            "item_id": item_id, "output_index": 0, "content_index": 0,
            "part": output_text_part(&text)
        }),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": response_message_item(meta, reply, true)}),
    );
    let last = if reply.truncated {
        "response.incomplete"
    } else {
        "response.completed"
    };
    push(
        last,
        json!({"response": response_object(meta, model, req, Some((reply, usage)))}),
    );
    events
}

#[cfg(test)]
mod tests {
    use super::routes::Route;
    use super::test_support::{body_json, data_payloads, post, sse_events};
    use super::*;

    #[test]
    fn chat_completion_shape() {
        let resp = post(
            Route::ChatCompletions,
            json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hello world!"}]
            }),
        );
        assert_eq!(resp.status, 200);
        let v = body_json(&resp);
        assert_eq!(v["id"], "chatcmpl-test");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["created"], 1_700_000_000u64);
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["choices"][0]["index"], 0);
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "This is a mock response from keygate's embedded provider."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], 9);
        assert_eq!(v["usage"]["total_tokens"], 12);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[test]
    fn chat_stream_without_usage() {
        let resp = post(
            Route::ChatCompletions,
            json!({"model": "m", "stream": true, "max_tokens": 2,
                   "messages": [{"role": "user", "content": "hi"}]}),
        );
        let events = sse_events(&resp);
        // role, 2 words, finish, [DONE]
        assert_eq!(events.len(), 5);
        assert!(events.iter().all(|e| e.ends_with("\n\n")));
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let chunks = data_payloads(&events);
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-test"));
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "This");
        assert_eq!(chunks[2]["choices"][0]["delta"]["content"], " is");
        assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn chat_stream_with_usage() {
        let resp = post(
            Route::ChatCompletions,
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "12345"}]}),
        );
        let events = sse_events(&resp);
        assert_eq!(events.len(), 1 + 9 + 1 + 1 + 1);
        let chunks = data_payloads(&events);
        let (usage_chunk, rest) = chunks.split_last().unwrap();
        assert!(rest
            .iter()
            .all(|c| c["usage"] == Value::Null && c.as_object().unwrap().contains_key("usage")));
        assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 2);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 9);
        assert_eq!(usage_chunk["usage"]["total_tokens"], 11);
        let text: String = rest
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, Reply::new(None).text());
    }

    #[test]
    fn completions_shapes() {
        let resp = post(
            Route::Completions,
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["abcd", "efgh"], "max_tokens": 4}),
        );
        let v = body_json(&resp);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["id"], "cmpl-test");
        assert_eq!(v["choices"][0]["text"], "This is a mock");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], 2);
        assert_eq!(v["usage"]["completion_tokens"], 4);

        let resp = post(
            Route::Completions,
            json!({"model": "m", "prompt": "x", "stream": true, "max_tokens": 1,
                   "stream_options": {"include_usage": true}}),
        );
        let events = sse_events(&resp);
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let chunks = data_payloads(&events);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0]["choices"][0]["text"], "This");
        assert_eq!(chunks[0]["usage"], Value::Null);
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[2]["choices"], json!([]));
        assert_eq!(chunks[2]["usage"]["total_tokens"], 2);
    }

    #[test]
    fn embeddings_shape_and_determinism() {
        let resp = post(
            Route::Embeddings,
            json!({"model": "text-embedding-3-small", "input": ["hello", "world!!!"]}),
        );
        let v = body_json(&resp);
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "text-embedding-3-small");
        assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[1]["index"], 1);
        assert_eq!(data[0]["object"], "embedding");
        let e0: Vec<f64> = serde_json::from_value(data[0]["embedding"].clone()).unwrap();
        let e1: Vec<f64> = serde_json::from_value(data[1]["embedding"].clone()).unwrap();
        assert_eq!(e0.len(), 8);
        assert_ne!(e0, e1);
        let norm: f64 = e0.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");

        // Same text, same vector, whether alone or in a batch.
        let again = body_json(&post(
            Route::Embeddings,
            json!({"model": "x", "input": "hello"}),
        ));
        assert_eq!(again["data"][0]["embedding"], data[0]["embedding"]);

        let dims = body_json(&post(
            Route::Embeddings,
            json!({"model": "x", "input": "hello", "dimensions": 40}),
        ));
        assert_eq!(dims["data"][0]["embedding"].as_array().unwrap().len(), 40);

        let tokens = body_json(&post(
            Route::Embeddings,
            json!({"model": "x", "input": [[1, 2, 3], [4]]}),
        ));
        assert_eq!(tokens["data"].as_array().unwrap().len(), 2);
        assert_eq!(tokens["usage"]["prompt_tokens"], 4);
    }

    #[test]
    fn embeddings_base64_matches_floats() {
        let floats = embedding_vector(b"hello", 8);
        let v = body_json(&post(
            Route::Embeddings,
            json!({"model": "x", "input": "hello", "encoding_format": "base64"}),
        ));
        let raw: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!(v["data"][0]["embedding"], json!(base64_encode(&raw)));
        let bad = post(
            Route::Embeddings,
            json!({"model": "x", "input": "hello", "encoding_format": "hex"}),
        );
        assert_eq!(bad.status, 400);
    }

    #[test]
    fn base64_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }

    #[test]
    fn responses_shape() {
        let v = body_json(&post(
            Route::Responses,
            json!({"model": "gpt-4.1", "input": [{"role": "user", "content": "abcdefgh"}]}),
        ));
        assert_eq!(v["object"], "response");
        assert_eq!(v["id"], "resp_test");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "gpt-4.1");
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(v["output"][0]["role"], "assistant");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(
            v["output"][0]["content"][0]["text"],
            Reply::new(None).text()
        );
        assert_eq!(v["output"][0]["content"][0]["annotations"], json!([]));
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 2, "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 11})
        );

        let cut = body_json(&post(
            Route::Responses,
            json!({"model": "m", "input": "x", "max_output_tokens": 2}),
        ));
        assert_eq!(cut["status"], "incomplete");
        assert_eq!(cut["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(cut["output"][0]["content"][0]["text"], "This is");
        assert_eq!(cut["max_output_tokens"], 2);
    }

    #[test]
    fn responses_stream_events_sequence() {
        let resp = post(
            Route::Responses,
            json!({"model": "m", "input": "hello", "stream": true, "max_output_tokens": 3}),
        );
        let events = sse_events(&resp);
        let names: Vec<&str> = events
            .iter()
            .map(|e| e.lines().next().unwrap().strip_prefix("event: ").unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.incomplete",
            ]
        );
        assert!(!events.iter().any(|e| e.contains("[DONE]")));
        let payloads = data_payloads(&events);
        for (i, (p, name)) in payloads.iter().zip(&names).enumerate() {
            assert_eq!(p["type"], *name);
            assert_eq!(p["sequence_number"], i);
        }
        assert_eq!(payloads[0]["response"]["status"], "in_progress");
        assert_eq!(payloads[0]["response"]["usage"], Value::Null);
        assert_eq!(payloads[5]["delta"], " is");
        assert_eq!(payloads[7]["text"], "This is a");
        let last = payloads.last().unwrap();
        assert_eq!(last["response"]["usage"]["input_tokens"], 2);
        assert_eq!(last["response"]["usage"]["output_tokens"], 3);

        let full = sse_events(&post(
            Route::Responses,
            json!({"model": "m", "input": "hello", "stream": true}),
        ));
        assert!(full
            .last()
            .unwrap()
            .starts_with("event: response.completed\n"));
    }

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
