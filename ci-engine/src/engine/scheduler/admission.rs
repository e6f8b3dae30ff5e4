//! Taking runs up: recovery at start, new commits, the window of active
//! runs and its refill from the store, and admitting a run into the
//! scheduler's state.

use super::*;

impl Scheduler {
    /// Numbers new runs after every stored one, and leaves the unfinished
    /// runs of the store to be taken up, in queue order, by [`refill`](Self::refill).
    pub(super) async fn recover(&mut self) -> Result<(), EngineError> {
        self.next_seq = self.store.max_seq().await?.map_or(0, |m| m + 1);
        self.frontier = 0;
        self.forget_read_ahead();
        self.backlog = true;
        Ok(())
    }

    /// Takes up a run read from the store: lines its steps up with the
    /// pipeline, records attempts a previous engine left in flight as
    /// interrupted, and admits it.
    pub(super) async fn take_up(&mut self, mut run: Run) -> Result<(), EngineError> {
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
    pub(super) async fn take_from_store(&mut self, n: usize) -> Result<usize, EngineError> {
        let mut taken = 0;
        while taken < n {
            let Some(run) = self.next_in_backlog(n - taken).await? else {
                self.backlog = false;
                break;
            };
            taken += 1;
            self.frontier = self.frontier.max(run.queue_position() + 1);
            if self.by_commit.contains_key(run.id()) {
                continue;
            }
            self.take_up(run).await?;
        }
        Ok(taken)
    }

    /// The next run of the backlog in queue order, from the runs read ahead;
    /// when none is left, reads at least `want` (and at least
    /// [`READ_AHEAD`]) more from the frontier on. `None`: the store holds no
    /// unfinished run at or past the frontier.
    async fn next_in_backlog(&mut self, want: usize) -> Result<Option<Run>, EngineError> {
        if self.read_ahead.is_empty() {
            let page = self
                .store
                .unfinished_after(self.frontier, want.max(READ_AHEAD))
                .await?;
            self.read_ahead.extend(page);
        }
        Ok(self.read_ahead.pop_front())
    }

    /// A run waiting in the store was written: what was read ahead is stale.
    pub(super) fn forget_read_ahead(&mut self) {
        self.read_ahead.clear();
    }

    /// Fills the window of active runs from the store's backlog.
    pub(super) async fn refill(&mut self) -> Result<(), EngineError> {
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
    pub(super) fn below_ceiling(&self) -> bool {
        self.runs.len() < self.config.memory_ceiling()
    }

    /// Whether some runner could start a step of a class that steps needing
    /// nothing belong to, and no such step is ready: a run taken up from the
    /// backlog would make it busy.
    pub(super) fn root_permit_idle(&self) -> bool {
        self.root_classes
            .iter()
            .any(|&c| self.classes[c].ready.is_empty() && self.least_loaded(c).is_some())
    }

    /// Lines a stored run's steps up with the pipeline: index `i` of
    /// `run.steps` is pipeline step `i`. Steps the pipeline no longer has are kept
    /// after them, and skipped if they had not finished.
    pub(super) fn normalize_steps(&self, run: &mut Run) {
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

    /// Stores a run for each commit of `commits` that has none, in one
    /// write, and admits them in order while the window has room. A commit
    /// the store already knows uses up its `seq` (numbers are unique and
    /// increasing, not dense).
    pub(super) async fn on_commits(&mut self, commits: Vec<Commit>) -> Result<(), EngineError> {
        let mut runs = Vec::with_capacity(commits.len());
        for commit in commits {
            if self.by_commit.contains_key(&commit.id) {
                continue;
            }
            runs.push(Run::new(commit, self.next_seq, &self.pipeline));
            self.next_seq += 1;
        }
        if runs.is_empty() {
            return Ok(());
        }
        let stored = self.store.insert_runs(&runs).await?;
        if stored.len() != runs.len() {
            return Err(EngineError::Store(crate::store::StoreError::Backend(
                format!(
                    "the store answered {} of {} inserts",
                    stored.len(),
                    runs.len()
                )
                .into(),
            )));
        }
        for (run, stored) in runs.into_iter().zip(stored) {
            if !stored {
                debug!(commit = %run.id(), "commit already has a run");
                continue;
            }
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
    pub(super) fn has_room(&self) -> bool {
        !self.backlog && self.runs.len() < self.config.active_runs
    }

    /// Builds the scheduling state of a run whose steps are pending or terminal,
    /// skips what can no longer run, queues what is ready (or holds it while a
    /// runner still holds an earlier attempt of it), persists, and announces
    /// `events`.
    pub(super) async fn admit(
        &mut self,
        mut run: Run,
        events: Vec<EngineEvent>,
    ) -> Result<(), EngineError> {
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
}
