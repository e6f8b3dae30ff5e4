//! The server wired together: store, git source, a pool of step runners
//! (external ones, or bundled simulators each under a supervisor), engine and
//! HTTP API, started from a [`ServerConfig`] and stopped by a shutdown future.
//!
//! Starting is split in two so that a caller can tell *cannot start* (exit code 2)
//! from *failed while running* (exit code 1): [`Server::start`] opens everything
//! and returns a [`StartupError`] for anything the user must fix; [`Server::serve`]
//! then runs the engine and the API on a listener the caller bound, until
//! `shutdown` completes. [`run`] does both, mini-redis style, for tests and
//! embedders.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ci_engine::{
    ConfigError, Engine, EngineConfig, EngineError, EngineHandle, MemoryStore, Pipeline, PoolError,
    RunStore, RunnerPool, StoreError,
};
use poem::listener::TcpAcceptor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::health::Role;
use crate::api::runners::RunnerInfo;
use crate::api::token::{ApiToken, TOKEN_ENV, TokenSource};
use crate::git::{GitSource, GitSourceConfig, GitSourceError};
use crate::http_runner::{HttpRunnerConfig, HttpRunnerError};
use crate::lease::{FileLease, Lease, LeaseConfig, LeaseError, Lost, PgLease, Seen};
use crate::pg_store::{DatabaseUrl, DatabaseUrlError, PgStore, PgStoreError, url_scheme};
use crate::read_only_store::ReadOnlyStore;
use crate::supervisor::{RunnerSupervisor, SupervisorError};
use crate::timed_store::{StoreMetrics, TimedStore};

mod runners;
mod switch;

pub use runners::{ExternalRunner, RunnerChoice, bundled_id};
use switch::AppSwitch;

/// What the binary's startup line starts with; the bound address follows, then a
/// space. See [`parse_listening_line`].
pub const LISTENING_PREFIX: &str = "ci-server listening on ";

/// Reads the bound address from the binary's startup line (for tests and scripts
/// that start the server on port 0).
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix(LISTENING_PREFIX)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The `--db` value (and [`Server::db`] answer) of the in-memory store.
pub const MEMORY_DB: &str = ":memory:";

/// How long open HTTP connections get to finish at shutdown.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where runs are kept.
///
/// `Debug` never shows a database password (see [`DatabaseUrl`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// In memory: lost when the server stops.
    Memory,
    /// A SQLite file at this path (created if missing).
    Sqlite(PathBuf),
    /// A SQLite file at `<git-dir>/ci-server/runs.db` of the watched repository.
    DefaultSqlite,
    /// A PostgreSQL database ([`PgStore`]), which
    /// must exist; its tables are created or migrated at start.
    Postgres(DatabaseUrl),
}

impl StoreChoice {
    /// The store a `--db` value names: [`MEMORY_DB`]
    /// is [`Memory`](Self::Memory); a `postgres://` or `postgresql://` URL
    /// (scheme in any case) is [`Postgres`](Self::Postgres); anything else
    /// is a SQLite file path. A value that starts like a URL of another
    /// scheme (`mysql://…`) is refused rather than taken as a path.
    ///
    /// # Errors
    /// A [`DatabaseUrlError`] for a URL that cannot be used: another scheme,
    /// a malformed URL, no host. Its message masks the password.
    pub fn parse(db: &str) -> Result<Self, DatabaseUrlError> {
        if db == MEMORY_DB {
            Ok(Self::Memory)
        } else if url_scheme(db).is_some() {
            Ok(Self::Postgres(DatabaseUrl::parse(db)?))
        } else {
            Ok(Self::Sqlite(PathBuf::from(db)))
        }
    }
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The repository to watch.
    pub repo_path: PathBuf,
    /// The step runners: the engine's pool.
    pub runner: RunnerChoice,
    /// The steps every commit goes through. Default: [`Pipeline::standard`]
    /// (lint, build, test).
    pub pipeline: Pipeline,
    /// The store.
    pub store: StoreChoice,
    /// The scheduler's settings; checked by [`Server::start`] with
    /// [`EngineConfig::validate`]. Its limits of steps in flight apply to each
    /// runner of the pool.
    pub engine: EngineConfig,
    /// The git source's settings.
    pub source: GitSourceConfig,
    /// The HTTP client's settings for every runner. Derive them from `engine`
    /// with [`HttpRunnerConfig::for_engine`] after changing the engine's step
    /// timeout (the command line does).
    pub http_runner: HttpRunnerConfig,
    /// The token clients send to retry and cancel runs
    /// (`Authorization: Bearer TOKEN`). `None` (the default): retry and
    /// cancel answer 403.
    pub api_token: Option<ApiToken>,
}

