//! Property tests of the scheduler's invariants (docs/architecture.md), each over at
//! least 256 random scenarios: random pipelines (DAGs, unlimited / exclusive /
//! limited classes, shared groups), random arrivals, durations, failures,
//! crashes, rejections, outages and cancels, all in paused tokio time.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use ci_engine::testing::sim::{SimRunnerConfig, StepBehaviour};
use ci_engine::{Commit, CommitId, EngineConfig, Pipeline, StepSpec};
use common::{Scenario, simulate};
use proptest::prelude::*;

/// A random valid pipeline of 1–5 steps: needs only on earlier steps (a DAG),
/// each step in its own class or in the shared group `g`.
fn pipeline() -> impl Strategy<Value = Pipeline> {
    (1usize..=5).prop_flat_map(|n| {
        (
            proptest::collection::vec(proptest::collection::vec(prop::bool::weighted(0.35), 5), n),
            proptest::collection::vec(0u8..4, n),
            proptest::collection::vec(prop::bool::weighted(0.25), n),
            0u8..4,
        )
            .prop_map(move |(needs, conc, grouped, group_conc)| {
                let steps = (0..n)
                    .map(|i| {
                        let mut s = if grouped[i] {
                            StepSpec::new(format!("s{i}"), common::concurrency(group_conc))
                                .group("g")
                        } else {
                            StepSpec::new(format!("s{i}"), common::concurrency(conc[i]))
                        };
                        for (j, &need) in needs[i].iter().enumerate().take(i) {
                            if need {
                                s = s.needs(format!("s{j}"));
                            }
                        }
                        s
                    })
                    .collect();
                Pipeline::new(steps).unwrap()
            })
    })
}

/// Batches of a commit chain: (gap before the batch in ms, batch size).
fn arrivals(max_commits: usize) -> impl Strategy<Value = Vec<(Duration, Vec<Commit>)>> {
    proptest::collection::vec((0u64..600, 1usize..=4), 1..=max_commits).prop_map(|batches| {
        let mut at = Duration::ZERO;
        let mut next = 0usize;
        batches
            .into_iter()
            .map(|(gap, size)| {
                at += Duration::from_millis(gap);
                let commits = (0..size)
                    .map(|_| {
                        let c = Commit::bare(format!("{next:08x}"));
                        next += 1;
                        c
                    })
                    .collect();
                (at, commits)
            })
            .collect()
    })
}

#[derive(Clone, Debug)]
struct Faults {
    crash_rate: f64,
    reject_rate: f64,
    timeout: bool,
    outages: Vec<(Duration, Duration)>,
}

fn faults() -> impl Strategy<Value = Faults> {
    (
        0.0f64..0.3,
        prop_oneof![3 => Just(0.0f64), 1 => 0.0f64..0.1],
        prop::bool::weighted(0.2),
        proptest::collection::vec((0u64..8_000, 100u64..6_000), 0..3),
    )
        .prop_map(|(crash_rate, reject_rate, timeout, outages)| Faults {
            crash_rate,
            reject_rate,
            timeout,
            outages: outages
                .into_iter()
                .map(|(a, l)| (Duration::from_millis(a), Duration::from_millis(l)))
                .collect(),
        })
}

fn no_faults() -> Faults {
    Faults {
        crash_rate: 0.0,
        reject_rate: 0.0,
        timeout: false,
        outages: Vec::new(),
    }
}

fn scenario(
    pipeline: Pipeline,
    batches: Vec<(Duration, Vec<Commit>)>,
    seed: u64,
    max_ms: u64,
    fail_rate: f64,
    faults: &Faults,
    engine: EngineConfig,
) -> Scenario {
    let behaviour = StepBehaviour {
        min_ms: 0,
        max_ms,
        fail_rate,
        crash_rate: faults.crash_rate,
        reject_rate: faults.reject_rate,
    };
    Scenario {
        pipeline,
        runner: SimRunnerConfig {
            seed,
            steps: HashMap::new(),
            default_step: behaviour,
            downtime_ms: (50, 2_000),
        },
        engine: EngineConfig {
            step_timeout: if faults.timeout {
                Duration::from_millis(max_ms / 2 + 1)
            } else {
                engine.step_timeout
            },
            ..engine
        },
        batches,
        outages: faults.outages.clone(),
        cancels: Vec::new(),
        retries: Vec::new(),
    }
}

