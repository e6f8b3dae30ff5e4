//! [`SqliteStoreError`]: why opening or using the SQLite run database failed.

use std::path::PathBuf;

/// Why the SQLite store could not open its database or carry out an operation.
///
/// Every message is one line that names the database file. Errors from
/// [`SqliteStore::open`](super::SqliteStore::open) leave the file as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteStoreError {
    /// The directory that should hold the database does not exist (it is not created).
    #[error("cannot open run database {path}: directory {dir} does not exist")]
    MissingDirectory {
        /// The database path asked for.
        path: PathBuf,
        /// Its parent directory, which is missing.
        dir: PathBuf,
    },
    /// There is no file at the path (and none was created): reported by
    /// [`SqliteStore::inspect`](super::SqliteStore::inspect), which only
    /// looks at existing databases.
    #[error("run database {path} does not exist")]
    NotFound {
        /// The database path asked for.
        path: PathBuf,
    },
    /// The file is an SQLite database without a ci-server schema and
    /// without any table (an empty file, or one SQLite made but nothing
    /// wrote): reported by [`SqliteStore::inspect`](super::SqliteStore::inspect).
    #[error("{path} is not a ci-server run database: it is empty")]
    Empty {
        /// The database path asked for.
        path: PathBuf,
    },
    /// The path names a directory, not a file.
    #[error("cannot open run database {path}: it is a directory")]
    IsADirectory {
        /// The database path asked for.
        path: PathBuf,
    },
    /// The file exists but is not an SQLite database.
    #[error("cannot open run database {path}: the file is not an SQLite database")]
    NotADatabase {
        /// The database path asked for.
        path: PathBuf,
    },
    /// The file is an SQLite database that some other program owns.
    #[error(
        "cannot open run database {path}: it is an SQLite database of another program \
         (it has tables but no ci-server schema)"
    )]
    ForeignDatabase {
        /// The database path asked for.
        path: PathBuf,
    },
    /// The database was written by a newer ci-server whose schema this one does not know.
    #[error(
        "cannot open run database {path}: its schema version {found} is newer than the \
         {supported} this ci-server supports; upgrade ci-server"
    )]
    NewerSchema {
        /// The database path asked for.
        path: PathBuf,
        /// The schema version in the file.
        found: i64,
        /// The highest version this build knows.
        supported: i64,
    },
    /// The file or its directory cannot be written (permissions, immutable file,
    /// read-only file system). SQLite needs to write the file and, beside it, its
    /// `-wal` and `-shm` files.
    #[error("cannot write run database {path} (or its -wal/-shm files beside it): {source}")]
    CannotWrite {
        /// The database path asked for.
        path: PathBuf,
        /// What SQLite or the file system said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored row could not be read back into a run (the file was damaged or
    /// edited by hand).
    #[error("run database {path} holds a damaged row: {detail}")]
    Corrupt {
        /// The database path.
        path: PathBuf,
        /// What was wrong, and where.
        detail: String,
    },
    /// A value does not fit SQLite's 64-bit signed integers.
    #[error("run database {path}: {what} = {value} is out of range for the store")]
    OutOfRange {
        /// The database path.
        path: PathBuf,
        /// Which field.
        what: &'static str,
        /// The value that did not fit.
        value: u64,
    },
    /// Checking the path on the file system failed.
    #[error("run database {path}: {source}")]
    Io {
        /// The database path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed (I/O error, full disk, a lock held too long by another process).
    #[error("run database {path}: {source}")]
    Sqlite {
        /// The database path.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The blocking task that talks to SQLite panicked or was cancelled.
    #[error("run database {path}: the database task failed: {detail}")]
    TaskFailed {
        /// The database path.
        path: PathBuf,
        /// The panic message or cancellation.
        detail: String,
    },
}
