//! Wall-clock cost of the scheduler: commits through the standard pipeline
//! against runners that answer at once, with the in-memory store; one runner,
//! and a pool of three (dispatch then weighs every runner for every step); and
//! the same with the SQLite store (a new database file in a temporary
//! directory each time), where the cost of durable writes shows.
//! Run: `cargo bench -p benches --bench scheduler`.

// criterion's macros generate functions without doc comments.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use benches::instant_runner;
use ci_engine::testing::sim::{ScriptedSource, chain_commits};
use ci_engine::{Engine, EngineConfig, MemoryStore, Pipeline, PoolMember, RunStore, RunnerPool};
use ci_server::sqlite_store::SqliteStore;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn run_commits(rt: &tokio::runtime::Runtime, n: usize, runners: usize) {
    rt.block_on(run_on(Arc::new(MemoryStore::new()), n, runners));
}

/// `n` commits on a new SQLite database; the file's creation is not timed
/// apart from the run (it is a few hundred microseconds of 1-second runs).
fn run_commits_sqlite(rt: &tokio::runtime::Runtime, n: usize) {
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(&dir.path().join("runs.db"))
            .await
            .expect("a new database");
        run_on(Arc::new(store), n, 1).await;
    });
}

async fn run_on(store: Arc<dyn RunStore>, n: usize, runners: usize) {
    {
        let pool = RunnerPool::new(
            (0..runners)
                .map(|r| PoolMember {
                    id: format!("r{r}"),
                    runner: instant_runner(),
                })
                .collect(),
        )
        .expect("distinct runner ids");
        let engine = Engine::with_pool(Pipeline::standard(), pool, store, EngineConfig::default())
            .expect("a valid engine configuration");
        let source = ScriptedSource::new(vec![(Duration::ZERO, chain_commits(n))]);
        engine
            .run(Box::new(source), std::future::pending())
            .await
            .expect("the store does not fail");
    }
}

fn scheduler(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("engine_commits");
    for n in [100usize, 1_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| run_commits(&rt, n, 1));
        });
    }
    group.finish();
    let mut group = c.benchmark_group("engine_commits_pool3");
    let n = 1_000usize;
    group.throughput(Throughput::Elements(n as u64));
    group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
        b.iter(|| run_commits(&rt, n, 3));
    });
    group.finish();
    // Durable writes: the engine's time per commit on the SQLite store.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("engine_commits_sqlite");
    let n = 500usize;
    group.throughput(Throughput::Elements(n as u64));
    group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
        b.iter(|| run_commits_sqlite(&rt, n));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = scheduler
}
criterion_main!(benches);
