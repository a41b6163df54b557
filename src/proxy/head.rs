//! The headers keygate sets on response heads and upstream request heads, written straight into
//! the head's header map.
//!
//! Pingora's `insert_header` parses and copies the name of every header it adds, then files it
//! twice: in the value map, and in a second map that keeps each name's original spelling. For the
//! seven headers a rate-limited response gets (the request id and six `x-ratelimit-*`), that cost
//! 2.4 µs a response (`cargo bench --bench limits -- response_head`). Here the names are
//! constants, built once, and each header is one insert into one map. The head gives up the
//! original spelling of its header names to allow that: it goes out with canonical names
//! (standard ones title-cased, others lower case), which HTTP/1.1 leaves free, since names are
//! case-insensitive, and which HTTP/2 requires anyway.

use crate::limits::window::openai_duration;
use crate::limits::RateStatus;
use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType, OrErr};
use smallvec::SmallVec;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `x-ratelimit-{limit,remaining,reset}-requests`.
const REQUEST_WINDOW: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];

/// `x-ratelimit-{limit,remaining,reset}-tokens`.
const TOKEN_WINDOW: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// Provider response headers that name the gateway's account with the provider.
const PROVIDER_ACCOUNT: [HeaderName; 3] = [
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("anthropic-organization-id"),
];

/// The provider's rate-limit headers (OpenAI's and Azure's, Anthropic's), by prefix: providers
/// add variants (`x-ratelimit-limit-tokens_usage_based`, `anthropic-ratelimit-input-tokens-…`).
const PROVIDER_LIMIT_PREFIXES: [&str; 2] = ["x-ratelimit-", "anthropic-ratelimit-"];

/// How many headers [`set_rate_limits`] may add.
const RATE_HEADERS: usize = 6;

/// Runs `edit` on the header map of `head`, which keeps everything but the original spelling of
/// its header names (and a non-standard reason phrase). `adding` is how many headers `edit` may
/// add: room for them all is made at once, since the map would otherwise grow (reallocate and
/// rehash) as often as twice.
pub fn edit<R>(
    head: &mut ResponseHeader,
    adding: usize,
    edit: impl FnOnce(&mut HeaderMap) -> R,
) -> R {
    // An empty head to hold the place: neither its header map nor its extensions allocate.
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(head, placeholder).into();
    // Should the map be full, the insert that does not fit reports it.
    let _ = parts.headers.try_reserve(adding);
    let result = edit(&mut parts.headers);
    *head = ResponseHeader::from(parts);
    result
}

/// Runs `edit` on the `http` parts of an upstream request head, which keeps everything but the
/// original spelling of its header names and a request target kept verbatim beside the URI
/// (absolute-form, or not UTF-8). keygate forwards only the paths it routes, whose origin-form
/// target the URI reproduces exactly, and talks HTTP/1.1 upstream, where the head's h2-only
/// `END_STREAM` choice has no meaning. `adding` is as for [`edit`].
pub fn edit_request<R>(
    head: &mut RequestHeader,
    adding: usize,
    edit: impl FnOnce(&mut http::request::Parts) -> R,
) -> R {
    // An empty head to hold the place: its URI, header map and extensions do not allocate.
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(head, placeholder).into();
    let _ = parts.headers.try_reserve(adding);
    let result = edit(&mut parts);
    *head = RequestHeader::from(parts);
    result
}

/// Sets one header, replacing any already there under that name (from the provider or client).
pub fn set(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
    headers
        .try_insert(name, value)
        .map(drop)
        .or_err(ErrorType::InvalidHTTPHeader, "too many headers")
}

/// Header values written one after another into a single buffer, then handed out as slices of
/// it: a head's dynamic values (up to seven on a rate-limited response) cost two allocations
/// between them (the buffer, and its shared handle on the first slice), where a `HeaderValue`
/// built on its own costs one each.
pub struct Values(BytesMut);

impl Values {
    /// Room for `bytes` of values; more is allocated if they need it.
    pub fn with_capacity(bytes: usize) -> Values {
        Values(BytesMut::with_capacity(bytes))
    }

    /// The next value: whatever `write` appends.
    fn next(&mut self, write: impl FnOnce(&mut BytesMut)) -> pingora::Result<HeaderValue> {
        write(&mut self.0);
        let written = self.0.split().freeze();
        HeaderValue::from_maybe_shared(written)
            .or_err(ErrorType::InvalidHTTPHeader, "invalid header value")
    }

    pub fn number(&mut self, n: u64) -> pingora::Result<HeaderValue> {
        self.next(|buf| buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()))
    }
}

