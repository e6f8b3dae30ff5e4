//! The behaviour every [`RunStore`] must show, as one suite any implementation
//! can run against itself.
//!
//! Each public `async fn` takes a fresh, empty store, checks one piece of the
//! trait's contract and panics (with a message naming the case) if the store
//! breaks it. [`run_all`] runs every case, each on a new store from a factory:
//!
//! ```
//! use std::sync::Arc;
//! use ci_engine::{MemoryStore, RunStore};
//! use ci_engine::testing::store_contract;
//!
//! let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
//! rt.block_on(store_contract::run_all(|| async {
//!     Arc::new(MemoryStore::new()) as Arc<dyn RunStore>
//! }));
//! ```

use std::future::Future;
use std::sync::Arc;

use crate::model::{
    Attempt, AttemptOutcome, Commit, CommitId, Run, RunAction, RunActionKind, RunStatus,
    StepRecord, StepStatus,
};
use crate::store::{RunQuery, RunStore, StoreError};

/// A store shared between the tasks of a case.
pub type SharedStore = Arc<dyn RunStore>;

/// Runs every case of the suite, each on a fresh empty store made by `make`.
///
/// Cases run one after the other; the first broken promise panics with the
/// case's name in the message.
pub async fn run_all<F, Fut>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = SharedStore>,
{
    insert_once(make().await).await;
    insert_runs_stores_each_new_commit_once(make().await).await;
    update_replaces_the_whole_run(make().await).await;
    update_can_shrink_a_run(make().await).await;
    update_of_unknown_run_is_not_found(make().await).await;
    get_by_full_id_and_unique_prefix(make().await).await;
    ambiguous_prefix_counts_matches(make().await).await;
    unknown_id_is_not_found(make().await).await;
    full_id_wins_over_longer_ids(make().await).await;
    prefix_is_literal_and_unicode_safe(make().await).await;
    list_is_newest_first_with_paging(make().await).await;
    list_filters_by_status_and_branch(make().await).await;
    list_pages_with_a_cursor(make().await).await;
    generation_moves_with_every_write(make().await).await;
    list_follows_updates(make().await).await;
    unfinished_runs_oldest_first(make().await).await;
    unfinished_after_pages_in_queue_order(make().await).await;
    update_runs_writes_the_batch(make().await).await;
    has_run_and_max_seq(make().await).await;
    state_is_saved_and_replaced(make().await).await;
    unicode_and_large_logs_round_trip(make().await).await;
    listing_without_logs_keeps_everything_else(make().await).await;
    concurrent_inserts_all_land(make().await).await;
}

// ----- fixtures ---------------------------------------------------------------

/// A 40-hex-digit commit id made from `n` (distinct `n`, distinct ids).
pub fn hex_id(n: u64) -> String {
    format!("{n:040x}")
}

/// A queued run of `id` with `seq`, on `branches`, with the standard three
/// pending steps and fixed times (so it compares equal after a round trip).
pub fn queued_run(id: &str, seq: u64, branches: &[&str]) -> Run {
    Run {
        commit: Commit {
            id: CommitId::new(id),
            branches: branches.iter().map(|b| (*b).to_owned()).collect(),
            parents: Vec::new(),
            summary: format!("commit {id}"),
            author: "Ada <ada@example.com>".into(),
            time: 1_700_000_000,
        },
        seq,
        status: RunStatus::Queued,
        failed_steps: Vec::new(),
        steps: ["lint", "build", "test"]
            .into_iter()
            .map(StepRecord::pending)
            .collect(),
        created_at: 1_700_000_000_000 + i64::try_from(seq).unwrap_or(0),
        started_at: None,
        finished_at: None,
        retry_seq: None,
        actions: Vec::new(),
    }
}

/// A run of `id` with `status` (steps set so the status is the one they imply).
pub fn run_with_status(id: &str, seq: u64, branches: &[&str], status: RunStatus) -> Run {
    let mut run = queued_run(id, seq, branches);
    let step_status = match status {
        RunStatus::Queued => StepStatus::Pending,
        RunStatus::Running => StepStatus::Running,
        RunStatus::Success => StepStatus::Success,
        RunStatus::Failure => StepStatus::Failure,
        RunStatus::Error => StepStatus::Error,
        RunStatus::Cancelled => StepStatus::Cancelled,
    };
    if status != RunStatus::Queued {
        run.steps[0].status = step_status;
        run.steps[0]
            .attempts
            .push(attempt(1, outcome_for(step_status), "ok"));
        run.started_at = Some(run.created_at + 10);
        if status.is_terminal() {
            for s in &mut run.steps[1..] {
                s.status = if step_status == StepStatus::Success {
                    StepStatus::Success
                } else {
                    StepStatus::Skipped
                };
            }
            run.finished_at = Some(run.created_at + 20);
        }
    }
    run.status = status;
    run.failed_steps = run
        .steps
        .iter()
        .filter(|s| s.status.is_failed())
        .map(|s| s.name.clone())
        .collect();
    run
}

fn outcome_for(status: StepStatus) -> AttemptOutcome {
    match status {
        StepStatus::Success => AttemptOutcome::Success,
        StepStatus::Failure => AttemptOutcome::Failure,
        StepStatus::Error => AttemptOutcome::Lost,
        StepStatus::Cancelled => AttemptOutcome::Cancelled,
        _ => AttemptOutcome::Running,
    }
}

