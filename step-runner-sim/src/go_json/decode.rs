//! Decodes a syntactically valid JSON value into a [`StepPayload`] with the
//! semantics of Go's `json.Unmarshal` into the original's `StepPayload` struct:
//! keys match field names exactly or case-insensitively, unknown keys are
//! skipped, `null` leaves a field as it was, and the first value of a wrong type
//! becomes the error `json: cannot unmarshal <kind> into Go struct field
//! StepPayload.<field> of type <type>` (decoding still goes on, as in Go).

use crate::protocol::StepPayload;

/// The Go type name the original decodes into (shown in top-level type errors).
const GO_TYPE: &str = "main.StepPayload";
/// The Go struct name shown in field type errors.
const GO_STRUCT: &str = "StepPayload";

/// A cursor over bytes that the scanner has already accepted as one JSON value.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// The Go kinds a JSON value can have, as named in `UnmarshalTypeError`.
enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

/// Which field of the payload a key selects.
#[derive(Clone, Copy)]
enum Field {
    StepName,
    RepoPath,
    CommitHash,
    SimulateStatus,
    SimulateBuildTime,
}

const FIELDS: [(&str, Field); 5] = [
    ("step_name", Field::StepName),
    ("repo_path", Field::RepoPath),
    ("commit_hash", Field::CommitHash),
    ("simulate_status", Field::SimulateStatus),
    ("simulate_build_time", Field::SimulateBuildTime),
];

impl Field {
    /// Finds the field for a key: an exact match first, then a case-insensitive one.
    fn lookup(key: &str) -> Option<(&'static str, Field)> {
        FIELDS
            .iter()
            .find(|(name, _)| *name == key)
            .or_else(|| {
                FIELDS
                    .iter()
                    .find(|(name, _)| name.to_lowercase() == key.to_lowercase())
            })
            .copied()
    }
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> u8 {
        self.bytes.get(self.pos).copied().unwrap_or(b' ')
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\r' | b'\n') && self.pos < self.bytes.len() {
            self.pos += 1;
        }
    }

    fn kind(&mut self) -> Kind {
        self.skip_space();
        match self.peek() {
            b'{' => Kind::Object,
            b'[' => Kind::Array,
            b'"' => Kind::String,
            b't' | b'f' => Kind::Bool,
            b'n' => Kind::Null,
            _ => Kind::Number,
        }
    }

    /// Skips one complete value (iteratively, so deep nesting cannot overflow the stack).
    fn skip_value(&mut self) {
        match self.kind() {
            Kind::String => {
                self.string();
            }
            Kind::Object | Kind::Array => {
                let mut depth = 0usize;
                while self.pos < self.bytes.len() {
                    match self.peek() {
                        b'"' => {
                            self.string();
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                self.pos += 1;
                                return;
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            Kind::Number | Kind::Bool | Kind::Null => {
                self.scalar();
            }
        }
    }

    /// Reads the raw text of a number or literal.
    fn scalar(&mut self) -> &'a str {
        self.skip_space();
        let start = self.pos;
        while self.pos < self.bytes.len()
            && !matches!(
                self.peek(),
                b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'
            )
        {
            self.pos += 1;
        }
        std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or_default()
    }

    /// Reads a string literal and unescapes it the way Go does: invalid UTF-8
    /// bytes and unpaired surrogates become U+FFFD.
    fn string(&mut self) -> String {
        self.skip_space();
        self.pos += 1; // opening quote
        let mut raw: Vec<u8> = Vec::new();
        let mut out = String::new();
        while self.pos < self.bytes.len() {
            let c = self.bytes[self.pos];
            match c {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    flush_raw(&mut raw, &mut out);
                    let esc = self.bytes.get(self.pos + 1).copied().unwrap_or(b'\\');
                    self.pos += 2;
                    match esc {
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let unit = self.hex4();
                            if (0xd800..0xdc00).contains(&unit)
                                && self.bytes.get(self.pos) == Some(&b'\\')
                                && self.bytes.get(self.pos + 1) == Some(&b'u')
                            {
                                let saved = self.pos;
                                self.pos += 2;
                                let low = self.hex4();
                                if (0xdc00..0xe000).contains(&low) {
                                    let cp = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                                    out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                                } else {
                                    out.push('\u{fffd}');
                                    self.pos = saved;
                                }
                            } else {
                                out.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
                            }
                        }
                        other => out.push(char::from(other)),
                    }
                }
                _ => {
                    raw.push(c);
                    self.pos += 1;
                }
            }
        }
        flush_raw(&mut raw, &mut out);
        out
    }

    fn hex4(&mut self) -> u32 {
        let end = (self.pos + 4).min(self.bytes.len());
        let digits = std::str::from_utf8(&self.bytes[self.pos..end]).unwrap_or("");
        self.pos = end;
        u32::from_str_radix(digits, 16).unwrap_or(0xfffd)
    }
}

