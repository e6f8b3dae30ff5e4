//! Fixtures of the browser test: finding Chromium and chromedriver, a
//! chromedriver process of the test's own (free loopback port, temporary
//! profile, headless Chromium) that is stopped with everything it started on
//! drop, a WebDriver session to it, and polling with a deadline.

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// How to get the browser and its driver, for the messages of a missing one.
pub const INSTALL_HINT: &str = "install Debian's packages `chromium` and `chromium-driver` \
     (apt-get install chromium chromium-driver), or run `bash .ci/test`, which does";

/// The programs the test drives.
pub struct Tools {
    /// The Chromium browser.
    pub chromium: PathBuf,
    /// Its WebDriver server.
    pub chromedriver: PathBuf,
}

/// Where `name` is on `PATH`, if anywhere.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether this is a CI run (`CI` set, and not to `false` or `0`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Chromium and chromedriver from `PATH`. When either is missing: under CI the
/// test fails (a browser test that does not run is no pass); elsewhere it
/// prints a notice and the caller skips.
pub fn tools_or_skip() -> Option<Tools> {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(on_path);
    let chromedriver = on_path("chromedriver");
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some(Tools {
            chromium,
            chromedriver,
        }),
        (chromium, chromedriver) => {
            let missing = [
                chromium.is_none().then_some("chromium"),
                chromedriver.is_none().then_some("chromedriver"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ");
            assert!(
                !in_ci(),
                "the browser test needs {missing} on PATH, and CI must run it: {INSTALL_HINT}"
            );
            // Straight to stderr, past the test harness's capture: a skip is
            // to be seen.
            let _ = writeln!(
                std::io::stderr(),
                "NOTICE: browser test skipped: {missing} not on PATH; {INSTALL_HINT}"
            );
            None
        }
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A chromedriver process in a process group of its own, so that the browser
/// it starts is stopped with it: on drop the whole group gets SIGTERM, then
/// SIGKILL if anything is left.
pub struct Chromedriver {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
    /// The browser profile and the driver's log; removed after the processes.
    dir: tempfile::TempDir,
}

impl Chromedriver {
    /// Starts chromedriver on a free loopback port and waits (bounded) until it
    /// is ready. A port taken between the check and the start is retried.
    pub async fn start(tools: &Tools) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join("chromedriver.log");
        let mut last_error = String::new();
        let mut child = None;
        for _ in 0..3 {
            let port = free_port();
            let mut proc = Command::new(&tools.chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "{} does not start ({e}); {INSTALL_HINT}",
                        tools.chromedriver.display()
                    )
                });
            let url = format!("http://127.0.0.1:{port}");
            match wait_ready(&mut proc, &url, Duration::from_secs(20)).await {
                Ok(()) => {
                    child = Some((proc, url));
                    break;
                }
                Err(e) => {
                    stop_group(&mut proc);
                    last_error = format!("{e}; its log:\n{}", tail(&log));
                }
            }
        }
        let Some((child, url)) = child else {
            panic!("chromedriver did not get ready: {last_error}");
        };
        Self {
            child,
            url,
            log,
            dir,
        }
    }

    /// The browser profile directory (empty at first, removed on drop).
    pub fn profile_dir(&self) -> PathBuf {
        self.dir.path().join("profile")
    }

    /// The end of chromedriver's log (for failure messages).
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// Polls `GET url/status` until the driver says it is ready, or it exits, or
/// `within` passes.
async fn wait_ready(proc: &mut Child, url: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proc.try_wait() {
            return Err(format!("chromedriver exited ({status})"));
        }
        match reqwest::get(format!("{url}/status")).await {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(body) if body["value"]["ready"] == true => return Ok(()),
                Ok(body) => last = body.to_string(),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("not ready within {within:?}; last /status: {last}"))
}

/// SIGTERM to the process group led by `child`, then SIGKILL to the group if
/// the leader is still there after a while; reaps the leader.
fn stop_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    if let Ok(Some(_)) = child.try_wait() {
        // The leader is gone; what it started may not be.
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        return;
    }
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

/// The last 40 lines of a file, or why it cannot be read.
fn tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        Err(e) => format!("({} cannot be read: {e})", path.display()),
    }
}

