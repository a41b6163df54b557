//! Hiding from a client the usage keygate asked for on its behalf: [`UsageChunkStripper`], the
//! response half of `proxy::body::request_with_include_usage`.
//!
//! Unlike the rest of `usage`, which only reads the stream, this rewrites it, so it holds each
//! incomplete event (bounded by `MAX_HELD_EVENT`) and analyses complete events with the slice
//! helpers of [`crate::json`].

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::{memchr, memmem};

use crate::json::{key_is, skip_ws, Member, Members};

/// A partial event longer than this is not held any more: its bytes are sent on unmodified, so
/// the client never waits on (or loses) a pathological event.
const MAX_HELD_EVENT: usize = 1 << 20;

/// For streaming chat/completions requests where the client did NOT ask for usage: keygate adds
/// `stream_options.include_usage=true` upstream, and this filter removes the usage-only chunk
/// (`"choices":[]`, `null` or absent, with a non-null top-level `usage`) and the top-level
/// `"usage":null` member OpenAI then adds to every other chunk, so the client sees exactly what
/// it would have without the option. Events without a top-level `usage` (including `[DONE]`,
/// comments and anything malformed) pass through byte for byte, as does a chunk carrying both
/// real choices and a usage (the client would have seen that one anyway). Lines end with LF or
/// CRLF; an event ends at a blank line.
pub struct UsageChunkStripper {
    /// The current incomplete event.
    pending: Vec<u8>,
    line_len: usize,
    line_last: u8,
    /// The current event outgrew [`MAX_HELD_EVENT`]: forward it as is until it ends.
    passthrough: bool,
}

impl Default for UsageChunkStripper {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageChunkStripper {
    pub fn new() -> Self {
        UsageChunkStripper {
            pending: Vec::new(),
            line_len: 0,
            line_last: 0,
            passthrough: false,
        }
    }

    /// Takes an (uncompressed) upstream chunk, returns the bytes to send downstream now. Complete
    /// events pass through at once; a partial trailing event is held until its end arrives.
    pub fn filter(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(self.pending.len() + chunk.len());
        let mut line_start = 0;
        let mut event_start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let seg = nl - line_start;
            let len = self.line_len + seg;
            let last = if seg > 0 {
                chunk[nl - 1]
            } else {
                self.line_last
            };
            self.line_len = 0;
            line_start = nl + 1;
            if len == 0 || (len == 1 && last == b'\r') {
                // A blank line: the event ends here.
                let tail = &chunk[event_start..=nl];
                event_start = nl + 1;
                if self.passthrough {
                    out.extend_from_slice(tail);
                    self.passthrough = false;
                } else if self.pending.is_empty() {
                    emit_event(tail, &mut out);
                } else {
                    self.pending.extend_from_slice(tail);
                    emit_event(&self.pending, &mut out);
                    self.clear_pending();
                }
            }
        }
        let rest = &chunk[line_start..];
        if let Some(&last) = rest.last() {
            self.line_len += rest.len();
            self.line_last = last;
        }
        let tail = &chunk[event_start..];
        if self.passthrough {
            out.extend_from_slice(tail);
        } else {
            self.pending.extend_from_slice(tail);
            if self.pending.len() > MAX_HELD_EVENT {
                out.extend_from_slice(&self.pending);
                self.clear_pending();
                self.passthrough = true;
            }
        }
        out.freeze()
    }

    /// End of stream: flush anything held (still filtered if it is a complete JSON chunk that
    /// only lacked its final blank line).
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.pending.len());
        if self.passthrough {
            out.extend_from_slice(&self.pending);
        } else {
            emit_event(&self.pending, &mut out);
        }
        self.clear_pending();
        self.passthrough = false;
        self.line_len = 0;
        out.freeze()
    }

    fn clear_pending(&mut self) {
        self.pending.clear();
        // Don't keep a huge buffer for the rest of a long stream after one outsized event.
        if self.pending.capacity() > 64 * 1024 {
            self.pending = Vec::new();
        }
    }
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Drop,
    /// Remove this byte range of the event's data (the `"usage":null` member and one comma).
    Remove(usize, usize),
}

