//! `/mcp`: the MCP Streamable HTTP endpoint. Before a request reaches the MCP
//! transport it passes, in order: the Host and Origin allow-lists (DNS-rebinding
//! protection), bearer authentication (a tenant key; its caller goes into the request's
//! extensions), and session ownership (a session id opened by another key is answered
//! exactly like an unknown one). The body limit is the transport's (413).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::auth::bearer_token;
use super::error::{ApiError, ErrorCode};
use crate::accounts::{Accounts, AuthError};
use crate::config::McpSettings;
use crate::mcp::HttpTransport;
use crate::tools::{Principal, principal};

const SESSION_HEADER: &str = "mcp-session-id";

/// What the `/mcp` guard needs.
#[derive(Debug, Clone)]
pub(super) struct Guard {
    pub(super) accounts: Accounts,
    pub(super) allowed_hosts: Arc<[String]>,
    pub(super) allowed_origins: Arc<[String]>,
    pub(super) transport: HttpTransport,
    pub(super) owners: Arc<SessionOwners>,
}

impl Guard {
    pub(super) fn new(accounts: Accounts, settings: &McpSettings, transport: HttpTransport) -> Self {
        Self {
            accounts,
            allowed_hosts: settings.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allowed_origins: settings.allowed_origins.iter().map(|o| normalize_origin(o)).collect(),
            transport,
            owners: Arc::default(),
        }
    }
}

/// Which key opened each live session.
#[derive(Debug, Default)]
pub(super) struct SessionOwners {
    owners: Mutex<HashMap<String, String>>,
    /// Size at which the next sweep of closed sessions runs.
    sweep_at: Mutex<usize>,
}

impl SessionOwners {
    fn owner(&self, session: &str) -> Option<String> {
        self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(session).cloned()
    }

    async fn bind(&self, session: String, key_id: String, transport: &HttpTransport) {
        let len = {
            let mut owners = self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            owners.insert(session, key_id);
            owners.len()
        };
        let due = {
            let mut sweep_at = self.sweep_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = len >= (*sweep_at).max(64);
            if due {
                *sweep_at = usize::MAX;
            }
            due
        };
        if due {
            // Forget sessions that closed (idle timeout, DELETE, shutdown).
            let sessions: Vec<String> =
                self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect();
            let mut closed = Vec::new();
            for session in sessions {
                if !transport.session_is_live(&session).await {
                    closed.push(session);
                }
            }
            let mut owners = self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for session in &closed {
                owners.remove(session);
            }
            *self.sweep_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = owners.len() * 2;
        }
    }

    fn forget(&self, session: &str) {
        self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(session);
    }
}

/// The `/mcp` middleware: Host/Origin, authentication, session ownership.
pub(super) async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    check_host(request.headers(), &guard.allowed_hosts)?;
    check_origin(request.headers(), &guard.allowed_origins)?;
    let caller = match guard.accounts.authenticate(bearer_token(request.headers())?).await {
        Ok(Ok(caller)) => caller,
        Ok(Err(err)) => return Err(ApiError::unauthorized(err)),
        Err(err) => return Err(ApiError::internal(ErrorCode::Unavailable, &err)),
    };
    tracing::Span::current().record("key_id", caller.key_id.as_str());
    let Some(tenant_id) = caller.scope.tenant_id() else {
        return Err(ApiError::new(ErrorCode::Forbidden, "platform-admin keys cannot use MCP; use a tenant key"));
    };
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
    request.extensions_mut().insert(principal);
    // The key stays here: nothing past this point (the transport, its logs, plugins)
    // needs it, and the caller travels as the principal.
    request.headers_mut().remove(header::AUTHORIZATION);
    let mut response = next.run(request).await;
    if method == Method::DELETE && response.status() == axum::http::StatusCode::ACCEPTED {
        // A closed session is done, not accepted for later: some clients (Python `mcp`)
        // only take 200/204 for it.
        *response.status_mut() = axum::http::StatusCode::NO_CONTENT;
    }
    match (&session, response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok())) {
        (None, Some(opened)) => guard.owners.bind(opened.to_owned(), key_id, &guard.transport).await,
        (Some(session), _) if method == Method::DELETE && response.status().is_success() => {
            guard.owners.forget(session);
        }
        _ => {}
    }
    Ok(response)
}

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
    use super::{host_name, normalize_origin};

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