fn attempt(number: u32, outcome: AttemptOutcome, logs: &str) -> Attempt {
    let running = outcome == AttemptOutcome::Running;
    Attempt {
        number,
        outcome,
        reason: None,
        logs: logs.to_owned(),
        started_at: 1_700_000_000_500 + i64::from(number),
        finished_at: (!running).then_some(1_700_000_001_500),
        duration_ms: (!running).then_some(1000),
        runner_duration_ms: (!running).then_some(990),
        // Some attempts name their runner, some (older records) do not.
        runner: (number % 2 == 1).then(|| format!("http://runner-{number}.test:8080")),
    }
}

/// A run with every field set: several branches and parents, steps in every
/// kind of state, attempts with and without reasons, times and durations.
pub fn rich_run(id: &str, seq: u64) -> Run {
    let mut lint = StepRecord::pending("lint");
    lint.status = StepStatus::Success;
    lint.attempts
        .push(attempt(1, AttemptOutcome::Success, "lint ok\n"));

    let mut build = StepRecord::pending("build");
    build.status = StepStatus::Failure;
    let mut lost = attempt(1, AttemptOutcome::Lost, "");
    lost.reason = Some("runner dropped the connection".into());
    lost.runner_duration_ms = None;
    let mut interrupted = attempt(2, AttemptOutcome::Interrupted, "half a log");
    interrupted.reason = Some("the engine stopped while the step was in flight".into());
    interrupted.duration_ms = None;
    build.attempts = vec![
        lost,
        interrupted,
        attempt(
            3,
            AttemptOutcome::Failure,
            "error[E0308]: mismatched types\n",
        ),
    ];
    build.budget_from = 2;

    let mut test = StepRecord::pending("test");
    test.status = StepStatus::Skipped;
    test.reason = Some("needs build, which failed".into());

    let mut extra = StepRecord::pending("deploy");
    extra.status = StepStatus::Running;
    extra.attempts.push(attempt(1, AttemptOutcome::Running, ""));

    Run {
        commit: Commit {
            id: CommitId::new(id),
            branches: vec!["main".into(), "feature/ü".into(), "release-1.0".into()],
            parents: vec![CommitId::new(hex_id(1)), CommitId::new(hex_id(2))],
            summary: "Merge branch 'feature/ü' — with “quotes”".into(),
            author: "Grace Hopper <grace@example.com>".into(),
            time: -86_400,
        },
        seq,
        status: RunStatus::Failure,
        failed_steps: vec!["build".into()],
        steps: vec![lint, build, test, extra],
        created_at: 1_700_000_000_000,
        started_at: Some(1_700_000_000_100),
        finished_at: Some(1_700_000_009_999),
        // Retried once, then cancelled: the queue position, both actions and
        // the build's budget marker must come back as written.
        retry_seq: Some(seq + 1_000),
        actions: vec![
            RunAction {
                kind: RunActionKind::Retry,
                at: 1_700_000_005_000,
                by: Some("127.0.0.1:41234".into()),
            },
            RunAction {
                kind: RunActionKind::Cancel,
                at: 1_700_000_006_000,
                by: None,
            },
        ],
    }
}

fn ids(runs: &[Run]) -> Vec<String> {
    runs.iter().map(|r| r.id().to_string()).collect()
}

fn seqs(runs: &[Run]) -> Vec<u64> {
    runs.iter().map(|r| r.seq).collect()
}

async fn insert(store: &dyn RunStore, run: &Run) {
    let inserted = store
        .insert_run(run)
        .await
        .unwrap_or_else(|e| panic!("insert_run({}) failed: {e}", run.id()));
    assert!(
        inserted,
        "insert_run({}) of a new commit returned false",
        run.id()
    );
}

async fn get(store: &dyn RunStore, id: &str) -> Run {
    store
        .get_run(id)
        .await
        .unwrap_or_else(|e| panic!("get_run({id:?}) failed: {e}"))
}

async fn list(store: &dyn RunStore, query: RunQuery) -> (u64, Vec<Run>) {
    let page = store
        .list_runs(&query)
        .await
        .unwrap_or_else(|e| panic!("list_runs({query:?}) failed: {e}"));
    (page.total, page.runs)
}

fn query(status: Option<RunStatus>, branch: Option<&str>) -> RunQuery {
    RunQuery {
        status,
        branch: branch.map(str::to_owned),
        ..RunQuery::default()
    }
}

// ----- cases ------------------------------------------------------------------

/// A batch stores the runs of new commits and skips the others, saying which
/// it stored; a `seq` another run has is an error.
pub async fn insert_runs_stores_each_new_commit_once(store: SharedStore) {
    const CASE: &str = "insert_runs_stores_each_new_commit_once";
    let known = queued_run(&hex_id(1), 0, &["main"]);
    insert(&*store, &known).await;
    let batch = [
        queued_run(&hex_id(2), 1, &["main"]),
        queued_run(&hex_id(1), 2, &["other"]),
        rich_run(&hex_id(3), 3),
        queued_run(&hex_id(2), 4, &["main"]),
    ];
    let stored = store
        .insert_runs(&batch)
        .await
        .unwrap_or_else(|e| panic!("{CASE}: insert_runs failed: {e}"));
    assert_eq!(
        stored,
        [true, false, true, false],
        "{CASE}: which runs were stored"
    );
    assert_eq!(
        get(&*store, &hex_id(1)).await,
        known,
        "{CASE}: a known run changed"
    );
    assert_eq!(
        get(&*store, &hex_id(2)).await,
        batch[0],
        "{CASE}: the first of a commit twice"
    );
    assert_eq!(
        get(&*store, &hex_id(3)).await,
        batch[2],
        "{CASE}: a new run"
    );
    let (total, _) = list(&*store, RunQuery::default()).await;
    assert_eq!(total, 3, "{CASE}: runs stored");
    assert_eq!(
        store.insert_runs(&[]).await.ok(),
        Some(Vec::new()),
        "{CASE}: an empty batch"
    );
    let taken_seq = [queued_run(&hex_id(9), 3, &["main"])];
    assert!(
        store.insert_runs(&taken_seq).await.is_err(),
        "{CASE}: a seq another run has was accepted"
    );
    assert!(
        !store
            .has_run(&CommitId::new(hex_id(9)))
            .await
            .expect("has_run"),
        "{CASE}: the refused run is stored"
    );
}

