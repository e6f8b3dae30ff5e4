//! Scenario tests of the engine under faults, in paused time, with small
//! hand-written runners: permits held by requests the engine gave up on, a
//! runner that holds one too long, retries after a crash, cancels during the
//! shutdown grace, and configurations the engine refuses.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ci_engine::engine::CancelOutcome;
use ci_engine::testing::sim::ScriptedSource;
use ci_engine::{
    AttemptOutcome, Commit, CommitId, Engine, EngineConfig, EngineEvent, MemoryStore, Pipeline,
    Probe, Run, RunPage, RunQuery, RunStatus, RunStore, RunnerError, StepRunner, StoreError,
};
use common::scripted::{Action, Scripted, ok};
use tokio::time::Instant;

fn commits(ids: &[&str]) -> Box<ScriptedSource> {
    Box::new(ScriptedSource::new(vec![(
        Duration::ZERO,
        ids.iter().map(|&id| Commit::bare(id)).collect(),
    )]))
}

/// A runner whose builds take `build` and whose other steps answer at once.
fn slow_builds(build: Duration) -> Arc<Scripted> {
    Scripted::new(
        Box::new(move |r, _| match r.step.as_str() {
            "build" => Action::Answer(build, ok()),
            _ => Action::Answer(Duration::ZERO, ok()),
        }),
        Box::new(|| Probe::Up),
    )
}

fn engine(runner: Arc<dyn StepRunner>, store: Arc<MemoryStore>, config: EngineConfig) -> Engine {
    Engine::new(Pipeline::standard(), runner, store, config).unwrap()
}

fn events_of(engine: &Engine) -> tokio::task::JoinHandle<Vec<(Instant, EngineEvent)>> {
    let mut rx = engine.handle().subscribe();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(e) = rx.recv().await {
            seen.push((Instant::now(), e));
        }
        seen
    })
}

#[tokio::test(start_paused = true)]
async fn an_attempt_is_recorded_before_its_request_reaches_the_runner() {
    let store = Arc::new(MemoryStore::new());
    let unrecorded: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (seen, watched) = (Arc::clone(&unrecorded), Arc::clone(&store));
    // Each request looks in the store, the moment it arrives, for its attempt.
    let runner = Scripted::new(
        Box::new(move |r, _| {
            let recorded = watched.all_runs().iter().any(|run| {
                run.id() == &r.commit
                    && run.step(&r.step).is_some_and(|s| {
                        s.attempts
                            .iter()
                            .any(|a| a.number == r.attempt && a.outcome == AttemptOutcome::Running)
                    })
            });
            if !recorded {
                seen.lock()
                    .unwrap()
                    .push(format!("{}/{}#{}", r.commit, r.step, r.attempt));
            }
            Action::Answer(Duration::from_millis(1), ok())
        }),
        Box::new(|| Probe::Up),
    );
    let ids: Vec<String> = (0..20).map(|i| format!("{i:04x}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Writes take a millisecond, so a request sent before its write is done
    // would arrive while the store still lacks its attempt.
    let slow: Arc<dyn RunStore> = Arc::new(SlowWrites(store.clone()));
    Engine::new(
        Pipeline::standard(),
        runner.clone(),
        slow,
        EngineConfig::default(),
    )
    .unwrap()
    .run(commits(&ids), std::future::pending())
    .await
    .unwrap();
    assert_eq!(starts_of(&runner), 60, "every step of every commit ran");
    assert_eq!(*unrecorded.lock().unwrap(), Vec::<String>::new());
}

/// A store whose writes take a millisecond (of tokio time) before they land.
struct SlowWrites(Arc<MemoryStore>);

#[async_trait::async_trait]
impl RunStore for SlowWrites {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.insert_run(run).await
    }
    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.update_run(run).await
    }
    async fn update_runs(&self, runs: Vec<Run>) -> Result<(), StoreError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.update_runs(runs).await
    }
    async fn get_run(&self, id_or_prefix: &str) -> Result<Run, StoreError> {
        self.0.get_run(id_or_prefix).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        self.0.list_runs(query).await
    }
    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.0.unfinished_runs().await
    }
    async fn unfinished_after(&self, from: u64, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.0.unfinished_after(from, limit).await
    }
    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        self.0.has_run(id).await
    }
    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        self.0.max_seq().await
    }
    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.0.load_state(key).await
    }
    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.0.save_state(key, value).await
    }
}

