//! Shared harness for the engine's property and simulation tests: run an engine
//! on a simulated runner in paused time, then check the invariants of
//! DESIGN.md against the store and the runner's trace.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{ScriptedSource, SimRunner, SimRunnerConfig, TraceEvent, TraceKind};
use ci_engine::{
    AttemptOutcome, Commit, CommitId, Engine, EngineConfig, MemoryStore, Pipeline, Run, RunStatus,
    StepStatus,
};
use tokio::time::Instant;

/// Everything a scenario needs.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub pipeline: Pipeline,
    pub runner: SimRunnerConfig,
    pub engine: EngineConfig,
    /// Batches of commits at offsets from the start.
    pub batches: Vec<(Duration, Vec<Commit>)>,
    /// Outages: (start offset, length) during which the runner is unreachable.
    pub outages: Vec<(Duration, Duration)>,
    /// Commits to cancel, at offsets.
    pub cancels: Vec<(Duration, CommitId)>,
}

/// What a scenario left behind.
pub struct Outcome {
    pub pipeline: Pipeline,
    pub engine: EngineConfig,
    pub runs: Vec<Run>,
    pub trace: Vec<TraceEvent>,
    pub arrivals: HashMap<CommitId, Instant>,
    pub handed: Vec<CommitId>,
    pub crashes: u64,
    pub cancelled: HashSet<CommitId>,
}

/// When each commit of `scenario` arrives (its batch's offset from `t0`), and
/// every commit in the order handed out.
fn arrivals_from(scenario: &Scenario, t0: Instant) -> (HashMap<CommitId, Instant>, Vec<CommitId>) {
    let mut arrivals = HashMap::new();
    let mut handed = Vec::new();
    for (at, batch) in &scenario.batches {
        for c in batch {
            arrivals.insert(c.id.clone(), t0 + *at);
            handed.push(c.id.clone());
        }
    }
    (arrivals, handed)
}

/// A paused-time runtime.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Runs `scenario` to completion in paused time.
pub fn simulate(scenario: &Scenario) -> Outcome {
    paused_runtime().block_on(simulate_async(scenario))
}

/// Runs `scenario` to completion on the caller's (paused-time) runtime: an
/// engine on a [`SimRunner`] and a [`MemoryStore`], fed by a scripted source.
pub async fn simulate_async(scenario: &Scenario) -> Outcome {
    let store = Arc::new(MemoryStore::new());
    let runner = SimRunner::new(scenario.runner.clone());
    let engine = Engine::new(
        scenario.pipeline.clone(),
        runner.clone(),
        store.clone(),
        scenario.engine.clone(),
    );
    let handle = engine.handle();
    let t0 = Instant::now();
    let (arrivals, handed) = arrivals_from(scenario, t0);
    for &(at, len) in &scenario.outages {
        let runner = runner.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + at).await;
            runner.take_down_until(Instant::now() + len);
        });
    }
    let mut cancelled = HashSet::new();
    let mut cancel_tasks = Vec::new();
    for (at, commit) in scenario.cancels.clone() {
        let handle = handle.clone();
        cancel_tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(t0 + at).await;
            (commit.clone(), handle.cancel(&commit).await)
        }));
    }
    let source = ScriptedSource::new(scenario.batches.clone());
    // A week of virtual time: a hang fails the test instead of blocking it.
    let result = tokio::time::timeout(
        Duration::from_secs(7 * 24 * 3600),
        engine.run(Box::new(source), std::future::pending()),
    )
    .await;
    assert!(
        result.is_ok(),
        "the engine did not finish within a virtual week"
    );
    result.unwrap().unwrap();
    for task in cancel_tasks {
        if let Ok((commit, Ok(ci_engine::engine::CancelOutcome::Cancelled))) = task.await {
            cancelled.insert(commit);
        }
    }
    Outcome {
        pipeline: scenario.pipeline.clone(),
        engine: scenario.engine.clone(),
        runs: store.all_runs(),
        trace: runner.trace(),
        arrivals,
        handed,
        crashes: runner.crashes(),
        cancelled,
    }
}

fn is_end(kind: TraceKind) -> bool {
    kind != TraceKind::Start
}

impl Outcome {
    fn limit_of(&self, step: &str) -> (usize, Option<u32>) {
        let i = self.pipeline.position(step).unwrap();
        let c = self.pipeline.class_of(i);
        (c, self.pipeline.classes()[c].limit)
    }

