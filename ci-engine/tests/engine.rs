//! Scenario tests of the engine with mockall mocks and hand-built stores, in
//! paused time: each runner error kind, outages, restarts, cancel, a failing
//! store, timeouts and events.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ci_engine::engine::CancelOutcome;
use ci_engine::testing::sim::ScriptedSource;
use ci_engine::testing::{MockRunStore, MockStepRunner};
use ci_engine::{
    Attempt, AttemptOutcome, Commit, CommitId, Engine, EngineConfig, EngineError, EngineEvent,
    MemoryStore, Pipeline, Probe, Run, RunStatus, RunStore, RunnerError, StepOutput, StepStatus,
    StepVerdict, StoreError,
};

fn ok(verdict: StepVerdict) -> Result<StepOutput, RunnerError> {
    Ok(StepOutput {
        verdict,
        logs: "logs".into(),
        duration: Some(Duration::from_millis(5)),
    })
}

fn one_commit() -> Box<ScriptedSource> {
    Box::new(ScriptedSource::new(vec![(
        Duration::ZERO,
        vec![Commit::bare("aaaa")],
    )]))
}

async fn run_to_end(runner: MockStepRunner, store: Arc<MemoryStore>, config: EngineConfig) -> Run {
    let engine = Engine::new(
        Pipeline::standard(),
        Arc::new(runner),
        store.clone(),
        config,
    )
    .expect("a valid engine configuration");
    engine
        .run(one_commit(), std::future::pending())
        .await
        .unwrap();
    store.get_run("aaaa").await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_rejected_step_is_not_retried_and_errors_the_run() {
    let mut runner = MockStepRunner::new();
    runner
        .expect_run()
        .withf(|r| r.step == "build")
        .times(1)
        .returning(|_| Err(RunnerError::Rejected("Unknown step!".into())));
    runner
        .expect_run()
        .withf(|r| r.step == "lint")
        .times(1)
        .returning(|_| ok(StepVerdict::Success));
    let run = run_to_end(
        runner,
        Arc::new(MemoryStore::new()),
        EngineConfig::default(),
    )
    .await;
    assert_eq!(run.status, RunStatus::Error);
    assert_eq!(run.failed_steps, ["build"]);
    let build = run.step("build").unwrap();
    assert_eq!(build.attempts.len(), 1);
    assert_eq!(build.attempts[0].outcome, AttemptOutcome::Rejected);
    assert_eq!(build.attempts[0].reason.as_deref(), Some("Unknown step!"));
    let test = run.step("test").unwrap();
    assert_eq!(test.status, StepStatus::Skipped);
    assert!(test.reason.as_deref().unwrap().contains("build"));
}

#[tokio::test(start_paused = true)]
async fn lost_steps_are_retried_with_every_attempt_kept() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut runner = MockStepRunner::new();
    let c = calls.clone();
    runner.expect_run().returning(move |r| {
        if r.step == "test" && c.fetch_add(1, Ordering::SeqCst) < 2 {
            Err(RunnerError::Lost(
                "connection closed before message completed".into(),
            ))
        } else {
            ok(StepVerdict::Success)
        }
    });
    let run = run_to_end(
        runner,
        Arc::new(MemoryStore::new()),
        EngineConfig::default(),
    )
    .await;
    assert_eq!(run.status, RunStatus::Success);
    let test = run.step("test").unwrap();
    let outcomes: Vec<_> = test.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            AttemptOutcome::Lost,
            AttemptOutcome::Lost,
            AttemptOutcome::Success
        ]
    );
    assert_eq!(
        test.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        test.attempts[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("connection closed")
    );
}

