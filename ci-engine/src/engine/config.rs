//! [`EngineConfig`]: the knobs of the scheduler, with defaults suited to a slow,
//! flaky runner, and the check that refuses settings it cannot work with.

use std::time::Duration;

/// How the engine retries, waits and limits itself. [`Engine::new`](super::Engine::new)
/// checks it with [`validate`](Self::validate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Attempts per step that count (lost, rejected, finished) before the step
    /// ends `error`, unless the step sets its own
    /// ([`StepSpec::max_attempts`](crate::StepSpec::max_attempts)). At least 1.
    /// Default 5.
    pub max_attempts: u32,
    /// Wait before the first retry that backs off (a timeout, a protocol error,
    /// a runner that answers but keeps losing the step); doubles each retry.
    /// Zero retries at once. Default 1 s.
    pub retry_backoff: Duration,
    /// Cap on the retry wait; not below `retry_backoff`. Default 60 s.
    pub retry_backoff_max: Duration,
    /// Jitter of the retry wait, in percent: a wait of `d` becomes a wait drawn
    /// between `d · (1 − jitter/100)` and `d`, so that steps lost together do not
    /// all come back together. 0–100. Default 50.
    pub retry_jitter_percent: u8,
    /// An attempt with no answer after this long is recorded `lost` and retried
    /// after a backoff; the request itself stays open, holding its permit, until
    /// the runner answers it (see `abandon_limit`). A step may set its own
    /// ([`StepSpec::timeout`](crate::StepSpec::timeout)). Longer than zero.
    /// Default 30 min.
    pub step_timeout: Duration,
    /// How long a request the engine gave up on (timed out, or its run was
    /// cancelled) may stay open on the runner. Past it the runner is taken to be
    /// down: nothing is dispatched, it is probed, and when it answers a probe the
    /// requests it held past the limit are dropped and their permits come back.
    /// Longer than zero. Default 2 min.
    pub abandon_limit: Duration,
    /// Requests in flight to each runner at once, over all classes (given-up
    /// requests still open count). At least 1. Default 32.
    pub max_in_flight: usize,
    /// A ready step that has waited this long for a runner ends `error`: a
    /// step pinned to a runner (`same_runner_as`) while that runner is down,
    /// any other step while every runner is down. Longer than zero. Default 10 min.
    pub unreachable_limit: Duration,
    /// Shortest wait between probes of a runner that is down. Longer than zero.
    /// Default 50 ms.
    pub probe_interval: Duration,
    /// Longest wait between probes; not below `probe_interval`. Between the two,
    /// the wait is a twentieth of how long the runner has been down, so the time
    /// lost between a runner's return and the engine noticing it stays within 5 %
    /// of the outage. Default 5 s.
    pub probe_interval_max: Duration,
    /// At shutdown, how long in-flight steps may take to finish before they are
    /// recorded `interrupted` (and retried at the next start). Default 30 s.
    pub shutdown_grace: Duration,
    /// Wait before asking a source again after it failed. Longer than zero.
    /// Default 5 s.
    pub source_retry: Duration,
    /// Capacity of the event channel; a subscriber that falls further behind
    /// misses events (and is told so by `broadcast`). At least 1. Default 1024.
    pub event_capacity: usize,
    /// The window: unfinished runs the engine holds in memory at once. The
    /// others wait in the store and are taken up in queue order as runs
    /// finish. Beyond the window, a run is taken up early only when a permit
    /// of a first step's class would otherwise stay idle, and only up to as
    /// many again: memory never holds more than twice this many unfinished
    /// runs, so a burst of any size costs memory for the window, not for the
    /// burst. At least 1. Default 512.
    pub active_runs: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            retry_jitter_percent: 50,
            step_timeout: Duration::from_secs(30 * 60),
            abandon_limit: Duration::from_secs(2 * 60),
            max_in_flight: 32,
            unreachable_limit: Duration::from_secs(10 * 60),
            probe_interval: Duration::from_millis(50),
            probe_interval_max: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            source_retry: Duration::from_secs(5),
            event_capacity: 1024,
            active_runs: 512,
        }
    }
}

