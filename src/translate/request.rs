//! A chat completions request as a Messages request.
//!
//! System and developer messages become `system`; user, assistant and tool messages become
//! turns of content blocks (tool results in a user turn, consecutive turns of one role merged,
//! as Messages requires); tools, tool choice, stop sequences, sampling and the output bound carry
//! over. A parameter Messages cannot express is refused with a 400 naming it, never dropped:
//! the client would otherwise get a different answer than it asked for without knowing. Values
//! that ask for nothing (`null`, `n: 1`, `logprobs: false`, a `text` response format) pass.

use crate::json::{key_name, skip_ws, Members};
use crate::proxy::refusal::Refusal;
use bytes::Bytes;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A translated request: the Messages body and what the response side must know.
#[derive(Debug)]
pub struct Translated {
    pub body: Bytes,
    /// The `max_tokens` sent: the client's bound, or the model's default.
    pub max_tokens: u64,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Translates the chat completions request `body` (a JSON object, already inspected) for the
/// Messages API of `upstream_model`, with `default_max_tokens` when the client sets no bound.
pub fn chat_to_messages(
    body: &[u8],
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Translated, Refusal> {
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return Err(Refusal::invalid_request(
            "The request body must be a JSON object.",
        ));
    }
    let mut req = Request::default();
    let mut members = Members::new(body, open);
    for m in members.by_ref() {
        let name = key_name(&body[m.key.0..m.key.1]);
        let raw = &body[m.value.0..m.value.1];
        req.member(&name, raw, upstream_model)?;
    }
    if !members.complete() {
        return Err(Refusal::invalid_request(
            "We could not parse the JSON body of your request.",
        ));
    }
    req.finish(upstream_model, default_max_tokens)
}

/// The members read so far. Each value is kept as its raw JSON and parsed where it is used.
#[derive(Default)]
struct Request<'a> {
    seen: u32,
    messages: Option<&'a [u8]>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<&'a RawValue>,
    top_p: Option<&'a RawValue>,
    stop: Option<Stop<'a>>,
    stream: bool,
    include_usage: bool,
    tools: Option<&'a [u8]>,
    tool_choice: Option<&'a [u8]>,
    parallel_tool_calls: Option<bool>,
    user: Option<Cow<'a, str>>,
}

/// Parses a member's value; a value of the wrong shape is a 400 naming it.
fn parse<'a, T: Deserialize<'a>>(param: &str, raw: &'a [u8]) -> Result<T, Refusal> {
    serde_json::from_slice(raw)
        .map_err(|e| invalid(param, format!("Invalid value for `{param}`: {e}.")))
}

fn invalid(param: &str, message: String) -> Refusal {
    Refusal::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned().into()),
    }
}

fn unsupported(param: &str, model: &str) -> Refusal {
    invalid(
        param,
        format!(
            "`{param}` is not supported for `{model}`, an Anthropic model served through the chat completions API; remove it from the request."
        ),
    )
}

/// Whether `raw` is one of the JSON texts in `neutral`, ignoring whitespace.
fn is_one_of(raw: &[u8], neutral: &[&str]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(raw) else {
        return false;
    };
    neutral.iter().any(|n| {
        serde_json::from_str::<serde_json::Value>(n).is_ok_and(|expected| expected == value)
    })
}

/// Top-level fields, by bit in `Request::seen`, to refuse one given twice.
const FIELDS: [&str; 14] = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "n",
];

