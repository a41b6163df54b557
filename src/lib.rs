//! keygate: an LLM gateway on Pingora. Applications call it as they would call OpenAI, with a
//! virtual key; keygate authenticates and authorizes the key against a policy kept in files,
//! swaps in the real provider credential and forwards to the provider serving the model.
//!
//! Modules, in the order a request meets them:
//! - [`domain`]: the vocabulary every layer shares — operations, key status, provider formats;
//! - [`config`]: reading and validating the policy files (`keygate check`);
//! - [`policy`]: the compiled, immutable snapshot the data plane reads;
//! - [`keys`]: the virtual key format and key files;
//! - [`limits`]: rate and concurrency limits, budgets, IP allowlists, the brute-force guard;
//! - [`guardrails`]: detecting and redacting PII, secrets, prompt injection, keywords and patterns;
//! - [`proxy`]: the Pingora proxy phases — authenticate, authorize, route, forward;
//! - [`upstream`]: providers, endpoints and peer selection;
//! - [`usage`]: token usage read from provider responses as they stream by, and its price;
//! - [`translate`]: chat completions requests and responses to and from Anthropic's Messages API;
//! - [`accounting`]: booking each finished request — audit line, persisted usage — off the request path;
//! - [`state`]: persisted usage and spend (SQLite);
//! - [`mock_provider`]: the embedded OpenAI-compatible upstream for trying keygate locally;
//! - [`reload`]: following the policy files live and swapping snapshots atomically;
//! - [`admin`]: the admin listener — metrics, health, key management API;
//! - [`metrics`]: the Prometheus registry;
//! - [`listener`]: the data plane's client connections: their number, head and idle deadlines;
//! - [`server`]: assembling the Pingora server, for the binary and for tests;
//! - [`shutdown`]: readiness, draining on SIGTERM, graceful exit.

pub mod accounting;
pub mod admin;
pub mod config;
pub mod domain;
pub mod guardrails;
pub(crate) mod json;
pub mod keys;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod mock_provider;
pub mod policy;
pub mod priority;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod translate;
pub mod upstream;
pub mod usage;
