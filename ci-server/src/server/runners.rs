//! The server's runners: which ones it drives ([`RunnerChoice`]), starting them
//! (external runners need nothing started; bundled simulators are started, each
//! under its own [`RunnerSupervisor`]), the engine's [`RunnerPool`] made of them,
//! and the directory behind `GET /runners` that says where each one is now.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use ci_engine::{PoolError, PoolMember, RunnerPool};
use tokio::sync::watch;
use tracing::info;

use super::StartupError;
use crate::api::runners::{RunnerDirectory, RunnerInfo};
use crate::http_runner::{HttpRunnerConfig, HttpStepRunner, RunnerAddr};
use crate::supervisor::{RunnerSupervisor, SupervisorConfig, SupervisorStatus};

/// A step runner someone else runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalRunner {
    /// Where it listens. Its id in the pool (recorded on every attempt it runs)
    /// is this address as it displays, e.g. `http://127.0.0.1:8080`.
    pub addr: RunnerAddr,
    /// The path of the watched repository on the runner's machine, sent with
    /// every step. It is text in the protocol and need not exist on the
    /// server's machine. `None`: the server's own repository path (a runner on
    /// the same machine, or one that mounts it at the same place).
    pub repo_path: Option<String>,
}

impl ExternalRunner {
    /// The runner at `addr`, told the server's own repository path.
    pub fn new(addr: RunnerAddr) -> Self {
        Self {
            addr,
            repo_path: None,
        }
    }

    /// The runner's id in the pool: its address as it displays.
    pub fn id(&self) -> String {
        self.addr.to_string()
    }
}

/// Which step runners the server drives; they form the engine's pool, in this
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunnerChoice {
    /// Runners someone else runs. At least one; no two at the same address
    /// (checked by [`Server::start`](super::Server::start)).
    External(Vec<ExternalRunner>),
    /// `count` bundled simulators, each started (and restarted when it dies)
    /// as a child process `program args… --addr 127.0.0.1:PORT` on a free
    /// loopback port of its own, with the ids `sim-1` … `sim-N`.
    Bundled {
        /// The executable (normally this binary).
        program: PathBuf,
        /// Its arguments (normally the hidden subcommand and simulator flags),
        /// the same for every simulator.
        args: Vec<String>,
        /// How many simulators.
        count: NonZeroUsize,
    },
}

impl RunnerChoice {
    /// One external runner at `addr`, told the server's repository path.
    pub fn external(addr: RunnerAddr) -> Self {
        Self::External(vec![ExternalRunner::new(addr)])
    }

    /// Checks what can be checked before anything starts: at least one
    /// external runner, and no address twice.
    ///
    /// # Errors
    /// [`PoolError::Empty`], or [`PoolError::DuplicateId`] naming the address.
    pub fn validate(&self) -> Result<(), PoolError> {
        match self {
            Self::External(runners) if runners.is_empty() => Err(PoolError::Empty),
            Self::External(runners) => {
                for (i, runner) in runners.iter().enumerate() {
                    if runners[..i].iter().any(|r| r.addr == runner.addr) {
                        return Err(PoolError::DuplicateId(runner.id()));
                    }
                }
                Ok(())
            }
            Self::Bundled { .. } => Ok(()),
        }
    }

    /// One bundled simulator, `program args…`.
    pub fn bundled(program: PathBuf, args: Vec<String>) -> Self {
        Self::Bundled {
            program,
            args,
            count: NonZeroUsize::MIN,
        }
    }
}

/// The id of the `n`th bundled simulator (from 1): `sim-N`.
pub fn bundled_id(n: usize) -> String {
    format!("sim-{n}")
}

/// Where a runner is: fixed, or wherever its supervisor has it now.
#[derive(Clone, Debug)]
enum Place {
    Fixed(RunnerAddr),
    Supervised {
        addr: watch::Receiver<RunnerAddr>,
        status: watch::Receiver<SupervisorStatus>,
    },
}

/// One runner of the pool as the server set it up; cheap to clone, and reads
/// the current address and restarts of a bundled simulator when asked.
#[derive(Clone, Debug)]
pub(super) struct RunnerEntry {
    id: String,
    repo_path: String,
    place: Place,
}

impl RunnerEntry {
    /// The runner as it is now.
    pub(super) fn info(&self) -> RunnerInfo {
        let (address, bundled, restarts) = match &self.place {
            Place::Fixed(addr) => (addr.to_string(), false, None),
            Place::Supervised { addr, status } => (
                addr.borrow().to_string(),
                true,
                Some(status.borrow().restarts),
            ),
        };
        RunnerInfo {
            id: self.id.clone(),
            address,
            repo_path: self.repo_path.clone(),
            bundled,
            restarts,
        }
    }
}

/// The runners once started: the engine's pool, what the directory reports,
/// and the supervisors to stop at shutdown (none for external runners).
pub(super) struct StartedRunners {
    pub(super) pool: RunnerPool,
    pub(super) entries: Vec<RunnerEntry>,
    pub(super) supervisors: Vec<RunnerSupervisor>,
}

