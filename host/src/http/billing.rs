//! `/v1/billing/checkout` (tenant admin) and `/v1/billing/stripe/webhook` (Stripe, no
//! bearer key: the signature authenticates it).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use maestro_core::{Caller, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::StrictJson;
use super::{AppState, Shared};
use crate::billing::{Billing, BillingError};

/// Body of `POST /v1/billing/checkout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// The configured credit pack to buy.
    pub pack: String,
}

/// A Checkout Session to send the customer to.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutView {
    /// Stripe's session id (`cs_…`).
    pub id: String,
    /// The Stripe-hosted payment page.
    pub url: String,
    /// The pack.
    pub pack: String,
    /// Credits granted once the payment succeeds.
    pub credits: i64,
    /// Price in the currency's smallest unit.
    pub unit_amount: i64,
    /// ISO currency code.
    pub currency: String,
}

/// Answer to a webhook delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    /// Always `true`: the event was applied now or before.
    pub received: bool,
    /// The event had been processed before; nothing was done.
    pub duplicate: bool,
}

fn billing(state: &AppState) -> Result<&Arc<Billing>, ApiError> {
    state
        .billing
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::BillingNotConfigured, "billing is not configured on this server"))
}

/// Opens a Stripe Checkout page for a credit pack, for the caller's tenant.
#[utoipa::path(
    post, path = "/v1/billing/checkout", tag = "billing", request_body = CheckoutRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = CheckoutView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
pub(super) async fn checkout(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<CheckoutRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(tenant) = caller.require_role(Role::Admin)?.cloned() else {
        return Err(ApiError::new(ErrorCode::Forbidden, "checkout needs a tenant admin key"));
    };
    let billing = billing(&state)?;
    let started = billing.checkout(&tenant, &body.pack).await?;
    let view = CheckoutView {
        id: started.id,
        url: started.url,
        pack: started.pack.id,
        credits: started.pack.credits,
        unit_amount: started.pack.unit_amount,
        currency: started.pack.currency,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Receives Stripe webhook events. Authenticated by the `Stripe-Signature` header over
/// the raw body; answers 200 to events already processed.
#[utoipa::path(
    post, path = "/v1/billing/stripe/webhook", tag = "billing",
    request_body(content = String, content_type = "application/json", description = "the event, exactly as Stripe sent it"),
    responses(
        (status = 200, body = WebhookAck),
        (status = 400, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
pub(super) async fn stripe_webhook(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookAck>, ApiError> {
    let billing = billing(&state)?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(ErrorCode::SignatureInvalid, "missing stripe-signature header"))?;
    let receipt = billing.handle_webhook(signature, &body).await?;
    Ok(Json(WebhookAck { received: true, duplicate: receipt.duplicate }))
}

impl From<BillingError> for ApiError {
    fn from(err: BillingError) -> Self {
        match &err {
            BillingError::UnknownPack(_) => ApiError::new(ErrorCode::InvalidRequest, err.to_string()),
            BillingError::Signature(_) => ApiError::new(ErrorCode::SignatureInvalid, err.to_string()),
            BillingError::InvalidEvent(_) => ApiError::new(ErrorCode::InvalidJson, err.to_string()),
            BillingError::Stripe(_) => ApiError::internal(ErrorCode::PaymentProviderFailed, &err),
            BillingError::Store(maestro_core::StoreError::Backend(_)) => {
                ApiError::internal(ErrorCode::Unavailable, &err)
            }
            BillingError::Store(_) | BillingError::Credits(_) => ApiError::internal(ErrorCode::Internal, &err),
        }
    }
}
