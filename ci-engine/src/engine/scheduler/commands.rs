//! What callers ask of the engine through its handle: cancel a run, retry a
//! finished one, and the status questions (runners, classes, why steps wait).

use tokio::sync::oneshot;
use tokio::task::Id as TaskId;
use tokio::time::Instant;
use tracing::info;

use super::{Phase, Scheduler, Task};
use crate::engine::{CancelOutcome, Command, EngineError, EngineEvent, RetryOutcome};
use crate::model::{
    AttemptOutcome, CommitId, Run, RunAction, RunActionKind, StepStatus, now_millis,
};
use crate::store::StoreError;

impl Scheduler {
    pub(super) async fn on_command(&mut self, command: Command) -> Result<(), EngineError> {
        match command {
            Command::Cancel { commit, by, reply } => {
                let answer = self.cancel(&commit, by).await;
                let answer = self.stored(answer).await;
                answer_then_stop_on_store_error(reply, answer)
            }
            Command::Retry { commit, by, reply } => {
                let answer = self.retry(&commit, by).await;
                let answer = self.stored(answer).await;
                answer_then_stop_on_store_error(reply, answer)
            }
            Command::Runners { reply } => {
                let _ = reply.send(self.runner_statuses());
                Ok(())
            }
            Command::Waiting { commit, reply } => {
                let _ = reply.send(self.waiting(&commit));
                Ok(())
            }
            Command::Classes { reply } => {
                let _ = reply.send(self.class_statuses());
                Ok(())
            }
        }
    }

    /// `answer`, once the change it reports is in the store (a flush).
    async fn stored<T>(&mut self, answer: Result<T, EngineError>) -> Result<T, EngineError> {
        let value = answer?;
        self.flush().await?;
        Ok(value)
    }

