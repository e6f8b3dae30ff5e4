//! Detection end to end: from a ref update to the engine queuing the run, with
//! the server's parts in one process (the `GitSource` as the server configures
//! it by default: file watch, `InitialPolicy::Tips`; a `SqliteStore` in a
//! temporary file; the real `Engine` with a runner that answers every step at
//! once). Prints a table; no criterion, since each sample needs a ref update.
//!
//! - `one_branch`: a linear history of 10,000 commits on `main`.
//! - `branches_1000`, `branches_10000`: 1,000 or 10,000 branches over 100,000
//!   commits, refs packed (`BranchyRepo`, cached in the target directory). The
//!   source first hands out the branch tips, which the engine runs.
//!
//! In these, each sample writes one commit on a branch (the branches in turn)
//! and moves the branch in one ref update (gix, a loose ref), then times until
//! the engine announces `RunQueued` for that commit; the run is left to finish
//! before the next sample (not timed). After the samples the process's peak
//! resident set (`VmHWM`) and current one (`VmRSS`) are read from
//! `/proc/self/status`, with the number of runs in the store. The resident set
//! just before the server's parts start (the repository built and opened by
//! the bench itself) is printed too: `VmHWM` less that is what the server's
//! parts added.
//!
//! - `burst`: a history of 1,000 commits, its tip handed out; then 100,000 new
//!   commits written with `git fast-import` on a side ref and revealed by one
//!   update of `main` (not timed until then); timed until the first of them is
//!   queued.
//!
//! - `steady`: a server that runs for a long time, compressed: five branches
//!   (`BranchyRepo` with 1,000 commits), then 20,000 commits written one at a
//!   time on the branches in turn, each left to be queued and finished before
//!   the next. The resident set is read after the first 2,000 (warmed up) and
//!   at the end: what the server's parts keep per commit ever seen (a cache
//!   without a bound, a map that is never emptied) shows as the difference.
//!
//! Each scenario runs in the process it is given, so run one at a time for its
//! memory: `cargo bench -p benches --bench git_detect -- NAME` with NAME one of
//! `one_branch`, `branches_1000`, `branches_10000`, `burst`, `steady` (all, in
//! one process, without a name).

#![allow(
    clippy::print_stdout,
    reason = "a bench binary prints its table on stdout"
)]

use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::git_repo::{BenchRepo, BranchyRepo, fixture_cache};
use benches::instant_runner;
use ci_engine::{
    CommitSource, Engine, EngineConfig, EngineEvent, EngineHandle, Pipeline, RunQuery, RunStatus,
    RunStore,
};
use ci_server::git::{GitSource, GitSourceConfig};
use ci_server::sqlite_store::SqliteStore;
use tokio::sync::{broadcast, oneshot};

/// Samples per repository.
const SAMPLES: usize = 50;
/// Bound on any one wait for the engine.
const DEADLINE: Duration = Duration::from_secs(120);

/// Ends the benchmark with a message: setup failed, or something misbehaved.
fn fatal(what: &str, e: impl Display) -> ! {
    eprintln!("git_detect: {what}: {e}");
    std::process::exit(2)
}

/// An engine running over a source, with its events.
struct Running {
    store: Arc<dyn RunStore>,
    handle: EngineHandle,
    events: broadcast::Receiver<EngineEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ci_engine::EngineError>>,
    _db: tempfile::TempDir,
}

impl Running {
    /// Writes a commit with `write` (a commit and its ref update) and times
    /// how long after the write the engine queued its run; then waits for
    /// that run to finish, so the next sample starts from an idle engine.
    async fn time<E: Display>(
        &mut self,
        write: impl FnOnce() -> Result<gix::ObjectId, E>,
    ) -> Duration {
        let new = write().unwrap_or_else(|e| fatal("adding a commit", e));
        let written = Instant::now();
        let id = new.to_string();
        let queued = self.queued(&id).await;
        self.finished(&id).await;
        queued - written
    }

