//! `HttpStepRunner` end to end against the real simulator (`step_runner_sim::serve`
//! in-process, on a loopback port): real answers, a real rejection, and a real
//! crash followed by a restart on the same port.

use std::net::SocketAddr;
use std::time::Duration;

use ci_engine::{Probe, RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};
use ci_server::http_runner::{HttpRunnerConfig, HttpStepRunner, RunnerAddr};
use step_runner_sim::{ServeEnd, SimConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const DEADLINE: Duration = Duration::from_secs(20);

/// A simulator serving in this process; stopped when dropped.
struct Sim {
    addr: SocketAddr,
    server: JoinHandle<std::io::Result<ServeEnd>>,
    _stop: oneshot::Sender<()>,
}

impl Sim {
    async fn start(config: SimConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::on(listener, config)
    }

    fn on(listener: TcpListener, config: SimConfig) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            server,
            _stop: stop,
        }
    }

    fn runner(&self) -> HttpStepRunner {
        HttpStepRunner::new(
            RunnerAddr::from_socket_addr(self.addr),
            "/repos/demo".into(),
            HttpRunnerConfig::default(),
        )
        .expect("runner builds")
    }
}

fn quick(config: SimConfig) -> SimConfig {
    SimConfig {
        lint_ms: Some(1),
        build_ms: Some(1),
        test_ms: Some(1),
        ..config
    }
}

fn request(step: &str) -> StepRequest {
    StepRequest {
        step: step.into(),
        commit: COMMIT.into(),
        attempt: 1,
    }
}

/// Runs `step`, failing the test after [`DEADLINE`]: the HTTP runner has no
/// timeout of its own once connected.
async fn run_within(runner: &HttpStepRunner, step: &str) -> Result<StepOutput, RunnerError> {
    tokio::time::timeout(DEADLINE, runner.run(&request(step)))
        .await
        .unwrap_or_else(|_| panic!("{step} got no answer within {DEADLINE:?}"))
}

#[tokio::test]
async fn every_step_runs_against_the_simulator() {
    let sim = Sim::start(quick(SimConfig {
        crashable: false,
        fail_rate: 0.0,
        ..SimConfig::default()
    }))
    .await;
    let runner = sim.runner();
    for (step, marker) in [
        ("lint", "Linting..."),
        ("build", "Building..."),
        ("test", "Testing..."),
    ] {
        let output = run_within(&runner, step).await.expect("the step runs");
        assert_eq!(output.verdict, StepVerdict::Success, "{step}");
        assert!(output.logs.contains(marker), "{step}: {}", output.logs);
        assert!(
            output.logs.contains("Repo path: /repos/demo"),
            "{}",
            output.logs
        );
        assert!(
            output.logs.contains(&format!("Commit hash: {COMMIT}")),
            "{}",
            output.logs
        );
        assert!(output.duration.is_some(), "{step}: no duration");
    }
}

#[tokio::test]
async fn a_failed_build_is_a_failure_verdict() {
    let sim = Sim::start(quick(SimConfig {
        crashable: false,
        fail_rate: 1.0,
        ..SimConfig::default()
    }))
    .await;
    let output = run_within(&sim.runner(), "build")
        .await
        .expect("the build runs");
    assert_eq!(output.verdict, StepVerdict::Failure);
}

#[tokio::test]
async fn an_unknown_step_is_rejected_with_the_runner_text() {
    let sim = Sim::start(quick(SimConfig::default())).await;
    let error = run_within(&sim.runner(), "Lint")
        .await
        .expect_err("case-sensitive step names");
    let RunnerError::Rejected(message) = &error else {
        panic!("expected Rejected, got {error}");
    };
    assert!(message.contains("Unknown step!"), "{message}");
}

#[tokio::test]
async fn a_crash_is_lost_then_unreachable_until_restarted_on_the_same_port() {
    let sim = Sim::start(quick(SimConfig {
        crash_rate: 1.0,
        ..SimConfig::default()
    }))
    .await;
    let addr = sim.addr;
    let runner = sim.runner();

    let error = run_within(&runner, "test").await.expect_err("it crashes");
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
    let end = tokio::time::timeout(DEADLINE, sim.server)
        .await
        .expect("the simulator stops after the crash")
        .expect("no panic")
        .expect("serve ran");
    assert_eq!(end, ServeEnd::Crashed);

    let error = run_within(&runner, "lint")
        .await
        .expect_err("nobody listens");
    assert!(matches!(error, RunnerError::Unreachable(_)), "{error}");
    let probe = runner.probe().await;
    assert!(
        matches!(&probe, Probe::Down(r) if r.contains("cannot connect")),
        "{probe:?}"
    );

    let listener = TcpListener::bind(addr).await.expect("same port again");
    let _restarted = Sim::on(
        listener,
        quick(SimConfig {
            crashable: false,
            ..SimConfig::default()
        }),
    );
    assert_eq!(
        runner.probe().await,
        Probe::Up,
        "the restarted runner answers probes"
    );
    let output = run_within(&runner, "lint")
        .await
        .expect("the restarted runner answers");
    assert_eq!(output.verdict, StepVerdict::Success);
}

/// The probe's request, `GET /`, is answered like every path but the step
/// endpoint, as the original runner does: `404 page not found`, and no step runs.
#[tokio::test]
async fn the_simulator_answers_a_probe_without_running_a_step() {
    let sim = Sim::start(quick(SimConfig {
        crashable: false,
        ..SimConfig::default()
    }))
    .await;
    let response = reqwest::get(format!("http://{}/", sim.addr))
        .await
        .expect("GET / answers");
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.text().await.expect("a body").trim(),
        "404 page not found"
    );
    assert_eq!(sim.runner().probe().await, Probe::Up);
}
