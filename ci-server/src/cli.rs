//! The command line: `ci-server <REPO_PATH> [RUNNER_ADDR] [OPTIONS]`, turned into a
//! [`ServerConfig`].
//!
//! It lives in the library (not in `main.rs`) so that every rule about arguments
//! is unit-tested here, and `main.rs` stays a thin shell: parse, set up logging,
//! bind, call [`server`](crate::server).
//!
//! Values clap can check alone (numbers, durations, the initial policy) are
//! checked by clap. The runners (see [`parse_runner_spec`]), the simulator's arguments,
//! the pipeline file and the combination of options are checked by
//! [`Cli::into_config`], which reports a single line so that `main` can print
//! it and exit with code 2.

mod runners;

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use ci_engine::{Pipeline, PipelineFileError};
use clap::Parser;

use crate::api::token::{ApiToken, TOKEN_ENV, TokenError, TokenSource};
use crate::git::InitialPolicy;
use crate::http_runner::{HttpRunnerConfig, RunnerAddr, RunnerAddrError};
use crate::pg_store::{DatabaseUrl, DatabaseUrlError, is_postgres_url};
use crate::server::{ServerConfig, StoreChoice};

pub use runners::parse_runner_spec;

/// The hidden first argument that makes the binary run the bundled step-runner
/// simulator instead of the server (see `main.rs`). Not shown in `--help`.
pub const SIM_SUBCOMMAND: &str = crate::supervisor::BUNDLED_SIM_ARG;

/// The `--db` value that selects the in-memory store.
pub use crate::server::MEMORY_DB;

/// Default listen address: every interface, port 9000 (as the original server).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9000";

const AFTER_HELP: &str = "\
Examples:
  ci-server /path/to/repo                 # runs the bundled simulator itself
  ci-server /path/to/repo --sims 3        # a pool of three bundled simulators
  ci-server /path/to/repo :8080           # uses a step runner on port 8080
  ci-server /path/to/repo --runner http://a:8080 --runner http://b:8080,repo=/srv/repo
  ci-server /path/to/repo --pipeline ci.toml --listen 127.0.0.1:9000
  curl http://localhost:9000/runs         # then see the runs (or open /docs)
  curl http://localhost:9000/runners      # and the runners

