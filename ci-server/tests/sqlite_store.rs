//! `SqliteStore` against the `RunStore` contract suite, across reopening, and
//! with the query plans its list and prefix lookups get from SQLite.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ci_engine::testing::store_contract::{self, queued_run, rich_run, run_with_status};
use ci_engine::{RunQuery, RunStatus, RunStore, StoreError};
use ci_server::sqlite_store::{ListPlans, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_meets_the_run_store_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = AtomicUsize::new(0);
    store_contract::run_all(|| {
        let path = dir
            .path()
            .join(format!("case-{}.db", cases.fetch_add(1, Ordering::Relaxed)));
        async move {
            let store = SqliteStore::open(&path).await.expect("open a new database");
            Arc::new(store) as Arc<dyn RunStore>
        }
    })
    .await;
    assert!(
        cases.load(Ordering::Relaxed) >= 10,
        "the suite ran its cases"
    );
}

#[tokio::test]
async fn everything_is_there_after_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("runs.db");

    let mut rich = rich_run(&"ab".repeat(20), 3);
    let queued = queued_run(&"cd".repeat(20), 4, &["main"]);
    let done = run_with_status(&"ef".repeat(20), 1, &["main", "dev"], RunStatus::Success);
    {
        let store = SqliteStore::open(&path).await.expect("create");
        for run in [&rich, &queued, &done] {
            assert!(store.insert_run(run).await.expect("insert"));
        }
        rich.steps[0].attempts[0].logs = "rewritten before the close".into();
        store.update_run(&rich).await.expect("update");
        store
            .save_state("git.cursor", "deadbeef")
            .await
            .expect("save_state");
    }
    assert!(
        !path.with_extension("db-wal").exists(),
        "WAL left after a clean close"
    );

    let store = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(store.get_run(rich.id().as_str()).await.expect("get"), rich);
    let page = store.list_runs(&RunQuery::default()).await.expect("list");
    assert_eq!(page.total, 3);
    assert_eq!(page.runs, [queued.clone(), rich.clone(), done.clone()]);
    assert_eq!(store.unfinished_runs().await.expect("unfinished"), [queued]);
    assert_eq!(
        store.max_seq().await.expect("max_seq"),
        rich.retry_seq,
        "the highest queue position is the retried run's"
    );
    assert_eq!(
        store
            .load_state("git.cursor")
            .await
            .expect("load_state")
            .as_deref(),
        Some("deadbeef")
    );
    let on_dev = RunQuery {
        branch: Some("dev".into()),
        ..RunQuery::default()
    };
    assert_eq!(store.list_runs(&on_dev).await.expect("list").runs, [done]);
}

#[tokio::test]
async fn a_failed_insert_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("runs.db"))
        .await
        .expect("open");
    let first = rich_run(&"11".repeat(20), 5);
    store.insert_run(&first).await.expect("insert");
    // Same seq, another commit: the store refuses it (seq is unique) as a whole.
    let clash = rich_run(&"22".repeat(20), 5);
    let err = store
        .insert_run(&clash)
        .await
        .expect_err("a second run with seq 5");
    assert!(
        err.to_string().contains("runs.db"),
        "error names the file: {err}"
    );
    assert!(!store.has_run(clash.id()).await.expect("has_run"));
    assert_eq!(
        store.get_run(first.id().as_str()).await.expect("get"),
        first
    );
    let page = store.list_runs(&RunQuery::default()).await.expect("list");
    assert_eq!(page.total, 1);
}

/// Fills a store with enough runs that a scan and an index differ in the plan.
async fn populated() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("runs.db"))
        .await
        .expect("open");
    for seq in 0..200u64 {
        let status = RunStatus::ALL[(seq % 6) as usize];
        let branch = if seq % 3 == 0 { "main" } else { "dev" };
        let run = run_with_status(&format!("{seq:040x}"), seq, &[branch], status);
        store.insert_run(&run).await.expect("insert");
    }
    (dir, store)
}

fn assert_no_sort(plan: &[String], what: &str) {
    assert!(
        !plan.iter().any(|l| l.contains("TEMP B-TREE")),
        "{what} sorts instead of walking an index: {plan:?}"
    );
}

