//! [`MemoryStore`]: the reference [`RunStore`], kept in memory.
//!
//! It is what the engine's tests run against and what the SQLite store is
//! checked against. It forgets everything when dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::model::{CommitId, Run, RunStatus};
use crate::store::{RunPage, RunQuery, RunStore, StoreError};

#[derive(Default)]
struct Inner {
    /// Runs by commit id; ordered so a prefix is a range.
    runs: BTreeMap<CommitId, Run>,
    /// Commit ids by `seq`, for newest-first listing.
    by_seq: BTreeMap<u64, CommitId>,
    state: HashMap<String, String>,
}

/// A [`RunStore`] in memory: fast, complete, not durable.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written run: every
        // write below is a single insert. So a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every run, oldest first (a snapshot, for tests and tools).
    pub fn all_runs(&self) -> Vec<Run> {
        let inner = self.lock();
        inner
            .by_seq
            .values()
            .filter_map(|id| inner.runs.get(id).cloned())
            .collect()
    }
}

fn duplicate_seq(seq: u64) -> StoreError {
    StoreError::Backend(format!("seq {seq} is already used by another run").into())
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.runs.contains_key(run.id()) {
            return Ok(false);
        }
        if inner.by_seq.contains_key(&run.seq) {
            return Err(duplicate_seq(run.seq));
        }
        inner.by_seq.insert(run.seq, run.id().clone());
        inner.runs.insert(run.id().clone(), run.clone());
        Ok(true)
    }

    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let old_seq = inner
            .runs
            .get(run.id())
            .ok_or_else(|| StoreError::NotFound(run.id().to_string()))?
            .seq;
        if old_seq != run.seq && inner.by_seq.contains_key(&run.seq) {
            return Err(duplicate_seq(run.seq));
        }
        let slot = inner.runs.get_mut(run.id()).expect("checked above");
        *slot = run.clone();
        if old_seq != run.seq {
            inner.by_seq.remove(&old_seq);
            inner.by_seq.insert(run.seq, run.id().clone());
        }
        Ok(())
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<Run, StoreError> {
        let inner = self.lock();
        let start = CommitId::new(id_or_prefix);
        let mut matches = inner
            .runs
            .range(start..)
            .take_while(|(id, _)| id.as_str().starts_with(id_or_prefix));
        let first = matches.next();
        let rest = matches.count();
        match (first, rest) {
            (None, _) => Err(StoreError::NotFound(id_or_prefix.to_owned())),
            (Some((_, run)), 0) => Ok(run.clone()),
            (Some((id, run)), _) if id.as_str() == id_or_prefix => Ok(run.clone()),
            (Some(_), n) => Err(StoreError::Ambiguous {
                prefix: id_or_prefix.to_owned(),
                matches: n + 1,
            }),
        }
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let inner = self.lock();
        let matching = inner
            .by_seq
            .values()
            .rev()
            .filter_map(|id| inner.runs.get(id))
            .filter(|r| query.status.is_none_or(|s| r.status == s))
            .filter(|r| {
                query
                    .branch
                    .as_ref()
                    .is_none_or(|b| r.commit.branches.iter().any(|rb| rb == b))
            });
        let mut total = 0u64;
        let mut runs = Vec::new();
        for (i, r) in matching.enumerate() {
            total += 1;
            if i >= query.offset && runs.len() < query.limit {
                let mut run = r.clone();
                if !query.with_logs {
                    for attempt in run.steps.iter_mut().flat_map(|s| s.attempts.iter_mut()) {
                        attempt.logs.clear();
                    }
                }
                runs.push(run);
            }
        }
        Ok(RunPage { total, runs })
    }

    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .by_seq
            .values()
            .filter_map(|id| inner.runs.get(id))
            .filter(|r| matches!(r.status, RunStatus::Queued | RunStatus::Running))
            .cloned()
            .collect())
    }

    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        Ok(self.lock().runs.contains_key(id))
    }

    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().by_seq.keys().next_back().copied())
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
