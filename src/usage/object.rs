//! The `usage` object a provider reports: [`Usage`] and its hand-rolled, lenient parser.

use crate::json::{for_each_member, key_name, skip_value, skip_ws};

/// Token counts from a provider's own response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
}

/// Parses one `usage` object: `prompt_tokens`/`completion_tokens` (chat, completions,
/// embeddings) or `input_tokens`/`output_tokens` (responses API), and `cached_tokens` from
/// `prompt_tokens_details` or `input_tokens_details`. `None` unless it holds at least one token
/// count we know.
///
/// Hand-rolled over `for_each_member` rather than serde: it runs once per response on the hot
/// path, and one pass with no visitor machinery is about twice as fast. It is also more lenient,
/// on purpose: an odd value (`null`, a string, a negative number) loses that one field, not the
/// whole usage; integral floats (`12.0`) count; on a duplicate key the last one wins.
pub(super) fn parse_usage(object: &[u8]) -> Option<Usage> {
    let open = skip_ws(object, 0);
    if object.get(open) != Some(&b'{') {
        return None;
    }
    parse_usage_at(object, open).0
}

/// [`parse_usage`] of the object opening at `s[open]`, in one pass; also returns the index just
/// past the object (`None` if it is malformed or incomplete).
pub(super) fn parse_usage_at(s: &[u8], open: usize) -> (Option<Usage>, Option<usize>) {
    let (mut prompt, mut completion, mut input, mut output) = (None, None, None, None);
    let (mut prompt_cached, mut input_cached) = (None, None);
    let end = for_each_member(s, open, |key, v| {
        let slot = match key_name(key).as_ref() {
            b"prompt_tokens" => &mut prompt,
            b"completion_tokens" => &mut completion,
            b"input_tokens" => &mut input,
            b"output_tokens" => &mut output,
            b"prompt_tokens_details" if s[v] == b'{' => {
                let (cached, end) = cached_tokens_at(s, v);
                prompt_cached = cached;
                return end;
            }
            b"input_tokens_details" if s[v] == b'{' => {
                let (cached, end) = cached_tokens_at(s, v);
                input_cached = cached;
                return end;
            }
            _ => return skip_value(s, v),
        };
        let end = skip_value(s, v)?;
        *slot = token_count(&s[v..end]);
        Some(end)
    });
    if end.is_none() {
        return (None, None);
    }
    let prompt = prompt.or(input);
    let completion = completion.or(output);
    if prompt.is_none() && completion.is_none() {
        return (None, end);
    }
    let usage = Usage {
        prompt_tokens: prompt.unwrap_or(0),
        completion_tokens: completion.unwrap_or(0),
        cached_tokens: prompt_cached.or(input_cached).unwrap_or(0),
    };
    (Some(usage), end)
}

/// `cached_tokens` of the `*_tokens_details` object opening at `s[open]`, and its end.
fn cached_tokens_at(s: &[u8], open: usize) -> (Option<u64>, Option<usize>) {
    let mut cached = None;
    let end = for_each_member(s, open, |key, v| {
        let end = skip_value(s, v)?;
        if key_name(key).as_ref() == b"cached_tokens" {
            cached = token_count(&s[v..end]);
        }
        Some(end)
    });
    (cached, end)
}

/// A JSON number that is a non-negative integer (`12`, `12.0`, `1.2e1`).
fn token_count(literal: &[u8]) -> Option<u64> {
    if !literal.is_empty() && literal.len() <= 19 && literal.iter().all(u8::is_ascii_digit) {
        return Some(literal.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')));
    }
    if !literal.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let v: f64 = std::str::from_utf8(literal).ok()?.parse().ok()?;
    (v.is_finite() && v.fract() == 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts() {
        assert_eq!(token_count(b"12"), Some(12));
        assert_eq!(token_count(b"12.0"), Some(12));
        assert_eq!(token_count(b"1.2e1"), Some(12));
        assert_eq!(token_count(b"1.5"), None);
        assert_eq!(token_count(b"-1"), None);
        assert_eq!(token_count(b"null"), None);
        assert_eq!(token_count(b"\"12\""), None);
        assert_eq!(token_count(b"18446744073709551615"), None);
        assert_eq!(
            token_count(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
    }
}
