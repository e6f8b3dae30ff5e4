//! A `CommitSource` on gix (under construction).
