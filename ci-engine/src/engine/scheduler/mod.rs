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
//! The code is split by concern, each file an `impl Scheduler` block over
//! the state this module defines:
//!
//! - this module: the state, the loop, and stopping (drain, interrupt);
//! - `admission`: recovery at start, new commits, the window of active runs;
//! - `readiness`: when a step becomes ready, and leaving the ready queues;
//! - `dispatch`: which ready step goes to which runner, starting and ending
//!   requests;
//! - `outcomes`: what happens when a request ends or a timer fires;
//! - `records`: writing each turn's changes and sending their events;
//! - `commands`: what callers ask (cancel, retry, status);
//! - `health`: each runner's outages, probes and status;
//! - `waiting`: why steps wait.

mod admission;
mod commands;
mod dispatch;
mod health;
mod outcomes;
mod readiness;
mod records;
mod waiting;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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
    /// Runs of the backlog read ahead from the store, in queue order, all at
    /// or past `frontier` and not taken up yet: the next ones
    /// [`take_from_store`](Self::take_from_store) takes, so that taking runs
    /// up one at a time does not cost a read each. Only this engine writes
    /// them, and a write to a run waiting in the store (a cancel) empties it.
    read_ahead: VecDeque<Run>,
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
            read_ahead: VecDeque::new(),
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

/// How many runs of the backlog one read of the store fetches at least, for
/// [`Scheduler::take_from_store`].
const READ_AHEAD: usize = 64;

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
