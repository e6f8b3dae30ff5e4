//! `ci-server migrate-store --from FILE --to URL`: copies every run and every
//! saved state value of a SQLite run database into an empty PostgreSQL one.
//!
//! The copy goes through the two stores' own code: runs are read a batch at
//! a time with [`RunStore::list_runs`] (a cursor, newest first, steps and
//! logs included) and each batch is written in one transaction with
//! [`PgStore::copy_runs`], which writes each run as
//! [`RunStore::insert_run`] does: its `seq`, retry position and every other
//! field kept, the destination's triggers keeping its counts (`run_counts`)
//! as a server's writes would. Saved state values (the git source's
//! position) are listed with [`SqliteStore::state_keys`] and copied with
//! [`RunStore::load_state`] and [`RunStore::save_state`].
//!
//! Before anything is written it refuses, as a user error ([`EXIT_USAGE`]):
//! a source that is missing or not a ci-server run database, a source a
//! ci-server holds (the lock `FILE.lock` a server takes, which this holds in
//! turn until the end), and a destination that cannot be reached or already
//! holds runs. After the copy it checks that the destination's totals (all
//! runs and each status) and highest queue position equal the source's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ci_engine::{Run, RunQuery, RunStatus, RunStore, StoreError};
use clap::Parser;
use tracing::{info, warn};

use crate::cli::{
    DATABASE_URL_ENV, DatabaseSource, DbArg, Secret, database_source, database_url_in_env,
};
use crate::lease::{FileLease, LeaseError};
use crate::pg_store::{DatabaseUrl, DatabaseUrlError, PgStore, PgStoreError, url_scheme};
use crate::sqlite_store::{SCHEMA_VERSION, SqliteStore, SqliteStoreError};

/// The first argument that makes the binary migrate a store instead of
/// serving (see `main.rs`).
pub const SUBCOMMAND: &str = "migrate-store";

/// Exit code when the copy failed or its check found a difference.
pub const EXIT_FAILED: i32 = 1;

/// Exit code when the migration cannot start: something the user must fix.
pub const EXIT_USAGE: i32 = 2;

/// Runs read (and written) at a time when `--batch` is not given.
pub const DEFAULT_BATCH: u32 = 100;

/// The largest `--batch`.
pub const MAX_BATCH: u32 = 10_000;

/// A progress line is logged each time this many more runs are copied.
pub const PROGRESS_EVERY: u64 = 5_000;

const AFTER_HELP: &str = "\
Stop the ci-server that uses the SQLite file first. While copying, this
holds the lock a server takes on FILE.lock beside the file: it refuses a
file a server holds, and a server started on the file meanwhile is refused.
When it is done, start the server(s) with --db postgres://... or
CI_DATABASE_URL.

Copied: every run with its steps and attempts (logs, times, runner ids,
statuses, queue and retry positions, retry and cancel actions), and every
saved state value (such as the git source's position, so the server goes on
where it stopped). The listing totals PostgreSQL keeps are updated as runs
are written.

Nothing is written to the SQLite file, with one exception: a file from an
older ci-server is first upgraded to this version's schema, as a server
start would do (an older ci-server then refuses it; copy the file first if
you may go back). A missing or empty file is refused, never created.

The PostgreSQL database must exist; its tables are created if missing. It
must hold no run: one that does is refused with nothing written, so running
the migration twice never mixes two histories. Each batch of runs is written in one
transaction; a copy that fails half-way leaves the batches written so far:
empty the database (drop and create it again) before trying again.

Example:
  CI_DATABASE_URL=postgres://ci:PASSWORD@db.internal:5432/ci \\
    ci-server migrate-store --from /path/to/repo/.git/ci-server/runs.db

Progress goes to stderr (a log line every 5000 runs; RUST_LOG as for the
server); at the end one line on stdout tells how many runs, attempts and
state values were copied and how long it took.

