//! A resumable, structure-aware JSON scanner for the two things keygate wants from a response
//! document (a JSON body, or one SSE event's data): the provider's `usage` object and the
//! characters of generated text.
//!
//! It runs on the proxy's hot path, once per body chunk, so it neither buffers nor parses in
//! full. It tracks nesting and strings, follows only the few member paths that matter (`usage`,
//! `response.usage`, `choices[].delta.content`, `choices[].text`, `delta`, `type`) and skips
//! everything else by bracket counting, searching string bodies word- or SIMD-wise. It keeps no
//! copy of the document: only the bytes of a `usage` object are collected (a few hundred bytes).
//! Because it resumes at any byte, a JSON body is scanned as it streams by, whatever its size
//! (there is no accumulation to cap), and an SSE event's data is scanned without assembling the
//! event.
//!
//! A document that arrives whole in one piece (the usual SSE data line, a small JSON body) takes
//! [`one_shot`] instead: the same walk over the complete slice, roughly twice as fast. It gives
//! up on anything malformed, leaving that to the tolerant state machine here.

mod one_shot;

use super::object::{parse_reported, Reported};
use crate::json::{hex_val, is_delim, is_ws, skip_ws, string_stop, unescape_key};
use one_shot::OneShot;

/// Containers whose members matter. Anything else is skipped wholesale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// The top-level object.
    Root,
    /// `choices` (an array; its elements are [`Ctx::Choice`]).
    Choices,
    /// One element of `choices`.
    Choice,
    /// `choices[].delta`.
    Delta,
    /// `response` of a responses-API event, or `message` of an Anthropic `message_start`: the
    /// object whose `usage` the event reports.
    Response,
    /// The object `delta` of an Anthropic `content_block_delta` event.
    BlockDelta,
}

/// Deepest chain of interesting containers: Root > Choices > Choice > Delta.
const MAX_CHAIN: usize = 4;

/// What to do with the value of the member being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Skip,
    /// Keep the raw string (the event `type`).
    Type,
    /// Count the characters of a string into `counts[i]`.
    Count(usize),
    /// Descend into a container we track.
    Enter(Ctx),
    /// Collect an object and parse it as usage.
    Usage(Slot),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Top,
    Response,
}

const CONTENT: usize = 0;
const TEXT: usize = 1;
const DELTA: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Before the top-level value.
    Start,
    /// In a tracked object, expecting a key or `}`.
    Key,
    InKey,
    /// After a key, expecting `:`.
    Colon,
    /// Expecting a value; `role` says what it is for.
    Value,
    /// After a value, expecting `,` or a closing bracket.
    After,
    /// Inside a string value; `role` says whether to count or keep it.
    InStr,
    /// Inside a number or `true`/`false`/`null`.
    Literal,
    /// Skipping an untracked container (`skip_depth`, `skip_in_str`).
    Skip,
    /// The top-level value ended, or is not an object: ignore the rest.
    Done,
}

/// Longest key kept for matching. Every key we look for is shorter, even fully `\u`-escaped.
const MAX_KEY: usize = 64;
/// A usage object is a few hundred bytes; anything far larger is not one worth parsing.
const MAX_CAPTURE: usize = 64 * 1024;
/// Longest event `type` kept; the ones we compare against are shorter.
const MAX_TYPE: usize = 64;

/// A resumable scanner over one JSON document, fed in pieces of any size. Tolerant: on invalid
/// JSON it never panics, it just finds less.
pub(super) struct Scanner {
    /// SSE mode also follows `choices`, `delta`, `type` and `response`; a JSON body only needs
    /// the top-level `usage`.
    sse: bool,
    lex: Lex,
    stack: [Ctx; MAX_CHAIN],
    sp: usize,
    role: Role,
    key: Vec<u8>,
    key_long: bool,
    /// String escape state: 0 none, 1 after `\`, 2..=5 reading `\u` hex digits.
    esc: u8,
    hex: u16,
    /// The last counted character was a `\u` high surrogate, so a following low surrogate
    /// escape completes the same character.
    prev_high: bool,
    skip_depth: u32,
    skip_in_str: bool,
    capture: Vec<u8>,
    capturing: Option<Slot>,
    // Results of the current document.
    type_buf: Vec<u8>,
    counts: [u64; 3],
    usage_top: Option<Reported>,
    usage_resp: Option<Reported>,
    root_done: bool,
    /// The bytes of the last one-shot document from its `{` up to its first tracked member:
    /// members the scan only skipped. A stream's events usually repeat them byte for byte
    /// (`id`, `object`, `created`, `model`, `system_fingerprint` come first and stay the same
    /// for the whole stream), so an event that starts with the same bytes resumes the scan
    /// where they end instead of walking them again. Same bytes, same outcome: this is exact.
    skipped_head: Vec<u8>,
}

