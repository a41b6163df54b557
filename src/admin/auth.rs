//! Who is calling the admin API, and what they may do: the named tokens `KEYGATE_ADMIN_TOKENS`
//! and `KEYGATE_ADMIN_TOKEN` configure, each with a role, compared in constant time; the console's
//! session cookie as an alternative to the Bearer token, with its CSRF check on writes; and the
//! throttle on wrong tokens per client address.
//!
//! A token too short to resist guessing, or an entry whose name or role is unclear, stops keygate
//! at start rather than serving a weak API. Wrong tokens count against the client address in the
//! policy's `auth_guard` limits, kept apart from the data plane's; past them the address gets 429
//! for wrong tokens, never for the right one, so a guessing neighbour cannot lock operators out.

use super::session::{Lookup, Session};
use super::{error, AdminApi, Reply};
use http::{Method, StatusCode};
use pingora::protocols::http::ServerSession;
use std::net::IpAddr;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The shortest admin token accepted: 24 random characters are far beyond online guessing.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads everything and changes keys.
    Admin,
    /// Reads everything, changes nothing.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// Why an admin token setting cannot be used, and where (the variable, and the entry of a list).
/// No message quotes any part of the value, which may be the token itself.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct AdminTokenError {
    pub at: String,
    pub problem: TokenProblem,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("the value is not valid UTF-8")]
    NotUnicode,
    #[error(
        "must be NAME:TOKEN or a bare TOKEN without `:`, and the text before its first `:` is \
         not a NAME (letters, digits, `-` and `_`); a token that contains `:` is written with a \
         name, e.g. admin:TOKEN"
    )]
    BadName,
    #[error(
        "each entry must be NAME:ROLE:TOKEN, with a NAME of letters, digits, `-` and `_`, and \
         entries separated by `,`"
    )]
    BadEntry,
    #[error("the role must be `admin` or `viewer`")]
    BadRole,
    #[error("the name `{0}` is given to two tokens; each token needs a name of its own")]
    DuplicateName(String),
    #[error("two entries hold the same token; each name needs a token of its own")]
    DuplicateToken,
    #[error(
        "the token may hold only printable ASCII characters other than space, as clients send \
         it in an Authorization header"
    )]
    BadCharacter,
    #[error(
        "the token has {0} characters; at least {MIN_ADMIN_TOKEN_CHARS} are required (e.g. \
         `openssl rand -hex 24`)"
    )]
    TooShort(usize),
}

/// An admin credential: the token, the name it is audited under, and its role.
#[derive(Clone)]
pub struct AdminToken {
    pub name: String,
    pub role: Role,
    token: Vec<u8>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl AdminToken {
    /// Parses `KEYGATE_ADMIN_TOKEN` (surrounding whitespace ignored), an `admin` token. With a
    /// `:`, the text before the first one is always the name (audited as `admin:NAME`) and the
    /// rest is the token, which may itself contain `:`; without one, the value is the token
    /// (audited as `admin:admin`). The name part is never guessed from its characters, so a
    /// value means one thing only.
    pub fn parse(value: &str) -> Result<AdminToken, TokenProblem> {
        let value = value.trim();
        let (name, token) = match value.split_once(':') {
            Some((name, token)) if valid_name(name) => (name, token),
            Some(_) => return Err(TokenProblem::BadName),
            None => ("admin", value),
        };
        Self::new(name, Role::Admin, token)
    }

    /// Parses one `NAME:ROLE:TOKEN` entry of `KEYGATE_ADMIN_TOKENS`.
    pub fn parse_entry(entry: &str) -> Result<AdminToken, TokenProblem> {
        let mut parts = entry.trim().splitn(3, ':');
        let (Some(name), Some(role), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenProblem::BadEntry);
        };
        if !valid_name(name) {
            return Err(TokenProblem::BadEntry);
        }
        let role = match role {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            _ => return Err(TokenProblem::BadRole),
        };
        Self::new(name, role, token)
    }

    fn new(name: &str, role: Role, token: &str) -> Result<AdminToken, TokenProblem> {
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenProblem::BadCharacter);
        }
        if token.len() < MIN_ADMIN_TOKEN_CHARS {
            return Err(TokenProblem::TooShort(token.len()));
        }
        Ok(AdminToken {
            name: name.to_owned(),
            role,
            token: token.as_bytes().to_vec(),
        })
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
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Every admin token of the process; none leaves the admin API disabled.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens(Vec<AdminToken>);

impl From<Option<AdminToken>> for AdminTokens {
    fn from(token: Option<AdminToken>) -> AdminTokens {
        AdminTokens(token.into_iter().collect())
    }
}

