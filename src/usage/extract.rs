//! Incremental extraction of provider-reported token usage from response bodies.
//!
//! Everything here runs on the proxy's hot path, once per body chunk, so the design avoids both
//! buffering and full JSON parses:
//!
//! - `Scanner` is a resumable, structure-aware JSON scanner. It tracks nesting and strings,
//!   follows only the few member paths that matter (`usage`, `response.usage`,
//!   `choices[].delta.content`, `choices[].text`, `delta`, `type`) and skips everything else by
//!   bracket counting, searching string bodies word- or SIMD-wise. It keeps no copy of the
//!   document: only the bytes of a `usage` object are collected (a few hundred bytes). Because it
//!   resumes at any byte, a JSON body is scanned as it streams by, whatever its size (there is no
//!   accumulation to cap), and an SSE event's data is scanned without assembling the event.
//! - `OneShot` is the same walk over a slice known to be complete, used when a whole document
//!   sits in one piece (the usual SSE data line, a small JSON body): roughly twice as fast. It
//!   gives up on anything malformed, leaving that to the tolerant `Scanner`.
//! - `SseParser` splits the event stream into lines and fields across arbitrary chunk
//!   boundaries and feeds `data:` bytes straight into the scanner; nothing of an event is held
//!   except the scanner's small state, so there is no event-size limit to hit.

use memchr::memchr;

use super::decode::{ContentEncoding, Decoder};
use super::object::{parse_usage, parse_usage_at, Usage};
use crate::json::{
    hex_val, is_delim, is_ws, skip_string, skip_string_noting_escapes, skip_value, skip_ws,
    string_stop, unescape_key,
};

/// What kind of body to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Sse,
}

/// Decoded JSON is scanned as it streams, so memory never grows with the body; this bound only
/// caps the CPU a compressed body (a decompression bomb) can cost. It is generous because the
/// `usage` of an embeddings response comes after its vectors, and a large float-format batch can
/// legitimately decode to ~100 MiB. Identity bodies have no bound: the proxy receives those bytes
/// anyway and scanning them costs less than receiving them.
const MAX_DECODED_JSON: u64 = 256 << 20;

/// Incremental usage extractor for one response.
pub struct UsageExtractor {
    decoder: Option<Decoder>,
    sink: Sink,
    finished: bool,
}

enum Sink {
    Json { scanner: Scanner, decoded: u64 },
    Sse(SseParser),
}

impl Sink {
    /// Consumes decoded bytes; returns whether more are worth decoding.
    fn push(&mut self, bytes: &[u8], bounded: bool) -> bool {
        match self {
            Sink::Json { scanner, decoded } => {
                if bounded {
                    *decoded = decoded.saturating_add(bytes.len() as u64);
                    if *decoded > MAX_DECODED_JSON {
                        return false;
                    }
                }
                scanner.feed_complete(bytes);
                !scanner.root_done
            }
            Sink::Sse(parser) => {
                parser.feed(bytes);
                !parser.done
            }
        }
    }
}

impl UsageExtractor {
    pub fn new(kind: BodyKind, encoding: ContentEncoding) -> Self {
        let sink = match kind {
            BodyKind::Json => Sink::Json {
                scanner: Scanner::new(false),
                decoded: 0,
            },
            BodyKind::Sse => Sink::Sse(SseParser::new()),
        };
        UsageExtractor {
            decoder: Decoder::new(encoding),
            sink,
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
                self.sink.push(chunk, false);
            }
            Some(decoder) => {
                let sink = &mut self.sink;
                decoder.decode(chunk, &mut |decoded| sink.push(decoded, true));
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
            Sink::Json { scanner, .. } => scanner.usage_top,
            Sink::Sse(parser) => parser.usage,
        }
    }

