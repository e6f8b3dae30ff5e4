//! Each runner's health: outages, probes, and the status the engine reports.
//!
//! A runner goes down when it refuses a request (unreachable) or holds a
//! request the engine gave up on past the abandon limit. While it is down it
//! gets no steps and is probed, one probe at a time, after a delay that grows
//! with the outage; the first answer ends the outage. The other runners are
//! not affected.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::Id as TaskId;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Outage, Scheduler, Task, TaskOutput};
use crate::engine::{EngineError, EngineEvent};
use crate::model::now_millis;
use crate::pool::{ClassStatus, RunnerState, RunnerStatus};
use crate::runner::Probe;

impl Scheduler {
    /// Sends runner `r`'s probe if it is down and the probe is due: a
    /// [`StepRunner::probe`](crate::StepRunner::probe), or, for a runner that
    /// cannot be probed so, the oldest ready step it could run.
    pub(super) async fn probe_if_due(&mut self, r: usize) -> Result<(), EngineError> {
        let runner = &self.runners[r];
        let Some(o) = &runner.outage else {
            return Ok(());
        };
        if o.probe_in_flight || Instant::now() < o.next_probe {
            return Ok(());
        }
        if runner.probe_supported != Some(false) {
            self.start_probe(r);
            return Ok(());
        }
        match self.probe_step_for(r) {
            Some((seq, step)) => {
                self.unqueue(seq, step);
                self.start(seq, step, r, true).await?;
                if let Some(o) = &mut self.runners[r].outage {
                    o.probe_in_flight = true;
                }
            }
            None => self.no_step_to_probe_with(r),
        }
        Ok(())
    }

    /// Sends a probe that runs no step.
    fn start_probe(&mut self, r: usize) {
        let runner = &mut self.runners[r];
        if let Some(o) = &mut runner.outage {
            o.probe_in_flight = true;
        }
        let call = Arc::clone(&runner.runner);
        let abort = self
            .tasks
            .spawn(async move { TaskOutput::Probe(call.probe().await) });
        self.task_index.insert(abort.id(), Task::Probe(r));
    }

    /// Runner `r` is down, cannot be probed without a step, and no step can be
    /// sent to it. If it holds requests past the abandon limit, nothing but
    /// their answer could end the outage: the limit is final for such a runner,
    /// and they are dropped. Otherwise the outage waits for a step to probe with.
    fn no_step_to_probe_with(&mut self, r: usize) {
        if self.runners[r].overdue > 0 {
            warn!(
                runner = %self.runners[r].id,
                "the runner cannot be probed without a step and none can be sent; giving up on the requests it held past the abandon limit"
            );
            self.runner_answered(r);
        }
    }

    pub(super) fn on_probe(&mut self, r: usize, probe: Probe) {
        let now = Instant::now();
        let delay = |since: Instant| self.config.probe_delay(now - since);
        match probe {
            Probe::Up => self.runner_answered(r),
            Probe::Down(reason) => {
                let next = self.runners[r]
                    .outage
                    .as_ref()
                    .map(|o| now + delay(o.since));
                let runner = &mut self.runners[r];
                if let (Some(o), Some(next)) = (&mut runner.outage, next) {
                    debug!(runner = %runner.id, %reason, "probe: runner still down");
                    o.probe_in_flight = false;
                    o.next_probe = next;
                }
                runner.last_error = Some(reason);
            }
            Probe::Unsupported => {
                let runner = &mut self.runners[r];
                debug!(runner = %runner.id, "the runner cannot be probed without a step; probing with steps");
                runner.probe_supported = Some(false);
                if let Some(o) = &mut runner.outage {
                    o.probe_in_flight = false;
                    o.next_probe = now;
                }
            }
        }
    }

    /// Runner `r` answered something: its outage is over, and requests it
    /// held past the abandon limit are dropped, their permits free again.
    pub(super) fn runner_answered(&mut self, r: usize) {
        let runner = &mut self.runners[r];
        runner.losing = false;
        if runner.outage.take().is_some() {
            runner.since = now_millis();
            info!(runner = %runner.id, "runner answers again");
            let id = runner.id.clone();
            self.emit(EngineEvent::RunnerUp { runner: id });
        }
        if self.runners[r].overdue == 0 {
            return;
        }
        let overdue: Vec<TaskId> = self
            .task_index
            .iter()
            .filter_map(|(&id, t)| match t {
                Task::Step(f) if f.overdue && f.runner == r => Some(id),
                _ => None,
            })
            .collect();
        warn!(
            runner = %self.runners[r].id,
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

    /// Opens an outage of runner `r` (if none is open): nothing is dispatched
    /// to it until it answers a probe.
    pub(super) fn runner_down(&mut self, r: usize, reason: String) {
        let now = Instant::now();
        let first_delay = self.config.probe_delay(Duration::ZERO);
        let later_delay = |since: Instant| self.config.probe_delay(now - since);
        let runner = &self.runners[r];
        match &runner.outage {
            None => {
                warn!(runner = %runner.id, %reason, "runner down; it gets no steps until it answers");
                self.outages += 1;
                let runner = &mut self.runners[r];
                runner.outages += 1;
                runner.since = now_millis();
                runner.last_error = Some(reason.clone());
                runner.outage = Some(Outage {
                    since: now,
                    next_probe: now + first_delay,
                    probe_in_flight: false,
                });
                let id = runner.id.clone();
                if self.next_expiry.is_none() {
                    self.next_expiry = Some(now + self.config.unreachable_limit);
                }
                self.emit(EngineEvent::RunnerDown { runner: id, reason });
            }
            Some(o) => {
                // A step sent as the probe was refused: probe again later.
                let next = now + later_delay(o.since);
                let runner = &mut self.runners[r];
                runner.last_error = Some(reason);
                if let Some(o) = &mut runner.outage
                    && !o.probe_in_flight
                    && o.next_probe <= now
                {
                    o.next_probe = next;
                }
            }
        }
    }

    /// Each runner as the engine sees it now, in pool order.
    pub(super) fn runner_statuses(&self) -> Vec<RunnerStatus> {
        self.runners
            .iter()
            .map(|r| RunnerStatus {
                id: r.id.clone(),
                state: match &r.outage {
                    None => RunnerState::Up,
                    Some(o) if o.probe_in_flight => RunnerState::Probing,
                    Some(_) => RunnerState::Down,
                },
                since: r.since,
                in_flight: u32::try_from(r.in_flight).unwrap_or(u32::MAX),
                in_flight_by_class: self
                    .pipeline
                    .classes()
                    .iter()
                    .zip(&r.class_in_flight)
                    .filter(|&(_, &n)| n > 0)
                    .map(|(c, &n)| (c.key.clone(), n))
                    .collect(),
                held: r.held,
                outages: r.outages,
                crashes: r.crashes,
                lost_attempts: r.lost_attempts,
                last_error: r.last_error.clone(),
            })
            .collect()
    }

    /// Each concurrency class now, in pipeline order.
    pub(super) fn class_statuses(&self) -> Vec<ClassStatus> {
        self.pipeline
            .classes()
            .iter()
            .zip(&self.classes)
            .map(|(spec, state)| {
                let ready = state.ready.len() + state.pinned.iter().map(|q| q.len()).sum::<usize>();
                ClassStatus {
                    class: spec.key.clone(),
                    scope: state.scope,
                    limit: state.limit,
                    ready: u32::try_from(ready).unwrap_or(u32::MAX),
                    in_flight: state.in_flight,
                }
            })
            .collect()
    }
}
