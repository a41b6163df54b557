//! Azure OpenAI addressing: a model is served by a deployment, named in the path of the
//! deployments API (`/openai/deployments/{deployment}/chat/completions?api-version=…`) or, on the
//! v1 API (`/openai/v1/chat/completions`), in the body's `model`. The paths of a model are built
//! once, when the policy is compiled, so forwarding a request swaps its path without formatting.

use crate::domain::Operation;
use http::uri::PathAndQuery;

/// The `api-version` sent when a model names none: the newest generally available version of
/// the deployments API.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The `api_version` that selects the v1 API, which takes none.
pub const V1: &str = "v1";

/// Where one Azure OpenAI model's requests go.
#[derive(Debug)]
pub struct AzureTarget {
    /// Also the body's `model` upstream, which the v1 API reads (the deployments API ignores it).
    pub deployment: String,
    /// `None` for the v1 API.
    pub api_version: Option<String>,
    /// By operation: chat, completions, embeddings, responses.
    paths: [PathAndQuery; 4],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AzureError {
    #[error("`{0}` is not a deployment name: use letters, digits, `-`, `_` and `.`")]
    Deployment(String),
    #[error("`{0}` is not an api-version: use e.g. `2024-10-21`, `2025-04-01-preview` or `v1`")]
    ApiVersion(String),
}

impl AzureTarget {
    /// `api_version` as the policy writes it: a version of the deployments API, `v1`, or unset
    /// for [`DEFAULT_API_VERSION`].
    pub fn new(deployment: &str, api_version: Option<&str>) -> Result<AzureTarget, AzureError> {
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if deployment.is_empty() || !deployment.chars().all(name_char) || deployment == ".." {
            return Err(AzureError::Deployment(deployment.to_owned()));
        }
        let version = api_version.unwrap_or(DEFAULT_API_VERSION);
        let version_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.');
        if version.is_empty() || !version.chars().all(version_char) {
            return Err(AzureError::ApiVersion(version.to_owned()));
        }
        let api_version = (version != V1).then(|| version.to_owned());
        let path = |op: Operation| {
            let text = match (&api_version, op) {
                (None, op) => format!("/openai/v1/{}", suffix(op)),
                // Azure's responses API is not per deployment: the body's model names it.
                (Some(v), Operation::Responses) => format!("/openai/responses?api-version={v}"),
                (Some(v), op) => format!(
                    "/openai/deployments/{deployment}/{}?api-version={v}",
                    suffix(op)
                ),
            };
            // Built from the characters checked above only.
            PathAndQuery::try_from(text).expect("a valid path")
        };
        Ok(AzureTarget {
            deployment: deployment.to_owned(),
            paths: [
                path(Operation::Chat),
                path(Operation::Completions),
                path(Operation::Embeddings),
                path(Operation::Responses),
            ],
            api_version,
        })
    }

    /// The path and query of `op` upstream; `None` for an operation Azure OpenAI does not serve.
    pub fn path(&self, op: Operation) -> Option<&PathAndQuery> {
        let i = match op {
            Operation::Chat => 0,
            Operation::Completions => 1,
            Operation::Embeddings => 2,
            Operation::Responses => 3,
            Operation::Messages | Operation::CountTokens => return None,
        };
        Some(&self.paths[i])
    }
}

fn suffix(op: Operation) -> &'static str {
    match op {
        Operation::Chat => "chat/completions",
        Operation::Completions => "completions",
        Operation::Embeddings => "embeddings",
        _ => "responses",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_api_paths() {
        let t = AzureTarget::new("gpt4o-prod", None).unwrap();
        assert_eq!(
            t.path(Operation::Chat).unwrap().as_str(),
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            t.path(Operation::Embeddings).unwrap().as_str(),
            "/openai/deployments/gpt4o-prod/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            t.path(Operation::Responses).unwrap().as_str(),
            "/openai/responses?api-version=2024-10-21"
        );
        assert!(t.path(Operation::Messages).is_none());
        let t = AzureTarget::new("d", Some("2025-04-01-preview")).unwrap();
        assert_eq!(
            t.path(Operation::Completions).unwrap().as_str(),
            "/openai/deployments/d/completions?api-version=2025-04-01-preview"
        );
    }

    #[test]
    fn v1_api_paths() {
        let t = AzureTarget::new("gpt-4.1", Some("v1")).unwrap();
        assert_eq!(t.api_version, None);
        assert_eq!(
            t.path(Operation::Chat).unwrap().as_str(),
            "/openai/v1/chat/completions"
        );
        assert_eq!(
            t.path(Operation::Responses).unwrap().as_str(),
            "/openai/v1/responses"
        );
    }

    #[test]
    fn names_that_would_break_the_path_are_refused() {
        for bad in ["", "a/b", "a?b", "a b", "..", "é"] {
            assert!(AzureTarget::new(bad, None).is_err(), "{bad}");
        }
        for bad in ["", "2024-10-21&x=1", "v 1"] {
            assert!(AzureTarget::new("d", Some(bad)).is_err(), "{bad}");
        }
    }
}
