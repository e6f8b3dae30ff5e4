//! Hand-written checks of path parameters, and the patterns the API
//! document states for them.
//!
//! poem-openapi's `pattern` validator compiles its regular expression again
//! on every request (about as costly as answering the request itself). The
//! parameters are checked by these validators instead, which test exactly
//! what the pattern says, and [`PATTERNS`] puts the patterns back into the
//! document (`document::Document::from_spec`), so clients still read them.

use std::fmt;

use poem_openapi::validation::Validator;

/// A check of a string parameter that a regular expression describes.
#[derive(Debug)]
pub struct Matches {
    /// The regular expression the document states.
    pub pattern: &'static str,
    check: fn(&str) -> bool,
}

impl fmt::Display for Matches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pattern({:?})", self.pattern)
    }
}

impl<T: AsRef<str>> Validator<T> for Matches {
    fn check(&self, value: &T) -> bool {
        (self.check)(value.as_ref())
    }
}

/// A full or abbreviated commit hash: 4 to 40 hexadecimal digits.
pub const COMMIT: Matches = Matches {
    pattern: "^[0-9a-fA-F]{4,40}$",
    check: |s| (4..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()),
};

/// A step name: letters, digits, `.`, `_` and `-`, at least one.
pub const STEP: Matches = Matches {
    pattern: "^[A-Za-z0-9._-]+$",
    check: |s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    },
};

/// A cursor of `GET /runs` (`after`): 1 to 19 decimal digits, so it
/// always fits a `u64`.
pub const CURSOR: Matches = Matches {
    pattern: "^[0-9]{1,19}$",
    check: |s| (1..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()),
};

/// The pattern of each parameter, by its name in the document.
pub const PATTERNS: [(&str, &Matches); 3] =
    [("commit", &COMMIT), ("step", &STEP), ("after", &CURSOR)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_agree_with_their_patterns() {
        for (_, matches) in PATTERNS {
            let regex = regex::Regex::new(matches.pattern).expect("a valid pattern");
            for value in [
                "",
                "abc",
                "abcd",
                "ABCDEF12",
                "abcg",
                "0123456789abcdef0123456789abcdef01234567",
                "0123456789abcdef0123456789abcdef012345678",
                "lint",
                "build-1.x_y",
                "a b",
                "é",
                "a/b",
                "-",
                ".",
                "12345",
                "dead beef",
                "de\nad",
                "1234567890123456789",
                "12345678901234567890",
                "-1",
                "+1",
            ] {
                assert_eq!(
                    (matches.check)(value),
                    regex.is_match(value),
                    "{value:?} against {}",
                    matches.pattern
                );
            }
        }
    }
}
