//! The HTTP API (the only module that uses axum).
//!
//! Public: `/healthz`, `/readyz`, `/metrics`, `/v1/openapi.json`. Everything else under
//! `/v1` passes the bearer middleware first. Errors share one JSON shape ([`error`]).
//! [`routes`] is the one table of what the router serves; the OpenAPI document is
//! checked against it, and adds the statuses every route of a kind can answer (401 and
//! 503 behind the bearer check, 400/413/415/422 for JSON bodies). Every request runs in
//! a span with a request id ([`request_id`]).

pub mod admin;
pub mod artifacts;
mod auth;
pub mod billing;
pub mod credits;
pub mod documents;
pub mod error;
pub mod events;
pub mod exports;
mod extract;
pub mod health;
pub mod jobs;
mod mcp;
pub mod memories;
pub mod metrics;
pub mod request_id;
pub mod runs;
pub mod schedules;
pub mod search;
pub mod sessions;
pub mod tools;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use axum::{Json, Router, middleware};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use crate::accounts::Accounts;
use error::{ApiError, ErrorCode};
pub use metrics::Metrics;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Tenants and keys.
    pub accounts: Accounts,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// Plugins, policies and tool calls.
    pub tools: Arc<crate::tools::Tools>,
    /// The credit ledger.
    pub credits: Arc<crate::credits::Credits>,
    /// Background jobs.
    pub jobs: Arc<crate::jobs::Jobs>,
    /// Cancelled when the server shuts down: ends MCP sessions and open streams so
    /// graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Stripe top-ups; `None` when Stripe is not configured (billing routes answer 503).
    pub billing: Option<Arc<crate::billing::Billing>>,
    /// Sessions, messages, runs and their live events.
    pub orchestrator: Arc<crate::orchestrator::Orchestrator>,
    /// Living documents.
    pub documents: Arc<crate::documents::Documents>,
    /// Schedules.
    pub schedules: Arc<crate::schedules::Schedules>,
    /// Artifacts (document exports) and their blob store.
    pub artifacts: crate::artifacts::Artifacts,
    /// Memories; `None` when no embedder is configured (memory routes answer 503).
    pub memories: Option<Arc<crate::memory::Memories>>,
    /// The full-text index; `None` when this process keeps none (search answers 503).
    pub search: Option<crate::search::FullText>,
    /// The one embedder of memories and semantic search (`[embeddings]`).
    pub embedder: Arc<dyn maestro_core::embed::Embedder>,
    /// Hybrid retrieval (`POST /v1/search`); `None`: search answers 503.
    pub retrieval: Option<Arc<crate::retrieval::Retrieval>>,
}

/// The state handlers extract: one reference count to bump per request, where cloning
/// [`AppState`] itself would bump one per field (several times per request, on counters
/// every core shares).
pub(crate) type Shared = Arc<AppState>;

