//! [`SqliteStore`]: the durable [`RunStore`], one SQLite file with WAL.
//!
//! - [`schema`]: the tables, their versions, and the checks made at open.
//! - `rows`: the SQL behind each store method.
//! - [`SqliteStoreError`]: what can go wrong, each message naming the file.
//!
//! The store keeps one connection that writes and a few that only read
//! (`schema::READERS`), so the API's reads neither wait for the engine's
//! writes nor for each other (WAL lets each reader see the last committed
//! state while a write is in progress). Each sits behind a `std::sync::Mutex`.
//! Most calls run inside `tokio::task::spawn_blocking`, so that they never
//! hold up an async worker thread; a read takes the first reader that is
//! free, or waits for the next in turn. Two kinds of short call run at once
//! on the calling thread instead, and only when their connection is free
//! (never waiting for it): a read of one run or one page of heads, and a
//! write of at most a few runs (the engine's changes of one turn). Each
//! costs tens to a few hundred microseconds, less than the hand-off to a
//! blocking thread and back.

mod error;
mod rows;
pub mod schema;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use async_trait::async_trait;
use ci_engine::{CommitId, Run, RunPage, RunQuery, RunStore, StoreError};
use rusqlite::Connection;
use rusqlite::types::Value;

pub use error::SqliteStoreError;
use rows::Fault;
pub use schema::SCHEMA_VERSION;

/// A [`RunStore`] in an SQLite database file.
///
/// # Durability
///
/// The file is in WAL mode with `synchronous = NORMAL`. A write transaction is
/// committed once its pages are appended to the `-wal` file, that is, handed to
/// the operating system; the `-wal` file is synced to disk at checkpoints only.
///
/// - **Process crash** (kill -9, panic, out of memory): nothing is lost. When
///   [`update_run`](RunStore::update_run) returns, the kernel holds the bytes and
///   the next open replays them. This is what the [`RunStore`] contract asks.
/// - **Power loss or kernel crash**: the last transactions before the failure
///   (those since the last checkpoint's sync) may be lost, but the database stays
///   consistent, and what is lost is always a *suffix* of the history, never a
///   transaction in the middle: WAL frames are checksummed in a chain and only
///   replayed up to the first bad one. The engine then restarts from a slightly
///   older but coherent state: a step whose result was lost is recorded as still
///   running, marked interrupted and run again.
///
/// `synchronous = FULL` would sync the `-wal` at every commit so that power loss
/// loses nothing, at the price of one `fsync` per step event (every attempt start
/// and end). For a CI record whose lost tail is re-created by re-running steps,
/// NORMAL is the better trade.
///
/// Each call runs in one transaction: an update replaces the run, its steps and
/// attempts atomically, and a list's total and page come from one snapshot.
///
/// # Generation
///
/// [`generation`](RunStore::generation) counts the writes this store made
/// (the API keeps listings while it stays the same). It does not see a
/// second process writing the same file: one process writes a database file
/// at a time (the active server, which holds the file's lease); a standby
/// reads it through a store that reports no generation.
///
/// # `:memory:`
///
/// The path is always a file path (no URI, no `:memory:` special case): a server
/// that wants an in-memory store uses [`ci_engine::MemoryStore`].
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    writer: Mutex<Writer>,
    readers: Vec<Mutex<Connection>>,
    /// Which reader a read waits for when none is free (round robin).
    next_reader: AtomicUsize,
    /// Bumped after every write of runs ([`RunStore::generation`]).
    generation: AtomicU64,
}

/// The writing connection, and what it last wrote of the runs in progress.
struct Writer {
    conn: Connection,
    /// The state last written of runs that are not finished, so that an
    /// update writes only the rows that changed (`rows::update_run`). At
    /// most [`KEPT_RUNS`] runs, none with more than [`KEPT_LOG_BYTES`] of
    /// logs; a run missing here is written whole, which is always correct.
    last: HashMap<CommitId, Run>,
}

/// How many runs [`Writer::last`] keeps: more than the engine's default
/// window of active runs.
const KEPT_RUNS: usize = 1024;

/// A run with more logs than this is not kept in [`Writer::last`]: comparing
/// them would cost about what writing them does, and the memory is better
/// left unspent.
const KEPT_LOG_BYTES: usize = 64 * 1024;

