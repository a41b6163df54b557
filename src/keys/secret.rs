//! The virtual key format: `kg_` + 32 base62 characters of OS randomness (190 bits) + a 6-character
//! base62 CRC32 of everything before it, as GitHub's token format does. The checksum lets secret
//! scanners recognise keys and lets keygate refuse a mistyped or invented key before it hashes
//! anything or touches the key store. Only the SHA-256 digest of a secret is ever stored.

use sha2::{Digest, Sha256};
use std::fmt;

/// Every keygate secret starts with this.
pub const PREFIX: &str = "kg_";
const RANDOM_CHARS: usize = 32;
const CHECKSUM_CHARS: usize = 6;
/// Total length of a secret, prefix included.
pub const SECRET_LEN: usize = PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The SHA-256 of a secret: what key files store and what the request path looks keys up by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    /// Digest of a secret string (no format check: callers check the format first).
    pub fn of(secret: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(secret.as_bytes()).into())
    }

    /// Parses the `sha256:<64 hex>` form used in key files.
    pub fn parse(text: &str) -> Option<KeyDigest> {
        let hex_part = text.strip_prefix("sha256:")?;
        if hex_part.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(KeyDigest(out))
    }
}

/// SHA-256 digests are already uniformly distributed, so their first eight bytes are a perfect
/// hash input: feeding all 32 bytes through SipHash would only cost time on every request.
impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a presented string is not a well-formed keygate secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("key does not start with `kg_`")]
    Prefix,
    #[error("key has the wrong length")]
    Length,
    #[error("key contains characters outside base62")]
    Alphabet,
    #[error("key checksum does not match")]
    Checksum,
}

/// A freshly generated secret. Its `Debug` never prints the secret itself.
pub struct NewSecret {
    pub secret: String,
    pub digest: KeyDigest,
    pub hint: String,
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSecret")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// Generates a new secret from the OS random source.
pub fn generate() -> Result<NewSecret, getrandom::Error> {
    let mut secret = String::with_capacity(SECRET_LEN);
    secret.push_str(PREFIX);
    // Rejection sampling keeps every base62 digit uniform (248 = 4 * 62).
    let mut pool = [0u8; 64];
    while secret.len() < PREFIX.len() + RANDOM_CHARS {
        getrandom::fill(&mut pool)?;
        for &b in &pool {
            if b < 248 && secret.len() < PREFIX.len() + RANDOM_CHARS {
                secret.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    let checksum = encode_checksum(crc32fast::hash(secret.as_bytes()));
    secret.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
    let digest = KeyDigest::of(&secret);
    let hint = hint_for(&secret);
    Ok(NewSecret {
        secret,
        digest,
        hint,
    })
}

/// Checks prefix, length, alphabet and checksum without any allocation.
pub fn check_format(candidate: &str) -> Result<(), FormatError> {
    let bytes = candidate.as_bytes();
    if !candidate.starts_with(PREFIX) {
        return Err(FormatError::Prefix);
    }
    if bytes.len() != SECRET_LEN {
        return Err(FormatError::Length);
    }
    if !bytes[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(FormatError::Alphabet);
    }
    let (body, checksum) = bytes.split_at(SECRET_LEN - CHECKSUM_CHARS);
    if encode_checksum(crc32fast::hash(body)) != checksum {
        return Err(FormatError::Checksum);
    }
    Ok(())
}

/// The recognisable but useless part of a secret shown in listings: `kg_…` and its last 4 characters.
pub fn hint_for(secret: &str) -> String {
    let tail = secret.get(secret.len().saturating_sub(4)..).unwrap_or("");
    format!("{PREFIX}…{tail}")
}

fn encode_checksum(mut crc: u32) -> [u8; CHECKSUM_CHARS] {
    // 62^6 > 2^32, so six digits always suffice; fixed width keeps secrets one length.
    let mut out = [b'0'; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_validate_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), SECRET_LEN);
        check_format(&a.secret).unwrap();
        assert_eq!(a.digest, KeyDigest::of(&a.secret));
        assert!(a.hint.starts_with("kg_…"));
        assert!(a.secret.ends_with(&a.hint["kg_…".len()..]));
    }

    #[test]
    fn every_single_character_change_fails_the_checksum() {
        let s = generate().unwrap().secret;
        for i in PREFIX.len()..s.len() {
            let mut bytes = s.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(
                check_format(&changed),
                Err(FormatError::Checksum),
                "index {i}"
            );
        }
    }

    #[test]
    fn malformed_secrets_are_classified() {
        assert_eq!(check_format("sk-abc"), Err(FormatError::Prefix));
        assert_eq!(check_format("kg_short"), Err(FormatError::Length));
        let s = generate().unwrap().secret;
        let bad = format!("kg_-{}", &s[4..]);
        assert_eq!(check_format(&bad), Err(FormatError::Alphabet));
    }

    #[test]
    fn digest_round_trips_through_text() {
        let d = KeyDigest::of("kg_example");
        assert_eq!(KeyDigest::parse(&d.to_string()), Some(d));
        assert_eq!(KeyDigest::parse("sha256:zz"), None);
        assert_eq!(KeyDigest::parse("md5:00"), None);
    }

    #[test]
    fn debug_of_new_secret_hides_it() {
        let n = generate().unwrap();
        assert!(!format!("{n:?}").contains(&n.secret));
    }
}
