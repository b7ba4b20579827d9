//! `/mcp`: the MCP Streamable HTTP endpoint. Before a request reaches the MCP
//! transport it passes, in order: the Host and Origin allow-lists (DNS-rebinding
//! protection), bearer authentication (a tenant key; its caller goes into the request's
//! extensions), session ownership (a session id opened by another key is answered
//! exactly like an unknown one), and, for `initialize`, the cap on sessions per key
//! (`mcp.max_sessions_per_key`: 429 with a JSON-RPC error past it); a `GET` with
//! `Last-Event-ID` needs a session and an id whose later events are all still kept
//! (400 otherwise, where rmcp would answer an empty stream). The body limit is the
//! transport's (413). The answer stream of a `tools/call` of a `mcp.poll_tools` tool
//! ends after its priming event (SEP-1699 polling: the client resumes with GET).
//!
//! Sessions live in this process: behind several replicas, clients of the 2025-11-25
//! revision need sticky sessions; 2026-07-28 clients are stateless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use futures_util::StreamExt as _;

use super::Metrics;
use super::auth::bearer_token;
use super::error::{ApiError, ErrorBody, ErrorCode};
use crate::accounts::{Accounts, AuthError};
use crate::config::McpSettings;
use crate::mcp::HttpTransport;
use crate::tools::{Principal, principal};

const SESSION_HEADER: &str = "mcp-session-id";
const LAST_EVENT_ID: &str = "last-event-id";

/// Sessions the owner table holds before the first sweep of closed ones.
const FIRST_SWEEP_AT: usize = 64;

/// What the `/mcp` guard needs.
#[derive(Debug, Clone)]
pub(super) struct Guard {
    pub(super) accounts: Accounts,
    pub(super) allowed_hosts: Arc<[String]>,
    pub(super) allowed_origins: Arc<[String]>,
    pub(super) transport: HttpTransport,
    pub(super) owners: Arc<SessionOwners>,
    body_limit_bytes: usize,
    idle_timeout: Duration,
    /// Tools whose calls' POST streams close after their first event (`mcp.poll_tools`).
    poll_tools: Arc<[String]>,
}

impl Guard {
    pub(super) fn new(
        accounts: Accounts,
        settings: &McpSettings,
        transport: HttpTransport,
        body_limit_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            accounts,
            allowed_hosts: settings.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allowed_origins: settings.allowed_origins.iter().map(|o| normalize_origin(o)).collect(),
            transport,
            owners: Arc::new(SessionOwners::new(settings.max_sessions_per_key, metrics)),
            body_limit_bytes,
            idle_timeout: settings.session_idle_timeout,
            poll_tools: settings.poll_tools.iter().cloned().collect(),
        }
    }
}

/// Which key opened each live session, and how many sessions each key holds.
#[derive(Debug)]
pub(super) struct SessionOwners {
    inner: Mutex<Owners>,
    /// Sessions one key may hold (bound ones plus `initialize` requests in flight).
    cap: usize,
    /// Set while a sweep of closed sessions runs (one at a time).
    sweeping: AtomicBool,
    /// Where the number of sessions held is shown.
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Owners {
    by_session: HashMap<String, String>,
    per_key: HashMap<String, usize>,
    /// Size at which the next sweep runs.
    sweep_at: usize,
}

impl Owners {
    fn release(&mut self, key_id: &str) {
        if let Some(count) = self.per_key.get_mut(key_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_key.remove(key_id);
            }
        }
    }
}

/// The owner table, locked; the sessions gauge follows it when the lock is released.
struct Locked<'a> {
    owners: MutexGuard<'a, Owners>,
    metrics: &'a Metrics,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Owners;

    fn deref(&self) -> &Owners {
        &self.owners
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Owners {
        &mut self.owners
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.metrics.set_mcp_sessions(self.owners.by_session.len());
    }
}

/// A session slot held for an `initialize` in flight: bound to the session it opens,
/// or given back when dropped (the request failed, or the client went away).
struct Slot {
    owners: Arc<SessionOwners>,
    key_id: String,
    bound: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.bound {
            self.owners.lock().release(&self.key_id);
        }
    }
}

impl SessionOwners {
    fn new(cap: usize, metrics: Arc<Metrics>) -> Self {
        let owners = Owners { sweep_at: FIRST_SWEEP_AT, ..Owners::default() };
        Self { inner: Mutex::new(owners), cap: cap.max(1), sweeping: AtomicBool::new(false), metrics }
    }

