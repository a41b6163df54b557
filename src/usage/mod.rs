//! Token accounting input: the usage a provider reports in its own response bodies.
//!
//! This module owns reading `usage` out of response bodies as they stream through the proxy
//! (JSON and SSE, identity or gzip/deflate/br encoded) without buffering or altering what the
//! client receives, the running count of streamed text characters used to estimate completion
//! tokens of cut streams, and the response rewrite that hides the usage keygate asked for on
//! streams whose client did not (the request side, adding `stream_options.include_usage`, is
//! `proxy::body`). Pricing, budgets and metrics built on these numbers live elsewhere.
//!
//! - `extract` reads the usage of one response as it streams by ([`UsageExtractor`]);
//! - `object` is what it looks for: a provider's `usage` object, parsed into [`Usage`];
//! - `scan` finds that object, and counts generated text, in one JSON document fed in pieces;
//! - `sse` splits an event stream into such documents, one per event;
//! - `decode` holds the streaming content decoders behind [`ContentEncoding`];
//! - `strip` hides the usage keygate asked for from a client that did not
//!   ([`UsageChunkStripper`]);
//! - [`cost`] prices usage in integer nano-dollars.

pub mod cost;
mod decode;
mod extract;
#[cfg(test)]
pub(crate) mod fixtures;
mod object;
mod scan;
mod sse;
mod strip;

pub use decode::ContentEncoding;
pub use extract::{BodyKind, UsageExtractor};
pub use object::{Usage, MAX_TOKENS};
pub use strip::UsageChunkStripper;