/// The first insert of a commit stores it; a second insert of the same commit,
/// even with other contents, returns `false` and changes nothing.
pub async fn insert_once(store: SharedStore) {
    let first = rich_run(&hex_id(7), 3);
    insert(&*store, &first).await;

    let mut second = queued_run(&hex_id(7), 99, &["other"]);
    second.commit.summary = "a different summary".into();
    let again = store.insert_run(&second).await.expect("second insert_run");
    assert!(
        !again,
        "insert_once: a second insert of one commit returned true"
    );

    assert_eq!(
        get(&*store, &hex_id(7)).await,
        first,
        "insert_once: the stored run changed"
    );
    let (total, runs) = list(&*store, RunQuery::default()).await;
    assert_eq!(total, 1, "insert_once: a second insert added a run");
    assert_eq!(
        store.max_seq().await.expect("max_seq"),
        first.retry_seq,
        "the run's retry position is the highest"
    );
    assert_eq!(runs, [first]);
    let (total, _) = list(&*store, query(None, Some("other"))).await;
    assert_eq!(
        total, 0,
        "insert_once: the rejected run's branch was recorded"
    );
}

/// `update_run` replaces everything: commit details, steps, attempts, logs,
/// statuses and times all come back equal (`==`).
pub async fn update_replaces_the_whole_run(store: SharedStore) {
    let id = hex_id(42);
    insert(&*store, &queued_run(&id, 5, &["main"])).await;

    let rich = rich_run(&id, 5);
    store.update_run(&rich).await.expect("update_run");
    assert_eq!(
        get(&*store, &id).await,
        rich,
        "update: the rich run did not round-trip"
    );

    let mut next = rich.clone();
    next.steps[3].status = StepStatus::Success;
    next.steps[3].attempts[0] = attempt(1, AttemptOutcome::Success, "deployed\n");
    next.steps[1].attempts[2].logs.push_str("more\n");
    next.steps[1].attempts[2].reason = Some("a reason after all".into());
    next.commit.branches = vec!["hotfix".into()];
    next.finished_at = None;
    store.update_run(&next).await.expect("second update_run");
    assert_eq!(
        get(&*store, &id).await,
        next,
        "update: the second update did not replace the first"
    );

    let (total, _) = list(&*store, query(None, Some("main"))).await;
    assert_eq!(
        total, 0,
        "update: the run is still listed under a branch it left"
    );
    let (total, runs) = list(&*store, query(None, Some("hotfix"))).await;
    assert_eq!(
        (total, ids(&runs)),
        (1, vec![id.clone()]),
        "update: new branch not listed"
    );
}

/// An update with fewer steps and attempts than before leaves none of the old ones
/// behind, and an update may move a run to another `seq`.
pub async fn update_can_shrink_a_run(store: SharedStore) {
    let id = hex_id(9);
    insert(&*store, &rich_run(&id, 2)).await;
    insert(&*store, &queued_run(&hex_id(10), 4, &[])).await;

    let mut small = queued_run(&id, 7, &[]);
    small.steps.truncate(1);
    small.steps[0]
        .attempts
        .push(attempt(1, AttemptOutcome::Running, ""));
    small.status = RunStatus::Running;
    store.update_run(&small).await.expect("update_run");
    assert_eq!(
        get(&*store, &id).await,
        small,
        "shrink: old steps or attempts survived"
    );

    assert_eq!(
        store.max_seq().await.expect("max_seq"),
        Some(7),
        "shrink: seq not moved"
    );
    let (_, runs) = list(&*store, RunQuery::default()).await;
    assert_eq!(
        seqs(&runs),
        [7, 4],
        "shrink: list does not follow the new seq"
    );
}

/// Updating a commit that has no run is `NotFound` and stores nothing.
pub async fn update_of_unknown_run_is_not_found(store: SharedStore) {
    insert(&*store, &queued_run(&hex_id(1), 0, &[])).await;
    let ghost = rich_run(&hex_id(2), 1);
    match store.update_run(&ghost).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("update of unknown run: expected NotFound, got {other:?}"),
    }
    assert!(
        !store.has_run(ghost.id()).await.expect("has_run"),
        "update of unknown run created it"
    );
    let (total, _) = list(&*store, RunQuery::default()).await;
    assert_eq!(total, 1);
}

/// A run is found by its full id and by any prefix that only it has.
pub async fn get_by_full_id_and_unique_prefix(store: SharedStore) {
    let a = queued_run("abc123", 0, &[]);
    let b = queued_run("abd456", 1, &[]);
    let c = queued_run("b00000", 2, &[]);
    for r in [&a, &b, &c] {
        insert(&*store, r).await;
    }
    assert_eq!(get(&*store, "abc123").await, a);
    assert_eq!(get(&*store, "abc").await, a, "unique prefix");
    assert_eq!(get(&*store, "abd4").await, b);
    assert_eq!(get(&*store, "b").await, c, "one-character prefix");
}

