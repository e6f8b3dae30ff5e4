//! [`PgStore`]: the [`RunStore`] in a PostgreSQL database, which several
//! ci-server processes (on several machines) may share.
//!
//! - [`DatabaseUrl`]: the `postgres://` URL, checked, its password kept out of
//!   every message.
//! - [`schema`]: the tables, their versions, and the checks made at open.
//! - `rows`: the SQL behind each store method.
//! - [`PgStoreError`]: what can go wrong, each message naming the database by
//!   its URL with the password masked.
//!
//! The driver is `tokio-postgres` (asynchronous: no blocking thread per
//! query) with a `deadpool-postgres` pool of connections; each connection
//! prepares a statement once and keeps it.

mod bulk;
mod error;
mod rows;
pub mod schema;
mod url;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ci_engine::{CommitId, Run, RunPage, RunQuery, RunStore, StoreError};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, Transaction,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tracing::{debug, info, warn};

pub use error::PgStoreError;
#[cfg(feature = "server")]
pub(crate) use error::describe as describe_error;
use rows::Fault;
pub use schema::SCHEMA_VERSION;
pub use url::{DatabaseUrl, DatabaseUrlError, is_postgres_url, redact, url_scheme};

/// How many connections a store keeps open at most.
pub const POOL_SIZE: usize = 8;

/// How long a connection attempt may take when the URL sets no
/// `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an operation waits for a free connection of the pool.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How long PostgreSQL lets a connection of the store sit idle inside a
/// transaction before it ends the session. A ci-server frozen (SIGSTOP) or
/// cut off in the middle of a write holds the write lock ([`WRITE_LOCK`]),
/// which the standby taking over needs; this is how long it can hold it.
/// The store's transactions send their statements back to back, so a healthy
/// server never comes near it.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(2);

/// [`PgStore::fence`] never called: writes are not checked against a lease.
const UNFENCED: i64 = -1;

/// How many times a write is tried when PostgreSQL aborts it for a deadlock
/// or a serialization failure: it is rolled back whole, so trying again is
/// safe. [`WRITE_LOCK`] leaves none to expect; this is a second line.
const WRITE_TRIES: u32 = 5;

/// The key of the transaction-scoped advisory lock every write takes first
/// ("CIRW"): writes to one database, from every process, run one at a time,
/// as the SQLite store's single writer does. Without it, two writers that
/// change the status of runs in opposite orders lock their rows and the kept
/// counts (`run_counts`) in opposite orders and deadlock.
pub const WRITE_LOCK: i64 = 0x4349_5257;

