//! Go-style listen addresses (`:8080`, `127.0.0.1:0`, `[::1]:80`), as the
//! original's `STEP_RUNNER_SERVER_ADDR` takes them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why a listen address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// No `:port` part (Go: `missing port in address`).
    #[error("address {0:?}: missing port in address")]
    MissingPort(String),
    /// The port is not a number in `0..=65535`.
    #[error("address {addr:?}: invalid port {port:?}")]
    InvalidPort {
        /// The whole address.
        addr: String,
        /// The rejected port text.
        port: String,
    },
    /// The host is neither empty, `localhost`, nor an IP literal.
    #[error(
        "address {addr:?}: host {host:?} is not an IP address (use an IP literal, `localhost`, or nothing for every interface)"
    )]
    InvalidHost {
        /// The whole address.
        addr: String,
        /// The rejected host text.
        host: String,
    },
}

/// Parses the Go-style address (`:8080`, `127.0.0.1:0`, `[::1]:80`).
///
/// An empty host (`:8080`) means every IPv4 interface (`0.0.0.0`); `localhost`
/// means `127.0.0.1`; IPv6 literals go in brackets. Host names and service
/// names (`:http`) are not accepted.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, AddrError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(AddrError::InvalidHost {
                addr: s.to_owned(),
                host: s.to_owned(),
            });
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(AddrError::MissingPort(s.to_owned()));
        };
        (host, port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(AddrError::MissingPort(s.to_owned()));
        };
        if host.contains(':') {
            // An IPv6 literal without brackets: Go says "too many colons".
            return Err(AddrError::InvalidHost {
                addr: s.to_owned(),
                host: host.to_owned(),
            });
        }
        (host, port)
    };
    let port_number: u16 = if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
        port.parse().map_err(|_| AddrError::InvalidPort {
            addr: s.to_owned(),
            port: port.to_owned(),
        })?
    } else {
        return Err(AddrError::InvalidPort {
            addr: s.to_owned(),
            port: port.to_owned(),
        });
    };
    let ip: IpAddr = match host {
        "" => Ipv4Addr::UNSPECIFIED.into(),
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        _ => host.parse().map_err(|_| AddrError::InvalidHost {
            addr: s.to_owned(),
            host: host.to_owned(),
        })?,
    };
    Ok(SocketAddr::new(ip, port_number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms_parse() {
        let ok = |s: &str| parse_listen_addr(s).expect("valid address").to_string();
        assert_eq!(ok(":8080"), "0.0.0.0:8080");
        assert_eq!(ok("127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(ok("[::1]:80"), "[::1]:80");
        assert_eq!(ok("[::]:9"), "[::]:9");
        assert_eq!(ok("localhost:81"), "127.0.0.1:81");
        assert_eq!(ok("0.0.0.0:65535"), "0.0.0.0:65535");
    }

    #[test]
    fn bad_forms_are_rejected_with_the_reason() {
        assert!(matches!(
            parse_listen_addr("8080"),
            Err(AddrError::MissingPort(_))
        ));
        assert!(matches!(
            parse_listen_addr(""),
            Err(AddrError::MissingPort(_))
        ));
        assert!(matches!(
            parse_listen_addr("[::1]"),
            Err(AddrError::MissingPort(_))
        ));
        for bad_port in [":", ":65536", ":http", ":-1", ":+80", "127.0.0.1:8o"] {
            assert!(
                matches!(
                    parse_listen_addr(bad_port),
                    Err(AddrError::InvalidPort { .. })
                ),
                "{bad_port}"
            );
        }
        for bad_host in ["example.com:80", "::1:80", "[::1:80", "999.1.1.1:80"] {
            assert!(
                matches!(
                    parse_listen_addr(bad_host),
                    Err(AddrError::InvalidHost { .. })
                ),
                "{bad_host}"
            );
        }
        let message = parse_listen_addr("nope").expect_err("no port").to_string();
        assert_eq!(message, "address \"nope\": missing port in address");
    }
}
