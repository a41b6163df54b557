//! A Messages JSON response as a `chat.completion`: text blocks joined into the message's
//! content, `tool_use` blocks as tool calls, the stop reason as a finish reason, and the usage
//! in OpenAI's fields. A JSON response is one object, so it is read whole (bounded) before it is
//! translated; streams are `stream`'s.

use super::{error, finish_reason, unix_now, MessagesUsage, OpenAiUsage};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The longest Messages JSON response read. Output is bounded by `max_tokens`; this bounds only
/// a provider that misbehaves.
const MAX_JSON: usize = 64 << 20;

/// Collects a Messages JSON response, and sends its translation at the end.
pub struct JsonResponse {
    body: BytesMut,
    overflowed: bool,
}

impl Default for JsonResponse {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonResponse {
    pub fn new() -> Self {
        JsonResponse {
            body: BytesMut::new(),
            overflowed: false,
        }
    }

    pub fn filter(&mut self, chunk: Option<&[u8]>, end_of_stream: bool) -> Option<Bytes> {
        // A body that came in one piece is translated where it lies.
        if let (true, true, Some(whole)) = (end_of_stream, self.body.is_empty(), chunk) {
            if !self.overflowed && whole.len() <= MAX_JSON {
                return Some(translated_or_error(to_chat_completion(whole)));
            }
        }
        if let Some(chunk) = chunk {
            if self.body.len() + chunk.len() > MAX_JSON {
                self.overflowed = true;
                self.body = BytesMut::new();
            } else if !self.overflowed {
                self.body.extend_from_slice(chunk);
            }
        }
        if !end_of_stream {
            return None;
        }
        let translated = (!self.overflowed)
            .then(|| to_chat_completion(&self.body))
            .flatten();
        Some(translated_or_error(translated))
    }
}

fn translated_or_error(translated: Option<Bytes>) -> Bytes {
    translated.unwrap_or_else(|| {
        error::gateway_error(
            "The model's provider sent a response the gateway could not translate.",
        )
    })
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    model: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Vec<ContentBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<MessagesUsage>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: Option<String>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
}

#[derive(Serialize)]
pub(crate) struct ToolCall<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: Function<'a>,
}

#[derive(Serialize)]
pub(crate) struct Function<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

/// The `chat.completion` for the Messages response `body`; `None` if it is not one.
pub fn to_chat_completion(body: &[u8]) -> Option<Bytes> {
    let message: Message<'_> = serde_json::from_slice(body).ok()?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in &message.content {
        match block.kind.as_ref() {
            "text" => text
                .get_or_insert_with(String::new)
                .push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => tool_calls.push(ToolCall {
                id: block.id.as_deref().unwrap_or(""),
                kind: "function",
                function: Function {
                    name: block.name.as_deref().unwrap_or(""),
                    arguments: block.input.map_or("{}", RawValue::get),
                },
            }),
            // Thinking and server-tool blocks have no place in a chat completion.
            _ => {}
        }
    }
    let completion = ChatCompletion {
        id: &message.id,
        object: "chat.completion",
        created: unix_now(),
        model: &message.model,
        choices: [Choice {
            index: 0,
            message: ChatMessage {
                role: "assistant",
                content: text,
                refusal: None,
                tool_calls,
            },
            logprobs: None,
            finish_reason: message.stop_reason.as_deref().map(finish_reason),
        }],
        usage: message.usage.map(MessagesUsage::to_openai),
    };
    serde_json::to_vec(&completion).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn translate(v: Value) -> Value {
        let mut t = JsonResponse::new();
        let body = serde_json::to_vec(&v).unwrap();
        let (a, b) = body.split_at(body.len() / 2);
        assert_eq!(t.filter(Some(a), false), None);
        let out = t.filter(Some(b), true).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn text_and_usage() {
        let v = translate(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 5, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 100}
        }));
        assert_eq!(v["id"], "msg_1");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "claude-sonnet-4-5");
        assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(
            v["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": null},
                    "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 115, "completion_tokens": 5, "total_tokens": 120,
                   "prompt_tokens_details": {"cached_tokens": 100}})
        );
    }

    #[test]
    fn tool_calls() {
        let v = translate(json!({
            "id": "msg_2", "type": "message", "role": "assistant", "model": "c",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 1, "output_tokens": 2}
        }));
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Checking.");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_1");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        let only_tools = translate(json!({"id": "m", "model": "c", "stop_reason": "max_tokens",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}));
        assert_eq!(only_tools["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(only_tools["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn what_is_no_message_becomes_an_error() {
        let mut t = JsonResponse::new();
        let out = t.filter(Some(b"<html>oops"), true).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
    }

    #[test]
    fn a_body_in_one_piece_or_many_reads_the_same() {
        let body = br#"{"id":"m","model":"c","content":[{"type":"text","text":"x"}],"stop_reason":"end_turn"}"#;
        let mut whole = JsonResponse::new();
        let one: Value = serde_json::from_slice(&whole.filter(Some(body), true).unwrap()).unwrap();
        let mut pieces = JsonResponse::new();
        for b in body.iter() {
            assert_eq!(pieces.filter(Some(std::slice::from_ref(b)), false), None);
        }
        let many: Value = serde_json::from_slice(&pieces.filter(None, true).unwrap()).unwrap();
        assert_eq!(one["choices"], many["choices"]);
        assert_eq!(one["choices"][0]["message"]["content"], "x");
    }
}