/// A prefix several runs share is `Ambiguous`, with the number of runs it matches.
pub async fn ambiguous_prefix_counts_matches(store: SharedStore) {
    for (seq, id) in ["aa01", "aa02", "aa03", "ab00", "ba00"]
        .into_iter()
        .enumerate()
    {
        insert(&*store, &queued_run(id, seq as u64, &[])).await;
    }
    for (prefix, n) in [("aa", 3), ("a", 4), ("aa0", 3), ("", 5)] {
        match store.get_run(prefix).await {
            Err(StoreError::Ambiguous { prefix: p, matches }) => {
                assert_eq!(p, prefix, "Ambiguous names the prefix asked for");
                assert_eq!(
                    matches, n,
                    "Ambiguous({prefix:?}) counts the runs it matches"
                );
            }
            other => panic!("get_run({prefix:?}): expected Ambiguous, got {other:?}"),
        }
    }
}

/// Ids and prefixes no run has are `NotFound`, on either side of the stored ids.
pub async fn unknown_id_is_not_found(store: SharedStore) {
    match store.get_run("abc").await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("get_run on an empty store: expected NotFound, got {other:?}"),
    }
    insert(&*store, &queued_run("m000", 0, &[])).await;
    for missing in ["a", "m0001", "m1", "z", "M000", "m000 "] {
        match store.get_run(missing).await {
            Err(StoreError::NotFound(_)) => {}
            other => panic!("get_run({missing:?}): expected NotFound, got {other:?}"),
        }
    }
}

/// A string that is one run's full id and a prefix of another's returns the
/// exact match, not `Ambiguous`.
pub async fn full_id_wins_over_longer_ids(store: SharedStore) {
    let short = queued_run("abc", 0, &[]);
    let long = queued_run("abcdef", 1, &[]);
    insert(&*store, &long).await;
    insert(&*store, &short).await;
    assert_eq!(get(&*store, "abc").await, short, "exact id must win");
    assert_eq!(get(&*store, "abcd").await, long);
    match store.get_run("ab").await {
        Err(StoreError::Ambiguous { matches: 2, .. }) => {}
        other => panic!("get_run(\"ab\"): expected Ambiguous of 2, got {other:?}"),
    }
}

/// A prefix is matched literally (no wildcards such as `%` or `_`) and works on
/// ids with multi-byte characters.
pub async fn prefix_is_literal_and_unicode_safe(store: SharedStore) {
    for (seq, id) in ["ab_1", "abx1", "a%b", "é1", "é2", "f"]
        .into_iter()
        .enumerate()
    {
        insert(&*store, &queued_run(id, seq as u64, &[])).await;
    }
    assert_eq!(
        get(&*store, "ab_").await.id().as_str(),
        "ab_1",
        "`_` is not a wildcard"
    );
    assert_eq!(
        get(&*store, "a%").await.id().as_str(),
        "a%b",
        "`%` is not a wildcard"
    );
    match store.get_run("é").await {
        Err(StoreError::Ambiguous { matches: 2, .. }) => {}
        other => panic!("get_run(\"é\"): expected Ambiguous of 2, got {other:?}"),
    }
    assert_eq!(get(&*store, "é2").await.id().as_str(), "é2");
    match store.get_run("e").await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("get_run(\"e\"): expected NotFound, got {other:?}"),
    }
}

/// `list_runs` orders by `seq`, newest first (not by insertion order or id), pages
/// with limit and offset, and `total` counts every match whatever the page.
pub async fn list_is_newest_first_with_paging(store: SharedStore) {
    let (total, runs) = list(&*store, RunQuery::default()).await;
    assert_eq!((total, runs.len()), (0, 0), "list on an empty store");

    // Inserted out of order, with ids that sort differently from seq.
    for seq in [3u64, 0, 9, 5, 1, 7, 2, 8, 6, 4] {
        insert(&*store, &queued_run(&hex_id(100 - seq), seq, &[])).await;
    }
    let (total, runs) = list(&*store, RunQuery::default()).await;
    assert_eq!(total, 10);
    assert_eq!(
        seqs(&runs),
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        "newest first by seq"
    );

    let page = |limit, offset| RunQuery {
        limit,
        offset,
        ..RunQuery::default()
    };
    let (total, runs) = list(&*store, page(3, 0)).await;
    assert_eq!((total, seqs(&runs)), (10, vec![9, 8, 7]), "limit");
    let (total, runs) = list(&*store, page(3, 3)).await;
    assert_eq!(
        (total, seqs(&runs)),
        (10, vec![6, 5, 4]),
        "limit with offset"
    );
    let (total, runs) = list(&*store, page(5, 8)).await;
    assert_eq!((total, seqs(&runs)), (10, vec![1, 0]), "last partial page");
    let (total, runs) = list(&*store, page(5, 10)).await;
    assert_eq!((total, runs.len()), (10, 0), "offset at the end");
    let (total, runs) = list(&*store, page(0, 0)).await;
    assert_eq!((total, runs.len()), (10, 0), "limit 0 still counts");
    let (total, runs) = list(&*store, page(usize::MAX, 0)).await;
    assert_eq!((total, runs.len()), (10, 10), "huge limit");
}

