//! [`GitSource`]: a [`CommitSource`] that watches a git repository with gix.
//!
//! It hands out every new commit of every branch (`refs/heads/*`), parents first,
//! each once, and resumes from the [`RunStore`] after a restart.
//!
//! - How it notices: file-system notifications on `refs/` and `packed-refs`
//!   (`wake`), gathered while they keep coming, with polling as fallback and
//!   safety net ([`GitSourceConfig`]).
//! - How it finds what is new: it compares the branch values with the ones it
//!   knows (`known`) and walks only from the branches that moved, stopping at
//!   known commits (`stops`, `scan`). So a scan costs what changed, not the
//!   number of branches or the length of the history.
//! - How it hands out a large burst: the new commits are put parents first, then
//!   handed out in batches of at most [`MAX_BATCH`], each decoded when its turn
//!   comes, so the first runs start while the rest waits.
//! - How it resumes: what it knows is saved in the store in shards, and a scan
//!   rewrites only the shards it changed (`known`). On start, a known tip hides
//!   its history only if it was left out on purpose (the *baseline* of the
//!   [`InitialPolicy`]) or has a run in the store; tips handed out but never
//!   recorded (the process died in between) are walked again, and commits that
//!   already have a run are dropped. So a restart neither loses nor repeats a
//!   commit.

mod config;
mod error;
mod known;
mod scan;
mod stops;
mod wake;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ci_engine::{BoxError, Commit, CommitId, CommitSource, RunStore, SourceError, StoreError};
use gix::ObjectId;
use tracing::{debug, info, warn};

pub use config::{GitSourceConfig, InitialPolicy, MIN_POLL_INTERVAL, ParseInitialPolicyError};
pub use error::GitSourceError;

use known::{Edit, Known, KnownTip, LoadError, PendingPrune};
use scan::{NewCommit, NodeCache, Pending, RefsSeen, ScanInput};
use stops::Stops;
use wake::Wakeup;

/// The most commits one [`next_commits`](CommitSource::next_commits) call hands
/// out. A larger burst comes in several batches, parents first across them.
pub const MAX_BATCH: usize = 1_000;

/// After handing out this many commits read since the repository was opened,
/// the source opens it again once nothing is pending (see
/// `GitSource::reopen`): a long read maps whole packs, and a new handle lets
/// their pages go. Opening costs about a millisecond.
pub const REOPEN_AFTER: usize = 10_000;

/// A [`CommitSource`] over the branches of a local git repository.
///
/// # Behaviour
///
/// - [`next_commits`](CommitSource::next_commits) scans at once on its first call;
///   later calls wait for a ref change (or a poll tick), scan, and return as soon
///   as a scan finds new commits. It never returns `Ok(None)`.
/// - Every commit reachable from a branch and not seen before comes out once,
///   parents before children, with [`Commit::branches`] naming the branches it was
///   found through. The commits revealed by one look at the refs (a push, a
///   merge, a fast-forward) come out in one batch, or, beyond [`MAX_BATCH`]
///   commits, in consecutive batches before anything newer; a force-push or
///   rebase yields only its new commits; deleting a branch yields nothing.
/// - A commit that already has a run in the store is never handed out.
/// - Errors while scanning (an unreadable object, a failing store) are returned as
///   [`SourceError`]s; the next call scans again.
pub struct GitSource {
    repo: gix::ThreadSafeRepository,
    /// The path `repo` was opened from, to open it again.
    open_path: PathBuf,
    /// Commits read since `repo` was opened; see [`REOPEN_AFTER`].
    read_since_open: usize,
    /// A handle of `repo` for this source's blocking work (taken while in use;
    /// in a mutex only so that the source is `Sync`).
    local: std::sync::Mutex<Option<gix::Repository>>,
    git_dir: PathBuf,
    store: Arc<dyn RunStore>,
    known: Arc<Known>,
    stops: Arc<Stops>,
    /// Tips handed out before a restart and never recorded: walked on the next scan.
    resume: Vec<(ObjectId, Vec<String>)>,
    /// Whether branch values are stops. After a restart with tips to resume they
    /// are not, until those tips are handed out again: a branch value may sit on
    /// commits that were lost with them.
    refs_trusted: bool,
    /// `Some` until the first scan of a repository never seen before.
    first_start: Option<InitialPolicy>,
    /// Scan without waiting (first call, or after a scan that did not finish).
    scan_now: bool,
    /// New commits found by the last scan and not handed out yet, parents first.
    pending: VecDeque<Pending>,
    /// The branch lists of `pending`.
    labels: Vec<Vec<String>>,
    /// Branch values to set when the commit they point at is handed out.
    refs_later: HashMap<ObjectId, Vec<String>>,
    /// Branches at missing objects, warned about.
    broken: HashMap<String, ObjectId>,
    /// What the last scan read of the refs (reset by a scan that fails).
    refs_seen: RefsSeen,
    /// Commits met by earlier scans.
    nodes: Arc<std::sync::Mutex<NodeCache>>,
    wakeup: Wakeup,
}

