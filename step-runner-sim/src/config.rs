//! The simulator's settings: how often steps fail and crash, and how long they take.

/// Simulator settings (`Default` = the original's behaviour: fail 0.5, crash 0.2,
/// crashable, random durations).
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seeds the random draws, so that the n-th lint, build and test of a server
    /// get the same duration, outcome and crash decision on every run of the same
    /// binary. `None` seeds from the operating system.
    pub seed: Option<u64>,
    /// Probability in `0..=1` that a build or test reports `Failure`.
    pub fail_rate: f64,
    /// Probability in `0..=1` that a test crashes the server (when `crashable`).
    pub crash_rate: f64,
    /// `false` turns the crash off entirely (`CI_SERVER_CRASHABLE=false`).
    pub crashable: bool,
    /// Fixed lint duration in ms instead of a uniform 0–99 ms.
    pub lint_ms: Option<u64>,
    /// Fixed build duration in ms instead of a uniform 0–999 ms
    /// (a request's `simulate_build_time` still wins).
    pub build_ms: Option<u64>,
    /// Fixed test duration in ms instead of a uniform 0–999 ms
    /// (a request's `simulate_build_time` still wins).
    pub test_ms: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: None,
            fail_rate: 0.5,
            crash_rate: 0.2,
            crashable: true,
            lint_ms: None,
            build_ms: None,
            test_ms: None,
        }
    }
}

/// A setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A rate that is not a probability (outside `0..=1`, or NaN).
    #[error("{name} must be a probability between 0 and 1, got {value}")]
    RateOutOfRange {
        /// Which setting (`fail rate` or `crash rate`).
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
}

impl SimConfig {
    /// Checks that both rates are probabilities.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("fail rate", self.fail_rate),
            ("crash rate", self.crash_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::RateOutOfRange { name, value });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_original() {
        let c = SimConfig::default();
        assert_eq!((c.fail_rate, c.crash_rate, c.crashable), (0.5, 0.2, true));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn rates_outside_zero_to_one_are_rejected() {
        for bad in [-0.1, 1.01, f64::NAN] {
            let c = SimConfig {
                crash_rate: bad,
                ..SimConfig::default()
            };
            assert!(c.validate().is_err(), "{bad} accepted");
            let c = SimConfig {
                fail_rate: bad,
                ..SimConfig::default()
            };
            assert!(c.validate().is_err(), "{bad} accepted");
        }
        let edges = SimConfig {
            fail_rate: 0.0,
            crash_rate: 1.0,
            ..SimConfig::default()
        };
        assert_eq!(edges.validate(), Ok(()));
    }
}
