//! [`RunnerSupervisor`]: runs the bundled step-runner simulator (or any program
//! that speaks the step-runner protocol) as a child process and restarts it
//! whenever it exits, because the runner crashes by design.
//!
//! # Life of the child
//!
//! - The child is started as `program args… --addr 127.0.0.1:PORT` (PORT is 0 on
//!   the first start unless [`SupervisorConfig::port`] is set: the child picks a
//!   free port itself, so there is no race for it). It is *up* once it has printed
//!   `… listening on ADDR` on stdout or stderr and a TCP connection to ADDR
//!   succeeds. Everything it prints is logged with `tracing` (target
//!   `ci_server::runner_process`).
//! - When it exits (the simulator exits 1 on a crash), it is started again at once
//!   **on the same port**, so the runner address stays the same. A child that
//!   dies *before* it is up is retried after a backoff that doubles from
//!   [`SupervisorConfig::restart_backoff_min`] up to
//!   [`SupervisorConfig::restart_backoff_max`]; the backoff resets once a child
//!   is up. The supervisor never gives up while it runs.
//! - If the port turns out to be taken by another process when restarting, the
//!   supervisor moves the runner to a new free port (unless the port was fixed by
//!   [`SupervisorConfig::port`], in which case it keeps retrying it and logs an
//!   error) and publishes the new address: [`RunnerSupervisor::runner_addr`] is a
//!   `watch` channel, and a runner made with [`RunnerSupervisor::step_runner`] (or
//!   [`HttpStepRunner::following`]) sends each attempt to the current address.
//! - The child is killed when the supervisor is [shut down](RunnerSupervisor::shutdown)
//!   or dropped (`kill_on_drop`; dropping needs the tokio runtime to still run for
//!   the kill to be immediate, otherwise it happens when the runtime drops the
//!   task).
//!
//! [`RunnerSupervisor::status`] and [`RunnerSupervisor::subscribe`] expose whether
//! the runner is up, how often it exited and was restarted, and its pid, for logs
//! and metrics.
//!
//! Everything a supervisor logs, its child's output included, is inside a
//! `runner` span whose `id` is [`SupervisorConfig::name`], so that the lines of
//! several supervised runners can be told apart.

mod child;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, info_span, warn};

use crate::http_runner::{HttpRunnerConfig, HttpRunnerError, HttpStepRunner, RunnerAddr};
use child::{ReadyChild, StartFailure, start_child};

/// The hidden first argument of the `ci-server` binary that makes it run the
/// bundled simulator (see [`SupervisorConfig::bundled`]).
pub const BUNDLED_SIM_ARG: &str = "__step-runner-sim";

/// The hidden flag of the bundled simulator that makes it exit when its standard
/// input reaches end-of-file, that is, when the process that started it is gone
/// (even after a `kill -9`, which gives no chance to stop children). The
/// supervisor gives every child a pipe as standard input and keeps it open.
pub const EXIT_WITH_PARENT_FLAG: &str = "--exit-with-parent";

/// The arguments that make the `ci-server` binary run as a bundled
/// simulator under a supervisor: [`BUNDLED_SIM_ARG`], [`EXIT_WITH_PARENT_FLAG`],
/// then `sim_args` (simulator flags such as `--no-crash`). The one place they
/// are put together.
pub fn bundled_sim_args(sim_args: impl IntoIterator<Item = String>) -> Vec<String> {
    [BUNDLED_SIM_ARG, EXIT_WITH_PARENT_FLAG]
        .into_iter()
        .map(str::to_owned)
        .chain(sim_args)
        .collect()
}

/// How to start the runner process and how to restart it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// The runner's name in logs (the `id` of their `runner` span), e.g. its id
    /// in the engine's pool. Default: `step-runner`.
    pub name: String,
    /// The program to run.
    pub program: PathBuf,
    /// Its arguments, placed before the `--addr 127.0.0.1:PORT` that the
    /// supervisor appends.
    pub args: Vec<String>,
    /// A fixed port to listen on; `None` (the default) lets the first child pick a
    /// free one, which later children reuse while they can.
    pub port: Option<u16>,
    /// How long a child may take to listen before it counts as failed (and is
    /// killed). Default: 10 seconds.
    pub start_timeout: Duration,
    /// The wait before restarting a child that died before it was up; doubles on
    /// each further such death. Default: 50 ms.
    pub restart_backoff_min: Duration,
    /// The cap of that wait. Default: 2 seconds.
    pub restart_backoff_max: Duration,
}

