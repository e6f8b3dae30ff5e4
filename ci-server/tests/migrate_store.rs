//! `ci-server migrate-store`, run as the real binary: a SQLite run database
//! written with `SqliteStore` (runs of every status, retried runs, runs with
//! several attempts and logs with odd bytes, several branches, saved state)
//! is copied into a real PostgreSQL (`tests/pg_support`), and every run,
//! listing, total and state value read through `PgStore` must equal what the
//! `SqliteStore` gives. Also the refusals: a destination that holds runs
//! (nothing written), a missing or empty source (nothing created), a source
//! a ci-server holds, a wrong password (never shown).
//!
//! Without PostgreSQL the tests that need it are skipped with the reason
//! printed, except under CI (`CI=true`), where they fail.

mod e2e_support;
mod pg_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ci_engine::testing::store_contract::{hex_id, queued_run, rich_run, run_with_status};
use ci_engine::{
    AttemptOutcome, Run, RunAction, RunActionKind, RunPage, RunQuery, RunStatus, RunStore,
    StepStatus,
};
use ci_server::pg_store::{DatabaseUrl, PgStore};
use ci_server::sqlite_store::SqliteStore;
use e2e_support::{DATABASE_URL_ENV, run_to_end_with};
use pg_support::PgCluster;

const WITHIN: Duration = Duration::from_secs(120);

/// The branches the fixture's runs are on, and one none is on.
const BRANCHES: [&str; 5] = ["main", "dev", "feature/ü", "release-1.0", "nowhere"];

