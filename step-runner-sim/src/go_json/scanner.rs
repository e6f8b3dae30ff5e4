//! An incremental JSON syntax scanner that finds where the first JSON value of a
//! stream ends and fails with the same messages as Go's `encoding/json` decoder.
//!
//! The original step runner decodes its body with `json.NewDecoder(body).Decode`,
//! which reads exactly one value, ignores whatever follows it, and reports syntax
//! errors as `invalid character 'x' looking for beginning of value` and friends.
//! This module reproduces that state machine byte for byte, so the simulator's 400
//! bodies match the original's.

/// Deepest nesting Go's scanner accepts before failing with `exceeded max depth`.
const MAX_NESTING_DEPTH: usize = 10_000;

/// What the scanner says about one more byte of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The byte belongs to the value; keep feeding.
    Continue,
    /// The value is complete and includes this byte (a closing `}` or `]`).
    EndIncluding,
    /// The value was already complete before this byte; the byte is not part of it.
    EndBefore,
}

/// How an open container is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    ObjectKey,
    ObjectValue,
    ArrayValue,
}

/// The scanner's position inside the grammar (one state per Go scanner function).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    BeginValueOrEmpty,
    BeginValue,
    BeginStringOrEmpty,
    BeginString,
    EndValue,
    InString,
    InStringEsc,
    /// Inside `\u`, with this many hex digits read so far.
    InStringEscU(u8),
    Neg,
    One,
    Zero,
    Dot,
    Dot0,
    E,
    ESign,
    E0,
    /// Inside `true`, `false` or `null`, with `pos` letters matched.
    Literal {
        word: &'static [u8],
        pos: usize,
    },
}

/// A Go-compatible scanner over the bytes of one JSON value.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    stack: Vec<Container>,
    saw_non_space: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Renders a byte the way Go's `quoteChar` does inside a syntax error message.
pub fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".to_owned(),
        b'"' => "'\"'".to_owned(),
        _ => {
            // Go converts the byte to the rune of the same value and quotes it with
            // strconv.Quote, which escapes non-printable runes.
            let escaped = match c {
                0x07 => r"\a".to_owned(),
                0x08 => r"\b".to_owned(),
                0x0c => r"\f".to_owned(),
                b'\n' => r"\n".to_owned(),
                b'\r' => r"\r".to_owned(),
                b'\t' => r"\t".to_owned(),
                0x0b => r"\v".to_owned(),
                b'\\' => r"\\".to_owned(),
                0x00..=0x1f | 0x7f => format!(r"\x{c:02x}"),
                0x80..=0x9f | 0xa0 | 0xad => format!(r"\u{c:04x}"),
                _ => char::from(c).to_string(),
            };
            format!("'{escaped}'")
        }
    }
}

fn syntax_error(c: u8, context: &str) -> String {
    format!("invalid character {} {context}", quote_char(c))
}

impl Scanner {
    /// A scanner at the start of a value.
    pub fn new() -> Self {
        Self {
            state: State::BeginValue,
            stack: Vec::new(),
            saw_non_space: false,
        }
    }

    /// Feeds one byte; `Err` carries Go's syntax error message.
    pub fn step(&mut self, c: u8) -> Result<Scan, String> {
        if !is_space(c) {
            self.saw_non_space = true;
        }
        self.step_state(c)
    }

    /// Says how the input ends here, as Go's decoder does at end of stream: `Ok`
    /// when the value is complete (a top-level number or literal needs no more
    /// bytes), else `EOF` when nothing but spaces was read, else `unexpected EOF`.
    pub fn finish(&mut self) -> Result<(), String> {
        let mut probe = self.clone();
        match probe.step_state(b' ') {
            Ok(Scan::EndBefore) => Ok(()),
            _ if self.saw_non_space => Err("unexpected EOF".to_owned()),
            _ => Err("EOF".to_owned()),
        }
    }

    fn push(&mut self, c: u8, container: Container, next: State) -> Result<Scan, String> {
        self.stack.push(container);
        if self.stack.len() > MAX_NESTING_DEPTH {
            return Err(syntax_error(c, "exceeded max depth"));
        }
        self.state = next;
        Ok(Scan::Continue)
    }

    /// Closes the innermost container; a closed top-level container ends the value.
    fn pop(&mut self) -> Scan {
        self.stack.pop();
        self.state = State::EndValue;
        if self.stack.is_empty() {
            Scan::EndIncluding
        } else {
            Scan::Continue
        }
    }

    fn begin_value(&mut self, c: u8) -> Result<Scan, String> {
        if is_space(c) {
            return Ok(Scan::Continue);
        }
        self.state = match c {
            b'{' => return self.push(c, Container::ObjectKey, State::BeginStringOrEmpty),
            b'[' => return self.push(c, Container::ArrayValue, State::BeginValueOrEmpty),
            b'"' => State::InString,
            b'-' => State::Neg,
            b'0' => State::Zero,
            b'1'..=b'9' => State::One,
            b't' => State::Literal {
                word: b"true",
                pos: 1,
            },
            b'f' => State::Literal {
                word: b"false",
                pos: 1,
            },
            b'n' => State::Literal {
                word: b"null",
                pos: 1,
            },
            _ => return Err(syntax_error(c, "looking for beginning of value")),
        };
        Ok(Scan::Continue)
    }