A runner's id, recorded on every attempt it runs, is its address as the
server writes it (:8080 is http://127.0.0.1:8080); bundled simulators are
sim-1 ... sim-N.

Durations are written like 500ms, 2s, 1.5s, 3m or 1h (a bare number is seconds).

Retry and cancel (POST /run/{commit}/retry, POST /run/{commit}/cancel) need
an API token, sent as `Authorization: Bearer TOKEN`; everything else is
readable without one. The token comes from --api-token-file, else
--api-token, else CI_API_TOKEN (the two options together are an error).
Without any, retry and cancel answer 403.
  CI_API_TOKEN=$(cat /etc/ci-server/token) ci-server /path/to/repo
  ci-server /path/to/repo --api-token-file /etc/ci-server/token

Runs are kept in a SQLite file unless --db or CI_DATABASE_URL names a
PostgreSQL database:
  CI_DATABASE_URL=postgres://ci:PASSWORD@db.internal:5432/ci ci-server /path/to/repo
Several servers may share one database (PostgreSQL, or one SQLite file on
one machine): one is active and runs commits; the others wait as standbys,
serve runs and pages, and take over within seconds when it dies. /healthz
tells each one's role.
To move the runs of a SQLite file into PostgreSQL (server stopped), see
`ci-server migrate-store --help`.

Environment:
  CI_API_TOKEN     the API token, when neither --api-token-file nor
                   --api-token is given (unset or empty: no token)
  CI_DATABASE_URL  the PostgreSQL database (postgres://...), when --db is not
                   given (unset or empty: the SQLite default)
  RUST_LOG         log filter for the log on stderr (default: info; the
                   bundled simulators' lines default to warn, so their
                   per-request lines show only with RUST_LOG=info or finer)

Exit codes: 0 after Ctrl-C or SIGTERM, 1 when the server fails while running,
2 when it cannot start (bad arguments, missing path, not a git repository,
unparsable runner address, unusable pipeline file, unreadable or empty API
token file, port in use, unusable database, database URL or PostgreSQL
server that refuses the connection or the password).";

/// The most bundled simulators `--sims` starts.
pub const MAX_SIMS: u32 = 64;

/// Watches a git repository and runs lint, build and test (or the steps of a
/// pipeline file) on every new commit of every branch through a pool of step
/// runners; serves the runs over HTTP (JSON API, OpenAPI document at
/// /openapi.json, Swagger UI at /docs).
#[derive(Debug, Clone, Parser)]
#[command(name = "ci-server", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Path of the git repository to watch (a work tree or a bare repository).
    #[arg(value_name = "REPO_PATH")]
    pub repo_path: PathBuf,

    /// Address of a step runner: `:8080` (this machine), `host:port` or a URL
    /// such as `http://host:8080`, optionally followed by `,repo=PATH`, the
    /// repository's path on the runner's machine (default: REPO_PATH). It
    /// counts as one `--runner`. With no runner at all, the server starts the
    /// bundled step-runner simulator (see --sims) as a child process on a free
    /// loopback port and restarts it whenever it dies.
    #[arg(value_name = "RUNNER_ADDR")]
    pub runner_addr: Option<String>,

    /// Another step runner of the pool, written like RUNNER_ADDR
    /// (`ADDR[,repo=PATH]`); give it once per runner. Steps go to whichever
    /// runner is up and has room; the same address twice is an error.
    #[arg(long = "runner", value_name = "ADDR[,repo=PATH]")]
    pub runners: Vec<String>,

    /// How many bundled simulators to start when no runner is given (1 to 64,
    /// default 1), each on its own port, supervised and restarted on its own,
    /// with the ids sim-1 ... sim-N. Not with --runner or RUNNER_ADDR.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SIMS)))]
    pub sims: Option<u32>,

    /// A TOML file that lists the pipeline's steps, their needs and limits.
    /// Default: lint (any number at once), build and test (one at a time on
    /// each runner; test needs build).
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,

    /// Address the HTTP API listens on, as `IP:PORT`, `localhost:PORT` or
    /// `:PORT` (every interface). Port 0 picks a free port; the startup line tells which.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Where runs are stored: a SQLite file, `:memory:` to keep them in memory
    /// only (lost at exit), or a PostgreSQL database as a URL,
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (the database must exist;
    /// its tables are created or migrated at start). Default: CI_DATABASE_URL
    /// when set, else `<git-dir>/ci-server/runs.db` inside the watched
    /// repository (the folder is created). A URL shows on other users' `ps`:
    /// prefer CI_DATABASE_URL for one with a password.
    #[arg(long, value_name = "PATH|URL")]
    pub db: Option<DbArg>,

    /// What to build the first time the server sees the repository: `tips` (the
    /// tip of each branch), `all` (every commit) or `none` (only new commits).
    /// Ignored once the store remembers the repository.
    #[arg(long, value_name = "POLICY", default_value = "tips")]
    pub initial: InitialPolicy,

    /// How often branch tips are read even without a file-system notification.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Do not watch the repository for changes; rely on --poll-interval only.
    #[arg(long)]
    pub no_watch: bool,

    /// A step with no answer after this long is recorded as lost and retried
    /// (after --retry-backoff). The request itself is not cut short: the server
    /// keeps waiting for the runner's answer, and the step's slot stays taken
    /// until it comes (see --abandon-limit), so the runner never runs more builds
    /// or tests at once than allowed. Also sets the timeout for connecting to
    /// the runner: half of this, at most 5 s. Longer than 100ms. A step of a
    /// pipeline file may set a timeout of its own.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub step_timeout: Duration,

    /// How long the runner may keep working on a step the server gave up on (it
    /// ran past --step-timeout, or its run was cancelled). Past this the runner
    /// is treated as down: no step is sent, it is probed (GET /, which runs no
    /// step) until it answers, and then the requests it held this long are
    /// dropped and their slots freed. Longer than zero.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub abandon_limit: Duration,

    /// Attempts per step (lost or rejected ones included) before the step ends
    /// `error`. At least 1. A step of a pipeline file may set its own.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Wait before retrying a step that timed out, got an answer that is not
    /// the protocol, or was lost twice with every runner staying up; it doubles
    /// at each retry (up to 60 s, or to this value when it is longer), shortened
    /// by a random part of up to half so that steps lost together do not come
    /// back together. A step lost because its runner crashed is retried at
    /// once, on any runner that is up.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub retry_backoff: Duration,

    /// Requests in flight at once on each runner, over all steps (a pool of N
    /// runners has up to N times this in flight). At least 1.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Unfinished runs the engine holds in memory at once; the others wait in
    /// the store and are taken up oldest first as runs finish. When a runner
    /// would otherwise idle, runs are taken up early, up to as many again: a
    /// burst of commits costs memory for at most twice this many runs,
    /// whatever its size. At least 1.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub active_runs: u32,

    /// A step that has waited this long for a runner that is down (unreachable,
    /// or holding steps past --abandon-limit) ends `error`. Longer than zero.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub unreachable_limit: Duration,

    /// At shutdown (Ctrl-C, SIGTERM), how long steps in flight may take to
    /// finish; the rest are taken up again at the next start.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Extra arguments for each bundled simulator, in one string (only without
    /// RUNNER_ADDR and --runner), e.g. "--no-crash --test-ms 50". Its options:
    /// --no-crash, --seed N, --fail-rate P, --crash-rate P, --lint-ms MS,
    /// --build-ms MS, --test-ms MS, --request-log PATH (every simulator appends
    /// to the same file). With --sims, --seed gives every simulator the same
    /// seed.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub sim_args: Option<String>,

    /// A file that holds the API token, which retry and cancel ask for as
    /// `Authorization: Bearer TOKEN` (one trailing newline is ignored; the
    /// token is printable ASCII without spaces). An unreadable or empty file
    /// stops the server at start. Overrides CI_API_TOKEN; not with
    /// --api-token. Make the file readable by the server's user only.
    #[arg(long, value_name = "PATH", conflicts_with = "api_token")]
    pub api_token_file: Option<PathBuf>,

    /// The API token itself. A command line is visible to other users of
    /// this machine (ps, /proc), so the server warns at start: prefer
    /// --api-token-file or CI_API_TOKEN. Overrides CI_API_TOKEN; not with
    /// --api-token-file.
    // A token may start with `-` (base64url): taken as the value, not as an
    // unknown option that clap would print back.
    #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
    pub api_token: Option<Secret>,

    /// The value of the environment variable CI_API_TOKEN, used when neither
    /// option gives a token. Not an option: `main` reads it from the
    /// environment (tests set it directly).
    #[arg(skip)]
    pub api_token_env: Option<Secret>,

    /// The value of the environment variable CI_DATABASE_URL, used when
    /// `--db` is not given. Not an option: `main` reads it from the
    /// environment (tests set it directly).
    #[arg(skip)]
    pub database_url_env: Option<Secret>,
}

/// The environment variable that names the PostgreSQL database when `--db`
/// is not given.
pub const DATABASE_URL_ENV: &str = "CI_DATABASE_URL";

/// What names the database: an option's value, or [`DATABASE_URL_ENV`].
#[derive(Debug)]
pub(crate) enum DatabaseSource<'a> {
    /// The option's value, as written.
    Option(&'a str),
    /// The variable's value (set, not empty).
    Env(&'a Secret),
    /// Neither.
    Neither,
}

/// The option `name`'s value when it is given (then [`DATABASE_URL_ENV`],
/// if set, is not used, and a log line says so), else the variable's value
/// when it is set and not empty. Shared by `--db` and `migrate-store --to`.
pub(crate) fn database_source<'a>(
    name: &str,
    option: Option<&'a DbArg>,
    env: Option<&'a Secret>,
) -> DatabaseSource<'a> {
    let env = env.filter(|v| !v.expose().is_empty());
    match (option, env) {
        (Some(option), env) => {
            if env.is_some() {
                tracing::info!("{DATABASE_URL_ENV} is set but not used: {name} gives the database");
            }
            DatabaseSource::Option(option.expose())
        }
        (None, Some(env)) => DatabaseSource::Env(env),
        (None, None) => DatabaseSource::Neither,
    }
}

/// The PostgreSQL URL in `env` (the value of [`DATABASE_URL_ENV`]), checked:
/// UTF-8, a `postgres://` or `postgresql://` URL (else `not_postgres` is the
/// reason given), and parsable. Every message masks the password.
pub(crate) fn database_url_in_env(
    env: &Secret,
    not_postgres: &str,
) -> Result<DatabaseUrl, DatabaseUrlError> {
    let refused = |reason: &str| DatabaseUrlError {
        url: crate::pg_store::redact(&env.expose().to_string_lossy()),
        reason: reason.to_owned(),
    };
    let Some(url) = env.expose().to_str() else {
        return Err(refused("it is not UTF-8"));
    };
    if !is_postgres_url(url) {
        return Err(refused(not_postgres));
    }
    DatabaseUrl::parse(url)
}

/// The value of `--db` as written: a path, `:memory:` or a database URL.
/// `Debug` masks a URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct DbArg(String);

impl DbArg {
    /// The value as written (a URL's password included).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DbArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DbArg")
            .field(&crate::pg_store::redact(&self.0))
            .finish()
    }
}

