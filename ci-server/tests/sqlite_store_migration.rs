//! `SqliteStore::open` on a database written by an older ci-server: the file is
//! brought up to the current schema without losing a run, old attempts read back
//! with no runner and old runs as never retried, and new records keep their
//! runners, retry positions, actions and attempt budgets.

use std::path::Path;

use ci_engine::testing::store_contract::{queued_run, rich_run};
use ci_engine::{Run, RunQuery, RunStore};
use ci_server::sqlite_store::{SCHEMA_VERSION, SqliteStore};
use rusqlite::{Connection, params};

/// The schema of version 1, as ci-server created it before attempts named
/// their runner (no `attempts.runner` column).
const V1_SCHEMA: &str = "
CREATE TABLE runs (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    status       TEXT    NOT NULL,
    branches     TEXT    NOT NULL,
    parents      TEXT    NOT NULL,
    summary      TEXT    NOT NULL,
    author       TEXT    NOT NULL,
    commit_time  INTEGER NOT NULL,
    failed_steps TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER
);
CREATE INDEX runs_by_status ON runs (status, seq);

CREATE TABLE run_branches (
    seq    INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE ON UPDATE CASCADE,
    branch TEXT    NOT NULL,
    PRIMARY KEY (seq, branch)
) WITHOUT ROWID;
CREATE INDEX run_branches_by_branch ON run_branches (branch, seq);

CREATE TABLE steps (
    seq      INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE ON UPDATE CASCADE,
    position INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    reason   TEXT,
    PRIMARY KEY (seq, position)
) WITHOUT ROWID;

CREATE TABLE attempts (
    seq                INTEGER NOT NULL,
    step               INTEGER NOT NULL,
    position           INTEGER NOT NULL,
    number             INTEGER NOT NULL,
    outcome            TEXT    NOT NULL,
    reason             TEXT,
    logs               TEXT    NOT NULL,
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER,
    duration_ms        INTEGER,
    runner_duration_ms INTEGER,
    PRIMARY KEY (seq, step, position),
    FOREIGN KEY (seq, step) REFERENCES steps (seq, position) ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE TABLE engine_state (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// "CIRS", the application id of a ci-server run database.
const APPLICATION_ID: i32 = 0x4349_5253;

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("encode")
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).expect("fits i64")
}

/// Writes `run` into a version-1 database with plain SQL, as the old
/// ci-server laid it out.
fn insert_v1(conn: &Connection, run: &Run) {
    let seq = i64_of(run.seq);
    conn.execute(
        "INSERT INTO runs (seq, id, status, branches, parents, summary, author, commit_time,
                           failed_steps, created_at, started_at, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            seq,
            run.id().as_str(),
            run.status.as_str(),
            to_json(&run.commit.branches),
            to_json(&run.commit.parents),
            run.commit.summary,
            run.commit.author,
            run.commit.time,
            to_json(&run.failed_steps),
            run.created_at,
            run.started_at,
            run.finished_at,
        ],
    )
    .expect("insert run");
    for branch in &run.commit.branches {
        conn.execute(
            "INSERT OR IGNORE INTO run_branches (seq, branch) VALUES (?1, ?2)",
            params![seq, branch],
        )
        .expect("insert branch");
    }
    for (i, step) in run.steps.iter().enumerate() {
        let position = i64_of(i as u64);
        conn.execute(
            "INSERT INTO steps (seq, position, name, status, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![seq, position, step.name, step.status.as_str(), step.reason],
        )
        .expect("insert step");
        for (j, a) in step.attempts.iter().enumerate() {
            conn.execute(
                "INSERT INTO attempts (seq, step, position, number, outcome, reason, logs,
                                       started_at, finished_at, duration_ms, runner_duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    seq,
                    position,
                    i64_of(j as u64),
                    a.number,
                    a.outcome.as_str(),
                    a.reason,
                    a.logs,
                    a.started_at,
                    a.finished_at,
                    a.duration_ms.map(i64_of),
                    a.runner_duration_ms.map(i64_of),
                ],
            )
            .expect("insert attempt");
        }
    }
}

