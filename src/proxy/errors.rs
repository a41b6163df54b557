//! Errors keygate itself answers with, in OpenAI's shape
//! (`{"error":{"message","type","param","code"}}`), so the official SDKs raise the right exception
//! class (`AuthenticationError`, `PermissionDeniedError`, `RateLimitError`, …) with a useful message.

use super::head;
use crate::limits::RateStatus;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;
use std::borrow::Cow;
use std::time::Duration;

const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// A refusal or failure decided by keygate, not by the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    pub param: Option<&'static str>,
    /// Sent as `retry-after` and `retry-after-ms`.
    pub retry_after: Option<Duration>,
    /// Sent as `x-should-retry` (the OpenAI SDKs honour it over the status code).
    pub should_retry: Option<bool>,
    /// Why keygate refused, as a metrics and audit label; `None` for failures that are not
    /// refusals (upstream errors, internal errors).
    pub reason: Option<&'static str>,
}

impl ApiError {
    fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            should_retry: None,
            reason: refusal_reason(code),
        }
    }

    pub fn missing_key() -> Self {
        Self::new(
            401,
            "authentication_error",
            "missing_api_key",
            "You didn't provide an API key. Send your keygate key in the Authorization header as `Bearer kg_...`, or in `x-api-key`.",
        )
    }

    pub fn invalid_key() -> Self {
        Self::new(
            401,
            "authentication_error",
            "invalid_api_key",
            "Incorrect API key provided.",
        )
    }

    pub fn key_expired() -> Self {
        Self::new(
            401,
            "authentication_error",
            "key_expired",
            "This API key has expired.",
        )
    }

    pub fn key_paused() -> Self {
        Self::new(
            403,
            "permission_error",
            "key_paused",
            "This API key is paused.",
        )
    }

    pub fn model_not_allowed(model: &str) -> Self {
        Self::new(
            403,
            "permission_error",
            "model_not_allowed",
            format!("This API key may not use the model `{model}`."),
        )
        .with_param("model")
    }

    pub fn operation_not_allowed(operation: &str) -> Self {
        Self::new(
            403,
            "permission_error",
            "operation_not_allowed",
            format!("This API key may not use the `{operation}` operation."),
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "not_found_error",
            "model_not_found",
            format!("The model `{model}` does not exist or is not served by this gateway."),
        )
        .with_param("model")
    }

    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(400, "invalid_request_error", "invalid_request", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("The request body exceeds the limit of {limit} bytes."),
        )
    }

    pub fn unknown_route(path: &str) -> Self {
        let shown: String = path.chars().take(200).collect();
        Self::new(
            404,
            "not_found_error",
            "unknown_route",
            format!("Unknown request URL: {shown}. keygate serves POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses and GET /v1/models."),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            format!("{method} is not allowed on {path}."),
        )
    }

    pub fn upstream_unavailable() -> Self {
        Self::new(
            502,
            "api_error",
            "upstream_unavailable",
            "The gateway could not reach any endpoint of the model's provider.",
        )
    }

    pub fn upstream_timeout() -> Self {
        Self::new(
            504,
            "api_error",
            "upstream_timeout",
            "The model's provider did not answer in time.",
        )
    }

    pub fn ip_not_allowed() -> Self {
        Self::new(
            403,
            "permission_error",
            "ip_not_allowed",
            "This API key may not be used from this network address.",
        )
    }

    pub fn rate_limited(limit: &str, retry_after: Duration) -> Self {
        let mut e = Self::new(
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!(
                "Rate limit reached for {limit}. Retry after {:.1}s.",
                retry_after.as_secs_f64()
            ),
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn concurrency_limited(limit: &str, retry_after: Duration) -> Self {
        let mut e = Self::new(
            429,
            "rate_limit_error",
            "concurrency_limit_exceeded",
            format!(
                "Concurrency limit reached for {limit}; wait for a request of this key to finish."
            ),
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn too_many_auth_failures(retry_after: Duration) -> Self {
        let mut e = Self::new(
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            "Too many failed authentications from this address.",
        );
        e.retry_after = Some(retry_after);
        e.reason = Some("guard");
        e
    }

    /// OpenAI's quota error: the SDKs raise `RateLimitError` and, told `x-should-retry: false`,
    /// do not retry a request that cannot succeed before the period ends.
    pub fn budget_exceeded(limit: &str, resets_in: Duration) -> Self {
        let mut e = Self::new(
            429,
            "insufficient_quota",
            "budget_exceeded",
            format!(
                "Budget exceeded for {limit}; it resets in {}.",
                humantime::format_duration(Duration::from_secs(resets_in.as_secs().max(1)))
            ),
        );
        e.should_retry = Some(false);
        e
    }

    pub fn internal() -> Self {
        Self::new(
            500,
            "api_error",
            "internal_error",
            "The gateway failed to process the request.",
        )
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn body(&self) -> Bytes {
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
        let envelope = Envelope {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        };
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
    }

    /// The response header, ready for callers to add their own headers (request id, rate limits).
    pub fn header(&self, body_len: usize) -> pingora::Result<ResponseHeader> {
        // Without a case map: `respond` adds the rest with `head::edit`, which would drop it.
        let mut h = ResponseHeader::build_no_case(self.status, Some(10))?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", body_len)?;
        Ok(h)
    }
}

/// The refusal category of an error code (the metrics' `reason` label).
fn refusal_reason(code: &str) -> Option<&'static str> {
    Some(match code {
        "missing_api_key" | "invalid_api_key" | "key_expired" | "key_paused" => "auth",
        "model_not_allowed" | "model_not_found" => "model",
        "operation_not_allowed" => "operation",
        "ip_not_allowed" => "ip",
        "rate_limit_exceeded" => "rate",
        "concurrency_limit_exceeded" => "concurrency",
        "budget_exceeded" => "budget",
        "invalid_request" | "request_too_large" | "unknown_route" | "method_not_allowed" => {
            "invalid"
        }
        _ => return None,
    })
}

/// Sends `error` as the whole response, with the request id and, for a rate-limited key, the
/// `x-ratelimit-*` headers.
pub async fn respond(
    session: &mut Session,
    error: &ApiError,
    request_id: &str,
    rate: Option<&RateStatus>,
) -> pingora::Result<()> {
    let body = error.body();
    let mut header = error.header(body.len())?;
    // retry-after and retry-after-ms, x-should-retry
    head::edit_response(&mut header, request_id, rate, 3, |headers, values| {
        if let Some(wait) = error.retry_after {
            let seconds = wait.as_millis().div_ceil(1000).max(1) as u64;
            head::set(headers, RETRY_AFTER, values.number(seconds)?)?;
            head::set(
                headers,
                RETRY_AFTER_MS,
                values.number(wait.as_millis() as u64)?,
            )?;
        }
        if let Some(retry) = error.should_retry {
            let value = HeaderValue::from_static(if retry { "true" } else { "false" });
            head::set(headers, X_SHOULD_RETRY, value)?;
        }
        Ok(())
    })?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&ApiError::model_not_found("x\"y").body()).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("x\"y"));
        let v: serde_json::Value = serde_json::from_slice(&ApiError::invalid_key().body()).unwrap();
        assert!(v["error"]["param"].is_null());
    }
}
