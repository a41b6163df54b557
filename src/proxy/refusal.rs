//! Everything keygate answers itself instead of the provider: refusals (the key, the request or a
//! limit said no) and failures (no provider endpoint answered in time, or keygate failed).
//!
//! One enum holds them all, and everything a caller or an operator sees is derived from it: the
//! HTTP status, the error type and code, the metrics `reason` and the audit field. Rendering is a
//! function of the enum per API dialect, so a client library's error handling never depends on a
//! string chosen at the call site: OpenAI's (`{"error":{"message","type","param","code"}}`), and
//! Anthropic's (`{"type":"error","error":{"type","message"},"request_id"}`) on its Messages API.
//! Either makes the official SDKs raise the right exception class (`AuthenticationError`,
//! `PermissionDeniedError`, `RateLimitError`, …).

use super::dialect::Dialect;
use super::head;
use crate::domain::Operation;
use crate::limits::RateStatus;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// What keygate answers when it does not forward a request, or cannot finish forwarding it.
/// The `Display` text is the message the client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("You didn't provide an API key. Send your keygate key in the Authorization header as `Bearer kg_...`, or in `x-api-key`.")]
    MissingKey,
    #[error("Incorrect API key provided.")]
    InvalidKey,
    #[error("This API key has expired.")]
    KeyExpired,
    #[error("This API key is paused.")]
    KeyPaused,
    #[error("This API key may not be used from this network address.")]
    IpNotAllowed,
    #[error("This API key may not use the `{}` operation.", .0.as_str())]
    OperationNotAllowed(Operation),
    #[error("The model `{0}` does not exist or is not served by this gateway.")]
    ModelNotFound(Box<str>),
    #[error("This API key may not use the model `{0}`.")]
    ModelNotAllowed(Box<str>),
    /// A body or header keygate cannot read; `param` names the offending field, if one does.
    #[error("{message}")]
    InvalidRequest {
        message: Cow<'static, str>,
        param: Option<Cow<'static, str>>,
    },
    #[error("The request body exceeds the limit of {0} bytes.")]
    BodyTooLarge(usize),
    /// A body without Content-Length over Pingora's 64 KiB replay buffer, on a connection whose
    /// body reader keygate cannot set up again (not HTTP/1).
    #[error("Request bodies without a Content-Length over 64 KiB are not supported on this connection; send the body with a Content-Length header.")]
    ChunkedBodyTooLarge,
    /// The body did not arrive whole within `server.body_timeout`.
    #[error("The request body did not arrive within {}.", humantime::format_duration(*.0))]
    RequestTimeout(Duration),
    /// The path as the client sent it, bounded (see [`Refusal::unknown_route`]).
    #[error("Unknown request URL: {0}. keygate serves POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages, /v1/messages/count_tokens and GET /v1/models.")]
    UnknownRoute(Box<str>),
    #[error("{method} is not allowed on {path}.")]
    MethodNotAllowed { method: Box<str>, path: Box<str> },
    #[error("Rate limit reached for {limit}. Retry after {:.1}s.", .retry_after.as_secs_f64())]
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
    #[error("Concurrency limit reached for {limit}; wait for a request of this key to finish.")]
    ConcurrencyLimited {
        limit: String,
        retry_after: Duration,
    },
    #[error("Budget exceeded for {limit}; it resets in {}.", humantime::format_duration(Duration::from_secs(.resets_in.as_secs().max(1))))]
    BudgetExceeded { limit: String, resets_in: Duration },
    /// The brute-force guard: this address failed to authenticate too often.
    #[error("Too many failed authentications from this address.")]
    AuthGuard { retry_after: Duration },
    #[error("The gateway could not reach any endpoint of the model's provider.")]
    UpstreamUnavailable,
    #[error("The model's provider did not answer in time.")]
    UpstreamTimeout,
    /// The provider refused keygate's own credential (401 or 403). Its answer is not passed on:
    /// it may quote that credential, and an SDK would blame the tenant's key for it.
    #[error("The model's provider refused the gateway's own credential; your API key is not at fault. Tell the gateway's operator.")]
    UpstreamAuthFailed,
    #[error("The gateway failed to process the request.")]
    Internal,
    /// The data plane has `server.max_connections` open: the connection is refused as a whole.
    #[error("The gateway is at its limit of open connections; retry shortly.")]
    ConnectionLimit,
    /// A guardrail whose action is `block` found something in the request. The message names
    /// the guardrail and its rule, never what matched.
    #[error("The request was blocked by guardrail `{guardrail}` (rule `{rule}`).")]
    ContentPolicy {
        guardrail: Arc<str>,
        rule: Cow<'static, str>,
    },
    /// A guardrail with `apply_to: [.., response]` and `action: block` found something in the
    /// provider's answer.
    #[error("The response was blocked by guardrail `{guardrail}` (rule `{rule}`).")]
    ResponseBlocked {
        guardrail: Arc<str>,
        rule: Cow<'static, str>,
    },
    /// A moderation guardrail with `on_error: block` got no verdict from its service.
    #[error("The request could not be checked by guardrail `{0}`: its moderation service is unavailable; retry shortly.")]
    ModerationUnavailable(Arc<str>),
    /// Fleet mode with `on_error: fail_closed`: the shared limit state could not be reached.
    #[error("The gateway cannot reach its shared limit state; retry shortly.")]
    StateUnavailable,
}

