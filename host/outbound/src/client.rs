//! The client: authorise, resolve and check, connect to the checked address, follow
//! redirects hop by hop, inject secrets per hop, cap everything.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, COOKIE, HOST, LOCATION, PROXY_AUTHORIZATION};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;

use maestro_core::net::{self as ip, HostKind};

use super::body::{CappedBody, OutboundBody, full_body};
use super::log::{Denial, LOGGED_DENIALS, NetLog};
use super::policy::NetPolicy;

/// At most this many redirects are followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The policy refused it (recorded in the client's [`NetLog`]).
    #[error("request to {url} denied: {reason}")]
    Denied {
        /// The URL (query string dropped).
        url: String,
        /// Why, naming the rule or its absence.
        reason: String,
    },
    /// The request body is larger than the policy allows.
    #[error("request body exceeds the limit of {limit} bytes")]
    RequestTooLarge {
        /// The declared size, when known.
        size: Option<u64>,
        /// The limit.
        limit: u64,
    },
    /// The response body is larger than the policy allows.
    #[error("response body exceeds the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The declared size, when known.
        size: Option<u64>,
        /// The limit.
        limit: u64,
    },
    /// The URL (or a redirect's `location`) is not a usable absolute http(s) URL.
    #[error("invalid request url")]
    InvalidUri,
    /// No response head within the request timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The response body did not arrive within the request timeout.
    #[error("response body not received within {0:?}")]
    ReadTimeout(Duration),
    /// No checked address accepted a connection.
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed.
    #[error("tls handshake failed")]
    Tls(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http exchange failed")]
    Protocol(#[source] hyper::Error),
    /// The caller's request body failed.
    #[error("request body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Time limits of one request sent with [`OutboundClient::send_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// Connecting (TCP and TLS handshake) to one checked address; a timeout is
    /// reported as [`OutboundError::Connect`] of kind `TimedOut`.
    pub connect: Duration,
    /// From sending the request to its response head (connecting included).
    pub head: Duration,
    /// Reading the whole body; `None`: no deadline (the caller times the reads).
    pub body: Option<Duration>,
}

/// An outbound HTTP client bound to one [`NetPolicy`], with a [`NetLog`] of what it
/// did. Cheap to clone (clones share the log and the request count).
///
/// The request cap counts over the client's life: make one per unit of work (a plugin
/// call, a run) or give a long-lived client `u32::MAX`.
#[derive(Debug, Clone)]
pub struct OutboundClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    policy: Arc<NetPolicy>,
    log: Arc<Mutex<NetLog>>,
    /// Kept-alive connections, when the client pools them.
    pool: Option<Pool>,
}

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Kept-alive connections of one client, each bound to the target it was checked for.
#[derive(Debug)]
struct Pool {
    max_idle: usize,
    idle: Mutex<Vec<Pooled>>,
}

/// One kept-alive connection.
struct Pooled {
    scheme: String,
    host: String,
    port: u16,
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<OutboundBody>,
    since: std::time::Instant,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("host", &self.host).field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Pool {
    /// An idle connection to one of the target's checked addresses, ready for a request.
    fn checkout(&self, target: &Target) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|p| !p.sender.is_closed() && p.since.elapsed() < POOL_IDLE);
        let position = idle.iter().position(|p| {
            p.scheme == target.scheme
                && p.host == target.host
                && p.port == target.port
                && target.addrs.contains(&p.addr)
                && p.sender.is_ready()
        })?;
        Some(idle.swap_remove(position))
    }

    /// Keeps a connection for later (it becomes ready once its response was read).
    fn checkin(&self, mut pooled: Pooled) {
        pooled.since = std::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(pooled);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let denials = lock(&self.log).denials;
        if denials > LOGGED_DENIALS {
            tracing::debug!(client = self.name, denials, "outbound requests denied in total");
        }
    }
}

