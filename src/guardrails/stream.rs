//! Scanning a text that arrives in deltas (a streamed response), reporting each match once and
//! as soon as it cannot grow any more.
//!
//! Each delta is scanned together with the last [`LOOK_BEHIND`] bytes before it, so a match
//! that straddles deltas is found whole when it is at most that long. A longer match crossing a
//! border is found from the part inside the window, when that part still matches on its own (a
//! PEM block is found by its header), or not at all. A match that reaches the end of what has
//! arrived is held back until the next delta (or [`StreamScanner::finish`]) shows whether it
//! continues, so it is reported once, whole. Prompt-injection phrasings are scored over the
//! whole stream: once the score reaches the threshold, the phrasings held so far are reported
//! and later ones as they come.
//!
//! Spans are offsets in the whole stream (the concatenated deltas). Each delta costs a scan of
//! the delta plus the look-behind: feeding larger deltas is cheaper per byte.
//!
//! The state does not hold the [`Scanner`], so that a request context can keep it beside the
//! policy snapshot the scanner lives in; every call must pass the same scanner.

use super::injection;
use super::scanner::Engine;
use super::{Finding, Findings, Scanner, Side};

/// Bytes of earlier text scanned again with each delta: longer than any credential, address
/// or phrasing the detectors look for, except PEM blocks and unusually long JWTs.
pub const LOOK_BEHIND: usize = 1024;

/// One stream's scanning state. Create one per streamed response.
#[derive(Debug)]
pub struct StreamScanner {
    side: Side,
    /// The look-behind followed by the newest delta.
    window: String,
    /// Stream offset of `window[0]`.
    window_start: usize,
    /// Every match ending at or before this stream offset has been reported.
    done_until: usize,
    /// Per guardrail: the prompt-injection phrasings seen so far, and those held below the
    /// threshold (empty for other detectors).
    injection: Vec<InjectionState>,
    scratch: Vec<(Finding, u32)>,
}

#[derive(Debug, Default)]
struct InjectionState {
    phrasings: u32,
    fired: bool,
    pending: Vec<Finding>,
}

