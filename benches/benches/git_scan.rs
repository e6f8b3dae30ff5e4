//! How long `GitSource` takes to hand out new commits, against the length of the
//! history: the claim is that a scan costs in proportion to the new commits, not
//! to the history.
//!
//! For each history length (1,000, 10,000 and 100,000 commits, made with
//! `git fast-import`), a long-lived `GitSource` over a `MemoryStore`
//! (`InitialPolicy::Tips`, no file watch, 10 ms poll) hands out the tip, which
//! gets a run as the engine would record it. Then each iteration adds K new
//! commits on top (gix, one ref update; not timed) and times one
//! `next_commits()` call until it returns them; the runs of the batch are
//! recorded before the next iteration (not timed). Every iteration makes the
//! history longer, so once it has grown by 10 % the fixture is built afresh
//! (not timed): a benchmark labelled N always scans a history of N to
//! 1.1 N + K commits.
//!
//! The runtime's clock is paused, so the wait for the poll tick costs no real
//! time: the number is the scan itself (reading the refs, the walk from the new
//! tip with the known tips hidden, decoding the new commits, one store lookup
//! per new commit, saving the source's state) plus `spawn_blocking`. A user
//! additionally waits for the wake-up, which `git_notice` measures: the source
//! as configured by default (file watch on the refs, events gathered until they
//! pause), in real time, from the ref update to the batch returned.
//!
//! `git_scan_branches` measures the same single scan against the number of
//! branches: 1,000 and 10,000 branches over 100,000 commits, refs packed
//! (`BranchyRepo`, built once and cached under the target directory), one new
//! commit on one branch per iteration (the branches in turn). The claim is that
//! a scan costs what changed, not the number of branches.
//!
//! Run: `cargo bench -p benches --bench git_scan`.

// criterion's macros generate functions without doc comments.
#![allow(missing_docs)]

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::git_repo::{BenchRepo, BranchyRepo, fixture_cache};
use ci_engine::{Commit, CommitSource, MemoryStore, Pipeline, Run, RunStore};
use ci_server::git::{GitSource, GitSourceConfig, InitialPolicy, MIN_POLL_INTERVAL};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

/// History lengths at the start of each benchmark.
const HISTORIES: [u64; 3] = [1_000, 10_000, 100_000];

/// New commits per scan, with the time criterion measures each for.
const NEW_COMMITS: [(u64, Duration); 2] =
    [(1, Duration::from_secs(2)), (100, Duration::from_secs(1))];

/// Ends the benchmark with a message: setup failed, or the source misbehaved.
fn fatal(what: &str, e: impl Display) -> ! {
    eprintln!("git_scan: {what}: {e}");
    std::process::exit(2)
}

/// A repository, a source over it and the store the source resumes from.
struct Fixture {
    /// The history length it was built with.
    history: u64,
    repo: BenchRepo,
    store: Arc<MemoryStore>,
    source: GitSource,
    next_seq: u64,
}

impl Fixture {
    /// Builds a history of `commits`, opens the source, takes its first batch
    /// (the tip) and records a run for it.
    async fn new(commits: u64, config: GitSourceConfig) -> Self {
        let repo = BenchRepo::with_history(commits)
            .unwrap_or_else(|e| fatal("building the repository", e));
        let store = Arc::new(MemoryStore::new());
        let dyn_store: Arc<dyn RunStore> = Arc::clone(&store) as Arc<dyn RunStore>;
        let source = GitSource::open(repo.path(), dyn_store, config)
            .await
            .unwrap_or_else(|e| fatal("opening the source", e));
        let mut fixture = Self {
            history: commits,
            repo,
            store,
            source,
            next_seq: 0,
        };
        let first = fixture.next_batch().await;
        fixture.check(&first, 1);
        fixture.record(first).await;
        fixture
    }

    /// Whether the history has grown by more than 10 % since it was built.
    fn grown(&self) -> bool {
        self.repo.commits() > self.history + self.history / 10
    }

