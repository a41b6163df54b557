//! The request body: read whole before routing (the `model` field picks the provider), its top
//! level inspected, rewritten where keygate must (the upstream model name; on streams, asking for
//! the usage that accounting needs; for an Anthropic model asked through chat completions, the
//! whole body in the Messages API's terms, see `translate`), then handed to Pingora for sending
//! upstream.
//!
//! Pingora forwards a pre-read body only through its 64 KiB retry buffer: reading the body
//! consumes it, and what Pingora replays through `request_body_filter` is that buffer. So the
//! buffer is enabled just for the body's last 64 KiB (for Content-Length bodies of any size, and
//! for chunked bodies that fit it), and `request_body_filter` swaps the full body in when Pingora
//! replays that tail. A chunked body larger than the buffer has no tail to replay: for it the
//! HTTP/1 body reader is set up again on a one-byte stand-in body (see [`replay_stand_in`]), whose
//! replay the filter swaps for the full body just the same.
//!
//! The whole body must arrive within `server.body_timeout`, however it trickles in.

use super::limit::DEFAULT_OUTPUT_RESERVE;
use super::refusal::Refusal;
use crate::domain::Operation;
use crate::json::{key_is, key_name, skip_ws, Members};
use crate::policy::Model;
use crate::translate::{self, Translation};
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::body_buffer::FixedBuffer;
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::time::Duration;

/// Pingora's retry buffer size (`BODY_BUF_LIMIT`, not configurable).
const REPLAY_WINDOW: usize = 64 * 1024;

/// How much of an unwanted body keygate reads and throws away before refusing a request, so the
/// client finishes sending and reads the error instead of failing with a broken pipe.
const DISCARD_LIMIT: usize = 64 * 1024 * 1024;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops what is left of the request body, within [`DISCARD_LIMIT`] and
/// [`DISCARD_TIME`]; beyond that the connection is closed after the refusal instead.
pub async fn discard_rest(session: &mut Session) {
    if expects_continue(session) && session.body_bytes_read() == 0 {
        // The client waits for our go-ahead before sending the body and will not get it: answer
        // at once and close, since the unread body makes the connection unusable.
        session.set_keepalive(None);
        return;
    }
    let mut read = 0usize;
    let deadline = tokio::time::sleep(DISCARD_TIME);
    tokio::pin!(deadline);
    while !session.is_body_done() && read <= DISCARD_LIMIT {
        tokio::select! {
            chunk = session.read_request_body() => match chunk {
                Ok(Some(c)) => read += c.len(),
                _ => break,
            },
            _ = &mut deadline => break,
        }
    }
}