impl std::str::FromStr for DbArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A secret from the command line or the environment (the API token): `Debug`
/// does not show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(OsString);

impl Secret {
    /// The secret `value`.
    pub fn new(value: impl Into<OsString>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &OsStr {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// An argument that clap accepted but that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The runner address does not parse.
    #[error(transparent)]
    RunnerAddr(#[from] RunnerAddrError),
    /// `--sim-args` is not understood by the simulator.
    #[error("invalid --sim-args {input:?}: {reason}")]
    SimArgs {
        /// What was given.
        input: String,
        /// What the simulator's parser said (first line).
        reason: String,
    },
    /// `--sim-args` with external runners: there is no simulator to pass them to.
    #[error(
        "--sim-args only applies to the bundled simulators; remove it or the runners (RUNNER_ADDR, --runner)"
    )]
    SimArgsWithRunner,
    /// `--sims` with external runners: the bundled simulators are only started
    /// when no runner is given.
    #[error(
        "--sims starts bundled simulators, which are only used when no runner is given; remove --sims or the runners (RUNNER_ADDR, --runner)"
    )]
    SimsWithRunner,
    /// A runner's options (after the address) are not understood.
    #[error("invalid runner {input:?}: {problem}")]
    RunnerOption {
        /// The runner as written.
        input: String,
        /// What is wrong with its options.
        problem: String,
    },
    /// Two runners at one address (compared as the server writes addresses).
    #[error("runner {addr} is given twice (as {first:?} and {second:?})")]
    DuplicateRunner {
        /// The address, normalised.
        addr: String,
        /// The first runner written at it.
        first: String,
        /// The second.
        second: String,
    },
    /// The pipeline file cannot be read or is not a valid pipeline; the message
    /// starts with the file's path (and line).
    #[error(transparent)]
    Pipeline(#[from] PipelineFileError),
    /// The step timeout is too short for the HTTP client's connect timeout.
    #[error("--step-timeout must be longer than {0:?}")]
    StepTimeoutTooShort(Duration),
    /// The API token cannot be used (an unreadable or empty file, an empty
    /// token, a character a header cannot carry).
    #[error(transparent)]
    ApiToken(#[from] TokenError),
    /// `--db` or CI_DATABASE_URL names a database that cannot be used (a
    /// malformed URL, a URL of another scheme); the message masks the
    /// password.
    #[error("{origin}: {source}")]
    Database {
        /// Where the value came from: `--db` or `CI_DATABASE_URL`.
        origin: &'static str,
        /// What is wrong with it.
        #[source]
        source: DatabaseUrlError,
    },
    /// The engine refuses a setting an option gave it.
    #[error("invalid {option}: {problem}")]
    Engine {
        /// The option (`--abandon-limit`, …), or the engine's field name when no
        /// option sets it.
        option: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// `--step-timeout` must be longer than this, so that half of it, the connect
/// timeout then (see [`HttpRunnerConfig::for_engine`]), is still a usable wait.
const MIN_STEP_TIMEOUT: Duration = Duration::from_millis(100);

/// The options that set a field of [`EngineConfig`](ci_engine::EngineConfig), by
/// field name, to name the option when the engine refuses a value.
const ENGINE_OPTIONS: &[(&str, &str)] = &[
    ("step_timeout", "--step-timeout"),
    ("abandon_limit", "--abandon-limit"),
    ("max_attempts", "--max-attempts"),
    ("retry_backoff", "--retry-backoff"),
    ("max_in_flight", "--max-in-flight"),
    ("active_runs", "--active-runs"),
    ("unreachable_limit", "--unreachable-limit"),
    ("shutdown_grace", "--shutdown-grace"),
];

impl Cli {
    /// Checks what clap could not and builds the server's configuration.
    ///
    /// `program` is the executable to start as the bundled simulators (normally
    /// `std::env::current_exe()`); it is run with [`SIM_SUBCOMMAND`] first.
    /// Reads the pipeline file, when one is given.
    ///
    /// # Errors
    /// A [`CliError`] whose message is one line for the user.
    pub fn into_config(self, program: PathBuf) -> Result<ServerConfig, CliError> {
        let runner = runners::runner_choice(self.runner_args(), program)?;
        let pipeline = match &self.pipeline {
            Some(path) => Pipeline::load(path)?,
            None => Pipeline::standard(),
        };
        let store = self.store_choice()?;
        if self.step_timeout <= MIN_STEP_TIMEOUT {
            return Err(CliError::StepTimeoutTooShort(MIN_STEP_TIMEOUT));
        }
        let api_token = self.api_token()?;
        let mut config = ServerConfig::new(self.repo_path, runner);
        config.api_token = api_token;
        config.pipeline = pipeline;
        config.store = store;
        config.source.initial = self.initial;
        config.source.poll_interval = self.poll_interval;
        config.source.watch = !self.no_watch;
        config.engine.step_timeout = self.step_timeout;
        config.engine.abandon_limit = self.abandon_limit;
        config.engine.max_attempts = self.max_attempts;
        config.engine.retry_backoff = self.retry_backoff;
        // The cap may not be below the first wait: a longer --retry-backoff
        // raises it rather than being refused.
        config.engine.retry_backoff_max = config.engine.retry_backoff_max.max(self.retry_backoff);
        config.engine.max_in_flight = usize::try_from(self.max_in_flight).unwrap_or(usize::MAX);
        config.engine.active_runs = usize::try_from(self.active_runs).unwrap_or(usize::MAX);
        config.engine.unreachable_limit = self.unreachable_limit;
        config.engine.shutdown_grace = self.shutdown_grace;
        config.engine.validate().map_err(|e| CliError::Engine {
            option: ENGINE_OPTIONS
                .iter()
                .find(|(field, _)| *field == e.field)
                .map_or_else(|| e.field.to_owned(), |(_, option)| (*option).to_owned()),
            problem: e.problem,
        })?;
        // The engine's step timeout is the only clock on a request once it is
        // sent; the HTTP client only derives its connect timeout from it.
        config.http_runner = HttpRunnerConfig::for_engine(&config.engine);
        Ok(config)
    }

    /// The store: `--db` (see [`StoreChoice::parse`]), else CI_DATABASE_URL
    /// (unset or empty: none), which must be a PostgreSQL URL, else the
    /// default SQLite file.
    fn store_choice(&self) -> Result<StoreChoice, CliError> {
        match database_source("--db", self.db.as_ref(), self.database_url_env.as_ref()) {
            DatabaseSource::Option(db) => {
                StoreChoice::parse(db).map_err(|source| CliError::Database {
                    origin: "--db",
                    source,
                })
            }
            DatabaseSource::Env(env) => database_url_in_env(
                env,
                "expected postgres://USER:PASSWORD@HOST:PORT/DATABASE (a SQLite file is given \
                 with --db)",
            )
            .map(StoreChoice::Postgres)
            .map_err(|source| CliError::Database {
                origin: DATABASE_URL_ENV,
                source,
            }),
            DatabaseSource::Neither => Ok(StoreChoice::DefaultSqlite),
        }
    }

    /// The API token: from `--api-token-file`, else `--api-token`, else
    /// `CI_API_TOKEN` (unset or empty: none). clap refuses the two options
    /// together.
    fn api_token(&self) -> Result<Option<ApiToken>, CliError> {
        let token = if let Some(path) = &self.api_token_file {
            Some(ApiToken::from_file(path)?)
        } else if let Some(flag) = &self.api_token {
            // clap only gives UTF-8 strings.
            let secret = flag.expose().to_str().unwrap_or_default();
            Some(ApiToken::new(secret, TokenSource::Flag)?)
        } else {
            ApiToken::from_env(self.api_token_env.as_ref().map(Secret::expose))?
        };
        let env_set = self
            .api_token_env
            .as_ref()
            .is_some_and(|v| !v.expose().is_empty());
        if let Some(token) = &token
            && env_set
            && token.source() != &TokenSource::Env
        {
            tracing::info!(
                "{TOKEN_ENV} is set but not used: {} gives the API token",
                token.source()
            );
        }
        Ok(token)
    }

    /// Whether the server will start bundled simulators (no runner is named),
    /// and so needs its own executable's path.
    pub fn uses_bundled_simulators(&self) -> bool {
        !self.runner_args().names_external()
    }

    fn runner_args(&self) -> runners::RunnerArgs<'_> {
        runners::RunnerArgs {
            positional: self.runner_addr.as_deref(),
            runners: &self.runners,
            sims: self.sims,
            sim_args: self.sim_args.as_deref(),
        }
    }
}

/// Parses a runner address, as `RUNNER_ADDR` is parsed.
///
/// # Errors
/// [`CliError::RunnerAddr`] naming the input.
pub fn parse_runner_addr(input: &str) -> Result<RunnerAddr, CliError> {
    Ok(input.parse::<RunnerAddr>()?)
}

/// A rendered clap error as one line: its first paragraph with the lines joined
/// and the `error: ` prefix removed (the usage and tips that follow are dropped).
pub fn clap_error_line(rendered: &str) -> String {
    let first_paragraph = rendered.trim().split("\n\n").next().unwrap_or_default();
    let joined = first_paragraph
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let line = joined.strip_prefix("error: ").unwrap_or(&joined).to_owned();
    if line.is_empty() {
        "invalid arguments".to_owned()
    } else {
        line
    }
}

/// Parses a duration: `500ms`, `2s`, `1.5s`, `3m`, `1h`, `1h 30m` (what
/// `humantime` reads), or a bare number of seconds.
///
/// # Errors
/// A message naming the input when it is not one of those forms.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let bad = |why: String| {
        format!("{input:?} is not a duration ({why}; examples: 500ms, 2s, 1.5s, 3m, 1h)")
    };
    // A bare number is seconds, as `--help` says.
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let seconds: f64 = s.parse().map_err(|_| bad("not a number".to_owned()))?;
        return Duration::try_from_secs_f64(seconds).map_err(|e| bad(e.to_string()));
    }
    humantime::parse_duration(s).map_err(|e| bad(e.to_string()))
}

