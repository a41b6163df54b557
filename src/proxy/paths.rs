//! The API surface keygate serves: which method and path mean which operation.

use super::refusal::Refusal;
use crate::domain::Operation;
use pingora::http::RequestHeader;

/// What a request asks keygate to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Proxied to the provider of the body's model.
    Proxy(Operation),
    /// `GET /v1/models`, answered by keygate from the key's policy.
    ListModels,
}

/// Why a request matches no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    UnknownPath,
    WrongMethod,
}

/// The canonical path of a route, for logs.
pub fn path_of(route: Route) -> &'static str {
    match route {
        Route::Proxy(Operation::Chat) => "/v1/chat/completions",
        Route::Proxy(Operation::Completions) => "/v1/completions",
        Route::Proxy(Operation::Embeddings) => "/v1/embeddings",
        Route::Proxy(Operation::Responses) => "/v1/responses",
        Route::Proxy(Operation::Messages) => "/v1/messages",
        Route::Proxy(Operation::CountTokens) => "/v1/messages/count_tokens",
        Route::ListModels => "/v1/models",
    }
}

/// The route of a request head, or the refusal that names what is wrong with it.
pub fn resolve(header: &RequestHeader) -> Result<Route, Refusal> {
    let path = header.uri.path();
    route(&header.method, path).map_err(|e| match e {
        NoRoute::UnknownPath => Refusal::unknown_route(path),
        NoRoute::WrongMethod => Refusal::method_not_allowed(header.method.as_str(), path),
    })
}

pub fn route(method: &http::Method, path: &str) -> Result<Route, NoRoute> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let path = path.strip_suffix('/').unwrap_or(path);
    let (route, expected) = match path {
        "/v1/chat/completions" => (Route::Proxy(Operation::Chat), http::Method::POST),
        "/v1/completions" => (Route::Proxy(Operation::Completions), http::Method::POST),
        "/v1/embeddings" => (Route::Proxy(Operation::Embeddings), http::Method::POST),
        "/v1/responses" => (Route::Proxy(Operation::Responses), http::Method::POST),
        "/v1/messages" => (Route::Proxy(Operation::Messages), http::Method::POST),
        "/v1/messages/count_tokens" => (Route::Proxy(Operation::CountTokens), http::Method::POST),
        "/v1/models" => (Route::ListModels, http::Method::GET),
        _ => return Err(NoRoute::UnknownPath),
    };
    if *method == expected {
        Ok(route)
    } else {
        Err(NoRoute::WrongMethod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions"),
            Ok(Route::Proxy(Operation::Chat))
        );
        assert_eq!(
            route(&Method::POST, "/v1/embeddings?x=1"),
            Ok(Route::Proxy(Operation::Embeddings))
        );
        assert_eq!(route(&Method::GET, "/v1/models"), Ok(Route::ListModels));
        assert_eq!(
            route(&Method::POST, "/v1/messages"),
            Ok(Route::Proxy(Operation::Messages))
        );
        assert_eq!(
            route(&Method::POST, "/v1/messages/count_tokens?beta=true"),
            Ok(Route::Proxy(Operation::CountTokens))
        );
        assert_eq!(
            route(&Method::GET, "/v1/chat/completions"),
            Err(NoRoute::WrongMethod)
        );
        assert_eq!(route(&Method::POST, "/v2/chat"), Err(NoRoute::UnknownPath));
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions/x"),
            Err(NoRoute::UnknownPath)
        );
    }
}
