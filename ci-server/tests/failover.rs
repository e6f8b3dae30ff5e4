//! Failover of real `ci-server` processes sharing one store.
//!
//! Two servers share a database (PostgreSQL, or one SQLite file) and one
//! repository; one external step-runner simulator (which never crashes, and
//! logs every request) serves both. A burst of 50 commits arrives, and the
//! active server is killed with SIGKILL three times at random moments while a
//! step is in flight; each time a new server is started as the next
//! standby. The standby must take over within 5 s of each kill, and at the
//! end every commit has exactly one terminal run, no step has more than one
//! attempt that was not interrupted, the runner saw no step more often than
//! the store recorded attempts of it, and every attempt caught in flight by
//! a kill is recorded as interrupted (unless it had finished before).
//!
//! The fencing test freezes the active server on PostgreSQL with SIGSTOP:
//! the standby takes over within 5 s, and once thawed the old server finds
//! its lease gone (or its writes refused by term) and steps down.

mod e2e_support;
mod pg_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e_support::{
    GitRepo, Server, get_json, is_terminal, read_request_log, start_simulator, wait_for_terminal,
};
use pg_support::PgCluster;
use serde_json::Value;

/// Commits in the burst.
const COMMITS: usize = 50;
/// Times the active server is killed.
const KILLS: usize = 3;
/// How long a standby may take to become the active server.
const TAKEOVER: Duration = Duration::from_secs(5);
/// How long the whole scenario may take.
const WITHIN: Duration = Duration::from_secs(240);
/// Steps short enough for 50 commits, long enough to be caught in flight.
const SIM: [&str; 7] = [
    "--no-crash",
    "--lint-ms",
    "20",
    "--build-ms",
    "60",
    "--test-ms",
    "60",
];