/// Sets the request id.
pub fn set_request_id(
    headers: &mut HeaderMap,
    values: &mut Values,
    request_id: &str,
) -> pingora::Result<()> {
    let value = values.next(|buf| buf.extend_from_slice(request_id.as_bytes()))?;
    set(headers, X_REQUEST_ID, value)
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers, for the windows
/// `rate` has.
fn set_rate_limits(
    headers: &mut HeaderMap,
    values: &mut Values,
    rate: &RateStatus,
) -> pingora::Result<()> {
    for (status, [limit, remaining, reset]) in
        [(rate.requests, REQUEST_WINDOW), (rate.tokens, TOKEN_WINDOW)]
    {
        if let Some(s) = status {
            set(headers, limit, values.number(s.limit)?)?;
            set(headers, remaining, values.number(s.remaining)?)?;
            let reset_text = openai_duration(s.reset);
            let reset_value =
                values.next(|buf| buf.extend_from_slice(reset_text.as_str().as_bytes()))?;
            set(headers, reset, reset_value)?;
        }
    }
    Ok(())
}

/// Removes what a provider's response head tells of the gateway's account: which organization and
/// project it is, and its rate limits, which are the whole account's and not the tenant's (a
/// tenant's are keygate's `x-ratelimit-*`, set after this).
pub fn remove_provider_account(headers: &mut HeaderMap) {
    // One pass finds them all (a lookup per name would cost more on the many responses with
    // none). A map cannot lose entries while it is walked, so the names are collected first:
    // OpenAI's eight fit inline, and a name parsed from the provider's head shares its bytes, so
    // a clone is a reference count.
    let found: SmallVec<[HeaderName; 8]> = headers
        .keys()
        .filter(|name| {
            PROVIDER_ACCOUNT.contains(name)
                || PROVIDER_LIMIT_PREFIXES
                    .iter()
                    .any(|prefix| name.as_str().starts_with(prefix))
        })
        .cloned()
        .collect();
    for name in &found {
        headers.remove(name);
    }
}

/// Gives a response head what every response keygate sends carries: the request id and, for a
/// rate-limited key, its `x-ratelimit-*` headers. `more` may set `adding` further headers in the
/// same edit, with the same [`Values`].
pub fn edit_response(
    head: &mut ResponseHeader,
    request_id: &str,
    rate: Option<&RateStatus>,
    adding: usize,
    more: impl FnOnce(&mut HeaderMap, &mut Values) -> pingora::Result<()>,
) -> pingora::Result<()> {
    let mut values = Values::with_capacity(VALUES_CAPACITY);
    let adding = 1 + rate.map_or(0, |_| RATE_HEADERS) + adding;
    edit(head, adding, |headers| {
        set_request_id(headers, &mut values, request_id)?;
        more(headers, &mut values)?;
        rate.map_or(Ok(()), |rate| set_rate_limits(headers, &mut values, rate))
    })
}

/// Room in [`Values`] for a head's usual values: a request id with the rate-limit values of both
/// windows (counts under a million, resets under a minute), or with a `Content-Length`.
pub const VALUES_CAPACITY: usize = super::ctx::MAX_CLIENT_REQUEST_ID + 2 * (6 + 6 + 8);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::WindowStatus;
    use std::time::Duration;

    fn provider_head() -> ResponseHeader {
        let mut head = ResponseHeader::build(200, Some(3)).unwrap();
        head.append_header("Content-Type".to_owned(), "application/json")
            .unwrap();
        head.append_header("X-RateLimit-Limit-Requests".to_owned(), "10000")
            .unwrap();
        head.append_header("openai-processing-ms".to_owned(), "123")
            .unwrap();
        head
    }

    fn wire(head: &ResponseHeader) -> String {
        let mut out = Vec::new();
        head.header_to_h1_wire(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn edited_heads_keep_every_header_and_replace_the_providers_limits() {
        let mut head = provider_head();
        let rate = RateStatus {
            requests: Some(WindowStatus {
                limit: 600,
                remaining: 431,
                reset: Duration::from_millis(6_250),
            }),
            tokens: None,
        };
        edit_response(&mut head, "req-1", Some(&rate), 0, |_, _| Ok(())).unwrap();
        assert_eq!(head.status, 200);
        let text = wire(&head);
        for line in [
            "Content-Type: application/json\r\n",
            "openai-processing-ms: 123\r\n",
            "x-request-id: req-1\r\n",
            "x-ratelimit-limit-requests: 600\r\n",
            "x-ratelimit-remaining-requests: 431\r\n",
            "x-ratelimit-reset-requests: 6.25s\r\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from {text:?}");
        }
        // The provider's own limit is replaced, not repeated; no token window, no token headers.
        assert_eq!(text.matches("10000").count(), 0, "{text:?}");
        assert!(!text.contains("tokens"), "{text:?}");
        assert_eq!(text.lines().count(), 6, "{text:?}");
    }

    #[test]
    fn the_providers_account_and_limits_are_removed_and_nothing_else() {
        let mut head = provider_head();
        for (name, value) in [
            ("OpenAI-Organization", "org-gateway"),
            ("openai-project", "proj_gateway"),
            ("anthropic-organization-id", "0b0b"),
            ("x-ratelimit-remaining-tokens", "29999990"),
            ("x-ratelimit-limit-tokens_usage_based", "30000000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2026-01-01T00:00:00Z",
            ),
            ("x-ratelimiter", "kept"),
        ] {
            head.append_header(name.to_owned(), value).unwrap();
        }
        edit(&mut head, 0, remove_provider_account);
        let text = wire(&head);
        let mut lines: Vec<_> = text.lines().collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "Content-Type: application/json",
                "openai-processing-ms: 123",
                "x-ratelimiter: kept",
            ],
            "{text:?}"
        );
    }

    #[test]
    fn a_request_id_that_is_no_header_value_is_an_error() {
        let mut head = provider_head();
        assert!(edit_response(&mut head, "bad\nid", None, 0, |_, _| Ok(())).is_err());
    }
}
