//! [`TimedStore`]: a [`RunStore`] that passes every call on to another store
//! and records how long it took, and whether the backend failed, in
//! [`StoreMetrics`] (exposed by `GET /metrics` as
//! `ci_store_operation_duration_seconds{operation}` and
//! `ci_store_errors_total{operation}`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use ci_engine::{CommitId, Run, RunPage, RunQuery, RunStore, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the store operation histogram's buckets, in seconds:
/// from 100 µs (an in-memory read) to 5 s (a stalled disk).
pub const STORE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0,
];

/// The label of the store metrics: the [`RunStore`] method's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    /// The method, e.g. `update_run`.
    pub operation: &'static str,
}

fn store_histogram() -> Histogram {
    Histogram::new(STORE_BUCKETS)
}

/// How long each store operation took and how often its backend failed.
/// Cloning shares the metrics.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    durations: Family<OperationLabel, Histogram, fn() -> Histogram>,
    errors: Family<OperationLabel, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreMetrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self {
            durations: Family::new_with_constructor(store_histogram),
            errors: Family::default(),
        }
    }

    /// Adds the metrics to `registry` as
    /// `ci_store_operation_duration_seconds` and `ci_store_errors_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "ci_store_operation_duration",
            "Time a store operation took, by RunStore method",
            Unit::Seconds,
            self.durations.clone(),
        );
        registry.register(
            "ci_store_errors",
            "Store operations whose backend failed, by RunStore method \
             (a lookup that finds no run, or several, is not an error)",
            self.errors.clone(),
        );
    }

    async fn time<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let label = OperationLabel { operation };
        self.durations
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        if let Err(StoreError::Backend(_)) = &result {
            self.errors.get_or_create(&label).inc();
        }
        result
    }
}

/// A [`RunStore`] that times every call to the store it wraps.
pub struct TimedStore {
    inner: Arc<dyn RunStore>,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for TimedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedStore").finish_non_exhaustive()
    }
}

impl TimedStore {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn RunStore>, metrics: StoreMetrics) -> Self {
        Self { inner, metrics }
    }

    /// The metrics this store records into.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }
}

#[async_trait]
impl RunStore for TimedStore {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        self.metrics
            .time("insert_run", self.inner.insert_run(run))
            .await
    }

    async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, StoreError> {
        self.metrics
            .time("insert_runs", self.inner.insert_runs(runs))
            .await
    }

    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        self.metrics
            .time("update_run", self.inner.update_run(run))
            .await
    }

    async fn update_runs(&self, runs: Vec<Run>) -> Result<(), StoreError> {
        self.metrics
            .time("update_runs", self.inner.update_runs(runs))
            .await
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<Run, StoreError> {
        self.metrics
            .time("get_run", self.inner.get_run(id_or_prefix))
            .await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        self.metrics
            .time("list_runs", self.inner.list_runs(query))
            .await
    }

    fn generation(&self) -> Option<u64> {
        self.inner.generation()
    }

    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.metrics
            .time("unfinished_runs", self.inner.unfinished_runs())
            .await
    }

    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        self.metrics.time("has_run", self.inner.has_run(id)).await
    }

    async fn unfinished_after(&self, from: u64, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.metrics
            .time("unfinished_after", self.inner.unfinished_after(from, limit))
            .await
    }

    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        self.metrics.time("max_seq", self.inner.max_seq()).await
    }

    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.metrics
            .time("load_state", self.inner.load_state(key))
            .await
    }

    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.metrics
            .time("save_state", self.inner.save_state(key, value))
            .await
    }
}

#[cfg(test)]
mod tests {
    use ci_engine::MemoryStore;
    use ci_engine::testing::MockRunStore;

    use super::*;

    /// The value of the sample `name{operation="op"}` in `metrics`' encoding.
    fn sample(metrics: &StoreMetrics, name: &str, op: &str) -> Option<f64> {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let key = format!("{name}{{operation=\"{op}\"}}");
        text.lines().find_map(|line| {
            let (k, v) = line.rsplit_once(' ')?;
            (k == key).then(|| v.parse().expect("a number"))
        })
    }

    #[tokio::test]
    async fn every_call_is_timed_and_only_backend_failures_are_errors() {
        let metrics = StoreMetrics::new();
        let store = TimedStore::new(Arc::new(MemoryStore::new()), metrics.clone());
        assert_eq!(store.max_seq().await.expect("read"), None);
        store.save_state("k", "v").await.expect("write");
        assert_eq!(
            store.load_state("k").await.expect("read").as_deref(),
            Some("v")
        );
        assert!(matches!(
            store.get_run("abcd").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            sample(
                &metrics,
                "ci_store_operation_duration_seconds_count",
                "max_seq"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &metrics,
                "ci_store_operation_duration_seconds_count",
                "save_state"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &metrics,
                "ci_store_operation_duration_seconds_count",
                "load_state"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &metrics,
                "ci_store_operation_duration_seconds_count",
                "get_run"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &metrics,
                "ci_store_operation_duration_seconds_count",
                "update_run"
            ),
            None
        );
        assert_eq!(sample(&metrics, "ci_store_errors_total", "get_run"), None);

        let mut failing = MockRunStore::new();
        failing
            .expect_max_seq()
            .returning(|| Err(StoreError::Backend("disk on fire".into())));
        let store = TimedStore::new(Arc::new(failing), metrics.clone());
        assert!(store.max_seq().await.is_err());
        assert_eq!(
            sample(
                &metrics,
                "ci_store_operation_duration_seconds_count",
                "max_seq"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&metrics, "ci_store_errors_total", "max_seq"),
            Some(1.0)
        );
    }
}
