//! The scheduling loop and the state it owns. Nothing here is shared: one task
//! runs [`Scheduler::run`], runner calls run in spawned tasks and report back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{CancelOutcome, Command, EngineConfig, EngineError, EngineEvent};
use crate::model::{
    Attempt, AttemptOutcome, Commit, CommitId, Pipeline, Run, StepRecord, StepStatus, now_millis,
};
use crate::runner::{RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};
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
}

struct RunSlot {
    run: Run,
    steps: Vec<StepSlot>,
}

/// A concurrency class: its limit, what is in flight and what waits.
struct ClassState {
    limit: Option<u32>,
    in_flight: u32,
    /// Ready steps as `(run seq, step index)`: the first is the oldest commit's.
    ready: BTreeSet<(u64, usize)>,
}

impl ClassState {
    fn has_permit(&self) -> bool {
        self.limit.is_none_or(|l| self.in_flight < l)
    }
}

struct InFlight {
    seq: u64,
    step: usize,
    probe: bool,
    /// The run was cancelled: the task was aborted and its result is ignored;
    /// the permit stays taken until the task has really ended.
    cancelled: bool,
    abort: AbortHandle,
}

/// The runner did not answer; dispatch waits and probes with one step at a time.
struct Outage {
    since: Instant,
    delay: Duration,
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
    runner: Arc<dyn StepRunner>,
    store: Arc<dyn RunStore>,
    config: EngineConfig,
    events: broadcast::Sender<EngineEvent>,
    runs: BTreeMap<u64, RunSlot>,
    by_commit: HashMap<CommitId, u64>,
    classes: Vec<ClassState>,
    in_flight: usize,
    tasks: JoinSet<Finished>,
    task_index: HashMap<tokio::task::Id, InFlight>,
    backoff: BTreeSet<(Instant, u64, usize)>,
    next_seq: u64,
    outage: Option<Outage>,
    stopping: bool,
}