/// Sets up the runners of `choice`: an HTTP client for each external runner, or
/// the bundled simulators started side by side (each returns once it listens).
/// `server_repo` is the repository path told to runners that name none.
///
/// # Errors
/// [`StartupError::Pool`] for no runners or two at one address,
/// [`StartupError::Runner`] when an HTTP client cannot be built,
/// [`StartupError::Simulator`] when a simulator does not start (the ones
/// already started are stopped).
pub(super) async fn start_runners(
    choice: RunnerChoice,
    server_repo: &str,
    http: &HttpRunnerConfig,
) -> Result<StartedRunners, StartupError> {
    let mut members = Vec::new();
    let mut entries = Vec::new();
    let mut supervisors = Vec::new();
    match choice {
        RunnerChoice::External(runners) => {
            for runner in runners {
                let id = runner.id();
                let repo_path = runner.repo_path.unwrap_or_else(|| server_repo.to_owned());
                let client =
                    HttpStepRunner::new(runner.addr.clone(), repo_path.clone(), http.clone())?;
                members.push(PoolMember {
                    id: id.clone(),
                    runner: Arc::new(client),
                });
                entries.push(RunnerEntry {
                    id,
                    repo_path,
                    place: Place::Fixed(runner.addr),
                });
            }
        }
        RunnerChoice::Bundled {
            program,
            args,
            count,
        } => {
            let starts = (1..=count.get()).map(|n| {
                let config =
                    SupervisorConfig::new(program.clone(), args.clone()).named(bundled_id(n));
                async move {
                    RunnerSupervisor::start(config).await.map_err(|source| {
                        StartupError::Simulator {
                            id: bundled_id(n),
                            source,
                        }
                    })
                }
            });
            // Dropping the supervisors already up (when another fails) stops them.
            supervisors = futures::future::try_join_all(starts).await?;
            for (i, supervisor) in supervisors.iter().enumerate() {
                let id = bundled_id(i + 1);
                let client = supervisor.step_runner(server_repo.to_owned(), http.clone())?;
                members.push(PoolMember {
                    id: id.clone(),
                    runner: Arc::new(client),
                });
                entries.push(RunnerEntry {
                    id,
                    repo_path: server_repo.to_owned(),
                    place: Place::Supervised {
                        addr: supervisor.runner_addr(),
                        status: supervisor.subscribe(),
                    },
                });
            }
        }
    }
    let pool = RunnerPool::new(members)?;
    for entry in &entries {
        let info = entry.info();
        info!(
            runner = %info.id,
            address = %info.address,
            repo_path = %info.repo_path,
            bundled = info.bundled,
            "runner in the pool"
        );
    }
    Ok(StartedRunners {
        pool,
        entries,
        supervisors,
    })
}

/// The directory the API reads for `GET /runners`: every runner in pool order,
/// with a bundled simulator's current address and restarts.
pub(super) fn directory(entries: Vec<RunnerEntry>) -> RunnerDirectory {
    Arc::new(move || entries.iter().map(RunnerEntry::info).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> RunnerAddr {
        s.parse().expect("a valid address")
    }

    #[tokio::test]
    async fn external_runners_keep_their_order_ids_and_repo_paths() {
        let choice = RunnerChoice::External(vec![
            ExternalRunner {
                addr: addr(":8081"),
                repo_path: Some("/srv/repo".into()),
            },
            ExternalRunner::new(addr("runner.lan:8082")),
        ]);
        let http = HttpRunnerConfig::default();
        let started = start_runners(choice, "/here/repo", &http)
            .await
            .expect("two runners");
        let ids: Vec<&str> = started
            .pool
            .members()
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(ids, ["http://127.0.0.1:8081", "http://runner.lan:8082"]);
        assert!(started.supervisors.is_empty());
        let infos = directory(started.entries)();
        assert_eq!(
            infos,
            [
                RunnerInfo {
                    id: "http://127.0.0.1:8081".into(),
                    address: "http://127.0.0.1:8081".into(),
                    repo_path: "/srv/repo".into(),
                    bundled: false,
                    restarts: None,
                },
                RunnerInfo {
                    id: "http://runner.lan:8082".into(),
                    address: "http://runner.lan:8082".into(),
                    repo_path: "/here/repo".into(),
                    bundled: false,
                    restarts: None,
                },
            ]
        );
    }

    #[tokio::test]
    async fn no_runners_or_one_address_twice_is_refused() {
        let http = HttpRunnerConfig::default();
        let empty = start_runners(RunnerChoice::External(Vec::new()), "/r", &http).await;
        assert!(
            matches!(empty, Err(StartupError::Pool(ci_engine::PoolError::Empty))),
            "{:?}",
            empty.err()
        );
        let twice = RunnerChoice::External(vec![
            ExternalRunner::new(addr(":8080")),
            ExternalRunner::new(addr("http://127.0.0.1:8080/")),
        ]);
        let error = start_runners(twice, "/r", &http)
            .await
            .err()
            .expect("refused");
        let line = error.to_string();
        assert!(line.contains("http://127.0.0.1:8080"), "{line}");
        assert!(line.contains("twice"), "{line}");
    }

    #[test]
    fn bundled_ids_count_from_one() {
        assert_eq!(bundled_id(1), "sim-1");
        assert_eq!(bundled_id(12), "sim-12");
        let one = RunnerChoice::bundled(PathBuf::from("/bin/self"), Vec::new());
        assert!(matches!(one, RunnerChoice::Bundled { count, .. } if count.get() == 1));
    }
}
