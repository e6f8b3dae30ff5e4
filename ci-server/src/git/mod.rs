//! [`GitSource`]: a [`CommitSource`] that watches a git repository with gix.
//!
//! It hands out every new commit of every branch (`refs/heads/*`), parents first,
//! each once, and resumes from the [`RunStore`] after a restart.
//!
//! - How it notices: file-system notifications on `refs/` and `packed-refs`
//!   ([`wake`]), with polling as fallback and safety net ([`GitSourceConfig`]).
//! - How it finds what is new: it keeps a small set of *known tips* ([`known`])
//!   and walks from the current branch tips with all known tips hidden
//!   ([`scan`]), so a scan costs in proportion to the new commits, not to the
//!   length of the history.
//! - How it resumes: the known tips are saved in the store under the key
//!   `git-source`. On start, a known tip hides its history only if it was left out
//!   on purpose (the *baseline* of the [`InitialPolicy`]) or has a run in the store;
//!   tips handed out but never recorded (the process died in between) are walked
//!   again, and commits that already have a run are dropped. So a restart neither
//!   loses nor repeats a commit.

mod config;
mod error;
mod known;
mod scan;
mod wake;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ci_engine::{BoxError, Commit, CommitId, CommitSource, RunStore, SourceError, StoreError};
use gix::ObjectId;
use tracing::{debug, info, warn};

pub use config::{GitSourceConfig, InitialPolicy, MIN_POLL_INTERVAL, ParseInitialPolicyError};
pub use error::GitSourceError;

use known::{Known, KnownTip, PendingPrune, STATE_KEY};
use scan::{NewCommit, ScanInput};
use wake::Wakeup;

/// A [`CommitSource`] over the branches of a local git repository.
///
/// # Behaviour
///
/// - [`next_commits`](CommitSource::next_commits) scans at once on its first call;
///   later calls wait for a ref change (or a poll tick), scan, and return as soon
///   as a scan finds new commits. It never returns `Ok(None)`.
/// - Every commit reachable from a branch and not seen before comes out once,
///   parents before children, with [`Commit::branches`] naming the branches it was
///   found through. A burst of commits revealed by one ref update, a merge or a
///   fast-forward comes out whole; a force-push or rebase yields only its new
///   commits; deleting a branch yields nothing.
/// - A commit that already has a run in the store is never handed out.
/// - Errors while scanning (an unreadable object, a failing store) are returned as
///   [`SourceError`]s; the next call scans again.
pub struct GitSource {
    repo: gix::ThreadSafeRepository,
    git_dir: PathBuf,
    store: Arc<dyn RunStore>,
    known: Known,
    /// Tips handed out before a restart and never recorded: walked on the next scan.
    resume: Vec<(ObjectId, Vec<String>)>,
    /// `Some` until the first scan of a repository never seen before.
    first_start: Option<InitialPolicy>,
    /// Scan without waiting (first call, or after a scan that did not finish).
    scan_now: bool,
    /// The first-start batch, found by `open`, not yet handed out.
    ready: Vec<Commit>,
    wakeup: Wakeup,
}

impl fmt::Debug for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitSource")
            .field("git_dir", &self.git_dir)
            .field("known_tips", &self.known.tips.len())
            .field("first_start", &self.first_start)
            .finish_non_exhaustive()
    }
}

