//! The scheduling loop and the state it owns. Nothing here is shared: one task
//! runs [`Scheduler::run`]; runner calls and probes run in spawned tasks and
//! report back.
//!
//! A request's concurrency permit is held until the request has really ended
//! (the runner answered, the connection closed, or the runner refused it), also
//! when the engine gave up on it earlier (a timeout or a cancel): the attempt is
//! recorded at once, the request stays open. So the runner never holds more
//! requests of a class than the class allows. Only a request held past
//! [`EngineConfig::abandon_limit`] after the engine gave up on it is dropped, and
//! only once the runner has answered a probe.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, Id as TaskId, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{CancelOutcome, Command, EngineConfig, EngineError, EngineEvent};
use crate::model::{
    Attempt, AttemptOutcome, Commit, CommitId, Pipeline, Run, StepRecord, StepStatus, now_millis,
};
use crate::pool::{RunnerPool, RunnerState, RunnerStatus};
use crate::runner::{Probe, RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};
use crate::source::CommitSource;
use crate::store::{RunStore, StoreError};

/// Where a step is in the scheduler's eyes (the record holds the status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Some need has not succeeded yet.
    Blocked,
    /// In its class's ready queue.
    Ready,
    /// Waiting to be retried at the given time.
    Backoff(Instant),
    /// Its retry is due, but the runner still holds an earlier attempt of it
    /// that the engine gave up on: it becomes ready when that request ends.
    Held,
    /// An attempt is in flight.
    InFlight,
    /// Terminal.
    Done,
}

struct StepSlot {
    unmet: usize,
    phase: Phase,
    /// When the step last became ready (for the unreachable limit).
    ready_since: Instant,
    /// The number the next attempt gets; numbers are never reused.
    next_attempt: u32,
    /// The outage count when the step last lost an attempt to a closed
    /// connection: a second such loss with no outage in between backs off.
    lost_at_outage: Option<u64>,
    /// Requests of earlier attempts, given up on, that the runner still holds.
    open_abandoned: u32,
}

struct RunSlot {
    run: Run,
    steps: Vec<StepSlot>,
}

/// A concurrency class: its limit, what is in flight and what waits.
struct ClassState {
    limit: Option<u32>,
    /// Open requests of the class, given-up ones included.
    in_flight: u32,
    /// Ready steps as `(run seq, step index)`: the first is the oldest commit's.
    ready: BTreeSet<(u64, usize)>,
}

impl ClassState {
    fn has_permit(&self) -> bool {
        self.limit.is_none_or(|l| self.in_flight < l)
    }
}

/// An open request to the runner.
struct Flight {
    seq: u64,
    step: usize,
    attempt: u32,
    /// Sent as the probe of an outage.
    probe: bool,
    /// When the engine stops waiting for the answer.
    deadline: Instant,
    /// When the engine gave up on the request (timeout, cancel): its attempt is
    /// recorded, its answer will be ignored, its permit is still held.
    abandoned: Option<Instant>,
    /// Held past the abandon limit: dropped when the runner answers a probe.
    overdue: bool,
    abort: AbortHandle,
}

/// A spawned task: a request or a probe.
enum Task {
    Step(Flight),
    Probe,
}

/// What a spawned task hands back.
enum TaskOutput {
    Step(Finished),
    Probe(Probe),
}

/// The runner is down: nothing is dispatched; it is probed one probe at a time.
struct Outage {
    since: Instant,
    next_probe: Instant,
    probe_in_flight: bool,
    /// When to look again for steps that waited past the unreachable limit.
    next_expiry: Instant,
}

/// What a runner task hands back.
struct Finished {
    result: Result<StepOutput, RunnerError>,
    elapsed: Duration,
}

pub(crate) struct Scheduler {
    pipeline: Arc<Pipeline>,
    pool: RunnerPool,
    runner: Arc<dyn StepRunner>,
    store: Arc<dyn RunStore>,
    config: EngineConfig,
    events: broadcast::Sender<EngineEvent>,
    runs: BTreeMap<u64, RunSlot>,
    by_commit: HashMap<CommitId, u64>,
    classes: Vec<ClassState>,
    /// Open requests, given-up ones included (against `max_in_flight`).
    in_flight: usize,
    tasks: JoinSet<TaskOutput>,
    task_index: HashMap<TaskId, Task>,
    /// Step timeouts of requests the engine still waits for.
    deadlines: BTreeSet<(Instant, TaskId)>,
    /// When given-up requests pass the abandon limit.
    abandon_deadlines: BTreeSet<(Instant, TaskId)>,
    backoff: BTreeSet<(Instant, u64, usize)>,
    next_seq: u64,
    outage: Option<Outage>,
    /// How many outages have begun.
    outages: u64,
    /// Requests held past the abandon limit (flights with `overdue` set).
    overdue: usize,
    /// `Some(false)` once the runner said it cannot be probed without a step.
    probe_supported: Option<bool>,
    stopping: bool,
}