/// The saved state values of the fixture.
fn state() -> Vec<(&'static str, String)> {
    vec![
        ("git-source", r#"{"version":2,"prunes":[]}"#.to_owned()),
        (
            "git-source/tips/00",
            format!(r#"{{"main":"{}"}}"#, hex_id(9)),
        ),
        (
            "git-source/tips/ff",
            "naïve — 🦀 \u{0} after NUL".to_owned(),
        ),
        ("other/ключ", String::new()),
    ]
}

/// Runs `ci-server migrate-store ARGS` with `env`; returns the exit code,
/// stdout and stderr.
fn migrate(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let all: Vec<&str> = std::iter::once("migrate-store")
        .chain(args.iter().copied())
        .collect();
    run_to_end_with(&all, env, None, WITHIN)
}

/// Expects exit code 2, nothing on stdout, and exactly one line on stderr
/// that is the command's own, containing `needle`; returns that line.
fn expect_refused(out: &(Option<i32>, String, String), needle: &str) -> String {
    let (code, stdout, stderr) = out;
    assert_eq!(*code, Some(2), "stdout {stdout:?}, stderr {stderr:?}");
    assert!(stdout.is_empty(), "printed {stdout:?}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ci-server migrate-store: "))
        .collect();
    assert_eq!(ours.len(), 1, "not one error line: {stderr:?}");
    assert!(ours[0].contains(needle), "{:?} lacks {needle:?}", ours[0]);
    ours[0].to_owned()
}

/// An attempt of `number` with `outcome` and `logs`.
fn attempt(number: u32, outcome: AttemptOutcome, logs: &str) -> ci_engine::Attempt {
    ci_engine::Attempt {
        number,
        outcome,
        reason: (outcome != AttemptOutcome::Success).then(|| format!("reason {number} ✗")),
        logs: logs.to_owned(),
        started_at: 1_700_000_000_000 + i64::from(number),
        finished_at: (outcome != AttemptOutcome::Running)
            .then_some(1_700_000_000_900 + i64::from(number)),
        duration_ms: Some(u64::from(number) * 7),
        runner_duration_ms: (!number.is_multiple_of(3)).then_some(u64::from(number) * 5),
        runner: number.is_multiple_of(2).then(|| format!("sim-{number}")),
    }
}

/// The fixture's runs: every status on several branch sets, runs retried
/// (queued again, finished, cancelled), runs with many attempts and logs
/// with odd bytes, `seq`s with gaps that cross the SQLite store's buckets,
/// and a retry position that is the highest queue position of all.
fn fixture() -> Vec<Run> {
    let branch_sets: [&[&str]; 5] = [&["main"], &["dev"], &["main", "dev"], &["feature/ü"], &[]];
    let mut runs = Vec::new();
    let mut seq = 3;
    for (i, status) in RunStatus::ALL.iter().cycle().take(42).enumerate() {
        let on = branch_sets[i % branch_sets.len()];
        runs.push(run_with_status(&hex_id(1000 + i as u64), seq, on, *status));
        seq += 1 + (i as u64 * 97) % 700;
    }

    // Retried and then cancelled, with a build on its third attempt.
    runs.push(rich_run(&hex_id(2000), seq));
    seq += 5;

    // Retried and queued again: its queue position is its retry_seq.
    let mut requeued = queued_run(&hex_id(2001), seq, &["main", "release-1.0"]);
    requeued.retry_seq = Some(seq + 50_000);
    requeued.actions = vec![RunAction {
        kind: RunActionKind::Retry,
        at: 1_700_000_123_456,
        by: Some("[::1]:5000".into()),
    }];
    requeued.steps[0].budget_from = 4;
    requeued.steps[0].attempts = (1..=3)
        .map(|n| attempt(n, AttemptOutcome::Failure, "failed again\n"))
        .collect();
    runs.push(requeued);
    seq += 3;

    // Running, with odd bytes in its logs, summary and reasons.
    let mut odd = run_with_status(&hex_id(2002), seq, &["dev"], RunStatus::Running);
    odd.commit.summary = "NUL \u{0} in a summary, a tab\tand a bell \u{7}".into();
    odd.commit.author = "Zoë Ünicode <z@example.com>".into();
    odd.commit.parents = vec![
        ci_engine::CommitId::new(hex_id(1)),
        ci_engine::CommitId::new(hex_id(2)),
    ];
    let mut big = String::new();
    while big.len() < 300_000 {
        big.push_str("\x1b[31merror\x1b[0m: 🦀 ü \r\n\\ \"q\" \u{FEFF}\u{FFFD}\t");
    }
    big.push('\0');
    big.push_str("after NUL");
    odd.steps[1].status = StepStatus::Running;
    odd.steps[1].reason = Some("reason with NUL \u{0}".into());
    odd.steps[1].attempts = vec![
        attempt(1, AttemptOutcome::Lost, ""),
        attempt(2, AttemptOutcome::Interrupted, &big),
        attempt(3, AttemptOutcome::Rejected, "日本語のログ\n"),
        attempt(4, AttemptOutcome::Running, "partial"),
    ];
    runs.push(odd);
    seq += 1;

    // A run whose commit is on no branch, finished with an error after
    // a retry, and one with many attempts.
    let mut errored = run_with_status(&hex_id(2003), seq, &[], RunStatus::Error);
    errored.retry_seq = Some(seq + 2);
    errored.steps[2].budget_from = 2;
    runs.push(errored);
    seq += 3;
    let mut many = run_with_status(&hex_id(2004), seq, &["main"], RunStatus::Failure);
    many.steps[0].attempts = (1..=12)
        .map(|n| attempt(n, AttemptOutcome::Failure, &format!("try {n}\n")))
        .collect();
    runs.push(many);
    runs
}

/// A new SQLite database at `dir/runs.db` with the fixture's runs (written
/// as the engine would: inserted queued, then updated) and state, closed.
async fn sqlite_fixture(dir: &Path) -> (PathBuf, Vec<Run>) {
    let path = dir.join("runs.db");
    let store = SqliteStore::open(&path).await.expect("open SQLite");
    let runs = fixture();
    for run in &runs {
        let mut first = run.clone();
        first.status = RunStatus::Queued;
        assert!(store.insert_run(&first).await.expect("insert"));
        store.update_run(run).await.expect("update");
    }
    for (key, value) in state() {
        store.save_state(key, &value).await.expect("save_state");
    }
    drop(store);
    (path, runs)
}

/// Every page of `query` (5 runs at a time, by cursor).
async fn all_pages(store: &dyn RunStore, query: &RunQuery) -> Vec<RunPage> {
    let mut query = RunQuery {
        limit: 5,
        ..query.clone()
    };
    let mut pages = Vec::new();
    loop {
        let page = store.list_runs(&query).await.expect("list_runs");
        let next = page.next;
        pages.push(page);
        match next {
            Some(after) => query.after = Some(after),
            None => return pages,
        }
    }
}

/// Checks that `pg` gives exactly what `sqlite` gives: every run by id,
/// every listing (each status or none, each branch or none, with and
/// without logs and steps, by cursor and at an offset), the unfinished runs,
/// the highest queue position and every saved value.
async fn assert_same(sqlite: &SqliteStore, pg: &PgStore, runs: &[Run]) {
    assert_eq!(
        pg.max_seq().await.expect("max_seq"),
        sqlite.max_seq().await.expect("max_seq")
    );
    for run in runs {
        let id = run.id().as_str();
        let want = sqlite.get_run(id).await.expect("get_run from SQLite");
        assert_eq!(&want, run, "the SQLite file holds the fixture");
        assert_eq!(
            pg.get_run(id).await.expect("get_run from PostgreSQL"),
            want,
            "run {id}"
        );
    }
    let branches = std::iter::once(None).chain(BRANCHES.map(Some));
    for branch in branches {
        for status in std::iter::once(None).chain(RunStatus::ALL.map(Some)) {
            for (with_steps, with_logs) in [(true, true), (true, false), (false, false)] {
                let query = RunQuery {
                    status,
                    branch: branch.map(str::to_owned),
                    with_steps,
                    with_logs,
                    ..RunQuery::default()
                };
                assert_eq!(
                    all_pages(pg, &query).await,
                    all_pages(sqlite, &query).await,
                    "{query:?}"
                );
                let deep = RunQuery {
                    limit: 4,
                    offset: 3,
                    ..query.clone()
                };
                assert_eq!(
                    pg.list_runs(&deep).await.expect("list"),
                    sqlite.list_runs(&deep).await.expect("list"),
                    "{deep:?}"
                );
            }
        }
    }
    assert_eq!(
        pg.unfinished_runs().await.expect("unfinished"),
        sqlite.unfinished_runs().await.expect("unfinished")
    );
    assert_eq!(
        pg.unfinished_after(0, 1000).await.expect("unfinished"),
        sqlite.unfinished_after(0, 1000).await.expect("unfinished")
    );
    let keys = sqlite.state_keys().await.expect("state keys");
    assert_eq!(keys.len(), state().len());
    for key in keys {
        assert_eq!(
            pg.load_state(&key).await.expect("load_state"),
            sqlite.load_state(&key).await.expect("load_state"),
            "state {key}"
        );
    }
}

/// The URL of a new empty database of `cluster`.
fn new_database(cluster: &PgCluster, label: &str) -> String {
    cluster.url(&cluster.create_database(label))
}

async fn open_pg(url: &str) -> PgStore {
    PgStore::open(&DatabaseUrl::parse(url).expect("the harness's URL parses"))
        .await
        .expect("open PostgreSQL")
}

/// Bytes of a file (to show it did not change).
fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_and_state_value_arrives_exactly_and_the_source_is_left_alone() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (path, runs) = sqlite_fixture(dir.path()).await;
    let before = bytes(&path);
    let url = new_database(&cluster, "migrate_all");

    let from = path.to_str().expect("UTF-8 path");
    let (code, stdout, stderr) = migrate(&["--from", from, "--to", &url, "--batch", "7"], &[]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let attempts: usize = runs
        .iter()
        .flat_map(|r| &r.steps)
        .map(|s| s.attempts.len())
        .sum();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {stdout:?}");
    assert!(
        lines[0].starts_with(&format!(
            "copied {} runs, {attempts} attempts and {} state keys from {from} to \
             postgres://postgres:***@127.0.0.1:{}/",
            runs.len(),
            state().len(),
            cluster.port()
        )),
        "{}",
        lines[0]
    );
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains(cluster.password()),
            "the password shows: {output}"
        );
    }
    assert_eq!(bytes(&path), before, "the SQLite file changed");

    let sqlite = SqliteStore::open(&path).await.expect("reopen SQLite");
    let pg = open_pg(&url).await;
    assert_same(&sqlite, &pg, &runs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_migration_into_the_same_database_is_refused_and_writes_nothing() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (path, runs) = sqlite_fixture(dir.path()).await;
    let from = path.to_str().expect("UTF-8 path");
    let url = new_database(&cluster, "migrate_twice");
    // The URL from the environment, this time.
    let env = [(DATABASE_URL_ENV, url.as_str())];
    let (code, _, stderr) = migrate(&["--from", from], &env);
    assert_eq!(code, Some(0), "stderr: {stderr}");

    // A different history, same database: refused before anything is read
    // or written.
    let other = tempfile::tempdir().expect("temporary directory");
    let other_path = other.path().join("runs.db");
    {
        let store = SqliteStore::open(&other_path).await.expect("open");
        let run = run_with_status(&hex_id(1000), 1, &["main"], RunStatus::Success);
        store.insert_run(&run).await.expect("insert");
        store
            .save_state("git-source", "another")
            .await
            .expect("save");
    }
    let out = migrate(&["--from", other_path.to_str().expect("UTF-8 path")], &env);
    let line = expect_refused(&out, &format!("already holds {} runs", runs.len()));
    assert!(line.contains("postgres://postgres:***@127.0.0.1"), "{line}");
    assert!(!out.2.contains(cluster.password()), "the password shows");

    let sqlite = SqliteStore::open(&path).await.expect("reopen SQLite");
    let pg = open_pg(&url).await;
    assert_same(&sqlite, &pg, &runs).await;
}

