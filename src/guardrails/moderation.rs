//! The moderation hook: a guardrail whose detector is an outside service, asked over HTTP
//! whether a request's text may pass. Two answers are understood: OpenAI's `/v1/moderations`
//! (`{"input": text}` → `results[].flagged`; OpenAI's own, or a Llama Guard behind an
//! OpenAI-compatible server) and a generic webhook (`{"input": text}` → `{"allow": bool}`).
//!
//! The call is async on the request path and bounded by the guardrail's `timeout`; a service that
//! fails, times out or answers something else is an error, which the guardrail's `on_error`
//! turns into allowing or blocking the request. One client per policy serves every guardrail of
//! it, so connections to the service are pooled; it is built when the policy loads, off the
//! request threads (loading the system's trust roots reads files). The text sent is never logged.

use http::HeaderValue;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Which answer the service gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI's moderations API: flagged when any result is.
    OpenAi,
    /// `{"allow": bool}`.
    Webhook,
}

/// What a request gets when the service cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Allow,
    Block,
}

/// One guardrail's moderation service.
#[derive(Debug, Clone)]
pub struct Moderation {
    pub url: reqwest::Url,
    pub format: Format,
    /// `Bearer …`, when the service needs a credential.
    pub authorization: Option<HeaderValue>,
    pub timeout: Duration,
    pub on_error: OnError,
    pub client: Client,
}

/// The policy's one HTTP client for moderation services.
#[derive(Debug, Clone)]
pub struct Client(Arc<reqwest::Client>);

impl Client {
    pub fn new() -> Result<Client, ModerationError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ModerationError::Client(e.without_url().to_string()))?;
        Ok(Client(Arc::new(client)))
    }
}

/// Why the service gave no verdict. Never carries the text asked about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModerationError {
    #[error("the moderation client could not be built: {0}")]
    Client(String),
    #[error("the moderation service did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the moderation service could not be reached: {0}")]
    Unreachable(String),
    #[error("the moderation service answered status {0}")]
    Status(u16),
    #[error("the moderation service's answer is not in the `{0}` format")]
    Answer(&'static str),
}

/// The service's verdict on one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Flagged,
}

#[derive(Deserialize)]
struct OpenAiAnswer {
    results: Vec<OpenAiResult>,
}

#[derive(Deserialize)]
struct OpenAiResult {
    flagged: bool,
}

#[derive(Deserialize)]
struct WebhookAnswer {
    allow: bool,
}

impl Moderation {
    /// Asks the service about `text`.
    pub async fn check(&self, text: &str) -> Result<Verdict, ModerationError> {
        #[derive(serde::Serialize)]
        struct Ask<'a> {
            input: &'a str,
        }
        let mut request = self
            .client
            .0
            .post(self.url.clone())
            .timeout(self.timeout)
            .json(&Ask { input: text });
        if let Some(auth) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, auth.clone());
        }
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                ModerationError::Timeout(self.timeout)
            } else {
                ModerationError::Unreachable(e.without_url().to_string())
            }
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ModerationError::Status(status.as_u16()));
        }
        let body = response.bytes().await.map_err(failed)?;
        self.verdict(&body)
    }

    fn verdict(&self, body: &[u8]) -> Result<Verdict, ModerationError> {
        let flagged = match self.format {
            Format::OpenAi => {
                let answer: OpenAiAnswer =
                    serde_json::from_slice(body).map_err(|_| ModerationError::Answer("openai"))?;
                if answer.results.is_empty() {
                    return Err(ModerationError::Answer("openai"));
                }
                answer.results.iter().any(|r| r.flagged)
            }
            Format::Webhook => {
                let answer: WebhookAnswer =
                    serde_json::from_slice(body).map_err(|_| ModerationError::Answer("webhook"))?;
                !answer.allow
            }
        };
        Ok(if flagged {
            Verdict::Flagged
        } else {
            Verdict::Allowed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(format: Format) -> Moderation {
        Moderation {
            url: "http://127.0.0.1:9/v1/moderations".parse().unwrap(),
            format,
            authorization: None,
            timeout: Duration::from_millis(200),
            on_error: OnError::Block,
            client: Client::new().unwrap(),
        }
    }

    #[test]
    fn answers_are_read_in_their_format() {
        let openai = hook(Format::OpenAi);
        let webhook = hook(Format::Webhook);
        let flagged =
            br#"{"id":"modr-1","model":"omni","results":[{"flagged":true,"categories":{}}]}"#;
        assert_eq!(openai.verdict(flagged), Ok(Verdict::Flagged));
        let clean = br#"{"results":[{"flagged":false},{"flagged":false}]}"#;
        assert_eq!(openai.verdict(clean), Ok(Verdict::Allowed));
        let any = br#"{"results":[{"flagged":false},{"flagged":true}]}"#;
        assert_eq!(openai.verdict(any), Ok(Verdict::Flagged));
        assert_eq!(
            openai.verdict(br#"{"results":[]}"#),
            Err(ModerationError::Answer("openai"))
        );
        assert_eq!(
            openai.verdict(br#"{"allow":true}"#),
            Err(ModerationError::Answer("openai"))
        );
        assert_eq!(webhook.verdict(br#"{"allow":true}"#), Ok(Verdict::Allowed));
        assert_eq!(
            webhook.verdict(br#"{"allow":false,"reason":"x"}"#),
            Ok(Verdict::Flagged)
        );
        assert_eq!(
            webhook.verdict(br#"{"allow":"no"}"#),
            Err(ModerationError::Answer("webhook"))
        );
        assert_eq!(
            webhook.verdict(b"<html>"),
            Err(ModerationError::Answer("webhook"))
        );
    }
}
