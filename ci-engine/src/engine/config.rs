//! [`EngineConfig`]: the knobs of the scheduler, with defaults suited to a slow,
//! flaky runner.

use std::time::Duration;

/// How the engine retries, waits and limits itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Attempts per step that count (lost, rejected, finished) before the step
    /// ends `error`. At least 1. Default 5.
    pub max_attempts: u32,
    /// Wait before the first retry of a lost step; doubles each retry. Default 1 s.
    pub retry_backoff: Duration,
    /// Cap on the retry wait. Default 60 s.
    pub retry_backoff_max: Duration,
    /// A step that takes longer is abandoned as lost. Default 30 min.
    pub step_timeout: Duration,
    /// Requests in flight to the runner at once, over all classes. Default 32.
    pub max_in_flight: usize,
    /// A step that has waited this long for an unreachable runner ends `error`.
    /// Default 10 min.
    pub unreachable_limit: Duration,
    /// First wait between probes of an unreachable runner; doubles. Default 100 ms.
    pub probe_interval: Duration,
    /// Cap on the wait between probes. Default 5 s.
    pub probe_interval_max: Duration,
    /// At shutdown, how long in-flight steps may take to finish before they are
    /// abandoned (and resumed as interrupted at the next start). Default 30 s.
    pub shutdown_grace: Duration,
    /// Wait before asking a source again after it failed. Default 5 s.
    pub source_retry: Duration,
    /// Capacity of the event channel; a subscriber that falls further behind
    /// misses events (and is told so by `broadcast`). Default 1024.
    pub event_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            step_timeout: Duration::from_secs(30 * 60),
            max_in_flight: 32,
            unreachable_limit: Duration::from_secs(10 * 60),
            probe_interval: Duration::from_millis(100),
            probe_interval_max: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            source_retry: Duration::from_secs(5),
            event_capacity: 1024,
        }
    }
}

impl EngineConfig {
    /// The wait before retry number `retry` (1 for the first retry).
    pub fn backoff_for(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.retry_backoff
            .checked_mul(factor)
            .unwrap_or(self.retry_backoff_max)
            .min(self.retry_backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = EngineConfig::default();
        assert_eq!(c.backoff_for(1), Duration::from_secs(1));
        assert_eq!(c.backoff_for(2), Duration::from_secs(2));
        assert_eq!(c.backoff_for(4), Duration::from_secs(8));
        assert_eq!(c.backoff_for(40), Duration::from_secs(60));
    }
}
