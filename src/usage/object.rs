//! The `usage` object a provider reports: [`Usage`], the counts as reported ([`Reported`]) and
//! their hand-rolled, lenient parser.

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

/// The token counts of one `usage` object as the provider reported them: a field it left out is
/// absent, so that reports a stream sends one after another can be merged (see
/// [`Reported::then`]). Compact, as the scanner holds two and the SSE parser one: each count is at
/// most [`MAX_TOKENS`], which fits 32 bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Reported {
    counts: [u32; FIELDS],
    /// Bit `i` set: `counts[i]` was reported.
    present: u8,
}

const FIELDS: usize = 8;
const PROMPT: usize = 0;
const COMPLETION: usize = 1;
const INPUT: usize = 2;
const OUTPUT: usize = 3;
const PROMPT_CACHED: usize = 4;
const INPUT_CACHED: usize = 5;
/// Anthropic's `cache_creation_input_tokens`.
const CACHE_WRITE: usize = 6;
/// Anthropic's `cache_read_input_tokens`.
const CACHE_READ: usize = 7;

impl Reported {
    fn get(&self, field: usize) -> Option<u64> {
        (self.present & 1 << field != 0).then(|| u64::from(self.counts[field]))
    }

    /// Records `count` (at most [`MAX_TOKENS`]); `None` forgets the field, as a duplicate key
    /// with an odd value does.
    fn set(&mut self, field: usize, count: Option<u64>) {
        match count {
            Some(n) => {
                self.counts[field] = u32::try_from(n.min(MAX_TOKENS)).unwrap_or(u32::MAX);
                self.present |= 1 << field;
            }
            None => self.present &= !(1 << field),
        }
    }

    /// This report updated by a `later` one of the same response. Counts are cumulative (an
    /// Anthropic stream's `message_delta` repeats the output so far, never an increment), so a
    /// field `later` reports replaces this one's, and a field it leaves out keeps its value:
    /// `message_start` gives the input and cache tokens, and a `message_delta` that reports only
    /// `output_tokens` must not lose them.
    pub(super) fn then(self, later: Reported) -> Reported {
        let mut merged = self;
        for field in 0..FIELDS {
            if later.present & 1 << field != 0 {
                merged.counts[field] = later.counts[field];
            }
        }
        merged.present |= later.present;
        merged
    }

    /// The usage in keygate's terms: `prompt_tokens` counts every prompt token. OpenAI's
    /// `prompt_tokens` and the responses API's `input_tokens` already include the cached ones;
    /// Anthropic's `input_tokens` leaves out the tokens read from and written to the cache, which
    /// its reports tell by carrying `cache_*_input_tokens`, so those are added back.
    pub(super) fn usage(&self) -> Option<Usage> {
        if [PROMPT, COMPLETION, INPUT, OUTPUT]
            .iter()
            .all(|&f| self.get(f).is_none())
        {
            return None;
        }
        let cache_write = self.get(CACHE_WRITE);
        let cache_read = self.get(CACHE_READ);
        let anthropic = cache_write.is_some() || cache_read.is_some();
        let prompt = match (self.get(PROMPT), self.get(INPUT)) {
            (Some(prompt), _) => prompt,
            (None, Some(input)) if anthropic => {
                (input + cache_read.unwrap_or(0) + cache_write.unwrap_or(0)).min(MAX_TOKENS)
            }
            (None, input) => input.unwrap_or(0),
        };
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: self.get(COMPLETION).or(self.get(OUTPUT)).unwrap_or(0),
            cached_tokens: self
                .get(PROMPT_CACHED)
                .or(self.get(INPUT_CACHED))
                .or(cache_read)
                .unwrap_or(0),
            cache_write_tokens: cache_write.unwrap_or(0),
        })
    }
}

