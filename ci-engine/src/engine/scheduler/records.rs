//! Writing changes to the store (one turn's changes in one write) and
//! sending the events that go with them once they are stored.

use super::*;

impl Scheduler {
    /// Settles run `seq`'s status, writes it to the store, and if it finished
    /// announces that and forgets it.
    pub(super) async fn commit_change(&mut self, seq: u64) -> Result<(), EngineError> {
        self.commit_change_then(seq, Vec::new()).await
    }

    /// [`commit_change`](Self::commit_change), announcing `events` once the
    /// change is stored and before the run's end, if it ended. The write
    /// itself waits for the next [`flush`](Self::flush).
    pub(super) async fn commit_change_then(
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
    pub(super) async fn flush(&mut self) -> Result<(), EngineError> {
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
    pub(super) fn emit(&mut self, event: EngineEvent) {
        self.pending_events.push(event);
    }
}