    /// Adds `k` commits (not timed), then times the `next_commits` call that
    /// returns them, then records their runs (not timed).
    fn measure_once(&mut self, rt: &tokio::runtime::Runtime, k: u64) -> Duration {
        if let Err(e) = self.repo.add_commits(k) {
            fatal("adding commits", e);
        }
        let start = Instant::now();
        let batch = rt.block_on(self.next_batch());
        let elapsed = start.elapsed();
        self.check(&batch, k);
        rt.block_on(self.record(batch));
        elapsed
    }

    async fn next_batch(&mut self) -> Vec<Commit> {
        match self.source.next_commits().await {
            Ok(Some(batch)) => batch,
            Ok(None) => fatal("next_commits", "the source ended"),
            Err(e) => fatal("next_commits", e),
        }
    }

    /// The batch must be the `k` newest commits, ending with the tip.
    fn check(&self, batch: &[Commit], k: u64) {
        let tip = self.repo.tip().to_string();
        let last = batch.last().map(|c| c.id.as_str());
        if batch.len() as u64 != k || last != Some(tip.as_str()) {
            fatal(
                "checking the batch",
                format!(
                    "expected {k} commits ending with {tip}, got {} ending with {last:?}",
                    batch.len()
                ),
            );
        }
    }

    /// Records a run for every commit of `batch`, as the engine does first.
    async fn record(&mut self, batch: Vec<Commit>) {
        for commit in batch {
            let run = Run::new(commit, self.next_seq, &Pipeline::standard());
            self.next_seq += 1;
            if let Err(e) = self.store.insert_run(&run).await {
                fatal("recording a run", e);
            }
        }
    }
}

/// The source as the scan benchmark runs it: polling every 10 ms (in paused
/// time), no file watch.
fn polling() -> GitSourceConfig {
    GitSourceConfig {
        poll_interval: MIN_POLL_INTERVAL,
        watch: false,
        initial: InitialPolicy::Tips,
    }
}

fn git_scan(c: &mut Criterion) {
    // Paused clock: the source's poll tick fires as soon as the runtime is idle.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| fatal("building the tokio runtime", e));
    for (k, measurement) in NEW_COMMITS {
        let mut group = c.benchmark_group(format!("git_scan/new_{k}"));
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(measurement / 4)
            .measurement_time(measurement)
            .throughput(Throughput::Elements(k));
        for history in HISTORIES {
            let started = Instant::now();
            let mut fixture = rt.block_on(Fixture::new(history, polling()));
            eprintln!(
                "git_scan: history of {history} commits made and its tip handed out in {:.1?}",
                started.elapsed()
            );
            let mut rebuilds = 0u32;
            let mut longest = 0u64;
            let mut scans = 0u64;
            group.bench_function(BenchmarkId::new("history", history), |b| {
                b.iter_custom(|iters| {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        if fixture.grown() {
                            // Not timed: keep the history within 10 % of its label.
                            fixture = rt.block_on(Fixture::new(history, polling()));
                            rebuilds += 1;
                        }
                        measured += fixture.measure_once(&rt, k);
                        longest = longest.max(fixture.repo.commits());
                        scans += 1;
                    }
                    measured
                });
            });
            eprintln!(
                "git_scan: new_{k}/history/{history}: {scans} scans of histories of \
                 {history} to {longest} commits ({rebuilds} rebuilds)"
            );
        }
        group.finish();
    }
}

/// What a user waits for: the ref update noticed through the file watch (the
/// source's default), the gathering of its burst and the scan, in real time.
fn git_notice(c: &mut Criterion) {
    const HISTORY: u64 = 10_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal("building the tokio runtime", e));
    let config = GitSourceConfig {
        // Long enough that only the watch wakes the source.
        poll_interval: Duration::from_secs(60),
        watch: true,
        initial: InitialPolicy::Tips,
    };
    let mut fixture = rt.block_on(Fixture::new(HISTORY, config));
    let mut group = c.benchmark_group("git_notice/new_1");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    group.bench_function(BenchmarkId::new("history", HISTORY), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fixture.measure_once(&rt, 1)).sum());
    });
    group.finish();
}

/// Branch counts of the many-branch benchmark, over [`BRANCHY_COMMITS`].
const BRANCHES: [u64; 2] = [1_000, 10_000];

