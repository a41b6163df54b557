//! Per-request state carried from one proxy phase to the next.

use super::errors::ApiError;
use super::routes::Route;
use crate::limits::{Admission, RateStatus};
use crate::policy::{Key, Model, Policy};
use crate::upstream::attempt::UpstreamAttempts;
use crate::upstream::watchdog::Watchdog;
use crate::usage::{UsageChunkStripper, UsageExtractor};
use bytes::Bytes;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Everything one request accumulates on its journey through the gateway.
pub struct RequestCtx {
    pub started: Instant,
    pub request_id: String,
    /// The policy snapshot this request started on; it keeps using it even if a reload happens.
    pub policy: Option<Arc<Policy>>,
    pub route: Option<Route>,
    pub key: Option<Arc<Key>>,
    pub model: Option<Arc<Model>>,
    pub stream: bool,
    /// The body to send upstream (rewritten when the upstream model name differs).
    pub body: Option<Bytes>,
    /// Endpoint index of the current attempt, and how many attempts were made.
    pub endpoint: Option<usize>,
    pub attempts: u32,
    /// A refusal already decided, for `fail_to_proxy` to send in place of a generic error.
    pub failure: Option<ApiError>,
    pub client_ip: Option<IpAddr>,
    /// The request's hold on its limits; dropped with the context, which frees its slots.
    pub admission: Option<Admission>,
    /// Rate-limit figures for the `x-ratelimit-*` headers, for keys with rate limits.
    pub rate: Option<RateStatus>,
    /// Prompt tokens charged at admission, replaced by the real count when the response tells.
    pub token_estimate: u64,
    /// Reads usage from a successful response body as it streams past.
    pub usage: Option<UsageExtractor>,
    /// keygate added `stream_options.include_usage` upstream; the client did not ask for it.
    pub added_include_usage: bool,
    /// Removes the usage chunk the client did not ask for from a stream it receives.
    pub stripper: Option<UsageChunkStripper>,
    /// When the first upstream attempt began, and when the first response body byte arrived.
    pub upstream_started: Option<Instant>,
    pub first_byte: Option<Instant>,
    /// Keeps the request counted for graceful shutdown until the context drops.
    pub in_flight: Option<crate::shutdown::InFlight>,
    /// Endpoints tried, retries and fallbacks taken, the total deadline (see `upstream::attempt`).
    pub upstream: UpstreamAttempts,
    /// The current attempt's watchdog, when its provider's `first_byte` and `idle` differ.
    pub watchdog: Option<Watchdog>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            policy: None,
            route: None,
            key: None,
            model: None,
            stream: false,
            body: None,
            endpoint: None,
            attempts: 0,
            failure: None,
            client_ip: None,
            admission: None,
            rate: None,
            token_estimate: 0,
            usage: None,
            added_include_usage: false,
            stripper: None,
            upstream_started: None,
            first_byte: None,
            in_flight: None,
            upstream: UpstreamAttempts::default(),
            watchdog: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// The client's `x-request-id` when it is a sane token, otherwise a new id.
pub fn request_id(client_value: Option<&[u8]>) -> String {
    if let Some(v) = client_value {
        if !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()) {
            // all bytes are ASCII, so this cannot fail
            return String::from_utf8_lossy(v).into_owned();
        }
    }
    // A random per-process prefix and a counter: unique, cheap, and not guessable across restarts.
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Written digit by digit: `format!` costs a few hundred ns a request here.
    let mut id = [0u8; 36];
    id[..4].copy_from_slice(b"req_");
    write_hex(&mut id[4..20], prefix);
    write_hex(&mut id[20..], count);
    // hex digits and `req_`: ASCII, so this cannot fail
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

/// `value`'s lowest `out.len()` hex digits, most significant first, in lower case.
fn write_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        let a = request_id(None);
        let b = request_id(Some(b"has space"));
        assert!(a.starts_with("req_") && b.starts_with("req_"));
        // the process's prefix, then the counter: 16 hex digits each
        assert_eq!((a.len(), b.len()), (36, 36));
        assert_eq!(a[..20], b[..20]);
        let counter = |id: &str| u64::from_str_radix(&id[20..], 16).unwrap();
        assert!(counter(&b) > counter(&a));
        let mut out = [0u8; 10];
        write_hex(&mut out, 0xab_cdef_0123);
        assert_eq!(&out, b"abcdef0123");
        write_hex(&mut out, 0x1f);
        assert_eq!(&out, b"000000001f");
        assert_ne!(a, b);
        assert!(request_id(Some(&[b'x'; 200])).starts_with("req_"));
    }
}