/// A [`RunStore`] in a PostgreSQL database.
///
/// # Contract
///
/// Everything [`RunStore`] promises, with these specifics:
///
/// - Every write ([`insert_run`](RunStore::insert_run),
///   [`update_run`](RunStore::update_run), [`update_runs`](RunStore::update_runs),
///   [`save_state`](RunStore::save_state)) is one transaction, committed
///   before the call returns: all of it or none. Writes to one database run
///   one at a time, whichever process makes them ([`WRITE_LOCK`]). A write
///   PostgreSQL aborts for a deadlock or a serialization failure is tried
///   again, up to five times; a write whose connection breaks is not (its
///   commit may or may not have happened) and returns an error.
/// - Durability is the server's: with PostgreSQL's default
///   `synchronous_commit = on`, a write that returned survives a crash of
///   ci-server and of the database server.
/// - A listing's total and page come from one snapshot (a read-only
///   `REPEATABLE READ` transaction), and so does a run read by id.
/// - Totals are read from counts kept by triggers (`run_counts`), not counted
///   over the runs. A deep `offset` walks the index entries it skips; a
///   cursor ([`RunQuery::after`]) does not.
/// - Text PostgreSQL cannot hold (NUL) is stored where it comes from outside
///   (logs, reasons, commit summaries and authors, saved values are `bytea`);
///   a NUL in an id, a branch, a step name or a runner id is refused with an
///   error, and looking one up finds nothing.
///
/// # Generation
///
/// [`generation`](RunStore::generation) is `None`: several ci-server
/// processes may write one database, and this one cannot see their writes,
/// so callers keep no answers (no listing cache).
///
/// # Connections
///
/// A pool of at most [`POOL_SIZE`] connections, opened as needed; one that
/// the server closed is replaced. No TLS: use `sslmode=disable` (or leave the
/// default `prefer`) and keep the database on a trusted network or a Unix
/// socket.
pub struct PgStore {
    pool: Pool,
    url: String,
    /// The lease term writes carry: [`UNFENCED`], 0 (fenced, holding no
    /// lease: every write refused), or the term held.
    term: Arc<AtomicI64>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A boxed future of a piece of work in a transaction.
type TxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Fault>> + Send + 'a>>;

impl PgStore {
    /// Connects to the database at `url`, checks it and applies the schema
    /// migrations it lacks (in one transaction, under an advisory lock, so
    /// several servers may start at once).
    ///
    /// # Errors
    /// [`PgStoreError::Connect`] when no connection can be made (refused,
    /// unreachable within the connect timeout, unknown database, a user or
    /// password the server refuses); [`ForeignDatabase`](PgStoreError::ForeignDatabase),
    /// [`NewerSchema`](PgStoreError::NewerSchema) and
    /// [`Encoding`](PgStoreError::Encoding) for a database it will not use,
    /// which is left as it was.
    pub async fn open(url: &DatabaseUrl) -> Result<Self, PgStoreError> {
        let redacted = url.redacted();
        let mut config = url.config().clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("ci-server");
        }
        let idle = format!(
            "-c idle_in_transaction_session_timeout={}",
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        let options = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {idle}"),
            _ => idle,
        };
        config.options(&options);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| PgStoreError::Pool {
                url: redacted.clone(),
                reason: e.to_string(),
            })?;
        let mut client = pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => PgStoreError::Connect {
                url: redacted.clone(),
                reason: error::describe(&e),
            },
            other => PgStoreError::Pool {
                url: redacted.clone(),
                reason: error::one_line(&other.to_string()),
            },
        })?;
        schema::migrate(&mut client, &redacted).await?;
        drop(client);
        info!(url = %redacted, "opened run database");
        Ok(Self {
            pool,
            url: redacted,
            term: Arc::new(AtomicI64::new(UNFENCED)),
        })
    }

    /// Fences this store's writes by the lease of `ci_lease` (see
    /// `crate::lease`): from now on every write first reads the lease's term
    /// (under the write lock, which a takeover takes too) and is refused
    /// with [`StoreError::Fenced`], changing nothing, unless it is `term`.
    /// `None`: this server holds no lease, and every write is refused.
    ///
    /// A store that is never fenced writes unchecked (one server, tests).
    pub fn fence(&self, term: Option<u64>) {
        let value = term.and_then(|t| i64::try_from(t).ok()).unwrap_or(0);
        self.term.store(value, Ordering::Release);
    }

    /// The term writes carry now (see [`fence`](Self::fence)).
    fn held_term(&self) -> i64 {
        self.term.load(Ordering::Acquire)
    }

    /// The database's URL, its password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// PostgreSQL's `EXPLAIN` lines for the statement that selects a page of
    /// [`list_runs`](RunStore::list_runs) with `query`'s filters. For
    /// diagnostics and tests: each should walk an index, none should sort.
    ///
    /// # Errors
    /// A [`PgStoreError`] when the statement cannot be explained.
    pub async fn list_query_plan(&self, query: &RunQuery) -> Result<Vec<String>, PgStoreError> {
        let sql = rows::page_sql(query);
        let mut args = Vec::new();
        if let Some(branch) = &query.branch {
            args.push(sql_literal(branch));
        }
        if let Some(status) = query.status {
            args.push(sql_literal(status.as_str()));
        }
        args.extend(["100".to_owned(), "20".to_owned(), "0".to_owned()]);
        self.explain(&sql, &args).await
    }

    /// PostgreSQL's `EXPLAIN` lines for the statement behind
    /// [`unfinished_after`](RunStore::unfinished_after): a range on the
    /// partial index `runs_unfinished`, with no sort.
    ///
    /// # Errors
    /// A [`PgStoreError`] when the statement cannot be explained.
    pub async fn unfinished_query_plan(&self) -> Result<Vec<String>, PgStoreError> {
        self.explain(
            &rows::unfinished_after_sql(),
            &["0".to_owned(), "10".to_owned()],
        )
        .await
    }

    /// `EXPLAIN` of `sql` with its parameters replaced by `args` (SQL
    /// literals), so the planner sees values as a custom plan would.
    async fn explain(&self, sql: &str, args: &[String]) -> Result<Vec<String>, PgStoreError> {
        let mut sql = sql.to_owned();
        // Highest first, so that `$1` does not match the start of `$10`.
        for (i, arg) in args.iter().enumerate().rev() {
            sql = sql.replace(&format!("${}", i + 1), arg);
        }
        let client = self.client().await.map_err(|f| self.backend_error(f))?;
        let rows = client
            .query(&format!("EXPLAIN {sql}"), &[])
            .await
            .map_err(|e| self.backend_error(Fault::from(e)))?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| self.backend_error(Fault::from(e)))
    }

    /// A connection of the pool.
    async fn client(&self) -> Result<Object, Fault> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => Fault::Postgres(e),
            other => Fault::Pool(error::one_line(&other.to_string())),
        })
    }

    /// Runs `f` in a read-only `REPEATABLE READ` transaction: every
    /// statement of it sees one snapshot.
    async fn read<A, T, F>(&self, arg: &A, f: F) -> Result<T, StoreError>
    where
        A: Sync + ?Sized,
        T: Send,
        F: for<'a> Fn(&'a Transaction<'a>, &'a A) -> TxFuture<'a, T> + Send + Sync,
    {
        let result = async {
            let mut client = self.client().await?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let value = f(&tx, arg).await?;
            tx.commit().await?;
            Ok(value)
        }
        .await;
        result.map_err(|f| self.store_error(f))
    }

    /// Runs `f` in a transaction and commits it, trying again (from a fresh
    /// transaction) when PostgreSQL aborts it for a deadlock or a
    /// serialization failure.
    async fn write<A, T, F>(&self, what: &'static str, arg: &A, f: F) -> Result<T, StoreError>
    where
        A: Sync + ?Sized,
        T: Send,
        F: for<'a> Fn(&'a Transaction<'a>, &'a A) -> TxFuture<'a, T> + Send + Sync,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let result = async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let locked = async {
                    tx.execute(
                        &tx.prepare_cached("SELECT pg_advisory_xact_lock($1)")
                            .await?,
                        &[&WRITE_LOCK],
                    )
                    .await?;
                    let held = self.held_term();
                    if held != UNFENCED {
                        let current: i64 = tx
                            .query_one(
                                &tx.prepare_cached("SELECT term FROM ci_lease WHERE id = 1")
                                    .await?,
                                &[],
                            )
                            .await?
                            .try_get(0)?;
                        if held != current {
                            return Err(Fault::Fenced { held, current });
                        }
                    }
                    f(&tx, arg).await
                };
                match locked.await {
                    Ok(value) => {
                        tx.commit().await?;
                        Ok(value)
                    }
                    Err(fault) => {
                        // A failed rollback leaves the connection to the pool's
                        // check; the fault is what the caller needs.
                        if let Err(e) = tx.rollback().await {
                            debug!(error = %error::describe(&e), "rollback failed");
                        }
                        Err(fault)
                    }
                }
            }
            .await;
            match result {
                Err(Fault::Postgres(e)) if tries < WRITE_TRIES && is_transient(&e) => {
                    debug!(what, tries, error = %error::describe(&e), "write aborted; trying again");
                }
                other => return other.map_err(|f| self.store_error(f)),
            }
        }
    }

    fn backend_error(&self, fault: Fault) -> PgStoreError {
        let url = self.url.clone();
        match fault {
            Fault::Postgres(e) => PgStoreError::Postgres {
                url,
                reason: error::describe(&e),
            },
            Fault::Pool(reason) => PgStoreError::Pool { url, reason },
            Fault::Corrupt(detail) => PgStoreError::Corrupt { url, detail },
            Fault::OutOfRange { what, value } => PgStoreError::OutOfRange { url, what, value },
            Fault::Nul(what) => PgStoreError::Nul { url, what },
            Fault::SeqTaken(seq) => PgStoreError::SeqTaken { url, seq },
            Fault::NotFound(id) => PgStoreError::Corrupt {
                url,
                detail: format!("run {id} vanished"),
            },
            Fault::Ambiguous { prefix, matches } => PgStoreError::Corrupt {
                url,
                detail: format!("{prefix} is ambiguous ({matches} runs)"),
            },
            Fault::Fenced { held, current } => PgStoreError::Fenced { url, held, current },
        }
    }

    fn store_error(&self, fault: Fault) -> StoreError {
        match fault {
            Fault::NotFound(id) => StoreError::NotFound(id),
            Fault::Ambiguous { prefix, matches } => StoreError::Ambiguous { prefix, matches },
            Fault::Fenced { held, current } => {
                let error = PgStoreError::Fenced {
                    url: self.url.clone(),
                    held,
                    current,
                };
                warn!(%error, "write refused");
                StoreError::Fenced(error.to_string())
            }
            other => {
                let error = self.backend_error(other);
                warn!(%error, "run database operation failed");
                StoreError::Backend(Box::new(error))
            }
        }
    }
}