/// HTTP settings from the validated config.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// CORS allow-list; empty turns CORS off.
    pub cors_allow_origins: Vec<String>,
    /// The MCP endpoint.
    pub mcp: crate::config::McpSettings,
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Maestro API", description = "Self-hosted agent platform: tenants, keys, and (in later versions) tools, runs, credits and memory."),
    paths(
        health::healthz, health::readyz, health::metrics, openapi,
        mcp::mcp_post, mcp::mcp_get, mcp::mcp_delete,
        admin::create_tenant, admin::list_tenants,
        admin::create_key, admin::list_keys, admin::revoke_key,
        tools::list_plugins, tools::list_personas, tools::render_persona, tools::list_tools, tools::call_tool,
        credits::balance, credits::ledger, credits::grant,
        billing::checkout, billing::stripe_webhook,
        jobs::list,
        sessions::create, sessions::list, sessions::get_one, sessions::messages, sessions::post_message,
        sessions::events,
        runs::get_one, runs::cancel, runs::events,
        documents::create, documents::list, documents::get_one, documents::put, documents::versions,
        documents::version, documents::diff, documents::rollback,
        runs::answer,
        schedules::create, schedules::list, schedules::get_one, schedules::pause, schedules::resume,
        schedules::delete_one,
        artifacts::get_one, exports::export,
        memories::create, memories::list, memories::search, memories::get_one, memories::patch,
        memories::delete_one,
        search::search,
    ),
    modifiers(&BearerScheme, &CommonResponses),
    tags(
        (name = "health", description = "liveness, readiness, metrics, this document"),
        (name = "mcp", description = "the MCP Streamable HTTP endpoint (tenant keys)"),
        (name = "tenants", description = "tenants (platform admin)"),
        (name = "keys", description = "API keys (tenant admin)"),
        (name = "tools", description = "plugins, personas and tool calls (under the caller's policy)"),
        (name = "credits", description = "balances, the ledger, and grants (platform admin)"),
        (name = "billing", description = "Stripe top-ups: checkout (tenant admin) and the Stripe webhook"),
        (name = "jobs", description = "background jobs of every replica (platform admin)"),
        (name = "sessions", description = "sessions, their messages and their event stream (tenant keys: members post, viewers read)"),
        (name = "runs", description = "runs: state, usage, credits, cancel, and their event stream (tenant keys)"),
        (name = "documents", description = "living documents: versions, diffs, replacement against a version, rollback (tenant keys: members write, viewers read)"),
        (name = "schedules", description = "messages posted on a cron schedule into a session or a new one (tenant keys: members change, viewers read)"),
        (name = "artifacts", description = "files Maestro produced (document exports), by the SHA-256 of their bytes (tenant keys)"),
        (name = "memories", description = "what was remembered: see, edit, delete, search by meaning (tenant keys: members change, viewers read)"),
        (name = "search", description = "search over the tenant's messages, documents and memories: by words, by meaning, or both fused (tenant keys)"),
    )
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("mk_…").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Adds to every operation the statuses its kind of route can answer, from [`routes`].
#[derive(Debug)]
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for route in routes() {
            let Some(item) = openapi.paths.paths.get_mut(route.path) else { continue };
            let operation = match route.method {
                Method::GET => item.get.as_mut(),
                Method::POST => item.post.as_mut(),
                Method::DELETE => item.delete.as_mut(),
                Method::PUT => item.put.as_mut(),
                Method::PATCH => item.patch.as_mut(),
                _ => None,
            };
            let Some(operation) = operation else { continue };
            for (status, description) in route.common_statuses() {
                let error = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
                let response = ResponseBuilder::new().description(*description).content("application/json", error);
                operation.responses.responses.entry(status.to_string()).or_insert_with(|| response.into());
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A bearer API key (`/v1/...` and `/mcp`).
    Bearer,
    /// Stripe, authenticated by the webhook signature.
    StripeSignature,
}

/// One route the router serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path template, as in the OpenAPI document (`/v1/keys/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Whether it reads a JSON request body (so answers 400, 413, 415 and 422 to a bad one).
    pub json_body: bool,
}

impl Route {
    /// The statuses this kind of route can answer whatever its handler does.
    pub fn common_statuses(&self) -> &'static [(u16, &'static str)] {
        const BEARER: &[(u16, &str)] = &[
            (401, "missing, unknown, revoked or expired key"),
            (500, "internal error (logged with the request id)"),
            (503, "the store is not available"),
        ];
        const BEARER_JSON: &[(u16, &str)] = &[
            (400, "the body is not valid JSON"),
            (401, "missing, unknown, revoked or expired key"),
            (413, "the body is larger than the server accepts"),
            (415, "the body is not application/json"),
            (422, "the body does not fit the request"),
            (500, "internal error (logged with the request id)"),
            (503, "the store is not available"),
        ];
        match (self.access, self.json_body) {
            (Access::Bearer, false) => BEARER,
            (Access::Bearer, true) => BEARER_JSON,
            _ => &[],
        }
    }
}

/// The routes of the `/mcp` endpoint (served by the MCP transport behind its guard).
const MCP_METHODS: [Method; 3] = [Method::POST, Method::GET, Method::DELETE];

