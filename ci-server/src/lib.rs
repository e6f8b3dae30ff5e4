//! ci-server (under construction).
