//! The `usage` object a provider reports: [`Usage`] and its hand-rolled, lenient parser.

use crate::json::{for_each_member, key_name, skip_value, skip_ws};

/// The most tokens one count of one response is taken for. Real requests stay orders of
/// magnitude below it; a broken or hostile provider's count is clamped here, so that sums of
/// counts downstream (windows, metrics, the usage database) cannot overflow.
pub const MAX_TOKENS: u64 = 1_000_000_000;

/// Token counts from a provider's own response, each at most [`MAX_TOKENS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every prompt token, read from a cache or written to one included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache (Anthropic's prompt caching).
    pub cache_write_tokens: u64,
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
        cache_write_tokens: 0,
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

/// A JSON number that is a non-negative integer (`12`, `12.0`, `1.2e1`), clamped to
/// [`MAX_TOKENS`]: an absurd count is still a count, and dropping it would charge nothing.
fn token_count(literal: &[u8]) -> Option<u64> {
    if !literal.is_empty() && literal.iter().all(u8::is_ascii_digit) {
        let n = literal.iter().fold(0u64, |n, &d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        return Some(n.min(MAX_TOKENS));
    }
    if !literal.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let v: f64 = std::str::from_utf8(literal).ok()?.parse().ok()?;
    // `1e999` parses as infinity; `as` saturates, and the clamp is far below where f64 loses
    // whole numbers.
    let integral = v.fract() == 0.0 || v == f64::INFINITY;
    integral.then_some((v as u64).min(MAX_TOKENS))
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
        assert_eq!(token_count(b"999999999"), Some(999_999_999));
        for huge in [
            &b"1000000001"[..],
            b"18000000000000000000",
            b"18446744073709551616",
            b"99999999999999999999999999",
            b"1.8e19",
            b"1e300",
            b"1e999",
        ] {
            assert_eq!(token_count(huge), Some(MAX_TOKENS));
        }
    }
}
