//! [`maestro_core::ports::BillingStore`]: the same SQL on both backends, expanded per
//! store type by [`impl_billing_queries!`] (like `shared.rs`).

use chrono::{DateTime, Utc};
use maestro_core::billing::{ChargeRefund, CheckoutRecord, ProcessedEvent};
use maestro_core::{StoreError, TenantId};

/// Columns of `stripe_checkouts`, read by name into [`CheckoutRow`].
macro_rules! checkout_columns {
    () => {
        "id, tenant_id, pack, credits, amount, currency, paid, payment_intent, reversed_credits, reversed_from, \
         created_at"
    };
}
pub(super) use checkout_columns;

/// A raw `stripe_checkouts` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct CheckoutRow {
    id: String,
    tenant_id: String,
    pack: String,
    credits: i64,
    amount: i64,
    currency: String,
    paid: bool,
    payment_intent: Option<String>,
    reversed_credits: i64,
    reversed_from: i64,
    created_at: DateTime<Utc>,
}

/// A raw `stripe_refunds` row (without `updated_at`).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RefundRow {
    payment_intent: String,
    charge_id: String,
    customer_id: Option<String>,
    amount: i64,
    amount_refunded: i64,
}

/// A raw `stripe_events` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    id: String,
    #[sqlx(rename = "type")]
    kind: String,
    received_at: DateTime<Utc>,
    outcome: String,
}

pub(super) fn checkout_from_row(row: CheckoutRow) -> Result<CheckoutRecord, StoreError> {
    Ok(CheckoutRecord {
        tenant_id: TenantId::parse(&row.tenant_id)
            .map_err(|e| StoreError::Corrupt(format!("checkout {}: {e}", row.id)))?,
        id: row.id,
        pack: row.pack,
        credits: row.credits,
        amount: row.amount,
        currency: row.currency,
        paid: row.paid,
        payment_intent: row.payment_intent,
        reversed_credits: row.reversed_credits,
        reversed_from: row.reversed_from,
        created_at: row.created_at,
    })
}

pub(super) fn refund_from_row(row: RefundRow) -> ChargeRefund {
    ChargeRefund {
        charge_id: row.charge_id,
        payment_intent: Some(row.payment_intent),
        customer: row.customer_id,
        amount: row.amount,
        amount_refunded: row.amount_refunded,
    }
}

pub(super) fn event_from_row(row: EventRow) -> ProcessedEvent {
    ProcessedEvent { id: row.id, kind: row.kind, received_at: row.received_at, outcome: row.outcome }
}