    /// Invariant 1: per class in flight never above its limit; globally never
    /// above the cap.
    pub fn check_class_limits(&self) -> Result<(), String> {
        let mut counts = vec![0u32; self.pipeline.classes().len()];
        let mut total = 0usize;
        for (k, e) in self.trace.iter().enumerate() {
            let (class, limit) = self.limit_of(&e.step);
            if e.kind == TraceKind::Start {
                counts[class] += 1;
                total += 1;
                if limit.is_some_and(|l| counts[class] > l) {
                    return Err(format!(
                        "event {k}: {} of class {class} in flight, limit {limit:?}",
                        counts[class]
                    ));
                }
                if total > self.engine.max_in_flight {
                    return Err(format!(
                        "event {k}: {total} in flight, cap {}",
                        self.engine.max_in_flight
                    ));
                }
            } else {
                counts[class] -= 1;
                total -= 1;
            }
        }
        Ok(())
    }

    /// Invariant 2: a step starts only after each step it needs succeeded.
    pub fn check_needs_before_start(&self) -> Result<(), String> {
        let mut succeeded: HashSet<(CommitId, String)> = HashSet::new();
        for (k, e) in self.trace.iter().enumerate() {
            match e.kind {
                TraceKind::Success => {
                    succeeded.insert((e.commit.clone(), e.step.clone()));
                }
                TraceKind::Start => {
                    let i = self.pipeline.position(&e.step).unwrap();
                    for &n in self.pipeline.needs_of(i) {
                        let need = &self.pipeline.steps()[n].name;
                        if !succeeded.contains(&(e.commit.clone(), need.clone())) {
                            return Err(format!(
                                "event {k}: {} of {} started before {need} succeeded",
                                e.step, e.commit
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Invariant 3: every commit handed out has exactly one run, terminal; no
    /// step of a commit is in flight twice at once; every attempt the store
    /// records as sent matches a request the runner saw, and vice versa.
    pub fn check_one_terminal_run_each(&self) -> Result<(), String> {
        let mut by_id: HashMap<&CommitId, usize> = HashMap::new();
        for r in &self.runs {
            *by_id.entry(r.id()).or_default() += 1;
            if !r.status.is_terminal() {
                return Err(format!("run {} ended {}", r.id(), r.status));
            }
        }
        let handed: HashSet<&CommitId> = self.handed.iter().collect();
        for c in &handed {
            if by_id.get(c) != Some(&1) {
                return Err(format!("commit {c} has {:?} runs", by_id.get(c)));
            }
        }
        if by_id.len() != handed.len() {
            return Err("a run exists for a commit never handed out".into());
        }
        let mut open: HashSet<(CommitId, String)> = HashSet::new();
        let mut starts: HashMap<(CommitId, String), Vec<u32>> = HashMap::new();
        for (k, e) in self.trace.iter().enumerate() {
            let key = (e.commit.clone(), e.step.clone());
            if e.kind == TraceKind::Start {
                if !open.insert(key.clone()) {
                    return Err(format!(
                        "event {k}: {} of {} in flight twice",
                        e.step, e.commit
                    ));
                }
                starts.entry(key).or_default().push(e.attempt);
            } else {
                open.remove(&key);
            }
        }
        for r in &self.runs {
            for s in &r.steps {
                let seen = starts
                    .get(&(r.id().clone(), s.name.clone()))
                    .cloned()
                    .unwrap_or_default();
                // A cancel or a stop can land between the dispatch and the
                // request leaving: such an attempt is recorded, and rightly so,
                // without the runner ever seeing it.
                let recorded: Vec<u32> = s
                    .attempts
                    .iter()
                    .filter(|a| {
                        seen.contains(&a.number)
                            || !matches!(
                                a.outcome,
                                AttemptOutcome::Cancelled | AttemptOutcome::Interrupted
                            )
                    })
                    .map(|a| a.number)
                    .collect();
                if recorded != seen {
                    return Err(format!(
                        "{} of {}: store has attempts {recorded:?}, runner saw {seen:?}",
                        s.name,
                        r.id()
                    ));
                }
                if s.attempts
                    .iter()
                    .any(|a| a.outcome == AttemptOutcome::Running)
                {
                    return Err(format!(
                        "{} of {} has an attempt still running",
                        s.name,
                        r.id()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Invariant 4: status, failed_steps and step results agree; a lost attempt
    /// never becomes a failure; a step ends error only with reason.
    pub fn check_status_consistency(&self) -> Result<(), String> {
        for r in &self.runs {
            let failed: Vec<String> = r
                .steps
                .iter()
                .filter(|s| s.status.is_failed())
                .map(|s| s.name.clone())
                .collect();
            if failed != r.failed_steps {
                return Err(format!(
                    "{}: failed_steps {:?} but steps say {failed:?}",
                    r.id(),
                    r.failed_steps
                ));
            }
            if r.status != r.derived_status() {
                return Err(format!(
                    "{}: status {} but steps imply {}",
                    r.id(),
                    r.status,
                    r.derived_status()
                ));
            }
            let cancelled = self.cancelled.contains(r.id());
            if cancelled != (r.status == RunStatus::Cancelled) {
                return Err(format!(
                    "{}: cancelled={cancelled} but status {}",
                    r.id(),
                    r.status
                ));
            }
            for (i, s) in r.steps.iter().enumerate() {
                let last = s.attempts.last().map(|a| a.outcome);
                let ok = match s.status {
                    StepStatus::Success => last == Some(AttemptOutcome::Success),
                    StepStatus::Failure => last == Some(AttemptOutcome::Failure),
                    StepStatus::Error => {
                        last == Some(AttemptOutcome::Rejected)
                            || s.counted_attempts() >= self.engine.max_attempts
                            || s.reason
                                .as_deref()
                                .is_some_and(|r| r.contains("unreachable"))
                    }
                    StepStatus::Skipped => {
                        s.attempts.is_empty()
                            && self.pipeline.needs_of(i).iter().any(|&n| {
                                let st = r.steps[n].status;
                                st.is_terminal() && st != StepStatus::Success
                            })
                    }
                    StepStatus::Cancelled => cancelled,
                    StepStatus::Pending | StepStatus::Running => false,
                };
                if !ok {
                    return Err(format!(
                        "{}: step {} is {} with attempts {:?}",
                        r.id(),
                        s.name,
                        s.status,
                        s.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>()
                    ));
                }
                if s.counted_attempts() > self.engine.max_attempts {
                    return Err(format!(
                        "{}: step {} made {} attempts",
                        r.id(),
                        s.name,
                        s.counted_attempts()
                    ));
                }
                if s.attempts
                    .iter()
                    .filter(|a| a.outcome == AttemptOutcome::Success)
                    .count()
                    > 1
                {
                    return Err(format!("{}: step {} succeeded twice", r.id(), s.name));
                }
            }
        }
        Ok(())
    }

    /// Start time of each (commit, step) and the time it became ready, for
    /// scenarios without retries (each step has at most one attempt).
    fn ready_and_start(&self) -> Vec<(u64, usize, Instant, Option<Instant>)> {
        let seq: HashMap<&CommitId, u64> = self.runs.iter().map(|r| (r.id(), r.seq)).collect();
        let mut start: HashMap<(CommitId, String), Instant> = HashMap::new();
        let mut success: HashMap<(CommitId, String), Instant> = HashMap::new();
        for e in &self.trace {
            let key = (e.commit.clone(), e.step.clone());
            match e.kind {
                TraceKind::Start => {
                    start.entry(key).or_insert(e.at);
                }
                TraceKind::Success => {
                    success.insert(key, e.at);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for r in &self.runs {
            for (i, spec) in self.pipeline.steps().iter().enumerate() {
                let mut ready = self.arrivals[r.id()];
                let mut all_needs = true;
                for &n in self.pipeline.needs_of(i) {
                    match success.get(&(r.id().clone(), self.pipeline.steps()[n].name.clone())) {
                        Some(&t) => ready = ready.max(t),
                        None => all_needs = false,
                    }
                }
                if all_needs {
                    out.push((
                        seq[r.id()],
                        i,
                        ready,
                        start.get(&(r.id().clone(), spec.name.clone())).copied(),
                    ));
                }
            }
        }
        out
    }

    /// Invariant 5 (scenarios without crashes, outages, cancels, and with no
    /// binding global cap): while a class has a free permit, no ready step of it
    /// waits for any positive length of time.
    pub fn check_work_conserving(&self) -> Result<(), String> {
        // Per class: (time, in-flight count after the last event at that time).
        let mut timeline: Vec<BTreeMap<Instant, u32>> =
            vec![BTreeMap::new(); self.pipeline.classes().len()];
        let mut counts = vec![0u32; self.pipeline.classes().len()];
        for e in &self.trace {
            let (c, _) = self.limit_of(&e.step);
            if e.kind == TraceKind::Start {
                counts[c] += 1;
            } else if is_end(e.kind) {
                counts[c] -= 1;
            }
            timeline[c].insert(e.at, counts[c]);
        }
        for (seq, i, ready, start) in self.ready_and_start() {
            let Some(start) = start else {
                return Err(format!(
                    "step {i} of run {seq} became ready and never started"
                ));
            };
            if start <= ready {
                continue;
            }
            let c = self.pipeline.class_of(i);
            let limit = self.pipeline.classes()[c].limit;
            let points: Vec<(Instant, u32)> = timeline[c].iter().map(|(&t, &n)| (t, n)).collect();
            // The count before the first event is 0.
            let mut prev_t: Option<Instant> = None;
            let mut prev_n = 0u32;
            for &(t, n) in points.iter().chain(std::iter::once(&(start, u32::MAX))) {
                let lo = prev_t.map_or(ready, |p| p.max(ready));
                let hi = t.min(start);
                if lo < hi && limit.is_none_or(|l| prev_n < l) {
                    return Err(format!(
                        "step {i} of run {seq} ready at {:?} waited until {:?} while its class had {prev_n} of {limit:?} in flight",
                        ready - self.t0(),
                        start - self.t0()
                    ));
                }
                if t >= start {
                    break;
                }
                prev_t = Some(t);
                prev_n = n;
            }
        }
        Ok(())
    }

    /// Invariant 6 (same scenarios as 5): in an exclusive class, a step of an
    /// older commit that was ready before a newer one started went first.
    pub fn check_oldest_first(&self) -> Result<(), String> {
        let rs = self.ready_and_start();
        for &(sa, ia, ready_a, start_a) in &rs {
            let ca = self.pipeline.class_of(ia);
            if self.pipeline.classes()[ca].limit != Some(1) {
                continue;
            }
            for &(sb, ib, _, start_b) in &rs {
                if self.pipeline.class_of(ib) != ca || (sa, ia) >= (sb, ib) {
                    continue;
                }
                let Some(start_b) = start_b else { continue };
                if ready_a < start_b && start_a.is_none_or(|s| s > start_b) {
                    return Err(format!(
                        "step {ia} of run {sa} was ready before step {ib} of newer run {sb} started, but went later"
                    ));
                }
            }
        }
        Ok(())
    }

    fn t0(&self) -> Instant {
        self.arrivals
            .values()
            .min()
            .copied()
            .unwrap_or_else(Instant::now)
    }

    /// All invariants that hold in every scenario.
    pub fn check_always(&self) -> Result<(), String> {
        self.check_class_limits()?;
        self.check_needs_before_start()?;
        self.check_one_terminal_run_each()?;
        self.check_status_consistency()
    }
}

/// Runs `scenario` with the engine stopped (graceful shutdown with `grace`) at
/// each offset in `stops` and started again at once on the same store and
/// runner, as a restarted server would be. Each new engine's source hands out
/// again every batch due by then (the store knows which have runs), then the
/// rest on schedule.
pub fn simulate_with_restarts(scenario: &Scenario, stops: &[Duration], grace: Duration) -> Outcome {
    paused_runtime().block_on(async {
        let store = Arc::new(MemoryStore::new());
        let runner = SimRunner::new(scenario.runner.clone());
        let t0 = Instant::now();
        let (arrivals, handed) = arrivals_from(scenario, t0);
        let config = EngineConfig {
            shutdown_grace: grace,
            ..scenario.engine.clone()
        };
        let mut stops: Vec<Duration> = stops.to_vec();
        stops.sort();
        let mut segments: Vec<Option<Duration>> = stops.into_iter().map(Some).collect();
        segments.push(None);
        for stop in segments {
            let elapsed = Instant::now() - t0;
            let mut due = Vec::new();
            let mut later = Vec::new();
            for (at, batch) in &scenario.batches {
                if *at <= elapsed {
                    due.extend(batch.iter().cloned());
                } else {
                    later.push((*at - elapsed, batch.clone()));
                }
            }
            let mut batches = vec![(Duration::ZERO, due)];
            batches.extend(later);
            let engine = Engine::new(
                scenario.pipeline.clone(),
                runner.clone(),
                store.clone(),
                config.clone(),
            );
            let shutdown = async move {
                match stop {
                    Some(at) => tokio::time::sleep_until(t0 + at).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::time::timeout(
                Duration::from_secs(7 * 24 * 3600),
                engine.run(Box::new(ScriptedSource::new(batches)), shutdown),
            )
            .await;
            assert!(
                result.is_ok(),
                "the engine did not finish within a virtual week"
            );
            result.unwrap().unwrap();
        }
        Outcome {
            pipeline: scenario.pipeline.clone(),
            engine: config,
            runs: store.all_runs(),
            trace: runner.trace(),
            arrivals,
            handed,
            crashes: runner.crashes(),
            cancelled: HashSet::new(),
        }
    })
}
