//! [`GitSourceError`]: why a [`GitSource`](super::GitSource) could not be opened.
//!
//! Errors while scanning an open repository are transient and reported as
//! [`SourceError`](ci_engine::SourceError) instead, so the engine retries.

use std::path::PathBuf;

use ci_engine::{BoxError, StoreError};

/// Why [`GitSource::open`](super::GitSource::open) failed. Each variant names
/// what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitSourceError {
    /// The path does not exist (or cannot be reached).
    #[error("repository path {path} does not exist: {source}")]
    Missing {
        /// The path given.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a git repository (neither a work tree with a
    /// `.git` nor a bare repository).
    #[error("{path} is not a git repository: {source}")]
    NotARepository {
        /// The path given.
        path: PathBuf,
        /// Why gix refused it.
        #[source]
        source: BoxError,
    },
    /// The store failed while loading the source's saved state.
    #[error("loading the git source's state from the store: {0}")]
    Store(#[source] StoreError),
    /// The state saved in the store by an earlier run cannot be read. The source
    /// refuses to start rather than guess (and perhaps run or skip the wrong commits).
    #[error("the git source's saved state (store key {key:?}) is unreadable: {reason}")]
    BadState {
        /// The store key of the unreadable part of the state.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}