impl Scheduler {
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        pool: RunnerPool,
        store: Arc<dyn RunStore>,
        config: EngineConfig,
        events: broadcast::Sender<EngineEvent>,
    ) -> Self {
        let runner = Arc::clone(&pool.members()[0].runner);
        let classes = pipeline
            .classes()
            .iter()
            .map(|c| ClassState {
                limit: c.limit,
                in_flight: 0,
                ready: BTreeSet::new(),
            })
            .collect();
        Self {
            pipeline,
            pool,
            runner,
            store,
            config,
            events,
            runs: BTreeMap::new(),
            by_commit: HashMap::new(),
            classes,
            in_flight: 0,
            tasks: JoinSet::new(),
            task_index: HashMap::new(),
            deadlines: BTreeSet::new(),
            abandon_deadlines: BTreeSet::new(),
            backoff: BTreeSet::new(),
            next_seq: 0,
            outage: None,
            outages: 0,
            overdue: 0,
            probe_supported: None,
            stopping: false,
        }
    }

    pub(crate) async fn run(
        mut self,
        source: Box<dyn CommitSource>,
        shutdown: impl Future<Output = ()> + Send,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), EngineError> {
        self.recover().await?;
        let (batch_tx, mut batches) = mpsc::channel(1);
        let feeder = tokio::spawn(feed(source, batch_tx, self.config.source_retry));
        let _abort_feeder = AbortOnDrop(feeder.abort_handle());
        let mut source_open = true;
        tokio::pin!(shutdown);
        self.dispatch().await?;
        loop {
            if !source_open && self.runs.is_empty() {
                info!("source exhausted and every run finished");
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!(in_flight = self.in_flight, "shutting down");
                    self.stopping = true;
                    break;
                }
                Some(command) = commands.recv() => self.on_command(command).await?,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_joined(joined).await?;
                }
                batch = batches.recv(), if source_open => match batch {
                    Some(commits) => self.on_commits(commits).await?,
                    None => source_open = false,
                },
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    self.on_timer().await?;
                }
            }
            self.dispatch().await?;
        }
        drop(batches);
        if self.stopping {
            self.drain(&mut commands).await?;
        }
        Ok(())
    }

    /// At shutdown: let open requests end within the grace period, answering
    /// commands meanwhile; then record what is still in flight as interrupted
    /// (taken up again at the next start) and drop the requests.
    async fn drain(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), EngineError> {
        let deadline = Instant::now() + self.config.shutdown_grace;
        while self.task_index.values().any(|t| matches!(t, Task::Step(_))) {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                Some(command) = commands.recv() => self.on_command(command).await?,
                Some(joined) = self.tasks.join_next_with_id() => self.on_joined(joined).await?,
                () = tokio::time::sleep_until(deadline) => {
                    self.interrupt_all().await?;
                    break;
                }
                () = tokio::time::sleep_until(wake.unwrap_or(deadline)), if wake.is_some() => {
                    self.on_timer().await?;
                }
            }
        }
        self.tasks.abort_all();
        Ok(())
    }

    /// Records every attempt still awaited as interrupted, at shutdown.
    async fn interrupt_all(&mut self) -> Result<(), EngineError> {
        let mut live: Vec<(u64, usize, u32)> = self
            .task_index
            .values()
            .filter_map(|t| match t {
                Task::Step(f) if f.abandoned.is_none() => Some((f.seq, f.step, f.attempt)),
                _ => None,
            })
            .collect();
        warn!(
            abandoned = live.len(),
            "shutdown grace expired; steps still in flight resume at the next start"
        );
        live.sort_unstable();
        let mut events: BTreeMap<u64, Vec<EngineEvent>> = BTreeMap::new();
        for (seq, step, number) in live {
            let Some(slot) = self.runs.get_mut(&seq) else {
                continue;
            };
            let commit = slot.run.id().clone();
            let record = &mut slot.run.steps[step];
            let Some(attempt) = record.attempts.iter_mut().find(|a| a.number == number) else {
                continue;
            };
            attempt.outcome = AttemptOutcome::Interrupted;
            attempt.reason = Some("the engine stopped while the step was in flight".into());
            attempt.finished_at = Some(now_millis());
            record.status = StepStatus::Pending;
            events
                .entry(seq)
                .or_default()
                .push(EngineEvent::StepFinished {
                    commit,
                    step: record.name.clone(),
                    attempt: number,
                    outcome: AttemptOutcome::Interrupted,
                    status: StepStatus::Pending,
                    retry_in_ms: Some(0),
                });
        }
        for (seq, events) in events {
            self.commit_change_then(seq, events).await?;
        }
        Ok(())
    }

    // ----- start-up ---------------------------------------------------------

    /// Takes up the runs the store holds as unfinished.
    async fn recover(&mut self) -> Result<(), EngineError> {
        self.next_seq = self.store.max_seq().await?.map_or(0, |m| m + 1);
        let unfinished = self.store.unfinished_runs().await?;
        if !unfinished.is_empty() {
            info!(runs = unfinished.len(), "resuming unfinished runs");
        }
        for mut run in unfinished {
            self.normalize_steps(&mut run);
            for step in &mut run.steps {
                let mut interrupted = false;
                for attempt in &mut step.attempts {
                    if attempt.outcome == AttemptOutcome::Running {
                        attempt.outcome = AttemptOutcome::Interrupted;
                        attempt.reason =
                            Some("the engine stopped while the step was in flight".into());
                        attempt.finished_at = Some(now_millis());
                        interrupted = true;
                    }
                }
                if step.status == StepStatus::Running || interrupted && !step.status.is_terminal() {
                    step.status = StepStatus::Pending;
                }
            }
            self.next_seq = self.next_seq.max(run.seq + 1);
            self.admit(run).await?;
        }
        Ok(())
    }

    /// Lines a stored run's steps up with the pipeline: index `i` of
    /// `run.steps` is pipeline step `i`. Steps the pipeline no longer has are kept
    /// after them, and skipped if they had not finished.
    fn normalize_steps(&self, run: &mut Run) {
        let in_order = run.steps.iter().map(|s| s.name.as_str()).eq(self
            .pipeline
            .steps()
            .iter()
            .map(|s| s.name.as_str()));
        if in_order {
            return;
        }
        let mut old: Vec<Option<StepRecord>> = run.steps.drain(..).map(Some).collect();
        for spec in self.pipeline.steps() {
            let found = old
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|s| s.name == spec.name))
                .and_then(Option::take);
            run.steps
                .push(found.unwrap_or_else(|| StepRecord::pending(spec.name.clone())));
        }
        for mut extra in old.into_iter().flatten() {
            if !extra.status.is_terminal() {
                extra.status = StepStatus::Skipped;
                extra.reason = Some("the step is no longer in the pipeline".into());
            }
            run.steps.push(extra);
        }
    }

    // ----- new commits ------------------------------------------------------

    async fn on_commits(&mut self, commits: Vec<Commit>) -> Result<(), EngineError> {
        for commit in commits {
            if self.by_commit.contains_key(&commit.id) {
                continue;
            }
            let run = Run::new(commit, self.next_seq, &self.pipeline);
            if !self.store.insert_run(&run).await? {
                debug!(commit = %run.id(), "commit already has a run");
                continue;
            }
            self.next_seq += 1;
            self.emit(EngineEvent::RunQueued {
                commit: run.id().clone(),
                seq: run.seq,
            });
            self.admit(run).await?;
        }
        Ok(())
    }

    /// Builds the scheduling state of a run whose steps are pending or terminal,
    /// skips what can no longer run, queues what is ready, and persists.
    async fn admit(&mut self, mut run: Run) -> Result<(), EngineError> {
        let now = Instant::now();
        let n = self.pipeline.len();
        let mut steps: Vec<StepSlot> = Vec::with_capacity(n);
        for i in 0..n {
            let status = run.steps[i].status;
            let next_attempt = run.steps[i]
                .attempts
                .iter()
                .map(|a| a.number)
                .max()
                .unwrap_or(0)
                .saturating_add(1);
            let mut slot = StepSlot {
                unmet: 0,
                phase: Phase::Done,
                ready_since: now,
                next_attempt,
                lost_at_outage: None,
                open_abandoned: 0,
            };
            if !status.is_terminal() {
                let needs = self.pipeline.needs_of(i);
                if let Some(&bad) = needs.iter().find(|&&j| {
                    run.steps[j].status.is_terminal() && run.steps[j].status != StepStatus::Success
                }) {
                    let reason = skip_reason(&run.steps[bad]);
                    let step = &mut run.steps[i];
                    step.status = StepStatus::Skipped;
                    step.reason = Some(reason);
                } else {
                    slot.unmet = needs
                        .iter()
                        .filter(|&&j| run.steps[j].status != StepStatus::Success)
                        .count();
                    slot.phase = if slot.unmet == 0 {
                        Phase::Ready
                    } else {
                        Phase::Blocked
                    };
                }
            }
            steps.push(slot);
        }
        let seq = run.seq;
        for (i, slot) in steps.iter().enumerate() {
            if slot.phase == Phase::Ready {
                self.classes[self.pipeline.class_of(i)]
                    .ready
                    .insert((seq, i));
            }
        }
        self.by_commit.insert(run.id().clone(), seq);
        self.runs.insert(seq, RunSlot { run, steps });
        self.commit_change(seq).await
    }

    // ----- dispatch ---------------------------------------------------------

    /// Starts every step that may start now: oldest ready step first among the
    /// classes with a free permit, within the global cap. While the runner is
    /// down nothing is dispatched; a probe goes out when its time comes.
    async fn dispatch(&mut self) -> Result<(), EngineError> {
        if self.stopping {
            return Ok(());
        }
        if let Some(o) = &self.outage {
            if o.probe_in_flight || Instant::now() < o.next_probe {
                return Ok(());
            }
            if self.probe_supported != Some(false) {
                self.start_probe();
                return Ok(());
            }
        }
        if self.outage.is_some() && !self.can_send_a_step() {
            self.no_step_to_probe_with();
            return Ok(());
        }
        while self.in_flight < self.config.max_in_flight {
            let probe = self.outage.is_some();
            let best = self
                .classes
                .iter()
                .enumerate()
                .filter(|(_, c)| c.has_permit())
                .filter_map(|(ci, c)| c.ready.first().map(|&key| (key, ci)))
                .min();
            let Some(((seq, step), ci)) = best else { break };
            self.classes[ci].ready.remove(&(seq, step));
            self.start(seq, step, probe).await?;
            if probe {
                if let Some(o) = &mut self.outage {
                    o.probe_in_flight = true;
                }
                break;
            }
        }
        Ok(())
    }

    /// Whether a ready step has a free permit within the global cap.
    fn can_send_a_step(&self) -> bool {
        self.in_flight < self.config.max_in_flight
            && self
                .classes
                .iter()
                .any(|c| c.has_permit() && !c.ready.is_empty())
    }

    /// The runner is down, cannot be probed without a step, and no step can be
    /// sent. If it holds requests past the abandon limit, nothing but their
    /// answer could end the outage: the limit is final for such a runner, and
    /// they are dropped. Otherwise the outage waits for a step to probe with.
    fn no_step_to_probe_with(&mut self) {
        if self.overdue > 0 {
            warn!(
                "the runner cannot be probed without a step and none can be sent; giving up on the requests it held past the abandon limit"
            );
            self.runner_answered();
        }
    }

    /// Sends a probe that runs no step.
    fn start_probe(&mut self) {
        if let Some(o) = &mut self.outage {
            o.probe_in_flight = true;
        }
        let runner = Arc::clone(&self.runner);
        let abort = self
            .tasks
            .spawn(async move { TaskOutput::Probe(runner.probe().await) });
        self.task_index.insert(abort.id(), Task::Probe);
    }

    async fn start(&mut self, seq: u64, step: usize, probe: bool) -> Result<(), EngineError> {
        let slot = self
            .runs
            .get_mut(&seq)
            .expect("a queued step belongs to a live run");
        let number = slot.steps[step].next_attempt;
        slot.steps[step].next_attempt = number.saturating_add(1);
        let record = &mut slot.run.steps[step];
        let mut attempt = Attempt::new(number, AttemptOutcome::Running, now_millis());
        attempt.runner = Some(self.pool.members()[0].id.clone());
        record.attempts.push(attempt);
        record.status = StepStatus::Running;
        slot.steps[step].phase = Phase::InFlight;
        let request = StepRequest {
            step: record.name.clone(),
            commit: slot.run.id().clone(),
            attempt: number,
        };
        // Write ahead: if the process dies now, the next start sees the attempt
        // as in flight and records it as interrupted.
        let started = EngineEvent::StepStarted {
            commit: request.commit.clone(),
            step: request.step.clone(),
            attempt: number,
            runner: self.pool.members()[0].id.clone(),
        };
        self.commit_change_then(seq, vec![started]).await?;
        debug!(commit = %request.commit.short(10), step = %request.step, attempt = number, probe, "dispatch");

        self.classes[self.pipeline.class_of(step)].in_flight += 1;
        self.in_flight += 1;
        let runner = Arc::clone(&self.runner);
        let abort = self.tasks.spawn(async move {
            let started = Instant::now();
            let result = runner.run(&request).await;
            TaskOutput::Step(Finished {
                result,
                elapsed: started.elapsed(),
            })
        });
        let deadline = Instant::now() + self.config.step_timeout;
        self.deadlines.insert((deadline, abort.id()));
        self.task_index.insert(
            abort.id(),
            Task::Step(Flight {
                seq,
                step,
                attempt: number,
                probe,
                deadline,
                abandoned: None,
                overdue: false,
                abort,
            }),
        );
        Ok(())
    }

    /// Frees the permit of a request that has ended (or was dropped); a retry
    /// that waited for it becomes ready.
    fn release(&mut self, id: TaskId, flight: &Flight) {
        self.deadlines.remove(&(flight.deadline, id));
        if let Some(at) = flight.abandoned {
            self.abandon_deadlines
                .remove(&(at + self.config.abandon_limit, id));
            if let Some(slot) = self.runs.get_mut(&flight.seq) {
                let s = &mut slot.steps[flight.step];
                s.open_abandoned = s.open_abandoned.saturating_sub(1);
                if s.open_abandoned == 0 && s.phase == Phase::Held {
                    s.phase = Phase::Ready;
                    s.ready_since = Instant::now();
                    self.classes[self.pipeline.class_of(flight.step)]
                        .ready
                        .insert((flight.seq, flight.step));
                }
            }
        }
        if flight.overdue {
            self.overdue = self.overdue.saturating_sub(1);
        }
        let class = &mut self.classes[self.pipeline.class_of(flight.step)];
        class.in_flight = class.in_flight.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
        if flight.probe
            && let Some(o) = &mut self.outage
        {
            o.probe_in_flight = false;
        }
    }

    /// Marks a request the engine no longer waits for; it keeps its permit.
    fn abandon(&mut self, id: TaskId, now: Instant) {
        let limit = self.config.abandon_limit;
        if let Some(Task::Step(flight)) = self.task_index.get_mut(&id)
            && flight.abandoned.is_none()
        {
            flight.abandoned = Some(now);
            self.deadlines.remove(&(flight.deadline, id));
            self.abandon_deadlines.insert((now + limit, id));
            if let Some(slot) = self.runs.get_mut(&flight.seq) {
                slot.steps[flight.step].open_abandoned += 1;
            }
        }
    }

    // ----- results ----------------------------------------------------------

    async fn on_joined(
        &mut self,
        joined: Result<(TaskId, TaskOutput), JoinError>,
    ) -> Result<(), EngineError> {
        let (id, output) = match joined {
            Ok((id, output)) => (id, Some(output)),
            Err(e) => (e.id(), None),
        };
        match self.task_index.remove(&id) {
            None => Ok(()),
            Some(Task::Probe) => {
                let probe = match output {
                    Some(TaskOutput::Probe(p)) => p,
                    _ => Probe::Down("the probe panicked or was aborted".into()),
                };
                self.on_probe(probe);
                Ok(())
            }
            Some(Task::Step(flight)) => {
                // The request has ended for good: only now is its permit free.
                self.release(id, &flight);
                let finished = match output {
                    Some(TaskOutput::Step(f)) => f,
                    _ => Finished {
                        result: Err(RunnerError::Lost(
                            "the runner call panicked or was aborted".into(),
                        )),
                        elapsed: Duration::ZERO,
                    },
                };
                if flight.abandoned.is_some() {
                    // Its attempt is recorded already; the answer still says
                    // whether the runner is alive.
                    debug!(
                        step = flight.step,
                        attempt = flight.attempt,
                        "a request given up on has ended"
                    );
                    if answered(&finished.result, flight.probe) {
                        self.runner_answered();
                    }
                    return Ok(());
                }
                self.on_result(flight, finished).await
            }
        }
    }

    fn on_probe(&mut self, probe: Probe) {
        let now = Instant::now();
        match probe {
            Probe::Up => self.runner_answered(),
            Probe::Down(reason) => {
                if let Some(o) = &mut self.outage {
                    debug!(%reason, "probe: runner still down");
                    o.probe_in_flight = false;
                    o.next_probe = now + self.config.probe_delay(now - o.since);
                }
            }
            Probe::Unsupported => {
                debug!("the runner cannot be probed without a step; probing with steps");
                self.probe_supported = Some(false);
                if let Some(o) = &mut self.outage {
                    o.probe_in_flight = false;
                    o.next_probe = now;
                }
            }
        }
    }

    async fn on_result(&mut self, flight: Flight, finished: Finished) -> Result<(), EngineError> {
        let Flight {
            seq, step, probe, ..
        } = flight;
        if answered(&finished.result, probe) {
            self.runner_answered();
        }
        let outages = self.outages;
        let Some(slot) = self.runs.get_mut(&seq) else {
            return Ok(());
        };
        let commit = slot.run.id().clone();
        let record = &mut slot.run.steps[step];
        let name = record.name.clone();

        if let Err(RunnerError::Unreachable(reason)) = &finished.result {
            // Nothing was sent: forget the attempt and wait for the runner.
            let number = record.attempts.pop().map_or(flight.attempt, |a| a.number);
            record.status = StepStatus::Pending;
            slot.steps[step].phase = Phase::Ready;
            self.classes[self.pipeline.class_of(step)]
                .ready
                .insert((seq, step));
            let reason = reason.clone();
            self.runner_down(reason.clone());
            let withdrawn = EngineEvent::StepWithdrawn {
                commit,
                step: name,
                attempt: number,
                reason,
            };
            return self.commit_change_then(seq, vec![withdrawn]).await;
        }

        let attempt = record
            .attempts
            .last_mut()
            .expect("an in-flight step has an attempt");
        attempt.finished_at = Some(now_millis());
        attempt.duration_ms = Some(millis(finished.elapsed));
        let number = attempt.number;
        let verdict: Verdict = match finished.result {
            Ok(output) => {
                attempt.logs = output.logs;
                attempt.runner_duration_ms = output.duration.map(millis);
                match output.verdict {
                    StepVerdict::Success => {
                        attempt.outcome = AttemptOutcome::Success;
                        Verdict::End(StepStatus::Success)
                    }
                    StepVerdict::Failure => {
                        attempt.outcome = AttemptOutcome::Failure;
                        Verdict::End(StepStatus::Failure)
                    }
                }
            }
            Err(RunnerError::Rejected(reason)) => {
                attempt.outcome = AttemptOutcome::Rejected;
                attempt.reason = Some(reason);
                Verdict::End(StepStatus::Error)
            }
            Err(RunnerError::Protocol(reason)) => {
                attempt.outcome = AttemptOutcome::Lost;
                attempt.reason = Some(reason);
                Verdict::Backoff
            }
            Err(RunnerError::Lost(reason)) => {
                attempt.outcome = AttemptOutcome::Lost;
                attempt.reason = Some(reason);
                // The connection closed: the runner crashed or restarted. Retry
                // as soon as it accepts requests, unless it lost this step before
                // without going down in between (it answers, but keeps losing).
                let slot_step = &mut slot.steps[step];
                let again = slot_step.lost_at_outage == Some(outages);
                slot_step.lost_at_outage = Some(outages);
                if again {
                    Verdict::Backoff
                } else {
                    Verdict::AtOnce
                }
            }
            Err(RunnerError::Unreachable(_)) => unreachable!("handled above"),
        };
        let event = self.settle_attempt(seq, step, number, verdict);
        self.commit_change_then(seq, vec![event]).await
    }

    /// After attempt `number` of a step ended (its outcome recorded): ends the
    /// step or schedules its retry, and says so in a `StepFinished` event.
    fn settle_attempt(
        &mut self,
        seq: u64,
        step: usize,
        number: u32,
        verdict: Verdict,
    ) -> EngineEvent {
        let now = Instant::now();
        let (commit, name, outcome) = {
            let slot = &self.runs[&seq];
            let record = &slot.run.steps[step];
            let outcome = record
                .attempts
                .iter()
                .find(|a| a.number == number)
                .map_or(AttemptOutcome::Lost, |a| a.outcome);
            (slot.run.id().clone(), record.name.clone(), outcome)
        };
        let mut retry_in = None;
        let verdict = match verdict {
            Verdict::AtOnce | Verdict::Backoff => {
                let record = &mut self.runs.get_mut(&seq).expect("live run").run.steps[step];
                let counted = record.counted_attempts();
                if counted >= self.config.max_attempts {
                    record.reason = Some(format!(
                        "gave up after {counted} attempts lost to infrastructure"
                    ));
                    Verdict::End(StepStatus::Error)
                } else {
                    verdict
                }
            }
            v @ Verdict::End(_) => v,
        };
        match verdict {
            Verdict::End(status) => self.finish_step(seq, step, status),
            Verdict::AtOnce => {
                let slot = self.runs.get_mut(&seq).expect("live run");
                slot.run.steps[step].status = StepStatus::Pending;
                if slot.steps[step].open_abandoned > 0 {
                    slot.steps[step].phase = Phase::Held;
                } else {
                    slot.steps[step].phase = Phase::Ready;
                    slot.steps[step].ready_since = now;
                    self.classes[self.pipeline.class_of(step)]
                        .ready
                        .insert((seq, step));
                }
                retry_in = Some(Duration::ZERO);
            }
            Verdict::Backoff => {
                let slot = self.runs.get_mut(&seq).expect("live run");
                let retry = slot.run.steps[step].counted_attempts();
                let wait = self
                    .config
                    .jittered_backoff(retry, jitter_key(&commit, &name, number));
                let at = now + wait;
                slot.run.steps[step].status = StepStatus::Pending;
                slot.steps[step].phase = Phase::Backoff(at);
                self.backoff.insert((at, seq, step));
                retry_in = Some(wait);
            }
        }
        let status = self
            .runs
            .get(&seq)
            .map_or(StepStatus::Pending, |s| s.run.steps[step].status);
        EngineEvent::StepFinished {
            commit,
            step: name,
            attempt: number,
            outcome,
            status,
            retry_in_ms: retry_in.map(millis),
        }
    }

    /// Ends step `step` of run `seq` with a terminal `status`: on success its
    /// dependents lose a need; otherwise they are skipped, transitively.
    fn finish_step(&mut self, seq: u64, step: usize, status: StepStatus) {
        let pipeline = Arc::clone(&self.pipeline);
        let Some(slot) = self.runs.get_mut(&seq) else {
            return;
        };
        slot.run.steps[step].status = status;
        slot.steps[step].phase = Phase::Done;
        let now = Instant::now();
        if status == StepStatus::Success {
            for &d in pipeline.dependents_of(step) {
                let dep = &mut slot.steps[d];
                dep.unmet = dep.unmet.saturating_sub(1);
                if dep.unmet == 0 && dep.phase == Phase::Blocked {
                    dep.phase = Phase::Ready;
                    dep.ready_since = now;
                    self.classes[pipeline.class_of(d)].ready.insert((seq, d));
                }
            }
            return;
        }
        let mut stack: Vec<usize> = vec![step];
        while let Some(s) = stack.pop() {
            for &d in pipeline.dependents_of(s) {
                if slot.steps[d].phase != Phase::Blocked {
                    continue;
                }
                slot.steps[d].phase = Phase::Done;
                let reason = skip_reason(&slot.run.steps[s]);
                let rec = &mut slot.run.steps[d];
                rec.status = StepStatus::Skipped;
                rec.reason = Some(reason);
                stack.push(d);
            }
        }
    }

    // ----- the runner's health ---------------------------------------------

    /// The runner answered something: an outage is over, and requests it held
    /// past the abandon limit are dropped, their permits free again.
    fn runner_answered(&mut self) {
        if self.outage.take().is_some() {
            info!("runner answers again");
            self.emit(EngineEvent::RunnerUp {
                runner: self.pool.members()[0].id.clone(),
            });
        }
        if self.overdue == 0 {
            return;
        }
        let overdue: Vec<TaskId> = self
            .task_index
            .iter()
            .filter_map(|(&id, t)| match t {
                Task::Step(f) if f.overdue => Some(id),
                _ => None,
            })
            .collect();
        warn!(
            requests = overdue.len(),
            "the runner answers but still holds requests given up on long ago; dropping them"
        );
        for id in overdue {
            if let Some(Task::Step(flight)) = self.task_index.remove(&id) {
                flight.abort.abort();
                self.release(id, &flight);
            }
        }
    }

    /// Opens an outage (if none is open): nothing is dispatched until the
    /// runner answers a probe.
    fn runner_down(&mut self, reason: String) {
        let now = Instant::now();
        match &mut self.outage {
            None => {
                warn!(%reason, "runner down; holding dispatch until it answers");
                self.outages += 1;
                self.outage = Some(Outage {
                    since: now,
                    next_probe: now + self.config.probe_delay(Duration::ZERO),
                    probe_in_flight: false,
                    next_expiry: now + self.config.unreachable_limit,
                });
                self.emit(EngineEvent::RunnerDown {
                    runner: self.pool.members()[0].id.clone(),
                    reason,
                });
            }
            Some(o) => {
                // A step sent as the probe was refused: probe again later.
                if !o.probe_in_flight && o.next_probe <= now {
                    o.next_probe = now + self.config.probe_delay(now - o.since);
                }
            }
        }
    }

    /// Ends `error` every ready step that has waited for a runner that is down
    /// longer than the configured limit, and sets when to look again.
    async fn expire_waiting(&mut self) -> Result<(), EngineError> {
        let Some(outage) = &self.outage else {
            return Ok(());
        };
        let now = Instant::now();
        let limit = self.config.unreachable_limit;
        let since = outage.since;
        let mut expired = Vec::new();
        let mut next = now + limit;
        for class in &self.classes {
            for &(seq, step) in &class.ready {
                let due = self.runs[&seq].steps[step].ready_since.max(since) + limit;
                if due <= now {
                    expired.push((seq, step));
                } else {
                    next = next.min(due);
                }
            }
        }
        if let Some(o) = &mut self.outage {
            o.next_expiry = next;
        }
        let mut changed = BTreeSet::new();
        for (seq, step) in expired {
            self.classes[self.pipeline.class_of(step)]
                .ready
                .remove(&(seq, step));
            if let Some(slot) = self.runs.get_mut(&seq) {
                slot.run.steps[step].reason = Some(format!(
                    "the runner was unreachable for more than {}s",
                    limit.as_secs_f64()
                ));
            }
            self.finish_step(seq, step, StepStatus::Error);
            changed.insert(seq);
        }
        // One store write per run, however many of its steps expired.
        for seq in changed {
            self.commit_change(seq).await?;
        }
        Ok(())
    }

    // ----- timers and commands ---------------------------------------------

    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let probe = self
            .outage
            .as_ref()
            .filter(|o| !o.probe_in_flight && o.next_probe > now && !self.stopping)
            .map(|o| o.next_probe);
        [
            self.backoff.first().map(|&(at, _, _)| at),
            self.deadlines.first().map(|&(at, _)| at),
            self.abandon_deadlines.first().map(|&(at, _)| at),
            self.outage.as_ref().map(|o| o.next_expiry),
            probe,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles what is due: step timeouts, requests held past the abandon
    /// limit, retries whose backoff has passed, and the unreachable limit.
    async fn on_timer(&mut self) -> Result<(), EngineError> {
        let now = Instant::now();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            self.on_timeout(id, now).await?;
        }
        while let Some(&(at, id)) = self.abandon_deadlines.first() {
            if at > now {
                break;
            }
            self.abandon_deadlines.pop_first();
            if let Some(Task::Step(flight)) = self.task_index.get_mut(&id) {
                flight.overdue = true;
                self.overdue += 1;
                let step = self.pipeline.steps()[flight.step].name.clone();
                self.runner_down(format!(
                    "the runner still holds a request of step {step} {}s after the engine gave up on it",
                    self.config.abandon_limit.as_secs_f64()
                ));
            }
        }
        while let Some(&(at, seq, step)) = self.backoff.first() {
            if at > now {
                break;
            }
            self.backoff.pop_first();
            if let Some(slot) = self.runs.get_mut(&seq)
                && slot.steps[step].phase == Phase::Backoff(at)
            {
                if slot.steps[step].open_abandoned > 0 {
                    slot.steps[step].phase = Phase::Held;
                    continue;
                }
                slot.steps[step].phase = Phase::Ready;
                slot.steps[step].ready_since = now;
                self.classes[self.pipeline.class_of(step)]
                    .ready
                    .insert((seq, step));
            }
        }
        if self.outage.as_ref().is_some_and(|o| o.next_expiry <= now) {
            self.expire_waiting().await?;
        }
        Ok(())
    }

    /// A request passed the step timeout: its attempt is lost, the request stays
    /// open and keeps its permit until the runner answers it.
    async fn on_timeout(&mut self, id: TaskId, now: Instant) -> Result<(), EngineError> {
        let Some(Task::Step(flight)) = self.task_index.get(&id) else {
            return Ok(());
        };
        if flight.abandoned.is_some() {
            return Ok(());
        }
        let (seq, step, number) = (flight.seq, flight.step, flight.attempt);
        self.abandon(id, now);
        let timeout = self.config.step_timeout;
        let Some(slot) = self.runs.get_mut(&seq) else {
            return Ok(());
        };
        let commit = slot.run.id().clone();
        let record = &mut slot.run.steps[step];
        let name = record.name.clone();
        let Some(attempt) = record.attempts.iter_mut().find(|a| a.number == number) else {
            return Ok(());
        };
        attempt.outcome = AttemptOutcome::Lost;
        attempt.reason = Some(format!(
            "no answer within the step timeout of {}s (the request was left open until the runner answers it)",
            timeout.as_secs_f64()
        ));
        attempt.finished_at = Some(now_millis());
        attempt.duration_ms = Some(millis(timeout));
        warn!(commit = %commit.short(10), step = %name, attempt = number, "step timed out");
        let event = self.settle_attempt(seq, step, number, Verdict::Backoff);
        self.commit_change_then(seq, vec![event]).await
    }

    async fn on_command(&mut self, command: Command) -> Result<(), EngineError> {
        match command {
            Command::Cancel { commit, reply } => {
                let answer = self.cancel(&commit).await;
                let answer = match answer {
                    Err(EngineError::Store(e)) => {
                        // The store failing is fatal for the engine; tell the caller too.
                        let message = e.to_string();
                        let _ = reply.send(Err(EngineError::Store(StoreError::Backend(
                            message.clone().into(),
                        ))));
                        return Err(EngineError::Store(e));
                    }
                    other => other,
                };
                let _ = reply.send(answer);
                Ok(())
            }
            Command::Runners { reply } => {
                let _ = reply.send(vec![RunnerStatus {
                    id: self.pool.members()[0].id.clone(),
                    state: if self.outage.is_some() { RunnerState::Down } else { RunnerState::Up },
                    since: now_millis(),
                    in_flight: 0,
                    in_flight_by_class: BTreeMap::new(),
                    held: 0,
                    outages: self.outages,
                    crashes: 0,
                    lost_attempts: 0,
                    last_error: None,
                }]);
                Ok(())
            }
        }
    }

    async fn cancel(&mut self, commit: &CommitId) -> Result<CancelOutcome, EngineError> {
        let Some(&seq) = self.by_commit.get(commit) else {
            return match self.store.has_run(commit).await? {
                true => Ok(CancelOutcome::AlreadyFinished),
                false => Err(EngineError::UnknownRun(commit.clone())),
            };
        };
        let now = Instant::now();
        let flights: Vec<TaskId> = self
            .task_index
            .iter()
            .filter_map(|(&id, t)| match t {
                Task::Step(f) if f.seq == seq && f.abandoned.is_none() => Some(id),
                _ => None,
            })
            .collect();
        for id in flights {
            // The request stays open and keeps its permit until the runner answers.
            self.abandon(id, now);
        }
        let mut events = Vec::new();
        let slot = self.runs.get_mut(&seq).expect("indexed runs are live");
        for (i, step) in slot.steps.iter_mut().enumerate() {
            match step.phase {
                Phase::Done => continue,
                Phase::Ready => {
                    self.classes[self.pipeline.class_of(i)]
                        .ready
                        .remove(&(seq, i));
                }
                Phase::Backoff(at) => {
                    self.backoff.remove(&(at, seq, i));
                }
                Phase::Blocked | Phase::InFlight | Phase::Held => {}
            }
            step.phase = Phase::Done;
            let record = &mut slot.run.steps[i];
            if let Some(a) = record
                .attempts
                .last_mut()
                .filter(|a| a.outcome == AttemptOutcome::Running)
            {
                a.outcome = AttemptOutcome::Cancelled;
                a.reason = Some("the run was cancelled".into());
                a.finished_at = Some(now_millis());
                events.push(EngineEvent::StepFinished {
                    commit: commit.clone(),
                    step: record.name.clone(),
                    attempt: a.number,
                    outcome: AttemptOutcome::Cancelled,
                    status: StepStatus::Cancelled,
                    retry_in_ms: None,
                });
            }
            record.status = StepStatus::Cancelled;
            record.reason = Some("the run was cancelled".into());
        }
        info!(%commit, "run cancelled");
        self.commit_change_then(seq, events).await?;
        Ok(CancelOutcome::Cancelled)
    }

    // ----- bookkeeping ------------------------------------------------------

    /// Settles run `seq`'s status, writes it to the store, and if it finished
    /// announces that and forgets it.
    async fn commit_change(&mut self, seq: u64) -> Result<(), EngineError> {
        self.commit_change_then(seq, Vec::new()).await
    }

    /// [`commit_change`](Self::commit_change), announcing `events` once the
    /// change is stored and before the run's end, if it ended.
    async fn commit_change_then(
        &mut self,
        seq: u64,
        events: Vec<EngineEvent>,
    ) -> Result<(), EngineError> {
        let Some(slot) = self.runs.get_mut(&seq) else {
            return Ok(());
        };
        slot.run.settle();
        self.store.update_run(&slot.run).await?;
        for event in events {
            self.emit(event);
        }
        let Some(slot) = self.runs.get(&seq) else {
            return Ok(());
        };
        if slot.run.status.is_terminal() {
            let slot = self.runs.remove(&seq).expect("present above");
            self.by_commit.remove(slot.run.id());
            info!(commit = %slot.run.id().short(10), status = %slot.run.status, failed = ?slot.run.failed_steps, "run finished");
            self.emit(EngineEvent::RunFinished {
                commit: slot.run.commit.id,
                status: slot.run.status,
            });
        }
        Ok(())
    }

    fn emit(&self, event: EngineEvent) {
        // No subscribers is fine: events are notifications, the store is the record.
        let _ = self.events.send(event);
    }
}

