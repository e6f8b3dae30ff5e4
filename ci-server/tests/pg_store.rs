//! `PgStore` against a real PostgreSQL (`tests/pg_support`): the `RunStore`
//! contract suite, the cases of the SQLite store's tests that hold for any
//! database (reopening, a failed insert, a failed batch, prefix lookups, the
//! kept counts against the in-memory store, the indexes the listing walks),
//! and what only a shared server brings: several stores on one database,
//! opens racing to migrate, writers racing on the same counts, and the
//! databases it refuses.
//!
//! Without PostgreSQL every test is skipped with the reason printed, except
//! under CI (`CI=true`), where it fails.

mod pg_support;

use std::sync::Arc;

use ci_engine::testing::store_contract::{self, hex_id, queued_run, rich_run, run_with_status};
use ci_engine::{RunQuery, RunStatus, RunStore, StoreError};
use ci_server::pg_store::{DatabaseUrl, PgStore, PgStoreError, SCHEMA_VERSION};
use pg_support::PgCluster;

/// The URL of a new empty database of `cluster`.
fn new_database(cluster: &PgCluster, label: &str) -> DatabaseUrl {
    let name = cluster.create_database(label);
    DatabaseUrl::parse(&cluster.url(&name)).expect("the harness's URL parses")
}

async fn open(url: &DatabaseUrl) -> PgStore {
    PgStore::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// A store on a new empty database.
async fn fresh(cluster: &PgCluster, label: &str) -> PgStore {
    open(&new_database(cluster, label)).await
}

/// Checks that an error is one line and shows neither the password nor a
/// URL that carries it.
fn assert_clean(message: &str, cluster: &PgCluster) {
    assert!(
        !message.contains(cluster.password()),
        "the password shows: {message}"
    );
    assert!(!message.contains('\n'), "not one line: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_store_meets_the_run_store_contract() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let mut cases = 0;
    store_contract::run_all(|| {
        cases += 1;
        let url = new_database(&cluster, &format!("contract_{cases}"));
        async move { Arc::new(open(&url).await) as Arc<dyn RunStore> }
    })
    .await;
    assert!(cases >= 10, "the suite ran its cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_is_there_after_reopening() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = new_database(&cluster, "reopen");
    let mut rich = rich_run(&"ab".repeat(20), 3);
    let queued = queued_run(&"cd".repeat(20), 4, &["main"]);
    let done = run_with_status(&"ef".repeat(20), 1, &["main", "dev"], RunStatus::Success);
    {
        let store = open(&url).await;
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
    let store = open(&url).await;
    assert_eq!(store.get_run(rich.id().as_str()).await.expect("get"), rich);
    let page = store.list_runs(&RunQuery::default()).await.expect("list");
    assert_eq!(page.total, 3);
    assert_eq!(page.runs, [queued.clone(), rich.clone(), done.clone()]);
    assert_eq!(store.unfinished_runs().await.expect("unfinished"), [queued]);
    assert_eq!(store.max_seq().await.expect("max_seq"), rich.retry_seq);
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
    assert_eq!(
        cluster.psql(
            url.config().get_dbname().expect("a database"),
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version"
        ),
        (1..=SCHEMA_VERSION)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(","),
        "each migration recorded once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_insert_changes_nothing() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let store = fresh(&cluster, "failed_insert").await;
    let first = rich_run(&"11".repeat(20), 5);
    store.insert_run(&first).await.expect("insert");
    // Same seq, another commit: refused (seq is unique) as a whole.
    let clash = rich_run(&"22".repeat(20), 5);
    let err = store
        .insert_run(&clash)
        .await
        .expect_err("a second run with seq 5");
    let message = err.to_string();
    assert!(message.contains("seq 5"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", cluster.port())),
        "names the database: {message}"
    );
    assert_clean(&message, &cluster);
    assert!(!store.has_run(clash.id()).await.expect("has_run"));
    assert_eq!(
        store.get_run(first.id().as_str()).await.expect("get"),
        first
    );
    assert_eq!(
        store
            .list_runs(&RunQuery::default())
            .await
            .expect("list")
            .total,
        1
    );
    // An update onto another run's seq is refused too, and changes nothing.
    let other = queued_run(&"33".repeat(20), 6, &["main"]);
    assert!(store.insert_run(&other).await.expect("insert"));
    let mut onto = other.clone();
    onto.seq = 5;
    onto.status = RunStatus::Running;
    assert!(matches!(
        store.update_run(&onto).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(
        store.get_run(other.id().as_str()).await.expect("get"),
        other
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_an_unknown_run_changes_nothing() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let store = fresh(&cluster, "batch").await;
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
    let total = |status| {
        let store = &store;
        async move {
            store
                .list_runs(&RunQuery {
                    status: Some(status),
                    ..RunQuery::default()
                })
                .await
                .expect("list")
                .total
        }
    };
    assert_eq!(total(RunStatus::Queued).await, 1, "counts rolled back too");
    assert_eq!(total(RunStatus::Failure).await, 0, "counts rolled back too");
}

/// Fills a store with enough runs that a scan and an index differ in the plan.
async fn populated(cluster: &PgCluster, label: &str) -> (DatabaseUrl, PgStore) {
    let url = new_database(cluster, label);
    let store = open(&url).await;
    for seq in 0..200u64 {
        let status = RunStatus::ALL[(seq % 6) as usize];
        let branch = if seq % 3 == 0 { "main" } else { "dev" };
        let run = run_with_status(&format!("{seq:040x}"), seq, &[branch], status);
        store.insert_run(&run).await.expect("insert");
    }
    let db = url.config().get_dbname().expect("a database").to_owned();
    cluster.psql(&db, "ANALYZE");
    (url, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_lookups_find_one_count_several_and_miss_cleanly() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let (_url, store) = populated(&cluster, "prefix").await;
    for (prefix, want) in [("0".repeat(38), 200), (format!("{}c", "0".repeat(38)), 8)] {
        match store.get_run(&prefix).await {
            Err(StoreError::Ambiguous { matches, .. }) => assert_eq!(matches, want),
            other => panic!("get_run({prefix}): expected Ambiguous, got {other:?}"),
        }
    }
    let one = store
        .get_run(&format!("{}c7", "0".repeat(38)))
        .await
        .expect("get");
    assert_eq!(one.seq, 199);
    // Text PostgreSQL cannot hold is no id: not found, not an error.
    for missing in ["00\0", "\0", "zz"] {
        assert!(
            matches!(store.get_run(missing).await, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        assert!(
            !store
                .has_run(&ci_engine::CommitId::new(missing))
                .await
                .expect("has_run")
        );
    }
    let on_nul = RunQuery {
        branch: Some("ma\0in".into()),
        ..RunQuery::default()
    };
    let page = store.list_runs(&on_nul).await.expect("list");
    assert_eq!((page.total, page.runs.len()), (0, 0));
    assert_eq!(store.load_state("a\0b").await.expect("load"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_walk_indexes_newest_first_without_sorting() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let (url, store) = populated(&cluster, "plans").await;
    let db = url.config().get_dbname().expect("a database").to_owned();
    // At 200 rows a scan or a bitmap and a sort cost the planner next to
    // nothing; forbid them so that the plan shows whether an index yields
    // the page in order (it falls back to them only when none does).
    cluster.psql(
        &db,
        &format!(
            "ALTER DATABASE \"{db}\" SET enable_seqscan = off; \
             ALTER DATABASE \"{db}\" SET enable_bitmapscan = off; \
             ALTER DATABASE \"{db}\" SET enable_sort = off"
        ),
    );
    let store_after_setting = open(&url).await;
    drop(store);
    let q = |status: Option<RunStatus>, branch: Option<&str>| RunQuery {
        status,
        branch: branch.map(str::to_owned),
        ..RunQuery::default()
    };
    // Which index the planner takes is its choice by cost (at this size the
    // primary key, filtered, may win over `runs_by_status`); what matters is
    // that the page comes off an index in order, never from a sort.
    for query in [
        q(None, None),
        q(Some(RunStatus::Success), None),
        q(None, Some("main")),
        q(Some(RunStatus::Failure), Some("dev")),
    ] {
        let plan = store_after_setting
            .list_query_plan(&query)
            .await
            .expect("plan");
        let text = plan.join("\n");
        assert!(
            text.contains("Index Scan Backward") || text.contains("Index Only Scan Backward"),
            "{query:?} does not walk an index backwards:\n{text}"
        );
        assert!(!text.contains("Sort"), "{query:?} sorts:\n{text}");
        assert!(!text.contains("Seq Scan"), "{query:?} scans:\n{text}");
    }
    let plan = store_after_setting
        .unfinished_query_plan()
        .await
        .expect("plan")
        .join("\n");
    assert!(plan.contains("runs_unfinished"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}

/// The totals kept by triggers (`run_counts`) agree with the in-memory store
/// after every change of a long mixed history (inserts, status changes,
/// branch changes and moves to another `seq`), for every filter; pages at
/// offsets and from cursors agree every few changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_counts_agree_with_the_memory_store_after_every_change() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let pg = fresh(&cluster, "kept_counts").await;
    store_contract::listings_agree_with_the_memory_store(&pg, 120, 20).await;
}

/// Several stores on one database, as several servers would have: each sees
/// the others' writes at once (no cache: `generation` is `None`), and
/// batches racing on the same runs and counts in opposite orders all land
/// (a deadlock PostgreSQL breaks is tried again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_sharing_a_database_see_each_other_and_race_safely() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = new_database(&cluster, "shared");
    // Opens racing on a new database migrate it once.
    let opened = futures::future::join_all((0..4).map(|_| PgStore::open(&url))).await;
    let stores: Vec<Arc<PgStore>> = opened
        .into_iter()
        .map(|s| Arc::new(s.expect("concurrent open")))
        .collect();
    let (a, b) = (&stores[0], &stores[1]);
    assert_eq!(a.generation(), None, "no listing cache across processes");

    let runs: Vec<ci_engine::Run> = (0..8u64)
        .map(|i| queued_run(&hex_id(i), i, &["main", "dev"]))
        .collect();
    for run in &runs {
        assert!(a.insert_run(run).await.expect("insert"));
    }
    assert_eq!(
        b.get_run(runs[3].id().as_str()).await.expect("seen by b"),
        runs[3]
    );
    assert!(
        !b.insert_run(&runs[3]).await.expect("insert again"),
        "b sees a's run"
    );

    // Each round, two stores flip every run's status in opposite orders.
    let mut tasks = Vec::new();
    for round in 0..6u64 {
        for (k, store) in stores.iter().take(2).enumerate() {
            let store = Arc::clone(store);
            let mut batch: Vec<ci_engine::Run> = runs
                .iter()
                .map(|r| {
                    let status = if (round + k as u64).is_multiple_of(2) {
                        RunStatus::Running
                    } else {
                        RunStatus::Queued
                    };
                    ci_engine::Run {
                        status,
                        ..r.clone()
                    }
                })
                .collect();
            if k == 1 {
                batch.reverse();
            }
            tasks.push(tokio::spawn(async move { store.update_runs(batch).await }));
        }
    }
    for task in tasks {
        task.await.expect("task").expect("a racing batch lands");
    }
    for branch in [None, Some("main"), Some("dev")] {
        let mut sum = 0;
        for status in RunStatus::ALL {
            let query = RunQuery {
                status: Some(status),
                branch: branch.map(str::to_owned),
                ..RunQuery::default()
            };
            let page = stores[2].list_runs(&query).await.expect("list");
            assert_eq!(
                page.total,
                page.runs.len() as u64,
                "{status:?} on {branch:?}"
            );
            sum += page.total;
        }
        assert_eq!(sum, 8, "every run counted once on {branch:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_postgres_cannot_hold_is_stored_or_refused_cleanly() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let store = fresh(&cluster, "nul").await;
    let mut run = rich_run(&hex_id(1), 1);
    run.commit.summary = "summary with \0 NUL".into();
    run.commit.author = "A\0 <a@example.com>".into();
    run.steps[0].reason = Some("reason \0".into());
    run.steps[1].attempts[0].reason = Some("\0".into());
    assert!(store.insert_run(&run).await.expect("insert"));
    store
        .save_state("cursor", "value \0 with NUL")
        .await
        .expect("save");
    assert_eq!(store.get_run(run.id().as_str()).await.expect("get"), run);
    assert_eq!(
        store.load_state("cursor").await.expect("load").as_deref(),
        Some("value \0 with NUL")
    );

    let mut bad = queued_run(&hex_id(2), 2, &["ma\0in"]);
    let err = store.insert_run(&bad).await.expect_err("NUL in a branch");
    let message = err.to_string();
    assert!(message.contains("NUL"), "{message}");
    assert_clean(&message, &cluster);
    bad.commit.branches.clear();
    bad.steps[0].name = "li\0nt".into();
    assert!(store.insert_run(&bad).await.is_err(), "NUL in a step name");
    assert!(!store.has_run(bad.id()).await.expect("has_run"));
}

// ----- databases it refuses -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_untouched() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = new_database(&cluster, "newer");
    let db = url.config().get_dbname().expect("a database").to_owned();
    open(&url)
        .await
        .insert_run(&rich_run(&hex_id(1), 1))
        .await
        .expect("insert");
    cluster.psql(
        &db,
        &format!(
            "INSERT INTO schema_version (version) VALUES ({})",
            SCHEMA_VERSION + 1
        ),
    );
    let before = cluster.psql(&db, "SELECT count(*) FROM runs");
    let err = PgStore::open(&url).await.expect_err("newer schema");
    match &err {
        PgStoreError::NewerSchema {
            found, supported, ..
        } => assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION)),
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_clean(&err.to_string(), &cluster);
    assert_eq!(cluster.psql(&db, "SELECT count(*) FROM runs"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_programs_database_is_refused_untouched() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = new_database(&cluster, "foreign");
    let db = url.config().get_dbname().expect("a database").to_owned();
    cluster.psql(
        &db,
        "CREATE TABLE runs (x int); INSERT INTO runs VALUES (1)",
    );
    let err = PgStore::open(&url).await.expect_err("foreign");
    assert!(
        matches!(err, PgStoreError::ForeignDatabase { .. }),
        "{err:?}"
    );
    assert_clean(&err.to_string(), &cluster);
    assert_eq!(
        cluster.psql(
            &db,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "1",
        "nothing was created beside the other program's table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_not_utf8_is_refused() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    cluster.psql(
        "postgres",
        "CREATE DATABASE latin1_runs ENCODING 'LATIN1' TEMPLATE template0 \
         LC_COLLATE 'C' LC_CTYPE 'C'",
    );
    let url = DatabaseUrl::parse(&cluster.url("latin1_runs")).expect("URL");
    let err = PgStore::open(&url).await.expect_err("LATIN1");
    assert!(matches!(err, PgStoreError::Encoding { .. }), "{err:?}");
    assert!(err.to_string().contains("LATIN1"), "{err}");
    assert_eq!(
        cluster.psql(
            "latin1_runs",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_name_the_database_but_never_the_password() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let wrong = DatabaseUrl::parse(&format!(
        "postgres://postgres:not-the-password@127.0.0.1:{}/postgres",
        cluster.port()
    ))
    .expect("URL");
    let err = PgStore::open(&wrong).await.expect_err("wrong password");
    let message = err.to_string();
    assert!(matches!(err, PgStoreError::Connect { .. }), "{err:?}");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("not-the-password"), "{message}");
    assert!(message.contains("postgres:***@127.0.0.1"), "{message}");

    let missing = DatabaseUrl::parse(&cluster.url("no_such_database")).expect("URL");
    let err = PgStore::open(&missing).await.expect_err("no database");
    let message = err.to_string();
    assert!(message.contains("does not exist"), "{message}");
    assert_clean(&message, &cluster);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let refused =
        DatabaseUrl::parse(&format!("postgres://ci:s3cret@127.0.0.1:{port}/runs")).expect("URL");
    let err = PgStore::open(&refused).await.expect_err("nobody listens");
    let message = err.to_string();
    assert!(matches!(err, PgStoreError::Connect { .. }), "{err:?}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(
        !message.contains("s3cret") && !message.contains('\n'),
        "{message}"
    );
}