    fn lock(&self) -> Locked<'_> {
        let owners = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Locked { owners, metrics: &self.metrics }
    }

    fn owner(&self, session: &str) -> Option<String> {
        self.lock().by_session.get(session).cloned()
    }

    fn try_take(self: &Arc<Self>, key_id: &str) -> Option<Slot> {
        let mut owners = self.lock();
        let count = owners.per_key.entry(key_id.to_owned()).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Slot { owners: self.clone(), key_id: key_id.to_owned(), bound: false })
    }

    /// A slot for a new session of `key_id`, or `None` when the key holds the cap even
    /// after forgetting its sessions that closed (idle timeout, shutdown).
    async fn reserve(self: &Arc<Self>, key_id: &str, transport: &HttpTransport) -> Option<Slot> {
        if let Some(slot) = self.try_take(key_id) {
            return Some(slot);
        }
        self.forget_closed(Some(key_id), transport).await;
        self.try_take(key_id)
    }

    /// Forgets sessions (of one key, or all) that the transport no longer has. Cancel
    /// safe: nothing changes until the liveness checks are done.
    async fn forget_closed(&self, key_id: Option<&str>, transport: &HttpTransport) {
        let candidates: Vec<String> = self
            .lock()
            .by_session
            .iter()
            .filter(|(_, owner)| key_id.is_none_or(|k| k == owner.as_str()))
            .map(|(session, _)| session.clone())
            .collect();
        let mut closed = Vec::new();
        for session in candidates {
            if !transport.session_is_live(&session).await {
                closed.push(session);
            }
        }
        let mut owners = self.lock();
        for session in &closed {
            if let Some(owner) = owners.by_session.remove(session) {
                owners.release(&owner);
            }
        }
    }

    /// Binds a new session to the key whose slot opened it. Every so often (when the
    /// table has doubled) a sweep of closed sessions runs on its own task, so a client
    /// going away cannot stop it half-way.
    fn bind(self: &Arc<Self>, session: String, mut slot: Slot, transport: &HttpTransport) {
        slot.bound = true;
        let due = {
            let mut owners = self.lock();
            owners.by_session.insert(session, slot.key_id.clone());
            owners.by_session.len() >= owners.sweep_at
        };
        if due && !self.sweeping.swap(true, Ordering::AcqRel) {
            let (owners, transport) = (self.clone(), transport.clone());
            tokio::spawn(async move {
                owners.forget_closed(None, &transport).await;
                let mut inner = owners.lock();
                inner.sweep_at = (inner.by_session.len() * 2).max(FIRST_SWEEP_AT);
                drop(inner);
                owners.sweeping.store(false, Ordering::Release);
            });
        }
    }

    fn forget(&self, session: &str) {
        let mut owners = self.lock();
        if let Some(owner) = owners.by_session.remove(session) {
            owners.release(&owner);
        }
    }
}

/// The parts of a JSON-RPC message the guard looks at.
#[derive(serde::Deserialize)]
struct Peek {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<PeekParams>,
}

/// The tool a `tools/call` names.
#[derive(serde::Deserialize)]
struct PeekParams {
    #[serde(default)]
    name: Option<String>,
}

