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