/// Reads the whole request body, enforcing `max_bytes` and `timeout`.
pub async fn read_whole(
    session: &mut Session,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Bytes, Refusal> {
    let declared = declared_length(session)?;
    if declared.is_some_and(|n| n > max_bytes) {
        return Err(Refusal::BodyTooLarge(max_bytes));
    }
    if expects_continue(session) {
        // Clients such as curl otherwise wait (a second, for curl) before sending large bodies.
        session
            .write_continue_response()
            .await
            .map_err(|_| Refusal::invalid_request("The request body could not be read."))?;
    }
    let Ok(read) = tokio::time::timeout(timeout, read_all(session, declared, max_bytes)).await
    else {
        // The rest of the body is still on its way: the connection cannot carry another request.
        session.set_keepalive(None);
        return Err(Refusal::RequestTimeout(timeout));
    };
    let (body, tail_buffered) = read?;
    // Asked without `get_retry_buffer`, which copies a body that came in several chunks.
    if !body.is_empty() && (!tail_buffered || session.retry_buffer_truncated()) {
        replay_stand_in(session).await?;
    }
    Ok(body)
}

/// The body, and whether Pingora's retry buffer holds its tail (some chunk arrived after
/// buffering began). The chunks are collected the way the retry buffer collects them
/// ([`FixedBuffer`]): a body that arrives in one chunk, as most do, is that chunk, shared with the
/// retry buffer rather than copied.
async fn read_all(
    session: &mut Session,
    declared: Option<usize>,
    max_bytes: usize,
) -> Result<(Bytes, bool), Refusal> {
    // `max_bytes` is enforced below, before a chunk is added, so the buffer never truncates.
    let mut body = FixedBuffer::new(max_bytes);
    let mut read = 0usize;
    let mut buffering = false;
    let mut tail_buffered = false;
    loop {
        let remaining = declared.map_or(0, |n| n.saturating_sub(read));
        if !buffering && (declared.is_none() || remaining <= REPLAY_WINDOW) {
            session.enable_retry_buffering();
            buffering = true;
        }
        let chunk = session
            .read_request_body()
            .await
            .map_err(|_| Refusal::invalid_request("The request body could not be read."))?;
        let Some(chunk) = chunk else { break };
        if read + chunk.len() > max_bytes {
            return Err(Refusal::BodyTooLarge(max_bytes));
        }
        read += chunk.len();
        tail_buffered |= buffering && !chunk.is_empty();
        body.write_to_buffer(&chunk);
    }
    body.seal();
    Ok((body.get_buffer().unwrap_or_default(), tail_buffered))
}

/// A request whose one-byte body stands in for a body read whole that Pingora cannot replay.
const STAND_IN: &[u8] = b"POST / HTTP/1.1\r\ncontent-length: 1\r\n\r\n{";

/// Makes Pingora replay something for a body it cannot replay itself, a chunked body over its
/// 64 KiB buffer, so that `request_body_filter` runs and sends the whole body.
///
/// An HTTP/1 session parses a request handed to it as pipelined bytes without reading the socket,
/// and sets its body reader up afresh, which also empties the retry buffer. Handed [`STAND_IN`],
/// its one-byte body is read into the buffer, the client's request head is put back, and from
/// there Pingora sees a complete body whose whole tail is buffered, as after a Content-Length
/// body. Bytes the client sent past its body (a pipelined request) were held by the old reader
/// and are gone with it, so the connection is closed after the response, as Pingora closes it
/// whenever a client pipelines.
async fn replay_stand_in(session: &mut Session) -> Result<(), Refusal> {
    let downstream = session.as_downstream_mut();
    if downstream.as_http1().is_none() {
        return Err(Refusal::ChunkedBodyTooLarge);
    }
    let client_head = downstream.req_header().clone();
    downstream.set_pipelined_prefix(BytesMut::from(STAND_IN));
    let parsed = downstream.read_request().await;
    // Read under the stand-in's Content-Length framing, before the client's head comes back.
    let stand_in = match parsed {
        Ok(true) => downstream.read_request_body().await.ok().flatten(),
        _ => None,
    };
    *downstream.req_header_mut() = client_head;
    downstream.set_keepalive(None);
    if stand_in.is_none_or(|b| b.is_empty())
        || !downstream.is_body_done()
        || downstream.retry_buffer_truncated()
    {
        return Err(Refusal::ChunkedBodyTooLarge);
    }
    Ok(())
}

fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn declared_length(session: &Session) -> Result<Option<usize>, Refusal> {
    let headers = &session.req_header().headers;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(None);
    }
    match headers.get(http::header::CONTENT_LENGTH) {
        None => Ok(Some(0)),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| Refusal::invalid_request("Invalid Content-Length header.")),
    }
}

/// The parts of a request body keygate acts on, for the full parse. serde skips every other
/// field without allocating.
#[derive(Debug, Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    n: Option<&'a RawValue>,
    #[serde(borrow, default)]
    best_of: Option<&'a RawValue>,
}

/// What routing needs from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: String,
    /// Byte range of the `model` value (quotes included) in the body, for rewriting it.
    pub model_span: (usize, usize),
    pub stream: bool,
    /// The largest of `max_tokens`, `max_completion_tokens` and `max_output_tokens`, when the
    /// request sets any (the budget reservation's output bound).
    pub max_output_tokens: Option<u64>,
    /// `n` and `best_of`: how many completions the provider generates, and bills, each up to
    /// the output bound.
    pub n: Option<u64>,
    pub best_of: Option<u64>,
}

