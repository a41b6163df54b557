//! Respond: what the client receives. A provider's response passes through unbuffered, with the
//! request id and a rate-limited key's `x-ratelimit-*` headers in place of the provider's account
//! and rate-limit headers, while its token usage is read on the way (and a usage chunk the client
//! did not ask for is taken out, and a translated request's response goes back in the client's
//! API, see `translate`). Responses keygate gives itself — refusals, failures,
//! `/v1/models` — are written here too.
//!
//! A non-streamed body that keygate rewrites whole (a translated answer, or one the key's
//! response guardrails inspect) is held, head included, until it is complete: it then goes out
//! with a `Content-Length` in one write, as a passthrough answer does, and a guardrail that blocks
//! it can still answer with an error status in its place.

use super::body;
use super::ctx::RequestCtx;
use super::dialect::Dialect;
use super::inspect_response::ResponseInspection;
use super::paths::Route;
use super::refusal::{self, Refusal};
use super::texts::Shape;
use crate::domain::{Operation, WireFormat};
use crate::policy::{Key, Policy};
use crate::translate::ResponseTranslator;
use crate::usage::{BodyKind, ContentEncoding, UsageChunkStripper, UsageExtractor};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};
use pingora::{ErrorSource, ErrorType};

/// Puts keygate's headers on the provider's response head in place of what it tells of the
/// gateway's account, and starts reading usage from a successful response of an admitted request.
pub fn response_head(
    session: &mut Session,
    ctx: &mut RequestCtx,
    response: &mut ResponseHeader,
) -> Result<()> {
    translate_head(session, ctx, response)?;
    super::head::edit_response(
        response,
        &ctx.request_id,
        ctx.rate.as_ref(),
        0,
        |headers, _| {
            super::head::remove_provider_account(headers);
            Ok(())
        },
    )?;
    let Some(admitted) = &ctx.admitted else {
        return Ok(());
    };
    // A token count is no usage: it is free, and its `input_tokens` were not consumed.
    if !response.status.is_success() || admitted.operation == Operation::CountTokens {
        return Ok(());
    }
    let headers = &response.headers;
    let is_sse = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let encoding = ContentEncoding::from_header(
        headers
            .get(http::header::CONTENT_ENCODING)
            .map(|v| v.as_bytes()),
    );
    let kind = if is_sse {
        BodyKind::Sse
    } else {
        BodyKind::Json
    };
    ctx.response.usage = Some(match encoding {
        Some(encoding) => UsageExtractor::new(kind, encoding),
        // A coding keygate was not asked for: the response still counts, at its estimate.
        None => UsageExtractor::unreadable(),
    });
    if admitted.added_include_usage && is_sse && encoding == Some(ContentEncoding::Identity) {
        ctx.response.stripper = Some(UsageChunkStripper::new());
        // The client receives fewer bytes than the provider sent.
        response.remove_header(&http::header::CONTENT_LENGTH);
    }
    let guardrails = admitted
        .key
        .guardrails
        .as_ref()
        .filter(|g| g.scans_responses);
    let shape = match ctx.route {
        Some(Route::Proxy(operation)) => Shape::response_of(operation, is_sse),
        _ => None,
    };
    // Asked for uncompressed (see `forward`); a coded answer cannot be read, so is not passed on.
    if let (Some(guardrails), Some(shape)) = (guardrails, shape) {
        if encoding != Some(ContentEncoding::Identity) {
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                "a response to inspect arrived compressed",
            );
        }
        ctx.response.inspection = Some(Box::new(ResponseInspection::new(
            guardrails.clone(),
            shape,
            ctx.dialect,
            is_sse,
        )));
        if is_sse {
            // A cut stream ends early.
            response.remove_header(&http::header::CONTENT_LENGTH);
        } else {
            hold(session, ctx)?;
        }
    }
    Ok(())
}

