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

/// The size of the blocks [`folded_blocks`] lower-cases into, on the stack.
pub(crate) const BLOCK: usize = 8192;

/// The longest match [`folded_blocks`] can report whole: twice this fits a block.
pub(crate) const MAX_FOLDED_MATCH: usize = 1024;

/// Hands `f` the text ASCII-lower-cased, one stack block at a time, so that case-insensitive
/// literals can be searched case-sensitively (which lets the automata skip ahead with SIMD
/// literal search) without allocating. Blocks overlap by `overlap` bytes, so every match up to
/// that long lies whole in some block. `f(block, base, from, until)` gets the block, the text
/// offset of its first byte, and the block range in which matches must start to be this
/// block's to report: each match is reported by exactly one block. Each block keeps one byte
/// before `from` and after the last reportable match, so that `\b` and `^` see their context.
pub(crate) fn folded_blocks(text: &str, overlap: usize, f: impl FnMut(&[u8], usize, usize, usize)) {
    debug_assert!(overlap <= MAX_FOLDED_MATCH);
    // Most texts are a chat message of a few hundred bytes: zeroing a whole block on the stack
    // for each cost more than folding it.
    if text.len() < SHORT {
        folded_blocks_of::<SHORT>(text, overlap, f)
    } else {
        folded_blocks_of::<BLOCK>(text, overlap, f)
    }
}

/// A text shorter than this folds into one stack buffer of this size.
const SHORT: usize = 1024;

fn folded_blocks_of<const SIZE: usize>(
    text: &str,
    overlap: usize,
    mut f: impl FnMut(&[u8], usize, usize, usize),
) {
    let bytes = text.as_bytes();
    let mut buf = [0u8; SIZE];
    let mut start: usize = 0;
    loop {
        let base = start.saturating_sub(1);
        let end = (base + SIZE).min(bytes.len());
        let block = &mut buf[..end - base];
        block.copy_from_slice(&bytes[base..end]);
        block.make_ascii_lowercase();
        let last = end == bytes.len();
        if last {
            f(block, base, start - base, end - base);
            return;
        }
        // Only texts of `SHORT` bytes or more take more than one block, and their blocks are
        // `BLOCK` long, so the stride is positive.
        let stride = SIZE - overlap - 2;
        f(block, base, start - base, start + stride - base);
        start += stride;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_blocks_cover_every_start_once_with_room_for_the_overlap() {
        for length in [0, 1, SHORT - 1, SHORT, SHORT + 1, BLOCK, 3 * BLOCK + 5] {
            for overlap in [100, MAX_FOLDED_MATCH] {
                let text: String = "Ab".repeat(length).chars().take(length).collect();
                let mut next = 0;
                folded_blocks(&text, overlap, |block, base, from, until| {
                    assert_eq!(base + from, next, "no gap and no double cover");
                    assert!(until == block.len() || until + overlap < block.len());
                    assert!(block.iter().all(|b| !b.is_ascii_uppercase()));
                    assert_eq!(
                        block,
                        text[base..base + block.len()]
                            .to_ascii_lowercase()
                            .as_bytes()
                    );
                    next = base + until;
                });
                assert_eq!(next, text.len(), "length {length}, overlap {overlap}");
            }
        }
    }
}
