//! `RunnerSupervisor` with real child processes: the bundled simulator (the
//! `ci-server` binary's hidden `__step-runner-sim` argument, the production path),
//! really crashing and being restarted; and small `sh` scripts for programs that
//! fail to start, never listen, or find their port taken.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ci_engine::{Probe, RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};
use ci_server::http_runner::{HttpRunnerConfig, HttpStepRunner};
use ci_server::supervisor::{
    BUNDLED_SIM_ARG, RunnerSupervisor, SupervisorConfig, SupervisorError, SupervisorStatus,
};
use tokio::net::TcpStream;

const CI_SERVER: &str = env!("CARGO_BIN_EXE_ci-server");
const DEADLINE: Duration = Duration::from_secs(30);

/// The bundled simulator with `flags`.
fn bundled(flags: &[&str]) -> SupervisorConfig {
    let mut args = vec![BUNDLED_SIM_ARG.to_owned()];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    SupervisorConfig::new(CI_SERVER, args)
}

/// `sh -c script` with `$0` = `arg0`; the supervisor's `--addr ADDR` lands in `"$@"`.
fn shell(script: &str, arg0: &str) -> SupervisorConfig {
    SupervisorConfig::new("sh", vec!["-c".into(), script.into(), arg0.into()])
}

fn request(step: &str) -> StepRequest {
    StepRequest {
        step: step.into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        attempt: 1,
    }
}

fn runner_config() -> HttpRunnerConfig {
    HttpRunnerConfig::default()
}

/// Runs `step` on `runner`, failing the test after [`DEADLINE`]: the HTTP runner
/// has no timeout of its own once connected.
async fn run_within(runner: &HttpStepRunner, step: &str) -> Result<StepOutput, RunnerError> {
    tokio::time::timeout(DEADLINE, runner.run(&request(step)))
        .await
        .unwrap_or_else(|_| panic!("{step} got no answer within {DEADLINE:?}"))
}

/// Waits (bounded) until the supervisor's status satisfies `done`.
async fn wait_for(
    supervisor: &RunnerSupervisor,
    what: &str,
    done: impl FnMut(&SupervisorStatus) -> bool,
) -> SupervisorStatus {
    let mut status = supervisor.subscribe();
    match tokio::time::timeout(DEADLINE, status.wait_for(done)).await {
        Ok(Ok(status)) => status.clone(),
        Ok(Err(_)) => panic!("the supervisor stopped while waiting until {what}"),
        Err(_) => panic!("not {what} within {DEADLINE:?}: {:?}", supervisor.status()),
    }
}

/// Polls (bounded) until connecting to `addr` is refused.
async fn wait_until_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ if tokio::time::Instant::now() >= deadline => {
                panic!("{addr} still accepts connections after {DEADLINE:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn start_error(result: Result<RunnerSupervisor, SupervisorError>) -> String {
    match result {
        Ok(supervisor) => panic!("started: {:?}", supervisor.status()),
        Err(e @ SupervisorError::Start { .. }) => e.to_string(),
        Err(e) => panic!("wrong error: {e}"),
    }
}

#[tokio::test]
async fn the_bundled_simulator_starts_runs_steps_and_stops() {
    let supervisor = RunnerSupervisor::start(bundled(&["--no-crash", "--lint-ms", "1"]))
        .await
        .expect("the simulator starts");
    let status = supervisor.status();
    assert!(status.up);
    assert_eq!((status.restarts, status.exits), (0, 0));
    assert!(status.pid.is_some());
    let addr = supervisor.addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let runner = supervisor
        .step_runner("/repos/demo".into(), runner_config())
        .expect("runner");
    let output = run_within(&runner, "lint").await.expect("lint runs");
    assert_eq!(output.verdict, StepVerdict::Success);
    assert_eq!(
        runner.probe().await,
        Probe::Up,
        "the simulator answers probes"
    );

    supervisor.shutdown().await;
    wait_until_refused(addr).await;
    let probe = runner.probe().await;
    assert!(matches!(probe, Probe::Down(_)), "{probe:?}");
}

#[tokio::test]
async fn a_crashed_runner_is_restarted_on_the_same_port() {
    let supervisor = RunnerSupervisor::start(bundled(&[
        "--crash-rate",
        "1",
        "--test-ms",
        "0",
        "--lint-ms",
        "1",
    ]))
    .await
    .expect("the simulator starts");
    let addr = supervisor.addr();
    let first_pid = supervisor.status().pid;
    let runner = supervisor
        .step_runner("/repos/demo".into(), runner_config())
        .expect("runner");

    for round in 1..=2 {
        let error = run_within(&runner, "test").await.expect_err("it crashes");
        assert!(matches!(error, RunnerError::Lost(_)), "{error}");
        let status = wait_for(&supervisor, "restarted", |s| s.up && s.restarts >= round).await;
        assert_eq!(status.addr, addr, "the address must stay the same");
        assert_eq!(status.exits, round);
        assert_ne!(status.pid, first_pid);
        let output = run_within(&runner, "lint")
            .await
            .expect("the restarted runner answers");
        assert_eq!(output.verdict, StepVerdict::Success);
    }
    assert_eq!(supervisor.restarts(), 2);
    assert!(supervisor.is_up());
    supervisor.shutdown().await;
}

#[tokio::test]
async fn dropping_the_supervisor_kills_the_runner() {
    let supervisor = RunnerSupervisor::start(bundled(&["--no-crash"]))
        .await
        .expect("the simulator starts");
    let addr = supervisor.addr();
    drop(supervisor);
    wait_until_refused(addr).await;
}

#[tokio::test]
async fn bad_simulator_flags_are_a_clear_start_error() {
    let message = start_error(RunnerSupervisor::start(bundled(&["--crash-rate", "2"])).await);
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("probability"), "{message}");
}

