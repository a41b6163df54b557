//! The guardrails one key runs, compiled: its in-process detectors in one [`Scanner`], and its
//! moderation hooks. One value is built per distinct effective guardrail list and shared, as an
//! `Arc`, by every workload and key with that list, so a policy of many keys compiles a handful
//! of scanners. A key with no guardrails has none at all, and its requests do no guardrail work.
//! [`Fired`] is what a request reports of them: which fired, by which rule, with what action.

use crate::guardrails::moderation::Moderation;
use crate::guardrails::{Action, Rule, Scanner};
use std::borrow::Cow;
use std::sync::Arc;

/// A key's effective guardrails.
#[derive(Debug)]
pub struct Guardrails {
    /// The list's identity: indices into the policy's guardrail definitions, ascending.
    pub ids: Box<[u16]>,
    /// The detectors that run in process; [`Scanner::name`] names the guardrail of a finding.
    pub scanner: Scanner,
    /// Guardrails that ask an outside service, on requests.
    pub moderation: Box<[ModerationRule]>,
    /// Whether any scanner guardrail applies to requests, and to responses.
    pub scans_requests: bool,
    pub scans_responses: bool,
}

/// A guardrail whose detector is a moderation service.
#[derive(Debug)]
pub struct ModerationRule {
    pub name: Arc<str>,
    pub hook: Moderation,
    /// `block` or `log`: a verdict has no span to redact.
    pub action: Action,
}

impl Guardrails {
    /// Whether requests have anything to check.
    pub fn on_requests(&self) -> bool {
        self.scans_requests || !self.moderation.is_empty()
    }

    /// The names of the guardrails in the list: the in-process ones, then the moderation hooks.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        (0..self.scanner.len())
            .map(|i| &**self.scanner.name(i))
            .chain(self.moderation.iter().map(|m| &*m.name))
    }
}

/// One guardrail that fired on a request, and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub guardrail: Arc<str>,
    pub rule: FiredRule,
    pub action: Action,
}

/// The rule that fired: a detector's, or a moderation service's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FiredRule {
    Scan(Rule),
    /// The service flagged the text.
    Moderation,
    /// The service gave no verdict; the action is what `on_error` chose.
    ModerationUnavailable,
}

impl FiredRule {
    /// `email`, `keyword[2]`, `moderation`: for messages and audit lines.
    pub fn name(self) -> Cow<'static, str> {
        match self {
            FiredRule::Scan(rule) if rule.index().is_some() => Cow::Owned(rule.to_string()),
            FiredRule::Scan(rule) => Cow::Borrowed(rule.name()),
            FiredRule::Moderation => Cow::Borrowed("moderation"),
            FiredRule::ModerationUnavailable => Cow::Borrowed("moderation_unavailable"),
        }
    }
}