Exit codes: 0 when everything was copied and the check agrees, 1 when the
copy failed or the check after it found a difference, 2 when it cannot
start (bad arguments, a missing or unusable SQLite file, a ci-server
holding it, a bad URL, a refused connection or password, a database of
another program or of a newer ci-server, a destination that holds runs).";

/// Copies every run (steps, attempts and logs included) and every saved state
/// value from a ci-server SQLite run database into an empty PostgreSQL
/// database, then checks that the destination's totals (all runs, each
/// status) and highest queue position equal the source's.
#[derive(Debug, Clone, Parser)]
#[command(name = "ci-server migrate-store", version, after_help = AFTER_HELP)]
pub struct MigrateArgs {
    /// The SQLite run database to copy from: the server's --db, by default
    /// `<git-dir>/ci-server/runs.db` inside the watched repository. It must
    /// exist.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,

    /// The PostgreSQL database to copy into,
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (it must exist and hold
    /// no run). Default: CI_DATABASE_URL. A URL shows on other users' `ps`:
    /// prefer CI_DATABASE_URL for one with a password.
    #[arg(long, value_name = "URL")]
    pub to: Option<DbArg>,

    /// Runs read from the file and written to PostgreSQL at a time, in one
    /// transaction (1 to 10000). Each batch is held in memory with its
    /// logs: lower it when runs have very large logs.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BATCH)))]
    pub batch: u32,

    /// The value of the environment variable CI_DATABASE_URL, used when
    /// `--to` is not given. Not an option: `main` reads it from the
    /// environment (tests set it directly).
    #[arg(skip)]
    pub database_url_env: Option<Secret>,
}

impl MigrateArgs {
    /// The destination: `--to`, else CI_DATABASE_URL (unset or empty:
    /// none), which must be a PostgreSQL URL.
    ///
    /// # Errors
    /// [`MigrateError::NoDestination`] or [`MigrateError::DestinationUrl`],
    /// whose message masks the password.
    pub fn destination(&self) -> Result<DatabaseUrl, MigrateError> {
        let url = match database_source("--to", self.to.as_ref(), self.database_url_env.as_ref()) {
            DatabaseSource::Option(url) => url,
            DatabaseSource::Env(env) => {
                return database_url_in_env(
                    env,
                    "expected postgres://USER:PASSWORD@HOST:PORT/DATABASE: the runs are copied \
                     into PostgreSQL",
                )
                .map_err(|source| MigrateError::DestinationUrl {
                    origin: DATABASE_URL_ENV,
                    source,
                });
            }
            DatabaseSource::Neither => return Err(MigrateError::NoDestination),
        };
        let origin = "--to";
        if let Some(scheme) = url_scheme(url)
            && !crate::pg_store::is_postgres_url(url)
        {
            return Err(MigrateError::DestinationUrl {
                origin,
                source: DatabaseUrlError {
                    url: crate::pg_store::redact(url),
                    reason: format!(
                        "the scheme {scheme} is not postgres or postgresql: the runs are \
                         copied into PostgreSQL"
                    ),
                },
            });
        }
        DatabaseUrl::parse(url).map_err(|source| MigrateError::DestinationUrl { origin, source })
    }
}

/// What a migration copied, and how long it took. `Display` is the line the
/// command prints at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The SQLite file copied from.
    pub from: PathBuf,
    /// The destination's URL, password masked.
    pub to: String,
    /// Runs copied.
    pub runs: u64,
    /// Attempts of those runs.
    pub attempts: u64,
    /// Saved state values copied.
    pub state_keys: u64,
    /// The highest queue position, the same in both (`None`: no run).
    pub max_seq: Option<u64>,
    /// From the start to the end of the check.
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "copied {}, {} and {} from {} to {} in {:.1} s; \
             checked: the totals per status and the highest queue position ({}) agree",
            counted(self.runs, "run", "runs"),
            counted(self.attempts, "attempt", "attempts"),
            counted(self.state_keys, "state key", "state keys"),
            self.from.display(),
            self.to,
            self.elapsed.as_secs_f64(),
            self.max_seq
                .map_or_else(|| "none".to_owned(), |s| s.to_string()),
        )
    }
}

