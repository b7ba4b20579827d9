//! [`maestro_core::RunStore`] and the run half of the unit of work: sessions, messages,
//! runs and their append-only events. The same SQL on both backends, expanded per store
//! type by [`impl_run_queries!`] (like `shared.rs`); rows decode into `FromRow` structs
//! converted to domain types here, [`StoreError::Corrupt`] for what does not decode.
//!
//! Sequence numbers are allocated in the caller's transaction by incrementing a counter
//! row (`UPDATE … SET last_seq = last_seq + 1 … RETURNING last_seq`): an event takes the
//! next `seq` of its run's row, then the next `session_seq` of its session's row; a
//! message takes the next `seq` of its session's message counter. The row stays locked
//! until the transaction ends (SQLite: `BEGIN IMMEDIATE` excludes every other writer;
//! Postgres: the row lock), so numbers are dense, a rolled-back unit consumes none, and
//! a reader never sees `seq` N+1 committed while N is not. On Postgres, locks are always
//! taken in the order run row, then session row, so two runs of one session appending
//! concurrently queue on the session row instead of deadlocking. A message takes the
//! session's row alone, so a unit may write its run's messages and events in any order
//! as long as one unit at a time writes a given run (its worker does).
//!
//! Events are read by run or session id without a tenant: callers resolve the run or
//! session for the caller's tenant first (`run`, `session`), then page its events.

use chrono::{DateTime, Utc};
use maestro_core::run::{
    Author, EventBody, Message, MessageId, Run, RunError, RunEvent, RunId, RunLimits, RunState, RunTotals, Session,
    SessionId, Strategy,
};
use maestro_core::{Role, StoreError, TenantId};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Columns of `sessions`, read by name into [`SessionRow`].
macro_rules! session_columns {
    () => {
        "id, tenant_id, title, personas, strategy, limits, created_by, created_at"
    };
}

/// Columns of `messages`, read by name into [`MessageRow`].
macro_rules! message_columns {
    () => {
        "id, session_id, seq, author_kind, author_name, content, run_id, at"
    };
}

/// Columns of `runs`, read by name into [`RunRow`].
macro_rules! run_columns {
    () => {
        "id, session_id, tenant_id, trigger_message, key_id, role, state, strategy, limits, totals, error, \
         cancel_requested, last_seq, created_at, started_at, finished_at"
    };
}

/// Columns of `run_events`, read by name into [`EventRow`].
macro_rules! event_columns {
    () => {
        "run_id, seq, session_id, session_seq, type, version, payload, at"
    };
}

// The statements, named so that the query-plan test below checks exactly what runs.

/// Takes the next message `seq` of a session ($1).
pub(super) const NEXT_MESSAGE_SEQ: &str =
    "UPDATE sessions SET last_message_seq = last_message_seq + 1 WHERE id = $1 RETURNING last_message_seq";
/// Takes the next `seq` of a run ($1) of a session ($2).
pub(super) const NEXT_RUN_SEQ: &str =
    "UPDATE runs SET last_seq = last_seq + 1 WHERE id = $1 AND session_id = $2 RETURNING last_seq";
/// Takes the next `session_seq` of a session ($1).
pub(super) const NEXT_SESSION_SEQ: &str =
    "UPDATE sessions SET last_event_seq = last_event_seq + 1 WHERE id = $1 RETURNING last_event_seq";