impl Refusal {
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Refusal::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    /// An invalid request that names the field at fault.
    pub fn invalid_param(param: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal::InvalidRequest {
            message: message.into(),
            param: Some(Cow::Borrowed(param)),
        }
    }

    /// The path is client input: it is echoed bounded.
    pub fn unknown_route(path: &str) -> Self {
        Refusal::UnknownRoute(path.chars().take(200).collect())
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Refusal::MethodNotAllowed {
            method: method.into(),
            path: path.chars().take(200).collect(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Refusal::MissingKey | Refusal::InvalidKey | Refusal::KeyExpired => 401,
            Refusal::KeyPaused
            | Refusal::IpNotAllowed
            | Refusal::OperationNotAllowed(_)
            | Refusal::ModelNotAllowed(_) => 403,
            Refusal::ModelNotFound(_) | Refusal::UnknownRoute(_) => 404,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::InvalidRequest { .. } | Refusal::ContentPolicy { .. } => 400,
            Refusal::RequestTimeout(_) => 408,
            Refusal::BodyTooLarge(_) | Refusal::ChunkedBodyTooLarge => 413,
            Refusal::RateLimited { .. }
            | Refusal::ConcurrencyLimited { .. }
            | Refusal::BudgetExceeded { .. }
            | Refusal::AuthGuard { .. } => 429,
            Refusal::Internal => 500,
            Refusal::UpstreamUnavailable
            | Refusal::UpstreamAuthFailed
            | Refusal::ResponseBlocked { .. } => 502,
            Refusal::UpstreamTimeout => 504,
            Refusal::ConnectionLimit => 503,
            Refusal::StateUnavailable | Refusal::ModerationUnavailable(_) => 503,
        }
    }

    /// The error's machine-readable code, the same in every dialect.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MissingKey => "missing_api_key",
            Refusal::InvalidKey => "invalid_api_key",
            Refusal::KeyExpired => "key_expired",
            Refusal::KeyPaused => "key_paused",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::OperationNotAllowed(_) => "operation_not_allowed",
            Refusal::ModelNotFound(_) => "model_not_found",
            Refusal::ModelNotAllowed(_) => "model_not_allowed",
            Refusal::InvalidRequest { .. } => "invalid_request",
            Refusal::BodyTooLarge(_) | Refusal::ChunkedBodyTooLarge => "request_too_large",
            Refusal::RequestTimeout(_) => "request_timeout",
            Refusal::UnknownRoute(_) => "unknown_route",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            // The guard keeps OpenAI's rate-limit code, which clients already handle.
            Refusal::RateLimited { .. } | Refusal::AuthGuard { .. } => "rate_limit_exceeded",
            Refusal::ConcurrencyLimited { .. } => "concurrency_limit_exceeded",
            Refusal::BudgetExceeded { .. } => "budget_exceeded",
            Refusal::UpstreamUnavailable => "upstream_unavailable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::UpstreamAuthFailed => "upstream_auth_failed",
            Refusal::Internal => "internal_error",
            Refusal::ConnectionLimit => "connection_limit_exceeded",
            Refusal::StateUnavailable => "state_unavailable",
            Refusal::ContentPolicy { .. } => "content_policy_violation",
            Refusal::ModerationUnavailable(_) => "moderation_unavailable",
            Refusal::ResponseBlocked { .. } => "response_blocked",
        }
    }

    /// Why keygate refused, as the metrics `reason` label and the audit `refusal` field: the code,
    /// except for the guard, whose code is a key's rate-limit code. `None` for failures that are
    /// no refusal (the provider or keygate failed).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Refusal::AuthGuard { .. } => Some("auth_guard"),
            Refusal::UpstreamUnavailable
            | Refusal::UpstreamTimeout
            | Refusal::UpstreamAuthFailed
            | Refusal::Internal
            | Refusal::StateUnavailable => None,
            other => Some(other.code()),
        }
    }

    /// When asking again can succeed: sent as `retry-after` and `retry-after-ms`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after, .. }
            | Refusal::ConcurrencyLimited { retry_after, .. }
            | Refusal::AuthGuard { retry_after } => Some(*retry_after),
            // Connections close all the time; a place is usually free again within a second.
            Refusal::ConnectionLimit => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Sent as `x-should-retry`, which the OpenAI SDKs honour over the status code: a budget
    /// cannot recover before its period ends, so retrying it only wastes the client's time.
    pub fn should_retry(&self) -> Option<bool> {
        // A retried block would pay for another answer that is likely blocked again.
        matches!(
            self,
            Refusal::BudgetExceeded { .. } | Refusal::ResponseBlocked { .. }
        )
        .then_some(false)
    }

    fn param(&self) -> Option<&str> {
        match self {
            Refusal::ModelNotFound(_) | Refusal::ModelNotAllowed(_) => Some("model"),
            Refusal::InvalidRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// OpenAI's error type, by which the SDKs pick their exception class.
    fn openai_type(&self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            400 | 405 | 408 | 413 => "invalid_request_error",
            429 if matches!(self, Refusal::BudgetExceeded { .. }) => "insufficient_quota",
            429 => "rate_limit_error",
            _ => "api_error",
        }
    }

    /// The body in OpenAI's dialect.
    pub fn openai_body(&self) -> Bytes {
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: &'a str,
        }
        let message = self.to_string();
        let envelope = Envelope {
            error: Inner {
                message: &message,
                kind: self.openai_type(),
                param: self.param(),
                code: self.code(),
            },
        };
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
    }

    /// Anthropic's error type for the status, as its API documents them; its SDKs pick their
    /// exception class by the status, and show the type.
    fn anthropic_type(&self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The body in Anthropic's dialect. It has no field for keygate's code, which the message
    /// words and the metrics and audit log carry.
    pub fn anthropic_body(&self, request_id: &str) -> Bytes {
        #[derive(Serialize)]
        struct Envelope<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            error: Inner<'a>,
            request_id: &'a str,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            message: &'a str,
        }
        let message = self.to_string();
        let envelope = Envelope {
            kind: "error",
            error: Inner {
                kind: self.anthropic_type(),
                message: &message,
            },
            request_id,
        };
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
    }
}