/// How many requests reached `runner`.
fn starts_of(runner: &Scripted) -> usize {
    runner
        .log()
        .iter()
        .filter(|(_, _, k)| *k == "start")
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_build_keeps_the_permit_until_the_runner_answers_it() {
    // Builds take 10 s; the step timeout is 4 s. Two commits.
    let runner = slow_builds(Duration::from_secs(10));
    let store = Arc::new(MemoryStore::new());
    let config = EngineConfig {
        step_timeout: Duration::from_secs(4),
        max_attempts: 2,
        ..EngineConfig::default()
    };
    engine(runner.clone(), store.clone(), config)
        .run(commits(&["aaaa", "bbbb"]), std::future::pending())
        .await
        .unwrap();
    // Never two builds open on the runner at once.
    let mut open = 0;
    for (_, name, what) in runner.log() {
        if name.contains("/build#") {
            open += if what == "start" { 1 } else { -1 };
            assert!(open <= 1, "two builds open at once: {:?}", runner.log());
        }
    }
    let a = store.get_run("aaaa").await.unwrap();
    let build = a.step("build").unwrap();
    assert_eq!(build.attempts.len(), 2);
    assert!(
        build
            .attempts
            .iter()
            .all(|a| a.outcome == AttemptOutcome::Lost)
    );
    assert!(
        build.attempts[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("step timeout")
    );
    assert_eq!(a.status, RunStatus::Error);
}

#[tokio::test(start_paused = true)]
async fn a_runner_holding_a_request_past_the_abandon_limit_is_probed_and_then_freed() {
    // The first build hangs for good; the runner answers probes.
    let runner = Scripted::new(
        Box::new(|r, _| {
            if r.step == "build" && r.attempt == 1 {
                Action::Hang
            } else {
                Action::Answer(Duration::from_millis(100), ok())
            }
        }),
        Box::new(|| Probe::Up),
    );
    let store = Arc::new(MemoryStore::new());
    let config = EngineConfig {
        step_timeout: Duration::from_secs(60),
        abandon_limit: Duration::from_secs(120),
        ..EngineConfig::default()
    };
    let engine = engine(runner.clone(), store.clone(), config);
    let events = events_of(&engine);
    let t0 = Instant::now();
    engine
        .run(commits(&["aaaa"]), std::future::pending())
        .await
        .unwrap();
    let events = events.await.unwrap();
    let down = events
        .iter()
        .find_map(|(t, e)| match e {
            EngineEvent::RunnerDown { reason, .. } => Some((*t, reason.clone())),
            _ => None,
        })
        .expect("the runner is taken to be down");
    assert_eq!(down.0 - t0, Duration::from_secs(180));
    assert!(
        down.1.contains("still holds a request of step build"),
        "{}",
        down.1
    );
    let up = events
        .iter()
        .find(|(_, e)| matches!(e, EngineEvent::RunnerUp { .. }))
        .expect("the probe ends the outage");
    let retry = events
        .iter()
        .find(|(_, e)| matches!(e, EngineEvent::StepStarted { step, attempt: 2, .. } if step == "build"))
        .expect("the build is retried");
    assert!(retry.0 >= up.0 && up.0 >= down.0);
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    // The hung request was dropped (its end logged) when the probe answered.
    let log = runner.log();
    assert!(
        log.iter()
            .any(|(t, n, w)| n.ends_with("/build#1") && *w == "end" && *t == up.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_lost_to_a_crash_is_retried_as_soon_as_the_runner_is_back() {
    // The first build dies with its connection at 200 ms; the runner is then
    // down until 5 s.
    let crash = Instant::now() + Duration::from_millis(200);
    let back = Instant::now() + Duration::from_secs(5);
    let runner = Scripted::new(
        Box::new(move |r, _| {
            if r.step == "build" && r.attempt == 1 {
                Action::Answer(
                    Duration::from_millis(200),
                    Err(RunnerError::Lost("connection closed".into())),
                )
            } else if (crash..back).contains(&Instant::now()) {
                Action::Answer(
                    Duration::ZERO,
                    Err(RunnerError::Unreachable("refused".into())),
                )
            } else {
                Action::Answer(Duration::from_millis(100), ok())
            }
        }),
        Box::new(move || {
            if Instant::now() < back {
                Probe::Down("refused".into())
            } else {
                Probe::Up
            }
        }),
    );
    let store = Arc::new(MemoryStore::new());
    let config = EngineConfig {
        // A backoff this long would show.
        retry_backoff: Duration::from_secs(60),
        retry_backoff_max: Duration::from_secs(60),
        ..EngineConfig::default()
    };
    let engine = engine(runner.clone(), store.clone(), config.clone());
    let events = events_of(&engine);
    let t0 = Instant::now();
    engine
        .run(commits(&["aaaa"]), std::future::pending())
        .await
        .unwrap();
    let events = events.await.unwrap();
    let lost = events.iter().find_map(|(_, e)| match e {
        EngineEvent::StepFinished {
            step,
            attempt: 1,
            retry_in_ms,
            ..
        } if step == "build" => Some(*retry_in_ms),
        _ => None,
    });
    assert_eq!(lost, Some(Some(0)));
    let (answered_again, _) = events
        .iter()
        .find(|(_, e)| matches!(e, EngineEvent::RunnerUp { .. }))
        .unwrap();
    let since_back = *answered_again - back;
    // Probes wait at most a twentieth of the outage (or the minimum interval).
    assert!(
        since_back <= config.probe_delay(Duration::from_secs(5)),
        "noticed {since_back:?} after the runner was back"
    );
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    let build = run.step("build").unwrap();
    // The withdrawn attempt is not stored, and its number is not reused.
    let numbers: Vec<u32> = build.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers.first(), Some(&1));
    assert!(numbers.len() == 2 && numbers[1] > 2, "{numbers:?}");
    assert!(t0.elapsed() < Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn a_runner_that_answers_but_keeps_losing_a_step_gets_backoff() {
    // Builds always lose their connection, the runner never goes down.
    let runner = Scripted::new(
        Box::new(|r, _| {
            if r.step == "build" {
                Action::Answer(
                    Duration::from_millis(10),
                    Err(RunnerError::Lost("reset".into())),
                )
            } else {
                Action::Answer(Duration::ZERO, ok())
            }
        }),
        Box::new(|| Probe::Up),
    );
    let store = Arc::new(MemoryStore::new());
    let config = EngineConfig {
        max_attempts: 3,
        ..EngineConfig::default()
    };
    let engine = engine(runner, store.clone(), config.clone());
    let events = events_of(&engine);
    engine
        .run(commits(&["aaaa"]), std::future::pending())
        .await
        .unwrap();
    let waits: Vec<Option<u64>> = events
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e {
            EngineEvent::StepFinished {
                step, retry_in_ms, ..
            } if step == "build" => Some(retry_in_ms),
            _ => None,
        })
        .collect();
    // At once after the first loss; a jittered backoff after the second; then
    // the attempts are spent.
    assert_eq!(waits.len(), 3);
    assert_eq!(waits[0], Some(0));
    let second = waits[1].unwrap();
    assert!((1_000..=2_000).contains(&second), "{second}");
    assert_eq!(waits[2], None);
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Error);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_keeps_the_permit_until_the_runner_answers() {
    let runner = slow_builds(Duration::from_secs(10));
    let store = Arc::new(MemoryStore::new());
    let engine = engine(runner.clone(), store.clone(), EngineConfig::default());
    let handle = engine.handle();
    let events = events_of(&engine);
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.cancel(&CommitId::new("aaaa")).await
    });
    let t0 = Instant::now();
    engine
        .run(commits(&["aaaa", "bbbb"]), std::future::pending())
        .await
        .unwrap();
    assert_eq!(cancel.await.unwrap().unwrap(), CancelOutcome::Cancelled);
    let events = events.await.unwrap();
    let b_build = events
        .iter()
        .find(|(_, e)| matches!(e, EngineEvent::StepStarted { commit, step, .. } if commit.as_str() == "bbbb" && step == "build"))
        .unwrap();
    assert_eq!(b_build.0 - t0, Duration::from_secs(10));
    let cancelled = events.iter().find(|(_, e)| {
        matches!(e, EngineEvent::StepFinished { commit, step, outcome: AttemptOutcome::Cancelled, .. } if commit.as_str() == "aaaa" && step == "build")
    });
    assert!(
        cancelled.is_some(),
        "the cancelled attempt has its StepFinished"
    );
    let a = store.get_run("aaaa").await.unwrap();
    assert_eq!(a.status, RunStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_the_shutdown_grace_is_answered() {
    let runner = slow_builds(Duration::from_secs(20));
    let store = Arc::new(MemoryStore::new());
    let engine = engine(runner, store.clone(), EngineConfig::default());
    let handle = engine.handle();
    let shutdown = tokio::time::sleep(Duration::from_secs(1));
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at = Instant::now();
        (handle.cancel(&CommitId::new("aaaa")).await, at)
    });
    let t0 = Instant::now();
    engine.run(commits(&["aaaa"]), shutdown).await.unwrap();
    let (answer, asked) = cancel.await.unwrap();
    assert_eq!(answer.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(asked - t0, Duration::from_secs(2));
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn steps_still_running_after_the_grace_are_recorded_interrupted_at_shutdown() {
    let runner = Scripted::new(
        Box::new(|r, _| match r.step.as_str() {
            "build" => Action::Hang,
            _ => Action::Answer(Duration::ZERO, ok()),
        }),
        Box::new(|| Probe::Up),
    );
    let store = Arc::new(MemoryStore::new());
    let config = EngineConfig {
        shutdown_grace: Duration::from_secs(3),
        ..EngineConfig::default()
    };
    let engine = engine(runner, store.clone(), config);
    let events = events_of(&engine);
    engine
        .run(
            commits(&["aaaa"]),
            tokio::time::sleep(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let run = store.get_run("aaaa").await.unwrap();
    let build = run.step("build").unwrap();
    assert_eq!(build.attempts[0].outcome, AttemptOutcome::Interrupted);
    assert!(!run.status.is_terminal());
    let events = events.await.unwrap();
    assert!(events.iter().any(|(_, e)| matches!(
        e,
        EngineEvent::StepFinished {
            outcome: AttemptOutcome::Interrupted,
            ..
        }
    )));
}

#[test]
fn the_engine_refuses_a_configuration_it_cannot_work_with() {
    let runner = Scripted::new(
        Box::new(|_, _| Action::Answer(Duration::ZERO, ok())),
        Box::new(|| Probe::Up),
    );
    /// A field's name and a change that makes it invalid.
    type Spoil = (&'static str, fn(&mut EngineConfig));
    let cases: [Spoil; 3] = [
        ("max_in_flight", |c| c.max_in_flight = 0),
        ("max_attempts", |c| c.max_attempts = 0),
        ("step_timeout", |c| c.step_timeout = Duration::ZERO),
    ];
    for (field, spoil) in cases {
        let mut config = EngineConfig::default();
        spoil(&mut config);
        let e = Engine::new(
            Pipeline::standard(),
            runner.clone(),
            Arc::new(MemoryStore::new()),
            config,
        )
        .expect_err("refused");
        assert_eq!(e.field, field);
        assert!(e.to_string().contains(field));
    }
}
