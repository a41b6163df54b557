//! Redaction: the text with every `redact` finding replaced by a label naming what was there,
//! so that the model (or the client) still reads a coherent sentence.
//!
//! Labels: `[REDACTED:EMAIL]`, `[REDACTED:CREDIT_CARD]`, … for a PII kind, `[REDACTED:JWT]`,
//! `[REDACTED:AWS_ACCESS_KEY]`, … for a secret, `[REDACTED:INSTRUCTION_OVERRIDE]`, … for an
//! injection phrasing, and `[REDACTED:<GUARDRAIL NAME>]` (upper-cased, e.g.
//! `[REDACTED:TICKET-IDS]`) for keyword and regex matches. Overlapping or touching spans are
//! merged into one, labelled by the match that starts first (the longest, if several do).

use super::{Action, Findings, InjectionCategory, PiiKind, Rule, Scanner, SecretKind};
use smallvec::SmallVec;
use std::borrow::Cow;

impl Scanner {
    /// `text` with the spans of its `redact` findings replaced; borrowed when there are none.
    /// `findings` must come from scanning this same text; spans that do not fit it are skipped.
    pub fn redact<'t>(&self, text: &'t str, findings: &Findings) -> Cow<'t, str> {
        let mut spans: SmallVec<[(usize, usize, &str); 8]> = findings
            .iter()
            .filter(|f| {
                f.action == Action::Redact
                    && f.start < f.end
                    && text.is_char_boundary(f.start)
                    && text.is_char_boundary(f.end)
                    && f.end <= text.len()
            })
            .map(|f| (f.start, f.end, self.label(f.guardrail, f.rule)))
            .collect();
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        spans.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut i = 0;
        while i < spans.len() {
            let (start, mut end, label) = spans[i];
            i += 1;
            while i < spans.len() && spans[i].0 <= end {
                end = end.max(spans[i].1);
                i += 1;
            }
            out.push_str(&text[copied..start]);
            out.push_str(label);
            copied = end;
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }

    fn label(&self, guardrail: usize, rule: Rule) -> &str {
        match rule {
            Rule::Keyword(_) | Rule::Regex(_) => &self.guardrails[guardrail].label,
            Rule::Pii(kind) => pii_label(kind),
            Rule::Secret(kind) => secret_label(kind),
            Rule::Injection(category) => injection_label(category),
        }
    }
}

fn pii_label(kind: PiiKind) -> &'static str {
    match kind {
        PiiKind::Email => "[REDACTED:EMAIL]",
        PiiKind::Phone => "[REDACTED:PHONE]",
        PiiKind::CreditCard => "[REDACTED:CREDIT_CARD]",
        PiiKind::Iban => "[REDACTED:IBAN]",
        PiiKind::UsSsn => "[REDACTED:US_SSN]",
        PiiKind::Ipv4 => "[REDACTED:IPV4]",
        PiiKind::Ipv6 => "[REDACTED:IPV6]",
    }
}

fn secret_label(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::AwsAccessKey => "[REDACTED:AWS_ACCESS_KEY]",
        SecretKind::Github => "[REDACTED:GITHUB]",
        SecretKind::Gitlab => "[REDACTED:GITLAB]",
        SecretKind::Slack => "[REDACTED:SLACK]",
        SecretKind::PemPrivateKey => "[REDACTED:PEM_PRIVATE_KEY]",
        SecretKind::Jwt => "[REDACTED:JWT]",
        SecretKind::Openai => "[REDACTED:OPENAI]",
        SecretKind::Anthropic => "[REDACTED:ANTHROPIC]",
        SecretKind::Keygate => "[REDACTED:KEYGATE]",
    }
}

fn injection_label(category: InjectionCategory) -> &'static str {
    match category {
        InjectionCategory::InstructionOverride => "[REDACTED:INSTRUCTION_OVERRIDE]",
        InjectionCategory::RoleReassignment => "[REDACTED:ROLE_REASSIGNMENT]",
        InjectionCategory::SystemPromptExfiltration => "[REDACTED:SYSTEM_PROMPT_EXFILTRATION]",
        InjectionCategory::DelimiterSmuggling => "[REDACTED:DELIMITER_SMUGGLING]",
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ApplyTo, Detector, Finding, GuardrailSpec, Side};
    use super::*;
    use std::sync::Arc;

    fn scanner() -> Scanner {
        let spec = |name: &str, detector, action| GuardrailSpec {
            name: Arc::from(name),
            detector,
            action,
            apply_to: ApplyTo::REQUEST,
        };
        Scanner::compile(&[
            spec(
                "pii-basic",
                Detector::Pii(vec![PiiKind::Email, PiiKind::CreditCard]),
                Action::Redact,
            ),
            spec(
                "ticket-ids",
                Detector::Regex(vec![r"TCK-\d{6}".into()]),
                Action::Redact,
            ),
            spec(
                "words",
                Detector::Keywords {
                    words: vec!["falcon".into()],
                    whole_word: true,
                },
                Action::Log,
            ),
        ])
        .unwrap()
    }

    fn redacted(text: &str) -> String {
        let scanner = scanner();
        let mut findings = Findings::new();
        scanner.scan(text, Side::Request, &mut findings);
        scanner.redact(text, &findings).into_owned()
    }

    #[test]
    fn redact_findings_are_replaced_by_their_labels_and_log_findings_kept() {
        assert_eq!(
            redacted("Mail jo@example.com re TCK-123456 (falcon), card 4111 1111 1111 1111."),
            "Mail [REDACTED:EMAIL] re [REDACTED:TICKET-IDS] (falcon), card [REDACTED:CREDIT_CARD]."
        );
    }

    #[test]
    fn nothing_to_redact_borrows() {
        let scanner = scanner();
        let mut findings = Findings::new();
        let text = "only falcon here";
        scanner.scan(text, Side::Request, &mut findings);
        assert_eq!(findings.len(), 1);
        assert!(matches!(scanner.redact(text, &findings), Cow::Borrowed(_)));
    }

    #[test]
    fn overlapping_spans_merge_under_the_first_label() {
        let scanner = scanner();
        let text = "aaaa bbbb cccc dddd";
        let finding = |guardrail, rule, start, end| Finding {
            guardrail,
            rule,
            start,
            end,
            action: Action::Redact,
        };
        let findings = Findings {
            items: vec![
                finding(1, Rule::Regex(0), 7, 12),
                finding(0, Rule::Pii(PiiKind::Email), 0, 9),
                finding(0, Rule::Pii(PiiKind::CreditCard), 15, 19),
                // Out of range (from another text): skipped, not a panic.
                finding(0, Rule::Pii(PiiKind::Email), 15, 99),
            ],
        };
        assert_eq!(
            scanner.redact(text, &findings),
            "[REDACTED:EMAIL]cc [REDACTED:CREDIT_CARD]"
        );
    }
}
