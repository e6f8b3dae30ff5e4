//! Shared harness for the engine's property and simulation tests: run an engine
//! on a simulated runner in paused time, then check the scheduler's invariants
//! (listed in docs/architecture.md) against the store, the events and the
//! runner's trace.

#![allow(dead_code, clippy::unwrap_used)]

pub mod scripted;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{ScriptedSource, SimRunner, SimRunnerConfig, TraceEvent, TraceKind};
use ci_engine::{
    AttemptOutcome, Commit, CommitId, Engine, EngineConfig, EngineEvent, MemoryStore, Pipeline,
    Run, RunActionKind, RunStatus, StepStatus,
};
use tokio::time::Instant;

/// `default` proptest cases, or `PROPTEST_CASES` when it is set (for long
/// runs); no failure files.
pub fn cases(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// A concurrency from a drawn code: 0 unlimited, 1 exclusive, n a limit of n.
pub fn concurrency(code: u8) -> ci_engine::Concurrency {
    match code {
        0 => ci_engine::Concurrency::Unlimited,
        1 => ci_engine::Concurrency::Exclusive,
        n => ci_engine::Concurrency::Limit(u32::from(n)),
    }
}

/// A value over time: each entry is the value after the last change at its time.
type Timeline<T> = BTreeMap<Instant, T>;

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
    /// Commits to retry, at offsets (the source stays open until the last,
    /// so the engine is there to take them).
    pub retries: Vec<(Duration, CommitId)>,
}

/// From when on `commit`'s run, ready at `from`, had room in the engine's
/// memory: the first moment at or after `from` when fewer unfinished runs were
/// queued ahead of it (by queue position; a retry queues a run again at a new
/// position) than [`EngineConfig::memory_ceiling`]. The engine takes runs up in queue order
/// and holds at most that many in memory, so before this moment the run
/// waited in the store and its steps could not start, whatever the permits;
/// from it on, they may not wait for a free permit. `None`: never (the run
/// finished or was queued again first).
pub fn memory_room_from(
    events: &[(Instant, EngineEvent)],
    config: &EngineConfig,
    commit: &CommitId,
    from: Instant,
) -> Option<Instant> {
    let ceiling = config.memory_ceiling();
    let mut positions: HashMap<&CommitId, u64> = HashMap::new();
    let mut rest = events.iter().peekable();
    while let Some((_, e)) = rest.next_if(|(at, _)| *at <= from) {
        track_position(&mut positions, e);
    }
    let ahead = |positions: &HashMap<&CommitId, u64>| {
        let mine = positions.get(commit)?;
        Some(positions.values().filter(|&p| p < mine).count())
    };
    if ahead(&positions)? < ceiling {
        return Some(from);
    }
    for (at, e) in rest {
        track_position(&mut positions, e);
        if ahead(&positions)? < ceiling {
            return Some(*at);
        }
    }
    None
}

/// Keeps `positions` (the queue position of every unfinished run) up to date
/// with `e`.
fn track_position<'a>(positions: &mut HashMap<&'a CommitId, u64>, e: &'a EngineEvent) {
    match e {
        EngineEvent::RunQueued { commit, seq } | EngineEvent::RunRetried { commit, seq, .. } => {
            positions.insert(commit, *seq);
        }
        EngineEvent::RunFinished { commit, .. } => {
            positions.remove(commit);
        }
        _ => {}
    }
}

