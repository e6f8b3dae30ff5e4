//! Runs the `RunStore` contract suite against `MemoryStore`, the reference
//! implementation: if the reference breaks the contract, the suite or the store
//! is wrong.

use std::sync::Arc;

use ci_engine::testing::store_contract;
use ci_engine::{MemoryStore, RunStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_meets_the_run_store_contract() {
    store_contract::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn RunStore> }).await;
}
