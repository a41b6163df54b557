//! The API dialect a client speaks, which decides the shape of everything keygate answers itself:
//! refusals, failures and the model list. A request on Anthropic's Messages API routes
//! (`/v1/messages…`) speaks Anthropic's, and so does `GET /v1/models` from an Anthropic SDK. Those
//! send `anthropic-version` on every request, with the key in `x-api-key` or, in recent versions,
//! as a Bearer token, so the version header alone tells them; OpenAI's clients never send it.
//! Every other request speaks OpenAI's.
//!
//! The dialect is read from the request head alone, before the path is matched to a route, so
//! that even a request to an unknown Messages path or without a key gets its error in the shape
//! its SDK parses.

use http::HeaderName;
use pingora::http::RequestHeader;

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    Openai,
    Anthropic,
}

impl Dialect {
    pub fn of(header: &RequestHeader) -> Dialect {
        let path = header.uri.path();
        let messages = path
            .strip_prefix("/v1/messages")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let anthropic_sdk = || {
            path.trim_end_matches('/') == "/v1/models"
                && header.headers.contains_key(ANTHROPIC_VERSION)
        };
        if messages || anthropic_sdk() {
            Dialect::Anthropic
        } else {
            Dialect::Openai
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            h.insert_header(name.to_string(), *value).unwrap();
        }
        h
    }

    #[test]
    fn dialect_by_route_and_sdk_headers() {
        let anthropic = [("x-api-key", "kg_x"), ("anthropic-version", "2023-06-01")];
        for (path, headers, want) in [
            ("/v1/messages", &[][..], Dialect::Anthropic),
            ("/v1/messages/count_tokens", &[], Dialect::Anthropic),
            ("/v1/messages/batches", &[], Dialect::Anthropic),
            ("/v1/messagesx", &[], Dialect::Openai),
            ("/v1/chat/completions", &anthropic[..], Dialect::Openai),
            ("/v1/models", &anthropic, Dialect::Anthropic),
            ("/v1/models", &anthropic[..1], Dialect::Openai),
            ("/v1/models", &anthropic[1..], Dialect::Anthropic),
            (
                "/v1/models",
                &[("authorization", "Bearer kg_x")],
                Dialect::Openai,
            ),
        ] {
            assert_eq!(Dialect::of(&head("GET", path, headers)), want, "{path}");
        }
    }
}