/// Memory bounded by design: at no moment are more runs under way (a step
/// started since the run was last queued, the run not finished) than the
/// engine may hold in memory, [`EngineConfig::memory_ceiling`], whatever the size of the
/// backlog. A run under way is in memory, so this bounds memory from below.
pub fn check_memory_ceiling(
    events: &[(Instant, EngineEvent)],
    config: &EngineConfig,
) -> Result<(), String> {
    let ceiling = config.memory_ceiling();
    let mut under_way: HashSet<&CommitId> = HashSet::new();
    for (at, e) in events {
        match e {
            EngineEvent::StepStarted { commit, .. } => {
                under_way.insert(commit);
                if under_way.len() > ceiling {
                    return Err(format!(
                        "{} runs under way at {at:?}, more than the ceiling of {ceiling} (window {})",
                        under_way.len(),
                        config.active_runs
                    ));
                }
            }
            EngineEvent::RunFinished { commit, .. } => {
                under_way.remove(commit);
            }
            _ => {}
        }
    }
    Ok(())
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
    /// Commits whose retry started a new round.
    pub retried: HashSet<CommitId>,
    /// Every event the engine sent, with the (virtual) time it was sent; empty
    /// for runs with restarts.
    pub events: Vec<(Instant, EngineEvent)>,
    /// Where in the trace each engine stopped (restarts only): a restarted
    /// engine cannot know which requests of its predecessor the runner still
    /// works on, so the checks take those as ended at the stop.
    pub stops_at: Vec<usize>,
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
        EngineConfig {
            // Room for every event of a scenario: the recorder must not lag.
            event_capacity: 1 << 16,
            ..scenario.engine.clone()
        },
    )
    .expect("a valid engine configuration");
    let handle = engine.handle();
    let recorder = record_events(handle.subscribe());
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
    let mut retry_tasks = Vec::new();
    for (at, commit) in scenario.retries.clone() {
        let handle = handle.clone();
        retry_tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(t0 + at).await;
            (commit.clone(), handle.retry(&commit).await)
        }));
    }
    let mut batches = scenario.batches.clone();
    if let Some(last) = scenario.retries.iter().map(|(at, _)| *at).max() {
        // An empty batch keeps the source open until the last retry is asked.
        let at = batches.last().map_or(last, |(b, _)| last.max(*b));
        batches.push((at + Duration::from_millis(1), Vec::new()));
    }
    let source = ScriptedSource::new(batches);
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
    let mut retried = HashSet::new();
    for task in retry_tasks {
        if let Ok((commit, Ok(ci_engine::RetryOutcome::Retried { .. }))) = task.await {
            retried.insert(commit);
        }
    }
    // Every sender gone, the recorder drains the channel and ends.
    drop(handle);
    let events = recorder.await.unwrap();
    Outcome {
        pipeline: scenario.pipeline.clone(),
        engine: scenario.engine.clone(),
        runs: store.all_runs(),
        trace: runner.trace(),
        arrivals,
        handed,
        crashes: runner.crashes(),
        cancelled,
        retried,
        events,
        stops_at: Vec::new(),
    }
}

