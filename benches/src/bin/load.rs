//! The timing and JSON half of `benches/load.sh`: it talks to a running
//! `ci-server` over HTTP (and to the server's git repository with gix) where a
//! shell would cost milliseconds per step. The script does the rest (building,
//! starting and stopping servers, `git fast-import`, `wrk`, the table).
//!
//! `load SUBCOMMAND --key value ...`; each subcommand prints its results as
//! `key=value` lines on stdout, its progress on stderr, and on failure one line
//! `load SUBCOMMAND: what went wrong` on stderr and exit code 1 (2 for bad
//! arguments).
//!
//! - `burst --url URL --repo GIT_DIR --branch NAME --to SHA --runs N --pid PID --timeout SECS`:
//!   listens on `GET /events`, moves the branch to SHA in one ref update, times
//!   until the first run is queued (as seen on the stream, and as the oldest
//!   run's `created_at` says), then until the store holds N runs and none is
//!   unfinished; the server's `VmHWM` and `VmRSS` (process PID) at the end.
//! - `latency --url URL --repo GIT_DIR --branches main|all --samples K --timeout SECS [--pid PID]`:
//!   K times, one new commit on one branch (the named one, or branches spread
//!   over all of them) and one ref update, timed until `run_queued` for that
//!   commit arrives on `GET /events`; the run finishes before the next sample.
//! - `trickle --repo GIT_DIR --branch NAME --every-ms MS`: one commit on the
//!   branch every MS milliseconds until SIGTERM or Ctrl-C.
//! - `prefixes --url URL --len L --out FILE`: the first L hex digits of every
//!   run's commit (read page by page from `GET /runs`), unambiguous ones only,
//!   shuffled, one a line.
//! - `cursor --url URL --offset K --limit L`: the `next` cursor of that page of
//!   `GET /runs`, percent-encoded (`cursor=absent` when the answer has no such
//!   field).
//! - `settle --url URL --runs N --timeout SECS`: waits until the store holds N
//!   runs and none is unfinished.

#![allow(
    clippy::print_stdout,
    reason = "a driver prints its results on stdout for the script"
)]

use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gix::ObjectId;
use gix::refs::Target;
use gix::refs::transaction::PreviousValue;
use serde_json::Value;

/// What the driver's steps return: a message for the person running it.
type Outcome<T> = Result<T, String>;

/// Turns an error into a message that says what was being done.
fn context<E: Display>(what: impl Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// How often the store is asked whether the runs are done.
const POLL: Duration = Duration::from_millis(50);
/// Bound on connecting to the event stream and on one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        usage_error("a subcommand is needed: burst, latency, trickle, prefixes, cursor, settle");
    };
    let rest: Vec<String> = args.collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&command, format!("building the tokio runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match command.as_str() {
            "burst" => burst(&options(&command, &rest, BURST_KEYS)).await,
            "latency" => latency(&options(&command, &rest, LATENCY_KEYS)).await,
            "trickle" => trickle(&options(&command, &rest, TRICKLE_KEYS)).await,
            "prefixes" => prefixes(&options(&command, &rest, PREFIXES_KEYS)).await,
            "cursor" => cursor(&options(&command, &rest, CURSOR_KEYS)).await,
            "settle" => settle_command(&options(&command, &rest, SETTLE_KEYS)).await,
            other => usage_error(&format!("unknown subcommand {other:?}")),
        }
    });
    if let Err(e) = result {
        fail(&command, e);
    }
}

/// Ends the driver after a failure.
fn fail(command: &str, message: impl Display) -> ! {
    eprintln!("load {command}: {message}");
    std::process::exit(1)
}

/// Ends the driver after bad arguments.
fn usage_error(message: &str) -> ! {
    eprintln!("load: {message} (see the comment at the top of benches/src/bin/load.rs)");
    std::process::exit(2)
}

