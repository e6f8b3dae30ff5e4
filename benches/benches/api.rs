//! Requests per second the HTTP API serves: `GET /runs?limit=100` and
//! `GET /run/{prefix}`, over a store of 10,000 finished runs like the ones the
//! server records (3 steps, 1–2 attempts each, about 1 KiB of logs per
//! attempt), for the in-memory and the SQLite store.
//!
//! The real application (`ci_server::api::app`) is served by poem on a loopback
//! listener (127.0.0.1, port 0) and asked with reqwest over keep-alive
//! connections, both on one two-thread tokio runtime in this process. Each
//! request's time runs from sending it to having read the whole body, checked
//! to be `200 OK`. `seq` asks one request at a time; `par8` keeps 8 in flight.
//! `/run/{prefix}` asks a different run each time, by a 12-digit prefix.
//! `store_only` times the store call behind each endpoint alone (no HTTP, no
//! JSON), to tell the store's share from the rest.
//!
//! Run: `cargo bench -p benches --bench api`.

// criterion's macros generate functions without doc comments.
#![allow(missing_docs)]

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use benches::runs::{commit_id, fill};
use ci_engine::{MemoryStore, RunQuery, RunStore};
use ci_server::api::{Api, app};
use ci_server::sqlite_store::SqliteStore;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// Runs in the store.
const RUNS: u64 = 10_000;

/// Requests in flight in the `par8` benchmarks.
const IN_FLIGHT: u64 = 8;

/// Ends the benchmark with a message: setup failed, or a request did.
fn fatal(what: &str, e: impl Display) -> ! {
    eprintln!("api: {what}: {e}");
    std::process::exit(2)
}

/// The app served on a loopback port until dropped.
struct Served {
    base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    /// Which run `/run/{prefix}` asks for next.
    next_run: AtomicU64,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Served {
    async fn start(store: Arc<dyn RunStore>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| fatal("binding 127.0.0.1:0", e));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| fatal("reading the listener's address", e));
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)
            .unwrap_or_else(|e| fatal("making the acceptor", e));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            app(Api::new(store, None)),
            async move {
                let _ = stopped.await;
            },
            Some(Duration::from_secs(1)),
        );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                fatal("the HTTP server", e);
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|e| fatal("building the HTTP client", e));
        Self {
            base: format!("http://{addr}"),
            client,
            stop: Some(stop),
            next_run: AtomicU64::new(0),
        }
    }

    fn runs_url(&self) -> String {
        format!("{}/runs?limit=100", self.base)
    }

    /// The URL of the next run to ask for, by a 12-digit prefix of its id.
    fn next_run_url(&self) -> String {
        let n = self.next_run.fetch_add(1, Ordering::Relaxed) % RUNS;
        format!("{}/run/{}", self.base, &commit_id(n)[..12])
    }
}

/// GETs `url` and reads the whole body; anything but `200 OK` ends the benchmark.
async fn get(client: reqwest::Client, url: String) -> usize {
    let response = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| fatal(&url, e));
    let status = response.status();
    let body = response.bytes().await.unwrap_or_else(|e| fatal(&url, e));
    if status != reqwest::StatusCode::OK {
        fatal(
            &url,
            format!("{status}: {}", String::from_utf8_lossy(&body)),
        );
    }
    body.len()
}

/// `IN_FLIGHT` requests at once, each to a URL from `url`.
async fn get_parallel(served: &Served, url: impl Fn(&Served) -> String) -> usize {
    let mut set = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        set.spawn(get(served.client.clone(), url(served)));
    }
    let mut bytes = 0;
    while let Some(joined) = set.join_next().await {
        bytes += joined.unwrap_or_else(|e| fatal("a request task", e));
    }
    bytes
}

async fn memory_store() -> (Arc<dyn RunStore>, Option<tempfile::TempDir>) {
    let store = MemoryStore::new();
    fill(&store, RUNS)
        .await
        .unwrap_or_else(|e| fatal("filling the memory store", e));
    (Arc::new(store), None)
}

async fn sqlite_store() -> (Arc<dyn RunStore>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fatal("creating a temporary directory", e));
    let store = SqliteStore::open(&dir.path().join("runs.db"))
        .await
        .unwrap_or_else(|e| fatal("opening the SQLite store", e));
    fill(&store, RUNS)
        .await
        .unwrap_or_else(|e| fatal("filling the SQLite store", e));
    (Arc::new(store), Some(dir))
}

fn api(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal("building the tokio runtime", e));
    for name in ["memory", "sqlite"] {
        let started = std::time::Instant::now();
        let (store, _dir) = rt.block_on(async {
            match name {
                "memory" => memory_store().await,
                _ => sqlite_store().await,
            }
        });
        let served = rt.block_on(Served::start(Arc::clone(&store)));
        let list_bytes = rt.block_on(get(served.client.clone(), served.runs_url()));
        let run_bytes = rt.block_on(get(served.client.clone(), served.next_run_url()));
        eprintln!(
            "api: {name} store with {RUNS} runs ready in {:.1?}; \
             /runs?limit=100 is {list_bytes} bytes, /run/{{prefix}} {run_bytes} bytes",
            started.elapsed()
        );

        let mut group = c.benchmark_group(format!("api/{name}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("runs_limit_100", "seq"), |b| {
            b.to_async(&rt)
                .iter(|| get(served.client.clone(), served.runs_url()));
        });
        group.bench_function(BenchmarkId::new("run_prefix", "seq"), |b| {
            b.to_async(&rt)
                .iter(|| get(served.client.clone(), served.next_run_url()));
        });
        group.throughput(Throughput::Elements(IN_FLIGHT));
        group.bench_function(BenchmarkId::new("runs_limit_100", "par8"), |b| {
            b.to_async(&rt)
                .iter(|| get_parallel(&served, Served::runs_url));
        });
        group.bench_function(BenchmarkId::new("run_prefix", "par8"), |b| {
            b.to_async(&rt)
                .iter(|| get_parallel(&served, Served::next_run_url));
        });
        // The store calls alone, without HTTP, JSON or the client, to tell
        // the store's share of each request from the rest.
        group.throughput(Throughput::Elements(1));
        let query = RunQuery {
            limit: 100,
            with_logs: false,
            with_steps: false,
            ..RunQuery::default()
        };
        group.bench_function(BenchmarkId::new("runs_limit_100", "store_only"), |b| {
            b.to_async(&rt).iter(|| async {
                store
                    .list_runs(&query)
                    .await
                    .unwrap_or_else(|e| fatal("list_runs", e))
                    .runs
                    .len()
            });
        });
        let next = AtomicU64::new(0);
        group.bench_function(BenchmarkId::new("run_prefix", "store_only"), |b| {
            b.to_async(&rt).iter(|| async {
                let n = next.fetch_add(1, Ordering::Relaxed) % RUNS;
                store
                    .get_run(&commit_id(n)[..12])
                    .await
                    .unwrap_or_else(|e| fatal("get_run", e))
                    .seq
            });
        });
        group.finish();
        drop(served);
    }
}

criterion_group!(benches, api);
criterion_main!(benches);
