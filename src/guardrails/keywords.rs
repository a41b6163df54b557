//! The `keywords` detector: literal words and phrases, case-insensitive, in one pass however
//! long the list.
//!
//! - The list is one automaton run over the text lower-cased in stack blocks, so that literal
//!   search can skip ahead to candidates: up to 64 keywords, the regex engine's (SIMD Teddy,
//!   with the word test inside the automaton); beyond, aho-corasick, whose build stays fast for
//!   lists of any length (the regex engine's does not).
//! - Case folding is ASCII's. A keyword with non-ASCII letters also matches its all-lowercase
//!   and all-uppercase forms (`Über` matches `über` and `ÜBER`), not mixed-case ones.
//! - `whole_word` (`match: word`) needs a non-word character (or the text's edge) before a
//!   keyword that begins with a word character, and after one that ends with one, word
//!   characters being letters, digits and `_` in any script: `falcon` matches in `falcon-7` and
//!   `(falcon)` but not in `falconry` or `falconé`. Substring mode (`match: substring`) matches
//!   anywhere.
//! - A keyword failing the word test does not hide another that passes it: `project` is found
//!   in `project-falcons` when `project-falcon` is listed too.
//! - A keyword may be at most 1,024 bytes long.

use super::text::{char_after, char_before, folded_blocks, is_word, MAX_FOLDED_MATCH};
use super::GuardrailError;
use aho_corasick::{AhoCorasick, MatchKind};
use regex_automata::{meta, Input};
use regex_syntax::hir::Hir;
use std::sync::Arc;

/// Lists up to this many keyword forms compile to a regex automaton; longer ones to
/// aho-corasick.
const SHORT_LIST: usize = 64;

#[derive(Debug)]
enum Automaton {
    /// Leftmost-first, the ASCII word test inside; the Unicode one checked after.
    Regex(meta::Regex),
    /// Overlapping, so that a keyword failing the word test hides no other.
    AhoCorasick(AhoCorasick),
}

#[derive(Debug)]
pub(crate) struct Keywords {
    automaton: Automaton,
    /// Automaton pattern -> keyword index: extra case forms of non-ASCII keywords map back.
    keyword_of: Vec<u32>,
    whole_word: bool,
    /// Bytes in the longest pattern: how much the lower-cased blocks must overlap.
    longest: usize,
}

impl Keywords {
    pub(crate) fn compile(
        guardrail: &Arc<str>,
        words: &[String],
        whole_word: bool,
    ) -> Result<Keywords, GuardrailError> {
        if words.is_empty() {
            return Err(GuardrailError::EmptyList {
                guardrail: guardrail.clone(),
                what: "keywords",
            });
        }
        let mut forms: Vec<String> = Vec::with_capacity(words.len());
        let mut keyword_of = Vec::with_capacity(words.len());
        let mut longest = 0;
        for (index, word) in words.iter().enumerate() {
            if word.is_empty() {
                return Err(GuardrailError::EmptyKeyword {
                    guardrail: guardrail.clone(),
                    index,
                });
            }
            // The text is searched ASCII-lower-cased, so the keywords are too; a non-ASCII
            // keyword adds its Unicode lower- and upper-case forms, lower-cased the same way.
            let first = forms.len();
            for form in [word.clone(), word.to_lowercase(), word.to_uppercase()] {
                let form = form.to_ascii_lowercase();
                if !forms[first..].contains(&form) {
                    longest = longest.max(form.len());
                    forms.push(form);
                    keyword_of.push(index as u32);
                }
            }
        }
        if longest > MAX_FOLDED_MATCH {
            return Err(GuardrailError::KeywordTooLong {
                guardrail: guardrail.clone(),
                limit: MAX_FOLDED_MATCH,
            });
        }
        let too_large = |reason: String| GuardrailError::TooLarge {
            guardrail: guardrail.clone(),
            reason,
        };
        let automaton = if forms.len() <= SHORT_LIST {
            let hirs: Vec<Hir> = forms.iter().map(|f| literal(f, whole_word)).collect();
            Automaton::Regex(super::patterns::build(&hirs).map_err(too_large)?)
        } else {
            let built = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&forms)
                .map_err(|e| too_large(e.to_string()))?;
            Automaton::AhoCorasick(built)
        };
        Ok(Keywords {
            automaton,
            keyword_of,
            whole_word,
            longest,
        })
    }

    /// Calls `found(keyword index, start, end)` for every match.
    pub(crate) fn find(&self, text: &str, mut found: impl FnMut(u32, usize, usize)) {
        folded_blocks(text, self.longest, |block, base, from, until| {
            match &self.automaton {
                Automaton::Regex(regex) => {
                    let mut at = from;
                    while at < until {
                        let input = Input::new(block).span(at..block.len());
                        let Some(m) = regex.search(&input) else {
                            return;
                        };
                        if m.start() >= until {
                            return;
                        }
                        let (start, end) = (base + m.start(), base + m.end());
                        if self.whole_word && !stands_alone(text, start, end) {
                            // A non-ASCII letter beside it, which the automaton's ASCII boundary
                            // cannot see: look again from the next byte.
                            at = m.start() + 1;
                            continue;
                        }
                        found(self.keyword_of[m.pattern().as_usize()], start, end);
                        at = m.end();
                    }
                }
                Automaton::AhoCorasick(ac) => {
                    let input = aho_corasick::Input::new(block).span(from..block.len());
                    for m in ac.find_overlapping_iter(input) {
                        let (start, end) = (base + m.start(), base + m.end());
                        if m.start() >= until
                            || (self.whole_word && !stands_alone(text, start, end))
                        {
                            continue;
                        }
                        found(self.keyword_of[m.pattern().as_usize()], start, end);
                    }
                }
            }
        });
    }
}