impl SupervisorConfig {
    /// Runs `program args…` with the default timings.
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            name: "step-runner".to_owned(),
            program: program.into(),
            args,
            port: None,
            start_timeout: Duration::from_secs(10),
            restart_backoff_min: Duration::from_millis(50),
            restart_backoff_max: Duration::from_secs(2),
        }
    }

    /// The bundled simulator: this very executable with the arguments of
    /// [`bundled_sim_args`] (`sim_args` are simulator flags such as
    /// `--no-crash`). Only meaningful in the `ci-server` binary, whose `main`
    /// handles them.
    ///
    /// # Errors
    ///
    /// When the path of the current executable cannot be found.
    pub fn bundled(sim_args: Vec<String>) -> std::io::Result<Self> {
        let program = std::env::current_exe()?;
        Ok(Self::new(program, bundled_sim_args(sim_args)))
    }

    /// The same, with `name` in logs.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// Why the supervisor could not start the runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The configuration cannot work (the message says why).
    #[error("invalid supervisor configuration: {0}")]
    Config(String),
    /// The first child could not be started or did not come up.
    #[error("cannot start the step runner `{program}`: {reason}")]
    Start {
        /// The program that was run.
        program: PathBuf,
        /// What went wrong, with the last lines the child printed.
        reason: String,
    },
}

/// What the supervisor knows about its runner, as of now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupervisorStatus {
    /// Where the runner listens (or will listen again once restarted).
    pub addr: SocketAddr,
    /// True while a child is running and was seen accepting connections.
    pub up: bool,
    /// How many times a child exited without being asked to.
    pub exits: u64,
    /// How many times a new child came up after the first one.
    pub restarts: u64,
    /// The running child's process id, if one runs.
    pub pid: Option<u32>,
}

/// Runs the step runner as a child process and keeps it running. See the module
/// documentation for the life of the child.
#[derive(Debug)]
pub struct RunnerSupervisor {
    status: watch::Receiver<SupervisorStatus>,
    addr: watch::Receiver<RunnerAddr>,
    /// Dropping it (or sending `true`) stops the monitor, which kills the child.
    stop: watch::Sender<bool>,
    monitor: JoinHandle<()>,
}

impl RunnerSupervisor {
    /// Starts the runner and returns once it accepts connections.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Config`] for inconsistent timings;
    /// [`SupervisorError::Start`] when the first child cannot be started, exits
    /// or does not listen within [`SupervisorConfig::start_timeout`] (the error
    /// quotes its last output). There is no retry at this point: a runner that
    /// cannot start once is a setup problem to report.
    pub async fn start(config: SupervisorConfig) -> Result<Self, SupervisorError> {
        if config.start_timeout.is_zero() {
            return Err(SupervisorError::Config(
                "start_timeout must be longer than zero".into(),
            ));
        }
        if config.restart_backoff_min > config.restart_backoff_max {
            return Err(SupervisorError::Config(format!(
                "restart_backoff_min ({:?}) is longer than restart_backoff_max ({:?})",
                config.restart_backoff_min, config.restart_backoff_max
            )));
        }
        let span = info_span!("runner", id = %config.name);
        let want = loopback(config.port.unwrap_or(0));
        let ready = start_child(&config.program, &config.args, want, config.start_timeout)
            .instrument(span.clone())
            .await
            .map_err(|failure| SupervisorError::Start {
                program: config.program.clone(),
                reason: failure.to_string(),
            })?;
        span.in_scope(|| info!(addr = %ready.addr, pid = ready.child.id(), "step runner is up"));

        let (status_tx, status) = watch::channel(SupervisorStatus {
            addr: ready.addr,
            up: true,
            exits: 0,
            restarts: 0,
            pid: ready.child.id(),
        });
        let (addr_tx, addr) = watch::channel(RunnerAddr::from_socket_addr(ready.addr));
        let (stop, stop_rx) = watch::channel(false);
        let monitor = tokio::spawn(
            Monitor {
                config,
                status: status_tx,
                addr: addr_tx,
                stop: stop_rx,
            }
            .run(ready)
            .instrument(span),
        );
        Ok(Self {
            status,
            addr,
            stop,
            monitor,
        })
    }

    /// Where the runner listens now (see [`runner_addr`](Self::runner_addr) to
    /// follow changes).
    pub fn addr(&self) -> SocketAddr {
        self.status.borrow().addr
    }

    /// The runner's address, updated if the runner ever moves to another port.
    pub fn runner_addr(&self) -> watch::Receiver<RunnerAddr> {
        self.addr.clone()
    }

    /// An [`HttpStepRunner`] that always talks to this supervisor's runner.
    ///
    /// # Errors
    ///
    /// As [`HttpStepRunner::new`].
    pub fn step_runner(
        &self,
        repo_path: String,
        config: HttpRunnerConfig,
    ) -> Result<HttpStepRunner, HttpRunnerError> {
        HttpStepRunner::following(self.runner_addr(), repo_path, config)
    }

