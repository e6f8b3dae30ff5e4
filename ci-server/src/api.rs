//! The HTTP API (under construction).