/// Fields Messages has no counterpart for, accepted only with a value that asks for nothing.
const NEUTRAL: [(&str, &[&str]); 8] = [
    ("logprobs", &["false"]),
    ("top_logprobs", &["0"]),
    ("logit_bias", &["{}"]),
    ("response_format", &[r#"{"type":"text"}"#]),
    ("modalities", &[r#"["text"]"#]),
    ("store", &["false"]),
    ("frequency_penalty", &["0"]),
    ("presence_penalty", &["0"]),
];

/// Fields Messages has no counterpart for at all: accepted only as `null`.
const UNSUPPORTED: [&str; 15] = [
    "seed",
    "audio",
    "prediction",
    "service_tier",
    "metadata",
    "reasoning_effort",
    "web_search_options",
    "functions",
    "function_call",
    "verbosity",
    "prompt_cache_key",
    "safety_identifier",
    "best_of",
    "echo",
    "suffix",
];

impl<'a> Request<'a> {
    fn member(&mut self, name: &[u8], raw: &'a [u8], model: &str) -> Result<(), Refusal> {
        let name = String::from_utf8_lossy(name);
        let name = name.as_ref();
        if let Some(bit) = FIELDS.iter().position(|f| *f == name) {
            if self.seen & (1 << bit) != 0 {
                return Err(invalid(name, format!("`{name}` is given twice.")));
            }
            self.seen |= 1 << bit;
        }
        let null = raw == b"null";
        match name {
            // The upstream model is the policy's, not the client's alias.
            "model" => {}
            "messages" => self.messages = Some(raw),
            "max_tokens" => self.max_tokens = parse(name, raw)?,
            "max_completion_tokens" => self.max_completion_tokens = parse(name, raw)?,
            "temperature" => self.temperature = number(name, raw)?,
            "top_p" => self.top_p = number(name, raw)?,
            "stop" => self.stop = parse(name, raw)?,
            "stream" => self.stream = parse::<Option<bool>>(name, raw)?.unwrap_or(false),
            "stream_options" => {
                let options: Option<StreamOptions> = parse(name, raw)?;
                self.include_usage = options.and_then(|o| o.include_usage).unwrap_or(false);
            }
            "tools" => self.tools = (!null).then_some(raw),
            "tool_choice" => self.tool_choice = (!null).then_some(raw),
            "parallel_tool_calls" => self.parallel_tool_calls = parse(name, raw)?,
            "user" => self.user = parse(name, raw)?,
            "n" => match parse::<Option<u64>>(name, raw)? {
                None | Some(1) => {}
                Some(_) => {
                    return Err(invalid(
                        name,
                        format!("`n` other than 1 is not supported for `{model}`, an Anthropic model: it returns one choice per request."),
                    ))
                }
            },
            _ if null => {}
            _ => {
                if let Some((_, neutral)) = NEUTRAL.iter().find(|(n, _)| *n == name) {
                    if is_one_of(raw, neutral) {
                        return Ok(());
                    }
                    return Err(unsupported(name, model));
                }
                if UNSUPPORTED.contains(&name) {
                    return Err(unsupported(name, model));
                }
                return Err(invalid(
                    name,
                    format!("Unrecognized request argument supplied: {name}"),
                ));
            }
        }
        Ok(())
    }

    fn finish(self, model: &str, default_max_tokens: u64) -> Result<Translated, Refusal> {
        let messages = self.messages.ok_or_else(|| {
            Refusal::invalid_param("messages", "Missing required parameter: 'messages'.")
        })?;
        let (system, turns) = conversation(messages)?;
        let tools = self.tools.map(tools).transpose()?;
        let mut tool_choice = self.tool_choice.map(tool_choice).transpose()?;
        if self.parallel_tool_calls == Some(false) && tools.is_some() {
            match &mut tool_choice {
                None => {
                    tool_choice = Some(ToolChoiceOut {
                        kind: "auto",
                        name: None,
                        disable_parallel_tool_use: Some(true),
                    })
                }
                // `none` has no such switch: no tool is called at all.
                Some(choice) if choice.kind != "none" => {
                    choice.disable_parallel_tool_use = Some(true)
                }
                Some(_) => {}
            }
        }
        // The newer field wins, as OpenAI reads them.
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(default_max_tokens);
        let out = MessagesRequest {
            model,
            max_tokens,
            system,
            messages: turns,
            stop_sequences: self.stop.map(Stop::into_vec),
            temperature: self.temperature,
            top_p: self.top_p,
            stream: self.stream,
            tools,
            tool_choice,
            metadata: self.user.map(|user_id| Metadata { user_id }),
        };
        let body = serde_json::to_vec(&out).map_err(|_| Refusal::Internal)?;
        Ok(Translated {
            body: Bytes::from(body),
            max_tokens,
            stream: self.stream,
            include_usage: self.include_usage,
        })
    }
}

/// A number (or `null`), kept as written.
fn number<'a>(name: &str, raw: &'a [u8]) -> Result<Option<&'a RawValue>, Refusal> {
    let value: Option<&RawValue> = parse(name, raw)?;
    match value {
        Some(v) if !matches!(v.get().as_bytes()[0], b'-' | b'0'..=b'9') => Err(invalid(
            name,
            format!("Invalid value for `{name}`: expected a number."),
        )),
        v => Ok(v),
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// `stop`: one sequence or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

impl<'a> Stop<'a> {
    fn into_vec(self) -> Vec<Cow<'a, str>> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

// ---- the conversation ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage<'a> {
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
    /// Names a participant; Messages has no participants.
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    /// An assistant turn's refusal, echoed back in history; the text said nothing else.
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow, default)]
    audio: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
    /// An earlier answer's citations, as the SDK's message object carries them back.
    #[serde(borrow, default)]
    annotations: Option<&'a RawValue>,
}

/// A message's content: a string, or an array of parts.
enum Content<'a> {
    Text(JsonText<'a>),
    Parts(Vec<Part<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'a RawValue>::deserialize(d)?;
        match raw.get().as_bytes().first() {
            Some(b'"') => Ok(Content::Text(JsonText(raw))),
            Some(b'[') => serde_json::from_str(raw.get())
                .map(Content::Parts)
                .map_err(de::Error::custom),
            _ => Err(de::Error::invalid_type(
                unexpected(raw),
                &"a string or an array of content parts",
            )),
        }
    }
}

/// A JSON string as the client wrote it, escapes and all. Text goes into the Messages body as
/// it came: unescaping it and escaping it again was most of the request translation's time.
#[derive(Clone, Copy)]
struct JsonText<'a>(&'a RawValue);

impl JsonText<'_> {
    fn is_empty(self) -> bool {
        self.0.get() == "\"\""
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'a RawValue>::deserialize(d)?;
        if raw.get().starts_with('"') {
            Ok(JsonText(raw))
        } else {
            Err(de::Error::invalid_type(unexpected(raw), &"a string"))
        }
    }
}

