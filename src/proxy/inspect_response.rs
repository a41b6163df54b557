//! Inspect, on responses: the key's guardrails with `apply_to: [.., response]` run over the text
//! the model wrote, as the body passes back to the client.
//!
//! A stream is read event by event and the text of each event (a chat delta, a completion's
//! text, a Responses `delta`) goes through the engine's [`StreamScanner`], which finds matches
//! across event borders. Each event that carries text is held until the next one has been
//! scanned (or the stream ends), because the scanner reports a match that reaches the end of
//! what has arrived only once it sees where it ends. On a `block` finding the stream is cut: the
//! event held and everything after it are replaced by one `data: {"error":…}` event with code
//! `response_blocked`, and the stream ends there. `log` findings are counted; `redact` is not
//! applied to streams, and such a finding is counted as a `log`.
//!
//! A whole (non-streamed) body is held, head included (see `respond`), until it is complete, then
//! scanned: `redact` findings are replaced in it, `log` findings counted, and a `block` finding
//! answers 502 `response_blocked` in place of the response.

use super::dialect::Dialect;
use super::refusal::Refusal;
use super::texts::{self, Shape};
use crate::guardrails::{Action, Findings, Side, StreamScanner};
use crate::policy::guardrails::{Fired, FiredRule, Guardrails};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// The most of a whole body, or of one stream event, held for scanning: a larger one is not
/// passed on unscanned but aborted.
pub const MAX_HELD: usize = 16 * 1024 * 1024;

/// One response's inspection state.
pub struct ResponseInspection {
    guardrails: Arc<Guardrails>,
    shape: Shape,
    /// The client's, for the error event that ends a cut stream.
    dialect: Dialect,
    mode: Mode,
    findings: Findings,
    /// Why a stream was cut, until the caller takes it to record the failure.
    blocked: Option<Refusal>,
}

enum Mode {
    Stream {
        scanner: StreamScanner,
        /// Bytes of an event not complete yet.
        partial: BytesMut,
        /// Complete events held until the next text has been scanned.
        held: BytesMut,
        cut: bool,
    },
    Whole {
        body: BytesMut,
    },
}

impl ResponseInspection {
    pub fn new(
        guardrails: Arc<Guardrails>,
        shape: Shape,
        dialect: Dialect,
        stream: bool,
    ) -> ResponseInspection {
        ResponseInspection {
            guardrails,
            shape,
            dialect,
            mode: if stream {
                Mode::Stream {
                    scanner: StreamScanner::new(Side::Response),
                    partial: BytesMut::new(),
                    held: BytesMut::new(),
                    cut: false,
                }
            } else {
                Mode::Whole {
                    body: BytesMut::new(),
                }
            },
            findings: Findings::new(),
            blocked: None,
        }
    }

    /// The refusal that cut the stream, once: the client got it as an event, and the request
    /// is booked as failed with it.
    pub fn take_blocked(&mut self) -> Option<Refusal> {
        self.blocked.take()
    }

    /// Takes one chunk of the body; returns what the client may have now. `Err` aborts the
    /// response. `request_id` goes into the error event of a stream cut in Anthropic's dialect.
    pub fn chunk(
        &mut self,
        chunk: Option<Bytes>,
        end: bool,
        fired: &mut Vec<Fired>,
        request_id: &str,
    ) -> Result<Option<Bytes>, Refusal> {
        match &mut self.mode {
            Mode::Whole { body } => {
                if let Some(chunk) = chunk {
                    if body.len() + chunk.len() > MAX_HELD {
                        return Err(Refusal::Internal);
                    }
                    body.extend_from_slice(&chunk);
                }
                if !end {
                    return Ok(None);
                }
                let body = std::mem::take(body).freeze();
                self.whole(body, fired).map(Some)
            }
            Mode::Stream { .. } => self.stream(chunk, end, fired, request_id),
        }
    }

    fn whole(&mut self, body: Bytes, fired: &mut Vec<Fired>) -> Result<Bytes, Refusal> {
        let guardrails = &self.guardrails;
        let mut redactions = Vec::new();
        let mut blocked = None;
        let findings = &mut self.findings;
        // A body that is not the JSON expected holds no text this inspection knows of.
        let _ = texts::for_each(&body, self.shape, |text| {
            let Some(content) = text.content(&body) else {
                return;
            };
            let content = &*content;
            findings.clear();
            guardrails.scanner.scan(content, Side::Response, findings);
            if findings.is_empty() || blocked.is_some() {
                return;
            }
            note(guardrails, findings, fired, false);
            if let Some(f) = findings.first_block() {
                blocked = Some(blocked_by(guardrails, f.guardrail, f.rule));
            } else if findings.wants_redaction() {
                let redacted = guardrails.scanner.redact(content, findings);
                let encoded = serde_json::to_string(redacted.as_ref()).unwrap_or_default();
                redactions.push((text.start, text.end, encoded));
            }
        });
        if let Some(refusal) = blocked {
            return Err(refusal);
        }
        if redactions.is_empty() {
            return Ok(body);
        }
        Ok(super::inspect::splice(&body, &redactions))
    }