/// Holds the response until its body is complete (see the module doc). keygate's data plane
/// speaks HTTP/1 only, where Pingora (as patched in `vendor/`) can hold one.
fn hold(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let Some(http1) = session.downstream_session.as_http1_mut() else {
        return Error::e_explain(
            ErrorType::InternalError,
            "only an HTTP/1 response can be held",
        );
    };
    http1.hold_response();
    ctx.response.held = true;
    Ok(())
}

/// A translated request's response, success or error, goes back in the client's API: a stream
/// goes chunked, as its length is unknown until it ends; a whole body is held until translated.
fn translate_head(
    session: &mut Session,
    ctx: &mut RequestCtx,
    response: &mut ResponseHeader,
) -> Result<()> {
    let Some(translation) = ctx.admitted.as_ref().and_then(|a| a.translation) else {
        return Ok(());
    };
    let is_sse = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let translator = translation.response(response.status.as_u16(), is_sse);
    if matches!(translator, ResponseTranslator::Stream(_)) {
        response.remove_header(&http::header::CONTENT_LENGTH);
        // Pingora decides the framing before this filter runs; a length it saw is gone now.
        response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    } else {
        response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        hold(session, ctx)?;
    }
    ctx.response.translator = Some(Box::new(translator));
    Ok(())
}

/// Counts tokens as the body passes; the chunk itself goes on untouched, unless it carries the
/// usage chunk keygate asked for on the client's behalf, or the key's response guardrails hold,
/// change or cut it. A held response a guardrail blocks is answered with the refusal instead;
/// `Err` aborts a stream that cannot be inspected further.
pub fn response_chunk(
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
) -> Result<()> {
    let state = &mut ctx.response;
    if let Some(chunk) = body.as_ref() {
        if state.first_byte.is_none() && !chunk.is_empty() {
            state.first_byte = Some(std::time::Instant::now());
        }
        if let Some(extractor) = state.usage.as_mut() {
            extractor.feed(chunk);
        }
    }
    if let Some(stripper) = state.stripper.as_mut() {
        let mut out = body.take().map(|chunk| stripper.filter(&chunk));
        if end_of_stream {
            let rest = stripper.finish();
            if !rest.is_empty() {
                out = Some(match out {
                    Some(head) if !head.is_empty() => [head, rest].concat().into(),
                    _ => rest,
                });
            }
        }
        // An empty chunk would read as the end of a chunked body: send nothing instead.
        *body = out.filter(|b| !b.is_empty());
    }
    if let Some(translator) = state.translator.as_mut() {
        *body = translator.filter(body.as_deref(), end_of_stream);
    }
    if let Some(inspection) = ctx.response.inspection.as_mut() {
        match inspection.chunk(
            body.take(),
            end_of_stream,
            &mut ctx.guardrails,
            &ctx.request_id,
        ) {
            Ok(out) => {
                *body = out.filter(|b| !b.is_empty());
                if let Some(refusal) = inspection.take_blocked() {
                    ctx.failure = Some(refusal);
                }
            }
            Err(refusal) if ctx.response.held => {
                *body = Some(replace_held(session, ctx, &refusal)?);
                ctx.failure = Some(refusal);
            }
            Err(refusal) => {
                ctx.failure = Some(refusal);
                return Error::e_explain(ErrorType::InternalError, "response aborted by keygate");
            }
        }
    }
    Ok(())
}

/// Puts the head of `refusal`'s answer in place of the held response's; returns its body.
fn replace_held(session: &mut Session, ctx: &RequestCtx, refusal: &Refusal) -> Result<Bytes> {
    let (answer, body) =
        refusal::response(refusal, ctx.dialect, &ctx.request_id, ctx.rate.as_ref())?;
    let replaced = session
        .downstream_session
        .as_http1_mut()
        .is_some_and(|http1| http1.replace_held_response_header(answer));
    if !replaced {
        return Error::e_explain(ErrorType::InternalError, "no held response to replace");
    }
    Ok(body)
}

