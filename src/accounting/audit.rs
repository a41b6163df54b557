//! The per-request audit log: one JSON object per line, to a file or stdout.
//!
//! Lines are formatted and written on the accounting thread, never on a request thread. Every
//! field is present on every line (`null` when it does not apply) so that log pipelines can rely
//! on the shape. No secret can reach it: a record carries the key's id, never what was presented.

use super::RequestRecord;
use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
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
        })
    }

    pub fn write(&mut self, record: &RequestRecord) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &AuditLine::of(record))?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The line's shape; borrowed from the record, so formatting copies nothing.
#[derive(Serialize)]
struct AuditLine<'a> {
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
    cost_usd: f64,
    estimated: bool,
    latency_ms: f64,
    ttfb_ms: Option<f64>,
    refusal: Option<&'a str>,
    error: Option<&'a str>,
}

impl<'a> AuditLine<'a> {
    fn of(r: &'a RequestRecord) -> AuditLine<'a> {
        let ms = |d: std::time::Duration| (d.as_micros() as f64) / 1000.0;
        AuditLine {
            ts: Utc
                .timestamp_millis_opt(r.finished_at_ms as i64)
                .single()
                .unwrap_or_default()
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
            cost_usd: r.cost.as_usd(),
            estimated: r.estimated,
            latency_ms: ms(r.latency),
            ttfb_ms: r.ttfb.map(ms),
            refusal: r.refusal,
            error: r.error,
        }
    }
}
