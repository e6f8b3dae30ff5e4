//! Handing ready steps to runners: which step goes where (permits, the
//! least loaded runner, probes), starting the request, and releasing or
//! abandoning it when it ends.

use super::*;

impl Scheduler {
    /// Starts every step that may start now. First each runner that is down
    /// and due gets its probe; then, as long as some ready step can go
    /// somewhere, the oldest such step goes to the runner that is up, has room
    /// under its cap and a free permit for the step's class, with the fewest
    /// requests of that class in flight (then the fewest in flight, then the
    /// first in pool order). Pinned steps go to their runner only.
    pub(super) async fn dispatch(&mut self) -> Result<(), EngineError> {
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
    pub(super) fn has_permit(&self, c: usize, r: usize) -> bool {
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
    pub(super) fn takes_steps(&self, r: usize) -> bool {
        self.runners[r].outage.is_none()
    }

    /// The oldest ready step that some runner can take now, and that runner.
    pub(super) fn next_dispatch(&self) -> Option<(u64, usize, usize)> {
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
    pub(super) fn least_loaded(&self, c: usize) -> Option<usize> {
        (0..self.runners.len())
            .filter(|&r| self.takes_steps(r) && self.has_permit(c, r))
            .min_by_key(|&r| {
                let runner = &self.runners[r];
                (runner.class_in_flight[c], runner.in_flight, r)
            })
    }

    /// The oldest ready step runner `r` could run as a probe: one pinned to it
    /// or free to go anywhere, with a permit on it.
    pub(super) fn probe_step_for(&self, r: usize) -> Option<(u64, usize)> {
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

    pub(super) async fn start(
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
    pub(super) fn release(&mut self, id: TaskId, flight: &Flight) {
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
    pub(super) fn abandon(&mut self, id: TaskId, now: Instant) {
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
}
