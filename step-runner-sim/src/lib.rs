//! `step-runner-sim`: a wire-compatible simulator of the flaky step runner that
//! `ci-server` drives (the protocol is summed up in `docs/step-runner-sim.md`,
//! "Behaviour"), crash included.
//!
//! Map of the crate:
//! - [`serve`] (in `server`): the accept loop; one tracked task per connection so
//!   that a simulated crash closes every connection without an answer and then
//!   the listener, in-process, without ending the host process.
//! - `http`: routing like Go's `ServeMux`, the `/step/trigger` handler, the
//!   original's plain-text errors and JSON answers.
//! - `steps`: the lint/build/test simulation, per-step locks, random draws.
//! - `go_json`: Go `encoding/json`-compatible decoding (same error messages)
//!   and encoding (same escaping).
//! - [`RequestLog`] (in `request_log`): the optional JSON-lines record of step
//!   requests, answers and the crash ([`serve_with_request_log`]).
//! - [`SimConfig`] (in `config`), [`parse_listen_addr`] (in `addr`).
//! - [`cli`]: the program itself (flags, environment, signals, exit codes), for
//!   the `step-runner-sim` binary and for other binaries that embed it.

#![warn(missing_debug_implementations)]

mod addr;
pub mod cli;
mod config;
mod go_json;
mod http;
mod protocol;
mod request_log;
mod server;
mod steps;

pub use addr::{AddrError, parse_listen_addr};
pub use config::{ConfigError, SimConfig};
pub use request_log::RequestLog;
pub use server::{ServeEnd, serve, serve_with_request_log};

/// What the startup line on stderr starts with; the bound address follows.
pub const LISTENING_PREFIX: &str = "step-runner-sim listening on ";

/// Reads the bound address from the startup line `cli::run` prints, for
/// supervisors and tests that start the simulator on port 0.
pub fn parse_listening_line(line: &str) -> Option<std::net::SocketAddr> {
    line.trim().strip_prefix(LISTENING_PREFIX)?.parse().ok()
}
