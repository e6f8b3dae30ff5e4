//! The scheduling loop and the state it owns. Nothing here is shared: one task
//! runs [`Scheduler::run`]; runner calls and probes run in spawned tasks and
//! report back.
//!
//! Steps go to the runners of a [`RunnerPool`]. Each runner has its own permits
//! for the classes whose limit applies per runner, its own cap on requests in
//! flight, and its own health: a runner that is down gets nothing and is probed
//! on its own while the others carry on. Pool-wide classes count their requests
//! over every runner.
//!
//! A request's concurrency permit is held until the request has really ended
//! (the runner answered, the connection closed, or the runner refused it), also
//! when the engine gave up on it earlier (a timeout or a cancel): the attempt is
//! recorded at once, the request stays open. So a runner never holds more
//! requests of a class than the class allows. Only a request held past
//! [`EngineConfig::abandon_limit`] after the engine gave up on it is dropped, and
//! only once its runner has answered a probe.
//!
//! Runs are keyed by their queue position: the run's `seq`, or the position
//! its latest retry gave it (see [`Run::queue_position`]), so the oldest key
//! dispatches first and a retried run queues behind what was waiting.
//!
//! The code is split by concern: this module holds the state, the loop,
//! admission and dispatch; `outcomes` what happens when a request ends or a
//! timer fires; `commands` what callers ask (cancel, retry, status);
//! `health` each runner's outages, probes and status; `waiting` why steps
//! wait.

mod commands;
mod health;
mod outcomes;
mod waiting;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{AbortHandle, Id as TaskId, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Command, EngineConfig, EngineError, EngineEvent};
use crate::model::{
    Attempt, AttemptOutcome, Commit, CommitId, Pipeline, Run, Scope, StepRecord, StepStatus,
    UnixMillis, now_millis,
};
use crate::pool::RunnerPool;
use crate::runner::{Probe, RunnerError, StepOutput, StepRequest, StepRunner};
use crate::source::CommitSource;
use crate::store::RunStore;

/// Where a step is in the scheduler's eyes (the record holds the status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Some need has not succeeded yet.
    Blocked,
    /// In a ready queue of its class.
    Ready,
    /// Waiting to be retried at the given time.
    Backoff(Instant),
    /// Its retry is due, but a runner still holds an earlier attempt of it
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
    /// Requests of earlier attempts, given up on, that a runner still holds.
    open_abandoned: u32,
    /// The runner the step succeeded on (for steps pinned to it).
    ran_on: Option<usize>,
    /// The runner the step must run on (`same_runner_as`), once known.
    pin: Option<usize>,
}

struct RunSlot {
    run: Run,
    steps: Vec<StepSlot>,
}

/// A concurrency class: its limit and scope, and the steps that wait for it.
struct ClassState {
    limit: Option<u32>,
    scope: Scope,
    /// Open requests of the class on all runners, given-up ones included.
    in_flight: u32,
    /// Ready steps that may go to any runner, as `(run seq, step index)`: the
    /// first is the oldest commit's.
    ready: BTreeSet<(u64, usize)>,
    /// Ready steps pinned to a runner, per runner.
    pinned: Vec<BTreeSet<(u64, usize)>>,
}

/// One runner of the pool: its open requests and its health.
struct RunnerSlot {
    id: String,
    runner: Arc<dyn StepRunner>,
    /// Open requests, given-up ones included (against `max_in_flight`).
    in_flight: usize,
    /// Open requests per class.
    class_in_flight: Vec<u32>,
    /// Open requests the engine gave up on.
    held: u32,
    /// Requests held past the abandon limit (flights with `overdue` set).
    overdue: usize,
    /// Set while the runner is down.
    outage: Option<Outage>,
    /// `Some(false)` once the runner said it cannot be probed without a step.
    probe_supported: Option<bool>,
    /// Since when (wall clock) it has been up or down.
    since: UnixMillis,
    outages: u64,
    crashes: u64,
    lost_attempts: u64,
    /// Whether a request was lost since the runner last answered: further
    /// losses belong to the same crash.
    losing: bool,
    last_error: Option<String>,
}

