//! The API token that `POST /run/{commit}/retry` and `POST /run/{commit}/cancel`
//! ask for, and where it came from.
//!
//! The token is a secret: [`ApiToken`] never shows it (its `Debug` writes
//! `<redacted>`), and [`ApiToken::matches`] compares a client's token with it
//! in constant time (the `subtle` crate), so the time an answer takes does not
//! tell how many leading bytes of a guess were right.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The environment variable that holds the API token when neither
/// `--api-token-file` nor `--api-token` is given.
pub const TOKEN_ENV: &str = crate::API_TOKEN_ENV;

/// Where the token came from (for the startup log; never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// The environment variable [`TOKEN_ENV`].
    Env,
    /// A file (`--api-token-file`).
    File(PathBuf),
    /// The command line (`--api-token`), which other users of the machine
    /// can read.
    Flag,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env => f.write_str(TOKEN_ENV),
            Self::File(path) => write!(f, "--api-token-file {}", path.display()),
            Self::Flag => f.write_str("--api-token"),
        }
    }
}

/// Why a token cannot be used. Each message is one line and names the source,
/// never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token file cannot be read.
    #[error("cannot read the API token file {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why (the system's words).
        reason: String,
    },
    /// The token is empty (an empty file, a file with only a newline, an
    /// empty `--api-token`).
    #[error("the API token from {from} is empty")]
    Empty {
        /// Where it came from.
        from: TokenSource,
    },
    /// The token has a character that cannot be sent in an `Authorization`
    /// header as one bearer token: a space, a control character (a second
    /// line in a file) or a character outside ASCII.
    #[error(
        "the API token from {from} has a space, a second line, a control or a non-ASCII character; use printable ASCII only, e.g. the output of `openssl rand -hex 32`"
    )]
    BadCharacter {
        /// Where it came from.
        from: TokenSource,
    },
    /// The environment variable is not valid UTF-8.
    #[error("{TOKEN_ENV} is not valid UTF-8")]
    EnvNotUnicode,
}

/// The API token: a secret compared in constant time, and its source.
#[derive(Clone)]
pub struct ApiToken {
    secret: Arc<str>,
    source: TokenSource,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("source", &self.source)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ApiToken {
    /// The token `secret`, from `source`.
    ///
    /// # Errors
    /// [`TokenError::Empty`] for an empty token, [`TokenError::BadCharacter`]
    /// for one with a character other than printable ASCII (spaces count as
    /// not printable here).
    pub fn new(secret: &str, source: TokenSource) -> Result<Self, TokenError> {
        if secret.is_empty() {
            return Err(TokenError::Empty { from: source });
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacter { from: source });
        }
        Ok(Self {
            secret: Arc::from(secret),
            source,
        })
    }

    /// The token in the file at `path`: its content without one trailing
    /// newline (`\n` or `\r\n`).
    ///
    /// # Errors
    /// [`TokenError::Unreadable`] when the file cannot be read (or is not
    /// UTF-8), and as [`new`](Self::new).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let unreadable = |reason: String| TokenError::Unreadable {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8".to_owned()))?;
        let secret = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        Self::new(secret, TokenSource::File(path.to_owned()))
    }

    /// The token of the environment variable [`TOKEN_ENV`], given its value:
    /// `None` when it is unset or empty (both mean no token).
    ///
    /// # Errors
    /// [`TokenError::EnvNotUnicode`], and as [`new`](Self::new).
    pub fn from_env(value: Option<&std::ffi::OsStr>) -> Result<Option<Self>, TokenError> {
        match value {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => {
                let secret = v.to_str().ok_or(TokenError::EnvNotUnicode)?;
                Self::new(secret, TokenSource::Env).map(Some)
            }
        }
    }

    /// Where the token came from.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// Whether `given` is the token. The bytes are compared in constant time;
    /// only a difference in length can show in the time taken.
    pub fn matches(&self, given: &str) -> bool {
        self.secret.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_itself_only() {
        let token = ApiToken::new("s3cret-Token_1", TokenSource::Flag).expect("valid");
        assert!(token.matches("s3cret-Token_1"));
        for other in ["", "s3cret-Token_", "s3cret-Token_12", "S3cret-Token_1"] {
            assert!(!token.matches(other), "{other:?} matched");
        }
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        let token = ApiToken::new("hunter2hunter2", TokenSource::Env).expect("valid");
        let shown = format!("{token:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn empty_and_unsendable_tokens_are_refused_naming_the_source() {
        assert_eq!(
            ApiToken::new("", TokenSource::Flag).unwrap_err(),
            TokenError::Empty {
                from: TokenSource::Flag
            }
        );
        for bad in ["two words", "tab\there", "line\nbreak", "ünï"] {
            let err = ApiToken::new(bad, TokenSource::Env).unwrap_err();
            assert!(matches!(err, TokenError::BadCharacter { .. }), "{bad:?}");
            let line = err.to_string();
            assert!(line.contains(TOKEN_ENV) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn a_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let write = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("written");
            path
        };
        let t = ApiToken::from_file(&write("a", b"abc123\n")).expect("valid");
        assert!(t.matches("abc123"));
        let t = ApiToken::from_file(&write("b", b"abc123\r\n")).expect("valid");
        assert!(t.matches("abc123"));
        let t = ApiToken::from_file(&write("c", b"abc123")).expect("valid");
        assert!(t.matches("abc123"));
        assert_eq!(
            t.source(),
            &TokenSource::File(dir.path().join("c")),
            "the source names the file"
        );
        let err = ApiToken::from_file(&write("d", b"abc123\n\n")).unwrap_err();
        assert!(matches!(err, TokenError::BadCharacter { .. }), "{err}");
        for empty in [&b""[..], b"\n", b"\r\n"] {
            let err = ApiToken::from_file(&write("e", empty)).unwrap_err();
            assert!(matches!(err, TokenError::Empty { .. }), "{empty:?}: {err}");
            assert!(err.to_string().contains("--api-token-file"), "{err}");
        }
        let missing = dir.path().join("missing");
        let err = ApiToken::from_file(&missing).unwrap_err();
        assert!(matches!(err, TokenError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn an_unset_or_empty_variable_is_no_token() {
        assert!(ApiToken::from_env(None).expect("fine").is_none());
        assert!(
            ApiToken::from_env(Some(std::ffi::OsStr::new("")))
                .expect("fine")
                .is_none()
        );
        let t = ApiToken::from_env(Some(std::ffi::OsStr::new("tok")))
            .expect("fine")
            .expect("a token");
        assert_eq!(t.source(), &TokenSource::Env);
        assert!(t.matches("tok"));
    }
}