impl Serialize for JsonText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// What a raw value that is not a string is, for the error that says so.
fn unexpected(raw: &RawValue) -> de::Unexpected<'static> {
    match raw.get().as_bytes().first() {
        Some(b'[') => de::Unexpected::Seq,
        Some(b'{') => de::Unexpected::Map,
        Some(b'n') => de::Unexpected::Unit,
        Some(b't' | b'f') => de::Unexpected::Other("a boolean"),
        _ => de::Unexpected::Other("a number"),
    }
}

/// One content part; `type` picks which of the other fields it has.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<JsonText<'a>>,
    #[serde(borrow, default)]
    image_url: Option<ImageUrl<'a>>,
    #[serde(borrow, default)]
    refusal: Option<JsonText<'a>>,
}

#[derive(Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
    /// OpenAI's resolution hint; Messages sizes images itself.
    #[serde(default, rename = "detail")]
    _detail: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: FunctionCall<'a>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// The Messages request, in the order Anthropic's documentation lists its fields.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<TurnContent<'a>>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<Cow<'a, str>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<ToolOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: Cow<'a, str>,
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: TurnContent<'a>,
}

/// A turn's (or the system prompt's, or a tool result's) content: a string, or blocks.
#[derive(Serialize)]
#[serde(untagged)]
enum TurnContent<'a> {
    Text(JsonText<'a>),
    Blocks(Vec<Block<'a>>),
}

impl<'a> TurnContent<'a> {
    fn into_blocks(self) -> Vec<Block<'a>> {
        match self {
            TurnContent::Text(text) => vec![Block::Text { text }],
            TurnContent::Blocks(blocks) => blocks,
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: JsonText<'a>,
    },
    Image {
        source: ImageSource<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: Box<RawValue>,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        content: TurnContent<'a>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Base64 {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
    Url {
        url: Cow<'a, str>,
    },
}

impl ImageSource<'_> {
    fn into_owned(self) -> ImageSource<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        match self {
            ImageSource::Base64 { media_type, data } => ImageSource::Base64 {
                media_type: own(media_type),
                data: own(data),
            },
            ImageSource::Url { url } => ImageSource::Url { url: own(url) },
        }
    }
}

