//! The three simulated steps: their durations, outcomes, locks and the crash.

use std::sync::Mutex as StdMutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::SimConfig;
use crate::protocol::{StepPayload, StepResponse};

/// The steps the original knows (names are case-sensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Lint,
    Build,
    Test,
}

impl StepKind {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "lint" => Some(Self::Lint),
            "build" => Some(Self::Build),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
}

/// Everything random about one request, drawn up front so that each step kind's
/// n-th request gets the same draw for a given seed, whatever the request says.
#[derive(Debug, Clone, Copy)]
struct Draw {
    duration_ms: u64,
    failure: bool,
    crash: bool,
}

/// One independent random stream per step kind.
struct Streams {
    lint: StdRng,
    build: StdRng,
    test: StdRng,
}

/// What became of a request for a step.
#[derive(Debug)]
pub enum StepOutcome {
    /// The step ran; answer 200 with this body.
    Ran(StepResponse),
    /// `step_name` is not `lint`, `build` or `test`.
    UnknownStep,
    /// The test crashed the runner: answer nothing, ever.
    Crash,
}

/// The state one server shares between its requests: settings, locks and randomness.
pub struct Simulator {
    config: SimConfig,
    build_lock: Mutex<()>,
    test_lock: Mutex<()>,
    streams: StdMutex<Streams>,
}

impl Simulator {
    /// A simulator with fresh locks; seeded from `config.seed` or the OS.
    pub fn new(config: SimConfig) -> Self {
        let mut master = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let streams = Streams {
            lint: StdRng::from_rng(&mut master),
            build: StdRng::from_rng(&mut master),
            test: StdRng::from_rng(&mut master),
        };
        Self {
            config,
            build_lock: Mutex::new(()),
            test_lock: Mutex::new(()),
            streams: StdMutex::new(streams),
        }
    }

    fn draw(&self, kind: StepKind) -> Draw {
        // A poisoned lock only means another request panicked mid-draw; the
        // generator itself is still usable.
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (rng, max_ms, fixed_ms) = match kind {
            StepKind::Lint => (&mut streams.lint, 100, self.config.lint_ms),
            StepKind::Build => (&mut streams.build, 1000, self.config.build_ms),
            StepKind::Test => (&mut streams.test, 1000, self.config.test_ms),
        };
        let random_ms = rng.random_range(0..max_ms);
        let failure = rng.random::<f64>() < self.config.fail_rate;
        let crash = rng.random::<f64>() < self.config.crash_rate;
        Draw {
            duration_ms: fixed_ms.unwrap_or(random_ms),
            failure,
            crash,
        }
    }

    /// Runs the step the payload names, holding its lock (build and test) for the
    /// simulated duration, and says how to answer.
    pub async fn run(&self, payload: &StepPayload) -> StepOutcome {
        let start = Instant::now();
        let name = payload.step_name.as_str();
        let mut logs = format!(
            "step '{name}' build started!\nRepo path: {}\nCommit hash: {}",
            payload.repo_path, payload.commit_hash
        );
        let Some(kind) = StepKind::parse(name) else {
            tracing::error!(step = name, "Unknown step provided");
            return StepOutcome::UnknownStep;
        };
        let draw = self.draw(kind);
        let status = match kind {
            StepKind::Lint => {
                logs.push_str("\nLinting...");
                tracing::info!(step = name, planned_ms = draw.duration_ms, "step started");
                simulate(draw.duration_ms).await;
                "Success".to_owned()
            }
            StepKind::Build | StepKind::Test => {
                let (lock, doing, busy) = if kind == StepKind::Build {
                    (
                        &self.build_lock,
                        "\nBuilding...",
                        "Building lock is not available!",
                    )
                } else {
                    (
                        &self.test_lock,
                        "\nTesting...",
                        "Testing lock is not available!",
                    )
                };
                logs.push_str(doing);
                let duration_ms = payload
                    .simulate_build_time
                    .map_or(draw.duration_ms, |ms| u64::try_from(ms).unwrap_or(0));
                let _guard = match lock.try_lock() {
                    Ok(guard) => guard,
                    Err(_) => {
                        tracing::warn!(step = name, "{busy}");
                        logs.push_str("\nWaiting for lock...");
                        lock.lock().await
                    }
                };
                logs.push_str(&format!("\nSimulating build for step '{name}'..."));
                tracing::info!(step = name, planned_ms = duration_ms, "step started");
                simulate(duration_ms).await;
                let status = match &payload.simulate_status {
                    Some(forced) => forced.clone(),
                    None if draw.failure => "Failure".to_owned(),
                    None => "Success".to_owned(),
                };
                if kind == StepKind::Test && self.config.crashable && draw.crash {
                    tracing::error!("Oh no! The tests caused a server crash!");
                    return StepOutcome::Crash;
                }
                status
            }
        };
        let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        logs.push_str(&format!("\nStep '{name}' completed with status: {status}"));
        tracing::info!(step = name, status, duration_ms, "step finished");
        StepOutcome::Ran(StepResponse {
            build_logs: logs,
            status,
            duration_ms,
        })
    }
}

