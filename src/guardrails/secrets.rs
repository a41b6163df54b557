//! The `secrets` detector: credentials by their issuers' published formats.
//!
//! - **aws_access_key**: `AKIA`, `ASIA`, `ABIA` or `ACCA` and 16 upper-case letters or digits
//!   (the key id; a secret access key has no recognisable form of its own).
//! - **github**: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` and 36 or more letters or digits;
//!   `github_pat_` fine-grained tokens (22 and 59 characters around an `_`).
//! - **gitlab**: `glpat-` and 20 or more token characters.
//! - **slack**: `xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-` and 10 or more token characters.
//! - **pem_private_key**: a `-----BEGIN … PRIVATE KEY-----` block through its `END` line, or the
//!   header alone when the block is cut off (a truncated key is still a leak).
//! - **jwt**: three base64url segments whose first decodes to a JSON header with `"alg"`; three
//!   dot-separated words are not a token. A header as JOSE libraries write it, compact JSON
//!   starting `{"`, encodes to `eyI` or `eyJ`: the search looks for those three characters, not
//!   for the `ey` of every "they" and "key" in prose.
//! - **openai** (`sk-`, `sk-proj-`, `sk-svcacct-`, `sk-admin-`) and **anthropic** (`sk-ant-`):
//!   the prefix and 20 (32 for Anthropic) or more token characters mixing upper case, lower case
//!   and digits, so that `sk-learn-style-hyphenated-words` is not a key.
//! - **keygate**: `kg_` virtual keys whose checksum verifies (`keys::secret`), so an example or
//!   mistyped key is not reported.

use super::table::{accept, Entry, Table};
use super::text::char_after;
use super::SecretKind;
use base64::Engine;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

static TABLE: [Entry<SecretKind>; 10] = [
    Entry {
        kind: SecretKind::PemPrivateKey,
        pattern: r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[A-Za-z0-9+/=\s:,.-]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)?",
        validate: accept,
    },
    Entry {
        kind: SecretKind::AwsAccessKey,
        pattern: r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)",
        validate: accept,
    },
    Entry {
        kind: SecretKind::Github,
        pattern: r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{36,251}(?-u:\b)",
        validate: accept,
    },
    Entry {
        kind: SecretKind::Github,
        pattern: r"(?-u:\b)github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}(?-u:\b)",
        validate: accept,
    },
    Entry {
        kind: SecretKind::Gitlab,
        pattern: r"(?-u:\b)glpat-[A-Za-z0-9_.-]{20,}",
        validate: trim_trailing_dots,
    },
    Entry {
        kind: SecretKind::Slack,
        pattern: r"(?-u:\b)xox[baprs]-[A-Za-z0-9-]{10,}",
        validate: accept,
    },
    Entry {
        kind: SecretKind::Jwt,
        pattern: r"(?-u:\b)ey[IJ][A-Za-z0-9_-]{9,}\.ey[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*",
        validate: jwt,
    },
    Entry {
        kind: SecretKind::Anthropic,
        pattern: r"(?-u:\b)sk-ant-[A-Za-z0-9_-]{32,}",
        validate: random_tail,
    },
    Entry {
        kind: SecretKind::Openai,
        pattern: r"(?-u:\b)sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        validate: openai,
    },
    Entry {
        kind: SecretKind::Keygate,
        pattern: r"(?-u:\b)kg_[A-Za-z0-9]{38}(?-u:\b)",
        validate: keygate,
    },
];

static CACHE: LazyLock<Mutex<HashMap<Vec<SecretKind>, Table<SecretKind>>>> =
    LazyLock::new(Default::default);

#[derive(Debug)]
pub(crate) struct Secrets {
    table: Table<SecretKind>,
}

impl Secrets {
    pub(crate) fn compile(kinds: &[SecretKind]) -> Secrets {
        Secrets {
            table: Table::select(&CACHE, &TABLE, kinds),
        }
    }

    pub(crate) fn find(&self, text: &str, found: impl FnMut(SecretKind, usize, usize)) {
        self.table.find(text, found)
    }
}

/// A token may end a sentence: the full stop is not part of it.
fn trim_trailing_dots(text: &str, start: usize, end: usize) -> Option<usize> {
    let trimmed = text[start..end].trim_end_matches('.');
    Some(start + trimmed.len())
}

/// Keys are random: their tail mixes upper case, lower case and digits, which hyphenated prose
/// (`sk-learn-…`) does not.
fn random_tail(text: &str, start: usize, end: usize) -> Option<usize> {
    let tail = &text.as_bytes()[start..end];
    let upper = tail.iter().any(u8::is_ascii_uppercase);
    let lower = tail.iter().any(u8::is_ascii_lowercase);
    let digit = tail.iter().any(u8::is_ascii_digit);
    (upper && lower && digit).then_some(end)
}

fn openai(text: &str, start: usize, end: usize) -> Option<usize> {
    if text[start..end].starts_with("sk-ant-") {
        return None;
    }
    random_tail(text, start, end)
}

fn keygate(text: &str, start: usize, end: usize) -> Option<usize> {
    crate::keys::secret::check_format(&text[start..end])
        .ok()
        .map(|()| end)
}

