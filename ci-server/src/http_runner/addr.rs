//! Where a step runner listens, as the user types it: [`RunnerAddr`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use reqwest::Url;

/// A step runner's base address.
///
/// Parsed from what a user types (see [`FromStr`]):
///
/// - `:8080` — port 8080 on this machine (`127.0.0.1`, the Go-style short form the
///   original runner uses for its own listen address);
/// - `host:port` — e.g. `runner.lan:8080`, `10.0.0.7:8080`, `[::1]:8080`;
/// - a URL `http://host[:port][/prefix]` — the runner is reached under `prefix`
///   (for a runner behind a reverse proxy); the port defaults to 80.
///
/// Only plain `http` is supported (the client has no TLS built in). The step
/// endpoint is always `<base>/step/trigger`. [`Display`](fmt::Display) prints the
/// normalised URL, e.g. `http://127.0.0.1:8080`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunnerAddr {
    /// Normalised base URL: scheme `http`, no query, no fragment, path without a
    /// trailing slash (empty path for no prefix).
    base: Url,
}

/// Why a runner address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid runner address {input:?}: {reason} (expected `:PORT`, `HOST:PORT` or `http://HOST:PORT[/PREFIX]`)"
)]
pub struct RunnerAddrError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RunnerAddr {
    /// The address of a runner listening on `addr` (no prefix).
    /// An IPv6 scope id (`%2`) has no place in a URL and is left out.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        let authority = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let base = Url::parse(&format!("http://{authority}"))
            .expect("an IP address and a port make a valid URL authority");
        Self::normalised(base)
    }

    /// The URL of the step endpoint, `<base>/step/trigger`.
    pub fn trigger_url(&self) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}/step/trigger", self.prefix());
        url.set_path(&path);
        url
    }

    /// The URL a probe asks, `<base>/`: no step runs there (the original runner
    /// answers `404 page not found` to every path but the step endpoint).
    pub fn probe_url(&self) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}/", self.prefix());
        url.set_path(&path);
        url
    }

    /// The host as written in the URL (`127.0.0.1`, `[::1]`, `runner.lan`).
    pub fn host(&self) -> &str {
        self.base.host_str().unwrap_or_default()
    }

    /// The TCP port (80 when a URL gave none).
    pub fn port(&self) -> u16 {
        self.base.port_or_known_default().unwrap_or(80)
    }

    /// The path prefix without a trailing slash; empty when there is none.
    pub fn prefix(&self) -> &str {
        self.base.path().trim_end_matches('/')
    }

    fn normalised(mut base: Url) -> Self {
        let prefix = base.path().trim_end_matches('/').to_owned();
        base.set_path(&prefix);
        Self { base }
    }
}

impl FromStr for RunnerAddr {
    type Err = RunnerAddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| RunnerAddrError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(fail("it is empty"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(fail("it contains whitespace"));
        }
        if let Some(port) = s.strip_prefix(':') {
            let port = parse_port(port).map_err(|reason| fail(&reason))?;
            return Ok(Self::from_socket_addr(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                port,
            ))));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if !scheme.eq_ignore_ascii_case("http") {
                return Err(fail(&format!(
                    "scheme `{scheme}` is not supported, only `http` (no TLS is built in)"
                )));
            }
            let url = Url::parse(s).map_err(|e| fail(&e.to_string()))?;
            return Self::from_url(url).map_err(|reason| fail(&reason));
        }
        // HOST:PORT. The port must be explicit; `rsplit_once` keeps `[::1]:80` whole.
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(fail("the port is missing"));
        };
        if host.is_empty() {
            return Err(fail("the host is missing"));
        }
        if s.contains('/') {
            return Err(fail("a path needs the URL form `http://HOST:PORT/PREFIX`"));
        }
        parse_port(port).map_err(|reason| fail(&reason))?;
        let url = Url::parse(&format!("http://{s}")).map_err(|e| fail(&e.to_string()))?;
        Self::from_url(url).map_err(|reason| fail(&reason))
    }
}

