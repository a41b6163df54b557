//! JSON read straight from its bytes, for the few fields keygate acts on: skipping a value by
//! its structure alone (strings searched word- or SIMD-wise, containers by bracket counting),
//! walking an object's members, and comparing keys without decoding them unless they hold an
//! escape. Nothing skipped is parsed or validated, and nothing allocates.
//!
//! Used on response bodies and SSE events by `usage` (whose resumable
//! scanner shares the byte-level pieces) and on request bodies by `proxy::body`.

use memchr::memchr2;
use std::borrow::Cow;

/// A raw key with its escapes decoded; borrowed unless it has any (which is never, in practice).
pub(crate) fn key_name(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'\\') {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(
            unescape_key(raw)
                .map(String::into_bytes)
                .unwrap_or_default(),
        )
    }
}

#[inline]
pub(crate) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Bytes that end a number or literal.
#[inline]
pub(crate) fn is_delim(c: u8) -> bool {
    matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
}

/// The next `"` or `\\` in a string body. Most JSON strings (keys, ids, model names, short
/// deltas) end within a few dozen bytes, where memchr's per-call setup costs more than the
/// search: look eight bytes at a time first (SWAR), then hand long strings to memchr's SIMD.
#[inline]
pub(crate) fn string_stop(s: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    let mut i = 0;
    while i + 8 <= s.len().min(SHORT) {
        let word = u64::from_le_bytes([
            s[i],
            s[i + 1],
            s[i + 2],
            s[i + 3],
            s[i + 4],
            s[i + 5],
            s[i + 6],
            s[i + 7],
        ]);
        let hits = zero_bytes(word ^ (u64::MAX / 255 * u64::from(b'"')))
            | zero_bytes(word ^ (u64::MAX / 255 * u64::from(b'\\')));
        if hits != 0 {
            return Some(i + hits.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    if s.len() > SHORT {
        return memchr2(b'"', b'\\', &s[i..]).map(|k| k + i);
    }
    s[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|k| k + i)
}

/// High bit set in each zero byte of `v`. Bytes above a zero byte may show false positives
/// (borrows), but the lowest set bit always marks the first zero byte, which is all we use.
#[inline]
pub(crate) fn zero_bytes(v: u64) -> u64 {
    const LO: u64 = u64::MAX / 255;
    v.wrapping_sub(LO) & !v & (LO << 7)
}

pub(crate) fn hex_val(c: u8) -> u16 {
    match c {
        b'0'..=b'9' => u16::from(c - b'0'),
        b'a'..=b'f' => u16::from(c - b'a' + 10),
        b'A'..=b'F' => u16::from(c - b'A' + 10),
        _ => 0,
    }
}

/// Escaped keys longer than this are not decoded: every key keygate looks for is under 40
/// characters, six bytes each at most when `\u`-escaped.
const MAX_ESCAPED_KEY: usize = 256;

/// Unescapes a raw JSON key (the bytes between its quotes). Keys with escapes are exotic, so
/// this slow path through serde_json is fine.
pub(crate) fn unescape_key(raw: &[u8]) -> Option<String> {
    if raw.len() > MAX_ESCAPED_KEY {
        return None;
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

/// Whether a raw key (between quotes, escapes not decoded) names `name`.
pub(crate) fn key_is(raw: &[u8], name: &str) -> bool {
    if !raw.contains(&b'\\') {
        raw == name.as_bytes()
    } else {
        unescape_key(raw).is_some_and(|k| k == name)
    }
}

#[inline]
pub(crate) fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_ws(s[i]) {
        i += 1;
    }
    i
}

/// `s[i]` is an opening quote; returns the index just past the closing one.
#[inline]
pub(crate) fn skip_string(s: &[u8], i: usize) -> Option<usize> {
    skip_string_noting_escapes(s, i).map(|(end, _)| end)
}

/// `s[i]` is an opening quote; returns the index just past the closing one, and whether the
/// string has an escape.
#[inline]
pub(crate) fn skip_string_noting_escapes(s: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut i = i + 1;
    let mut escaped = false;
    loop {
        i += string_stop(s.get(i..)?)?;
        if s[i] == b'"' {
            return Some((i + 1, escaped));
        }
        escaped = true;
        i += 2;
    }
}

/// `s[i]` is the first byte of a value; returns the index just past it.
#[inline]
pub(crate) fn skip_value(s: &[u8], i: usize) -> Option<usize> {
    match *s.get(i)? {
        b'"' => skip_string(s, i),
        b'{' | b'[' => {
            let mut depth = 0u32;
            let mut i = i;
            loop {
                match *s.get(i)? {
                    b'"' => {
                        i = skip_string(s, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        b'}' | b']' | b',' | b':' => None,
        _ => Some(
            s[i..]
                .iter()
                .position(|&c| is_delim(c))
                .map_or(s.len(), |k| i + k),
        ),
    }
}

/// Walks the members of the object opening at `s[open]`: `value` gets each raw key and the
/// index where its value starts, and returns the index just past that value (it may parse the
/// value itself, or [`skip_value`] it). Returns the index just past the object's `}`, or `None`
/// if it is malformed or incomplete.
pub(crate) fn for_each_member(
    s: &[u8],
    open: usize,
    mut value: impl FnMut(&[u8], usize) -> Option<usize>,
) -> Option<usize> {
    let mut i = skip_ws(s, open + 1);
    if *s.get(i)? == b'}' {
        return Some(i + 1);
    }
    loop {
        if *s.get(i)? != b'"' {
            return None;
        }
        let key_end = skip_string(s, i)?;
        let colon = skip_ws(s, key_end);
        if *s.get(colon)? != b':' {
            return None;
        }
        let v = skip_ws(s, colon + 1);
        if matches!(*s.get(v)?, b'}' | b']' | b',' | b':') {
            return None;
        }
        i = skip_ws(s, value(&s[i + 1..key_end - 1], v)?);
        match *s.get(i)? {
            b',' => i = skip_ws(s, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// One member of an object, as byte offsets into the document.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    /// The key's opening quote.
    pub start: usize,
    /// The key's raw bytes, between the quotes.
    pub key: (usize, usize),
    pub value: (usize, usize),
}

/// The members of the object opening at `s[open]`, in order. After the last one,
/// [`complete`](Members::complete) tells whether the object was well formed up to its `}`.
/// Values are skipped by structure alone: what is inside a value a caller does not read is not
/// validated.
pub(crate) struct Members<'a> {
    s: &'a [u8],
    i: usize,
    first: bool,
    state: MembersState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MembersState {
    Open,
    Closed,
    Broken,
}

impl<'a> Members<'a> {
    pub fn new(s: &'a [u8], open: usize) -> Members<'a> {
        Members {
            s,
            i: open + 1,
            first: true,
            state: MembersState::Open,
        }
    }

    pub fn complete(&self) -> bool {
        self.state == MembersState::Closed
    }

    /// The index just past the object's `}`, once [`complete`](Members::complete).
    pub fn end(&self) -> Option<usize> {
        self.complete().then_some(self.i)
    }

    fn member(&mut self) -> Option<Member> {
        let s = self.s;
        let start = skip_ws(s, self.i);
        if s.get(start) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(s, start)?;
        let colon = skip_ws(s, key_end);
        if s.get(colon) != Some(&b':') {
            return None;
        }
        let v = skip_ws(s, colon + 1);
        let v_end = skip_value(s, v)?;
        self.i = v_end;
        Some(Member {
            start,
            key: (start + 1, key_end - 1),
            value: (v, v_end),
        })
    }
}

impl Iterator for Members<'_> {
    type Item = Member;

    fn next(&mut self) -> Option<Member> {
        if self.state != MembersState::Open {
            return None;
        }
        let i = skip_ws(self.s, self.i);
        match self.s.get(i) {
            Some(b'}') => {
                self.state = MembersState::Closed;
                self.i = i + 1;
                return None;
            }
            Some(b',') if !self.first => self.i = i + 1,
            Some(b'"') if self.first => self.i = i,
            _ => {
                self.state = MembersState::Broken;
                return None;
            }
        }
        self.first = false;
        let member = self.member();
        if member.is_none() {
            self.state = MembersState::Broken;
        }
        member
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_walks_an_object_and_tells_whether_it_closed() {
        let doc = br#" { "a" : [1,{"b":"}"}] , "c\"d":null,"e":-1.5e3 } "#;
        let mut m = Members::new(doc, 1);
        let keys: Vec<String> = m
            .by_ref()
            .map(|m| unescape_key(&doc[m.key.0..m.key.1]).unwrap())
            .collect();
        assert_eq!(keys, ["a", "c\"d", "e"]);
        assert!(m.complete());
        let mut m = Members::new(br#"{"a":1,}"#, 0);
        assert_eq!(m.by_ref().count(), 1);
        assert!(!m.complete());
    }

    #[test]
    fn skipped_values_end_where_their_structure_does() {
        let doc = br#"["a\"]b",{"c":[1,2]},-1.5e3,true] "#;
        assert_eq!(skip_value(doc, 0), Some(doc.len() - 1));
        assert_eq!(skip_value(doc, 1), Some(8));
        assert_eq!(
            skip_value(br#"{"a":"#, 0),
            None,
            "an unclosed object has no end"
        );
    }
}
