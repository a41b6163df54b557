//! Token accounting input: the usage a provider reports in its own response bodies.
//!
//! This module owns reading `usage` out of response bodies as they stream through the proxy
//! (JSON and SSE, identity or gzip/deflate/br encoded) without buffering or altering what the
//! client receives, the running count of streamed text characters used to estimate completion
//! tokens of cut streams, and the request/response rewrite that lets keygate see usage on
//! streams whose client did not ask for it (`stream_options.include_usage`), invisibly to that
//! client. Pricing, budgets and metrics built on these numbers live elsewhere.
//!
//! - [`extract`]: [`UsageExtractor`], [`UsageChunkStripper`], [`request_with_include_usage`];
//! - [`cost`]: prices and costs in integer nano-dollars;
//! - `decode`: the streaming content decoders behind [`ContentEncoding`].

pub mod cost;
mod decode;
pub mod extract;

pub use decode::ContentEncoding;
pub use extract::{
    request_with_include_usage, BodyKind, Usage, UsageChunkStripper, UsageExtractor,
};