/// `n` and the noun that goes with it.
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A boxed error from either store.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a migration did not start, failed, or did not check out. Every
/// message is one line and masks the database password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Neither `--to` nor CI_DATABASE_URL names the destination.
    #[error(
        "no destination: give --to postgres://USER:PASSWORD@HOST:PORT/DATABASE or set \
         {DATABASE_URL_ENV}"
    )]
    NoDestination,
    /// The destination URL cannot be used.
    #[error("{origin}: {source}")]
    DestinationUrl {
        /// Where it came from: `--to` or `CI_DATABASE_URL`.
        origin: &'static str,
        /// What is wrong with it.
        #[source]
        source: DatabaseUrlError,
    },
    /// The SQLite file cannot be copied from: missing, not a ci-server run
    /// database, of a newer ci-server, or not writable for its upgrade.
    #[error(transparent)]
    Source(SqliteStoreError),
    /// A ci-server (or another migration) holds the SQLite file's lock.
    #[error("{holder} is using {path} (it holds {lock}); stop it before migrating the database")]
    SourceInUse {
        /// The SQLite file.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// Who holds it, as far as the lock file tells.
        holder: String,
    },
    /// The lock file cannot be opened or locked.
    #[error("cannot lock {reason}")]
    Lock {
        /// The lock file, and what the system said.
        reason: String,
    },
    /// The destination cannot be used: no connection (refused, unreachable,
    /// unknown database, a refused password), another program's database,
    /// a newer schema, not UTF-8.
    #[error(transparent)]
    Destination(PgStoreError),
    /// The destination already holds runs.
    #[error(
        "the destination {url} already holds {runs} runs; nothing was copied, so that two \
         histories never mix: give an empty database"
    )]
    DestinationNotEmpty {
        /// The destination's URL, password masked.
        url: String,
        /// How many runs it holds.
        runs: u64,
    },
    /// Reading the destination before the copy failed.
    #[error("cannot read the destination {url}: {source}")]
    Probe {
        /// The destination's URL, password masked.
        url: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// Reading the SQLite file failed during the copy.
    #[error(
        "reading {path} failed after {copied} runs were copied (empty the destination \
         before trying again): {source}"
    )]
    Read {
        /// The SQLite file.
        path: PathBuf,
        /// Runs written before the failure.
        copied: u64,
        /// What the store said.
        #[source]
        source: BoxError,
    },
    /// Writing the destination failed during the copy.
    #[error(
        "writing into {url} failed after {copied} runs were copied (empty it before trying \
         again): {source}"
    )]
    Write {
        /// The destination's URL, password masked.
        url: String,
        /// Runs written before the failure.
        copied: u64,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// A run was already in the destination when it was written: something
    /// else writes to it (a server started on it during the copy).
    #[error(
        "run {id} was already in {url} when it was to be copied: does a ci-server use that \
         database? Stop it, empty the database and try again ({copied} runs were copied)"
    )]
    AlreadyThere {
        /// The destination's URL, password masked.
        url: String,
        /// The commit of the run.
        id: String,
        /// Runs written before it.
        copied: u64,
    },
    /// After the copy, the destination does not agree with the source.
    #[error("after the copy, {what} differs: {source_value} in {path}, {dest_value} in {url}")]
    Mismatch {
        /// What was compared.
        what: String,
        /// The SQLite file.
        path: PathBuf,
        /// Its value there.
        source_value: String,
        /// The destination's URL, password masked.
        url: String,
        /// Its value there.
        dest_value: String,
    },
}

impl MigrateError {
    /// The process exit code for this error: [`EXIT_USAGE`] for what the
    /// user must fix before the copy starts, [`EXIT_FAILED`] for a copy that
    /// failed or does not check out.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NoDestination
            | Self::DestinationUrl { .. }
            | Self::Source(_)
            | Self::SourceInUse { .. }
            | Self::Lock { .. }
            | Self::Destination(_)
            | Self::DestinationNotEmpty { .. } => EXIT_USAGE,
            Self::Probe { .. }
            | Self::Read { .. }
            | Self::Write { .. }
            | Self::AlreadyThere { .. }
            | Self::Mismatch { .. } => EXIT_FAILED,
        }
    }
}

