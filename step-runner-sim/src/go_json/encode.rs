//! Encodes strings as Go's `json.Encoder` does with its default HTML escaping.

/// Appends `s` to `out` as a quoted JSON string, escaped like Go's encoder:
/// `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes, control characters as
/// `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX` (lowercase hex).
pub fn write_go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\u{0}'..='\u{1f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            _ => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go() {
        let mut out = String::new();
        write_go_string(&mut out, "a\"b\\c\nd\te<f>&g\u{1}\u{8}\u{c}\u{2028}é");
        assert_eq!(
            out,
            r#""a\"b\\c\nd\te\u003cf\u003e\u0026g\u0001\b\f\u2028é""#
        );
    }
}