    /// Opens a SQLite store in a temporary directory, the source over `repo`
    /// with the default configuration, and starts the engine.
    async fn start(repo: &Path) -> Self {
        let db = tempfile::tempdir().unwrap_or_else(|e| fatal("temporary directory", e));
        let store: Arc<dyn RunStore> = Arc::new(
            SqliteStore::open(&db.path().join("runs.db"))
                .await
                .unwrap_or_else(|e| fatal("opening the store", e)),
        );
        let source = GitSource::open(repo, Arc::clone(&store), GitSourceConfig::default())
            .await
            .unwrap_or_else(|e| fatal("opening the source", e));
        let engine = Engine::new(
            Pipeline::standard(),
            instant_runner(),
            Arc::clone(&store),
            EngineConfig::default(),
        )
        .unwrap_or_else(|e| fatal("building the engine", e));
        let handle = engine.handle();
        let events = handle.subscribe();
        let (stop, stopped) = oneshot::channel::<()>();
        let source: Box<dyn CommitSource> = Box::new(source);
        let task = tokio::spawn(engine.run(source, async move {
            let _ = stopped.await;
        }));
        Self {
            store,
            handle,
            events,
            stop: Some(stop),
            task,
            _db: db,
        }
    }

    /// Waits until the store holds `n` runs and none is unfinished (bounded by
    /// [`DEADLINE`]), then listens afresh: the events of settling, thousands
    /// of them, are not waited for one by one.
    async fn settle(&mut self, n: u64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let runs = self.runs().await;
            let unfinished = self.unfinished().await;
            if runs >= n && unfinished == 0 {
                break;
            }
            if Instant::now() >= deadline {
                fatal(
                    "settling",
                    format!("{runs} runs of {n}, {unfinished} unfinished"),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.events = self.handle.subscribe();
    }

    /// Waits for `RunQueued` of `commit`; returns when it came.
    async fn queued(&mut self, commit: &str) -> Instant {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Ok(EngineEvent::RunQueued { commit: c, .. }) if c.as_str() == commit => {
                        return Instant::now();
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // The event may be among those missed: too late to time it.
                        fatal("engine events", "lagged behind while timing a sample")
                    }
                    Err(e) => fatal("engine events", e),
                }
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| fatal("waiting for a run", commit))
    }

    /// Waits for `RunFinished` of `commit`.
    async fn finished(&mut self, commit: &str) {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Ok(EngineEvent::RunFinished { commit: c, .. }) if c.as_str() == commit => {
                        return;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed events: ask the store instead.
                        let run = self.store.get_run(commit).await;
                        if run.is_ok_and(|r| r.status.is_terminal()) {
                            return;
                        }
                    }
                    Err(e) => fatal("engine events", e),
                }
            }
        };
        if tokio::time::timeout(DEADLINE, wait).await.is_err() {
            fatal("waiting for a run to finish", commit);
        }
    }

    /// How many runs are queued or running, from the store's totals: no run
    /// is read. (Reading them all with `unfinished_runs`, every 20 ms while
    /// thousands wait, cost the process hundreds of MiB: each read ran on a
    /// blocking thread and grew that thread's malloc arena, which kept the
    /// memory after it was freed.)
    async fn unfinished(&self) -> u64 {
        let mut n = 0;
        for status in [RunStatus::Queued, RunStatus::Running] {
            let query = RunQuery {
                status: Some(status),
                limit: 0,
                with_logs: false,
                with_steps: false,
                ..RunQuery::default()
            };
            n += self
                .store
                .list_runs(&query)
                .await
                .unwrap_or_else(|e| fatal("reading the store", e))
                .total;
        }
        n
    }

    async fn runs(&self) -> u64 {
        self.store
            .max_seq()
            .await
            .unwrap_or_else(|e| fatal("reading the store", e))
            .map_or(0, |s| s + 1)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(DEADLINE, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => fatal("the engine", e),
            Ok(Err(e)) => fatal("the engine task", e),
            Err(_) => fatal("stopping the engine", "it did not stop"),
        }
    }
}

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Median, 90th percentile and maximum of `samples`.
fn summary(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: usize| {
        samples
            .get(samples.len() * q / 100)
            .copied()
            .unwrap_or_default()
    };
    let max = samples.last().copied().unwrap_or_default();
    (at(50), at(90), max)
}

/// Prints a row of the table; `before` is the resident set (MiB) just before
/// the server's parts started.
fn print_row(name: &str, samples: &mut [Duration], runs: u64, before: f64) {
    let (median, p90, max) = summary(samples);
    let (hwm, rss) = memory();
    println!(
        "| {name} | {} | {median:.1?} | {p90:.1?} | {max:.1?} | {runs} | {before:.0} MiB | {hwm:.0} MiB | {rss:.1} MiB |",
        samples.len()
    );
}

