//! Streaming: the SSE event framing the endpoints build their streams from, and the writer
//! that puts a response on the wire, pacing SSE events so clients see tokens arrive over time.
//!
//! The pacing is why the mock drives the session itself: each event is its own chunked body
//! write, which Pingora flushes at once.

use super::response::Meta;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use serde_json::Value;

use super::response::{MockBody, MockResponse};

/// Writes `response`, pausing `stream_delay` between SSE events (none before the first).
pub(super) async fn write_response(
    session: &mut ServerSession,
    response: MockResponse,
    stream_delay: Duration,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(response.status, Some(5))?;
    header.insert_header(
        "x-request-id",
        format!("req_{}", uuid::Uuid::new_v4().simple()),
    )?;
    match response.body {
        MockBody::Json(body) => {
            header.insert_header(header::CONTENT_TYPE, "application/json")?;
            header.insert_header(header::CONTENT_LENGTH, body.len())?;
            session.write_response_header(Box::new(header)).await?;
            session.write_response_body(body, true).await
        }
        MockBody::Sse(events) => {
            header.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
            header.insert_header(header::CACHE_CONTROL, "no-cache")?;
            // Pingora's H1 writer does not pick chunked by itself: a response without
            // Content-Length or Transfer-Encoding is framed by closing the connection. HTTP/2
            // strips this header, and HTTP/1.0 clients must get the close-delimited form.
            if session.req_header().version == http::Version::HTTP_11 {
                header.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            }
            session.write_response_header(Box::new(header)).await?;
            for (i, event) in events.into_iter().enumerate() {
                if i > 0 && !stream_delay.is_zero() {
                    tokio::time::sleep(stream_delay).await;
                }
                // Each write is one chunk, and Pingora flushes chunked writes immediately.
                session.write_response_body(event, false).await?;
            }
            session.write_response_body(Bytes::new(), true).await
        }
    }
}

/// One `data:` SSE event, as chat and completions streams use.
pub(super) fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// One streamed chunk of a completion-style stream (`object` names which), as an SSE event. The
/// usage member is present only when given: null on every chunk but the last when the client
/// asked for usage, absent otherwise.
pub(super) fn completion_chunk(
    id: &str,
    object: &str,
    meta: &Meta,
    model: &str,
    choices: Value,
    usage: Option<Value>,
) -> Bytes {
    let mut c = serde_json::json!({
        "id": id,
        "object": object,
        "created": meta.created,
        "model": model,
        "system_fingerprint": null,
        "choices": choices,
    });
    if let (Some(u), Some(obj)) = (usage, c.as_object_mut()) {
        obj.insert("usage".to_string(), u);
    }
    sse_data(&c)
}

/// One named SSE event, as the Responses API streams use.
pub(super) fn sse_event(name: &str, value: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {value}\n\n"))
}

pub(super) const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

pub(super) fn sse_response(events: Vec<Bytes>) -> MockResponse {
    MockResponse {
        status: 200,
        body: MockBody::Sse(events),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sse_formatting() {
        assert_eq!(
            sse_data(&json!({"a": 1})),
            Bytes::from("data: {\"a\":1}\n\n")
        );
        assert_eq!(
            sse_event("response.created", &json!({"a": 1})),
            Bytes::from("event: response.created\ndata: {\"a\":1}\n\n")
        );
    }
}
