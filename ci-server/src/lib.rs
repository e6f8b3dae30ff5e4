//! `ci-server`: the reference CI server built on `ci-engine`. It watches a git
//! repository, runs every new commit of every branch through lint, build and test
//! (or the steps of a pipeline file) on a pool of step runners, and serves the
//! runs over HTTP.
//!
//! The components, from the outside in, each behind its cargo feature (all
//! on by default; `--no-default-features --features sqlite` gives the SQLite
//! store alone):
//!
//! - `cli` (`server`): the command line, turned into a `server::ServerConfig`.
//! - `server` (`server`): wires everything together and runs it until
//!   shutdown (`Server::start`, `Server::serve`, `server::run`);
//!   `RunnerChoice` says which runners form the pool.
//! - `lease` (`server`): which of the servers sharing a store is the
//!   active one; `read_only_store`: the store as a standby serves it.
//! - `api` (`api`): the poem-openapi HTTP API (`/runs`, `/run/{commit}`, step
//!   logs), `/openapi.json`, Swagger UI at `/docs`, `/events`, `/metrics`, and
//!   the pages for people at `/` (the runs) and `/commit/{commit}` (one run);
//!   `timed_store`: a `RunStore` that times every call of another one for
//!   `GET /metrics`.
//! - `git` (`git`): `GitSource`, a `CommitSource` on gix.
//! - `http_runner` (`http-runner`): `HttpStepRunner`, a `StepRunner` on reqwest.
//! - `supervisor` (`supervisor`): starts and restarts a bundled step-runner
//!   simulator (one supervisor per simulator).
//! - `sqlite_store` (`sqlite`): `SqliteStore`, a durable `RunStore` in one file.
//! - `pg_store` (`postgres`): `PgStore`, a durable `RunStore` in PostgreSQL.
//! - `memory` (`server`): gives the memory a burst freed back to the system.
//! - `migrate` (`server`): `ci-server migrate-store`, which copies a SQLite
//!   run database into PostgreSQL.

#![warn(missing_debug_implementations)]

/// The environment variable that holds the API token when neither
/// `--api-token-file` nor `--api-token` is given; never passed on to a
/// bundled simulator.
pub const API_TOKEN_ENV: &str = "CI_API_TOKEN";

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "git")]
pub mod git;
#[cfg(feature = "http-runner")]
pub mod http_runner;
#[cfg(feature = "server")]
pub mod lease;
#[cfg(feature = "server")]
pub mod memory;
#[cfg(feature = "server")]
pub mod migrate;
#[cfg(feature = "postgres")]
pub mod pg_store;
pub mod read_only_store;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "sqlite")]
pub mod sqlite_store;
#[cfg(feature = "supervisor")]
pub mod supervisor;
#[cfg(feature = "api")]
pub mod timed_store;
