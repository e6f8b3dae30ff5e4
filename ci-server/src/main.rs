//! The `ci-server` binary: parses arguments, sets up logging to stderr, binds the
//! listener and runs [`ci_server::server`] until Ctrl-C or SIGTERM.
//!
//! With the hidden first argument `__step-runner-sim` it runs the bundled
//! step-runner simulator instead (`step_runner_sim::cli`), which is how the server
//! starts its own runner as a child process with a single binary.
//!
//! With the first argument `migrate-store` it copies a SQLite run database
//! into PostgreSQL instead ([`ci_server::migrate`]), with a parser and a
//! `--help` of its own.

use std::ffi::OsString;
use std::path::PathBuf;

use ci_server::api::token::TOKEN_ENV;
use ci_server::cli::{Cli, DATABASE_URL_ENV, SIM_SUBCOMMAND, Secret, parse_listen};
use ci_server::migrate::{self, MigrateArgs};
use ci_server::server::{LISTENING_PREFIX, Server, public_url};
use clap::Parser;
use tokio::net::TcpListener;

/// Exit code when the server cannot start.
const EXIT_STARTUP: i32 = 2;
/// Exit code when it fails while running.
const EXIT_FAILED: i32 = 1;

/// The simulator's flags, parsed exactly as `step-runner-sim` parses them.
#[derive(Debug, Parser)]
#[command(name = "ci-server __step-runner-sim")]
struct SimCommand {
    #[command(flatten)]
    sim: step_runner_sim::cli::SimArgs,
    /// Exit when standard input reaches end-of-file (the parent is gone).
    #[arg(long = "exit-with-parent", hide = true)]
    exit_with_parent: bool,
}

fn main() {
    ci_server::memory::limit_arenas();
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == SIM_SUBCOMMAND) {
        run_simulator(&argv);
    }
    if argv.get(1).is_some_and(|a| a == migrate::SUBCOMMAND) {
        run_migration(&argv);
    }
    let mut cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() => {
            eprintln!("ci-server: {} (see --help)", one_line(&error));
            std::process::exit(EXIT_STARTUP);
        }
        // --help and --version print to stdout and exit 0.
        Err(help_or_version) => help_or_version.exit(),
    };
    cli.api_token_env = std::env::var_os(TOKEN_ENV).map(Secret::new);
    cli.database_url_env = std::env::var_os(DATABASE_URL_ENV).map(Secret::new);
    init_tracing();
    let runtime = runtime_or_exit("ci-server", EXIT_STARTUP);
    let code = runtime.block_on(serve(cli));
    // Do not wait for blocking tasks (a git scan, a file watcher) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// The multi-threaded runtime, or (when the system refuses one) a line
/// naming `program` on stderr and exit with `code`.
fn runtime_or_exit(program: &str, code: i32) -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{program}: cannot start the async runtime: {error}");
            std::process::exit(code);
        }
    }
}

/// The bundled simulator's log filter when `RUST_LOG` is unset: its warnings
/// (a lock taken while busy) and errors (a simulated crash) reach the server's
/// log; its four lines per request (received, step started, step finished,
/// answered) do not: the server logs each run's end, and each dispatch at
/// `debug`, itself.
/// `RUST_LOG=info` (read by both processes) brings them back.
const BUNDLED_SIM_LOG: &str = "warn";

/// Runs the bundled simulator with the arguments after the hidden subcommand and
/// exits with its code.
fn run_simulator(argv: &[OsString]) -> ! {
    let args = std::iter::once(OsString::from(format!("ci-server {SIM_SUBCOMMAND}")))
        .chain(argv.iter().skip(2).cloned());
    let (sim, exit_with_parent) = match SimCommand::try_parse_from(args) {
        Ok(cmd) => (cmd.sim, cmd.exit_with_parent),
        Err(error) if error.use_stderr() => {
            eprintln!("step-runner-sim: {} (see --help)", one_line(&error));
            std::process::exit(step_runner_sim::cli::EXIT_BAD_CONFIG);
        }
        Err(help) => help.exit(),
    };
    step_runner_sim::cli::init_tracing_with_default(BUNDLED_SIM_LOG);
    if exit_with_parent {
        exit_when_parent_is_gone();
    }
    let runtime = runtime_or_exit("step-runner-sim", step_runner_sim::cli::EXIT_BAD_CONFIG);
    std::process::exit(runtime.block_on(step_runner_sim::cli::run(sim)));
}

