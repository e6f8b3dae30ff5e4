//! Makespan of simulated CI, in virtual time: the engine's overlapped schedule
//! against the lower bound `max(Σ build, Σ test)` and against running one
//! commit at a time (what the original Python server did).
//! Run: `cargo bench -p benches --bench makespan`.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{
    ScriptedSource, SimRunner, SimRunnerConfig, TraceKind, chain_commits,
};
use ci_engine::{Engine, EngineConfig, MemoryStore, Pipeline};
use tokio::time::Instant;

struct Measured {
    makespan: Duration,
    busy: HashMap<String, Duration>,
}

/// Runs `n` commits, all arriving at once, and measures the makespan and the
/// busy time of each step kind on the runner.
fn simulate(n: usize, runner: SimRunnerConfig, config: EngineConfig) -> Measured {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let sim = SimRunner::new(runner);
        let engine = Engine::new(
            Pipeline::standard(),
            sim.clone(),
            Arc::new(MemoryStore::new()),
            config,
        );
        let start = Instant::now();
        let source = ScriptedSource::new(vec![(Duration::ZERO, chain_commits(n))]);
        engine
            .run(Box::new(source), std::future::pending())
            .await
            .expect("the in-memory store does not fail");
        let makespan = start.elapsed();
        let mut open: HashMap<(String, String), Instant> = HashMap::new();
        let mut busy: HashMap<String, Duration> = HashMap::new();
        for e in sim.trace() {
            let key = (e.commit.to_string(), e.step.clone());
            if e.kind == TraceKind::Start {
                open.insert(key, e.at);
            } else if let Some(t) = open.remove(&key) {
                *busy.entry(e.step.clone()).or_default() += e.at - t;
            }
        }
        Measured { makespan, busy }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n = 1_000;
    let secs = |d: Duration| d.as_secs_f64();
    println!("commits: {n}, all arriving at once; times are virtual seconds\n");
    println!(
        "| runner | schedule | makespan s | Σbuild s | Σtest s | lower bound s | makespan / bound |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, crash) in [("no crashes", false), ("original (crashes)", true)] {
        let mut runner = SimRunnerConfig::original(7);
        if !crash {
            for b in runner.steps.values_mut() {
                b.crash_rate = 0.0;
            }
        }
        for (schedule, config) in [
            ("ci-engine (overlapped)", EngineConfig::default()),
            (
                "one request at a time",
                EngineConfig {
                    max_in_flight: 1,
                    ..EngineConfig::default()
                },
            ),
        ] {
            let m = simulate(n, runner.clone(), config);
            let build = m.busy.get("build").copied().unwrap_or_default();
            let test = m.busy.get("test").copied().unwrap_or_default();
            let bound = build.max(test);
            println!(
                "| {label} | {schedule} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
                secs(m.makespan),
                secs(build),
                secs(test),
                secs(bound),
                secs(m.makespan) / secs(bound).max(f64::EPSILON),
            );
        }
    }
}