const BURST_KEYS: &[&str] = &["url", "repo", "branch", "to", "runs", "pid", "timeout"];
const LATENCY_KEYS: &[&str] = &["url", "repo", "branches", "samples", "timeout", "pid"];
const TRICKLE_KEYS: &[&str] = &["repo", "branch", "every-ms"];
const PREFIXES_KEYS: &[&str] = &["url", "len", "out"];
const CURSOR_KEYS: &[&str] = &["url", "offset", "limit"];
const SETTLE_KEYS: &[&str] = &["url", "runs", "timeout"];

/// The `--key value` options of a subcommand.
struct Options {
    values: HashMap<String, String>,
}

/// Parses `--key value` pairs, each key one of `allowed`; exits on anything
/// else.
fn options(command: &str, args: &[String], allowed: &[&str]) -> Options {
    let mut values = HashMap::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(key) = arg.strip_prefix("--").filter(|k| allowed.contains(k)) else {
            usage_error(&format!(
                "{command}: unexpected argument {arg:?}; it takes --{}",
                allowed.join(", --")
            ));
        };
        let Some(value) = it.next() else {
            usage_error(&format!("{command}: --{key} needs a value"));
        };
        values.insert(key.to_owned(), value.clone());
    }
    Options { values }
}

impl Options {
    fn text(&self, key: &str) -> Outcome<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("--{key} is required"))
    }

    fn number<T: FromStr>(&self, key: &str) -> Outcome<T>
    where
        T::Err: Display,
    {
        let text = self.text(key)?;
        text.parse()
            .map_err(|e| format!("--{key} {text:?} is not a number: {e}"))
    }

    fn optional_number<T: FromStr>(&self, key: &str) -> Outcome<Option<T>>
    where
        T::Err: Display,
    {
        match self.values.contains_key(key) {
            true => self.number(key).map(Some),
            false => Ok(None),
        }
    }

    fn seconds(&self, key: &str) -> Outcome<Duration> {
        let secs: f64 = self.number(key)?;
        Duration::try_from_secs_f64(secs).map_err(|e| format!("--{key} {secs}: {e}"))
    }
}

/// An HTTP client for the server on loopback: no proxy from the environment.
fn client() -> Outcome<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(context("building the HTTP client"))
}

/// `GET url` answered 200 with a JSON body.
async fn get_json(client: &reqwest::Client, url: &str) -> Outcome<Value> {
    let response = client
        .get(url)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(context(format!("GET {url}")))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(context(format!("reading the answer to GET {url}")))?;
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(context(format!("the answer to GET {url} is not JSON")))
}

/// The `total` of `GET /runs?limit=1&FILTER`.
async fn total(client: &reqwest::Client, base: &str, filter: &str) -> Outcome<u64> {
    let url = format!("{base}/runs?limit=1{filter}");
    let page = get_json(client, &url).await?;
    page.get("total")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("GET {url}: no numeric `total` in {page}"))
}

/// How many runs the store holds, and how many of them are unfinished.
async fn progress(client: &reqwest::Client, base: &str) -> Outcome<(u64, u64)> {
    // All first: a run counted there is counted again below while unfinished.
    let all = total(client, base, "").await?;
    let queued = total(client, base, "&status=queued").await?;
    let running = total(client, base, "&status=running").await?;
    Ok((all, queued + running))
}

