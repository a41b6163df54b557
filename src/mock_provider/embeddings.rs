//! `POST /v1/embeddings`: deterministic unit vectors derived from each input's hash, as float
//! arrays or base64, so equal inputs embed equally across runs.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::response::{invalid_request, MockResponse};
use super::tokens::approx_tokens;

const DEFAULT_EMBEDDING_DIMS: usize = 8;
const MAX_EMBEDDING_DIMS: usize = 4096;

pub(super) fn embeddings(
    req: &Map<String, Value>,
    model: &str,
) -> Result<MockResponse, MockResponse> {
    let invalid_input = || {
        invalid_request(
            "'input' must be a non-empty string, array of strings, array of tokens, or array \
             of token arrays.",
            Some("input"),
            Some("invalid_value"),
        )
    };
    let input = match req.get("input") {
        Some(input) => input,
        None => {
            return Err(invalid_request(
                "Missing required parameter: 'input'.",
                Some("input"),
                Some("missing_required_parameter"),
            ))
        }
    };
    let inputs = embedding_inputs(input).ok_or_else(invalid_input)?;

    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_EMBEDDING_DIMS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_EMBEDDING_DIMS as u64).contains(&n) => n as usize,
            _ => {
                return Err(invalid_request(
                    &format!(
                        "Invalid 'dimensions': expected an integer from 1 to {MAX_EMBEDDING_DIMS}."
                    ),
                    Some("dimensions"),
                    Some("invalid_value"),
                ))
            }
        },
    };
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(invalid_request(
                &format!("Invalid 'encoding_format': {other} is not one of ['float', 'base64']."),
                Some("encoding_format"),
                Some("invalid_value"),
            ))
        }
    };

    let prompt_tokens = approx_tokens(inputs.iter().map(|i| i.prompt_bytes).sum());
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(&input.key, dims);
            // The official Python SDK asks for base64 by default and decodes little-endian f32.
            let embedding = if base64 {
                let raw: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64_encode(&raw))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(MockResponse::json(
        200,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        }),
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EmbeddingInput {
    /// What the vector is derived from: the text, or the token array's JSON.
    key: Vec<u8>,
    /// Contribution to the prompt size; a pre-tokenised input counts 4 bytes per token so that
    /// it comes out as one token each.
    prompt_bytes: usize,
}

/// Splits `input` into embedding items the way OpenAI does: a string or one token array is one
/// item; an array of strings or of token arrays is one item each. `None` if malformed.
fn embedding_inputs(input: &Value) -> Option<Vec<EmbeddingInput>> {
    fn text(s: &str) -> EmbeddingInput {
        EmbeddingInput {
            key: s.as_bytes().to_vec(),
            prompt_bytes: s.len(),
        }
    }
    fn tokens(items: &[Value]) -> Option<EmbeddingInput> {
        if items.is_empty() || !items.iter().all(|t| t.as_u64().is_some()) {
            return None;
        }
        Some(EmbeddingInput {
            key: Value::Array(items.to_vec()).to_string().into_bytes(),
            prompt_bytes: items.len() * 4,
        })
    }
    match input {
        Value::String(s) => Some(vec![text(s)]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .map(|s| text(s.as_str().unwrap_or_default()))
                .collect(),
        ),
        Value::Array(items) if items.iter().all(Value::is_number) => Some(vec![tokens(items)?]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(inner) => tokens(inner),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A unit-length vector derived from SHA-256 of the input, so equal inputs embed equally
/// across runs and processes.
fn embedding_vector(key: &[u8], dims: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dims);
    let mut block: u32 = 0;
    while out.len() < dims {
        let digest = Sha256::new()
            .chain_update(block.to_le_bytes())
            .chain_update(key)
            .finalize();
        for pair in digest.chunks_exact(2) {
            if out.len() == dims {
                break;
            }
            let raw = u16::from_le_bytes([pair[0], pair[1]]);
            out.push(f32::from(raw) / 32767.5 - 1.0);
        }
        block = block.wrapping_add(1);
    }
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut out {
            *x /= norm;
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), as OpenAI's `encoding_format: "base64"` uses.
fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_provider::routes::Route;
    use crate::mock_provider::test_support::{body_json, post};

    #[test]
    fn embeddings_shape_and_determinism() {
        let resp = post(
            Route::Embeddings,
            json!({"model": "text-embedding-3-small", "input": ["hello", "world!!!"]}),
        );
        let v = body_json(&resp);
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "text-embedding-3-small");
        assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[1]["index"], 1);
        assert_eq!(data[0]["object"], "embedding");
        let e0: Vec<f64> = serde_json::from_value(data[0]["embedding"].clone()).unwrap();
        let e1: Vec<f64> = serde_json::from_value(data[1]["embedding"].clone()).unwrap();
        assert_eq!(e0.len(), 8);
        assert_ne!(e0, e1);
        let norm: f64 = e0.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");

        // Same text, same vector, whether alone or in a batch.
        let again = body_json(&post(
            Route::Embeddings,
            json!({"model": "x", "input": "hello"}),
        ));
        assert_eq!(again["data"][0]["embedding"], data[0]["embedding"]);

        let dims = body_json(&post(
            Route::Embeddings,
            json!({"model": "x", "input": "hello", "dimensions": 40}),
        ));
        assert_eq!(dims["data"][0]["embedding"].as_array().unwrap().len(), 40);

        let tokens = body_json(&post(
            Route::Embeddings,
            json!({"model": "x", "input": [[1, 2, 3], [4]]}),
        ));
        assert_eq!(tokens["data"].as_array().unwrap().len(), 2);
        assert_eq!(tokens["usage"]["prompt_tokens"], 4);
    }

    #[test]
    fn embeddings_base64_matches_floats() {
        let floats = embedding_vector(b"hello", 8);
        let v = body_json(&post(
            Route::Embeddings,
            json!({"model": "x", "input": "hello", "encoding_format": "base64"}),
        ));
        let raw: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!(v["data"][0]["embedding"], json!(base64_encode(&raw)));
        let bad = post(
            Route::Embeddings,
            json!({"model": "x", "input": "hello", "encoding_format": "hex"}),
        );
        assert_eq!(bad.status, 400);
    }

    #[test]
    fn base64_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }
}