pub(super) const INSERT_SESSION: &str = "INSERT INTO sessions (id, tenant_id, title, personas, strategy, limits, \
     created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(super) const INSERT_MESSAGE: &str = "INSERT INTO messages (id, session_id, seq, author_kind, author_name, \
     content, run_id, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(super) const INSERT_RUN: &str = "INSERT INTO runs (id, session_id, tenant_id, trigger_message, key_id, role, \
     state, strategy, limits, totals, error, cancel_requested, last_seq, created_at, started_at, finished_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $14, $15)";
pub(super) const UPDATE_RUN: &str =
    "UPDATE runs SET state = $2, totals = $3, error = $4, started_at = $5, finished_at = $6 WHERE id = $1";
/// [`UPDATE_RUN`] only while the run is in state $7.
pub(super) const UPDATE_RUN_IF: &str = "UPDATE runs SET state = $2, totals = $3, error = $4, started_at = $5, \
     finished_at = $6 WHERE id = $1 AND state = $7";
pub(super) const INSERT_EVENT: &str = "INSERT INTO run_events (run_id, seq, session_id, session_seq, type, \
     version, payload, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// A session ($1) of a tenant ($2).
pub(super) const SESSION: &str =
    concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1 AND tenant_id = $2");
/// A tenant's ($1) newest sessions, at most $2.
pub(super) const SESSIONS: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
);
/// A tenant's ($1) sessions older than one of them ($2), at most $3. A cursor that is
/// not one of the tenant's sessions compares with NULL: an empty page.
pub(super) const SESSIONS_BEFORE: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE tenant_id = $1 AND (created_at, id) < ",
    "(SELECT created_at, id FROM sessions WHERE id = $2 AND tenant_id = $1) ",
    "ORDER BY created_at DESC, id DESC LIMIT $3"
);
/// A session's ($1, of tenant $2) messages after $3, at most $4.
pub(super) const MESSAGES: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE session_id = $1 AND seq > $3 ",
    "AND EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND tenant_id = $2) ",
    "ORDER BY seq LIMIT $4"
);
/// A run ($1), of a tenant ($2) unless NULL.
pub(super) const RUN: &str =
    concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)");
/// A session's ($1, of tenant $2) newest runs, at most $3.
pub(super) const RUNS: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs WHERE session_id = $1 AND tenant_id = $2 ORDER BY created_at DESC, id DESC LIMIT $3"
);
/// A run's ($1) events after $2, at most $3.
pub(super) const RUN_EVENTS: &str =
    concat!("SELECT ", event_columns!(), " FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3");
/// A session's ($1) events after $2, at most $3.
pub(super) const SESSION_EVENTS: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM run_events WHERE session_id = $1 AND session_seq > $2 ORDER BY session_seq LIMIT $3"
);
/// A session's ($1) last `session_seq`.
pub(super) const SESSION_HEAD: &str = "SELECT last_event_seq FROM sessions WHERE id = $1";
/// Flags a run ($1) of a tenant ($2) with $3 (true) unless it is over.
pub(super) const REQUEST_CANCEL: &str = concat!(
    "UPDATE runs SET cancel_requested = $3 WHERE id = $1 AND tenant_id = $2 ",
    "AND state NOT IN ('completed', 'failed', 'cancelled', 'expired') RETURNING ",
    run_columns!()
);

/// A raw `sessions` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct SessionRow {
    id: String,
    tenant_id: String,
    title: String,
    personas: String,
    strategy: String,
    limits: String,
    created_by: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        let what = format!("session {}", row.id);
        Ok(Session {
            id: SessionId::parse(&row.id).map_err(|e| corrupt(&what, e))?,
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&what, e))?,
            title: row.title,
            personas: from_json(&what, "personas", &row.personas)?,
            strategy: parse_strategy(&what, &row.strategy)?,
            limits: from_json(&what, "limits", &row.limits)?,
            created_by: row.created_by,
            created_at: row.created_at,
        })
    }
}

/// A raw `messages` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct MessageRow {
    id: String,
    session_id: String,
    seq: i64,
    author_kind: String,
    author_name: String,
    content: String,
    run_id: Option<String>,
    at: DateTime<Utc>,
}

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;

    fn try_from(row: MessageRow) -> Result<Self, StoreError> {
        let what = format!("message {}", row.id);
        let author = match row.author_kind.as_str() {
            "user" => Author::User { key_id: row.author_name },
            "persona" => Author::Persona { name: row.author_name },
            other => return Err(corrupt(&what, format!("author kind {other}"))),
        };
        Ok(Message {
            id: MessageId::parse(&row.id).map_err(|e| corrupt(&what, e))?,
            session: SessionId::parse(&row.session_id).map_err(|e| corrupt(&what, e))?,
            seq: row.seq,
            author,
            content: row.content,
            run: row.run_id.as_deref().map(RunId::parse).transpose().map_err(|e| corrupt(&what, e))?,
            at: row.at,
        })
    }
}