/// Waits until the store holds at least `runs` runs and none is unfinished;
/// returns how many it holds. Progress on stderr every 10 s, with the resident
/// set of process `pid` when given.
async fn settle(
    client: &reqwest::Client,
    base: &str,
    runs: u64,
    timeout: Duration,
    pid: Option<u32>,
) -> Outcome<u64> {
    let start = Instant::now();
    let mut said = start;
    loop {
        let (all, unfinished) = progress(client, base).await?;
        if all >= runs && unfinished == 0 {
            return Ok(all);
        }
        let finished = all.saturating_sub(unfinished);
        if start.elapsed() >= timeout {
            return Err(format!(
                "timed out after {} s waiting for {runs} runs to finish; {finished} done \
                 ({all} in the store, {unfinished} unfinished)",
                timeout.as_secs()
            ));
        }
        if said.elapsed() >= Duration::from_secs(10) {
            said = Instant::now();
            let rss = pid
                .and_then(|p| memory(p).ok())
                .map(|m| format!("; server VmRSS {:.0} MiB (anonymous {:.0})", m.rss, m.anon))
                .unwrap_or_default();
            eprintln!(
                "load: {finished} of {runs} runs finished after {:.0} s ({all} in the store){rss}",
                start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A client of `GET /events`: reads server-sent events one at a time.
struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    /// Connects and waits for the stream's `connected` event.
    async fn open(client: &reqwest::Client, base: &str) -> Outcome<Self> {
        let url = format!("{base}/events");
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.get(&url).send())
            .await
            .map_err(|_| format!("GET {url}: no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(context(format!("GET {url}")))?;
        if !response.status().is_success() {
            return Err(format!("GET {url} answered {}", response.status()));
        }
        let mut events = Self {
            response,
            buffer: Vec::new(),
        };
        let first = events.next_within(REQUEST_TIMEOUT).await?;
        if kind(&first) != "connected" {
            return Err(format!(
                "the event stream began with {first} instead of `connected`"
            ));
        }
        Ok(events)
    }

    /// The data (JSON) of the next event that has some.
    async fn next(&mut self) -> Outcome<Value> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    // A comment (keep-alive) or an event without data.
                    continue;
                }
                let data = data.join("\n");
                return serde_json::from_str(&data)
                    .map_err(context(format!("an event's data is not JSON: {data}")));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self
                    .buffer
                    .extend(bytes.iter().copied().filter(|&b| b != b'\r')),
                Ok(None) => return Err("the server closed the event stream".to_owned()),
                Err(e) => return Err(format!("reading the event stream: {e}")),
            }
        }
    }

    /// [`Events::next`], bounded.
    async fn next_within(&mut self, limit: Duration) -> Outcome<Value> {
        tokio::time::timeout(limit, self.next())
            .await
            .map_err(|_| format!("no event within {limit:?}"))?
    }
}

/// An event's `type`.
fn kind(event: &Value) -> &str {
    event.get("type").and_then(Value::as_str).unwrap_or("")
}

/// An event's `commit`.
fn commit_of(event: &Value) -> &str {
    event.get("commit").and_then(Value::as_str).unwrap_or("")
}

/// The resident memory of a process, in MiB, from `/proc/PID/status`.
struct Memory {
    /// Peak resident set (`VmHWM`).
    hwm: f64,
    /// Resident set now (`VmRSS`).
    rss: f64,
    /// Its anonymous part (`RssAnon`): heap and stacks, not mapped files.
    anon: f64,
}

/// The resident memory of process `pid`.
fn memory(pid: u32) -> Outcome<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(context(format!("reading {path}")))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .ok_or_else(|| format!("no {name} in {path}"))
    };
    Ok(Memory {
        hwm: field("VmHWM:")?,
        rss: field("VmRSS:")?,
        anon: field("RssAnon:")?,
    })
}

/// Opens the repository at `path` (a bare repository or a work tree).
fn open_repo(path: &str) -> Outcome<gix::Repository> {
    gix::open(Path::new(path)).map_err(context(format!("opening the repository {path}")))
}

/// The commit `refs/heads/{branch}` points at.
fn tip(repo: &gix::Repository, branch: &str) -> Outcome<ObjectId> {
    let name = format!("refs/heads/{branch}");
    let mut reference = repo
        .find_reference(name.as_str())
        .map_err(context(format!("reading {name}")))?;
    let id = reference
        .peel_to_id()
        .map_err(context(format!("reading {name}")))?;
    Ok(id.detach())
}