/// A version-1 database at `path` holding `runs` and one saved state value,
/// in WAL mode as the old ci-server left it.
fn create_v1_database(path: &Path, runs: &[&Run]) {
    let conn = Connection::open(path).expect("create old database");
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .expect("WAL");
    assert_eq!(mode, "wal");
    conn.execute_batch(V1_SCHEMA).expect("old schema");
    for run in runs {
        insert_v1(&conn, run);
    }
    conn.execute(
        "INSERT INTO engine_state (key, value) VALUES ('git.cursor', 'cafe')",
        [],
    )
    .expect("state");
    conn.pragma_update(None, "application_id", APPLICATION_ID)
        .expect("application id");
    conn.pragma_update(None, "user_version", 1)
        .expect("user version");
}

/// `run` as a version 1 database reads it back: no attempt names its runner,
/// and the run was never retried nor cancelled from outside (no retry
/// position, no actions, every step's budget from attempt 1).
fn as_version_1(run: &Run) -> Run {
    let mut run = run.clone();
    run.retry_seq = None;
    run.actions.clear();
    for step in &mut run.steps {
        step.budget_from = 1;
        for a in &mut step.attempts {
            a.runner = None;
        }
    }
    run
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .expect("open with rusqlite")
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version")
}

#[tokio::test]
async fn a_version_1_database_is_migrated_without_losing_a_run() {
    assert_eq!(
        SCHEMA_VERSION, 4,
        "this test covers the steps from version 1 to 4"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runs.db");
    let rich = rich_run(&"ab".repeat(20), 3);
    assert!(
        rich.steps
            .iter()
            .flat_map(|s| &s.attempts)
            .any(|a| a.runner.is_some()),
        "the fixture names runners, so dropping them is visible"
    );
    let queued = queued_run(&"cd".repeat(20), 4, &["main"]);
    create_v1_database(&path, &[&rich, &queued]);

    let store = SqliteStore::open(&path).await.expect("open and migrate");
    let old_rich = as_version_1(&rich);
    assert_eq!(
        store.get_run(rich.id().as_str()).await.expect("get"),
        old_rich,
        "an old run reads back whole, its attempts with no runner"
    );
    let page = store.list_runs(&RunQuery::default()).await.expect("list");
    assert_eq!(page.total, 2);
    assert_eq!(page.runs, [as_version_1(&queued), old_rich.clone()]);
    // An offset is placed by the bucket counts the migration filled in.
    let skip_one = RunQuery {
        offset: 1,
        ..RunQuery::default()
    };
    let page = store.list_runs(&skip_one).await.expect("list at an offset");
    assert_eq!((page.runs, page.next), (vec![old_rich.clone()], None));
    let on_main = RunQuery {
        branch: Some("main".to_owned()),
        offset: 1,
        ..RunQuery::default()
    };
    let page = store.list_runs(&on_main).await.expect("list a branch");
    assert_eq!(
        (page.total, page.runs),
        (2, vec![old_rich.clone()]),
        "both runs are on main; the older is the second"
    );
    assert_eq!(store.max_seq().await.expect("max_seq"), Some(4));
    assert_eq!(
        store
            .load_state("git.cursor")
            .await
            .expect("load_state")
            .as_deref(),
        Some("cafe")
    );

    // The migrated file records runners, retries and actions from now on.
    store.update_run(&rich).await.expect("update with runners");
    assert_eq!(store.get_run(rich.id().as_str()).await.expect("get"), rich);
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION, "the file was stamped");

    let reopened = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(
        reopened.get_run(rich.id().as_str()).await.expect("get"),
        rich,
        "the runners, retry position, actions and budgets survive a reopen"
    );
    assert_eq!(
        reopened
            .get_run(queued.id().as_str())
            .await
            .expect("get queued"),
        as_version_1(&queued)
    );
}

#[tokio::test]
async fn an_empty_version_1_database_is_migrated_and_usable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runs.db");
    create_v1_database(&path, &[]);
    let store = SqliteStore::open(&path).await.expect("open and migrate");
    assert_eq!(store.max_seq().await.expect("max_seq"), None);
    let rich = rich_run(&"ef".repeat(20), 1);
    assert!(store.insert_run(&rich).await.expect("insert"));
    assert_eq!(store.get_run(rich.id().as_str()).await.expect("get"), rich);
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

#[tokio::test]
async fn a_new_database_has_the_runner_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runs.db");
    drop(SqliteStore::open(&path).await.expect("create"));
    let conn = Connection::open(&path).expect("open with rusqlite");
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('attempts')")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("columns");
    assert!(
        columns.iter().any(|c| c == "runner"),
        "no runner column: {columns:?}"
    );
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}