#[test]
fn a_missing_source_is_one_line_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("runs.db");
    let to = "postgres://ci:s3cret@127.0.0.1:1/ci";
    let out = migrate(
        &["--from", missing.to_str().expect("UTF-8"), "--to", to],
        &[],
    );
    let line = expect_refused(&out, "does not exist");
    assert!(line.contains(&missing.display().to_string()), "{line}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "files appeared: {left:?}");

    // An empty file is not made a database, and a file that is not SQLite
    // is refused.
    std::fs::write(&missing, b"").expect("empty file");
    let out = migrate(
        &["--from", missing.to_str().expect("UTF-8"), "--to", to],
        &[],
    );
    expect_refused(&out, "is not a ci-server run database: it is empty");
    assert_eq!(bytes(&missing), b"", "the empty file was written");
    std::fs::write(
        &missing,
        b"not a database, just some text that is long enough",
    )
    .expect("file");
    let out = migrate(
        &["--from", missing.to_str().expect("UTF-8"), "--to", to],
        &[],
    );
    expect_refused(&out, "not an SQLite database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_a_server_holds_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (path, _) = sqlite_fixture(dir.path()).await;
    let lock_path = dir.path().join("runs.db.lock");
    let lock = std::fs::File::create(&lock_path).expect("lock file");
    lock.try_lock().expect("the test takes the lock");
    std::fs::write(&lock_path, "http://127.0.0.1:9000 (pid 4242 on ci)").expect("holder");
    // Refused before it connects: no PostgreSQL is needed.
    let out = migrate(
        &[
            "--from",
            path.to_str().expect("UTF-8"),
            "--to",
            "postgres://ci:s3cret@127.0.0.1:1/ci",
        ],
        &[],
    );
    let line = expect_refused(
        &out,
        "another process, http://127.0.0.1:9000 (pid 4242 on ci), is using",
    );
    assert!(line.contains("runs.db.lock"), "{line}");
    drop(lock);
}

#[test]
fn a_wrong_password_is_refused_without_showing_it() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (path, _) = runtime.block_on(sqlite_fixture(dir.path()));
    let database = cluster.create_database("migrate_password");
    let wrong = format!(
        "postgres://postgres:wrong-{}@127.0.0.1:{}/{database}",
        cluster.password(),
        cluster.port()
    );
    let from = path.to_str().expect("UTF-8");
    for out in [
        migrate(&["--from", from, "--to", &wrong], &[]),
        migrate(&["--from", from], &[(DATABASE_URL_ENV, &wrong)]),
    ] {
        let line = expect_refused(&out, "password authentication failed");
        assert!(line.contains("postgres:***@127.0.0.1"), "{line}");
        assert!(
            !out.2.contains(cluster.password()),
            "the password shows: {}",
            out.2
        );
    }
    assert_eq!(
        cluster.psql(
            &database,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'runs'"
        ),
        "0",
        "nothing was created"
    );
}

