//! [`MemoryStore`]: the reference [`RunStore`], kept in memory.
//!
//! It is what the engine's tests run against and what the SQLite store is
//! checked against. It forgets everything when dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::model::{CommitId, Run, RunStatus};
use crate::store::{RunPage, RunQuery, RunStore, StoreError};

#[derive(Default)]
struct Inner {
    /// Runs by `seq`: newest-first listing is a reverse walk.
    runs: BTreeMap<u64, Run>,
    /// `seq` by commit id; ordered so a prefix is a range.
    ids: BTreeMap<CommitId, u64>,
    /// The unfinished runs, `seq` by queue position.
    unfinished: BTreeMap<u64, u64>,
    /// `(retry_seq, seq)` of every run that has a retry position.
    retried: BTreeSet<(u64, u64)>,
    state: HashMap<String, String>,
}

impl Inner {
    /// Stores `run` under its `seq` and keeps the indexes in line; `old`
    /// is the run it replaces, if any.
    fn put(&mut self, run: Run, old: Option<&Run>) {
        if let Some(old) = old {
            self.unfinished.remove(&old.queue_position());
            if let Some(r) = old.retry_seq {
                self.retried.remove(&(r, old.seq));
            }
        }
        if !run.status.is_terminal() {
            self.unfinished.insert(run.queue_position(), run.seq);
        }
        if let Some(r) = run.retry_seq {
            self.retried.insert((r, run.seq));
        }
        self.ids.insert(run.id().clone(), run.seq);
        self.runs.insert(run.seq, run);
    }
}

/// A [`RunStore`] in memory: fast, complete, not durable.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Bumped by every write of runs (see [`RunStore::generation`]).
    generation: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written run: every
        // write below is checked before it changes anything. So a poisoned lock
        // is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every run, oldest first (a snapshot, for tests and tools).
    pub fn all_runs(&self) -> Vec<Run> {
        self.lock().runs.values().cloned().collect()
    }
}

fn duplicate_seq(seq: u64) -> StoreError {
    StoreError::Backend(format!("seq {seq} is already used by another run").into())
}

