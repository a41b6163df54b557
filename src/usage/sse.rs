//! Server-sent events, read for usage: [`SseParser`] splits an event stream into lines and
//! fields across arbitrary chunk boundaries and feeds each event's `data:` bytes straight into
//! a scanner as one JSON document, then takes from each complete event its usage and the
//! characters of generated text it carries.
//!
//! Nothing of an event is kept beyond the scanner's small state and, until its line ends, a
//! bounded start of a data line that a chunk boundary cut, so there is no event-size limit to
//! hit.

use memchr::memchr;

use super::object::Reported;
use super::scan::Scanner;

/// `memchr` for a byte that is usually near: SSE field names end within a few bytes, and the
/// blank line that ends an event starts right where the data line ended.
#[inline]
fn find_byte(b: u8, s: &[u8]) -> Option<usize> {
    const SHORT: usize = 16;
    let head = s.len().min(SHORT);
    if let Some(k) = s[..head].iter().position(|&c| c == b) {
        return Some(k);
    }
    if s.len() > head {
        memchr(b, &s[head..]).map(|k| k + head)
    } else {
        None
    }
}

/// The field of the line being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Still reading the field name (no `:` yet).
    Name,
    Data,
    Event,
    Other,
}

/// Longest `event:` value kept; the names we compare against are shorter.
const MAX_EVENT_NAME: usize = 64;

/// An incremental SSE parser (LF or CRLF line endings) that scans each event's data as it
/// arrives. Holds no event bytes beyond the start of a cut data line (`held`): the rest of the
/// per-event state is the scanner's.
pub(super) struct SseParser {
    scanner: Scanner,
    field: Field,
    line_len: usize,
    line_last: u8,
    name: [u8; 8],
    name_len: usize,
    /// Just after the colon: a single leading space of the value is not part of it.
    skip_space: bool,
    data_lines: u32,
    data_len: usize,
    /// The first data bytes, to recognise `[DONE]`.
    data_head: [u8; 8],
    event_name: Vec<u8>,
    /// The start of an event's data that a chunk boundary cut: held until the line ends, so the
    /// scanner can take the whole line in its fast one-shot path (see `data`).
    held: Vec<u8>,
    usage: Option<Reported>,
    /// The usage so far came from an Anthropic `message_start` only: the input is known, the
    /// output is not (the final count comes with `message_delta`).
    provisional: bool,
    text_chars: u64,
    /// `[DONE]` seen: the rest of the stream is ignored.
    done: bool,
}

/// Longest data line start held for the one-shot path; beyond it, the line streams through the
/// resumable scanner instead (e.g. a huge `response.completed`), so memory stays bounded.
const MAX_HELD_LINE: usize = 64 * 1024;

impl SseParser {
    pub(super) fn new() -> SseParser {
        SseParser {
            scanner: Scanner::new(true),
            field: Field::Name,
            line_len: 0,
            line_last: 0,
            name: [0; 8],
            name_len: 0,
            skip_space: false,
            data_lines: 0,
            data_len: 0,
            data_head: [0; 8],
            event_name: Vec::new(),
            held: Vec::new(),
            usage: None,
            provisional: false,
            text_chars: 0,
            done: false,
        }
    }

    pub(super) fn feed(&mut self, s: &[u8]) {
        let mut i = 0;
        while i < s.len() && !self.done {
            let nl = find_byte(b'\n', &s[i..]).map(|k| i + k);
            let end = nl.unwrap_or(s.len());
            if end > i {
                self.line_bytes(&s[i..end], nl.is_some());
            }
            match nl {
                Some(p) => {
                    self.end_line();
                    i = p + 1;
                }
                None => break,
            }
        }
    }

    /// Part of a line (no `\n` in it); a line may arrive in any number of parts. `last` says
    /// this part ends the line.
    fn line_bytes(&mut self, mut seg: &[u8], last: bool) {
        self.line_len += seg.len();
        self.line_last = seg[seg.len() - 1];
        if self.field == Field::Name {
            let colon = find_byte(b':', seg);
            self.push_name(&seg[..colon.unwrap_or(seg.len())]);
            let Some(c) = colon else { return };
            self.begin_value();
            self.skip_space = true;
            seg = &seg[c + 1..];
        }
        if seg.is_empty() {
            return;
        }
        if self.skip_space {
            self.skip_space = false;
            if seg[0] == b' ' {
                seg = &seg[1..];
            }
        }
        match self.field {
            Field::Data => self.data(seg, last),
            Field::Event => {
                let room = MAX_EVENT_NAME.saturating_sub(self.event_name.len());
                self.event_name
                    .extend_from_slice(&seg[..room.min(seg.len())]);
            }
            _ => {}
        }
    }