impl fmt::Debug for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitSource")
            .field("git_dir", &self.git_dir)
            .field("known_tips", &self.known.tip_count())
            .field("branches", &self.known.ref_count())
            .field("stops", &self.stops.len())
            .field("pending", &self.pending.len())
            .field("first_start", &self.first_start)
            .finish_non_exhaustive()
    }
}

/// A change of the stops, made once the matching [`Edit`] is saved.
enum StopOp {
    AddTip(ObjectId, Option<i64>),
    RemoveTip(ObjectId),
    AddRef(ObjectId, Option<i64>),
    RemoveRef(ObjectId),
    Resolve(ObjectId, i64),
    Forget(ObjectId),
}

/// An [`Edit`] of the known state with the matching changes of the stops.
struct Change {
    edit: Edit,
    stops: Vec<StopOp>,
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
        let open_path = absolute.clone();
        let (repo, common_dir) = blocking(move || {
            let repo = gix::ThreadSafeRepository::open(absolute)?;
            let common_dir = repo.to_thread_local().common_dir().to_owned();
            Ok::<_, gix::Error>((repo, common_dir))
        })
        .await
        .map_err(not_a_repo)?
        .map_err(|e| not_a_repo(e.into()))?;
        let git_dir = repo.git_dir().to_owned();