    fn end_value(&mut self, c: u8) -> Result<Scan, String> {
        let Some(&top) = self.stack.last() else {
            return Ok(Scan::EndBefore);
        };
        self.state = State::EndValue;
        if is_space(c) {
            return Ok(Scan::Continue);
        }
        match (top, c) {
            (Container::ObjectKey, b':') => {
                *self.stack.last_mut().expect("stack is not empty here") = Container::ObjectValue;
                self.state = State::BeginValue;
                Ok(Scan::Continue)
            }
            (Container::ObjectKey, _) => Err(syntax_error(c, "after object key")),
            (Container::ObjectValue, b',') => {
                *self.stack.last_mut().expect("stack is not empty here") = Container::ObjectKey;
                self.state = State::BeginString;
                Ok(Scan::Continue)
            }
            (Container::ObjectValue, b'}') => Ok(self.pop()),
            (Container::ObjectValue, _) => Err(syntax_error(c, "after object key:value pair")),
            (Container::ArrayValue, b',') => {
                self.state = State::BeginValue;
                Ok(Scan::Continue)
            }
            (Container::ArrayValue, b']') => Ok(self.pop()),
            (Container::ArrayValue, _) => Err(syntax_error(c, "after array element")),
        }
    }

    fn step_state(&mut self, c: u8) -> Result<Scan, String> {
        match self.state {
            State::BeginValueOrEmpty => {
                if is_space(c) {
                    Ok(Scan::Continue)
                } else if c == b']' {
                    Ok(self.pop())
                } else {
                    self.begin_value(c)
                }
            }
            State::BeginValue => self.begin_value(c),
            State::BeginStringOrEmpty => {
                if is_space(c) {
                    Ok(Scan::Continue)
                } else if c == b'}' {
                    Ok(self.pop())
                } else {
                    self.state = State::BeginString;
                    self.step_state(c)
                }
            }
            State::BeginString => {
                if is_space(c) {
                    Ok(Scan::Continue)
                } else if c == b'"' {
                    self.state = State::InString;
                    Ok(Scan::Continue)
                } else {
                    Err(syntax_error(
                        c,
                        "looking for beginning of object key string",
                    ))
                }
            }
            State::EndValue => self.end_value(c),
            State::InString => {
                match c {
                    b'"' => self.state = State::EndValue,
                    b'\\' => self.state = State::InStringEsc,
                    0x00..=0x1f => return Err(syntax_error(c, "in string literal")),
                    _ => {}
                }
                Ok(Scan::Continue)
            }
            State::InStringEsc => match c {
                b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => {
                    self.state = State::InString;
                    Ok(Scan::Continue)
                }
                b'u' => {
                    self.state = State::InStringEscU(0);
                    Ok(Scan::Continue)
                }
                _ => Err(syntax_error(c, "in string escape code")),
            },
            State::InStringEscU(n) => {
                if !c.is_ascii_hexdigit() {
                    return Err(syntax_error(c, "in \\u hexadecimal character escape"));
                }
                self.state = if n == 3 {
                    State::InString
                } else {
                    State::InStringEscU(n + 1)
                };
                Ok(Scan::Continue)
            }
            State::Neg => {
                self.state = match c {
                    b'0' => State::Zero,
                    b'1'..=b'9' => State::One,
                    _ => return Err(syntax_error(c, "in numeric literal")),
                };
                Ok(Scan::Continue)
            }
            State::One if c.is_ascii_digit() => Ok(Scan::Continue),
            State::One | State::Zero => match c {
                b'.' => {
                    self.state = State::Dot;
                    Ok(Scan::Continue)
                }
                b'e' | b'E' => {
                    self.state = State::E;
                    Ok(Scan::Continue)
                }
                _ => self.end_value(c),
            },
            State::Dot => {
                if c.is_ascii_digit() {
                    self.state = State::Dot0;
                    Ok(Scan::Continue)
                } else {
                    Err(syntax_error(c, "after decimal point in numeric literal"))
                }
            }
            State::Dot0 => match c {
                b'0'..=b'9' => Ok(Scan::Continue),
                b'e' | b'E' => {
                    self.state = State::E;
                    Ok(Scan::Continue)
                }
                _ => self.end_value(c),
            },
            State::E if c == b'+' || c == b'-' => {
                self.state = State::ESign;
                Ok(Scan::Continue)
            }
            State::E | State::ESign => {
                if c.is_ascii_digit() {
                    self.state = State::E0;
                    Ok(Scan::Continue)
                } else {
                    Err(syntax_error(c, "in exponent of numeric literal"))
                }
            }
            State::E0 => {
                if c.is_ascii_digit() {
                    Ok(Scan::Continue)
                } else {
                    self.end_value(c)
                }
            }
            State::Literal { word, pos } => {
                let expected = word[pos];
                if c != expected {
                    let name = std::str::from_utf8(word).expect("literal words are ASCII");
                    return Err(syntax_error(
                        c,
                        &format!("in literal {name} (expecting {})", quote_char(expected)),
                    ));
                }
                self.state = if pos + 1 == word.len() {
                    State::EndValue
                } else {
                    State::Literal { word, pos: pos + 1 }
                };
                Ok(Scan::Continue)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` like Go's `Decoder.Decode`: the length of the first value, or the error.
    fn scan(input: &[u8]) -> Result<usize, String> {
        let mut scanner = Scanner::new();
        for (i, &c) in input.iter().enumerate() {
            match scanner.step(c)? {
                Scan::Continue => {}
                Scan::EndIncluding => return Ok(i + 1),
                Scan::EndBefore => return Ok(i),
            }
        }
        scanner.finish().map(|()| input.len())
    }

    #[test]
    fn complete_values_end_where_go_ends_them() {
        assert_eq!(scan(br#"{"a":1}"#), Ok(7));
        assert_eq!(scan(br#"  {"a":[1,2,{}]} trailing"#), Ok(16));
        assert_eq!(scan(b"123"), Ok(3));
        assert_eq!(scan(b"1x"), Ok(1));
        assert_eq!(scan(b"null"), Ok(4));
        assert_eq!(scan(br#""s\u00e9\n""#), Ok(11));
        assert_eq!(scan(b"-0.5e+10 "), Ok(8));
        assert_eq!(scan(b"[]"), Ok(2));
    }

    #[test]
    fn end_of_input_gives_eof_or_unexpected_eof() {
        assert_eq!(scan(b""), Err("EOF".to_owned()));
        assert_eq!(scan(b" \n\t "), Err("EOF".to_owned()));
        assert_eq!(scan(b"{"), Err("unexpected EOF".to_owned()));
        assert_eq!(
            scan(br#"{"step_name": "li"#),
            Err("unexpected EOF".to_owned())
        );
        assert_eq!(scan(b"1."), Err("unexpected EOF".to_owned()));
        assert_eq!(scan(b"tru"), Err("unexpected EOF".to_owned()));
    }

    #[test]
    fn syntax_errors_use_go_messages() {
        let cases: &[(&[u8], &str)] = &[
            (b"x", "invalid character 'x' looking for beginning of value"),
            (
                b"{x",
                "invalid character 'x' looking for beginning of object key string",
            ),
            (br#"{"a" 1}"#, "invalid character '1' after object key"),
            (
                br#"{"a":1 "b"}"#,
                "invalid character '\"' after object key:value pair",
            ),
            (b"[1 2]", "invalid character '2' after array element"),
            (b"\"a\nb\"", r"invalid character '\n' in string literal"),
            (br#""\x""#, "invalid character 'x' in string escape code"),
            (
                br#""\u12g4""#,
                "invalid character 'g' in \\u hexadecimal character escape",
            ),
            (b"-a", "invalid character 'a' in numeric literal"),
            (
                b"1.x",
                "invalid character 'x' after decimal point in numeric literal",
            ),
            (
                b"1e+x",
                "invalid character 'x' in exponent of numeric literal",
            ),
            (
                b"trux",
                "invalid character 'x' in literal true (expecting 'e')",
            ),
            (
                b"fals0",
                "invalid character '0' in literal false (expecting 'e')",
            ),
            (
                b"nul ",
                "invalid character ' ' in literal null (expecting 'l')",
            ),
            (
                b"'a'",
                r"invalid character '\'' looking for beginning of value",
            ),
            (
                b"\xef\xbb\xbf{}",
                "invalid character '\u{ef}' looking for beginning of value",
            ),
            (
                b"\x00",
                r"invalid character '\x00' looking for beginning of value",
            ),
            (
                b"{,",
                "invalid character ',' looking for beginning of object key string",
            ),
            (
                b"[,",
                "invalid character ',' looking for beginning of value",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(scan(input), Err((*message).to_owned()), "input {input:?}");
        }
    }

    #[test]
    fn nesting_deeper_than_go_allows_is_rejected() {
        let ok = "[".repeat(MAX_NESTING_DEPTH) + &"]".repeat(MAX_NESTING_DEPTH);
        assert_eq!(scan(ok.as_bytes()), Ok(ok.len()));
        let deep = "[".repeat(MAX_NESTING_DEPTH + 1);
        assert_eq!(
            scan(deep.as_bytes()),
            Err("invalid character '[' exceeded max depth".to_owned())
        );
    }

    #[test]
    fn quote_char_matches_go() {
        assert_eq!(quote_char(b'a'), "'a'");
        assert_eq!(quote_char(b'\\'), r"'\\'");
        assert_eq!(quote_char(0x7f), r"'\x7f'");
        assert_eq!(quote_char(0x85), r"'\u0085'");
        assert_eq!(quote_char(0xa0), r"'\u00a0'");
        assert_eq!(quote_char(0xe9), "'é'");
    }
}
