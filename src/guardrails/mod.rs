//! The guardrail detection engine: what a guardrail looks for, compiled once per effective
//! guardrail list into a [`Scanner`] that the request path runs over text without locks and,
//! when nothing matches, without allocating.
//!
//! The policy layer owns the YAML shape, which guardrails apply to which key, and what an action
//! does to a request; this module owns detection and redaction only:
//!
//! - [`GuardrailSpec`]: one named guardrail: a [`Detector`], an [`Action`] and the sides
//!   ([`ApplyTo`]) it runs on;
//! - [`Scanner::compile`]: validates and compiles a list of specs; a [`GuardrailError`] names the
//!   guardrail and the pattern at fault;
//! - [`Scanner::scan`]: fills [`Findings`] for one text. Each guardrail runs all of its patterns
//!   at once, in one automaton that skips ahead by literal search (keywords, regexes, secrets;
//!   injection phrasings start with words too common to skip to, so a block of text runs their
//!   automaton only if it holds one of the rarer words every phrasing contains); PII, whose
//!   numbers have no literal to skip to, runs an email pass, a
//!   cheap scan for digit clusters and one for colon runs, and its automaton only inside those.
//!   Candidates are then validated (Luhn, mod-97, SSN ranges, the `kg_` checksum, JWT headers).
//!   A [`Finding`] carries the guardrail's index, a [`Rule`] and the byte span — never the
//!   matched text;
//! - [`Scanner::redact`]: the text with every `redact` finding replaced by a label;
//! - [`StreamScanner`]: the same over a response arriving in deltas, with a bounded look-behind.
//!
//! Guardrails are deliberately not merged into one automaton: with leftmost-first matching, one
//! guardrail's match would hide another's overlapping one (a `log` regex over digits could hide
//! a card number that a `redact` guardrail must remove). Within one guardrail, matches do not
//! overlap.
//!
//! Detector semantics (what matches and, as important, what does not) are documented on each
//! detector's module: [`keywords`], [`patterns`], [`pii`], [`secrets`], [`injection`].
//!
//! [`moderation`] is the one detector outside the scanner: an HTTP call to a moderation service,
//! which the policy layer makes for the guardrails that name one.

mod finding;
pub mod injection;
pub mod keywords;
pub mod moderation;
pub mod patterns;
pub mod pii;
mod redact;
mod scanner;
pub mod secrets;
mod stream;
mod table;
mod text;

pub use finding::{Finding, Findings, Rule};
pub use injection::InjectionCategory;
pub use scanner::Scanner;
pub use stream::{StreamScanner, LOOK_BEHIND};

use serde::Deserialize;
use std::sync::Arc;

/// One named guardrail, as the policy layer resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailSpec {
    pub name: Arc<str>,
    pub detector: Detector,
    pub action: Action,
    pub apply_to: ApplyTo,
}

/// What a guardrail looks for. Each guardrail has exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detector {
    /// Literal words or phrases, matched case-insensitively; `whole_word` requires a word
    /// boundary on each side of a keyword that begins or ends with a word character.
    Keywords {
        words: Vec<String>,
        whole_word: bool,
    },
    /// Patterns in the `regex` crate's syntax, all run in one pass.
    Regex(Vec<String>),
    Pii(Vec<PiiKind>),
    Secrets(Vec<SecretKind>),
    PromptInjection {
        threshold: Threshold,
    },
}

/// What the policy layer does with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Block,
    Redact,
    Log,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
            Action::Log => "log",
        }
    }
}

/// The text a scan is about: what the client sent, or what the provider answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Request,
    Response,
}

/// The sides a guardrail runs on. Requests only unless configured otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplyTo {
    pub request: bool,
    pub response: bool,
}

impl Default for ApplyTo {
    fn default() -> Self {
        ApplyTo::REQUEST
    }
}

impl ApplyTo {
    pub const REQUEST: ApplyTo = ApplyTo {
        request: true,
        response: false,
    };
    pub const BOTH: ApplyTo = ApplyTo {
        request: true,
        response: true,
    };

