//! The HTTP face of the simulator: routing as Go's `ServeMux` does it, reading
//! the body as Go's JSON decoder does, and the original's exact responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use hyper::{Method, Request, Response, StatusCode};

use crate::go_json::{Scan, Scanner, decode_payload};
use crate::request_log::LoggedRequest;
use crate::server::Shared;
use crate::steps::StepOutcome;

/// Largest JSON value the simulator buffers from a body (the original has no
/// limit; this one keeps a runaway client from exhausting memory).
pub const MAX_BODY_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// The message for a body value over [`MAX_BODY_VALUE_BYTES`] (Go's `MaxBytesReader` wording).
const TOO_LARGE: &str = "http: request body too large";

/// The one path the original serves.
const TRIGGER_PATH: [&str; 2] = ["step", "trigger"];

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// A plain-text answer as Go's `http.Error` writes it (the message plus a newline).
fn text(status: StatusCode, message: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn json(body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Go's `path.Clean` for a rooted path.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Go's `ServeMux` `cleanPath`: rooted, cleaned, trailing slash kept.
fn clean_request_path(path: &str) -> String {
    let rooted = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut cleaned = clean(&rooted);
    if rooted.ends_with('/') && cleaned != "/" {
        cleaned.push('/');
    }
    cleaned
}

/// Decodes `%XX` escapes in one path segment; `None` when an escape is malformed.
fn unescape_segment(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether a clean escaped path names `/step/trigger`, matching segment by
/// unescaped segment as Go 1.22's `ServeMux` does.
fn is_trigger_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    segments.len() == TRIGGER_PATH.len()
        && segments
            .iter()
            .zip(TRIGGER_PATH)
            .all(|(got, want)| unescape_segment(got).as_deref() == Some(want.as_bytes()))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// Go's `http.Redirect` with 301, as `ServeMux` sends for unclean paths.
fn redirect(method: &Method, location: &str) -> HttpResponse {
    let body = if method == Method::GET {
        format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(location)
        )
    } else {
        String::new()
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    if method == Method::GET || method == Method::HEAD {
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    response
}

/// Reads the body up to the end of its first JSON value, as Go's
/// `json.NewDecoder(body).Decode` does, and returns that value's bytes; the rest
/// of the body is left unread. `Err` holds the decoder's message, or
/// `http: request body too large` once the value passes `limit` bytes.
async fn read_first_value<B>(body: &mut B, limit: usize) -> Result<Vec<u8>, String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut scanner = Scanner::new();
    let mut value: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        for (i, &c) in data.iter().enumerate() {
            let end = match scanner.step(c)? {
                Scan::Continue => continue,
                Scan::EndIncluding => i + 1,
                Scan::EndBefore => i,
            };
            value.extend_from_slice(&data[..end]);
            return if value.len() > limit {
                Err(TOO_LARGE.to_owned())
            } else {
                Ok(value)
            };
        }
        value.extend_from_slice(&data);
        if value.len() > limit {
            return Err(TOO_LARGE.to_owned());
        }
    }
    scanner.finish().map(|()| value)
}

/// What the trigger handler decided, before the crash check.
enum Answer {
    Respond(HttpResponse),
    Crash,
}

/// A step request with a `start` line in the request log, and the step's
/// status once it ran.
struct Started {
    request: LoggedRequest,
    step_status: Option<String>,
}

/// Runs the step a trigger request asks for. When the server has a request
/// log, a request whose body decodes gets a `start` line, and `started` says
/// which, for the `end` or `crash` line.
async fn trigger(
    shared: &Shared,
    request: Request<Incoming>,
    started: &mut Option<Started>,
) -> Answer {
    if request.method() != Method::POST {
        return Answer::Respond(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Invalid request method",
        ));
    }
    let mut body = request.into_body();
    let value = match read_first_value(&mut body, MAX_BODY_VALUE_BYTES).await {
        Ok(value) => value,
        Err(message) => return Answer::Respond(text(StatusCode::BAD_REQUEST, &message)),
    };
    drop(body);
    let payload = match decode_payload(&value) {
        Ok(payload) => payload,
        Err(message) => return Answer::Respond(text(StatusCode::BAD_REQUEST, &message)),
    };
    if let Some(recorder) = &shared.recorder {
        *started = Some(Started {
            request: recorder.start(&payload.step_name, &payload.commit_hash),
            step_status: None,
        });
    }
    match shared.simulator.run(&payload).await {
        StepOutcome::Ran(response) => {
            if let Some(started) = started {
                started.step_status = Some(response.status.clone());
            }
            Answer::Respond(json(response.to_go_json()))
        }
        StepOutcome::UnknownStep => Answer::Respond(text(StatusCode::BAD_REQUEST, "Unknown step!")),
        StepOutcome::Crash => Answer::Crash,
    }
}

/// Answers one request. Once the server has crashed it never answers: the
/// future stays pending until the server aborts the connection.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut started = None;
    let answer = if request.uri() == "*" && method == Method::OPTIONS {
        // Go's server answers `OPTIONS *` itself.
        let mut response = Response::new(Full::new(Bytes::new()));
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        Answer::Respond(response)
    } else if method != Method::CONNECT && clean_request_path(&path) != path {
        let mut location = clean_request_path(&path);
        if let Some(query) = request.uri().query() {
            location = format!("{location}?{query}");
        }
        Answer::Respond(redirect(&method, &location))
    } else if is_trigger_path(&path) {
        tracing::info!("[Step Handler] Received request from {peer}");
        trigger(&shared, request, &mut started).await
    } else {
        Answer::Respond(text(StatusCode::NOT_FOUND, "404 page not found"))
    };
    match answer {
        Answer::Respond(response) if !shared.has_crashed() => {
            let status = response.status().as_u16();
            if let (Some(recorder), Some(started)) = (&shared.recorder, &started) {
                recorder.end(&started.request, status, started.step_status.as_deref());
            }
            tracing::info!(%peer, %method, path, status, "request");
            Ok(response)
        }
        Answer::Respond(_) => shared.never_answer().await,
        Answer::Crash => {
            if let (Some(recorder), Some(started)) = (&shared.recorder, &started) {
                recorder.crash(&started.request);
            }
            shared.crash();
            shared.never_answer().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        assert_eq!(clean_request_path("/step/trigger"), "/step/trigger");
        assert_eq!(clean_request_path("//step//trigger"), "/step/trigger");
        assert_eq!(clean_request_path("/step/./x/../trigger"), "/step/trigger");
        assert_eq!(clean_request_path("/step/trigger/"), "/step/trigger/");
        assert_eq!(clean_request_path("/../.."), "/");
        assert_eq!(clean_request_path(""), "/");
    }

    #[test]
    fn trigger_path_matches_unescaped_segments_only() {
        assert!(is_trigger_path("/step/trigger"));
        assert!(is_trigger_path("/step/trigge%72"));
        assert!(!is_trigger_path("/step%2Ftrigger"));
        assert!(!is_trigger_path("/step/trigger/"));
        assert!(!is_trigger_path("/Step/trigger"));
        assert!(!is_trigger_path("/step/trigger%zz"));
    }

    /// A body that arrives in the given frames.
    fn frames(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(hyper::body::Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn the_first_value_is_found_across_frames() {
        let cases: &[(&[&'static str], Result<&str, &str>)] = &[
            (
                &[r#"{"step_"#, r#"name":"lint"}"#, " rest"],
                Ok(r#"{"step_name":"lint"}"#),
            ),
            (&["12", "3", " 4"], Ok("123")),
            (&["12", "3"], Ok("123")),
            (&["[1,", "2]x"], Ok("[1,2]")),
            (&[], Err("EOF")),
            (&["  ", "\n"], Err("EOF")),
            (
                &["  ", "x"],
                Err("invalid character 'x' looking for beginning of value"),
            ),
            (&[r#"{"a":"#], Err("unexpected EOF")),
        ];
        for (parts, expected) in cases {
            let got = read_first_value(&mut frames(parts), 64)
                .await
                .map(|v| String::from_utf8(v).expect("UTF-8"));
            let expected = expected.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(got, expected, "{parts:?}");
        }
    }

    #[tokio::test]
    async fn a_value_over_the_limit_is_refused() {
        let long = r#"{"repo_path":"0123456789012345678901234567890123456789"}"#;
        let got = read_first_value(&mut frames(&[long]), 16).await;
        assert_eq!(got, Err(TOO_LARGE.to_owned()));
        let got = read_first_value(&mut frames(&["[\"", "aaaaaaaaaaaaaaaaaaaa", "\"]"]), 16).await;
        assert_eq!(got, Err(TOO_LARGE.to_owned()));
        let fits = read_first_value(&mut frames(&["[1]"]), 16).await;
        assert_eq!(fits.as_deref(), Ok(&b"[1]"[..]));
    }

    async fn body_text(response: HttpResponse) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a Full body cannot fail")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("UTF-8 body")
    }

    #[tokio::test]
    async fn redirect_body_only_for_get() {
        let get = redirect(&Method::GET, "/a?b=<");
        assert_eq!(get.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(get.headers()[LOCATION], "/a?b=<");
        assert_eq!(get.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(
            body_text(get).await,
            "<a href=\"/a?b=&lt;\">Moved Permanently</a>.\n\n"
        );
        let post = redirect(&Method::POST, "/a");
        assert!(post.headers().get(CONTENT_TYPE).is_none());
        assert_eq!(body_text(post).await, "");
    }
}
