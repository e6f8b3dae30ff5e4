//! `EngineHandle::waiting`: why each step that has not started waits, with the
//! holder of the permit named — checked in paused time on simulated runners.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{ScriptedSource, SimRunner, SimRunnerConfig, StepBehaviour};
use ci_engine::{
    Commit, CommitId, Concurrency, Engine, EngineConfig, EngineHandle, MemoryStore, Pipeline,
    PoolMember, RunnerPool, Scope, StepSpec, StepStatus, StepWait, Waiting,
};
use tokio::time::Instant;

fn fixed(ms: u64) -> Arc<SimRunner> {
    SimRunner::new(SimRunnerConfig {
        seed: 1,
        steps: HashMap::new(),
        default_step: StepBehaviour::green(ms, ms),
        downtime_ms: (0, 0),
    })
}

fn commit(i: usize) -> Commit {
    Commit::bare(format!("{i:040x}"))
}

/// Starts an engine on `sims` with `pipeline`, fed `n` commits at once, and
/// returns its handle (the engine runs in a spawned task).
fn start(
    pipeline: Pipeline,
    sims: &[Arc<SimRunner>],
    n: usize,
    config: EngineConfig,
) -> EngineHandle {
    let pool = RunnerPool::new(
        sims.iter()
            .enumerate()
            .map(|(r, sim)| PoolMember {
                id: format!("r{r}"),
                runner: sim.clone(),
            })
            .collect(),
    )
    .unwrap();
    let engine = Engine::with_pool(pipeline, pool, Arc::new(MemoryStore::new()), config).unwrap();
    let handle = engine.handle();
    let source = ScriptedSource::new(vec![(Duration::ZERO, (0..n).map(commit).collect())]);
    tokio::spawn(engine.run(Box::new(source), std::future::pending()));
    handle
}

/// Polls (in virtual time) until `step` of commit `i` waits in a way `accept` takes.
async fn wait_for(
    handle: &EngineHandle,
    i: usize,
    step: &str,
    accept: impl Fn(&Waiting) -> bool,
) -> StepWait {
    let id = CommitId::new(format!("{i:040x}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waits = handle.waiting(&id).await.unwrap();
        if let Some(w) = waits.iter().find(|w| w.step == step && accept(&w.waiting)) {
            return w.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{step} of {i} never waited so: {waits:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn exclusive_build() -> Pipeline {
    Pipeline::new(vec![
        StepSpec::new("build", Concurrency::Exclusive),
        StepSpec::new("test", Concurrency::Exclusive).needs("build"),
    ])
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_step_waiting_for_a_permit_names_every_holder_and_runner() {
    let sims = [fixed(1_000), fixed(1_000)];
    let handle = start(exclusive_build(), &sims, 3, EngineConfig::default());
    let w = wait_for(&handle, 2, "build", |w| matches!(w, Waiting::Permit { .. })).await;
    let Waiting::Permit {
        class,
        scope,
        limit,
        holders,
    } = &w.waiting
    else {
        unreachable!()
    };
    assert_eq!(
        (class.as_str(), *scope, *limit),
        ("build", Scope::Runner, 1)
    );
    let named: Vec<(String, &str, u32, &str)> = holders
        .iter()
        .map(|h| {
            (
                h.commit.to_string(),
                h.step.as_str(),
                h.attempt,
                h.runner.as_str(),
            )
        })
        .collect();
    assert_eq!(
        named,
        vec![
            (format!("{:040x}", 0), "build", 1, "r0"),
            (format!("{:040x}", 1), "build", 1, "r1"),
        ]
    );
    let sentence = w.waiting.to_string();
    assert!(
        sentence.contains("build of 0000000000 (attempt 1) on r0")
            && sentence.contains("build of 0000000000 (attempt 1) on r1"),
        "{sentence}"
    );
    // Meanwhile commit 0's test waits for its build.
    let w = wait_for(&handle, 0, "test", |w| matches!(w, Waiting::Needs { .. })).await;
    assert_eq!(
        w.waiting,
        Waiting::Needs {
            step: "build".into(),
            status: StepStatus::Running
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_pinned_to_a_runner_that_is_down_says_which_and_since_when() {
    let pipeline = Pipeline::new(vec![
        StepSpec::new("build", Concurrency::Exclusive),
        StepSpec::new("test", Concurrency::Exclusive)
            .needs("build")
            .same_runner_as("build"),
    ])
    .unwrap();
    let sims = [fixed(100), fixed(100)];
    let handle = start(pipeline, &sims, 1, EngineConfig::default());
    // r0 takes the build; take it down before the test can go out.
    tokio::time::sleep(Duration::from_millis(50)).await;
    sims[0].take_down_until(Instant::now() + Duration::from_secs(3600));
    let w = wait_for(&handle, 0, "test", |w| {
        matches!(w, Waiting::RunnerDown { .. })
    })
    .await;
    let Waiting::RunnerDown {
        runners,
        since,
        gives_up_at,
    } = &w.waiting
    else {
        unreachable!()
    };
    assert_eq!(runners, &vec!["r0".to_owned()]);
    assert_eq!(
        gives_up_at - since,
        600_000,
        "the default unreachable limit"
    );
    assert!(
        w.waiting.to_string().contains("runner r0 is down"),
        "{}",
        w.waiting
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_in_backoff_says_until_when() {
    // Every build outlives a 50 ms timeout: the step is retried after a backoff.
    let sims = [fixed(10_000)];
    let config = EngineConfig {
        step_timeout: Duration::from_millis(50),
        retry_backoff: Duration::from_secs(30),
        retry_backoff_max: Duration::from_secs(30),
        retry_jitter_percent: 0,
        ..EngineConfig::default()
    };
    let handle = start(exclusive_build(), &sims, 1, config);
    let w = wait_for(&handle, 0, "build", |w| {
        matches!(w, Waiting::Backoff { .. } | Waiting::EarlierAttempt { .. })
    })
    .await;
    match &w.waiting {
        Waiting::Backoff { until } => {
            let now = ci_engine::model::now_millis();
            assert!(*until > now, "the backoff ends in the future");
        }
        Waiting::EarlierAttempt { runner, attempt } => {
            assert_eq!((runner.as_str(), *attempt), ("r0", 1));
        }
        _ => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_finished_or_unknown_run_has_nothing_waiting() {
    let sims = [fixed(10)];
    let handle = start(exclusive_build(), &sims, 1, EngineConfig::default());
    let unknown = handle.waiting(&CommitId::new("nope")).await.unwrap();
    assert!(unknown.is_empty());
}

#[tokio::test(start_paused = true)]
async fn classes_report_their_queue_depth_and_open_requests() {
    let sims = [fixed(1_000), fixed(1_000)];
    let handle = start(exclusive_build(), &sims, 3, EngineConfig::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    let classes = loop {
        let classes = handle.classes().await.unwrap();
        if classes
            .iter()
            .any(|c| c.class == "build" && c.in_flight == 2)
        {
            break classes;
        }
        assert!(Instant::now() < deadline, "never two builds: {classes:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let build = classes.iter().find(|c| c.class == "build").unwrap();
    assert_eq!((build.ready, build.in_flight, build.limit), (1, 2, Some(1)));
    let test = classes.iter().find(|c| c.class == "test").unwrap();
    assert_eq!(
        (test.ready, test.in_flight),
        (0, 0),
        "tests wait for builds, not for permits"
    );
}
