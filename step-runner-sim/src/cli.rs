//! The simulator as a program: flags, environment variables, signals and exit
//! codes. Kept in the library so that another binary (ci-server's hidden
//! subcommand) can run exactly what `step-runner-sim` runs.
//!
//! This module writes two things straight to stderr rather than through
//! `tracing`, because they are part of the program's contract whatever logging
//! the host binary sets up: the startup line ([`crate::LISTENING_PREFIX`] plus
//! the bound address) and the single line explaining a bad configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::net::TcpListener;

use crate::addr::{AddrError, parse_listen_addr};
use crate::config::{ConfigError, SimConfig};
use crate::request_log::RequestLog;
use crate::server::{ServeEnd, serve, serve_with_request_log};

/// Exit code after a simulated crash (the original's `log.Fatal`).
pub const EXIT_CRASHED: i32 = 1;
/// Exit code for a configuration the simulator cannot start with.
pub const EXIT_BAD_CONFIG: i32 = 2;
/// Exit code after SIGTERM (what a shell reports for the original).
pub const EXIT_SIGTERM: i32 = 143;
/// Exit code after Ctrl-C (SIGINT).
pub const EXIT_INTERRUPTED: i32 = 0;

/// Listen address variables, newest name first.
const ADDR_VARS: [&str; 2] = ["STEP_RUNNER_SERVER_ADDR", "ORCA_STEP_RUNNER_SERVER_ADDR"];
/// Crash switch variables; either one set to exactly `false` turns crashes off.
const CRASHABLE_VARS: [&str; 2] = ["CI_SERVER_CRASHABLE", "ORCA_CI_SERVER_CRASHABLE"];
/// The request log variable, read when `--request-log` is not given.
const REQUEST_LOG_VAR: &str = "STEP_RUNNER_REQUEST_LOG";
/// The original's default listen address.
const DEFAULT_ADDR: &str = ":8080";

/// Text for a `--help` footer describing the environment variables.
pub const ENV_HELP: &str = "\
Environment:
  STEP_RUNNER_SERVER_ADDR    listen address when --addr is not given (default :8080);
                             ORCA_STEP_RUNNER_SERVER_ADDR is read when it is unset or empty
  CI_SERVER_CRASHABLE        `false` turns the crash off, like --no-crash;
                             ORCA_CI_SERVER_CRASHABLE=false does the same
  STEP_RUNNER_REQUEST_LOG    request log file when --request-log is not given
  RUST_LOG                   log filter for the log on stderr (default info)

Exit codes: 1 after a simulated crash, 143 after SIGTERM, 0 after Ctrl-C,
2 when the configuration is bad or the address cannot be bound.";

/// The command-line flags (clap::Args so another binary can embed them as a subcommand).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SimArgs {
    /// Listen address in Go syntax: `:8080` (every interface), `127.0.0.1:0`,
    /// `[::1]:80`, `localhost:8080`. Overrides STEP_RUNNER_SERVER_ADDR.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// Never crash (same as CI_SERVER_CRASHABLE=false).
    #[arg(long)]
    pub no_crash: bool,
    /// Seed for reproducible durations, outcomes and crashes: the n-th lint,
    /// build and test request get the same draws on every run.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Probability (0 to 1) that a build or test reports Failure.
    #[arg(long, value_name = "P", allow_negative_numbers = true, default_value_t = 0.5, value_parser = parse_probability)]
    pub fail_rate: f64,
    /// Probability (0 to 1) that a test crashes the whole runner.
    #[arg(long, value_name = "P", allow_negative_numbers = true, default_value_t = 0.2, value_parser = parse_probability)]
    pub crash_rate: f64,
    /// Every lint takes exactly this many ms (default: uniform 0-99 ms).
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub lint_ms: Option<u64>,
    /// Every build takes exactly this many ms (default: uniform 0-999 ms;
    /// a request's simulate_build_time still wins).
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub build_ms: Option<u64>,
    /// Every test takes exactly this many ms (default: uniform 0-999 ms;
    /// a request's simulate_build_time still wins).
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub test_ms: Option<u64>,
    /// Append one JSON line to PATH for each step request received ("start"),
    /// each answer ("end") and the crash ("crash"); several processes may
    /// share one file. Overrides STEP_RUNNER_REQUEST_LOG.
    #[arg(long, value_name = "PATH")]
    pub request_log: Option<PathBuf>,
}

impl Default for SimArgs {
    /// The flags as clap fills them when none is given.
    fn default() -> Self {
        let config = SimConfig::default();
        Self {
            addr: None,
            no_crash: false,
            seed: None,
            fail_rate: config.fail_rate,
            crash_rate: config.crash_rate,
            lint_ms: None,
            build_ms: None,
            test_ms: None,
            request_log: None,
        }
    }
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be a probability between 0 and 1, got {s}"))
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The listen address does not parse.
    #[error("invalid listen address: {0}")]
    Addr(#[from] AddrError),
    /// A rate is out of range.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// An environment variable is not valid UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(&'static str),
    /// The address is taken, not local, or not permitted.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The request log file cannot be opened for appending.
    #[error("cannot open the request log {}: {source}", path.display())]
    RequestLog {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The first non-empty value among `names`.
fn env_value(names: &[&'static str]) -> Result<Option<String>, StartError> {
    for &name in names {
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => return Ok(Some(value)),
            Ok(_) | Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => return Err(StartError::EnvNotUnicode(name)),
        }
    }
    Ok(None)
}

/// The settings and address `args` and the environment ask for.
pub fn resolve(args: &SimArgs) -> Result<(SocketAddr, SimConfig), StartError> {
    let addr_text = match &args.addr {
        Some(addr) => addr.clone(),
        None => env_value(&ADDR_VARS)?.unwrap_or_else(|| DEFAULT_ADDR.to_owned()),
    };
    let addr = parse_listen_addr(&addr_text)?;
    let crash_switched_off = CRASHABLE_VARS
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| v == "false"));
    let config = SimConfig {
        seed: args.seed,
        fail_rate: args.fail_rate,
        crash_rate: args.crash_rate,
        crashable: !args.no_crash && !crash_switched_off,
        lint_ms: args.lint_ms,
        build_ms: args.build_ms,
        test_ms: args.test_ms,
    };
    config.validate()?;
    Ok((addr, config))
}

/// The request log file `args` or the environment asks for; an empty
/// variable counts as unset.
pub fn request_log_path(args: &SimArgs) -> Option<PathBuf> {
    args.request_log.clone().or_else(|| {
        std::env::var_os(REQUEST_LOG_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Completes at SIGTERM or SIGINT and records the matching exit code.
#[cfg(unix)]
fn shutdown_signal(
    code: Arc<AtomicI32>,
) -> Result<impl std::future::Future<Output = ()> + Send, StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!("SIGTERM received, stopping");
                code.store(EXIT_SIGTERM, Ordering::SeqCst);
            }
            _ = interrupt.recv() => {
                tracing::info!("interrupted, stopping");
                code.store(EXIT_INTERRUPTED, Ordering::SeqCst);
            }
        }
    })
}

