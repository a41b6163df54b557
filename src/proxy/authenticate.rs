//! Authenticate: who is asking. The client's address (the socket peer, or the client behind a
//! trusted proxy), the presented secret and the key it belongs to, and — for a secret that
//! belongs to no key — the brute-force guard on that address.
//!
//! The checksum is verified before anything else, so a mistyped or invented key costs a CRC32 and
//! never reaches the hash or the key map.

use super::refusal::Refusal;
use crate::keys::secret::{self, KeyDigest};
use crate::limits::guard::AuthGuard;
use crate::limits::ip;
use crate::policy::{Key, Policy};
use chrono::Utc;
use http::{HeaderMap, HeaderName};
use pingora::proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address, as far as keygate can believe it, with IPv4-mapped addresses as IPv4.
pub fn client_ip(session: &Session, policy: &Policy) -> IpAddr {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    ip::client_ip(
        peer,
        session
            .req_header()
            .headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(|v| v.as_bytes()),
        &policy.trusted_proxies,
    )
}

/// The key the request presents. The key is looked up first, so a valid key passes from any
/// address; a secret that fails counts against its address, and once the address is over the
/// guard's limit the refusal is the guard's. A request without any key guesses nothing and is not
/// counted.
pub fn authenticate(
    guard: &AuthGuard,
    policy: &Policy,
    headers: &HeaderMap,
    client_ip: IpAddr,
) -> Result<Arc<Key>, Refusal> {
    let secret = presented_secret(headers).ok_or(Refusal::MissingKey)?;
    key_for_secret(policy, secret).map_err(|refusal| match guard.record_failure(client_ip) {
        Some(retry_after) => Refusal::AuthGuard { retry_after },
        None => refusal,
    })
}

/// The headers besides `Authorization` that a client may send its key in (as Anthropic's and
/// Azure OpenAI's clients do), in the order they are looked at.
pub const OTHER_KEY_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

/// The secret the client sent, from `Authorization: Bearer`, `x-api-key` or `api-key`.
pub fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let token = match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ if v.eq_ignore_ascii_case("bearer") => "",
            _ => v,
        };
        return (!token.is_empty()).then_some(token);
    }
    OTHER_KEY_HEADERS
        .iter()
        .find_map(|name| headers.get(name))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The key behind `secret` in `policy`. Whether it may be used now is authorization's question.
pub fn key_for_secret(policy: &Policy, secret: &str) -> Result<Arc<Key>, Refusal> {
    if secret::check_format(secret).is_err() {
        return Err(Refusal::InvalidKey);
    }
    let entry = policy
        .key_by_digest(&KeyDigest::of(secret))
        .ok_or(Refusal::InvalidKey)?;
    if entry.valid_until.is_some_and(|until| until <= Utc::now()) {
        // A rotated-out secret whose grace period is over is as good as unknown.
        return Err(Refusal::InvalidKey);
    }
    Ok(entry.key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_from_each_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_secret(&h), None);
        h.insert("x-api-key", "kg_b".parse().unwrap());
        assert_eq!(presented_secret(&h), Some("kg_b"));
        h.insert("authorization", "Bearer kg_a".parse().unwrap());
        assert_eq!(presented_secret(&h), Some("kg_a"));
        let mut h = HeaderMap::new();
        h.insert("api-key", " kg_c ".parse().unwrap());
        assert_eq!(presented_secret(&h), Some("kg_c"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(presented_secret(&h), None);
    }
}