/// Every route the router serves, with its handler (`None`: the MCP transport).
fn table() -> Vec<(Route, Option<MethodRouter<Shared>>)> {
    let route =
        |method: Method, path: &'static str, access: Access, json_body: bool| Route { method, path, access, json_body };
    use Access::{Bearer, Public, StripeSignature};
    let mut table = vec![
        (route(Method::GET, "/healthz", Public, false), Some(get(health::healthz))),
        (route(Method::GET, "/readyz", Public, false), Some(get(health::readyz))),
        (route(Method::GET, "/metrics", Public, false), Some(get(health::metrics))),
        (route(Method::GET, "/v1/openapi.json", Public, false), Some(get(openapi))),
        (route(Method::POST, "/v1/tenants", Bearer, true), Some(post(admin::create_tenant))),
        (route(Method::GET, "/v1/tenants", Bearer, false), Some(get(admin::list_tenants))),
        (route(Method::POST, "/v1/keys", Bearer, true), Some(post(admin::create_key))),
        (route(Method::GET, "/v1/keys", Bearer, false), Some(get(admin::list_keys))),
        (route(Method::DELETE, "/v1/keys/{id}", Bearer, false), Some(delete(admin::revoke_key))),
        (route(Method::GET, "/v1/plugins", Bearer, false), Some(get(tools::list_plugins))),
        (route(Method::GET, "/v1/personas", Bearer, false), Some(get(tools::list_personas))),
        (route(Method::POST, "/v1/personas/{name}/render", Bearer, true), Some(post(tools::render_persona))),
        (route(Method::GET, "/v1/tools", Bearer, false), Some(get(tools::list_tools))),
        (route(Method::POST, "/v1/tools/{name}/call", Bearer, true), Some(post(tools::call_tool))),
        (route(Method::GET, "/v1/credits", Bearer, false), Some(get(credits::balance))),
        (route(Method::GET, "/v1/credits/ledger", Bearer, false), Some(get(credits::ledger))),
        (route(Method::POST, "/v1/credits/grants", Bearer, true), Some(post(credits::grant))),
        (route(Method::GET, "/v1/jobs", Bearer, false), Some(get(jobs::list))),
        (route(Method::POST, "/v1/billing/checkout", Bearer, true), Some(post(billing::checkout))),
        (route(Method::POST, "/v1/sessions", Bearer, true), Some(post(sessions::create))),
        (route(Method::GET, "/v1/sessions", Bearer, false), Some(get(sessions::list))),
        (route(Method::GET, "/v1/sessions/{id}", Bearer, false), Some(get(sessions::get_one))),
        (route(Method::GET, "/v1/sessions/{id}/messages", Bearer, false), Some(get(sessions::messages))),
        (route(Method::POST, "/v1/sessions/{id}/messages", Bearer, true), Some(post(sessions::post_message))),
        (route(Method::GET, "/v1/sessions/{id}/events", Bearer, false), Some(get(sessions::events))),
        (route(Method::GET, "/v1/runs/{id}", Bearer, false), Some(get(runs::get_one))),
        (route(Method::POST, "/v1/runs/{id}/cancel", Bearer, false), Some(post(runs::cancel))),
        (route(Method::GET, "/v1/runs/{id}/events", Bearer, false), Some(get(runs::events))),
        (route(Method::POST, "/v1/documents", Bearer, true), Some(post(documents::create))),
        (route(Method::GET, "/v1/documents", Bearer, false), Some(get(documents::list))),
        (route(Method::GET, "/v1/documents/{id}", Bearer, false), Some(get(documents::get_one))),
        (route(Method::PUT, "/v1/documents/{id}", Bearer, true), Some(put(documents::put))),
        (route(Method::GET, "/v1/documents/{id}/versions", Bearer, false), Some(get(documents::versions))),
        (route(Method::GET, "/v1/documents/{id}/versions/{version}", Bearer, false), Some(get(documents::version))),
        (route(Method::GET, "/v1/documents/{id}/diff", Bearer, false), Some(get(documents::diff))),
        (route(Method::POST, "/v1/documents/{id}/rollback", Bearer, true), Some(post(documents::rollback))),
        (route(Method::POST, "/v1/runs/{id}/answer", Bearer, true), Some(post(runs::answer))),
        (route(Method::POST, "/v1/schedules", Bearer, true), Some(post(schedules::create))),
        (route(Method::GET, "/v1/schedules", Bearer, false), Some(get(schedules::list))),
        (route(Method::GET, "/v1/schedules/{id}", Bearer, false), Some(get(schedules::get_one))),
        (route(Method::DELETE, "/v1/schedules/{id}", Bearer, false), Some(delete(schedules::delete_one))),
        (route(Method::POST, "/v1/schedules/{id}/pause", Bearer, false), Some(post(schedules::pause))),
        (route(Method::POST, "/v1/schedules/{id}/resume", Bearer, false), Some(post(schedules::resume))),
        (route(Method::GET, "/v1/artifacts/{sha256}", Bearer, false), Some(get(artifacts::get_one))),
        (route(Method::GET, "/v1/documents/{id}/export", Bearer, false), Some(get(exports::export))),
        (route(Method::POST, "/v1/memories", Bearer, true), Some(post(memories::create))),
        (route(Method::GET, "/v1/memories", Bearer, false), Some(get(memories::list))),
        (route(Method::POST, "/v1/memories/search", Bearer, true), Some(post(memories::search))),
        (route(Method::GET, "/v1/memories/{id}", Bearer, false), Some(get(memories::get_one))),
        (route(Method::PATCH, "/v1/memories/{id}", Bearer, true), Some(patch(memories::patch))),
        (route(Method::DELETE, "/v1/memories/{id}", Bearer, false), Some(delete(memories::delete_one))),
        (route(Method::POST, "/v1/search", Bearer, true), Some(post(search::search))),
        // Stripe calls this without a bearer key; the signature authenticates it.
        (
            route(Method::POST, "/v1/billing/stripe/webhook", StripeSignature, false),
            Some(post(billing::stripe_webhook)),
        ),
    ];
    for method in MCP_METHODS {
        // The MCP transport answers bad bodies itself (documented on the operations).
        table.push((route(method, "/mcp", Bearer, false), None));
    }
    table
}

