//! Forward: the request as the provider receives it. The virtual key is swapped for the
//! provider's credential (in its format's header), client headers that would choose another
//! provider account are dropped (unless the provider forwards them), an Anthropic provider gets an
//! `anthropic-version` when the client sent none, the endpoint is addressed (an Azure model at its
//! deployment's path, a chat completion translated for an Anthropic model at the Messages API),
//! and the body keygate read (and may have rewritten) is sent whole, framed by
//! its length.

use super::authenticate::OTHER_KEY_HEADERS;
use super::ctx::RequestCtx;
use super::head;
use crate::translate;
use crate::usage::ContentEncoding;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::ErrorType;

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// Swaps the virtual key for the provider credential and addresses the endpoint.
pub fn request_head(ctx: &RequestCtx, upstream: &mut RequestHeader) -> Result<()> {
    let not_routed =
        || Error::e_explain(ErrorType::InternalError, "forwarding a request not routed");
    let Some(admitted) = &ctx.admitted else {
        return not_routed();
    };
    let provider = &admitted.model.provider;
    let endpoint = ctx
        .upstream
        .endpoint()
        .and_then(|i| provider.endpoints.get(i));
    let Some(endpoint) = endpoint else {
        return not_routed();
    };
    let mut values = head::Values::with_capacity(head::VALUES_CAPACITY);
    // the credential, host, request id, content length, accept-encoding and anthropic-version
    head::edit_request(upstream, 6, |parts| {
        let headers = &mut parts.headers;
        // every header a virtual key can arrive in
        headers.remove(http::header::AUTHORIZATION);
        for name in &OTHER_KEY_HEADERS {
            headers.remove(name);
        }
        // and those that would bill another account than the credential's
        // Rarely sent: one pass over the client's few headers costs less than a lookup each.
        if headers
            .keys()
            .any(|name| provider.withheld_headers.contains(name))
        {
            for name in &provider.withheld_headers {
                headers.remove(name);
            }
        }
        if let Some((name, value)) = &provider.credential {
            head::set(headers, name.clone(), value.clone())?;
        }
        if let Some(version) = &provider.anthropic_version {
            if !headers.contains_key(ANTHROPIC_VERSION) {
                head::set(headers, ANTHROPIC_VERSION, version.clone())?;
            }
        }
        head::set(headers, http::header::HOST, endpoint.authority.clone())?;
        head::set_request_id(headers, &mut values, &ctx.request_id)?;
        // The body is complete and framed by Content-Length: nothing is left to negotiate.
        headers.remove(http::header::TRANSFER_ENCODING);
        headers.remove(http::header::EXPECT);
        let content_length = values.number(admitted.body.len() as u64)?;
        head::set(headers, http::header::CONTENT_LENGTH, content_length)?;
        let inspected = admitted
            .key
            .guardrails
            .as_ref()
            .is_some_and(|g| g.scans_responses);
        let accept = if admitted.added_include_usage || inspected || admitted.translation.is_some()
        {
            // The usage chunk is removed from the stream on its way back, response guardrails
            // read the text, and a translated response is rewritten: all need plain bytes.
            HeaderValue::from_static("identity")
        } else {
            let client = headers.get(http::header::ACCEPT_ENCODING);
            ContentEncoding::upstream_accept(client.map(HeaderValue::as_bytes))
        };
        head::set(headers, http::header::ACCEPT_ENCODING, accept)?;
        let azure_path = admitted
            .model
            .azure
            .as_ref()
            .and_then(|azure| azure.path(admitted.operation));
        match azure_path {
            // A chat completion asked of an Anthropic model goes to the Messages API.
            _ if admitted.translation.is_some() => {
                parts.uri = format!("{}{}", endpoint.base_path, translate::MESSAGES_PATH)
                    .parse()
                    .map_err(|_| {
                        Error::explain(ErrorType::InternalError, "invalid upstream path")
                    })?;
            }
            // Prebuilt: the path costs a reference count, not a copy.
            Some(path) if endpoint.base_path.is_empty() => parts.uri = Uri::from(path.clone()),
            _ if endpoint.base_path.is_empty() => {}
            path => {
                let path_and_query = path
                    .or(parts.uri.path_and_query())
                    .map_or("/", |pq| pq.as_str());
                parts.uri = format!("{}{}", endpoint.base_path, path_and_query)
                    .parse()
                    .map_err(|_| {
                        Error::explain(ErrorType::InternalError, "invalid upstream path")
                    })?;
            }
        }
        Ok(())
    })
}

/// Pingora replays the buffered tail of the body (see `body`), once it has written the request
/// head; the whole body goes in its place.
pub fn request_body(ctx: &mut RequestCtx, body: &mut Option<Bytes>, end_of_stream: bool) {
    ctx.upstream.head_written();
    *body = if end_of_stream {
        ctx.admitted.as_ref().map(|a| a.body.clone())
    } else {
        // Cannot happen with a fully pre-read body; never forward a partial one.
        None
    };
}