/// The system prompt and the turns of the conversation `raw` (the `messages` array).
fn conversation(raw: &[u8]) -> Result<(Option<TurnContent<'_>>, Vec<Turn<'_>>), Refusal> {
    let messages = messages(raw)?;
    if messages.is_empty() {
        return Err(Refusal::invalid_param(
            "messages",
            "`messages` must hold at least one message.",
        ));
    }
    let mut system: Vec<JsonText<'_>> = Vec::new();
    let mut turns: Vec<Turn<'_>> = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let at = |field: &str| format!("messages[{i}]{field}");
        // No citations to pass on is nothing dropped.
        let annotations = m.annotations.filter(|a| a.get().trim() != "[]");
        for (field, value) in [
            ("name", m.name),
            ("audio", m.audio),
            ("function_call", m.function_call),
            ("annotations", annotations),
        ] {
            if value.is_some() {
                let param = at(&format!(".{field}"));
                return Err(invalid(
                    &param,
                    format!("`{param}` is not supported for Anthropic models; remove it from the request."),
                ));
            }
        }
        let (role, content) = match m.role.as_ref() {
            "system" | "developer" => {
                match m.content {
                    Some(c) => system.extend(texts(c, &at(".content"))?),
                    None => return Err(missing_content(&at(".content"))),
                }
                continue;
            }
            "user" => {
                let c = m.content.ok_or_else(|| missing_content(&at(".content")))?;
                ("user", user_content(c, &at(".content"))?)
            }
            "assistant" => (
                "assistant",
                assistant_content(m.content, m.refusal, m.tool_calls, &at)?,
            ),
            "tool" => {
                let id = m.tool_call_id.ok_or_else(|| {
                    invalid(
                        &at(".tool_call_id"),
                        format!("Missing required parameter: '{}'.", at(".tool_call_id")),
                    )
                })?;
                let c = m.content.ok_or_else(|| missing_content(&at(".content")))?;
                let content = match c {
                    Content::Text(text) => TurnContent::Text(text),
                    parts => TurnContent::Blocks(
                        texts(parts, &at(".content"))?
                            .into_iter()
                            .map(|text| Block::Text { text })
                            .collect(),
                    ),
                };
                let result = Block::ToolResult {
                    tool_use_id: id,
                    content,
                };
                ("user", TurnContent::Blocks(vec![result]))
            }
            other => {
                return Err(invalid(
                    &at(".role"),
                    format!("Invalid value for `{}`: `{other}` is not supported for Anthropic models (use system, developer, user, assistant or tool).", at(".role")),
                ))
            }
        };
        // Messages alternates roles: a turn of the role before joins it (tool results and the
        // user's next words become one user turn, tool results first as Anthropic requires).
        match turns.last_mut() {
            Some(last) if last.role == role => {
                let earlier = std::mem::replace(&mut last.content, TurnContent::Blocks(Vec::new()));
                let mut blocks = earlier.into_blocks();
                blocks.extend(content.into_blocks());
                last.content = TurnContent::Blocks(blocks);
            }
            _ => turns.push(Turn { role, content }),
        }
    }
    let system = match system.len() {
        0 => None,
        1 => system.pop().map(TurnContent::Text),
        _ => Some(TurnContent::Blocks(
            system
                .into_iter()
                .map(|text| Block::Text { text })
                .collect(),
        )),
    };
    Ok((system, turns))
}

/// The messages of the array `raw`, in one pass; only a broken one is looked for message by
/// message, to name it.
fn messages(raw: &[u8]) -> Result<Vec<ChatMessage<'_>>, Refusal> {
    if let Ok(messages) = serde_json::from_slice(raw) {
        return Ok(messages);
    }
    let each: Vec<&RawValue> = parse("messages", raw)?;
    for (i, message) in each.iter().enumerate() {
        if let Err(e) = serde_json::from_str::<ChatMessage<'_>>(message.get()) {
            let at = format!("messages[{i}]");
            return Err(invalid(&at, format!("Invalid message at `{at}`: {e}.")));
        }
    }
    Err(Refusal::invalid_param(
        "messages",
        "Invalid value for `messages`.",
    ))
}

