//! Console sessions: a login with an admin or viewer token opens a session held in this
//! process's memory, named by a random cookie (`kg_session`: HttpOnly, SameSite=Strict, Secure
//! behind TLS) and ending after `admin.session_ttl`, at logout or at restart. Each session has a
//! CSRF token of its own that every write by cookie must echo in `X-CSRF-Token`: SameSite alone
//! leaves older browsers and same-site subdomains able to forge a write.
//!
//! Only SHA-256 digests of the cookies are kept, so the map holds nothing a memory dump could
//! log in with.

use super::auth::{Caller, Refused, Role};
use super::{error, json_response, parse_json, throttled, AdminApi};
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, Response, StatusCode};
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The session cookie's name.
pub const COOKIE: &str = "kg_session";

/// Sessions kept at most: logins past it end the sessions closest to their end.
const MAX_SESSIONS: usize = 4096;

/// A console login.
#[derive(Debug, Clone)]
pub(super) struct Session {
    /// The name of the token it logged in with.
    pub name: String,
    pub role: Role,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

pub(super) enum Lookup {
    Found(Session),
    /// Unknown, expired or logged out.
    Ended,
}

/// The open sessions, by the digest of their cookie.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the OS random source failed: {0}")]
pub(super) struct RandomError(String);

fn random_hex() -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(hex::encode(bytes))
}

fn digest(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `name`'s token; returns its cookie value and the session.
    pub(super) fn open(
        &self,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(String, Session), RandomError> {
        let cookie = random_hex()?;
        let session = Session {
            name: name.to_owned(),
            role,
            csrf_token: random_hex()?,
            expires_at: Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default(),
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        open.retain(|_, s| s.expires_at > now);
        while open.len() >= MAX_SESSIONS {
            let Some(first) = open
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
            else {
                break;
            };
            open.remove(&first);
        }
        open.insert(digest(&cookie), session.clone());
        Ok((cookie, session))
    }

    pub(super) fn lookup(&self, cookie: &str) -> Lookup {
        let key = digest(cookie);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.get(&key) {
            Some(s) if s.expires_at > Utc::now() => Lookup::Found(s.clone()),
            Some(_) => {
                open.remove(&key);
                Lookup::Ended
            }
            None => Lookup::Ended,
        }
    }

    pub(super) fn close(&self, cookie: &str) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest(cookie));
    }
}

/// The `kg_session` cookie of a request, if it sends one.
pub(super) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

fn session_json(caller: &Caller, session: Option<&Session>) -> serde_json::Value {
    json!({
        "name": caller.name,
        "role": caller.role.as_str(),
        "csrf_token": session.map(|s| &s.csrf_token),
        "expires_at": session.map(|s| s.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    })
}

impl AdminApi {
    /// `POST /admin/session`: a login with `{"token"}`. A wrong token counts against the address
    /// like any wrong admin token.
    pub(super) async fn login(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Login {
            token: String,
        }
        let body = match super::read_body(session).await {
            Ok(b) => b,
            Err(reply) => return json_response(reply),
        };
        let login: Login = match parse_json(&body) {
            Ok(l) => l,
            Err(reply) => return json_response(reply),
        };
        let token = match self.check_token(session, login.token.trim()) {
            Ok(t) => t,
            Err(Refused::Reply(reply)) => return json_response(reply),
            Err(Refused::Throttled(after)) => return throttled(after),
        };
        let ttl = self.reloader.store().load().session_ttl;
        let (cookie, opened) = match self.sessions.open(&token.name, token.role, ttl) {
            Ok(o) => o,
            Err(e) => {
                return json_response(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "internal_error",
                    e.to_string(),
                ))
            }
        };
        tracing::info!(name = %token.name, role = token.role.as_str(), "console login");
        let caller = Caller {
            name: token.name.clone(),
            role: token.role,
            session: None,
        };
        let mut response = json_response((StatusCode::OK, session_json(&caller, Some(&opened))));
        let secure = if self.behind_tls(session) {
            "; Secure"
        } else {
            ""
        };
        let set = format!(
            "{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            ttl.as_secs()
        );
        if let Ok(value) = http::HeaderValue::from_str(&set) {
            response
                .headers_mut()
                .insert(http::header::SET_COOKIE, value);
        }
        response
    }

    /// `GET /admin/session` (who is logged in) and `DELETE /admin/session` (logout).
    pub(super) fn session_route(
        &self,
        session: &ServerSession,
        method: &Method,
        caller: &Caller,
    ) -> Response<Vec<u8>> {
        match *method {
            Method::GET => json_response((
                StatusCode::OK,
                session_json(caller, caller.session.as_ref()),
            )),
            Method::DELETE => {
                if let Some(cookie) = cookie(&session.req_header().headers) {
                    self.sessions.close(cookie);
                }
                let mut response = json_response((StatusCode::OK, json!({"ok": true})));
                response.headers_mut().insert(
                    http::header::SET_COOKIE,
                    http::HeaderValue::from_static(
                        "kg_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                    ),
                );
                response
            }
            _ => json_response(super::unknown(method, "session")),
        }
    }

    /// Whether the browser reached the admin listener over TLS: the listener itself speaks plain
    /// HTTP, so only a trusted proxy's `X-Forwarded-Proto: https` says so.
    fn behind_tls(&self, session: &ServerSession) -> bool {
        let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        else {
            return false;
        };
        let policy = self.reloader.store().load();
        crate::limits::ip::allowed(peer, &policy.trusted_proxies)
            && !policy.trusted_proxies.is_empty()
            && session
                .req_header()
                .headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }
}