/// Longest skipped head remembered (OpenAI's is under 200 bytes).
const MAX_SKIPPED_HEAD: usize = 512;

/// Unicode scalar values in a run of UTF-8 without escapes: every byte that is not a
/// continuation byte starts one. Vectorizes well.
fn count_chars(run: &[u8]) -> u64 {
    run.iter().filter(|&&b| (b as i8) >= -0x40).count() as u64
}

/// What a member of a tracked container is for, from its raw key (escapes not decoded);
/// `escaped` says whether the key has a backslash, which the caller's string scan already knows.
#[inline]
fn role_for(sse: bool, ctx: Ctx, raw_key: &[u8], escaped: bool) -> Role {
    if raw_key.len() > MAX_KEY {
        return Role::Skip;
    }
    if !escaped {
        return role_for_plain(sse, ctx, raw_key);
    }
    match unescape_key(raw_key) {
        Some(k) if !k.contains('\\') => role_for_plain(sse, ctx, k.as_bytes()),
        _ => Role::Skip,
    }
}

#[inline]
fn role_for_plain(sse: bool, ctx: Ctx, raw_key: &[u8]) -> Role {
    match (ctx, raw_key) {
        (Ctx::Root, b"usage") => Role::Usage(Slot::Top),
        (Ctx::Root, b"choices") if sse => Role::Enter(Ctx::Choices),
        (Ctx::Root, b"type") if sse => Role::Type,
        (Ctx::Root, b"delta") if sse => Role::Count(DELTA),
        (Ctx::Root, b"response" | b"message") if sse => Role::Enter(Ctx::Response),
        (Ctx::Choice, b"delta") => Role::Enter(Ctx::Delta),
        (Ctx::Choice, b"text") => Role::Count(TEXT),
        (Ctx::Delta, b"content") => Role::Count(CONTENT),
        (Ctx::Response, b"usage") => Role::Usage(Slot::Response),
        // Anthropic's text, tool input and thinking deltas, all billed as output.
        (Ctx::BlockDelta, b"text" | b"partial_json" | b"thinking") => Role::Count(DELTA),
        _ => Role::Skip,
    }
}

impl Scanner {
    pub(super) fn new(sse: bool) -> Scanner {
        Scanner {
            sse,
            lex: Lex::Start,
            stack: [Ctx::Root; MAX_CHAIN],
            sp: 0,
            role: Role::Skip,
            key: Vec::new(),
            key_long: false,
            esc: 0,
            hex: 0,
            prev_high: false,
            skip_depth: 0,
            skip_in_str: false,
            capture: Vec::new(),
            capturing: None,
            type_buf: Vec::new(),
            counts: [0; 3],
            usage_top: None,
            usage_resp: None,
            root_done: false,
            skipped_head: Vec::new(),
        }
    }

    /// Ready for the next document (the next SSE event); keeps allocations.
    pub(super) fn reset(&mut self) {
        self.lex = Lex::Start;
        self.sp = 0;
        self.role = Role::Skip;
        self.esc = 0;
        self.prev_high = false;
        self.skip_depth = 0;
        self.skip_in_str = false;
        self.capturing = None;
        self.type_buf.clear();
        self.counts = [0; 3];
        self.usage_top = None;
        self.usage_resp = None;
        self.root_done = false;
    }