/// `s` with cancels of its commits: each pick is (offset in ms, index of the
/// commit, modulo their number).
fn with_cancels(mut s: Scenario, picks: Vec<(u64, usize)>) -> Scenario {
    s.cancels = timed_commits(&s, picks);
    s
}

/// `s` with retries of its commits, picked as in [`with_cancels`].
fn with_retries(mut s: Scenario, picks: Vec<(u64, usize)>) -> Scenario {
    s.retries = timed_commits(&s, picks);
    s
}

/// The commits of `s` that `picks` name, at their offsets: each pick is
/// (offset in ms, index of the commit, modulo their number).
fn timed_commits(s: &Scenario, picks: Vec<(u64, usize)>) -> Vec<(Duration, CommitId)> {
    let ids: Vec<CommitId> = s
        .batches
        .iter()
        .flat_map(|(_, b)| b.iter().map(|c| c.id.clone()))
        .collect();
    picks
        .into_iter()
        .map(|(at, i)| (Duration::from_millis(at), ids[i % ids.len()].clone()))
        .collect()
}

fn engine_config() -> impl Strategy<Value = EngineConfig> {
    (
        1u32..=4,
        10u64..500,
        1usize..=8,
        prop::bool::ANY,
        prop::bool::weighted(0.3),
        prop_oneof![1usize..=3, Just(512)],
    )
        .prop_map(
            |(max_attempts, backoff, cap, capped, short_unreachable, window)| EngineConfig {
                max_attempts,
                // A window of one to three runs: most scenarios keep runs
                // waiting in the store, and every property covers that.
                active_runs: window,
                retry_backoff: Duration::from_millis(backoff),
                retry_backoff_max: Duration::from_millis(backoff * 8),
                max_in_flight: if capped { cap } else { 1_000 },
                unreachable_limit: if short_unreachable {
                    Duration::from_secs(2)
                } else {
                    Duration::from_secs(600)
                },
                probe_interval: Duration::from_millis(20),
                probe_interval_max: Duration::from_millis(500),
                ..EngineConfig::default()
            },
        )
}

/// Scenarios with every kind of fault.
fn faulty() -> impl Strategy<Value = Scenario> {
    (
        pipeline(),
        arrivals(12),
        any::<u64>(),
        0u64..300,
        0.0f64..0.6,
        faults(),
        engine_config(),
    )
        .prop_map(|(p, a, seed, max_ms, fail, f, e)| scenario(p, a, seed, max_ms, fail, &f, e))
}

/// Scenarios without crashes, rejections, timeouts, outages or a binding cap,
/// where every step gets exactly one attempt: for the timing invariants.
fn clean() -> impl Strategy<Value = Scenario> {
    (
        pipeline(),
        arrivals(12),
        any::<u64>(),
        0u64..300,
        0.0f64..0.6,
    )
        .prop_map(|(p, a, seed, max_ms, fail)| {
            let engine = EngineConfig {
                max_in_flight: usize::MAX,
                ..EngineConfig::default()
            };
            scenario(p, a, seed, max_ms, fail, &no_faults(), engine)
        })
}

