//! Queries that are the same SQL on both backends (both accept `$n` placeholders,
//! `ON CONFLICT`, and decode the same Rust types), written once and expanded for each
//! backend's pool type by [`impl_shared_queries!`].

use chrono::{DateTime, Utc};
use maestro_core::{ApiKey, KeyId, KeyScope, Role, StoreError, Tenant, TenantId, TenantName};

/// Columns of `api_keys`, read by name into [`KeyRow`]. A macro so that queries are
/// built with `concat!` into the static strings sqlx requires.
macro_rules! key_columns {
    () => {
        "id, tenant_id, role, name, prefix, hash, created_at, expires_at, revoked_at"
    };
}
pub(super) use key_columns;

/// A raw `api_keys` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct KeyRow {
    id: String,
    tenant_id: Option<String>,
    role: String,
    name: String,
    prefix: String,
    hash: Vec<u8>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// A raw `tenants` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TenantRow {
    id: String,
    name: String,
    created_at: DateTime<Utc>,
}

pub(super) fn tenant_from_row(row: TenantRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: TenantId::parse(&row.id).map_err(corrupt)?,
        name: TenantName::parse(&row.name).map_err(corrupt)?,
        created_at: row.created_at,
    })
}

pub(super) fn key_from_row(row: KeyRow) -> Result<ApiKey, StoreError> {
    let id = row.id;
    let scope = match (row.role.as_str(), row.tenant_id) {
        ("platform", None) => KeyScope::Platform,
        (role, Some(tenant_id)) => KeyScope::Tenant {
            tenant_id: TenantId::parse(&tenant_id).map_err(corrupt)?,
            role: role.parse::<Role>().map_err(corrupt)?,
        },
        (role, None) => {
            return Err(StoreError::Corrupt(format!("key {id} has role {role} and no tenant")));
        }
    };
    let hash: [u8; 32] =
        row.hash.try_into().map_err(|_| StoreError::Corrupt(format!("key {id} has a hash that is not 32 bytes")))?;
    Ok(ApiKey {
        id: KeyId::parse(&id).map_err(corrupt)?,
        scope,
        name: row.name,
        prefix: row.prefix,
        hash,
        created_at: row.created_at,
        expires_at: row.expires_at,
        revoked_at: row.revoked_at,
    })
}

/// The `(tenant_id, role)` columns for a scope.
pub(super) fn scope_columns(scope: &KeyScope) -> (Option<&str>, &'static str) {
    match scope {
        KeyScope::Platform => (None, "platform"),
        KeyScope::Tenant { tenant_id, role } => (Some(tenant_id.as_str()), role.as_str()),
    }
}

fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// Implements [`maestro_core::TenantStore`] and [`maestro_core::KeyStore`] for a store
/// type with a `pool` field of the given sqlx pool type, and two methods of its own:
/// `async announce_key_write(&self)`, called after every key write has committed (it
/// must be durable, and other processes' key caches must learn of it), and `current_key_generation(&self) ->
/// Option<u64>`, the port's `key_generation`.
macro_rules! impl_shared_queries {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl maestro_core::TenantStore for $store {
            async fn create_tenant(&self, tenant: &maestro_core::Tenant) -> Result<(), maestro_core::StoreError> {
                sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(tenant.id.as_str())
                    .bind(tenant.name.as_str())
                    .bind(tenant.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(super::map_err(&format!("tenant {}", tenant.name)))?;
                Ok(())
            }

            async fn tenant(
                &self,
                id: &maestro_core::TenantId,
            ) -> Result<Option<maestro_core::Tenant>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::shared::TenantRow>("SELECT id, name, created_at FROM tenants WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(super::shared::tenant_from_row)
                    .transpose()
            }

            async fn tenant_by_name(
                &self,
                name: &maestro_core::TenantName,
            ) -> Result<Option<maestro_core::Tenant>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::shared::TenantRow>(
                    "SELECT id, name, created_at FROM tenants WHERE name = $1",
                )
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(super::backend_err)?
                .map(super::shared::tenant_from_row)
                .transpose()
            }

            async fn list_tenants(&self) -> Result<Vec<maestro_core::Tenant>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::shared::TenantRow>(
                    "SELECT id, name, created_at FROM tenants ORDER BY created_at, id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(super::backend_err)?
                .into_iter()
                .map(super::shared::tenant_from_row)
                .collect()
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::KeyStore for $store {
            async fn insert_key(&self, key: &maestro_core::ApiKey) -> Result<(), maestro_core::StoreError> {
                insert_key(&self.pool, key).await?;
                self.announce_key_write().await;
                Ok(())
            }

            async fn insert_bootstrap_key(&self, key: &maestro_core::ApiKey) -> Result<bool, maestro_core::StoreError> {
                let mut tx = self.begin_write().await?;
                let claimed = sqlx::query("INSERT INTO bootstrap (id, done_at) VALUES (1, $1) ON CONFLICT DO NOTHING")
                    .bind(key.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(super::backend_err)?
                    .rows_affected()
                    == 1;
                let any_key = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM api_keys")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(super::backend_err)?
                    > 0;
                if claimed && !any_key {
                    insert_key(&mut *tx, key).await?;
                }
                // Commit even when keys already existed (created offline with the CLI):
                // the store counts as bootstrapped from now on.
                tx.commit().await.map_err(super::backend_err)?;
                self.announce_key_write().await;
                Ok(claimed && !any_key)
            }

            async fn key_by_prefix(
                &self,
                prefix: &str,
            ) -> Result<Option<maestro_core::ApiKey>, maestro_core::StoreError> {
                let sql = concat!("SELECT ", super::shared::key_columns!(), " FROM api_keys WHERE prefix = $1");
                sqlx::query_as::<_, super::shared::KeyRow>(sql)
                    .bind(prefix)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(super::shared::key_from_row)
                    .transpose()
            }

            async fn list_keys(
                &self,
                tenant: Option<&maestro_core::TenantId>,
            ) -> Result<Vec<maestro_core::ApiKey>, maestro_core::StoreError> {
                let sql = concat!(
                    "SELECT ",
                    super::shared::key_columns!(),
                    " FROM api_keys ",
                    "WHERE ($1 IS NULL OR tenant_id = $1) ORDER BY created_at, id"
                );
                let rows = sqlx::query_as::<_, super::shared::KeyRow>(sql)
                    .bind(tenant.map(|t| t.as_str()))
                    .fetch_all(&self.pool)
                    .await;
                rows.map_err(super::backend_err)?.into_iter().map(super::shared::key_from_row).collect()
            }

            async fn revoke_key(
                &self,
                id: &maestro_core::KeyId,
                tenant: Option<&maestro_core::TenantId>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<maestro_core::ApiKey, maestro_core::StoreError> {
                let sql = concat!(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) ",
                    "WHERE id = $2 AND ($3 IS NULL OR tenant_id = $3) RETURNING ",
                    super::shared::key_columns!()
                );
                let row = sqlx::query_as::<_, super::shared::KeyRow>(sql)
                    .bind(at)
                    .bind(id.as_str())
                    .bind(tenant.map(|t| t.as_str()))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                // Announced even when nothing matched: harmless, and a retried revocation
                // announces again should the first one's process have died before it did.
                self.announce_key_write().await;
                row.map(super::shared::key_from_row)
                    .transpose()?
                    .ok_or_else(|| maestro_core::StoreError::NotFound(format!("key {id}")))
            }

            fn key_generation(&self) -> Option<u64> {
                self.current_key_generation()
            }
        }

        async fn insert_key<'e, E>(executor: E, key: &maestro_core::ApiKey) -> Result<(), maestro_core::StoreError>
        where
            E: sqlx::Executor<'e, Database = <$store as super::Backend>::Db>,
        {
            let (tenant_id, role) = super::shared::scope_columns(&key.scope);
            sqlx::query(
                "INSERT INTO api_keys (id, tenant_id, role, name, prefix, hash, created_at, expires_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(key.id.as_str())
            .bind(tenant_id)
            .bind(role)
            .bind(&key.name)
            .bind(&key.prefix)
            .bind(key.hash.as_slice())
            .bind(key.created_at)
            .bind(key.expires_at)
            .bind(key.revoked_at)
            .execute(executor)
            .await
            .map_err(super::map_err(&format!("key {}", key.id)))?;
            Ok(())
        }
    };
}

pub(super) use impl_shared_queries;