/// Parses a listen address: `IP:PORT`, `localhost:PORT`, or `:PORT` for every
/// interface (the simulator's rules, which follow Go's).
///
/// # Errors
/// A message naming the input.
pub fn parse_listen(input: &str) -> Result<std::net::SocketAddr, String> {
    // One rule for both programs: the simulator's, which follows Go's.
    step_runner_sim::parse_listen_addr(input).map_err(|e| {
        format!("invalid listen address {input:?}: {e} (expected IP:PORT, localhost:PORT or :PORT)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::RunnerChoice;
    use crate::supervisor::EXIT_WITH_PARENT_FLAG;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["ci-server"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("arguments parse")
    }

    fn config(args: &[&str]) -> Result<ServerConfig, CliError> {
        cli(args).into_config(PathBuf::from("/bin/self"))
    }

    #[test]
    fn clap_errors_become_one_line() {
        let err = Cli::try_parse_from(["ci-server"]).unwrap_err();
        let line = clap_error_line(&err.to_string());
        assert!(line.contains("<REPO_PATH>"), "{line}");
        assert!(!line.contains('\n') && !line.starts_with("error"), "{line}");
        assert_eq!(clap_error_line(""), "invalid arguments");
    }

    #[test]
    fn durations_parse_in_every_documented_form() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "s", "fast", "2x", "-1s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn listen_addresses_accept_the_go_shorthand() {
        assert_eq!(
            parse_listen(":9000").map(|a| a.to_string()),
            Ok("0.0.0.0:9000".to_owned())
        );
        assert_eq!(
            parse_listen("127.0.0.1:0").map(|a| a.port()),
            Ok(0),
            "port 0 is allowed"
        );
        assert_eq!(
            parse_listen("localhost:9000").map(|a| a.to_string()),
            Ok("127.0.0.1:9000".to_owned())
        );
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("nine-thousand").is_err());
    }

    /// The addresses and repository paths of external runners.
    fn external(c: &ServerConfig) -> Vec<(String, Option<String>)> {
        match &c.runner {
            RunnerChoice::External(runners) => runners
                .iter()
                .map(|r| (r.addr.to_string(), r.repo_path.clone()))
                .collect(),
            other => panic!("expected external runners, got {other:?}"),
        }
    }

    #[test]
    fn without_runner_addr_one_simulator_is_bundled() {
        let c = config(&["/repo"]).expect("valid");
        match c.runner {
            RunnerChoice::Bundled {
                program,
                args,
                count,
            } => {
                assert_eq!(program, PathBuf::from("/bin/self"));
                assert_eq!(args, [SIM_SUBCOMMAND, EXIT_WITH_PARENT_FLAG]);
                assert_eq!(count.get(), 1);
            }
            other => panic!("expected the bundled simulator, got {other:?}"),
        }
        assert_eq!(c.store, StoreChoice::DefaultSqlite);
        assert_eq!(c.pipeline, Pipeline::standard());
        assert!(cli(&["/repo"]).uses_bundled_simulators());
        assert!(!cli(&["/repo", "--runner", ":1"]).uses_bundled_simulators());
        assert!(!cli(&["/repo", ":1"]).uses_bundled_simulators());
    }

    #[test]
    fn sims_sets_how_many_simulators_and_must_be_in_range() {
        let c = config(&["/repo", "--sims", "3", "--sim-args", "--no-crash"]).expect("valid");
        let RunnerChoice::Bundled { count, args, .. } = c.runner else {
            panic!("expected bundled simulators");
        };
        assert_eq!(count.get(), 3);
        assert_eq!(args, [SIM_SUBCOMMAND, EXIT_WITH_PARENT_FLAG, "--no-crash"]);
        for bad in ["0", "65", "three"] {
            let argv = ["ci-server", "/repo", "--sims", bad];
            let err = Cli::try_parse_from(argv).expect_err(bad);
            let line = clap_error_line(&err.to_string());
            assert!(line.contains("--sims"), "{bad}: {line}");
        }
    }

    #[test]
    fn sims_with_external_runners_is_an_error() {
        for args in [
            &["/repo", ":8080", "--sims", "2"][..],
            &["/repo", "--runner", ":8080", "--sims", "1"][..],
        ] {
            let err = config(args).unwrap_err();
            assert_eq!(err, CliError::SimsWithRunner, "{args:?}");
            let line = err.to_string();
            assert!(
                line.contains("--sims") && line.contains("--runner"),
                "{line}"
            );
        }
    }

    #[test]
    fn runners_add_up_in_order_with_their_repo_paths() {
        let c = config(&[
            "/repo",
            ":8081",
            "--runner",
            "http://b:8082,repo=/srv/b",
            "--runner",
            "c:8083",
        ])
        .expect("valid");
        assert_eq!(
            external(&c),
            [
                ("http://127.0.0.1:8081".to_owned(), None),
                ("http://b:8082".to_owned(), Some("/srv/b".to_owned())),
                ("http://c:8083".to_owned(), None),
            ]
        );
        let c = config(&["/repo", "--runner", ":9001", "--runner", ":9002"]).expect("valid");
        assert_eq!(external(&c).len(), 2, "without the positional address");
        let c = config(&["/repo", ":9001,repo=/x"]).expect("valid");
        assert_eq!(
            external(&c),
            [("http://127.0.0.1:9001".to_owned(), Some("/x".to_owned()))]
        );
    }

    #[test]
    fn one_address_twice_is_an_error_naming_both_spellings() {
        let err = config(&["/repo", ":8080", "--runner", "http://127.0.0.1:8080/"]).unwrap_err();
        assert!(matches!(err, CliError::DuplicateRunner { .. }), "{err}");
        let line = err.to_string();
        assert!(
            line.contains("http://127.0.0.1:8080 is given twice"),
            "{line}"
        );
        assert!(line.contains("\":8080\""), "{line}");
        // A different repository path does not make it another runner.
        let err =
            config(&["/repo", "--runner", ":1,repo=/a", "--runner", ":1,repo=/b"]).unwrap_err();
        assert!(matches!(err, CliError::DuplicateRunner { .. }), "{err}");
    }

    #[test]
    fn bad_runner_options_are_refused() {
        let err = config(&["/repo", "--runner", ":8080,colour=red"]).unwrap_err();
        assert!(matches!(err, CliError::RunnerOption { .. }), "{err}");
        let err = config(&["/repo", ":8080,repo="]).unwrap_err();
        assert!(matches!(err, CliError::RunnerOption { .. }), "{err}");
        let err = config(&["/repo", "--runner", "nowhere"]).unwrap_err();
        assert!(matches!(err, CliError::RunnerAddr(_)), "{err}");
    }

    #[test]
    fn a_pipeline_file_that_cannot_be_read_names_the_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("missing.toml");
        let err = config(&["/repo", "--pipeline", missing.to_str().expect("UTF-8")]).unwrap_err();
        assert!(matches!(err, CliError::Pipeline(_)), "{err}");
        let line = err.to_string();
        assert!(
            line.starts_with(&format!("{}: ", missing.display())),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn sim_args_are_checked_and_passed_on() {
        let c = config(&["/repo", "--sim-args", "--no-crash --test-ms 50"]).expect("valid");
        let RunnerChoice::Bundled { args, .. } = c.runner else {
            panic!("expected the bundled simulator");
        };
        assert_eq!(
            args,
            [
                SIM_SUBCOMMAND,
                EXIT_WITH_PARENT_FLAG,
                "--no-crash",
                "--test-ms",
                "50"
            ]
        );

        let err = config(&["/repo", "--sim-args", "--test-ms soon"]).unwrap_err();
        assert!(matches!(err, CliError::SimArgs { .. }), "{err}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
        let err = config(&["/repo", "--sim-args", "--bogus"]).unwrap_err();
        assert!(matches!(err, CliError::SimArgs { .. }), "{err}");
    }

    #[test]
    fn sim_args_with_an_external_runner_is_an_error() {
        let err = config(&["/repo", ":8080", "--sim-args", "--no-crash"]).unwrap_err();
        assert_eq!(err, CliError::SimArgsWithRunner);
        let err = config(&["/repo", "--runner", ":8080", "--sim-args", "--no-crash"]).unwrap_err();
        assert_eq!(err, CliError::SimArgsWithRunner);
    }

    #[test]
    fn runner_addresses_in_each_form() {
        for ok in [":8080", "localhost:8080", "http://127.0.0.1:8080"] {
            let c = config(&["/repo", ok]).expect(ok);
            assert!(matches!(c.runner, RunnerChoice::External(_)), "{ok}");
        }
        let err = config(&["/repo", "not an address"]).unwrap_err();
        assert!(matches!(err, CliError::RunnerAddr(_)), "{err}");
    }

    #[test]
    fn options_reach_the_configuration() {
        let c = config(&[
            "/repo",
            "--db",
            ":memory:",
            "--initial",
            "all",
            "--poll-interval",
            "250ms",
            "--step-timeout",
            "30s",
            "--max-attempts",
            "3",
            "--max-in-flight",
            "4",
            "--active-runs",
            "64",
            "--retry-backoff",
            "50ms",
            "--abandon-limit",
            "45s",
        ])
        .expect("valid");
        assert_eq!(c.store, StoreChoice::Memory);
        assert_eq!(c.source.initial, InitialPolicy::All);
        assert_eq!(c.source.poll_interval, Duration::from_millis(250));
        assert_eq!(c.engine.step_timeout, Duration::from_secs(30));
        assert_eq!(c.engine.abandon_limit, Duration::from_secs(45));
        // The engine's step timeout is the only one; the HTTP client derives its
        // connect timeout from it.
        assert_eq!(
            c.http_runner,
            HttpRunnerConfig::for_engine(&c.engine),
            "the HTTP settings come from the engine's"
        );
        assert_eq!(c.http_runner.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.engine.max_attempts, 3);
        assert_eq!(c.engine.max_in_flight, 4);
        assert_eq!(c.engine.active_runs, 64);
        assert_eq!(c.engine.retry_backoff, Duration::from_millis(50));
        let c = config(&["/repo", "--db", "/tmp/x.db"]).expect("valid");
        assert_eq!(c.store, StoreChoice::Sqlite(PathBuf::from("/tmp/x.db")));
    }

    #[test]
    fn store_choice_tells_memory_paths_and_urls_apart() {
        assert_eq!(StoreChoice::parse(MEMORY_DB), Ok(StoreChoice::Memory));
        for path in [
            "runs.db",
            "/var/lib/ci/runs.db",
            "./postgres:/x",
            "postgres",
        ] {
            assert_eq!(
                StoreChoice::parse(path),
                Ok(StoreChoice::Sqlite(PathBuf::from(path))),
                "{path}"
            );
        }
        for url in [
            "postgres://ci:s3cret@db:5432/runs",
            "postgresql://ci@127.0.0.1/runs?sslmode=disable",
            "PostgreSQL://db/runs",
        ] {
            let Ok(StoreChoice::Postgres(parsed)) = StoreChoice::parse(url) else {
                panic!("{url} is not a PostgreSQL choice");
            };
            assert_eq!(parsed.expose(), url);
            assert!(!format!("{:?}", StoreChoice::Postgres(parsed)).contains("s3cret"));
        }
        // A URL is never a path: another scheme, or a malformed one, is refused.
        for (url, reason) in [
            ("mysql://ci:s3cret@db/runs", "not postgres"),
            ("sqlite://runs.db", "file path"),
            ("postgres://ci:s3cret@db:port/runs", "port"),
            ("postgres://ci:s3cret@/runs", "no host"),
        ] {
            let err = StoreChoice::parse(url).expect_err(url);
            let line = err.to_string();
            assert!(line.contains(reason), "{url}: {line}");
            assert!(!line.contains("s3cret"), "{url}: {line}");
        }
    }

    #[test]
    fn the_database_comes_from_db_else_the_environment() {
        let with_env = |args: &[&str], env: Option<&str>| {
            let mut cli = cli(args);
            cli.database_url_env = env.map(Secret::new);
            cli.into_config(PathBuf::from("/bin/self"))
        };
        let url = "postgres://ci:s3cret@db/runs";
        let c = with_env(&["/repo"], Some(url)).expect("valid");
        assert!(
            matches!(&c.store, StoreChoice::Postgres(u) if u.expose() == url),
            "{:?}",
            c.store
        );
        assert!(!format!("{c:?}").contains("s3cret"), "Debug shows it");
        let c = with_env(&["/repo", "--db", "/tmp/x.db"], Some(url)).expect("valid");
        assert_eq!(c.store, StoreChoice::Sqlite(PathBuf::from("/tmp/x.db")));
        let c = with_env(&["/repo"], Some("")).expect("valid");
        assert_eq!(c.store, StoreChoice::DefaultSqlite, "empty is unset");

        let err = with_env(&["/repo"], Some("/tmp/runs.db")).unwrap_err();
        let line = err.to_string();
        assert!(line.starts_with("CI_DATABASE_URL: "), "{line}");
        assert!(line.contains("--db"), "{line}");
        let err = with_env(&["/repo"], Some("postgres://ci:s3cret@h/db?x=1")).unwrap_err();
        let line = err.to_string();
        assert!(line.contains("unknown option `x`"), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
        let err = with_env(&["/repo", "--db", "postgres://ci:s3cret@h:x/db"], None).unwrap_err();
        let line = err.to_string();
        assert!(line.starts_with("--db: invalid database URL"), "{line}");
        assert!(!line.contains("s3cret"), "{line}");

        let parsed = cli(&["/repo", "--db", url]);
        assert!(
            !format!("{parsed:?}").contains("s3cret"),
            "Debug of the Cli"
        );
    }

    #[test]
    fn zero_attempts_and_tiny_timeouts_are_refused() {
        let argv = ["ci-server", "/repo", "--max-attempts", "0"];
        assert!(Cli::try_parse_from(argv).is_err());
        let err = config(&["/repo", "--step-timeout", "10ms"]).unwrap_err();
        assert!(matches!(err, CliError::StepTimeoutTooShort(_)), "{err}");
    }

    #[test]
    fn a_short_step_timeout_shortens_the_connect_timeout_only() {
        let c = config(&["/repo", "--step-timeout", "500ms"]).expect("valid");
        assert_eq!(c.engine.step_timeout, Duration::from_millis(500));
        assert_eq!(c.http_runner.connect_timeout, Duration::from_millis(250));
        let defaults = config(&["/repo"]).expect("valid");
        assert_eq!(defaults.engine.step_timeout, Duration::from_secs(600));
        assert_eq!(defaults.engine.abandon_limit, Duration::from_secs(120));
        assert_eq!(defaults.engine.active_runs, 512);
        assert_eq!(defaults.http_runner.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn settings_the_engine_refuses_are_named_by_their_option() {
        for (args, option) in [
            (&["/repo", "--abandon-limit", "0s"][..], "--abandon-limit"),
            (
                &["/repo", "--unreachable-limit", "0"][..],
                "--unreachable-limit",
            ),
        ] {
            let err = config(args).unwrap_err();
            assert!(matches!(err, CliError::Engine { .. }), "{err}");
            let line = err.to_string();
            assert!(line.starts_with(&format!("invalid {option}: ")), "{line}");
            assert!(line.contains("longer than zero"), "{line}");
        }
    }

    #[test]
    fn the_api_token_comes_from_one_option_else_the_environment() {
        let source = |c: &ServerConfig| c.api_token.as_ref().map(|t| t.source().clone());
        let with_env = |args: &[&str], env: Option<&str>| {
            let mut cli = cli(args);
            cli.api_token_env = env.map(Secret::new);
            cli.into_config(PathBuf::from("/bin/self"))
        };
        let c = with_env(&["/repo"], None).expect("valid");
        assert_eq!(source(&c), None, "no token: retry and cancel are off");
        let c = with_env(&["/repo"], Some("")).expect("valid");
        assert_eq!(source(&c), None, "an empty variable is no token");
        let c = with_env(&["/repo"], Some("from-env")).expect("valid");
        assert_eq!(source(&c), Some(TokenSource::Env));
        assert!(c.api_token.as_ref().is_some_and(|t| t.matches("from-env")));
        let c = with_env(&["/repo", "--api-token", "-from-flag"], Some("from-env")).expect("valid");
        assert_eq!(source(&c), Some(TokenSource::Flag));
        assert!(
            c.api_token
                .as_ref()
                .is_some_and(|t| t.matches("-from-flag"))
        );

        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").expect("written");
        let file_arg = file.to_str().expect("UTF-8");
        let c =
            with_env(&["/repo", "--api-token-file", file_arg], Some("from-env")).expect("valid");
        assert_eq!(source(&c), Some(TokenSource::File(file.clone())));
        assert!(c.api_token.as_ref().is_some_and(|t| t.matches("from-file")));

        let both = [
            "ci-server",
            "/repo",
            "--api-token",
            "x",
            "--api-token-file",
            file_arg,
        ];
        let err = Cli::try_parse_from(both).expect_err("both options");
        let line = clap_error_line(&err.to_string());
        assert!(line.contains("cannot be used with"), "{line}");

        let err = with_env(&["/repo"], Some("two words")).unwrap_err();
        assert!(matches!(err, CliError::ApiToken(_)), "{err}");
        assert!(!err.to_string().contains("two words"), "{err}");
    }

    #[test]
    fn the_token_never_shows_in_debug() {
        let mut parsed = cli(&["/repo", "--api-token", "flag-secret"]);
        parsed.api_token_env = Some(Secret::new("env-secret"));
        let shown = format!("{parsed:?}");
        assert!(
            !shown.contains("flag-secret") && !shown.contains("env-secret"),
            "{shown}"
        );
        let config = parsed
            .into_config(PathBuf::from("/bin/self"))
            .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("flag-secret"), "{shown}");
    }

    #[test]
    fn a_long_retry_backoff_raises_the_cap_instead_of_being_refused() {
        let c = config(&["/repo", "--retry-backoff", "2m"]).expect("valid");
        assert_eq!(c.engine.retry_backoff, Duration::from_secs(120));
        assert_eq!(c.engine.retry_backoff_max, Duration::from_secs(120));
        let c = config(&["/repo", "--retry-backoff", "1s"]).expect("valid");
        assert_eq!(c.engine.retry_backoff_max, Duration::from_secs(60));
    }
}