/// What becomes of a step after an attempt.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    /// It ends with this status.
    End(StepStatus),
    /// Retried as soon as the runner accepts requests.
    AtOnce,
    /// Retried after a (jittered) backoff.
    Backoff,
}

/// Whether a request's result shows the runner accepting requests. A lost
/// probe counts: its connection was accepted.
fn answered(result: &Result<StepOutput, RunnerError>, probe: bool) -> bool {
    match result {
        Ok(_) | Err(RunnerError::Rejected(_) | RunnerError::Protocol(_)) => true,
        Err(RunnerError::Lost(_)) => probe,
        Err(RunnerError::Unreachable(_)) => false,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A stable hash of an attempt, the draw of its retry's jitter (FNV-1a).
fn jitter_key(commit: &CommitId, step: &str, attempt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in commit
        .as_str()
        .bytes()
        .chain([0])
        .chain(step.bytes())
        .chain(attempt.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn skip_reason(need: &StepRecord) -> String {
    format!("needs {:?}, which ended {}", need.name, need.status)
}

/// Aborts a task when dropped, so the source feeder never outlives the engine.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long the feeder waits after a source returned an empty batch.
const EMPTY_BATCH_PAUSE: Duration = Duration::from_millis(50);

/// Pulls batches from the source into the engine's channel; retries errors.
async fn feed(
    mut source: Box<dyn CommitSource>,
    batches: mpsc::Sender<Vec<Commit>>,
    retry: Duration,
) {
    loop {
        match source.next_commits().await {
            // Nothing new: a pause, so a source that answers at once cannot spin.
            Ok(Some(commits)) if commits.is_empty() => tokio::time::sleep(EMPTY_BATCH_PAUSE).await,
            Ok(Some(commits)) => {
                if batches.send(commits).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "commit source failed; asking again in {}s", retry.as_secs_f64());
                tokio::time::sleep(retry).await;
            }
        }
    }
}
