//! `/v1/credits`: a tenant's balance (any role), its ledger (tenant admin or platform
//! admin), and grants (platform admin, with a required `Idempotency-Key`).

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use maestro_core::{Caller, Role, TenantId, TransactionKind, TransactionQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::resolve_tenant;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{StrictJson, StrictQuery};
use super::{AppState, Shared};
use crate::credits::CreditsError;

/// Query of `GET /v1/credits`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BalanceQuery {
    /// Tenant name (platform admins; a tenant key may only name its own tenant).
    pub tenant: Option<String>,
}

/// A tenant's credits.
#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceView {
    /// Tenant id.
    pub tenant: String,
    /// Credits that can be spent now.
    pub available: i64,
    /// Credits reserved by open holds (spent when they settle).
    pub held: i64,
}

/// Query of `GET /v1/credits/ledger`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    /// Tenant name (platform admins).
    pub tenant: Option<String>,
    /// Continue after this cursor (`next` of the previous page).
    pub after: Option<String>,
    /// Only transactions posted at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only transactions posted before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Comma-separated kinds: grant, purchase, purchase_reversal, debit, refund, reserve,
    /// settle, void, expire.
    pub kind: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
}

/// A page of the ledger, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerPage {
    /// Transactions with their entries.
    #[schema(value_type = Vec<Object>)]
    pub transactions: Vec<maestro_core::Transaction>,
    /// Cursor of the next page; absent on the last page.
    pub next: Option<String>,
}

/// Body of `POST /v1/credits/grants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Tenant name.
    pub tenant: String,
    /// Credits to grant (1 to 10^12).
    pub amount: i64,
    /// Why (shown in the ledger).
    #[serde(default)]
    pub memo: String,
}

/// A posted grant.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    /// The transaction (the original one when the key was used before).
    #[schema(value_type = Object)]
    pub transaction: maestro_core::Transaction,
    /// The balance right after it was posted.
    pub balance: BalanceView,
    /// Whether this repeated an earlier request with the same idempotency key.
    pub replayed: bool,
}

fn credits_error(err: CreditsError) -> ApiError {
    match err {
        CreditsError::Insufficient { available, needed } => {
            ApiError::new(ErrorCode::InsufficientCredits, err.to_string())
                .with_details(serde_json::json!({ "balance": available, "price": needed }))
        }
        CreditsError::InvalidAmount(_) | CreditsError::InvalidKey | CreditsError::InvalidExpiry => {
            ApiError::new(ErrorCode::InvalidRequest, err.to_string())
        }
        CreditsError::IdempotencyConflict { .. }
        | CreditsError::HoldClosed { .. }
        | CreditsError::ExceedsHold { .. }
        | CreditsError::AlreadyRefunded(_) => ApiError::new(ErrorCode::Conflict, err.to_string()),
        CreditsError::NotFound(_) => ApiError::new(ErrorCode::NotFound, err.to_string()),
        CreditsError::Store(store) => ApiError::internal(ErrorCode::Unavailable, &store),
    }
}

/// The tenant a credits request is about: a tenant key's own, or the one a platform
/// admin names (it must name one).
async fn tenant_of(state: &AppState, caller: &Caller, role: Role, named: Option<&str>) -> Result<TenantId, ApiError> {
    let own = caller.require_role(role)?.cloned();
    resolve_tenant(state, own.as_ref(), named)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "name the tenant with ?tenant=NAME"))
}

/// The tenant's balance.
#[utoipa::path(get, path = "/v1/credits", tag = "credits", params(BalanceQuery), security(("bearer" = [])),
    responses((status = 200, body = BalanceView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn balance(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictQuery(query): StrictQuery<BalanceQuery>,
) -> Result<Json<BalanceView>, ApiError> {
    let tenant = tenant_of(&state, &caller, Role::Viewer, query.tenant.as_deref()).await?;
    let balance = state.credits.balance(&tenant).await.map_err(credits_error)?;
    Ok(Json(BalanceView { tenant: tenant.to_string(), available: balance.available, held: balance.held }))
}

/// The tenant's ledger, oldest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/credits/ledger", tag = "credits", params(LedgerQuery), security(("bearer" = [])),
    responses((status = 200, body = LedgerPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn ledger(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictQuery(query): StrictQuery<LedgerQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    let tenant = tenant_of(&state, &caller, Role::Admin, query.tenant.as_deref()).await?;
    let kinds = match query.kind.as_deref() {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                TransactionKind::parse(k)
                    .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, format!("unknown transaction kind `{k}`")))
            })
            .collect::<Result<_, _>>()?,
    };
    if let Some(limit) = query.limit
        && !(1..=TransactionQuery::MAX_LIMIT).contains(&limit)
    {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "limit must be between 1 and 500"));
    }
    let query = TransactionQuery {
        after: query.after,
        since: query.since,
        until: query.until,
        kinds,
        limit: query.limit.unwrap_or(0),
    };
    let page = state.credits.transactions(&tenant, &query).await.map_err(credits_error)?;
    Ok(Json(LedgerPage { transactions: page.transactions, next: page.next }))
}

/// Grants credits to a tenant (platform admin). The `Idempotency-Key` header is
/// required: repeating a request with the same key returns the original grant (200)
/// instead of granting again; the same key with a different request is a conflict.
#[utoipa::path(post, path = "/v1/credits/grants", tag = "credits", request_body = GrantRequest,
    params(("Idempotency-Key" = String, Header, description = "1 to 200 printable ASCII characters")),
    security(("bearer" = [])),
    responses((status = 201, body = GrantView), (status = 200, body = GrantView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn grant(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    StrictJson(body): StrictJson<GrantRequest>,
) -> Result<(StatusCode, Json<GrantView>), ApiError> {
    if caller.require_role(Role::Admin)?.is_some() {
        return Err(ApiError::new(ErrorCode::Forbidden, "granting credits needs a platform-admin key"));
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "the Idempotency-Key header is required"))?;
    let tenant = state.accounts.tenant_named(&body.tenant).await?;
    let memo = if body.memo.is_empty() { "grant".to_owned() } else { body.memo.chars().take(500).collect() };
    let posted =
        state.credits.grant(&tenant.id, body.amount, &format!("grant:{key}"), &memo).await.map_err(credits_error)?;
    tracing::info!(tenant = %tenant.name, amount = body.amount, replayed = posted.replayed, by = %caller.key_id, "credits granted");
    let status = if posted.replayed { StatusCode::OK } else { StatusCode::CREATED };
    let balance = BalanceView {
        tenant: tenant.id.to_string(),
        available: posted.balance_after.available,
        held: posted.balance_after.held,
    };
    Ok((status, Json(GrantView { transaction: posted.transaction, balance, replayed: posted.replayed })))
}
