//! `/v1/tenants` (platform admin) and `/v1/keys` (tenant admin, or platform admin for
//! any tenant).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, response::IntoResponse};
use chrono::{DateTime, Utc};
use maestro_core::{ApiKey, Caller, KeyScope, Role, Tenant, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{StrictJson, StrictQuery};
use super::{AppState, Shared};
use crate::accounts::{AccountsError, expiry_after, validate_key_name};

/// Body of `POST /v1/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1–63 characters: lowercase letters, digits and `-`.
    pub name: String,
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// Identifier (`tn_…`).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self { id: t.id.to_string(), name: t.name.to_string(), created_at: t.created_at }
    }
}

/// Answer of `GET /v1/tenants`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    /// Tenants, oldest first.
    pub tenants: Vec<TenantView>,
}

/// What a key may do: `platform` (cross-tenant administration) or a role in a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Platform administration (no tenant).
    Platform,
    /// Tenant administrator.
    Admin,
    /// Tenant member.
    Member,
    /// Read-only tenant member.
    Viewer,
}

/// Body of `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The key's role.
    pub role: KeyRole,
    /// A label (at most 100 characters).
    #[serde(default)]
    pub name: Option<String>,
    /// Tenant name. Required from a platform admin for tenant roles; a tenant admin may
    /// omit it or name its own tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Lifetime such as `30d`, `12h`, `90m`. Exclusive with `expires_at`.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Absolute expiry (RFC 3339). Exclusive with `expires_in`.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Whether a key works now.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

/// A key, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// Identifier (`key_…`), used to revoke it.
    pub id: String,
    /// The tenant (`tn_…`), absent for platform keys.
    pub tenant_id: Option<String>,
    /// Role.
    pub role: KeyRole,
    /// Label.
    pub name: String,
    /// Public prefix of the token (`mk_` and 8 characters).
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Whether it works now.
    pub status: KeyStatus,
}

impl KeyView {
    fn new(key: ApiKey, now: DateTime<Utc>) -> Self {
        let status = if key.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if key.expires_at.is_some_and(|at| at <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        };
        let (tenant_id, role) = match &key.scope {
            KeyScope::Platform => (None, KeyRole::Platform),
            KeyScope::Tenant { tenant_id, role } => (Some(tenant_id.to_string()), KeyRole::from(*role)),
        };
        Self {
            prefix: key.display_prefix(),
            id: key.id.to_string(),
            tenant_id,
            role,
            name: key.name,
            created_at: key.created_at,
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
            status,
        }
    }
}

impl KeyRole {
    /// The role within a tenant, or `None` for a platform key.
    fn tenant_role(self) -> Option<Role> {
        match self {
            KeyRole::Platform => None,
            KeyRole::Admin => Some(Role::Admin),
            KeyRole::Member => Some(Role::Member),
            KeyRole::Viewer => Some(Role::Viewer),
        }
    }
}

impl From<Role> for KeyRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Admin => KeyRole::Admin,
            Role::Member => KeyRole::Member,
            Role::Viewer => KeyRole::Viewer,
        }
    }
}

/// Answer of `POST /v1/keys`: the only time the token is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The stored key.
    pub key: KeyView,
    /// The secret bearer token. Store it now: it cannot be shown again.
    pub token: String,
}

/// Answer of `GET /v1/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Keys, oldest first.
    pub keys: Vec<KeyView>,
}

/// Query of `GET /v1/keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KeyListQuery {
    /// Only this tenant's keys (platform admins; a tenant admin may name its own).
    pub tenant: Option<String>,
}