impl Scheduler {
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        runner: Arc<dyn StepRunner>,
        store: Arc<dyn RunStore>,
        config: EngineConfig,
        events: broadcast::Sender<EngineEvent>,
    ) -> Self {
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
            backoff: BTreeSet::new(),
            next_seq: 0,
            outage: None,
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
                    self.on_timer();
                }
            }
            self.dispatch().await?;
        }
        drop(batches);
        if self.stopping {
            self.drain().await?;
        }
        Ok(())
    }

    /// At shutdown: let in-flight steps finish within the grace period, then
    /// abandon the rest (their attempts stay `running` in the store and are
    /// recovered as interrupted at the next start).
    async fn drain(&mut self) -> Result<(), EngineError> {
        let deadline = Instant::now() + self.config.shutdown_grace;
        while !self.tasks.is_empty() {
            tokio::select! {
                biased;
                Some(joined) = self.tasks.join_next_with_id() => self.on_joined(joined).await?,
                () = tokio::time::sleep_until(deadline) => {
                    warn!(abandoned = self.tasks.len(), "shutdown grace expired; in-flight steps resume at next start");
                    self.tasks.abort_all();
                    break;
                }
            }
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
            let mut slot = StepSlot {
                unmet: 0,
                phase: Phase::Done,
                ready_since: now,
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
    /// unreachable, at most one step (the probe) is sent when its time comes.
    async fn dispatch(&mut self) -> Result<(), EngineError> {
        if self.stopping {
            return Ok(());
        }
        while self.in_flight < self.config.max_in_flight {
            let probe = match &self.outage {
                None => false,
                Some(o) if o.probe_in_flight || Instant::now() < o.next_probe => break,
                Some(_) => true,
            };
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

    async fn start(&mut self, seq: u64, step: usize, probe: bool) -> Result<(), EngineError> {
        let slot = self
            .runs
            .get_mut(&seq)
            .expect("a queued step belongs to a live run");
        let record = &mut slot.run.steps[step];
        let number = u32::try_from(record.attempts.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        record
            .attempts
            .push(Attempt::new(number, AttemptOutcome::Running, now_millis()));
        record.status = StepStatus::Running;
        slot.steps[step].phase = Phase::InFlight;
        let request = StepRequest {
            step: record.name.clone(),
            commit: slot.run.id().clone(),
            attempt: number,
        };
        // Write ahead: if the process dies now, the next start sees the attempt
        // as in flight and records it as interrupted.
        self.commit_change(seq).await?;
        debug!(commit = %request.commit.short(10), step = %request.step, attempt = number, probe, "dispatch");
        self.emit(EngineEvent::StepStarted {
            commit: request.commit.clone(),
            step: request.step.clone(),
            attempt: number,
        });

        self.classes[self.pipeline.class_of(step)].in_flight += 1;
        self.in_flight += 1;
        let runner = Arc::clone(&self.runner);
        let timeout = self.config.step_timeout;
        let abort = self.tasks.spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, runner.run(&request)).await {
                Ok(result) => result,
                Err(_) => Err(RunnerError::Lost(format!(
                    "no answer within the step timeout of {}s",
                    timeout.as_secs_f64()
                ))),
            };
            Finished {
                result,
                elapsed: started.elapsed(),
            }
        });
        self.task_index.insert(
            abort.id(),
            InFlight {
                seq,
                step,
                probe,
                cancelled: false,
                abort,
            },
        );
        Ok(())
    }

    fn release(&mut self, step: usize) {
        let class = &mut self.classes[self.pipeline.class_of(step)];
        class.in_flight = class.in_flight.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    // ----- results ----------------------------------------------------------

    async fn on_joined(
        &mut self,
        joined: Result<(tokio::task::Id, Finished), JoinError>,
    ) -> Result<(), EngineError> {
        let (id, finished) = match joined {
            Ok((id, finished)) => (id, Some(finished)),
            Err(e) => (e.id(), None),
        };
        let Some(flight) = self.task_index.remove(&id) else {
            return Ok(());
        };
        // The task has ended for good: only now is its permit free.
        self.release(flight.step);
        if flight.cancelled {
            return Ok(());
        }
        let finished = finished.unwrap_or_else(|| Finished {
            result: Err(RunnerError::Lost(
                "the runner call panicked or was aborted".into(),
            )),
            elapsed: Duration::ZERO,
        });
        self.on_result(flight, finished).await
    }

    async fn on_result(&mut self, flight: InFlight, finished: Finished) -> Result<(), EngineError> {
        let InFlight {
            seq, step, probe, ..
        } = flight;
        let answered = match &finished.result {
            Ok(_) | Err(RunnerError::Rejected(_) | RunnerError::Protocol(_)) => true,
            Err(RunnerError::Lost(_)) => probe,
            Err(RunnerError::Unreachable(_)) => false,
        };
        if answered && self.outage.take().is_some() {
            info!("runner answers again");
            self.emit(EngineEvent::RunnerUp);
        }

        let Some(slot) = self.runs.get_mut(&seq) else {
            return Ok(());
        };
        let commit = slot.run.id().clone();
        let record = &mut slot.run.steps[step];
        let name = record.name.clone();

        if let Err(RunnerError::Unreachable(reason)) = &finished.result {
            // Nothing was sent: forget the attempt and wait for the runner.
            let _ = record.attempts.pop();
            record.status = StepStatus::Pending;
            slot.steps[step].phase = Phase::Ready;
            self.classes[self.pipeline.class_of(step)]
                .ready
                .insert((seq, step));
            let reason = reason.clone();
            self.runner_unreachable(reason, probe);
            self.commit_change(seq).await?;
            return self.expire_waiting().await;
        }

        let attempt = record
            .attempts
            .last_mut()
            .expect("an in-flight step has an attempt");
        attempt.finished_at = Some(now_millis());
        attempt.duration_ms = Some(u64::try_from(finished.elapsed.as_millis()).unwrap_or(u64::MAX));
        let number = attempt.number;
        let next: Option<StepStatus> = match finished.result {
            Ok(output) => {
                attempt.logs = output.logs;
                attempt.runner_duration_ms = output
                    .duration
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                Some(match output.verdict {
                    StepVerdict::Success => {
                        attempt.outcome = AttemptOutcome::Success;
                        StepStatus::Success
                    }
                    StepVerdict::Failure => {
                        attempt.outcome = AttemptOutcome::Failure;
                        StepStatus::Failure
                    }
                })
            }
            Err(RunnerError::Rejected(reason)) => {
                attempt.outcome = AttemptOutcome::Rejected;
                attempt.reason = Some(reason);
                Some(StepStatus::Error)
            }
            Err(RunnerError::Lost(reason) | RunnerError::Protocol(reason)) => {
                attempt.outcome = AttemptOutcome::Lost;
                attempt.reason = Some(reason);
                let counted = record.counted_attempts();
                if counted >= self.config.max_attempts {
                    record.reason = Some(format!(
                        "gave up after {counted} attempts lost to infrastructure"
                    ));
                    Some(StepStatus::Error)
                } else {
                    None
                }
            }
            Err(RunnerError::Unreachable(_)) => unreachable!("handled above"),
        };
        let outcome = record
            .attempts
            .last()
            .map_or(AttemptOutcome::Lost, |a| a.outcome);
        match next {
            Some(status) => self.finish_step(seq, step, status),
            None => {
                let retry = record.counted_attempts();
                let at = Instant::now() + self.config.backoff_for(retry);
                record.status = StepStatus::Pending;
                slot.steps[step].phase = Phase::Backoff(at);
                self.backoff.insert((at, seq, step));
            }
        }
        let status = self
            .runs
            .get(&seq)
            .map_or(StepStatus::Pending, |s| s.run.steps[step].status);
        let event = EngineEvent::StepFinished {
            commit,
            step: name,
            attempt: number,
            outcome,
            status,
        };
        self.commit_change_then(seq, Some(event)).await
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

    fn runner_unreachable(&mut self, reason: String, probe: bool) {
        let now = Instant::now();
        match &mut self.outage {
            None => {
                warn!(%reason, "runner unreachable; holding dispatch until it answers");
                self.outage = Some(Outage {
                    since: now,
                    delay: self.config.probe_interval,
                    next_probe: now + self.config.probe_interval,
                    probe_in_flight: false,
                });
                self.emit(EngineEvent::RunnerDown { reason });
            }
            Some(o) if probe => {
                o.probe_in_flight = false;
                o.delay = (o.delay * 2).min(self.config.probe_interval_max);
                o.next_probe = now + o.delay;
            }
            Some(_) => {}
        }
    }

    /// Ends `error` every ready step that has waited for the unreachable runner
    /// longer than the configured limit.
    async fn expire_waiting(&mut self) -> Result<(), EngineError> {
        let Some(outage) = &self.outage else {
            return Ok(());
        };
        let now = Instant::now();
        let limit = self.config.unreachable_limit;
        if now.duration_since(outage.since) < limit {
            return Ok(());
        }
        let since = outage.since;
        let mut expired = Vec::new();
        for class in &self.classes {
            for &(seq, step) in &class.ready {
                let ready_since = self.runs[&seq].steps[step].ready_since;
                if ready_since.max(since) + limit <= now {
                    expired.push((seq, step));
                }
            }
        }
        for (seq, step) in expired {
            self.classes[self.pipeline.class_of(step)]
                .ready
                .remove(&(seq, step));
            if let Some(slot) = self.runs.get_mut(&seq) {
                slot.run.steps[step].reason = Some(format!(
                    "the runner was unreachable for more than {}s",
                    limit.as_secs()
                ));
            }
            self.finish_step(seq, step, StepStatus::Error);
            self.commit_change(seq).await?;
        }
        Ok(())
    }

    // ----- timers and commands ---------------------------------------------

    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let backoff = self.backoff.first().map(|&(at, _, _)| at);
        let probe = self
            .outage
            .as_ref()
            .filter(|o| !o.probe_in_flight && o.next_probe > now)
            .map(|o| o.next_probe);
        match (backoff, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves every step whose backoff has passed to its ready queue.
    fn on_timer(&mut self) {
        let now = Instant::now();
        while let Some(&(at, seq, step)) = self.backoff.first() {
            if at > now {
                break;
            }
            self.backoff.pop_first();
            if let Some(slot) = self.runs.get_mut(&seq)
                && slot.steps[step].phase == Phase::Backoff(at)
            {
                slot.steps[step].phase = Phase::Ready;
                slot.steps[step].ready_since = now;
                self.classes[self.pipeline.class_of(step)]
                    .ready
                    .insert((seq, step));
            }
        }
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
        }
    }

    async fn cancel(&mut self, commit: &CommitId) -> Result<CancelOutcome, EngineError> {
        let Some(&seq) = self.by_commit.get(commit) else {
            return match self.store.has_run(commit).await? {
                true => Ok(CancelOutcome::AlreadyFinished),
                false => Err(EngineError::UnknownRun(commit.clone())),
            };
        };
        for flight in self.task_index.values_mut().filter(|f| f.seq == seq) {
            flight.abort.abort();
            flight.cancelled = true;
            if flight.probe
                && let Some(o) = &mut self.outage
            {
                o.probe_in_flight = false;
            }
        }
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
                Phase::Blocked | Phase::InFlight => {}
            }
            step.phase = Phase::Done;
            let record = &mut slot.run.steps[i];
            if let Some(a) = record
                .attempts
                .last_mut()
                .filter(|a| a.outcome == AttemptOutcome::Running)
            {
                a.outcome = AttemptOutcome::Cancelled;
                a.finished_at = Some(now_millis());
            }
            record.status = StepStatus::Cancelled;
            record.reason = Some("the run was cancelled".into());
        }
        info!(%commit, "run cancelled");
        self.commit_change(seq).await?;
        Ok(CancelOutcome::Cancelled)
    }

    // ----- bookkeeping ------------------------------------------------------

    /// Settles run `seq`'s status, writes it to the store, and if it finished
    /// announces that and forgets it.
    async fn commit_change(&mut self, seq: u64) -> Result<(), EngineError> {
        self.commit_change_then(seq, None).await
    }

    /// [`commit_change`](Self::commit_change), announcing `event` once the
    /// change is stored and before the run's end, if it ended.
    async fn commit_change_then(
        &mut self,
        seq: u64,
        event: Option<EngineEvent>,
    ) -> Result<(), EngineError> {
        let Some(slot) = self.runs.get_mut(&seq) else {
            return Ok(());
        };
        slot.run.settle();
        self.store.update_run(&slot.run).await?;
        if let Some(event) = event {
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
