//! What the engine knows about a commit: enough to order it, show it and run it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The full hexadecimal id of a commit (40 hex digits for SHA-1 repositories).
///
/// The engine treats it as an opaque, totally ordered string; a run is keyed by it,
/// so one commit has at most one run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommitId(String);

impl CommitId {
    /// Wraps an id. The engine does not validate it; sources hand out full ids.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first `n` characters, for logs (the whole id when it is shorter).
    pub fn short(&self, n: usize) -> &str {
        let end = self
            .0
            .char_indices()
            .nth(n)
            .map_or(self.0.len(), |(i, _)| i);
        &self.0[..end]
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for CommitId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for CommitId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// A commit handed to the engine by a [`CommitSource`](crate::CommitSource).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Full id.
    pub id: CommitId,
    /// The branches whose tip is this commit or contains it, as seen when it was found.
    pub branches: Vec<String>,
    /// Parent ids, first parent first.
    pub parents: Vec<CommitId>,
    /// First line of the message.
    pub summary: String,
    /// Author, as `Name <email>`.
    pub author: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
}

impl Commit {
    /// A commit with only an id, for tests and simple sources.
    pub fn bare(id: impl Into<CommitId>) -> Self {
        Self {
            id: id.into(),
            branches: Vec::new(),
            parents: Vec::new(),
            summary: String::new(),
            author: String::new(),
            time: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_never_panics_on_short_ids() {
        let id = CommitId::new("abc");
        assert_eq!(id.short(7), "abc");
        assert_eq!(CommitId::new("0123456789").short(4), "0123");
    }
}
