//! `HttpStepRunner` end to end against the real simulator (`step_runner_sim::serve`
//! in-process, on a loopback port): real answers, a real rejection, and a real
//! crash followed by a restart on the same port.

use std::net::SocketAddr;
use std::time::Duration;

use ci_engine::{RunnerError, StepRequest, StepRunner, StepVerdict};
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
            HttpRunnerConfig {
                step_timeout: DEADLINE,
                ..HttpRunnerConfig::default()
            },
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
        let output = runner.run(&request(step)).await.expect("the step runs");
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
    let output = sim
        .runner()
        .run(&request("build"))
        .await
        .expect("the build runs");
    assert_eq!(output.verdict, StepVerdict::Failure);
}

#[tokio::test]
async fn an_unknown_step_is_rejected_with_the_runner_text() {
    let sim = Sim::start(quick(SimConfig::default())).await;
    let error = sim
        .runner()
        .run(&request("Lint"))
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

    let error = runner.run(&request("test")).await.expect_err("it crashes");
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
    let end = tokio::time::timeout(DEADLINE, sim.server)
        .await
        .expect("the simulator stops after the crash")
        .expect("no panic")
        .expect("serve ran");
    assert_eq!(end, ServeEnd::Crashed);

    let error = runner
        .run(&request("lint"))
        .await
        .expect_err("nobody listens");
    assert!(matches!(error, RunnerError::Unreachable(_)), "{error}");

    let listener = TcpListener::bind(addr).await.expect("same port again");
    let _restarted = Sim::on(
        listener,
        quick(SimConfig {
            crashable: false,
            ..SimConfig::default()
        }),
    );
    let output = runner
        .run(&request("lint"))
        .await
        .expect("the restarted runner answers");
    assert_eq!(output.verdict, StepVerdict::Success);
}