pub(crate) fn lock(log: &Mutex<NetLog>) -> MutexGuard<'_, NetLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OutboundClient {
    /// A client named `name` (for logs: `plugin`, `model`, `webhook`…) under `policy`.
    pub fn new(name: &'static str, policy: Arc<NetPolicy>) -> Self {
        Self::with_log(name, policy, Arc::default())
    }

    /// A client that records into `log` (the sandbox reads it after the call).
    pub fn with_log(name: &'static str, policy: Arc<NetPolicy>, log: Arc<Mutex<NetLog>>) -> Self {
        Self { inner: Arc::new(Inner { name, policy, log, pool: None }) }
    }

    /// A long-lived client that keeps up to `max_idle` connections alive between
    /// requests (a model provider: no TCP and TLS handshake per call). A connection is
    /// reused only for the same scheme, host and port and an address the request's own
    /// check allowed, and only once its previous response was read to the end; a
    /// response dropped half-read closes its connection.
    pub fn pooled(name: &'static str, policy: Arc<NetPolicy>, max_idle: usize) -> Self {
        let pool = Pool { max_idle, idle: Mutex::new(Vec::new()) };
        Self { inner: Arc::new(Inner { name, policy, log: Arc::default(), pool: Some(pool) }) }
    }

    /// The policy it enforces.
    pub fn policy(&self) -> &NetPolicy {
        &self.inner.policy
    }

    /// What it has done so far.
    pub fn log(&self) -> NetLog {
        lock(&self.inner.log).clone()
    }

    /// Sends a request with a whole body and reads the whole response (at most the
    /// policy's `max_response_bytes`, within its `request_timeout`).
    pub async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, OutboundError> {
        let (parts, bytes) = request.into_parts();
        let response = self.send_streaming(Request::from_parts(parts, full_body(bytes))).await?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, bytes))
    }

    /// Sends a request whose body is any [`http_body::Body`] of bytes (another
    /// library's request, such as an object store client's) and reads the whole
    /// response, as [`send`](Self::send) does: the body streams out under the same
    /// checks and caps, its failure is [`OutboundError::Body`].
    pub async fn send_body<B>(&self, request: Request<B>) -> Result<Response<Bytes>, OutboundError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let request = request.map(|body| body.map_err(|err| OutboundError::Body(err.into())).boxed_unsync());
        let response = self.send_streaming(request).await?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, bytes))
    }

    /// Sends a request, following redirects for `GET` and `HEAD`, and returns the
    /// response with a body that fails past the size cap or the deadline.
    pub async fn send_streaming(
        &self,
        request: Request<OutboundBody>,
    ) -> Result<Response<OutboundBody>, OutboundError> {
        let timeout = self.inner.policy.request_timeout;
        let timeouts = StreamTimeouts { connect: timeout, head: timeout, body: Some(timeout) };
        self.send_with(request, timeouts).await
    }

    /// Sends a request like [`send_streaming`](Self::send_streaming), under `timeouts`
    /// instead of the policy's one deadline: a long streamed answer (a model's) needs a
    /// short connect timeout, a bound on the response head, and no deadline on the
    /// body (the caller times the gaps between chunks). The size cap still applies.
    /// Dropping the returned body before its end closes the connection.
    pub async fn send_stream(
        &self,
        request: Request<OutboundBody>,
        timeouts: StreamTimeouts,
    ) -> Result<Response<OutboundBody>, OutboundError> {
        self.send_with(request, timeouts).await
    }

    async fn send_with(
        &self,
        request: Request<OutboundBody>,
        timeouts: StreamTimeouts,
    ) -> Result<Response<OutboundBody>, OutboundError> {
        let policy = &*self.inner.policy;
        let log = &self.inner.log;
        let (mut parts, body) = request.into_parts();
        if let Some(length) = content_length(&parts.headers)
            && length > policy.max_request_bytes
        {
            let reason = format!("request body of {length} bytes exceeds the limit of {}", policy.max_request_bytes);
            return Err(self.deny(&parts.uri, reason));
        }
        let overflow = OutboundError::RequestTooLarge { size: None, limit: policy.max_request_bytes };
        let mut body = Some(CappedBody::new(body, policy.max_request_bytes, None, overflow).boxed_unsync());
        let mut origin: Option<(String, String, u16)> = None;
        for hop in 0..=MAX_REDIRECTS {
            {
                let mut state = lock(log);
                if state.requests >= policy.max_requests {
                    drop(state);
                    let reason = if policy.rules.is_empty() {
                        "no network access is granted (default deny)".to_owned()
                    } else {
                        format!("request limit of {} reached", policy.max_requests)
                    };
                    return Err(self.deny(&parts.uri, reason));
                }
                state.requests += 1;
            }
            let target = authorize(policy, &parts.uri).await.map_err(|reason| self.deny(&parts.uri, reason))?;
            let here = (target.scheme.clone(), target.host.clone(), target.port);
            match &origin {
                None => origin = Some(here),
                Some(first) if *first != here => {
                    // Credentials the caller set were meant for the first origin only
                    // (not for another host, nor in clear text, nor another port).
                    for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE] {
                        parts.headers.remove(name);
                    }
                }
                Some(_) => {}
            }
            let mut headers = parts.headers.clone();
            for secret in &policy.secrets {
                if secret.targets.iter().any(|t| t.matches(&target.scheme, &target.host, target.port)) {
                    let mut value = secret.value.clone();
                    value.set_sensitive(true);
                    headers.insert(secret.name.clone(), value);
                }
            }
            if let Some(authority) = parts.uri.authority() {
                headers.insert(HOST, HeaderValue::from_str(authority.as_str()).map_err(|_| OutboundError::InvalidUri)?);
            }
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let mut outgoing = Request::builder()
                .method(parts.method.clone())
                .uri(path)
                .body(body.take().unwrap_or_else(super::body::empty_body))
                .map_err(|_| OutboundError::InvalidUri)?;
            *outgoing.headers_mut() = headers;
            let pool = self.inner.pool.as_ref();
            let response = tokio::time::timeout(timeouts.head, exchange(&target, outgoing, timeouts.connect, pool))
                .await
                .map_err(|_| OutboundError::Timeout(timeouts.head))??;
            let redirect = response.status().is_redirection() && matches!(parts.method, Method::GET | Method::HEAD);
            let location = response.headers().get(LOCATION).and_then(|l| l.to_str().ok()).map(str::to_owned);
            match (redirect, location) {
                (true, Some(location)) if hop < MAX_REDIRECTS => {
                    parts.uri = resolve_location(&parts.uri, &location).ok_or(OutboundError::InvalidUri)?;
                }
                (true, Some(_)) => {
                    return Err(self.deny(&parts.uri, format!("more than {MAX_REDIRECTS} redirects")));
                }
                _ => {
                    let (response_parts, incoming) = response.into_parts();
                    let limit = policy.max_response_bytes;
                    if let Some(length) = content_length(&response_parts.headers)
                        && length > limit
                    {
                        return Err(OutboundError::ResponseTooLarge { size: Some(length), limit });
                    }
                    let mut capped = CappedBody::new(
                        incoming.map_err(OutboundError::Protocol).boxed_unsync(),
                        limit,
                        Some(log.clone()),
                        OutboundError::ResponseTooLarge { size: None, limit },
                    );
                    if let Some(deadline) = timeouts.body {
                        capped = capped.with_deadline(deadline);
                    }
                    return Ok(Response::from_parts(response_parts, capped.boxed_unsync()));
                }
            }
        }
        Err(self.deny(&parts.uri, format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Records a refusal (bounded) and logs the first few.
    fn deny(&self, uri: &Uri, reason: String) -> OutboundError {
        let url = display_url(uri);
        let count = lock(&self.inner.log).record_denial(Denial { url: url.clone(), reason: reason.clone() });
        if count <= LOGGED_DENIALS {
            tracing::info!(client = self.inner.name, %url, %reason, "outbound request denied");
        } else if count == LOGGED_DENIALS + 1 {
            tracing::info!(client = self.inner.name, "further denied requests of this client are counted, not logged");
        }
        OutboundError::Denied { url, reason }
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

fn display_url(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map_or("", |a| a.as_str());
    format!("{scheme}://{authority}{}", uri.path())
}

/// A request target that passed the checks.
#[derive(Debug)]
struct Target {
    addrs: Vec<SocketAddr>,
    tls_name: Option<rustls::pki_types::ServerName<'static>>,
    scheme: String,
    host: String,
    port: u16,
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
    let host = match &kind {
        HostKind::Ip(ip) => ip.to_string(),
        HostKind::Name(name) => name.clone(),
    };
    let rule = policy
        .rules
        .iter()
        .find(|rule| rule.matches(&scheme, &host, port) || rule.matches(&scheme, &raw_host.to_ascii_lowercase(), port))
        .ok_or_else(|| format!("no network rule allows {scheme}://{host}:{port} (default deny)"))?;
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
        return Err(format!("{host} has no addresses"));
    }
    if !rule.allow_private {
        for addr in &addrs {
            if let Some(why) = ip::restriction(addr.ip()) {
                return Err(format!(
                    "{host} resolves to {} ({}); rule {} does not allow private targets",
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
    Ok(Target { addrs, tls_name, scheme, host, port })
}

/// Connects to the first checked address that answers and exchanges one request.
async fn exchange(
    target: &Target,
    mut request: Request<OutboundBody>,
    connect_timeout: Duration,
    pool: Option<&Pool>,
) -> Result<Response<hyper::body::Incoming>, OutboundError> {
    if let Some(pool) = pool {
        while let Some(mut pooled) = pool.checkout(target) {
            match pooled.sender.try_send_request(request).await {
                Ok(response) => {
                    pool.checkin(pooled);
                    return Ok(response);
                }
                Err(mut err) => match err.take_message() {
                    // Not sent (the server closed the idle connection): another one.
                    Some(unsent) => request = unsent,
                    None => return Err(OutboundError::Protocol(err.into_error())),
                },
            }
        }
    }
    let mut last_error = None;
    let mut stream = None;
    for addr in &target.addrs {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(err)) => last_error = Some(err),
            Err(_) => {
                let message = format!("connecting timed out after {connect_timeout:?}");
                last_error = Some(std::io::Error::new(std::io::ErrorKind::TimedOut, message));
            }
        }
    }
    let stream = match (stream, last_error) {
        (Some(stream), _) => stream,
        (None, Some(err)) => return Err(OutboundError::Connect(err)),
        (None, None) => {
            return Err(OutboundError::Connect(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")));
        }
    };
    // Best effort: a socket that refuses the option still works, only slower.
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let io: Box<dyn Io> = match &target.tls_name {
        Some(name) => {
            let connector = tokio_rustls::TlsConnector::from(tls_config());
            let handshake =
                tokio::time::timeout(connect_timeout, connector.connect(name.clone(), stream)).await.map_err(|_| {
                    let message = format!("tls handshake timed out after {connect_timeout:?}");
                    OutboundError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
                })?;
            Box::new(handshake.map_err(OutboundError::Tls)?)
        }
        None => Box::new(stream),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(OutboundError::Protocol)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "outbound http connection ended with an error");
        }
    });
    let response = sender.send_request(request).await.map_err(OutboundError::Protocol)?;
    if let (Some(pool), Some(addr)) = (pool, peer) {
        pool.checkin(Pooled {
            scheme: target.scheme.clone(),
            host: target.host.clone(),
            port: target.port,
            addr,
            sender,
            since: std::time::Instant::now(),
        });
    }
    Ok(response)
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

#[cfg(test)]
mod tests {
    use super::super::policy::{HostPattern, NetRule};
    use super::*;

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
        let err = authorize(&deny_all, &"https://example.com/".parse().expect("uri")).await.expect_err("denied");
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
            "http://[2002:a9fe:a9fe::1]/",
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            "http://[64:ff9b:1::808:808]/",
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