/// A headless Chromium driven over WebDriver, and the chromedriver behind it.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    /// Declared after the session: dropped (and so stopped) last.
    pub driver: Chromedriver,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile and a
    /// `width`×`height` window.
    pub async fn start(tools: &Tools, width: u32, height: u32) -> Self {
        let driver = Chromedriver::start(tools).await;
        let args = vec![
            "--headless".to_owned(),
            // CI runs as root, where Chromium's sandbox cannot start.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-extensions".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            "--lang=en-US".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", driver.profile_dir().display()),
        ];
        let mut caps = Capabilities::new();
        caps.insert("browserName".to_owned(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": tools.chromium, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no WebDriver session with {} ({e}); chromedriver's log:\n{}",
                    tools.chromium.display(),
                    driver.log_tail()
                )
            });
        let browser = Self { client, driver };
        browser.resize(width, height).await;
        browser
    }

    /// Sets the window so that the page's viewport is `width`×`height` CSS
    /// pixels, and polls until the page reports that width.
    pub async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("the window can be resized");
        // Where the window has a frame of its own, the viewport is smaller
        // than the window: grow the window by the difference once.
        let (inner_w, inner_h) = self.viewport().await;
        if (inner_w, inner_h) != (u64::from(width), u64::from(height)) {
            let adjust = |want: u32, got: u64| {
                let target = 2 * i64::from(want) - i64::try_from(got).unwrap_or(i64::MAX);
                u32::try_from(target.max(1)).unwrap_or(want)
            };
            self.client
                .set_window_size(adjust(width, inner_w), adjust(height, inner_h))
                .await
                .expect("the window can be resized");
        }
        poll(
            &format!("the viewport to be {width} CSS pixels wide"),
            Duration::from_secs(5),
            || async {
                let (w, h) = self.viewport().await;
                if w == u64::from(width) {
                    Ok(())
                } else {
                    Err(format!("the viewport is {w}×{h}"))
                }
            },
        )
        .await;
    }

    /// `innerWidth`, `innerHeight` of the page.
    pub async fn viewport(&self) -> (u64, u64) {
        let v = self
            .js("return [window.innerWidth, window.innerHeight];", vec![])
            .await;
        (
            v[0].as_u64().unwrap_or_default(),
            v[1].as_u64().unwrap_or_default(),
        )
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns. Panics when the script throws.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.try_js(script, args)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::js`] for polling: a script that fails (say, while a page is
    /// being left) is an `Err` to try again, not a panic.
    pub async fn try_js(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.client
            .execute(script, args)
            .await
            .map_err(|e| format!("script failed ({e}):\n{script}"))
    }

    /// The page's HTML, cut to a size that fits a failure message.
    pub async fn page_html(&self) -> String {
        let html = self
            .client
            .source()
            .await
            .unwrap_or_else(|e| format!("(no page source: {e})"));
        shorten(&html, 8000)
    }

    /// Takes a PNG screenshot of the viewport into `path` (folders created).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG"),
            "the screenshot is not a PNG ({} bytes)",
            png.len()
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("{} cannot be made: {e}", dir.display()));
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("{} cannot be written: {e}", path.display()));
    }

    /// Ends the WebDriver session (the browser quits), then chromedriver.
    pub async fn close(self) {
        let Self { client, driver } = self;
        if let Err(e) = client.close().await {
            eprintln!("the WebDriver session did not close cleanly: {e}");
        }
        drop(driver);
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), saying so.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text[..end].to_owned();
    let _ = write!(out, "\n… ({} more bytes)", text.len() - end);
    out
}

/// Calls `probe` until it answers `Ok` (returned) or `within` passes; then
/// panics saying what was awaited and the last `Err` it gave (which should
/// show the state seen: an element's or the page's HTML).
pub async fn poll<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}; last seen:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
