//! What the server knows about its runners beyond the engine's view: where each
//! one is and how it is run. Behind `GET /runners` and `GET /healthz`.
//!
//! (Interface placeholder: the endpoints land in a later commit.)

use std::sync::Arc;

/// One runner of the pool as the server configured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerInfo {
    /// Its id in the engine's pool (recorded on attempts).
    pub id: String,
    /// Its base URL now (a bundled simulator's may change when it restarts).
    pub address: String,
    /// The repository path the runner is told to use.
    pub repo_path: String,
    /// Started and supervised by this server (a bundled simulator).
    pub bundled: bool,
    /// How many times the server restarted it (bundled simulators only).
    pub restarts: Option<u64>,
}

/// Gives the current [`RunnerInfo`] of every runner, in pool order.
pub type RunnerDirectory = Arc<dyn Fn() -> Vec<RunnerInfo> + Send + Sync>;
