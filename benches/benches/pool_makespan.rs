//! Makespan of a pool of simulated runners, in virtual time: the same commits
//! on 1, 2, 3 and 4 runners, and the ratio to one runner. Fixed durations and
//! no failures or crashes (the case the end-to-end measurement also runs), then
//! the original runner's random durations without crashes, for three seeds.
//! Run: `cargo bench -p benches --bench pool_makespan`.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{
    ScriptedSource, SimRunner, SimRunnerConfig, StepBehaviour, chain_commits,
};
use ci_engine::{Engine, EngineConfig, MemoryStore, Pipeline, PoolMember, RunnerPool};
use tokio::time::Instant;

/// Runs `n` commits, all arriving at once, on `runners` simulated runners with
/// `config` (each runner's seed offset by its index) and returns the makespan.
fn makespan(n: usize, runners: usize, config: &SimRunnerConfig) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let members = (0..runners)
            .map(|r| PoolMember {
                id: format!("sim-{}", r + 1),
                runner: SimRunner::new(SimRunnerConfig {
                    seed: config.seed + r as u64,
                    ..config.clone()
                }),
            })
            .collect();
        let pool = RunnerPool::new(members).expect("distinct ids");
        let engine = Engine::with_pool(
            Pipeline::standard(),
            pool,
            Arc::new(MemoryStore::new()),
            EngineConfig::default(),
        )
        .expect("a valid engine configuration");
        let start = Instant::now();
        let source = ScriptedSource::new(vec![(Duration::ZERO, chain_commits(n))]);
        engine
            .run(Box::new(source), std::future::pending())
            .await
            .expect("the in-memory store does not fail");
        start.elapsed()
    })
}

/// Lint 50 ms, build 400 ms, test 300 ms, always green, never crashing.
fn fixed() -> SimRunnerConfig {
    SimRunnerConfig {
        seed: 1,
        steps: HashMap::from([
            ("lint".to_owned(), StepBehaviour::green(50, 50)),
            ("build".to_owned(), StepBehaviour::green(400, 400)),
            ("test".to_owned(), StepBehaviour::green(300, 300)),
        ]),
        default_step: StepBehaviour::green(100, 100),
        downtime_ms: (0, 0),
    }
}

fn main() {
    println!("commits arrive at once; times are virtual seconds\n");
    println!("| durations | commits | runners | makespan s | / one runner |");
    println!("|---|---|---|---|---|");
    let mut cases: Vec<(String, usize, SimRunnerConfig)> = vec![
        ("fixed 50/400/300 ms".into(), 60, fixed()),
        ("fixed 50/400/300 ms".into(), 1_000, fixed()),
    ];
    for seed in [7, 8, 9] {
        let mut original = SimRunnerConfig::original(seed);
        for b in original.steps.values_mut() {
            b.crash_rate = 0.0;
        }
        cases.push((
            format!("original, no crashes, seed {seed}"),
            1_000,
            original,
        ));
    }
    for (label, n, config) in cases {
        let one = makespan(n, 1, &config);
        for runners in 1..=4 {
            let m = if runners == 1 {
                one
            } else {
                makespan(n, runners, &config)
            };
            println!(
                "| {label} | {n} | {runners} | {:.1} | {:.3} |",
                m.as_secs_f64(),
                m.as_secs_f64() / one.as_secs_f64()
            );
        }
    }
}
