//! The database's schema, its versions, and the checks made before anything is
//! written to a file that is opened.
//!
//! The schema version lives in `PRAGMA user_version` and the file is marked as
//! ours with `PRAGMA application_id`. `open` refuses (and leaves untouched) a
//! file that is not SQLite, belongs to another program, comes from a newer
//! ci-server or cannot be written; otherwise it turns WAL on and applies the
//! missing migrations in one transaction.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use tracing::info;

use super::SqliteStoreError;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 4;

/// `PRAGMA application_id` of a ci-server run database ("CIRS").
pub const APPLICATION_ID: i32 = 0x4349_5253;

/// How long a statement waits for a lock another connection or process holds
/// (a backup, an `sqlite3` shell) before it fails.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 4] = [V1, V2, V3, V4];

/// Version 1.
///
/// - `runs`: one row per run; `seq` is the rowid, so newest-first listing walks
///   the table backwards and `max(seq)` is one lookup. `id` is unique, so a
///   prefix lookup is a range on its index (`id >= ? AND id < ?`).
/// - `runs_by_status`: listing by status, newest first, without sorting.
/// - `run_branches`: one row per (run, branch) to list a branch newest first
///   through `run_branches_by_branch`; the commit's own ordered list of branches
///   is kept in `runs.branches` (JSON) so it comes back exactly.
/// - `steps`, `attempts`: a run's steps in pipeline order, and their attempts.
///   Child rows follow their run when its `seq` changes (`ON UPDATE CASCADE`).
/// - `engine_state`: small named values (a source's cursor).
const V1: &str = "
CREATE TABLE runs (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    status       TEXT    NOT NULL,
    branches     TEXT    NOT NULL,
    parents      TEXT    NOT NULL,
    summary      TEXT    NOT NULL,
    author       TEXT    NOT NULL,
    commit_time  INTEGER NOT NULL,
    failed_steps TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER
);
CREATE INDEX runs_by_status ON runs (status, seq);

CREATE TABLE run_branches (
    seq    INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE ON UPDATE CASCADE,
    branch TEXT    NOT NULL,
    PRIMARY KEY (seq, branch)
) WITHOUT ROWID;
CREATE INDEX run_branches_by_branch ON run_branches (branch, seq);

CREATE TABLE steps (
    seq      INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE ON UPDATE CASCADE,
    position INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    reason   TEXT,
    PRIMARY KEY (seq, position)
) WITHOUT ROWID;

