//! The mock's stand-in for a tokenizer: how many tokens a prompt counts, the reply cut to a
//! token limit, and the usage objects reporting both.
//!
//! The rules are simple enough to check by hand (a prompt is ceil(text bytes / 4) tokens, at
//! least 1; the reply is one token per word), which is what makes the mock useful for
//! verifying the gateway's accounting.

use serde_json::{json, Value};

/// The sentence every completion is cut from; one word is one token and one stream delta.
const REPLY_WORDS: [&str; 9] = [
    "This",
    "is",
    "a",
    "mock",
    "response",
    "from",
    "keygate's",
    "embedded",
    "provider.",
];

/// Ceil(bytes / 4), at least 1: the mock's stand-in for a tokenizer.
pub(super) fn approx_tokens(bytes: usize) -> u64 {
    bytes.div_ceil(4).max(1) as u64
}

/// Text bytes of a message `content` (or an Anthropic `system`): a string, or an array of parts
/// whose `text` counts (images and other non-text parts count nothing).
pub(super) fn content_text_bytes(content: &Value) -> usize {
    match content {
        Value::String(s) => s.len(),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part {
                Value::String(s) => s.len(),
                Value::Object(o) => o.get("text").and_then(Value::as_str).map_or(0, str::len),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

pub(super) fn chat_prompt_bytes(messages: &[Value]) -> usize {
    messages
        .iter()
        .map(|m| m.get("content").map_or(0, content_text_bytes))
        .sum()
}

/// Completions `prompt`: a string or an array of strings.
pub(super) fn completion_prompt_bytes(prompt: Option<&Value>) -> usize {
    prompt.map_or(0, content_text_bytes)
}

/// Responses `input`: a string, or an array of items whose `content` is a string or parts.
pub(super) fn responses_prompt_bytes(input: Option<&Value>) -> usize {
    match input {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.len(),
                Value::Object(o) => o.get("content").map_or(0, content_text_bytes),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// The reply: a prefix of [`REPLY_WORDS`], cut to the request's token limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub(super) words: Vec<&'static str>,
    pub(super) truncated: bool,
}

impl Reply {
    pub(super) fn new(limit: Option<u64>) -> Self {
        let full = REPLY_WORDS.len();
        let take = limit.map_or(full, |l| usize::try_from(l).unwrap_or(usize::MAX).min(full));
        Self {
            words: REPLY_WORDS[..take].to_vec(),
            truncated: take < full,
        }
    }

    pub(super) fn text(&self) -> String {
        self.words.join(" ")
    }

    /// Stream deltas: words after the first carry their leading space, so that the deltas
    /// concatenate to exactly [`Reply::text`].
    pub(super) fn deltas(&self) -> impl Iterator<Item = String> + '_ {
        self.words.iter().enumerate().map(|(i, w)| {
            if i == 0 {
                (*w).to_string()
            } else {
                format!(" {w}")
            }
        })
    }

    pub(super) fn tokens(&self) -> u64 {
        self.words.len() as u64
    }

    pub(super) fn finish_reason(&self) -> &'static str {
        if self.truncated {
            "length"
        } else {
            "stop"
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) prompt: u64,
    pub(super) completion: u64,
}

impl Usage {
    /// Chat and completions usage, with the detail objects current OpenAI responses carry.
    pub(super) fn chat_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        })
    }

    pub(super) fn responses_json(self) -> Value {
        json!({
            "input_tokens": self.prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt + self.completion
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approx_tokens_rounds_up_with_minimum_one() {
        assert_eq!(approx_tokens(0), 1);
        assert_eq!(approx_tokens(1), 1);
        assert_eq!(approx_tokens(4), 1);
        assert_eq!(approx_tokens(5), 2);
        assert_eq!(approx_tokens(8), 2);
        assert_eq!(approx_tokens(9), 3);
    }

    #[test]
    fn chat_prompt_counts_strings_and_text_parts_only() {
        let messages = json!([
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [
                {"type": "text", "text": "efgh"},
                {"type": "image_url", "image_url": {"url": "data:xxxxxxxxxxxxxxxx"}},
                {"type": "text", "text": "i"}
            ]},
            {"role": "assistant", "content": null, "tool_calls": []}
        ]);
        let messages = messages.as_array().unwrap();
        assert_eq!(chat_prompt_bytes(messages), 9);
        assert_eq!(approx_tokens(chat_prompt_bytes(messages)), 3);
    }

    #[test]
    fn completion_and_responses_prompts() {
        assert_eq!(completion_prompt_bytes(Some(&json!("hello"))), 5);
        assert_eq!(completion_prompt_bytes(Some(&json!(["ab", "cde"]))), 5);
        assert_eq!(completion_prompt_bytes(None), 0);
        assert_eq!(responses_prompt_bytes(Some(&json!("hello world"))), 11);
        let items = json!([
            {"role": "user", "content": "abc"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "de"}]},
            {"type": "function_call_output", "call_id": "x", "output": "ignored"}
        ]);
        assert_eq!(responses_prompt_bytes(Some(&items)), 5);
    }

    #[test]
    fn reply_is_cut_to_the_limit() {
        let full = Reply::new(None);
        assert_eq!(
            full.text(),
            "This is a mock response from keygate's embedded provider."
        );
        assert_eq!(full.tokens(), 9);
        assert_eq!(full.finish_reason(), "stop");

        let exact = Reply::new(Some(9));
        assert!(!exact.truncated);
        let big = Reply::new(Some(u64::MAX));
        assert_eq!(big.tokens(), 9);
        assert_eq!(big.finish_reason(), "stop");

        let cut = Reply::new(Some(3));
        assert_eq!(cut.text(), "This is a");
        assert_eq!(cut.tokens(), 3);
        assert_eq!(cut.finish_reason(), "length");
    }

    #[test]
    fn deltas_concatenate_to_the_text() {
        let reply = Reply::new(Some(4));
        let deltas: Vec<String> = reply.deltas().collect();
        assert_eq!(deltas, ["This", " is", " a", " mock"]);
        assert_eq!(deltas.concat(), reply.text());
    }
}