    /// The sides listed, as `apply_to: [request, response]` lists them.
    pub fn from_sides(sides: &[Side]) -> ApplyTo {
        ApplyTo {
            request: sides.contains(&Side::Request),
            response: sides.contains(&Side::Response),
        }
    }

    pub fn covers(self, side: Side) -> bool {
        match side {
            Side::Request => self.request,
            Side::Response => self.response,
        }
    }
}

/// Personal data the `pii` detector recognises ([`pii`] documents each form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    CreditCard,
    Iban,
    UsSsn,
    Ipv4,
    Ipv6,
}

impl PiiKind {
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::CreditCard,
        PiiKind::Iban,
        PiiKind::UsSsn,
        PiiKind::Ipv4,
        PiiKind::Ipv6,
    ];

    /// The name used in configuration, metrics and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CreditCard => "credit_card",
            PiiKind::Iban => "iban",
            PiiKind::UsSsn => "us_ssn",
            PiiKind::Ipv4 => "ipv4",
            PiiKind::Ipv6 => "ipv6",
        }
    }
}

/// Credentials the `secrets` detector recognises ([`secrets`] documents each form).
/// `secrets: all` in configuration means [`SecretKind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    AwsAccessKey,
    Github,
    Gitlab,
    Slack,
    PemPrivateKey,
    Jwt,
    Openai,
    Anthropic,
    Keygate,
}

impl SecretKind {
    pub const ALL: [SecretKind; 9] = [
        SecretKind::AwsAccessKey,
        SecretKind::Github,
        SecretKind::Gitlab,
        SecretKind::Slack,
        SecretKind::PemPrivateKey,
        SecretKind::Jwt,
        SecretKind::Openai,
        SecretKind::Anthropic,
        SecretKind::Keygate,
    ];

    /// The name used in configuration, metrics and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::AwsAccessKey => "aws_access_key",
            SecretKind::Github => "github",
            SecretKind::Gitlab => "gitlab",
            SecretKind::Slack => "slack",
            SecretKind::PemPrivateKey => "pem_private_key",
            SecretKind::Jwt => "jwt",
            SecretKind::Openai => "openai",
            SecretKind::Anthropic => "anthropic",
            SecretKind::Keygate => "keygate",
        }
    }
}

/// How much evidence the prompt-injection detector needs before it fires: `low` fires on a
/// single weak signal, `high` only on an unambiguous attack ([`injection`] lists the weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    Low,
    #[default]
    Medium,
    High,
}

/// Why a guardrail list cannot be compiled. Each names the guardrail, and the pattern where one
/// is at fault, so that `keygate check` can point at the line to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardrailError {
    #[error("guardrail `{guardrail}`: regex #{index} `{pattern}` is not supported: {reason}")]
    Unsupported {
        guardrail: Arc<str>,
        index: usize,
        pattern: String,
        reason: &'static str,
    },
    #[error("guardrail `{guardrail}`: regex #{index} `{pattern}` is invalid: {reason}")]
    InvalidRegex {
        guardrail: Arc<str>,
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("guardrail `{guardrail}`: regex #{index} `{pattern}` matches the empty string, so it would fire on every text")]
    MatchesEmpty {
        guardrail: Arc<str>,
        index: usize,
        pattern: String,
    },
    #[error("guardrail `{guardrail}`: its patterns are too large to compile ({reason}); split or simplify them")]
    TooLarge { guardrail: Arc<str>, reason: String },
    #[error("guardrail `{guardrail}`: a keyword is longer than {limit} bytes")]
    KeywordTooLong { guardrail: Arc<str>, limit: usize },
    #[error("guardrail `{guardrail}`: keyword #{index} is empty")]
    EmptyKeyword { guardrail: Arc<str>, index: usize },
    #[error("guardrail `{guardrail}`: its {what} list is empty")]
    EmptyList {
        guardrail: Arc<str>,
        what: &'static str,
    },
}
