//! The text of a body that guardrails scan. In a request, the text the model will read: chat
//! `messages` (string content and text parts, whatever the role, so system and tool messages
//! too), `prompt`, embeddings `input`, responses `input` and `instructions`, and Anthropic
//! `system` and `messages`. Field names, images, audio, tool schemas and tool-call arguments
//! are not text the model reads as the prompt, and are not returned. In a response, the text the
//! model wrote: a chat message's content, a completion's text, a response's output text, and
//! the deltas of their streams.
//!
//! Inside those fields every string is taken that sits directly in them, in an array of them, or
//! under a member of an object in them that holds text (for requests `content`, `text` or
//! `output`: a message's content, a content part's or block's text, a tool result, a function
//! call's output). Each is returned as
//! the byte span of its JSON string in the body, so a redaction can replace it in place. A field
//! name is matched whatever its letter case, as a lenient provider would match it, and a field
//! given twice is scanned twice, so neither hides text from the scan. What cannot be read is an
//! error: text that cannot be scanned is not forwarded.

use crate::domain::Operation;
use crate::json::{for_each_member, skip_string_noting_escapes, skip_value, skip_ws, Members};

/// The request body formats whose text is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Completions,
    Embeddings,
    Responses,
    /// Anthropic's Messages API.
    AnthropicMessages,
    /// A chat completion, and a chunk of its stream.
    ChatResponse,
    /// A legacy completion, and a chunk of its stream.
    CompletionsResponse,
    /// A response of the Responses API.
    ResponsesResponse,
    /// An event of a Responses API stream: its text arrives as `delta`s.
    ResponsesEvent,
    /// A message of Anthropic's Messages API: its text blocks.
    AnthropicResponse,
    /// An event of a Messages stream: text arrives in `content_block_delta`s.
    AnthropicEvent,
}

impl Shape {
    pub fn of(operation: Operation) -> Shape {
        match operation {
            Operation::Chat => Shape::Chat,
            Operation::Completions => Shape::Completions,
            Operation::Embeddings => Shape::Embeddings,
            Operation::Responses => Shape::Responses,
            // count_tokens sends the same prompt to the provider as messages does.
            Operation::Messages | Operation::CountTokens => Shape::AnthropicMessages,
        }
    }

    /// The shape of a response to `operation`, or of an event of its stream; `None` for
    /// embeddings and token counts, whose answers hold no text.
    pub fn response_of(operation: Operation, stream: bool) -> Option<Shape> {
        match operation {
            Operation::Chat => Some(Shape::ChatResponse),
            Operation::Completions => Some(Shape::CompletionsResponse),
            Operation::Responses if stream => Some(Shape::ResponsesEvent),
            Operation::Responses => Some(Shape::ResponsesResponse),
            Operation::Messages if stream => Some(Shape::AnthropicEvent),
            Operation::Messages => Some(Shape::AnthropicResponse),
            Operation::Embeddings | Operation::CountTokens => None,
        }
    }

    /// The top-level fields holding the text.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Shape::Chat => &["messages"],
            Shape::Completions => &["prompt"],
            Shape::Embeddings => &["input"],
            Shape::Responses => &["input", "instructions"],
            Shape::AnthropicMessages => &["system", "messages"],
            Shape::ChatResponse | Shape::CompletionsResponse => &["choices"],
            Shape::ResponsesResponse => &["output"],
            Shape::ResponsesEvent | Shape::AnthropicEvent => &["delta"],
            Shape::AnthropicResponse => &["content"],
        }
    }

    /// The members under which an object inside a text field keeps its text.
    fn members(self) -> &'static [&'static str] {
        match self {
            Shape::ChatResponse => &["message", "delta", "content"],
            Shape::CompletionsResponse => &["text"],
            Shape::ResponsesResponse => &["content", "text"],
            Shape::ResponsesEvent => &[],
            // A tool_use block's `input` and a thinking block's text are not scanned, as a
            // chat tool call's arguments are not.
            Shape::AnthropicResponse | Shape::AnthropicEvent => &["text"],
            _ => &["content", "text", "output"],
        }
    }
}

/// Deeper nesting than this inside a text field is refused rather than walked.
const MAX_DEPTH: u32 = 32;

/// One JSON string of prompt text: `body[start..end]` is the string with its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    pub start: usize,
    pub end: usize,
    /// Whether it holds an escape, so must be decoded to be read.
    pub escaped: bool,
}