/// Every route the router serves: method, path template and access.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
}

/// The application's router.
pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    let state = Arc::new(state);
    let (mut public, mut authenticated) = (Router::new(), Router::new());
    for (route, handler) in table() {
        let Some(handler) = handler else { continue };
        match route.access {
            Access::Bearer => authenticated = authenticated.route(route.path, handler),
            Access::Public | Access::StripeSignature => public = public.route(route.path, handler),
        }
    }
    let authenticated = authenticated.route_layer(middleware::from_fn_with_state(state.clone(), auth::require_caller));
    let runs = crate::orchestrator::tools::OrchestratorSlot::default();
    runs.bind(&state.orchestrator);
    let agents = crate::mcp::Agents { documents: state.documents.clone(), runs, memories: state.memories.clone() };
    let mcp_service = crate::mcp::Mcp::with_agents(state.tools.clone(), settings.mcp.names, agents);
    if let Some(secret) = &settings.mcp.state_secret {
        mcp_service.seal_states_with(&secret.0);
    }
    let transport =
        crate::mcp::HttpTransport::new(mcp_service, &settings.mcp, settings.body_limit_bytes, state.shutdown.clone());
    let guard = mcp::Guard::new(
        state.accounts.clone(),
        &settings.mcp,
        transport.clone(),
        settings.body_limit_bytes,
        state.metrics.clone(),
    );
    let mcp_route =
        Router::new().route_service("/mcp", transport.service).layer(middleware::from_fn_with_state(guard, mcp::guard));
    let mut app = public
        .merge(authenticated)
        .merge(mcp_route)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), metrics::track));
    if !settings.cors_allow_origins.is_empty() {
        let origins = settings.cors_allow_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok());
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::PUT, Method::PATCH])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static(request_id::HEADER),
                header::HeaderName::from_static("last-event-id"),
                header::IF_MATCH,
            ])
            .expose_headers([header::HeaderName::from_static(request_id::HEADER), header::ETAG]);
        app = app.layer(cors);
    }
    // Outermost: every response, CORS preflights and errors included, carries the id.
    app.layer(middleware::from_fn(request_id::assign)).with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes, then drains in-flight
/// requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        // Small request/response exchanges must not wait on Nagle's algorithm.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(%err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