proptest! {
    #![proptest_config(common::cases(256))]

    /// Invariant 1: never more in flight per class than its limit, nor overall
    /// than the global cap, whatever the faults.
    #[test]
    fn class_limits_are_never_exceeded(s in faulty()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_class_limits(), Ok(()));
    }

    /// Invariant 2: no step starts before every step it needs has succeeded.
    #[test]
    fn needs_succeed_before_a_step_starts(s in faulty()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_needs_before_start(), Ok(()));
    }

    /// Invariant 3: every commit ends in exactly one terminal run; no step is
    /// in flight twice; every attempt recorded matches a request the runner
    /// saw (so nothing is lost at a crash and no attempt is spent while the
    /// runner is unreachable).
    #[test]
    fn every_commit_ends_exactly_once(s in faulty()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_one_terminal_run_each(), Ok(()));
    }

    /// Invariant 4: status and failed_steps agree with the steps; a lost
    /// attempt never turns into a step failure; attempt limits hold.
    #[test]
    fn status_agrees_with_step_results(s in faulty()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_status_consistency(), Ok(()));
    }

    /// Invariant 5: work-conserving, under every kind of fault — while the
    /// runner is up and the cap has room, no ready step waits for a free
    /// permit of its class. A step in backoff yields its place.
    #[test]
    fn free_permits_never_idle_while_steps_wait(s in faulty()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_always(), Ok(()));
        prop_assert_eq!(o.check_work_conserving(), Ok(()));
    }

    /// Invariant 6: oldest commit first among ready steps of an exclusive
    /// class, under every kind of fault (a retry that is ready again keeps
    /// its place; one in backoff is not ready).
    #[test]
    fn exclusive_classes_serve_the_oldest_commit_first(s in faulty()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_oldest_first(), Ok(()));
    }

    /// Invariants 5 and 6 on clean scenarios too (no faults, no binding cap),
    /// where every step gets exactly one attempt.
    #[test]
    fn clean_runs_are_work_conserving_and_oldest_first(s in clean()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_always(), Ok(()));
        prop_assert_eq!(o.check_work_conserving(), Ok(()));
        prop_assert_eq!(o.check_oldest_first(), Ok(()));
    }

    /// Events tell the truth: checked against the store at the end of random
    /// scenarios with every kind of fault and random cancels.
    #[test]
    fn events_agree_with_the_store(
        s in faulty(),
        picks in proptest::collection::vec((0u64..5_000, 0usize..48), 0..3),
    ) {
        let o = simulate(&with_cancels(s, picks));
        prop_assert_eq!(o.check_always(), Ok(()));
        prop_assert_eq!(o.check_events_match_store(), Ok(()));
    }

    /// Cancelling runs at random moments ends exactly those runs `cancelled`
    /// (unless they had finished) and leaves every other invariant intact.
    #[test]
    fn cancels_end_only_their_runs(
        s in faulty(),
        picks in proptest::collection::vec((0u64..5_000, 0usize..48), 1..4),
    ) {
        let o = simulate(&with_cancels(s, picks));
        prop_assert_eq!(o.check_always(), Ok(()));
    }

    /// Retries and cancels at random moments, under every kind of fault:
    /// every invariant holds over all rounds (limits, needs, one run per
    /// commit ending terminal, never a step in flight twice, statuses, attempt
    /// budgets per round), a step that succeeded never runs again, and each
    /// retry that took effect is recorded.
    #[test]
    fn retries_keep_every_invariant(
        s in faulty(),
        retries in proptest::collection::vec((0u64..8_000, 0usize..48), 1..5),
        cancels in proptest::collection::vec((0u64..8_000, 0usize..48, 0u64..300), 0..3),
    ) {
        // Each cancelled run is also retried soon after its cancel, while
        // requests the cancel gave up on may still be open.
        let mut all_retries = retries;
        all_retries.extend(cancels.iter().map(|&(at, i, after)| (at + after, i)));
        let cancels = cancels.into_iter().map(|(at, i, _)| (at, i)).collect();
        let o = simulate(&with_retries(with_cancels(s, cancels), all_retries));
        prop_assert_eq!(o.check_always(), Ok(()));
    }

    /// The same seed gives the same history: statuses and attempt outcomes.
    #[test]
    fn a_seed_determines_the_outcome(s in faulty()) {
        let summary = |o: &common::Outcome| -> Vec<(CommitId, String, Vec<String>)> {
            o.runs.iter().map(|r| (
                r.id().clone(),
                r.status.to_string(),
                r.steps.iter().flat_map(|st| st.attempts.iter().map(|a| format!("{}:{}", st.name, a.outcome))).collect(),
            )).collect()
        };
        let a = simulate(&s);
        let b = simulate(&s);
        prop_assert_eq!(summary(&a), summary(&b));
    }
}

