//! The step timeout, black box: the real `ci-server` binary with its bundled
//! simulator, whose builds and tests take 0–999 ms against a step timeout of
//! 500 ms, so that about half of them time out.
//!
//! A timed-out attempt is recorded `lost` and retried, but its request stays
//! open (holding its permit) until the simulator answers it. So the simulator
//! never gets a second build (or test) while one is still running, and never
//! has to make one wait for its lock: no answered attempt's log may say
//! `Waiting for lock`. A scheduler that freed the permit at the timeout sends
//! the retry at once, while the abandoned build still holds the simulator's
//! lock, and fails this test.

mod e2e_support;

use std::collections::BTreeSet;
use std::time::Duration;

use e2e_support::{GitRepo, Server, get, get_json, wait_for_terminal};

/// Bound on waiting for every run to end.
const FINISH_WITHIN: Duration = Duration::from_secs(120);

/// What the simulator writes when a build or test has to wait for another one.
const LOCK_WAIT: &str = "Waiting for lock";

/// One attempt of one step, as read back through the API.
struct AttemptSeen {
    commit: String,
    step: String,
    number: u64,
    outcome: String,
    reason: String,
    logs: String,
}

/// Every attempt of every step of the run of `commit`, with its logs.
async fn attempts_of(server: &Server, commit: &str) -> Vec<AttemptSeen> {
    let (code, run) = get_json(&server.url(&format!("/run/{commit}"))).await;
    assert_eq!(code, 200, "{run}");
    let mut seen = Vec::new();
    for step in run["steps"].as_array().expect("steps") {
        let name = step["name"].as_str().expect("a step name");
        for attempt in step["attempts"].as_array().expect("attempts") {
            let number = attempt["number"].as_u64().expect("an attempt number");
            let (code, logs) =
                get(&server.url(&format!("/run/{commit}/steps/{name}/log?attempt={number}"))).await;
            assert_eq!(code, 200, "log of {commit} {name} attempt {number}: {logs}");
            seen.push(AttemptSeen {
                commit: commit.to_owned(),
                step: name.to_owned(),
                number,
                outcome: attempt["outcome"].as_str().expect("an outcome").to_owned(),
                reason: attempt["reason"].as_str().unwrap_or_default().to_owned(),
                logs,
            });
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_steps_keep_their_place_so_the_runner_never_makes_a_step_wait() {
    let repo = GitRepo::new();
    let root = repo.commit("root");
    let more = repo.chain(&root, 5, "commit");
    repo.update_branch("main", more.last().expect("5 commits"));
    let server = Server::start(
        repo.path(),
        &[
            "--db",
            ":memory:",
            "--initial",
            "all",
            "--poll-interval",
            "200ms",
            "--step-timeout",
            "500ms",
            "--retry-backoff",
            "20ms",
            "--max-attempts",
            "30",
            // Builds and tests drawn from 0–999 ms (the simulator's default),
            // never failing, never crashing, the same draws on every run.
            "--sim-args",
            "--no-crash --fail-rate 0 --seed 11",
        ],
    );
    let expected = repo.all_commits();
    assert_eq!(expected.len(), 6);
    let runs = wait_for_terminal(&server, &expected, FINISH_WITHIN).await;

    let mut attempts = Vec::new();
    for run in &runs {
        let id = run["id"].as_str().expect("id");
        assert_eq!(
            run["status"],
            "success",
            "without failures or crashes every run succeeds: {run}\nserver log:\n{}",
            server.proc.stderr_tail()
        );
        attempts.extend(attempts_of(&server, id).await);
    }
    let ids: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, expected, "one run per commit");

    // The simulator never had to make a build or test wait for another.
    let answered: Vec<&AttemptSeen> = attempts
        .iter()
        .filter(|a| matches!(a.outcome.as_str(), "success" | "failure"))
        .collect();
    for a in &answered {
        assert!(
            !a.logs.contains(LOCK_WAIT),
            "attempt {} of {} on {} waited for the runner's lock, so the runner was \
             running another {} at the same time:\n{}",
            a.number,
            a.step,
            a.commit,
            a.step,
            a.logs
        );
    }

    // Not vacuous: the step timeout did fire, and answered builds have logs.
    let timed_out = attempts
        .iter()
        .filter(|a| a.outcome == "lost" && a.reason.contains("step timeout"))
        .count();
    assert!(
        timed_out > 0,
        "no attempt was lost to the step timeout, so nothing was tested; outcomes: {:?}",
        attempts
            .iter()
            .map(|a| (a.step.as_str(), a.outcome.as_str(), a.reason.as_str()))
            .collect::<Vec<_>>()
    );
    let lost_otherwise: Vec<&AttemptSeen> = attempts
        .iter()
        .filter(|a| a.outcome == "lost" && !a.reason.contains("step timeout"))
        .collect();
    assert!(
        lost_otherwise.is_empty(),
        "attempts lost for another reason than the timeout (nothing crashes here): {:?}",
        lost_otherwise
            .iter()
            .map(|a| (&a.commit, &a.step, a.number, &a.reason))
            .collect::<Vec<_>>()
    );
    assert!(
        answered
            .iter()
            .any(|a| a.step == "build" && a.logs.contains("Building...")),
        "no answered build attempt has logs"
    );
    let builds_answered = answered.iter().filter(|a| a.step == "build").count();
    let tests_answered = answered.iter().filter(|a| a.step == "test").count();
    assert_eq!(
        (builds_answered, tests_answered),
        (expected.len(), expected.len()),
        "each build and test is answered once"
    );
}