/// Moves `refs/heads/{branch}` from `old` to `new` in one ref update (a loose
/// ref, as `git update-ref` writes it).
fn move_branch(repo: &gix::Repository, branch: &str, old: ObjectId, new: ObjectId) -> Outcome<()> {
    let name = format!("refs/heads/{branch}");
    repo.reference(
        name.as_str(),
        new,
        PreviousValue::MustExistAndMatch(Target::Object(old)),
        "load: ref update",
    )
    .map_err(context(format!("moving {name} to {new}")))?;
    Ok(())
}

/// Writes one commit (the empty tree) on top of `refs/heads/{branch}` and moves
/// the branch to it; returns the commit.
fn commit_on(repo: &gix::Repository, branch: &str, message: &str) -> Outcome<ObjectId> {
    let parent = tip(repo, branch)?;
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let commit = benches::git_repo::empty_tree_commit(
        parent,
        seconds,
        "Load",
        "load@example.invalid",
        message.to_owned(),
    );
    let id = repo
        .write_object(&commit)
        .map_err(context("writing a commit"))?
        .detach();
    move_branch(repo, branch, parent, id)?;
    Ok(id)
}

/// Wall-clock time, milliseconds since the Unix epoch (as the server stamps
/// runs).
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds, with fractions.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `burst` subcommand.
async fn burst(options: &Options) -> Outcome<()> {
    let base = options.text("url")?;
    let branch = options.text("branch")?;
    let to = ObjectId::from_hex(options.text("to")?.as_bytes()).map_err(context("--to"))?;
    let runs: u64 = options.number("runs")?;
    let pid: u32 = options.number("pid")?;
    let timeout = options.seconds("timeout")?;
    let repo = open_repo(options.text("repo")?)?;
    let client = client()?;
    let old = tip(&repo, branch)?;
    let mut events = Events::open(&client, base).await?;
    move_branch(&repo, branch, old, to)?;
    let moved = Instant::now();
    let moved_wall = wall_ms();
    // The first `run_queued`; a `reset` first means events were lost, among
    // them the first `run_queued`, so a run was queued by then: an upper bound.
    let first = loop {
        let event = events
            .next_within(timeout)
            .await
            .map_err(context("waiting for the first run of the burst"))?;
        match kind(&event) {
            "run_queued" => break (moved.elapsed(), "run_queued"),
            "reset" => break (moved.elapsed(), "reset"),
            _ => {}
        }
    };
    drop(events);
    println!("first_queued_ms={:.1}", ms(first.0));
    println!("first_queued_by={}", first.1);
    eprintln!(
        "load: first run of the burst queued after {:.1} ms; waiting for {runs} runs",
        ms(first.0)
    );
    let left = timeout.saturating_sub(moved.elapsed());
    let held = settle(&client, base, runs, left, Some(pid)).await?;
    let elapsed = moved.elapsed();
    let done = memory(pid)?;
    // The server's own record of the first queuing: the oldest run's creation
    // time (the store held no run before the burst).
    let url = format!("{base}/runs?limit=1&offset={}", held.saturating_sub(1));
    let oldest = get_json(&client, &url).await?;
    let created = oldest
        .pointer("/data/0/created_at")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("GET {url}: no `created_at` in {oldest}"))?;
    println!("first_created_ms={}", created - moved_wall);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = memory(pid)?;
    println!("runs={held}");
    println!("finish_s={:.2}", elapsed.as_secs_f64());
    println!(
        "commits_per_s={:.0}",
        f64::from(u32::try_from(runs).unwrap_or(u32::MAX)) / elapsed.as_secs_f64()
    );
    println!("hwm_mib={:.1}", after.hwm);
    println!("rss_done_mib={:.1}", done.rss);
    println!("rss_after_mib={:.1}", after.rss);
    println!("anon_after_mib={:.1}", after.anon);
    Ok(())
}