impl GitSource {
    /// Opens the repository at `path` (a work tree or a bare repo) and resumes from `store`.
    ///
    /// With no saved state in `store`, it looks at the branches at once and applies
    /// `config.initial` to them (the first [`next_commits`](CommitSource::next_commits)
    /// returns what that policy builds).
    /// Errors: `path` missing ([`GitSourceError::Missing`]), not a repository
    /// ([`GitSourceError::NotARepository`]), the store failing, or its saved state
    /// unreadable. A repository without commits or branches is fine: the source
    /// waits for the first one.
    pub async fn open(
        path: &Path,
        store: Arc<dyn RunStore>,
        config: GitSourceConfig,
    ) -> Result<Self, GitSourceError> {
        let absolute =
            tokio::fs::canonicalize(path)
                .await
                .map_err(|source| GitSourceError::Missing {
                    path: path.to_owned(),
                    source,
                })?;
        let not_a_repo = |source: BoxError| GitSourceError::NotARepository {
            path: path.to_owned(),
            source,
        };
        let (repo, common_dir) = blocking(move || {
            let repo = gix::ThreadSafeRepository::open(absolute)?;
            let common_dir = repo.to_thread_local().common_dir().to_owned();
            Ok::<_, gix::Error>((repo, common_dir))
        })
        .await
        .map_err(not_a_repo)?
        .map_err(|e| not_a_repo(e.into()))?;
        let git_dir = repo.git_dir().to_owned();

        let mut known = Known::default();
        let mut resume = Vec::new();
        let mut first_start = None;
        match store
            .load_state(STATE_KEY)
            .await
            .map_err(GitSourceError::Store)?
        {
            None => first_start = Some(config.initial),
            Some(json) => {
                known = Known::from_json(&json).map_err(|reason| GitSourceError::BadState {
                    key: STATE_KEY,
                    reason,
                })?;
                let mut unrecorded = Vec::new();
                for (id, tip) in &mut known.tips {
                    if tip.baseline {
                        continue;
                    }
                    if store
                        .has_run(&commit_id(id))
                        .await
                        .map_err(GitSourceError::Store)?
                    {
                        tip.confirmed = true;
                    } else {
                        unrecorded.push(*id);
                    }
                }
                for id in unrecorded {
                    if let Some(tip) = known.tips.remove(&id) {
                        resume.push((id, tip.branches));
                    }
                }
            }
        }
        info!(
            git_dir = %git_dir.display(),
            known_tips = known.tips.len(),
            unrecorded = resume.len(),
            first_start = ?first_start,
            "git source opened"
        );
        let wakeup = Wakeup::new(&common_dir, config.poll_interval, config.watch);
        let mut source = Self {
            repo,
            git_dir,
            store,
            known,
            resume,
            first_start,
            scan_now: true,
            ready: Vec::new(),
            wakeup,
        };
        if source.first_start.is_some() {
            // Apply the initial policy to the branches as they are now, so "now"
            // means when the source was opened.
            match source.scan().await {
                Ok(batch) => source.ready = batch,
                Err(e) => {
                    warn!(error = %e, "first look at the repository failed; retrying on the first call")
                }
            }
        }
        Ok(source)
    }

