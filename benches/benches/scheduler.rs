//! Wall-clock cost of the scheduler: commits through the standard pipeline
//! against runners that answer at once, with the in-memory store; one runner,
//! and a pool of three (dispatch then weighs every runner for every step).
//! Run: `cargo bench -p benches --bench scheduler`.

// criterion's macros generate functions without doc comments.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use benches::instant_runner;
use ci_engine::testing::sim::{ScriptedSource, chain_commits};
use ci_engine::{Engine, EngineConfig, MemoryStore, Pipeline, PoolMember, RunnerPool};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn run_commits(rt: &tokio::runtime::Runtime, n: usize, runners: usize) {
    rt.block_on(async {
        let store = Arc::new(MemoryStore::new());
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
            .expect("the in-memory store does not fail");
    });
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
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = scheduler
}
criterion_main!(benches);