/// Appends raw string bytes to `out`, turning each byte of an invalid UTF-8
/// sequence into U+FFFD as Go's decoder does.
fn flush_raw(raw: &mut Vec<u8>, out: &mut String) {
    let mut rest: &[u8] = raw;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).expect("checked valid prefix"));
                let bad = e.error_len().unwrap_or(after.len());
                out.extend(std::iter::repeat_n('\u{fffd}', bad));
                rest = &after[bad..];
            }
        }
    }
    raw.clear();
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Object => "object",
        Kind::Array => "array",
        Kind::String => "string",
        Kind::Number => "number",
        Kind::Bool => "bool",
        Kind::Null => "null",
    }
}

/// Decodes one already-scanned JSON value into the payload, or returns Go's
/// error message for the first value of the wrong type.
pub fn decode_payload(value: &[u8]) -> Result<StepPayload, String> {
    let mut cur = Cursor {
        bytes: value,
        pos: 0,
    };
    let mut payload = StepPayload::default();
    match cur.kind() {
        Kind::Null => return Ok(payload),
        Kind::Object => {}
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type {GO_TYPE}",
                kind_name(&other)
            ));
        }
    }
    cur.pos += 1; // '{'
    let mut first_error: Option<String> = None;
    loop {
        cur.skip_space();
        match cur.peek() {
            b'}' => break,
            b',' => {
                cur.pos += 1;
                continue;
            }
            _ => {}
        }
        if cur.pos >= cur.bytes.len() {
            break;
        }
        let key = cur.string();
        cur.skip_space();
        cur.pos += 1; // ':'
        let Some((name, field)) = Field::lookup(&key) else {
            cur.skip_value();
            continue;
        };
        if let Err((value, go_type)) = store(&mut cur, &mut payload, field) {
            cur.skip_value();
            first_error.get_or_insert_with(|| {
                format!(
                    "json: cannot unmarshal {value} into Go struct field {GO_STRUCT}.{name} of type {go_type}"
                )
            });
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(payload),
    }
}