    fn push_name(&mut self, bytes: &[u8]) {
        let room = self.name.len().saturating_sub(self.name_len);
        let take = room.min(bytes.len());
        if take > 0 {
            self.name[self.name_len..self.name_len + take].copy_from_slice(&bytes[..take]);
        }
        self.name_len = self.name_len.saturating_add(bytes.len());
    }

    /// The field name is complete: classify the line.
    fn begin_value(&mut self) {
        let name: &[u8] = if self.name_len <= self.name.len() {
            &self.name[..self.name_len]
        } else {
            b""
        };
        self.field = match name {
            b"data" => {
                self.data_lines += 1;
                // Data lines of one event join with a newline, which JSON reads as whitespace.
                if self.data_lines > 1 {
                    self.data(b"\n", false);
                }
                Field::Data
            }
            b"event" => {
                self.event_name.clear();
                Field::Event
            }
            // Comments (empty name), `id`, `retry`, unknown fields.
            _ => Field::Other,
        };
    }

    /// `whole_line`: `seg` is all of (the rest of) a data line, the usual case, which lets the
    /// scanner try its one-shot path when the event's data starts with it.
    fn data(&mut self, seg: &[u8], whole_line: bool) {
        if self.data_len < self.data_head.len() {
            let take = (self.data_head.len() - self.data_len).min(seg.len());
            self.data_head[self.data_len..self.data_len + take].copy_from_slice(&seg[..take]);
        }
        self.data_len = self.data_len.saturating_add(seg.len());
        // Chunk boundaries fall anywhere, often inside a data line. Scanning the pieces with the
        // resumable state machine works but is ~2x slower than scanning the whole line in one
        // shot, so a cut line's start is copied aside (a few hundred bytes, typically) and
        // scanned when its end arrives. Only the event's first bytes qualify: once the scanner
        // has started on the event, it must go on resumably.
        if !self.held.is_empty() || (!whole_line && self.scanner.at_start()) {
            if self.held.len() + seg.len() <= MAX_HELD_LINE {
                self.held.extend_from_slice(seg);
                if whole_line {
                    self.flush_held();
                }
                return;
            }
            let held = std::mem::take(&mut self.held);
            self.scanner.feed(&held);
        }
        if whole_line {
            self.scanner.feed_complete(seg);
        } else {
            self.scanner.feed(seg);
        }
    }

