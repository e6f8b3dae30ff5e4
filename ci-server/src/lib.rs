//! `ci-server`: the reference CI server built on `ci-engine`. It watches a git
//! repository, runs every new commit of every branch through lint, build and test
//! (or the steps of a pipeline file) on a pool of step runners, and serves the
//! runs over HTTP.
//!
//! The components, from the outside in:
//!
//! - [`cli`]: the command line, turned into a [`server::ServerConfig`].
//! - [`server`]: wires everything together and runs it until shutdown
//!   ([`server::Server::start`], [`server::Server::serve`], [`server::run`]);
//!   [`server::RunnerChoice`] says which runners form the pool.
//! - [`api`]: the poem-openapi HTTP API (`/runs`, `/run/{commit}`, step logs),
//!   `/openapi.json`, Swagger UI at `/docs`, `/events`, and the pages for people
//!   at `/` (the runs) and `/commit/{commit}` (one run).
//! - [`git`]: `GitSource`, a `CommitSource` on gix.
//! - [`http_runner`]: `HttpStepRunner`, a `StepRunner` on reqwest.
//! - [`supervisor`]: starts and restarts a bundled step-runner simulator (one
//!   supervisor per simulator).
//! - [`sqlite_store`]: `SqliteStore`, a durable `RunStore`.
//! - [`memory`]: gives the memory a burst freed back to the system.
//! - [`pg_store`]: `PgStore`, a durable `RunStore` in PostgreSQL.
//! - [`timed_store`]: `TimedStore`, a `RunStore` that times every call of
//!   another one for `GET /metrics`.
//! - [`migrate`]: `ci-server migrate-store`, which copies a SQLite run
//!   database into PostgreSQL.

pub mod api;
pub mod cli;
pub mod git;
pub mod http_runner;
pub mod lease;
pub mod memory;
pub mod migrate;
pub mod pg_store;
pub mod read_only_store;
pub mod server;
pub mod sqlite_store;
pub mod supervisor;
pub mod timed_store;