    pub(super) fn feed(&mut self, s: &[u8]) {
        let mut i = 0;
        while i < s.len() {
            i = match self.lex {
                Lex::Done => return,
                Lex::Skip => self.skip(s, i),
                Lex::InStr => match self.role {
                    Role::Count(k) => self.count_string(s, i, k),
                    role => self.plain_string(s, i, role == Role::Type),
                },
                Lex::InKey => self.key_string(s, i),
                Lex::Literal => match s[i..].iter().position(|&c| is_delim(c)) {
                    Some(k) => {
                        self.lex = Lex::After;
                        i + k
                    }
                    None => s.len(),
                },
                _ => {
                    self.structural(s[i]);
                    i + 1
                }
            };
        }
    }

    /// Like [`feed`](Self::feed), for a piece that is likely a whole document (an SSE data line
    /// that arrived in one chunk, or a JSON body's first chunk): from a pristine state, a
    /// one-shot parse over the slice is about twice as fast as the resumable state machine. If
    /// the piece turns out not to hold a complete, well-formed object, nothing is committed and
    /// the state machine takes the piece as usual.
    pub(super) fn feed_complete(&mut self, s: &[u8]) {
        if self.lex == Lex::Start && self.try_one_shot(s) {
            return;
        }
        self.feed(s);
    }

    fn try_one_shot(&mut self, s: &[u8]) -> bool {
        let start = skip_ws(s, 0);
        if s.get(start) != Some(&b'{') {
            return false;
        }
        let head = &self.skipped_head;
        let resumed = !head.is_empty() && s[start..].starts_with(head);
        let at = if resumed { start + head.len() } else { start };
        let mut o = OneShot::new(s, at, self.sse);
        let parsed = if resumed {
            o.members(Ctx::Root)
        } else {
            o.object(Ctx::Root)
        };
        if parsed.is_none() {
            return false;
        }
        // Only a stream has a next document to save work on.
        if self.sse && !resumed {
            self.skipped_head.clear();
            if let Some(end) = o
                .first_tracked
                .filter(|&end| end - start <= MAX_SKIPPED_HEAD)
            {
                self.skipped_head.extend_from_slice(&s[start..end]);
            }
        }
        self.counts = o.counts;
        if let Some((a, b)) = o.ty {
            self.type_buf.clear();
            self.keep_type(&s[a..b]);
        }
        self.usage_top = o.usage_top.or(self.usage_top);
        self.usage_resp = o.usage_resp.or(self.usage_resp);
        self.sp = 0;
        self.lex = Lex::Done;
        self.root_done = true;
        true
    }

    /// The document is complete: its top-level value has ended.
    pub(super) fn root_done(&self) -> bool {
        self.root_done
    }

    /// Nothing of the document's value has been read yet (whitespace at most).
    pub(super) fn at_start(&self) -> bool {
        self.lex == Lex::Start
    }

    /// The usage the document reports: its top-level `usage`, else (in SSE mode) the
    /// `response.usage` of a responses-API event.
    pub(super) fn usage(&self) -> Option<Reported> {
        self.usage_top.or(self.usage_resp)
    }

    /// The document's own `type` (SSE mode), raw and capped at `MAX_TYPE` bytes; empty if it
    /// has none.
    pub(super) fn event_type(&self) -> &[u8] {
        &self.type_buf
    }

    /// Characters of generated text in the document (SSE mode): chat `choices[].delta.content`
    /// and completions `choices[].text`, plus the top-level `delta` (a string, or the text of
    /// an object) when `delta_is_text` (the event's type says that `delta` is output text).
    pub(super) fn text_chars(&self, delta_is_text: bool) -> u64 {
        let mut chars = self.counts[CONTENT] + self.counts[TEXT];
        if delta_is_text {
            chars += self.counts[DELTA];
        }
        chars
    }

    fn top(&self) -> Ctx {
        self.stack[self.sp.saturating_sub(1)]
    }

    fn structural(&mut self, c: u8) {
        match self.lex {
            Lex::Start => match c {
                b'{' => self.push(Ctx::Root),
                c if is_ws(c) => {}
                // Not an object (for SSE, e.g. `[DONE]`): nothing to find.
                _ => self.lex = Lex::Done,
            },
            Lex::Key => match c {
                b'"' => {
                    self.key.clear();
                    self.key_long = false;
                    self.esc = 0;
                    self.lex = Lex::InKey;
                }
                b'}' => self.close(),
                // Whitespace, or junk we tolerate.
                _ => {}
            },
            Lex::Colon if c == b':' => self.lex = Lex::Value,
            Lex::Value => self.value_start(c),
            Lex::After => match c {
                b',' => {
                    if self.top() == Ctx::Choices {
                        self.role = Role::Enter(Ctx::Choice);
                        self.lex = Lex::Value;
                    } else {
                        self.lex = Lex::Key;
                    }
                }
                b'}' | b']' => self.close(),
                _ => {}
            },
            _ => {}
        }
    }

