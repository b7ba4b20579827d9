//! Liveness, readiness and metrics: unauthenticated, for orchestrators and scrapers.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::Shared;
use super::error::{ApiError, ErrorBody, ErrorCode};

/// Health and readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// The store backend (`sqlite` or `postgres`), on `/readyz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
    /// The embedder, on `/readyz`. Not ready does not make the server unready: only
    /// memory and semantic search need it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedder: Option<EmbedderReport>,
}

/// The embedder's state on `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbedderReport {
    /// `provider/model@dimensions`, e.g. `minilm/all-MiniLM-L6-v2@384`.
    pub name: String,
    /// `ready`, `loading` (calls wait for it) or `unavailable` (calls fail).
    pub status: &'static str,
    /// Why it is unavailable (e.g. `the model files are missing: run scripts/model.sh`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EmbedderReport {
    fn of(embedder: &dyn maestro_core::embed::Embedder) -> Self {
        use maestro_core::embed::EmbedderStatus;
        let (status, detail) = match embedder.status() {
            EmbedderStatus::Ready => ("ready", None),
            EmbedderStatus::Loading => ("loading", None),
            EmbedderStatus::Unavailable(why) => ("unavailable", Some(why)),
        };
        Self { name: embedder.info().key(), status, detail }
    }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Status)))]
pub(super) async fn healthz() -> Json<Status> {
    Json(Status { status: "ok", store: None, embedder: None })
}

/// The process can serve requests: its store answers. Also reports the embedder.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody))
)]
pub(super) async fn readyz(State(state): State<Shared>) -> Result<Json<Status>, ApiError> {
    let store = state.accounts.store();
    store.ping().await.map_err(|e| ApiError::internal(ErrorCode::Unavailable, &e))?;
    let embedder = Some(EmbedderReport::of(state.embedder.as_ref()));
    Ok(Json(Status { status: "ready", store: Some(store.backend()), embedder }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str("# HELP maestro_tool_calls_in_flight Tool calls and persona renderings running in the sandbox.\n");
    text.push_str("# TYPE maestro_tool_calls_in_flight gauge\n");
    text.push_str(&format!("maestro_tool_calls_in_flight {}\n", state.tools.calls_in_flight()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