CREATE TABLE attempts (
    seq                INTEGER NOT NULL,
    step               INTEGER NOT NULL,
    position           INTEGER NOT NULL,
    number             INTEGER NOT NULL,
    outcome            TEXT    NOT NULL,
    reason             TEXT,
    logs               TEXT    NOT NULL,
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER,
    duration_ms        INTEGER,
    runner_duration_ms INTEGER,
    PRIMARY KEY (seq, step, position),
    FOREIGN KEY (seq, step) REFERENCES steps (seq, position) ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE TABLE engine_state (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 2: every attempt names the runner of the pool it was sent to.
///
/// `attempts.runner` is the runner's id; it is `NULL` for attempts recorded
/// before version 2 (and reads back as "unknown"), so upgrading keeps every run.
const V2: &str = "
ALTER TABLE attempts ADD COLUMN runner TEXT;
";

/// Version 3: runs can be retried and cancelled from outside.
///
/// - `runs.retry_seq`: the queue position of the run's latest retry (`NULL`
///   until it is retried).
/// - `runs.actions`: every retry and cancel asked of the run (JSON: kind,
///   when, by whom), `[]` for runs recorded before version 3.
/// - `steps.budget_from`: the first attempt number of the step's current
///   round; 1 for runs recorded before version 3, which were never retried.
/// - `runs_unfinished`: the queued and running runs by queue position (a
///   retried run's `retry_seq`, else its `seq`), so the engine pages through
///   them without reading the others.
/// - `runs_by_retry_seq`: `max(retry_seq)` in one lookup.
/// - `run_counts`: how many runs have each status, over all runs (`branch`
///   is `''`, which no git branch can be) and per branch, kept by triggers in
///   the transaction of every change, so a listing's total is one or a few
///   lookups instead of a count over every run. Filled from the runs at the
///   migration.
const V3: &str = "
ALTER TABLE runs ADD COLUMN retry_seq INTEGER;
ALTER TABLE runs ADD COLUMN actions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE steps ADD COLUMN budget_from INTEGER NOT NULL DEFAULT 1;
CREATE INDEX runs_unfinished ON runs (coalesce(retry_seq, seq))
    WHERE status IN ('queued', 'running');
CREATE INDEX runs_by_retry_seq ON runs (retry_seq);

CREATE TABLE run_counts (
    branch TEXT    NOT NULL,
    status TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (branch, status)
) WITHOUT ROWID;
INSERT INTO run_counts (branch, status, n)
    SELECT '', status, count(*) FROM runs GROUP BY status;
INSERT INTO run_counts (branch, status, n)
    SELECT b.branch, r.status, count(*) FROM run_branches b JOIN runs r ON r.seq = b.seq
    GROUP BY b.branch, r.status;

CREATE TRIGGER run_counted AFTER INSERT ON runs BEGIN
    INSERT INTO run_counts (branch, status, n) VALUES ('', NEW.status, 1)
        ON CONFLICT (branch, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER run_recounted AFTER UPDATE OF status ON runs
    WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE run_counts SET n = n - 1
        WHERE status = OLD.status
          AND (branch = '' OR branch IN
              (SELECT branch FROM run_branches WHERE seq IN (OLD.seq, NEW.seq)));
    INSERT INTO run_counts (branch, status, n) VALUES ('', NEW.status, 1)
        ON CONFLICT (branch, status) DO UPDATE SET n = n + 1;
    INSERT INTO run_counts (branch, status, n)
        SELECT branch, NEW.status, 1 FROM run_branches WHERE seq IN (OLD.seq, NEW.seq)
        ON CONFLICT (branch, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER run_uncounted BEFORE DELETE ON runs BEGIN
    DELETE FROM run_branches WHERE seq = OLD.seq;
    UPDATE run_counts SET n = n - 1 WHERE branch = '' AND status = OLD.status;
END;
CREATE TRIGGER branch_counted AFTER INSERT ON run_branches BEGIN
    INSERT INTO run_counts (branch, status, n)
        SELECT NEW.branch, status, 1 FROM runs WHERE seq = NEW.seq AND true
        ON CONFLICT (branch, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER branch_uncounted AFTER DELETE ON run_branches BEGIN
    UPDATE run_counts SET n = n - 1
        WHERE branch = OLD.branch AND status = (SELECT status FROM runs WHERE seq = OLD.seq);
END;
";

/// How many `seq` values one row of `run_buckets` covers, as a power of two:
/// bucket `b` holds the runs with `seq >> BUCKET_BITS == b`. V4's triggers
/// spell it out as `>> 10`; a change needs a migration that rebuilds the table.
pub(super) const BUCKET_BITS: u32 = 10;

/// Version 4: a deep `offset` no longer walks the rows it skips.
///
/// `run_buckets` counts the runs of each status in each range of 1,024
/// `seq` values ([`BUCKET_BITS`]), over all runs (`branch` is `''`) and per
/// branch, kept by triggers like `run_counts`. A listing at `offset` k sums
/// buckets newest first until it passes k, then walks at most one bucket's
/// rows: about `n / 1024 + 1024` steps for n runs instead of k. Filled from
/// the runs at the migration.
const V4: &str = "
CREATE TABLE run_buckets (
    branch TEXT    NOT NULL,
    bucket INTEGER NOT NULL,
    status TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (branch, bucket, status)
) WITHOUT ROWID;
INSERT INTO run_buckets (branch, bucket, status, n)
    SELECT '', seq >> 10, status, count(*) FROM runs GROUP BY seq >> 10, status;
INSERT INTO run_buckets (branch, bucket, status, n)
    SELECT b.branch, b.seq >> 10, r.status, count(*)
    FROM run_branches b JOIN runs r ON r.seq = b.seq
    GROUP BY b.branch, b.seq >> 10, r.status;

CREATE TRIGGER run_bucketed AFTER INSERT ON runs BEGIN
    INSERT INTO run_buckets (branch, bucket, status, n) VALUES ('', NEW.seq >> 10, NEW.status, 1)
        ON CONFLICT (branch, bucket, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER run_rebucketed AFTER UPDATE OF seq, status ON runs
    WHEN OLD.status IS NOT NEW.status OR OLD.seq IS NOT NEW.seq
BEGIN
    UPDATE run_buckets SET n = n - 1
        WHERE bucket = OLD.seq >> 10 AND status = OLD.status
          AND (branch = '' OR branch IN
              (SELECT branch FROM run_branches WHERE seq IN (OLD.seq, NEW.seq)));
    INSERT INTO run_buckets (branch, bucket, status, n) VALUES ('', NEW.seq >> 10, NEW.status, 1)
        ON CONFLICT (branch, bucket, status) DO UPDATE SET n = n + 1;
    INSERT INTO run_buckets (branch, bucket, status, n)
        SELECT branch, NEW.seq >> 10, NEW.status, 1 FROM run_branches
        WHERE seq IN (OLD.seq, NEW.seq) AND true
        ON CONFLICT (branch, bucket, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER run_unbucketed BEFORE DELETE ON runs BEGIN
    UPDATE run_buckets SET n = n - 1
        WHERE branch = '' AND bucket = OLD.seq >> 10 AND status = OLD.status;
END;
CREATE TRIGGER branch_bucketed AFTER INSERT ON run_branches BEGIN
    INSERT INTO run_buckets (branch, bucket, status, n)
        SELECT NEW.branch, NEW.seq >> 10, status, 1 FROM runs WHERE seq = NEW.seq AND true
        ON CONFLICT (branch, bucket, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER branch_unbucketed AFTER DELETE ON run_branches BEGIN
    UPDATE run_buckets SET n = n - 1
        WHERE branch = OLD.branch AND bucket = OLD.seq >> 10
          AND status = (SELECT status FROM runs WHERE seq = OLD.seq);
END;
";

/// Opens `path` for the store: the writing connection (schema up to date, WAL
/// on) and [`READERS`] reading ones (`query_only`).
pub(super) fn open(path: &Path) -> Result<(Connection, Vec<Connection>), SqliteStoreError> {
    check_path(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut writer = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;

    // Nothing below writes until every check has passed. SQLite falls back to
    // read-only when it cannot open the file for writing; refuse that first,
    // before reading creates any -shm file beside it.
    if writer
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|e| classify(path, e))?
    {
        return Err(SqliteStoreError::CannotWrite {
            path: path.to_owned(),
            source: "the file can only be opened read-only".into(),
        });
    }
    let header = read_header(&writer).map_err(|e| classify(path, e))?;
    check_header(path, &header)?;

    configure(path, &writer)?;
    migrate(path, &mut writer)?;

    let readers = (0..READERS)
        .map(|_| {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|c| {
                c.busy_timeout(BUSY_TIMEOUT)?;
                c.pragma_update(None, "query_only", true)?;
                Ok(c)
            })
            .map_err(|e| classify(path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((writer, readers))
}

/// Checks that `path` is an existing ci-server run database this build can
/// open, writing nothing (no file is created, no schema applied), and
/// returns its schema version: lower than [`SCHEMA_VERSION`] means
/// [`open`] would upgrade it.
///
/// Refuses a path with no file, a directory, a file that is not SQLite, an
/// SQLite file that holds no ci-server schema (one of another program, or an
/// empty one) and a schema newer than this build's.
pub(super) fn inspect(path: &Path) -> Result<i64, SqliteStoreError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(SqliteStoreError::IsADirectory {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SqliteStoreError::NotFound {
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(SqliteStoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    }
    // Without SQLITE_OPEN_CREATE: a file removed since the check above is
    // not made again.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| conn.pragma_update(None, "query_only", true))
        .map_err(|e| classify(path, e))?;
    let header = read_header(&conn).map_err(|e| classify(path, e))?;
    check_header(path, &header)?;
    if header.application_id != APPLICATION_ID {
        return Err(SqliteStoreError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(header.version)
}

/// Reading connections of a store: WAL lets each read its own snapshot
/// while the writer writes, so this many reads run at once.
pub(super) const READERS: usize = 4;

/// Refuses a path that is a directory or whose directory is missing, before
/// SQLite gets a chance to create anything.
fn check_path(path: &Path) -> Result<(), SqliteStoreError> {
    let io = |source| SqliteStoreError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(SqliteStoreError::IsADirectory {
            path: path.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(SqliteStoreError::MissingDirectory {
                    path: path.to_owned(),
                    dir: dir.to_owned(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(SqliteStoreError::MissingDirectory {
                        path: path.to_owned(),
                        dir: dir.to_owned(),
                    })
                }
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

/// What the file says about itself.
struct Header {
    application_id: i32,
    version: i64,
    objects: i64,
}

fn read_header(conn: &Connection) -> rusqlite::Result<Header> {
    Ok(Header {
        application_id: conn.pragma_query_value(None, "application_id", |r| r.get(0))?,
        version: conn.pragma_query_value(None, "user_version", |r| r.get(0))?,
        objects: conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?,
    })
}

fn check_header(path: &Path, h: &Header) -> Result<(), SqliteStoreError> {
    let ours = h.application_id == APPLICATION_ID;
    if !ours && (h.application_id != 0 || h.objects > 0 || h.version != 0) {
        return Err(SqliteStoreError::ForeignDatabase {
            path: path.to_owned(),
        });
    }
    if h.version > SCHEMA_VERSION {
        return Err(SqliteStoreError::NewerSchema {
            path: path.to_owned(),
            found: h.version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// WAL, `synchronous = NORMAL` (see [`SqliteStore`](super::SqliteStore) for
/// why), foreign keys, and a busy timeout.
fn configure(path: &Path, conn: &Connection) -> Result<(), SqliteStoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path, e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| classify(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteStoreError::CannotWrite {
            path: path.to_owned(),
            source: format!("SQLite would not switch the file to WAL mode (it stayed in {mode})")
                .into(),
        });
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .and_then(|()| conn.pragma_update(None, "foreign_keys", true))
        .map_err(|e| classify(path, e))
}

/// Applies the missing migrations and stamps the version, all in one
/// transaction: a crash half-way leaves the old version.
fn migrate(path: &Path, conn: &mut Connection) -> Result<(), SqliteStoreError> {
    let sqlite = |source| SqliteStoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite)?;
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| classify(path, e))?;
    // Another process may have migrated between the check and the lock.
    let header = read_header(&tx).map_err(sqlite)?;
    check_header(path, &header)?;
    let from = usize::try_from(header.version).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.execute_batch(sql).map_err(|e| classify(path, e))?;
        info!(path = %path.display(), from = i, to = i + 1, "migrated run database schema");
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(sqlite)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sqlite)?;
    tx.commit().map_err(|e| classify(path, e))
}

/// Names an SQLite failure met while opening in the terms of [`SqliteStoreError`].
fn classify(path: &Path, e: rusqlite::Error) -> SqliteStoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => SqliteStoreError::NotADatabase {
            path: path.to_owned(),
        },
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            SqliteStoreError::CannotWrite {
                path: path.to_owned(),
                source: Box::new(e),
            }
        }
        _ => SqliteStoreError::Sqlite {
            path: path.to_owned(),
            source: e,
        },
    }
}
