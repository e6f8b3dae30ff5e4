//! `GET /metrics`: the server's metrics in the OpenMetrics text format
//! (which Prometheus scrapes), built with `prometheus-client`.
//!
//! Three sources feed them:
//!
//! - the engine's events, followed by a task from the moment [`Metrics`] is
//!   built (so nothing is missed between scrapes): finished runs, retried
//!   runs, attempts and their durations (from `step_started` to
//!   `step_finished` of the same attempt, timed by that task). A retried run
//!   counts once more in the finished runs each time it finishes again, with
//!   its new status: the counters count events, never how many runs have a
//!   status now (`GET /runs?status=` says that);
//! - the engine's view of its runners and concurrency classes, read at each
//!   scrape;
//! - the store's operations, timed by a
//!   [`TimedStore`](crate::timed_store::TimedStore) and added with
//!   [`Metrics::register_store`].
//!
//! `docs/api.md` lists every metric.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ci_engine::{EngineEvent, EngineHandle};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::broadcast;

use crate::timed_store::StoreMetrics;

/// The content type of `GET /metrics`: the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the step duration histogram's buckets, in seconds: from
/// 50 ms (a trivial step) to 30 minutes (a long test suite).
pub const STEP_BUCKETS: [f64; 15] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

/// Label of `ci_runs_finished_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// Labels of the attempt metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
    outcome: &'static str,
}

/// Label of the runner metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunnerLabel {
    runner: String,
}

/// Label of the class metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

fn step_histogram() -> Histogram {
    Histogram::new(STEP_BUCKETS)
}

/// The metrics fed by the engine's events (shared with the task that
/// follows them).
#[derive(Clone, Debug)]
struct EventMetrics {
    runs_finished: Family<StatusLabel, Counter>,
    runs_retried: Counter,
    attempts: Family<StepLabels, Counter>,
    step_duration: Family<StepLabels, Histogram, fn() -> Histogram>,
}