        let mut resume = Vec::new();
        let mut first_start = None;
        let mut stops = Stops::default();
        let mut refs_trusted = true;
        let known = match Known::load(store.as_ref()).await {
            Err(LoadError::Store(e)) => return Err(GitSourceError::Store(e)),
            Err(LoadError::Bad { key, reason }) => {
                return Err(GitSourceError::BadState { key, reason });
            }
            Ok(None) => {
                first_start = Some(config.initial);
                Known::default()
            }
            Ok(Some(mut known)) => {
                let unconfirmed: Vec<ObjectId> = known.unconfirmed().copied().collect();
                let mut unrecorded = HashSet::new();
                for id in unconfirmed {
                    if store
                        .has_run(&commit_id(&id))
                        .await
                        .map_err(GitSourceError::Store)?
                    {
                        known.confirm(&id);
                    } else {
                        unrecorded.insert(id);
                    }
                }
                for (id, tip) in known.tips() {
                    if unrecorded.contains(id) {
                        resume.push((*id, tip.branches.clone()));
                    } else {
                        stops.add_tip(*id, None);
                    }
                }
                refs_trusted = resume.is_empty();
                if refs_trusted {
                    for (_, id) in known.refs() {
                        stops.add_ref(*id, None);
                    }
                }
                known
            }
        };
        info!(
            git_dir = %git_dir.display(),
            known_tips = known.tip_count(),
            branches = known.ref_count(),
            unrecorded = resume.len(),
            first_start = ?first_start,
            "git source opened"
        );
        let wakeup = Wakeup::new(&common_dir, config.poll_interval, config.watch);
        let mut source = Self {
            repo,
            open_path,
            read_since_open: 0,
            local: std::sync::Mutex::new(None),
            git_dir,
            store,
            known: Arc::new(known),
            stops: Arc::new(stops),
            resume,
            refs_trusted,
            first_start,
            scan_now: true,
            pending: VecDeque::new(),
            labels: Vec::new(),
            refs_later: HashMap::new(),
            broken: HashMap::new(),
            refs_seen: RefsSeen::default(),
            nodes: Arc::default(),
            wakeup,
        };
        if source.first_start.is_some() {
            // Apply the initial policy to the branches as they are now, so "now"
            // means when the source was opened.
            if let Err(e) = source.scan().await {
                warn!(error = %e, "first look at the repository failed; retrying on the first call");
            }
        }
        Ok(source)
    }

    /// The repository handle for blocking work: kept between calls, since making
    /// one costs about a millisecond; a new one when a call did not give it back.
    /// Its object cache is on.
    fn local_repo(&self) -> gix::Repository {
        let mut repo = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| self.repo.to_thread_local());
        // A scan that walks many commits turns the cache off (see `scan`).
        repo.object_cache_size_if_unset(scan::OBJECT_CACHE_BYTES);
        repo
    }

    /// Opens the repository again, letting go of the old handles and with
    /// them of every pack file they mapped into memory (gix keeps a pack it
    /// opened mapped for the life of the repository handle, so after a burst
    /// of 100,000 commits the server's resident set would keep the pack's
    /// pages). On failure the old handle stays in use.
    async fn reopen(&mut self) {
        let path = self.open_path.clone();
        match blocking(move || gix::ThreadSafeRepository::open(path)).await {
            Ok(Ok(repo)) => {
                self.repo = repo;
                *self
                    .local
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                debug!(
                    read = self.read_since_open,
                    "repository opened again after a long read"
                );
                self.read_since_open = 0;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "opening the repository again failed; keeping the old handle")
            }
            Err(e) => {
                warn!(error = %e, "opening the repository again did not finish; keeping the old handle")
            }
        }
    }

    /// Gives back a handle taken with [`local_repo`](Self::local_repo).
    fn give_back(&self, repo: gix::Repository) {
        *self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(repo);
    }

    /// How many commits' times and parents the source keeps between scans (what
    /// the last scan that met commits met; see the module `scan`). For
    /// diagnostics and tests: it follows what one scan needs, not the length of
    /// the history or how long the source has run.
    pub fn cached_commits(&self) -> usize {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
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

    /// Applies the prunes whose batch is recorded (learning which tips got
    /// runs on the way). Only adds facts, so an interrupted call leaves nothing
    /// wrong.
    async fn confirm(&mut self, change: &mut Change) -> Result<(), SourceError> {
        let mut ready = Vec::new();
        for (i, prune) in self.known.prunes.iter().enumerate() {
            let mut recorded = true;
            for a in &prune.after {
                let confirmed = match self.known.tip(a) {
                    Some(t) if t.confirmed => true,
                    _ => self.has_run(a).await?,
                };
                if !confirmed {
                    recorded = false;
                    break;
                }
            }
            if recorded {
                ready.push(i);
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        let mut keep = Vec::with_capacity(self.known.prunes.len());
        let mut recorded = Vec::new();
        let mut remove = Vec::new();
        for (i, prune) in self.known.prunes.iter().enumerate() {
            if ready.contains(&i) {
                recorded.extend(prune.after.iter().copied());
                remove.extend(prune.remove.iter().copied());
            } else {
                keep.push(prune.clone());
            }
        }
        let known = Arc::make_mut(&mut self.known);
        for a in &recorded {
            known.confirm(a);
        }
        *change.edit.prunes_mut(known) = keep;
        for r in remove {
            if change.edit.remove_tip(known, &r) {
                change.stops.push(StopOp::RemoveTip(r));
            }
        }
        Ok(())
    }

    /// Sets branch `name` to `value` in `change`, and its stop when branch values
    /// are stops.
    fn set_ref(
        &self,
        change: &mut Change,
        name: &str,
        value: Option<ObjectId>,
        commit_time: Option<Option<i64>>,
    ) {
        let old = self.known.ref_value(name);
        if old == value {
            return;
        }
        change.edit.set_ref(&self.known, name, value);
        if self.refs_trusted {
            if let Some(old) = old {
                change.stops.push(StopOp::RemoveRef(old));
            }
            if let (Some(id), Some(time)) = (value, commit_time) {
                change.stops.push(StopOp::AddRef(id, time));
            }
        }
    }

    /// Saves `change` (tips, then branch values, then the root), then applies it.
    async fn commit(&mut self, change: Change) -> Result<(), SourceError> {
        if !change.edit.is_empty() {
            for (key, value) in change.edit.writes(&self.known) {
                self.store
                    .save_state(&key, &value)
                    .await
                    .map_err(store_failed)?;
            }
        }
        // No await below: the state moves on exactly when the caller hands out.
        Arc::make_mut(&mut self.known).apply(change.edit);
        if !change.stops.is_empty() {
            let stops = Arc::make_mut(&mut self.stops);
            for op in change.stops {
                match op {
                    StopOp::AddTip(id, t) => stops.add_tip(id, t),
                    StopOp::RemoveTip(id) => stops.remove_tip(&id),
                    StopOp::AddRef(id, t) => stops.add_ref(id, t),
                    StopOp::RemoveRef(id) => stops.remove_ref(&id),
                    StopOp::Resolve(id, t) => stops.resolve(id, t),
                    StopOp::Forget(id) => stops.forget(&id),
                }
            }
        }
        Ok(())
    }

    /// One look at the repository: compares the branches, walks what moved, and
    /// queues the new commits in `pending`.
    async fn scan(&mut self) -> Result<(), SourceError> {
        let mut change = Change {
            edit: Edit::new(&self.known),
            stops: Vec::new(),
        };
        self.confirm(&mut change).await?;
        let input = ScanInput {
            known: Arc::clone(&self.known),
            stops: Arc::clone(&self.stops),
            extra: self.resume.clone(),
            first_start: self.first_start,
            broken: self.broken.clone(),
            refs_seen: std::mem::take(&mut self.refs_seen),
            cache: Arc::clone(&self.nodes),
        };
        let mut repo = self.local_repo();
        // A new, empty object cache: the one of the last scan holds commits
        // that were handed out and will not be read again.
        repo.object_cache_size(scan::OBJECT_CACHE_BYTES);
        let (repo, out) = blocking(move || {
            let mut repo = repo;
            let out = scan::scan(&mut repo, input);
            (repo, out)
        })
        .await
        .map_err(|e| SourceError::with_source("the repository scan did not finish", e))?;
        self.give_back(repo);
        let out = out.map_err(|e| {
            SourceError::with_source(format!("scanning {}", self.git_dir.display()), e)
        })?;

        for (id, time) in &out.resolved {
            change.stops.push(StopOp::Resolve(*id, *time));
        }
        for id in &out.dropped_stops {
            if change.edit.remove_tip(&self.known, id) {
                warn!(commit = %id, "a known tip is gone from the repository; forgetting it");
            }
            change.stops.push(StopOp::Forget(*id));
        }
        for (id, time) in &out.baseline {
            change.edit.insert_tip(
                &self.known,
                *id,
                KnownTip {
                    branches: Vec::new(),
                    baseline: true,
                    confirmed: true,
                },
            );
            change.stops.push(StopOp::AddTip(*id, Some(*time)));
        }
        for (name, value) in &out.refs_now {
            let time = value.and_then(|v| {
                out.ref_times
                    .get(&v)
                    .copied()
                    .map(Some)
                    .or_else(|| self.stops.contains(&v).then_some(None))
            });
            self.set_ref(&mut change, name, *value, time);
        }
        self.commit(change).await?;

        self.resume.clear();
        self.first_start = None;
        self.broken = out.broken;
        self.refs_seen = out.refs_seen;
        self.labels = out.labels;
        self.refs_later = out.refs_later;
        self.read_since_open += out.pending.len();
        self.pending = out.pending.into();
        if !self.pending.is_empty() {
            info!(commits = self.pending.len(), "new commits");
        }
        Ok(())
    }

    /// Hands out the next batch of `pending` (at most [`MAX_BATCH`] commits,
    /// skipping those that have runs); empty when nothing is pending.
    async fn hand_out(&mut self) -> Result<Vec<Commit>, SourceError> {
        while !self.pending.is_empty() {
            let chunk: Vec<Pending> = self.pending.iter().take(MAX_BATCH).copied().collect();
            let repo = self.local_repo();
            let ids: Vec<ObjectId> = chunk.iter().map(|p| p.id).collect();
            let (repo, decoded) = blocking(move || {
                let decoded = scan::decode_all(&repo, ids);
                (repo, decoded)
            })
            .await
            .map_err(|e| SourceError::with_source("decoding new commits did not finish", e))?;
            self.give_back(repo);
            let decoded = decoded.map_err(|e| {
                SourceError::with_source(format!("scanning {}", self.git_dir.display()), e)
            })?;
            let mut ran = HashSet::new();
            for c in &decoded {
                if self.has_run(&c.id).await? {
                    ran.insert(c.id);
                }
            }
            let change = self.chunk_change(&chunk, &decoded, &ran);
            self.commit(change).await?;

            // No await below.
            self.pending.drain(..chunk.len());
            for p in &chunk {
                self.refs_later.remove(&p.id);
            }
            let mut batch = Vec::with_capacity(decoded.len() - ran.len());
            for (c, p) in decoded.into_iter().zip(&chunk) {
                if !ran.contains(&c.id) {
                    let branches = self
                        .labels
                        .get(p.label as usize)
                        .cloned()
                        .unwrap_or_default();
                    batch.push(to_commit(c, branches));
                }
            }
            if !ran.is_empty() {
                debug!(
                    skipped_with_runs = ran.len(),
                    "commits that already have runs"
                );
            }
            if self.pending.is_empty() && self.read_since_open >= REOPEN_AFTER {
                self.reopen().await;
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
        if !self.refs_trusted && self.resume.is_empty() {
            self.trust_refs().await?;
        }
        Ok(Vec::new())
    }

    /// What handing out `chunk` changes: its commits without a child among them
    /// become known tips; known tips among their parents are pruned once the
    /// chunk is recorded; branches at its commits get their values.
    fn chunk_change(
        &self,
        chunk: &[Pending],
        decoded: &[NewCommit],
        ran: &HashSet<ObjectId>,
    ) -> Change {
        let mut change = Change {
            edit: Edit::new(&self.known),
            stops: Vec::new(),
        };
        let in_chunk: HashSet<ObjectId> = chunk.iter().map(|p| p.id).collect();
        let mut with_child = HashSet::new();
        let mut remove = Vec::new();
        for c in decoded {
            for p in &c.parents {
                if in_chunk.contains(p) {
                    with_child.insert(*p);
                } else if self.known.tip(p).is_some() {
                    remove.push(*p);
                }
            }
        }
        remove.sort();
        remove.dedup();
        let mut after = Vec::new();
        for p in chunk {
            if with_child.contains(&p.id) {
                continue;
            }
            after.push(p.id);
            let branches = self
                .labels
                .get(p.label as usize)
                .cloned()
                .unwrap_or_default();
            change.edit.insert_tip(
                &self.known,
                p.id,
                KnownTip {
                    branches,
                    baseline: false,
                    confirmed: ran.contains(&p.id),
                },
            );
            change.stops.push(StopOp::AddTip(p.id, Some(p.time)));
        }
        if !remove.is_empty() {
            if after.iter().all(|a| ran.contains(a)) {
                for r in &remove {
                    change.edit.remove_tip(&self.known, r);
                    change.stops.push(StopOp::RemoveTip(*r));
                }
            } else {
                change
                    .edit
                    .prunes_mut(&self.known)
                    .push(PendingPrune { after, remove });
            }
        }
        for p in chunk {
            if let Some(names) = self.refs_later.get(&p.id) {
                for name in names {
                    self.set_ref(&mut change, name, Some(p.id), Some(Some(p.time)));
                }
            }
        }
        change
    }

    /// After the tips to resume are handed out again: branch values become
    /// stops, and resumed tips that were not handed out again are forgotten.
    async fn trust_refs(&mut self) -> Result<(), SourceError> {
        let mut change = Change {
            edit: Edit::new(&self.known),
            stops: Vec::new(),
        };
        let leftovers: Vec<ObjectId> = self
            .known
            .unconfirmed()
            .filter(|id| !self.stops.contains(id))
            .copied()
            .collect();
        for id in leftovers {
            change.edit.remove_tip(&self.known, &id);
        }
        for (_, id) in self.known.refs() {
            change.stops.push(StopOp::AddRef(*id, None));
        }
        self.commit(change).await?;
        self.refs_trusted = true;
        debug!("resumed; branch values are stops again");
        Ok(())
    }
}

#[async_trait]
impl CommitSource for GitSource {
    async fn next_commits(&mut self) -> Result<Option<Vec<Commit>>, SourceError> {
        loop {
            let batch = self.hand_out().await?;
            if !batch.is_empty() {
                return Ok(Some(batch));
            }
            if !self.scan_now {
                self.wakeup.wait().await;
            }
            // Until this scan completes, the next call scans without waiting.
            self.scan_now = true;
            self.scan().await?;
            self.scan_now = false;
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

fn to_commit(c: NewCommit, branches: Vec<String>) -> Commit {
    Commit {
        id: commit_id(&c.id),
        branches,
        parents: c.parents.iter().map(commit_id).collect(),
        summary: c.summary,
        author: c.author,
        time: c.time,
    }
}
