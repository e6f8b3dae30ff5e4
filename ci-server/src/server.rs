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
    ConfigError, Engine, EngineConfig, EngineError, MemoryStore, Pipeline, PoolError, RunStore,
};
use poem::listener::TcpAcceptor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::runners::RunnerInfo;
use crate::api::token::{ApiToken, TOKEN_ENV, TokenSource};
use crate::git::{GitSource, GitSourceConfig, GitSourceError};
use crate::http_runner::{HttpRunnerConfig, HttpRunnerError};
use crate::pg_store::{DatabaseUrl, DatabaseUrlError, PgStore, PgStoreError, url_scheme};
use crate::supervisor::{RunnerSupervisor, SupervisorError};
use crate::timed_store::{StoreMetrics, TimedStore};

mod runners;

pub use runners::{ExternalRunner, RunnerChoice, bundled_id};

/// What the binary's startup line starts with; the bound address follows, then a
/// space. See [`parse_listening_line`].
pub const LISTENING_PREFIX: &str = "ci-server listening on ";

/// Reads the bound address from the binary's startup line (for tests and scripts
/// that start the server on port 0).
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix(LISTENING_PREFIX)?;
    rest.split_whitespace().next()?.parse().ok()
}

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
    /// A PostgreSQL database ([`PgStore`](crate::pg_store::PgStore)), which
    /// must exist; its tables are created or migrated at start.
    Postgres(DatabaseUrl),
}

