//! A Messages event stream as chat completion chunks, event by event as the body passes: only
//! an event a body chunk cut in two is carried until its end arrives.
//!
//! `message_start` gives the role chunk; `text_delta`s become content deltas; a `tool_use`
//! block becomes a tool call (its id and name first, then its `input_json_delta`s as argument
//! fragments), numbered from 0 in the order the calls come as OpenAI numbers them;
//! `message_delta` gives the finish reason and the latest (cumulative) usage; `message_stop`
//! ends the stream with the usage chunk, when the client asked for it with
//! `stream_options.include_usage`, then `[DONE]`. An `error` event becomes a data event holding
//! the error, which the OpenAI SDKs raise. Pings, thinking and block stops have no counterpart.

use super::error::{self, Detail};
use super::{finish_reason, unix_now, MessagesUsage};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The longest event carried across body chunks. Messages events are small (a delta each);
/// past this the provider is misbehaving and the stream ends with an error.
const MAX_EVENT: usize = 1 << 20;

/// Translates one Messages event stream.
pub struct StreamTranslator {
    /// The start of an event a body chunk cut.
    carry: Vec<u8>,
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,`: the same in
    /// every chunk of the stream, so rendered once (at `message_start`, which names the id and
    /// the model) instead of escaped again for each delta.
    head: Vec<u8>,
    created: u64,
    include_usage: bool,
    usage: MessagesUsage,
    /// Messages' block index of each tool call so far, by the call's OpenAI index.
    tool_blocks: Vec<usize>,
    /// `[DONE]` or an error was sent: nothing more is.
    done: bool,
}

impl StreamTranslator {
    pub fn new(include_usage: bool) -> Self {
        let created = unix_now();
        StreamTranslator {
            carry: Vec::new(),
            head: chunk_head("", "", created),
            created,
            include_usage,
            usage: MessagesUsage::default(),
            tool_blocks: Vec::new(),
            done: false,
        }
    }

    pub fn filter(&mut self, chunk: Option<&[u8]>, _end_of_stream: bool) -> Option<Bytes> {
        let chunk = chunk.filter(|c| !c.is_empty() && !self.done)?;
        // Chunks come out about the size they went in.
        let mut out = BytesMut::with_capacity(chunk.len() + 256);
        if self.carry.is_empty() {
            let used = self.events(chunk, &mut out);
            self.keep(&chunk[used..], &mut out);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(chunk);
            let used = self.events(&buf, &mut out);
            buf.drain(..used);
            self.carry = buf;
            self.keep(&[], &mut out);
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    /// Carries `rest`, the start of an unfinished event, within [`MAX_EVENT`].
    fn keep(&mut self, rest: &[u8], out: &mut BytesMut) {
        if self.carry.len() + rest.len() > MAX_EVENT {
            self.carry = Vec::new();
            self.fail(
                &error::gateway_error("The model's provider sent an event too long to translate."),
                out,
            );
            return;
        }
        self.carry.extend_from_slice(rest);
    }

    /// Translates the complete events at the start of `buf`; returns the bytes they took.
    fn events(&mut self, buf: &[u8], out: &mut BytesMut) -> usize {
        let mut event_start = 0;
        let mut line_start = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            let line = &buf[line_start..nl];
            if line.is_empty() || line == b"\r" {
                if line_start > event_start {
                    self.event(&buf[event_start..line_start], out);
                }
                event_start = nl + 1;
            }
            line_start = nl + 1;
            if self.done {
                return buf.len();
            }
        }
        event_start
    }

    /// One event's lines; its data (the `type` names the event, so `event:` is not needed).
    fn event(&mut self, event: &[u8], out: &mut BytesMut) {
        let mut data: Option<Cow<'_, [u8]>> = None;
        for line in event.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(value) = line.strip_prefix(b"data:") else {
                continue;
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            data = Some(match data {
                None => Cow::Borrowed(value),
                // Several data lines make one value, joined by newlines.
                Some(before) => {
                    let mut joined = before.into_owned();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                    Cow::Owned(joined)
                }
            });
        }
        let Some(data) = data else { return };
        // Events with no counterpart, as Anthropic writes them (`type` first), are not parsed;
        // written otherwise, they are parsed and then ignored.
        if data.starts_with(b"{\"type\":\"ping\"")
            || data.starts_with(b"{\"type\":\"content_block_stop\"")
            || is_empty_text_block(&data)
        {
            return;
        }
        if data.as_ref() == b"{\"type\":\"message_stop\"}" {
            self.stop(out);
            return;
        }
        if let Some(text) = text_delta(&data) {
            self.raw_text(text, out);
            return;
        }
        // An event that is not JSON (a provider's comment-like noise) carries nothing to send.
        if let Ok(event) = serde_json::from_slice::<Event<'_>>(&data) {
            self.translate(event, out);
        }
    }

    fn translate(&mut self, event: Event<'_>, out: &mut BytesMut) {
        match event.kind.as_ref() {
            "message_start" => {
                if let Some(message) = event.message {
                    self.head = chunk_head(&message.id, &message.model, self.created);
                    if let Some(usage) = &message.usage {
                        self.usage.update(usage);
                    }
                }
                self.chunk(
                    DeltaOut {
                        role: Some("assistant"),
                        content: Some(""),
                        tool_calls: None,
                    },
                    None,
                    out,
                );
            }
            "content_block_start" => {
                let (Some(index), Some(block)) = (event.index, event.content_block) else {
                    return;
                };
                match block.kind.as_ref() {
                    "text" => {
                        if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                            self.text(text, out);
                        }
                    }
                    "tool_use" => {
                        let call = self.tool_blocks.len();
                        self.tool_blocks.push(index);
                        let delta = ToolCallDelta {
                            index: call,
                            id: Some(block.id.as_deref().unwrap_or("")),
                            kind: Some("function"),
                            function: FunctionDelta {
                                name: Some(block.name.as_deref().unwrap_or("")),
                                arguments: "",
                            },
                        };
                        self.tool_delta(delta, out);
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let (Some(index), Some(delta)) = (event.index, event.delta) else {
                    return;
                };
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(text) = delta.text.as_deref() {
                            self.text(text, out);
                        }
                    }
                    Some("input_json_delta") => {
                        let call = self.tool_blocks.iter().position(|&b| b == index);
                        if let (Some(call), Some(json)) = (call, delta.partial_json.as_deref()) {
                            let delta = ToolCallDelta {
                                index: call,
                                id: None,
                                kind: None,
                                function: FunctionDelta {
                                    name: None,
                                    arguments: json,
                                },
                            };
                            self.tool_delta(delta, out);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = &event.usage {
                    self.usage.update(usage);
                }
                let reason = event
                    .delta
                    .and_then(|d| d.stop_reason)
                    .map(|r| finish_reason(&r));
                if let Some(reason) = reason {
                    self.chunk(DeltaOut::default(), Some(reason), out);
                }
            }
            "message_stop" => self.stop(out),
            "error" => {
                let detail = event.error.unwrap_or(Detail {
                    kind: None,
                    message: None,
                });
                self.fail(&error::stream_error(&detail), out);
            }
            // ping, content_block_stop, and events a newer API may add
            _ => {}
        }
    }

    /// The end of the message: the usage chunk if the client asked for it, then `[DONE]`.
    fn stop(&mut self, out: &mut BytesMut) {
        if self.include_usage {
            out.extend_from_slice(&self.head);
            out.extend_from_slice(b"\"choices\":[],\"usage\":");
            let _ = serde_json::to_writer(out.writer(), &self.usage.to_openai());
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn text(&self, text: &str, out: &mut BytesMut) {
        let delta = DeltaOut {
            role: None,
            content: Some(text),
            tool_calls: None,
        };
        self.chunk(delta, None, out);
    }

    /// A content delta whose text is `string`, a JSON string token as the provider wrote it:
    /// what serializing a [`ChoiceOut`] with that content gives, without unescaping and escaping
    /// the text again.
    fn raw_text(&self, string: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[{\"index\":0,\"delta\":{\"content\":");
        out.extend_from_slice(string);
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    }

    fn tool_delta(&self, call: ToolCallDelta<'_>, out: &mut BytesMut) {
        let delta = DeltaOut {
            role: None,
            content: None,
            tool_calls: Some([call]),
        };
        self.chunk(delta, None, out);
    }

    fn chunk(&self, delta: DeltaOut<'_>, finish: Option<&'static str>, out: &mut BytesMut) {
        let choice = ChoiceOut {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        };
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[");
        // Serializing plain structs of strings and numbers into memory cannot fail.
        let _ = serde_json::to_writer(out.writer(), &choice);
        out.extend_from_slice(b"]}\n\n");
    }

    /// Ends the stream with `error` (OpenAI-shaped) as its last event.
    fn fail(&mut self, error: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(error);
        out.extend_from_slice(b"\n\n");
        self.done = true;
    }
}

/// Whether `data` is the start of a text block with no text yet, as Anthropic writes every text
/// block's start: nothing to send.
fn is_empty_text_block(data: &[u8]) -> bool {
    data.starts_with(b"{\"type\":\"content_block_start\",")
        && data.ends_with(b",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}")
}

/// The text of a `text_delta` event written as Anthropic writes it, most of a stream's events:
/// the JSON string token, checked but not decoded. `None` for anything else, which is parsed.
fn text_delta(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(b"{\"type\":\"content_block_delta\",\"index\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest[digits..].strip_prefix(b",\"delta\":{\"type\":\"text_delta\",\"text\":")?;
    let len = json_string_len(rest)?;
    let (string, tail) = rest.split_at(len);
    (digits > 0 && tail == b"}}" && std::str::from_utf8(string).is_ok()).then_some(string)
}

/// The length of the well-formed JSON string token `buf` starts with, its quotes included.
fn json_string_len(buf: &[u8]) -> Option<usize> {
    if buf.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    loop {
        let at = i + memchr::memchr3(b'"', b'\\', b'\n', &buf[i..])?;
        if buf[i..at].iter().any(|&b| b < 0x20) {
            return None;
        }
        match buf[at] {
            b'"' => return Some(at + 1),
            b'\\' => match buf.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i = at + 2,
                b'u' if buf.get(at + 2..at + 6)?.iter().all(u8::is_ascii_hexdigit) => i = at + 6,
                _ => return None,
            },
            _ => return None,
        }
    }
}

/// The start of every chunk of a stream, up to its `choices`.
fn chunk_head(id: &str, model: &str, created: u64) -> Vec<u8> {
    let mut head = Vec::with_capacity(id.len() + model.len() + 96);
    head.extend_from_slice(b"data: {\"id\":");
    // Serializing a string into memory cannot fail.
    let _ = serde_json::to_writer(&mut head, id);
    head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
    head.extend_from_slice(created.to_string().as_bytes());
    head.extend_from_slice(b",\"model\":");
    let _ = serde_json::to_writer(&mut head, model);
    head.push(b',');
    head
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<StartMessage<'a>>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow, default)]
    content_block: Option<StartBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<MessagesUsage>,
    #[serde(borrow, default)]
    error: Option<Detail<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    model: Cow<'a, str>,
    #[serde(default)]
    usage: Option<MessagesUsage>,
}

#[derive(Deserialize)]
struct StartBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A Messages stream as Anthropic sends it: text, then a tool call in two fragments.
    pub(crate) const MESSAGES_SSE: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \\\"w\\u00f6rld\\\"\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn text_deltas_copied_raw_equal_parsed_ones() {
        let texts = [
            r#""Hello""#,
            r#""""#,
            r#""a \"q\" \\ \/ \n\t \u00e9 \ud83d\ude00 é 😀""#,
        ];
        for text in texts {
            let raw = format!(
                "data: {{\"type\":\"content_block_delta\",\"index\":3,\"delta\":{{\"type\":\"text_delta\",\"text\":{text}}}}}\n\n"
            );
            // The same event with its members in another order takes the parsed path.
            let parsed = format!(
                "data: {{\"index\":3,\"type\":\"content_block_delta\",\"delta\":{{\"text\":{text},\"type\":\"text_delta\"}}}}\n\n"
            );
            let fast = StreamTranslator::new(false).filter(Some(raw.as_bytes()), false);
            let slow = StreamTranslator::new(false).filter(Some(parsed.as_bytes()), false);
            let (fast, slow) = (fast.unwrap(), slow.unwrap());
            assert!(
                text_delta(&raw.as_bytes()[6..raw.len() - 2]).is_some(),
                "{text}"
            );
            let value = |out: &[u8]| -> Value { serde_json::from_str(&datas(out)[0]).unwrap() };
            let mut fast = value(&fast);
            let mut slow = value(&slow);
            // `created` is the time each translator started.
            fast["created"] = Value::Null;
            slow["created"] = Value::Null;
            assert_eq!(fast, slow, "{text}");
        }
        for malformed in [
            r#""bad \x escape""#,
            r#""unterminated"#,
            r#""\u12""#,
            "\"raw\u{1}control\"",
        ] {
            let data = format!(
                "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{malformed}}}}}"
            );
            assert_eq!(text_delta(data.as_bytes()), None, "{malformed}");
        }
    }

    #[test]
    fn events_skipped_or_ended_unparsed_equal_parsed_ones() {
        let stream = |block_start: &str, stop: &str| {
            let input = format!(
                "data: {}\n\ndata: {block_start}\n\ndata: {stop}\n\n",
                r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3}}}"#
            );
            let out = StreamTranslator::new(true).filter(Some(input.as_bytes()), true);
            let mut events = datas(&out.unwrap());
            // `created` is the time each translator started.
            for e in &mut events {
                if let Ok(mut v) = serde_json::from_str::<Value>(e) {
                    v["created"] = Value::Null;
                    *e = v.to_string();
                }
            }
            events
        };
        let fast =
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
        assert!(is_empty_text_block(fast.as_bytes()));
        // The same events with their members in another order, or spaced, take the parsed path.
        let parsed_start =
            r#"{"index":0,"type":"content_block_start","content_block":{"text":"","type":"text"}}"#;
        assert!(!is_empty_text_block(parsed_start.as_bytes()));
        let a = stream(fast, r#"{"type":"message_stop"}"#);
        let b = stream(parsed_start, r#"{ "type": "message_stop" }"#);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3, "{a:?}");
        assert_eq!(a[2], "[DONE]");
        // A block that starts with text is not skipped.
        let with_text = r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}"#;
        assert!(!is_empty_text_block(with_text.as_bytes()));
        assert!(stream(with_text, r#"{"type":"message_stop"}"#)[1].contains("\"Hi\""));
    }

    /// The data of each event the client receives.
    fn datas(out: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.ends_with("\n\n"), "{text}");
        text.split_terminator("\n\n")
            .map(|e| {
                e.strip_prefix("data: ")
                    .expect("data events only")
                    .to_owned()
            })
            .collect()
    }

    fn run(input: &str, include_usage: bool, split: impl Fn(&[u8]) -> Vec<&[u8]>) -> Vec<String> {
        let mut t = StreamTranslator::new(include_usage);
        let mut out = Vec::new();
        for piece in split(input.as_bytes()) {
            if let Some(b) = t.filter(Some(piece), false) {
                out.extend_from_slice(&b);
            }
        }
        assert_eq!(t.filter(None, true), None);
        datas(&out)
    }

    fn whole(b: &[u8]) -> Vec<&[u8]> {
        vec![b]
    }

    #[test]
    fn text_and_a_tool_call() {
        let events = run(MESSAGES_SSE, true, whole);
        let v: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(events.last().unwrap(), "[DONE]");
        for chunk in &v {
            assert_eq!(chunk["id"], "msg_1");
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "claude-sonnet-4-5");
        }
        let deltas: Vec<&Value> = v[..v.len() - 1]
            .iter()
            .map(|c| &c["choices"][0]["delta"])
            .collect();
        assert_eq!(
            deltas,
            [
                &json!({"role": "assistant", "content": ""}),
                &json!({"content": "Hello \"wörld\""}),
                &json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
                &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
                &json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                &json!({}),
            ]
        );
        assert_eq!(v[5]["choices"][0]["finish_reason"], "tool_calls");
        let usage = &v[6];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 35, "completion_tokens": 9, "total_tokens": 44,
                   "prompt_tokens_details": {"cached_tokens": 10}})
        );
    }

    #[test]
    fn usage_only_when_asked() {
        let events = run(MESSAGES_SSE, false, whole);
        assert_eq!(events.len(), 7);
        assert!(events.iter().all(|e| !e.contains("\"usage\"")));
    }

    #[test]
    fn every_split_gives_the_same_stream() {
        let want = run(MESSAGES_SSE, true, whole);
        let crlf = MESSAGES_SSE.replace('\n', "\r\n");
        for input in [MESSAGES_SSE, crlf.as_str()] {
            let b = input.as_bytes();
            for k in 0..=b.len() {
                let got = run(input, true, |b| vec![&b[..k], &b[k..]]);
                // `created` is the second the translator was made: compare without it.
                let strip = |v: &[String]| -> Vec<Value> {
                    v.iter()
                        .map(|e| match serde_json::from_str::<Value>(e) {
                            Ok(mut v) => {
                                v["created"] = Value::Null;
                                v
                            }
                            Err(_) => Value::String(e.clone()),
                        })
                        .collect()
                };
                assert_eq!(strip(&got), strip(&want), "split at {k}");
            }
            let bytewise = run(input, true, |b| b.chunks(1).collect());
            assert_eq!(bytewise.len(), want.len());
            let _ = b;
        }
    }

    #[test]
    fn an_error_event_ends_the_stream() {
        let input = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let events = run(input, true, whole);
        assert_eq!(events.len(), 2);
        let e: Value = serde_json::from_str(&events[1]).unwrap();
        assert_eq!(
            e,
            json!({"error": {"message": "Overloaded", "type": "api_error", "param": null, "code": "overloaded_error"}})
        );
    }

    #[test]
    fn an_endless_event_is_cut_with_an_error() {
        let mut t = StreamTranslator::new(false);
        let big = vec![b'x'; MAX_EVENT / 4];
        let mut out = Vec::new();
        out.extend_from_slice(
            &t.filter(Some(b"data: {\"type\":\"message_start\"}\n\ndata: "), false)
                .unwrap(),
        );
        for _ in 0..5 {
            if let Some(b) = t.filter(Some(&big), false) {
                out.extend_from_slice(&b);
            }
        }
        let events = datas(&out);
        assert!(events[1].contains("translation_failed"), "{events:?}");
        assert_eq!(t.filter(Some(b"\n\n"), false), None);
    }

    #[test]
    fn never_panics_on_garbage() {
        for input in crate::usage::fixtures::GARBAGE {
            let mut t = StreamTranslator::new(true);
            for b in input.iter() {
                let _ = t.filter(Some(std::slice::from_ref(b)), false);
            }
            let _ = t.filter(None, true);
        }
    }
}