/// Filters by status, by branch (exact name, a run on several branches is listed
/// under each) and by both; `total` counts the filtered runs.
pub async fn list_filters_by_status_and_branch(store: SharedStore) {
    use RunStatus::*;
    let table: [(u64, &[&str], RunStatus); 8] = [
        (0, &["main"], Success),
        (1, &["main", "dev"], Failure),
        (2, &["dev"], Success),
        (3, &["main2"], Success),
        (4, &["main"], Running),
        (5, &[], Queued),
        (6, &["dev", "main"], Success),
        (7, &["mai"], Error),
    ];
    for (seq, branches, status) in table {
        insert(
            &*store,
            &run_with_status(&hex_id(seq), seq, branches, status),
        )
        .await;
    }
    let cases: [(Option<RunStatus>, Option<&str>, &[u64]); 9] = [
        (Some(Success), None, &[6, 3, 2, 0]),
        (Some(Queued), None, &[5]),
        (Some(Cancelled), None, &[]),
        (None, Some("main"), &[6, 4, 1, 0]),
        (None, Some("dev"), &[6, 2, 1]),
        (None, Some("ma"), &[]),
        (Some(Success), Some("main"), &[6, 0]),
        (Some(Failure), Some("dev"), &[1]),
        (Some(Error), Some("main"), &[]),
    ];
    for (status, branch, want) in cases {
        let (total, runs) = list(&*store, query(status, branch)).await;
        assert_eq!(
            seqs(&runs),
            want,
            "filter status={status:?} branch={branch:?}"
        );
        assert_eq!(
            total,
            want.len() as u64,
            "total for status={status:?} branch={branch:?}"
        );
    }
    let paged = RunQuery {
        limit: 1,
        offset: 1,
        ..query(Some(Success), Some("main"))
    };
    let (total, runs) = list(&*store, paged).await;
    assert_eq!((total, seqs(&runs)), (2, vec![0]), "filtered and paged");
}

/// `after` pages by cursor: each page's `next` leads to the following page,
/// `next` is `None` exactly on the last page, a cursor combines with
/// filters and `offset`, `total` ignores it, and a page reached by cursor
/// does not shift when newer runs arrive.
pub async fn list_pages_with_a_cursor(store: SharedStore) {
    use RunStatus::{Failure, Success};
    for seq in [3u64, 0, 9, 5, 1, 7, 2, 8, 6, 4] {
        let status = if seq % 3 == 0 { Failure } else { Success };
        let branches: &[&str] = if seq % 2 == 0 { &["main"] } else { &["dev"] };
        insert(
            &*store,
            &run_with_status(&hex_id(seq), seq, branches, status),
        )
        .await;
    }
    let page = |limit, after| RunQuery {
        limit,
        after,
        ..RunQuery::default()
    };
    let get = |query: RunQuery| {
        let store = Arc::clone(&store);
        async move {
            store
                .list_runs(&query)
                .await
                .unwrap_or_else(|e| panic!("list_runs({query:?}) failed: {e}"))
        }
    };

    // Following `next` visits every run once, newest first.
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let p = get(page(3, after)).await;
        assert_eq!(p.total, 10, "total ignores the cursor");
        seen.extend(seqs(&p.runs));
        match p.next {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    p.runs.last().map(|r| r.seq),
                    "next is the last seq"
                );
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], "pages by cursor");

    let p = get(page(10, None)).await;
    assert_eq!(
        (seqs(&p.runs).len(), p.next),
        (10, None),
        "one full page is the last"
    );
    let p = get(page(9, None)).await;
    assert_eq!(p.next, Some(1), "a run beyond the page gives a cursor");
    let p = get(page(0, None)).await;
    assert_eq!((p.runs.len(), p.next), (0, None), "limit 0 has no cursor");
    let p = get(page(5, Some(0))).await;
    assert_eq!(
        (p.runs.len(), p.next),
        (0, None),
        "nothing older than the oldest"
    );
    let p = get(page(2, Some(100))).await;
    assert_eq!(
        seqs(&p.runs),
        [9, 8],
        "a cursor past the newest starts at the newest"
    );

    let p = get(RunQuery {
        offset: 2,
        ..page(2, Some(7))
    })
    .await;
    assert_eq!(
        (seqs(&p.runs), p.next),
        (vec![4, 3], Some(3)),
        "cursor and offset"
    );

    let p = get(RunQuery {
        status: Some(Success),
        ..page(2, Some(8))
    })
    .await;
    assert_eq!(
        (p.total, seqs(&p.runs), p.next),
        (6, vec![7, 5], Some(5)),
        "cursor with a status"
    );
    let p = get(RunQuery {
        branch: Some("main".to_owned()),
        status: Some(Success),
        ..page(5, Some(8))
    })
    .await;
    assert_eq!(
        (p.total, seqs(&p.runs), p.next),
        (3, vec![4, 2], None),
        "cursor with a branch and a status"
    );

    // Newer runs do not move a page reached by cursor.
    let before = get(page(3, Some(7))).await;
    insert(&*store, &queued_run(&hex_id(10), 10, &["main"])).await;
    insert(&*store, &queued_run(&hex_id(11), 11, &["dev"])).await;
    let after_arrivals = get(page(3, Some(7))).await;
    assert_eq!(
        seqs(&after_arrivals.runs),
        seqs(&before.runs),
        "cursor page is stable"
    );
    assert_eq!(after_arrivals.total, 12);
}

