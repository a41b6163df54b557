//! Character-level helpers shared by the validators: what is a word character, and what comes
//! just before or after a span, read from the UTF-8 text without decoding more than one char.

/// Word characters as `\w` sees them: letters, digits and `_`, in any script.
pub(crate) fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

pub(crate) fn char_before(text: &str, at: usize) -> Option<char> {
    text.get(..at)?.chars().next_back()
}

pub(crate) fn char_after(text: &str, at: usize) -> Option<char> {
    text.get(at..)?.chars().next()
}

/// The byte offset of the character after the one starting at `at`.
pub(crate) fn next_boundary(text: &str, at: usize) -> usize {
    match char_after(text, at) {
        Some(c) => at + c.len_utf8(),
        None => at + 1,
    }
}
