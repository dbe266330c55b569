//! Making text that came from someone else safe to print on a terminal.
//!
//! Names, subjects, texts, file names and error messages reach the CLI from the server, and
//! through it from any sender. Printed raw, `\x1b]0;pwned\x07` sets the window title,
//! `\x1b[2J` clears the screen, an OSC 8 sequence draws a fake hyperlink, U+009B (the C1
//! form of CSI) starts an escape sequence on terminals that honour C1 controls, and U+202E
//! reverses the text that follows (`txt.exe` shown as `exe.txt`). Every such character is
//! therefore printed as a visible escape; a literal backslash is doubled, so the printed
//! text reads back unambiguously.
//!
//! JSON output stays exact JSON: [`json_line`] writes the same characters as `\uXXXX`
//! escapes, which a JSON parser turns back into the original string.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How much layout a printed text may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One line (a name, a subject, an error): every control character is escaped,
    /// including line breaks and tabs, so a value cannot fake the lines around it.
    Line,
    /// A body of text (a message, a mail body): line breaks and tabs are kept, since they
    /// are the text's own layout and cannot drive the terminal; everything else is escaped
    /// as in [`Shape::Line`].
    Block,
}

/// Whether `c` must never reach a terminal raw: C0 controls, DEL and C1 controls (Unicode
/// category Cc), the bidirectional embedding, override, isolate and mark characters, and
/// the Unicode line and paragraph separators (which some terminals and viewers break
/// lines on).
pub(crate) fn hazardous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `s` with every hazardous character shown as an escape: `\x1b` for ASCII controls,
/// `\u{9b}` or `\u{202e}` for the others, and `\\` for a backslash. Borrows `s` when
/// nothing needs escaping.
pub(crate) fn visible(s: &str, shape: Shape) -> Cow<'_, str> {
    let keep = |c: char| shape == Shape::Block && matches!(c, '\n' | '\t');
    if !s.chars().any(|c| c == '\\' || (hazardous(c) && !keep(c))) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if !hazardous(c) || keep(c) {
            out.push(c);
        } else if c.is_ascii() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// One line of JSON for `value`, with every hazardous character inside its strings written
/// as a `\uXXXX` escape. serde_json already escapes C0 controls; DEL, C1 controls and the
/// bidirectional characters it writes raw, which a terminal showing the JSON would obey.
/// All of them lie in the Basic Multilingual Plane, so four hex digits hold each, and they
/// can only occur inside strings (JSON's own syntax is ASCII), where `\uXXXX` is valid and
/// parses back to the same character.
pub(crate) fn json_line(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if !text.chars().any(hazardous) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hazardous(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hostile strings from the red team's report, and their expected line rendering.
    const HOSTILE: &[(&str, &str)] = &[
        ("\x1b]0;pwned\x07\x1b[2J", "\\x1b]0;pwned\\x07\\x1b[2J"),
        (
            "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
            "\\x1b]8;;https://evil.example/\\x1b\\\\click\\x1b]8;;\\x1b\\\\",
        ),
        ("a\u{9b}31mred", "a\\u{9b}31mred"),
        ("invoice\u{202e}fdp.exe", "invoice\\u{202e}fdp.exe"),
        (
            "\u{2066}\u{2069}\u{200e}\u{200f}\u{061c}",
            "\\u{2066}\\u{2069}\\u{200e}\\u{200f}\\u{61c}",
        ),
        ("del\x7f", "del\\x7f"),
        ("two\nlines\r\tx", "two\\x0alines\\x0d\\x09x"),
        ("C:\\x1b is text", "C:\\\\x1b is text"),
        ("\u{2028}\u{2029}", "\\u{2028}\\u{2029}"),
    ];

    fn check(input: &str, shape: Shape, expected: &str) {
        let got = visible(input, shape);
        assert_eq!(got, expected, "for {input:?}");
        assert!(
            !got.chars()
                .any(|c| hazardous(c) && !matches!(c, '\n' | '\t')),
            "{got:?} still holds a raw control"
        );
    }

    #[test]
    fn hostile_text_is_escaped_on_one_line() {
        for (input, expected) in HOSTILE {
            check(input, Shape::Line, expected);
        }
    }

    #[test]
    fn a_block_keeps_its_line_breaks_and_tabs_only() {
        check("a\nb\tc", Shape::Block, "a\nb\tc");
        check("a\r\nb", Shape::Block, "a\\x0d\nb");
        check("x\x1b[2J\n\u{202e}", Shape::Block, "x\\x1b[2J\n\\u{202e}");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in ["", "hello", "Grüße, 日本語 🎉", "tab-free/and~ascii?"] {
            assert!(matches!(visible(s, Shape::Line), Cow::Borrowed(b) if b == s));
        }
    }

    #[test]
    fn escaping_is_unambiguous() {
        // Distinct inputs never print the same: the literal text `\x1b` differs from ESC.
        let pairs = [("\x1b", "\\x1b"), ("\\", "\\\\"), ("\u{9b}", "\\u{9b}")];
        for (a, b) in pairs {
            assert_ne!(visible(a, Shape::Line), visible(b, Shape::Line));
        }
    }

    #[test]
    fn json_stays_exact_and_carries_no_raw_control() -> Result<(), serde_json::Error> {
        for (input, _) in HOSTILE {
            let v = serde_json::json!({ "subject": input, "n": 1 });
            let line = json_line(&v);
            assert!(!line.chars().any(hazardous), "{line:?}");
            let back: serde_json::Value = serde_json::from_str(&line)?;
            assert_eq!(back, v, "{line}");
        }
        let line = json_line(&serde_json::json!("a\u{9b}b\u{202e}c\x7f"));
        assert_eq!(line, r#""a\u009bb\u202ec\u007f""#);
        Ok(())
    }
}
