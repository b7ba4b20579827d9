//! A small blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! The host decides which destinations a call may reach (per the caller's policy),
//! follows no redirects on the plugin's behalf unless it says so, and adds any secrets
//! (API keys) itself. A refused request fails with [`HttpError::Transport`] whose code is
//! the `wasi:http` error code, e.g. `HTTP-request-denied`.
//!
//! ```no_run
//! # fn run() -> Result<(), maestro_sdk::http::HttpError> {
//! let response = maestro_sdk::http::get("https://example.com/")
//!     .header("accept", "text/html")
//!     .max_response_bytes(1 << 20)
//!     .send()?;
//! println!("{} {}", response.status, response.text());
//! # Ok(()) }
//! ```

use std::time::Duration;

/// Responses larger than this are truncated unless the request says otherwise.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL is not an absolute `http`/`https` URL.
    #[error("invalid url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be built (a bad header name or value, a refused method).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The host or the network refused or broke the request; `code` is the
    /// `wasi:http/types.error-code` case, e.g. `HTTP-request-denied`, `connection-timeout`.
    #[error("http request failed: {code}")]
    Transport {
        /// The WASI HTTP error code, with its payload when it has one.
        code: String,
    },
    /// Reading the response body failed.
    #[error("reading the response failed: {0}")]
    Body(String),
}

impl HttpError {
    /// The error the host gives when policy does not allow the destination.
    pub fn denied() -> Self {
        Self::transport("HTTP-request-denied")
    }

    /// A transport error with a WASI HTTP error code.
    pub fn transport(code: impl Into<String>) -> Self {
        Self::Transport { code: code.into() }
    }

    /// The WASI HTTP error code, for transport errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Transport { code } => Some(code),
            _ => None,
        }
    }

    /// Whether the host refused the request (policy).
    pub fn is_denied(&self) -> bool {
        self.code() == Some("HTTP-request-denied")
    }

    /// Whether the request timed out.
    pub fn is_timeout(&self) -> bool {
        self.code().is_some_and(|c| c.contains("timeout"))
    }
}

/// An outgoing request; build it with [`get`], [`post`] or [`Request::new`] and
/// [`send`](Request::send) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    max_response_bytes: usize,
    timeout: Option<Duration>,
}

/// A GET request.
pub fn get(url: impl Into<String>) -> Request {
    Request::new(Method::Get, url)
}

/// A POST request.
pub fn post(url: impl Into<String>) -> Request {
    Request::new(Method::Post, url)
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timeout: None,
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    #[must_use]
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(value.to_string())
    }

    /// Keeps at most this many bytes of the response body (the rest is dropped and
    /// [`Response::truncated`] is set).
    #[must_use]
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Asks the host to give up on connecting, and on waiting for the first and later
    /// bytes, after this long (the host may cap it further).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// The response size cap.
    pub fn response_limit(&self) -> usize {
        self.max_response_bytes
    }

    /// The requested timeout.
    pub fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sends the request and waits for the whole (capped) response.
    pub fn send(self) -> Result<Response, HttpError> {
        let target = Target::parse(&self.url)?;
        crate::host::sys::http_send(&self, &target)
    }
}

/// A response with its (possibly truncated) body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, at most the request's cap.
    pub body: Vec<u8>,
    /// Whether the body was cut at the cap.
    pub truncated: bool,
}

impl Response {
    /// A response with a status and a body (for fakes).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self { status, headers: Vec::new(), body: body.into(), truncated: false }
    }

    /// Adds a header (for fakes).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Body(format!("not valid JSON: {e}")))
    }

    /// Cuts the body at `max` bytes (the fake host; the real client stops reading).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn truncate(mut self, max: usize) -> Self {
        if self.body.len() > max {
            self.body.truncate(max);
            self.truncated = true;
        }
        self
    }
}

/// The parts of a URL `wasi:http` wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) https: bool,
    pub(crate) authority: String,
    pub(crate) path_with_query: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, HttpError> {
        let invalid = |reason: &str| HttpError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(invalid("only http and https are supported")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        if authority.contains('@') {
            return Err(invalid("credentials in the URL are not allowed"));
        }
        if authority.chars().any(|c| c.is_whitespace() || c.is_control()) || path.chars().any(char::is_control) {
            return Err(invalid("contains whitespace or control characters"));
        }
        let path_with_query = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Self { https, authority: authority.to_owned(), path_with_query })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls_for_wasi_http() {
        let t = Target::parse("https://example.com:8443/a/b?q=1#frag").expect("valid");
        assert!(t.https);
        assert_eq!(t.authority, "example.com:8443");
        assert_eq!(t.path_with_query, "/a/b?q=1");
        let t = Target::parse("http://example.com").expect("valid");
        assert_eq!(t.path_with_query, "/");
        let t = Target::parse("http://example.com?x").expect("valid");
        assert_eq!(t.path_with_query, "/?x");
    }

    #[test]
    fn rejects_other_schemes_and_userinfo() {
        assert!(matches!(Target::parse("file:///etc/passwd"), Err(HttpError::InvalidUrl { .. })));
        assert!(matches!(Target::parse("example.com"), Err(HttpError::InvalidUrl { .. })));
        assert!(matches!(Target::parse("http://user:pw@host/"), Err(HttpError::InvalidUrl { .. })));
        assert!(matches!(Target::parse("http:///path"), Err(HttpError::InvalidUrl { .. })));
    }

    #[test]
    fn denied_error_shows_the_wasi_code() {
        let e = HttpError::denied();
        assert!(e.is_denied());
        assert_eq!(e.to_string(), "http request failed: HTTP-request-denied");
    }
}
