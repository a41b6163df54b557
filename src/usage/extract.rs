//! [`UsageExtractor`]: the usage a provider reports in one response body, read as the body
//! streams through the proxy, without holding back or altering a byte the client receives.
//!
//! It runs on the proxy's hot path, once per body chunk, so nothing of the body is buffered and
//! no document is parsed in full: an encoded body goes through the streaming decoders of
//! `decode`, then a JSON body straight into the resumable scanner of `scan`, and an event
//! stream through the parser of `sse`, which scans each event's data the same way.

use super::decode::{ContentEncoding, Decoder};
use super::object::Usage;
use super::scan::Scanner;
use super::sse::SseParser;

/// What kind of body to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Sse,
}

/// Decoded bodies are scanned as they stream, so memory never grows with the body; these bounds
/// only cap the CPU a compressed body (a decompression bomb) can cost. Identity bodies have no
/// bound: the proxy receives those bytes anyway and scanning them costs less than receiving them.
///
/// JSON's is generous because the `usage` of an embeddings response comes after its vectors, and
/// a large float-format batch can legitimately decode to ~100 MiB.
const MAX_DECODED_JSON: u64 = 256 << 20;
/// An event stream grows with the text it generates, a few MiB for the longest outputs, and
/// costs more per byte than JSON (every line ends a field, every blank line an event).
const MAX_DECODED_SSE: u64 = 64 << 20;

/// Incremental usage extractor for one response.
pub struct UsageExtractor {
    decoder: Option<Decoder>,
    sink: Sink,
    /// Bytes decoded so far, against the sink's bound.
    decoded: u64,
    finished: bool,
}

enum Sink {
    Json(Scanner),
    Sse(SseParser),
    /// A body in a coding keygate cannot decode: nothing to find in it.
    Unreadable,
}

impl Sink {
    fn max_decoded(&self) -> u64 {
        match self {
            Sink::Json(_) => MAX_DECODED_JSON,
            Sink::Sse(_) => MAX_DECODED_SSE,
            Sink::Unreadable => 0,
        }
    }

    /// Consumes body bytes; returns whether more are worth decoding.
    fn push(&mut self, bytes: &[u8]) -> bool {
        match self {
            Sink::Json(scanner) => {
                scanner.feed_complete(bytes);
                !scanner.root_done()
            }
            Sink::Sse(parser) => {
                parser.feed(bytes);
                !parser.done()
            }
            Sink::Unreadable => false,
        }
    }
}

impl UsageExtractor {
    pub fn new(kind: BodyKind, encoding: ContentEncoding) -> Self {
        let sink = match kind {
            BodyKind::Json => Sink::Json(Scanner::new(false)),
            BodyKind::Sse => Sink::Sse(SseParser::new()),
        };
        UsageExtractor {
            decoder: Decoder::new(encoding),
            sink,
            decoded: 0,
            finished: false,
        }
    }

    /// An extractor for a body in a coding keygate cannot decode. It finds no usage, so the
    /// response is charged its estimate rather than nothing.
    pub fn unreadable() -> Self {
        UsageExtractor {
            decoder: None,
            sink: Sink::Unreadable,
            decoded: 0,
            finished: false,
        }
    }