fn assert_uses(plan: &[String], needle: &str, what: &str) {
    assert!(
        plan.iter().any(|l| l.contains(needle)),
        "{what} does not use {needle}: {plan:?}"
    );
}

#[tokio::test]
async fn list_queries_walk_indexes_newest_first() {
    let (_dir, store) = populated().await;
    let q = |status: Option<RunStatus>, branch: Option<&str>| RunQuery {
        status,
        branch: branch.map(str::to_owned),
        limit: 20,
        offset: 40,
        after: Some(150),
        with_logs: false,
        with_steps: true,
    };
    let all_plans = |p: &ListPlans| {
        [&p.page, &p.count, &p.buckets, &p.range_count]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
    };

    let plans = store.list_query_plan(&q(None, None)).await.expect("plan");
    assert_no_sort(&all_plans(&plans), "list all");
    assert_uses(
        &plans.page,
        "SEARCH r USING INTEGER PRIMARY KEY (rowid<?)",
        "list all (a range of the runs table, whose rowid is seq)",
    );
    assert_uses(&plans.count, "run_counts", "count of all runs");
    assert_uses(&plans.buckets, "run_buckets", "offset of all runs");
    assert_uses(&plans.range_count, "rowid>? AND rowid<?", "cursor's bucket");

    let plans = store
        .list_query_plan(&q(Some(RunStatus::Success), None))
        .await
        .expect("plan");
    assert_no_sort(&all_plans(&plans), "list by status");
    assert_uses(
        &plans.page,
        "INDEX runs_by_status (status=? AND seq<?)",
        "list by status",
    );
    assert_uses(&plans.count, "run_counts", "count by status");
    assert_uses(&plans.buckets, "run_buckets", "offset by status");
    assert_uses(
        &plans.range_count,
        "runs_by_status (status=? AND seq>? AND seq<?)",
        "cursor's bucket by status",
    );

    let plans = store
        .list_query_plan(&q(None, Some("main")))
        .await
        .expect("plan");
    assert_no_sort(&all_plans(&plans), "list by branch");
    assert_uses(
        &plans.page,
        "INDEX run_branches_by_branch (branch=? AND seq<?)",
        "list by branch",
    );
    assert_uses(&plans.count, "run_counts", "count by branch");
    assert_uses(&plans.buckets, "run_buckets", "offset by branch");

    let both = q(Some(RunStatus::Failure), Some("dev"));
    let plans = store.list_query_plan(&both).await.expect("plan");
    let every = all_plans(&plans);
    assert_no_sort(&every, "list by status and branch");
    assert!(
        every.iter().all(|l| !l.starts_with("SCAN")),
        "status and branch should not scan a table: {every:?}"
    );
    assert_uses(&plans.page, "INDEX", "list by status and branch");
}

#[tokio::test]
async fn a_batch_with_an_unknown_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("runs.db"))
        .await
        .expect("open");
    let known = queued_run(&"ab".repeat(20), 1, &["main"]);
    assert!(store.insert_run(&known).await.expect("insert"));
    let changed = rich_run(known.id().as_str(), 1);
    let unknown = queued_run(&"cd".repeat(20), 2, &[]);
    assert!(matches!(
        store.update_runs(vec![changed, unknown]).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.get_run(known.id().as_str()).await.expect("get"),
        known,
        "the batch is one transaction"
    );
}

#[tokio::test]
async fn paging_unfinished_runs_is_a_range_on_their_index() {
    let (_dir, store) = populated().await;
    let plan = store.unfinished_query_plan().await.expect("plan");
    assert_no_sort(&plan, "unfinished runs by queue position");
    assert_uses(&plan, "INDEX runs_unfinished", "unfinished runs");
}