/// A raw `runs` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RunRow {
    id: String,
    session_id: String,
    tenant_id: String,
    trigger_message: String,
    key_id: String,
    role: String,
    state: String,
    strategy: String,
    limits: String,
    totals: String,
    error: Option<String>,
    cancel_requested: bool,
    last_seq: i64,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;

    fn try_from(row: RunRow) -> Result<Self, StoreError> {
        let what = format!("run {}", row.id);
        Ok(Run {
            id: RunId::parse(&row.id).map_err(|e| corrupt(&what, e))?,
            session: SessionId::parse(&row.session_id).map_err(|e| corrupt(&what, e))?,
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&what, e))?,
            trigger: MessageId::parse(&row.trigger_message).map_err(|e| corrupt(&what, e))?,
            key_id: row.key_id,
            role: row.role.parse::<Role>().map_err(|e| corrupt(&what, e))?,
            state: RunState::parse(&row.state).ok_or_else(|| corrupt(&what, format!("state {}", row.state)))?,
            strategy: parse_strategy(&what, &row.strategy)?,
            limits: from_json::<RunLimits>(&what, "limits", &row.limits)?,
            totals: from_json::<RunTotals>(&what, "totals", &row.totals)?,
            error: row.error.as_deref().map(|e| from_json::<RunError>(&what, "error", e)).transpose()?,
            cancel_requested: row.cancel_requested,
            last_seq: row.last_seq,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

/// A raw `run_events` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    run_id: String,
    seq: i64,
    session_id: String,
    session_seq: i64,
    #[sqlx(rename = "type")]
    kind: String,
    version: i64,
    payload: String,
    at: DateTime<Utc>,
}

impl TryFrom<EventRow> for RunEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        let what = format!("event {} of run {}", row.seq, row.run_id);
        let version = u32::try_from(row.version).map_err(|_| corrupt(&what, format!("version {}", row.version)))?;
        Ok(RunEvent {
            run: RunId::parse(&row.run_id).map_err(|e| corrupt(&what, e))?,
            session: SessionId::parse(&row.session_id).map_err(|e| corrupt(&what, e))?,
            seq: row.seq,
            session_seq: row.session_seq,
            at: row.at,
            body: EventBody::decode(&row.kind, version, &row.payload).map_err(|e| corrupt(&what, e))?,
        })
    }
}

/// Rows to domain values, in order.
pub(super) fn from_rows<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

/// The `(author_kind, author_name)` columns of an author.
pub(super) fn author_columns(author: &Author) -> (&'static str, &str) {
    match author {
        Author::User { key_id } => ("user", key_id),
        Author::Persona { name } => ("persona", name),
    }
}

/// A value as the JSON text stored in a column.
pub(super) fn to_json(value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// A timestamp as both backends keep it exactly: truncated to the millisecond (the
/// clock's precision; SQLite would keep nanoseconds and Postgres microseconds).
pub(super) fn ms(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// A page size as bound in SQL.
pub(super) fn page(limit: u32) -> i64 {
    i64::from(limit)
}

fn from_json<T: DeserializeOwned>(what: &str, column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, format!("{column}: {e}")))
}