/// Stores the value at the cursor into `field`; on a type mismatch returns Go's
/// description of the value and the field's Go type, and leaves the value unread.
fn store(
    cur: &mut Cursor<'_>,
    payload: &mut StepPayload,
    field: Field,
) -> Result<(), (String, &'static str)> {
    let kind = cur.kind();
    match field {
        Field::StepName | Field::RepoPath | Field::CommitHash | Field::SimulateStatus => match kind
        {
            Kind::String => {
                let s = cur.string();
                match field {
                    Field::StepName => payload.step_name = s,
                    Field::RepoPath => payload.repo_path = s,
                    Field::CommitHash => payload.commit_hash = s,
                    _ => payload.simulate_status = Some(s),
                }
                Ok(())
            }
            Kind::Null => {
                cur.scalar();
                if let Field::SimulateStatus = field {
                    payload.simulate_status = None;
                }
                Ok(())
            }
            other => Err((kind_name(&other).to_owned(), "string")),
        },
        Field::SimulateBuildTime => match kind {
            Kind::Number => {
                let text = cur.scalar();
                match text.parse::<i64>() {
                    Ok(n) => {
                        payload.simulate_build_time = Some(n);
                        Ok(())
                    }
                    Err(_) => Err((format!("number {text}"), "int")),
                }
            }
            Kind::Null => {
                cur.scalar();
                payload.simulate_build_time = None;
                Ok(())
            }
            other => Err((kind_name(&other).to_owned(), "int")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_all_fields_and_ignores_unknown_ones() {
        let p = decode_payload(
            br#"{"step_name":"build","repo_path":"/r","commit_hash":"abc",
                "extra":{"deep":[1,{"x":"}"}]},"simulate_status":"Weird",
                "simulate_build_time":12}"#,
        )
        .expect("valid payload");
        assert_eq!(p.step_name, "build");
        assert_eq!(p.repo_path, "/r");
        assert_eq!(p.commit_hash, "abc");
        assert_eq!(p.simulate_status.as_deref(), Some("Weird"));
        assert_eq!(p.simulate_build_time, Some(12));
    }

    #[test]
    fn keys_match_case_insensitively_and_null_keeps_old_value() {
        let p = decode_payload(br#"{"STEP_NAME":"lint","Repo_Path":"/x","repo_path":null}"#)
            .expect("valid payload");
        assert_eq!(p.step_name, "lint");
        assert_eq!(p.repo_path, "/x");
        let p = decode_payload(br#"{"simulate_status":"a","simulate_status":null}"#)
            .expect("valid payload");
        assert_eq!(p.simulate_status, None);
    }

    #[test]
    fn null_and_empty_object_give_an_empty_payload() {
        assert_eq!(decode_payload(b"null"), Ok(StepPayload::default()));
        assert_eq!(decode_payload(b"{}"), Ok(StepPayload::default()));
    }

    #[test]
    fn wrong_types_give_go_messages() {
        let cases: &[(&[u8], &str)] = &[
            (
                br#"{"step_name":1}"#,
                "json: cannot unmarshal number into Go struct field StepPayload.step_name of type string",
            ),
            (
                br#"{"repo_path":true}"#,
                "json: cannot unmarshal bool into Go struct field StepPayload.repo_path of type string",
            ),
            (
                br#"{"commit_hash":{"a":1}}"#,
                "json: cannot unmarshal object into Go struct field StepPayload.commit_hash of type string",
            ),
            (
                br#"{"simulate_status":[]}"#,
                "json: cannot unmarshal array into Go struct field StepPayload.simulate_status of type string",
            ),
            (
                br#"{"simulate_build_time":"5"}"#,
                "json: cannot unmarshal string into Go struct field StepPayload.simulate_build_time of type int",
            ),
            (
                br#"{"simulate_build_time":1.5}"#,
                "json: cannot unmarshal number 1.5 into Go struct field StepPayload.simulate_build_time of type int",
            ),
            (
                br#"{"simulate_build_time":1e99}"#,
                "json: cannot unmarshal number 1e99 into Go struct field StepPayload.simulate_build_time of type int",
            ),
            (
                br#"{"Step_Name":2,"repo_path":3}"#,
                "json: cannot unmarshal number into Go struct field StepPayload.step_name of type string",
            ),
            (
                b"[1]",
                "json: cannot unmarshal array into Go value of type main.StepPayload",
            ),
            (
                b"\"lint\"",
                "json: cannot unmarshal string into Go value of type main.StepPayload",
            ),
            (
                b"42",
                "json: cannot unmarshal number into Go value of type main.StepPayload",
            ),
            (
                b"true",
                "json: cannot unmarshal bool into Go value of type main.StepPayload",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(
                decode_payload(input),
                Err((*message).to_owned()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn the_first_type_error_wins_but_later_fields_are_still_read() {
        let err = decode_payload(br#"{"simulate_build_time":"x","step_name":7}"#);
        assert_eq!(
            err,
            Err("json: cannot unmarshal string into Go struct field StepPayload.simulate_build_time of type int".to_owned())
        );
    }

    #[test]
    fn strings_unescape_like_go() {
        let p =
            decode_payload(b"{\"repo_path\":\"a\\u00e9\\ud83d\\ude00\\ud800x\\n\\/\xff\xe2\x82\"}")
                .expect("valid payload");
        assert_eq!(
            p.repo_path,
            "a\u{e9}\u{1f600}\u{fffd}x\n/\u{fffd}\u{fffd}\u{fffd}"
        );
    }

    #[test]
    fn negative_and_zero_build_times_are_integers() {
        let p = decode_payload(br#"{"simulate_build_time":-5}"#).expect("valid payload");
        assert_eq!(p.simulate_build_time, Some(-5));
        let p = decode_payload(br#"{"simulate_build_time":-0}"#).expect("valid payload");
        assert_eq!(p.simulate_build_time, Some(0));
    }
}
