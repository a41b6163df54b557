//! OpenAI-format clients on Anthropic models: a chat completions request becomes a Messages
//! request, and the Messages response (JSON, event stream or error) becomes what the OpenAI
//! SDKs expect of `/v1/chat/completions`.
//!
//! - `request` turns the client's body into the Messages body, refusing what Messages cannot
//!   express instead of dropping it;
//! - `response` turns a Messages JSON response into a `chat.completion`;
//! - `stream` turns a Messages event stream into `chat.completion.chunk`s as it passes;
//! - `error` turns a provider error (JSON, or an `error` event after a 200) into OpenAI's shape.
//!
//! The proxy decides when to translate (`proxy::body` for the request, `proxy::respond` for the
//! response); these functions are pure and know nothing of Pingora.

pub mod error;
pub mod request;
pub mod response;
pub mod stream;

pub use request::{chat_to_messages, Translated};

use crate::domain::{Operation, ProviderFormat};
use bytes::Bytes;

/// The path a translated request is sent to, in place of `/v1/chat/completions`.
pub const MESSAGES_PATH: &str = "/v1/messages";

/// Whether a request for `operation` to a provider of `format` is translated: chat completions
/// on an Anthropic model.
pub fn translates(operation: Operation, format: ProviderFormat) -> bool {
    operation == Operation::Chat && format == ProviderFormat::Anthropic
}

/// What the response side of a translated request must know of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

impl Translation {
    /// The translator for a response with `status`, an event stream or not.
    pub fn response(self, status: u16, event_stream: bool) -> ResponseTranslator {
        if !(200..300).contains(&status) {
            ResponseTranslator::Error(error::ErrorResponse::new(status))
        } else if event_stream {
            ResponseTranslator::Stream(stream::StreamTranslator::new(self.include_usage))
        } else {
            ResponseTranslator::Json(response::JsonResponse::new())
        }
    }
}

/// Finish reasons: Messages' `stop_reason` as chat completions name it.
pub(crate) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and whatever a newer API adds: the turn ended.
        _ => "stop",
    }
}

/// Token usage as Messages reports it: `input_tokens` excludes the cache tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct MessagesUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl MessagesUsage {
    /// Takes the fields `later` reports: Messages' usage figures are cumulative, so the latest
    /// value of each is the total.
    pub fn update(&mut self, later: &MessagesUsage) {
        let take = |mine: &mut Option<u64>, theirs: Option<u64>| {
            if theirs.is_some() {
                *mine = theirs;
            }
        };
        take(&mut self.input_tokens, later.input_tokens);
        take(&mut self.output_tokens, later.output_tokens);
        take(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        take(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
    }

    /// In chat completions' fields: the prompt counts every input token, cached or not.
    pub fn to_openai(self) -> OpenAiUsage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(cached);
        let completion = self.output_tokens.unwrap_or(0);
        OpenAiUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: CachedTokens {
                cached_tokens: cached,
            },
        }
    }
}

/// Chat completions' `usage` object.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct OpenAiUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: CachedTokens,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct CachedTokens {
    pub cached_tokens: u64,
}

/// What a response body becomes on its way to an OpenAI-format client.
pub enum ResponseTranslator {
    /// A Messages JSON response, read whole (it is one object), then one `chat.completion`.
    Json(response::JsonResponse),
    /// A Messages event stream, translated event by event.
    Stream(stream::StreamTranslator),
    /// A provider error, read whole (bounded), then OpenAI's error shape.
    Error(error::ErrorResponse),
}

impl ResponseTranslator {
    /// Takes the next upstream chunk; returns what the client is sent now, if anything.
    pub fn filter(&mut self, chunk: Option<&[u8]>, end_of_stream: bool) -> Option<Bytes> {
        match self {
            ResponseTranslator::Json(t) => t.filter(chunk, end_of_stream),
            ResponseTranslator::Stream(t) => t.filter(chunk, end_of_stream),
            ResponseTranslator::Error(t) => t.filter(chunk, end_of_stream),
        }
    }
}

/// Seconds since the Unix epoch, for `created`.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons() {
        for (from, to) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            assert_eq!(finish_reason(from), to);
        }
    }

    #[test]
    fn usage_counts_cache_tokens_in_the_prompt_and_keeps_the_latest_figures() {
        let mut u = MessagesUsage {
            input_tokens: Some(10),
            output_tokens: Some(1),
            cache_creation_input_tokens: Some(5),
            cache_read_input_tokens: Some(20),
        };
        u.update(&MessagesUsage {
            output_tokens: Some(7),
            ..Default::default()
        });
        u.update(&MessagesUsage {
            output_tokens: Some(9),
            ..Default::default()
        });
        let o = u.to_openai();
        assert_eq!(
            (
                o.prompt_tokens,
                o.completion_tokens,
                o.total_tokens,
                o.prompt_tokens_details.cached_tokens
            ),
            (35, 9, 44, 20)
        );
    }
}