/// The `/mcp` middleware: Host/Origin, authentication, session ownership, session cap.
pub(super) async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    check_host(request.headers(), &guard.allowed_hosts)?;
    check_origin(request.headers(), &guard.allowed_origins)?;
    let caller = match guard.accounts.authenticate(bearer_token(request.headers())?).await {
        Ok(Ok(caller)) => caller,
        Ok(Err(err)) => return Err(ApiError::unauthorized(err)),
        Err(err) => return Err(ApiError::internal(ErrorCode::Unavailable, &err)),
    };
    let span = tracing::Span::current();
    span.record("key_id", caller.key_id.as_str());
    let Some(tenant_id) = caller.scope.tenant_id() else {
        return Err(ApiError::new(ErrorCode::Forbidden, "platform-admin keys cannot use MCP; use a tenant key"));
    };
    span.record("tenant", tracing::field::display(tenant_id));
    let tenant = guard.accounts.tenant_name(tenant_id).await.map_err(|_| ApiError::unauthorized(AuthError::Invalid))?;
    let principal: Principal =
        principal(&caller, Some(tenant.as_str())).map_err(|e| ApiError::new(ErrorCode::Forbidden, e.to_string()))?;
    let session = request.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(session) = &session
        && guard.owners.owner(session).as_deref() != Some(principal.key_id.as_str())
    {
        // Unknown, closed, or opened by another key: the same answer.
        return Err(ApiError::new(ErrorCode::NotFound, "session not found; start a new one with initialize"));
    }
    let key_id = principal.key_id.clone();
    let method = request.method().clone();
    if method == Method::GET
        && let Some(last_event_id) = request.headers().get(LAST_EVENT_ID)
    {
        check_resume(session.as_deref(), last_event_id, &guard.transport)?;
    }
    let mut poll = false;
    if session.is_some() && method == Method::POST && !guard.poll_tools.is_empty() {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, guard.body_limit_bytes).await else {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, "request body is larger than the server accepts"));
        };
        poll = serde_json::from_slice::<Peek>(&bytes).ok().is_some_and(|peek| {
            peek.method.as_deref() == Some("tools/call")
                && peek.params.and_then(|p| p.name).is_some_and(|name| guard.poll_tools.contains(&name))
        });
        request = Request::from_parts(parts, Body::from(bytes));
    }
    let mut slot = None;
    if session.is_none() && method == Method::POST {
        // Only `initialize` opens a session: look at the message (the transport would
        // read it whole anyway) and hold a slot for it.
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, guard.body_limit_bytes).await else {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, "request body is larger than the server accepts"));
        };
        let peek = serde_json::from_slice::<Peek>(&bytes).ok();
        match peek {
            Some(peek) if peek.method.as_deref() == Some("initialize") => {
                match guard.owners.reserve(&key_id, &guard.transport).await {
                    Some(taken) => slot = Some(taken),
                    None => return Ok(too_many_sessions(peek.id, guard.owners.cap, guard.idle_timeout)),
                }
            }
            // A plain stateless call is answered without rmcp's per-request session.
            Some(peek) if peek.method.as_deref() == Some("tools/call") => {
                if let Some(answer) = guard.transport.plain_call(&principal, &parts.headers, &bytes).await {
                    let mut response = Response::new(Body::from(answer.body));
                    *response.status_mut() = answer.status;
                    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    return Ok(response);
                }
            }
            _ => {}
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    request.extensions_mut().insert(principal);
    // The key stays here: nothing past this point (the transport, its logs, plugins)
    // needs it, and the caller travels as the principal.
    request.headers_mut().remove(header::AUTHORIZATION);
    let mut response = next.run(request).await;
    if poll && is_event_stream(&response) {
        // SEP-1699 polling: the stream ends after its first event (the priming event:
        // an id and a `retry`); the call runs on, and the client reconnects with GET and
        // Last-Event-ID for everything after it, the result included.
        let (parts, body) = response.into_parts();
        response = Response::from_parts(parts, Body::from_stream(body.into_data_stream().take(1)));
    }
    if method == Method::DELETE && response.status() == StatusCode::ACCEPTED {
        // A closed session is done, not accepted for later: some clients (Python `mcp`)
        // only take 200/204 for it.
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    match (&session, response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok())) {
        (None, Some(opened)) => {
            let slot = match slot {
                Some(slot) => slot,
                // A session opened by something other than a peeked `initialize`
                // still counts against its key.
                None => {
                    let mut owners = guard.owners.lock();
                    *owners.per_key.entry(key_id.clone()).or_default() += 1;
                    drop(owners);
                    Slot { owners: guard.owners.clone(), key_id, bound: false }
                }
            };
            guard.owners.bind(opened.to_owned(), slot, &guard.transport);
        }
        (Some(session), _) if method == Method::DELETE && response.status().is_success() => {
            guard.owners.forget(session);
        }
        _ => {}
    }
    Ok(response)
}

/// Whether a response is an SSE stream.
fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A GET with `Last-Event-ID` resumes a stream of the session it names, and only
/// when every event after that id is still kept: past the buffer's bounds the client
/// hears so, rather than getting a stream with a gap.
fn check_resume(session: Option<&str>, last_event_id: &HeaderValue, transport: &HttpTransport) -> Result<(), ApiError> {
    if session.is_none() {
        return Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            "resuming a stream with Last-Event-ID needs the mcp-session-id of the session it belongs to",
        ));
    }
    let id = last_event_id.to_str().unwrap_or_default();
    transport.check_resume(id).map_err(|e| ApiError::new(ErrorCode::InvalidLastEventId, e.to_string()))
}

