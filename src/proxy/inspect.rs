//! Inspect: the key's guardrails run over the text of the request body (`texts` finds it) once
//! the body is read and its model authorized, before admission, so a blocked request spends none
//! of its limits and never reaches the provider.
//!
//! Each text is scanned by the key's compiled [`Scanner`]. A `block` finding refuses the request
//! with [`Refusal::ContentPolicy`], naming the guardrail and the rule, never what matched; `redact`
//! findings are replaced in the body before it is forwarded (the JSON string re-encoded, every
//! other byte kept); `log` findings only count. Then each moderation hook is asked about the
//! text as it will be forwarded (redactions applied, so the outside service never sees them
//! either). What fired is kept in [`Fired`] for the metrics and the audit line.
//!
//! A key without guardrails does no work here: the caller skips the step.

use super::authorize::Request;
use super::body;
use super::refusal::Refusal;
use super::texts::{self, Shape};
use crate::guardrails::moderation::{OnError, Verdict};
use crate::guardrails::{Action, Findings, Side};
use crate::policy::guardrails::{Fired, FiredRule, Guardrails};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// Runs `guardrails` over `request`'s text; redactions rewrite its body. What fired is added to
/// `fired`, also when the request is refused.
pub async fn request(
    guardrails: &Guardrails,
    shape: Shape,
    request: &mut Request,
    fired: &mut Vec<Fired>,
) -> Result<(), Refusal> {
    let moderated = !guardrails.moderation.is_empty();
    // The text the moderation services are asked about, as it will be forwarded.
    let mut forwarded = String::new();
    let mut redactions: Vec<(usize, usize, String)> = Vec::new();
    let mut findings = Findings::new();
    let mut blocked = None;
    let body = &request.body[..];
    let walked = texts::for_each(body, shape, |text| {
        if blocked.is_some() {
            return;
        }
        let Some(content) = text.content(body) else {
            blocked = Some(Refusal::invalid_request(
                "A text field of the request body is not valid JSON.",
            ));
            return;
        };
        let content = &*content;
        if guardrails.scans_requests {
            findings.clear();
            guardrails
                .scanner
                .scan(content, Side::Request, &mut findings);
            if !findings.is_empty() {
                note(guardrails, &findings, fired);
                if let Some(f) = findings.first_block() {
                    blocked = Some(Refusal::ContentPolicy {
                        guardrail: guardrails.scanner.name(f.guardrail).clone(),
                        rule: FiredRule::Scan(f.rule).name(),
                    });
                    return;
                }
                if findings.wants_redaction() {
                    let redacted = guardrails.scanner.redact(content, &findings);
                    let encoded = serde_json::to_string(redacted.as_ref()).unwrap_or_default();
                    redactions.push((text.start, text.end, encoded));
                    if moderated {
                        append(&mut forwarded, &redacted);
                    }
                    return;
                }
            }
        }
        if moderated {
            append(&mut forwarded, content);
        }
    });
    walked.map_err(|e| Refusal::invalid_param(e.0, e.to_string()))?;
    if let Some(refusal) = blocked {
        return Err(refusal);
    }
    if !redactions.is_empty() {
        let rewritten = splice(body, &redactions);
        // Offsets moved: read the model's span (and the rest) again from the new body.
        request.facts = body::inspect(&rewritten)?;
        request.body = rewritten;
    }
    if moderated && !forwarded.is_empty() {
        moderate(guardrails, &forwarded, fired).await?;
    }
    Ok(())
}

/// Adds one text to what the moderation services are asked about, a blank line apart.
fn append(forwarded: &mut String, text: &str) {
    if !forwarded.is_empty() {
        forwarded.push_str("\n\n");
    }
    forwarded.push_str(text);
}

/// Asks each moderation service about `text`, in turn.
async fn moderate(
    guardrails: &Guardrails,
    text: &str,
    fired: &mut Vec<Fired>,
) -> Result<(), Refusal> {
    for rule in guardrails.moderation.iter() {
        match rule.hook.check(text).await {
            Ok(Verdict::Allowed) => {}
            Ok(Verdict::Flagged) => {
                fired.push(Fired {
                    guardrail: rule.name.clone(),
                    rule: FiredRule::Moderation,
                    action: rule.action,
                });
                if rule.action == Action::Block {
                    return Err(Refusal::ContentPolicy {
                        guardrail: rule.name.clone(),
                        rule: FiredRule::Moderation.name(),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(guardrail = %rule.name, error = %e, "moderation service failed");
                let block = rule.hook.on_error == OnError::Block;
                fired.push(Fired {
                    guardrail: rule.name.clone(),
                    rule: FiredRule::ModerationUnavailable,
                    action: if block { Action::Block } else { Action::Log },
                });
                if block {
                    return Err(Refusal::ModerationUnavailable(rule.name.clone()));
                }
            }
        }
    }
    Ok(())
}

/// Adds each (guardrail, rule, action) of `findings` to `fired` once.
fn note(guardrails: &Guardrails, findings: &Findings, fired: &mut Vec<Fired>) {
    for f in findings {
        let rule = FiredRule::Scan(f.rule);
        let name = guardrails.scanner.name(f.guardrail);
        if !fired
            .iter()
            .any(|x| x.rule == rule && x.action == f.action && Arc::ptr_eq(&x.guardrail, name))
        {
            fired.push(Fired {
                guardrail: name.clone(),
                rule,
                action: f.action,
            });
        }
    }
}

/// `body` with each `(start, end, replacement)` span replaced; spans in body order.
pub(super) fn splice(body: &[u8], replacements: &[(usize, usize, String)]) -> Bytes {
    let grown: usize = replacements.iter().map(|(_, _, r)| r.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + grown);
    let mut at = 0;
    for (start, end, replacement) in replacements {
        out.extend_from_slice(&body[at..*start]);
        out.extend_from_slice(replacement.as_bytes());
        at = *end;
    }
    out.extend_from_slice(&body[at..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splicing_replaces_spans_in_order() {
        let body = br#"{"a":"x","b":"yy","c":1}"#;
        let out = splice(
            body,
            &[(5, 8, "\"X1\"".to_owned()), (13, 17, "\"Z\"".to_owned())],
        );
        assert_eq!(&out[..], br#"{"a":"X1","b":"Z","c":1}"#);
        assert_eq!(&splice(body, &[])[..], body);
    }
}
