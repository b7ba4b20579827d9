//! Outgoing HTTP for plugins (`wasi:http/outgoing-handler`), deny by default.
//!
//! Every request, and every redirect hop the host follows for it, is checked the same
//! way: the URL must match an allow-list entry of the caller's policy; the host name is
//! parsed (IP literals in every form) or resolved by the host, and every address is
//! refused if it is loopback, private, link-local (metadata), CGNAT, unique-local or
//! otherwise special — unless the matching entry explicitly allows private targets.
//! The connection then goes to the address that was checked, never to the name again,
//! so DNS rebinding cannot swap it. Secrets are added here, by the host, to requests for
//! the hosts they are meant for; the plugin never sees them. Request count, request and
//! response size and per-request time are capped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HOST, LOCATION, PROXY_AUTHORIZATION};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use maestro_core::net::{self as ip, HostKind};

/// At most this many redirects are followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Which hosts an allow-list entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host (lowercase name or IP literal as written in the URL).
    Exact(String),
    /// Any subdomain of this domain (`*.example.com`: `a.example.com`, not
    /// `example.com`).
    Subdomains(String),
    /// Any host (`*`).
    Any,
}

impl HostPattern {
    /// Parses `example.com`, `*.example.com` or `*`.
    pub fn parse(pattern: &str) -> Self {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            _ if pattern == "*" => HostPattern::Any,
            Some(domain) => HostPattern::Subdomains(domain.to_owned()),
            None => HostPattern::Exact(pattern),
        }
    }

    /// Whether `host` (lowercase) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Subdomains(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host[..host.len() - domain.len()].ends_with('.')
            }
        }
    }
}

/// One allow-list entry: `scheme://host[:port]`.
#[derive(Debug, Clone)]
pub struct NetRule {
    /// `http` or `https`.
    pub scheme: String,
    /// Hosts it matches.
    pub host: HostPattern,
    /// The port, or any port when `None`.
    pub port: Option<u16>,
    /// Whether loopback/private/link-local targets are allowed for this entry.
    pub allow_private: bool,
    /// Where the entry was written (e.g. `policies/teams.toml:14`), for messages.
    pub origin: String,
}

impl NetRule {
    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.host.matches(host) && self.port.is_none_or(|p| p == port)
    }
}

/// A header the host adds to requests for some hosts (a secret the plugin never sees).
#[derive(Clone)]
pub struct SecretHeader {
    /// Header name.
    pub name: HeaderName,
    /// Header value (marked sensitive).
    pub value: HeaderValue,
    /// Hosts it is added for.
    pub hosts: Vec<HostPattern>,
}

impl std::fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretHeader").field("name", &self.name).field("value", &"<redacted>").finish()
    }
}

/// What a call may do on the network.
#[derive(Debug, Clone)]
pub struct NetPolicy {
    /// Allow-list; empty denies everything.
    pub rules: Vec<NetRule>,
    /// Headers injected for matching hosts.
    pub secrets: Vec<SecretHeader>,
    /// Requests per call (redirect hops count).
    pub max_requests: u32,
    /// Largest request body.
    pub max_request_bytes: u64,
    /// Largest response body.
    pub max_response_bytes: u64,
    /// Time for one request: connect, send, and receive the whole response.
    pub request_timeout: Duration,
}