#[tokio::test]
async fn prefix_lookup_is_a_range_on_the_id_index() {
    let (_dir, store) = populated().await;
    let plan = store.prefix_query_plan("00000000ab").await.expect("plan");
    assert_uses(&plan, "(id>? AND id<?)", "prefix lookup");
    assert!(
        plan.iter().all(|l| l.starts_with("SEARCH")),
        "prefix lookup scans: {plan:?}"
    );
    // The lookup the plan belongs to counts the range right.
    for (prefix, want) in [("0".repeat(38), 200), (format!("{}c", "0".repeat(38)), 8)] {
        match store.get_run(&prefix).await {
            Err(ci_engine::StoreError::Ambiguous { matches, .. }) => assert_eq!(matches, want),
            other => panic!("get_run({prefix}): expected Ambiguous, got {other:?}"),
        }
    }
    let one = store
        .get_run(&format!("{}c7", "0".repeat(38)))
        .await
        .expect("get");
    assert_eq!(one.seq, 199);
}

/// The totals and bucket counts kept by triggers (`run_counts`,
/// `run_buckets`) agree with the in-memory store after every change of a
/// long mixed history (inserts, status changes, branch changes and moves to
/// another `seq`), for every filter: the totals after each change, and pages
/// at deep offsets and from cursors every few changes. The runs' `seq`s are
/// spread over about a hundred buckets, so offsets cross bucket bounds.
#[tokio::test]
async fn kept_counts_agree_with_the_memory_store_after_every_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("runs.db"))
        .await
        .expect("open");
    store_contract::listings_agree_with_the_memory_store(&sqlite, 300, 10).await;
}

/// Updates of a run in progress are written by difference (the store keeps
/// what it last wrote of such runs and writes only the rows that changed).
/// Through every kind of change (attempts added, changed and dropped; steps
/// changed, added and dropped; the run's own fields; its branches; a move to
/// another `seq`) the run reads back exactly as given, and a reopened store,
/// which starts with nothing kept, reads the same.
#[tokio::test]
async fn updates_written_by_difference_read_back_exactly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runs.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let id = format!("{:040x}", 0xabcdef_u64);
    let mut run = rich_run(&id, 5);
    run.status = RunStatus::Running;
    run.finished_at = None;
    assert!(store.insert_run(&run).await.expect("insert"));
    let template = run.steps[1].attempts[2].clone();

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut draw = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut next_seq = 6;
    for change in 0..300 {
        let steps = run.steps.len() as u64;
        let i = draw(steps) as usize;
        match draw(9) {
            0 => {
                let mut a = template.clone();
                a.number = run.steps[i].attempts.len() as u32 + 1;
                a.logs = format!("attempt {change}\n");
                run.steps[i].attempts.push(a);
            }
            1 => {
                if let Some(a) = run.steps[i].attempts.last_mut() {
                    a.logs.push_str("more\n");
                    a.outcome = ci_engine::AttemptOutcome::Success;
                    a.finished_at = Some(1_700_000_100_000 + change);
                }
            }
            2 => {
                run.steps[i].attempts.pop();
            }
            3 => {
                run.steps[i].status = ci_engine::StepStatus::Failure;
                run.steps[i].reason = Some(format!("reason {change}"));
                run.steps[i].budget_from += 1;
            }
            4 => run
                .steps
                .push(ci_engine::StepRecord::pending(format!("extra-{change}"))),
            5 if steps > 1 => {
                run.steps.pop();
            }
            6 => {
                run.started_at = Some(1_700_000_000_000 + change);
                run.commit.summary = format!("summary {change}");
            }
            7 => {
                if run.commit.branches.len() > 1 {
                    run.commit.branches.pop();
                } else {
                    run.commit.branches.push(format!("topic-{change}"));
                }
            }
            _ => {
                run.seq = next_seq;
                next_seq += 1 + draw(3000);
            }
        }
        if change % 2 == 0 {
            store.update_run(&run).await.expect("update_run");
        } else {
            store
                .update_runs(vec![run.clone()])
                .await
                .expect("update_runs");
        }
        assert_eq!(
            store.get_run(&id).await.expect("get"),
            run,
            "after change {change}"
        );
    }
    let page = store
        .list_runs(&RunQuery {
            branch: run.commit.branches.first().cloned(),
            ..RunQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        (page.total, page.runs.len()),
        (1, 1),
        "listed on its branch"
    );
    drop(store);
    let reopened = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(
        reopened.get_run(&id).await.expect("get"),
        run,
        "after reopening"
    );
}
