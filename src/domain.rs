//! The vocabulary every layer may import: what a request does, whether a key serves, which wire
//! format a provider speaks. It depends on nothing in the crate, so the YAML layer, the compiled
//! policy and the request path can all name these without depending on one another. The serde
//! derives are how the policy files spell them.

use serde::{Deserialize, Serialize};

/// What a request does, from its path. `/v1/models` is always allowed and is not an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::Chat,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Responses,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderFormat {
    Openai,
}