fn missing_content(param: &str) -> Refusal {
    invalid(param, format!("Missing required parameter: '{param}'."))
}

/// The texts of content that may hold only text (system prompts, tool results).
fn texts<'a>(content: Content<'a>, param: &str) -> Result<Vec<JsonText<'a>>, Refusal> {
    match content {
        Content::Text(text) => Ok(vec![text]),
        Content::Parts(parts) => parts
            .into_iter()
            .enumerate()
            .map(|(j, part)| match (part.kind.as_ref(), part.text) {
                ("text", Some(text)) => Ok(text),
                (kind, _) => {
                    let at = format!("{param}[{j}]");
                    Err(invalid(
                        &at,
                        format!("Invalid content part at `{at}`: only `text` parts (with their text) are allowed here, not `{kind}`."),
                    ))
                }
            })
            .collect(),
    }
}

fn user_content<'a>(content: Content<'a>, param: &str) -> Result<TurnContent<'a>, Refusal> {
    let parts = match content {
        Content::Text(text) => return Ok(TurnContent::Text(text)),
        Content::Parts(parts) => parts,
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let at = format!("{param}[{j}]");
        blocks.push(match (part.kind.as_ref(), part.text, part.image_url) {
            ("text", Some(text), _) => Block::Text { text },
            ("image_url", _, Some(image)) => Block::Image {
                source: image_source(image.url, &at)?,
            },
            (kind @ ("text" | "image_url"), _, _) => {
                return Err(invalid(
                    &at,
                    format!("Invalid content part at `{at}`: a `{kind}` part needs its `{kind}` field."),
                ))
            }
            (kind, _, _) => {
                return Err(invalid(
                    &at,
                    format!("Content parts of type `{kind}` are not supported for Anthropic models (use `text` or `image_url`)."),
                ))
            }
        });
    }
    Ok(TurnContent::Blocks(blocks))
}

/// The media types Messages accepts for images.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// A `data:` URL becomes a base64 source, an http(s) URL a URL source.
fn image_source<'a>(url: Cow<'a, str>, param: &str) -> Result<ImageSource<'a>, Refusal> {
    match url {
        Cow::Borrowed(url) => image_source_of(url, param),
        // A URL written with JSON escapes (`\/`, as some encoders write it) was decoded.
        Cow::Owned(url) => image_source_of(&url, param).map(ImageSource::into_owned),
    }
}

fn image_source_of<'a>(url: &'a str, param: &str) -> Result<ImageSource<'a>, Refusal> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').unwrap_or((rest, ""));
        let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
            invalid(
                param,
                format!("Invalid image URL at `{param}`: a data URL must be base64 (`data:image/png;base64,...`)."),
            )
        })?;
        if !IMAGE_TYPES.contains(&media_type) {
            return Err(invalid(
                param,
                format!("Invalid image at `{param}`: `{media_type}` is not supported for Anthropic models (use image/jpeg, image/png, image/gif or image/webp)."),
            ));
        }
        return Ok(ImageSource::Base64 {
            media_type: Cow::Borrowed(media_type),
            data: Cow::Borrowed(data),
        });
    }
    let scheme = url.split_once("://").map(|(s, _)| s);
    if scheme.is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https")) {
        return Ok(ImageSource::Url {
            url: Cow::Borrowed(url),
        });
    }
    Err(invalid(
        param,
        format!("Invalid image URL at `{param}`: expected an http(s) URL or a base64 data URL."),
    ))
}