/// A store that reports a [generation](RunStore::generation) reports a new
/// one after every write of runs (a refused or failed one included) and the
/// same one while nothing is written; a store that reports none stays so.
pub async fn generation_moves_with_every_write(store: SharedStore) {
    let Some(mut last) = store.generation() else {
        assert_eq!(store.generation(), None, "a store without a generation");
        return;
    };
    let moved = |store: &SharedStore, last: &mut u64, what: &str| {
        let now = store.generation().expect("still a generation");
        assert_ne!(now, *last, "the generation did not move after {what}");
        *last = now;
    };
    let run = queued_run(&hex_id(1), 1, &["main"]);
    insert(&*store, &run).await;
    moved(&store, &mut last, "an insert");
    list(&*store, RunQuery::default()).await;
    store.get_run(run.id().as_str()).await.expect("get_run");
    assert_eq!(store.generation(), Some(last), "reads leave it alone");
    assert!(!store.insert_run(&run).await.expect("insert again"));
    moved(&store, &mut last, "an insert that changed nothing");
    store.update_run(&run).await.expect("update_run");
    moved(&store, &mut last, "an update");
    store
        .update_runs(vec![run.clone()])
        .await
        .expect("update_runs");
    moved(&store, &mut last, "a batch");
    let unknown = queued_run(&hex_id(2), 2, &[]);
    assert!(store.update_run(&unknown).await.is_err());
    moved(&store, &mut last, "a refused update");
}

/// Listing reflects the status a run was updated to, not the one it was inserted with.
pub async fn list_follows_updates(store: SharedStore) {
    let id = hex_id(3);
    insert(
        &*store,
        &run_with_status(&id, 0, &["main"], RunStatus::Queued),
    )
    .await;
    store
        .update_run(&run_with_status(&id, 0, &["main"], RunStatus::Success))
        .await
        .expect("update_run");
    let (total, _) = list(&*store, query(Some(RunStatus::Queued), None)).await;
    assert_eq!(total, 0, "still listed under its old status");
    let (total, _) = list(&*store, query(Some(RunStatus::Success), Some("main"))).await;
    assert_eq!(total, 1, "not listed under its new status");
    assert!(
        store
            .unfinished_runs()
            .await
            .expect("unfinished_runs")
            .is_empty()
    );
}

/// `unfinished_runs` returns the queued and running runs only, oldest (lowest
/// `seq`) first.
pub async fn unfinished_runs_oldest_first(store: SharedStore) {
    assert!(
        store
            .unfinished_runs()
            .await
            .expect("unfinished_runs")
            .is_empty()
    );
    let table = [
        (6, RunStatus::Running),
        (2, RunStatus::Success),
        (4, RunStatus::Queued),
        (1, RunStatus::Running),
        (3, RunStatus::Error),
        (5, RunStatus::Cancelled),
        (0, RunStatus::Failure),
        (8, RunStatus::Queued),
    ];
    for (seq, status) in table {
        insert(
            &*store,
            &run_with_status(&hex_id(50 - seq), seq, &[], status),
        )
        .await;
    }
    let runs = store.unfinished_runs().await.expect("unfinished_runs");
    assert_eq!(seqs(&runs), [1, 4, 6, 8], "unfinished runs, oldest first");
    assert_eq!(
        runs[0],
        run_with_status(&hex_id(49), 1, &[], RunStatus::Running)
    );
}

/// `has_run` answers for full ids only; `max_seq` is `None` on an empty store and
/// the highest `seq` otherwise, whatever the insertion order.
pub async fn has_run_and_max_seq(store: SharedStore) {
    assert_eq!(
        store.max_seq().await.expect("max_seq"),
        None,
        "max_seq of an empty store"
    );
    assert!(
        !store
            .has_run(&CommitId::new(hex_id(1)))
            .await
            .expect("has_run")
    );
    for seq in [4u64, 11, 2] {
        insert(&*store, &queued_run(&hex_id(seq), seq, &[])).await;
    }
    assert_eq!(store.max_seq().await.expect("max_seq"), Some(11));
    assert!(
        store
            .has_run(&CommitId::new(hex_id(2)))
            .await
            .expect("has_run")
    );
    assert!(
        !store
            .has_run(&CommitId::new(hex_id(3)))
            .await
            .expect("has_run")
    );
    let prefix = CommitId::new(&hex_id(2)[..10]);
    assert!(
        !store.has_run(&prefix).await.expect("has_run"),
        "has_run matched a prefix"
    );
    // A retry's queue position counts: new runs are numbered after it.
    let mut retried = queued_run(&hex_id(2), 2, &[]);
    retried.retry_seq = Some(20);
    store.update_run(&retried).await.expect("update");
    assert_eq!(store.max_seq().await.expect("max_seq"), Some(20));
}

/// `update_runs` writes every run of the batch; an unknown run in it is
/// `NotFound`.
pub async fn update_runs_writes_the_batch(store: SharedStore) {
    let (a, b) = (hex_id(70), hex_id(71));
    insert(&*store, &queued_run(&a, 1, &["main"])).await;
    insert(&*store, &queued_run(&b, 2, &["main"])).await;
    let first = rich_run(&a, 1);
    let mut second = run_with_status(&b, 2, &["main"], RunStatus::Success);
    second.commit.branches = vec!["main".into()];
    store
        .update_runs(vec![first.clone(), second.clone()])
        .await
        .expect("update_runs");
    assert_eq!(get(&*store, &a).await, first);
    assert_eq!(get(&*store, &b).await, second);
    store.update_runs(Vec::new()).await.expect("an empty batch");
    let unknown = queued_run(&hex_id(72), 3, &[]);
    assert!(matches!(
        store.update_runs(vec![unknown]).await,
        Err(StoreError::NotFound(_))
    ));
}

