//! The per-step locks: builds serialize, tests serialize, a build and a test
//! overlap, lints run in parallel; a waiting request's duration includes its wait.

use std::net::SocketAddr;

use serde_json::Value;

use crate::common::{Sim, post};

const BUILD_STARTED: &str = r#"step started step="build""#;
const TEST_STARTED: &str = r#"step started step="test""#;

async fn run(addr: SocketAddr, body: String) -> Value {
    let reply = post(addr, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn logs_of(answer: &Value) -> &str {
    answer["build_logs"].as_str().expect("logs string")
}

fn duration_of(answer: &Value) -> u64 {
    answer["duration_ms"].as_u64().expect("integer duration")
}

/// Index of the n-th (0-based) stderr line containing `needle`.
fn nth_line(logs: &[String], needle: &str, n: usize) -> usize {
    logs.iter()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no line #{n} with {needle:?} in {logs:#?}"))
}

/// Starts a long step, waits until it holds its lock, then runs a short one of
/// `second_step`; returns (long answer, short answer, whether the long one was
/// still running when the short one answered).
async fn long_then_short(
    sim: &mut Sim,
    first_step: &str,
    second_step: &str,
) -> (Value, Value, bool) {
    let long = tokio::spawn(run(
        sim.addr,
        format!(r#"{{"step_name":"{first_step}","simulate_build_time":1500}}"#),
    ));
    sim.wait_for_log(&format!(r#"step started step="{first_step}""#), 1)
        .await;
    let short = run(
        sim.addr,
        format!(r#"{{"step_name":"{second_step}","simulate_build_time":30}}"#),
    )
    .await;
    let long_still_running = !long.is_finished();
    let long = long.await.expect("long request task");
    (long, short, long_still_running)
}

#[tokio::test]
async fn a_second_build_waits_for_the_first_and_counts_the_wait() {
    let mut sim = Sim::start(&["--no-crash"]).await;
    let (first, second, _) = long_then_short(&mut sim, "build", "build").await;
    assert!(!logs_of(&first).contains("Waiting for lock..."));
    assert!(
        logs_of(&second)
            .contains("\nBuilding...\nWaiting for lock...\nSimulating build for step 'build'...\n"),
        "{}",
        logs_of(&second)
    );
    // It was sent while the first held the lock for 1500 ms: most of that wait
    // is part of its own 30 ms step's duration.
    assert!(duration_of(&second) >= 30 + 700, "{}", duration_of(&second));
    let logs = sim.logs();
    assert!(
        nth_line(&logs, BUILD_STARTED, 1) > nth_line(&logs, r#"step finished step="build""#, 0)
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("Building lock is not available!"))
    );
}

#[tokio::test]
async fn a_second_test_waits_for_the_first() {
    let mut sim = Sim::start(&["--no-crash"]).await;
    let (first, second, _) = long_then_short(&mut sim, "test", "test").await;
    assert!(!logs_of(&first).contains("Waiting for lock..."));
    assert!(logs_of(&second).contains("\nTesting...\nWaiting for lock...\n"));
    assert!(duration_of(&second) >= 30 + 700, "{}", duration_of(&second));
    let logs = sim.logs();
    assert!(nth_line(&logs, TEST_STARTED, 1) > nth_line(&logs, r#"step finished step="test""#, 0));
}

#[tokio::test]
async fn a_build_and_a_test_run_at_the_same_time() {
    let mut sim = Sim::start(&["--no-crash"]).await;
    let (test, build, test_still_running) = long_then_short(&mut sim, "test", "build").await;
    assert!(
        test_still_running,
        "the build waited for the test to finish"
    );
    assert!(!logs_of(&test).contains("Waiting"));
    assert!(!logs_of(&build).contains("Waiting"));
    assert!(duration_of(&build) < 1500, "{}", duration_of(&build));
}

#[tokio::test]
async fn lints_run_in_parallel() {
    let sim = Sim::start(&["--lint-ms", "1000"]).await;
    let lints: Vec<_> = (0..3)
        .map(|_| tokio::spawn(run(sim.addr, r#"{"step_name":"lint"}"#.to_owned())))
        .collect();
    for lint in lints {
        let answer = lint.await.expect("lint task");
        assert!(!logs_of(&answer).contains("Waiting"));
        assert!(duration_of(&answer) >= 1000);
    }
    // All three started before any finished.
    let logs = sim.logs();
    assert!(
        nth_line(&logs, r#"step started step="lint""#, 2)
            < nth_line(&logs, r#"step finished step="lint""#, 0),
        "{logs:#?}"
    );
}