    fn push(&mut self, ctx: Ctx) {
        if self.sp < MAX_CHAIN {
            self.stack[self.sp] = ctx;
            self.sp += 1;
            self.lex = if ctx == Ctx::Choices {
                self.role = Role::Enter(Ctx::Choice);
                Lex::Value
            } else {
                Lex::Key
            };
        } else {
            self.start_skip();
        }
    }

    fn close(&mut self) {
        if self.sp <= 1 {
            self.sp = 0;
            self.lex = Lex::Done;
            self.root_done = true;
        } else {
            self.sp -= 1;
            self.lex = Lex::After;
        }
    }

    fn start_skip(&mut self) {
        self.skip_depth = 1;
        self.skip_in_str = false;
        self.esc = 0;
        self.lex = Lex::Skip;
    }

    fn value_start(&mut self, c: u8) {
        match c {
            b'"' => {
                self.esc = 0;
                self.prev_high = false;
                if self.role == Role::Type {
                    self.type_buf.clear();
                }
                self.lex = Lex::InStr;
            }
            b'{' => match self.role {
                Role::Enter(ctx) if ctx != Ctx::Choices => self.push(ctx),
                // The responses API's `delta` is a string, Anthropic's an object.
                Role::Count(DELTA) => self.push(Ctx::BlockDelta),
                Role::Usage(slot) => {
                    self.capture.clear();
                    self.capture.push(b'{');
                    self.capturing = Some(slot);
                    self.start_skip();
                }
                _ => self.start_skip(),
            },
            b'[' => match self.role {
                Role::Enter(Ctx::Choices) => self.push(Ctx::Choices),
                _ => self.start_skip(),
            },
            // `[]`, or a trailing comma, which we tolerate.
            b']' | b'}' => self.close(),
            c if is_ws(c) => {}
            _ => self.lex = Lex::Literal,
        }
    }

    fn push_key(&mut self, bytes: &[u8]) {
        if self.key.len() + bytes.len() <= MAX_KEY {
            self.key.extend_from_slice(bytes);
        } else {
            self.key_long = true;
        }
    }

    fn key_string(&mut self, s: &[u8], mut i: usize) -> usize {
        loop {
            if self.esc != 0 {
                if i >= s.len() {
                    return i;
                }
                self.push_key(&s[i..i + 1]);
                self.esc = 0;
                i += 1;
            }
            match string_stop(&s[i..]) {
                None => {
                    self.push_key(&s[i..]);
                    return s.len();
                }
                Some(k) => {
                    self.push_key(&s[i..i + k]);
                    let c = s[i + k];
                    i += k + 1;
                    if c == b'\\' {
                        self.push_key(b"\\");
                        self.esc = 1;
                    } else {
                        self.end_key();
                        return i;
                    }
                }
            }
        }
    }

    fn end_key(&mut self) {
        self.role = if self.key_long {
            Role::Skip
        } else {
            role_for(self.sse, self.top(), &self.key, self.key.contains(&b'\\'))
        };
        self.lex = Lex::Colon;
    }

    /// A string we skip, or keep raw (the event `type`).
    fn plain_string(&mut self, s: &[u8], mut i: usize, keep: bool) -> usize {
        loop {
            if self.esc != 0 {
                if i >= s.len() {
                    return i;
                }
                if keep {
                    self.keep_type(&s[i..i + 1]);
                }
                self.esc = 0;
                i += 1;
            }
            match string_stop(&s[i..]) {
                None => {
                    if keep {
                        self.keep_type(&s[i..]);
                    }
                    return s.len();
                }
                Some(k) => {
                    if keep {
                        self.keep_type(&s[i..i + k]);
                    }
                    let c = s[i + k];
                    i += k + 1;
                    if c == b'\\' {
                        if keep {
                            self.keep_type(b"\\");
                        }
                        self.esc = 1;
                    } else {
                        self.lex = Lex::After;
                        return i;
                    }
                }
            }
        }
    }