    /// The held line start is all there will be of it: scan it.
    fn flush_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        self.scanner.feed_complete(&self.held);
        self.held.clear();
        // Don't keep a large buffer around for the rest of a long stream.
        if self.held.capacity() > 8 * 1024 {
            self.held = Vec::new();
        }
    }

    fn end_line(&mut self) {
        // The line may end right at a chunk boundary, after its last piece was held.
        self.flush_held();
        let cr = self.line_last == b'\r';
        if self.line_len == 0 || (self.line_len == 1 && cr) {
            self.dispatch();
        } else {
            match self.field {
                Field::Name => {
                    // A line without a colon is a field name with an empty value.
                    if cr && (1..=self.name.len()).contains(&self.name_len) {
                        self.name_len -= 1;
                    }
                    self.begin_value();
                }
                Field::Event if cr && self.event_name.last() == Some(&b'\r') => {
                    self.event_name.pop();
                }
                // A trailing `\r` in data reached the scanner as JSON whitespace: harmless.
                _ => {}
            }
        }
        self.field = Field::Name;
        self.line_len = 0;
        self.name_len = 0;
        self.skip_space = false;
    }

    fn dispatch(&mut self) {
        if self.data_lines > 0 {
            let head = &self.data_head[..self.data_len.min(self.data_head.len())];
            if head == b"[DONE]" || head == b"[DONE]\r" {
                self.done = true;
            } else {
                self.apply_event();
            }
        }
        self.data_lines = 0;
        self.data_len = 0;
        self.event_name.clear();
        self.scanner.reset();
    }

    fn apply_event(&mut self) {
        let sc = &self.scanner;
        // The data's own `type` is what SDKs read; the `event:` line is the fallback.
        let ty: &[u8] = if sc.event_type().is_empty() {
            &self.event_name
        } else {
            sc.event_type()
        };
        self.text_chars +=
            sc.text_chars(ty == b"response.output_text.delta" || ty == b"content_block_delta");
        // Reports are cumulative (some providers repeat them, Anthropic's come in two parts):
        // each updates what the earlier ones said, and none is added to them.
        if let Some(usage) = sc.usage() {
            self.usage = Some(match self.usage {
                Some(earlier) => earlier.then(usage),
                None => usage,
            });
            self.provisional = ty == b"message_start";
        }
    }

    /// End of body: an unterminated last event still counts if its JSON is complete (some
    /// servers omit the final blank line); a cut one does not.
    pub(super) fn finish(&mut self) {
        self.flush_held();
        if !self.done && self.data_lines > 0 && self.scanner.root_done() {
            self.apply_event();
        }
        self.data_lines = 0;
        self.done = true;
    }

    /// The usage the complete events so far reported, each updating the ones before.
    pub(super) fn usage(&self) -> Option<Reported> {
        self.usage
    }

    /// Whether that usage is the response's final count, not just what a stream's first event
    /// tells (Anthropic's `message_start`, before any output).
    pub(super) fn usage_is_final(&self) -> bool {
        !self.provisional
    }

    /// Characters of generated text in the complete events so far.
    pub(super) fn text_chars(&self) -> u64 {
        self.text_chars
    }

    /// `[DONE]` was seen, or the body ended: nothing more will be read.
    pub(super) fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::fixtures::{u, CHAT, RESPONSES};
    use crate::usage::Usage;

    fn parse<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> (Option<Usage>, u64) {
        let mut parser = SseParser::new();
        for piece in pieces {
            parser.feed(piece);
        }
        parser.finish();
        (parser.usage().and_then(|r| r.usage()), parser.text_chars())
    }

    /// Feeds `stream` whole (the scanner's one-shot path) and byte by byte (its resumable state
    /// machine), checks both agree, and returns the usage and text characters found.
    fn sse(stream: &str) -> (Option<Usage>, u64) {
        let whole = parse(std::iter::once(stream.as_bytes()));
        let bytes = parse(stream.as_bytes().chunks(1));
        assert_eq!(whole, bytes, "whole vs byte by byte: {stream}");
        whole
    }

    #[test]
    fn sse_chat_with_include_usage() {
        // "Hé😀" = 3 chars; "\"a\n\u00e9\ud83d\ude00" = `"`, a, newline, é, 😀 = 5 chars.
        assert_eq!(sse(CHAT), (u(9, 4, 2), 8));
    }

    #[test]
    fn sse_completions_and_crlf() {
        let stream = concat!(
            "data: {\"object\":\"text_completion\",\"choices\":[{\"text\":\"Hello\",\"index\":0}]}\r\n\r\n",
            ": keep-alive comment\r\n\r\n",
            "data: {\"object\":\"text_completion\",\"choices\":[{\"text\":\" wörld\",\"index\":0}]}\r\n\r\n",
            "data: {\"object\":\"text_completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\r\n\r\n",
            "data: [DONE]\r\n\r\n",
        );
        assert_eq!(sse(stream), (u(3, 2, 0), 11));
    }

    #[test]
    fn sse_responses_api() {
        assert_eq!(sse(RESPONSES), (u(12, 4, 5), 4));
        // Without `event:` lines the data's own type decides.
        let no_event_lines: String = RESPONSES
            .split("\r\n")
            .filter(|l| !l.starts_with("event:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(sse(&no_event_lines), (u(12, 4, 5), 4));
        for ty in ["response.incomplete", "response.failed"] {
            let s = RESPONSES.replace("response.completed", ty);
            assert_eq!(sse(&s).0, u(12, 4, 5));
        }
    }

    #[test]
    fn sse_event_line_alone_sets_the_type() {
        let s = "event: response.output_text.delta\ndata: {\"delta\":\"abc\"}\n\n";
        assert_eq!(sse(s), (None, 3));
        let s = "event: something.else\ndata: {\"delta\":\"abc\"}\n\n";
        assert_eq!(sse(s), (None, 0));
    }

    #[test]
    fn sse_multi_line_data_and_field_details() {
        let s = concat!(
            "id: 1\nretry: 10\ndata: {\"choices\":[{\"delta\":\n",
            "data:{\"content\":\"ab\"}}],\n",
            "data: \"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
            "data\n\n",
            "data: [DONE]\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":100}}\n\n",
        );
        assert_eq!(sse(s), (u(1, 2, 0), 2));
    }

    #[test]
    fn sse_unterminated_complete_last_event_counts() {
        let (usage, chars) =
            sse("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}");
        assert_eq!((usage, chars), (u(2, 3, 0), 0));
    }

    #[test]
    fn sse_decoys() {
        // A chat chunk with `usage` nested under choices, and text inside tool calls and the
        // role: none of it counts.
        let s = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"arguments\":\"{\\\"content\\\":\\\"x\\\"}\"}}]},\"usage\":{\"prompt_tokens\":7}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":null}}],\"x\":{\"choices\":[{\"text\":\"nope\"}]}}\n\n",
        );
        assert_eq!(sse(s), (None, 0));
    }
}
