//! The HTTP API (the only module that uses axum).
//!
//! Public: `/healthz`, `/readyz`, `/metrics`, `/v1/openapi.json`. Everything else under
//! `/v1` passes the bearer middleware first. Errors share one JSON shape ([`error`]).

pub mod admin;
mod auth;
pub mod billing;
pub mod credits;
pub mod error;
mod extract;
pub mod health;
pub mod jobs;
mod mcp;
pub mod metrics;
pub mod tools;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{delete, get, post};
use axum::{Json, Router, middleware};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

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
}

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
        health::healthz, health::readyz, health::metrics,
        admin::create_tenant, admin::list_tenants,
        admin::create_key, admin::list_keys, admin::revoke_key,
        tools::list_plugins, tools::list_personas, tools::list_tools, tools::call_tool,
        credits::balance, credits::ledger, credits::grant,
        billing::checkout, billing::stripe_webhook,
        jobs::list,
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "health", description = "liveness, readiness, metrics"),
        (name = "tenants", description = "tenants (platform admin)"),
        (name = "keys", description = "API keys (tenant admin)"),
        (name = "tools", description = "plugins, personas and tool calls (under the caller's policy)"),
        (name = "credits", description = "balances, the ledger, and grants (platform admin)"),
        (name = "billing", description = "Stripe top-ups: checkout (tenant admin) and the Stripe webhook"),
        (name = "jobs", description = "background jobs of every replica (platform admin)"),
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

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
}

/// The application's router.
pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    let authenticated = Router::new()
        .route("/tenants", post(admin::create_tenant).get(admin::list_tenants))
        .route("/keys", post(admin::create_key).get(admin::list_keys))
        .route("/keys/{id}", delete(admin::revoke_key))
        .route("/plugins", get(tools::list_plugins))
        .route("/personas", get(tools::list_personas))
        .route("/tools", get(tools::list_tools))
        .route("/tools/{name}/call", post(tools::call_tool))
        .route("/credits", get(credits::balance))
        .route("/credits/ledger", get(credits::ledger))
        .route("/credits/grants", post(credits::grant))
        .route("/jobs", get(jobs::list))
        // --- billing (Stripe top-ups) ---
        .route("/billing/checkout", post(billing::checkout))
        // --- end billing ---
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_caller));
    let v1 = authenticated
        .route("/openapi.json", get(openapi))
        // --- billing: Stripe calls this without a bearer key; the signature authenticates it ---
        .route("/billing/stripe/webhook", post(billing::stripe_webhook));
    // --- end billing ---
    let mcp_service = crate::mcp::Mcp::new(state.tools.clone(), settings.mcp.names);
    let transport =
        crate::mcp::HttpTransport::new(mcp_service, &settings.mcp, settings.body_limit_bytes, state.shutdown.clone());
    let guard = mcp::Guard::new(state.accounts.clone(), &settings.mcp, transport.clone());
    let mcp_route =
        Router::new().route_service("/mcp", transport.service).layer(middleware::from_fn_with_state(guard, mcp::guard));
    let mut app = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .nest("/v1", v1)
        .merge(mcp_route)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), metrics::track));
    if !settings.cors_allow_origins.is_empty() {
        let origins = settings.cors_allow_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok());
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
        app = app.layer(cors);
    }
    app.with_state(state)
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