#[tokio::test(start_paused = true)]
async fn lost_too_often_ends_error_not_failure() {
    let mut runner = MockStepRunner::new();
    runner
        .expect_run()
        .withf(|r| r.step == "build")
        .times(3)
        .returning(|_| Err(RunnerError::Protocol("garbage".into())));
    runner
        .expect_run()
        .withf(|r| r.step == "lint")
        .returning(|_| ok(StepVerdict::Success));
    let config = EngineConfig {
        max_attempts: 3,
        ..EngineConfig::default()
    };
    let run = run_to_end(runner, Arc::new(MemoryStore::new()), config).await;
    assert_eq!(run.status, RunStatus::Error);
    let build = run.step("build").unwrap();
    assert_eq!(build.status, StepStatus::Error);
    assert!(build.reason.as_deref().unwrap().contains("3 attempts"));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_runner_costs_no_attempt_and_is_waited_for() {
    let refusals = Arc::new(AtomicUsize::new(0));
    let mut runner = MockStepRunner::new();
    // A runner that cannot be probed without a step: the engine probes with one.
    runner.expect_probe().returning(|| Probe::Unsupported);
    let r2 = refusals.clone();
    runner.expect_run().returning(move |_| {
        if r2.fetch_add(1, Ordering::SeqCst) < 5 {
            Err(RunnerError::Unreachable("connection refused".into()))
        } else {
            ok(StepVerdict::Success)
        }
    });
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::new(
        Pipeline::standard(),
        Arc::new(runner),
        store.clone(),
        EngineConfig::default(),
    )
    .expect("a valid engine configuration");
    let mut events = engine.handle().subscribe();
    engine
        .run(one_commit(), std::future::pending())
        .await
        .unwrap();
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    for step in &run.steps {
        assert_eq!(step.attempts.len(), 1, "{}: {:?}", step.name, step.attempts);
    }
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    let down = seen
        .iter()
        .position(|e| matches!(e, EngineEvent::RunnerDown { .. }))
        .unwrap();
    let up = seen
        .iter()
        .position(|e| matches!(e, EngineEvent::RunnerUp { .. }))
        .unwrap();
    assert!(down < up);
    assert!(matches!(
        seen.last(),
        Some(EngineEvent::RunFinished {
            status: RunStatus::Success,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_runner_unreachable_past_the_limit_errors_the_waiting_steps() {
    let mut runner = MockStepRunner::new();
    runner
        .expect_run()
        // lint and build go out together, before the first refusal is known.
        .times(2)
        .returning(|_| Err(RunnerError::Unreachable("connection refused".into())));
    // Probes find it down: no step is sent again, so only the engine's own timer
    // can enforce the limit.
    runner
        .expect_probe()
        .returning(|| Probe::Down("connection refused".into()));
    let config = EngineConfig {
        unreachable_limit: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let started = tokio::time::Instant::now();
    let run = run_to_end(runner, Arc::new(MemoryStore::new()), config).await;
    let waited = started.elapsed();
    assert_eq!(run.status, RunStatus::Error);
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
    for name in ["lint", "build"] {
        let s = run.step(name).unwrap();
        assert_eq!(s.status, StepStatus::Error);
        assert!(s.attempts.is_empty());
        assert!(s.reason.as_deref().unwrap().contains("unreachable"));
    }
    assert_eq!(run.step("test").unwrap().status, StepStatus::Skipped);
}

fn attempt(number: u32, outcome: AttemptOutcome) -> Attempt {
    Attempt::new(number, outcome, 0)
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_interrupted_steps_and_reruns_nothing_finished() {
    let store = Arc::new(MemoryStore::new());
    let pipeline = Pipeline::standard();
    // As a killed engine left it: lint done, build in flight, test pending.
    let mut run = Run::new(Commit::bare("aaaa"), 7, &pipeline);
    run.steps[0].status = StepStatus::Success;
    run.steps[0]
        .attempts
        .push(attempt(1, AttemptOutcome::Success));
    run.steps[1].status = StepStatus::Running;
    run.steps[1]
        .attempts
        .push(attempt(1, AttemptOutcome::Running));
    run.settle();
    store.insert_run(&run).await.unwrap();
    // A finished run that must not run again.
    let mut done = Run::new(Commit::bare("bbbb"), 3, &pipeline);
    for s in &mut done.steps {
        s.status = StepStatus::Success;
    }
    done.settle();
    store.insert_run(&done).await.unwrap();

    let mut runner = MockStepRunner::new();
    runner
        .expect_run()
        .withf(|r| r.commit.as_str() == "aaaa" && r.step != "lint")
        .times(2)
        .returning(|_| ok(StepVerdict::Success));
    runner
        .expect_run()
        .withf(|r| r.commit.as_str() == "cccc")
        .times(3)
        .returning(|_| ok(StepVerdict::Success));
    let engine = Engine::new(
        pipeline,
        Arc::new(runner),
        store.clone(),
        EngineConfig::default(),
    )
    .expect("a valid engine configuration");
    // The source hands out both commits again, as a restarted git source may.
    let source = ScriptedSource::new(vec![(
        Duration::ZERO,
        vec![
            Commit::bare("bbbb"),
            Commit::bare("aaaa"),
            Commit::bare("cccc"),
        ],
    )]);
    engine
        .run(Box::new(source), std::future::pending())
        .await
        .unwrap();

    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    let build = run.step("build").unwrap();
    let outcomes: Vec<_> = build.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [AttemptOutcome::Interrupted, AttemptOutcome::Success]
    );
    assert_eq!(
        run.step("lint").unwrap().attempts.len(),
        1,
        "lint was not run again"
    );
    assert_eq!(store.get_run("bbbb").await.unwrap(), done);
    let c = store.get_run("cccc").await.unwrap();
    // Numbers are unique and increasing, not dense: `bbbb`, handed out again
    // in the same batch, used up a number although its run was kept.
    assert!(
        c.seq > 7,
        "a new run gets a seq after every stored one: {}",
        c.seq
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_ends_a_run_with_steps_in_flight() {
    struct Hour;
    #[async_trait::async_trait]
    impl ci_engine::StepRunner for Hour {
        async fn run(&self, _: &ci_engine::StepRequest) -> Result<StepOutput, RunnerError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            ok(StepVerdict::Success)
        }
    }
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::new(
        Pipeline::standard(),
        Arc::new(Hour),
        store.clone(),
        EngineConfig::default(),
    )
    .expect("a valid engine configuration");
    let handle = engine.handle();
    let mut events = handle.subscribe();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // One commit, then a source that stays open (its next batch is far away).
    let source = ScriptedSource::new(vec![
        (Duration::ZERO, vec![Commit::bare("aaaa")]),
        (Duration::from_secs(1_000_000), vec![]),
    ]);
    let engine_task = tokio::spawn(engine.run(Box::new(source), async move {
        let _ = stop_rx.await;
    }));
    // Wait (in virtual time) until both lint and build are in flight.
    let mut started = 0;
    while started < 2 {
        if let EngineEvent::StepStarted { .. } = events.recv().await.unwrap() {
            started += 1;
        }
    }
    let id = CommitId::new("aaaa");
    assert_eq!(handle.cancel(&id).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(
        handle.cancel(&id).await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
    assert!(matches!(
        handle.cancel(&CommitId::new("ffff")).await,
        Err(EngineError::UnknownRun(_))
    ));
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    for s in &run.steps {
        assert_eq!(s.status, StepStatus::Cancelled, "{}", s.name);
    }
    assert_eq!(
        run.step("build").unwrap().attempts[0].outcome,
        AttemptOutcome::Cancelled
    );
    assert!(run.step("test").unwrap().attempts.is_empty());
    stop_tx.send(()).unwrap();
    engine_task.await.unwrap().unwrap();
    assert!(matches!(
        handle.cancel(&id).await,
        Err(EngineError::NotRunning)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_step_that_outlives_its_timeout_is_lost_and_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    struct FirstHangs(Arc<AtomicUsize>);
    #[async_trait::async_trait]
    impl ci_engine::StepRunner for FirstHangs {
        async fn run(&self, r: &ci_engine::StepRequest) -> Result<StepOutput, RunnerError> {
            if r.step == "build" && self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            ok(StepVerdict::Success)
        }
    }
    let store = Arc::new(MemoryStore::new());
    let config = EngineConfig {
        step_timeout: Duration::from_secs(60),
        abandon_limit: Duration::from_secs(120),
        ..EngineConfig::default()
    };
    let engine = Engine::new(
        Pipeline::standard(),
        Arc::new(FirstHangs(c)),
        store.clone(),
        config,
    )
    .expect("a valid engine configuration");
    let t0 = tokio::time::Instant::now();
    engine
        .run(one_commit(), std::future::pending())
        .await
        .unwrap();
    // The hung build kept the build permit past its timeout: the retry went out
    // only once the abandon limit had passed (this runner cannot be probed, so
    // the limit is final).
    assert!(
        t0.elapsed() >= Duration::from_secs(180),
        "{:?}",
        t0.elapsed()
    );
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    let build = run.step("build").unwrap();
    assert_eq!(build.attempts[0].outcome, AttemptOutcome::Lost);
    assert!(
        build.attempts[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("timeout")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_stops_the_engine_with_its_error() {
    let mut store = MockRunStore::new();
    store.expect_max_seq().returning(|| Ok(None));
    store
        .expect_unfinished_after()
        .returning(|_, _| Ok(Vec::new()));
    store
        .expect_insert_runs()
        .returning(|_| Err(StoreError::Backend("disk full".into())));
    let mut runner = MockStepRunner::new();
    runner.expect_run().never();
    let engine = Engine::new(
        Pipeline::standard(),
        Arc::new(runner),
        Arc::new(store),
        EngineConfig::default(),
    )
    .expect("a valid engine configuration");
    let err = engine
        .run(one_commit(), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Store(StoreError::Backend(_))));
    assert!(err.to_string().contains("disk full"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_is_asked_again() {
    let mut source = ci_engine::testing::MockCommitSource::new();
    let mut seq = mockall::Sequence::new();
    source
        .expect_next_commits()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Err(ci_engine::SourceError::msg("index.lock exists")));
    source
        .expect_next_commits()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Ok(Some(vec![Commit::bare("aaaa")])));
    source
        .expect_next_commits()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Ok(None));
    let mut runner = MockStepRunner::new();
    runner
        .expect_run()
        .times(2)
        .returning(|_| ok(StepVerdict::Failure));
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::new(
        Pipeline::standard(),
        Arc::new(runner),
        store.clone(),
        EngineConfig::default(),
    )
    .expect("a valid engine configuration");
    engine
        .run(Box::new(source), std::future::pending())
        .await
        .unwrap();
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(run.status, RunStatus::Failure);
    assert_eq!(run.failed_steps, ["lint", "build"]);
    assert_eq!(run.step("test").unwrap().status, StepStatus::Skipped);
}
