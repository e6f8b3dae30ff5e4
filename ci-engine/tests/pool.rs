//! The engine on a pool of simulated runners, in paused time: property tests of
//! the pool's invariants over random pipelines (per-runner and pool-wide
//! classes, steps pinned with `same_runner_as`), random pool sizes, crashes
//! and outages; and scenario tests of dispatch, pinning and runner status.
//!
//! Each runner's own trace is the witness: limits are checked on what every
//! runner really had open (requests the engine gave up on included), and every
//! attempt the store records must match a request its runner saw.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{
    ScriptedSource, SimRunner, SimRunnerConfig, StepBehaviour, TraceEvent, TraceKind,
};
use ci_engine::{
    AttemptOutcome, Commit, CommitId, Concurrency, Engine, EngineConfig, EngineEvent, MemoryStore,
    Pipeline, PoolMember, Run, RunStatus, RunnerPool, RunnerState, Scope, StepSpec, StepStatus,
};
use proptest::prelude::*;
use tokio::time::Instant;

/// A pool scenario: the pipeline, one simulated runner config per runner,
/// outages per runner, commits.
#[derive(Clone, Debug)]
struct PoolScenario {
    pipeline: Pipeline,
    runners: Vec<SimRunnerConfig>,
    /// (runner, start offset, length).
    outages: Vec<(usize, Duration, Duration)>,
    engine: EngineConfig,
    batches: Vec<(Duration, Vec<Commit>)>,
}

/// What a pool scenario left behind.
struct PoolOutcome {
    pipeline: Pipeline,
    engine: EngineConfig,
    runs: Vec<Run>,
    /// Each runner's trace, in pool order.
    traces: Vec<Vec<TraceEvent>>,
    handed: Vec<CommitId>,
    /// Every event, with the (virtual) time it was sent.
    events: Vec<(Instant, EngineEvent)>,
    /// When the scenario started.
    t0: Instant,
}

fn runner_id(r: usize) -> String {
    format!("r{r}")
}

fn pool_of(runners: &[Arc<SimRunner>]) -> RunnerPool {
    RunnerPool::new(
        runners
            .iter()
            .enumerate()
            .map(|(r, sim)| PoolMember {
                id: runner_id(r),
                runner: sim.clone(),
            })
            .collect(),
    )
    .unwrap()
}

fn simulate(s: &PoolScenario) -> PoolOutcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(MemoryStore::new());
        let sims: Vec<Arc<SimRunner>> = s.runners.iter().cloned().map(SimRunner::new).collect();
        let engine = Engine::with_pool(
            s.pipeline.clone(),
            pool_of(&sims),
            store.clone(),
            EngineConfig {
                event_capacity: 1 << 16,
                ..s.engine.clone()
            },
        )
        .unwrap();
        let mut events = engine.handle().subscribe();
        let recorder = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(e) = events.recv().await {
                seen.push((Instant::now(), e));
            }
            seen
        });
        let t0 = Instant::now();
        for &(r, at, len) in &s.outages {
            let sim = sims[r].clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + at).await;
                sim.take_down_until(Instant::now() + len);
            });
        }
        let handed = s
            .batches
            .iter()
            .flat_map(|(_, b)| b.iter().map(|c| c.id.clone()))
            .collect();
        let result = tokio::time::timeout(
            Duration::from_secs(7 * 24 * 3600),
            engine.run(
                Box::new(ScriptedSource::new(s.batches.clone())),
                std::future::pending(),
            ),
        )
        .await;
        assert!(
            result.is_ok(),
            "the engine did not finish in a virtual week"
        );
        result.unwrap().unwrap();
        // Let requests the engine gave up on run out on their runners.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let events = recorder.await.unwrap();
        PoolOutcome {
            pipeline: s.pipeline.clone(),
            engine: s.engine.clone(),
            runs: store.all_runs(),
            traces: sims.iter().map(|sim| sim.trace()).collect(),
            handed,
            events,
            t0,
        }
    })
}

impl PoolOutcome {
    /// The class index of the pipeline step whose runner step is `runner_step`
    /// (the generated pipelines run steps under their own names).
    fn class_of(&self, step: &str) -> usize {
        self.pipeline
            .class_of(self.pipeline.position(step).unwrap())
    }