impl NetPolicy {
    /// No network at all.
    pub fn deny_all() -> Self {
        Self {
            rules: Vec::new(),
            secrets: Vec::new(),
            max_requests: 0,
            max_request_bytes: 0,
            max_response_bytes: 0,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A request the host refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The URL (query string dropped: it may carry tokens).
    pub url: String,
    /// Why, naming the rule or its absence.
    pub reason: String,
}

/// What happened on the network during one call.
#[derive(Debug, Default, Clone)]
pub struct NetLog {
    /// Requests attempted (including redirect hops).
    pub requests: u32,
    /// Requests refused.
    pub denied: Vec<Denial>,
    /// Response body bytes received.
    pub bytes_received: u64,
}

/// The `wasi:http` hooks of one call.
#[derive(Debug)]
pub(crate) struct NetHooks {
    policy: Arc<NetPolicy>,
    log: Arc<Mutex<NetLog>>,
}

impl NetHooks {
    pub(crate) fn new(policy: Arc<NetPolicy>, log: Arc<Mutex<NetLog>>) -> Self {
        Self { policy, log }
    }
}

impl WasiHttpHooks for NetHooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                    HttpError,
                >,
            > + Send,
    > {
        let policy = self.policy.clone();
        let log = self.log.clone();
        Box::new(async move {
            let response = send(&policy, &log, request).await?;
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

fn lock(log: &Mutex<NetLog>) -> std::sync::MutexGuard<'_, NetLog> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn display_url(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map_or("", |a| a.as_str());
    format!("{scheme}://{authority}{}", uri.path())
}

fn deny(log: &Mutex<NetLog>, uri: &Uri, reason: String) -> HttpError {
    tracing::info!(url = %display_url(uri), %reason, "plugin request denied");
    lock(log).denied.push(Denial { url: display_url(uri), reason });
    HttpError::HttpRequestDenied
}

/// A request target that passed the checks.
struct Target {
    addrs: Vec<SocketAddr>,
    tls_name: Option<rustls::pki_types::ServerName<'static>>,
    host: String,
}

/// Checks a URL against the policy and resolves it to addresses that may be used.
async fn authorize(policy: &NetPolicy, uri: &Uri) -> Result<Target, String> {
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme} is not allowed"));
    }
    let authority = uri.authority().ok_or_else(|| "the URL has no host".to_owned())?;
    let raw_host = authority.host();
    let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    let kind = ip::parse_host(raw_host)?;
    let host_key = match &kind {
        HostKind::Ip(ip) => ip.to_string(),
        HostKind::Name(name) => name.clone(),
    };
    let rule = policy
        .rules
        .iter()
        .find(|rule| {
            rule.matches(&scheme, &host_key, port) || rule.matches(&scheme, &raw_host.to_ascii_lowercase(), port)
        })
        .ok_or_else(|| format!("no network rule allows {scheme}://{host_key}:{port} (default deny)"))?;
    let addrs: Vec<SocketAddr> = match &kind {
        HostKind::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        HostKind::Name(name) => {
            tokio::time::timeout(policy.request_timeout, tokio::net::lookup_host((name.as_str(), port)))
                .await
                .map_err(|_| format!("resolving {name} timed out"))?
                .map_err(|e| format!("cannot resolve {name}: {e}"))?
                .collect()
        }
    };
    if addrs.is_empty() {
        return Err(format!("{host_key} has no addresses"));
    }
    if !rule.allow_private {
        for addr in &addrs {
            if let Some(why) = ip::restriction(addr.ip()) {
                return Err(format!(
                    "{host_key} resolves to {} ({}); rule {} does not allow private targets",
                    addr.ip(),
                    why.describe(),
                    rule.origin
                ));
            }
        }
    }
    let tls_name = if scheme == "https" {
        let name = match &kind {
            HostKind::Ip(ip) => rustls::pki_types::ServerName::from(*ip),
            HostKind::Name(name) => rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("invalid TLS name {name}: {e}"))?,
        };
        Some(name)
    } else {
        None
    };
    Ok(Target { addrs, tls_name, host: host_key })
}

async fn send(
    policy: &NetPolicy,
    log: &Arc<Mutex<NetLog>>,
    request: Request<WasiBody>,
) -> Result<Response<WasiBody>, HttpError> {
    let (mut parts, body) = request.into_parts();
    if let Some(length) =
        parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && length > policy.max_request_bytes
    {
        return Err(deny(
            log,
            &parts.uri,
            format!("request body of {length} bytes exceeds the limit of {}", policy.max_request_bytes),
        ));
    }
    let mut body = Some(
        CappedBody::new(body, policy.max_request_bytes, None, HttpError::HttpRequestBodySize(None)).boxed_unsync(),
    );
    let original_host = parts.uri.host().map(str::to_ascii_lowercase);
    for hop in 0..=MAX_REDIRECTS {
        {
            let mut log_state = lock(log);
            if log_state.requests >= policy.max_requests {
                drop(log_state);
                return Err(deny(
                    log,
                    &parts.uri,
                    format!("request limit of {} per call reached", policy.max_requests),
                ));
            }
            log_state.requests += 1;
        }
        let target = authorize(policy, &parts.uri).await.map_err(|reason| deny(log, &parts.uri, reason))?;
        if hop > 0 && original_host.as_deref() != Some(target.host.as_str()) {
            // Credentials the plugin set were meant for the first host only.
            for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE] {
                parts.headers.remove(name);
            }
        }
        let mut headers = parts.headers.clone();
        for secret in &policy.secrets {
            if secret.hosts.iter().any(|p| p.matches(&target.host)) {
                let mut value = secret.value.clone();
                value.set_sensitive(true);
                headers.insert(secret.name.clone(), value);
            }
        }
        if let Some(authority) = parts.uri.authority() {
            headers
                .insert(HOST, HeaderValue::from_str(authority.as_str()).map_err(|_| HttpError::HttpRequestUriInvalid)?);
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut outgoing = Request::builder()
            .method(parts.method.clone())
            .uri(path)
            .body(
                body.take()
                    .unwrap_or_else(|| http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()),
            )
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        *outgoing.headers_mut() = headers;
        let response = tokio::time::timeout(policy.request_timeout, exchange(&target, outgoing))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)??;
        let redirect = response.status().is_redirection() && matches!(parts.method, Method::GET | Method::HEAD);
        let location = response.headers().get(LOCATION).and_then(|l| l.to_str().ok()).map(str::to_owned);
        match (redirect, location) {
            (true, Some(location)) if hop < MAX_REDIRECTS => {
                parts.uri = resolve_location(&parts.uri, &location).ok_or(HttpError::HttpRequestUriInvalid)?;
            }
            (true, Some(_)) => {
                return Err(deny(log, &parts.uri, format!("more than {MAX_REDIRECTS} redirects")));
            }
            _ => {
                let (response_parts, incoming) = response.into_parts();
                if let Some(length) = response_parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    && length > policy.max_response_bytes
                {
                    return Err(HttpError::HttpResponseBodySize(Some(length)));
                }
                let deadline = tokio::time::sleep(policy.request_timeout);
                let capped = CappedBody::new(
                    incoming.map_err(HttpError::from).boxed_unsync(),
                    policy.max_response_bytes,
                    Some(log.clone()),
                    HttpError::HttpResponseBodySize(None),
                )
                .with_deadline(deadline);
                return Ok(Response::from_parts(response_parts, capped.boxed_unsync()));
            }
        }
    }
    Err(HttpError::LoopDetected)
}