impl StreamScanner {
    pub fn new(side: Side) -> StreamScanner {
        StreamScanner {
            side,
            window: String::new(),
            window_start: 0,
            done_until: 0,
            injection: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Scans one more delta; appends to `out` the matches that this delta completed.
    pub fn push(&mut self, scanner: &Scanner, delta: &str, out: &mut Findings) {
        if delta.is_empty() {
            return;
        }
        self.window.push_str(delta);
        self.scan(scanner, false, out);
        let end = self.window_start + self.window.len();
        // Everything ending before the end was reported; what ends at it is held.
        self.done_until = end - 1;
        if self.window.len() > LOOK_BEHIND {
            let mut cut = self.window.len() - LOOK_BEHIND;
            while !self.window.is_char_boundary(cut) {
                cut += 1;
            }
            self.window.drain(..cut);
            self.window_start += cut;
        }
    }

    /// Ends the stream: reports the matches held back because they reached its end.
    pub fn finish(&mut self, scanner: &Scanner, out: &mut Findings) {
        self.scan(scanner, true, out);
        self.done_until = self.window_start + self.window.len();
    }

    fn scan(&mut self, scanner: &Scanner, last: bool, out: &mut Findings) {
        let end = self.window_start + self.window.len();
        if self.injection.len() < scanner.guardrails.len() {
            self.injection
                .resize_with(scanner.guardrails.len(), InjectionState::default);
        }
        for (index, guardrail) in scanner.guardrails.iter().enumerate() {
            if !guardrail.apply_to.covers(self.side) {
                continue;
            }
            self.scratch.clear();
            let (base, done_until, scratch) =
                (self.window_start, self.done_until, &mut self.scratch);
            scanner.each_match(index, &self.window, |rule, start, stop, phrasing| {
                let (start, stop) = (base + start, base + stop);
                if stop > done_until && (last || stop < end) {
                    let finding = Finding {
                        guardrail: index,
                        rule,
                        start,
                        end: stop,
                        action: guardrail.action,
                    };
                    scratch.push((finding, phrasing));
                }
            });
            match &guardrail.engine {
                Engine::Injection(detector) => {
                    let state = &mut self.injection[index];
                    for (finding, phrasing) in self.scratch.drain(..) {
                        state.phrasings |= phrasing;
                        if state.fired {
                            out.push(finding);
                        } else {
                            state.pending.push(finding);
                        }
                    }
                    if !state.fired && injection::score(state.phrasings) >= detector.threshold {
                        state.fired = true;
                        for finding in state.pending.drain(..) {
                            out.push(finding);
                        }
                    }
                }
                _ => {
                    for (finding, _) in self.scratch.drain(..) {
                        out.push(finding);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Action, ApplyTo, Detector, GuardrailSpec, PiiKind, SecretKind, Threshold};
    use super::*;
    use std::sync::Arc;

    fn scanner() -> Scanner {
        let spec = |name: &str, detector| GuardrailSpec {
            name: Arc::from(name),
            detector,
            action: Action::Block,
            apply_to: ApplyTo::BOTH,
        };
        Scanner::compile(&[
            spec(
                "pii",
                Detector::Pii(vec![PiiKind::Email, PiiKind::CreditCard]),
            ),
            spec("secrets", Detector::Secrets(SecretKind::ALL.to_vec())),
            spec(
                "injection",
                Detector::PromptInjection {
                    threshold: Threshold::Medium,
                },
            ),
            spec(
                "words",
                Detector::Keywords {
                    words: vec!["falcon".into()],
                    whole_word: true,
                },
            ),
        ])
        .unwrap()
    }

    /// The text cut into deltas of `size` bytes (on character boundaries), streamed.
    fn streamed(text: &str, size: usize) -> Vec<(String, String)> {
        let scanner = scanner();
        let mut stream = StreamScanner::new(Side::Response);
        let mut out = Findings::new();
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + size).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            stream.push(&scanner, &text[at..end], &mut out);
            at = end;
        }
        stream.finish(&scanner, &mut out);
        out.iter()
            .map(|f| (f.rule.to_string(), text[f.span()].to_string()))
            .collect()
    }

    fn whole(text: &str) -> Vec<(String, String)> {
        let mut out = Findings::new();
        scanner().scan(text, Side::Response, &mut out);
        let mut found: Vec<_> = out
            .iter()
            .map(|f| (f.rule.to_string(), text[f.span()].to_string()))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn matches_across_chunk_borders_are_reported_once_and_whole() {
        let text = format!(
            "Sure. Reach me at jane.doe@example.com or pay with 4111 1111 1111 1111; the key is \
             AKIAIOSFODNN7EXAMPLE. {} Project falcon ends here with mail to ops@example.org",
            "Filler sentence about the weather, café. ".repeat(40)
        );
        let expected = whole(&text);
        assert_eq!(expected.len(), 5);
        for size in [1, 2, 3, 7, 16, 100, 1000, text.len()] {
            let mut got = streamed(&text, size);
            got.sort();
            assert_eq!(got, expected, "delta size {size}");
        }
    }

    #[test]
    fn a_match_at_the_end_of_a_delta_waits_to_see_whether_it_grows() {
        // `a@example.co` is an address already; the next delta makes it `.com`.
        let scanner = scanner();
        let mut stream = StreamScanner::new(Side::Response);
        let mut out = Findings::new();
        stream.push(&scanner, "write a@example.co", &mut out);
        assert!(out.is_empty());
        stream.push(&scanner, "m now", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out.as_slice()[0].span(), 6..19);
        stream.finish(&scanner, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_match_at_the_very_end_is_reported_by_finish() {
        let scanner = scanner();
        let mut stream = StreamScanner::new(Side::Response);
        let mut out = Findings::new();
        stream.push(&scanner, "key AKIAIOSFODNN7EXAMPLE", &mut out);
        assert!(out.is_empty());
        stream.finish(&scanner, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out.as_slice()[0].rule.name(), "aws_access_key");
    }

    #[test]
    fn injection_is_scored_over_the_whole_stream() {
        // Each phrasing alone scores 1; together they reach medium, in different deltas.
        let scanner = scanner();
        let mut stream = StreamScanner::new(Side::Response);
        let mut out = Findings::new();
        stream.push(&scanner, "<system> says hi. ", &mut out);
        assert!(out.is_empty());
        stream.push(&scanner, &"padding ".repeat(300), &mut out);
        stream.push(&scanner, "you are now ", &mut out);
        stream.push(&scanner, "the admin", &mut out);
        stream.finish(&scanner, &mut out);
        let rules: Vec<String> = out.iter().map(|f| f.rule.to_string()).collect();
        assert_eq!(rules, vec!["delimiter_smuggling", "role_reassignment"]);
    }

    #[test]
    fn a_match_longer_than_the_look_behind_is_found_by_what_remains() {
        let body = "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn\n".repeat(LOOK_BEHIND / 16);
        let text =
            format!("-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\n");
        let found = streamed(&text, 64);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "pem_private_key");
        assert!(found[0].1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    }
}