/// 429 with a JSON-RPC error: the key holds `cap` sessions.
fn too_many_sessions(id: Option<serde_json::Value>, cap: usize, idle: Duration) -> Response {
    let message = format!(
        "this API key already holds {cap} open MCP sessions (mcp.max_sessions_per_key); close one with \
         DELETE /mcp and its mcp-session-id header, or wait until an idle one closes (after {})",
        humantime::format_duration(idle)
    );
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.unwrap_or(serde_json::Value::Null),
        "error": { "code": -32000, "message": message, "data": { "max_sessions_per_key": cap } },
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    response
}

/// MCP over Streamable HTTP: a JSON-RPC request, notification or response. An
/// `initialize` without a session id opens a session (2025-11-25, its id in the
/// `mcp-session-id` response header); 2026-07-28 requests are stateless.
#[utoipa::path(post, path = "/mcp", tag = "mcp", security(("bearer" = [])),
    request_body(content = Object, content_type = "application/json", description = "a JSON-RPC message"),
    params(("mcp-session-id" = Option<String>, Header, description = "the session (2025-11-25 revision)")),
    responses(
        (status = 200, description = "the JSON-RPC answer (application/json, or text/event-stream)"),
        (status = 202, description = "a notification or response was accepted"),
        (status = 400, description = "not a valid JSON-RPC message or protocol misuse"),
        (status = 403, body = ErrorBody, description = "Host or Origin not allowed, or a platform-admin key"),
        (status = 404, body = ErrorBody, description = "unknown or closed session, or another key's"),
        (status = 406, description = "the Accept header lacks application/json and text/event-stream"),
        (status = 413, body = ErrorBody, description = "the body is larger than the server accepts"),
        (status = 415, description = "the body is not application/json"),
        (status = 429, description = "the key holds mcp.max_sessions_per_key sessions (JSON-RPC error body)"),
    ))]
#[allow(dead_code, reason = "documents the MCP transport mounted at /mcp")]
pub(super) fn mcp_post() {}

/// The session's stream of server messages (2025-11-25 revision); with `Last-Event-ID`,
/// the rest of the stream that event belongs to (SEP-1699 resumption).
#[utoipa::path(get, path = "/mcp", tag = "mcp", security(("bearer" = [])),
    params(("mcp-session-id" = String, Header, description = "the session"),
        ("last-event-id" = Option<String>, Header, description = "resume the stream after this event")),
    responses(
        (status = 200, description = "server-sent events", content_type = "text/event-stream"),
        (status = 400, description = "no session id, or (invalid_last_event_id) events after Last-Event-ID are no longer all kept"),
        (status = 403, body = ErrorBody, description = "Host or Origin not allowed, or a platform-admin key"),
        (status = 404, body = ErrorBody, description = "unknown or closed session, or another key's"),
        (status = 405, description = "no stream (nor resumption) without a session"),
        (status = 406, description = "the Accept header lacks text/event-stream"),
    ))]
#[allow(dead_code, reason = "documents the MCP transport mounted at /mcp")]
pub(super) fn mcp_get() {}

/// Closes a session (2025-11-25 revision), freeing its slot.
#[utoipa::path(delete, path = "/mcp", tag = "mcp", security(("bearer" = [])),
    params(("mcp-session-id" = String, Header, description = "the session")),
    responses(
        (status = 204, description = "closed"),
        (status = 400, description = "no session id"),
        (status = 403, body = ErrorBody, description = "Host or Origin not allowed, or a platform-admin key"),
        (status = 404, body = ErrorBody, description = "unknown or closed session, or another key's"),
    ))]
#[allow(dead_code, reason = "documents the MCP transport mounted at /mcp")]
pub(super) fn mcp_delete() {}

fn check_host(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(|h| h.trim().to_ascii_lowercase());
    let permitted = host.as_deref().is_some_and(|host| {
        let name = host_name(host);
        allowed.iter().any(|a| a == host || a.trim_start_matches('[').trim_end_matches(']') == name)
    });
    if permitted {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "Host `{}` is not allowed for /mcp (mcp.allowed_hosts)",
                host.unwrap_or_default().chars().take(128).collect::<String>()
            ),
        ))
    }
}