    /// On every runner, never more requests of a per-runner class than its
    /// limit nor more requests than the cap; across the pool, never more
    /// requests of a pool-wide class than its limit. Read from the runners'
    /// own traces, merged in their shared order.
    fn check_limits(&self) -> Result<(), String> {
        let classes = self.pipeline.classes();
        let mut merged: Vec<(usize, &TraceEvent)> = self
            .traces
            .iter()
            .enumerate()
            .flat_map(|(r, t)| t.iter().map(move |e| (r, e)))
            .collect();
        merged.sort_by_key(|(_, e)| e.order);
        let mut per_runner = vec![vec![0u32; classes.len()]; self.traces.len()];
        let mut total = vec![0usize; self.traces.len()];
        let mut pool = vec![0u32; classes.len()];
        for (r, e) in merged {
            let c = self.class_of(&e.step);
            if e.kind == TraceKind::Start {
                per_runner[r][c] += 1;
                pool[c] += 1;
                total[r] += 1;
                let count = match classes[c].scope {
                    Scope::Runner => per_runner[r][c],
                    Scope::Pool => pool[c],
                };
                if classes[c].limit.is_some_and(|l| count > l) {
                    return Err(format!(
                        "{} of {}'s class ({:?}) in flight on {} at order {}, limit {:?}",
                        count, e.step, classes[c].scope, r, e.order, classes[c].limit
                    ));
                }
                if total[r] > self.engine.max_in_flight {
                    return Err(format!("runner {r}: {} in flight", total[r]));
                }
            } else {
                per_runner[r][c] -= 1;
                pool[c] -= 1;
                total[r] -= 1;
            }
        }
        Ok(())
    }

    /// Every attempt the store records as sent names the runner whose trace
    /// has that request, and every request a runner saw is such an attempt:
    /// nothing is sent twice, nothing is recorded that was not sent.
    fn check_attempts_match_traces(&self) -> Result<(), String> {
        let mut seen: HashSet<(String, CommitId, String, u32)> = HashSet::new();
        for (r, trace) in self.traces.iter().enumerate() {
            for e in trace.iter().filter(|e| e.kind == TraceKind::Start) {
                let key = (runner_id(r), e.commit.clone(), e.step.clone(), e.attempt);
                if !seen.insert(key.clone()) {
                    return Err(format!("request {key:?} was sent twice"));
                }
            }
        }
        for run in &self.runs {
            for step in &run.steps {
                for a in &step.attempts {
                    let runner = a.runner.clone().ok_or_else(|| {
                        format!("{} {} #{} names no runner", run.id(), step.name, a.number)
                    })?;
                    let key = (runner, run.id().clone(), step.name.clone(), a.number);
                    if !seen.remove(&key) {
                        return Err(format!("attempt {key:?} is not in its runner's trace"));
                    }
                }
            }
        }
        match seen.into_iter().next() {
            Some(left) => Err(format!("request {left:?} has no attempt in the store")),
            None => Ok(()),
        }
    }