/// The branches `latency` takes its samples on: `spec` itself, or with `all`,
/// `samples` branches spread evenly over every branch (sorted by name).
fn sample_branches(repo: &gix::Repository, spec: &str, samples: usize) -> Outcome<Vec<String>> {
    if spec != "all" {
        return Ok(vec![spec.to_owned(); samples]);
    }
    let mut names = Vec::new();
    let platform = repo.references().map_err(context("listing the branches"))?;
    for reference in platform
        .local_branches()
        .map_err(context("listing the branches"))?
    {
        let reference = reference.map_err(context("listing the branches"))?;
        names.push(reference.name().shorten().to_string());
    }
    names.sort();
    if names.is_empty() {
        return Err("the repository has no branch".to_owned());
    }
    Ok((0..samples)
        .filter_map(|i| names.get(i * names.len() / samples).cloned())
        .collect())
}

/// Waits until `commit`'s run has finished: on the event stream, or by asking
/// for the run when events were lost.
async fn finished(
    client: &reqwest::Client,
    base: &str,
    events: &mut Events,
    commit: &str,
    limit: Duration,
) -> Outcome<()> {
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        let event = events.next_within(left).await.map_err(context(format!(
            "waiting for the run of {commit} to finish"
        )))?;
        match kind(&event) {
            "run_finished" if commit_of(&event) == commit => return Ok(()),
            "reset" => loop {
                let run = get_json(client, &format!("{base}/run/{commit}")).await?;
                let status = run.get("status").and_then(Value::as_str).unwrap_or("");
                if !matches!(status, "queued" | "running") {
                    return Ok(());
                }
                if start.elapsed() >= limit {
                    return Err(format!(
                        "timed out after {} s waiting for the run of {commit} to finish",
                        limit.as_secs()
                    ));
                }
                tokio::time::sleep(POLL).await;
            },
            _ => {}
        }
    }
}