fn parse_strategy(what: &str, name: &str) -> Result<Strategy, StoreError> {
    Strategy::parse(name).ok_or_else(|| corrupt(what, format!("strategy {name}")))
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

/// Implements [`maestro_core::RunStore`] and the unit of work's run writes
/// (`run_insert_message`, `run_insert`, `run_update`, `run_append_event`, called by
/// `unit.rs` on the unit's connection) for a store type with a `pool` field.
macro_rules! impl_run_queries {
    ($store:ty) => {
        impl $store {
            /// A page of events after `after` by `sql` (`RUN_EVENTS` or `SESSION_EVENTS`,
            /// keyed by a run or session id).
            async fn event_page(
                &self,
                sql: &'static str,
                key: &str,
                after: i64,
                limit: u32,
            ) -> Result<Vec<maestro_core::run::RunEvent>, maestro_core::StoreError> {
                let rows = sqlx::query_as::<_, super::runs::EventRow>(sql)
                    .bind(key)
                    .bind(after)
                    .bind(super::runs::page(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }

            /// Appends a message, taking the next `seq` of its session's counter.
            pub(super) async fn run_insert_message(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                message: &maestro_core::run::Message,
            ) -> Result<maestro_core::run::Message, maestro_core::StoreError> {
                let seq = sqlx::query_scalar::<_, i64>(super::runs::NEXT_MESSAGE_SEQ)
                    .bind(message.session.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(super::backend_err)?
                    .ok_or_else(|| maestro_core::StoreError::NotFound(format!("session {}", message.session)))?;
                let (author_kind, author_name) = super::runs::author_columns(&message.author);
                let at = super::runs::ms(message.at);
                sqlx::query(super::runs::INSERT_MESSAGE)
                    .bind(message.id.as_str())
                    .bind(message.session.as_str())
                    .bind(seq)
                    .bind(author_kind)
                    .bind(author_name)
                    .bind(&message.content)
                    .bind(message.run.as_ref().map(|r| r.as_str()))
                    .bind(at)
                    .execute(&mut *conn)
                    .await
                    .map_err(super::map_err(&format!("message {}", message.id)))?;
                Self::search_record_message(&mut *conn, message, at).await?;
                Ok(maestro_core::run::Message { seq, at, ..message.clone() })
            }

            /// Inserts a run; its `last_seq` starts at 0 whatever `run` says (appends
            /// keep it).
            pub(super) async fn run_insert(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                run: &maestro_core::run::Run,
            ) -> Result<(), maestro_core::StoreError> {
                sqlx::query(super::runs::INSERT_RUN)
                    .bind(run.id.as_str())
                    .bind(run.session.as_str())
                    .bind(run.tenant.as_str())
                    .bind(run.trigger.as_str())
                    .bind(&run.key_id)
                    .bind(run.role.as_str())
                    .bind(run.state.as_str())
                    .bind(run.strategy.as_str())
                    .bind(super::runs::to_json(&run.limits)?)
                    .bind(super::runs::to_json(&run.totals)?)
                    .bind(run.error.as_ref().map(super::runs::to_json).transpose()?)
                    .bind(run.cancel_requested)
                    .bind(super::runs::ms(run.created_at))
                    .bind(run.started_at.map(super::runs::ms))
                    .bind(run.finished_at.map(super::runs::ms))
                    .execute(&mut *conn)
                    .await
                    .map_err(super::map_err(&format!("run {}", run.id)))?;
                Ok(())
            }

            /// Writes a run's state, totals, error and timestamps.
            pub(super) async fn run_update(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                run: &maestro_core::run::Run,
            ) -> Result<(), maestro_core::StoreError> {
                let updated = sqlx::query(super::runs::UPDATE_RUN)
                    .bind(run.id.as_str())
                    .bind(run.state.as_str())
                    .bind(super::runs::to_json(&run.totals)?)
                    .bind(run.error.as_ref().map(super::runs::to_json).transpose()?)
                    .bind(run.started_at.map(super::runs::ms))
                    .bind(run.finished_at.map(super::runs::ms))
                    .execute(&mut *conn)
                    .await
                    .map_err(super::backend_err)?;
                if updated.rows_affected() == 0 {
                    return Err(maestro_core::StoreError::NotFound(format!("run {}", run.id)));
                }
                Ok(())
            }

            /// Writes a run's state, totals, error and timestamps if it is in state
            /// `expected`; returns whether it did.
            pub(super) async fn run_update_if(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                run: &maestro_core::run::Run,
                expected: maestro_core::run::RunState,
            ) -> Result<bool, maestro_core::StoreError> {
                let updated = sqlx::query(super::runs::UPDATE_RUN_IF)
                    .bind(run.id.as_str())
                    .bind(run.state.as_str())
                    .bind(super::runs::to_json(&run.totals)?)
                    .bind(run.error.as_ref().map(super::runs::to_json).transpose()?)
                    .bind(run.started_at.map(super::runs::ms))
                    .bind(run.finished_at.map(super::runs::ms))
                    .bind(expected.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(super::backend_err)?;
                Ok(updated.rows_affected() == 1)
            }

            /// Appends an event: the run's row first (next `seq`), then the session's
            /// (next `session_seq`), both locked until the unit ends.
            pub(super) async fn run_append_event(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                event: &maestro_core::run::NewEvent,
            ) -> Result<maestro_core::run::RunEvent, maestro_core::StoreError> {
                let be = super::backend_err;
                let seq = sqlx::query_scalar::<_, i64>(super::runs::NEXT_RUN_SEQ)
                    .bind(event.run.as_str())
                    .bind(event.session.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(be)?
                    .ok_or_else(|| {
                        maestro_core::StoreError::NotFound(format!("run {} of session {}", event.run, event.session))
                    })?;
                let session_seq = sqlx::query_scalar::<_, i64>(super::runs::NEXT_SESSION_SEQ)
                    .bind(event.session.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(be)?
                    .ok_or_else(|| maestro_core::StoreError::NotFound(format!("session {}", event.session)))?;
                let at = super::runs::ms(event.at);
                sqlx::query(super::runs::INSERT_EVENT)
                    .bind(event.run.as_str())
                    .bind(seq)
                    .bind(event.session.as_str())
                    .bind(session_seq)
                    .bind(event.body.kind())
                    .bind(i64::from(maestro_core::run::EVENT_VERSION))
                    .bind(event.body.payload().to_string())
                    .bind(at)
                    .execute(&mut *conn)
                    .await
                    .map_err(super::map_err(&format!("event {seq} of run {}", event.run)))?;
                Ok(maestro_core::run::RunEvent {
                    run: event.run.clone(),
                    session: event.session.clone(),
                    seq,
                    session_seq,
                    at,
                    body: event.body.clone(),
                })
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::RunStore for $store {
            async fn create_session(
                &self,
                session: &maestro_core::run::Session,
            ) -> Result<(), maestro_core::StoreError> {
                sqlx::query(super::runs::INSERT_SESSION)
                    .bind(session.id.as_str())
                    .bind(session.tenant.as_str())
                    .bind(&session.title)
                    .bind(super::runs::to_json(&session.personas)?)
                    .bind(session.strategy.as_str())
                    .bind(super::runs::to_json(&session.limits)?)
                    .bind(&session.created_by)
                    .bind(super::runs::ms(session.created_at))
                    .execute(&self.pool)
                    .await
                    .map_err(super::map_err(&format!("session {}", session.id)))?;
                Ok(())
            }

            async fn session(
                &self,
                tenant: &maestro_core::TenantId,
                id: &maestro_core::run::SessionId,
            ) -> Result<Option<maestro_core::run::Session>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::runs::SessionRow>(super::runs::SESSION)
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(maestro_core::run::Session::try_from)
                    .transpose()
            }

            async fn sessions(
                &self,
                tenant: &maestro_core::TenantId,
                before: Option<&maestro_core::run::SessionId>,
                limit: u32,
            ) -> Result<Vec<maestro_core::run::Session>, maestro_core::StoreError> {
                let rows = match before {
                    None => {
                        sqlx::query_as::<_, super::runs::SessionRow>(super::runs::SESSIONS)
                            .bind(tenant.as_str())
                            .bind(super::runs::page(limit))
                            .fetch_all(&self.pool)
                            .await
                    }
                    Some(before) => {
                        sqlx::query_as::<_, super::runs::SessionRow>(super::runs::SESSIONS_BEFORE)
                            .bind(tenant.as_str())
                            .bind(before.as_str())
                            .bind(super::runs::page(limit))
                            .fetch_all(&self.pool)
                            .await
                    }
                };
                super::runs::from_rows(rows.map_err(super::backend_err)?)
            }

            async fn messages(
                &self,
                tenant: &maestro_core::TenantId,
                session: &maestro_core::run::SessionId,
                after: i64,
                limit: u32,
            ) -> Result<Vec<maestro_core::run::Message>, maestro_core::StoreError> {
                let rows = sqlx::query_as::<_, super::runs::MessageRow>(super::runs::MESSAGES)
                    .bind(session.as_str())
                    .bind(tenant.as_str())
                    .bind(after)
                    .bind(super::runs::page(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }

            async fn run(
                &self,
                tenant: Option<&maestro_core::TenantId>,
                id: &maestro_core::run::RunId,
            ) -> Result<Option<maestro_core::run::Run>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::runs::RunRow>(super::runs::RUN)
                    .bind(id.as_str())
                    .bind(tenant.map(|t| t.as_str()))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(maestro_core::run::Run::try_from)
                    .transpose()
            }

            async fn runs(
                &self,
                tenant: &maestro_core::TenantId,
                session: &maestro_core::run::SessionId,
                limit: u32,
            ) -> Result<Vec<maestro_core::run::Run>, maestro_core::StoreError> {
                let rows = sqlx::query_as::<_, super::runs::RunRow>(super::runs::RUNS)
                    .bind(session.as_str())
                    .bind(tenant.as_str())
                    .bind(super::runs::page(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }

            async fn run_events(
                &self,
                run: &maestro_core::run::RunId,
                after: i64,
                limit: u32,
            ) -> Result<Vec<maestro_core::run::RunEvent>, maestro_core::StoreError> {
                self.event_page(super::runs::RUN_EVENTS, run.as_str(), after, limit).await
            }

            async fn session_events(
                &self,
                session: &maestro_core::run::SessionId,
                after: i64,
                limit: u32,
            ) -> Result<Vec<maestro_core::run::RunEvent>, maestro_core::StoreError> {
                self.event_page(super::runs::SESSION_EVENTS, session.as_str(), after, limit).await
            }

            async fn session_head(
                &self,
                session: &maestro_core::run::SessionId,
            ) -> Result<i64, maestro_core::StoreError> {
                let head = sqlx::query_scalar::<_, i64>(super::runs::SESSION_HEAD)
                    .bind(session.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                Ok(head.unwrap_or(0))
            }

            async fn request_cancel(
                &self,
                tenant: &maestro_core::TenantId,
                id: &maestro_core::run::RunId,
            ) -> Result<Option<maestro_core::run::Run>, maestro_core::StoreError> {
                let flagged = sqlx::query_as::<_, super::runs::RunRow>(super::runs::REQUEST_CANCEL)
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .bind(true)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                match flagged {
                    Some(row) => Ok(Some(row.try_into()?)),
                    // Over already, or not this tenant's: as it stands, if visible.
                    None => self.run(Some(tenant), id).await,
                }
            }
        }
    };
}
pub(super) use impl_run_queries;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read is one indexed search on SQLite (no table scan, no sort step): pages
    /// stay fast however long a run or session gets.
    #[tokio::test]
    async fn every_read_searches_an_index_on_sqlite() {
        let reads = [
            ("SESSION", SESSION),
            ("SESSIONS", SESSIONS),
            ("SESSIONS_BEFORE", SESSIONS_BEFORE),
            ("MESSAGES", MESSAGES),
            ("RUN", RUN),
            ("RUNS", RUNS),
            ("RUN_EVENTS", RUN_EVENTS),
            ("SESSION_EVENTS", SESSION_EVENTS),
            ("SESSION_HEAD", SESSION_HEAD),
            ("REQUEST_CANCEL", REQUEST_CANCEL),
            ("NEXT_MESSAGE_SEQ", NEXT_MESSAGE_SEQ),
            ("NEXT_RUN_SEQ", NEXT_RUN_SEQ),
            ("NEXT_SESSION_SEQ", NEXT_SESSION_SEQ),
            ("UPDATE_RUN", UPDATE_RUN),
        ];
        crate::storage::assert_indexed_on_sqlite(&reads).await;
    }
}
