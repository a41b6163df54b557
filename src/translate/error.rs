//! Provider errors in OpenAI's shape. Anthropic answers
//! `{"type":"error","error":{"type":"rate_limit_error","message":...}}`; an OpenAI SDK reads
//! `{"error":{"message","type","param","code"}}` and picks its exception class by the status,
//! which is kept. Anthropic's error type becomes the `code`, so nothing it said is lost.
//!
//! After a 200 an error arrives as an `error` event; on a chat stream it becomes a data event
//! holding the error object, which the OpenAI SDKs raise as an `APIError`.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The longest error body read; Anthropic's are a few hundred bytes.
const MAX_ERROR: usize = 64 << 10;

/// Collects a provider error response, and sends it in OpenAI's shape at the end.
pub struct ErrorResponse {
    status: u16,
    body: BytesMut,
}

impl ErrorResponse {
    pub fn new(status: u16) -> Self {
        ErrorResponse {
            status,
            body: BytesMut::new(),
        }
    }

    pub fn filter(&mut self, chunk: Option<&[u8]>, end_of_stream: bool) -> Option<Bytes> {
        if let Some(chunk) = chunk {
            let room = MAX_ERROR.saturating_sub(self.body.len());
            self.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        end_of_stream.then(|| openai_error(self.status, &self.body))
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    error: Detail<'a>,
}

#[derive(Deserialize)]
pub(crate) struct Detail<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct OpenAiEnvelope<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: Option<&'a str>,
}

/// OpenAI's error type for `status`, as keygate's own refusals name it.
fn openai_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// The OpenAI-shaped error for a provider's error `body` answered with `status`.
pub fn openai_error(status: u16, body: &[u8]) -> Bytes {
    let detail = serde_json::from_slice::<Envelope<'_>>(body)
        .ok()
        .map(|e| e.error);
    let fallback = format!("The model's provider answered with status {status}.");
    let message = detail
        .as_ref()
        .and_then(|d| d.message.as_deref())
        .unwrap_or(&fallback);
    let code = detail.as_ref().and_then(|d| d.kind.as_deref());
    envelope(message, openai_type(status), code)
}

/// The OpenAI-shaped error of an `error` event's data.
pub(crate) fn stream_error(detail: &Detail<'_>) -> Bytes {
    let message = detail
        .message
        .as_deref()
        .unwrap_or("The model's provider ended the stream with an error.");
    let code = detail.kind.as_deref();
    let kind = match code {
        Some("rate_limit_error") => "rate_limit_error",
        Some("invalid_request_error") => "invalid_request_error",
        _ => "api_error",
    };
    envelope(message, kind, code)
}

/// An error of the gateway's own, in the body of a response whose head already went out.
pub(crate) fn gateway_error(message: &str) -> Bytes {
    envelope(message, "api_error", Some("translation_failed"))
}

fn envelope(message: &str, kind: &'static str, code: Option<&str>) -> Bytes {
    let body = OpenAiEnvelope {
        error: OpenAiError {
            message,
            kind,
            param: None,
            code,
        },
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn translate(status: u16, body: &[u8]) -> Value {
        let mut t = ErrorResponse::new(status);
        assert_eq!(t.filter(Some(&body[..3]), false), None);
        serde_json::from_slice(&t.filter(Some(&body[3..]), true).unwrap()).unwrap()
    }

    #[test]
    fn anthropic_errors_in_openai_shape() {
        for (status, kind, openai) in [
            (400, "invalid_request_error", "invalid_request_error"),
            (401, "authentication_error", "authentication_error"),
            (403, "permission_error", "permission_error"),
            (404, "not_found_error", "not_found_error"),
            (413, "request_too_large", "invalid_request_error"),
            (429, "rate_limit_error", "rate_limit_error"),
            (500, "api_error", "api_error"),
            (529, "overloaded_error", "api_error"),
        ] {
            let body = json!({"type": "error", "error": {"type": kind, "message": "Nope."}, "request_id": "req_1"});
            let v = translate(status, &serde_json::to_vec(&body).unwrap());
            assert_eq!(
                v,
                json!({"error": {"message": "Nope.", "type": openai, "param": null, "code": kind}})
            );
        }
    }

    #[test]
    fn what_is_not_anthropic_json_still_gets_a_message() {
        let v = translate(502, b"<html>Bad Gateway</html>");
        assert_eq!(
            v["error"]["message"],
            "The model's provider answered with status 502."
        );
        assert_eq!(v["error"]["type"], "api_error");
    }
}
