//! Full-text search as the rest of Maestro sees it: what gets indexed
//! ([`SearchKind`], [`Searchable`]) and the outbox the index follows ([`SearchChange`],
//! [`OutboxEntry`], [`OutboxPosition`]).
//!
//! Every write of an indexed row also writes a [`SearchChange`] in the same store
//! transaction (messages and document versions in the storage adapters; other kinds
//! through [`crate::Tx::record_search_change`]). Each replica's index reads the outbox
//! in [`OutboxPosition`] order, fetches the objects' current content
//! ([`crate::ports::SearchStore::searchables`]) and applies it: present → upsert,
//! absent → delete. The position it has applied through is its watermark.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::TenantId;
use crate::run::SessionId;

/// What an indexed object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchKind {
    /// A message of a session.
    Message,
    /// A document (its current version).
    Document,
    /// A memory.
    Memory,
}

impl SearchKind {
    /// Every kind.
    pub const ALL: [SearchKind; 3] = [SearchKind::Message, SearchKind::Document, SearchKind::Memory];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchKind::Message => "message",
            SearchKind::Document => "document",
            SearchKind::Memory => "memory",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for SearchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to the object (informational: the index always applies the object's
/// current state, so a late upsert of a deleted object deletes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// Written or changed.
    Upsert,
    /// Removed.
    Delete,
}

impl ChangeOp {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Upsert => "upsert",
            ChangeOp::Delete => "delete",
        }
    }

    /// The op named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "upsert" => Some(ChangeOp::Upsert),
            "delete" => Some(ChangeOp::Delete),
            _ => None,
        }
    }
}

/// A place in the outbox: rows are read in `(txid, id)` order. On Postgres `txid` is
/// the writer's transaction id and a reader takes only rows of transactions that have
/// ended (below its snapshot's xmin), so no row can later appear before a position
/// already read, whatever order transactions commit in; on SQLite `txid` is 0 and ids
/// commit in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct OutboxPosition {
    /// The writer's transaction id (0 on SQLite).
    pub txid: i64,
    /// The row's id.
    pub id: i64,
}

impl OutboxPosition {
    /// Before every row.
    pub const START: OutboxPosition = OutboxPosition { txid: 0, id: 0 };
}

impl std::fmt::Display for OutboxPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.txid, self.id)
    }
}

/// A change to index, written in the transaction that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchChange {
    /// The object's tenant.
    pub tenant: TenantId,
    /// Its kind.
    pub kind: SearchKind,
    /// Its id.
    pub object: String,
    /// What happened.
    pub op: ChangeOp,
    /// When.
    pub at: DateTime<Utc>,
}

/// An outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Where it is.
    pub position: OutboxPosition,
    /// The change.
    pub change: SearchChange,
}

/// The outbox as a follower at some watermark sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStatus {
    /// The last settled row's position (`None`: no settled row is kept).
    pub head: Option<OutboxPosition>,
    /// Rows after the watermark (settled or not).
    pub pending: u64,
    /// Pruning deleted every row up to here: a watermark below it missed changes.
    pub pruned_through: OutboxPosition,
}

/// An object's current content as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Searchable {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its kind.
    pub kind: SearchKind,
    /// Its id.
    pub id: String,
    /// Its session (a message's; a session document's).
    pub session: Option<SessionId>,
    /// Who wrote it: a persona's name, a key id.
    pub author: Option<String>,
    /// Its title (documents).
    pub title: String,
    /// Its text.
    pub text: String,
    /// When it was written (a document: its current version; a memory: its creation).
    pub at: DateTime<Utc>,
    /// A memory's tags (sorted; empty for other kinds).
    pub tags: Vec<String>,
    /// A memory's scope kind (`tenant`, `persona`, `session`); `None` for other kinds.
    pub scope: Option<String>,
    /// A memory exempt from recency decay.
    pub pinned: bool,
}
