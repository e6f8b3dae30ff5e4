//! How a [`GitSource`](super::GitSource) looks at its repository: how often it
//! polls, whether it listens to file-system notifications, and what it builds the
//! first time it sees a repository.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The shortest poll interval a source uses; smaller values are raised to it.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Settings of a [`GitSource`](super::GitSource).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSourceConfig {
    /// How often the branch tips are read even when no notification arrived: the
    /// fallback when notifications are off or unavailable, and the safety net when
    /// one is lost. Default 2 s; values below [`MIN_POLL_INTERVAL`] are raised to it.
    pub poll_interval: Duration,
    /// Whether to watch the repository's `refs/` and `packed-refs` for changes, so a
    /// new commit is noticed within milliseconds. Default `true`. When the watch
    /// cannot be set up the source logs a warning and relies on polling.
    pub watch: bool,
    /// What to build the first time the source sees a repository (no saved state
    /// in the store). Ignored when the store holds the source's state.
    pub initial: InitialPolicy,
}

impl Default for GitSourceConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            watch: true,
            initial: InitialPolicy::default(),
        }
    }
}

/// What a [`GitSource`](super::GitSource) hands out the first time it sees a
/// repository, that is when the store holds no state of a previous run.
///
/// Whatever the policy, every commit made after that first look is handed out. The
/// commits the policy leaves out are recorded as a *baseline* in the store and are
/// never handed out later, even after a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InitialPolicy {
    /// Build the tip commit of each branch, but not their history (the default):
    /// the server shows the state of every branch at once without running years
    /// of old commits.
    #[default]
    Tips,
    /// Build every commit reachable from any branch, oldest first.
    All,
    /// Build nothing that exists already; only commits made from now on.
    None,
}

impl InitialPolicy {
    /// The policy's name as accepted by [`FromStr`]: `tips`, `all` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tips => "tips",
            Self::All => "all",
            Self::None => "none",
        }
    }
}

impl fmt::Display for InitialPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`InitialPolicy`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown initial policy {0:?}: expected \"tips\", \"all\" or \"none\"")]
pub struct ParseInitialPolicyError(pub String);

impl FromStr for InitialPolicy {
    type Err = ParseInitialPolicyError;

    /// Parses `tips`, `all` or `none`, ignoring ASCII case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tips" => Ok(Self::Tips),
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            _ => Err(ParseInitialPolicyError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for p in [InitialPolicy::Tips, InitialPolicy::All, InitialPolicy::None] {
            assert_eq!(p.to_string().parse::<InitialPolicy>(), Ok(p));
        }
        assert_eq!(" ALL ".parse::<InitialPolicy>(), Ok(InitialPolicy::All));
    }

    #[test]
    fn unknown_policy_is_an_error_naming_the_input() {
        let err = "everything".parse::<InitialPolicy>().unwrap_err();
        assert!(err.to_string().contains("\"everything\""), "{err}");
    }

    #[test]
    fn defaults_are_as_documented() {
        let c = GitSourceConfig::default();
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert!(c.watch);
        assert_eq!(c.initial, InitialPolicy::Tips);
    }
}