/// The header decodes to a JSON object naming its algorithm. Headers are short; the first 64
/// characters hold `"alg"` in every real token, and bound the work.
fn jwt(text: &str, start: usize, end: usize) -> Option<usize> {
    let token = &text[start..end];
    let header = token.split('.').next()?;
    let head = &header[..header.len().min(64) / 4 * 4];
    let mut buf = [0u8; 48];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(head, &mut buf)
        .ok()?;
    let decoded = &buf[..n];
    let is_header = decoded.first() == Some(&b'{') && decoded.windows(5).any(|w| w == b"\"alg\"");
    // A dot right after is a fourth segment: some other dotted identifier.
    (is_header && char_after(text, end) != Some('.')).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(SecretKind, String)> {
        let mut out = Vec::new();
        Secrets::compile(&SecretKind::ALL)
            .find(text, |k, s, e| out.push((k, text[s..e].to_string())));
        out
    }

    fn kinds(text: &str) -> Vec<SecretKind> {
        found(text).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn aws_access_keys() {
        assert_eq!(
            found("aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"),
            vec![(SecretKind::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE".to_string())]
        );
        assert!(
            kinds("AKIAIOSFODNN7EXAMPL and AKIAIOSFODNN7EXAMPLEX and akiaiosfodnn7example")
                .is_empty()
        );
    }

    #[test]
    fn github_gitlab_and_slack_tokens() {
        let ghp = format!("ghp_{}", "a1B2c3D4e5".repeat(4).get(..36).unwrap());
        let pat = format!("github_pat_{}_{}", "A".repeat(22), "b".repeat(59));
        let text =
            format!("{ghp} {pat} glpat-xY3kq9Lm2Nb7Vc4Zt8Rw. xoxb-123456789012-abcdefABCDEF");
        assert_eq!(
            found(&text),
            vec![
                (SecretKind::Github, ghp),
                (SecretKind::Github, pat),
                (SecretKind::Gitlab, "glpat-xY3kq9Lm2Nb7Vc4Zt8Rw".to_string()),
                (
                    SecretKind::Slack,
                    "xoxb-123456789012-abcdefABCDEF".to_string()
                ),
            ]
        );
        assert!(kinds("ghp_short glpat-short xoxq-123456789012 xoxb-1").is_empty());
    }

    #[test]
    fn pem_private_keys_whole_block_or_header_alone() {
        let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3\nxfn/ygWep4PAtGoSo+Y=\n-----END RSA PRIVATE KEY-----";
        let text = format!("key:\n{block}\nthanks");
        assert_eq!(
            found(&text),
            vec![(SecretKind::PemPrivateKey, block.to_string())]
        );
        assert_eq!(
            kinds("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA"),
            vec![SecretKind::PemPrivateKey]
        );
        assert!(
            kinds("-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----").is_empty()
        );
        assert!(kinds("-----BEGIN CERTIFICATE-----").is_empty());
    }

    #[test]
    fn jwts_but_not_dotted_words() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(
            found(&format!("Bearer {jwt}")),
            vec![(SecretKind::Jwt, jwt.to_string())]
        );
        assert!(kinds("alpha.beta.gamma eyesight.eyeglasses.eyebrows").is_empty());
        // A header with a digit-led first member name still starts `eyI`.
        let digit_led = "eyIxIjoiYSIsImFsZyI6Im5vbmUifQ.eyJzdWIiOiIxMjM0In0.c2ln";
        assert_eq!(kinds(digit_led), vec![SecretKind::Jwt]);
        // Shaped like a token, but its header is not a JOSE header.
        assert!(kinds("eyJmb28iOiJiYXIifQxx.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl").is_empty());
    }

    #[test]
    fn openai_and_anthropic_keys() {
        let legacy = "sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk6l";
        let project = "sk-proj-Xy7_Kq2mN8pL-4vB9cR1tZ6wA3sD5fG0hJ8kL2mN4pQ";
        let anthropic = "sk-ant-api03-Rk8vN2qL5mX9pT3wY7zB1cF4hJ6dG0sA-QeW8uIoP2lKj4HgF6dS9aZ";
        assert_eq!(
            found(&format!("{legacy} {project} {anthropic}")),
            vec![
                (SecretKind::Openai, legacy.to_string()),
                (SecretKind::Openai, project.to_string()),
                (SecretKind::Anthropic, anthropic.to_string()),
            ]
        );
        assert!(
            kinds("pip install sk-learn-compatible-estimators and task-xyz sk-short").is_empty()
        );
        // Without the anthropic rule, an Anthropic key is still not called an OpenAI one.
        let mut out = Vec::new();
        Secrets::compile(&[SecretKind::Openai]).find(anthropic, |k, _, _| out.push(k));
        assert!(out.is_empty());
    }

    #[test]
    fn keygate_keys_need_a_valid_checksum() {
        let key = crate::keys::secret::generate().unwrap().secret;
        assert_eq!(
            found(&format!("use {key} here")),
            vec![(SecretKind::Keygate, key.clone())]
        );
        let mut broken = key.into_bytes();
        let last = broken.len() - 1;
        broken[last] = if broken[last] == b'a' { b'b' } else { b'a' };
        let broken = String::from_utf8(broken).unwrap();
        assert!(kinds(&broken).is_empty());
    }

    #[test]
    fn every_table_entry_compiles() {
        for kind in SecretKind::ALL {
            Secrets::compile(&[kind]);
        }
    }
}