    fn keep_type(&mut self, bytes: &[u8]) {
        let room = MAX_TYPE.saturating_sub(self.type_buf.len());
        self.type_buf
            .extend_from_slice(&bytes[..room.min(bytes.len())]);
    }

    /// A string whose characters we count: each escape is one character, and a `\u` surrogate
    /// pair is one character too (as `str::chars` would count the decoded string).
    fn count_string(&mut self, s: &[u8], mut i: usize, slot: usize) -> usize {
        let n = s.len();
        let mut chars = 0u64;
        let end = 'scan: loop {
            while self.esc != 0 {
                if i >= n {
                    break 'scan n;
                }
                let c = s[i];
                i += 1;
                if self.esc == 1 {
                    if c == b'u' {
                        self.esc = 2;
                        self.hex = 0;
                    } else {
                        chars += 1;
                        self.prev_high = false;
                        self.esc = 0;
                    }
                } else {
                    self.hex = self.hex << 4 | hex_val(c);
                    self.esc += 1;
                    if self.esc == 6 {
                        self.esc = 0;
                        if (0xDC00..=0xDFFF).contains(&self.hex) && self.prev_high {
                            // Second half of a pair whose first half was already counted.
                            self.prev_high = false;
                        } else {
                            chars += 1;
                            self.prev_high = (0xD800..=0xDBFF).contains(&self.hex);
                        }
                    }
                }
            }
            match string_stop(&s[i..]) {
                None => {
                    if i < n {
                        chars += count_chars(&s[i..]);
                        self.prev_high = false;
                    }
                    break n;
                }
                Some(k) => {
                    if k > 0 {
                        chars += count_chars(&s[i..i + k]);
                        self.prev_high = false;
                    }
                    let c = s[i + k];
                    i += k + 1;
                    if c == b'\\' {
                        self.esc = 1;
                    } else {
                        self.lex = Lex::After;
                        break i;
                    }
                }
            }
        };
        self.counts[slot] += chars;
        end
    }

    /// Skips an untracked container by bracket counting, collecting it if it is a usage object.
    fn skip(&mut self, s: &[u8], start: usize) -> usize {
        let n = s.len();
        let mut i = start;
        let mut depth = self.skip_depth;
        let mut in_str = self.skip_in_str;
        let mut esc = self.esc != 0;
        let mut closed = false;
        'scan: while i < n {
            if in_str {
                if esc {
                    esc = false;
                    i += 1;
                    continue;
                }
                match string_stop(&s[i..]) {
                    None => i = n,
                    Some(k) => {
                        i += k + 1;
                        if s[i - 1] == b'\\' {
                            esc = true;
                        } else {
                            in_str = false;
                        }
                    }
                }
            } else {
                while i < n {
                    let c = s[i];
                    i += 1;
                    match c {
                        b'"' => {
                            in_str = true;
                            continue 'scan;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                closed = true;
                                break 'scan;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if self.capturing.is_some() {
            if self.capture.len() + (i - start) <= MAX_CAPTURE {
                self.capture.extend_from_slice(&s[start..i]);
            } else {
                self.capturing = None;
            }
        }
        if closed {
            if let Some(slot) = self.capturing.take() {
                if let Some(usage) = parse_reported(&self.capture) {
                    match slot {
                        Slot::Top => self.usage_top = Some(usage),
                        Slot::Response => self.usage_resp = Some(usage),
                    }
                }
            }
            self.esc = 0;
            self.lex = Lex::After;
        } else {
            self.skip_depth = depth;
            self.skip_in_str = in_str;
            self.esc = u8::from(esc);
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::fixtures::{ANTHROPIC, CHAT, RESPONSES};

    type Findings = ([u64; 3], Vec<u8>, Option<Reported>, Option<Reported>, bool);

    fn findings(sc: &Scanner) -> Findings {
        let f = (sc.counts, sc.type_buf.clone(), sc.usage_top, sc.usage_resp);
        (f.0, f.1, f.2, f.3, sc.root_done)
    }

    /// The SSE parser hands most documents to the one-shot path, so check the resumable state
    /// machine against it directly, at every split, on every event of the recorded streams.
    #[test]
    fn resumable_and_one_shot_agree() {
        let mut docs: Vec<String> = [CHAT, RESPONSES, ANTHROPIC]
            .iter()
            .flat_map(|s| s.split(['\r', '\n']))
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| d.starts_with('{'))
            .map(str::to_owned)
            .collect();
        docs.push(r#"{"object":"text_completion","choices":[{"text":"a\u00e9\ud83d\ude00","index":0},{"text":"b"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#.into());
        docs.push(
            r#" { "type" : "response.output_text.delta" , "delta" : "x\"y" , "choices" : [ ] } "#
                .into(),
        );
        docs.push(r#"{"choices":[{"delta":{"content":"a","tool_calls":[{"function":{"arguments":"{\"usage\":1}"}}]},"text":null}],"usage":{"input_tokens":3,"output_tokens":4,"input_tokens_details":{"cached_tokens":1}}}"#.into());
        docs.push(r#"{"us\u0061ge":{"prompt_tokens":1},"response":{"usage":{"input_tokens":2},"output":[[{"usage":{}}]]}}"#.into());
        for sse in [true, false] {
            for doc in &docs {
                let d = doc.as_bytes();
                let mut one = Scanner::new(sse);
                assert!(one.try_one_shot(d), "{doc}");
                let want = findings(&one);
                for k in 0..=d.len() {
                    let mut sc = Scanner::new(sse);
                    sc.feed(&d[..k]);
                    sc.feed(&d[k..]);
                    assert_eq!(findings(&sc), want, "split at {k}: {doc}");
                }
                let mut sc = Scanner::new(sse);
                for b in d {
                    sc.feed(std::slice::from_ref(b));
                }
                assert_eq!(findings(&sc), want, "byte by byte: {doc}");
            }
        }
    }

    #[test]
    fn a_remembered_head_gives_what_a_fresh_scan_gives() {
        // Events sharing leading members with the one before, then differing right where the
        // remembered head ends, inside it, or in how the next member is spelled.
        let events = [
            r#"{"id":"a","created":1,"choices":[{"delta":{"content":"xy"}}],"usage":null}"#,
            r#"{"id":"a","created":1,"choices":[{"delta":{"content":"zzz"}}],"usage":null}"#,
            r#"{"id":"a","created":1,"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
            r#"{"id":"a","created":1,"model":"m","usage":{"prompt_tokens":7}}"#,
            r#"{"id":"a","created":2,"choices":[{"text":"abc"}]}"#,
            r#"{"id":"a","created":2,"us\u0061ge":{"prompt_tokens":8}}"#,
            r#"{"id":"a","created":2,"choices":[],"x":1"#,
            r#"{"id":"a","created":2}"#,
            r#"{"id":"a","created":2,"choices":[{"delta":{"content":"q"}}]}"#,
            r#"{"id":"a","created":2,"type":"t","delta":"dd"}"#,
        ];
        let mut reused = Scanner::new(true);
        for (n, event) in events.iter().enumerate() {
            reused.reset();
            let mut fresh = Scanner::new(true);
            let one_shot = fresh.try_one_shot(event.as_bytes());
            assert_eq!(one_shot, !event.ends_with(":1"), "{event}");
            assert_eq!(reused.try_one_shot(event.as_bytes()), one_shot, "{event}");
            assert_eq!(findings(&reused), findings(&fresh), "{event}");
            if n == 0 {
                assert_eq!(reused.skipped_head, br#"{"id":"a","created":1,"#);
            }
        }
    }

    #[test]
    fn count_string_escapes() {
        let mut sc = Scanner::new(true);
        sc.feed(br#"{"choices":[{"delta":{"content":"\u00e9\ud83d\ude00\ud83d\\\/\"x\uD83Dy\uDE00"}}]}"#);
        // é, 😀, lone high (1), \, /, ", x, lone high (1), y, lone low (1) = 10
        assert_eq!(sc.counts[CONTENT], 10);
        assert!(sc.root_done);
    }
}