/// The keyword as a literal; for whole words, with an ASCII word boundary at each edge that is
/// an ASCII word character (the Unicode test is [`stands_alone`]'s: a Unicode boundary would
/// stop the fast automaton on non-ASCII text).
fn literal(form: &str, whole_word: bool) -> Hir {
    let boundary = || Hir::look(regex_syntax::hir::Look::WordAscii);
    let ascii_word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut parts = Vec::with_capacity(3);
    if whole_word && ascii_word(form.chars().next()) {
        parts.push(boundary());
    }
    parts.push(Hir::literal(form.as_bytes()));
    if whole_word && ascii_word(form.chars().next_back()) {
        parts.push(boundary());
    }
    Hir::concat(parts)
}

fn stands_alone(text: &str, start: usize, end: usize) -> bool {
    let matched = &text[start..end];
    let starts_word = matched.chars().next().is_some_and(is_word);
    let ends_word = matched.chars().next_back().is_some_and(is_word);
    (!starts_word || !char_before(text, start).is_some_and(is_word))
        && (!ends_word || !char_after(text, end).is_some_and(is_word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(words: &[&str], whole_word: bool, text: &str) -> Vec<(u32, String)> {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let k = Keywords::compile(&Arc::from("t"), &words, whole_word).unwrap();
        let mut out = Vec::new();
        k.find(text, |i, s, e| out.push((i, text[s..e].to_string())));
        out
    }

    #[test]
    fn case_insensitive_in_both_modes() {
        assert_eq!(
            hits(&["project-falcon"], true, "About PROJECT-Falcon today"),
            vec![(0, "PROJECT-Falcon".to_string())]
        );
        assert_eq!(
            hits(&["Internal Only"], false, "this is INTERNAL ONLY."),
            vec![(0, "INTERNAL ONLY".to_string())]
        );
    }

    #[test]
    fn whole_word_refuses_substrings_that_substring_mode_accepts() {
        assert!(hits(&["falcon"], true, "falconry and xfalcon and falcon_x").is_empty());
        assert_eq!(hits(&["falcon"], false, "falconry").len(), 1);
        assert_eq!(
            hits(&["falcon"], true, "(falcon), falcon-7, falcon").len(),
            3
        );
        // Boundaries count in any script: an accented letter is a word character.
        assert!(hits(&["cafe"], true, "cafeé").is_empty());
    }

    #[test]
    fn a_keyword_failing_the_word_test_does_not_hide_an_overlapping_one() {
        let found = hits(&["project-falcons", "project"], true, "project-falconsx");
        assert_eq!(found, vec![(1, "project".to_string())]);
        let found = hits(&["falcon"], true, "falconé falcon");
        assert_eq!(found, vec![(0, "falcon".to_string())]);
    }

    #[test]
    fn matches_across_the_internal_blocks_are_found_once() {
        let text = format!("{}PROJECT-FALCON{}", "x ".repeat(4090), " y".repeat(5000));
        let found = hits(&["project-falcon"], true, &text);
        assert_eq!(found, vec![(0, "PROJECT-FALCON".to_string())]);
        let many = "falcon ".repeat(5000);
        assert_eq!(hits(&["falcon"], true, &many).len(), 5000);
    }

    #[test]
    fn overlong_keywords_are_refused() {
        let long = "x".repeat(MAX_FOLDED_MATCH + 1);
        assert!(matches!(
            Keywords::compile(&Arc::from("k"), &[long], true),
            Err(GuardrailError::KeywordTooLong { .. })
        ));
    }

    #[test]
    fn keywords_with_punctuation_at_their_edges_need_no_boundary_there() {
        assert_eq!(hits(&["c++"], true, "we use c++11 here").len(), 1);
        assert!(hits(&["c++"], true, "abc++").is_empty());
    }

    #[test]
    fn non_ascii_keywords_match_their_lower_and_upper_forms() {
        assert_eq!(hits(&["Über"], true, "über ÜBER Über").len(), 3);
    }

    #[test]
    fn long_lists_report_the_right_index() {
        let words: Vec<String> = (0..5000).map(|i| format!("codeword{i}")).collect();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let found = hits(
            &refs,
            true,
            "nothing here but CODEWORD4321 and codeword43210x",
        );
        assert_eq!(found, vec![(4321, "CODEWORD4321".to_string())]);
    }

    #[test]
    fn empty_lists_and_empty_keywords_are_refused() {
        let name: Arc<str> = Arc::from("banned");
        assert!(matches!(
            Keywords::compile(&name, &[], true),
            Err(GuardrailError::EmptyList { .. })
        ));
        assert_eq!(
            Keywords::compile(&name, &["ok".into(), String::new()], true).unwrap_err(),
            GuardrailError::EmptyKeyword {
                guardrail: name,
                index: 1
            }
        );
    }
}