/// A number below `n` that differs from run to run (the kill moments).
fn random_below(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(7, |d| u64::from(d.subsec_nanos()));
    (nanos ^ (nanos >> 7)) % n.max(1)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A server on `db` with the external runner `runner`.
fn start_server(repo: &Path, db: &str, runner: &str) -> Server {
    Server::start(
        repo,
        &[
            runner,
            "--db",
            db,
            "--initial",
            "all",
            "--poll-interval",
            "100ms",
            "--retry-backoff",
            "50ms",
        ],
    )
}

/// The role `/healthz` reports, `None` when the server does not answer.
async fn role(server: &Server) -> Option<String> {
    let response = reqwest::Client::new()
        .get(server.url("/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let health: Value = response.json().await.ok()?;
    health["role"].as_str().map(str::to_owned)
}

/// Polls every server until exactly one is `primary` (never two at once,
/// which is checked at every poll); returns its index.
async fn wait_for_one_primary(servers: &[Server], within: Duration, what: &str) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut primaries = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            if role(server).await.as_deref() == Some("primary") {
                primaries.push(i);
            }
        }
        assert!(
            primaries.len() <= 1,
            "two active servers at once ({primaries:?}) {what}"
        );
        if let [one] = primaries[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no active server within {within:?} {what}; logs:\n{}",
            servers
                .iter()
                .map(|s| s.proc.stderr_tail())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An attempt in flight on `server` now: (commit, step, attempt number).
async fn attempt_in_flight(server: &Server) -> Option<(String, String, u64)> {
    let (_, running) = get_json(&server.url("/runs?status=running&limit=20")).await;
    for run in running["data"].as_array().into_iter().flatten() {
        let id = run["id"].as_str()?;
        let (code, detail) = get_json(&server.url(&format!("/run/{id}"))).await;
        if code != 200 {
            continue;
        }
        for step in detail["steps"].as_array().into_iter().flatten() {
            let Some(last) = step["attempts"].as_array().and_then(|a| a.last()) else {
                continue;
            };
            if last["outcome"] == "running" {
                return Some((
                    id.to_owned(),
                    step["name"].as_str()?.to_owned(),
                    last["number"].as_u64()?,
                ));
            }
        }
    }
    None
}

/// The burst, the kills and the checks, on the store `db`.
async fn fail_over_three_times(db: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = dir.path().join("requests.log");
    let log_arg = log.to_str().expect("UTF-8 path").to_owned();
    let sim_args: Vec<&str> = SIM
        .iter()
        .copied()
        .chain(["--request-log", &log_arg])
        .collect();
    let (_sim, runner) = start_simulator(&sim_args);
    let runner = runner.to_string();
    let repo = GitRepo::new();
    let root = repo.commit("root");

    let mut servers = vec![start_server(repo.path(), db, &runner)];
    wait_for_one_primary(&servers, WITHIN, "at the first start").await;
    servers.push(start_server(repo.path(), db, &runner));
    let burst = repo.chain(&root, COMMITS - 1, "burst");
    repo.update_branch("main", burst.last().expect("a burst"));
    let expected = repo.all_commits();
    assert_eq!(expected.len(), COMMITS);

    let mut caught: Vec<(String, String, u64, i64)> = Vec::new();
    let started = Instant::now();
    for kill in 0..KILLS {
        let active = wait_for_one_primary(&servers, WITHIN, "before a kill").await;
        let in_flight = loop {
            if let Some(found) = attempt_in_flight(&servers[active]).await {
                break found;
            }
            assert!(
                started.elapsed() < WITHIN,
                "no step in flight before kill {kill}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        tokio::time::sleep(Duration::from_millis(random_below(40))).await;
        let mut victim = servers.remove(active);
        victim.proc.kill_hard();
        let killed_at = now_millis();
        let killed = Instant::now();
        caught.push((in_flight.0, in_flight.1, in_flight.2, killed_at));
        wait_for_one_primary(&servers, TAKEOVER, &format!("after kill {kill}")).await;
        eprintln!("kill {kill}: taken over in {:?}", killed.elapsed());
        servers.push(start_server(repo.path(), db, &runner));
    }
    let active = wait_for_one_primary(&servers, WITHIN, "after the kills").await;
    let runs = wait_for_terminal(&servers[active], &expected, WITHIN).await;
    let ctx = format!("log:\n{}", servers[active].proc.stderr_tail());

    // Every commit has exactly one run, and it ended.
    let ids: Vec<String> = runs
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "a commit has two runs {ctx}");
    assert_eq!(unique, expected, "runs and commits differ {ctx}");

    // The attempts of each step: one that counts, the others interrupted.
    let mut recorded: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut details = BTreeMap::new();
    let mut interrupted = 0;
    for id in &expected {
        let (code, run) = get_json(&servers[active].url(&format!("/run/{id}"))).await;
        assert_eq!(code, 200, "{run}");
        let status = run["status"].as_str().unwrap_or_default();
        assert!(
            matches!(status, "success" | "failure"),
            "run {id} ended {status}: failovers alone must not make a run error {ctx}"
        );
        for step in run["steps"].as_array().into_iter().flatten() {
            let name = step["name"].as_str().unwrap_or_default().to_owned();
            let attempts = step["attempts"].as_array().cloned().unwrap_or_default();
            let counted = attempts
                .iter()
                .filter(|a| a["outcome"] != "interrupted")
                .count();
            assert!(
                counted <= 1,
                "step {name} of {id} has {counted} attempts that were not interrupted: \
                 two servers ran it {ctx}"
            );
            interrupted += attempts.len() - counted;
            recorded.insert((id.clone(), name), attempts.len());
        }
        details.insert(id.clone(), run);
    }
    assert!(
        interrupted >= 1,
        "three kills with steps in flight, and no attempt was interrupted"
    );

    // Every attempt caught in flight by a kill is interrupted, unless it
    // finished (and was stored) before the kill.
    for (id, step, number, killed_at) in &caught {
        let attempt = details[id]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == step.as_str())
            .and_then(|s| s["attempts"].as_array())
            .and_then(|a| a.iter().find(|a| a["number"].as_u64() == Some(*number)))
            .unwrap_or_else(|| panic!("attempt {number} of {step} of {id} vanished {ctx}"));
        let finished_before = attempt["finished_at"]
            .as_i64()
            .is_some_and(|at| at <= *killed_at);
        assert!(
            attempt["outcome"] == "interrupted" || finished_before,
            "attempt {number} of {step} of {id}, in flight at a kill, is {attempt} {ctx}"
        );
    }

    // The runner saw each step no more often than the store recorded
    // attempts of it: no server dispatched a step it did not record.
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in read_request_log(&log) {
        if line.event == "start" {
            *seen.entry((line.commit, line.step)).or_default() += 1;
        }
    }
    for (key, times) in &seen {
        let attempts = recorded.get(key).copied().unwrap_or(0);
        assert!(
            *times <= attempts,
            "the runner ran {} of {} {times} times, the store has {attempts} attempts {ctx}",
            key.1,
            key.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_standby_takes_over_three_kills_losing_nothing() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let database = cluster.create_database("failover");
    fail_over_three_times(&cluster.url(&database)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_sqlite_file_a_standby_takes_over_three_kills_losing_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("runs.db");
    fail_over_three_times(db.to_str().expect("UTF-8 path")).await;
}

/// A frozen active server loses its lease to the standby, and once thawed
/// writes nothing more: it steps down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_server_is_fenced_and_steps_down_when_thawed() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let database = cluster.create_database("fencing");
    let db = cluster.url(&database);
    let (_sim, runner) = start_simulator(&SIM);
    let runner = runner.to_string();
    let repo = GitRepo::new();
    let root = repo.commit("root");
    let servers = vec![
        start_server(repo.path(), &db, &runner),
        start_server(repo.path(), &db, &runner),
    ];
    let active = wait_for_one_primary(&servers, WITHIN, "at start").await;
    let standby = 1 - active;
    let burst = repo.chain(&root, 19, "burst");
    repo.update_branch("main", burst.last().expect("a burst"));
    let expected = repo.all_commits();
    let deadline = Instant::now() + WITHIN;
    while attempt_in_flight(&servers[active]).await.is_none() {
        assert!(Instant::now() < deadline, "no step in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    servers[active].proc.signal("STOP");
    let frozen = Instant::now();
    let deadline = frozen + TAKEOVER;
    while role(&servers[standby]).await.as_deref() != Some("primary") {
        assert!(
            Instant::now() < deadline,
            "the standby did not take over within {TAKEOVER:?} of the freeze:\n{}",
            servers[standby].proc.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!("taken over {:?} after the freeze", frozen.elapsed());
    servers[active].proc.signal("CONT");

    let deadline = Instant::now() + Duration::from_secs(10);
    while role(&servers[active]).await.as_deref() != Some("standby") {
        assert!(
            Instant::now() < deadline,
            "the thawed server did not step down:\n{}",
            servers[active].proc.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let said = servers[active].proc.stderr_tail();
    assert!(said.contains("stepped down"), "{said}");
    wait_one_primary_for_a_while(&servers).await;

    let runs = wait_for_terminal(&servers[standby], &expected, WITHIN).await;
    assert_eq!(runs.len(), expected.len());
    for run in &runs {
        assert!(is_terminal(run["status"].as_str().unwrap_or_default()));
        let id = run["id"].as_str().unwrap_or_default();
        let (_, detail) = get_json(&servers[standby].url(&format!("/run/{id}"))).await;
        for step in detail["steps"].as_array().into_iter().flatten() {
            let counted = step["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["outcome"] != "interrupted")
                .count();
            assert!(counted <= 1, "two servers ran a step: {detail}");
        }
    }
}

/// Checks for a second that the servers keep to one primary.
async fn wait_one_primary_for_a_while(servers: &[Server]) {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        wait_for_one_primary(servers, TAKEOVER, "after the thaw").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
