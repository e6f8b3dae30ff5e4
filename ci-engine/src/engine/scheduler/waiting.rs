//! Why each step of a run has not started ([`Waiting`]), read from the
//! scheduler's own state so it agrees with what decides dispatch.

use tokio::time::Instant;

use super::{Phase, Scheduler, Task};
use crate::model::{CommitId, Scope, StepStatus, UnixMillis, now_millis};
use crate::waiting::{Holder, StepWait, Waiting};

impl Scheduler {
    /// Why each step of `commit`'s run that is not running and not finished
    /// waits; empty when the run is not live (finished, or unknown).
    pub(super) fn waiting(&self, commit: &CommitId) -> Vec<StepWait> {
        let Some(slot) = self.by_commit.get(commit).and_then(|s| self.runs.get(s)) else {
            return Vec::new();
        };
        let now = Instant::now();
        let wall = now_millis();
        let to_wall = |at: Instant| -> UnixMillis {
            let ahead =
                i64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(i64::MAX);
            let behind =
                i64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(i64::MAX);
            wall.saturating_add(ahead).saturating_sub(behind)
        };
        let mut out = Vec::new();
        for (i, s) in slot.steps.iter().enumerate() {
            let name = slot.run.steps[i].name.clone();
            let waiting = match s.phase {
                Phase::InFlight | Phase::Done => continue,
                Phase::Blocked => {
                    let need = self
                        .pipeline
                        .needs_of(i)
                        .iter()
                        .map(|&j| &slot.run.steps[j])
                        .find(|r| r.status != StepStatus::Success);
                    match need {
                        Some(r) => Waiting::Needs {
                            step: r.name.clone(),
                            status: r.status,
                        },
                        None => Waiting::Dispatching,
                    }
                }
                Phase::Backoff(at) => Waiting::Backoff { until: to_wall(at) },
                Phase::Held => self
                    .task_index
                    .values()
                    .find_map(|t| match t {
                        Task::Step(f)
                            if f.commit == *slot.run.id()
                                && f.step == i
                                && f.abandoned.is_some() =>
                        {
                            Some(Waiting::EarlierAttempt {
                                runner: self.runners[f.runner].id.clone(),
                                attempt: f.attempt,
                            })
                        }
                        _ => None,
                    })
                    .unwrap_or(Waiting::Dispatching),
                Phase::Ready => self.why_ready_waits(i, s.pin, s.ready_since, &to_wall),
            };
            out.push(StepWait {
                step: name,
                waiting,
            });
        }
        out
    }

    /// Why a ready step of pipeline step `step` (pinned to `pin`, if any) has
    /// not gone out.
    fn why_ready_waits(
        &self,
        step: usize,
        pin: Option<usize>,
        ready_since: Instant,
        to_wall: &dyn Fn(Instant) -> UnixMillis,
    ) -> Waiting {
        let c = self.pipeline.class_of(step);
        let usable: Vec<usize> = match pin {
            Some(r) => vec![r],
            None => (0..self.runners.len()).collect(),
        };
        let up: Vec<usize> = usable
            .iter()
            .copied()
            .filter(|&r| self.takes_steps(r))
            .collect();
        if up.is_empty() {
            let since = usable
                .iter()
                .filter_map(|&r| self.runners[r].outage.as_ref().map(|o| o.since))
                .max()
                .unwrap_or(ready_since)
                .max(ready_since);
            return Waiting::RunnerDown {
                runners: usable.iter().map(|&r| self.runners[r].id.clone()).collect(),
                since: to_wall(since),
                gives_up_at: to_wall(since + self.config.unreachable_limit),
            };
        }
        if up.iter().any(|&r| self.has_permit(c, r)) {
            return Waiting::Dispatching;
        }
        let class = &self.classes[c];
        let class_full = |r: usize| {
            let count = match class.scope {
                Scope::Runner => self.runners[r].class_in_flight[c],
                Scope::Pool => class.in_flight,
            };
            class.limit.is_some_and(|l| count >= l)
        };
        if !up.iter().copied().any(class_full) {
            return Waiting::RunnerFull {
                runners: up.iter().map(|&r| self.runners[r].id.clone()).collect(),
            };
        }
        let mut holders: Vec<(u64, Holder)> = self
            .task_index
            .values()
            .filter_map(|t| match t {
                Task::Step(f)
                    if self.pipeline.class_of(f.step) == c
                        && (class.scope == Scope::Pool || up.contains(&f.runner)) =>
                {
                    Some((
                        f.seq,
                        Holder {
                            commit: f.commit.clone(),
                            step: self.pipeline.steps()[f.step].name.clone(),
                            attempt: f.attempt,
                            runner: self.runners[f.runner].id.clone(),
                            given_up: f.abandoned.is_some(),
                        },
                    ))
                }
                _ => None,
            })
            .collect();
        holders.sort_by(|a, b| (a.0, &a.1.runner).cmp(&(b.0, &b.1.runner)));
        Waiting::Permit {
            class: self.pipeline.classes()[c].key.clone(),
            scope: class.scope,
            limit: class.limit.unwrap_or(u32::MAX),
            holders: holders.into_iter().map(|(_, h)| h).collect(),
        }
    }
}