fn verdict(json: &[u8]) -> Verdict {
    let open = skip_ws(json, 0);
    if json.get(open) != Some(&b'{') {
        return Verdict::Keep;
    }
    let mut members = Members::new(json, open);
    let mut prev_end = None;
    let mut usage: Option<(Member, Option<usize>)> = None;
    let mut after_usage = None;
    let mut choices_empty = None;
    let mut just_saw_usage = false;
    for m in members.by_ref() {
        if just_saw_usage {
            after_usage = Some(m.start);
            just_saw_usage = false;
        }
        let key = &json[m.key.0..m.key.1];
        if usage.is_none() && key_is(key, "usage") {
            usage = Some((m, prev_end));
            just_saw_usage = true;
        } else if key_is(key, "choices") {
            let v = m.value.0;
            let empty = json[v] == b'[' && json.get(skip_ws(json, v + 1)) == Some(&b']');
            choices_empty = Some(empty || &json[v..m.value.1] == b"null");
        }
        prev_end = Some(m.value.1);
    }
    if !members.complete() {
        return Verdict::Keep;
    }
    let Some((m, prev_end)) = usage else {
        return Verdict::Keep;
    };
    if &json[m.value.0..m.value.1] == b"null" {
        let (from, to) = match (prev_end, after_usage) {
            (Some(prev), _) => (prev, m.value.1),
            (None, Some(next)) => (m.start, next),
            (None, None) => (m.start, m.value.1),
        };
        Verdict::Remove(from, to)
    } else if choices_empty != Some(false) {
        Verdict::Drop
    } else {
        Verdict::Keep
    }
}