/// A setting of [`EngineConfig`] the engine cannot work with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid engine configuration: {field} {problem}")]
pub struct ConfigError {
    /// The field, as named in [`EngineConfig`].
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl EngineConfig {
    /// The most unfinished runs the engine holds in memory at once: the
    /// window, [`active_runs`](Self::active_runs), and as many again taken
    /// up early to keep permits busy.
    pub fn memory_ceiling(&self) -> usize {
        self.active_runs.saturating_mul(2)
    }

    /// Checks every setting; the first one that is wrong is named in the error.
    ///
    /// # Errors
    /// A zero `max_attempts`, `max_in_flight`, `event_capacity` or
    /// `active_runs`; a zero
    /// `step_timeout`, `abandon_limit`, `unreachable_limit`, `probe_interval` or
    /// `source_retry`; a cap below its base (`retry_backoff_max`,
    /// `probe_interval_max`); a jitter above 100 %.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, problem: &str| {
            Err(ConfigError {
                field,
                problem: problem.to_owned(),
            })
        };
        if self.max_attempts == 0 {
            return fail("max_attempts", "must be at least 1");
        }
        if self.max_in_flight == 0 {
            return fail("max_in_flight", "must be at least 1");
        }
        if self.event_capacity == 0 {
            return fail("event_capacity", "must be at least 1");
        }
        if self.active_runs == 0 {
            return fail("active_runs", "must be at least 1");
        }
        for (field, value) in [
            ("step_timeout", self.step_timeout),
            ("abandon_limit", self.abandon_limit),
            ("unreachable_limit", self.unreachable_limit),
            ("probe_interval", self.probe_interval),
            ("source_retry", self.source_retry),
        ] {
            if value.is_zero() {
                return fail(field, "must be longer than zero");
            }
        }
        if self.retry_backoff_max < self.retry_backoff {
            return fail(
                "retry_backoff_max",
                &format!(
                    "({:?}) must not be shorter than retry_backoff ({:?})",
                    self.retry_backoff_max, self.retry_backoff
                ),
            );
        }
        if self.probe_interval_max < self.probe_interval {
            return fail(
                "probe_interval_max",
                &format!(
                    "({:?}) must not be shorter than probe_interval ({:?})",
                    self.probe_interval_max, self.probe_interval
                ),
            );
        }
        if self.retry_jitter_percent > 100 {
            return fail(
                "retry_jitter_percent",
                &format!("({}) must be at most 100", self.retry_jitter_percent),
            );
        }
        Ok(())
    }

    /// The wait before retry number `retry` (1 for the first retry), before
    /// jitter: `retry_backoff · 2^(retry−1)`, capped at `retry_backoff_max`.
    pub fn backoff_for(&self, retry: u32) -> Duration {
        crate::backoff::doubling_backoff(self.retry_backoff, retry.max(1), self.retry_backoff_max)
    }

    /// [`backoff_for`](Self::backoff_for) with jitter: shortened by up to
    /// `retry_jitter_percent` by a fraction drawn from `key` (the engine hashes
    /// commit, step and attempt into it, so a history is reproducible), in
    /// whole milliseconds.
    pub fn jittered_backoff(&self, retry: u32, key: u64) -> Duration {
        let base = self.backoff_for(retry);
        // A fraction in [0, 1) from the key's high bits, in ten-thousandths.
        let draw = u32::try_from(mix(key) >> 32).unwrap_or(u32::MAX) % 10_000;
        let cut = u128::from(draw) * u128::from(self.retry_jitter_percent.min(100));
        let cut_nanos = base.as_nanos() * cut / 1_000_000;
        let wait = base.saturating_sub(Duration::from_nanos(
            u64::try_from(cut_nanos).unwrap_or(u64::MAX),
        ));
        // Whole milliseconds, so that the wait announced in events is exact.
        Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
    }

    /// The wait before the next probe of a runner that has been down for `down`.
    pub fn probe_delay(&self, down: Duration) -> Duration {
        (down / 20).clamp(self.probe_interval, self.probe_interval_max)
    }
}

/// SplitMix64's finaliser: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
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

    #[test]
    fn jitter_stays_within_its_share_and_spreads_the_waits() {
        let c = EngineConfig::default();
        let waits: Vec<Duration> = (0..1_000).map(|k| c.jittered_backoff(3, k)).collect();
        assert!(
            waits
                .iter()
                .all(|&w| w >= Duration::from_secs(2) && w <= Duration::from_secs(4))
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 600,
            "only {} distinct waits",
            distinct.len()
        );
        let none = EngineConfig {
            retry_jitter_percent: 0,
            ..c.clone()
        };
        assert_eq!(none.jittered_backoff(3, 12345), Duration::from_secs(4));
        assert_eq!(c.jittered_backoff(3, 7), c.jittered_backoff(3, 7));
    }

    #[test]
    fn probes_wait_a_twentieth_of_the_outage_within_bounds() {
        let c = EngineConfig::default();
        assert_eq!(c.probe_delay(Duration::ZERO), Duration::from_millis(50));
        assert_eq!(
            c.probe_delay(Duration::from_secs(4)),
            Duration::from_millis(200)
        );
        assert_eq!(
            c.probe_delay(Duration::from_secs(3600)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_default_is_valid_and_each_bad_setting_is_named() {
        assert_eq!(EngineConfig::default().validate(), Ok(()));
        /// A field's name and a change that makes it invalid.
        type Spoil = (&'static str, fn(&mut EngineConfig));
        let bad: [Spoil; 11] = [
            ("max_attempts", |c| c.max_attempts = 0),
            ("max_in_flight", |c| c.max_in_flight = 0),
            ("event_capacity", |c| c.event_capacity = 0),
            ("step_timeout", |c| c.step_timeout = Duration::ZERO),
            ("abandon_limit", |c| c.abandon_limit = Duration::ZERO),
            ("unreachable_limit", |c| {
                c.unreachable_limit = Duration::ZERO
            }),
            ("probe_interval", |c| c.probe_interval = Duration::ZERO),
            ("source_retry", |c| c.source_retry = Duration::ZERO),
            ("retry_backoff_max", |c| {
                c.retry_backoff_max = Duration::from_millis(10);
            }),
            ("probe_interval_max", |c| {
                c.probe_interval_max = Duration::from_millis(10);
            }),
            ("retry_jitter_percent", |c| c.retry_jitter_percent = 101),
        ];
        for (field, spoil) in bad {
            let mut config = EngineConfig::default();
            spoil(&mut config);
            let e = config.validate().expect_err(field);
            assert_eq!(e.field, field);
            assert!(e.to_string().contains(field), "{e}");
        }
    }
}