/// The `latency` subcommand.
async fn latency(options: &Options) -> Outcome<()> {
    let base = options.text("url")?;
    let samples: usize = options.number("samples")?;
    let timeout = options.seconds("timeout")?;
    let pid: Option<u32> = options.optional_number("pid")?;
    let repo = open_repo(options.text("repo")?)?;
    let branches = sample_branches(&repo, options.text("branches")?, samples)?;
    let client = client()?;
    let mut events = Events::open(&client, base).await?;
    let mut times = Vec::with_capacity(samples);
    let mut retakes = 0;
    let mut i = 0;
    while let Some(branch) = branches.get(i) {
        let id = commit_on(&repo, branch, &format!("load sample {i} on {branch}"))?;
        let written = Instant::now();
        let id = id.to_string();
        let queued = loop {
            let event = events
                .next_within(timeout)
                .await
                .map_err(context(format!("waiting for the run of {id} on {branch}")))?;
            match kind(&event) {
                "run_queued" if commit_of(&event) == id => break Some(written.elapsed()),
                "reset" => break None,
                _ => {}
            }
        };
        finished(&client, base, &mut events, &id, timeout).await?;
        match queued {
            Some(t) => {
                eprintln!("load: sample {i} on {branch}: {:.2} ms", ms(t));
                times.push(t);
                i += 1;
            }
            None if retakes < samples => {
                eprintln!("load: sample {i} on {branch}: events were lost, taking it again");
                retakes += 1;
            }
            None => return Err(format!("events were lost {retakes} times; giving up")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    times.sort();
    let at = |q: usize| {
        times
            .get(times.len() * q / 100)
            .copied()
            .unwrap_or_default()
    };
    println!("samples={}", times.len());
    println!("p50_ms={:.2}", ms(at(50)));
    println!("p90_ms={:.2}", ms(at(90)));
    println!(
        "max_ms={:.2}",
        ms(times.last().copied().unwrap_or_default())
    );
    println!("retakes={retakes}");
    if let Some(pid) = pid {
        let now = memory(pid)?;
        println!("hwm_mib={:.1}", now.hwm);
        println!("rss_mib={:.1}", now.rss);
        println!("anon_mib={:.1}", now.anon);
    }
    Ok(())
}

/// The `trickle` subcommand.
async fn trickle(options: &Options) -> Outcome<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let branch = options.text("branch")?;
    let every: u64 = options.number("every-ms")?;
    let repo = open_repo(options.text("repo")?)?;
    let mut term = signal(SignalKind::terminate()).map_err(context("listening for SIGTERM"))?;
    let mut interval = tokio::time::interval(Duration::from_millis(every.max(1)));
    let start = Instant::now();
    let mut commits: u64 = 0;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = interval.tick() => {
                commit_on(&repo, branch, &format!("load flow {commits}"))?;
                commits += 1;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("commits={commits}");
    println!("seconds={seconds:.1}");
    println!(
        "per_s={:.0}",
        f64::from(u32::try_from(commits).unwrap_or(u32::MAX)) / seconds
    );
    Ok(())
}

/// A small deterministic generator (xorshift64*), for shuffling.
struct Shuffler(u64);

impl Shuffler {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        usize::try_from(r % u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(0)
    }
}

/// The `prefixes` subcommand.
async fn prefixes(options: &Options) -> Outcome<()> {
    const PAGE: usize = 1000;
    let base = options.text("url")?;
    let len: usize = options.number("len")?;
    let out = options.text("out")?;
    let client = client()?;
    let mut all: Vec<String> = Vec::new();
    loop {
        let url = format!("{base}/runs?limit={PAGE}&offset={}", all.len());
        let page = get_json(&client, &url).await?;
        let data = page
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("GET {url}: no `data` array"))?;
        for run in data {
            let id = run
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("GET {url}: a run without an `id`"))?;
            let prefix = id
                .get(..len)
                .ok_or_else(|| format!("the id {id:?} is shorter than {len}"))?;
            all.push(prefix.to_owned());
        }
        if data.len() < PAGE {
            break;
        }
    }
    let read = all.len();
    all.sort();
    // Keep the prefixes that name one run only.
    let mut unique: Vec<String> = Vec::with_capacity(all.len());
    let mut i = 0;
    while let Some(p) = all.get(i) {
        let mut j = i + 1;
        while all.get(j) == Some(p) {
            j += 1;
        }
        if j == i + 1 {
            unique.push(p.clone());
        }
        i = j;
    }
    let mut shuffler = Shuffler(0x9E37_79B9_7F4A_7C15);
    for k in (1..unique.len()).rev() {
        let j = shuffler.below(k + 1);
        unique.swap(k, j);
    }
    let mut text = unique.join("\n");
    text.push('\n');
    std::fs::write(out, text).map_err(context(format!("writing {out}")))?;
    println!("runs={read}");
    println!("prefixes={}", unique.len());
    Ok(())
}

/// `text` with every byte but `A-Z a-z 0-9 - . _ ~` written `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `cursor` subcommand.
async fn cursor(options: &Options) -> Outcome<()> {
    let base = options.text("url")?;
    let offset: u64 = options.number("offset")?;
    let limit: u64 = options.number("limit")?;
    let client = client()?;
    let page = get_json(
        &client,
        &format!("{base}/runs?limit={limit}&offset={offset}"),
    )
    .await?;
    match page.get("next") {
        None => println!("cursor=absent"),
        Some(Value::Null) => println!("cursor=null"),
        Some(Value::String(next)) => {
            println!("cursor=present");
            println!("next={}", percent_encode(next));
        }
        Some(other) => return Err(format!("`next` is neither a string nor null: {other}")),
    }
    Ok(())
}

/// The `settle` subcommand.
async fn settle_command(options: &Options) -> Outcome<()> {
    let base = options.text("url")?;
    let runs: u64 = options.number("runs")?;
    let timeout = options.seconds("timeout")?;
    let client = client()?;
    let held = settle(&client, base, runs, timeout, None).await?;
    println!("runs={held}");
    Ok(())
}