/// Creates a tenant.
#[utoipa::path(
    post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    security(("bearer" = [])),
    responses(
        (status = 201, body = TenantView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub(super) async fn create_tenant(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<CreateTenant>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_platform_admin()?;
    let tenant = state.accounts.create_tenant(&body.name).await?;
    tracing::info!(tenant = %tenant.name, tenant_id = %tenant.id, by = %caller.key_id, "tenant created");
    Ok((StatusCode::CREATED, Json(TenantView::from(tenant))))
}

/// Lists tenants.
#[utoipa::path(
    get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = TenantList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn list_tenants(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<TenantList>, ApiError> {
    caller.require_platform_admin()?;
    let tenants = state.accounts.list_tenants().await?.into_iter().map(TenantView::from).collect();
    Ok(Json(TenantList { tenants }))
}

/// Creates a key; the answer carries the token, shown only this once.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys", request_body = CreateKey, security(("bearer" = [])),
    responses(
        (status = 201, body = CreatedKey),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub(super) async fn create_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let own_tenant = caller.require_role(Role::Admin)?.cloned();
    let name = validate_key_name(body.name.as_deref().unwrap_or(""))
        .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    let now = state.accounts.now();
    let expires_at = match (body.expires_in.as_deref(), body.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "give expires_in or expires_at, not both"));
        }
        (Some(text), None) => Some(expiry_after(now, text).map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?),
        (None, at) => at,
    };
    let scope = match (body.role.tenant_role(), own_tenant) {
        (None, Some(_)) => {
            return Err(ApiError::new(ErrorCode::Forbidden, "only a platform admin can create platform keys"));
        }
        (None, None) if body.tenant.is_some() => {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "a platform key belongs to no tenant"));
        }
        (None, None) => KeyScope::Platform,
        (Some(role), own) => {
            let tenant_id = resolve_tenant(&state, own.as_ref(), body.tenant.as_deref()).await?;
            let tenant_id = tenant_id
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "tenant is required for a tenant key"))?;
            KeyScope::Tenant { tenant_id, role }
        }
    };
    let issued = state.accounts.create_key(scope, name, expires_at).await?;
    tracing::info!(key_id = %issued.key.id, by = %caller.key_id, "key created");
    let body = CreatedKey { key: KeyView::new(issued.key, now), token: issued.token.expose_secret().to_owned() };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Lists keys (never their tokens).
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys", params(KeyListQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub(super) async fn list_keys(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictQuery(query): StrictQuery<KeyListQuery>,
) -> Result<Json<KeyList>, ApiError> {
    let own_tenant = caller.require_role(Role::Admin)?.cloned();
    let tenant = resolve_tenant(&state, own_tenant.as_ref(), query.tenant.as_deref()).await?;
    let now = state.accounts.now();
    let keys = state.accounts.list_keys(tenant.as_ref()).await?;
    Ok(Json(KeyList { keys: keys.into_iter().map(|k| KeyView::new(k, now)).collect() }))
}

/// Revokes a key. Revoking twice keeps the first revocation time.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "key identifier (key_…)")),
    responses(
        (status = 200, body = KeyView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn revoke_key(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let own_tenant = caller.require_role(Role::Admin)?;
    let key = state.accounts.revoke_key(&id, own_tenant).await?;
    tracing::info!(key_id = %key.id, by = %caller.key_id, "key revoked");
    Ok(Json(KeyView::new(key, state.accounts.now())))
}

/// The tenant a request acts on: a tenant key acts on its own tenant (naming another,
/// existing or not, is forbidden alike, so a tenant learns nothing of other tenants); a
/// platform admin acts on the named tenant, or on none.
pub(super) async fn resolve_tenant(
    state: &AppState,
    own: Option<&TenantId>,
    named: Option<&str>,
) -> Result<Option<TenantId>, ApiError> {
    let Some(name) = named else {
        return Ok(own.cloned());
    };
    let found = state.accounts.tenant_named(name).await;
    match (own, found) {
        (None, found) => Ok(Some(found?.id)),
        (Some(own), Ok(tenant)) if tenant.id == *own => Ok(Some(own.clone())),
        (Some(_), Ok(_) | Err(AccountsError::TenantNotFound(_))) => {
            Err(ApiError::new(ErrorCode::Forbidden, "a tenant key can only act on its own tenant"))
        }
        (Some(_), Err(err)) => Err(err.into()),
    }
}
