//! The scanner's fast path: the same walk as its resumable state machine, over a document known
//! to sit whole in one slice, by recursive descent.

use super::{count_chars, role_for, Ctx, Role, Slot, DELTA, MAX_CAPTURE};
use crate::json::{
    hex_val, skip_string, skip_string_noting_escapes, skip_value, skip_ws, string_stop,
};
use crate::usage::object::{parse_usage_at, Reported};

/// The one-shot counterpart of [`Scanner`](super::Scanner) over a complete slice: recursive
/// descent along the tracked containers (at most [`MAX_CHAIN`](super::MAX_CHAIN) deep, so
/// recursion is bounded), [`skip_value`] for everything else. Strict: any syntax it does not
/// expect makes it give up (`None`), so that malformed input is always left to the tolerant
/// state machine, and on well-formed input the two agree (the split-everywhere property tests
/// exercise both paths against one oracle).
pub(super) struct OneShot<'a> {
    s: &'a [u8],
    i: usize,
    sse: bool,
    pub(super) counts: [u64; 3],
    /// Where the `type` string's contents lie in the slice.
    pub(super) ty: Option<(usize, usize)>,
    pub(super) usage_top: Option<Reported>,
    pub(super) usage_resp: Option<Reported>,
    /// Where the root's first tracked member starts (its key's quote), when members before it
    /// were skipped: the end of what
    /// [`Scanner::skipped_head`](super::Scanner::skipped_head) may remember.
    pub(super) first_tracked: Option<usize>,
}

impl<'a> OneShot<'a> {
    /// A walk over `s` from `i`, where [`object`](Self::object) or [`members`](Self::members)
    /// will start.
    pub(super) fn new(s: &'a [u8], i: usize, sse: bool) -> Self {
        OneShot {
            s,
            i,
            sse,
            counts: [0; 3],
            ty: None,
            usage_top: None,
            usage_resp: None,
            first_tracked: None,
        }
    }

    fn ws(&mut self) {
        self.i = skip_ws(self.s, self.i);
    }

    fn byte(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// At `{`.
    pub(super) fn object(&mut self, ctx: Ctx) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.byte()? == b'}' {
            self.i += 1;
            return Some(());
        }
        self.members(ctx)
    }

    /// At the opening quote of a member's key; reads the rest of the object.
    pub(super) fn members(&mut self, ctx: Ctx) -> Option<()> {
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
            (b'{', Role::Count(DELTA)) => self.object(Ctx::BlockDelta)?,
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