/// Sends `refusal` as the whole response in the client's `dialect`, with the request id and, for
/// a rate-limited key, the `x-ratelimit-*` headers.
pub async fn respond(
    session: &mut Session,
    refusal: &Refusal,
    dialect: Dialect,
    request_id: &str,
    rate: Option<&RateStatus>,
) -> pingora::Result<()> {
    let (header, body) = response(refusal, dialect, request_id, rate)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The head and body that answer `refusal` in the client's `dialect`.
pub fn response(
    refusal: &Refusal,
    dialect: Dialect,
    request_id: &str,
    rate: Option<&RateStatus>,
) -> pingora::Result<(ResponseHeader, Bytes)> {
    let body = match dialect {
        Dialect::Openai => refusal.openai_body(),
        Dialect::Anthropic => refusal.anthropic_body(request_id),
    };
    // Without a case map: `edit_response` adds the rest with `head::edit`, which would drop it.
    let mut header = ResponseHeader::build_no_case(refusal.status(), Some(10))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len())?;
    // retry-after and retry-after-ms, x-should-retry
    head::edit_response(&mut header, request_id, rate, 3, |headers, values| {
        if let Some(wait) = refusal.retry_after() {
            let seconds = wait.as_millis().div_ceil(1000).max(1) as u64;
            head::set(headers, RETRY_AFTER, values.number(seconds)?)?;
            head::set(
                headers,
                RETRY_AFTER_MS,
                values.number(wait.as_millis() as u64)?,
            )?;
        }
        if let Some(retry) = refusal.should_retry() {
            let value = HeaderValue::from_static(if retry { "true" } else { "false" });
            head::set(headers, X_SHOULD_RETRY, value)?;
        }
        Ok(())
    })?;
    Ok((header, body))
}

