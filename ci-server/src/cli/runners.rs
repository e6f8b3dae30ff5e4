//! The runner options of the command line (`RUNNER_ADDR`, `--runner`, `--sims`,
//! `--sim-args`) turned into a [`RunnerChoice`].
//!
//! A runner is written `ADDR[,repo=PATH]`: the address as `RUNNER_ADDR` takes
//! it, then options separated by commas. The only option is `repo=PATH`, the
//! repository's path on the runner's machine (so a path with a comma cannot be
//! given). Runners keep the order they are written in, the positional address
//! first.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::Parser;

use super::{CliError, clap_error_line};
use crate::http_runner::RunnerAddr;
use crate::server::{ExternalRunner, RunnerChoice};

/// The option of a runner that names its repository path.
const REPO_OPTION: &str = "repo";

/// What the command line says about runners.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunnerArgs<'a> {
    /// `RUNNER_ADDR`.
    pub(super) positional: Option<&'a str>,
    /// Every `--runner`, in order.
    pub(super) runners: &'a [String],
    /// `--sims`, when given.
    pub(super) sims: Option<u32>,
    /// `--sim-args`, when given.
    pub(super) sim_args: Option<&'a str>,
}

impl RunnerArgs<'_> {
    /// Whether any external runner is named.
    pub(super) fn names_external(&self) -> bool {
        self.positional.is_some() || !self.runners.is_empty()
    }
}

/// Checks the runner options together and builds the choice: the external
/// runners named, or `--sims` bundled simulators (1 by default) run as
/// `program` with the hidden subcommand.
pub(super) fn runner_choice(
    args: RunnerArgs<'_>,
    program: PathBuf,
) -> Result<RunnerChoice, CliError> {
    if args.names_external() {
        if args.sims.is_some() {
            return Err(CliError::SimsWithRunner);
        }
        if args.sim_args.is_some() {
            return Err(CliError::SimArgsWithRunner);
        }
        let mut runners: Vec<(&str, ExternalRunner)> = Vec::new();
        for input in args
            .positional
            .into_iter()
            .chain(args.runners.iter().map(String::as_str))
        {
            let runner = parse_runner_spec(input)?;
            if let Some((first, _)) = runners.iter().find(|(_, r)| r.addr == runner.addr) {
                return Err(CliError::DuplicateRunner {
                    addr: runner.addr.to_string(),
                    first: (*first).to_owned(),
                    second: input.to_owned(),
                });
            }
            runners.push((input, runner));
        }
        return Ok(RunnerChoice::External(
            runners.into_iter().map(|(_, r)| r).collect(),
        ));
    }
    let extra = match args.sim_args {
        Some(s) => check_sim_args(s)?,
        None => Vec::new(),
    };
    let sim_args = crate::supervisor::bundled_sim_args(extra);
    // clap has checked that --sims is at least 1.
    let count = args
        .sims
        .and_then(|n| usize::try_from(n).ok())
        .and_then(NonZeroUsize::new)
        .unwrap_or(NonZeroUsize::MIN);
    Ok(RunnerChoice::Bundled {
        program,
        args: sim_args,
        count,
    })
}

/// Parses one runner, `ADDR[,repo=PATH]`.
///
/// # Errors
/// [`CliError::RunnerAddr`] when the address does not parse;
/// [`CliError::RunnerOption`] for an option that is not `KEY=VALUE`, a key
/// other than `repo`, `repo` given twice, or an empty path.
pub fn parse_runner_spec(input: &str) -> Result<ExternalRunner, CliError> {
    let mut parts = input.split(',');
    let addr: RunnerAddr = parts.next().unwrap_or_default().parse()?;
    let option_error = |problem: String| CliError::RunnerOption {
        input: input.to_owned(),
        problem,
    };
    let mut runner = ExternalRunner::new(addr);
    for option in parts {
        let Some((key, value)) = option.split_once('=') else {
            return Err(option_error(format!(
                "`{option}` is not an option; write {REPO_OPTION}=PATH"
            )));
        };
        let (key, value) = (key.trim(), value.trim());
        if key != REPO_OPTION {
            return Err(option_error(format!(
                "unknown option `{key}`; the only one is {REPO_OPTION}=PATH"
            )));
        }
        if value.is_empty() {
            return Err(option_error(format!("{REPO_OPTION}= needs a path")));
        }
        if runner.repo_path.is_some() {
            return Err(option_error(format!("{REPO_OPTION}= is given twice")));
        }
        runner.repo_path = Some(value.to_owned());
    }
    Ok(runner)
}

/// Only to parse `--sim-args` with the simulator's own rules.
#[derive(Debug, Parser)]
#[command(name = "--sim-args", no_binary_name = true, disable_help_flag = true)]
struct SimArgsParser {
    #[command(flatten)]
    args: step_runner_sim::cli::SimArgs,
}

/// Splits `--sim-args` on whitespace and checks it with the simulator's parser.
fn check_sim_args(input: &str) -> Result<Vec<String>, CliError> {
    let words: Vec<String> = input.split_whitespace().map(str::to_owned).collect();
    if let Err(e) = SimArgsParser::try_parse_from(&words) {
        return Err(CliError::SimArgs {
            input: input.to_owned(),
            reason: clap_error_line(&e.to_string()),
        });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runner_may_name_its_repository() {
        let r = parse_runner_spec("http://host:8080,repo=/srv/repo").expect("valid");
        assert_eq!(r.addr.to_string(), "http://host:8080");
        assert_eq!(r.repo_path.as_deref(), Some("/srv/repo"));
        let r = parse_runner_spec(":8080").expect("valid");
        assert_eq!(r.repo_path, None);
        assert_eq!(r.id(), "http://127.0.0.1:8080");
    }

    #[test]
    fn bad_runner_options_are_one_line_errors_naming_the_runner() {
        for (input, needle) in [
            (":8080,user=me", "unknown option `user`"),
            (":8080,repo=", "repo= needs a path"),
            (":8080,repo=  ", "repo= needs a path"),
            (":8080,repo=/a,repo=/b", "given twice"),
            (":8080,/srv/repo", "is not an option"),
            (":8080,", "is not an option"),
        ] {
            let err = parse_runner_spec(input).expect_err(input);
            assert!(
                matches!(err, CliError::RunnerOption { .. }),
                "{input}: {err}"
            );
            let line = err.to_string();
            assert!(line.contains(needle), "{input}: {line}");
            assert!(line.contains(&format!("{input:?}")), "{input}: {line}");
            assert!(!line.contains('\n'), "{line}");
        }
        let err = parse_runner_spec("nowhere,repo=/x").expect_err("no port");
        assert!(matches!(err, CliError::RunnerAddr(_)), "{err}");
    }
}