/// Parses one `usage` object: `prompt_tokens`/`completion_tokens` (chat, completions,
/// embeddings) or `input_tokens`/`output_tokens` (responses API, Anthropic), `cached_tokens` from
/// `prompt_tokens_details` or `input_tokens_details`, and Anthropic's
/// `cache_creation_input_tokens` and `cache_read_input_tokens`. `None` unless it holds at least
/// one token count we know.
///
/// Hand-rolled over `for_each_member` rather than serde: it runs once per response on the hot
/// path, and one pass with no visitor machinery is about twice as fast. It is also more lenient,
/// on purpose: an odd value (`null`, a string, a negative number) loses that one field, not the
/// whole usage; integral floats (`12.0`) count; on a duplicate key the last one wins.
pub(super) fn parse_reported(object: &[u8]) -> Option<Reported> {
    let open = skip_ws(object, 0);
    if object.get(open) != Some(&b'{') {
        return None;
    }
    parse_usage_at(object, open).0
}

/// [`parse_reported`], resolved.
#[cfg(test)]
pub(super) fn parse_usage(object: &[u8]) -> Option<Usage> {
    parse_reported(object)?.usage()
}

/// [`parse_reported`] of the object opening at `s[open]`, in one pass; also returns the index
/// just past the object (`None` if it is malformed or incomplete).
pub(super) fn parse_usage_at(s: &[u8], open: usize) -> (Option<Reported>, Option<usize>) {
    let mut r = Reported::default();
    let end = for_each_member(s, open, |key, v| {
        let field = match key_name(key).as_ref() {
            b"prompt_tokens" => PROMPT,
            b"completion_tokens" => COMPLETION,
            b"input_tokens" => INPUT,
            b"output_tokens" => OUTPUT,
            b"cache_creation_input_tokens" => CACHE_WRITE,
            b"cache_read_input_tokens" => CACHE_READ,
            b"prompt_tokens_details" if s[v] == b'{' => {
                let (cached, end) = cached_tokens_at(s, v);
                r.set(PROMPT_CACHED, cached);
                return end;
            }
            b"input_tokens_details" if s[v] == b'{' => {
                let (cached, end) = cached_tokens_at(s, v);
                r.set(INPUT_CACHED, cached);
                return end;
            }
            _ => return skip_value(s, v),
        };
        let end = skip_value(s, v)?;
        r.set(field, token_count(&s[v..end]));
        Some(end)
    });
    if end.is_none() {
        return (None, None);
    }
    let counted = r.usage().is_some();
    (counted.then_some(r), end)
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

#[cfg(test)]
mod anthropic_tests {
    use super::*;

    #[test]
    fn anthropic_input_tokens_exclude_the_cache() {
        let u = parse_usage(
            br#"{"input_tokens":10,"cache_creation_input_tokens":200,"cache_read_input_tokens":3000,"output_tokens":5,"service_tier":"standard"}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 3210,
                completion_tokens: 5,
                cached_tokens: 3000,
                cache_write_tokens: 200,
            }
        );
        // Null cache fields (no caching) still mark the report as Anthropic's; nothing to add.
        let u = parse_usage(
            br#"{"input_tokens":10,"cache_creation_input_tokens":null,"cache_read_input_tokens":null,"output_tokens":1}"#,
        );
        assert_eq!(u.map(|u| (u.prompt_tokens, u.cached_tokens)), Some((10, 0)));
    }

    #[test]
    fn a_later_report_replaces_what_it_reports_and_keeps_the_rest() {
        let start = parse_reported(
            br#"{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":4,"output_tokens":1}"#,
        )
        .unwrap();
        let delta = parse_reported(br#"{"output_tokens":15}"#).unwrap();
        let last = parse_reported(br#"{"output_tokens":40}"#).unwrap();
        let u = start.then(delta).then(last).usage().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (14, 40, 4)
        );
    }

    #[test]
    fn prompt_tokens_given_with_cache_fields_are_the_total() {
        // An OpenAI-shaped report that also names Anthropic's cache fields (as some proxies
        // send): its prompt_tokens already counts them.
        let u = parse_usage(
            br#"{"prompt_tokens":100,"completion_tokens":2,"cache_read_input_tokens":60,"cache_creation_input_tokens":30}"#,
        )
        .unwrap();
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens),
            (100, 60, 30)
        );
    }
}
