//! End-to-end tests: a real git repository in a temporary directory, `ci-server`
//! started as a process (with its bundled simulator, or with a simulator run
//! separately as an external runner), commits made with `git`, and everything
//! checked over HTTP.

mod e2e_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::{GitRepo, Server, TWIN_PREFIX, TWINS, get, get_json, wait_for_terminal};
use serde_json::Value;

/// Bound on waiting for all commits of a test to finish.
const FINISH_WITHIN: Duration = Duration::from_secs(40);

/// Short steps, and failures and crashes often enough to be seen.
const CRASHY_SIM: &str = "--lint-ms 2 --build-ms 10 --test-ms 10 --fail-rate 0.3 --crash-rate 0.4";

/// Collects the commits of `run_finished` events from `GET /events`.
struct FinishedEvents {
    commits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FinishedEvents {
    /// Connects to the event stream and returns once the `connected` event came.
    async fn subscribe(server: &Server) -> Self {
        let mut resp = reqwest::get(server.url("/events"))
            .await
            .expect("/events answers");
        assert_eq!(resp.status().as_u16(), 200);
        let commits = Arc::new(Mutex::new(Vec::new()));
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let sink = Arc::clone(&commits);
        let task = tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            let mut pending = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let Some(data) = line.trim_end().strip_prefix("data: ") else {
                        continue;
                    };
                    let Ok(event) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    match event["type"].as_str() {
                        Some("connected") => {
                            if let Some(tx) = connected.take() {
                                let _ = tx.send(());
                            }
                        }
                        Some("run_finished") => {
                            if let Some(c) = event["commit"].as_str() {
                                sink.lock().expect("events").push(c.to_owned());
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), connected_rx)
            .await
            .expect("the connected event in time")
            .expect("the stream stays open");
        Self { commits, task }
    }

    /// How many `run_finished` events each commit got, once every commit of
    /// `expected` got at least one (bounded wait).
    async fn counts(&self, expected: &BTreeSet<String>) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut counts = BTreeMap::new();
            for c in self.commits.lock().expect("events").iter() {
                *counts.entry(c.clone()).or_insert(0) += 1;
            }
            if expected.iter().all(|id| counts.contains_key(id)) || Instant::now() > deadline {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for FinishedEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks one run's detail against the rules: `failed_steps` agrees with the
/// status and the steps; a crash (`lost` attempt) is never a step failure.
/// Returns the number of lost attempts in it.
async fn check_run(server: &Server, id: &str) -> usize {
    let (code, run) = get_json(&server.url(&format!("/run/{id}"))).await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["id"], id);
    let status = run["status"].as_str().expect("status");
    let steps = run["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["lint", "build", "test"], "{run}");
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| matches!(s["status"].as_str(), Some("failure" | "error")))
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    let listed: Vec<&str> = run["failed_steps"]
        .as_array()
        .expect("failed_steps is always present")
        .iter()
        .map(|s| s.as_str().expect("a step name"))
        .collect();
    assert_eq!(
        listed, failed,
        "failed_steps disagrees with the steps: {run}"
    );
    let step_statuses: Vec<&str> = steps
        .iter()
        .map(|s| s["status"].as_str().expect("status"))
        .collect();
    match status {
        "success" => assert!(step_statuses.iter().all(|s| *s == "success"), "{run}"),
        "failure" => assert!(step_statuses.contains(&"failure"), "{run}"),
        "error" => {
            assert!(!step_statuses.contains(&"failure"), "{run}");
            assert!(step_statuses.contains(&"error"), "{run}");
        }
        other => panic!("run {id} ended {other}: {run}"),
    }
    let mut lost = 0;
    for step in steps {
        let attempts = step["attempts"].as_array().expect("attempts");
        let outcomes: Vec<&str> = attempts
            .iter()
            .map(|a| a["outcome"].as_str().expect("outcome"))
            .collect();
        let step_status = step["status"].as_str().expect("status");
        if step_status == "failure" {
            assert_eq!(
                outcomes.last(),
                Some(&"failure"),
                "a step failed without the runner saying so (a crash recorded as a failure?): {run}"
            );
        }
        if step_status == "success" {
            assert_eq!(outcomes.last(), Some(&"success"), "{run}");
        }
        for (i, outcome) in outcomes.iter().enumerate() {
            if *outcome == "lost" {
                lost += 1;
                let retried = i + 1 < outcomes.len();
                assert!(
                    retried || step_status == "error",
                    "a lost attempt was neither retried nor turned into an error: {run}"
                );
            }
        }
        if step["name"] == "test" && run["steps"][1]["status"] != "success" {
            assert_eq!(
                step_status, "skipped",
                "test ran without a green build: {run}"
            );
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_simulator_runs_every_commit_once_despite_crashes() {
    let repo = GitRepo::new();
    let root = repo.commit("root");
    let server = Server::start(
        repo.path(),
        &[
            "--initial",
            "all",
            "--poll-interval",
            "200ms",
            "--retry-backoff",
            "20ms",
            "--max-attempts",
            "25",
            "--sim-args",
            CRASHY_SIM,
        ],
    );
    assert!(
        server.startup_line.contains("bundled simulator"),
        "{}",
        server.startup_line
    );
    // The default store is a SQLite file in the repository's git dir.
    assert!(
        repo.path().join(".git/ci-server/runs.db").is_file(),
        "{}",
        server.startup_line
    );
    wait_for_terminal(&server, &BTreeSet::from([root.clone()]), FINISH_WITHIN).await;
    let events = FinishedEvents::subscribe(&server).await;

    // A single commit.
    let single = repo.commit("single");
    wait_for_terminal(&server, &BTreeSet::from([single.clone()]), FINISH_WITHIN).await;

    // Twenty commits revealed by one ref update.
    let twenty = repo.chain(&single, 20, "burst");
    repo.update_branch("main", twenty.last().expect("20 commits"));
    wait_for_terminal(&server, &twenty.iter().cloned().collect(), FINISH_WITHIN).await;

    // Commits on a second branch, then a merge of it into main; and two root
    // commits whose ids share a prefix, on branches of their own.
    let feature = repo.chain(&root, 3, "feature");
    repo.update_branch("feature", feature.last().expect("3 commits"));
    let merge = repo.commit_tree(
        &[twenty.last().expect("tip"), feature.last().expect("tip")],
        "merge",
    );
    repo.update_branch("main", &merge);
    for (i, (message, id)) in TWINS.iter().enumerate() {
        assert_eq!(
            &repo.commit_tree(&[], message),
            id,
            "git hashes commits differently here"
        );
        repo.update_branch(&format!("twin-{i}"), id);
    }

    let expected = repo.all_commits();
    assert_eq!(expected.len(), 1 + 1 + 20 + 3 + 1 + 2);
    let runs = wait_for_terminal(&server, &expected, FINISH_WITHIN).await;

    // Every commit has exactly one run, and nothing else has one.
    let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().expect("id")).collect();
    let unique: BTreeSet<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(ids.len(), unique.len(), "a commit has two runs: {ids:?}");
    assert_eq!(unique, expected);
    let (_, page) = get_json(&server.url("/runs")).await;
    assert_eq!(page["total"], expected.len());

    // Every commit made after subscribing finished exactly once.
    let after: BTreeSet<String> = expected.iter().filter(|id| **id != root).cloned().collect();
    let counts = events.counts(&after).await;
    for id in &after {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "run_finished events of {id}: {counts:?}"
        );
    }

    // failed_steps agrees with the status; no crash is a plain failure.
    let mut lost = 0;
    for run in &runs {
        let id = run["id"].as_str().expect("id");
        let listed = run["failed_steps"].as_array().expect("failed_steps");
        match run["status"].as_str() {
            Some("success") => assert!(listed.is_empty(), "{run}"),
            Some("failure" | "error") => assert!(!listed.is_empty(), "{run}"),
            other => panic!("unexpected status {other:?}: {run}"),
        }
        lost += check_run(&server, id).await;
    }
    assert!(
        lost > 0,
        "the simulator never crashed, so crashes were not tested"
    );

    // Lookups by prefix, unknown, malformed and ambiguous commits.
    let (code, body) = get_json(&server.url(&format!("/run/{}", &single[..7]))).await;
    assert_eq!((code, body["id"].as_str()), (200, Some(single.as_str())));
    let (code, body) = get_json(&server.url(&format!("/run/{TWIN_PREFIX}"))).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("ambiguous"))
    );
    let (code, body) = get_json(&server.url(&format!("/run/{}", &TWINS[0].1[..6]))).await;
    assert_eq!((code, body["id"].as_str()), (200, Some(TWINS[0].1)));
    let (code, body) = get_json(&server.url(&format!("/run/{}", "0".repeat(40)))).await;
    assert_eq!(code, 404, "{body}");
    for bad in ["not-hex", "abc"] {
        let (code, body) = get_json(&server.url(&format!("/run/{bad}"))).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body["message"].is_string());
    }
    let (_, twins) = get_json(&server.url("/runs?branch=twin-0")).await;
    assert_eq!(twins["total"], 1, "{twins}");
    assert_eq!(twins["data"][0]["id"], TWINS[0].1);

    // Logs, documentation and the page.
    let (code, log) = get(&server.url(&format!("/run/{single}/steps/lint/log"))).await;
    assert_eq!(code, 200);
    assert!(
        log.contains("=== attempt 1") && log.contains("lint"),
        "{log}"
    );
    let (code, docs) = get(&server.url("/docs")).await;
    assert_eq!(code, 200);
    assert!(docs.contains("swagger"));
    let (code, spec) = get_json(&server.url("/openapi.json")).await;
    assert_eq!(code, 200);
    assert!(spec["paths"]["/run/{commit}"].is_object(), "{spec}");
    let (code, page) = get(&server.url("/")).await;
    assert_eq!(code, 200);
    assert!(page.contains("/events"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_simulator_without_crashes_loses_nothing() {
    let (_sim, sim_addr) = e2e_support::start_simulator(&[
        "--no-crash",
        "--lint-ms",
        "2",
        "--build-ms",
        "10",
        "--test-ms",
        "10",
    ]);
    let repo = GitRepo::new();
    let root = repo.commit("root");
    let runner = format!(":{}", sim_addr.port());
    let server = Server::start(
        repo.path(),
        &[
            &runner,
            "--db",
            ":memory:",
            "--initial",
            "all",
            "--poll-interval",
            "200ms",
        ],
    );
    assert!(
        server.startup_line.contains(&format!(
            "step runner at http://127.0.0.1:{}",
            sim_addr.port()
        )),
        "{}",
        server.startup_line
    );
    let single = repo.commit("single");
    let feature = repo.chain(&single, 4, "feature");
    repo.update_branch("feature", feature.last().expect("tip"));
    let on_main = repo.commit("main again");
    let merge = repo.commit_tree(&[&on_main, feature.last().expect("tip")], "merge");
    repo.update_branch("main", &merge);

    let expected = repo.all_commits();
    assert!(expected.contains(&root) && expected.len() == 8);
    let runs = wait_for_terminal(&server, &expected, FINISH_WITHIN).await;
    assert_eq!(runs.len(), expected.len(), "one run per commit");
    for run in &runs {
        let id = run["id"].as_str().expect("id");
        assert!(
            matches!(run["status"].as_str(), Some("success" | "failure")),
            "without crashes a run ends success or failure: {run}"
        );
        assert_eq!(
            check_run(&server, id).await,
            0,
            "a lost attempt without any crash"
        );
    }
    let (_, merged) = get_json(&server.url(&format!("/run/{merge}"))).await;
    assert_eq!(
        merged["commit"]["parents"].as_array().map(Vec::len),
        Some(2),
        "{merged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_runs_and_runs_what_came_in_between() {
    let repo = GitRepo::new();
    let (_db_dir, db) = e2e_support::temp_file("runs.db");
    let db = db.display().to_string();
    let args = [
        "--db",
        db.as_str(),
        "--poll-interval",
        "200ms",
        "--sim-args",
        "--no-crash --lint-ms 2 --build-ms 10 --test-ms 10",
    ];
    let first = repo.commit("first");
    let mut server = Server::start(repo.path(), &args);
    let before = wait_for_terminal(&server, &BTreeSet::from([first.clone()]), FINISH_WITHIN).await;
    // A client that keeps the event stream open does not hold up the stop
    // (the HTTP server would wait 5 s for it).
    let events = FinishedEvents::subscribe(&server).await;
    let asked = Instant::now();
    assert_eq!(
        server.proc.terminate(Duration::from_secs(15)),
        Some(0),
        "SIGTERM is a clean stop; log:\n{}",
        server.proc.stderr_tail()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "stopping took {:?}",
        asked.elapsed()
    );
    drop(events);

    let second = repo.commit("made while the server was down");
    let server = Server::start(repo.path(), &args);
    let expected = BTreeSet::from([first.clone(), second.clone()]);
    let after = wait_for_terminal(&server, &expected, FINISH_WITHIN).await;
    assert_eq!(after.len(), 2, "nothing lost, nothing repeated: {after:?}");
    let old = |runs: &[Value]| runs.iter().find(|r| r["id"] == first.as_str()).cloned();
    assert_eq!(old(&before), old(&after), "the first run is kept as it was");
}

/// `kill -9` gives the server no chance to stop its bundled simulator; the
/// simulator notices that its parent is gone (its standard input closes) and
/// exits too, so no orphan keeps a port and a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_no_simulator_behind() {
    let repo = GitRepo::new();
    repo.commit("first");
    let mut server = Server::start(
        repo.path(),
        &["--db", ":memory:", "--sim-args", "--no-crash"],
    );
    let runner = server
        .startup_line
        .split("bundled simulator at ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .map(|url| {
            url.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned()
        })
        .unwrap_or_else(|| panic!("no simulator address in {:?}", server.startup_line));
    let runner: std::net::SocketAddr = runner.parse().expect("a socket address");
    assert!(
        std::net::TcpStream::connect(runner).is_ok(),
        "the simulator listens"
    );

    server.proc.kill_hard();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(runner).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the simulator outlived its server by 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `RUST_LOG` unset, the server's log has a line per run, not the
/// bundled simulator's four lines per request; the simulator's errors (its
/// crash) still come through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_log_keeps_the_simulators_errors_and_drops_its_chatter() {
    let repo = GitRepo::new();
    let commits: BTreeSet<String> = (0..3).map(|i| repo.commit(&format!("c{i}"))).collect();
    let server = Server::start_with_default_log(
        repo.path(),
        &[
            "--db",
            ":memory:",
            "--initial",
            "all",
            "--max-attempts",
            "1",
            "--sim-args",
            "--lint-ms 0 --build-ms 0 --test-ms 0 --fail-rate 0 --crash-rate 1",
        ],
    );
    wait_for_terminal(&server, &commits, FINISH_WITHIN).await;
    // Each run's end is logged once it is stored, so it is in the log by now
    // or very soon after; poll for all three.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = server.proc.stderr_all();
        if log.matches("run finished").count() >= commits.len() || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        log.matches("run finished").count() >= commits.len(),
        "a line per run:\n{log}"
    );
    assert!(
        log.contains("Oh no! The tests caused a server crash!"),
        "the simulator's crash reaches the log:\n{log}"
    );
    for chatter in ["Received request", "step started", "step finished"] {
        assert!(!log.contains(chatter), "{chatter:?} is in the log:\n{log}");
    }
}