#[test]
fn bad_destinations_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let from = dir.path().join("runs.db");
    let from = from.to_str().expect("UTF-8");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(sqlite_fixture(dir.path()));
    for (args, env, needle) in [
        (vec!["--from", from], vec![], "no destination"),
        (
            vec!["--from", from],
            vec![(DATABASE_URL_ENV, "")],
            "no destination",
        ),
        (
            vec!["--from", from, "--to", "/tmp/other.db"],
            vec![],
            "--to: invalid database URL",
        ),
        (
            vec!["--from", from, "--to", "mysql://ci:s3cret@127.0.0.1/ci"],
            vec![],
            "not postgres",
        ),
        (
            vec!["--from", from],
            vec![(DATABASE_URL_ENV, "postgres://ci:s3cret@127.0.0.1:x/ci")],
            "CI_DATABASE_URL: invalid database URL",
        ),
    ] {
        let out = migrate(&args, &env);
        let line = expect_refused(&out, needle);
        assert!(!line.contains("s3cret"), "{line}");
    }
    let refused = format!("postgres://ci:s3cret@127.0.0.1:{port}/ci");
    let out = migrate(&["--from", from, "--to", &refused], &[]);
    let line = expect_refused(
        &out,
        "cannot connect to the run database postgres://ci:***@",
    );
    assert!(line.to_lowercase().contains("refused"), "{line}");
    assert!(!out.2.contains("s3cret"), "{}", out.2);
}

