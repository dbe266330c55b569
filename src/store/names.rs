//! Checking user names and sanitizing file names.
//!
//! User names are validated (rejected if wrong) because they are identities: silently
//! rewriting one could merge two accounts. File names are sanitized (rewritten) because
//! they are only labels: the server never builds a path from them, but a client may save
//! a file under its name, so the name must be harmless on any file system.

use super::StoreError;

/// The longest user name, in characters (all ASCII, so also bytes).
pub const MAX_USER_NAME_LEN: usize = 32;

/// The longest sanitized file name, in bytes: the `NAME_MAX` of Linux and most other
/// file systems, so a client can always save a file under the name it was given.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// What [`sanitize_file_name`] returns when nothing usable is left.
const UNNAMED: &str = "unnamed";

/// Checks a user name: 1 to 32 characters of ASCII `[a-z0-9_.-]`, starting with a letter
/// or digit.
///
/// Upper case is refused rather than folded so that two spellings can never name the same
/// account, and the leading character rule keeps names like `.` and `-rf` out of logs and
/// command lines.
pub fn validate_user_name(name: &str) -> Result<(), StoreError> {
    let Some(first) = name.bytes().next() else {
        return Err(StoreError::InvalidName("user name is empty".into()));
    };
    if name.len() > MAX_USER_NAME_LEN {
        return Err(StoreError::InvalidName(format!(
            "user name is longer than {MAX_USER_NAME_LEN} characters"
        )));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(StoreError::InvalidName(
            "user name must start with a lower-case letter or a digit".into(),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-'))
    {
        return Err(StoreError::InvalidName(format!(
            "user name contains {bad:?}; only a-z, 0-9, '_', '.' and '-' are allowed"
        )));
    }
    Ok(())
}

/// Returns a safe display and save name for a client-provided file name.
///
/// Keeps only the last non-empty path component (splitting on both `/` and `\`), drops
/// control characters and bidirectional-override characters, replaces the characters
/// Windows reserves (`<>:"|?*`) with `_`, strips leading dots and spaces and trailing
/// dots and spaces, prefixes `_` to Windows device names such as `CON` or `lpt1.txt`, and
/// cuts the result to at most [`MAX_FILE_NAME_BYTES`] bytes on a character boundary. If
/// nothing is left, returns `"unnamed"`.
///
/// ```
/// use rampart::store::sanitize_file_name;
/// assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
/// assert_eq!(sanitize_file_name(".."), "unnamed");
/// ```
pub fn sanitize_file_name(name: &str) -> String {
    // A trailing separator ("dir/") leaves an empty last component; the last non-empty one
    // is what the sender meant.
    let component = name
        .rsplit(['/', '\\'])
        .find(|part| !part.is_empty())
        .unwrap_or("");
    let cleaned: String = component
        .chars()
        .filter(|&c| !c.is_control() && !is_bidi_control(c))
        .map(|c| {
            if matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = trim_dots_and_spaces(&cleaned);
    let mut out = if is_windows_device_name(trimmed) {
        format!("_{trimmed}")
    } else {
        trimmed.to_owned()
    };
    if out.len() > MAX_FILE_NAME_BYTES {
        let mut cut = MAX_FILE_NAME_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        // Cutting can expose a trailing dot or space again, which Windows silently drops.
        let len = out.trim_end_matches(['.', ' ']).len();
        out.truncate(len);
    }
    if out.is_empty() || out == "." || out == ".." {
        return UNNAMED.to_owned();
    }
    out
}

fn trim_dots_and_spaces(s: &str) -> &str {
    s.trim_start_matches(['.', ' '])
        .trim_end_matches(['.', ' '])
}

/// Bidirectional embedding, override and isolate characters. They are not control
/// characters to Unicode, but they let a name like `invoice\u{202E}fdp.exe` display as
/// `invoiceexe.pdf`, so they are dropped too.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// Whether the part before the first dot is a DOS device name, which Windows refuses to
/// create as a file (or, worse, opens the device).
fn is_windows_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => {
            let digit = upper
                .strip_prefix("COM")
                .or_else(|| upper.strip_prefix("LPT"));
            matches!(digit.map(str::as_bytes), Some([b'1'..=b'9']))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(sanitize_file_name(input), expected, "input {input:?}");
    }

    #[test]
    fn sanitize_cases() {
        check("../../etc/passwd", "passwd");
        check("/abs/x", "x");
        check("a\0b", "ab");
        check("..", "unnamed");
        check(".", "unnamed");
        check("", "unnamed");
        check("   ", "unnamed");
        check("/", "unnamed");
        check("a/b\\c", "c");
        check("C:\\Windows\\system32\\cmd.exe", "cmd.exe");
        check("dir/", "dir");
        check("..\\..\\boot.ini", "boot.ini");
        check("tab\there\nnl\r\u{7f}\u{1b}[31m", "tabherenl[31m");
        check("..hidden", "hidden");
        check(" spaced name. ", "spaced name");
        check("what?<x>:\"y\"|*", "what__x___y___");
        check("report.pdf", "report.pdf");
        check("naïve résumé.txt", "naïve résumé.txt");
        check("invoice\u{202E}fdp.exe", "invoicefdp.exe");
        check("x'); DROP TABLE users;--", "x'); DROP TABLE users;--");
        check("CON", "_CON");
        check("nul.txt", "_nul.txt");
        check("lpt1", "_lpt1");
        check("console.txt", "console.txt");
        check("com10", "com10");
    }

    #[test]
    fn sanitize_long_names() {
        let long = "a".repeat(1000);
        assert_eq!(sanitize_file_name(&long), "a".repeat(MAX_FILE_NAME_BYTES));
        // 'é' is two bytes, so 255 bytes would split the 128th one.
        let accented = "é".repeat(200);
        let out = sanitize_file_name(&accented);
        assert_eq!(out, "é".repeat(127));
        // A cut that lands just after a dot must not leave a trailing dot behind.
        let dotted = format!("{}.{}", "a".repeat(254), "b".repeat(10));
        assert_eq!(sanitize_file_name(&dotted), "a".repeat(254));
    }

    #[test]
    fn user_names() {
        for ok in ["a", "alice", "0day", "a.b-c_d", &"x".repeat(32)] {
            assert!(validate_user_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            &"x".repeat(33),
            "Alice",
            ".hidden",
            "-rf",
            "_x",
            "a b",
            "a/b",
            "a\0",
            "é",
            "x'); DROP TABLE users;--",
        ] {
            assert!(
                matches!(validate_user_name(bad), Err(StoreError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn sanitized_names_are_safe(input in any::<String>()) {
            let out = sanitize_file_name(&input);
            prop_assert!(!out.is_empty());
            prop_assert!(out != "." && out != "..");
            prop_assert!(out.len() <= MAX_FILE_NAME_BYTES);
            prop_assert!(!out.contains(['/', '\\', '\0']));
            prop_assert!(!out.chars().any(char::is_control));
            prop_assert!(!out.starts_with(['.', ' ']) && !out.ends_with(['.', ' ']));
        }

        #[test]
        fn sanitizing_is_idempotent(input in any::<String>()) {
            let once = sanitize_file_name(&input);
            prop_assert_eq!(sanitize_file_name(&once), once.clone());
        }

        #[test]
        fn long_separator_heavy_names_stay_bounded(
            input in proptest::collection::vec(prop_oneof![
                Just("/".to_string()), Just("\\".to_string()), Just(".".to_string()),
                Just("é".to_string()), Just(" ".to_string()), "[a-z]{1,40}",
            ], 0..200).prop_map(|v| v.concat())
        ) {
            let out = sanitize_file_name(&input);
            prop_assert!(out.len() <= MAX_FILE_NAME_BYTES);
            prop_assert!(!out.contains(['/', '\\']));
        }
    }
}