impl AdminTokens {
    /// The tokens of `KEYGATE_ADMIN_TOKENS` (a list) and `KEYGATE_ADMIN_TOKEN` (one admin
    /// token), either or both; unset or empty variables add none.
    pub fn from_env() -> Result<AdminTokens, AdminTokenError> {
        let read = |var: &str| match std::env::var(var) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(AdminTokenError {
                at: var.to_owned(),
                problem: TokenProblem::NotUnicode,
            }),
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => Ok(Some(value)),
        };
        Self::parse(
            read("KEYGATE_ADMIN_TOKENS")?.as_deref(),
            read("KEYGATE_ADMIN_TOKEN")?.as_deref(),
        )
    }

    /// The tokens of a `KEYGATE_ADMIN_TOKENS` value and a `KEYGATE_ADMIN_TOKEN` value. Names and
    /// tokens must be unique across both, so that each change is audited under one name.
    pub fn parse(list: Option<&str>, single: Option<&str>) -> Result<AdminTokens, AdminTokenError> {
        let mut tokens = Vec::new();
        // A trailing or doubled `,` leaves an empty entry, which names no token.
        let entries = list.unwrap_or("").split(',').enumerate();
        for (i, entry) in entries.filter(|(_, e)| !e.trim().is_empty()) {
            let token = AdminToken::parse_entry(entry).map_err(|problem| AdminTokenError {
                at: format!("KEYGATE_ADMIN_TOKENS, entry {}", i + 1),
                problem,
            })?;
            tokens.push(("KEYGATE_ADMIN_TOKENS", i + 1, token));
        }
        if let Some(value) = single {
            let token = AdminToken::parse(value).map_err(|problem| AdminTokenError {
                at: "KEYGATE_ADMIN_TOKEN".to_owned(),
                problem,
            })?;
            tokens.push(("KEYGATE_ADMIN_TOKEN", 1, token));
        }
        for (i, (var, entry, token)) in tokens.iter().enumerate() {
            let at = || match *var {
                "KEYGATE_ADMIN_TOKEN" => var.to_string(),
                _ => format!("{var}, entry {entry}"),
            };
            for (_, _, earlier) in &tokens[..i] {
                if earlier.name == token.name {
                    return Err(AdminTokenError {
                        at: at(),
                        problem: TokenProblem::DuplicateName(token.name.clone()),
                    });
                }
                if earlier.matches(&token.token) {
                    return Err(AdminTokenError {
                        at: at(),
                        problem: TokenProblem::DuplicateToken,
                    });
                }
            }
        }
        Ok(AdminTokens(tokens.into_iter().map(|(.., t)| t).collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token `presented` is, comparing it with every token so that the time taken does not
    /// tell which one came close.
    fn find(&self, presented: &[u8]) -> Option<&AdminToken> {
        self.0.iter().fold(None, |found, token| {
            let matches = token.matches(presented);
            found.or(matches.then_some(token))
        })
    }
}

/// Who a request comes from, once let in.
pub(super) struct Caller {
    pub name: String,
    pub role: Role,
    /// The console session that let it in, when not a Bearer token.
    pub session: Option<Session>,
}

/// Why an admin request is not let in.
pub(super) enum Refused {
    Reply(Reply),
    /// Too many wrong tokens from the address; retry after this long.
    Throttled(Duration),
}

/// Whether `method` changes something, and so needs an admin and, from a browser, a CSRF token.
pub(super) fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub(super) fn unauthorized() -> Reply {
    error(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_admin_token",
        "Missing or incorrect admin token.",
    )
}

impl AdminApi {
    /// Who sends the request: the Bearer token's owner when there is an `Authorization` header,
    /// else the session cookie's; otherwise the response that refuses it. A write by cookie must
    /// carry the session's CSRF token.
    pub(super) fn authenticate(&self, session: &ServerSession) -> Result<Caller, Refused> {
        let headers = &session.req_header().headers;
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let presented = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map_or("", str::trim);
            return self.check_token(session, presented).map(|t| Caller {
                name: t.name.clone(),
                role: t.role,
                session: None,
            });
        }
        let Some(cookie) = super::session::cookie(headers) else {
            return Err(Refused::Reply(unauthorized()));
        };
        match self.sessions.lookup(cookie) {
            Lookup::Found(found) => {
                if is_write(&session.req_header().method) {
                    let sent = headers
                        .get("x-csrf-token")
                        .map_or(&b""[..], |v| v.as_bytes());
                    if !bool::from(found.csrf_token.as_bytes().ct_eq(sent)) {
                        return Err(Refused::Reply(error(
                            StatusCode::FORBIDDEN,
                            "permission_error",
                            "csrf_failed",
                            "A write from the console must carry the session's X-CSRF-Token header.",
                        )));
                    }
                }
                Ok(Caller {
                    name: found.name.clone(),
                    role: found.role,
                    session: Some(found),
                })
            }
            Lookup::Ended => Err(Refused::Reply(error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "session_expired",
                "The console session has ended; log in again.",
            ))),
        }
    }

    /// The token `presented` is; a wrong one counts against the client address, a missing one
    /// guesses nothing and does not.
    pub(super) fn check_token(
        &self,
        session: &ServerSession,
        presented: &str,
    ) -> Result<&AdminToken, Refused> {
        if let Some(token) = self.tokens.find(presented.as_bytes()) {
            return Ok(token);
        }
        if presented.is_empty() {
            return Err(Refused::Reply(unauthorized()));
        }
        // The admin listener is TCP only, so the peer is always an internet address.
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        if let Some(after) = self.login_guard.record_failure(client) {
            return Err(Refused::Throttled(after));
        }
        Err(Refused::Reply(unauthorized()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_with_and_without_names() {
        let t = AdminToken::parse("ops-bot:s3cret-0123456789abcdefghijkl").unwrap();
        assert_eq!(t.name, "ops-bot");
        assert_eq!(t.role, Role::Admin);
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
            assert_eq!(
                AdminToken::parse(value).unwrap_err(),
                TokenProblem::BadName,
                "{value}"
            );
        }
    }

    #[test]
    fn weak_tokens_are_refused() {
        let at_limit = "x".repeat(MIN_ADMIN_TOKEN_CHARS);
        assert!(AdminToken::parse(&at_limit).is_ok());
        for (value, problem) in [
            (&at_limit[1..], TokenProblem::TooShort(23)),
            ("ops:", TokenProblem::TooShort(0)),
            (
                "ops:0123456789 abcdefghijklmnop",
                TokenProblem::BadCharacter,
            ),
            (
                "ops:0123456789abcdefghijklmnopé",
                TokenProblem::BadCharacter,
            ),
        ] {
            assert_eq!(AdminToken::parse(value).unwrap_err(), problem, "{value}");
        }
    }

    #[test]
    fn token_lists_name_a_role_per_token() {
        let tokens = AdminTokens::parse(
            Some("alice:admin:a-0123456789abcdefghijklmnop, grafana:viewer:g:0123456789abcdefghijklmn"),
            Some("ops:o-0123456789abcdefghijklmnop"),
        )
        .unwrap();
        let alice = tokens.find(b"a-0123456789abcdefghijklmnop").unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Admin));
        let grafana = tokens.find(b"g:0123456789abcdefghijklmn").unwrap();
        assert_eq!(
            (grafana.name.as_str(), grafana.role),
            ("grafana", Role::Viewer)
        );
        let ops = tokens.find(b"o-0123456789abcdefghijklmnop").unwrap();
        assert_eq!((ops.name.as_str(), ops.role), ("ops", Role::Admin));
        assert!(tokens.find(b"").is_none());
        assert!(tokens
            .find(b"alice:admin:a-0123456789abcdefghijklmnop")
            .is_none());
    }

    #[test]
    fn bad_token_lists_are_refused_with_the_entry() {
        let long = "0123456789abcdefghijklmnop";
        for (list, single, at, problem) in [
            (
                format!("alice:{long}"),
                None,
                "entry 1",
                TokenProblem::BadEntry,
            ),
            (
                format!("alice:root:{long}"),
                None,
                "entry 1",
                TokenProblem::BadRole,
            ),
            (
                format!("a:admin:x{long},b:viewer:short"),
                None,
                "entry 2",
                TokenProblem::TooShort(5),
            ),
            (
                format!("a:admin:x{long},a:viewer:y{long}"),
                None,
                "entry 2",
                TokenProblem::DuplicateName("a".into()),
            ),
            (
                format!("a:admin:x{long}"),
                Some(format!("b:x{long}")),
                "KEYGATE_ADMIN_TOKEN",
                TokenProblem::DuplicateToken,
            ),
            (
                format!("a.b:admin:x{long}"),
                None,
                "entry 1",
                TokenProblem::BadEntry,
            ),
        ] {
            let e = AdminTokens::parse(Some(&list), single.as_deref()).unwrap_err();
            assert!(e.at.contains(at), "{list}: {e}");
            assert_eq!(e.problem, problem, "{list}");
            assert!(!e.to_string().contains(long), "never the token: {e}");
        }
    }
}
