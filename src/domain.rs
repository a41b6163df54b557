//! The vocabulary every layer may import: what a request does, whether a key serves, which wire
//! format a provider speaks. It depends on nothing in the crate, so the YAML layer, the compiled
//! policy and the request path can all name these without depending on one another. The serde
//! derives are how the policy files spell them.

use serde::{Deserialize, Serialize};

/// What a request does, from its path. `/v1/models` is always allowed and is not an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Chat,
    Completions,
    Embeddings,
    Responses,
    /// Anthropic's Messages API, `POST /v1/messages`.
    Messages,
    /// Anthropic's `POST /v1/messages/count_tokens`: free upstream, so it books no tokens.
    CountTokens,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::Chat,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Responses,
        Operation::Messages,
        Operation::CountTokens,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
            Operation::Messages => "messages",
            Operation::CountTokens => "count_tokens",
        }
    }

    /// The wire format a provider must speak to serve this operation as the client sent it.
    pub fn native_format(self) -> WireFormat {
        match self {
            Operation::Messages | Operation::CountTokens => WireFormat::Anthropic,
            _ => WireFormat::Openai,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    #[default]
    Active,
    Paused,
}

/// What a provider speaks and how it is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderFormat {
    /// OpenAI's API and every compatible server: the client's path, `Authorization: Bearer`.
    Openai,
    /// Anthropic's Messages API: `x-api-key` and `anthropic-version`.
    Anthropic,
    /// Azure OpenAI: OpenAI's bodies, a deployment in the path, the `api-key` header.
    Azure,
}

impl ProviderFormat {
    /// The request and response bodies this provider reads and writes.
    pub fn wire(self) -> WireFormat {
        match self {
            ProviderFormat::Openai | ProviderFormat::Azure => WireFormat::Openai,
            ProviderFormat::Anthropic => WireFormat::Anthropic,
        }
    }
}

/// The body dialect of an API: Azure OpenAI's bodies are OpenAI's, so two formats share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    Openai,
    Anthropic,
}
