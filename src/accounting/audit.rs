//! The per-request audit log: one JSON object per line, to a file or stdout.
//!
//! Lines are formatted and written on the audit thread (see the parent module), never on a
//! request thread. Every field is present on every line (`null` when it does not apply) so that
//! log pipelines can rely on the shape. No secret can reach it: a record carries the key's id,
//! never what was presented.

use super::RequestRecord;
use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for AuditTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditTarget::Stdout => f.write_str("stdout"),
            AuditTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A buffered writer of audit lines.
pub struct AuditWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    /// The line being formatted, kept between lines for its allocation.
    line: Vec<u8>,
    timestamps: Timestamps,
}

impl AuditWriter {
    pub fn open(target: &AuditTarget) -> io::Result<AuditWriter> {
        let out: Box<dyn Write + Send> = match target {
            AuditTarget::Stdout => Box::new(io::stdout()),
            AuditTarget::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Ok(AuditWriter {
            out: BufWriter::with_capacity(64 * 1024, out),
            line: Vec::with_capacity(512),
            timestamps: Timestamps::default(),
        })
    }

    pub fn write(&mut self, record: &RequestRecord) -> io::Result<()> {
        self.line.clear();
        format_line(&mut self.line, record, &mut self.timestamps);
        self.out.write_all(&self.line)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Appends the audit line of `r`, newline included. The field names are constants written as
/// they are; only values go through serde_json (escaped strings, floats), so a line costs about
/// half what a derived `Serialize` did, which escaped every field name too: every request is
/// audited, and the audit thread shares the CPUs with the request threads. The shape is
/// fixed: every field, in this order, `null` when it does not apply (the test below holds it to
/// a derived serializer's output).
fn format_line(out: &mut Vec<u8>, r: &RequestRecord, timestamps: &mut Timestamps) {
    let key = r.key.as_deref();
    let model = r.model.as_deref();
    out.extend_from_slice(b"{\"ts\":\"");
    timestamps.write(out, r.finished_at_ms);
    out.extend_from_slice(b"\",\"request_id\":");
    value(out, r.request_id.as_str());
    out.extend_from_slice(b",\"key_id\":");
    value(out, key.map(|k| &*k.id));
    out.extend_from_slice(b",\"workload\":");
    value(out, key.map(|k| k.workload.name.as_str()));
    out.extend_from_slice(b",\"owner\":");
    value(out, key.and_then(|k| k.owner.as_deref()));
    out.extend_from_slice(b",\"client_ip\":");
    value(out, r.client_ip);
    out.extend_from_slice(b",\"method\":");
    value(out, r.method.as_str());
    out.extend_from_slice(b",\"path\":");
    value(out, &*r.path);
    out.extend_from_slice(b",\"model\":");
    value(out, model.map(|m| m.name.as_str()));
    out.extend_from_slice(b",\"provider\":");
    value(out, model.map(|m| m.provider.name.as_str()));
    out.extend_from_slice(b",\"endpoint\":");
    value(out, r.endpoint_url());
    out.extend_from_slice(b",\"stream\":");
    out.extend_from_slice(if r.stream { b"true" } else { b"false" });
    out.extend_from_slice(b",\"status\":");
    number(out, u64::from(r.status));
    out.extend_from_slice(b",\"prompt_tokens\":");
    number(out, r.usage.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    number(out, r.usage.completion_tokens);
    out.extend_from_slice(b",\"cached_tokens\":");
    number(out, r.usage.cached_tokens);
    out.extend_from_slice(b",\"cache_write_tokens\":");
    number(out, r.usage.cache_write_tokens);
    out.extend_from_slice(b",\"cost_usd\":");
    value(out, r.cost.as_usd());
    out.extend_from_slice(b",\"estimated\":");
    out.extend_from_slice(if r.estimated { b"true" } else { b"false" });
    out.extend_from_slice(b",\"latency_ms\":");
    value(out, millis(r.latency));
    out.extend_from_slice(b",\"ttfb_ms\":");
    value(out, r.ttfb.map(millis));
    out.extend_from_slice(b",\"refusal\":");
    value(out, r.refusal);
    out.extend_from_slice(b",\"error\":");
    value(out, r.error);
    out.extend_from_slice(b",\"guardrails\":[");
    for (i, fired) in r.guardrails.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"guardrail\":");
        value(out, &*fired.guardrail);
        out.extend_from_slice(b",\"rule\":");
        value(out, fired.rule.name());
        out.extend_from_slice(b",\"action\":");
        value(out, fired.action.as_str());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}\n");
}

/// Milliseconds with microsecond precision.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

fn value(out: &mut Vec<u8>, v: impl Serialize) {
    // Writing JSON into a Vec cannot fail: strings, addresses, floats and null only.
    let _ = serde_json::to_writer(out, &v);
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// RFC 3339 timestamps in UTC with milliseconds (`2026-11-24T09:51:35.123Z`). Lines come in
/// time order, many a second, so the text up to the second is formatted once per second.
#[derive(Default)]
struct Timestamps {
    /// The second `prefix` is for, and `YYYY-MM-DDTHH:MM:SS.` of it.
    second: Option<i64>,
    prefix: Vec<u8>,
}

impl Timestamps {
    fn write(&mut self, out: &mut Vec<u8>, ms: u64) {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        let (second, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
        if self.second != Some(second) {
            let mut text = Utc
                .timestamp_millis_opt(second * 1000)
                .single()
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            // A whole second ends in `.000Z`: keep all but the milliseconds and the `Z`.
            text.truncate(text.len().saturating_sub(4));
            self.prefix = text.into_bytes();
            self.second = Some(second);
        }
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&[
            b'0' + (milli / 100) as u8,
            b'0' + (milli / 10 % 10) as u8,
            b'0' + (milli % 10) as u8,
            b'Z',
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, LoadOptions};
    use crate::guardrails::{Action, PiiKind, Rule};
    use crate::policy::guardrails::{Fired, FiredRule};
    use crate::usage::cost::UsdNanos;
    use crate::usage::Usage;
    use std::borrow::Cow;
    use std::net::IpAddr;
    use std::time::Duration;

    /// The line's shape as serde derives it: what `format_line` must write, byte for byte.
    #[derive(Serialize)]
    struct Oracle<'a> {
        ts: String,
        request_id: &'a str,
        key_id: Option<&'a str>,
        workload: Option<&'a str>,
        owner: Option<&'a str>,
        client_ip: Option<IpAddr>,
        method: &'a str,
        path: &'a str,
        model: Option<&'a str>,
        provider: Option<&'a str>,
        endpoint: Option<&'a str>,
        stream: bool,
        status: u16,
        prompt_tokens: u64,
        completion_tokens: u64,
        cached_tokens: u64,
        cache_write_tokens: u64,
        cost_usd: f64,
        estimated: bool,
        latency_ms: f64,
        ttfb_ms: Option<f64>,
        refusal: Option<&'a str>,
        error: Option<&'a str>,
        guardrails: Vec<OracleFired>,
    }

    #[derive(Serialize)]
    struct OracleFired {
        guardrail: String,
        rule: String,
        action: &'static str,
    }

    fn oracle(r: &RequestRecord) -> String {
        let line = Oracle {
            ts: Utc
                .timestamp_millis_opt(r.finished_at_ms as i64)
                .single()
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            request_id: &r.request_id,
            key_id: r.key.as_deref().map(|k| &*k.id),
            workload: r.key.as_deref().map(|k| k.workload.name.as_str()),
            owner: r.key.as_deref().and_then(|k| k.owner.as_deref()),
            client_ip: r.client_ip,
            method: r.method.as_str(),
            path: &r.path,
            model: r.model.as_deref().map(|m| m.name.as_str()),
            provider: r.model.as_deref().map(|m| m.provider.name.as_str()),
            endpoint: r.endpoint_url(),
            stream: r.stream,
            status: r.status,
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
            cached_tokens: r.usage.cached_tokens,
            cache_write_tokens: r.usage.cache_write_tokens,
            cost_usd: r.cost.as_usd(),
            estimated: r.estimated,
            latency_ms: millis(r.latency),
            ttfb_ms: r.ttfb.map(millis),
            refusal: r.refusal,
            error: r.error,
            guardrails: r
                .guardrails
                .iter()
                .map(|f| OracleFired {
                    guardrail: f.guardrail.to_string(),
                    rule: f.rule.name().into_owned(),
                    action: f.action.as_str(),
                })
                .collect(),
        };
        serde_json::to_string(&line).unwrap() + "\n"
    }

    #[test]
    fn lines_are_what_a_derived_serializer_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys.d")).unwrap();
        let secret = crate::keys::secret::generate().unwrap();
        std::fs::write(
            dir.path().join("keys.d/k.1.yaml"),
            format!(
                "hash: \"{}\"\nworkload: team-a\nowner: \"o\\\\wn\\ter \u{1F600}\"\n",
                secret.digest
            ),
        )
        .unwrap();
        let path = dir.path().join("keygate.yaml");
        std::fs::write(
            &path,
            r#"listen: 127.0.0.1:1
providers:
  p:
    format: openai
    endpoints: [{url: "http://127.0.0.1:2/v1"}]
models:
  gpt-x: {provider: p}
workloads:
  team-a: {models: [gpt-x]}
"#,
        )
        .unwrap();
        let policy = config::load(&path, LoadOptions { resolve_dns: false }).unwrap();
        let key = policy.keys_by_id.values().next().unwrap().clone();
        let model = policy.model("gpt-x").unwrap().clone();

        let full = RequestRecord {
            finished_at_ms: 1_764_000_000_123,
            request_id: "req_\"quoted\"\u{7}".into(),
            key: Some(key),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            method: http::Method::POST,
            path: Cow::Borrowed("/v1/chat/completions"),
            model: Some(model),
            endpoint: Some(0),
            stream: true,
            status: 200,
            usage: Usage {
                prompt_tokens: 231,
                completion_tokens: 19,
                cached_tokens: 7,
                cache_write_tokens: 3,
            },
            cost: UsdNanos::from_usd(0.1 + 0.2).unwrap(),
            estimated: true,
            billable: true,
            latency: Duration::from_micros(1_234_567),
            ttfb: Some(Duration::from_micros(89)),
            refusal: None,
            error: Some("stream_interrupted"),
            guardrails: vec![
                Fired {
                    guardrail: "pii-\"basic\"".into(),
                    rule: FiredRule::Scan(Rule::Pii(PiiKind::Email)),
                    action: Action::Redact,
                },
                Fired {
                    guardrail: "words".into(),
                    rule: FiredRule::Scan(Rule::Keyword(2)),
                    action: Action::Log,
                },
                Fired {
                    guardrail: "mod".into(),
                    rule: FiredRule::ModerationUnavailable,
                    action: Action::Log,
                },
            ],
        };
        let bare = |finished_at_ms, client_ip: Option<IpAddr>| RequestRecord {
            finished_at_ms,
            request_id: String::new(),
            key: None,
            client_ip,
            method: http::Method::GET,
            path: Cow::Owned("/v1/unknown/\u{0}\u{1F600}".into()),
            model: None,
            endpoint: None,
            stream: false,
            status: 0,
            usage: Usage::default(),
            cost: UsdNanos::ZERO,
            estimated: false,
            billable: false,
            latency: Duration::ZERO,
            ttfb: None,
            refusal: Some("invalid_api_key"),
            error: Some("invalid_api_key"),
            guardrails: Vec::new(),
        };
        let same_second = bare(1_764_000_000_999, Some("192.0.2.7".parse().unwrap()));
        // the next second, then back to the first: the cached prefix must follow the clock
        let next_second = bare(1_764_000_001_005, None);
        let mut timestamps = Timestamps::default();
        for record in [&full, &same_second, &next_second, &full] {
            let mut line = Vec::new();
            format_line(&mut line, record, &mut timestamps);
            assert_eq!(String::from_utf8(line).unwrap(), oracle(record));
        }
    }
}
