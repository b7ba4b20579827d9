//! [`maestro_core::ports::LeaseStore`] on both backends: one row per lease name (table
//! `leases`, migration 0015). Taking a lease is one upsert that only overwrites the row
//! when it is the taker's own (a renewal) or expired, so of concurrent takers one wins;
//! the same SQL serves both backends.

use chrono::{DateTime, Utc};
use maestro_core::StoreError;
use maestro_core::ports::LeaseStore;

use super::backend_err;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;

/// Takes or renews lease $1 for holder $2 until $4, when it is free, expired at $3, or
/// the holder's: the row comes back only when the holder now holds it.
const TAKE: &str = "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $4) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE leases.holder = excluded.holder OR leases.expires_at <= $3 RETURNING holder";
/// Ends holder $2's lease $1 now ($3), so another takes it over without waiting.
const RELEASE: &str = "UPDATE leases SET expires_at = $3 WHERE name = $1 AND holder = $2";

fn ms(at: DateTime<Utc>) -> DateTime<Utc> {
    super::runs::ms(at)
}

macro_rules! lease_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl LeaseStore for $store {
            async fn take_lease(
                &self,
                name: &str,
                holder: &str,
                now: DateTime<Utc>,
                until: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let held: Option<String> = sqlx::query_scalar(TAKE)
                    .bind(name)
                    .bind(holder)
                    .bind(ms(now))
                    .bind(ms(until))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend_err)?;
                Ok(held.is_some())
            }

            async fn release_lease(&self, name: &str, holder: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query(RELEASE)
                    .bind(name)
                    .bind(holder)
                    .bind(ms(now))
                    .execute(&self.pool)
                    .await
                    .map_err(backend_err)?;
                Ok(())
            }
        }
    };
}

lease_store!(SqliteStore);
lease_store!(PostgresStore);
