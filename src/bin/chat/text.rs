//! Received text made safe to print, shared by every subcommand so that all five protocols
//! show the same text the same way.
//!
//! What anyone on the network sends ends up on the user's terminal. Replaced, with U+FFFD:
//! - control characters, line breaks included, so that nobody can send escape sequences to
//!   the terminal or forge a line of output of their own. TAB is the one kept: it only moves
//!   the cursor to the next tab stop on the same line (the MATOU client used to replace it
//!   while the others kept it; they all keep it now);
//! - bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C), which
//!   reorder what follows them on screen, so that `alice: exe.txt` can be made to display as
//!   something else, or one user's name to look like another's;
//! - zero-width and invisible characters (U+200B-U+200D, U+2060, U+FEFF), which make two
//!   different names look identical;
//! - the line and paragraph separators U+2028 and U+2029, which some terminals and most
//!   viewers take for a line break.
//!
//! A client decides where the line breaks of its output are (a ROOM chunk may hold several
//! lines); it splits the text there first and renders each piece with [`safe_line`].

use std::borrow::Cow;

/// Whether `c` is printed as U+FFFD: see the module's documentation.
pub(crate) fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{061C}'
                | '\u{200B}'..='\u{200D}'
                | '\u{2060}'
                | '\u{FEFF}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `text` with every character of [`is_unsafe`] replaced by U+FFFD.
pub(crate) fn safe_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if is_unsafe(c) {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// Received text for one line of output: replaced as [`safe_line`] says when `sanitize`
/// (standard output is a terminal), as is otherwise, so that a script reading a pipe gets the
/// text that was sent.
pub(crate) fn render(text: &str, sanitize: bool) -> String {
    if sanitize {
        safe_line(text)
    } else {
        text.to_owned()
    }
}

/// [`render`] for bytes that should be UTF-8: anything that is not becomes U+FFFD.
pub(crate) fn render_bytes(bytes: &[u8], sanitize: bool) -> String {
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(text) => render(text, sanitize),
        Cow::Owned(text) if !sanitize => text,
        Cow::Owned(text) => safe_line(&text),
    }
}

/// At most `chars_max` characters of `text`, with `…` when cut: a reminder of a message in a
/// status line, not the message.
pub(crate) fn preview(text: &str, chars_max: usize) -> String {
    match text.char_indices().nth(chars_max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_bidi_and_invisible_characters_are_replaced_tabs_kept() {
        assert_eq!(safe_line("a\tb"), "a\tb");
        assert_eq!(safe_line("a\x1b[2Jb"), "a\u{fffd}[2Jb");
        assert_eq!(safe_line("a\nb\rc\u{85}d"), "a\u{fffd}b\u{fffd}c\u{fffd}d");
        // The classic: a right-to-left override makes `txt.exe` show as `exe.txt`.
        assert_eq!(safe_line("\u{202e}txt.exe"), "\u{fffd}txt.exe");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{200b}', '\u{200c}',
            '\u{200d}', '\u{2060}', '\u{feff}', '\u{2028}', '\u{2029}',
        ] {
            assert!(is_unsafe(c), "U+{:04X}", c as u32);
            assert_eq!(safe_line(&format!("al{c}ice")), "al\u{fffd}ice");
        }
        // Ordinary text of any script is kept, right-to-left scripts included.
        for fine in ["café ☕", "部屋一", "مرحبا", "שלום", "Łukasz", "ａｌｉｃｅ"]
        {
            assert_eq!(safe_line(fine), fine);
        }
    }

    #[test]
    fn raw_output_is_left_alone() {
        assert_eq!(render("a\u{202e}b\x07", false), "a\u{202e}b\x07");
        assert_eq!(render("a\u{202e}b\x07", true), "a\u{fffd}b\u{fffd}");
        assert_eq!(render_bytes(b"caf\xe9\x1b", false), "caf\u{fffd}\x1b");
        assert_eq!(render_bytes(b"caf\xe9\x1b", true), "caf\u{fffd}\u{fffd}");
        assert_eq!(render_bytes("\u{200b}ok".as_bytes(), true), "\u{fffd}ok");
    }

    #[test]
    fn previews_cut_on_characters() {
        assert_eq!(preview("hello", 5), "hello");
        assert_eq!(preview("hello!", 5), "hello…");
        assert_eq!(preview("部屋一部屋", 2), "部屋…");
        assert_eq!(preview("", 2), "");
    }
}