/// Byte ranges of an event's data line values (after `data:` and one optional space, without
/// the line ending).
fn data_lines(ev: &[u8], mut each: impl FnMut(usize, usize)) {
    let mut start = 0;
    while start < ev.len() {
        let end = memchr(b'\n', &ev[start..]).map_or(ev.len(), |k| start + k);
        let mut line_end = end;
        if line_end > start && ev[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let line = &ev[start..line_end];
        if let Some(value) = line.strip_prefix(b"data:") {
            let skip = usize::from(value.first() == Some(&b' '));
            each(line_end - value.len() + skip, line_end);
        } else if line == b"data" {
            each(line_end, line_end);
        }
        start = end + 1;
    }
}

/// Built once: constructing a memmem searcher costs more than searching one event.
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

fn emit_event(ev: &[u8], out: &mut BytesMut) {
    // Fast path: without the bytes `"usage"` there is no top-level usage member (barring an
    // escaped spelling of the key, which no provider sends).
    if USAGE_KEY.find(ev).is_none() {
        out.extend_from_slice(ev);
        return;
    }
    let mut count = 0;
    let mut first = (0, 0);
    data_lines(ev, |a, b| {
        if count == 0 {
            first = (a, b);
        }
        count += 1;
    });
    if count == 0 {
        out.extend_from_slice(ev);
        return;
    }
    if count == 1 {
        let (a, b) = first;
        match verdict(&ev[a..b]) {
            Verdict::Keep => out.extend_from_slice(ev),
            Verdict::Drop => {}
            Verdict::Remove(x, y) => {
                out.extend_from_slice(&ev[..a + x]);
                out.extend_from_slice(&ev[a + y..]);
            }
        }
        return;
    }
    // Several data lines form one JSON text joined by newlines. Rare (pretty-printing
    // upstreams), so build the joined text and map a removal back onto each line.
    let mut joined = Vec::new();
    let mut pieces = Vec::new();
    data_lines(ev, |a, b| {
        if !pieces.is_empty() {
            joined.push(b'\n');
        }
        pieces.push((joined.len(), a, b - a));
        joined.extend_from_slice(&ev[a..b]);
    });
    match verdict(&joined) {
        Verdict::Keep => out.extend_from_slice(ev),
        Verdict::Drop => {}
        Verdict::Remove(x, y) => {
            let mut at = 0;
            for &(joined_start, raw_start, len) in &pieces {
                let from = x.clamp(joined_start, joined_start + len);
                let to = y.clamp(joined_start, joined_start + len);
                if from < to {
                    let (from, to) = (
                        raw_start + from - joined_start,
                        raw_start + to - joined_start,
                    );
                    out.extend_from_slice(&ev[at..from]);
                    at = to;
                }
            }
            out.extend_from_slice(&ev[at..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::fixtures::CHAT;

    fn strip(stream: &str) -> String {
        let mut s = UsageChunkStripper::new();
        let mut out = s.filter(stream.as_bytes()).to_vec();
        out.extend_from_slice(&s.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn stripper_removes_usage_null_and_the_usage_chunk() {
        let expected = concat!(
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé😀\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"a\\n\\u00e9\\ud83d\\ude00\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(strip(CHAT), expected);
    }

    #[test]
    fn stripper_member_positions_and_whitespace() {
        assert_eq!(
            strip("data: {\"usage\":null,\"a\":1}\n\n"),
            "data: {\"a\":1}\n\n"
        );
        assert_eq!(
            strip("data: {\"usage\": null , \"a\":1}\n\n"),
            "data: {\"a\":1}\n\n"
        );
        assert_eq!(
            strip("data: {\"a\":1, \"usage\" : null }\r\n\r\n"),
            "data: {\"a\":1 }\r\n\r\n"
        );
        assert_eq!(strip("data: {\"usage\":null}\n\n"), "data: {}\n\n");
        assert_eq!(
            strip("data:{\"a\":\"b\",\"usage\":null,\"c\":2}\n\n"),
            "data:{\"a\":\"b\",\"c\":2}\n\n"
        );
        // Usage chunk variants: no choices at all, CRLF, an `event:` line: all dropped whole.
        assert_eq!(
            strip("event: x\r\ndata: {\"usage\":{\"prompt_tokens\":1}}\r\n\r\nnext"),
            "next"
        );
        assert_eq!(
            strip("data: {\"choices\":null,\"usage\":{\"prompt_tokens\":1}}\n\n"),
            ""
        );
        // Non-null usage alongside real choices: the client would see it anyway; kept.
        let keep = "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        assert_eq!(strip(keep), keep);
    }

    #[test]
    fn stripper_leaves_decoys_and_malformed_events_alone() {
        for ev in [
            "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":null\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"usage\":null}}]}\n\n",
            "data: {\"choices\":[],\"usage\":null\n\n",
            ": \"usage\":null\n\n",
            "data: [DONE]\n\n",
            "\n\n\n",
        ] {
            assert_eq!(strip(ev), ev);
        }
    }

    #[test]
    fn stripper_multi_line_data() {
        let s = "data: {\"a\":1,\ndata: \"usage\":null}\n\ndata: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1}}\n\n";
        assert_eq!(strip(s), "data: {\"a\":1\ndata: }\n\n");
    }

    #[test]
    fn stripper_passes_complete_events_at_once_and_holds_the_partial_one() {
        let mut s = UsageChunkStripper::new();
        assert_eq!(
            &s.filter(b"data: {\"a\":1,\"usage\":null}\n\ndata: {\"b\""),
            &b"data: {\"a\":1}\n\n"[..]
        );
        assert_eq!(&s.filter(b":2,\"usage\":null}\r"), &b""[..]);
        assert_eq!(&s.filter(b"\n"), &b""[..]);
        assert_eq!(&s.filter(b"\r\n"), &b"data: {\"b\":2}\r\n\r\n"[..]);
        // A cut stream: what is held is flushed unchanged if it is not a complete chunk.
        assert_eq!(&s.filter(b"data: {\"c\":3,\"usage\":nu"), &b""[..]);
        assert_eq!(&s.finish(), &b"data: {\"c\":3,\"usage\":nu"[..]);
    }

    #[test]
    fn stripper_does_not_hold_outsized_events() {
        let mut s = UsageChunkStripper::new();
        let big = vec![b'x'; MAX_HELD_EVENT + 10];
        let mut out = s.filter(b"data: {\"v\":\"").to_vec();
        out.extend_from_slice(&s.filter(&big));
        assert_eq!(out.len(), MAX_HELD_EVENT + 22);
        out.extend_from_slice(&s.filter(b"\",\"usage\":null}\n\ndata: {\"usage\":null}\n\n"));
        out.extend_from_slice(&s.finish());
        assert!(out.ends_with(b"\",\"usage\":null}\n\ndata: {}\n\n"));
    }

    #[test]
    fn never_panics_on_garbage() {
        for input in crate::usage::fixtures::GARBAGE {
            let mut s = UsageChunkStripper::new();
            let mut out = s.filter(input).to_vec();
            out.extend_from_slice(&s.finish());
        }
    }
}
