//! [`ReadOnlyStore`]: the store as a standby's API sees it.

use std::sync::Arc;

use async_trait::async_trait;
use ci_engine::{CommitId, Run, RunPage, RunQuery, RunStore, StoreError};

/// A store whose reads go through and whose writes are refused with
/// [`StoreError::Fenced`], changing nothing: what a standby server serves
/// from while another server writes.
///
/// Its [`generation`](RunStore::generation) is `None`: the writes are
/// another process's, which no counter of this one sees, so callers keep no
/// answers.
#[derive(Clone)]
pub struct ReadOnlyStore {
    inner: Arc<dyn RunStore>,
}

impl std::fmt::Debug for ReadOnlyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyStore").finish_non_exhaustive()
    }
}

impl ReadOnlyStore {
    /// Reads `inner`, never writes it.
    pub fn new(inner: Arc<dyn RunStore>) -> Self {
        Self { inner }
    }

    fn refused() -> StoreError {
        StoreError::Fenced(
            "this server is a standby: only the active server writes the run database".to_owned(),
        )
    }
}

#[async_trait]
impl RunStore for ReadOnlyStore {
    async fn insert_run(&self, _run: &Run) -> Result<bool, StoreError> {
        Err(Self::refused())
    }

    async fn insert_runs(&self, _runs: &[Run]) -> Result<Vec<bool>, StoreError> {
        Err(Self::refused())
    }

    async fn update_run(&self, _run: &Run) -> Result<(), StoreError> {
        Err(Self::refused())
    }

    async fn update_runs(&self, _runs: Vec<Run>) -> Result<(), StoreError> {
        Err(Self::refused())
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<Run, StoreError> {
        self.inner.get_run(id_or_prefix).await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        self.inner.list_runs(query).await
    }

    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.inner.unfinished_runs().await
    }

    async fn unfinished_after(&self, from: u64, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.inner.unfinished_after(from, limit).await
    }

    fn generation(&self) -> Option<u64> {
        None
    }

    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        self.inner.has_run(id).await
    }

    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        self.inner.max_seq().await
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.load_state(key).await
    }

    async fn save_state(&self, _key: &str, _value: &str) -> Result<(), StoreError> {
        Err(Self::refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_engine::MemoryStore;
    use ci_engine::testing::store_contract::{hex_id, queued_run};

    #[tokio::test]
    async fn reads_go_through_and_writes_change_nothing() {
        let inner: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
        let run = queued_run(&hex_id(1), 1, &["main"]);
        inner.insert_run(&run).await.expect("stored");
        let store = ReadOnlyStore::new(Arc::clone(&inner));
        assert_eq!(
            store.get_run(&hex_id(1)).await.expect("read").id(),
            run.id()
        );
        assert_eq!(store.max_seq().await.expect("read"), Some(1));
        assert_eq!(store.generation(), None);
        let other = queued_run(&hex_id(2), 2, &["main"]);
        assert!(matches!(
            store.insert_run(&other).await,
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            store.save_state("k", "v").await,
            Err(StoreError::Fenced(_))
        ));
        assert!(!inner.has_run(other.id()).await.expect("read"));
        assert_eq!(inner.load_state("k").await.expect("read"), None);
    }
}