    /// Every commit has one run, terminal; a step never fails because of a
    /// crash (lost attempts are retried or end `error`); a lost attempt was
    /// lost on the runner it names, where the trace shows the loss or the
    /// engine's timeout.
    fn check_runs(&self) -> Result<(), String> {
        let ids: HashSet<&CommitId> = self.runs.iter().map(Run::id).collect();
        if ids.len() != self.runs.len() || self.handed.iter().any(|c| !ids.contains(c)) {
            return Err("a commit has no run, or two".into());
        }
        let mut ends: HashMap<(String, CommitId, String, u32), TraceKind> = HashMap::new();
        for (r, trace) in self.traces.iter().enumerate() {
            for e in trace.iter().filter(|e| e.kind != TraceKind::Start) {
                ends.insert(
                    (runner_id(r), e.commit.clone(), e.step.clone(), e.attempt),
                    e.kind,
                );
            }
        }
        for run in &self.runs {
            if !run.status.is_terminal() {
                return Err(format!("run {} ended {}", run.id(), run.status));
            }
            for step in &run.steps {
                for a in &step.attempts {
                    let key = (
                        a.runner.clone().unwrap_or_default(),
                        run.id().clone(),
                        step.name.clone(),
                        a.number,
                    );
                    let end = ends.get(&key);
                    let ok = match a.outcome {
                        AttemptOutcome::Success => end == Some(&TraceKind::Success),
                        AttemptOutcome::Failure => end == Some(&TraceKind::Failure),
                        AttemptOutcome::Rejected => end == Some(&TraceKind::Rejected),
                        AttemptOutcome::Lost => {
                            end == Some(&TraceKind::Lost)
                                || a.reason.as_deref().is_some_and(|r| r.contains("timeout"))
                        }
                        AttemptOutcome::Cancelled | AttemptOutcome::Interrupted => true,
                        AttemptOutcome::Running => false,
                    };
                    if !ok {
                        return Err(format!(
                            "{key:?} recorded {} but its runner says {end:?}",
                            a.outcome
                        ));
                    }
                }
                if step.status == StepStatus::Failure
                    && step
                        .attempts
                        .last()
                        .is_none_or(|a| a.outcome != AttemptOutcome::Failure)
                {
                    return Err(format!(
                        "{} {} failed without a failure",
                        run.id(),
                        step.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// A step pinned with `same_runner_as` ran only where its target succeeded.
    fn check_pins(&self) -> Result<(), String> {
        for run in &self.runs {
            for (i, step) in run.steps.iter().enumerate() {
                let Some(j) = self.pipeline.same_runner_as(i) else {
                    continue;
                };
                let target = run.steps[j]
                    .attempts
                    .iter()
                    .find(|a| a.outcome == AttemptOutcome::Success)
                    .and_then(|a| a.runner.clone());
                for a in &step.attempts {
                    if a.runner != target {
                        return Err(format!(
                            "{} {} #{} ran on {:?}, its target on {target:?}",
                            run.id(),
                            step.name,
                            a.number,
                            a.runner
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every `StepStarted` names the runner the attempt is recorded with.
    fn check_started_events(&self) -> Result<(), String> {
        let recorded: HashMap<(CommitId, String, u32), Option<String>> = self
            .runs
            .iter()
            .flat_map(|r| {
                r.steps.iter().flat_map(move |s| {
                    s.attempts.iter().map(move |a| {
                        ((r.id().clone(), s.name.clone(), a.number), a.runner.clone())
                    })
                })
            })
            .collect();
        for (_, e) in &self.events {
            if let EngineEvent::StepStarted {
                commit,
                step,
                attempt,
                runner,
            } = e
                && let Some(r) = recorded.get(&(commit.clone(), step.clone(), *attempt))
                && r.as_deref() != Some(runner.as_str())
            {
                return Err(format!(
                    "{commit} {step} #{attempt} started on {runner}, recorded {r:?}"
                ));
            }
        }
        Ok(())
    }
}

impl PoolOutcome {
    /// Work conservation across the pool, for scenarios where every step gets
    /// one attempt: a step that became ready at R and started at S > R waited
    /// only while no runner it may use had a free permit for its class — at R
    /// and after every request start or end before S, each runner it may use
    /// (only its own, for a pinned step) was full for its class (or the pool
    /// was, for a pool-wide class).
    fn check_work_conserving(&self) -> Result<(), String> {
        let classes = self.pipeline.classes();
        // When each run was queued and each step succeeded, from the events.
        let mut queued: HashMap<CommitId, Instant> = HashMap::new();
        let mut succeeded: HashMap<(CommitId, String), Instant> = HashMap::new();
        let mut started: HashMap<(CommitId, String), (Instant, String)> = HashMap::new();
        for (at, e) in &self.events {
            match e {
                EngineEvent::RunQueued { commit, .. } => {
                    queued.insert(commit.clone(), *at);
                }
                EngineEvent::StepFinished {
                    commit,
                    step,
                    status: StepStatus::Success,
                    ..
                } => {
                    succeeded.insert((commit.clone(), step.clone()), *at);
                }
                EngineEvent::StepStarted {
                    commit,
                    step,
                    runner,
                    ..
                } => {
                    started
                        .entry((commit.clone(), step.clone()))
                        .or_insert((*at, runner.clone()));
                }
                _ => {}
            }
        }
        let mut merged: Vec<(usize, &TraceEvent)> = self
            .traces
            .iter()
            .enumerate()
            .flat_map(|(r, t)| t.iter().map(move |e| (r, e)))
            .collect();
        merged.sort_by_key(|(_, e)| e.order);
        let n = self.traces.len();
        // Counts per runner and class after all trace events at or before `t`.
        let counts_at = |t: Instant| {
            let mut counts = vec![vec![0u32; classes.len()]; n];
            for (r, e) in merged.iter().take_while(|(_, e)| e.at <= t) {
                let c = self.class_of(&e.step);
                if e.kind == TraceKind::Start {
                    counts[*r][c] += 1;
                } else {
                    counts[*r][c] -= 1;
                }
            }
            counts
        };
        for run in &self.runs {
            let id = run.id().clone();
            for (i, step) in run.steps.iter().enumerate() {
                let Some((start, _)) = started.get(&(id.clone(), step.name.clone())) else {
                    continue;
                };
                let ready = self
                    .pipeline
                    .needs_of(i)
                    .iter()
                    .map(|&j| {
                        succeeded
                            .get(&(id.clone(), run.steps[j].name.clone()))
                            .copied()
                    })
                    .chain([queued.get(&id).copied()])
                    .collect::<Option<Vec<Instant>>>()
                    .and_then(|v| v.into_iter().max())
                    .ok_or_else(|| format!("{id} {}: started with a need unmet", step.name))?;
                if *start <= ready {
                    continue;
                }
                let c = self.pipeline.class_of(i);
                // While the run waited in the store behind a full memory, its
                // steps may wait whatever the permits.
                let room = common::memory_room_from(&self.events, &self.engine, &id, ready);
                let out_of_memory = |t: Instant| room.is_none_or(|room| t < room);
                let Some(limit) = classes[c].limit else {
                    let checkpoints = std::iter::once(ready).chain(
                        self.events
                            .iter()
                            .map(|(at, _)| *at)
                            .filter(|&at| at > ready && at < *start),
                    );
                    if let Some(t) = checkpoints.into_iter().find(|&t| !out_of_memory(t)) {
                        return Err(format!(
                            "{id} {} (unlimited) waited at {:?} while memory had room for its run",
                            step.name,
                            t.duration_since(self.t0)
                        ));
                    }
                    continue;
                };
                let allowed: Vec<usize> = match self.pipeline.same_runner_as(i) {
                    Some(j) => {
                        let target = run.steps[j]
                            .attempts
                            .iter()
                            .find(|a| a.outcome == AttemptOutcome::Success)
                            .and_then(|a| a.runner.clone());
                        (0..n).filter(|&r| Some(runner_id(r)) == target).collect()
                    }
                    None => (0..n).collect(),
                };
                let checkpoints = std::iter::once(ready).chain(
                    merged
                        .iter()
                        .map(|(_, e)| e.at)
                        .filter(|&at| at > ready && at < *start),
                );
                for t in checkpoints {
                    let counts = counts_at(t);
                    let full = match classes[c].scope {
                        Scope::Pool => counts.iter().map(|rc| rc[c]).sum::<u32>() >= limit,
                        Scope::Runner => allowed.iter().all(|&r| counts[r][c] >= limit),
                    };
                    if !full && !out_of_memory(t) {
                        return Err(format!(
                            "{id} {} ready at {:?} started at {:?}, but at {:?} a runner it may use had a free permit: {counts:?}",
                            step.name,
                            ready.duration_since(self.t0),
                            start.duration_since(self.t0),
                            t.duration_since(self.t0)
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A random pipeline of 1–5 steps: needs on earlier steps, random limits and
/// scopes, some steps in the shared group `g`, some pinned to a need.
fn pipeline() -> impl Strategy<Value = Pipeline> {
    (1usize..=5).prop_flat_map(|n| {
        (
            proptest::collection::vec(proptest::collection::vec(prop::bool::weighted(0.4), 5), n),
            proptest::collection::vec((0u8..4, prop::bool::weighted(0.3)), n),
            proptest::collection::vec(prop::bool::weighted(0.25), n),
            (0u8..4, prop::bool::ANY),
            proptest::collection::vec(prop::bool::weighted(0.5), n),
        )
            .prop_map(move |(needs, conc, grouped, group, pin)| {
                let steps = (0..n)
                    .map(|i| {
                        let mut s = if grouped[i] {
                            let scope = if group.1 { Scope::Pool } else { Scope::Runner };
                            StepSpec::new(format!("s{i}"), common::concurrency(group.0))
                                .group("g")
                                .scope(scope)
                        } else {
                            let scope = if conc[i].1 {
                                Scope::Pool
                            } else {
                                Scope::Runner
                            };
                            StepSpec::new(format!("s{i}"), common::concurrency(conc[i].0))
                                .scope(scope)
                        };
                        let mut first_need = None;
                        for (j, &need) in needs[i].iter().enumerate().take(i) {
                            if need {
                                s = s.needs(format!("s{j}"));
                                first_need.get_or_insert(j);
                            }
                        }
                        if pin[i]
                            && let Some(j) = first_need
                        {
                            s = s.same_runner_as(format!("s{j}"));
                        }
                        s
                    })
                    .collect();
                Pipeline::new(steps).unwrap()
            })
    })
}

fn arrivals() -> impl Strategy<Value = Vec<(Duration, Vec<Commit>)>> {
    proptest::collection::vec((0u64..500, 1usize..=4), 1..=10).prop_map(|batches| {
        let mut at = Duration::ZERO;
        let mut next = 0usize;
        batches
            .into_iter()
            .map(|(gap, size)| {
                at += Duration::from_millis(gap);
                let commits = (0..size)
                    .map(|_| {
                        next += 1;
                        Commit::bare(format!("{:08x}", next - 1))
                    })
                    .collect();
                (at, commits)
            })
            .collect()
    })
}

fn scenario() -> impl Strategy<Value = PoolScenario> {
    (
        pipeline(),
        arrivals(),
        1usize..=4,
        any::<u64>(),
        (
            0u64..300,
            0.0f64..0.5,
            0.0f64..0.25,
            prop::bool::weighted(0.2),
        ),
        proptest::collection::vec((0usize..4, 0u64..6_000, 100u64..4_000), 0..3),
        (
            1usize..=6,
            prop::bool::ANY,
            prop::bool::weighted(0.3),
            prop_oneof![1usize..=3, Just(512)],
        ),
    )
        .prop_map(
            |(
                pipeline,
                batches,
                n,
                seed,
                (max_ms, fail, crash, timeout),
                outages,
                (cap, capped, short, window),
            )| {
                let behaviour = StepBehaviour {
                    min_ms: 0,
                    max_ms,
                    fail_rate: fail,
                    crash_rate: crash,
                    reject_rate: 0.0,
                };
                PoolScenario {
                    pipeline,
                    runners: (0..n)
                        .map(|r| SimRunnerConfig {
                            seed: seed.wrapping_add(r as u64),
                            steps: HashMap::new(),
                            default_step: behaviour.clone(),
                            downtime_ms: (50, 1_500),
                        })
                        .collect(),
                    outages: outages
                        .into_iter()
                        .map(|(r, at, len)| {
                            (r % n, Duration::from_millis(at), Duration::from_millis(len))
                        })
                        .collect(),
                    engine: EngineConfig {
                        max_attempts: 4,
                        // Often a window of one to three runs, the rest in
                        // the store.
                        active_runs: window,
                        retry_backoff: Duration::from_millis(50),
                        retry_backoff_max: Duration::from_millis(400),
                        max_in_flight: if capped { cap } else { 1_000 },
                        step_timeout: if timeout {
                            Duration::from_millis(max_ms / 2 + 1)
                        } else {
                            EngineConfig::default().step_timeout
                        },
                        unreachable_limit: if short {
                            Duration::from_secs(2)
                        } else {
                            Duration::from_secs(600)
                        },
                        probe_interval: Duration::from_millis(20),
                        probe_interval_max: Duration::from_millis(500),
                        ..EngineConfig::default()
                    },
                    batches,
                }
            },
        )
}

/// Scenarios where every step gets one attempt: no crashes, outages,
/// timeouts or binding caps (failures still skip dependents).
fn clean_scenario() -> impl Strategy<Value = PoolScenario> {
    scenario().prop_map(|mut s| {
        for r in &mut s.runners {
            r.default_step.crash_rate = 0.0;
        }
        s.outages.clear();
        s.engine.step_timeout = EngineConfig::default().step_timeout;
        s.engine.max_in_flight = 1_000;
        s
    })
}

proptest! {
    #![proptest_config(common::cases(128))]

    /// Work conservation across the pool: a ready step waits only while every
    /// runner it may use is full for its class, or while its run waits in the
    /// store behind a full memory; and memory never holds more runs under way
    /// than its ceiling.
    #[test]
    fn ready_steps_wait_only_while_their_runners_are_full(s in clean_scenario()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_work_conserving(), Ok(()));
        prop_assert_eq!(common::check_memory_ceiling(&o.events, &o.engine), Ok(()));
    }

    /// Per-runner classes are limited on each runner, pool-wide classes across
    /// the pool, and each runner's cap holds, whatever the faults.
    #[test]
    fn limits_hold_per_runner_and_across_the_pool(s in scenario()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_limits(), Ok(()));
    }

    /// Every attempt names the runner that really ran it; nothing is sent
    /// twice or recorded unsent; every commit ends once; crashes are lost
    /// attempts on the runner that crashed, never failures.
    #[test]
    fn attempts_record_their_runner_and_crashes_stay_lost(s in scenario()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_attempts_match_traces(), Ok(()));
        prop_assert_eq!(o.check_runs(), Ok(()));
        prop_assert_eq!(o.check_started_events(), Ok(()));
    }

    /// A pinned step runs only on the runner where the step it names succeeded.
    #[test]
    fn pinned_steps_run_where_their_target_ran(s in scenario()) {
        let o = simulate(&s);
        prop_assert_eq!(o.check_pins(), Ok(()));
    }
}

// ----- scenarios ------------------------------------------------------------

fn fixed(ms: u64) -> SimRunnerConfig {
    SimRunnerConfig {
        seed: 1,
        steps: HashMap::new(),
        default_step: StepBehaviour::green(ms, ms),
        downtime_ms: (0, 0),
    }
}

fn at_once(n: usize) -> Vec<(Duration, Vec<Commit>)> {
    vec![(
        Duration::ZERO,
        (0..n).map(|i| Commit::bare(format!("{i:08x}"))).collect(),
    )]
}

/// Start times of each runner's requests of `step`, per runner id.
fn starts(o: &PoolOutcome, step: &str) -> BTreeMap<String, Vec<Instant>> {
    let mut out = BTreeMap::new();
    for (r, trace) in o.traces.iter().enumerate() {
        out.insert(
            runner_id(r),
            trace
                .iter()
                .filter(|e| e.kind == TraceKind::Start && e.step == step)
                .map(|e| e.at)
                .collect(),
        );
    }
    out
}

#[test]
fn three_runners_run_three_exclusive_builds_at_once_one_on_each() {
    let s = PoolScenario {
        pipeline: Pipeline::standard(),
        runners: vec![fixed(100); 3],
        outages: Vec::new(),
        engine: EngineConfig::default(),
        batches: at_once(6),
    };
    let o = simulate(&s);
    let builds = starts(&o, "build");
    for (runner, at) in &builds {
        assert_eq!(at.len(), 2, "{runner} ran {} builds: {builds:?}", at.len());
        assert_eq!(at[1] - at[0], Duration::from_millis(100), "{builds:?}");
    }
    let first: HashSet<Instant> = builds.values().map(|v| v[0]).collect();
    assert_eq!(first.len(), 1, "the first three builds start together");
    assert!(o.runs.iter().all(|r| r.status == RunStatus::Success));
}

#[test]
fn a_pool_wide_class_runs_one_at_a_time_across_runners() {
    let pipeline = Pipeline::new(vec![
        StepSpec::new("build", Concurrency::Exclusive),
        StepSpec::new("deploy", Concurrency::Exclusive)
            .scope(Scope::Pool)
            .needs("build"),
    ])
    .unwrap();
    let s = PoolScenario {
        pipeline,
        runners: vec![fixed(100); 3],
        outages: Vec::new(),
        engine: EngineConfig::default(),
        batches: at_once(3),
    };
    let o = simulate(&s);
    let mut deploys: Vec<Instant> = starts(&o, "deploy").into_values().flatten().collect();
    deploys.sort();
    assert_eq!(deploys.len(), 3);
    assert_eq!(deploys[1] - deploys[0], Duration::from_millis(100));
    assert_eq!(deploys[2] - deploys[1], Duration::from_millis(100));
    // Every runner is idle when each deploy starts: ties go to the first
    // runner in pool order.
    let used: HashSet<_> = o
        .runs
        .iter()
        .flat_map(|r| r.steps[1].attempts.iter().map(|a| a.runner.clone()))
        .collect();
    assert_eq!(used, HashSet::from([Some("r0".to_owned())]));
}

fn pinned_pipeline() -> Pipeline {
    Pipeline::new(vec![
        StepSpec::new("build", Concurrency::Exclusive),
        StepSpec::new("test", Concurrency::Exclusive)
            .needs("build")
            .same_runner_as("build"),
    ])
    .unwrap()
}

#[test]
fn a_pinned_step_waits_for_its_runner_instead_of_going_elsewhere() {
    // One commit: build on r0 (the first in pool order), then r0 goes down for
    // two seconds just as the test becomes ready; r1 is idle all along.
    let s = PoolScenario {
        pipeline: pinned_pipeline(),
        runners: vec![fixed(100); 2],
        outages: vec![(0, Duration::from_millis(100), Duration::from_secs(2))],
        engine: EngineConfig {
            probe_interval: Duration::from_millis(20),
            ..EngineConfig::default()
        },
        batches: at_once(1),
    };
    let o = simulate(&s);
    let run = &o.runs[0];
    assert_eq!(run.status, RunStatus::Success, "{:?}", run.steps);
    let test_runners: Vec<_> = run.steps[1]
        .attempts
        .iter()
        .map(|a| a.runner.clone())
        .collect();
    assert_eq!(
        test_runners,
        vec![Some("r0".to_owned())],
        "{:?}",
        run.steps[1]
    );
    assert!(starts(&o, "test")["r1"].is_empty());
    let test_start = starts(&o, "test")["r0"][0];
    let build_start = starts(&o, "build")["r0"][0];
    assert!(
        test_start - build_start >= Duration::from_millis(2_100),
        "the test waited for r0 to come back"
    );
}

#[test]
fn a_pinned_step_ends_error_when_its_runner_stays_down_past_the_limit() {
    let s = PoolScenario {
        pipeline: pinned_pipeline(),
        runners: vec![fixed(100); 2],
        outages: vec![(0, Duration::from_millis(100), Duration::from_secs(60))],
        engine: EngineConfig {
            unreachable_limit: Duration::from_secs(5),
            probe_interval: Duration::from_millis(20),
            ..EngineConfig::default()
        },
        batches: at_once(1),
    };
    let o = simulate(&s);
    let test = &o.runs[0].steps[1];
    assert_eq!(test.status, StepStatus::Error);
    assert!(test.attempts.is_empty(), "{test:?}");
    let reason = test.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("runner r0"), "{reason}");
}

#[test]
fn steps_go_to_the_runners_that_are_up_while_one_is_down() {
    // r0 is down from the start for ten seconds: every build goes to r1 and
    // r2, and nothing waits for r0.
    let s = PoolScenario {
        pipeline: Pipeline::standard(),
        runners: vec![fixed(100); 3],
        outages: vec![(0, Duration::ZERO, Duration::from_secs(10))],
        engine: EngineConfig {
            probe_interval: Duration::from_millis(20),
            ..EngineConfig::default()
        },
        batches: at_once(4),
    };
    let o = simulate(&s);
    let builds = starts(&o, "build");
    assert!(builds["r0"].is_empty(), "{builds:?}");
    assert_eq!(builds["r1"].len() + builds["r2"].len(), 4);
    let last = builds.values().flatten().max().unwrap();
    let first = builds.values().flatten().min().unwrap();
    assert_eq!(*last - *first, Duration::from_millis(100), "{builds:?}");
    assert!(o.runs.iter().all(|r| r.status == RunStatus::Success));
    let down: Vec<_> = o
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            EngineEvent::RunnerDown { runner, .. } => Some(runner.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(down, vec!["r0".to_owned()]);
}

#[test]
fn a_step_lost_in_a_crash_is_retried_on_another_runner_at_once() {
    // r0 crashes after every build and stays down for ten seconds; r1 never
    // crashes. The lost build is retried on r1 without waiting for r0.
    let mut crashing = fixed(100);
    crashing.default_step.crash_rate = 1.0;
    crashing.downtime_ms = (10_000, 10_000);
    let s = PoolScenario {
        pipeline: Pipeline::new(vec![StepSpec::new("build", Concurrency::Exclusive)]).unwrap(),
        runners: vec![crashing, fixed(100)],
        outages: Vec::new(),
        engine: EngineConfig::default(),
        batches: at_once(2),
    };
    let o = simulate(&s);
    for run in &o.runs {
        assert_eq!(run.status, RunStatus::Success, "{:?}", run.steps);
    }
    let lost: Vec<_> = o
        .runs
        .iter()
        .flat_map(|r| r.steps[0].attempts.iter())
        .filter(|a| a.outcome == AttemptOutcome::Lost)
        .collect();
    assert_eq!(lost.len(), 1, "one build was lost in r0's crash");
    assert_eq!(lost[0].runner.as_deref(), Some("r0"));
    let r1 = &starts(&o, "build")["r1"];
    assert_eq!(r1.len(), 2, "r1 ran its own build and the retry");
    assert!(r1[1] - r1[0] <= Duration::from_millis(100), "{r1:?}");
}

#[test]
fn the_engine_reports_each_runners_state() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let sims = vec![SimRunner::new(fixed(1_000)), SimRunner::new(fixed(1_000))];
        sims[1].take_down_until(Instant::now() + Duration::from_secs(3600));
        let engine = Engine::with_pool(
            Pipeline::new(vec![StepSpec::new("lint", Concurrency::Unlimited)]).unwrap(),
            pool_of(&sims),
            Arc::new(MemoryStore::new()),
            EngineConfig::default(),
        )
        .unwrap();
        let handle = engine.handle();
        let source = ScriptedSource::new(vec![(Duration::ZERO, at_once(2).remove(0).1)]);
        let run = tokio::spawn(engine.run(Box::new(source), std::future::pending()));
        // Poll (in virtual time) until both lints are running on r0 and r1
        // has been seen down.
        let deadline = Instant::now() + Duration::from_millis(900);
        let statuses = loop {
            let s = handle.runners().await.unwrap();
            if s[0].in_flight == 2 && s[1].state != RunnerState::Up {
                break s;
            }
            assert!(Instant::now() < deadline, "never settled: {s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(statuses[0].id, "r0");
        assert_eq!(statuses[0].state, RunnerState::Up);
        assert_eq!(statuses[0].in_flight_by_class.get("lint"), Some(&2));
        assert_eq!(statuses[1].outages, 1);
        assert!(statuses[1].last_error.is_some());
        run.abort();
    });
}

#[test]
fn a_pin_to_a_runner_no_longer_in_the_pool_ends_the_step_error_at_restart() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        use ci_engine::{Attempt, RunStore};
        // A run stored by an engine whose pool had runner "gone": build
        // succeeded there, test had not started.
        let store = Arc::new(MemoryStore::new());
        let pipeline = pinned_pipeline();
        let mut run = Run::new(Commit::bare("00000001"), 0, &pipeline);
        let mut build = Attempt::new(1, AttemptOutcome::Success, 1);
        build.runner = Some("gone".into());
        run.steps[0].attempts.push(build);
        run.steps[0].status = StepStatus::Success;
        run.status = RunStatus::Running;
        store.insert_run(&run).await.unwrap();

        let sims = vec![SimRunner::new(fixed(100))];
        let engine = Engine::with_pool(
            pipeline,
            pool_of(&sims),
            store.clone(),
            EngineConfig::default(),
        )
        .unwrap();
        engine
            .run(
                Box::new(ScriptedSource::new(Vec::new())),
                std::future::pending(),
            )
            .await
            .unwrap();
        let run = store.get_run("00000001").await.unwrap();
        assert_eq!(run.status, RunStatus::Error);
        assert_eq!(run.steps[1].status, StepStatus::Error);
        let reason = run.steps[1].reason.clone().unwrap_or_default();
        assert!(
            reason.contains("runner gone") && reason.contains("no longer in the pool"),
            "{reason}"
        );
        assert!(sims[0].trace().is_empty(), "nothing was sent");
    });
}
