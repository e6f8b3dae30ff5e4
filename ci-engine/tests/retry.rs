//! Retrying a finished run, in paused time with a scripted runner: a new round
//! of the steps that did not succeed, with their history kept, a fresh attempt
//! budget, a place behind the steps already waiting, never two requests of one
//! step at once, and a restart in the middle of a round; and who retried or
//! cancelled, recorded on the run.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::ScriptedSource;
use ci_engine::{
    AttemptOutcome, CancelOutcome, Commit, CommitId, Concurrency, Engine, EngineConfig,
    EngineError, EngineEvent, EngineHandle, MemoryStore, Pipeline, Probe, RetryOutcome, Run,
    RunActionKind, RunStatus, RunStore, RunnerError, StepOutput, StepSpec, StepStatus, StepVerdict,
    Waiting,
};
use common::scripted::{Action, Scripted, ok};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn failed() -> Result<StepOutput, RunnerError> {
    Ok(StepOutput {
        verdict: StepVerdict::Failure,
        logs: "failed".into(),
        duration: None,
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An engine running on `runner` over `store`, fed `batches` by a source that
/// stays open; stopped (gracefully) when the returned sender is dropped or
/// sent to.
struct Running {
    handle: EngineHandle,
    events: broadcast::Receiver<EngineEvent>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), EngineError>>,
}

fn start(
    pipeline: Pipeline,
    runner: Arc<Scripted>,
    store: Arc<MemoryStore>,
    config: EngineConfig,
    batches: Vec<(Duration, Vec<Commit>)>,
) -> Running {
    let engine = Engine::new(pipeline, runner, store, config).unwrap();
    let handle = engine.handle();
    let events = handle.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let source = ScriptedSource::new(batches).staying_open();
    let task = tokio::spawn(engine.run(Box::new(source), async move {
        let _ = stopped.await;
    }));
    Running {
        handle,
        events,
        stop,
        task,
    }
}

impl Running {
    /// Waits (in virtual time, at most an hour) for `commit`'s next
    /// `RunFinished`, and returns its status.
    async fn finished(&mut self, commit: &str) -> RunStatus {
        let wait = async {
            loop {
                match self.events.recv().await.unwrap() {
                    EngineEvent::RunFinished { commit: c, status } if c.as_str() == commit => {
                        return status;
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .expect("the run finished within a virtual hour")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn id(s: &str) -> CommitId {
    CommitId::new(s)
}

/// Attempt numbers and outcomes of `step` of `run`.
fn attempts(run: &Run, step: &str) -> Vec<(u32, AttemptOutcome)> {
    run.step(step)
        .unwrap()
        .attempts
        .iter()
        .map(|a| (a.number, a.outcome))
        .collect()
}

/// Which requests the runner saw start, as `commit/step#attempt`, in order.
fn starts(runner: &Scripted) -> Vec<String> {
    runner
        .log()
        .into_iter()
        .filter(|(_, _, kind)| *kind == "start")
        .map(|(_, name, _)| name)
        .collect()
}

/// Builds fail at their first attempt; everything else succeeds at once.
fn first_build_fails() -> Arc<Scripted> {
    Scripted::new(
        Box::new(|r, _| match (r.step.as_str(), r.attempt) {
            ("build", 1) => Action::Answer(ms(10), failed()),
            _ => Action::Answer(ms(10), ok()),
        }),
        Box::new(|| Probe::Up),
    )
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_retried_as_a_new_round_keeping_its_history() {
    let store = Arc::new(MemoryStore::new());
    let runner = first_build_fails();
    let mut engine = start(
        Pipeline::standard(),
        runner.clone(),
        store.clone(),
        EngineConfig::default(),
        vec![(Duration::ZERO, vec![Commit::bare("aaaa")])],
    );
    assert_eq!(engine.finished("aaaa").await, RunStatus::Failure);
    let before = store.get_run("aaaa").await.unwrap();
    assert_eq!(before.step("test").unwrap().status, StepStatus::Skipped);

    let answer = engine
        .handle
        .retry_by(&id("aaaa"), Some("10.0.0.7:5000".into()))
        .await
        .unwrap();
    assert_eq!(
        answer,
        RetryOutcome::Retried {
            steps: vec!["build".into(), "test".into()]
        },
        "the failed step and the step skipped because of it run again"
    );
    // The engine announces the retry once it is stored, before the new round's
    // first attempt.
    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(EngineEvent::StepStarted { .. })) {
        seen.push(engine.events.recv().await.unwrap());
    }
    assert!(
        matches!(&seen[..], [EngineEvent::RunRetried { commit, steps, .. }, EngineEvent::StepStarted { step, attempt: 2, .. }]
            if commit.as_str() == "aaaa" && steps == &["build", "test"] && step == "build"),
        "{seen:?}"
    );
    assert_eq!(engine.finished("aaaa").await, RunStatus::Success);
    let after = store.get_run("aaaa").await.unwrap();
    assert_eq!(
        attempts(&after, "build"),
        [(1, AttemptOutcome::Failure), (2, AttemptOutcome::Success)],
        "the failed attempt is kept, the new one numbered after it"
    );
    assert_eq!(
        after.step("lint").unwrap().attempts,
        before.step("lint").unwrap().attempts,
        "a step that succeeded is not run again"
    );
    assert_eq!(attempts(&after, "test"), [(1, AttemptOutcome::Success)]);
    assert_eq!(after.actions.len(), 1);
    assert_eq!(after.actions[0].kind, RunActionKind::Retry);
    assert_eq!(after.actions[0].by.as_deref(), Some("10.0.0.7:5000"));
    assert!(after.actions[0].at >= before.finished_at.unwrap());
    assert_eq!(after.seq, before.seq, "the run keeps its seq");
    assert!(after.retry_seq.is_some_and(|p| p > before.seq));
    assert_eq!(
        starts(&runner),
        ["aaaa/lint#1", "aaaa/build#1", "aaaa/build#2", "aaaa/test#1"]
    );
    engine.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_changes_nothing_for_a_run_unfinished_successful_or_unknown() {
    let store = Arc::new(MemoryStore::new());
    let runner = Scripted::new(
        Box::new(|r, _| match r.commit.as_str() {
            "bbbb" => Action::Answer(Duration::from_secs(60), ok()),
            _ => Action::Answer(ms(10), ok()),
        }),
        Box::new(|| Probe::Up),
    );
    let mut engine = start(
        Pipeline::standard(),
        runner,
        store.clone(),
        EngineConfig::default(),
        vec![(
            Duration::ZERO,
            vec![Commit::bare("aaaa"), Commit::bare("bbbb")],
        )],
    );
    assert_eq!(engine.finished("aaaa").await, RunStatus::Success);
    let handle = engine.handle.clone();
    assert_eq!(
        handle.retry(&id("aaaa")).await.unwrap(),
        RetryOutcome::NothingToRetry
    );
    assert_eq!(
        handle.retry(&id("bbbb")).await.unwrap(),
        RetryOutcome::NotFinished
    );
    assert!(matches!(
        handle.retry(&id("cccc")).await,
        Err(EngineError::UnknownRun(c)) if c.as_str() == "cccc"
    ));
    assert!(
        matches!(
            handle.retry(&id("aaa")).await,
            Err(EngineError::UnknownRun(_))
        ),
        "a prefix is not a run's id"
    );
    for commit in ["aaaa", "bbbb"] {
        assert!(store.get_run(commit).await.unwrap().actions.is_empty());
    }
    assert_eq!(engine.finished("bbbb").await, RunStatus::Success);
    engine.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retried_step_gets_a_fresh_attempt_budget() {
    let store = Arc::new(MemoryStore::new());
    // Builds are lost (the runner drops the connection) three times, then
    // succeed: with two attempts per round the first round ends in error.
    let runner = Scripted::new(
        Box::new(|r, _| match (r.step.as_str(), r.attempt) {
            ("build", 1..=3) => Action::Answer(ms(10), Err(RunnerError::Lost("dropped".into()))),
            _ => Action::Answer(ms(10), ok()),
        }),
        Box::new(|| Probe::Up),
    );
    let config = EngineConfig {
        max_attempts: 2,
        ..EngineConfig::default()
    };
    let mut engine = start(
        Pipeline::standard(),
        runner,
        store.clone(),
        config,
        vec![(Duration::ZERO, vec![Commit::bare("aaaa")])],
    );
    assert_eq!(engine.finished("aaaa").await, RunStatus::Error);
    let first = store.get_run("aaaa").await.unwrap();
    assert_eq!(first.step("build").unwrap().counted_attempts(), 2);

    engine.handle.retry(&id("aaaa")).await.unwrap();
    assert_eq!(
        engine.finished("aaaa").await,
        RunStatus::Success,
        "the retried build had two more attempts, and its fourth succeeded"
    );
    let run = store.get_run("aaaa").await.unwrap();
    let build = run.step("build").unwrap();
    assert_eq!(
        attempts(&run, "build"),
        [
            (1, AttemptOutcome::Lost),
            (2, AttemptOutcome::Lost),
            (3, AttemptOutcome::Lost),
            (4, AttemptOutcome::Success)
        ]
    );
    assert_eq!(build.budget_from, 3);
    assert_eq!(
        build.counted_attempts(),
        2,
        "only this round's attempts count"
    );
    engine.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retried_steps_queue_behind_the_steps_already_waiting() {
    let store = Arc::new(MemoryStore::new());
    // One exclusive class: builds run one at a time, 100 ms each; a's first
    // build fails at once.
    let pipeline = Pipeline::new(vec![StepSpec::new("build", Concurrency::Exclusive)]).unwrap();
    let runner = Scripted::new(
        Box::new(|r, _| match (r.commit.as_str(), r.attempt) {
            ("aaaa", 1) => Action::Answer(ms(1), failed()),
            _ => Action::Answer(ms(100), ok()),
        }),
        Box::new(|| Probe::Up),
    );
    let commits = ["aaaa", "bbbb", "cccc", "dddd"].map(Commit::bare).to_vec();
    let mut engine = start(
        pipeline,
        runner.clone(),
        store.clone(),
        EngineConfig::default(),
        // eeee arrives after the retry below: it queues behind the retry.
        vec![
            (Duration::ZERO, commits),
            (ms(50), vec![Commit::bare("eeee")]),
        ],
    );
    assert_eq!(engine.finished("aaaa").await, RunStatus::Failure);
    // bbbb's build runs; cccc and dddd wait for the class.
    engine.handle.retry(&id("aaaa")).await.unwrap();
    assert_eq!(engine.finished("aaaa").await, RunStatus::Success);
    assert_eq!(engine.finished("eeee").await, RunStatus::Success);
    assert_eq!(
        starts(&runner),
        [
            "aaaa/build#1",
            "bbbb/build#1",
            "cccc/build#1",
            "dddd/build#1",
            "aaaa/build#2",
            "eeee/build#1"
        ],
        "the retry waits for the builds queued before it, and a commit that \
         came after it waits for it"
    );
    engine.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_a_request_of_an_earlier_attempt_still_open() {
    let store = Arc::new(MemoryStore::new());
    // The first build takes 10 s; a cancel gives up on it, but the runner
    // still works on it until then.
    let runner = Scripted::new(
        Box::new(|r, _| match (r.step.as_str(), r.attempt) {
            ("build", 1) => Action::Answer(Duration::from_secs(10), ok()),
            _ => Action::Answer(ms(10), ok()),
        }),
        Box::new(|| Probe::Up),
    );
    let mut engine = start(
        Pipeline::standard(),
        runner.clone(),
        store.clone(),
        EngineConfig::default(),
        vec![(Duration::ZERO, vec![Commit::bare("aaaa")])],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cancelled_at = Instant::now();
    assert_eq!(
        engine
            .handle
            .cancel_by(&id("aaaa"), Some("ops".into()))
            .await
            .unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(engine.finished("aaaa").await, RunStatus::Cancelled);
    assert!(matches!(
        engine.handle.retry(&id("aaaa")).await.unwrap(),
        RetryOutcome::Retried { .. }
    ));
    let waits = engine.handle.waiting(&id("aaaa")).await.unwrap();
    let build = waits.iter().find(|w| w.step == "build").unwrap();
    assert!(
        matches!(build.waiting, Waiting::EarlierAttempt { attempt: 1, .. }),
        "the build waits for its first request: {:?}",
        build.waiting
    );
    assert_eq!(engine.finished("aaaa").await, RunStatus::Success);

    let log = runner.log();
    let at = |name: &str, kind: &str| {
        log.iter()
            .find(|(_, n, k)| n == name && *k == kind)
            .map(|(t, _, _)| *t)
            .unwrap()
    };
    assert!(
        at("aaaa/build#2", "start") >= at("aaaa/build#1", "end"),
        "the build is never in flight twice"
    );
    assert!(at("aaaa/build#1", "end") >= cancelled_at + Duration::from_secs(9));
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(
        attempts(&run, "build"),
        [(1, AttemptOutcome::Cancelled), (2, AttemptOutcome::Success)]
    );
    let kinds: Vec<_> = run.actions.iter().map(|a| (a.kind, a.by.clone())).collect();
    assert_eq!(
        kinds,
        [
            (RunActionKind::Cancel, Some("ops".into())),
            (RunActionKind::Retry, None)
        ]
    );
    engine.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_round_cut_by_a_restart_resumes_in_its_place() {
    let store = Arc::new(MemoryStore::new());
    // Builds fail at their first attempt; the retried build takes a minute, so
    // the engine stops while it is in flight.
    let script = || {
        Scripted::new(
            Box::new(|r, _| match (r.step.as_str(), r.attempt) {
                ("build", 1) => Action::Answer(ms(10), failed()),
                ("build", 2) => Action::Answer(Duration::from_secs(60), ok()),
                _ => Action::Answer(ms(10), ok()),
            }),
            Box::new(|| Probe::Up),
        )
    };
    let config = EngineConfig {
        shutdown_grace: ms(100),
        ..EngineConfig::default()
    };
    let mut first = start(
        Pipeline::standard(),
        script(),
        store.clone(),
        config.clone(),
        vec![(Duration::ZERO, vec![Commit::bare("aaaa")])],
    );
    assert_eq!(first.finished("aaaa").await, RunStatus::Failure);
    first.handle.retry(&id("aaaa")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.stop().await;
    let cut = store.get_run("aaaa").await.unwrap();
    assert_eq!(cut.status, RunStatus::Running);
    assert_eq!(
        attempts(&cut, "build"),
        [
            (1, AttemptOutcome::Failure),
            (2, AttemptOutcome::Interrupted)
        ]
    );

    // The next engine takes the round up: the build's budget still starts at
    // attempt 2, and a commit that arrives now queues behind the run.
    let runner = script();
    let mut second = start(
        Pipeline::standard(),
        runner.clone(),
        store.clone(),
        config,
        vec![(Duration::ZERO, vec![Commit::bare("bbbb")])],
    );
    assert_eq!(second.finished("aaaa").await, RunStatus::Success);
    let run = store.get_run("aaaa").await.unwrap();
    assert_eq!(
        attempts(&run, "build"),
        [
            (1, AttemptOutcome::Failure),
            (2, AttemptOutcome::Interrupted),
            (3, AttemptOutcome::Success)
        ]
    );
    assert_eq!(run.step("build").unwrap().budget_from, 2);
    assert_eq!(run.retry_seq, cut.retry_seq);
    let new = store.get_run("bbbb").await.unwrap();
    assert!(
        new.seq > run.retry_seq.unwrap(),
        "a new run's seq comes after the retried run's place"
    );
    let builds: Vec<String> = starts(&runner)
        .into_iter()
        .filter(|s| s.contains("/build#"))
        .collect();
    assert_eq!(builds, ["aaaa/build#3", "bbbb/build#1"]);
    second.stop().await;
}