/// A copy of `run` for a listing by `query`: without steps or logs unless
/// asked for.
fn listed(run: &Run, query: &RunQuery) -> Run {
    if !query.with_steps {
        return Run {
            commit: run.commit.clone(),
            failed_steps: run.failed_steps.clone(),
            steps: Vec::new(),
            actions: run.actions.clone(),
            ..*run
        };
    }
    let mut copy = run.clone();
    if !query.with_logs {
        for attempt in copy.steps.iter_mut().flat_map(|s| s.attempts.iter_mut()) {
            attempt.logs = String::new();
        }
    }
    copy
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        let stored = self.insert_runs(std::slice::from_ref(run)).await?;
        Ok(stored.first().copied().unwrap_or(false))
    }

    async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, StoreError> {
        let mut inner = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Everything is checked before anything is stored: all or nothing.
        let mut ids = HashSet::new();
        let mut seqs = HashSet::new();
        let mut stored = Vec::with_capacity(runs.len());
        for run in runs {
            let new = !inner.ids.contains_key(run.id()) && ids.insert(run.id());
            if new && (inner.runs.contains_key(&run.seq) || !seqs.insert(run.seq)) {
                return Err(duplicate_seq(run.seq));
            }
            stored.push(new);
        }
        for (run, &new) in runs.iter().zip(&stored) {
            if new {
                inner.put(run.clone(), None);
            }
        }
        Ok(stored)
    }

    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        self.update_runs(vec![run.clone()]).await
    }

    async fn update_runs(&self, runs: Vec<Run>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Every check first, so a refused batch changes nothing.
        for run in &runs {
            let old_seq = *inner
                .ids
                .get(run.id())
                .ok_or_else(|| StoreError::NotFound(run.id().to_string()))?;
            if old_seq != run.seq && inner.runs.contains_key(&run.seq) {
                return Err(duplicate_seq(run.seq));
            }
        }
        for run in runs {
            let old_seq = inner.ids[run.id()];
            let old = inner.runs.remove(&old_seq);
            inner.put(run, old.as_ref());
        }
        Ok(())
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<Run, StoreError> {
        let inner = self.lock();
        let start = CommitId::new(id_or_prefix);
        let mut matches = inner
            .ids
            .range(start..)
            .take_while(|(id, _)| id.as_str().starts_with(id_or_prefix));
        let first = matches.next();
        let rest = matches.count();
        let seq = match (first, rest) {
            (None, _) => return Err(StoreError::NotFound(id_or_prefix.to_owned())),
            (Some((_, &seq)), 0) => seq,
            (Some((id, &seq)), _) if id.as_str() == id_or_prefix => seq,
            (Some(_), n) => {
                return Err(StoreError::Ambiguous {
                    prefix: id_or_prefix.to_owned(),
                    matches: n + 1,
                });
            }
        };
        inner
            .runs
            .get(&seq)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(id_or_prefix.to_owned()))
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let inner = self.lock();
        let matches = |r: &&Run| {
            query.status.is_none_or(|s| r.status == s)
                && query
                    .branch
                    .as_ref()
                    .is_none_or(|b| r.commit.branches.iter().any(|rb| rb == b))
        };
        let total = if query.status.is_none() && query.branch.is_none() {
            inner.runs.len()
        } else {
            inner.runs.values().filter(matches).count()
        };
        let upper = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        // One more than the page, to tell whether a next page exists.
        let mut runs: Vec<&Run> = inner
            .runs
            .range((Bound::Unbounded, upper))
            .rev()
            .map(|(_, r)| r)
            .filter(matches)
            .skip(query.offset)
            .take(query.limit.saturating_add(1))
            .collect();
        let more = runs.len() > query.limit;
        runs.truncate(query.limit);
        Ok(RunPage {
            total: u64::try_from(total).unwrap_or(u64::MAX),
            next: runs.last().filter(|_| more).map(|r| r.seq),
            runs: runs.into_iter().map(|r| listed(r, query)).collect(),
        })
    }

    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .runs
            .values()
            .filter(|r| matches!(r.status, RunStatus::Queued | RunStatus::Running))
            .cloned()
            .collect())
    }

    async fn unfinished_after(&self, from: u64, limit: usize) -> Result<Vec<Run>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .unfinished
            .range(from..)
            .take(limit)
            .filter_map(|(_, seq)| inner.runs.get(seq).cloned())
            .collect())
    }

    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        Ok(self.lock().ids.contains_key(id))
    }

    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        let inner = self.lock();
        let seq = inner.runs.keys().next_back().copied();
        let retry = inner.retried.last().map(|&(r, _)| r);
        Ok(seq.max(retry))
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().state.get(key).cloned())
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock().state.insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Commit, Pipeline};

    #[tokio::test]
    async fn a_batch_with_an_unknown_run_changes_nothing() {
        let store = MemoryStore::new();
        let p = Pipeline::standard();
        let known = Run::new(Commit::bare("aa"), 1, &p);
        assert!(store.insert_run(&known).await.unwrap());
        let mut changed = known.clone();
        changed.commit.summary = "changed".into();
        let unknown = Run::new(Commit::bare("bb"), 2, &p);
        assert!(matches!(
            store.update_runs(vec![changed, unknown]).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.get_run("aa").await.unwrap(), known);
    }

    #[tokio::test]
    async fn a_duplicate_seq_is_refused_and_changes_nothing() {
        let store = MemoryStore::new();
        let p = Pipeline::standard();
        assert!(
            store
                .insert_run(&Run::new(Commit::bare("aa"), 1, &p))
                .await
                .unwrap()
        );
        let err = store
            .insert_run(&Run::new(Commit::bare("bb"), 1, &p))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("seq 1"), "{err}");
        assert!(!store.has_run(&CommitId::new("bb")).await.unwrap());
        assert!(
            store
                .insert_run(&Run::new(Commit::bare("cc"), 2, &p))
                .await
                .unwrap()
        );
        let mut moved = store.get_run("cc").await.unwrap();
        moved.seq = 1;
        assert!(store.update_run(&moved).await.is_err());
        assert_eq!(store.get_run("cc").await.unwrap().seq, 2);
        assert_eq!(
            store.list_runs(&RunQuery::default()).await.unwrap().total,
            2
        );
    }
}