/// `unfinished_after` pages through the queued and running runs in queue
/// order (a retried run at its retry position), from a position on.
pub async fn unfinished_after_pages_in_queue_order(store: SharedStore) {
    assert!(
        store
            .unfinished_after(0, 10)
            .await
            .expect("unfinished_after")
            .is_empty()
    );
    let table = [
        (1, RunStatus::Running, None),
        (2, RunStatus::Success, None),
        (3, RunStatus::Queued, Some(9)),
        (4, RunStatus::Queued, None),
        (5, RunStatus::Failure, Some(7)),
        (6, RunStatus::Queued, None),
        (8, RunStatus::Running, None),
    ];
    for (seq, status, retry_seq) in table {
        let mut run = run_with_status(&hex_id(60 + seq), seq, &[], status);
        run.retry_seq = retry_seq;
        insert(&*store, &run).await;
    }
    let page = |from, limit| {
        let store = Arc::clone(&store);
        async move {
            seqs(
                &store
                    .unfinished_after(from, limit)
                    .await
                    .expect("unfinished_after"),
            )
        }
    };
    assert_eq!(page(0, 10).await, [1, 4, 6, 8, 3], "by queue position");
    assert_eq!(page(0, 2).await, [1, 4]);
    assert_eq!(page(5, 2).await, [6, 8], "from position 5 on");
    assert_eq!(
        page(9, 10).await,
        [3],
        "a retried run at its retry position"
    );
    assert!(page(10, 10).await.is_empty());
    assert!(page(0, 0).await.is_empty());

    // A run that finishes leaves the pages; one retried joins them.
    let mut done = store.get_run(&hex_id(64)).await.expect("get");
    done.status = RunStatus::Success;
    store.update_run(&done).await.expect("update");
    let mut again = store.get_run(&hex_id(62)).await.expect("get");
    again.status = RunStatus::Queued;
    again.retry_seq = Some(12);
    store.update_run(&again).await.expect("update");
    assert_eq!(page(0, 10).await, [1, 6, 8, 3, 2]);
}

/// `save_state` stores a value per key, replacing the old one; unknown keys are `None`.
pub async fn state_is_saved_and_replaced(store: SharedStore) {
    assert_eq!(store.load_state("cursor").await.expect("load_state"), None);
    store.save_state("cursor", "one").await.expect("save_state");
    store.save_state("other", "x").await.expect("save_state");
    store
        .save_state("cursor", "two — ✓")
        .await
        .expect("save_state");
    assert_eq!(
        store.load_state("cursor").await.expect("load").as_deref(),
        Some("two — ✓")
    );
    assert_eq!(
        store.load_state("other").await.expect("load").as_deref(),
        Some("x")
    );
    store.save_state("other", "").await.expect("save_state");
    assert_eq!(
        store.load_state("other").await.expect("load").as_deref(),
        Some(""),
        "empty value"
    );
    assert_eq!(
        store.load_state("Cursor").await.expect("load"),
        None,
        "keys are exact"
    );
}

/// A listing with `with_logs: false` gives the same runs with every attempt's
/// logs empty; with the default (`true`) the logs are there; with
/// `with_steps: false` the runs come without steps, all else the same; lookups
/// by id always carry logs.
pub async fn listing_without_logs_keeps_everything_else(store: SharedStore) {
    let run = rich_run(&hex_id(5), 0);
    insert(&*store, &run).await;
    store
        .update_run(&run)
        .await
        .expect("update_run of a stored run");
    assert!(
        run.steps
            .iter()
            .flat_map(|s| &s.attempts)
            .any(|a| !a.logs.is_empty()),
        "the fixture has logs"
    );

    let (_, with) = list(&*store, RunQuery::default()).await;
    assert_eq!(
        with,
        std::slice::from_ref(&run),
        "the default listing carries logs"
    );

    let quiet = RunQuery {
        with_logs: false,
        ..RunQuery::default()
    };
    let (total, without) = list(&*store, quiet).await;
    let mut expected = run.clone();
    for a in expected
        .steps
        .iter_mut()
        .flat_map(|s| s.attempts.iter_mut())
    {
        a.logs.clear();
    }
    assert_eq!(total, 1);
    assert_eq!(without, [expected], "only the logs are left out");

    let heads = RunQuery {
        with_logs: false,
        with_steps: false,
        ..RunQuery::default()
    };
    let (total, heads) = list(&*store, heads).await;
    let mut expected = run.clone();
    expected.steps.clear();
    assert_eq!(total, 1);
    assert_eq!(heads, [expected], "only the steps are left out");

    let by_id = store.get_run(run.id().as_str()).await.expect("get_run");
    assert_eq!(by_id, run, "a lookup by id still carries logs");
}

/// Logs of a mebibyte and more, with multi-byte characters, control characters and
/// NUL, come back byte for byte.
pub async fn unicode_and_large_logs_round_trip(store: SharedStore) {
    let id = hex_id(77);
    insert(&*store, &queued_run(&id, 0, &[])).await;

    let line = "compiling crate ü 🦀 — \t\"quoted\" \\ back\\slash \u{7}\r\n";
    let mut big = String::with_capacity(1 << 21);
    while big.len() < (1 << 20) + 17 {
        big.push_str(line);
    }
    big.push('\0');
    big.push_str("after NUL");

    let mut run = queued_run(&id, 0, &[]);
    run.status = RunStatus::Running;
    run.steps[0].status = StepStatus::Success;
    run.steps[0]
        .attempts
        .push(attempt(1, AttemptOutcome::Success, &big));
    run.steps[1].status = StepStatus::Running;
    run.steps[1]
        .attempts
        .push(attempt(1, AttemptOutcome::Running, "日本語のログ\n"));
    store
        .update_run(&run)
        .await
        .expect("update_run with a large log");

    let back = get(&*store, &id).await;
    assert_eq!(
        back.steps[0].attempts[0].logs.len(),
        big.len(),
        "large log length"
    );
    assert!(
        back.steps[0].attempts[0].logs == big,
        "large log bytes differ"
    );
    assert_eq!(back, run, "run with large logs");
}

