//! A `RunStore` that wraps another and logs every write: the shape of any
//! store decorator (metrics, auditing, replication).
//!
//! It delegates every method, reports the inner store's generation (so
//! callers may keep cached listings exactly as they would with the inner
//! store), and proves itself with the store contract suite that every
//! `RunStore` must pass (`ci_engine::testing`, feature `test-util`, which
//! the crate's own examples and tests always have). It prints the writes of
//! one small run and of the suite's cases, then the suite's verdict, and
//! exits 0.
//!
//! `cargo run -p ci-engine --example logging_store`

#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ci_engine::testing::store_contract::{self, queued_run};
use ci_engine::{CommitId, MemoryStore, Run, RunPage, RunQuery, RunStore, StoreError, async_trait};

/// Logs each write of `inner` (here with `println!`; `tracing` in real code)
/// and counts them.
struct LoggingStore<S> {
    inner: S,
    writes: AtomicU64,
}

impl<S: RunStore> LoggingStore<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            writes: AtomicU64::new(0),
        }
    }

    fn log(&self, what: &str) {
        let n = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        println!("write #{n}: {what}");
    }
}

#[async_trait]
impl<S: RunStore> RunStore for LoggingStore<S> {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        self.log(&format!("insert run {} ({:?})", run.id(), run.status));
        self.inner.insert_run(run).await
    }

    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        self.log(&format!("update run {} ({:?})", run.id(), run.status));
        self.inner.update_run(run).await
    }

    async fn update_runs(&self, runs: Vec<Run>) -> Result<(), StoreError> {
        self.log(&format!("update {} runs", runs.len()));
        self.inner.update_runs(runs).await
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
        self.inner.generation()
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

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.log(&format!("save state {key}"));
        self.inner.save_state(key, value).await
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), StoreError> {
    let store = LoggingStore::new(MemoryStore::new());
    let mut run = queued_run("c0ffee", 1, &["main"]);
    store.insert_run(&run).await?;
    run.status = ci_engine::RunStatus::Running;
    store.update_run(&run).await?;
    store.save_state("source.cursor", "c0ffee").await?;
    assert_eq!(store.writes.load(Ordering::Relaxed), 3);

    // Every promise of `RunStore`, each case on a fresh wrapped store; a
    // broken one panics with the case's name.
    let mut cases = 0;
    store_contract::run_all(|| {
        cases += 1;
        async { Arc::new(LoggingStore::new(MemoryStore::new())) as Arc<dyn RunStore> }
    })
    .await;
    println!("the store contract suite passed: {cases} cases");
    Ok(())
}
