//! Removing terminal escape sequences (colours, cursor moves, titles) from
//! logs, so that a page shows the text a terminal would.

const ESC: char = '\u{1b}';
const BEL: char = '\u{7}';

/// `text` without its ANSI escape sequences: CSI (`ESC [ … final`), OSC
/// (`ESC ] … BEL` or `ESC ] … ESC \`) and the other escapes (`ESC =`,
/// `ESC ( B`).
/// A lone `ESC` at the end is dropped; every other character is kept.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ESC {
            out.push(c);
            continue;
        }
        match chars.next() {
            // Control sequence: parameter and intermediate bytes, then one
            // final byte in `@`..=`~`.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // Operating system command: up to BEL or the string terminator.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == BEL {
                        break;
                    }
                    if c == ESC && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            // Any other escape: intermediate bytes (` `..=`/`), then one
            // final character (`ESC ( B`, `ESC =`, ...).
            Some(c) if (' '..='/').contains(&c) => {
                for c in chars.by_ref() {
                    if !(' '..='/').contains(&c) {
                        break;
                    }
                }
            }
            Some(_) | None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn colours_and_titles_go_text_stays() {
        assert_eq!(
            strip_ansi("\u{1b}[1;31merror\u{1b}[0m: bad \u{1b}[38;5;208mthing\u{1b}[m"),
            "error: bad thing"
        );
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}after"), "after");
        assert_eq!(strip_ansi("\u{1b}]8;;http://x\u{1b}\\link"), "link");
        assert_eq!(strip_ansi("a\u{1b}(Bb"), "ab");
        assert_eq!(strip_ansi("line\u{1b}[2K\u{1b}[1Gnext"), "linenext");
        assert_eq!(strip_ansi("end\u{1b}"), "end");
    }

    #[test]
    fn text_without_escapes_is_unchanged() {
        let plain = "plain <b>text</b> & [brackets] ünïcode\n";
        assert_eq!(strip_ansi(plain), plain);
    }
}
