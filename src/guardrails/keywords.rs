//! The `keywords` detector: literal words and phrases, case-insensitive, in one aho-corasick
//! pass however long the list.
//!
//! - Case folding is ASCII's. A keyword with non-ASCII letters also matches its all-lowercase
//!   and all-uppercase forms (`Über` matches `über` and `ÜBER`), not mixed-case ones.
//! - `whole_word` (`match: word`) needs a non-word character (or the text's edge) before a
//!   keyword that begins with a word character, and after one that ends with one, word
//!   characters being letters, digits and `_` in any script: `falcon` matches in `falcon-7` and
//!   `(falcon)` but not in `falconry`. Substring mode (`match: substring`) matches anywhere.
//! - Matches may overlap (`project` and `project-falcon` both report in `project-falcon`), so
//!   that a keyword failing the word test cannot hide another that passes it.

use super::text::{char_after, char_before, is_word};
use super::GuardrailError;
use aho_corasick::{AhoCorasick, MatchKind};
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct Keywords {
    automaton: AhoCorasick,
    /// Automaton pattern -> keyword index: extra case forms of non-ASCII keywords map back.
    keyword_of: Vec<u32>,
    whole_word: bool,
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
        let mut patterns = Vec::with_capacity(words.len());
        let mut keyword_of = Vec::with_capacity(words.len());
        for (index, word) in words.iter().enumerate() {
            if word.is_empty() {
                return Err(GuardrailError::EmptyKeyword {
                    guardrail: guardrail.clone(),
                    index,
                });
            }
            let first = patterns.len();
            patterns.push(word.clone());
            keyword_of.push(index as u32);
            if !word.is_ascii() {
                for form in [word.to_lowercase(), word.to_uppercase()] {
                    if !patterns[first..]
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(&form))
                    {
                        patterns.push(form);
                        keyword_of.push(index as u32);
                    }
                }
            }
        }
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .map_err(|e| GuardrailError::TooLarge {
                guardrail: guardrail.clone(),
                reason: e.to_string(),
            })?;
        Ok(Keywords {
            automaton,
            keyword_of,
            whole_word,
        })
    }

    /// Calls `found(keyword index, start, end)` for every match.
    pub(crate) fn find(&self, text: &str, mut found: impl FnMut(u32, usize, usize)) {
        for m in self.automaton.find_overlapping_iter(text) {
            if self.whole_word && !stands_alone(text, m.start(), m.end()) {
                continue;
            }
            found(self.keyword_of[m.pattern().as_usize()], m.start(), m.end());
        }
    }
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