/// Migrates as `args` say: checks the source and takes its lock, checks
/// that the destination is empty, copies every run and state value, and
/// checks the result.
///
/// # Errors
/// A [`MigrateError`]; [`MigrateError::exit_code`] tells which exit code.
pub async fn run(args: MigrateArgs) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let url = args.destination()?;
    let to = url.redacted();
    let from = args.from.clone();

    let version = SqliteStore::inspect(&from)
        .await
        .map_err(MigrateError::Source)?;
    let _lock = lock_source(&from)?;
    // The lock is held from here on: no server writes the file meanwhile.

    let dest = PgStore::open(&url)
        .await
        .map_err(MigrateError::Destination)?;
    let probe = |source| MigrateError::Probe {
        url: to.clone(),
        source,
    };
    let held = dest.list_runs(&totals(None)).await.map_err(probe)?.total;
    if held > 0 || dest.max_seq().await.map_err(probe)?.is_some() {
        return Err(MigrateError::DestinationNotEmpty {
            url: to,
            runs: held,
        });
    }

    if version < SCHEMA_VERSION {
        info!(
            path = %from.display(),
            from = version,
            to = SCHEMA_VERSION,
            "the SQLite file is from an older ci-server: upgrading its schema first"
        );
    }
    let source = SqliteStore::open(&from)
        .await
        .map_err(MigrateError::Source)?;

    let copy = Migration {
        source: &source,
        dest: &dest,
        from: &from,
        to: &to,
    };
    let (runs, attempts) = copy.runs(usize::try_from(args.batch).unwrap_or(1)).await?;
    let state_keys = copy.state().await?;
    let max_seq = copy.check(runs).await?;
    Ok(Summary {
        from,
        to,
        runs,
        attempts,
        state_keys,
        max_seq,
        elapsed: started.elapsed(),
    })
}

/// A query that reads only the total of the runs with `status` (all: `None`).
fn totals(status: Option<RunStatus>) -> RunQuery {
    RunQuery {
        status,
        limit: 0,
        with_logs: false,
        with_steps: false,
        ..RunQuery::default()
    }
}

/// The two stores of a migration and how to name them.
struct Migration<'a> {
    source: &'a SqliteStore,
    dest: &'a PgStore,
    from: &'a Path,
    to: &'a str,
}