/// Whether PostgreSQL aborted a transaction that may succeed when tried
/// again: a deadlock or a serialization failure.
fn is_transient(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// `text` as an SQL string literal.
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[async_trait]
impl RunStore for PgStore {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        let stored = self.insert_runs(std::slice::from_ref(run)).await?;
        Ok(stored.first().copied().unwrap_or(false))
    }

    async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, StoreError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        self.write("insert_runs", runs, |tx, runs| {
            Box::pin(rows::insert_runs(tx, runs))
        })
        .await
    }

    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        self.write("update_run", run, |tx, run| {
            Box::pin(rows::update_run(tx, run))
        })
        .await
    }

    async fn update_runs(&self, runs: Vec<Run>) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        self.write("update_runs", &runs[..], |tx, runs| {
            Box::pin(async move {
                for run in runs {
                    rows::update_run(tx, run).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<Run, StoreError> {
        self.read(id_or_prefix, |tx, id| Box::pin(rows::get_run(tx, id)))
            .await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let (total, runs, next) = self
            .read(query, |tx, query| Box::pin(rows::list_runs(tx, query)))
            .await?;
        Ok(RunPage { total, runs, next })
    }

    /// `None`: other processes may write the same database, and this store
    /// cannot see their writes, so no answer may be kept.
    fn generation(&self) -> Option<u64> {
        None
    }

    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.read(&(), |tx, ()| Box::pin(rows::unfinished_runs(tx)))
            .await
    }

    async fn unfinished_after(&self, from: u64, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.read(&(from, limit), |tx, &(from, limit)| {
            Box::pin(rows::unfinished_after(tx, from, limit))
        })
        .await
    }

    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        let client = self.client().await.map_err(|f| self.store_error(f))?;
        rows::has_run(&client, id.as_str())
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        let client = self.client().await.map_err(|f| self.store_error(f))?;
        rows::max_seq(&client)
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await.map_err(|f| self.store_error(f))?;
        rows::load_state(&client, key)
            .await
            .map_err(|f| self.store_error(f))
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write("save_state", &(key, value), |tx, &(key, value)| {
            Box::pin(rows::save_state(tx, key, value))
        })
        .await
    }
}