#[tokio::test]
async fn a_program_that_exits_at_once_is_a_clear_start_error() {
    let message = start_error(
        RunnerSupervisor::start(shell("echo 'boom: no config' >&2; exit 3", "fake-runner")).await,
    );
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("boom: no config"), "{message}");
}

#[tokio::test]
async fn a_missing_program_is_a_clear_start_error() {
    let message = start_error(
        RunnerSupervisor::start(SupervisorConfig::new(
            "/nonexistent/step-runner",
            Vec::new(),
        ))
        .await,
    );
    assert!(message.contains("/nonexistent/step-runner"), "{message}");
    assert!(message.contains("cannot start the program"), "{message}");
}

#[tokio::test]
async fn inconsistent_timings_are_refused() {
    let config = SupervisorConfig {
        restart_backoff_min: Duration::from_secs(3),
        restart_backoff_max: Duration::from_secs(1),
        ..bundled(&[])
    };
    let result = RunnerSupervisor::start(config).await;
    assert!(
        matches!(result, Err(SupervisorError::Config(_))),
        "{result:?}"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_program_that_never_listens_times_out_and_is_killed() {
    let config = SupervisorConfig {
        start_timeout: Duration::from_millis(300),
        // `exec` keeps the pid, so the pid printed is the process to be killed.
        ..shell("echo \"pid $$\" >&2; exec sleep 30", "silent-runner")
    };
    let message = start_error(RunnerSupervisor::start(config).await);
    assert!(message.contains("did not print"), "{message}");
    let pid: u32 = message
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {message}"));
    // Killed: gone, or a zombie waiting to be reaped.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if matches!(state, None | Some("Z" | "X")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid {pid} still runs: {stat}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A script that runs the bundled simulator; from its second start on, it first
/// waits (bounded) for the file `$0.gate`, and fails `$0.failures` times before
/// really starting. `$0.started` marks the first start; `$0.attempts` counts later ones.
const GATED_SIM: &str = r#"
if [ -e "$0.started" ]; then
  echo x >> "$0.attempts"
  i=0
  while [ ! -e "$0.gate" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
  if [ "$(wc -l < "$0.attempts")" -le "$(cat "$0.failures" 2>/dev/null || echo 0)" ]; then
    echo "not today" >&2
    exit 1
  fi
fi
touch "$0.started"
exec $CI_SERVER_BIN __step-runner-sim --crash-rate 1 --test-ms 0 --lint-ms 1 "$@"
"#;

fn gated_sim(dir: &Path) -> SupervisorConfig {
    let script = GATED_SIM.replace("$CI_SERVER_BIN", &format!("'{CI_SERVER}'"));
    shell(&script, &dir.join("sim").display().to_string())
}

async fn crash(supervisor: &RunnerSupervisor) {
    let runner = supervisor
        .step_runner("/repos/demo".into(), runner_config())
        .expect("runner");
    let error = run_within(&runner, "test").await.expect_err("it crashes");
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
    wait_for(supervisor, "down", |s| s.exits >= 1).await;
}

#[tokio::test]
async fn a_runner_dying_at_start_is_retried_with_backoff_until_it_comes_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("sim.failures"), "3\n").expect("write");
    std::fs::write(dir.path().join("sim.gate"), "").expect("write");
    let config = SupervisorConfig {
        restart_backoff_min: Duration::from_millis(10),
        restart_backoff_max: Duration::from_millis(40),
        ..gated_sim(dir.path())
    };
    let supervisor = RunnerSupervisor::start(config)
        .await
        .expect("the simulator starts");
    let addr = supervisor.addr();
    crash(&supervisor).await;
    let status = wait_for(&supervisor, "up again", |s| s.up).await;
    assert_eq!(status.restarts, 1, "failed starts are not restarts");
    assert_eq!(
        status.exits, 1,
        "failed starts are not exits of a running runner"
    );
    assert_eq!(status.addr, addr);
    let attempts = std::fs::read_to_string(dir.path().join("sim.attempts")).expect("attempts");
    assert_eq!(
        attempts.lines().count(),
        4,
        "three failed starts, then one good"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_moves_the_runner_and_its_step_runner_follows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supervisor = RunnerSupervisor::start(gated_sim(dir.path()))
        .await
        .expect("the simulator starts");
    let old = supervisor.addr();
    let runner = supervisor
        .step_runner("/repos/demo".into(), runner_config())
        .expect("runner");
    crash(&supervisor).await;

    // While the restart waits at the gate, someone else takes the port.
    let squatter = bind_with_deadline(old).await;
    std::fs::write(dir.path().join("sim.gate"), "").expect("open the gate");

    let status = wait_for(&supervisor, "up again", |s| s.up).await;
    assert_ne!(
        status.addr, old,
        "the port was taken; the runner had to move"
    );
    assert_eq!(status.restarts, 1);
    assert_eq!(runner.addr().port(), status.addr.port());
    let output = run_within(&runner, "lint")
        .await
        .expect("the step runner follows the move");
    assert_eq!(output.verdict, StepVerdict::Success);
    drop(squatter);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_taken_fixed_port_is_a_clear_start_error() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("addr").port();
    let config = SupervisorConfig {
        port: Some(port),
        ..bundled(&["--no-crash"])
    };
    let message = start_error(RunnerSupervisor::start(config).await);
    assert!(message.contains("cannot listen"), "{message}");
    assert!(message.contains(&port.to_string()), "{message}");
}

/// Binds `addr`, retrying (bounded) while the dead runner's socket is released.
async fn bind_with_deadline(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("cannot bind {addr}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
