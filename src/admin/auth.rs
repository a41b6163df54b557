//! Who is calling the admin API: the tokens `KEYGATE_ADMIN_TOKEN` configures, compared in
//! constant time, and the throttle on wrong tokens per client address. A token too short to
//! resist guessing, or one whose name part is unclear, stops keygate at start rather than serving
//! a weak API. Wrong tokens count against the client address in the policy's `auth_guard` limits,
//! kept apart from the data plane's; past them the address gets 429 for wrong tokens, never for
//! the right one, so a guessing neighbour cannot lock operators out.

use super::{error, AdminApi, Reply};
use http::StatusCode;
use pingora::protocols::http::ServerSession;
use std::net::IpAddr;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The shortest admin token accepted: 24 random characters are far beyond online guessing.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;

/// Why `KEYGATE_ADMIN_TOKEN` cannot be used. No message quotes any part of the value, which may
/// be the token itself.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("KEYGATE_ADMIN_TOKEN is not valid UTF-8")]
    NotUnicode,
    #[error(
        "KEYGATE_ADMIN_TOKEN must be NAME:TOKEN or a bare TOKEN without `:`, and the text before \
         its first `:` is not a NAME (letters, digits, `-` and `_`); a token that contains `:` is \
         written with a name, e.g. admin:TOKEN"
    )]
    BadName,
    #[error(
        "KEYGATE_ADMIN_TOKEN: the token may hold only printable ASCII characters other than space, \
         as clients send it in an Authorization header"
    )]
    BadCharacter,
    #[error(
        "KEYGATE_ADMIN_TOKEN: the token has {0} characters; at least {MIN_ADMIN_TOKEN_CHARS} are \
         required (e.g. `openssl rand -hex 24`)"
    )]
    TooShort(usize),
}

/// An admin credential: the token and the name it is audited under.
#[derive(Clone)]
pub struct AdminToken {
    pub name: String,
    token: Vec<u8>,
}

impl AdminToken {
    /// Parses `KEYGATE_ADMIN_TOKEN` (surrounding whitespace ignored). With a `:`, the text before
    /// the first one is always the name (audited as `admin:NAME`) and the rest is the token, which
    /// may itself contain `:`; without one, the value is the token (audited as `admin:admin`).
    /// The name part is never guessed from its characters, so a value means one thing only.
    pub fn parse(value: &str) -> Result<AdminToken, AdminTokenError> {
        let value = value.trim();
        let (name, token) = match value.split_once(':') {
            Some((name, token)) => {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    return Err(AdminTokenError::BadName);
                }
                (name, token)
            }
            None => ("admin", value),
        };
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminTokenError::BadCharacter);
        }
        if token.len() < MIN_ADMIN_TOKEN_CHARS {
            return Err(AdminTokenError::TooShort(token.len()));
        }
        Ok(AdminToken {
            name: name.to_owned(),
            token: token.as_bytes().to_vec(),
        })
    }

    /// The token `KEYGATE_ADMIN_TOKEN` sets; unset or empty leaves the admin API disabled.
    pub fn from_env() -> Result<Option<AdminToken>, AdminTokenError> {
        match std::env::var("KEYGATE_ADMIN_TOKEN") {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(AdminTokenError::NotUnicode),
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => Self::parse(&value).map(Some),
        }
    }

    fn matches(&self, presented: &[u8]) -> bool {
        // ct_eq on slices of different lengths returns false without revealing where they differ.
        self.token.ct_eq(presented).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why an admin request is not let in.
pub(super) enum Refused {
    Reply(Reply),
    /// Too many wrong tokens from the address; retry after this long.
    Throttled(Duration),
}

impl AdminApi {
    /// The admin token, if the request presents it; otherwise the response that refuses it. A
    /// wrong token counts against the client address; a missing one guesses nothing and does not.
    pub(super) fn login(&self, session: &ServerSession) -> Result<&AdminToken, Refused> {
        let Some(token) = &self.token else {
            return Err(Refused::Reply(error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "admin_disabled",
                "The admin API is disabled: set KEYGATE_ADMIN_TOKEN to enable it.",
            )));
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if token.matches(presented.as_bytes()) {
            return Ok(token);
        }
        let unauthorized = || {
            Refused::Reply(error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_admin_token",
                "Missing or incorrect admin token.",
            ))
        };
        if presented.is_empty() {
            return Err(unauthorized());
        }
        // The admin listener is TCP only, so the peer is always an internet address.
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        if let Some(after) = self.login_guard.record_failure(client) {
            return Err(Refused::Throttled(after));
        }
        Err(unauthorized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_with_and_without_names() {
        let t = AdminToken::parse("ops-bot:s3cret-0123456789abcdefghijkl").unwrap();
        assert_eq!(t.name, "ops-bot");
        assert!(t.matches(b"s3cret-0123456789abcdefghijkl"));
        assert!(!t.matches(b"ops-bot:s3cret-0123456789abcdefghijkl"));
        let t = AdminToken::parse("  plain-token-0123456789abcdefghij \n").unwrap();
        assert_eq!(t.name, "admin");
        assert!(t.matches(b"plain-token-0123456789abcdefghij"));
        assert!(!format!("{t:?}").contains("plain-token"));
    }

    #[test]
    fn the_first_colon_always_ends_the_name() {
        let t = AdminToken::parse("admin:a:b-0123456789abcdefghijklmn").unwrap();
        assert_eq!(t.name, "admin");
        assert!(t.matches(b"a:b-0123456789abcdefghijklmn"));
        for value in [
            "a.b:0123456789abcdefghijklmnop",
            ":0123456789abcdefghijklmnop",
            "x/y:0123456789abcdefghijklmnop",
        ] {
            assert!(
                matches!(AdminToken::parse(value), Err(AdminTokenError::BadName)),
                "{value}"
            );
        }
    }

    #[test]
    fn weak_tokens_are_refused() {
        let at_limit = "x".repeat(MIN_ADMIN_TOKEN_CHARS);
        assert!(AdminToken::parse(&at_limit).is_ok());
        assert!(matches!(
            AdminToken::parse(&at_limit[1..]),
            Err(AdminTokenError::TooShort(23))
        ));
        assert!(matches!(
            AdminToken::parse("ops:"),
            Err(AdminTokenError::TooShort(0))
        ));
        assert!(matches!(
            AdminToken::parse("ops:0123456789 abcdefghijklmnop"),
            Err(AdminTokenError::BadCharacter)
        ));
        assert!(matches!(
            AdminToken::parse("ops:0123456789abcdefghijklmnopé"),
            Err(AdminTokenError::BadCharacter)
        ));
    }
}
