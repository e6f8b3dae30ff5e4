//! [`DatabaseUrl`]: a `postgres://` URL, checked, with its password kept out
//! of every message.

use std::fmt;

/// The URL schemes that name a PostgreSQL database (compared without regard
/// to case).
pub const SCHEMES: [&str; 2] = ["postgres", "postgresql"];

/// What stands in for a password in a [redacted](DatabaseUrl::redacted) URL.
const MASK: &str = "***";

/// A PostgreSQL connection URL (`postgres://` or `postgresql://`), parsed
/// once by the driver's own parser so that an unusable one is refused before
/// anything connects.
///
/// Its `Debug` and `Display` show the [redacted](Self::redacted) form: the
/// password never leaves through them. Only [`expose`](Self::expose) gives
/// the URL as written.
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: String,
    /// Boxed: the driver's settings are large beside the other ways to name
    /// a store.
    config: Box<tokio_postgres::Config>,
}

/// Why a URL cannot be used. The message shows the URL redacted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid database URL {url}: {reason}")]
pub struct DatabaseUrlError {
    /// The URL as given, its password masked.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Whether `text` starts like a URL, `scheme://` (the scheme: a letter, then
/// letters, digits, `+`, `-` or `.`), and if so, its scheme. A value of
/// `--db` that does is never taken as a file path.
pub fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// Whether `text` is a URL of one of the PostgreSQL `SCHEMES`.
pub fn is_postgres_url(text: &str) -> bool {
    url_scheme(text).is_some_and(|s| SCHEMES.iter().any(|p| s.eq_ignore_ascii_case(p)))
}

impl DatabaseUrl {
    /// Parses `url`: a `postgres://` or `postgresql://` URL (scheme in any
    /// case) that names at least one host, with only options the driver
    /// knows, and that does not ask for TLS (`sslmode=require`), which this
    /// build lacks.
    ///
    /// # Errors
    /// A [`DatabaseUrlError`] naming the URL without its password.
    pub fn parse(url: &str) -> Result<Self, DatabaseUrlError> {
        let bad = |reason: &str| DatabaseUrlError {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let Some(scheme) = url_scheme(url) else {
            return Err(bad("expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"));
        };
        if !is_postgres_url(url) {
            return Err(bad(&format!(
                "the scheme {scheme} is not postgres or postgresql (a SQLite database is \
                 given by its file path)"
            )));
        }
        // The driver only knows the schemes in lower case.
        let normalized = format!("postgresql{}", &url[scheme.len()..]);
        let config: tokio_postgres::Config = normalized
            .parse()
            .map_err(|e: tokio_postgres::Error| bad(&super::error::describe(&e)))?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(bad("it names no host"));
        }
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(bad(
                "sslmode=require asks for TLS, which this build does not have (use \
                 sslmode=disable or prefer on a trusted network)",
            ));
        }
        Ok(Self {
            raw: url.to_owned(),
            config: Box::new(config),
        })
    }

    /// The URL with its password (in the user part or a `password=` option)
    /// replaced by `***`: the form every message and log line shows.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }

    /// The URL as given, password included. Never log or print it.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The driver's settings parsed from the URL.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for DatabaseUrl {}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `url` with every password masked: the part after the first `:` of the user
/// part (everything before the first `@`, as the driver splits it) and the
/// value of every `password=` option. Text that is not a URL is returned
/// masked whole when it has an `@` or `password`, since it cannot be split
/// safely.
pub fn redact(url: &str) -> String {
    let Some(scheme) = url_scheme(url) else {
        let lower = url.to_ascii_lowercase();
        if url.contains('@') || lower.contains("password") {
            return MASK.to_owned();
        }
        return url.to_owned();
    };
    let rest = &url[scheme.len() + 3..];
    let (credentials, after) = match rest.find('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(credentials) = credentials {
        match credentials.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
            }
            None => out.push_str(credentials),
        }
    }
    let (path, query) = match after.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (after, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let options: Vec<String> = query
            .split('&')
            .map(|option| match option.split_once('=') {
                Some((key, _)) if is_password_key(key) => format!("{key}={MASK}"),
                _ => option.to_owned(),
            })
            .collect();
        out.push_str(&options.join("&"));
    }
    out
}