/// Connects to the first checked address that answers and exchanges one request.
async fn exchange(target: &Target, request: Request<WasiBody>) -> Result<Response<hyper::body::Incoming>, HttpError> {
    let mut last_error = None;
    let mut stream = None;
    for addr in &target.addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(err) => last_error = Some(err),
        }
    }
    let stream = match (stream, last_error) {
        (Some(stream), _) => stream,
        (None, Some(err)) => return Err(HttpError::Connect(err)),
        (None, None) => return Err(HttpError::DestinationNotFound),
    };
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Io> = match &target.tls_name {
        Some(name) => {
            let connector = tokio_rustls::TlsConnector::from(tls_config());
            Box::new(connector.connect(name.clone(), stream).await.map_err(HttpError::Tls)?)
        }
        None => Box::new(stream),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(io))
        .await
        .map_err(HttpError::from)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "plugin http connection ended with an error");
        }
    });
    sender.send_request(request).await.map_err(HttpError::from)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// `location` resolved against `base` (absolute, scheme-relative or path).
fn resolve_location(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let scheme = base.scheme_str().unwrap_or("https");
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().ok();
    }
    let authority = base.authority()?.as_str();
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{path}").parse().ok()
}

/// A body that fails once more than `limit` bytes have passed (and, for responses,
/// when its deadline passes), counting what it delivers into the call's log.
struct CappedBody {
    inner: WasiBody,
    limit: u64,
    seen: u64,
    log: Option<Arc<Mutex<NetLog>>>,
    overflow: Option<HttpError>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CappedBody {
    fn new(inner: WasiBody, limit: u64, log: Option<Arc<Mutex<NetLog>>>, overflow: HttpError) -> Self {
        Self { inner, limit, seen: 0, log, overflow: Some(overflow), deadline: None }
    }

    fn with_deadline(mut self, deadline: tokio::time::Sleep) -> Self {
        self.deadline = Some(Box::pin(deadline));
        self
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.deadline = None;
            return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            self.seen += len;
            if let Some(log) = &self.log {
                lock(log).bytes_received += len;
            }
            if self.seen > self.limit {
                let err = self.overflow.take().unwrap_or(HttpError::HttpResponseBodySize(None));
                return Poll::Ready(Some(Err(err)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_exactly_what_they_say() {
        let sub = HostPattern::parse("*.Example.com");
        assert!(sub.matches("api.example.com") && sub.matches("a.b.example.com"));
        assert!(!sub.matches("example.com") && !sub.matches("evilexample.com") && !sub.matches("example.com.evil.io"));
        let exact = HostPattern::parse("example.com");
        assert!(exact.matches("example.com") && !exact.matches("api.example.com"));
        assert!(HostPattern::parse("*").matches("anything.at.all"));
    }

    #[test]
    fn resolves_redirect_locations() {
        let base: Uri = "https://a.example/x/y?q=1".parse().expect("uri");
        let cases = [
            ("https://b.example/z", "https://b.example/z"),
            ("//c.example/w", "https://c.example/w"),
            ("/root", "https://a.example/root"),
            ("sibling", "https://a.example/x/sibling"),
        ];
        for (location, expected) in cases {
            assert_eq!(resolve_location(&base, location).expect(location).to_string(), expected);
        }
    }

    fn rule(entry: &str, allow_private: bool) -> NetRule {
        let (scheme, rest) = entry.split_once("://").expect("scheme");
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse().expect("port"))),
            None => (rest, None),
        };
        NetRule { scheme: scheme.into(), host: HostPattern::parse(host), port, allow_private, origin: "test:1".into() }
    }

    fn policy(rules: Vec<NetRule>) -> NetPolicy {
        NetPolicy { rules, ..NetPolicy::deny_all() }
    }

    #[tokio::test]
    async fn authorization_denies_by_default_and_refuses_private_targets() {
        let deny_all = policy(vec![]);
        let err = authorize(&deny_all, &"https://example.com/".parse().expect("uri")).await.err().expect("denied");
        assert!(err.contains("default deny"), "{err}");

        let open = policy(vec![rule("http://*", false)]);
        for url in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0xA9FEA9FE/",
            "http://[::ffff:169.254.169.254]/",
            "http://localhost/",
        ] {
            let err =
                authorize(&open, &url.parse().expect("uri")).await.err().unwrap_or_else(|| panic!("{url} allowed"));
            assert!(err.contains("does not allow private targets"), "{url}: {err}");
        }

        let private_ok = policy(vec![rule("http://127.0.0.1:8080", true)]);
        assert!(authorize(&private_ok, &"http://127.0.0.1:8080/x".parse().expect("uri")).await.is_ok());
        assert!(authorize(&private_ok, &"http://127.0.0.1:8081/x".parse().expect("uri")).await.is_err());
        assert!(authorize(&private_ok, &"https://127.0.0.1:8080/x".parse().expect("uri")).await.is_err());
    }
}