    /// Characters (Unicode scalar values, escapes decoded) of generated text seen so far in an
    /// SSE stream: chat `choices[].delta.content`, completions `choices[].text`, and the `delta`
    /// of responses-API `response.output_text.delta` events. Always 0 for JSON bodies.
    pub fn streamed_text_chars(&self) -> u64 {
        match &self.sink {
            Sink::Json { .. } => 0,
            Sink::Sse(parser) => parser.text_chars,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resumable JSON scanner
// ---------------------------------------------------------------------------------------------

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
    /// `response` of a responses-API event.
    Response,
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
struct Scanner {
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
    usage_top: Option<Usage>,
    usage_resp: Option<Usage>,
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
        (Ctx::Root, b"response") if sse => Role::Enter(Ctx::Response),
        (Ctx::Choice, b"delta") => Role::Enter(Ctx::Delta),
        (Ctx::Choice, b"text") => Role::Count(TEXT),
        (Ctx::Delta, b"content") => Role::Count(CONTENT),
        (Ctx::Response, b"usage") => Role::Usage(Slot::Response),
        _ => Role::Skip,
    }
}

impl Scanner {
    fn new(sse: bool) -> Scanner {
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
    fn reset(&mut self) {
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

    fn feed(&mut self, s: &[u8]) {
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
    fn feed_complete(&mut self, s: &[u8]) {
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
        let mut o = OneShot {
            s,
            i: start,
            sse: self.sse,
            counts: [0; 3],
            ty: None,
            usage_top: None,
            usage_resp: None,
            first_tracked: None,
        };
        let head = &self.skipped_head;
        let resumed = !head.is_empty() && s[start..].starts_with(head);
        let parsed = if resumed {
            o.i = start + head.len();
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
                if let Some(usage) = parse_usage(&self.capture) {
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

/// The one-shot counterpart of [`Scanner`] over a complete slice: recursive descent along the
/// tracked containers (at most [`MAX_CHAIN`] deep, so recursion is bounded), [`skip_value`] for
/// everything else. Strict: any syntax it does not expect makes it give up (`None`), so that
/// malformed input is always left to the tolerant state machine, and on well-formed input the
/// two agree (the split-everywhere property tests exercise both paths against one oracle).
struct OneShot<'a> {
    s: &'a [u8],
    i: usize,
    sse: bool,
    counts: [u64; 3],
    ty: Option<(usize, usize)>,
    usage_top: Option<Usage>,
    usage_resp: Option<Usage>,
    /// Where the root's first tracked member starts (its key's quote), when members before it
    /// were skipped: the end of what [`Scanner::skipped_head`] may remember.
    first_tracked: Option<usize>,
}

impl OneShot<'_> {
    fn ws(&mut self) {
        self.i = skip_ws(self.s, self.i);
    }

    fn byte(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// At `{`.
    fn object(&mut self, ctx: Ctx) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.byte()? == b'}' {
            self.i += 1;
            return Some(());
        }
        self.members(ctx)
    }

    /// At the opening quote of a member's key; reads the rest of the object.
    fn members(&mut self, ctx: Ctx) -> Option<()> {
        let first = self.i;
        let mut tracked_seen = false;
        loop {
            if self.byte()? != b'"' {
                return None;
            }
            let (key_end, escaped) = skip_string_noting_escapes(self.s, self.i)?;
            let role = role_for(self.sse, ctx, &self.s[self.i + 1..key_end - 1], escaped);
            if ctx == Ctx::Root && !tracked_seen && role != Role::Skip {
                tracked_seen = true;
                if self.i > first {
                    self.first_tracked = Some(self.i);
                }
            }
            self.i = key_end;
            self.ws();
            if self.byte()? != b':' {
                return None;
            }
            self.i += 1;
            self.ws();
            self.value(role)?;
            self.ws();
            match self.byte()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// At the `[` of `choices`.
    fn choices(&mut self) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.byte()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.value(Role::Enter(Ctx::Choice))?;
            self.ws();
            match self.byte()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn value(&mut self, role: Role) -> Option<()> {
        let start = self.i;
        match (self.byte()?, role) {
            (b'"', Role::Count(k)) => {
                let (end, chars) = count_whole_string(self.s, start)?;
                self.counts[k] += chars;
                self.i = end;
            }
            (b'"', Role::Type) => {
                let end = skip_string(self.s, start)?;
                self.ty = Some((start + 1, end - 1));
                self.i = end;
            }
            (b'{', Role::Enter(ctx)) if ctx != Ctx::Choices => self.object(ctx)?,
            (b'[', Role::Enter(Ctx::Choices)) => self.choices()?,
            (b'{', Role::Usage(slot)) => {
                let (usage, end) = parse_usage_at(self.s, start);
                // Malformed inside: give up, and let the tolerant scanner decide how to skip it.
                let end = end?;
                // Same bound as the state machine's capture, so both give the same answer.
                if let (Some(usage), true) = (usage, end - start <= MAX_CAPTURE) {
                    match slot {
                        Slot::Top => self.usage_top = Some(usage),
                        Slot::Response => self.usage_resp = Some(usage),
                    }
                }
                self.i = end;
            }
            _ => self.i = skip_value(self.s, start)?,
        }
        Some(())
    }
}

/// Counts the characters of the complete string starting at the quote `s[i]`, as
/// `Scanner::count_string` does; returns the index past the closing quote too.
fn count_whole_string(s: &[u8], i: usize) -> Option<(usize, u64)> {
    let mut i = i + 1;
    let mut chars = 0u64;
    let mut prev_high = false;
    loop {
        let k = string_stop(s.get(i..)?)?;
        if k > 0 {
            chars += count_chars(&s[i..i + k]);
            prev_high = false;
        }
        i += k;
        if s[i] == b'"' {
            return Some((i + 1, chars));
        }
        if *s.get(i + 1)? == b'u' {
            let code = s
                .get(i + 2..i + 6)?
                .iter()
                .fold(0u16, |code, &c| code << 4 | hex_val(c));
            if (0xDC00..=0xDFFF).contains(&code) && prev_high {
                prev_high = false;
            } else {
                chars += 1;
                prev_high = (0xD800..=0xDBFF).contains(&code);
            }
            i += 6;
        } else {
            chars += 1;
            prev_high = false;
            i += 2;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------------------------

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
/// arrives. Holds no event bytes: the only per-event state is the scanner's.
struct SseParser {
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
    usage: Option<Usage>,
    text_chars: u64,
    /// `[DONE]` seen: the rest of the stream is ignored.
    done: bool,
}

/// Longest data line start held for the one-shot path; beyond it, the line streams through the
/// resumable scanner instead (e.g. a huge `response.completed`), so memory stays bounded.
const MAX_HELD_LINE: usize = 64 * 1024;

impl SseParser {
    fn new() -> SseParser {
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
            text_chars: 0,
            done: false,
        }
    }

    fn feed(&mut self, s: &[u8]) {
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
        if !self.held.is_empty() || (!whole_line && self.scanner.lex == Lex::Start) {
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
        let ty: &[u8] = if sc.type_buf.is_empty() {
            &self.event_name
        } else {
            &sc.type_buf
        };
        let mut chars = sc.counts[CONTENT] + sc.counts[TEXT];
        if ty == b"response.output_text.delta" {
            chars += sc.counts[DELTA];
        }
        self.text_chars += chars;
        // The last reported usage wins: some providers report cumulative usage repeatedly.
        if let Some(usage) = sc.usage_top.or(sc.usage_resp) {
            self.usage = Some(usage);
        }
    }

    /// End of body: an unterminated last event still counts if its JSON is complete (some
    /// servers omit the final blank line); a cut one does not.
    fn finish(&mut self) {
        self.flush_held();
        if !self.done && self.data_lines > 0 && self.scanner.root_done {
            self.apply_event();
        }
        self.data_lines = 0;
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::fixtures::{u, CHAT, RESPONSES};

    /// Feeds `input` whole (the one-shot path) and byte by byte (the resumable state machine),
    /// checks both agree, and returns the answer.
    fn both_paths(kind: BodyKind, input: &str) -> (Option<Usage>, u64) {
        let mut whole = UsageExtractor::new(kind, ContentEncoding::Identity);
        whole.feed(input.as_bytes());
        let whole = (whole.finish(), whole.streamed_text_chars());
        let mut bytes = UsageExtractor::new(kind, ContentEncoding::Identity);
        for b in input.as_bytes() {
            bytes.feed(std::slice::from_ref(b));
        }
        let bytes = (bytes.finish(), bytes.streamed_text_chars());
        assert_eq!(whole, bytes, "whole vs byte by byte: {input}");
        whole
    }

    fn json_usage(body: &str) -> Option<Usage> {
        both_paths(BodyKind::Json, body).0
    }

    fn sse(stream: &str) -> (Option<Usage>, u64) {
        both_paths(BodyKind::Sse, stream)
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

    type Findings = ([u64; 3], Vec<u8>, Option<Usage>, Option<Usage>, bool);

    fn findings(sc: &Scanner) -> Findings {
        let f = (sc.counts, sc.type_buf.clone(), sc.usage_top, sc.usage_resp);
        (f.0, f.1, f.2, f.3, sc.root_done)
    }

    /// The SSE parser hands most documents to the one-shot path, so check the resumable state
    /// machine against it directly, at every split, on every event of the recorded streams.
    #[test]
    fn resumable_and_one_shot_agree() {
        let mut docs: Vec<String> = [CHAT, RESPONSES]
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

    #[test]
    fn never_panics_on_garbage() {
        let inputs: [&[u8]; 8] = [
            b"\\\\\"\"{[[[]]]}}}",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"\\u12",
            b"data: {\"usage\":{\"prompt_tokens\":1}\ndata: ]]]]\n\n",
            b"\xff\xfe\x00data:\r\r\r\n\n",
            b"{\"usage\":{\"prompt_tokens\":[[[[[[[[[[",
            b"{\"choices\":[[[[{\"delta\":{\"content\":\"\\ud83d",
            b"{\"a\":\"\\",
            b":::::\n\n\n\n",
        ];
        for input in inputs {
            for kind in [BodyKind::Json, BodyKind::Sse] {
                let mut x = UsageExtractor::new(kind, ContentEncoding::Identity);
                for b in input {
                    x.feed(std::slice::from_ref(b));
                }
                x.finish();
            }
        }
    }
}