/// The whole HTTP/1.1 response, `Connection: close`, for a refusal made before a request was
/// read: it carries no request id, as there is no request.
pub fn closing_response(refusal: &Refusal) -> Bytes {
    use std::fmt::Write;
    let body = refusal.openai_body();
    let status = refusal.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(wait) = refusal.retry_after() {
        let seconds = wait.as_millis().div_ceil(1000).max(1);
        let _ = write!(
            head,
            "{RETRY_AFTER}: {seconds}\r\n{RETRY_AFTER_MS}: {}\r\n",
            wait.as_millis()
        );
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    response.extend_from_slice(&body);
    Bytes::from(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&Refusal::ModelNotFound("x\"y".into()).openai_body()).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("x\"y"));
        let v: serde_json::Value =
            serde_json::from_slice(&Refusal::InvalidKey.openai_body()).unwrap();
        assert!(v["error"]["param"].is_null());
        let blocked = Refusal::ContentPolicy {
            guardrail: "banned-words".into(),
            rule: "keyword[1]".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&blocked.openai_body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "content_policy_violation");
        assert_eq!(
            v["error"]["message"],
            "The request was blocked by guardrail `banned-words` (rule `keyword[1]`)."
        );
        assert_eq!(blocked.status(), 400);
    }

    #[test]
    fn body_has_anthropic_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&Refusal::InvalidKey.anthropic_body("req_1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "request_id": "req_1", "error": {
                "type": "authentication_error", "message": "Incorrect API key provided."}})
        );
        for (refusal, kind) in [
            (Refusal::KeyPaused, "permission_error"),
            (Refusal::ModelNotFound("m".into()), "not_found_error"),
            (Refusal::BodyTooLarge(1), "request_too_large"),
            (
                Refusal::invalid_param("model", "x"),
                "invalid_request_error",
            ),
            (
                Refusal::BudgetExceeded {
                    limit: "k".into(),
                    resets_in: Duration::from_secs(1),
                },
                "rate_limit_error",
            ),
            (Refusal::UpstreamAuthFailed, "api_error"),
            (Refusal::UpstreamTimeout, "timeout_error"),
        ] {
            let v: serde_json::Value =
                serde_json::from_slice(&refusal.anthropic_body("r")).unwrap();
            assert_eq!(v["error"]["type"], kind, "{refusal:?}");
        }
    }

    #[test]
    fn reasons_are_codes_and_tell_policy_from_typos() {
        let not_found = Refusal::ModelNotFound("m".into());
        let not_allowed = Refusal::ModelNotAllowed("m".into());
        assert_eq!(not_found.reason(), Some("model_not_found"));
        assert_eq!(not_allowed.reason(), Some("model_not_allowed"));
        let guard = Refusal::AuthGuard {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(
            (guard.code(), guard.reason()),
            ("rate_limit_exceeded", Some("auth_guard"))
        );
        assert_eq!(Refusal::UpstreamTimeout.reason(), None);
        let auth = Refusal::UpstreamAuthFailed;
        assert_eq!(
            (auth.status(), auth.openai_type(), auth.reason()),
            (502, "api_error", None)
        );
        let budget = Refusal::BudgetExceeded {
            limit: "key k: $1 daily".into(),
            resets_in: Duration::from_secs(90),
        };
        assert_eq!(
            (budget.status(), budget.openai_type(), budget.should_retry()),
            (429, "insufficient_quota", Some(false))
        );
        assert_eq!(
            budget.to_string(),
            "Budget exceeded for key k: $1 daily; it resets in 1m 30s."
        );
    }

    #[test]
    fn every_reason_has_a_metrics_series() {
        let every = [
            Refusal::MissingKey,
            Refusal::InvalidKey,
            Refusal::KeyExpired,
            Refusal::KeyPaused,
            Refusal::IpNotAllowed,
            Refusal::OperationNotAllowed(Operation::Chat),
            Refusal::ModelNotFound("m".into()),
            Refusal::ModelNotAllowed("m".into()),
            Refusal::invalid_request("x"),
            Refusal::BodyTooLarge(1),
            Refusal::ChunkedBodyTooLarge,
            Refusal::RequestTimeout(Duration::from_secs(30)),
            Refusal::unknown_route("/x"),
            Refusal::method_not_allowed("GET", "/x"),
            Refusal::RateLimited {
                limit: String::new(),
                retry_after: Duration::ZERO,
            },
            Refusal::ConcurrencyLimited {
                limit: String::new(),
                retry_after: Duration::ZERO,
            },
            Refusal::BudgetExceeded {
                limit: String::new(),
                resets_in: Duration::ZERO,
            },
            Refusal::AuthGuard {
                retry_after: Duration::ZERO,
            },
            Refusal::ContentPolicy {
                guardrail: "g".into(),
                rule: "email".into(),
            },
            Refusal::ModerationUnavailable("g".into()),
            Refusal::ResponseBlocked {
                guardrail: "g".into(),
                rule: "email".into(),
            },
        ];
        let reasons: Vec<_> = every.iter().filter_map(Refusal::reason).collect();
        assert_eq!(reasons.len(), every.len());
        let mut listed = crate::metrics::REFUSAL_REASONS.to_vec();
        let mut seen = reasons.clone();
        listed.sort_unstable();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, listed);
    }
}