impl Text {
    /// The string's content, when it has no escape to decode.
    fn raw<'b>(&self, body: &'b [u8]) -> Option<&'b str> {
        if self.escaped {
            return None;
        }
        std::str::from_utf8(&body[self.start + 1..self.end - 1]).ok()
    }

    /// The string's content, decoded.
    fn decode(&self, body: &[u8]) -> Option<String> {
        serde_json::from_slice(&body[self.start..self.end]).ok()
    }

    /// The string's content: borrowed when it has no escape, decoded when it has one; `None`
    /// when it is not a valid JSON string.
    pub fn content<'b>(&self, body: &'b [u8]) -> Option<std::borrow::Cow<'b, str>> {
        match self.raw(body) {
            Some(raw) => Some(std::borrow::Cow::Borrowed(raw)),
            None => self.decode(body).map(std::borrow::Cow::Owned),
        }
    }
}

/// A text field is not well-formed JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("The request's `{0}` could not be read as JSON.")]
pub struct Unreadable(pub &'static str);

/// Calls `found` with each prompt-text string of the JSON object `body`, in body order.
pub fn for_each(body: &[u8], shape: Shape, mut found: impl FnMut(Text)) -> Result<(), Unreadable> {
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return Err(Unreadable("body"));
    }
    let mut members = Members::new(body, open);
    for m in members.by_ref() {
        let name = &body[m.key.0..m.key.1];
        if let Some(field) = shape
            .fields()
            .iter()
            .find(|f| name.eq_ignore_ascii_case(f.as_bytes()))
        {
            walk(body, m.value.0, shape.members(), 0, &mut found)
                .filter(|&end| end == m.value.1)
                .ok_or(Unreadable(field))?;
        }
    }
    if !members.complete() {
        return Err(Unreadable("body"));
    }
    Ok(())
}

