//! Routing and authentication: which endpoint a request is for, whether its credential is
//! good, and the dispatch from a route to the body builder that answers it.
//!
//! Everything decidable from the request header is decided in [`check_head`], so that a
//! rejected request never has its body read.

use http::Method;
use serde_json::{json, Value};

use super::chat::chat_completions;
use super::completions::completions;
use super::embeddings::embeddings;
use super::messages::{anthropic_error, count_tokens, messages};
use super::request::with_request;
use super::response::{error_response, Meta, MockResponse};
use super::responses_api::responses;
use super::MockProviderConfig;

/// The only model `/v1/models` advertises. Requests may name any model; it is echoed back.
const MOCK_MODEL_ID: &str = "mock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Health,
    Models,
    Model(String),
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
}

/// The credentials a request head carries, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Credentials<'a> {
    pub(super) authorization: Option<&'a [u8]>,
    /// Azure OpenAI's `api-key`.
    pub(super) api_key: Option<&'a [u8]>,
    /// Anthropic's `x-api-key`.
    pub(super) x_api_key: Option<&'a [u8]>,
}

/// Picks the route and checks the credential; everything that can be decided from the
/// request header alone, so that rejected requests never have their body read.
pub(super) fn check_head(
    config: &MockProviderConfig,
    method: &Method,
    path: &str,
    credentials: Credentials<'_>,
) -> Result<Route, MockResponse> {
    let route = match (method, path) {
        (&Method::GET, "/health") => return Ok(Route::Health),
        (&Method::GET, "/v1/models") => Route::Models,
        (&Method::GET, p) if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            Route::Model(p["/v1/models/".len()..].to_string())
        }
        (&Method::POST, "/v1/chat/completions") => Route::ChatCompletions,
        (&Method::POST, "/v1/completions") => Route::Completions,
        (&Method::POST, "/v1/embeddings") => Route::Embeddings,
        (&Method::POST, "/v1/responses") => Route::Responses,
        (&Method::POST, "/v1/messages") => Route::Messages,
        (&Method::POST, "/v1/messages/count_tokens") => Route::CountTokens,
        _ => {
            return Err(error_response(
                404,
                &format!("Invalid URL ({method} {path})"),
                "not_found_error",
                None,
                Some("unknown_route"),
            ))
        }
    };
    if let Some(expected) = config.api_key.as_deref() {
        // Anthropic's API takes its key in `x-api-key` only.
        if matches!(route, Route::Messages | Route::CountTokens) {
            let given = credentials.x_api_key.map(<[u8]>::trim_ascii);
            if !given.is_some_and(|k| constant_time_eq(k, expected.as_bytes())) {
                return Err(anthropic_error(
                    401,
                    "authentication_error",
                    "invalid x-api-key",
                ));
            }
            return Ok(route);
        }
        if !credential_matches(expected, credentials.authorization, credentials.api_key) {
            return Err(error_response(
                401,
                "Incorrect API key provided",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ));
        }
    }
    Ok(route)
}

/// Accepts `Authorization: Bearer <key>` (OpenAI) or `api-key: <key>` (Azure OpenAI style).
fn credential_matches(
    expected: &str,
    authorization: Option<&[u8]>,
    api_key: Option<&[u8]>,
) -> bool {
    let bearer = authorization.and_then(|v| {
        let scheme = v.get(..7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| v[7..].trim_ascii())
    });
    let expected = expected.as_bytes();
    bearer.is_some_and(|k| constant_time_eq(k, expected))
        || api_key.is_some_and(|k| constant_time_eq(k.trim_ascii(), expected))
}