impl Writer {
    /// Notes that `runs` were written (and committed).
    fn remember(&mut self, runs: Vec<Run>) {
        for run in runs {
            let logs: usize = run
                .steps
                .iter()
                .flat_map(|s| &s.attempts)
                .map(|a| a.logs.len())
                .sum();
            if run.status.is_terminal() || logs > KEPT_LOG_BYTES {
                self.last.remove(run.id());
                continue;
            }
            if self.last.len() >= KEPT_RUNS && !self.last.contains_key(run.id()) {
                self.last.clear();
            }
            self.last.insert(run.id().clone(), run);
        }
    }
}

impl Shared {
    /// Marks the stored state as changed ([`RunStore::generation`]): called
    /// once a write transaction has committed or failed (on the blocking
    /// thread when the write went there, so it happens even when the caller
    /// stopped waiting).
    fn written(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The writing connection, locked, if no one holds it.
    fn free_writer(&self) -> Option<MutexGuard<'_, Writer>> {
        match self.writer.try_lock() {
            Ok(writer) => Some(writer),
            // A panic inside a write drops its transaction, which rolls back.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The first reading connection that is free, if any.
    fn free_reader(&self) -> Option<MutexGuard<'_, Connection>> {
        self.readers.iter().find_map(|r| r.try_lock().ok())
    }

    /// A free reading connection, or (all busy) the next one in turn, locked.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        if let Some(conn) = self.free_reader() {
            return conn;
        }
        let turn = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        // A panic inside a read drops its transaction, which rolls back, so a
        // poisoned connection is still in a clean state.
        self.readers[turn]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file if it does not exist (its
    /// directory must), applies the schema migrations it lacks (in one
    /// transaction) and turns WAL on.
    ///
    /// Refuses, leaving the file exactly as it was: a missing directory
    /// ([`MissingDirectory`](SqliteStoreError::MissingDirectory), nothing is
    /// created), a directory, a file that is not SQLite, an SQLite file of another
    /// program, a schema newer than [`SCHEMA_VERSION`], and a file or directory that
    /// cannot be written ([`CannotWrite`](SqliteStoreError::CannotWrite)).
    pub async fn open(path: &Path) -> Result<Self, SqliteStoreError> {
        let owned = path.to_owned();
        let (writer, readers) = tokio::task::spawn_blocking(move || schema::open(&owned))
            .await
            .map_err(|e| SqliteStoreError::TaskFailed {
                path: path.to_owned(),
                detail: e.to_string(),
            })??;
        tracing::info!(path = %path.display(), "opened run database");
        Ok(Self {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                writer: Mutex::new(Writer {
                    conn: writer,
                    last: HashMap::new(),
                }),
                readers: readers.into_iter().map(Mutex::new).collect(),
                next_reader: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// Checks, without writing anything, that `path` is an existing ci-server
    /// run database this build can [`open`](Self::open), and returns its
    /// schema version (lower than [`SCHEMA_VERSION`]: `open` will upgrade
    /// it). For tools that must not create a database where none was:
    /// `open` would make a new one at a missing path or in an empty file.
    ///
    /// # Errors
    /// [`NotFound`](SqliteStoreError::NotFound) for a path with no file,
    /// [`Empty`](SqliteStoreError::Empty) for an empty database, and the
    /// refusals of `open` that need no writing (a directory, not SQLite,
    /// another program's database, a newer schema).
    pub async fn inspect(path: &Path) -> Result<i64, SqliteStoreError> {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || schema::inspect(&owned))
            .await
            .map_err(|e| SqliteStoreError::TaskFailed {
                path: path.to_owned(),
                detail: e.to_string(),
            })?
    }

    /// The keys of every value saved with [`save_state`](RunStore::save_state),
    /// in byte order (the values are read with
    /// [`load_state`](RunStore::load_state)).
    ///
    /// # Errors
    /// A [`SqliteStoreError`] when the database cannot be read.
    pub async fn state_keys(&self) -> Result<Vec<String>, SqliteStoreError> {
        self.run(Side::Read, rows::state_keys)
            .await
            .map_err(|f| self.backend_error(f))
    }

    /// The database file's path, as given to [`open`](Self::open).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// SQLite's `EXPLAIN QUERY PLAN` lines for the statements behind
    /// [`list_runs`](RunStore::list_runs) with `query`. For diagnostics and
    /// tests: each should name an index and none should need a temporary
    /// B-tree to sort.
    pub async fn list_query_plan(&self, query: &RunQuery) -> Result<ListPlans, SqliteStoreError> {
        let sql = rows::list_sql(query);
        let page = sql.page_params(
            rows::highest_listed(query.after),
            query.limit,
            u64::try_from(query.offset).unwrap_or(u64::MAX),
        );
        self.run(Side::Read, move |conn| {
            Ok(ListPlans {
                page: rows::explain(conn, &sql.page, &page)?,
                count: rows::explain(conn, &sql.count, &sql.count_params)?,
                buckets: rows::explain(conn, &sql.buckets, &sql.bucket_params(i64::MAX))?,
                range_count: rows::explain(conn, &sql.range_count, &sql.range_params(0, 1023))?,
            })
        })
        .await
        .map_err(|f| self.backend_error(f))
    }

    /// SQLite's `EXPLAIN QUERY PLAN` lines for the prefix lookup behind
    /// [`get_run`](RunStore::get_run) (a range on the id index, not a scan).
    pub async fn prefix_query_plan(&self, prefix: &str) -> Result<Vec<String>, SqliteStoreError> {
        let upper = rows::prefix_upper_bound(prefix);
        let mut params = vec![Value::Text(prefix.to_owned())];
        params.extend(upper.clone().map(Value::Text));
        let sql = rows::prefix_sql("count(*)", upper.is_some());
        self.run(Side::Read, move |conn| rows::explain(conn, &sql, &params))
            .await
            .map_err(|f| self.backend_error(f))
    }

    /// SQLite's `EXPLAIN QUERY PLAN` lines for the statement behind
    /// [`unfinished_after`](RunStore::unfinished_after): a range on the
    /// partial index `runs_unfinished`, with no sort.
    pub async fn unfinished_query_plan(&self) -> Result<Vec<String>, SqliteStoreError> {
        self.run(Side::Read, move |conn| {
            rows::explain(
                conn,
                &rows::unfinished_after_sql(),
                &[Value::Integer(0), Value::Integer(10)],
            )
        })
        .await
        .map_err(|f| self.backend_error(f))
    }

    /// Runs `f` with the reading or the writing connection, inside one
    /// transaction, committed if `f` succeeds: on a blocking thread, except
    /// a [`Side::ShortRead`] that finds a reader free, which runs at once on
    /// the calling thread (a point read costs tens of microseconds, less
    /// than handing it to another thread and back).
    async fn run<T, F>(&self, side: Side, f: F) -> Result<T, Fault>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Fault> + Send + 'static,
    {
        if matches!(side, Side::ShortRead)
            && let Some(mut conn) = self.shared.free_reader()
        {
            return in_transaction(&mut conn, rusqlite::TransactionBehavior::Deferred, f);
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || match side {
            Side::Read | Side::ShortRead => in_transaction(
                &mut shared.reader(),
                rusqlite::TransactionBehavior::Deferred,
                f,
            ),
            Side::Write => {
                let mut writer = shared.writer.lock().unwrap_or_else(PoisonError::into_inner);
                let result = in_transaction(
                    &mut writer.conn,
                    rusqlite::TransactionBehavior::Immediate,
                    f,
                );
                shared.written();
                result
            }
        })
        .await
        .map_err(|e| Fault::Corrupt(format!("the database task failed: {e}")))?
    }

    /// Replaces the stored state of `runs` in one transaction, writing for
    /// each only the rows that changed since this store last wrote it. A
    /// batch of at most [`INLINE_WRITE`] runs that finds the writer free is
    /// written at once on the calling thread, as a short read is: the
    /// engine writes a turn's changes this way, a few rows that cost less
    /// than handing them to a blocking thread and back. Larger batches, and
    /// any write that would wait for the writer, go to a blocking thread.
    async fn write_runs(&self, runs: Vec<Run>) -> Result<(), Fault> {
        if runs.len() <= INLINE_WRITE
            && let Some(mut writer) = self.shared.free_writer()
        {
            return write_kept(&self.shared, &mut writer, runs);
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let mut writer = shared.writer.lock().unwrap_or_else(PoisonError::into_inner);
            write_kept(&shared, &mut writer, runs)
        })
        .await
        .map_err(|e| Fault::Corrupt(format!("the database task failed: {e}")))?
    }

    fn backend_error(&self, fault: Fault) -> SqliteStoreError {
        let path = self.shared.path.clone();
        match fault {
            Fault::Sqlite(source) => SqliteStoreError::Sqlite { path, source },
            Fault::Corrupt(detail) => SqliteStoreError::Corrupt { path, detail },
            Fault::OutOfRange { what, value } => SqliteStoreError::OutOfRange { path, what, value },
            Fault::NotFound(id) => SqliteStoreError::Corrupt {
                path,
                detail: format!("run {id} vanished"),
            },
            Fault::Ambiguous { prefix, matches } => SqliteStoreError::Corrupt {
                path,
                detail: format!("{prefix} is ambiguous ({matches} runs)"),
            },
        }
    }

    fn store_error(&self, fault: Fault) -> StoreError {
        match fault {
            Fault::NotFound(id) => StoreError::NotFound(id),
            Fault::Ambiguous { prefix, matches } => StoreError::Ambiguous { prefix, matches },
            other => {
                let error = self.backend_error(other);
                tracing::warn!(%error, "run database operation failed");
                StoreError::Backend(Box::new(error))
            }
        }
    }
}

/// The query plans of a listing ([`SqliteStore::list_query_plan`]), one
/// `EXPLAIN QUERY PLAN` line per entry.
#[derive(Clone, Debug)]
pub struct ListPlans {
    /// The page itself, from its first `seq`.
    pub page: Vec<String>,
    /// The total.
    pub count: Vec<String>,
    /// The sums per bucket that place a deep `offset`.
    pub buckets: Vec<String>,
    /// The count of matches in the bucket a cursor cuts.
    pub range_count: Vec<String>,
}

/// The most runs [`SqliteStore::write_runs`] writes on the calling thread.
const INLINE_WRITE: usize = 8;

/// Writes `runs` in one transaction with the writer held by the caller,
/// only the rows that changed since the writer last kept each run; keeps
/// what it wrote, or forgets everything kept if the transaction failed.
fn write_kept(shared: &Shared, writer: &mut Writer, runs: Vec<Run>) -> Result<(), Fault> {
    let Writer { conn, last } = writer;
    let result = in_transaction(conn, rusqlite::TransactionBehavior::Immediate, |tx| {
        runs.iter()
            .try_for_each(|run| rows::update_run(tx, run, last.get(run.id())))
    });
    match result {
        Ok(()) => writer.remember(runs),
        // Rolled back: what the file holds is what was last kept.
        // Forgetting everything is the simple safe choice.
        Err(_) => writer.last.clear(),
    }
    shared.written();
    result
}

/// Which connection an operation takes, and where it runs.
#[derive(Clone, Copy)]
enum Side {
    /// A reader, on a blocking thread: reads of many runs (the engine's).
    Read,
    /// A reader, at once on the calling thread when one is free: the API's
    /// reads of one run or one page of heads.
    ShortRead,
    /// The writer, on a blocking thread.
    Write,
}

/// Runs `f` in a transaction of `conn`, committed if `f` succeeds and rolled
/// back otherwise. A panic inside `f` drops the transaction, which rolls
/// back, so a poisoned connection is still in a clean state.
fn in_transaction<T>(
    conn: &mut Connection,
    behavior: rusqlite::TransactionBehavior,
    f: impl FnOnce(&Connection) -> Result<T, Fault>,
) -> Result<T, Fault> {
    let tx = conn.transaction_with_behavior(behavior)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        let stored = self.insert_runs(std::slice::from_ref(run)).await?;
        Ok(stored.first().copied().unwrap_or(false))
    }

    async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, StoreError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let runs = runs.to_vec();
        self.run(Side::Write, move |c| {
            runs.iter()
                .map(|run| rows::insert_run(c, run))
                .collect::<Result<Vec<bool>, _>>()
        })
        .await
        .map_err(|f| self.store_error(f))
    }

    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        self.write_runs(vec![run.clone()])
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn update_runs(&self, runs: Vec<Run>) -> Result<(), StoreError> {
        self.write_runs(runs).await.map_err(|f| self.store_error(f))
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<Run, StoreError> {
        let id = id_or_prefix.to_owned();
        self.run(Side::ShortRead, move |c| rows::get_run(c, &id))
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        // Heads only is a short read; steps with their logs may be long.
        let side = if query.with_steps {
            Side::Read
        } else {
            Side::ShortRead
        };
        let query = query.clone();
        let (total, runs, next) = self
            .run(side, move |c| rows::list_runs(c, &query))
            .await
            .map_err(|f| self.store_error(f))?;
        Ok(RunPage { total, runs, next })
    }

    fn generation(&self) -> Option<u64> {
        Some(self.shared.generation.load(Ordering::Acquire))
    }

    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.run(Side::Read, rows::unfinished_runs)
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn unfinished_after(&self, from: u64, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.run(Side::Read, move |c| rows::unfinished_after(c, from, limit))
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        let id = id.as_str().to_owned();
        self.run(Side::Read, move |c| rows::has_run(c, &id))
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        self.run(Side::Read, rows::max_seq)
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.run(Side::Read, move |c| rows::load_state(c, &key))
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(Side::Write, move |c| rows::save_state(c, &key, &value))
            .await
            .map_err(|f| self.store_error(f))
    }
}
