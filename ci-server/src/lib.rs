//! `ci-server`: the reference CI server built on `ci-engine` (under construction).
//!
//! - [`git`]: `GitSource`, a `CommitSource` on gix.
//! - [`http_runner`]: `HttpStepRunner`, a `StepRunner` on reqwest.
//! - [`supervisor`]: starts and restarts the bundled step-runner simulator.
//! - [`sqlite_store`]: `SqliteStore`, a durable `RunStore`.
//! - [`api`]: the poem-openapi HTTP API.

pub mod api;
pub mod git;
pub mod http_runner;
pub mod sqlite_store;
pub mod supervisor;