fn assistant_content<'a>(
    content: Option<Content<'a>>,
    refusal: Option<&'a RawValue>,
    tool_calls: Option<Vec<ToolCall<'a>>>,
    at: &dyn Fn(&str) -> String,
) -> Result<TurnContent<'a>, Refusal> {
    let mut blocks = Vec::new();
    match content {
        Some(Content::Text(text)) if tool_calls.is_none() => return Ok(TurnContent::Text(text)),
        Some(Content::Text(text)) if !text.is_empty() => blocks.push(Block::Text { text }),
        Some(Content::Text(_)) | None => {}
        Some(Content::Parts(parts)) => {
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_ref(), part.text, part.refusal) {
                    ("text", Some(text), _) | ("refusal", _, Some(text)) => {
                        blocks.push(Block::Text { text })
                    }
                    (kind, _, _) => {
                        let param = at(&format!(".content[{j}]"));
                        return Err(invalid(
                            &param,
                            format!("Invalid content part at `{param}`: assistant messages hold `text` or `refusal` parts, not `{kind}`."),
                        ));
                    }
                }
            }
        }
    }
    // A refusal the model gave earlier is what it said in that turn.
    if blocks.is_empty() && tool_calls.is_none() {
        if let Some(r) = refusal.filter(|r| r.get().starts_with('"')) {
            return Ok(TurnContent::Text(JsonText(r)));
        }
    }
    for (j, call) in tool_calls.into_iter().flatten().enumerate() {
        if call.kind.as_deref().is_some_and(|k| k != "function") {
            let param = at(&format!(".tool_calls[{j}].type"));
            return Err(invalid(
                &param,
                format!(
                    "Only `function` tool calls are supported for Anthropic models (`{param}`)."
                ),
            ));
        }
        let arguments = call.function.arguments.as_deref().unwrap_or("");
        let arguments = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        let param = at(&format!(".tool_calls[{j}].function.arguments"));
        let input = serde_json::from_str::<Box<RawValue>>(arguments)
            .ok()
            .filter(|v| v.get().starts_with('{'))
            .ok_or_else(|| {
                invalid(
                    &param,
                    format!("Invalid value for `{param}`: the arguments must be a JSON object, as Anthropic models take tool input as one."),
                )
            })?;
        blocks.push(Block::ToolUse {
            id: call.id,
            name: call.function.name,
            input,
        });
    }
    Ok(TurnContent::Blocks(blocks))
}

// ---- tools ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tool<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    function: Option<FunctionDef<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionDef<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    input_schema: &'a RawValue,
}

#[derive(Serialize)]
struct ToolChoiceOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

/// What a function without `parameters` takes: nothing.
fn empty_schema() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| {
        RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_owned())
            .unwrap_or_else(|_| unreachable!("a constant JSON object"))
    })
}