impl RunnerSlot {
    /// Whether the runner is under its cap on requests in flight.
    fn has_room(&self, max_in_flight: usize) -> bool {
        self.in_flight < max_in_flight
    }
}

/// An open request to a runner.
struct Flight {
    /// The run's queue position (re-keyed when the run is retried).
    seq: u64,
    /// The run's commit (the run may end before the request does).
    commit: CommitId,
    step: usize,
    attempt: u32,
    /// Index of the runner in the pool.
    runner: usize,
    /// Sent as the probe of its runner's outage.
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

/// A spawned task: a request, or a probe of the runner with this index.
enum Task {
    Step(Flight),
    Probe(usize),
}

/// What a spawned task hands back.
enum TaskOutput {
    Step(Finished),
    Probe(Probe),
}

/// A runner is down: nothing is dispatched to it; it is probed one probe at a time.
struct Outage {
    since: Instant,
    next_probe: Instant,
    probe_in_flight: bool,
}

/// What a runner task hands back.
struct Finished {
    result: Result<StepOutput, RunnerError>,
    elapsed: Duration,
}

pub(crate) struct Scheduler {
    pipeline: Arc<Pipeline>,
    store: Arc<dyn RunStore>,
    config: EngineConfig,
    events: broadcast::Sender<EngineEvent>,
    runs: BTreeMap<u64, RunSlot>,
    by_commit: HashMap<CommitId, u64>,
    classes: Vec<ClassState>,
    runners: Vec<RunnerSlot>,
    tasks: JoinSet<TaskOutput>,
    task_index: HashMap<TaskId, Task>,
    /// Step timeouts of requests the engine still waits for.
    deadlines: BTreeSet<(Instant, TaskId)>,
    /// When given-up requests pass the abandon limit.
    abandon_deadlines: BTreeSet<(Instant, TaskId)>,
    backoff: BTreeSet<(Instant, u64, usize)>,
    next_seq: u64,
    /// How many outages have begun, over all runners.
    outages: u64,
    /// When to look again for steps that waited past the unreachable limit;
    /// `None` while every runner is up.
    next_expiry: Option<Instant>,
    /// Runs changed since the last flush (keys of `runs`).
    dirty: BTreeSet<u64>,
    /// Runs that finished since the last flush (no longer in `runs`).
    finished_unwritten: Vec<Run>,
    /// Events waiting for the flush of what they announce.
    pending_events: Vec<EngineEvent>,
    /// How many flushes have written to the store.
    flushes: u64,
    /// `flushes`, for requests waiting for their attempt to be recorded.
    flushed: watch::Sender<u64>,
    /// Every unfinished run with a queue position below this is in `runs`;
    /// those at or past it may wait in the store only.
    frontier: u64,
    /// Whether the store may hold unfinished runs at or past `frontier` that
    /// are not in `runs` (see [`EngineConfig::active_runs`]).
    backlog: bool,
    /// Classes of the steps that need nothing: the ones a run taken up from
    /// the store can make busy at once.
    root_classes: Vec<usize>,
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
        let n_runners = pool.len();
        let classes = pipeline
            .classes()
            .iter()
            .map(|c| ClassState {
                limit: c.limit,
                scope: c.scope,
                in_flight: 0,
                ready: BTreeSet::new(),
                pinned: vec![BTreeSet::new(); n_runners],
            })
            .collect();
        let mut root_classes: Vec<usize> = (0..pipeline.len())
            .filter(|&i| pipeline.needs_of(i).is_empty())
            .map(|i| pipeline.class_of(i))
            .collect();
        root_classes.sort_unstable();
        root_classes.dedup();
        let started = now_millis();
        let runners = pool
            .members()
            .iter()
            .map(|m| RunnerSlot {
                id: m.id.clone(),
                runner: Arc::clone(&m.runner),
                in_flight: 0,
                class_in_flight: vec![0; pipeline.classes().len()],
                held: 0,
                overdue: 0,
                outage: None,
                probe_supported: None,
                since: started,
                outages: 0,
                crashes: 0,
                lost_attempts: 0,
                losing: false,
                last_error: None,
            })
            .collect();
        Self {
            pipeline,
            store,
            config,
            events,
            runs: BTreeMap::new(),
            by_commit: HashMap::new(),
            classes,
            runners,
            tasks: JoinSet::new(),
            task_index: HashMap::new(),
            deadlines: BTreeSet::new(),
            abandon_deadlines: BTreeSet::new(),
            backoff: BTreeSet::new(),
            next_seq: 0,
            outages: 0,
            next_expiry: None,
            dirty: BTreeSet::new(),
            finished_unwritten: Vec::new(),
            pending_events: Vec::new(),
            flushes: 0,
            flushed: watch::Sender::new(0),
            frontier: 0,
            backlog: false,
            root_classes,
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
        self.flush().await?;
        loop {
            if !source_open && self.runs.is_empty() && !self.backlog {
                info!("source exhausted and every run finished");
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!(in_flight = self.task_index.len(), "shutting down");
                    self.stopping = true;
                    break;
                }
                Some(command) = commands.recv() => self.on_command(command).await?,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_joined(joined).await?;
                    // Every other answer already in: one flush for all.
                    while let Some(joined) = self.tasks.try_join_next_with_id() {
                        self.on_joined(joined).await?;
                    }
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
            self.flush().await?;
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
                    self.flush().await?;
                    break;
                }
                () = tokio::time::sleep_until(wake.unwrap_or(deadline)), if wake.is_some() => {
                    self.on_timer().await?;
                }
            }
            self.flush().await?;
        }
        self.flush().await?;
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
            attempt.interrupt();
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