/// Extracts `model`, `stream`, the output-token bound and the number of choices from a JSON
/// object body.
///
/// A targeted scan reads the top-level members and skips the others (the messages, most of the
/// body) by their structure alone: on a 900-byte chat request, 0.29 µs against 0.62 µs for the
/// full parse below, and 0.35 µs for serde merely validating the JSON (`cargo bench --bench usage
/// -- request`). Whatever it
/// cannot vouch for (a malformed object, a duplicate or mistyped field of the seven) goes to
/// serde, which decides and words the error. The scan does not validate what it skips: a body
/// broken inside its messages goes to the provider, which refuses it with its own 400.
///
/// A top-level member whose name is one of [`GOVERNED`] only when letter case is ignored is
/// refused: keygate reads the exact name, but a provider that matches names as Go's
/// encoding/json does would read it as that field, so `{"model":"cheap","MODEL":"pricey"}`
/// would be authorised as one model and run as another.
pub fn inspect(body: &[u8]) -> Result<RequestFacts, Refusal> {
    if body.is_empty() {
        return Err(Refusal::invalid_request(
            "The request body is empty; expected a JSON object with a `model` field.",
        ));
    }
    match scan(body)? {
        Some(facts) => Ok(facts),
        None => parse(body),
    }
}

/// Every top-level field keygate reads from a request body.
const GOVERNED: [&str; 8] = [
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream_options",
    "n",
    "best_of",
];

/// The targeted scan of [`inspect`]; `Ok(None)` leaves the body to [`parse`]. It refuses case
/// variants of [`GOVERNED`] names itself; whenever it stops before seeing every member, the
/// body is one serde refuses too (a field given twice, a `stream` that is no boolean, broken
/// JSON).
fn scan(body: &[u8]) -> Result<Option<RequestFacts>, Refusal> {
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return Ok(None);
    }
    let mut model = None;
    let mut stream = None;
    // max_tokens, max_completion_tokens, max_output_tokens
    let mut bounds: [Option<&[u8]>; 3] = [None; 3];
    // n, best_of
    let mut choices: [Option<&[u8]>; 2] = [None; 2];
    let mut members = Members::new(body, open);
    for m in members.by_ref() {
        let value = &body[m.value.0..m.value.1];
        // A field given twice is an error for the full parse; let it say so.
        let repeated = match &*key_name(&body[m.key.0..m.key.1]) {
            b"model" => model.replace(m.value).is_some(),
            b"stream" => {
                let flag = match value {
                    b"true" => Some(true),
                    b"false" => Some(false),
                    b"null" => None,
                    _ => return Ok(None),
                };
                stream.replace(flag).is_some()
            }
            b"max_tokens" => bounds[0].replace(value).is_some(),
            b"max_completion_tokens" => bounds[1].replace(value).is_some(),
            b"max_output_tokens" => bounds[2].replace(value).is_some(),
            b"n" => choices[0].replace(value).is_some(),
            b"best_of" => choices[1].replace(value).is_some(),
            name => {
                if let Some(field) = GOVERNED
                    .into_iter()
                    .find(|f| name != f.as_bytes() && folds_to(name, f))
                {
                    return Err(case_variant(name, field));
                }
                false
            }
        };
        if repeated {
            return Ok(None);
        }
    }
    Ok(facts(body, members.end(), model, stream, bounds, choices))
}

/// The facts of a scanned body, once its members are read; `None` for what only serde may judge.
fn facts(
    body: &[u8],
    end: Option<usize>,
    model: Option<(usize, usize)>,
    stream: Option<Option<bool>>,
    bounds: [Option<&[u8]>; 3],
    [n, best_of]: [Option<&[u8]>; 2],
) -> Option<RequestFacts> {
    // Only whitespace may follow the object.
    if skip_ws(body, end?) != body.len() {
        return None;
    }
    let span = model?;
    let raw = &body[span.0..span.1];
    if raw.first() != Some(&b'"') {
        return None;
    }
    let inner = &raw[1..raw.len() - 1];
    let model = if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(raw).ok()?
    } else {
        // JSON strings may not hold control characters.
        if inner.iter().any(|&c| c < 0x20) {
            return None;
        }
        std::str::from_utf8(inner).ok()?.to_owned()
    };
    Some(RequestFacts {
        model,
        model_span: span,
        stream: stream.flatten().unwrap_or(false),
        max_output_tokens: output_bound(bounds.into_iter().flatten()),
        n: n.and_then(count),
        best_of: best_of.and_then(count),
    })
}