/// Runs `migrate-store` with the arguments after it and exits with its code.
fn run_migration(argv: &[OsString]) -> ! {
    const NAME: &str = "ci-server migrate-store";
    let args = std::iter::once(OsString::from(NAME)).chain(argv.iter().skip(2).cloned());
    let mut args = match MigrateArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(error) if error.use_stderr() => {
            eprintln!("{NAME}: {} (see --help)", one_line(&error));
            std::process::exit(migrate::EXIT_USAGE);
        }
        Err(help_or_version) => help_or_version.exit(),
    };
    args.database_url_env = std::env::var_os(DATABASE_URL_ENV).map(Secret::new);
    init_tracing();
    let runtime = runtime_or_exit(NAME, migrate::EXIT_FAILED);
    let code = match runtime.block_on(migrate::run(args)) {
        Ok(summary) => {
            print_summary(&summary);
            0
        }
        Err(error) => {
            eprintln!("{NAME}: {error}");
            error.exit_code()
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// The line a migration ends with.
#[allow(
    clippy::print_stdout,
    reason = "the summary is the subcommand's output"
)]
fn print_summary(summary: &migrate::Summary) {
    println!("{summary}");
}

/// Watches standard input on a thread of its own and exits the process at its
/// end-of-file: the server that started this simulator holds the other end of
/// the pipe, so end-of-file means it is gone, however it died.
fn exit_when_parent_is_gone() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        // No log line: the parent held our stderr too, so it is gone as well.
        std::process::exit(0);
    });
}

/// A clap error as one line: its first paragraph, without the `error: ` prefix
/// and the usage that follows.
fn one_line(error: &clap::Error) -> String {
    ci_server::cli::clap_error_line(&error.render().to_string())
}

/// Logs to stderr exactly as the `step-runner-sim` binary does (`RUST_LOG`,
/// default `info`; a closed stderr drops lines instead of panicking).
fn init_tracing() {
    step_runner_sim::cli::init_tracing();
}

/// Starts the server and serves until a signal; returns the exit code.
async fn serve(cli: Cli) -> i32 {
    let listen = match parse_listen(&cli.listen) {
        Ok(addr) => addr,
        Err(reason) => return startup_failed(&reason),
    };
    let program = match std::env::current_exe() {
        Ok(path) => path,
        // Only the bundled simulators need this binary's path.
        Err(_) if !cli.uses_bundled_simulators() => PathBuf::from("ci-server"),
        Err(e) => {
            return startup_failed(&format!(
                "cannot find this executable to start the bundled simulator: {e}"
            ));
        }
    };
    let config = match cli.into_config(program) {
        Ok(config) => config,
        Err(e) => return startup_failed(&e.to_string()),
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => return startup_failed(&format!("cannot listen on {listen}: {e}")),
    };
    let bound = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => return startup_failed(&format!("cannot listen on {listen}: {e}")),
    };
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => return startup_failed(&e.to_string()),
    };
    print_startup_line(&server, bound);
    match server.serve(listener, shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ci-server: {e}");
            EXIT_FAILED
        }
    }
}

fn startup_failed(reason: &str) -> i32 {
    eprintln!("ci-server: {reason}");
    EXIT_STARTUP
}

/// The one line a person (or a test) reads to know where the server is.
#[allow(
    clippy::print_stdout,
    reason = "the startup line is the binary's output"
)]
fn print_startup_line(server: &Server, bound: std::net::SocketAddr) {
    let url = public_url(bound);
    println!(
        "{LISTENING_PREFIX}{bound} | runs: {url}/runs | docs: {url}/docs | live page: {url}/ | \
         watching {} | {} | pipeline: {} | store: {}",
        server.repo_path().display(),
        describe_runners(server),
        server.steps().join(", "),
        server.db()
    );
}

/// The runners for the startup line: `bundled simulator at URL` or
/// `step runner at URL` for one; for several, how many and `ID at URL` each
/// (an external runner's id is its URL, so it is written once).
fn describe_runners(server: &Server) -> String {
    let runners = server.runners();
    let kind = if server.runners_are_bundled() {
        "bundled simulator"
    } else {
        "step runner"
    };
    match runners.as_slice() {
        [one] => format!("{kind} at {}", one.address),
        many => {
            let each: Vec<String> = many
                .iter()
                .map(|r| {
                    if r.id == r.address {
                        r.address.clone()
                    } else {
                        format!("{} at {}", r.id, r.address)
                    }
                })
                .collect();
            format!("{} {kind}s: {}", many.len(), each.join(", "))
        }
    }
}

/// Completes at Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
    tracing::info!("signal received, shutting down");
}

/// Completes at Ctrl-C; never when Ctrl-C cannot be listened for.
async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
