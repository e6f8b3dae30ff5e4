//! Makespan of simulated CI, in virtual time: the engine's overlapped schedule
//! against the lower bound `max(Σ build, Σ test)` and against running one
//! commit at a time (what the original Python server did); with the original
//! runner's crashes, also against the bound plus the runner's total downtime
//! (no schedule can use a runner that is down), for five seeds.
//! Run: `cargo bench -p benches --bench makespan`.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{
    ScriptedSource, SimRunner, SimRunnerConfig, TraceKind, chain_commits,
};
use ci_engine::{Engine, EngineConfig, EngineEvent, MemoryStore, Pipeline};
use tokio::time::Instant;

struct Measured {
    makespan: Duration,
    busy: HashMap<String, Duration>,
    downtime: Duration,
    crashes: u64,
}

/// Runs `n` commits, all arriving at once, and measures the makespan, the busy
/// time of each step kind on the runner (a request counts until the runner
/// answered it or the engine gave up on it, whichever came first) and the
/// runner's downtime after crashes.
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
            EngineConfig {
                event_capacity: 1 << 20,
                ..config
            },
        )
        .expect("a valid engine configuration");
        // When the engine finished with each attempt (answer, timeout, cancel).
        let mut events = engine.handle().subscribe();
        let recorder = tokio::spawn(async move {
            let mut done: HashMap<(String, String, u32), Instant> = HashMap::new();
            while let Ok(e) = events.recv().await {
                if let EngineEvent::StepFinished {
                    commit,
                    step,
                    attempt,
                    ..
                } = e
                {
                    done.entry((commit.to_string(), step, attempt))
                        .or_insert_with(Instant::now);
                }
            }
            done
        });
        let start = Instant::now();
        let source = ScriptedSource::new(vec![(Duration::ZERO, chain_commits(n))]);
        engine
            .run(Box::new(source), std::future::pending())
            .await
            .expect("the in-memory store does not fail");
        let makespan = start.elapsed();
        let done = recorder.await.expect("the recorder ends with the engine");
        let mut open: HashMap<(String, String, u32), Instant> = HashMap::new();
        let mut busy: HashMap<String, Duration> = HashMap::new();
        for e in sim.trace() {
            let key = (e.commit.to_string(), e.step.clone(), e.attempt);
            if e.kind == TraceKind::Start {
                open.insert(key, e.at);
            } else if let Some(t) = open.remove(&key) {
                let end = done.get(&key).map_or(e.at, |&d| d.min(e.at));
                *busy.entry(e.step.clone()).or_default() += end - t;
            }
        }
        Measured {
            makespan,
            busy,
            downtime: sim.crash_downtime(),
            crashes: sim.crashes(),
        }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n = 1_000;
    let secs = |d: Duration| d.as_secs_f64();
    println!("commits: {n}, all arriving at once; times are virtual seconds\n");
    println!(
        "| runner | schedule | seed | makespan s | Σbuild s | Σtest s | bound s | crashes | downtime s | makespan / bound | makespan / (bound + downtime) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let runs: Vec<(&str, bool, u64)> = vec![
        ("no crashes", false, 7),
        ("original (crashes)", true, 7),
        ("original (crashes)", true, 8),
        ("original (crashes)", true, 9),
        ("original (crashes)", true, 10),
        ("original (crashes)", true, 11),
    ];
    for (label, crash, seed) in runs {
        let mut runner = SimRunnerConfig::original(seed);
        if !crash {
            for b in runner.steps.values_mut() {
                b.crash_rate = 0.0;
            }
        }
        let mut schedules = vec![("ci-engine (overlapped)", EngineConfig::default())];
        if seed == 7 {
            schedules.push((
                "one request at a time",
                EngineConfig {
                    max_in_flight: 1,
                    ..EngineConfig::default()
                },
            ));
        }
        for (schedule, config) in schedules {
            let m = simulate(n, runner.clone(), config);
            let build = m.busy.get("build").copied().unwrap_or_default();
            let test = m.busy.get("test").copied().unwrap_or_default();
            let bound = build.max(test);
            println!(
                "| {label} | {schedule} | {seed} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.2} | {:.3} |",
                secs(m.makespan),
                secs(build),
                secs(test),
                secs(bound),
                m.crashes,
                secs(m.downtime),
                secs(m.makespan) / secs(bound).max(f64::EPSILON),
                secs(m.makespan) / secs(bound + m.downtime).max(f64::EPSILON),
            );
        }
    }
}