/// Answers `refusal` in place of the provider, after reading what is left of the body so the
/// client reads the answer instead of failing on a broken pipe.
pub async fn refuse(session: &mut Session, ctx: &mut RequestCtx, refusal: Refusal) -> Result<()> {
    // A body too slow to arrive is not waited for again; its connection is closed instead.
    if !matches!(refusal, Refusal::RequestTimeout(_)) {
        body::discard_rest(session).await;
    }
    refusal::respond(
        session,
        &refusal,
        ctx.dialect,
        &ctx.request_id,
        ctx.rate.as_ref(),
    )
    .await?;
    ctx.failure = Some(refusal);
    Ok(())
}

/// `GET /v1/models`: the models the key may use, in the client's dialect.
pub async fn list_models(session: &mut Session, ctx: &RequestCtx, key: &Key) -> Result<()> {
    let body = match ctx.dialect {
        Dialect::Openai => models_body(&ctx.policy, key),
        Dialect::Anthropic => anthropic_models_body(&ctx.policy, key),
    };
    let mut h = ResponseHeader::build(200, Some(3))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len())?;
    h.insert_header("x-request-id", ctx.request_id.as_str())?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

fn models_body(policy: &Policy, key: &Key) -> Bytes {
    let data: Vec<serde_json::Value> = key
        .models
        .iter()
        .filter_map(|i| policy.models.get(i))
        .map(|m| {
            serde_json::json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": m.provider.name,
            })
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default(),
    )
}

/// Anthropic's model list: the key's models served through the Messages API. keygate knows no
/// release date of a model; the epoch stands in for it, as `created: 0` does in OpenAI's list.
fn anthropic_models_body(policy: &Policy, key: &Key) -> Bytes {
    let names: Vec<&str> = key
        .models
        .iter()
        .filter_map(|i| policy.models.get(i))
        .filter(|m| m.provider.format.wire() == WireFormat::Anthropic)
        .map(|m| m.name.as_str())
        .collect();
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|name| {
            serde_json::json!({
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": "1970-01-01T00:00:00Z",
            })
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "data": data,
            "has_more": false,
            "first_id": names.first(),
            "last_id": names.last(),
        }))
        .unwrap_or_default(),
    )
}

/// A forward that failed after admission becomes an error in the client's dialect, if the
/// client can still get one.
pub async fn failed(session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
    let failure = ctx.failure.take().unwrap_or_else(|| classify(e));
    let client_gone = matches!(e.esource(), ErrorSource::Downstream)
        && matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        );
    let mut keep = false;
    let code = if client_gone || session.response_written().is_some() {
        // Headers already went out (e.g. a stream cut mid-way): the connection is the only
        // signal left.
        0
    } else {
        if ctx.request_id.is_empty() {
            ctx.request_id = super::ctx::request_id(None);
        }
        // After most failures Pingora drops the session whatever `can_reuse_downstream` says, so
        // the listener keeps the connection itself; where it cannot, the answer says so.
        let can_keep = crate::listener::can_carry_next(session);
        if !can_keep {
            session.set_keepalive(None);
        }
        let answer = refusal::respond(
            session,
            &failure,
            ctx.dialect,
            &ctx.request_id,
            ctx.rate.as_ref(),
        );
        match answer.await {
            Ok(()) if can_keep => {
                crate::listener::keep_after_answer(session);
                keep = true;
            }
            Ok(()) => {}
            Err(write_error) => {
                tracing::debug!(request_id = %ctx.request_id, error = %write_error, "could not send error response");
            }
        }
        failure.status()
    };
    ctx.failure = Some(failure);
    FailToProxy {
        error_code: code,
        can_reuse_downstream: keep,
    }
}

/// What the client is told of a Pingora failure.
pub fn classify(e: &Error) -> Refusal {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => Refusal::UpstreamTimeout,
        ErrorType::HTTPStatus(400) => Refusal::invalid_request("The request could not be read."),
        _ if matches!(e.esource(), ErrorSource::Upstream) => Refusal::UpstreamUnavailable,
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => Refusal::UpstreamUnavailable,
        _ => Refusal::Internal,
    }
}
