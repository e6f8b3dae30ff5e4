//! When a step becomes ready: its needs met, a backoff over, a pinned
//! runner lost; and taking it off the ready queues.

use super::*;

impl Scheduler {
    /// Requests of step `step` of the run keyed `seq` that the engine gave up
    /// on and a runner still holds.
    pub(super) fn open_abandoned(&self, seq: u64, step: usize) -> u32 {
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
    pub(super) fn ready_or_held(&mut self, seq: u64, step: usize, now: Instant) {
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
    pub(super) fn succeeded_on(&self, record: &StepRecord) -> Option<usize> {
        let id = success_runner(record)?;
        self.runners.iter().position(|r| r.id == id)
    }

    /// Why step `i` of a stored run can never run: it must run where a step
    /// succeeded on a runner that is no longer in the pool.
    pub(super) fn lost_pin(&self, run: &Run, i: usize) -> Option<String> {
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
    pub(super) fn make_ready(&mut self, seq: u64, step: usize, now: Instant) {
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
    pub(super) fn unqueue(&mut self, seq: u64, step: usize) {
        let pin = self.runs.get(&seq).and_then(|s| s.steps[step].pin);
        let class = &mut self.classes[self.pipeline.class_of(step)];
        match pin {
            Some(r) => class.pinned[r].remove(&(seq, step)),
            None => class.ready.remove(&(seq, step)),
        };
    }

    // ----- dispatch ---------------------------------------------------------
}
