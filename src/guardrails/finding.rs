//! What a scan reports: which guardrail fired, by which rule, where. A finding never holds the
//! matched text, so that logging, auditing or counting one cannot leak what it found.

use super::{Action, InjectionCategory, PiiKind, SecretKind};
use std::fmt;
use std::ops::Range;

/// The rule inside a guardrail that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The keyword at this index of the guardrail's list.
    Keyword(u32),
    /// The pattern at this index of the guardrail's list.
    Regex(u32),
    Pii(PiiKind),
    Secret(SecretKind),
    Injection(InjectionCategory),
}

impl Rule {
    /// A static name for metrics and audit lines: the PII or secret kind, the injection
    /// category, or `keyword`/`regex` (whose index [`Rule::index`] gives).
    pub fn name(self) -> &'static str {
        match self {
            Rule::Keyword(_) => "keyword",
            Rule::Regex(_) => "regex",
            Rule::Pii(kind) => kind.as_str(),
            Rule::Secret(kind) => kind.as_str(),
            Rule::Injection(category) => category.as_str(),
        }
    }

    /// The keyword's or pattern's position in the guardrail's list.
    pub fn index(self) -> Option<u32> {
        match self {
            Rule::Keyword(i) | Rule::Regex(i) => Some(i),
            _ => None,
        }
    }
}

/// `email`, `aws_access_key`, `instruction_override`, `keyword[2]`, `regex[0]`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index() {
            Some(i) => write!(f, "{}[{i}]", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// One match: the guardrail (its index in the list the scanner was compiled from), the rule, the
/// byte span in the scanned text (in a stream: in the whole stream so far), and the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub guardrail: usize,
    pub rule: Rule,
    pub start: usize,
    pub end: usize,
    pub action: Action,
}

impl Finding {
    pub fn span(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// The findings of one scan. Reused across scans by the caller: clearing keeps the buffer, and
/// an empty one has not allocated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    pub(crate) items: Vec<Finding>,
}

impl Findings {
    pub fn new() -> Findings {
        Findings::default()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Finding> {
        self.items.iter()
    }

    pub fn as_slice(&self) -> &[Finding] {
        &self.items
    }

    /// The first finding whose guardrail blocks, if any: the one a refusal names.
    pub fn first_block(&self) -> Option<&Finding> {
        self.items.iter().find(|f| f.action == Action::Block)
    }

    /// Whether any finding asks for redaction.
    pub fn wants_redaction(&self) -> bool {
        self.items.iter().any(|f| f.action == Action::Redact)
    }

    pub(crate) fn push(&mut self, finding: Finding) {
        self.items.push(finding);
    }
}

impl<'a> IntoIterator for &'a Findings {
    type Item = &'a Finding;
    type IntoIter = std::slice::Iter<'a, Finding>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}