/// Whether the member name `name` (escapes decoded), which is not `field` itself, matches it as
/// Go's encoding/json matches names: each character folded as `ToUpper(ToLower(c))`, under
/// which four characters beyond ASCII become ASCII letters (the long s and the Kelvin sign, the
/// dotted and the dotless i).
fn folds_to(name: &[u8], field: &str) -> bool {
    // Every folded character is one byte of `field`, and none is over three bytes long.
    if name.len() < field.len() || name.len() > 3 * field.len() {
        return false;
    }
    // The names bodies carry are ASCII, which folds one byte to one byte.
    if name.is_ascii() {
        return name.eq_ignore_ascii_case(field.as_bytes());
    }
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let mut expected = field.bytes();
    for c in name.chars() {
        let folded = match c {
            '\u{17f}' => b'S',
            '\u{212a}' => b'K',
            '\u{130}' | '\u{131}' => b'I',
            c if c.is_ascii() => c.to_ascii_uppercase() as u8,
            _ => return false,
        };
        if expected.next().map(|e| e.to_ascii_uppercase()) != Some(folded) {
            return false;
        }
    }
    expected.next().is_none()
}

fn case_variant(name: &[u8], field: &'static str) -> Refusal {
    let name = String::from_utf8_lossy(name).into_owned();
    Refusal::InvalidRequest {
        message: format!(
            "The member `{name}` differs from `{field}` only in letter case, and providers may read it as `{field}`; send `{field}` exactly once, spelled in lower case."
        )
        .into(),
        param: Some(name.into()),
    }
}

/// The full parse: bodies the scan declines, and the wording of their errors.
fn parse(body: &[u8]) -> Result<RequestFacts, Refusal> {
    let head: Head<'_> = serde_json::from_slice(body).map_err(|e| {
        Refusal::invalid_request(format!(
            "We could not parse the JSON body of your request: {e}. Expected a JSON object with a `model` field."
        ))
    })?;
    let raw = head
        .model
        .ok_or_else(|| Refusal::invalid_param("model", "You must provide a model parameter."))?;
    let model: String = serde_json::from_str(raw.get())
        .map_err(|_| Refusal::invalid_param("model", "The `model` parameter must be a string."))?;
    // RawValue borrows from `body`, so its address gives the value's exact position.
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let bounds = [
        head.max_tokens,
        head.max_completion_tokens,
        head.max_output_tokens,
    ];
    Ok(RequestFacts {
        model,
        model_span: (start, start + raw.get().len()),
        stream: head.stream.unwrap_or(false),
        max_output_tokens: output_bound(bounds.into_iter().flatten().map(|r| r.get().as_bytes())),
        n: head.n.and_then(|r| count(r.get().as_bytes())),
        best_of: head.best_of.and_then(|r| count(r.get().as_bytes())),
    })
}

/// The largest of the output-token fields that hold a count: a JSON integer that fits a u64.
fn output_bound<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<u64> {
    // Validating these is the provider's job; a value keygate cannot read bounds nothing.
    values.filter_map(count).max()
}

fn count(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() {
        return None;
    }
    raw.iter().try_fold(0u64, |n, &c| {
        if !c.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

/// A request body as one model's provider receives it.
#[derive(Debug)]
pub struct ForProvider {
    pub body: Bytes,
    /// keygate added `stream_options.include_usage`; the client did not ask for it.
    pub added_include_usage: bool,
    /// The body was translated to the Messages API; the response is translated back.
    pub translation: Option<Translation>,
    /// The output bound the provider is sent, when translation set one.
    pub max_output_tokens: Option<u64>,
}

/// The client's `body` (with `facts`) for `operation` as `model`'s provider must receive it:
/// translated for an Anthropic model asked through chat completions, otherwise with the
/// upstream model name and, on streams, asking for the usage accounting needs.
pub fn for_provider(
    operation: Operation,
    model: &Model,
    body: &Bytes,
    facts: &RequestFacts,
) -> Result<ForProvider, Refusal> {
    if translate::translates(operation, model.provider.format) {
        let default_bound = model.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_RESERVE);
        let t = translate::chat_to_messages(body, model.upstream_name(), default_bound)?;
        return Ok(ForProvider {
            body: t.body,
            added_include_usage: false,
            translation: Some(Translation {
                include_usage: t.include_usage,
            }),
            max_output_tokens: Some(t.max_tokens),
        });
    }
    let mut body = match &model.upstream_model {
        Some(upstream) => rewrite_model(body, facts.model_span, upstream),
        None => body.clone(),
    };
    // Usage must be counted on every stream; ask for it, and hide it from a client that didn't.
    let mut added_include_usage = false;
    if facts.stream && matches!(operation, Operation::Chat | Operation::Completions) {
        if let Some(with_usage) = request_with_include_usage(&body) {
            body = with_usage;
            added_include_usage = true;
        }
    }
    Ok(ForProvider {
        body,
        added_include_usage,
        translation: None,
        max_output_tokens: None,
    })
}

/// The body with its `model` value replaced by `upstream_model`; every other byte unchanged.
pub fn rewrite_model(body: &[u8], span: (usize, usize), upstream_model: &str) -> Bytes {
    let quoted = serde_json::to_string(upstream_model).unwrap_or_default();
    let mut out = BytesMut::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..span.0]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[span.1..]);
    out.freeze()
}