/// Whether an option's key (percent-encoded or not) is `password`.
fn is_password_key(key: &str) -> bool {
    let decoded: String = percent_decode(key);
    decoded.trim().eq_ignore_ascii_case("password")
}

/// `%XX` sequences decoded, lossily; for comparing keys only.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_wherever_they_are() {
        for (url, want) in [
            (
                "postgres://ci:s3cret@db.example:5432/runs",
                "postgres://ci:***@db.example:5432/runs",
            ),
            (
                "postgresql://ci@db/runs?sslmode=disable",
                "postgresql://ci@db/runs?sslmode=disable",
            ),
            (
                "postgres://db/runs?user=ci&password=s3cret&application_name=x",
                "postgres://db/runs?user=ci&password=***&application_name=x",
            ),
            (
                "postgres://db/runs?pass%77ord=s3cret",
                "postgres://db/runs?pass%77ord=***",
            ),
            ("postgres://ci:p:a:ss@h/d", "postgres://ci:***@h/d"),
            ("postgres://ci:s3c@ret@h/d", "postgres://ci:***@ret@h/d"),
            ("postgres://h:5432", "postgres://h:5432"),
            ("not a url with s3cret@host", "***"),
            ("/var/lib/ci/runs.db", "/var/lib/ci/runs.db"),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
        // Whatever the split, the password never survives.
        assert!(!redact("postgres://ci:s3c@ret@h/d").contains("s3c"));
    }

    #[test]
    fn urls_are_told_from_paths() {
        assert_eq!(url_scheme("postgres://h/d"), Some("postgres"));
        assert_eq!(url_scheme("mysql://h/d"), Some("mysql"));
        assert_eq!(url_scheme("git+ssh://h/d"), Some("git+ssh"));
        assert_eq!(url_scheme("runs.db"), None);
        assert_eq!(url_scheme("./postgres:/x"), None);
        assert_eq!(url_scheme("/tmp/a://b"), None);
        assert_eq!(url_scheme("://x"), None);
        assert!(is_postgres_url("PostgreSQL://h/d"));
        assert!(!is_postgres_url("postgres:/h/d"));
    }

    #[test]
    fn a_good_url_parses_and_never_shows_its_password() {
        let url = DatabaseUrl::parse("POSTGRES://ci:s3cret@127.0.0.1:5433/runs").expect("valid");
        assert_eq!(url.config().get_dbname(), Some("runs"));
        assert_eq!(url.config().get_ports(), [5433]);
        assert_eq!(url.config().get_password(), Some(&b"s3cret"[..]));
        for shown in [format!("{url}"), format!("{url:?}"), url.redacted()] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("127.0.0.1:5433/runs"), "{shown}");
        }
        assert_eq!(url.expose(), "POSTGRES://ci:s3cret@127.0.0.1:5433/runs");
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        for (url, reason) in [
            ("postgres://ci:s3cret@h:port/db", "port"),
            ("postgres://ci:s3cret@h/db?colour=red", "colour"),
            ("postgres://ci:s3cret@/db", "no host"),
            ("postgres://ci:s3cret@h/db?unterminated", "unterminated"),
            ("postgres://ci:s3cret@h/db?sslmode=require", "TLS"),
            ("mysql://ci:s3cret@h/db", "not postgres"),
            ("runs.db", "expected postgres://"),
        ] {
            let err = DatabaseUrl::parse(url).expect_err(url);
            let line = err.to_string();
            assert!(line.contains(reason), "{url}: {line}");
            assert!(!line.contains("s3cret"), "{url}: {line}");
            assert!(!line.contains('\n'), "{url}: {line}");
        }
    }
}
