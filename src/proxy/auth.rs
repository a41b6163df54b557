//! Authentication: finding the presented secret and the key it belongs to.
//!
//! The checksum is verified before anything else, so a mistyped or invented key costs a CRC32 and
//! never reaches the hash or the key map.

use super::errors::ApiError;
use crate::domain::KeyStatus;
use crate::keys::secret::{self, KeyDigest};
use crate::policy::{Key, Policy};
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName};
use std::sync::Arc;

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

/// The key behind `secret` in `policy`, if it may be used at `now`.
pub fn authenticate(
    policy: &Policy,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<Arc<Key>, ApiError> {
    if secret::check_format(secret).is_err() {
        return Err(ApiError::invalid_key());
    }
    let entry = policy
        .key_by_digest(&KeyDigest::of(secret))
        .ok_or_else(ApiError::invalid_key)?;
    if entry.valid_until.is_some_and(|until| until <= now) {
        // A rotated-out secret whose grace period is over is as good as unknown.
        return Err(ApiError::invalid_key());
    }
    let key = &entry.key;
    if key.is_expired_at(now) {
        return Err(ApiError::key_expired());
    }
    if key.status == KeyStatus::Paused {
        return Err(ApiError::key_paused());
    }
    Ok(key.clone())
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