impl EventMetrics {
    /// Follows `events` until the engine is gone.
    async fn follow(self, mut events: broadcast::Receiver<EngineEvent>) {
        // Attempts in flight: (commit, step, attempt) → when they started.
        let mut started: HashMap<(String, String, u32), Instant> = HashMap::new();
        loop {
            match events.recv().await {
                Ok(event) => self.record(event, &mut started),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "metrics fell behind the engine's events");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn record(&self, event: EngineEvent, started: &mut HashMap<(String, String, u32), Instant>) {
        match event {
            EngineEvent::StepStarted {
                commit,
                step,
                attempt,
                ..
            } => {
                started.insert((commit.as_str().to_owned(), step, attempt), Instant::now());
            }
            EngineEvent::StepWithdrawn {
                commit,
                step,
                attempt,
                ..
            } => {
                started.remove(&(commit.as_str().to_owned(), step, attempt));
            }
            EngineEvent::StepFinished {
                commit,
                step,
                attempt,
                outcome,
                ..
            } => {
                let began = started.remove(&(commit.as_str().to_owned(), step.clone(), attempt));
                let labels = StepLabels {
                    step,
                    outcome: outcome.as_str(),
                };
                self.attempts.get_or_create(&labels).inc();
                // An attempt whose start was missed (before the metrics were
                // built, or while they lagged) has no duration.
                if let Some(began) = began {
                    self.step_duration
                        .get_or_create(&labels)
                        .observe(began.elapsed().as_secs_f64());
                }
            }
            EngineEvent::RunRetried { .. } => {
                self.runs_retried.inc();
            }
            EngineEvent::RunFinished { status, .. } => {
                self.runs_finished
                    .get_or_create(&StatusLabel {
                        status: status.as_str(),
                    })
                    .inc();
            }
            _ => {}
        }
    }
}

/// The metrics read from the engine at each scrape.
#[derive(Debug, Default)]
struct ScrapeMetrics {
    runner_up: Family<RunnerLabel, Gauge>,
    runner_in_flight: Family<RunnerLabel, Gauge>,
    runner_crashes: Family<RunnerLabel, Counter>,
    runner_lost_attempts: Family<RunnerLabel, Counter>,
    queue_depth: Family<ClassLabel, Gauge>,
    class_in_flight: Family<ClassLabel, Gauge>,
}

/// Raises `counter` to `total` (the engine's counts only grow).
fn raise_to(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Every metric of the server, and the task that follows the engine's events.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    scrape: ScrapeMetrics,
    /// One scrape refreshes the engine's figures at a time, so that two
    /// scrapes never interleave their updates.
    refreshing: tokio::sync::Mutex<()>,
}

impl Metrics {
    /// The metrics; with an engine, a task follows its events from now on.
    ///
    /// # Panics
    /// With an engine, when called outside a Tokio runtime.
    pub fn new(engine: Option<&EngineHandle>) -> Self {
        let events = EventMetrics {
            runs_finished: Family::default(),
            runs_retried: Counter::default(),
            attempts: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram),
        };
        let scrape = ScrapeMetrics::default();
        let mut registry = Registry::default();
        registry.register(
            "ci_runs_finished",
            "Runs that reached a final status, by status",
            events.runs_finished.clone(),
        );
        registry.register(
            "ci_attempts",
            "Attempts at steps that ended, by step and outcome",
            events.attempts.clone(),
        );
        registry.register_with_unit(
            "ci_step_duration",
            "Time from an attempt's start to its end, by step and outcome",
            Unit::Seconds,
            events.step_duration.clone(),
        );
        registry.register(
            "ci_runner_up",
            "Whether the runner takes steps (1) or is down or being probed (0)",
            scrape.runner_up.clone(),
        );
        registry.register(
            "ci_runner_in_flight",
            "Open requests on the runner, given-up ones included",
            scrape.runner_in_flight.clone(),
        );
        registry.register(
            "ci_runner_crashes",
            "Times the runner's connections closed with requests open",
            scrape.runner_crashes.clone(),
        );
        registry.register(
            "ci_runner_lost_attempts",
            "Attempts lost on the runner (connection closed or no answer in time)",
            scrape.runner_lost_attempts.clone(),
        );
        registry.register(
            "ci_queue_depth",
            "Ready steps of the concurrency class waiting for a permit or a runner",
            scrape.queue_depth.clone(),
        );
        registry.register(
            "ci_class_in_flight",
            "Open requests of the concurrency class on all runners",
            scrape.class_in_flight.clone(),
        );
        if let Some(engine) = engine {
            // A plain counter always has a sample (0 at first): only with an
            // engine, which can retry.
            registry.register(
                "ci_runs_retried",
                "Retries of finished runs (each retried run finishes again and counts again in ci_runs_finished)",
                events.runs_retried.clone(),
            );
            tokio::spawn(events.follow(engine.subscribe()));
        }
        Self {
            registry,
            scrape,
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Adds the store's metrics (`ci_store_operation_duration_seconds`,
    /// `ci_store_errors_total`).
    pub fn register_store(&mut self, store: &StoreMetrics) {
        store.register(&mut self.registry);
    }

    /// Reads the runners and classes from `engine` (waiting at most `timeout`
    /// for each) and encodes every metric. When the engine does not answer,
    /// its runner and class gauges are left out of this scrape.
    ///
    /// # Errors
    /// When encoding fails (it does not, into a string).
    pub async fn render(
        &self,
        engine: Option<&EngineHandle>,
        timeout: Duration,
    ) -> Result<String, std::fmt::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        if let Some(engine) = engine {
            self.refresh(engine, timeout).await;
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    async fn refresh(&self, engine: &EngineHandle, timeout: Duration) {
        let s = &self.scrape;
        let (runners, classes) = tokio::join!(
            tokio::time::timeout(timeout, engine.runners()),
            tokio::time::timeout(timeout, engine.classes()),
        );
        s.runner_up.clear();
        s.runner_in_flight.clear();
        match runners {
            Ok(Ok(runners)) => {
                for r in runners {
                    let label = RunnerLabel { runner: r.id };
                    let up = i64::from(r.state == ci_engine::RunnerState::Up);
                    s.runner_up.get_or_create(&label).set(up);
                    s.runner_in_flight
                        .get_or_create(&label)
                        .set(i64::from(r.in_flight));
                    raise_to(&s.runner_crashes.get_or_create(&label), r.crashes);
                    raise_to(
                        &s.runner_lost_attempts.get_or_create(&label),
                        r.lost_attempts,
                    );
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics: no runners from the engine"),
            Err(_) => tracing::debug!(?timeout, "metrics: the engine did not list its runners"),
        }
        s.queue_depth.clear();
        s.class_in_flight.clear();
        match classes {
            Ok(Ok(classes)) => {
                for c in classes {
                    let label = ClassLabel { class: c.class };
                    s.queue_depth.get_or_create(&label).set(i64::from(c.ready));
                    s.class_in_flight
                        .get_or_create(&label)
                        .set(i64::from(c.in_flight));
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics: no classes from the engine"),
            Err(_) => tracing::debug!(?timeout, "metrics: the engine did not list its classes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_an_engine_only_the_store_has_samples() {
        let mut metrics = Metrics::new(None);
        let store_metrics = StoreMetrics::new();
        metrics.register_store(&store_metrics);
        let render = || metrics.render(None, Duration::from_secs(1));
        // A family without samples is left out entirely.
        assert_eq!(render().await.expect("encodes"), "# EOF\n");

        let store = crate::timed_store::TimedStore::new(
            std::sync::Arc::new(ci_engine::MemoryStore::new()),
            store_metrics.clone(),
        );
        ci_engine::RunStore::max_seq(&store).await.expect("read");
        let text = render().await.expect("encodes");
        assert!(
            text.lines()
                .any(|l| l == "ci_store_operation_duration_seconds_count{operation=\"max_seq\"} 1"),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("ci_runner")
                || l.starts_with("ci_queue")
                || l.starts_with("ci_attempts")),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_retried_run_counts_once_per_finish_and_once_as_retried() {
        let events = EventMetrics {
            runs_finished: Family::default(),
            runs_retried: Counter::default(),
            attempts: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram),
        };
        let mut started = HashMap::new();
        let commit = ci_engine::CommitId::new("abc".to_owned());
        let finished = |status| EngineEvent::RunFinished {
            commit: commit.clone(),
            status,
        };
        let finished_with = |status: ci_engine::RunStatus| {
            events
                .runs_finished
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .get()
        };
        events.record(finished(ci_engine::RunStatus::Failure), &mut started);
        events.record(
            EngineEvent::RunRetried {
                commit: commit.clone(),
                seq: 7,
                steps: vec!["build".to_owned(), "test".to_owned()],
            },
            &mut started,
        );
        assert_eq!(events.runs_retried.get(), 1);
        assert_eq!(finished_with(ci_engine::RunStatus::Failure), 1);
        assert_eq!(finished_with(ci_engine::RunStatus::Success), 0);
        events.record(finished(ci_engine::RunStatus::Success), &mut started);
        assert_eq!(finished_with(ci_engine::RunStatus::Failure), 1);
        assert_eq!(finished_with(ci_engine::RunStatus::Success), 1);
        assert_eq!(events.runs_retried.get(), 1);
    }

    #[test]
    fn a_counter_is_raised_to_the_engines_total_never_lowered() {
        let c = Counter::<u64>::default();
        raise_to(&c, 3);
        assert_eq!(c.get(), 3);
        raise_to(&c, 2);
        assert_eq!(c.get(), 3);
        raise_to(&c, 7);
        assert_eq!(c.get(), 7);
    }
}