#[test]
fn help_tells_what_is_copied_and_refused() {
    let (code, help, _) = migrate(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for item in [
        "--from <FILE>",
        "--to <URL>",
        "--batch <N>",
        "CI_DATABASE_URL",
        "runs.db",
        "FILE.lock",
        "older ci-server",
        "never created",
        "must hold no run",
        "state",
        "Exit codes",
    ] {
        assert!(
            help.contains(item),
            "migrate-store --help lacks {item}:\n{help}"
        );
    }
    let (code, help, _) = run_to_end_with(&["--help"], &[], None, WITHIN);
    assert_eq!(code, Some(0));
    assert!(help.contains("ci-server migrate-store --help"), "{help}");
    let (code, stdout, stderr) = migrate(&["--bogus"], &[]);
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ci-server migrate-store: "), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_an_older_schema_is_upgraded_then_copied() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (path, runs) = sqlite_fixture(dir.path()).await;
    // Back to version 3, which had no `run_buckets` (version 4 fills it from
    // the runs).
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "DROP TRIGGER run_bucketed; DROP TRIGGER run_rebucketed; DROP TRIGGER run_unbucketed;
             DROP TRIGGER branch_bucketed; DROP TRIGGER branch_unbucketed;
             DROP TABLE run_buckets; PRAGMA user_version = 3;",
        )
        .expect("downgrade");
    }
    let url = new_database(&cluster, "migrate_old");
    let from = path.to_str().expect("UTF-8 path");
    let (code, _, stderr) = migrate(&["--from", from, "--to", &url], &[]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stderr.contains("from an older ci-server"), "{stderr}");
    let version: i64 = rusqlite::Connection::open(&path)
        .expect("open")
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, ci_server::sqlite_store::SCHEMA_VERSION, "upgraded");

    let sqlite = SqliteStore::open(&path).await.expect("reopen SQLite");
    let pg = open_pg(&url).await;
    assert_same(&sqlite, &pg, &runs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_postgresql_cannot_hold_fails_the_copy_with_exit_1() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("runs.db");
    {
        let store = SqliteStore::open(&path).await.expect("open");
        for seq in 0..5 {
            let branch = if seq == 1 { "bad\u{0}branch" } else { "main" };
            let run = run_with_status(&hex_id(seq), seq, &[branch], RunStatus::Success);
            store.insert_run(&run).await.expect("insert");
        }
    }
    let database = cluster.create_database("migrate_nul");
    let url = cluster.url(&database);
    let (code, stdout, stderr) = migrate(
        &[
            "--from",
            path.to_str().expect("UTF-8"),
            "--to",
            &url,
            "--batch",
            "2",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ci-server migrate-store: "))
        .collect();
    assert_eq!(ours.len(), 1, "{stderr}");
    // Newest first, two at a time: 4 and 3 are written, then the batch of
    // 2 and 1 fails whole.
    assert!(
        ours[0].contains("failed after 2 runs were copied") && ours[0].contains("NUL"),
        "{}",
        ours[0]
    );
    assert_eq!(
        cluster.psql(
            &database,
            "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM runs"
        ),
        "3,4"
    );
}
