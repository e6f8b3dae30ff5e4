//! A deterministic simulation of 10,000 commits against a runner that behaves
//! like the original (lint 0–99 ms; build and test 0–999 ms failing half the
//! time; a test crashes the runner one time in five, losing every step in
//! flight, and the runner comes back after 0.5–3 s), in paused tokio time.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use ci_engine::testing::sim::{SimRunnerConfig, chain_commits};
use ci_engine::{AttemptOutcome, EngineConfig, Pipeline, RunStatus, StepStatus};
use common::{Scenario, simulate};

#[test]
fn ten_thousand_commits_against_the_original_runner() {
    const N: usize = 10_000;
    // Commits arrive in bursts: 1–3 commits every 0–3 s, like a busy team.
    let commits = chain_commits(N);
    let mut batches = Vec::new();
    let mut at = Duration::ZERO;
    let mut i = 0;
    let mut k: u64 = 0;
    while i < N {
        k += 1;
        let size = 1 + usize::try_from(k % 3).unwrap();
        let end = (i + size).min(N);
        batches.push((at, commits[i..end].to_vec()));
        i = end;
        at += Duration::from_millis((k * 7919) % 3000);
    }
    let scenario = Scenario {
        pipeline: Pipeline::standard(),
        runner: SimRunnerConfig::original(42),
        engine: EngineConfig::default(),
        batches,
        outages: Vec::new(),
        cancels: Vec::new(),
        retries: Vec::new(),
    };
    let o = simulate(&scenario);

    assert_eq!(o.runs.len(), N);
    assert_eq!(o.check_always(), Ok(()));
    assert!(
        o.crashes > 500,
        "the runner crashed only {} times",
        o.crashes
    );

    let count = |s: RunStatus| o.runs.iter().filter(|r| r.status == s).count();
    let (ok, failed, errored) = (
        count(RunStatus::Success),
        count(RunStatus::Failure),
        count(RunStatus::Error),
    );
    assert_eq!(
        ok + failed + errored,
        N,
        "only success, failure and error are possible here"
    );
    // Build and test each pass with p = 1/2, so about a quarter succeed.
    assert!((2_000..3_000).contains(&ok), "{ok} successes");
    // With five attempts, giving up on a step needs five losses in a row: rare.
    assert!(errored < N / 100, "{errored} runs ended in error");

    // A crash is never recorded as a plain step failure: every failed step's
    // last attempt is a reported failure, and lost attempts exist.
    let lost = o
        .runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .flat_map(|s| s.attempts.iter())
        .filter(|a| a.outcome == AttemptOutcome::Lost)
        .count();
    assert!(
        lost as u64 >= o.crashes,
        "{lost} lost attempts for {} crashes",
        o.crashes
    );
    for r in &o.runs {
        for s in &r.steps {
            if s.status == StepStatus::Failure {
                assert_eq!(
                    s.attempts.last().map(|a| a.outcome),
                    Some(AttemptOutcome::Failure)
                );
            }
        }
    }
}