    /// Numbers new runs after every stored one, and leaves the unfinished
    /// runs of the store to be taken up, in queue order, by [`refill`](Self::refill).
    async fn recover(&mut self) -> Result<(), EngineError> {
        self.next_seq = self.store.max_seq().await?.map_or(0, |m| m + 1);
        self.frontier = 0;
        self.backlog = true;
        Ok(())
    }

    /// Takes up a run read from the store: lines its steps up with the
    /// pipeline, records attempts a previous engine left in flight as
    /// interrupted, and admits it.
    async fn take_up(&mut self, mut run: Run) -> Result<(), EngineError> {
        self.normalize_steps(&mut run);
        let mut interrupted_any = false;
        for step in &mut run.steps {
            let mut interrupted = false;
            for attempt in &mut step.attempts {
                if attempt.outcome == AttemptOutcome::Running {
                    attempt.interrupt();
                    interrupted = true;
                }
            }
            if step.status == StepStatus::Running || interrupted && !step.status.is_terminal() {
                step.status = StepStatus::Pending;
            }
            interrupted_any |= interrupted;
        }
        if interrupted_any {
            info!(commit = %run.id().short(10), "resuming a run the engine stopped in");
        }
        self.admit(run, Vec::new()).await
    }

    /// Takes up to `n` unfinished runs from the store, in queue order, from
    /// the frontier on. Returns how many; fewer than `n` means the store
    /// holds no more (the engine is its only writer), and the backlog is gone.
    async fn take_from_store(&mut self, n: usize) -> Result<usize, EngineError> {
        let page = self.store.unfinished_after(self.frontier, n).await?;
        let taken = page.len();
        if taken < n {
            self.backlog = false;
        }
        for run in page {
            self.frontier = self.frontier.max(run.queue_position() + 1);
            if self.by_commit.contains_key(run.id()) {
                continue;
            }
            self.take_up(run).await?;
        }
        Ok(taken)
    }

