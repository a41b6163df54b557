//! Recorded-looking provider streams shared by the unit tests of `usage`, a shorthand for the
//! usage they are expected to report, and broken input that no parser may panic on.

use super::Usage;

pub(super) fn u(p: u64, c: u64, cached: u64) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: p,
        completion_tokens: c,
        cached_tokens: cached,
        cache_write_tokens: 0,
    })
}

pub(super) const CHAT: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé😀\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"a\\n\\u00e9\\ud83d\\ude00\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
    "data: [DONE]\n\n",
);

pub(super) const RESPONSES: &str = concat!(
    "event: response.created\r\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"status\":\"in_progress\",\"usage\":null}}\r\n\r\n",
    "event: response.output_text.delta\r\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m\",\"delta\":\"Hé\"}\r\n\r\n",
    "event: response.output_text.delta\r\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m\",\"delta\":\"😀!\"}\r\n\r\n",
    "event: response.output_text.done\r\ndata: {\"type\":\"response.output_text.done\",\"item_id\":\"m\",\"text\":\"Hé😀!\"}\r\n\r\n",
    "event: response.content_part.done\r\ndata: {\"type\":\"response.content_part.done\",\"part\":{\"type\":\"output_text\",\"text\":\"Hé😀!\"},\"delta\":\"decoy\"}\r\n\r\n",
    "event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[{\"content\":[{\"text\":\"Hé😀!\",\"usage\":{\"input_tokens\":1000}}]}],\"usage\":{\"input_tokens\":12,\"input_tokens_details\":{\"cached_tokens\":5},\"output_tokens\":4,\"total_tokens\":16}}}\r\n\r\n",
);

/// Anthropic's Messages stream in its real event order, with a tool call, a thinking block, and
/// two `message_delta`s whose cumulative counts must not be added up. The input (5 plain + 100
/// written to the cache + 20 read from it) comes from `message_start` only. Generated text:
/// "Hé😀" (3) + "!" (1) + `{"a":1}` (7) + "hm" (2) = 13 characters.
pub(super) const ANTHROPIC: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":20,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé😀\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"\\u0021\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null,\"stop_sequence\":null,\"text\":\"decoy\"},\"usage\":{\"output_tokens\":9}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

/// The usage [`ANTHROPIC`] reports, and its generated characters.
pub(super) const ANTHROPIC_USAGE: (Usage, u64) = (
    Usage {
        prompt_tokens: 125,
        completion_tokens: 15,
        cached_tokens: 20,
        cache_write_tokens: 100,
    },
    13,
);

/// Truncated escapes, unbalanced brackets, stray bytes: for the never-panics tests of every body
/// parser (the request rewrite in `proxy::body` too).
pub(crate) const GARBAGE: [&[u8]; 8] = [
    b"\\\\\"\"{[[[]]]}}}",
    b"data: {\"choices\":[{\"delta\":{\"content\":\"\\u12",
    b"data: {\"usage\":{\"prompt_tokens\":1}\ndata: ]]]]\n\n",
    b"\xff\xfe\x00data:\r\r\r\n\n",
    b"{\"usage\":{\"prompt_tokens\":[[[[[[[[[[",
    b"{\"choices\":[[[[{\"delta\":{\"content\":\"\\ud83d",
    b"{\"a\":\"\\",
    b":::::\n\n\n\n",
];