/// Records every event with the virtual time it arrives at (the time it was
/// sent: paused time does not move while a woken task waits to run).
fn record_events(
    mut events: tokio::sync::broadcast::Receiver<EngineEvent>,
) -> tokio::task::JoinHandle<Vec<(Instant, EngineEvent)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match events.recv().await {
                Ok(e) => seen.push((Instant::now(), e)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return seen,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    panic!("the event recorder lagged by {n} events")
                }
            }
        }
    })
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
        for (k, e) in self.effective_trace().iter().enumerate() {
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
        for (k, e) in self.effective_trace().iter().enumerate() {
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
            // A run is cancelled when the last thing asked of it was a cancel
            // (a retry after it starts a new round); every cancel that took
            // effect is recorded.
            let cancelled = r
                .actions
                .last()
                .is_some_and(|a| a.kind == RunActionKind::Cancel);
            if cancelled != (r.status == RunStatus::Cancelled) {
                return Err(format!(
                    "{}: cancelled={cancelled} but status {}",
                    r.id(),
                    r.status
                ));
            }
            let recorded = r.actions.iter().any(|a| a.kind == RunActionKind::Cancel);
            if recorded != self.cancelled.contains(r.id()) {
                return Err(format!(
                    "{}: a cancel recorded={recorded}, answered cancelled={}",
                    r.id(),
                    self.cancelled.contains(r.id())
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
                        s.current_attempts().next().is_none()
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

    /// The trace as the checks read it: a request still open when its engine
    /// stopped counts as ended at the stop (see `stops_at`), and its real end,
    /// if the runner gives one later, is left out.
    pub fn effective_trace(&self) -> Vec<TraceEvent> {
        let mut out = Vec::with_capacity(self.trace.len());
        let mut open: HashMap<(CommitId, String, u32), TraceEvent> = HashMap::new();
        let mut closed_early: HashSet<(CommitId, String, u32)> = HashSet::new();
        let mut stops = self.stops_at.iter().copied().peekable();
        for (i, e) in self.trace.iter().enumerate() {
            while stops.peek().is_some_and(|&k| k <= i) {
                stops.next();
                let mut left: Vec<_> = open.drain().collect();
                left.sort_by(|a, b| a.0.cmp(&b.0));
                for (key, start) in left {
                    out.push(TraceEvent {
                        kind: TraceKind::Lost,
                        at: out.last().map_or(start.at, |l: &TraceEvent| l.at),
                        ..start
                    });
                    closed_early.insert(key);
                }
            }
            let key = (e.commit.clone(), e.step.clone(), e.attempt);
            if e.kind == TraceKind::Start {
                open.insert(key, e.clone());
            } else if closed_early.remove(&key) {
                continue;
            } else {
                open.remove(&key);
            }
            out.push(e.clone());
        }
        out
    }

    /// The intervals during which each step was ready and not started, from
    /// the event stream: ready when its needs have succeeded (or its run was
    /// queued, without needs); after a lost attempt, once the retry wait given
    /// in `StepFinished` has passed and the runner no longer holds that attempt;
    /// at once after a withdrawn attempt. An interval ends when the step starts
    /// or its run finishes; a step that expired waiting for an unreachable
    /// runner has its last interval dropped. Returns (run seq, step index,
    /// from, to).
    pub fn ready_intervals(&self) -> Vec<(u64, usize, Instant, Instant)> {
        let seq: HashMap<&CommitId, u64> = self.runs.iter().map(|r| (r.id(), r.seq)).collect();
        let mut answered: HashMap<(CommitId, String, u32), Instant> = HashMap::new();
        for e in &self.trace {
            if e.kind != TraceKind::Start {
                answered.insert((e.commit.clone(), e.step.clone(), e.attempt), e.at);
            }
        }
        let mut open: HashMap<(CommitId, usize), Instant> = HashMap::new();
        let mut succeeded: HashSet<(CommitId, usize)> = HashSet::new();
        let mut out = Vec::new();
        let p = &self.pipeline;
        for (at, e) in &self.events {
            let at = *at;
            match e {
                EngineEvent::RunQueued { commit, .. } => {
                    for i in 0..p.len() {
                        if p.needs_of(i).is_empty() {
                            open.insert((commit.clone(), i), at);
                        }
                    }
                }
                EngineEvent::StepStarted { commit, step, .. } => {
                    let i = p.position(step).unwrap();
                    if let Some(from) = open.remove(&(commit.clone(), i)) {
                        out.push((seq[commit], i, from, at));
                    }
                }
                EngineEvent::StepWithdrawn { commit, step, .. } => {
                    open.insert((commit.clone(), p.position(step).unwrap()), at);
                }
                EngineEvent::StepFinished {
                    commit,
                    step,
                    attempt,
                    status,
                    retry_in_ms,
                    ..
                } => {
                    let i = p.position(step).unwrap();
                    if *status == StepStatus::Success {
                        succeeded.insert((commit.clone(), i));
                        for &d in p.dependents_of(i) {
                            if p.needs_of(d)
                                .iter()
                                .all(|&n| succeeded.contains(&(commit.clone(), n)))
                            {
                                open.insert((commit.clone(), d), at);
                            }
                        }
                    } else if let Some(ms) = retry_in_ms {
                        let mut from = at + Duration::from_millis(*ms);
                        if let Some(&end) = answered.get(&(commit.clone(), step.clone(), *attempt))
                        {
                            from = from.max(end);
                        }
                        open.insert((commit.clone(), i), from);
                    }
                }
                EngineEvent::RunFinished { commit, .. } => {
                    for i in 0..p.len() {
                        if let Some(from) = open.remove(&(commit.clone(), i)) {
                            let run = self.runs.iter().find(|r| r.id() == commit).unwrap();
                            let expired = run.steps[i].status == StepStatus::Error
                                && run.steps[i]
                                    .reason
                                    .as_deref()
                                    .is_some_and(|r| r.contains("unreachable"));
                            if !expired && from < at {
                                out.push((seq[commit], i, from, at));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Piecewise-constant timelines: open requests per class and in all (from
    /// the effective trace), and whether the engine holds the runner down (from
    /// `RunnerDown`/`RunnerUp`); each maps a time to the value after the last
    /// change at that time.
    fn timelines(&self) -> (Vec<Timeline<u32>>, Timeline<u32>, Timeline<bool>) {
        let mut per_class: Vec<BTreeMap<Instant, u32>> =
            vec![BTreeMap::new(); self.pipeline.classes().len()];
        let mut counts = vec![0u32; self.pipeline.classes().len()];
        let mut total_line = BTreeMap::new();
        let mut total = 0u32;
        for e in self.effective_trace() {
            let (c, _) = self.limit_of(&e.step);
            if e.kind == TraceKind::Start {
                counts[c] += 1;
                total += 1;
            } else {
                counts[c] -= 1;
                total -= 1;
            }
            per_class[c].insert(e.at, counts[c]);
            total_line.insert(e.at, total);
        }
        let mut down = BTreeMap::new();
        for (at, e) in &self.events {
            match e {
                EngineEvent::RunnerDown { .. } => {
                    down.insert(*at, true);
                }
                EngineEvent::RunnerUp { .. } => {
                    down.insert(*at, false);
                }
                _ => {}
            }
        }
        (per_class, total_line, down)
    }

    /// Invariant 5, work-conserving, under every kind of fault: while the runner
    /// is up (no outage open), the global cap has room and a class has a free
    /// permit, no ready step of that class waits for any positive length of
    /// time. A step in backoff is not ready: it yields its place.
    pub fn check_work_conserving(&self) -> Result<(), String> {
        fn at<T: Copy + Default>(line: &BTreeMap<Instant, T>, t: Instant) -> T {
            line.range(..=t)
                .next_back()
                .map(|(_, &v)| v)
                .unwrap_or_default()
        }
        let (per_class, total, down) = self.timelines();
        let cap = u32::try_from(self.engine.max_in_flight).unwrap_or(u32::MAX);
        let commits: HashMap<u64, &CommitId> = self.runs.iter().map(|r| (r.seq, r.id())).collect();
        for (seq, i, lo, hi) in self.ready_intervals() {
            if lo >= hi {
                continue;
            }
            // Worked out only when needed: it scans the events.
            let mut room: Option<Option<Instant>> = None;
            let c = self.pipeline.class_of(i);
            let limit = self.pipeline.classes()[c].limit;
            let mut points: BTreeSet<Instant> = BTreeSet::new();
            points.insert(lo);
            points.extend(per_class[c].range(lo..hi).map(|(&t, _)| t));
            points.extend(total.range(lo..hi).map(|(&t, _)| t));
            points.extend(down.range(lo..hi).map(|(&t, _)| t));
            let points: Vec<Instant> = points.into_iter().collect();
            for (k, &from) in points.iter().enumerate() {
                let to = points.get(k + 1).copied().unwrap_or(hi);
                if from >= to {
                    continue;
                }
                let in_class = at(&per_class[c], from);
                let all = at(&total, from);
                if !at(&down, from)
                    && all < cap
                    && limit.is_none_or(|l| in_class < l)
                    && room
                        .get_or_insert_with(|| {
                            memory_room_from(&self.events, &self.engine, commits[&seq], lo)
                        })
                        .is_some_and(|room| from >= room)
                {
                    return Err(format!(
                        "step {i} of run {seq} was ready from {:?} to {:?}, but waited from {:?} to {:?} while the runner was up, {all} of {cap} requests open and its class had {in_class} of {limit:?}",
                        lo - self.t0(),
                        hi - self.t0(),
                        from - self.t0(),
                        to - self.t0(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Invariant 6, oldest first, under every kind of fault: in an exclusive
    /// class, no step starts while a step of an older run (or an earlier step
    /// of the same run) in that class is ready and has been since before.
    pub fn check_oldest_first(&self) -> Result<(), String> {
        let seq: HashMap<&CommitId, u64> = self.runs.iter().map(|r| (r.id(), r.seq)).collect();
        let intervals = self.ready_intervals();
        for (t, e) in &self.events {
            let EngineEvent::StepStarted { commit, step, .. } = e else {
                continue;
            };
            let ib = self.pipeline.position(step).unwrap();
            let c = self.pipeline.class_of(ib);
            if self.pipeline.classes()[c].limit != Some(1) {
                continue;
            }
            let b = (seq[commit], ib);
            for &(sa, ia, lo, hi) in &intervals {
                if self.pipeline.class_of(ia) == c && (sa, ia) < b && lo < *t && hi > *t {
                    return Err(format!(
                        "step {ia} of run {sa} was ready from {:?} but step {ib} of newer run {} started before it at {:?}",
                        lo - self.t0(),
                        b.0,
                        *t - self.t0()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Item "events tell the truth": each run is queued once and finishes once,
    /// with the store's status, and nothing about it is announced after; every
    /// `StepStarted` is followed by exactly one `StepFinished` or
    /// `StepWithdrawn` of that attempt before the step's next start; attempt
    /// numbers only grow; every finished attempt has the store's outcome, every
    /// withdrawn one is absent from the store, and every stored attempt was
    /// announced; the last `StepFinished` of a step has the step's final
    /// status, unless the step ended later without an attempt (cancel, the
    /// unreachable limit).
    pub fn check_events_match_store(&self) -> Result<(), String> {
        /// Ends the open attempt of a step, which must be `attempt`.
        fn close(
            open: &mut HashMap<(CommitId, String), u32>,
            k: usize,
            commit: &CommitId,
            step: &str,
            attempt: u32,
            how: &str,
        ) -> Result<(), String> {
            if open.remove(&(commit.clone(), step.to_owned())) == Some(attempt) {
                Ok(())
            } else {
                Err(format!(
                    "event {k}: attempt {attempt} of {step} of {commit} {how} without being open"
                ))
            }
        }
        let runs: HashMap<&CommitId, &Run> = self.runs.iter().map(|r| (r.id(), r)).collect();
        let mut queued: HashMap<CommitId, usize> = HashMap::new();
        let mut finished: HashMap<CommitId, RunStatus> = HashMap::new();
        // Per (commit, step): the open attempt, the last number, attempts ended.
        let mut open: HashMap<(CommitId, String), u32> = HashMap::new();
        let mut last: HashMap<(CommitId, String), u32> = HashMap::new();
        let mut ended: HashMap<(CommitId, String, u32), AttemptOutcome> = HashMap::new();
        let mut withdrawn: HashSet<(CommitId, String, u32)> = HashSet::new();
        let mut last_status: HashMap<(CommitId, String), StepStatus> = HashMap::new();
        for (k, (_, e)) in self.events.iter().enumerate() {
            let commit = match e {
                EngineEvent::RunQueued { commit, .. }
                | EngineEvent::StepStarted { commit, .. }
                | EngineEvent::StepFinished { commit, .. }
                | EngineEvent::StepWithdrawn { commit, .. }
                | EngineEvent::RunFinished { commit, .. } => Some(commit),
                _ => None,
            };
            if let Some(c) = commit
                && finished.contains_key(c)
            {
                return Err(format!("event {k}: {e:?} after the run of {c} finished"));
            }
            match e {
                EngineEvent::RunQueued { commit, .. } => {
                    *queued.entry(commit.clone()).or_default() += 1;
                }
                EngineEvent::RunFinished { commit, status } => {
                    finished.insert(commit.clone(), *status);
                }
                EngineEvent::StepStarted {
                    commit,
                    step,
                    attempt,
                    ..
                } => {
                    let key = (commit.clone(), step.clone());
                    if let Some(n) = open.get(&key) {
                        return Err(format!(
                            "event {k}: attempt {attempt} of {step} of {commit} started while attempt {n} was not finished"
                        ));
                    }
                    if last.get(&key).is_some_and(|&n| n >= *attempt) {
                        return Err(format!(
                            "event {k}: attempt {attempt} of {step} of {commit} reuses or goes back from {:?}",
                            last.get(&key)
                        ));
                    }
                    open.insert(key.clone(), *attempt);
                    last.insert(key, *attempt);
                }
                EngineEvent::StepFinished {
                    commit,
                    step,
                    attempt,
                    outcome,
                    status,
                    ..
                } => {
                    close(&mut open, k, commit, step, *attempt, "finished")?;
                    ended.insert((commit.clone(), step.clone(), *attempt), *outcome);
                    last_status.insert((commit.clone(), step.clone()), *status);
                }
                EngineEvent::StepWithdrawn {
                    commit,
                    step,
                    attempt,
                    ..
                } => {
                    close(&mut open, k, commit, step, *attempt, "withdrawn")?;
                    withdrawn.insert((commit.clone(), step.clone(), *attempt));
                }
                _ => {}
            }
        }
        if let Some(((c, s), n)) = open.iter().next() {
            return Err(format!("attempt {n} of {s} of {c} started and never ended"));
        }
        for r in &self.runs {
            if queued.get(r.id()) != Some(&1) {
                return Err(format!("{} queued {:?} times", r.id(), queued.get(r.id())));
            }
            if finished.get(r.id()) != Some(&r.status) {
                return Err(format!(
                    "{} finished as {:?} but the store says {}",
                    r.id(),
                    finished.get(r.id()),
                    r.status
                ));
            }
            for st in &r.steps {
                for a in &st.attempts {
                    let key = (r.id().clone(), st.name.clone(), a.number);
                    if ended.get(&key) != Some(&a.outcome) {
                        return Err(format!(
                            "attempt {} of {} of {} is {} in the store but its events say {:?}",
                            a.number,
                            st.name,
                            r.id(),
                            a.outcome,
                            ended.get(&key)
                        ));
                    }
                    if withdrawn.contains(&key) {
                        return Err(format!(
                            "attempt {} of {} of {} was withdrawn but is in the store",
                            a.number,
                            st.name,
                            r.id()
                        ));
                    }
                }
                let stored: usize = st.attempts.len();
                let announced = ended
                    .keys()
                    .filter(|(c, s, _)| c == r.id() && *s == st.name)
                    .count();
                if stored != announced {
                    return Err(format!(
                        "{} of {}: {stored} attempts stored, {announced} announced",
                        st.name,
                        r.id()
                    ));
                }
                if let Some(&status) = last_status.get(&(r.id().clone(), st.name.clone())) {
                    let later_without_attempt = status == StepStatus::Pending
                        && matches!(st.status, StepStatus::Cancelled | StepStatus::Error);
                    if status != st.status && !later_without_attempt {
                        return Err(format!(
                            "{} of {}: last StepFinished says {status}, the store {}",
                            st.name,
                            r.id(),
                            st.status
                        ));
                    }
                }
            }
        }
        if let Some(r) = self
            .runs
            .iter()
            .find(|r| !runs.contains_key(r.id()) || r.status == RunStatus::Queued)
        {
            return Err(format!("{} never left the queue", r.id()));
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
        self.check_status_consistency()?;
        self.check_retries()?;
        check_memory_ceiling(&self.events, &self.engine)
    }

    /// Retries: a run has a recorded retry exactly when a retry of it
    /// answered `Retried`; a step's attempt numbers only grow, and its budget
    /// starts past every attempt of earlier rounds; a step that succeeded is
    /// never tried again.
    pub fn check_retries(&self) -> Result<(), String> {
        for r in &self.runs {
            let recorded = r.actions.iter().any(|a| a.kind == RunActionKind::Retry);
            if recorded != self.retried.contains(r.id()) {
                return Err(format!(
                    "{}: a retry recorded={recorded}, answered retried={}",
                    r.id(),
                    self.retried.contains(r.id())
                ));
            }
            if !recorded && r.retry_seq.is_some() {
                return Err(format!("{}: a retry position without a retry", r.id()));
            }
            for s in &r.steps {
                let numbers: Vec<u32> = s.attempts.iter().map(|a| a.number).collect();
                if numbers.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "{} of {}: attempt numbers {numbers:?}",
                        s.name,
                        r.id()
                    ));
                }
                if s.attempts
                    .iter()
                    .rev()
                    .skip(1)
                    .any(|a| a.outcome == AttemptOutcome::Success)
                {
                    return Err(format!(
                        "{} of {}: attempts after a success: {:?}",
                        s.name,
                        r.id(),
                        s.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>()
                    ));
                }
                let earlier = s.attempts.iter().filter(|a| a.number < s.budget_from);
                let last_round = s.attempts.iter().map(|a| a.number).max().unwrap_or(0);
                if s.budget_from > last_round + 1
                    || (!recorded && s.budget_from != 1)
                    || earlier
                        .clone()
                        .any(|a| a.outcome == AttemptOutcome::Running)
                {
                    return Err(format!(
                        "{} of {}: budget from {} with attempts {numbers:?}",
                        s.name,
                        r.id(),
                        s.budget_from
                    ));
                }
            }
        }
        Ok(())
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
        let mut stops_at = Vec::new();
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
            )
            .expect("a valid engine configuration");
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
            stops_at.push(runner.trace().len());
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
            retried: HashSet::new(),
            events: Vec::new(),
            stops_at,
        }
    })
}