    /// Fills the window of active runs from the store's backlog.
    async fn refill(&mut self) -> Result<(), EngineError> {
        while self.backlog && self.runs.len() < self.config.active_runs {
            let room = (self.config.active_runs - self.runs.len()).min(REFILL_PAGE);
            if self.take_from_store(room).await? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Whether memory holds fewer runs than the ceiling of early take-up,
    /// [`EngineConfig::memory_ceiling`]. Runs taken up early finish their
    /// first steps and then wait for later ones; without a ceiling, an
    /// unlimited first class (or a first class faster than a later one) would
    /// take the whole backlog into memory.
    fn below_ceiling(&self) -> bool {
        self.runs.len() < self.config.memory_ceiling()
    }

    /// Whether some runner could start a step of a class that steps needing
    /// nothing belong to, and no such step is ready: a run taken up from the
    /// backlog would make it busy.
    fn root_permit_idle(&self) -> bool {
        self.root_classes
            .iter()
            .any(|&c| self.classes[c].ready.is_empty() && self.least_loaded(c).is_some())
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
            if self.has_room() {
                self.frontier = run.seq + 1;
                self.admit(run, Vec::new()).await?;
            } else {
                // It waits in the store; `refill` takes it up in its turn.
                self.backlog = true;
            }
        }
        Ok(())
    }

    /// Whether a new run may go straight into memory: nothing waits in the
    /// store ahead of it and the window has room.
    fn has_room(&self) -> bool {
        !self.backlog && self.runs.len() < self.config.active_runs
    }

    /// Builds the scheduling state of a run whose steps are pending or terminal,
    /// skips what can no longer run, queues what is ready (or holds it while a
    /// runner still holds an earlier attempt of it), persists, and announces
    /// `events`.
    async fn admit(&mut self, mut run: Run, events: Vec<EngineEvent>) -> Result<(), EngineError> {
        let seq = run.queue_position();
        let now = Instant::now();
        let n = self.pipeline.len();
        let mut steps: Vec<StepSlot> = Vec::with_capacity(n);
        for i in 0..n {
            let status = run.steps[i].status;
            let next_attempt = run.steps[i].next_attempt_number();
            let ran_on = (status == StepStatus::Success)
                .then(|| self.succeeded_on(&run.steps[i]))
                .flatten();
            let open_abandoned = self.open_abandoned(seq, i);
            let mut slot = StepSlot {
                unmet: 0,
                phase: Phase::Done,
                ready_since: now,
                next_attempt,
                lost_at_outage: None,
                open_abandoned,
                ran_on,
                pin: None,
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
                } else if let Some(reason) = self.lost_pin(&run, i) {
                    let step = &mut run.steps[i];
                    step.status = StepStatus::Error;
                    step.reason = Some(reason);
                } else {
                    slot.unmet = needs
                        .iter()
                        .filter(|&&j| run.steps[j].status != StepStatus::Success)
                        .count();
                    slot.phase = Phase::Blocked;
                }
            }
            steps.push(slot);
        }
        let ready: Vec<usize> = (0..n)
            .filter(|&i| steps[i].phase == Phase::Blocked && steps[i].unmet == 0)
            .collect();
        self.by_commit.insert(run.id().clone(), seq);
        self.runs.insert(seq, RunSlot { run, steps });
        for i in ready {
            self.ready_or_held(seq, i, now);
        }
        self.commit_change_then(seq, events).await
    }