/// The name part of a `Host` value: `a.example:80` → `a.example`, `[::1]:80` → `::1`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().map(normalize_origin).unwrap_or_default();
    if allowed.contains(&origin) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "Origin `{}` is not allowed for /mcp (mcp.allowed_origins)",
                origin.chars().take(128).collect::<String>()
            ),
        ))
    }
}

/// An origin in comparable form: lower case, no trailing slash, no default port.
fn normalize_origin(origin: &str) -> String {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if let Some(rest) = origin.strip_prefix("http://")
        && let Some(name) = rest.strip_suffix(":80")
    {
        return format!("http://{name}");
    }
    if let Some(rest) = origin.strip_prefix("https://")
        && let Some(name) = rest.strip_suffix(":443")
    {
        return format!("https://{name}");
    }
    origin
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport over an empty catalog: no session id the tests make up is open.
    fn transport() -> HttpTransport {
        let dir = std::env::temp_dir().join("maestro-no-plugins");
        let sandbox = crate::sandbox::Sandbox::new(crate::sandbox::SandboxConfig::default()).expect("sandbox");
        let registry = Arc::new(crate::plugins::PluginRegistry::new(Arc::new(sandbox), dir.clone()));
        let policies = Arc::new(crate::policy::PolicyStore::fixed(maestro_core::policy::PolicySet::deny_all()));
        let tools =
            crate::tools::Tools::new(registry, policies, crate::tools::SecretValues::new(Default::default(), dir));
        let mcp = crate::mcp::Mcp::new(Arc::new(tools), crate::config::McpNames::Qualified);
        HttpTransport::new(mcp, &McpSettings::default(), 1 << 20, tokio_util::sync::CancellationToken::new())
    }

    async fn until_empty(owners: &SessionOwners) {
        for _ in 0..200 {
            if owners.lock().by_session.is_empty() && !owners.sweeping.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the sweep did not finish");
    }

    #[tokio::test]
    async fn sweeps_run_on_their_own_task_and_run_again_later() {
        let (transport, metrics) = (transport(), Arc::new(Metrics::default()));
        let owners = Arc::new(SessionOwners::new(10_000, metrics.clone()));
        for round in 0..2 {
            for i in 0..FIRST_SWEEP_AT {
                let slot = owners.try_take("key_a").expect("under the cap");
                // `bind` is synchronous: the request that triggers a sweep cannot stop it.
                owners.bind(format!("closed-{round}-{i}"), slot, &transport);
            }
            until_empty(&owners).await;
            assert!(owners.lock().per_key.is_empty(), "round {round}: the key's slots are free again");
            assert_eq!(owners.lock().sweep_at, FIRST_SWEEP_AT, "round {round}: the next sweep is armed");
        }
        assert!(metrics.render().contains("\nmaestro_mcp_sessions 0\n"));
    }

    #[tokio::test]
    async fn a_key_at_its_cap_gets_the_slots_of_its_closed_sessions_back() {
        let transport = transport();
        let owners = Arc::new(SessionOwners::new(2, Arc::default()));
        for i in 0..2 {
            let slot = owners.try_take("key_a").expect("under the cap");
            owners.bind(format!("closed-{i}"), slot, &transport);
        }
        assert!(owners.try_take("key_a").is_none(), "at the cap");
        assert!(owners.try_take("key_b").is_some(), "caps are per key");
        // An abandoned reservation changes nothing (cancel safety)...
        drop(owners.reserve("key_a", &transport));
        assert_eq!(owners.lock().by_session.len(), 2);
        // ...and a real one finds the closed sessions and frees their slots.
        let slot = owners.reserve("key_a", &transport).await.expect("slots of closed sessions come back");
        drop(slot);
        assert!(owners.lock().by_session.is_empty());
        assert_eq!(owners.lock().per_key.get("key_a"), None, "a dropped slot is given back");
    }

    #[test]
    fn host_names_and_origins_compare_in_normal_form() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("mcp.example.com"), "mcp.example.com");
        assert_eq!(normalize_origin("HTTPS://App.Example.com:443/"), "https://app.example.com");
        assert_eq!(normalize_origin("http://localhost:80"), "http://localhost");
        assert_eq!(normalize_origin("http://localhost:6274"), "http://localhost:6274");
    }
}
