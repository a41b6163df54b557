//! Helpers shared by the mock provider's unit tests: a fixed [`Meta`] and readers that take
//! a built [`MockResponse`] apart into JSON or SSE events.

use serde_json::Value;

use super::response::{Meta, MockBody, MockResponse};
use super::routes::{respond, Route};

/// Fixed id and timestamp, so bodies can be compared exactly.
pub(super) fn meta() -> Meta {
    Meta {
        id: "test".to_string(),
        created: 1_700_000_000,
    }
}

pub(super) fn body_json(resp: &MockResponse) -> Value {
    match &resp.body {
        MockBody::Json(b) => serde_json::from_slice(b).expect("valid JSON body"),
        MockBody::Sse(_) => panic!("expected a JSON body, got SSE"),
    }
}

pub(super) fn sse_events(resp: &MockResponse) -> Vec<String> {
    match &resp.body {
        MockBody::Sse(events) => events
            .iter()
            .map(|e| String::from_utf8(e.to_vec()).expect("utf8"))
            .collect(),
        MockBody::Json(_) => panic!("expected SSE, got JSON"),
    }
}

/// The JSON payloads of `data:` lines, skipping `[DONE]`.
pub(super) fn data_payloads(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect()
}

/// A routed, authenticated request with `body` as its JSON payload.
pub(super) fn post(route: Route, body: Value) -> MockResponse {
    respond(&route, body.to_string().as_bytes(), &meta())
}