    /// Requests of step `step` of the run keyed `seq` that the engine gave up
    /// on and a runner still holds.
    fn open_abandoned(&self, seq: u64, step: usize) -> u32 {
        let n = self
            .task_index
            .values()
            .filter(|t| {
                matches!(t, Task::Step(f) if f.seq == seq && f.step == step && f.abandoned.is_some())
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Makes a step that may run ready, or holds it while a runner still
    /// holds an earlier attempt of it (it becomes ready when that ends).
    fn ready_or_held(&mut self, seq: u64, step: usize, now: Instant) {
        let Some(slot) = self.runs.get_mut(&seq) else {
            return;
        };
        if slot.steps[step].open_abandoned > 0 {
            slot.steps[step].phase = Phase::Held;
        } else {
            self.make_ready(seq, step, now);
        }
    }

    /// The pool index of the runner a successful step's last attempt ran on.
    fn succeeded_on(&self, record: &StepRecord) -> Option<usize> {
        let id = success_runner(record)?;
        self.runners.iter().position(|r| r.id == id)
    }

    /// Why step `i` of a stored run can never run: it must run where a step
    /// succeeded on a runner that is no longer in the pool.
    fn lost_pin(&self, run: &Run, i: usize) -> Option<String> {
        let j = self.pipeline.same_runner_as(i)?;
        let record = &run.steps[j];
        if record.status != StepStatus::Success {
            return None;
        }
        let id = success_runner(record)?;
        (self.succeeded_on(record).is_none()).then(|| {
            format!(
                "must run where {:?} ran, on runner {id}, which is no longer in the pool",
                record.name
            )
        })
    }

    /// Puts step `step` of run `seq` in the ready queue it belongs to: its
    /// pinned runner's, or the class's shared one.
    fn make_ready(&mut self, seq: u64, step: usize, now: Instant) {
        let Some(slot) = self.runs.get_mut(&seq) else {
            return;
        };
        let pin = self
            .pipeline
            .same_runner_as(step)
            .and_then(|j| slot.steps[j].ran_on);
        let s = &mut slot.steps[step];
        s.phase = Phase::Ready;
        s.ready_since = now;
        s.pin = pin;
        let class = &mut self.classes[self.pipeline.class_of(step)];
        match pin {
            Some(r) => class.pinned[r].insert((seq, step)),
            None => class.ready.insert((seq, step)),
        };
    }

    /// Takes a ready step out of its queue.
    fn unqueue(&mut self, seq: u64, step: usize) {
        let pin = self.runs.get(&seq).and_then(|s| s.steps[step].pin);
        let class = &mut self.classes[self.pipeline.class_of(step)];
        match pin {
            Some(r) => class.pinned[r].remove(&(seq, step)),
            None => class.ready.remove(&(seq, step)),
        };
    }

    // ----- dispatch ---------------------------------------------------------

    /// Starts every step that may start now. First each runner that is down
    /// and due gets its probe; then, as long as some ready step can go
    /// somewhere, the oldest such step goes to the runner that is up, has room
    /// under its cap and a free permit for the step's class, with the fewest
    /// requests of that class in flight (then the fewest in flight, then the
    /// first in pool order). Pinned steps go to their runner only.
    async fn dispatch(&mut self) -> Result<(), EngineError> {
        if self.stopping {
            return Ok(());
        }
        for r in 0..self.runners.len() {
            self.probe_if_due(r).await?;
        }
        self.refill().await?;
        loop {
            while let Some((seq, step, r)) = self.next_dispatch() {
                self.unqueue(seq, step);
                self.start(seq, step, r, false).await?;
            }
            // Work conservation beyond the window: a permit that would idle
            // while runs wait in the store takes up the next of them, as long
            // as memory holds fewer than the ceiling.
            if !(self.backlog && self.below_ceiling() && self.root_permit_idle())
                || self.take_from_store(1).await? == 0
            {
                return Ok(());
            }
        }
    }

    /// Whether runner `r` has a permit for class `c` (its own count for a
    /// per-runner class, the pool's for a pool-wide one) and room under its cap.
    fn has_permit(&self, c: usize, r: usize) -> bool {
        let class = &self.classes[c];
        let runner = &self.runners[r];
        if !runner.has_room(self.config.max_in_flight) {
            return false;
        }
        let count = match class.scope {
            Scope::Runner => runner.class_in_flight[c],
            Scope::Pool => class.in_flight,
        };
        class.limit.is_none_or(|l| count < l)
    }

    /// Whether runner `r` takes steps now: it is up.
    fn takes_steps(&self, r: usize) -> bool {
        self.runners[r].outage.is_none()
    }

    /// The oldest ready step that some runner can take now, and that runner.
    fn next_dispatch(&self) -> Option<(u64, usize, usize)> {
        let mut best: Option<((u64, usize), usize)> = None;
        let mut consider = |key: (u64, usize), r: usize| {
            if best.is_none_or(|(b, _)| key < b) {
                best = Some((key, r));
            }
        };
        for (c, class) in self.classes.iter().enumerate() {
            if let Some(&key) = class.ready.first()
                && let Some(r) = self.least_loaded(c)
            {
                consider(key, r);
            }
            for (r, pinned) in class.pinned.iter().enumerate() {
                if let Some(&key) = pinned.first()
                    && self.takes_steps(r)
                    && self.has_permit(c, r)
                {
                    consider(key, r);
                }
            }
        }
        best.map(|((seq, step), r)| (seq, step, r))
    }

    /// Among the runners that are up with a permit for class `c`: the fewest
    /// requests of the class in flight, then the fewest in flight, then the
    /// first in pool order.
    fn least_loaded(&self, c: usize) -> Option<usize> {
        (0..self.runners.len())
            .filter(|&r| self.takes_steps(r) && self.has_permit(c, r))
            .min_by_key(|&r| {
                let runner = &self.runners[r];
                (runner.class_in_flight[c], runner.in_flight, r)
            })
    }

    /// The oldest ready step runner `r` could run as a probe: one pinned to it
    /// or free to go anywhere, with a permit on it.
    fn probe_step_for(&self, r: usize) -> Option<(u64, usize)> {
        self.classes
            .iter()
            .enumerate()
            .filter(|&(c, _)| self.has_permit(c, r))
            .filter_map(|(_, class)| {
                let any = class.ready.first().copied();
                let pinned = class.pinned[r].first().copied();
                any.into_iter().chain(pinned).min()
            })
            .min()
    }

    async fn start(
        &mut self,
        seq: u64,
        step: usize,
        r: usize,
        probe: bool,
    ) -> Result<(), EngineError> {
        let runner_id = self.runners[r].id.clone();
        let spec = &self.pipeline.steps()[step];
        let timeout = spec.timeout.unwrap_or(self.config.step_timeout);
        let runner_step = spec.runner_step().to_owned();
        let slot = self
            .runs
            .get_mut(&seq)
            .expect("a queued step belongs to a live run");
        let number = slot.steps[step].next_attempt;
        slot.steps[step].next_attempt = number.saturating_add(1);
        slot.steps[step].phase = Phase::InFlight;
        let commit = slot.run.id().clone();
        let record = &mut slot.run.steps[step];
        let mut attempt = Attempt::new(number, AttemptOutcome::Running, now_millis());
        attempt.runner = Some(runner_id.clone());
        record.attempts.push(attempt);
        record.status = StepStatus::Running;
        let request = StepRequest {
            step: runner_step,
            commit,
            attempt: number,
        };
        // Write ahead: the request waits for the flush that records the
        // attempt, so if the process dies after it went out, the next start
        // sees the attempt as in flight and records it as interrupted.
        let started = EngineEvent::StepStarted {
            commit: request.commit.clone(),
            step: record.name.clone(),
            attempt: number,
            runner: runner_id.clone(),
        };
        self.commit_change_then(seq, vec![started]).await?;
        debug!(commit = %request.commit.short(10), step = %request.step, attempt = number, runner = %runner_id, probe, "dispatch");

        let c = self.pipeline.class_of(step);
        self.classes[c].in_flight += 1;
        let runner = &mut self.runners[r];
        runner.class_in_flight[c] += 1;
        runner.in_flight += 1;
        let call = Arc::clone(&runner.runner);
        let request_commit = request.commit.clone();
        // The request goes out once the flush that records its attempt is done.
        let mut flushed = self.flushed.subscribe();
        let recorded = self.flushes + 1;
        let abort = self.tasks.spawn(async move {
            if flushed.wait_for(|&n| n >= recorded).await.is_err() {
                return TaskOutput::Step(Finished {
                    result: Err(RunnerError::Unreachable(
                        "the engine stopped before the attempt was recorded".into(),
                    )),
                    elapsed: Duration::ZERO,
                });
            }
            let started = Instant::now();
            let result = call.run(&request).await;
            TaskOutput::Step(Finished {
                result,
                elapsed: started.elapsed(),
            })
        });
        let deadline = Instant::now() + timeout;
        self.deadlines.insert((deadline, abort.id()));
        self.task_index.insert(
            abort.id(),
            Task::Step(Flight {
                seq,
                commit: request_commit,
                step,
                attempt: number,
                runner: r,
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
        let runner = &mut self.runners[flight.runner];
        if let Some(at) = flight.abandoned {
            runner.held = runner.held.saturating_sub(1);
            self.abandon_deadlines
                .remove(&(at + self.config.abandon_limit, id));
            let mut now_ready = false;
            if let Some(slot) = self.runs.get_mut(&flight.seq) {
                let s = &mut slot.steps[flight.step];
                s.open_abandoned = s.open_abandoned.saturating_sub(1);
                now_ready = s.open_abandoned == 0 && s.phase == Phase::Held;
            }
            if now_ready {
                self.make_ready(flight.seq, flight.step, Instant::now());
            }
        }
        let runner = &mut self.runners[flight.runner];
        if flight.overdue {
            runner.overdue = runner.overdue.saturating_sub(1);
        }
        let c = self.pipeline.class_of(flight.step);
        runner.class_in_flight[c] = runner.class_in_flight[c].saturating_sub(1);
        runner.in_flight = runner.in_flight.saturating_sub(1);
        if flight.probe
            && let Some(o) = &mut runner.outage
        {
            o.probe_in_flight = false;
        }
        let class = &mut self.classes[c];
        class.in_flight = class.in_flight.saturating_sub(1);
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
            self.runners[flight.runner].held += 1;
            if let Some(slot) = self.runs.get_mut(&flight.seq) {
                slot.steps[flight.step].open_abandoned += 1;
            }
        }
    }

    // ----- bookkeeping ------------------------------------------------------

    /// Settles run `seq`'s status, writes it to the store, and if it finished
    /// announces that and forgets it.
    async fn commit_change(&mut self, seq: u64) -> Result<(), EngineError> {
        self.commit_change_then(seq, Vec::new()).await
    }

    /// [`commit_change`](Self::commit_change), announcing `events` once the
    /// change is stored and before the run's end, if it ended. The write
    /// itself waits for the next [`flush`](Self::flush).
    async fn commit_change_then(
        &mut self,
        seq: u64,
        events: Vec<EngineEvent>,
    ) -> Result<(), EngineError> {
        let Some(slot) = self.runs.get_mut(&seq) else {
            return Ok(());
        };
        slot.run.settle();
        let finished = slot.run.status.is_terminal();
        self.pending_events.extend(events);
        if finished {
            let slot = self.runs.remove(&seq).expect("present above");
            self.by_commit.remove(slot.run.id());
            self.dirty.remove(&seq);
            info!(commit = %slot.run.id().short(10), status = %slot.run.status, failed = ?slot.run.failed_steps, "run finished");
            self.emit(EngineEvent::RunFinished {
                commit: slot.run.commit.id.clone(),
                status: slot.run.status,
            });
            self.finished_unwritten.push(slot.run);
        } else {
            self.dirty.insert(seq);
        }
        Ok(())
    }

    /// Writes every change made since the last flush to the store, in one
    /// batch (one transaction on a store that has them), then sends the
    /// events that announce them, then lets the requests dispatched since go
    /// out. Called once per turn of the loop, and before a command is
    /// answered: so the promises hold (an attempt is recorded before its
    /// request is sent; an event is sent after the write it announces) while
    /// the changes of a turn share one write.
    async fn flush(&mut self) -> Result<(), EngineError> {
        if !self.dirty.is_empty() || !self.finished_unwritten.is_empty() {
            let mut runs = std::mem::take(&mut self.finished_unwritten);
            runs.extend(
                std::mem::take(&mut self.dirty)
                    .into_iter()
                    .filter_map(|seq| self.runs.get(&seq).map(|slot| slot.run.clone())),
            );
            self.store.update_runs(runs).await?;
            self.flushes += 1;
            self.flushed.send_replace(self.flushes);
        }
        for event in self.pending_events.drain(..) {
            // No subscribers is fine: events are notifications, the store is
            // the record.
            let _ = self.events.send(event);
        }
        Ok(())
    }

    /// Queues `event`; [`flush`](Self::flush) sends it once what it
    /// announces is stored.
    fn emit(&mut self, event: EngineEvent) {
        self.pending_events.push(event);
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

/// The id of the runner a step's last successful attempt ran on, if recorded.
fn success_runner(record: &StepRecord) -> Option<&str> {
    record
        .attempts
        .iter()
        .rev()
        .find(|a| a.outcome == AttemptOutcome::Success)?
        .runner
        .as_deref()
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

/// Most runs read from the store at once when the window refills.
const REFILL_PAGE: usize = 256;

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
