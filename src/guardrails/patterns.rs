//! The `regex` detector: a guardrail's patterns, in the `regex` crate's syntax, compiled into one
//! multi-pattern automaton and run in one pass.
//!
//! - The engine runs in time linear in the text, whatever the pattern: `(a+)+$` cannot blow up.
//!   The price is that backreferences and look-around are refused, with a message saying so.
//! - A pattern that can match the empty string is refused: it would fire on every text.
//! - Patterns are case-sensitive unless they say `(?i)`. `\b`, `\w` and `\d` are Unicode-aware,
//!   as in the `regex` crate; `(?-u:\b)` is faster on non-ASCII text.
//! - Matches of one guardrail do not overlap: where two of its patterns match at the same place,
//!   the one listed first wins.

use super::GuardrailError;
use regex_automata::meta;
use regex_syntax::ast::ErrorKind;
use regex_syntax::hir::Hir;
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct Patterns {
    regex: meta::Regex,
}

impl Patterns {
    pub(crate) fn compile(
        guardrail: &Arc<str>,
        patterns: &[String],
    ) -> Result<Patterns, GuardrailError> {
        if patterns.is_empty() {
            return Err(GuardrailError::EmptyList {
                guardrail: guardrail.clone(),
                what: "regex",
            });
        }
        let mut hirs = Vec::with_capacity(patterns.len());
        for (index, pattern) in patterns.iter().enumerate() {
            let hir = parse(guardrail, index, pattern)?;
            if hir.properties().minimum_len() == Some(0) {
                return Err(GuardrailError::MatchesEmpty {
                    guardrail: guardrail.clone(),
                    index,
                    pattern: pattern.clone(),
                });
            }
            hirs.push(hir);
        }
        let regex = build(&hirs).map_err(|reason| GuardrailError::TooLarge {
            guardrail: guardrail.clone(),
            reason,
        })?;
        Ok(Patterns { regex })
    }

    /// Calls `found(pattern index, start, end)` for every match.
    pub(crate) fn find(&self, text: &str, mut found: impl FnMut(u32, usize, usize)) {
        for m in self.regex.find_iter(text) {
            found(m.pattern().as_u32(), m.start(), m.end());
        }
    }
}

fn parse(guardrail: &Arc<str>, index: usize, pattern: &str) -> Result<Hir, GuardrailError> {
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|error| {
            let unsupported = match &error {
                regex_syntax::Error::Parse(e) => match e.kind() {
                    ErrorKind::UnsupportedBackreference => Some(
                        "backreferences (\\1, \\k<name>) cannot run in linear time, so the regex engine has none; \
                         match the repeated text explicitly or use a keywords guardrail",
                    ),
                    ErrorKind::UnsupportedLookAround => Some(
                        "look-around ((?=…), (?!…), (?<=…), (?<!…)) cannot run in linear time, so the regex engine \
                         has none; match the surrounding text, or use \\b for word boundaries",
                    ),
                    _ => None,
                },
                _ => None,
            };
            match unsupported {
                Some(reason) => GuardrailError::Unsupported {
                    guardrail: guardrail.clone(),
                    index,
                    pattern: pattern.to_owned(),
                    reason,
                },
                None => GuardrailError::InvalidRegex {
                    guardrail: guardrail.clone(),
                    index,
                    pattern: pattern.to_owned(),
                    reason: short_reason(&error),
                },
            }
        })
}

/// regex-syntax's Display draws the pattern with a caret under the fault over several lines;
/// a one-line config error wants the kind alone.
fn short_reason(error: &regex_syntax::Error) -> String {
    match error {
        regex_syntax::Error::Parse(e) => e.kind().to_string(),
        regex_syntax::Error::Translate(e) => e.kind().to_string(),
        other => other.to_string(),
    }
}

/// One leftmost-first automaton over several patterns, each match naming its pattern.
/// The error is its message: every caller either reports it or treats it as a bug.
pub(crate) fn build(hirs: &[Hir]) -> Result<meta::Regex, String> {
    meta::Regex::builder()
        .build_many_from_hir(hirs)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(patterns: &[&str]) -> Result<Patterns, GuardrailError> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        Patterns::compile(&Arc::from("ticket-ids"), &patterns)
    }

    fn hits(patterns: &[&str], text: &str) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        compile(patterns)
            .unwrap()
            .find(text, |i, s, e| out.push((i, text[s..e].to_string())));
        out
    }

    #[test]
    fn all_patterns_in_one_pass_each_match_naming_its_pattern() {
        assert_eq!(
            hits(
                &[r"TCK-\d{6}", r"(?i)case #\d+"],
                "see TCK-123456 and Case #77, not TCK-12345"
            ),
            vec![(0, "TCK-123456".to_string()), (1, "Case #77".to_string())]
        );
    }

    #[test]
    fn backreferences_and_look_around_are_refused_saying_why() {
        let err = compile(&[r"ok", r"(\w+) \1"]).unwrap_err();
        assert!(matches!(err, GuardrailError::Unsupported { index: 1, .. }));
        let text = err.to_string();
        assert!(
            text.contains("ticket-ids") && text.contains(r"(\w+) \1"),
            "{text}"
        );
        assert!(text.contains("backreferences"), "{text}");
        let err = compile(&[r"foo(?=bar)"]).unwrap_err().to_string();
        assert!(err.contains("look-around"), "{err}");
    }

    #[test]
    fn invalid_and_empty_matching_patterns_are_refused() {
        let err = compile(&[r"TCK-(\d{6}"]).unwrap_err();
        assert!(matches!(err, GuardrailError::InvalidRegex { index: 0, .. }));
        assert!(!err.to_string().contains('\n'), "{err}");
        assert!(matches!(
            compile(&[r"x?"]).unwrap_err(),
            GuardrailError::MatchesEmpty { index: 0, .. }
        ));
        assert!(matches!(
            compile(&[]).unwrap_err(),
            GuardrailError::EmptyList { .. }
        ));
    }

    #[test]
    fn nested_quantifiers_run_in_linear_time_on_a_megabyte() {
        // A backtracking engine takes exponential time here; this would never finish.
        let text = "a".repeat(1 << 20) + "!";
        let mut n = 0;
        compile(&[r"(a+)+$"]).unwrap().find(&text, |_, _, _| n += 1);
        assert_eq!(n, 0);
        let text = "a".repeat(1 << 20);
        let mut spans = Vec::new();
        compile(&[r"(a+)+$"])
            .unwrap()
            .find(&text, |_, s, e| spans.push((s, e)));
        assert_eq!(spans, vec![(0, 1 << 20)]);
    }
}
