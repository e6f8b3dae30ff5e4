//! A hand-written runner that follows a script: each request is answered
//! (after a set time, with a set result) or never answered, and the runner
//! logs when each request started and ended on it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ci_engine::{Probe, RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};
use tokio::time::Instant;

/// A successful answer with no duration.
pub fn ok() -> Result<StepOutput, RunnerError> {
    Ok(StepOutput {
        verdict: StepVerdict::Success,
        logs: "logs".into(),
        duration: None,
    })
}

/// When each request started and ended on a scripted runner.
pub type Log = Arc<Mutex<Vec<(Instant, String, &'static str)>>>;

/// What a scripted runner does with one request.
pub type Script = dyn Fn(&StepRequest, u32) -> Action + Send + Sync;

pub enum Action {
    /// Answer after this long.
    Answer(Duration, Result<StepOutput, RunnerError>),
    /// Never answer.
    Hang,
}

/// A runner that follows a script and logs when each request started and
/// ended on it (ends of requests the engine gave up on included).
pub struct Scripted {
    script: Box<Script>,
    probe: Box<dyn Fn() -> Probe + Send + Sync>,
    calls: Mutex<u32>,
    log: Log,
}

impl Scripted {
    pub fn new(script: Box<Script>, probe: Box<dyn Fn() -> Probe + Send + Sync>) -> Arc<Self> {
        Arc::new(Self {
            script,
            probe,
            calls: Mutex::new(0),
            log: Arc::new(Mutex::new(Vec::new())),
        })
    }

    pub fn log(&self) -> Vec<(Instant, String, &'static str)> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait]
impl StepRunner for Scripted {
    async fn run(&self, request: &StepRequest) -> Result<StepOutput, RunnerError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        let name = format!("{}/{}#{}", request.commit, request.step, request.attempt);
        let action = (self.script)(request, n);
        if let Action::Answer(d, Err(RunnerError::Unreachable(_))) = &action {
            assert!(d.is_zero());
        } else {
            self.log
                .lock()
                .unwrap()
                .push((Instant::now(), name.clone(), "start"));
        }
        // The end is logged even if the engine drops this future.
        struct End(Log, String);
        impl Drop for End {
            fn drop(&mut self) {
                self.0
                    .lock()
                    .unwrap()
                    .push((Instant::now(), self.1.clone(), "end"));
            }
        }
        match action {
            Action::Answer(d, result) => {
                if matches!(result, Err(RunnerError::Unreachable(_))) {
                    return result;
                }
                let _end = End(self.log.clone(), name);
                tokio::time::sleep(d).await;
                result
            }
            Action::Hang => {
                let _end = End(self.log.clone(), name);
                std::future::pending().await
            }
        }
    }

    async fn probe(&self) -> Probe {
        (self.probe)()
    }
}