/// Compares without an early exit so response timing does not reveal how much of a guessed
/// key was right (the length still shows, which is acceptable for a mock key).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Builds the whole response for an authenticated, routed request.
pub(super) fn respond(route: &Route, body: &[u8], meta: &Meta) -> MockResponse {
    match route {
        Route::Health => MockResponse::json(200, &json!({"status": "ok"})),
        Route::Models => MockResponse::json(
            200,
            &json!({"object": "list", "data": [model_object(MOCK_MODEL_ID)]}),
        ),
        Route::Model(id) if id == MOCK_MODEL_ID => {
            MockResponse::json(200, &model_object(MOCK_MODEL_ID))
        }
        Route::Model(id) => error_response(
            404,
            &format!("The model '{id}' does not exist"),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        ),
        Route::ChatCompletions => {
            with_request(body, |req, model| chat_completions(req, model, meta))
        }
        Route::Completions => with_request(body, |req, model| completions(req, model, meta)),
        Route::Embeddings => with_request(body, embeddings),
        Route::Responses => with_request(body, |req, model| responses(req, model, meta)),
        Route::Messages => messages(body, meta),
        Route::CountTokens => count_tokens(body),
    }
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "keygate-mock"})
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mock_provider::test_support::{body_json, meta};

    #[test]
    fn routing_and_auth() {
        let open = MockProviderConfig {
            api_key: None,
            stream_delay: Duration::ZERO,
        };
        let locked = MockProviderConfig {
            api_key: Some("sk-mock".to_string()),
            ..open.clone()
        };
        let post = Method::POST;
        let get = Method::GET;

        assert_eq!(
            check_head(&open, &post, "/v1/chat/completions", none()),
            Ok(Route::ChatCompletions)
        );
        assert_eq!(
            check_head(&open, &get, "/v1/models/mock", none()),
            Ok(Route::Model("mock".to_string()))
        );
        // Health answers without a key so that probes need no secret.
        assert_eq!(
            check_head(&locked, &get, "/health", none()),
            Ok(Route::Health)
        );

        let not_found = check_head(&open, &get, "/v1/chat/completions", none()).unwrap_err();
        assert_eq!(not_found.status, 404);
        let err = body_json(&not_found);
        assert_eq!(err["error"]["type"], "not_found_error");
        assert_eq!(err["error"]["code"], "unknown_route");
        assert_eq!(err["error"]["param"], Value::Null);

        for (auth, api_key) in [
            (None, None),
            (Some(&b"Bearer wrong"[..]), None),
            (Some(&b"sk-mock"[..]), None),
            (Some(&b"Bearer"[..]), None),
            (None, Some(&b"sk-moc"[..])),
        ] {
            let denied =
                check_head(&locked, &post, "/v1/embeddings", openai(auth, api_key)).unwrap_err();
            assert_eq!(denied.status, 401);
            assert_eq!(
                body_json(&denied),
                json!({"error": {"message": "Incorrect API key provided",
                    "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
            );
        }
        for (auth, api_key) in [
            (Some(&b"Bearer sk-mock"[..]), None),
            (Some(&b"bearer  sk-mock "[..]), None),
            (None, Some(&b"sk-mock"[..])),
            (Some(&b"Bearer wrong"[..]), Some(&b"sk-mock"[..])),
        ] {
            assert_eq!(
                check_head(&locked, &post, "/v1/embeddings", openai(auth, api_key)),
                Ok(Route::Embeddings)
            );
        }
    }

    fn none() -> Credentials<'static> {
        Credentials::default()
    }

    fn openai<'a>(authorization: Option<&'a [u8]>, api_key: Option<&'a [u8]>) -> Credentials<'a> {
        Credentials {
            authorization,
            api_key,
            x_api_key: None,
        }
    }

    #[test]
    fn messages_take_the_key_in_x_api_key() {
        let locked = MockProviderConfig {
            api_key: Some("sk-mock".to_string()),
            stream_delay: Duration::ZERO,
        };
        let post = Method::POST;
        let with = |x_api_key: Option<&'static [u8]>, authorization| Credentials {
            authorization,
            api_key: None,
            x_api_key,
        };
        assert_eq!(
            check_head(&locked, &post, "/v1/messages", with(Some(b"sk-mock"), None)),
            Ok(Route::Messages)
        );
        assert_eq!(
            check_head(
                &locked,
                &post,
                "/v1/messages/count_tokens",
                with(Some(b"sk-mock"), None)
            ),
            Ok(Route::CountTokens)
        );
        for credentials in [
            with(None, Some(b"Bearer sk-mock")),
            with(Some(b"wrong"), None),
            none(),
        ] {
            let denied = check_head(&locked, &post, "/v1/messages", credentials).unwrap_err();
            assert_eq!(denied.status, 401);
            assert_eq!(
                body_json(&denied),
                json!({"type": "error", "error": {"type": "authentication_error",
                    "message": "invalid x-api-key"}})
            );
        }
    }

    #[test]
    fn models_and_health() {
        let v = body_json(&respond(&Route::Models, b"", &meta()));
        assert_eq!(
            v,
            json!({"object": "list", "data": [
                {"id": "mock", "object": "model", "created": 0, "owned_by": "keygate-mock"}]})
        );
        let h = body_json(&respond(&Route::Health, b"", &meta()));
        assert_eq!(h, json!({"status": "ok"}));
        let missing = respond(&Route::Model("gpt-5".to_string()), b"", &meta());
        assert_eq!(missing.status, 404);
    }
}