impl Migration<'_> {
    /// Copies every run, `batch` at a time, newest first; returns how many
    /// runs and attempts were copied.
    async fn runs(&self, batch: usize) -> Result<(u64, u64), MigrateError> {
        let mut query = RunQuery {
            limit: batch,
            with_logs: true,
            with_steps: true,
            ..RunQuery::default()
        };
        let (mut runs, mut attempts) = (0u64, 0u64);
        let mut report_at = PROGRESS_EVERY;
        let started = Instant::now();
        loop {
            let page = self
                .source
                .list_runs(&query)
                .await
                .map_err(|e| self.read_error(runs, e.into()))?;
            if query.after.is_none() {
                info!(runs = page.total, from = %self.from.display(), to = %self.to, "copying runs");
            }
            self.write(&page.runs, runs).await?;
            runs += page.runs.len() as u64;
            attempts += page.runs.iter().map(attempt_count).sum::<u64>();
            if runs >= report_at {
                info!(
                    copied = runs,
                    of = page.total,
                    seconds = started.elapsed().as_secs(),
                    "copying runs"
                );
                report_at = runs + PROGRESS_EVERY;
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        Ok((runs, attempts))
    }

    /// Writes one batch of runs in one transaction; `copied` runs were
    /// written before it.
    async fn write(&self, runs: &[Run], copied: u64) -> Result<(), MigrateError> {
        let already = self
            .dest
            .copy_runs(runs)
            .await
            .map_err(|source| MigrateError::Write {
                url: self.to.to_owned(),
                copied,
                source,
            })?;
        match already {
            None => Ok(()),
            Some(id) => Err(MigrateError::AlreadyThere {
                url: self.to.to_owned(),
                id: id.to_string(),
                copied,
            }),
        }
    }

    /// Copies every saved state value; returns how many.
    async fn state(&self) -> Result<u64, MigrateError> {
        let keys = self
            .source
            .state_keys()
            .await
            .map_err(|e| self.read_error(0, e.into()))?;
        for key in &keys {
            let Some(value) = self
                .source
                .load_state(key)
                .await
                .map_err(|e| self.read_error(0, e.into()))?
            else {
                continue;
            };
            let write = |source| MigrateError::Write {
                url: self.to.to_owned(),
                copied: 0,
                source,
            };
            if let Some(old) = self.dest.load_state(key).await.map_err(write)?
                && old != value
            {
                warn!(
                    key,
                    "the destination had a saved value of its own; replaced"
                );
            }
            self.dest.save_state(key, &value).await.map_err(write)?;
        }
        info!(keys = keys.len(), "copied the saved state");
        Ok(keys.len() as u64)
    }

    /// Checks that the destination's totals (all runs, each status) and
    /// highest queue position equal the source's, and that `copied` is the
    /// source's total; returns the highest queue position.
    async fn check(&self, copied: u64) -> Result<Option<u64>, MigrateError> {
        let source_max = self
            .source
            .max_seq()
            .await
            .map_err(|e| self.read_error(copied, e.into()))?;
        let dest_max = self.dest.max_seq().await.map_err(|e| self.probe_error(e))?;
        let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        if source_max != dest_max {
            return Err(self.mismatch(
                "the highest queue position (max_seq)",
                show(source_max),
                show(dest_max),
            ));
        }
        for status in std::iter::once(None).chain(RunStatus::ALL.map(Some)) {
            let query = totals(status);
            let source_total = self
                .source
                .list_runs(&query)
                .await
                .map_err(|e| self.read_error(copied, e.into()))?
                .total;
            let dest_total = self
                .dest
                .list_runs(&query)
                .await
                .map_err(|e| self.probe_error(e))?
                .total;
            let what = status.map_or_else(
                || "the number of runs".to_owned(),
                |s| format!("the number of {} runs", s.as_str()),
            );
            if source_total != dest_total {
                return Err(self.mismatch(&what, source_total.to_string(), dest_total.to_string()));
            }
            if status.is_none() && source_total != copied {
                return Err(MigrateError::Mismatch {
                    what: format!("{what} (counted, then copied)"),
                    path: self.from.to_owned(),
                    source_value: source_total.to_string(),
                    url: self.to.to_owned(),
                    dest_value: copied.to_string(),
                });
            }
        }
        Ok(source_max)
    }

    fn mismatch(&self, what: &str, source_value: String, dest_value: String) -> MigrateError {
        MigrateError::Mismatch {
            what: what.to_owned(),
            path: self.from.to_owned(),
            source_value,
            url: self.to.to_owned(),
            dest_value,
        }
    }

    fn read_error(&self, copied: u64, source: BoxError) -> MigrateError {
        MigrateError::Read {
            path: self.from.to_owned(),
            copied,
            source,
        }
    }

    fn probe_error(&self, source: StoreError) -> MigrateError {
        MigrateError::Probe {
            url: self.to.to_owned(),
            source,
        }
    }
}

/// How many attempts `run` has, over all its steps.
fn attempt_count(run: &Run) -> u64 {
    run.steps.iter().map(|s| s.attempts.len() as u64).sum()
}

/// Takes the lock the active server holds on a SQLite database (its lease,
/// `<file>.lock`, see [`FileLease`]) for as long as the returned lease lives,
/// and writes who holds it into it (so a server that waits for it meanwhile
/// names this process).
fn lock_source(path: &Path) -> Result<FileLease, MigrateError> {
    let failed = |e: LeaseError| MigrateError::Lock {
        reason: e.to_string(),
    };
    let mut lease = FileLease::open(path).map_err(failed)?;
    let me = format!("ci-server migrate-store (pid {})", std::process::id());
    if lease.try_take(&me).map_err(failed)? {
        return Ok(lease);
    }
    let holder = lease.holder();
    Err(MigrateError::SourceInUse {
        path: path.to_owned(),
        holder: if holder.is_empty() {
            "another ci-server".to_owned()
        } else {
            format!("another process, {holder},")
        },
        lock: lease.path().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str], env: Option<&str>) -> MigrateArgs {
        let mut args = MigrateArgs::try_parse_from(
            std::iter::once("ci-server migrate-store").chain(argv.iter().copied()),
        )
        .expect("parses");
        args.database_url_env = env.map(Secret::new);
        args
    }

    #[test]
    fn the_destination_comes_from_to_else_the_environment() {
        let to = "postgres://ci:s3cret@db/runs";
        let env = "postgres://ci:other@envdb/runs";
        let url = args(&["--from", "runs.db", "--to", to], Some(env))
            .destination()
            .expect("valid");
        assert_eq!(url.expose(), to, "--to wins");
        let url = args(&["--from", "runs.db"], Some(env))
            .destination()
            .expect("valid");
        assert_eq!(url.expose(), env);
        for empty in [None, Some("")] {
            let err = args(&["--from", "runs.db"], empty)
                .destination()
                .expect_err("no destination");
            assert!(matches!(err, MigrateError::NoDestination), "{err}");
            assert_eq!(err.exit_code(), EXIT_USAGE);
        }
    }

    #[test]
    fn a_bad_destination_names_its_origin_and_masks_the_password() {
        for (argv, env, start) in [
            (&["--to", "runs.db"][..], None, "--to: invalid database URL"),
            (
                &["--to", "sqlite://ci:s3cret@x/runs.db"],
                None,
                "--to: invalid database URL sqlite://ci:***@x/runs.db: the scheme sqlite",
            ),
            (
                &[],
                Some("postgres://ci:s3cret@db:port/runs"),
                "CI_DATABASE_URL: invalid database URL postgres://ci:***@",
            ),
        ] {
            let mut all = vec!["--from", "runs.db"];
            all.extend(argv);
            let err = args(&all, env).destination().expect_err("refused");
            let line = err.to_string();
            assert!(line.starts_with(start), "{line}");
            assert!(!line.contains("s3cret"), "{line}");
            assert_eq!(err.exit_code(), EXIT_USAGE);
        }
        let parsed = args(
            &["--from", "runs.db", "--to", "postgres://ci:s3cret@db/x"],
            None,
        );
        assert!(!format!("{parsed:?}").contains("s3cret"), "Debug shows it");
    }

    #[test]
    fn batch_is_bounded() {
        assert_eq!(args(&["--from", "x"], None).batch, DEFAULT_BATCH);
        for bad in ["0", "10001", "many"] {
            let parsed = MigrateArgs::try_parse_from(["m", "--from", "x", "--batch", bad]);
            assert!(parsed.is_err(), "--batch {bad}");
        }
    }

    #[test]
    fn the_summary_is_one_line_with_the_counts_and_the_time() {
        let summary = Summary {
            from: PathBuf::from("/srv/ci/runs.db"),
            to: "postgres://ci:***@db/ci".to_owned(),
            runs: 1,
            attempts: 3,
            state_keys: 2,
            max_seq: Some(41),
            elapsed: Duration::from_millis(2_345),
        };
        assert_eq!(
            summary.to_string(),
            "copied 1 run, 3 attempts and 2 state keys from /srv/ci/runs.db to \
             postgres://ci:***@db/ci in 2.3 s; checked: the totals per status and the highest \
             queue position (41) agree"
        );
    }
}