fn tools(raw: &[u8]) -> Result<Vec<ToolOut<'_>>, Refusal> {
    let tools: Vec<Tool<'_>> = parse("tools", raw)?;
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            let function = match (tool.kind.as_ref(), tool.function) {
                ("function", Some(f)) => f,
                (kind, _) => {
                    return Err(invalid(
                        &at,
                        format!("Invalid tool at `{at}`: only `function` tools (with their `function`) are supported for Anthropic models, not `{kind}`."),
                    ))
                }
            };
            if function.strict == Some(true) {
                let param = format!("{at}.function.strict");
                return Err(invalid(
                    &param,
                    format!("`{param}` is not supported for Anthropic models; remove it from the request."),
                ));
            }
            Ok(ToolOut {
                name: function.name,
                description: function.description,
                input_schema: match function.parameters {
                    Some(schema) => schema,
                    None => empty_schema(),
                },
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ToolChoice<'a> {
    Mode(#[serde(borrow)] Cow<'a, str>),
    Named {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        function: FunctionName<'a>,
    },
}

#[derive(Deserialize)]
struct FunctionName<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

fn tool_choice(raw: &[u8]) -> Result<ToolChoiceOut<'_>, Refusal> {
    let bad = || {
        invalid(
            "tool_choice",
            "Invalid value for `tool_choice`: expected `auto`, `none`, `required` or {\"type\":\"function\",\"function\":{\"name\":...}}.".to_owned(),
        )
    };
    let choice: ToolChoice<'_> = serde_json::from_slice(raw).map_err(|_| bad())?;
    let (kind, name) = match choice {
        ToolChoice::Mode(mode) => match mode.as_ref() {
            "auto" => ("auto", None),
            "none" => ("none", None),
            "required" => ("any", None),
            _ => return Err(bad()),
        },
        ToolChoice::Named { kind, function } if kind == "function" => ("tool", Some(function.name)),
        ToolChoice::Named { .. } => return Err(bad()),
    };
    Ok(ToolChoiceOut {
        kind,
        name,
        disable_parallel_tool_use: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn translate(body: Value) -> Result<(Value, Translated), Refusal> {
        let bytes = serde_json::to_vec(&body).unwrap();
        let t = chat_to_messages(&bytes, "claude-sonnet-4-5", 1024)?;
        Ok((serde_json::from_slice(&t.body).unwrap(), t))
    }

    fn refused(body: Value) -> (String, String) {
        match translate(body) {
            Err(Refusal::InvalidRequest { message, param }) => {
                (param.unwrap_or_default().into_owned(), message.into_owned())
            }
            Err(other) => panic!("not an invalid request: {other:?}"),
            Ok((v, _)) => panic!("translated: {v}"),
        }
    }

    #[test]
    fn a_plain_conversation() {
        let (v, t) = translate(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Bonjour"},
                {"role": "user", "content": [{"type": "text", "text": "Again"}]}
            ],
            "temperature": 0.25,
            "top_p": 1,
            "stop": "END",
            "max_completion_tokens": 300,
            "max_tokens": 100,
            "user": "u-1"
        }))
        .unwrap();
        assert_eq!(
            v,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 300,
                "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}],
                "messages": [
                    {"role": "user", "content": "Hello"},
                    {"role": "assistant", "content": "Bonjour"},
                    {"role": "user", "content": [{"type": "text", "text": "Again"}]}
                ],
                "stop_sequences": ["END"],
                "temperature": 0.25,
                "top_p": 1,
                "metadata": {"user_id": "u-1"}
            })
        );
        assert_eq!(
            (t.max_tokens, t.stream, t.include_usage),
            (300, false, false)
        );
    }

    #[test]
    fn the_default_bound_and_streaming() {
        let (v, t) = translate(json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
            "stop": ["a", "b"], "n": 1, "logprobs": false, "response_format": {"type": "text"},
            "seed": null
        }))
        .unwrap();
        assert_eq!(v["max_tokens"], 1024);
        assert_eq!(v["system"], "S");
        assert_eq!(v["stream"], true);
        assert_eq!(v["stop_sequences"], json!(["a", "b"]));
        assert_eq!(
            (t.stream, t.include_usage, t.max_tokens),
            (true, true, 1024)
        );
    }

    #[test]
    fn images_by_data_url_and_by_url() {
        let (v, _) = translate(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]}]
        }))
        .unwrap();
        assert_eq!(
            v["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ])
        );
        let image = |url: &str| {
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]})
        };
        for url in [
            "data:image/tiff;base64,AAAA",
            "data:image/png,rawbytes",
            "ftp://x/y.png",
            "file:///etc/passwd",
        ] {
            assert_eq!(refused(image(url)).0, "messages[0].content[0]", "{url}");
        }
    }

    #[test]
    fn tools_calls_and_results() {
        let (v, _) = translate(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Weather by city",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "now"}}
            ],
            "tool_choice": "required",
            "parallel_tool_calls": false
        }))
        .unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "Thanks"}
                ]}
            ])
        );
        assert_eq!(
            v["tools"],
            json!([
                {"name": "weather", "description": "Weather by city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn tool_choices() {
        let choice = |c: Value| {
            let (v, _) = translate(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": c}),
            )
            .unwrap();
            v["tool_choice"].clone()
        };
        assert_eq!(choice(json!("auto")), json!({"type": "auto"}));
        assert_eq!(choice(json!("none")), json!({"type": "none"}));
        assert_eq!(choice(json!("required")), json!({"type": "any"}));
        assert_eq!(
            choice(json!({"type": "function", "function": {"name": "f"}})),
            json!({"type": "tool", "name": "f"})
        );
        for bad in [
            json!("sometimes"),
            json!({"type": "allowed_tools"}),
            json!(3),
        ] {
            let (param, _) = refused(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": bad}),
            );
            assert_eq!(param, "tool_choice");
        }
    }

    #[test]
    fn an_assistant_turn_with_text_and_a_call() {
        let (v, _) = translate(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "Let me look.", "refusal": null, "annotations": [], "audio": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]}
        ]}))
        .unwrap();
        assert_eq!(
            v["messages"][1]["content"],
            json!([{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "t1", "name": "f", "input": {}}])
        );
    }

    #[test]
    fn unsupported_parameters_are_refused_by_name() {
        let base = |k: &str, v: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            body[k] = v;
            body
        };
        for (k, v) in [
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("logit_bias", json!({"50256": -100})),
            ("response_format", json!({"type": "json_object"})),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("modalities", json!(["text", "audio"])),
            ("seed", json!(7)),
            ("frequency_penalty", json!(0.5)),
            ("reasoning_effort", json!("high")),
            ("n", json!(2)),
            ("no_such_field", json!(1)),
        ] {
            let (param, message) = refused(base(k, v));
            assert_eq!(param, k);
            assert!(message.contains(k), "{message}");
        }
        for (k, v) in [
            ("temperature", json!("hot")),
            ("max_tokens", json!(-1)),
            ("stop", json!(5)),
        ] {
            assert_eq!(refused(base(k, v)).0, k);
        }
    }

    #[test]
    fn bad_messages_name_where() {
        for (messages, param) in [
            (json!([]), "messages"),
            (json!([{"role": "user"}]), "messages[0].content"),
            (
                json!([{"role": "user", "content": "x", "name": "bob"}]),
                "messages[0].name",
            ),
            (
                json!([{"role": "function", "content": "x"}]),
                "messages[0].role",
            ),
            (
                json!([{"role": "tool", "content": "x"}]),
                "messages[0].tool_call_id",
            ),
            (
                json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
                "messages[0].content[0]",
            ),
            (
                json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]),
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                json!([{"role": "user", "content": "x", "extra": 1}]),
                "messages[0]",
            ),
        ] {
            let (p, _) = refused(json!({"model": "m", "messages": messages}));
            assert_eq!(p, param);
        }
        assert_eq!(refused(json!({"model": "m"})).0, "messages");
    }

    #[test]
    fn text_goes_out_as_the_client_escaped_it() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"be \"terse\"\n"},
            {"role":"user","content":[{"type":"text","text":"caf\u00e9 \ud83d\ude00 a\/b"}]},
            {"role":"assistant","content":null,"refusal":"I can\u2019t"},
            {"role":"user","content":"ok"}]}"#;
        let t = chat_to_messages(body, "claude", 100).unwrap();
        let out = std::str::from_utf8(&t.body).unwrap();
        for raw in [
            r#""system":"be \"terse\"\n""#,
            r#"{"type":"text","text":"caf\u00e9 \ud83d\ude00 a\/b"}"#,
            r#"{"role":"assistant","content":"I can\u2019t"}"#,
        ] {
            assert!(out.contains(raw), "{raw} in {out}");
        }
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["messages"][0]["content"][0]["text"], "café \u{1F600} a/b");
    }

    #[test]
    fn content_of_another_type_is_refused_naming_the_message() {
        for content in [json!(5), json!(true), json!({"text": "x"})] {
            let (param, message) =
                refused(json!({"model": "m", "messages": [{"role": "user", "content": content}]}));
            assert_eq!(param, "messages[0]");
            assert!(
                message.contains("expected a string or an array of content parts"),
                "{message}"
            );
        }
        let (param, message) = refused(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": 7}]}]}));
        assert_eq!(param, "messages[0]");
        assert!(message.contains("expected a string"), "{message}");
    }

    #[test]
    fn strings_with_escapes_survive() {
        let (v, _) = translate(json!({"model": "m", "messages": [
            {"role": "user", "content": "line\none \"quoted\" é \u{1F600}"}]}))
        .unwrap();
        assert_eq!(
            v["messages"][0]["content"],
            "line\none \"quoted\" é \u{1F600}"
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        for input in crate::usage::fixtures::GARBAGE {
            let _ = chat_to_messages(input, "m", 1);
        }
    }
}
