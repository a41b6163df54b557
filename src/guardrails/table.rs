//! A table of built-in patterns with validators, run as one automaton: the shape shared by the
//! PII and secrets detectors. Most candidates a pattern finds are settled by its validator (a
//! checksum, a range check); a candidate that fails it must not hide another kind's match at
//! the same place, so the other patterns are tried anchored there before the search moves on.

use super::text::next_boundary;
use regex_automata::{meta, Anchored, Input, PatternID};
use regex_syntax::hir::Hir;
use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Range;
use std::sync::{LazyLock, Mutex};

/// A validator gets the whole text and a candidate's span, and answers the span to report (a
/// validator may trim it) or `None` to reject the candidate.
pub(crate) type Validate = fn(&str, usize, usize) -> Option<usize>;

#[derive(Debug)]
pub(crate) struct Entry<K> {
    pub kind: K,
    pub pattern: &'static str,
    pub validate: Validate,
}

#[derive(Debug, Clone)]
pub(crate) struct Table<K: 'static> {
    regex: meta::Regex,
    /// Automaton pattern -> its entry.
    entries: Vec<&'static Entry<K>>,
}

impl<K: Copy + Eq + Hash + Send + Sync + 'static> Table<K> {
    /// The automaton for the entries whose kind is selected, in the table's priority order.
    /// Built-in patterns are known good, so a build failure is a bug caught by the tests; the
    /// result is cached per selection because every key's scanner would otherwise rebuild it.
    pub(crate) fn select(
        cache: &'static LazyLock<Mutex<HashMap<Vec<K>, Table<K>>>>,
        table: &'static [Entry<K>],
        selected: &[K],
    ) -> Table<K> {
        let entries: Vec<&'static Entry<K>> = table
            .iter()
            .filter(|e| selected.contains(&e.kind))
            .collect();
        let mut kinds: Vec<K> = Vec::new();
        for e in &entries {
            if !kinds.contains(&e.kind) {
                kinds.push(e.kind);
            }
        }
        let mut cache = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .entry(kinds)
            .or_insert_with(|| {
                let hirs: Vec<Hir> = entries
                    .iter()
                    .map(|e| regex_syntax::parse(e.pattern).expect("built-in pattern parses"))
                    .collect();
                let regex = super::patterns::build(&hirs).expect("built-in patterns compile");
                Table { regex, entries }
            })
            .clone()
    }

    /// Calls `found(kind, start, end)` for each validated match, left to right, not
    /// overlapping.
    pub(crate) fn find(&self, text: &str, found: impl FnMut(K, usize, usize)) {
        self.find_in(text, 0..text.len(), found)
    }

    /// The same for the matches inside `span`; the text around it is still seen by `\b` and
    /// by the validators.
    pub(crate) fn find_in(
        &self,
        text: &str,
        span: Range<usize>,
        mut found: impl FnMut(K, usize, usize),
    ) {
        let mut at = span.start;
        while at <= span.end {
            let Some(m) = self.regex.search(&Input::new(text).span(at..span.end)) else {
                return;
            };
            let entry = self.entries[m.pattern().as_usize()];
            let valid = match (entry.validate)(text, m.start(), m.end()) {
                Some(end) => Some((entry.kind, end)),
                None => self.other_at(text, m.start(), span.end, m.pattern()),
            };
            match valid {
                Some((kind, end)) => {
                    found(kind, m.start(), end);
                    at = end.max(next_boundary(text, m.start()));
                }
                None => at = next_boundary(text, m.start()),
            }
        }
    }

    /// The first other pattern, in priority order, with a valid match starting at `start`.
    fn other_at(
        &self,
        text: &str,
        start: usize,
        end: usize,
        failed: PatternID,
    ) -> Option<(K, usize)> {
        for (i, entry) in self.entries.iter().enumerate() {
            let pid = PatternID::new_unchecked(i);
            if pid == failed {
                continue;
            }
            let input = Input::new(text)
                .span(start..end)
                .anchored(Anchored::Pattern(pid));
            if let Some(m) = self.regex.search(&input) {
                if let Some(end) = (entry.validate)(text, m.start(), m.end()) {
                    return Some((entry.kind, end));
                }
            }
        }
        None
    }
}

/// For candidates the pattern alone settles.
pub(crate) fn accept(_: &str, _: usize, end: usize) -> Option<usize> {
    Some(end)
}
