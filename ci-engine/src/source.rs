//! Where commits come from: the [`CommitSource`] trait.

use async_trait::async_trait;

use crate::model::Commit;

/// A boxed error from a source's backend (git, a file system, a network).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a source could not produce commits this time.
#[derive(Debug, thiserror::Error)]
#[error("commit source: {message}")]
pub struct SourceError {
    /// What went wrong, in words.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<BoxError>,
}

impl SourceError {
    /// An error with a message and no underlying cause.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by `source`.
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Yields the commits the engine should run.
///
/// # Contract
///
/// - [`next_commits`](Self::next_commits) waits until there is something new and
///   returns it. Within one batch and across batches, a commit comes after every
///   one of its parents that the source hands out at all.
/// - No commit between two looks is missed, and no commit is handed out twice by
///   one source value. (The engine also ignores a commit that already has a run,
///   so a restarted source that repeats itself loses nothing and runs nothing twice.)
/// - An empty batch means nothing new; the engine pauses briefly before asking
///   again, but a source should rather wait until it has something.
/// - `Ok(None)` means the source is finished for good: the engine finishes the
///   work it has and returns. A source watching a repository never finishes.
/// - An `Err` is taken as transient: the engine logs it, waits, and asks again.
/// - Cancel safety: the engine may drop the future at shutdown; a commit is handed
///   out only when the future completes.
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[async_trait]
pub trait CommitSource: Send {
    /// Waits for new commits and returns them, parents first; `Ok(None)` when the
    /// source is exhausted.
    async fn next_commits(&mut self) -> Result<Option<Vec<Commit>>, SourceError>;
}