proptest! {
    #![proptest_config(common::cases(256))]

    /// Stopping the engine at random moments (in-flight steps abandoned when
    /// the grace period is short) and starting it again on the same store loses
    /// nothing and repeats nothing: every invariant still holds.
    #[test]
    fn restarts_lose_nothing_and_repeat_nothing(
        s in faulty(),
        stops in proptest::collection::vec(0u64..15_000, 1..4),
        grace in 0u64..400,
    ) {
        let stops: Vec<Duration> = stops.into_iter().map(Duration::from_millis).collect();
        let o = common::simulate_with_restarts(&s, &stops, Duration::from_millis(grace));
        prop_assert_eq!(o.check_always(), Ok(()));
    }

    /// Without infrastructure faults, restarts alone never turn a run into
    /// `error`, and interrupted attempts are recorded and not counted.
    #[test]
    fn a_restart_alone_never_makes_an_error(
        s in clean(),
        stops in proptest::collection::vec(0u64..15_000, 1..4),
    ) {
        let stops: Vec<Duration> = stops.into_iter().map(Duration::from_millis).collect();
        let o = common::simulate_with_restarts(&s, &stops, Duration::ZERO);
        prop_assert_eq!(o.check_always(), Ok(()));
        for r in &o.runs {
            prop_assert!(r.status != ci_engine::RunStatus::Error, "run {} ended error: {:?}", r.id(), r.steps);
        }
    }
}

/// A burst of 300 commits against a window of 4, with an instant unlimited
/// `lint`, a quick `build` and a slower `test`: memory never holds more than 8
/// runs under way (an unlimited first class used to take the whole burst
/// in), every run ends, and the window still keeps every permit busy (the
/// work-conserving check, memory ceiling included).
#[test]
fn a_burst_costs_memory_for_the_window_not_for_the_burst() {
    let commits: Vec<Commit> = (0..300u32)
        .map(|i| Commit::bare(format!("{i:08x}")))
        .collect();
    let scenario = Scenario {
        pipeline: Pipeline::standard(),
        runner: SimRunnerConfig {
            seed: 7,
            steps: HashMap::from([
                ("lint".to_owned(), StepBehaviour::green(0, 0)),
                ("build".to_owned(), StepBehaviour::green(1, 3)),
                ("test".to_owned(), StepBehaviour::green(5, 9)),
            ]),
            default_step: StepBehaviour::green(0, 0),
            downtime_ms: (0, 0),
        },
        engine: EngineConfig {
            active_runs: 4,
            max_in_flight: 1_000,
            ..EngineConfig::default()
        },
        batches: vec![(Duration::ZERO, commits)],
        outages: Vec::new(),
        cancels: Vec::new(),
        retries: Vec::new(),
    };
    let o = simulate(&scenario);
    assert_eq!(o.runs.len(), 300);
    assert!(
        o.runs
            .iter()
            .all(|r| r.status == ci_engine::RunStatus::Success)
    );
    assert_eq!(o.check_always(), Ok(()));
    assert_eq!(o.check_work_conserving(), Ok(()));
    // The ceiling was reached: the check above was not vacuous.
    let mut under_way = std::collections::HashSet::new();
    let mut most = 0;
    for (_, e) in &o.events {
        match e {
            ci_engine::EngineEvent::StepStarted { commit, .. } => {
                under_way.insert(commit.clone());
                most = most.max(under_way.len());
            }
            ci_engine::EngineEvent::RunFinished { commit, .. } => {
                under_way.remove(commit);
            }
            _ => {}
        }
    }
    assert_eq!(most, 8, "runs under way at most");
}
