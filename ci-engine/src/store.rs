//! The engine's memory: the [`RunStore`] trait, its queries and errors.

use async_trait::async_trait;

use crate::model::{CommitId, Run, RunStatus};
use crate::source::BoxError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No run matches the id or prefix.
    #[error("no run for commit {0:?}")]
    NotFound(String),
    /// More than one run matches a prefix.
    #[error("commit prefix {prefix:?} is ambiguous: it matches {matches} runs")]
    Ambiguous {
        /// The prefix asked for.
        prefix: String,
        /// How many runs it matches (at least 2).
        matches: usize,
    },
    /// The backend failed (I/O, corruption, a full disk). Nothing was changed.
    #[error("store backend: {0}")]
    Backend(#[source] BoxError),
    /// The write was refused because this writer no longer holds the lease
    /// that lets one writer at a time write the store: another took it over
    /// (a store shared by several servers fences writes by the lease's term).
    /// Nothing was changed. The engine stops on it, as on any store error;
    /// what to do next (stand by, exit) is its owner's choice.
    #[error("{0}")]
    Fenced(String),
}

/// Filters and paging for [`RunStore::list_runs`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunQuery {
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs whose commit lists this branch.
    pub branch: Option<String>,
    /// At most this many runs.
    pub limit: usize,
    /// Skip this many (after filtering, newest first, and after `after`).
    pub offset: usize,
    /// A cursor: only runs older than the run with this `seq` (that is, with
    /// a lower `seq`). Pass a page's [`RunPage::next`] to get the page that
    /// follows it; unlike `offset`, a cursor stays on its place in the
    /// listing when new runs arrive. `None` starts from the newest run.
    pub after: Option<u64>,
    /// Whether attempts come back with their logs. Listings that show no logs
    /// set it to `false`: attempts then have empty `logs`, everything else is
    /// as stored, and the store need not read the logs at all.
    pub with_logs: bool,
    /// Whether runs come back with their steps. Listings that show only the
    /// runs' own fields (commit, status, failed steps, times) set it to
    /// `false`: runs then have no steps, everything else is as stored, and the
    /// store need not read steps or attempts at all.
    pub with_steps: bool,
}

impl Default for RunQuery {
    fn default() -> Self {
        Self {
            status: None,
            branch: None,
            limit: 100,
            offset: 0,
            after: None,
            with_logs: true,
            with_steps: true,
        }
    }
}

/// A page of runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPage {
    /// How many runs match the filters (status, branch) in all, whatever
    /// the page: `limit`, `offset` and `after` do not change it.
    pub total: u64,
    /// The runs of this page, newest (highest `seq`) first.
    pub runs: Vec<Run>,
    /// The cursor ([`RunQuery::after`]) of the page that follows: the `seq`
    /// of this page's last run when more runs match beyond it, `None` when
    /// this page is the last (or empty).
    pub next: Option<u64>,
}

/// Durable record of runs, steps and attempts.
///
/// # Contract
///
/// - One run per commit id: [`insert_run`](Self::insert_run) of a commit that
///   already has a run changes nothing and returns `Ok(false)`.
/// - `seq` is unique: inserting, or updating to, a `seq` another run has is an
///   error ([`StoreError::Backend`]) and changes nothing.
/// - [`update_run`](Self::update_run) replaces the whole stored state of a run;
///   once it returns, a crash of the process loses none of it.
/// - Lookups by prefix: a full id or a prefix that matches exactly one run; several
///   matches are [`StoreError::Ambiguous`], none [`StoreError::NotFound`].
/// - Implementations are safe to share between tasks (`Arc<dyn RunStore>`).
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Stores a new run; `Ok(false)` (and no change) if the commit already has one.
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError>;

    /// Stores several new runs, each as [`insert_run`](Self::insert_run)
    /// does, in order: for each run, `true` if it was stored, `false` if its
    /// commit already had a run (a commit twice in `runs` is stored once).
    /// The engine stores each batch of new commits with it. A store that has
    /// transactions writes the batch in one, so an error stores none of it;
    /// the default inserts one by one and stops at the first error.
    async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, StoreError> {
        let mut stored = Vec::with_capacity(runs.len());
        for run in runs {
            stored.push(self.insert_run(run).await?);
        }
        Ok(stored)
    }

    /// Replaces the stored state of an existing run; `NotFound` if it has none.
    async fn update_run(&self, run: &Run) -> Result<(), StoreError>;

    /// Replaces the stored state of several existing runs, as
    /// [`update_run`](Self::update_run) does for one. The engine writes all the
    /// changes of one turn with it. A store that has transactions writes them
    /// in one, all or nothing; the default writes them one by one, in order.
    async fn update_runs(&self, runs: Vec<Run>) -> Result<(), StoreError> {
        for run in &runs {
            self.update_run(run).await?;
        }
        Ok(())
    }

    /// The run of the commit whose full id is, or starts with, `id_or_prefix`.
    async fn get_run(&self, id_or_prefix: &str) -> Result<Run, StoreError>;

    /// Runs matching `query`, newest first, with the total that match and
    /// the cursor of the next page ([`RunPage::next`]).
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError>;

    /// Runs whose status is `queued` or `running`, oldest (lowest `seq`) first.
    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError>;

    /// Up to `limit` runs whose status is `queued` or `running` and whose
    /// [queue position](Run::queue_position) is `from` or later, in queue
    /// order (lowest position first). The engine pages through the unfinished
    /// runs with it, so it never holds them all.
    ///
    /// The default reads every unfinished run and keeps the page: correct,
    /// but a store that can page by position should.
    async fn unfinished_after(&self, from: u64, limit: usize) -> Result<Vec<Run>, StoreError> {
        let mut runs: Vec<Run> = self
            .unfinished_runs()
            .await?
            .into_iter()
            .filter(|r| r.queue_position() >= from)
            .collect();
        runs.sort_by_key(Run::queue_position);
        runs.truncate(limit);
        Ok(runs)
    }

    /// A number that changes whenever the stored runs change, for callers
    /// that keep answers (a cache of listings): read it *before* a read, keep
    /// the answer with it, and serve that answer again only while this still
    /// returns the same number. After [`insert_run`](Self::insert_run),
    /// [`update_run`](Self::update_run) or [`update_runs`](Self::update_runs)
    /// returns (even with an error), it no longer returns the number read
    /// before the call. `None`, the default, means the store cannot tell, and
    /// callers must not keep answers.
    fn generation(&self) -> Option<u64> {
        None
    }

    /// Whether `id` has a run.
    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError>;

    /// The highest queue position any run has taken, `None` when the store is
    /// empty: the highest `seq`, or a run's `retry_seq` where that is higher
    /// (a retry takes the next sequence number as the run's new position). The
    /// engine numbers new runs after it. It must be a cheap read (health
    /// checks use it).
    async fn max_seq(&self) -> Result<Option<u64>, StoreError>;

    /// A small named value a component keeps across restarts (a source's cursor).
    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Saves a value for [`load_state`](Self::load_state), replacing the old one.
    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError>;
}
