//! The `step-runner-sim` binary: parses flags, sets up logging to stderr and
//! runs [`step_runner_sim::cli::run`], exiting with its code.

use clap::Parser;
use step_runner_sim::cli::{self, EXIT_BAD_CONFIG, SimArgs};

/// A simulator of the flaky step runner: POST /step/trigger runs lint, build or
/// test; builds fail half the time and one test in five crashes the process.
#[derive(Debug, Parser)]
#[command(name = "step-runner-sim", version, after_help = cli::ENV_HELP)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let reason = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("step-runner-sim: {reason} (see --help)");
            std::process::exit(EXIT_BAD_CONFIG);
        }
        Err(help_or_version) => {
            // --help or --version: clap prints to stdout and exits 0.
            help_or_version.exit();
        }
    };
    cli::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("step-runner-sim: cannot start the async runtime: {error}");
            std::process::exit(EXIT_BAD_CONFIG);
        }
    };
    let code = runtime.block_on(cli::run(cli.sim));
    std::process::exit(code);
}