/// Commits in the many-branch repositories.
const BRANCHY_COMMITS: u64 = 100_000;

/// A source over a [`BranchyRepo`] that has handed out every branch tip.
struct BranchyFixture {
    repo: BranchyRepo,
    store: Arc<MemoryStore>,
    source: GitSource,
    next_seq: u64,
    /// Which branch gets the next commit (round robin).
    turn: usize,
}

impl BranchyFixture {
    /// Copies the cached repository, opens the source (`InitialPolicy::Tips`)
    /// and takes batches until every branch tip has been handed out and
    /// recorded.
    async fn new(branches: u64) -> Self {
        let repo = BranchyRepo::cached(branches, BRANCHY_COMMITS, &fixture_cache())
            .unwrap_or_else(|e| fatal("building the many-branch repository", e));
        let store = Arc::new(MemoryStore::new());
        let dyn_store: Arc<dyn RunStore> = Arc::clone(&store) as Arc<dyn RunStore>;
        let source = GitSource::open(repo.path(), dyn_store, polling())
            .await
            .unwrap_or_else(|e| fatal("opening the source", e));
        let mut fixture = Self {
            repo,
            store,
            source,
            next_seq: 0,
            turn: 0,
        };
        let mut handed_out = 0u64;
        // One batch per call at least: bounded by the number of tips.
        for _ in 0..branches {
            if handed_out >= branches {
                break;
            }
            let batch = match fixture.source.next_commits().await {
                Ok(Some(batch)) => batch,
                Ok(None) => fatal("next_commits", "the source ended"),
                Err(e) => fatal("next_commits", e),
            };
            handed_out += batch.len() as u64;
            fixture.record(batch).await;
        }
        if handed_out != branches {
            fatal(
                "taking the first batches",
                format!("expected {branches} branch tips, got {handed_out}"),
            );
        }
        fixture
    }

    /// Adds one commit to the next branch in turn (not timed), times the
    /// `next_commits` call that returns it, then records its run (not timed).
    fn measure_once(&mut self, rt: &tokio::runtime::Runtime) -> Duration {
        let branch = self.repo.branches()[self.turn % self.repo.branches().len()].clone();
        self.turn += 1;
        let new = self
            .repo
            .add_commit(&branch)
            .unwrap_or_else(|e| fatal("adding a commit", e));
        let start = Instant::now();
        let batch = rt.block_on(async {
            match self.source.next_commits().await {
                Ok(Some(batch)) => batch,
                Ok(None) => fatal("next_commits", "the source ended"),
                Err(e) => fatal("next_commits", e),
            }
        });
        let elapsed = start.elapsed();
        let want = new.to_string();
        if batch.len() != 1 || batch[0].id.as_str() != want || batch[0].branches != [branch] {
            fatal(
                "checking the batch",
                format!("expected only {want}, got {batch:?}"),
            );
        }
        rt.block_on(self.record(batch));
        elapsed
    }

    async fn record(&mut self, batch: Vec<Commit>) {
        for commit in batch {
            let run = Run::new(commit, self.next_seq, &Pipeline::standard());
            self.next_seq += 1;
            if let Err(e) = self.store.insert_run(&run).await {
                fatal("recording a run", e);
            }
        }
    }
}

/// One scan after one new commit on one branch, against the number of
/// branches: 1,000 and 10,000 branches over 100,000 commits, packed refs. The
/// commits go to the branches in turn (`main`, `topic-00001`, …), so each
/// lands on a different branch.
fn git_scan_branches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| fatal("building the tokio runtime", e));
    let mut group = c.benchmark_group("git_scan_branches/new_1");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for branches in BRANCHES {
        let started = Instant::now();
        let mut fixture = rt.block_on(BranchyFixture::new(branches));
        eprintln!(
            "git_scan_branches: {branches} branches over {BRANCHY_COMMITS} commits ready, \
             tips handed out, in {:.1?}",
            started.elapsed()
        );
        group.bench_function(BenchmarkId::new("branches", branches), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| fixture.measure_once(&rt)).sum());
        });
    }
    group.finish();
}

criterion_group!(benches, git_scan, git_notice, git_scan_branches);
criterion_main!(benches);
