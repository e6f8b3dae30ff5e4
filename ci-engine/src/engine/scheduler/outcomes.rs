//! What happens when a request ends or a timer fires: the attempt is
//! recorded, the step ends or is scheduled again, and what depends on it moves
//! on; steps that waited too long for a runner end.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id as TaskId, JoinError};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    Finished, Flight, Phase, Scheduler, Task, TaskOutput, Verdict, answered, jitter_key, millis,
    skip_reason,
};
use crate::engine::{EngineError, EngineEvent};
use crate::model::{AttemptOutcome, StepStatus, now_millis};
use crate::runner::{Probe, RunnerError, StepVerdict};

impl Scheduler {
    // ----- results ----------------------------------------------------------

    pub(super) async fn on_joined(
        &mut self,
        joined: Result<(TaskId, TaskOutput), JoinError>,
    ) -> Result<(), EngineError> {
        let (id, output) = match joined {
            Ok((id, output)) => (id, Some(output)),
            Err(e) => (e.id(), None),
        };
        match self.task_index.remove(&id) {
            None => Ok(()),
            Some(Task::Probe(r)) => {
                let probe = match output {
                    Some(TaskOutput::Probe(p)) => p,
                    _ => Probe::Down("the probe panicked or was aborted".into()),
                };
                self.on_probe(r, probe);
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
                        runner = %self.runners[flight.runner].id,
                        "a request given up on has ended"
                    );
                    // Its loss (if it was lost) was counted at the timeout.
                    self.note_result(flight.runner, &finished.result, flight.probe, false);
                    return Ok(());
                }
                self.on_result(flight, finished).await
            }
        }
    }

    /// What a request's result says about its runner: it answers (an outage
    /// ends), it lost the request (a crash; counted as a lost attempt when
    /// `new_loss`), or it could not be reached.
    fn note_result(
        &mut self,
        r: usize,
        result: &Result<crate::runner::StepOutput, RunnerError>,
        probe: bool,
        new_loss: bool,
    ) {
        let runner = &mut self.runners[r];
        if let Err(
            RunnerError::Lost(reason)
            | RunnerError::Protocol(reason)
            | RunnerError::Unreachable(reason),
        ) = result
        {
            runner.last_error = Some(reason.clone());
        }
        if let Err(RunnerError::Lost(_)) = result {
            if new_loss {
                runner.lost_attempts += 1;
            }
            if !runner.losing {
                runner.losing = true;
                runner.crashes += 1;
            }
        }
        if answered(result, probe) {
            self.runner_answered(r);
        }
    }

    async fn on_result(&mut self, flight: Flight, finished: Finished) -> Result<(), EngineError> {
        let Flight {
            seq,
            step,
            probe,
            runner: r,
            ..
        } = flight;
        self.note_result(r, &finished.result, probe, true);
        let outages = self.outages;
        let Some(slot) = self.runs.get_mut(&seq) else {
            return Ok(());
        };
        let commit = slot.run.id().clone();
        let record = &mut slot.run.steps[step];
        let name = record.name.clone();

        if let Err(RunnerError::Unreachable(reason)) = &finished.result {
            // Nothing was sent: forget the attempt and wait for a runner.
            let number = record.attempts.pop().map_or(flight.attempt, |a| a.number);
            record.status = StepStatus::Pending;
            let reason = reason.clone();
            self.make_ready(seq, step, Instant::now());
            self.runner_down(r, reason.clone());
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
                        slot.steps[step].ran_on = Some(r);
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
                // as soon as a runner accepts requests, unless the step was lost
                // before with no outage anywhere in between (runners answer,
                // but keep losing it).
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
        let max_attempts = self.pipeline.steps()[step]
            .max_attempts
            .unwrap_or(self.config.max_attempts);
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
                if counted >= max_attempts {
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
                self.ready_or_held(seq, step, now);
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
    pub(super) fn finish_step(&mut self, seq: u64, step: usize, status: StepStatus) {
        let pipeline = Arc::clone(&self.pipeline);
        let Some(slot) = self.runs.get_mut(&seq) else {
            return;
        };
        slot.run.steps[step].status = status;
        slot.steps[step].phase = Phase::Done;
        let now = Instant::now();
        if status == StepStatus::Success {
            let mut ready = Vec::new();
            for &d in pipeline.dependents_of(step) {
                let dep = &mut slot.steps[d];
                dep.unmet = dep.unmet.saturating_sub(1);
                if dep.unmet == 0 && dep.phase == Phase::Blocked {
                    ready.push(d);
                }
            }
            for d in ready {
                self.ready_or_held(seq, d, now);
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

    // ----- timers -----------------------------------------------------------

    pub(super) fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let probes = self
            .runners
            .iter()
            .filter_map(|r| r.outage.as_ref())
            .filter(|o| !o.probe_in_flight && o.next_probe > now && !self.stopping)
            .map(|o| o.next_probe)
            .min();
        [
            self.backoff.first().map(|&(at, _, _)| at),
            self.deadlines.first().map(|&(at, _)| at),
            self.abandon_deadlines.first().map(|&(at, _)| at),
            self.next_expiry,
            probes,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles what is due: step timeouts, requests held past the abandon
    /// limit, retries whose backoff has passed, and the unreachable limit.
    pub(super) async fn on_timer(&mut self) -> Result<(), EngineError> {
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
                let r = flight.runner;
                let step = self.pipeline.steps()[flight.step].name.clone();
                self.runners[r].overdue += 1;
                self.runner_down(
                    r,
                    format!(
                        "the runner still holds a request of step {step} {}s after the engine gave up on it",
                        self.config.abandon_limit.as_secs_f64()
                    ),
                );
            }
        }
        while let Some(&(at, seq, step)) = self.backoff.first() {
            if at > now {
                break;
            }
            self.backoff.pop_first();
            if self
                .runs
                .get(&seq)
                .is_some_and(|slot| slot.steps[step].phase == Phase::Backoff(at))
            {
                self.ready_or_held(seq, step, now);
            }
        }
        if self.next_expiry.is_some_and(|at| at <= now) {
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
        let (seq, step, number, r) = (flight.seq, flight.step, flight.attempt, flight.runner);
        self.abandon(id, now);
        let timeout = self.pipeline.steps()[step]
            .timeout
            .unwrap_or(self.config.step_timeout);
        let runner = &mut self.runners[r];
        runner.lost_attempts += 1;
        runner.last_error = Some(format!(
            "no answer within the step timeout of {}s",
            timeout.as_secs_f64()
        ));
        let runner_id = runner.id.clone();
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
        warn!(commit = %commit.short(10), step = %name, attempt = number, runner = %runner_id, "step timed out");
        let event = self.settle_attempt(seq, step, number, Verdict::Backoff);
        self.commit_change_then(seq, vec![event]).await
    }

    // ----- expiry -----------------------------------------------------------

    /// Ends `error` every ready step that has waited longer than the
    /// unreachable limit for a runner that is down: a pinned step for its
    /// runner, any other step while every runner is down. Sets when to look
    /// again.
    pub(super) async fn expire_waiting(&mut self) -> Result<(), EngineError> {
        let now = Instant::now();
        let limit = self.config.unreachable_limit;
        let down_since: Vec<Option<Instant>> = self
            .runners
            .iter()
            .map(|r| r.outage.as_ref().map(|o| o.since))
            .collect();
        if down_since.iter().all(Option::is_none) {
            self.next_expiry = None;
            return Ok(());
        }
        // Since when no runner has been up, if none is.
        let all_down_since = if down_since.iter().all(Option::is_some) {
            down_since.iter().flatten().max().copied()
        } else {
            None
        };
        let mut expired = Vec::new();
        let mut next = now + limit;
        for class in &self.classes {
            let queues = class
                .pinned
                .iter()
                .enumerate()
                .filter_map(|(r, q)| down_since[r].map(|since| (since, q)))
                .chain(all_down_since.map(|since| (since, &class.ready)));
            for (since, queue) in queues {
                for &(seq, step) in queue {
                    let due = self.runs[&seq].steps[step].ready_since.max(since) + limit;
                    if due <= now {
                        expired.push((seq, step));
                    } else {
                        next = next.min(due);
                    }
                }
            }
        }
        self.next_expiry = Some(next);
        let mut changed = BTreeSet::new();
        for (seq, step) in expired {
            self.unqueue(seq, step);
            let pin = self.runs.get(&seq).and_then(|s| s.steps[step].pin);
            let reason = match pin {
                Some(r) => format!(
                    "runner {} (where it must run) was unreachable for more than {}s",
                    self.runners[r].id,
                    limit.as_secs_f64()
                ),
                None if self.runners.len() == 1 => format!(
                    "the runner was unreachable for more than {}s",
                    limit.as_secs_f64()
                ),
                None => format!(
                    "every runner was unreachable for more than {}s",
                    limit.as_secs_f64()
                ),
            };
            if let Some(slot) = self.runs.get_mut(&seq) {
                slot.run.steps[step].reason = Some(reason);
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
}