/// Inserts from many tasks at once all land; of several tasks inserting one
/// commit at once, exactly one gets `true`.
pub async fn concurrent_inserts_all_land(store: SharedStore) {
    const TASKS: u64 = 48;
    let mut handles = Vec::new();
    for seq in 0..TASKS {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            store
                .insert_run(&queued_run(&hex_id(1000 + seq), seq, &["main"]))
                .await
        }));
    }
    let contested = rich_run(&hex_id(5000), TASKS);
    for _ in 0..8 {
        let store = Arc::clone(&store);
        let run = contested.clone();
        handles.push(tokio::spawn(async move { store.insert_run(&run).await }));
    }
    let mut inserted = 0;
    for h in handles {
        match h.await.expect("insert task panicked") {
            Ok(true) => inserted += 1,
            Ok(false) => {}
            Err(e) => panic!("concurrent insert_run failed: {e}"),
        }
    }
    assert_eq!(inserted, TASKS + 1, "each commit inserted exactly once");
    let (total, runs) = list(
        &*store,
        RunQuery {
            limit: 1000,
            ..RunQuery::default()
        },
    )
    .await;
    assert_eq!(total, TASKS + 1, "every concurrent insert landed");
    let want: Vec<u64> = (0..=TASKS).rev().collect();
    assert_eq!(seqs(&runs), want);
    assert_eq!(get(&*store, &hex_id(5000)).await, contested);
}

/// Checks a store that keeps its listing totals (and places deep offsets)
/// by counts of its own against [`MemoryStore`](crate::MemoryStore), which
/// counts: a seeded history of `changes` random changes (inserts, status
/// changes, branch changes, moves to another `seq` with a new status), the
/// `seq`s spread about 350 apart so that they cross any bucketing; after each
/// change, the total of every filter (each status or none, each branch or
/// none) must agree, and every `pages_every` changes, pages of 5 at several
/// offsets and from several cursors must list the same runs and the same
/// `next`. Panics naming the change and the query on the first difference.
/// Not part of [`run_all`]: a store that counts as it lists has nothing kept
/// to disagree.
pub async fn listings_agree_with_the_memory_store(
    store: &dyn RunStore,
    changes: u32,
    pages_every: u32,
) {
    let memory = crate::MemoryStore::new();
    let branches = [&["main"][..], &["dev"], &["main", "dev"], &["topic"], &[]];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut draw = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut runs: Vec<Run> = Vec::new();
    let mut next_seq = 0u64;
    for step in 0..changes {
        let pick = draw(4);
        if runs.is_empty() || pick == 0 {
            let status = RunStatus::ALL[draw(6) as usize];
            let on = branches[draw(5) as usize];
            let run = run_with_status(&format!("{next_seq:040x}"), next_seq, on, status);
            next_seq += 1 + draw(700);
            assert!(store.insert_run(&run).await.expect("insert"));
            assert!(memory.insert_run(&run).await.expect("insert"));
            runs.push(run);
        } else {
            let i = draw(runs.len() as u64) as usize;
            let run = &mut runs[i];
            match pick {
                1 => run.status = RunStatus::ALL[draw(6) as usize],
                2 => {
                    run.commit.branches = branches[draw(5) as usize]
                        .iter()
                        .map(|b| (*b).to_owned())
                        .collect();
                }
                _ => {
                    run.seq = next_seq;
                    run.status = RunStatus::ALL[draw(6) as usize];
                    next_seq += 1 + draw(700);
                }
            }
            store.update_run(run).await.expect("update");
            memory.update_run(run).await.expect("update");
        }
        for status in std::iter::once(None).chain(RunStatus::ALL.map(Some)) {
            for branch in [None, Some("main"), Some("dev"), Some("topic"), Some("none")] {
                let query = RunQuery {
                    status,
                    branch: branch.map(str::to_owned),
                    limit: 0,
                    offset: 0,
                    after: None,
                    with_logs: false,
                    with_steps: false,
                };
                let kept = store.list_runs(&query).await.expect("list").total;
                let counted = memory.list_runs(&query).await.expect("list").total;
                assert_eq!(
                    kept, counted,
                    "after change {step}: total for {status:?} on {branch:?}"
                );
                if step % pages_every == pages_every - 1 {
                    let cursors = [None, Some(draw(next_seq + 10)), Some(runs[0].seq)];
                    for after in cursors {
                        for offset in [1, 7, counted / 2, counted.saturating_sub(1), counted + 3] {
                            let query = RunQuery {
                                limit: 5,
                                offset: usize::try_from(offset).expect("small"),
                                after,
                                ..query.clone()
                            };
                            let got = store.list_runs(&query).await.expect("list");
                            let want = memory.list_runs(&query).await.expect("list");
                            let seqs = |p: &crate::store::RunPage| {
                                (p.runs.iter().map(|r| r.seq).collect::<Vec<_>>(), p.next)
                            };
                            assert_eq!(
                                seqs(&got),
                                seqs(&want),
                                "after change {step}: page of {query:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