    async fn cancel(
        &mut self,
        commit: &CommitId,
        by: Option<String>,
    ) -> Result<CancelOutcome, EngineError> {
        let Some(&seq) = self.by_commit.get(commit) else {
            return self.cancel_stored(commit, by).await;
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
        let n = self.runs.get(&seq).map_or(0, |s| s.steps.len());
        for i in 0..n {
            let phase = self.runs[&seq].steps[i].phase;
            match phase {
                Phase::Ready => self.unqueue(seq, i),
                Phase::Backoff(at) => {
                    self.backoff.remove(&(at, seq, i));
                }
                Phase::Blocked | Phase::InFlight | Phase::Held | Phase::Done => {}
            }
        }
        let mut events = Vec::new();
        let slot = self.runs.get_mut(&seq).expect("indexed runs are live");
        for (i, step) in slot.steps.iter_mut().enumerate() {
            if step.phase == Phase::Done {
                continue;
            }
            step.phase = Phase::Done;
            let record = &mut slot.run.steps[i];
            if let Some(attempt) = record.cancel() {
                events.push(EngineEvent::StepFinished {
                    commit: commit.clone(),
                    step: record.name.clone(),
                    attempt,
                    outcome: AttemptOutcome::Cancelled,
                    status: StepStatus::Cancelled,
                    retry_in_ms: None,
                });
            }
        }
        slot.run.actions.push(RunAction {
            kind: RunActionKind::Cancel,
            at: now_millis(),
            by: by.clone(),
        });
        info!(%commit, by = by.as_deref().unwrap_or("-"), "run cancelled");
        self.commit_change_then(seq, events).await?;
        Ok(CancelOutcome::Cancelled)
    }

    /// The stored run of `commit` (a full id: a prefix is no run's id).
    async fn stored_run(&self, commit: &CommitId) -> Result<Run, EngineError> {
        match self.store.get_run(commit.as_str()).await {
            Ok(run) if run.id() == commit => Ok(run),
            Ok(_) | Err(StoreError::NotFound(_) | StoreError::Ambiguous { .. }) => {
                Err(EngineError::UnknownRun(commit.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels a run that is not in memory: finished (nothing to do), or
    /// unfinished and waiting in the store for its turn (its steps end
    /// `cancelled` there; none is in flight, as the run was never taken up
    /// by this engine, and an attempt a previous engine left `running` is
    /// recorded `cancelled`).
    async fn cancel_stored(
        &mut self,
        commit: &CommitId,
        by: Option<String>,
    ) -> Result<CancelOutcome, EngineError> {
        let mut run = self.stored_run(commit).await?;
        if run.status.is_terminal() {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        for record in run.steps.iter_mut().filter(|r| !r.status.is_terminal()) {
            record.cancel();
        }
        run.actions.push(RunAction {
            kind: RunActionKind::Cancel,
            at: now_millis(),
            by: by.clone(),
        });
        run.settle();
        self.forget_read_ahead();
        self.store.update_run(&run).await?;
        info!(%commit, by = by.as_deref().unwrap_or("-"), "run cancelled while it waited in the store");
        self.emit(EngineEvent::RunFinished {
            commit: commit.clone(),
            status: run.status,
        });
        Ok(CancelOutcome::Cancelled)
    }

    /// Starts a new round of a finished run (see
    /// [`EngineHandle::retry`](crate::EngineHandle::retry)). The run takes the
    /// next sequence number as its queue position, so its steps queue behind
    /// every step already waiting; requests of its earlier attempts that a
    /// runner still holds keep holding their steps (phase `Held`).
    async fn retry(
        &mut self,
        commit: &CommitId,
        by: Option<String>,
    ) -> Result<RetryOutcome, EngineError> {
        if self.stopping {
            return Err(EngineError::NotRunning);
        }
        if self.by_commit.contains_key(commit) {
            return Ok(RetryOutcome::NotFinished);
        }
        let mut run = self.stored_run(commit).await?;
        if !run.status.is_terminal() {
            // Unfinished in the store but not live here: it is taken up at
            // the next start; a retry now would race that.
            return Ok(RetryOutcome::NotFinished);
        }
        self.normalize_steps(&mut run);
        let position = self.next_seq;
        let action = RunAction {
            kind: RunActionKind::Retry,
            at: now_millis(),
            by: by.clone(),
        };
        let mut steps = run.retry(position, action);
        if steps.is_empty() {
            return Ok(RetryOutcome::NothingToRetry);
        }
        self.next_seq += 1;
        steps.retain(|name| self.pipeline.steps().iter().any(|s| &s.name == name));
        // Requests of earlier attempts still open belong to the run's new key.
        for task in self.task_index.values_mut() {
            if let Task::Step(f) = task
                && f.commit == *commit
            {
                f.seq = position;
            }
        }
        info!(%commit, by = by.as_deref().unwrap_or("-"), steps = ?steps, "run retried");
        let retried = EngineEvent::RunRetried {
            commit: commit.clone(),
            seq: position,
            steps: steps.clone(),
        };
        if self.has_room() {
            self.frontier = position + 1;
            self.admit(run, vec![retried]).await?;
        } else {
            // Runs wait in the store ahead of it: it waits there too, in its
            // place, and is taken up in its turn.
            self.store.update_run(&run).await?;
            self.backlog = true;
            self.emit(retried);
        }
        Ok(RetryOutcome::Retried { steps })
    }
}

/// Sends `answer` to the caller. A store failure is fatal for the engine:
/// the caller hears of it too, and the engine stops with it.
fn answer_then_stop_on_store_error<T>(
    reply: oneshot::Sender<Result<T, EngineError>>,
    answer: Result<T, EngineError>,
) -> Result<(), EngineError> {
    match answer {
        Err(EngineError::Store(e)) => {
            let message = e.to_string();
            let _ = reply.send(Err(EngineError::Store(StoreError::Backend(message.into()))));
            Err(EngineError::Store(e))
        }
        other => {
            let _ = reply.send(other);
            Ok(())
        }
    }
}