    /// The repository's git dir (for the server to place its database by default).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    async fn has_run(&self, id: &ObjectId) -> Result<bool, SourceError> {
        self.store
            .has_run(&commit_id(id))
            .await
            .map_err(store_failed)
    }

    /// Learns which known tips got runs, and applies the prunes whose batch is
    /// recorded. Only adds facts, so an interrupted call leaves nothing wrong.
    async fn confirm(&mut self) -> Result<(), SourceError> {
        let unconfirmed: Vec<ObjectId> = self
            .known
            .tips
            .iter()
            .filter(|(_, t)| !t.confirmed)
            .map(|(id, _)| *id)
            .collect();
        for id in unconfirmed {
            if self.has_run(&id).await?
                && let Some(tip) = self.known.tips.get_mut(&id)
            {
                tip.confirmed = true;
            }
        }
        let mut i = 0;
        while i < self.known.prunes.len() {
            let mut recorded = true;
            for a in self.known.prunes[i].after.clone() {
                let confirmed = match self.known.tips.get(&a) {
                    Some(t) if t.confirmed => true,
                    _ => self.has_run(&a).await?,
                };
                if !confirmed {
                    recorded = false;
                    break;
                }
            }
            if recorded {
                let prune = self.known.prunes.remove(i);
                for r in &prune.remove {
                    self.known.tips.remove(r);
                }
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// One look at the repository: the new commits, parents first (maybe none).
    async fn scan(&mut self) -> Result<Vec<Commit>, SourceError> {
        let before = self.known.clone();
        self.confirm().await?;
        let input = ScanInput {
            hidden: self.known.tips.keys().copied().collect(),
            last_tip_ids: self.known.seen.clone(),
            extra: self.resume.clone(),
            first_start: self.first_start,
        };
        let repo = self.repo.clone();
        let out = blocking(move || scan::scan(&repo, input))
            .await
            .map_err(|e| SourceError::with_source("the repository scan did not finish", e))?
            .map_err(|e| {
                SourceError::with_source(format!("scanning {}", self.git_dir.display()), e)
            })?;

        let mut ran = HashSet::new();
        let mut batch = Vec::with_capacity(out.commits.len());
        for c in out.commits {
            if self.has_run(&c.id).await? {
                ran.insert(c.id);
            } else {
                batch.push(c);
            }
        }

        let mut known = self.known.clone();
        known.seen = out.tip_ids;
        for id in &out.missing_hidden {
            warn!(commit = %id, "a known tip is gone from the repository; forgetting it");
            known.tips.remove(id);
        }
        for id in out.baseline {
            known.tips.insert(
                id,
                KnownTip {
                    branches: Vec::new(),
                    baseline: true,
                    confirmed: true,
                },
            );
        }
        let mut after = Vec::with_capacity(out.new_tips.len());
        for (id, branches) in out.new_tips {
            after.push(id);
            known.tips.insert(
                id,
                KnownTip {
                    branches,
                    baseline: false,
                    confirmed: ran.contains(&id),
                },
            );
        }
        // Known tips now below newer known tips: the parents of new commits, and
        // (first start) tips and baseline commits that are ancestors of others.
        let mut remove: Vec<ObjectId> = out.redundant;
        remove.extend(
            out.parents_of_new
                .iter()
                .filter(|&p| known.tips.contains_key(p))
                .copied(),
        );
        remove.sort();
        remove.dedup();
        if !remove.is_empty() {
            if after.is_empty() {
                // Nothing was handed out (a baseline only): nothing to wait for.
                for r in &remove {
                    known.tips.remove(r);
                }
            } else {
                known.prunes.push(PendingPrune { after, remove });
            }
        }
        if known != before {
            self.store
                .save_state(STATE_KEY, &known.to_json())
                .await
                .map_err(store_failed)?;
        }

        // No await below: the batch is handed out exactly when the state moves on.
        self.known = known;
        self.resume.clear();
        self.first_start = None;
        if !batch.is_empty() {
            info!(
                commits = batch.len(),
                skipped_with_runs = ran.len(),
                "new commits"
            );
        } else if !ran.is_empty() {
            debug!(
                skipped_with_runs = ran.len(),
                "only commits that already have runs"
            );
        }
        Ok(batch.into_iter().map(to_commit).collect())
    }
}

#[async_trait]
impl CommitSource for GitSource {
    async fn next_commits(&mut self) -> Result<Option<Vec<Commit>>, SourceError> {
        if !self.ready.is_empty() {
            return Ok(Some(std::mem::take(&mut self.ready)));
        }
        loop {
            if !self.scan_now {
                self.wakeup.wait().await;
            }
            // Until this scan completes, the next call scans without waiting.
            self.scan_now = true;
            let batch = self.scan().await?;
            self.scan_now = false;
            if !batch.is_empty() {
                return Ok(Some(batch));
            }
        }
    }
}

/// Runs blocking gix work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BoxError> {
    tokio::task::spawn_blocking(f).await.map_err(Into::into)
}

fn commit_id(id: &ObjectId) -> CommitId {
    CommitId::new(id.to_string())
}

fn store_failed(e: StoreError) -> SourceError {
    SourceError::with_source("the run store failed", e)
}

fn to_commit(c: NewCommit) -> Commit {
    Commit {
        id: commit_id(&c.id),
        branches: c.branches.into_iter().collect(),
        parents: c.parents.iter().map(commit_id).collect(),
        summary: c.summary,
        author: c.author,
        time: c.time,
    }
}