/// Takes `ms` milliseconds, the simulated work of a step. Zero takes no time
/// at all: tokio's timer counts in whole milliseconds, so even a sleep of zero
/// waits for its next tick (up to 1 ms), which is not answering at once.
async fn simulate(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(step: &str) -> StepPayload {
        StepPayload {
            step_name: step.to_owned(),
            repo_path: "/r".to_owned(),
            commit_hash: "abc".to_owned(),
            ..StepPayload::default()
        }
    }

    fn ran(outcome: StepOutcome) -> StepResponse {
        match outcome {
            StepOutcome::Ran(r) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lint_logs_and_status_match_the_original() {
        let sim = Simulator::new(SimConfig {
            lint_ms: Some(81),
            fail_rate: 1.0,
            ..SimConfig::default()
        });
        let r = ran(sim.run(&payload("lint")).await);
        assert_eq!(
            r.build_logs,
            "step 'lint' build started!\nRepo path: /r\nCommit hash: abc\nLinting...\nStep 'lint' completed with status: Success"
        );
        assert_eq!(r.status, "Success");
        assert_eq!(r.duration_ms, 81);
    }

    #[tokio::test(start_paused = true)]
    async fn second_build_waits_and_counts_the_wait() {
        let sim = Simulator::new(SimConfig {
            build_ms: Some(100),
            fail_rate: 0.0,
            ..SimConfig::default()
        });
        let (first, second) = (payload("build"), payload("build"));
        let (a, b) = tokio::join!(sim.run(&first), sim.run(&second));
        let (a, b) = (ran(a), ran(b));
        assert_eq!(
            a.build_logs,
            "step 'build' build started!\nRepo path: /r\nCommit hash: abc\nBuilding...\nSimulating build for step 'build'...\nStep 'build' completed with status: Success"
        );
        assert!(
            b.build_logs
                .contains("\nBuilding...\nWaiting for lock...\nSimulating build")
        );
        assert_eq!((a.duration_ms, b.duration_ms), (100, 200));
    }

    #[tokio::test(start_paused = true)]
    async fn build_and_test_do_not_share_a_lock() {
        let sim = Simulator::new(SimConfig {
            build_ms: Some(100),
            test_ms: Some(100),
            crashable: false,
            ..SimConfig::default()
        });
        let (build, test) = (payload("build"), payload("test"));
        let (a, b) = tokio::join!(sim.run(&build), sim.run(&test));
        let (a, b) = (ran(a), ran(b));
        assert!(!a.build_logs.contains("Waiting") && !b.build_logs.contains("Waiting"));
        assert_eq!((a.duration_ms, b.duration_ms), (100, 100));
    }

    #[tokio::test(start_paused = true)]
    async fn simulate_fields_override_draws_and_the_crash_still_happens() {
        let sim = Simulator::new(SimConfig {
            test_ms: Some(500),
            fail_rate: 1.0,
            crash_rate: 0.0,
            ..SimConfig::default()
        });
        let mut p = payload("test");
        p.simulate_status = Some("Whatever".to_owned());
        p.simulate_build_time = Some(7);
        let r = ran(sim.run(&p).await);
        assert_eq!((r.status.as_str(), r.duration_ms), ("Whatever", 7));
        assert!(
            r.build_logs
                .ends_with("Step 'test' completed with status: Whatever")
        );

        let crashing = Simulator::new(SimConfig {
            crash_rate: 1.0,
            ..SimConfig::default()
        });
        assert!(matches!(crashing.run(&p).await, StepOutcome::Crash));
        let off = Simulator::new(SimConfig {
            crash_rate: 1.0,
            crashable: false,
            ..SimConfig::default()
        });
        assert!(matches!(off.run(&p).await, StepOutcome::Ran(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_and_wrongly_cased_steps_are_rejected() {
        let sim = Simulator::new(SimConfig::default());
        for name in ["Lint", "deploy", ""] {
            assert!(matches!(
                sim.run(&payload(name)).await,
                StepOutcome::UnknownStep
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn negative_build_time_means_no_wait_and_lint_ignores_simulate_fields() {
        let sim = Simulator::new(SimConfig {
            lint_ms: Some(3),
            crashable: false,
            ..SimConfig::default()
        });
        let mut p = payload("build");
        p.simulate_build_time = Some(-5);
        assert_eq!(ran(sim.run(&p).await).duration_ms, 0);
        let mut p = payload("lint");
        p.simulate_build_time = Some(500);
        p.simulate_status = Some("Failure".to_owned());
        let r = ran(sim.run(&p).await);
        assert_eq!((r.status.as_str(), r.duration_ms), ("Success", 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_seed_fixes_the_outcome_sequence() {
        let outcomes = |seed| async move {
            let sim = Simulator::new(SimConfig {
                seed: Some(seed),
                crashable: false,
                ..SimConfig::default()
            });
            let mut seen = Vec::new();
            for _ in 0..40 {
                let r = ran(sim.run(&payload("build")).await);
                seen.push((r.status, r.duration_ms));
            }
            seen
        };
        let a = outcomes(7).await;
        assert_eq!(a, outcomes(7).await);
        assert_ne!(a, outcomes(8).await);
        assert!(a.iter().any(|(s, _)| s == "Success") && a.iter().any(|(s, _)| s == "Failure"));
        assert!(a.iter().all(|(_, ms)| *ms < 1000));
    }
}
