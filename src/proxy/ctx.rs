//! Per-request state carried from one proxy phase to the next.
//!
//! Admission's result is one value, [`Admitted`], set once when every check passed: the phases
//! after it (route, forward, respond) work only on an admitted request and cannot see one that is
//! half checked. A request refused before that keeps what it had learned in [`Named`], for the
//! labels of its metrics and its audit line.

use super::dialect::Dialect;
use super::inspect_response::ResponseInspection;
use super::paths::Route;
use super::refusal::Refusal;
use crate::domain::Operation;
use crate::limits::{Admission, RateStatus};
use crate::policy::guardrails::Fired;
use crate::policy::{Key, Model, Policy};
use crate::translate::{ResponseTranslator, Translation};
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
    pub policy: Arc<Policy>,
    pub route: Option<Route>,
    /// The API dialect of keygate's own answers to this request.
    pub dialect: Dialect,
    /// The client's address: the socket peer, or the client behind a trusted proxy.
    pub client_ip: Option<IpAddr>,
    /// What a request that was not admitted had named, for labels.
    pub named: Named,
    /// Set once admission passed.
    pub admitted: Option<Admitted>,
    /// Rate-limit figures for the `x-ratelimit-*` headers, for keys with rate limits.
    pub rate: Option<RateStatus>,
    /// The guardrails that fired on the request, for its metrics and audit line.
    pub guardrails: Vec<Fired>,
    /// What keygate answered instead of the provider, or in place of a failed forward.
    pub failure: Option<Refusal>,
    /// Endpoints tried, retries and fallbacks taken, the total deadline (see `upstream::attempt`).
    pub upstream: UpstreamAttempts,
    /// The current attempt's watchdog, when its provider's `first_byte` and `idle` differ.
    pub watchdog: Option<Watchdog>,
    /// When the first upstream attempt began.
    pub upstream_started: Option<Instant>,
    pub response: ResponseState,
    /// Keeps the request counted for graceful shutdown until the context drops.
    pub in_flight: Option<crate::shutdown::InFlight>,
}

/// The key and model a request named before it was refused (or answered by keygate itself).
#[derive(Default)]
pub struct Named {
    pub key: Option<Arc<Key>>,
    pub model: Option<Arc<Model>>,
}

/// A request that passed authentication, authorization and its limits.
pub struct Admitted {
    pub key: Arc<Key>,
    pub operation: Operation,
    /// The model being served: the one asked for, or the fallback the route switched to.
    pub model: Arc<Model>,
    pub stream: bool,
    /// The body to send upstream (rewritten when the upstream model name differs, translated
    /// for a provider of another API).
    pub body: Bytes,
    /// The body as the client sent it, from which a fallback model's body is made.
    pub client_body: Bytes,
    /// Byte range of the `model` value in `client_body`.
    pub model_span: (usize, usize),
    /// The request's hold on its limits; dropped with the context, which frees its slots.
    pub admission: Admission,
    /// Prompt tokens charged at admission, replaced by the real count when the response tells.
    pub token_estimate: u64,
    /// keygate added `stream_options.include_usage` upstream; the client did not ask for it.
    pub added_include_usage: bool,
    /// The request was translated for its provider's API; the response is translated back.
    pub translation: Option<Translation>,
}

/// What the response phases learn as the response passes.
///
/// The translator and the inspection are boxed: most requests have neither, and every open
/// request holds its context.
#[derive(Default)]
pub struct ResponseState {
    /// Reads usage from a successful response body as it streams past.
    pub usage: Option<UsageExtractor>,
    /// Removes the usage chunk the client did not ask for from a stream it receives.
    pub stripper: Option<UsageChunkStripper>,
    /// Translates a translated request's response back to the client's API.
    pub translator: Option<Box<ResponseTranslator>>,
    /// When the first response body byte arrived.
    pub first_byte: Option<Instant>,
    /// The key's response guardrails, over a successful response.
    pub inspection: Option<Box<ResponseInspection>>,
    /// The response goes to the client only once its body is complete (see `respond::hold`),
    /// so a refusal can still take its place.
    pub held: bool,
}

impl RequestCtx {
    pub fn new(policy: Arc<Policy>) -> Self {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            policy,
            route: None,
            dialect: Dialect::Openai,
            client_ip: None,
            named: Named::default(),
            admitted: None,
            rate: None,
            guardrails: Vec::new(),
            failure: None,
            upstream: UpstreamAttempts::default(),
            watchdog: None,
            upstream_started: None,
            response: ResponseState::default(),
            in_flight: None,
        }
    }

    /// The key, admitted or merely named.
    pub fn key(&self) -> Option<&Arc<Key>> {
        match &self.admitted {
            Some(a) => Some(&a.key),
            None => self.named.key.as_ref(),
        }
    }

    /// The model being served, or the one a refused request named.
    pub fn model(&self) -> Option<&Arc<Model>> {
        match &self.admitted {
            Some(a) => Some(&a.model),
            None => self.named.model.as_ref(),
        }
    }

    pub fn stream(&self) -> bool {
        self.admitted.as_ref().is_some_and(|a| a.stream)
    }
}

/// The longest client `x-request-id` kept. The id is echoed to the client, sent to the provider
/// and written to every log and audit line of the request, so a client cannot make it carry more.
pub const MAX_CLIENT_REQUEST_ID: usize = 64;

/// The client's `x-request-id` when it is short and printable ASCII without spaces, otherwise a
/// new id.
pub fn request_id(client_value: Option<&[u8]>) -> String {
    if let Some(v) = client_value {
        if !v.is_empty()
            && v.len() <= MAX_CLIENT_REQUEST_ID
            && v.iter().all(|b| b.is_ascii_graphic())
        {
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
        let longest = [b'y'; MAX_CLIENT_REQUEST_ID];
        assert_eq!(request_id(Some(&longest)).as_bytes(), longest);
        assert!(request_id(Some(&[b'y'; MAX_CLIENT_REQUEST_ID + 1])).starts_with("req_"));
        assert!(request_id(Some(b"tab\there")).starts_with("req_"));
    }
}