async fn one_branch() {
    let mut repo =
        BenchRepo::with_history(10_000).unwrap_or_else(|e| fatal("building the repository", e));
    let (_, before) = memory();
    let mut running = Running::start(repo.path()).await;
    running.settle(1).await;
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        samples.push(running.time(|| repo.add_commits(1)).await);
    }
    let runs = running.runs().await;
    print_row("one branch, 10,000 commits", &mut samples, runs, before);
    running.stop().await;
}

async fn many_branches(count: u64) {
    let mut repo = BranchyRepo::cached(count, 100_000, &fixture_cache())
        .unwrap_or_else(|e| fatal("building the repository", e));
    let branches: Vec<String> = repo.branches().to_vec();
    let (_, before) = memory();
    let mut running = Running::start(repo.path()).await;
    running.settle(count).await;
    let mut samples = Vec::with_capacity(SAMPLES);
    for branch in branches.iter().cycle().take(SAMPLES) {
        samples.push(running.time(|| repo.add_commit(branch)).await);
    }
    let runs = running.runs().await;
    print_row(
        &format!("{count} branches, 100,000 commits, packed refs"),
        &mut samples,
        runs,
        before,
    );
    running.stop().await;
}

async fn burst() {
    const BURST: u64 = 100_000;
    let mut repo =
        BenchRepo::with_history(1_000).unwrap_or_else(|e| fatal("building the repository", e));
    let (_, before) = memory();
    let mut running = Running::start(repo.path()).await;
    running.settle(1).await;
    let tip = repo
        .import_commits(BURST)
        .unwrap_or_else(|e| fatal("importing the burst", e));
    // The burst's first commit: the child of the old tip.
    let first = {
        let r = gix::open(repo.path()).unwrap_or_else(|e| fatal("opening the repository", e));
        let mut id = tip;
        for _ in 1..BURST {
            let c = r
                .find_commit(id)
                .unwrap_or_else(|e| fatal("reading the burst", e));
            id = c
                .parent_ids()
                .next()
                .map(|p| p.detach())
                .unwrap_or_else(|| fatal("reading the burst", "a commit without a parent"));
        }
        id.to_string()
    };
    repo.move_tip(tip)
        .unwrap_or_else(|e| fatal("moving the branch", e));
    let written = Instant::now();
    let queued = running.queued(&first).await;
    let (hwm, rss) = memory();
    println!(
        "| burst of {BURST} commits, one ref update: first run queued | 1 | {:.1?} | | | | {before:.0} MiB | {hwm:.0} MiB | {rss:.1} MiB |",
        queued - written
    );
    running.stop().await;
}

async fn steady() {
    const WARM_UP: usize = 2_000;
    const COMMITS: usize = 20_000;
    let mut repo = BranchyRepo::cached(5, 1_000, &fixture_cache())
        .unwrap_or_else(|e| fatal("building the repository", e));
    let branches: Vec<String> = repo.branches().to_vec();
    let (_, before) = memory();
    let mut running = Running::start(repo.path()).await;
    running.settle(5).await;
    let mut samples = Vec::with_capacity(COMMITS);
    let mut warm = f64::NAN;
    for (i, branch) in branches.iter().cycle().take(COMMITS).enumerate() {
        if i == WARM_UP {
            warm = memory().1;
        }
        samples.push(running.time(|| repo.add_commit(branch)).await);
    }
    let runs = running.runs().await;
    print_row(
        &format!(
            "steady: 5 branches, {COMMITS} commits one at a time (VmRSS after {WARM_UP}: {warm:.1} MiB)"
        ),
        &mut samples,
        runs,
        before,
    );
    running.stop().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal("building the tokio runtime", e));
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    println!(
        "| repository | samples | ref update → run queued (median) | p90 | max | runs in store | VmRSS before start | VmHWM | VmRSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name == o);
    rt.block_on(async {
        if wanted("one_branch") {
            one_branch().await;
        }
        if wanted("branches_1000") {
            many_branches(1_000).await;
        }
        if wanted("branches_10000") {
            many_branches(10_000).await;
        }
        if wanted("burst") {
            burst().await;
        }
        if wanted("steady") {
            steady().await;
        }
    });
}
