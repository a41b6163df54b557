//! The response model every route builds: a status with a JSON body or a list of SSE events,
//! the per-response id and timestamp, and OpenAI's error body.
//!
//! Responses are plain values, built in full before anything is written, so that every body the
//! mock can send is testable without a socket; [`super::stream`] puts them on the wire.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum MockBody {
    /// A complete JSON body, sent with Content-Length.
    Json(Bytes),
    /// Ready-formatted SSE events, each written (and flushed) as its own body write.
    Sse(Vec<Bytes>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct MockResponse {
    pub(super) status: u16,
    pub(super) body: MockBody,
}

impl MockResponse {
    pub(super) fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            body: MockBody::Json(Bytes::from(value.to_string())),
        }
    }
}

/// The per-response values that are random or time-based, kept apart so that body builders
/// stay deterministic under test.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub(super) id: String,
    pub(super) created: u64,
}

impl Meta {
    pub(super) fn fresh() -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

pub(super) fn error_response(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> MockResponse {
    MockResponse::json(
        status,
        &json!({
            "error": {
                "message": message,
                "type": kind,
                "param": param,
                "code": code,
            }
        }),
    )
}

pub(super) fn invalid_request(
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> MockResponse {
    error_response(400, message, "invalid_request_error", param, code)
}