    /// Feed the next chunk exactly as received from upstream (possibly compressed).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.finished {
            return;
        }
        match &mut self.decoder {
            None => {
                self.sink.push(chunk);
            }
            Some(decoder) => {
                let (sink, decoded) = (&mut self.sink, &mut self.decoded);
                let max = sink.max_decoded();
                decoder.decode(chunk, &mut |bytes| {
                    *decoded = decoded.saturating_add(bytes.len() as u64);
                    *decoded <= max && sink.push(bytes)
                });
            }
        }
    }

    /// The body ended (normally or not). Returns the usage found, if any. Later calls return the
    /// same, and later [`feed`](Self::feed)s are ignored.
    pub fn finish(&mut self) -> Option<Usage> {
        if !self.finished {
            self.finished = true;
            if let Sink::Sse(parser) = &mut self.sink {
                parser.finish();
            }
        }
        self.usage()
    }

    /// Usage seen so far (e.g. when a stream is cut). For SSE, only complete events count.
    pub fn usage(&self) -> Option<Usage> {
        match &self.sink {
            Sink::Json(scanner) => scanner.usage(),
            Sink::Sse(parser) => parser.usage(),
            Sink::Unreadable => None,
        }
        .and_then(|reported| reported.usage())
    }

    /// Whether [`usage`](Self::usage) is the response's final count. It is not when an
    /// Anthropic stream was cut after `message_start`, which tells the input tokens, and before
    /// the `message_delta` that tells the output: the output must then be estimated.
    pub fn usage_is_final(&self) -> bool {
        match &self.sink {
            Sink::Sse(parser) => parser.usage_is_final(),
            Sink::Json(_) | Sink::Unreadable => true,
        }
    }

    /// Characters (Unicode scalar values, escapes decoded) of generated text seen so far in an
    /// SSE stream: chat `choices[].delta.content`, completions `choices[].text`, the `delta`
    /// of responses-API `response.output_text.delta` events, and the `delta.text`,
    /// `delta.partial_json` and `delta.thinking` of Anthropic `content_block_delta` events.
    /// Always 0 for JSON bodies and for bodies that cannot be read.
    pub fn streamed_text_chars(&self) -> u64 {
        match &self.sink {
            Sink::Json(_) | Sink::Unreadable => 0,
            Sink::Sse(parser) => parser.text_chars(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::fixtures::{u, ANTHROPIC, ANTHROPIC_USAGE};

    /// Feeds `body` whole (the one-shot path) and byte by byte (the resumable state machine),
    /// checks both agree, and returns the answer.
    fn json_usage(body: &str) -> Option<Usage> {
        let mut whole = UsageExtractor::new(BodyKind::Json, ContentEncoding::Identity);
        whole.feed(body.as_bytes());
        let whole = (whole.finish(), whole.streamed_text_chars());
        let mut bytes = UsageExtractor::new(BodyKind::Json, ContentEncoding::Identity);
        for b in body.as_bytes() {
            bytes.feed(std::slice::from_ref(b));
        }
        let bytes = (bytes.finish(), bytes.streamed_text_chars());
        assert_eq!(whole, bytes, "whole vs byte by byte: {body}");
        whole.0
    }

    #[test]
    fn json_chat_completion() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"usage\": {\"prompt_tokens\": 999}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp"}"#;
        assert_eq!(json_usage(body), u(19, 10, 3));
    }

    #[test]
    fn json_completions_embeddings_and_responses() {
        assert_eq!(
            json_usage(
                r#"{"object":"text_completion","choices":[{"text":"x"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#
            ),
            u(5, 7, 0)
        );
        assert_eq!(
            json_usage(
                r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2e-3,[1]]}],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}"#
            ),
            u(8, 0, 0)
        );
        assert_eq!(
            json_usage(
                r#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":16},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#
            ),
            u(36, 87, 16)
        );
    }

    #[test]
    fn json_nested_usage_decoys_are_ignored() {
        // `usage` inside a message, inside tool arguments, inside metadata: not top level.
        let body = r#"{"choices":[{"message":{"content":"see \"usage\":{\"prompt_tokens\":1}","usage":{"prompt_tokens":2,"completion_tokens":2},"tool_calls":[{"function":{"arguments":"{\"usage\":{\"prompt_tokens\":3}}"}}]}}],"metadata":{"usage":{"prompt_tokens":4,"completion_tokens":4}}}"#;
        assert_eq!(json_usage(body), None);
        let body = body.replace(
            r#""metadata""#,
            r#""usage":{"prompt_tokens":5,"completion_tokens":6},"metadata""#,
        );
        assert_eq!(json_usage(&body), u(5, 6, 0));
    }

    #[test]
    fn json_odd_shapes() {
        assert_eq!(json_usage(r#"{"usage":null}"#), None);
        assert_eq!(json_usage(r#"{"usage":{}}"#), None);
        assert_eq!(json_usage(r#"[{"usage":{"prompt_tokens":1}}]"#), None);
        assert_eq!(json_usage(r#"{"error":{"message":"bad"}}"#), None);
        assert_eq!(json_usage(""), None);
        // Lenient fields: an odd value loses that field only.
        assert_eq!(
            json_usage(
                r#"{"usage":{"prompt_tokens":3.0,"completion_tokens":"x","prompt_tokens_details":null}}"#
            ),
            u(3, 0, 0)
        );
        assert_eq!(
            json_usage(
                r#"{"usage":{"prompt_tokens":3,"prompt_tokens_details":[1],"input_tokens_details":{"cached_tokens":2}}}"#
            ),
            u(3, 0, 2)
        );
        // Escaped key spelling still names the member.
        assert_eq!(
            json_usage(r#"{"us\u0061ge":{"prompt_tokens":1,"completion_tokens":2}}"#),
            u(1, 2, 0)
        );
        // Whitespace everywhere.
        assert_eq!(
            json_usage("{\n  \"usage\" :\n {\"prompt_tokens\" : 1 ,\"completion_tokens\":2 }\n}\n"),
            u(1, 2, 0)
        );
    }

    #[test]
    fn usage_object_details() {
        // Duplicate keys: the last one wins.
        assert_eq!(
            json_usage(r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2,"output_tokens":3}}"#),
            u(2, 3, 0)
        );
        // Chat names win over responses names when both appear.
        assert_eq!(
            json_usage(r#"{"usage":{"input_tokens":9,"prompt_tokens":1,"completion_tokens":2}}"#),
            u(1, 2, 0)
        );
        // A malformed usage object is no usage.
        assert_eq!(json_usage(r#"{"usage":{"prompt_tokens":1,}}"#), None);
        assert_eq!(json_usage(r#"{"usage":{"prompt_tokens" 1}}"#), None);
    }

    #[test]
    fn json_usage_available_before_the_body_ends() {
        let mut x = UsageExtractor::new(BodyKind::Json, ContentEncoding::Identity);
        x.feed(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}"#);
        assert_eq!(x.usage(), u(1, 2, 0));
        x.feed(br#","extra":true}"#);
        assert_eq!(x.finish(), u(1, 2, 0));
    }

    #[test]
    fn sse_usage_is_last_reported_and_cut_streams_keep_what_was_seen() {
        let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
        x.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
        assert_eq!(x.usage(), u(1, 1, 0));
        x.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"efgh\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
        x.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"cut mid-ev");
        assert_eq!(x.finish(), u(1, 2, 0));
        assert_eq!(x.streamed_text_chars(), 8);
    }

    #[test]
    fn anthropic_message_json() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"see \"usage\":{\"input_tokens\":999}"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":7,"cache_creation_input_tokens":30,"cache_read_input_tokens":200,"output_tokens":12,"service_tier":"standard"}}"#;
        let want = Usage {
            prompt_tokens: 237,
            completion_tokens: 12,
            cached_tokens: 200,
            cache_write_tokens: 30,
        };
        assert_eq!(json_usage(body), Some(want));
        // count_tokens answers with a bare count, which is no usage: nothing was generated.
        assert_eq!(json_usage(r#"{"input_tokens":2095}"#), None);
    }

    #[test]
    fn anthropic_stream_takes_the_latest_cumulative_delta() {
        let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
        x.feed(ANTHROPIC.as_bytes());
        assert_eq!(
            (x.finish(), x.streamed_text_chars()),
            (Some(ANTHROPIC_USAGE.0), ANTHROPIC_USAGE.1)
        );
        assert!(x.usage_is_final());
    }

    #[test]
    fn anthropic_stream_cut_before_message_delta_is_not_final() {
        let cut = ANTHROPIC.find("event: message_delta").unwrap();
        let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
        x.feed(&ANTHROPIC.as_bytes()[..cut]);
        let usage = x.finish().unwrap();
        assert!(!x.usage_is_final());
        // The input is known from message_start; the output so far is text to estimate from.
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.cache_write_tokens
            ),
            (125, 20, 100)
        );
        assert_eq!(x.streamed_text_chars(), ANTHROPIC_USAGE.1);
        // Cut after the first of two deltas: its count is final, and not added to the second.
        let second = ANTHROPIC.rfind("event: message_delta").unwrap();
        let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
        x.feed(&ANTHROPIC.as_bytes()[..second]);
        assert_eq!(x.finish().map(|u| u.completion_tokens), Some(9));
        assert!(x.usage_is_final());
    }

    #[test]
    fn never_panics_on_garbage() {
        for input in crate::usage::fixtures::GARBAGE {
            for kind in [BodyKind::Json, BodyKind::Sse] {
                let mut x = UsageExtractor::new(kind, ContentEncoding::Identity);
                for b in input {
                    x.feed(std::slice::from_ref(b));
                }
                x.finish();
            }
        }
    }

    /// Every split of the recorded streams gives the whole stream's answer, and mid-stream the
    /// extractor knows exactly what a fresh one fed the same prefix in one piece knows: the
    /// complete events so far, never a half-read one.
    mod splits {
        use super::*;
        use crate::usage::fixtures::{CHAT, RESPONSES};
        use proptest::prelude::*;
        use proptest::sample::Index;
        use std::io::Write;

        /// The fixtures with the other line ending, and with what real streams interleave:
        /// comments, `id:` and `retry:` fields, `data:` without its space.
        fn streams() -> Vec<(String, (Option<Usage>, u64))> {
            let chat = (u(9, 4, 2), 8);
            let responses = (u(12, 4, 5), 4);
            let anthropic = (Some(ANTHROPIC_USAGE.0), ANTHROPIC_USAGE.1);
            let noisy = CHAT
                .replace("data: {", ": keep-alive\nid: 7\nretry: 3000\ndata:{")
                .replace("\n\n", "\n\n: ping\n\n");
            vec![
                (CHAT.to_owned(), chat),
                (CHAT.replace('\n', "\r\n"), chat),
                (noisy, chat),
                (RESPONSES.to_owned(), responses),
                (RESPONSES.replace("\r\n", "\n"), responses),
                (ANTHROPIC.to_owned(), anthropic),
                (ANTHROPIC.replace('\n', "\r\n"), anthropic),
            ]
        }

        fn prefix_answer(prefix: &[u8]) -> (Option<Usage>, u64) {
            let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
            x.feed(prefix);
            (x.usage(), x.streamed_text_chars())
        }

        fn cut(data: &[u8], cuts: &[Index]) -> Vec<usize> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            at.push(data.len());
            at.sort_unstable();
            at
        }

        #[test]
        fn every_two_way_split() {
            for (stream, want) in streams() {
                let b = stream.as_bytes();
                for k in 0..=b.len() {
                    let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
                    x.feed(&b[..k]);
                    assert_eq!((x.usage(), x.streamed_text_chars()), prefix_answer(&b[..k]));
                    x.feed(&b[k..]);
                    assert_eq!((x.finish(), x.streamed_text_chars()), want, "split at {k}");
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn any_split_same_answer_as_whole(
                which in 0usize..7,
                cuts in prop::collection::vec(any::<Index>(), 0..48),
            ) {
                let (stream, want) = &streams()[which];
                let b = stream.as_bytes();
                let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
                let mut from = 0;
                for to in cut(b, &cuts) {
                    x.feed(&b[from..to]);
                    from = to;
                    prop_assert_eq!((x.usage(), x.streamed_text_chars()), prefix_answer(&b[..to]), "at {}", to);
                }
                prop_assert_eq!(&(x.finish(), x.streamed_text_chars()), want);
            }

            #[test]
            fn any_split_of_the_gzipped_stream_same_answer(
                which in 0usize..7,
                cuts in prop::collection::vec(any::<Index>(), 0..48),
            ) {
                let (stream, want) = &streams()[which];
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(stream.as_bytes()).unwrap();
                let gz = gz.finish().unwrap();
                let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Gzip);
                let mut from = 0;
                for to in cut(&gz, &cuts) {
                    x.feed(&gz[from..to]);
                    from = to;
                }
                prop_assert_eq!(&(x.finish(), x.streamed_text_chars()), want);
            }
        }
    }
}
