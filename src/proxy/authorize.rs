//! Authorize: whether this key may do what the request asks, here and now. The key's status
//! (expired, paused), its networks, the operation, and the model named in the body, which is read
//! whole here because the model decides everything after. The body is read only once the key's
//! concurrency slots are held (see `limit`), so a slow upload counts against its cap.

use super::body::{self, RequestFacts};
use super::paths::Route;
use super::refusal::Refusal;
use crate::domain::{KeyStatus, Operation, WireFormat};
use crate::limits::ip;
use crate::policy::{Key, Model, Policy};
use crate::translate;
use bytes::Bytes;
use pingora::proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;

/// An authorized request to forward.
pub struct Request {
    pub operation: Operation,
    pub model: Arc<Model>,
    pub body: Bytes,
    pub facts: RequestFacts,
}

/// The key may be used now, from `client_ip`.
pub fn key(key: &Key, client_ip: IpAddr) -> Result<(), Refusal> {
    if key.is_expired_at(chrono::Utc::now()) {
        return Err(Refusal::KeyExpired);
    }
    if key.status == KeyStatus::Paused {
        return Err(Refusal::KeyPaused);
    }
    let lists = [&key.limits.allowed_ips, &key.workload.limits.allowed_ips];
    if lists
        .into_iter()
        .flatten()
        .any(|list| !ip::allowed(client_ip, list))
    {
        return Err(Refusal::IpNotAllowed);
    }
    Ok(())
}

/// The operation `route` asks for, if the key may use it; `None` for `GET /v1/models`, which
/// keygate answers from the key's policy.
pub fn operation(key: &Key, route: Route) -> Result<Option<Operation>, Refusal> {
    match route {
        Route::ListModels => Ok(None),
        Route::Proxy(op) if key.operations.contains(op) => Ok(Some(op)),
        Route::Proxy(op) => Err(Refusal::OperationNotAllowed(op)),
    }
}

/// The model the body names, if the key may use it. The model is reported through `named` as
/// soon as it is known, so a refusal after this point is labelled with it.
pub async fn model(
    session: &mut Session,
    policy: &Policy,
    key: &Key,
    operation: Operation,
    named: &mut Option<Arc<Model>>,
) -> Result<Request, Refusal> {
    let body = body::read_whole(session, policy.max_body_bytes, policy.body_timeout).await?;
    let facts = body::inspect(&body)?;
    let model = policy
        .model(&facts.model)
        .ok_or_else(|| Refusal::ModelNotFound(facts.model.as_str().into()))?;
    if !key.models.contains(model.index) {
        return Err(Refusal::ModelNotAllowed(facts.model.as_str().into()));
    }
    *named = Some(model.clone());
    let format = model.provider.format;
    if operation.native_format() != format.wire() && !translate::translates(operation, format) {
        return Err(wrong_api(&facts.model, model.provider.format.wire()));
    }
    Ok(Request {
        operation,
        model: model.clone(),
        body,
        facts,
    })
}

/// The model is served through the other API than the one the request came in on.
fn wrong_api(model: &str, served: WireFormat) -> Refusal {
    let message = match served {
        WireFormat::Anthropic => format!(
            "The model `{model}` is served through Anthropic's Messages API: send it to POST /v1/messages, or POST /v1/chat/completions, which keygate translates."
        ),
        WireFormat::Openai => format!(
            "The model `{model}` is served through the OpenAI API (e.g. POST /v1/chat/completions), not Anthropic's Messages API."
        ),
    };
    Refusal::invalid_param("model", message)
}