    /// How many times a new child came up after the first.
    pub fn restarts(&self) -> u64 {
        self.status.borrow().restarts
    }

    /// Whether a child is running and accepting connections.
    pub fn is_up(&self) -> bool {
        self.status.borrow().up
    }

    /// A snapshot of the supervisor's state.
    pub fn status(&self) -> SupervisorStatus {
        self.status.borrow().clone()
    }

    /// A channel that sees every change of the state (for metrics, health checks,
    /// or to wait until the runner is up again).
    pub fn subscribe(&self) -> watch::Receiver<SupervisorStatus> {
        self.status.clone()
    }

    /// Kills the child, waits for it to exit and stops supervising.
    pub async fn shutdown(self) {
        // The monitor may have ended already (panicked); nothing to stop then.
        let _ = self.stop.send(true);
        if let Err(e) = self.monitor.await {
            error!(error = %e, "the runner supervisor task failed");
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The task that watches the child and restarts it.
struct Monitor {
    config: SupervisorConfig,
    status: watch::Sender<SupervisorStatus>,
    addr: watch::Sender<RunnerAddr>,
    stop: watch::Receiver<bool>,
}

impl Monitor {
    async fn run(mut self, first: ReadyChild) {
        let mut ready = first;
        loop {
            let pid = ready.child.id();
            let exit = tokio::select! {
                status = ready.child.wait() => status,
                () = stopped(&mut self.stop) => {
                    info!(pid, "stopping the step runner");
                    if let Err(e) = ready.child.kill().await {
                        warn!(pid, error = %e, "cannot kill the step runner");
                    }
                    self.status.send_modify(|s| { s.up = false; s.pid = None; });
                    return;
                }
            };
            match exit {
                Ok(status) => warn!(pid, %status, "step runner exited; restarting it"),
                Err(e) => warn!(pid, error = %e, "lost track of the step runner; restarting it"),
            }
            self.status.send_modify(|s| {
                s.up = false;
                s.pid = None;
                s.exits += 1;
            });
            let port = ready.addr.port();
            drop(ready);
            match self.restart(port).await {
                Some(next) => ready = next,
                None => return,
            }
        }
    }

    /// Starts children until one is up (`Some`) or the supervisor stops (`None`).
    async fn restart(&mut self, mut port: u16) -> Option<ReadyChild> {
        let mut backoff = Duration::ZERO;
        let mut failures = 0;
        loop {
            if !backoff.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut self.stop) => return None,
                }
            }
            let attempt = start_child(
                &self.config.program,
                &self.config.args,
                loopback(port),
                self.config.start_timeout,
            );
            let result = tokio::select! {
                result = attempt => result,
                // Dropping `attempt` kills a child that is still starting.
                () = stopped(&mut self.stop) => return None,
            };
            match result {
                Ok(ready) => {
                    let moved = ready.addr != self.status.borrow().addr;
                    if moved {
                        warn!(addr = %ready.addr, "the step runner moved to a new address");
                        self.addr
                            .send_replace(RunnerAddr::from_socket_addr(ready.addr));
                    }
                    info!(addr = %ready.addr, pid = ready.child.id(), "step runner is up again");
                    self.status.send_modify(|s| {
                        s.addr = ready.addr;
                        s.up = true;
                        s.restarts += 1;
                        s.pid = ready.child.id();
                    });
                    return Some(ready);
                }
                Err(failure) => {
                    failures += 1;
                    backoff = ci_engine::doubling_backoff(
                        self.config.restart_backoff_min,
                        failures,
                        self.config.restart_backoff_max,
                    );
                    let taken = port != 0 && port_taken(port);
                    if taken && self.config.port.is_none() {
                        warn!(
                            port,
                            "port {port} is taken by another process; moving the step runner to a new port"
                        );
                        port = 0;
                        failures = 0;
                        backoff = Duration::ZERO;
                    } else if taken {
                        error!(
                            port,
                            retry_in = ?backoff,
                            "the configured port {port} is taken by another process; cannot restart the step runner there"
                        );
                    } else {
                        if let StartFailure::Spawn(_) = failure {
                            error!(program = %self.config.program.display(), retry_in = ?backoff, "{failure}");
                        } else {
                            warn!(retry_in = ?backoff, "step runner failed to restart: {failure}");
                        }
                    }
                }
            }
        }
    }
}

/// Resolves when the supervisor is asked to stop or is dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// True when binding `127.0.0.1:port` fails because someone else holds it.
fn port_taken(port: u16) -> bool {
    matches!(
        std::net::TcpListener::bind(loopback(port)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}
