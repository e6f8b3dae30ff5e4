//! [`PgStoreError`]: why opening or using the PostgreSQL run database failed.

use std::error::Error as _;

/// Why the PostgreSQL store could not open its database or carry out an
/// operation.
///
/// Every message is one line that names the database by its URL with the
/// password masked ([`DatabaseUrl::redacted`](super::DatabaseUrl::redacted));
/// no message carries the password. Errors from
/// [`PgStore::open`](super::PgStore::open) leave the database as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgStoreError {
    /// No connection could be made: the server refused it or could not be
    /// reached in time, the host name does not resolve, the database does
    /// not exist, or the user or password was refused.
    #[error("cannot connect to the run database {url}: {reason}")]
    Connect {
        /// The database URL, password masked.
        url: String,
        /// What the driver or the server said.
        reason: String,
    },
    /// The database holds tables of another program: a `runs` table, but no
    /// `schema_version` table of ci-server's.
    #[error(
        "cannot use the run database {url}: it has a runs table but no ci-server \
         schema_version table (a database of another program?)"
    )]
    ForeignDatabase {
        /// The database URL, password masked.
        url: String,
    },
    /// The database was written by a newer ci-server whose schema this one
    /// does not know.
    #[error(
        "cannot use the run database {url}: its schema version {found} is newer than the \
         {supported} this ci-server supports; upgrade ci-server"
    )]
    NewerSchema {
        /// The database URL, password masked.
        url: String,
        /// The schema version in the database.
        found: i64,
        /// The highest version this build knows.
        supported: i64,
    },
    /// The database's character encoding is not UTF-8.
    #[error(
        "cannot use the run database {url}: its encoding is {encoding}; ci-server needs a \
         UTF8 database (CREATE DATABASE ... ENCODING 'UTF8')"
    )]
    Encoding {
        /// The database URL, password masked.
        url: String,
        /// The server's `server_encoding`.
        encoding: String,
    },
    /// A stored row could not be read back into a run (the database was
    /// edited by hand or by another program).
    #[error("run database {url} holds a damaged row: {detail}")]
    Corrupt {
        /// The database URL, password masked.
        url: String,
        /// What was wrong, and where.
        detail: String,
    },
    /// A write was refused: it carried lease term `held` (0: this server
    /// holds no lease) and the database's lease is at term `current`, so
    /// another server is the active one (see `crate::lease`).
    #[error(
        "run database {url}: write refused: this server's lease (term {held}) is not the \
         database's (term {current}); another server is active"
    )]
    Fenced {
        /// The database URL, password masked.
        url: String,
        /// The term the write carried.
        held: i64,
        /// The lease's term in the database.
        current: i64,
    },
    /// A value does not fit PostgreSQL's 64-bit signed integers.
    #[error("run database {url}: {what} = {value} is out of range for the store")]
    OutOfRange {
        /// The database URL, password masked.
        url: String,
        /// Which field.
        what: &'static str,
        /// The value that did not fit.
        value: u64,
    },
    /// A value holds a character PostgreSQL text cannot (NUL).
    #[error("run database {url}: {what} holds a NUL character, which PostgreSQL text cannot")]
    Nul {
        /// The database URL, password masked.
        url: String,
        /// Which field.
        what: String,
    },
    /// A run's `seq` is taken by another run.
    #[error("run database {url}: seq {seq} is taken by another run")]
    SeqTaken {
        /// The database URL, password masked.
        url: String,
        /// The `seq` asked for.
        seq: u64,
    },
    /// A statement failed, or the connection broke while one ran.
    #[error("run database {url}: {reason}")]
    Postgres {
        /// The database URL, password masked.
        url: String,
        /// What the driver or the server said, on one line.
        reason: String,
    },
    /// No connection of the pool could be had in time.
    #[error("run database {url}: no connection: {reason}")]
    Pool {
        /// The database URL, password masked.
        url: String,
        /// What the pool said.
        reason: String,
    },
}

/// A driver error on one line with its causes: the driver's own `Display`
/// says only `db error` or `error connecting to server`, and a server's
/// message may carry `DETAIL` and `HINT` lines. Neither the driver nor the
/// server puts the password in an error, so none is here.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    let text = if let Some(db) = error.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; DETAIL: {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; HINT: {hint}"));
        }
        text.push_str(&format!(" (SQLSTATE {})", db.code().code()));
        text
    } else {
        let mut parts = vec![error.to_string()];
        let mut cause = error.source();
        while let Some(inner) = cause {
            parts.push(inner.to_string());
            cause = inner.source();
        }
        parts.join(": ")
    };
    one_line(&text)
}

/// `text` with its line breaks turned into `; `.
pub(crate) fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
