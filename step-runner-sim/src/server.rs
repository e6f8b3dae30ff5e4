//! The accept loop: one tracked task per connection, so that a simulated crash
//! can end every connection at once (clients get an empty reply) and close the
//! listener (later connects are refused), as when the original process exits.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::SimConfig;
use crate::request_log::{RequestLog, RequestRecorder};
use crate::steps::Simulator;

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// The `shutdown` future completed.
    Shutdown,
    /// A test crashed the simulated runner.
    Crashed,
}

/// What every connection of one server shares.
pub struct Shared {
    /// The steps, their locks and randomness.
    pub simulator: Simulator,
    /// Where step requests, answers and the crash are recorded, if anywhere.
    pub recorder: Option<RequestRecorder>,
    crashed: AtomicBool,
    crash_signal: Notify,
}

impl Shared {
    /// Whether a crash has happened; no response may be written after it.
    pub fn has_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Marks the server as crashed and wakes the accept loop to tear it down.
    pub fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
        self.crash_signal.notify_one();
    }

    /// Never completes: a request that must get no answer waits here until its
    /// connection task is aborted.
    pub async fn never_answer<T>(&self) -> T {
        std::future::pending().await
    }
}

/// Serves on `listener` until `shutdown` completes (-> Shutdown) or a simulated crash (-> Crashed).
/// In-process, a crash ends this server only, never the host process, and looks the same to clients.
///
/// Either way the listener is closed first and then every open connection is
/// dropped without an answer, as when the original process dies. Fails with
/// `InvalidInput` when `config` does not validate.
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<ServeEnd> {
    serve_with(listener, config, None, shutdown).await
}

/// [`serve`], also recording every step request, answer and the crash in
/// `request_log` (the format is in `docs/step-runner-sim.md`): a `start` line
/// once a request's body is decoded, an `end` line just before its answer is
/// written, and a `crash` line before the server goes down.
///
/// Fails as [`serve`] does, and when the listener's address cannot be read.
pub async fn serve_with_request_log(
    listener: TcpListener,
    config: SimConfig,
    request_log: RequestLog,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<ServeEnd> {
    let recorder = RequestRecorder::new(request_log, listener.local_addr()?);
    serve_with(listener, config, Some(recorder), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    config: SimConfig,
    recorder: Option<RequestRecorder>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<ServeEnd> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let shared = Arc::new(Shared {
        simulator: Simulator::new(config),
        recorder,
        crashed: AtomicBool::new(false),
        crash_signal: Notify::new(),
    });
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let end = loop {
        tokio::select! {
            biased;
            () = shared.crash_signal.notified() => break ServeEnd::Crashed,
            () = &mut shutdown => break ServeEnd::Shutdown,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        let service = service_fn(move |request| {
                            crate::http::handle(Arc::clone(&shared), peer, request)
                        });
                        let served = http1::Builder::new()
                            .title_case_headers(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(error) = served {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning, and keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    connections.shutdown().await;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn start(
        config: SimConfig,
    ) -> (
        SocketAddr,
        JoinHandle<std::io::Result<ServeEnd>>,
        oneshot::Sender<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, config, async {
            let _ = stopped.await;
        }));
        (addr, server, stop)
    }

    /// Sends one POST and reads until the server closes; `Ok(empty)` or an
    /// error both mean "no response".
    async fn post(addr: SocketAddr, body: &str) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "POST /step/trigger HTTP/1.1\r\nHost: sim\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok(reply)
    }

    fn no_response(reply: &std::io::Result<Vec<u8>>) -> bool {
        match reply {
            Ok(bytes) => bytes.is_empty(),
            Err(_) => true,
        }
    }

    #[tokio::test]
    async fn a_crash_ends_only_this_server_and_answers_nobody() {
        let (addr, server, _stop) = start(SimConfig {
            crash_rate: 1.0,
            test_ms: Some(0),
            ..SimConfig::default()
        })
        .await;
        let in_flight = tokio::spawn(post(
            addr,
            r#"{"step_name":"build","simulate_build_time":5000}"#,
        ));
        let crash = timeout(DEADLINE, post(addr, r#"{"step_name":"test"}"#))
            .await
            .expect("the crashing request ends");
        assert!(no_response(&crash), "crashing test answered: {crash:?}");
        let end = timeout(DEADLINE, server)
            .await
            .expect("server ends")
            .expect("server task did not panic")
            .expect("serve succeeded");
        assert_eq!(end, ServeEnd::Crashed);
        let other = timeout(DEADLINE, in_flight)
            .await
            .expect("in-flight request ends")
            .expect("client task did not panic");
        assert!(no_response(&other), "in-flight build answered: {other:?}");
        let refused = TcpStream::connect(addr).await;
        assert!(
            matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "later connect not refused: {refused:?}"
        );
    }

    #[tokio::test]
    async fn without_a_crash_the_server_answers_until_shutdown() {
        let (addr, server, stop) = start(SimConfig {
            crashable: false,
            crash_rate: 1.0,
            test_ms: Some(0),
            ..SimConfig::default()
        })
        .await;
        for _ in 0..5 {
            let reply = post(addr, r#"{"step_name":"test"}"#)
                .await
                .expect("server answers");
            let text = String::from_utf8_lossy(&reply);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        }
        stop.send(()).expect("server still running");
        let end = timeout(DEADLINE, server)
            .await
            .expect("server ends")
            .expect("server task did not panic")
            .expect("serve succeeded");
        assert_eq!(end, ServeEnd::Shutdown);
        let refused = TcpStream::connect(addr).await;
        assert!(refused.is_err(), "listener still open after shutdown");
    }

    #[tokio::test]
    async fn an_invalid_config_is_rejected_before_serving() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let result = serve(
            listener,
            SimConfig {
                fail_rate: 2.0,
                ..SimConfig::default()
            },
            std::future::pending(),
        )
        .await;
        let error = result.expect_err("fail rate 2 accepted");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("fail rate"), "{error}");
    }
}