/// Implements [`maestro_core::ports::BillingStore`] for a store type with a `pool` field.
macro_rules! impl_billing_queries {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl maestro_core::ports::BillingStore for $store {
            async fn stripe_customer(
                &self,
                tenant: &maestro_core::TenantId,
            ) -> Result<Option<String>, maestro_core::StoreError> {
                sqlx::query_scalar::<_, String>("SELECT customer_id FROM stripe_customers WHERE tenant_id = $1")
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)
            }

            async fn insert_stripe_customer(
                &self,
                tenant: &maestro_core::TenantId,
                customer: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<String, maestro_core::StoreError> {
                sqlx::query(
                    "INSERT INTO stripe_customers (tenant_id, customer_id, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant_id) DO NOTHING",
                )
                .bind(tenant.as_str())
                .bind(customer)
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(super::map_err(&format!("stripe customer {customer}")))?;
                maestro_core::ports::BillingStore::stripe_customer(self, tenant)
                    .await?
                    .ok_or_else(|| maestro_core::StoreError::NotFound(format!("stripe customer of {tenant}")))
            }

            async fn insert_checkout(
                &self,
                c: &maestro_core::billing::CheckoutRecord,
            ) -> Result<(), maestro_core::StoreError> {
                let sql = concat!(
                    "INSERT INTO stripe_checkouts (",
                    super::billing::checkout_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                );
                sqlx::query(sql)
                    .bind(&c.id)
                    .bind(c.tenant_id.as_str())
                    .bind(&c.pack)
                    .bind(c.credits)
                    .bind(c.amount)
                    .bind(&c.currency)
                    .bind(c.paid)
                    .bind(&c.payment_intent)
                    .bind(c.reversed_credits)
                    .bind(c.reversed_from)
                    .bind(c.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(super::map_err(&format!("checkout {}", c.id)))?;
                Ok(())
            }

            async fn checkout(
                &self,
                id: &str,
            ) -> Result<Option<maestro_core::billing::CheckoutRecord>, maestro_core::StoreError> {
                let sql =
                    concat!("SELECT ", super::billing::checkout_columns!(), " FROM stripe_checkouts WHERE id = $1");
                sqlx::query_as::<_, super::billing::CheckoutRow>(sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(super::billing::checkout_from_row)
                    .transpose()
            }

            async fn checkout_by_payment_intent(
                &self,
                payment_intent: &str,
            ) -> Result<Option<maestro_core::billing::CheckoutRecord>, maestro_core::StoreError> {
                let sql = concat!(
                    "SELECT ",
                    super::billing::checkout_columns!(),
                    " FROM stripe_checkouts WHERE payment_intent = $1"
                );
                sqlx::query_as::<_, super::billing::CheckoutRow>(sql)
                    .bind(payment_intent)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(super::billing::checkout_from_row)
                    .transpose()
            }

            async fn complete_checkout(
                &self,
                id: &str,
                payment_intent: Option<&str>,
                paid: bool,
            ) -> Result<Option<maestro_core::billing::CheckoutRecord>, maestro_core::StoreError> {
                let sql = concat!(
                    "UPDATE stripe_checkouts SET payment_intent = COALESCE(payment_intent, $2), ",
                    "paid = (paid OR $3) WHERE id = $1 RETURNING ",
                    super::billing::checkout_columns!()
                );
                sqlx::query_as::<_, super::billing::CheckoutRow>(sql)
                    .bind(id)
                    .bind(payment_intent)
                    .bind(paid)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::map_err(&format!("payment intent of checkout {id}")))?
                    .map(super::billing::checkout_from_row)
                    .transpose()
            }

            async fn claim_reversal(&self, id: &str, from: i64, to: i64) -> Result<bool, maestro_core::StoreError> {
                let claimed = sqlx::query(
                    "UPDATE stripe_checkouts SET reversed_from = $2, reversed_credits = $3 \
                     WHERE id = $1 AND reversed_credits = $2 AND $2 < $3",
                )
                .bind(id)
                .bind(from)
                .bind(to)
                .execute(&self.pool)
                .await
                .map_err(super::backend_err)?
                .rows_affected();
                Ok(claimed == 1)
            }

            async fn record_refund(
                &self,
                refund: &maestro_core::billing::ChargeRefund,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), maestro_core::StoreError> {
                let Some(payment_intent) = refund.payment_intent.as_deref() else {
                    return Err(maestro_core::StoreError::NotFound(format!(
                        "payment intent of charge {}",
                        refund.charge_id
                    )));
                };
                sqlx::query(
                    "INSERT INTO stripe_refunds (payment_intent, charge_id, customer_id, amount, amount_refunded, \
                     updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (payment_intent) DO UPDATE SET \
                     amount_refunded = CASE WHEN excluded.amount_refunded > stripe_refunds.amount_refunded \
                     THEN excluded.amount_refunded ELSE stripe_refunds.amount_refunded END, \
                     updated_at = excluded.updated_at",
                )
                .bind(payment_intent)
                .bind(&refund.charge_id)
                .bind(&refund.customer)
                .bind(refund.amount)
                .bind(refund.amount_refunded)
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(super::backend_err)?;
                Ok(())
            }

            async fn refund_by_payment_intent(
                &self,
                payment_intent: &str,
            ) -> Result<Option<maestro_core::billing::ChargeRefund>, maestro_core::StoreError> {
                Ok(sqlx::query_as::<_, super::billing::RefundRow>(
                    "SELECT payment_intent, charge_id, customer_id, amount, amount_refunded \
                     FROM stripe_refunds WHERE payment_intent = $1",
                )
                .bind(payment_intent)
                .fetch_optional(&self.pool)
                .await
                .map_err(super::backend_err)?
                .map(super::billing::refund_from_row))
            }

            async fn processed_event(
                &self,
                id: &str,
            ) -> Result<Option<maestro_core::billing::ProcessedEvent>, maestro_core::StoreError> {
                Ok(sqlx::query_as::<_, super::billing::EventRow>(
                    "SELECT id, type, received_at, outcome FROM stripe_events WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(super::backend_err)?
                .map(super::billing::event_from_row))
            }

            async fn record_event(
                &self,
                event: &maestro_core::billing::ProcessedEvent,
            ) -> Result<bool, maestro_core::StoreError> {
                let inserted = sqlx::query(
                    "INSERT INTO stripe_events (id, type, received_at, outcome) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(&event.id)
                .bind(&event.kind)
                .bind(event.received_at)
                .bind(&event.outcome)
                .execute(&self.pool)
                .await
                .map_err(super::backend_err)?
                .rows_affected();
                // The webhook is acknowledged after this: the event and the postings
                // committed before it must survive a power loss (the WAL is in order).
                self.make_durable().await?;
                Ok(inserted == 1)
            }
        }
    };
}

pub(super) use impl_billing_queries;