impl ServerConfig {
    /// A configuration with default settings, the standard pipeline and an
    /// in-memory store, for `repo_path` and `runner`; the HTTP settings are
    /// derived from the engine's.
    pub fn new(repo_path: PathBuf, runner: RunnerChoice) -> Self {
        let engine = EngineConfig::default();
        Self {
            repo_path,
            runner,
            pipeline: Pipeline::standard(),
            store: StoreChoice::Memory,
            http_runner: HttpRunnerConfig::for_engine(&engine),
            engine,
            source: GitSourceConfig::default(),
            api_token: None,
        }
    }
}

/// Why the server could not start: something the user must fix. Each message is
/// one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The engine's settings are not usable (a zero timeout, a zero limit, …).
    #[error(transparent)]
    Engine(#[from] ConfigError),
    /// The repository path is missing or not a git repository.
    #[error(transparent)]
    Repository(#[from] GitSourceError),
    /// The database could not be opened or created.
    #[error("cannot open the database {path}: {reason}")]
    Store {
        /// The database path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The PostgreSQL database could not be reached or used (refused
    /// connection, failed authentication, a database of another program or
    /// of a newer ci-server). The message names the database by its URL,
    /// password masked.
    #[error(transparent)]
    Postgres(#[from] PgStoreError),
    /// The runners do not make a pool (none at all, or two with one id: one
    /// address given twice).
    #[error("invalid runners: {0}")]
    Pool(#[from] PoolError),
    /// The HTTP client for a runner could not be built.
    #[error(transparent)]
    Runner(#[from] HttpRunnerError),
    /// A bundled simulator could not be started.
    #[error("{id}: {source}")]
    Simulator {
        /// The simulator's id (`sim-N`).
        id: String,
        /// Why it did not start.
        #[source]
        source: SupervisorError,
    },
}

/// Why the server stopped other than by its shutdown signal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// It could not start.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The engine stopped (its store failed).
    #[error("the engine stopped: {0}")]
    Engine(#[from] EngineError),
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// A task of the server panicked or was aborted.
    #[error("a server task failed: {0}")]
    Task(String),
    /// This server must not take the lease (a newer ci-server migrated the
    /// database), or its lock file cannot be locked.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The git source could not be opened again when this server took over.
    #[error("cannot take over: {0}")]
    Source(#[source] GitSourceError),
}

/// A server that has opened its repository, store and runners, ready to serve.
pub struct Server {
    store: Arc<dyn RunStore>,
    /// The PostgreSQL store behind `store`, whose writes the lease fences.
    pg: Option<Arc<PgStore>>,
    lease: Lease,
    lease_config: LeaseConfig,
    /// The source for the first term, opened at start (which checks the
    /// repository); later terms open it again, from the store as it is then.
    source: Option<GitSource>,
    /// The engine for the first term, built at start; later terms build
    /// their own on the same pool.
    engine: Option<Engine>,
    source_config: GitSourceConfig,
    pipeline: Pipeline,
    pool: RunnerPool,
    engine_config: EngineConfig,
    runners: Vec<runners::RunnerEntry>,
    supervisors: Vec<RunnerSupervisor>,
    steps: Vec<String>,
    repo_path: PathBuf,
    db: String,
    /// For `/healthz`: how long no runner may be up before the server is unhealthy.
    unreachable_limit: Duration,
    /// For `/metrics`: the times of the store's operations.
    store_metrics: StoreMetrics,
    /// For retry and cancel.
    api_token: Option<ApiToken>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("repo_path", &self.repo_path)
            .field("runners", &self.runners())
            .field("steps", &self.steps)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// How one term as the active server ended.
enum TermEnd {
    /// The shutdown signal came.
    Shutdown,
    /// The lease was lost (taken over, or not renewed in time).
    Lost(Lost),
    /// The engine task ended.
    Engine(Result<Result<(), EngineError>, tokio::task::JoinError>),
    /// The HTTP server task ended.
    Http(Result<std::io::Result<()>, tokio::task::JoinError>),
}

impl Server {
    /// Checks the engine's settings, then opens the repository, the store and
    /// the runners (starting the bundled simulators when asked to). Logs the
    /// pipeline's steps and each runner.
    ///
    /// With a SQLite file another server is active on, the first line logged
    /// says that this one is a standby (see [`serve`](Self::serve)).
    ///
    /// # Errors
    /// A [`StartupError`] when the engine's settings are not usable (checked
    /// first, before anything is opened or started), the path is missing or not
    /// a repository, the database cannot be opened, or the runners cannot be
    /// set up (none, one address twice, a simulator that does not start).
    pub async fn start(config: ServerConfig) -> Result<Self, StartupError> {
        config.engine.validate()?;
        config.runner.validate()?;
        let repo_path = tokio::fs::canonicalize(&config.repo_path)
            .await
            .map_err(|source| GitSourceError::Missing {
                path: config.repo_path.clone(),
                source,
            })?;
        let opened = open_store(&config.store, &repo_path).await?;
        let store_metrics = StoreMetrics::new();
        let store: Arc<dyn RunStore> =
            Arc::new(TimedStore::new(opened.store, store_metrics.clone()));
        let source = GitSource::open(&repo_path, Arc::clone(&store), config.source.clone()).await?;
        // A runner is told where the repository is on its machine; unless it
        // names a path of its own, that is this path (right for the bundled
        // simulators and a runner on this machine).
        let repo_for_runners = repo_path.to_string_lossy().into_owned();
        let steps: Vec<String> = config
            .pipeline
            .steps()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        info!(steps = %steps.join(", "), "pipeline");
        let started =
            runners::start_runners(config.runner, &repo_for_runners, &config.http_runner).await?;
        let unreachable_limit = config.engine.unreachable_limit;
        // The engine of the first term (which checks that the pool and the
        // pipeline make one); each later term builds its own.
        let engine = Engine::with_pool(
            config.pipeline.clone(),
            started.pool.clone(),
            Arc::clone(&store),
            config.engine.clone(),
        )?;
        log_api_token(config.api_token.as_ref());
        Ok(Self {
            store,
            pg: opened.pg,
            lease: opened.lease,
            lease_config: LeaseConfig::default(),
            source: Some(source),
            engine: Some(engine),
            source_config: config.source,
            pipeline: config.pipeline,
            pool: started.pool,
            engine_config: config.engine,
            runners: started.entries,
            supervisors: started.supervisors,
            steps,
            repo_path,
            db: opened.db,
            unreachable_limit,
            store_metrics,
            api_token: config.api_token,
        })
    }

    /// Sets the lease's timing (default [`LeaseConfig::default`]); for tests
    /// and embedders that want faster or slower takeovers.
    #[must_use]
    pub fn with_lease_config(mut self, config: LeaseConfig) -> Self {
        self.lease_config = config;
        if let Lease::Postgres(lease) = &mut self.lease {
            lease.set_config(config);
        }
        self
    }

    /// The store the server records runs in.
    pub fn store(&self) -> Arc<dyn RunStore> {
        Arc::clone(&self.store)
    }

    /// Every runner of the pool, in pool order, as it is now: id, address (a
    /// bundled simulator's where it listens now), repository path, whether it
    /// is bundled, and its restarts. `GET /runners` reports the same.
    pub fn runners(&self) -> Vec<RunnerInfo> {
        self.runners
            .iter()
            .map(runners::RunnerEntry::info)
            .collect()
    }

    /// Whether the runners are bundled simulators started by this server
    /// (a pool is either all bundled or all external).
    pub fn runners_are_bundled(&self) -> bool {
        !self.supervisors.is_empty()
    }

    /// The names of the pipeline's steps, in the order they are listed in runs.
    pub fn steps(&self) -> &[String] {
        &self.steps
    }

    /// The watched repository, as an absolute path.
    pub fn repo_path(&self) -> &Path {
        &self.repo_path
    }

    /// Where runs are stored: a file path, `:memory:`, or a PostgreSQL URL
    /// with its password masked.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// The HTTP application of one role: with `engine`, the active server's;
    /// without, a standby's, which reads the store (never writes it) and
    /// points at the active server (`active`) for what only that one knows.
    /// Its event streams end once `stop` holds `true`.
    fn app(
        &self,
        engine: Option<EngineHandle>,
        active: watch::Receiver<Option<String>>,
        stop: watch::Receiver<bool>,
    ) -> impl poem::Endpoint + 'static {
        let standby = engine.is_none();
        let store: Arc<dyn RunStore> = if standby {
            Arc::new(ReadOnlyStore::new(Arc::clone(&self.store)))
        } else {
            Arc::clone(&self.store)
        };
        let mut api = crate::api::Api::new(store, engine)
            .with_runners(runners::directory(self.runners.clone()))
            .with_unreachable_limit(self.unreachable_limit)
            .with_branch_tips(branch_tips(&self.repo_path))
            .with_store_metrics(&self.store_metrics)
            .with_api_token(self.api_token.clone())
            .with_active_server(active)
            .ending_streams_on(stop);
        if standby {
            api = api.with_role(Role::Standby);
        }
        crate::api::app(api)
    }

    /// Runs the server on `listener` until `shutdown` completes (or the
    /// engine or the HTTP server fails).
    ///
    /// The API is served at once. The server is a standby until it holds the
    /// store's lease ([`Lease`]; at once when no other server is active): it
    /// serves runs, logs and pages from the store and `/healthz` says
    /// `standby`. Holding the lease, it is the active server: it opens the
    /// git source from the store, builds the engine (which resumes as after a
    /// restart: attempts in flight become `interrupted`) and serves the
    /// active API. When it loses the lease (another server took it, or it
    /// could not renew it in time), it drops the engine at once, steps down
    /// and waits to take over again.
    ///
    /// At shutdown the engine stops taking work and lets steps in flight
    /// finish within its grace period, the lease is given up (a standby
    /// takes over at once), the HTTP server stops accepting connections and
    /// the bundled simulators are stopped.
    ///
    /// # Errors
    /// [`ServerError::Engine`] when the engine stops because its store failed,
    /// [`ServerError::Http`] when the listener fails, [`ServerError::Lease`]
    /// when this server must not take over (a newer ci-server migrated the
    /// database), [`ServerError::Source`] when the git source cannot be
    /// opened again at a takeover.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let holder = holder_description(listener.local_addr().ok());
        if let Lease::File(lease) = &mut self.lease {
            lease.describe(&holder);
        }
        let seen = Seen::default();
        // One try before the API answers, so that `/healthz` tells the role
        // (and a standby the active server) from the first request on.
        let mut first_try = Some(self.lease.try_take(&holder, &seen).await);
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let (standby_stop_tx, standby_stop_rx) = watch::channel(false);
        let switch = AppSwitch::new(self.app(None, seen.active(), standby_stop_rx.clone()));
        let trimmer = tokio::spawn(crate::memory::give_back_freed_memory(Arc::clone(
            &self.store,
        )));
        let acceptor = TcpAcceptor::from_tokio(listener).map_err(ServerError::Http)?;
        let http = poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            switch.clone(),
            stopped(http_stop_rx),
            Some(HTTP_SHUTDOWN_GRACE),
        );
        let mut http_task = tokio::spawn(http);
        let mut shutdown = std::pin::pin!(shutdown);

        let mut http_done = false;
        let mut outcome: Result<(), ServerError> = Ok(());
        loop {
            let term = match first_try.take() {
                Some(Ok(Some(term))) => {
                    if !matches!(self.lease, Lease::Sole) {
                        info!(term, db = %self.db, "active: this server holds the lease");
                    }
                    term
                }
                Some(Err(e)) => {
                    error!(error = %e, "shutting down");
                    outcome = Err(ServerError::Lease(e));
                    break;
                }
                waiting => {
                    // A SQLite standby said so when it opened the file.
                    if waiting.is_some() && !matches!(self.lease, Lease::File(_)) {
                        let active = seen.active().borrow().clone();
                        info!(
                            active = active.as_deref().unwrap_or("another ci-server"),
                            db = %self.db,
                            "standby: another server is active on this database; serving reads and waiting to take over"
                        );
                    }
                    // A standby until the lease is ours.
                    let poll = self.lease_config.poll;
                    let taken = tokio::select! {
                        () = &mut shutdown => {
                            info!("shutting down");
                            break;
                        }
                        joined = &mut http_task => {
                            http_done = true;
                            outcome = ended_by_itself("the HTTP server", joined, ServerError::Http);
                            break;
                        }
                        taken = self.lease.acquire(&holder, &seen, poll) => taken,
                    };
                    match taken {
                        Ok(term) => {
                            info!(term, db = %self.db, "active: took the lease over");
                            // The source opened at start knows the store as
                            // it was then; the one taking over reads it now.
                            self.source = None;
                            term
                        }
                        Err(e) => {
                            error!(error = %e, "shutting down");
                            outcome = Err(ServerError::Lease(e));
                            break;
                        }
                    }
                }
            };
            seen.me(&holder);
            if let Some(pg) = &self.pg {
                pg.fence(Some(term));
            }
            let source = match self.source.take() {
                Some(source) => source,
                None => match GitSource::open(
                    &self.repo_path,
                    Arc::clone(&self.store),
                    self.source_config.clone(),
                )
                .await
                {
                    Ok(source) => source,
                    Err(e) => {
                        error!(error = %e, "cannot open the repository to take over; shutting down");
                        self.step_down(term).await;
                        outcome = Err(ServerError::Source(e));
                        break;
                    }
                },
            };
            let engine = match self.engine.take() {
                Some(engine) => engine,
                None => match Engine::with_pool(
                    self.pipeline.clone(),
                    self.pool.clone(),
                    Arc::clone(&self.store),
                    self.engine_config.clone(),
                ) {
                    Ok(engine) => engine,
                    // The same parts made the first term's engine.
                    Err(e) => {
                        self.step_down(term).await;
                        outcome = Err(ServerError::Task(e.to_string()));
                        break;
                    }
                },
            };
            let (term_stop_tx, term_stop_rx) = watch::channel(false);
            switch.set(self.app(Some(engine.handle()), seen.active(), term_stop_rx.clone()));
            let mut engine_task = tokio::spawn(engine.run(Box::new(source), stopped(term_stop_rx)));
            let ended = tokio::select! {
                () = &mut shutdown => TermEnd::Shutdown,
                lost = self.lease.keep(term) => TermEnd::Lost(lost),
                joined = &mut engine_task => TermEnd::Engine(joined),
                joined = &mut http_task => TermEnd::Http(joined),
            };
            match ended {
                TermEnd::Lost(_)
                | TermEnd::Engine(Ok(Err(EngineError::Store(StoreError::Fenced(_))))) => {
                    // Refuse every write from now on, then drop the engine
                    // at once (when it has not stopped by itself): whatever
                    // it would still write may no longer be ours to write.
                    // Steps in flight end as after a crash (the next active
                    // server interrupts them).
                    if let Some(pg) = &self.pg {
                        pg.fence(None);
                    }
                    let why = match ended {
                        TermEnd::Lost(lost) => {
                            engine_task.abort();
                            let _ = engine_task.await;
                            format!("lost the lease ({lost:?})")
                        }
                        TermEnd::Engine(Ok(Err(e))) => format!("another server took over: {e}"),
                        _ => String::new(),
                    };
                    let _ = term_stop_tx.send(true);
                    switch.set(self.app(None, seen.active(), standby_stop_rx.clone()));
                    self.step_down(term).await;
                    warn!(term, %why, "stepped down to standby");
                }
                TermEnd::Engine(joined) => {
                    outcome = ended_by_itself("the engine", joined, ServerError::Engine);
                    let _ = term_stop_tx.send(true);
                    self.lease.release(term).await;
                    break;
                }
                TermEnd::Shutdown | TermEnd::Http(_) => {
                    if let TermEnd::Http(joined) = ended {
                        http_done = true;
                        outcome = ended_by_itself("the HTTP server", joined, ServerError::Http);
                    } else {
                        info!("shutting down");
                    }
                    // Steps in flight finish within the engine's grace period.
                    let _ = term_stop_tx.send(true);
                    match engine_task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            error!(error = %e, "the engine failed while stopping");
                            outcome = outcome.and(Err(ServerError::Engine(e)));
                        }
                        Err(e) => outcome = outcome.and(Err(ServerError::Task(e.to_string()))),
                    }
                    self.lease.release(term).await;
                    break;
                }
            }
        }
        // Tell the HTTP server and the streams to stop (the receivers may be
        // gone: nothing to do).
        let _ = http_stop_tx.send(true);
        let _ = standby_stop_tx.send(true);
        if !http_done {
            match http_task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => outcome = outcome.and(Err(ServerError::Http(e))),
                Err(e) => outcome = outcome.and(Err(ServerError::Task(e.to_string()))),
            }
        }
        trimmer.abort();
        futures::future::join_all(self.supervisors.into_iter().map(RunnerSupervisor::shutdown))
            .await;
        info!("stopped");
        outcome
    }

    /// Leaves the active role of `term`: no more writes, the lease given up
    /// (when it is still ours).
    async fn step_down(&mut self, term: u64) {
        if let Some(pg) = &self.pg {
            pg.fence(None);
        }
        self.lease.release(term).await;
    }
}

/// What a standby and people are told about the server holding the lease:
/// where it serves, its host and its process id.
fn holder_description(addr: Option<SocketAddr>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".to_owned());
    let pid = std::process::id();
    match addr {
        Some(addr) => format!("{} (pid {pid} on {host})", public_url(addr)),
        None => format!("pid {pid} on {host}"),
    }
}

/// The server's outcome when its task `what` ended by itself (`wrap` turns
/// the task's error into the server's), logged.
fn ended_by_itself<E: std::fmt::Display>(
    what: &str,
    joined: Result<Result<(), E>, tokio::task::JoinError>,
    wrap: fn(E) -> ServerError,
) -> Result<(), ServerError> {
    match joined {
        Ok(Ok(())) => {
            warn!("{what} stopped by itself; shutting down");
            Ok(())
        }
        Ok(Err(e)) => {
            error!(error = %e, "{what} failed; shutting down");
            Err(wrap(e))
        }
        Err(e) => Err(ServerError::Task(e.to_string())),
    }
}

/// Says at start whether retry and cancel are enabled and where the token
/// comes from (never the token), and warns when it is on the command line.
fn log_api_token(token: Option<&ApiToken>) {
    match token {
        None => info!(
            "retry and cancel are disabled (they answer 403): no API token; set {TOKEN_ENV} or use --api-token-file PATH"
        ),
        Some(token) => {
            if token.source() == &TokenSource::Flag {
                warn!(
                    "--api-token puts the API token on the command line, where other users of this machine can read it (ps, /proc); prefer --api-token-file PATH or {TOKEN_ENV}"
                );
            }
            info!(source = %token.source(), "retry and cancel are enabled for clients with the API token");
        }
    }
}

/// Starts a server from `config` and serves on `listener` until `shutdown`.
///
/// # Errors
/// [`ServerError::Startup`] when it cannot start; otherwise as [`Server::serve`].
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let server = Server::start(config).await?;
    server.serve(listener, shutdown).await
}