/// Adds `"stream_options":{"include_usage":true}` to a JSON object request body that has
/// `"stream":true` and does not already ask for usage, keeping every other byte unchanged:
/// - no `stream_options`: the member is appended after the last member of the body;
/// - a `stream_options` object without `include_usage`: `"include_usage":true` is appended to it;
/// - `"include_usage":false` (or any value but `true`) becomes `true`, and
///   `"stream_options":null` becomes the object: either way the client did not ask for usage,
///   and the [`UsageChunkStripper`](crate::usage::UsageChunkStripper) restores what it asked for;
///
/// Returns `None` if there is nothing to do (not streaming, usage already requested) or the body
/// is not a well-formed object, or `stream_options` is neither an object nor `null` (the
/// provider will reject such a request anyway). On duplicate keys, the last one counts, as in
/// most JSON parsers.
pub fn request_with_include_usage(body: &[u8]) -> Option<Bytes> {
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    let mut stream = false;
    let mut options = None;
    let mut last_end = None;
    let mut members = Members::new(body, open);
    for m in members.by_ref() {
        let key = &body[m.key.0..m.key.1];
        if key_is(key, "stream") {
            stream = &body[m.value.0..m.value.1] == b"true";
        } else if key_is(key, "stream_options") {
            options = Some(m.value);
        }
        last_end = Some(m.value.1);
    }
    if !members.complete() || !stream {
        return None;
    }
    let (from, to, insert): (usize, usize, &[u8]) = match options {
        None => {
            let end = last_end?;
            (end, end, br#","stream_options":{"include_usage":true}"#)
        }
        Some((start, _)) if body[start] == b'{' => {
            let mut include = None;
            let mut last = None;
            let mut inner = Members::new(body, start);
            for m in inner.by_ref() {
                if key_is(&body[m.key.0..m.key.1], "include_usage") {
                    include = Some(m.value);
                }
                last = Some(m.value.1);
            }
            if !inner.complete() {
                return None;
            }
            match (include, last) {
                (Some((a, b)), _) if &body[a..b] == b"true" => return None,
                (Some((a, b)), _) => (a, b, b"true"),
                (None, Some(end)) => (end, end, br#","include_usage":true"#),
                (None, None) => (start + 1, start + 1, br#""include_usage":true"#),
            }
        }
        Some((start, end)) if &body[start..end] == b"null" => {
            (start, end, br#"{"include_usage":true}"#)
        }
        Some(_) => return None,
    };
    let mut out = BytesMut::with_capacity(body.len() + insert.len());
    out.extend_from_slice(&body[..from]);
    out.extend_from_slice(insert);
    out.extend_from_slice(&body[to..]);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_and_stream() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}], "model" : "gpt-4o-mini","stream":true}"#;
        let f = inspect(body).unwrap();
        assert_eq!(f.model, "gpt-4o-mini");
        assert!(f.stream);
        assert_eq!(&body[f.model_span.0..f.model_span.1], br#""gpt-4o-mini""#);
    }

    #[test]
    fn finds_the_output_bound() {
        let f = inspect(br#"{"model":"m","max_tokens":100,"max_completion_tokens":300}"#).unwrap();
        assert_eq!(f.max_output_tokens, Some(300));
        let f = inspect(br#"{"model":"m","max_output_tokens":null,"max_tokens":"x"}"#).unwrap();
        assert_eq!(f.max_output_tokens, None);
        assert_eq!(
            inspect(br#"{"model":"m"}"#).unwrap().max_output_tokens,
            None
        );
    }

    #[test]
    fn finds_the_number_of_choices() {
        let f = inspect(br#"{"model":"m","n":4}"#).unwrap();
        assert_eq!((f.n, f.best_of), (Some(4), None));
        let f = inspect(br#"{"model":"m","best_of":5,"n":2}"#).unwrap();
        assert_eq!((f.n, f.best_of), (Some(2), Some(5)));
        let f = inspect(br#"{"model":"m","n":"4","best_of":null}"#).unwrap();
        assert_eq!((f.n, f.best_of), (None, None));
    }

    #[test]
    fn nested_model_fields_are_not_the_model() {
        let body = br#"{"metadata":{"model":"nested"},"model":"top"}"#;
        assert_eq!(inspect(body).unwrap().model, "top");
    }

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let body = br#"{ "model":"mock",  "temperature": 0.50000, "x":"\u00e9"}"#;
        let f = inspect(body).unwrap();
        let out = rewrite_model(body, f.model_span, "real-\"model\"");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "model":"real-\"model\"",  "temperature": 0.50000, "x":"\u00e9"}"#
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let f = inspect(br#"{"model":"a\u002fb"}"#).unwrap();
        assert_eq!(f.model, "a/b");
    }

    #[test]
    fn the_scan_and_the_full_parse_agree() {
        let bodies: [&[u8]; 12] = [
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"say \"hi\" \\ {[\u00e9"}],"stream":false}"#,
            br#" { "messages" : [ {"role":"system","content":"x","model":"no"} ] , "model" : "m" , "stream" : true } "#,
            br#"{"model":"a\u002fb","stream":null,"max_tokens":12}"#,
            br#"{"mod\u0065l":"escaped-key","max_completion_tokens":7,"max_output_tokens":9}"#,
            br#"{"model":"m","max_tokens":"12","temperature":0.5e-1,"n":null,"stop":["}","]"]}"#,
            br#"{"model":"m","metadata":{"stream":true,"model":"inner"},"logit_bias":{"1":-100}}"#,
            "{\"model\":\"模型\",\"messages\":[{\"content\":\"ü\"}]}".as_bytes(),
            b"{\n\t\"model\":\"m\"\r\n}\n",
            br#"{"model":"","max_tokens":18446744073709551615}"#,
            br#"{"model":"m","n":3,"best_of":5,"max_tokens":10}"#,
            br#"{"model":"m","n":"3","best_of":-1}"#,
            br#"{"model":"m","n":1.5,"best_of":null}"#,
        ];
        for body in bodies {
            let text = String::from_utf8_lossy(body);
            let parsed = parse(body).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(scan(body), Ok(Some(parsed)), "{text}");
        }
    }

    #[test]
    fn the_scan_leaves_what_it_cannot_vouch_for_to_the_full_parse() {
        for body in [
            &br#"{"model":"a","model":"b"}"#[..],
            br#"{"model":"a","stream":true,"stream":false}"#,
            br#"{"model":"a","max_tokens":1,"max_tokens":2}"#,
            br#"{"model":"a","n":1,"n":2}"#,
            br#"{"model":"a","best_of":1,"best_of":2}"#,
            br#"{"model":"a","stream":"yes"}"#,
            br#"{"model":["a"]}"#,
            br#"{"messages":[]}"#,
            br#"{"model":"a"} {}"#,
            br#"{"model":"a","messages":[}"#,
            b"{\"model\":\"a\tb\"}",
            br#"["model","a"]"#,
        ] {
            let text = String::from_utf8_lossy(body);
            assert_eq!(scan(body), Ok(None), "{text}");
            assert!(inspect(body).is_err(), "{text}");
        }
    }

    #[test]
    fn case_variants_of_governed_fields_are_refused_naming_the_member() {
        for (body, member) in [
            (r#"{"model":"cheap","MODEL":"pricey"}"#, "MODEL"),
            (r#"{"Model":"m"}"#, "Model"),
            (r#"{"model":"m","sTREAM":true}"#, "sTREAM"),
            (
                r#"{"model":"m","Stream_Options":{"include_usage":false}}"#,
                "Stream_Options",
            ),
            (r#"{"model":"m","N":2}"#, "N"),
            (r#"{"model":"m","BEST_OF":2}"#, "BEST_OF"),
            (r#"{"model":"m","\u004dodel":"x"}"#, "Model"),
            ("{\"model\":\"m\",\"\u{17f}tream\":true}", "\u{17f}tream"),
            (
                "{\"model\":\"m\",\"max_to\u{212a}ens\":1}",
                "max_to\u{212a}ens",
            ),
            (
                "{\"model\":\"m\",\"max_complet\u{131}on_tokens\":1}",
                "max_complet\u{131}on_tokens",
            ),
            (
                "{\"model\":\"m\",\"max_complet\u{130}on_tokens\":1}",
                "max_complet\u{130}on_tokens",
            ),
        ] {
            let e = inspect(body.as_bytes()).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_request"), "{body}");
            assert_eq!(
                e,
                Refusal::InvalidRequest {
                    message: e.to_string().into(),
                    param: Some(member.to_owned().into()),
                },
                "{body}"
            );
        }
    }

    #[test]
    fn every_field_with_any_one_letter_or_all_of_them_upper_case_is_refused() {
        for field in GOVERNED {
            let upper = |at: Option<usize>| -> String {
                field
                    .char_indices()
                    .map(|(i, c)| {
                        if at.is_none_or(|at| at == i) {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            };
            let variants = (0..field.len()).map(Some).chain([None]).map(upper);
            for variant in variants.filter(|v| v != field) {
                let body = format!(r#"{{"model":"m","{variant}":1}}"#);
                assert_eq!(
                    scan(body.as_bytes()).map_err(|e| e.code()),
                    Err("invalid_request"),
                    "{body}"
                );
            }
        }
    }

    #[test]
    fn names_that_only_resemble_governed_fields_pass() {
        for body in [
            r#"{"model":"m","stream_options":null,"n":1,"best_of":1}"#,
            r#"{"model":"m","Models":1,"NN":1,"stream_option":1,"max-tokens":1}"#,
            "{\"model\":\"m\",\"mod\u{e9}l\":1,\"str\u{e9}am\":1}",
            r#"{"model":"m","metadata":{"MODEL":"x","Stream":true}}"#,
        ] {
            assert_eq!(inspect(body.as_bytes()).unwrap().model, "m", "{body}");
        }
    }

    #[test]
    fn a_case_variant_the_scan_does_not_reach_is_refused_by_the_full_parse() {
        // The scan stops at the repeated field and leaves the body to serde, which refuses it.
        for body in [
            r#"{"model":"a","model":"a","MODEL":"b"}"#,
            r#"{"stream":"yes","model":"a","MODEL":"b"}"#,
        ] {
            assert_eq!(scan(body.as_bytes()), Ok(None), "{body}");
            assert!(inspect(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn bad_bodies_are_invalid_requests() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"\"x\"",
            b"{\"messages\":[]}",
            b"{\"model\":5}",
            b"{\"model\":\"a\"} trailing",
        ] {
            let e = inspect(body).unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (400, "invalid_request"),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn with_usage(body: &str) -> Option<String> {
        request_with_include_usage(body.as_bytes()).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn include_usage_is_added() {
        assert_eq!(
            with_usage(r#"{"model":"m","stream":true,"messages":[]}"#).as_deref(),
            Some(
                r#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
            )
        );
        assert_eq!(
            with_usage("{\n  \"stream\": true\n}\n").as_deref(),
            Some("{\n  \"stream\": true,\"stream_options\":{\"include_usage\":true}\n}\n")
        );
    }

    #[test]
    fn include_usage_merges_into_stream_options() {
        assert_eq!(
            with_usage(r#"{"stream":true,"stream_options":{"include_obfuscation":false},"n":1}"#)
                .as_deref(),
            Some(
                r#"{"stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true},"n":1}"#
            )
        );
        assert_eq!(
            with_usage(r#"{"stream_options":{ },"stream":true}"#).as_deref(),
            Some(r#"{"stream_options":{"include_usage":true },"stream":true}"#)
        );
        assert_eq!(
            with_usage(r#"{"stream":true,"stream_options":{"include_usage":false}}"#).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(
            with_usage(r#"{"stream":true,"stream_options":null}"#).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
        );
    }

    #[test]
    fn include_usage_nothing_to_do() {
        for body in [
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":false}"#,
            r#"{"model":"m"}"#,
            r#"{"stream":"true"}"#,
            r#"{"messages":[{"content":"\"stream\":true"}]}"#,
            r#"{"x":{"stream":true}}"#,
            r#"{"stream":true,"stream_options":"bad"}"#,
            r#"{"stream":true"#,
            r#"[{"stream":true}]"#,
            "",
        ] {
            assert_eq!(with_usage(body), None, "{body}");
        }
    }

    #[test]
    fn include_usage_never_panics_on_garbage() {
        for input in crate::usage::fixtures::GARBAGE {
            let _ = request_with_include_usage(input);
        }
    }
}