/// Walks the value at `body[i]`, reporting its text; returns the index just past it.
fn walk(
    body: &[u8],
    i: usize,
    members: &[&str],
    depth: u32,
    found: &mut impl FnMut(Text),
) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *body.get(i)? {
        b'"' => {
            let (end, escaped) = skip_string_noting_escapes(body, i)?;
            found(Text {
                start: i,
                end,
                escaped,
            });
            Some(end)
        }
        b'[' => {
            let mut at = skip_ws(body, i + 1);
            if *body.get(at)? == b']' {
                return Some(at + 1);
            }
            loop {
                at = skip_ws(body, walk(body, at, members, depth + 1, found)?);
                match *body.get(at)? {
                    b',' => at = skip_ws(body, at + 1),
                    b']' => return Some(at + 1),
                    _ => return None,
                }
            }
        }
        b'{' => for_each_member(body, i, |key, v| {
            if members
                .iter()
                .any(|m| key.eq_ignore_ascii_case(m.as_bytes()))
            {
                walk(body, v, members, depth + 1, found)
            } else {
                skip_value(body, v)
            }
        }),
        _ => skip_value(body, i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str, shape: Shape) -> Result<Vec<String>, Unreadable> {
        let mut out = Vec::new();
        for_each(body.as_bytes(), shape, |t| {
            out.push(t.decode(body.as_bytes()).unwrap())
        })?;
        Ok(out)
    }

    #[test]
    fn chat_messages_of_every_role_and_their_text_parts() {
        let body = r#"{"model":"m","messages":[
            {"role":"system","content":"be nice"},
            {"role":"user","name":"not-text","content":[
                {"type":"text","text":"part one"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
                {"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}
            ]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
                "function":{"name":"f","arguments":"{\"q\":\"args\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"tool said \u0041"}
        ],"tools":[{"type":"function","function":{"name":"f","description":"schema text",
            "parameters":{"type":"object"}}}],"user":"u-1"}"#;
        assert_eq!(
            texts(body, Shape::Chat).unwrap(),
            ["be nice", "part one", "tool said A"]
        );
    }

    #[test]
    fn prompts_inputs_and_instructions() {
        assert_eq!(
            texts(
                r#"{"model":"m","prompt":["a","b"],"suffix":"no"}"#,
                Shape::Completions
            )
            .unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            texts(r#"{"model":"m","prompt":"p"}"#, Shape::Completions).unwrap(),
            ["p"]
        );
        assert_eq!(
            texts(
                r#"{"input":[[1,2,3],"words"],"model":"m"}"#,
                Shape::Embeddings
            )
            .unwrap(),
            ["words"]
        );
        let responses = r#"{"model":"m","instructions":"sys","input":[
            {"role":"user","content":[{"type":"input_text","text":"hello"},
                {"type":"input_image","image_url":"https://x/y.png"}]},
            {"type":"function_call","call_id":"c","name":"f","arguments":"{}"},
            {"type":"function_call_output","call_id":"c","output":"result"}]}"#;
        assert_eq!(
            texts(responses, Shape::Responses).unwrap(),
            ["sys", "hello", "result"]
        );
        assert_eq!(
            texts(r#"{"model":"m","input":"just text"}"#, Shape::Responses).unwrap(),
            ["just text"]
        );
    }

    #[test]
    fn anthropic_system_and_message_blocks() {
        let body = r#"{"model":"claude","max_tokens":10,
            "system":[{"type":"text","text":"sys block","cache_control":{"type":"ephemeral"}}],
            "messages":[
                {"role":"user","content":"plain"},
                {"role":"assistant","content":[{"type":"text","text":"said"},
                    {"type":"tool_use","id":"t","name":"f","input":{"q":"tool input"}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t",
                    "content":[{"type":"text","text":"result"}]},
                    {"type":"image","source":{"type":"base64","data":"AAAA"}}]}
            ],"tools":[{"name":"f","description":"schema","input_schema":{}}]}"#;
        assert_eq!(
            texts(body, Shape::AnthropicMessages).unwrap(),
            ["sys block", "plain", "said", "result"]
        );
        assert_eq!(
            texts(r#"{"system":"s","messages":[]}"#, Shape::AnthropicMessages).unwrap(),
            ["s"]
        );
    }

    #[test]
    fn response_text_and_stream_deltas() {
        let chat = r#"{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,
            "message":{"role":"assistant","content":"answer","refusal":null,
            "tool_calls":[{"function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":1}}"#;
        assert_eq!(texts(chat, Shape::ChatResponse).unwrap(), ["answer"]);
        let chunk = r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"par"}}]}"#;
        assert_eq!(texts(chunk, Shape::ChatResponse).unwrap(), ["par"]);
        let legacy = r#"{"object":"text_completion","choices":[{"text":"done","index":0}]}"#;
        assert_eq!(texts(legacy, Shape::CompletionsResponse).unwrap(), ["done"]);
        let response = r#"{"object":"response","instructions":"not output","output":[
            {"type":"reasoning","summary":[]},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"out","annotations":[]}]}]}"#;
        assert_eq!(texts(response, Shape::ResponsesResponse).unwrap(), ["out"]);
        let event = r#"{"type":"response.output_text.delta","item_id":"i","delta":"de"}"#;
        assert_eq!(texts(event, Shape::ResponsesEvent).unwrap(), ["de"]);
        let done = r#"{"type":"response.completed","response":{"output":[]}}"#;
        assert!(texts(done, Shape::ResponsesEvent).unwrap().is_empty());
    }

    #[test]
    fn anthropic_message_text_and_stream_deltas() {
        let message = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude",
            "content":[{"type":"thinking","thinking":"hmm","signature":"s"},
                {"type":"text","text":"answer"},
                {"type":"tool_use","id":"t","name":"f","input":{"text":"args"}}],
            "stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":2}}"#;
        assert_eq!(
            texts(message, Shape::AnthropicResponse).unwrap(),
            ["answer"]
        );
        let delta = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"par"}}"#;
        assert_eq!(texts(delta, Shape::AnthropicEvent).unwrap(), ["par"]);
        for quiet in [
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":{"output_tokens":3}}"#,
            r#"{"type":"message_start","message":{"content":[],"usage":{"input_tokens":3}}}"#,
        ] {
            assert!(
                texts(quiet, Shape::AnthropicEvent).unwrap().is_empty(),
                "{quiet}"
            );
        }
    }

    #[test]
    fn case_variants_and_repeated_fields_are_scanned_too() {
        assert_eq!(
            texts(
                r#"{"messages":[{"content":"a"}],"Messages":[{"CONTENT":"b"}],"messages":[]}"#,
                Shape::Chat
            )
            .unwrap(),
            ["a", "b"]
        );
    }

    #[test]
    fn spans_point_at_the_json_strings() {
        let body = r#"{"prompt":"x\ny","model":"m"}"#;
        let mut spans = Vec::new();
        for_each(body.as_bytes(), Shape::Completions, |t| spans.push(t)).unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(&body[spans[0].start..spans[0].end], r#""x\ny""#);
        assert!(spans[0].escaped);
        assert_eq!(spans[0].raw(body.as_bytes()), None);
        let plain = r#"{"prompt":"xy"}"#;
        let mut spans = Vec::new();
        for_each(plain.as_bytes(), Shape::Completions, |t| spans.push(t)).unwrap();
        assert_eq!(spans[0].raw(plain.as_bytes()), Some("xy"));
    }

    #[test]
    fn unreadable_text_fields_are_errors() {
        for body in [
            r#"{"messages":[{"content":"a"},]}"#,
            r#"{"messages":[{"content" "a"}]}"#,
            r#"{"messages":[{"content":"a"}"#,
            r#"["messages"]"#,
        ] {
            assert!(texts(body, Shape::Chat).is_err(), "{body}");
        }
        let deep = format!(r#"{{"messages":{}"x"{}}}"#, "[".repeat(40), "]".repeat(40));
        assert_eq!(texts(&deep, Shape::Chat), Err(Unreadable("messages")));
        // Fields that are not scanned are not judged either.
        assert_eq!(
            texts(r#"{"messages":[],"tools":[{"a":1}]}"#, Shape::Chat).unwrap(),
            Vec::<String>::new()
        );
    }
}
