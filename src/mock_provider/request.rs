//! Reading the JSON body of the POST endpoints: the object and its `model`, and the parameters
//! several endpoints share (token limits, `stream`, `stream_options.include_usage`), rejected
//! with the 400 errors OpenAI gives for the same mistakes.

use serde_json::{Map, Value};

use super::response::{invalid_request, MockResponse};

/// Parses the JSON object body and its `model`, the common prelude of every POST endpoint.
pub(super) fn with_request(
    body: &[u8],
    build: impl FnOnce(&Map<String, Value>, &str) -> Result<MockResponse, MockResponse>,
) -> MockResponse {
    let req = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(req)) => req,
        Ok(_) => {
            return invalid_request("Invalid request body: expected a JSON object.", None, None)
        }
        Err(_) => {
            return invalid_request(
                "We could not parse the JSON body of your request. The OpenAI API expects a \
                 JSON payload, but what was sent was not valid JSON.",
                None,
                None,
            )
        }
    };
    let model = match req.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => model,
        _ => return invalid_request("you must provide a model parameter", None, None),
    };
    build(&req, model).unwrap_or_else(|rejection| rejection)
}

/// Reads the first present, non-null limit among `names` (e.g. `max_completion_tokens` before
/// the deprecated `max_tokens`), rejecting what OpenAI rejects: non-integers and values < 1.
pub(super) fn token_limit(
    req: &Map<String, Value>,
    names: &[&str],
) -> Result<Option<u64>, MockResponse> {
    for &name in names {
        match req.get(name) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return match v.as_u64() {
                    Some(n) if n >= 1 => Ok(Some(n)),
                    Some(_) => Err(below_minimum(name, v)),
                    None if v.as_i64().is_some() => Err(below_minimum(name, v)),
                    None => Err(invalid_request(
                        &format!("Invalid type for '{name}': expected an integer."),
                        Some(name),
                        Some("invalid_type"),
                    )),
                };
            }
        }
    }
    Ok(None)
}

fn below_minimum(name: &str, got: &Value) -> MockResponse {
    invalid_request(
        &format!(
            "Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {got} \
             instead."
        ),
        Some(name),
        Some("integer_below_min_value"),
    )
}

pub(super) fn is_stream(req: &Map<String, Value>) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

pub(super) fn include_usage(req: &Map<String, Value>) -> bool {
    req.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mock_provider::routes::{respond, Route};
    use crate::mock_provider::test_support::{body_json, meta, post};

    #[test]
    fn token_limit_validation() {
        let req = |v: Value| v.as_object().unwrap().clone();
        let names = ["max_completion_tokens", "max_tokens"];
        assert_eq!(token_limit(&req(json!({})), &names).unwrap(), None);
        assert_eq!(
            token_limit(&req(json!({"max_tokens": null})), &names).unwrap(),
            None
        );
        assert_eq!(
            token_limit(&req(json!({"max_tokens": 5})), &names).unwrap(),
            Some(5)
        );
        assert_eq!(
            token_limit(
                &req(json!({"max_tokens": 5, "max_completion_tokens": 2})),
                &names
            )
            .unwrap(),
            Some(2)
        );
        for bad in [json!(0), json!(-3), json!(1.5), json!("7")] {
            let err = token_limit(&req(json!({"max_tokens": bad})), &names).unwrap_err();
            assert_eq!(err.status, 400);
            assert_eq!(body_json(&err)["error"]["param"], "max_tokens");
        }
    }

    #[test]
    fn malformed_bodies_are_400() {
        for body in [&b""[..], b"{", b"[1,2]", b"\xff\xfe", b"{\"messages\": []}"] {
            let resp = respond(&Route::ChatCompletions, body, &meta());
            assert_eq!(resp.status, 400, "body {body:?}");
            assert_eq!(body_json(&resp)["error"]["type"], "invalid_request_error");
        }
        let resp = post(
            Route::ChatCompletions,
            json!({"model": "m", "messages": "hi"}),
        );
        assert_eq!(resp.status, 400);
        let resp = post(Route::Embeddings, json!({"model": "m"}));
        assert_eq!(resp.status, 400);
        let resp = post(Route::Embeddings, json!({"model": "m", "input": []}));
        assert_eq!(resp.status, 400);
        let resp = post(Route::Embeddings, json!({"model": "m", "input": [1, "a"]}));
        assert_eq!(resp.status, 400);
    }

    #[test]
    fn model_is_required() {
        let resp = post(Route::Responses, json!({"input": "x"}));
        assert_eq!(resp.status, 400);
        let resp = post(Route::Responses, json!({"model": 7, "input": "x"}));
        assert_eq!(resp.status, 400);
    }
}