    fn stream(
        &mut self,
        chunk: Option<Bytes>,
        end: bool,
        fired: &mut Vec<Fired>,
        request_id: &str,
    ) -> Result<Option<Bytes>, Refusal> {
        let Mode::Stream {
            scanner,
            partial,
            held,
            cut,
        } = &mut self.mode
        else {
            return Ok(chunk);
        };
        if *cut {
            return Ok(None);
        }
        if let Some(chunk) = chunk {
            partial.extend_from_slice(&chunk);
        }
        let guardrails = &self.guardrails;
        let findings = &mut self.findings;
        let dialect = self.dialect;
        let mut out = BytesMut::new();
        while let Some(len) = event_len(partial) {
            let event = partial.split_to(len);
            findings.clear();
            let mut has_text = false;
            if let Some(data) = event_data(&event) {
                let _ = texts::for_each(&data, self.shape, |text| {
                    let Some(content) = text.content(&data) else {
                        return;
                    };
                    let content = &*content;
                    has_text |= !content.is_empty();
                    scanner.push(&guardrails.scanner, content, findings);
                });
            }
            if let Some(refusal) = settle(guardrails, findings, fired) {
                *cut = true;
                partial.clear();
                held.clear();
                out.extend_from_slice(&error_event(&refusal, dialect, request_id));
                self.blocked = Some(refusal);
                return Ok(Some(out.freeze()));
            }
            if has_text {
                // What was held is now scanned past; this event waits for the next text.
                out.extend_from_slice(held);
                held.clear();
            }
            held.extend_from_slice(&event);
        }
        if partial.len() > MAX_HELD {
            return Err(Refusal::Internal);
        }
        if end {
            findings.clear();
            scanner.finish(&guardrails.scanner, findings);
            if let Some(refusal) = settle(guardrails, findings, fired) {
                *cut = true;
                out.extend_from_slice(&error_event(&refusal, dialect, request_id));
                self.blocked = Some(refusal);
                return Ok(Some(out.freeze()));
            }
            out.extend_from_slice(held);
            out.extend_from_slice(partial);
            held.clear();
            partial.clear();
        }
        Ok((!out.is_empty()).then(|| out.freeze()))
    }
}

/// Notes `findings` of a stream; the refusal that cuts it, on a `block` finding.
fn settle(guardrails: &Guardrails, findings: &Findings, fired: &mut Vec<Fired>) -> Option<Refusal> {
    if findings.is_empty() {
        return None;
    }
    note(guardrails, findings, fired, true);
    findings
        .first_block()
        .map(|f| blocked_by(guardrails, f.guardrail, f.rule))
}

fn blocked_by(guardrails: &Guardrails, index: usize, rule: crate::guardrails::Rule) -> Refusal {
    Refusal::ResponseBlocked {
        guardrail: guardrails.scanner.name(index).clone(),
        rule: FiredRule::Scan(rule).name(),
    }
}

/// Adds each (guardrail, rule, action) of `findings` to `fired` once; on a stream a `redact`
/// is not applied, so it counts as a `log`.
fn note(guardrails: &Guardrails, findings: &Findings, fired: &mut Vec<Fired>, stream: bool) {
    for f in findings {
        let action = match f.action {
            Action::Redact if stream => Action::Log,
            other => other,
        };
        let rule = FiredRule::Scan(f.rule);
        let name = guardrails.scanner.name(f.guardrail);
        if !fired
            .iter()
            .any(|x| x.rule == rule && x.action == action && Arc::ptr_eq(&x.guardrail, name))
        {
            fired.push(Fired {
                guardrail: name.clone(),
                rule,
                action,
            });
        }
    }
}

/// The length of the first complete event in `buf` (its blank line included), if there is one.
fn event_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + k;
        let rest = &buf[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

/// The data of an event: its `data:` lines joined by newlines; `None` without any, or for
/// `[DONE]`.
fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            }
        }
    }
    data.filter(|d| d.as_slice() != b"[DONE]")
}

/// The event that ends a cut stream, in the stream error shape of the client's dialect:
/// OpenAI's SDKs raise on a `data:` line holding an `error` object, Anthropic's on an `error`
/// event.
fn error_event(refusal: &Refusal, dialect: Dialect, request_id: &str) -> Bytes {
    let mut out = BytesMut::new();
    match dialect {
        Dialect::Openai => {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&refusal.openai_body());
        }
        Dialect::Anthropic => {
            out.extend_from_slice(b"event: error\ndata: ");
            out.extend_from_slice(&refusal.anthropic_body(request_id));
        }
    }
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_at_blank_lines() {
        assert_eq!(event_len(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_len(b"data: a\r\n\r\nx"), Some(11));
        assert_eq!(event_len(b"event: x\ndata: a\n"), None);
        assert_eq!(
            event_data(b"event: e\ndata: {\"a\":\ndata:1}\n\n").as_deref(),
            Some(&b"{\"a\":\n1}"[..])
        );
        assert_eq!(event_data(b"data: [DONE]\n\n"), None);
        assert_eq!(event_data(b": comment\n\n"), None);
    }
}