impl StoreChoice {
    /// The store a `--db` value names: [`MEMORY_DB`](crate::cli::MEMORY_DB)
    /// is [`Memory`](Self::Memory); a `postgres://` or `postgresql://` URL
    /// (scheme in any case) is [`Postgres`](Self::Postgres); anything else
    /// is a SQLite file path. A value that starts like a URL of another
    /// scheme (`mysql://…`) is refused rather than taken as a path.
    ///
    /// # Errors
    /// A [`DatabaseUrlError`] for a URL that cannot be used: another scheme,
    /// a malformed URL, no host. Its message masks the password.
    pub fn parse(db: &str) -> Result<Self, DatabaseUrlError> {
        if db == crate::cli::MEMORY_DB {
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
}

/// A server that has opened its repository, store and runners, ready to serve.
pub struct Server {
    store: Arc<dyn RunStore>,
    source: GitSource,
    engine: Engine,
    runners: Vec<runners::RunnerEntry>,
    supervisors: Vec<RunnerSupervisor>,
    steps: Vec<String>,
    repo_path: PathBuf,
    db: String,
    /// The lock file beside a SQLite database, held while the server lives.
    _db_lock: Option<std::fs::File>,
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

impl Server {
    /// Checks the engine's settings, then opens the repository, the store and
    /// the runners (starting the bundled simulators when asked to) and builds
    /// the engine on the pool of them. Logs the pipeline's steps and each
    /// runner.
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
        let (store, db, db_lock) = open_store(&config.store, &repo_path).await?;
        let store_metrics = StoreMetrics::new();
        let store: Arc<dyn RunStore> = Arc::new(TimedStore::new(store, store_metrics.clone()));
        let source = GitSource::open(&repo_path, Arc::clone(&store), config.source).await?;
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
        let engine = Engine::with_pool(
            config.pipeline,
            started.pool,
            Arc::clone(&store),
            config.engine,
        )?;
        log_api_token(config.api_token.as_ref());
        Ok(Self {
            store,
            source,
            engine,
            runners: started.entries,
            supervisors: started.supervisors,
            steps,
            repo_path,
            db,
            _db_lock: db_lock,
            unreachable_limit,
            store_metrics,
            api_token: config.api_token,
        })
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

    /// Runs the engine and serves the API on `listener` until `shutdown`
    /// completes (or the engine fails). At shutdown the engine stops taking work
    /// and lets steps in flight finish within its grace period; the HTTP server
    /// stops accepting connections; the bundled simulators are stopped.
    ///
    /// # Errors
    /// [`ServerError::Engine`] when the engine stops because its store failed,
    /// [`ServerError::Http`] when the listener fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let engine = self.engine;
        let (stop_tx, stop_rx) = watch::channel(false);
        let api = crate::api::Api::new(Arc::clone(&self.store), Some(engine.handle()))
            .with_runners(runners::directory(self.runners))
            .with_unreachable_limit(self.unreachable_limit)
            .with_branch_tips(branch_tips(&self.repo_path))
            .with_store_metrics(&self.store_metrics)
            .with_api_token(self.api_token)
            .ending_streams_on(stop_rx.clone());
        let app = crate::api::app(api);

        let trimmer = tokio::spawn(crate::memory::give_back_freed_memory(Arc::clone(
            &self.store,
        )));
        let mut engine_task =
            tokio::spawn(engine.run(Box::new(self.source), stopped(stop_rx.clone())));
        let acceptor = TcpAcceptor::from_tokio(listener).map_err(ServerError::Http)?;
        let http = poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            app,
            stopped(stop_rx),
            Some(HTTP_SHUTDOWN_GRACE),
        );
        let mut http_task = tokio::spawn(http);

        let mut outcome: Result<(), ServerError> = Ok(());
        let mut engine_done = false;
        let mut http_done = false;
        tokio::select! {
            () = shutdown => info!("shutting down"),
            joined = &mut engine_task => {
                engine_done = true;
                match joined {
                    Ok(Ok(())) => warn!("the engine stopped by itself; shutting down"),
                    Ok(Err(e)) => {
                        error!(error = %e, "the engine failed; shutting down");
                        outcome = Err(ServerError::Engine(e));
                    }
                    Err(e) => outcome = Err(ServerError::Task(e.to_string())),
                }
            }
            joined = &mut http_task => {
                http_done = true;
                match joined {
                    Ok(Ok(())) => warn!("the HTTP server stopped by itself; shutting down"),
                    Ok(Err(e)) => {
                        error!(error = %e, "the HTTP server failed; shutting down");
                        outcome = Err(ServerError::Http(e));
                    }
                    Err(e) => outcome = Err(ServerError::Task(e.to_string())),
                }
            }
        }
        // Tell the other half to stop (the receivers may be gone: nothing to do).
        let _ = stop_tx.send(true);
        if !engine_done {
            match engine_task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    error!(error = %e, "the engine failed while stopping");
                    outcome = outcome.and(Err(ServerError::Engine(e)));
                }
                Err(e) => outcome = outcome.and(Err(ServerError::Task(e.to_string()))),
            }
        }
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

async fn open_store(
    choice: &StoreChoice,
    repo_path: &Path,
) -> Result<(Arc<dyn RunStore>, String, Option<std::fs::File>), StartupError> {
    let path = match choice {
        StoreChoice::Memory => {
            return Ok((
                Arc::new(MemoryStore::new()),
                crate::cli::MEMORY_DB.to_owned(),
                None,
            ));
        }
        StoreChoice::Sqlite(path) => path.clone(),
        StoreChoice::DefaultSqlite => default_db_path(repo_path).await?,
        StoreChoice::Postgres(url) => {
            let store = PgStore::open(url).await?;
            return Ok((Arc::new(store), url.redacted(), None));
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
    let lock = lock_database(&path).map_err(store_error)?;
    let store = crate::sqlite_store::SqliteStore::open(&path)
        .await
        .map_err(|e| store_error(e.to_string()))?;
    Ok((Arc::new(store), path.display().to_string(), Some(lock)))
}

/// Takes the lock file beside a SQLite database, `<file>.lock`, for as long
/// as the returned handle lives (the system lets go of it when the process
/// ends, however it ends), and writes this process's id into it. A second
/// server on the same file would run the same commits and clash with the
/// first on every write; it is refused instead, with the holder's process id.
fn lock_database(path: &Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| format!("cannot open its lock file {}: {e}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another ci-server".to_owned()
            } else {
                format!("another ci-server (pid {holder})")
            };
            return Err(format!(
                "{who} is using it (it holds {}); stop that one first, or give this one its own --db",
                lock_path.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("cannot lock {}: {e}", lock_path.display()));
        }
    }
    // Who holds it, for the message above; the lock itself is what counts.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    Ok(file)
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