/// The address a bound listener serves on, for the startup line: the URL a
/// person on this machine can open (`0.0.0.0` becomes `localhost`).
pub fn public_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The default database path of a repository: `<git-dir>/ci-server/runs.db`.
async fn default_db_path(repo_path: &Path) -> Result<PathBuf, StartupError> {
    let path = repo_path.to_owned();
    let common_dir = tokio::task::spawn_blocking(move || {
        gix::open(&path).map(|repo| repo.common_dir().to_owned())
    })
    .await
    .map_err(|e| StartupError::Store {
        path: repo_path.to_owned(),
        reason: e.to_string(),
    })?
    .map_err(|e| GitSourceError::NotARepository {
        path: repo_path.to_owned(),
        source: e.into(),
    })?;
    Ok(common_dir.join("ci-server").join("runs.db"))
}

/// The store a server opened, and the lease that goes with it.
struct Opened {
    store: Arc<dyn RunStore>,
    pg: Option<Arc<PgStore>>,
    lease: Lease,
    db: String,
}

async fn open_store(choice: &StoreChoice, repo_path: &Path) -> Result<Opened, StartupError> {
    let path = match choice {
        StoreChoice::Memory => {
            return Ok(Opened {
                store: Arc::new(MemoryStore::new()),
                pg: None,
                lease: Lease::Sole,
                db: MEMORY_DB.to_owned(),
            });
        }
        StoreChoice::Sqlite(path) => path.clone(),
        StoreChoice::DefaultSqlite => default_db_path(repo_path).await?,
        StoreChoice::Postgres(url) => {
            let store = Arc::new(PgStore::open(url).await?);
            // Nothing is written before the lease is held.
            store.fence(None);
            return Ok(Opened {
                store: Arc::clone(&store) as Arc<dyn RunStore>,
                pg: Some(store),
                lease: Lease::Postgres(Box::new(PgLease::new(url.clone(), LeaseConfig::default()))),
                db: url.redacted(),
            });
        }
    };
    let store_error = |reason: String| StartupError::Store {
        path: path.clone(),
        reason,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| store_error(format!("cannot create {}: {e}", parent.display())))?;
    }
    let mut lease = FileLease::open(&path).map_err(|e| store_error(e.to_string()))?;
    // The first thing a standby says is that it is one.
    let holder = holder_description(None);
    if !lease
        .try_take(&holder)
        .map_err(|e| store_error(e.to_string()))?
    {
        let active = lease.holder();
        info!(
            active = if active.is_empty() { "another ci-server" } else { active.as_str() },
            lock = %lease.path().display(),
            "standby: another server is active on this database; serving reads and waiting to take over"
        );
    }
    let store = crate::sqlite_store::SqliteStore::open(&path)
        .await
        .map_err(|e| store_error(e.to_string()))?;
    Ok(Opened {
        store: Arc::new(store),
        pg: None,
        lease: Lease::File(lease),
        db: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_engine_configuration_is_refused_before_anything_starts() {
        let mut config = ServerConfig::new(
            PathBuf::from("/nowhere/at/all"),
            RunnerChoice::external(":1".parse().expect("valid")),
        );
        config.engine.abandon_limit = Duration::ZERO;
        let error = Server::start(config).await.expect_err("refused");
        assert!(matches!(error, StartupError::Engine(_)), "{error}");
        let line = error.to_string();
        assert!(
            line.contains("abandon_limit must be longer than zero"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[tokio::test]
    async fn runners_at_one_address_are_refused_before_anything_starts() {
        let addr: crate::http_runner::RunnerAddr = ":8080".parse().expect("valid");
        let mut second = ExternalRunner::new(addr.clone());
        second.repo_path = Some("/elsewhere".into());
        let config = ServerConfig::new(
            PathBuf::from("/nowhere/at/all"),
            RunnerChoice::External(vec![ExternalRunner::new(addr), second]),
        );
        let error = Server::start(config).await.expect_err("refused");
        assert!(
            matches!(error, StartupError::Pool(PoolError::DuplicateId(_))),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "invalid runners: runner id \"http://127.0.0.1:8080\" is used twice"
        );
        let none = ServerConfig::new(PathBuf::from("/nowhere"), RunnerChoice::External(vec![]));
        let error = Server::start(none).await.expect_err("refused");
        assert!(
            matches!(error, StartupError::Pool(PoolError::Empty)),
            "{error}"
        );
    }

    #[test]
    fn the_default_http_settings_follow_the_engine() {
        let config = ServerConfig::new(
            PathBuf::from("/repo"),
            RunnerChoice::external(":1".parse().expect("valid")),
        );
        assert_eq!(
            config.http_runner,
            HttpRunnerConfig::for_engine(&config.engine)
        );
    }
}

/// Resolves `refs/heads/<branch>` in the watched repository for
/// `GET /badge.svg`; a repository that cannot be opened (it vanished) or a
/// branch that does not exist gives `None`, and the badge falls back to the
/// branch's newest run.
fn branch_tips(repo_path: &Path) -> crate::api::badge::TipResolver {
    let repo = gix::ThreadSafeRepository::open(repo_path)
        .map_err(|e| warn!(error = %e, "the badge cannot read branch tips"))
        .ok();
    Arc::new(move |branch: &str| {
        let repo = repo.as_ref()?.to_thread_local();
        let mut reference = repo.find_reference(&format!("refs/heads/{branch}")).ok()?;
        reference.peel_to_id().ok().map(|id| id.to_string())
    })
}

#[cfg(test)]
mod branch_tip_tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn branch_tips_reads_the_current_tip_of_a_branch() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "one"]);
        let tips = branch_tips(dir.path());
        let first = git(dir.path(), &["rev-parse", "HEAD"]);
        assert_eq!(tips("main"), Some(first));
        git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "two"]);
        let second = git(dir.path(), &["rev-parse", "HEAD"]);
        assert_eq!(tips("main"), Some(second), "a new commit is seen at once");
        assert_eq!(tips("nope"), None);
        assert_eq!(tips("../../etc"), None);
        let missing = branch_tips(&dir.path().join("not-a-repo"));
        assert_eq!(missing("main"), None);
    }
}
