//! Liveness, readiness and metrics: unauthenticated, for orchestrators and scrapers.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};

/// Health and readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// The store backend (`sqlite` or `postgres`), on `/readyz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Status)))]
pub(super) async fn healthz() -> Json<Status> {
    Json(Status { status: "ok", store: None })
}

/// The process can serve requests: its store answers.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody))
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    let store = state.accounts.store();
    store.ping().await.map_err(|e| ApiError::internal(ErrorCode::Unavailable, &e))?;
    Ok(Json(Status { status: "ready", store: Some(store.backend()) }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str("# HELP maestro_tool_calls_in_flight Tool calls and persona renderings running in the sandbox.\n");
    text.push_str("# TYPE maestro_tool_calls_in_flight gauge\n");
    text.push_str(&format!("maestro_tool_calls_in_flight {}\n", state.tools.calls_in_flight()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
