//! `POST /v1/responses`, the Responses API: the `response` object, or the full named-event
//! stream the SDKs' stream helpers expect.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::request::{is_stream, token_limit};
use super::response::{Meta, MockResponse};
use super::stream::{sse_event, sse_response};
use super::tokens::{approx_tokens, responses_prompt_bytes, Reply, Usage};

pub(super) fn responses(
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
    use super::*;
    use crate::mock_provider::routes::Route;
    use crate::mock_provider::test_support::{body_json, data_payloads, post, sse_events};

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
}