/// Completes at Ctrl-C and records the matching exit code.
#[cfg(not(unix))]
fn shutdown_signal(
    code: Arc<AtomicI32>,
) -> Result<impl std::future::Future<Output = ()> + Send, StartError> {
    Ok(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            code.store(EXIT_INTERRUPTED, Ordering::SeqCst);
        } else {
            std::future::pending::<()>().await;
        }
    })
}

async fn start(args: SimArgs) -> Result<i32, StartError> {
    let (addr, config) = resolve(&args)?;
    let request_log = match request_log_path(&args) {
        Some(path) => Some(
            RequestLog::open(&path).map_err(|source| StartError::RequestLog { path, source })?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let code = Arc::new(AtomicI32::new(EXIT_INTERRUPTED));
    let shutdown = shutdown_signal(Arc::clone(&code))?;
    let log_path = request_log
        .as_ref()
        .map(|log| log.path().display().to_string());
    tracing::info!(%local, ?config, request_log = ?log_path, "Starting server");
    eprintln!("{}{local}", crate::LISTENING_PREFIX);
    let served = match request_log {
        Some(log) => serve_with_request_log(listener, config, log, shutdown).await,
        None => serve(listener, config, shutdown).await,
    };
    match served {
        Ok(ServeEnd::Shutdown) => Ok(code.load(Ordering::SeqCst)),
        Ok(ServeEnd::Crashed) => Ok(EXIT_CRASHED),
        Err(error) => Err(StartError::Bind {
            addr: local,
            source: error,
        }),
    }
}

/// Sets the global `tracing` subscriber that the simulator's binaries use: plain
/// text to stderr (coloured only on a terminal), filtered by `RUST_LOG` (default
/// `info`). A closed stderr (the reader died) drops log lines instead of
/// panicking. Call it once, before anything logs; it panics if a global
/// subscriber is already set.
pub fn init_tracing() {
    init_tracing_with_default("info");
}

/// [`init_tracing`] with another filter for when `RUST_LOG` is unset or
/// unparsable: `default` is an `EnvFilter` directive such as `warn`. A server
/// that bundles the simulator uses it to keep the per-request lines out of
/// its own log unless asked for.
pub fn init_tracing_with_default(default: &str) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
}

/// Runs the simulator as the binary does (reads env vars too) and returns the process exit code
/// (1 after a crash, 143 after SIGTERM, 0 after Ctrl-C, 2 for bad configuration).
///
/// Prints `step-runner-sim listening on <addr>` to stderr once the port is bound
/// and signal handlers are installed; on a bad configuration prints one line
/// `step-runner-sim: <reason>` to stderr instead.
pub async fn run(args: SimArgs) -> i32 {
    match start(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("step-runner-sim: {error}");
            EXIT_BAD_CONFIG
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_parse_inside_zero_to_one_only() {
        assert_eq!(parse_probability("0.25"), Ok(0.25));
        assert_eq!(parse_probability("1"), Ok(1.0));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("NaN").is_err());
        assert!(parse_probability("lots").is_err());
    }

    #[test]
    fn flags_become_settings() {
        let args = SimArgs {
            addr: Some("127.0.0.1:0".to_owned()),
            no_crash: true,
            seed: Some(3),
            lint_ms: Some(1),
            ..SimArgs::default()
        };
        let (addr, config) = resolve(&args).expect("valid flags");
        assert_eq!(addr.to_string(), "127.0.0.1:0");
        let logged = SimArgs {
            request_log: Some(PathBuf::from("requests.jsonl")),
            ..args.clone()
        };
        assert_eq!(
            request_log_path(&logged),
            Some(PathBuf::from("requests.jsonl")),
            "the flag gives the path"
        );
        assert!(!config.crashable);
        assert_eq!(
            (config.seed, config.lint_ms, config.fail_rate),
            (Some(3), Some(1), 0.5)
        );
    }

    #[test]
    fn bad_flags_are_start_errors() {
        let bad_addr = SimArgs {
            addr: Some("nowhere".to_owned()),
            ..SimArgs::default()
        };
        assert!(matches!(resolve(&bad_addr), Err(StartError::Addr(_))));
        let bad_rate = SimArgs {
            addr: Some(":0".to_owned()),
            crash_rate: 2.0,
            ..SimArgs::default()
        };
        assert!(matches!(resolve(&bad_rate), Err(StartError::Config(_))));
    }
}