impl RunnerAddr {
    fn from_url(url: Url) -> Result<Self, String> {
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the host is missing".into());
        }
        if url.query().is_some() {
            return Err("a query string is not allowed".into());
        }
        if url.fragment().is_some() {
            return Err("a fragment is not allowed".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials in the address are not supported".into());
        }
        if url.port_or_known_default() == Some(0) {
            return Err("port 0 is not a port a runner listens on".into());
        }
        Ok(Self::normalised(url))
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("the port is missing".into());
    }
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port a runner listens on".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("`{port}` is not a port number (1-65535)")),
    }
}

impl fmt::Display for RunnerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Url` prints an empty path as `/`; print the base without it.
        let host = self.base.host_str().unwrap_or_default();
        write!(f, "http://{host}:{}{}", self.port(), self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> RunnerAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn short_port_means_localhost() {
        let a = ok(":8080");
        assert_eq!(a.to_string(), "http://127.0.0.1:8080");
        assert_eq!(
            a.trigger_url().as_str(),
            "http://127.0.0.1:8080/step/trigger"
        );
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(ok("runner.lan:9000").to_string(), "http://runner.lan:9000");
        assert_eq!(ok("10.0.0.7:81").port(), 81);
        let v6 = ok("[::1]:8080");
        assert_eq!(v6.to_string(), "http://[::1]:8080");
        assert_eq!(v6.trigger_url().as_str(), "http://[::1]:8080/step/trigger");
    }

    #[test]
    fn url_forms_keep_the_prefix() {
        let a = ok("http://proxy:8000/runners/a/");
        assert_eq!(a.prefix(), "/runners/a");
        assert_eq!(a.to_string(), "http://proxy:8000/runners/a");
        assert_eq!(
            a.trigger_url().as_str(),
            "http://proxy:8000/runners/a/step/trigger"
        );
        let b = ok("HTTP://host");
        assert_eq!(b.port(), 80);
        assert_eq!(b.trigger_url().as_str(), "http://host/step/trigger");
    }

    #[test]
    fn probes_ask_the_base_with_its_prefix() {
        assert_eq!(ok(":8080").probe_url().as_str(), "http://127.0.0.1:8080/");
        assert_eq!(
            ok("http://proxy:8000/runners/a/").probe_url().as_str(),
            "http://proxy:8000/runners/a/"
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [":1", "h:2", "http://h:3/p", "[::1]:4"] {
            let a = ok(s);
            assert_eq!(ok(&a.to_string()), a, "{s}");
        }
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("   ", "empty"),
            ("localhost", "port is missing"),
            (":", "port is missing"),
            (":abc", "not a port number"),
            (":99999", "not a port number"),
            (":0", "port 0"),
            ("host:", "port is missing"),
            (":8080 x", "whitespace"),
            (":-1", "not a port number"),
            ("https://h:1", "only `http`"),
            ("ftp://h:1", "only `http`"),
            ("http://", "host"),
            ("http://h:1/?q=1", "query"),
            ("http://h:1/#f", "fragment"),
            ("http://u:p@h:1", "credentials"),
            ("h:1/path", "URL form"),
        ] {
            let err = input
                .parse::<RunnerAddr>()
                .expect_err(&format!("{input:?} should be rejected"));
            let msg = err.to_string();
            assert!(msg.contains(reason), "{input:?}: {msg}");
            assert!(msg.contains("expected `:PORT`"), "{input:?}: {msg}");
            assert_eq!(err.input, input);
        }
    }

    #[test]
    fn socket_addresses_of_every_kind_become_urls() {
        let v4 = RunnerAddr::from_socket_addr("127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            v4.trigger_url().as_str(),
            "http://127.0.0.1:8080/step/trigger"
        );
        let scoped: SocketAddr = "[fe80::1%2]:80".parse().unwrap();
        let v6 = RunnerAddr::from_socket_addr(scoped);
        assert_eq!(v6.trigger_url().as_str(), "http://[fe80::1]/step/trigger");
    }
}
