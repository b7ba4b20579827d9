//! Memories as resources: `maestro://memories/{id}` (JSON: text, tags, scope, pin,
//! source, times), read for the caller's tenant by callers whose policy grants
//! `memory.search`. `resources/list` names the newest [`PAGE`] memories after the
//! other resources and, when there are more, a `nextCursor` whose pages hold only
//! memories (newest first). A session (2025-11-25) may `resources/subscribe` to a
//! memory, and a stateless client (2026-07-28) may name memories in
//! `subscriptions/listen`'s `resourceSubscriptions`; either then gets
//! `notifications/resources/updated` when this process edits it, updates it as a
//! near-duplicate, or deletes it.

use std::collections::HashSet;

use maestro_core::TenantId;
use maestro_core::memory::{MemoryFilter, MemoryId, MemoryScope};
use rmcp::model::{ErrorData, ReadResourceResult, Resource, ResourceContents, ResourceTemplate};
use rmcp::{Peer, RoleServer};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::subscribe;
use crate::memory::{Memories, MemoriesError, MemoryChanged};
use crate::tools::{Principal, Tools};

/// A memory.
pub const MEMORY_TEMPLATE: &str = "maestro://memories/{id}";
const MEMORY_PREFIX: &str = "maestro://memories/";
/// The tool whose grant lets a caller read memories as resources.
const SEARCH_TOOL: &str = "memory.search";
/// Memories per page of `resources/list` (exported as `MEMORY_PAGE`).
pub const PAGE: u32 = 100;
/// What starts a cursor of memory pages (the rest is the last memory listed).
const CURSOR_PREFIX: &str = "memories:";
/// Most memories one `subscriptions/listen` may name.
const MAX_LISTENED: usize = 100;
const JSON: &str = "application/json";

/// Whether `uri` is a memory's.
pub(super) fn owns(uri: &str) -> bool {
    uri.starts_with(MEMORY_PREFIX)
}

/// Whether `cursor` continues the memory pages.
pub(super) fn owns_cursor(cursor: &str) -> bool {
    cursor.starts_with(CURSOR_PREFIX)
}

fn may_read(tools: &Tools, principal: &Principal) -> bool {
    tools.visible_tools(principal).iter().any(|t| t.name == SEARCH_TOOL)
}

fn not_found(uri: &str) -> ErrorData {
    ErrorData::resource_not_found(
        format!("no resource `{}`", uri.chars().take(256).collect::<String>()),
        Some(json!({ "uri": uri })),
    )
}

/// One page of the caller's memories, newest first, after `cursor` (a memory cursor,
/// or none for the first page), and the cursor of the next page when there is one.
/// Nothing when the caller may not read memories.
pub(super) async fn list(
    memories: &Memories,
    tools: &Tools,
    principal: &Principal,
    cursor: Option<&str>,
) -> Result<(Vec<Resource>, Option<String>), ErrorData> {
    let before = match cursor {
        None => None,
        Some(cursor) => {
            let id = cursor.strip_prefix(CURSOR_PREFIX).and_then(|id| MemoryId::parse(id).ok());
            Some(id.ok_or_else(|| ErrorData::invalid_params("unknown cursor", Some(json!({ "cursor": cursor }))))?)
        }
    };
    if !may_read(tools, principal) {
        return Ok((Vec::new(), None));
    }
    let mut page = match memories.list(&principal.tenant_id, &MemoryFilter::default(), before.as_ref(), PAGE + 1).await
    {
        Ok(page) => page,
        Err(err) => {
            tracing::warn!(tenant = %principal.tenant, error = %err, "memories left out of resources/list");
            return Ok((Vec::new(), None));
        }
    };
    let more = page.len() > PAGE as usize;
    page.truncate(PAGE as usize);
    let next = more.then(|| page.last().map(|m| format!("{CURSOR_PREFIX}{}", m.id))).flatten();
    let resources = page
        .iter()
        .map(|m| {
            let scope = match &m.scope {
                MemoryScope::Tenant => "tenant".to_owned(),
                MemoryScope::Persona(name) => format!("persona {name}"),
                MemoryScope::Session(id) => format!("session {id}"),
            };
            let tags = if m.tags.is_empty() { String::new() } else { format!(", tags: {}", m.tags.join(", ")) };
            Resource::new(format!("{MEMORY_PREFIX}{}", m.id), format!("memory-{}", m.id))
                .with_title(m.text.chars().take(80).collect::<String>())
                .with_description(format!("A memory ({scope}{tags})"))
                .with_mime_type(JSON)
        })
        .collect();
    Ok((resources, next))
}

/// The memory resource template.
pub(super) fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(MEMORY_TEMPLATE, "memory")
            .with_title("Memory")
            .with_description(
                "Something remembered (text, tags, scope, source); subscribe to hear when it changes or is forgotten",
            )
            .with_mime_type(JSON),
    ]
}

/// Reads a memory for the caller; what it cannot see is "not found".
pub(super) async fn read(
    memories: &Memories,
    tools: &Tools,
    principal: &Principal,
    uri: &str,
) -> Result<ReadResourceResult, ErrorData> {
    let id = memory_id(uri).ok_or_else(|| not_found(uri))?;
    if !may_read(tools, principal) {
        return Err(not_found(uri));
    }
    let memory = memories.get(&principal.tenant_id, &id).await.map_err(|e| failure(uri, &e))?;
    let value = crate::tools::memory::memory_json(&memory);
    let text = serde_json::to_string_pretty(&value).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri).with_mime_type(JSON)]))
}

fn memory_id(uri: &str) -> Option<MemoryId> {
    uri.strip_prefix(MEMORY_PREFIX).and_then(|id| MemoryId::parse(id).ok())
}

fn failure(uri: &str, err: &MemoriesError) -> ErrorData {
    match err {
        MemoriesError::NotFound => not_found(uri),
        other => {
            tracing::error!(error = %other, "a memory resource could not be read");
            ErrorData::internal_error("the memory could not be read", None)
        }
    }
}

/// One session's memory subscriptions, and the task that forwards their changes.
#[derive(Debug, Default)]
pub(super) struct Subscriptions(subscribe::Subscriptions);

impl subscribe::Change for MemoryChanged {
    fn uri(&self, tenant: &TenantId) -> Option<String> {
        (self.tenant == *tenant).then(|| format!("{MEMORY_PREFIX}{}", self.memory))
    }
}

impl Subscriptions {
    /// Subscribes to a memory the caller can read (else "not found"), starting the
    /// forwarding task on the first subscription.
    pub(super) async fn subscribe(
        &self,
        memories: &Memories,
        tools: &Tools,
        principal: &Principal,
        uri: &str,
        peer: Peer<RoleServer>,
        stop: CancellationToken,
    ) -> Result<(), ErrorData> {
        let id = memory_id(uri).ok_or_else(|| not_found(uri))?;
        if !may_read(tools, principal) {
            return Err(not_found(uri));
        }
        memories.get(&principal.tenant_id, &id).await.map_err(|e| failure(uri, &e))?;
        self.0.add(uri, || memories.changes(), &principal.tenant_id, peer, stop);
        Ok(())
    }

    /// Drops a subscription (unknown ones are fine).
    pub(super) fn unsubscribe(&self, uri: &str) {
        self.0.remove(uri);
    }
}

/// The memory URIs of a `subscriptions/listen` request this server accepts.
pub(super) fn accepted(requested: &rmcp::model::SubscriptionFilter) -> Vec<String> {
    let uris = requested.resource_subscriptions.iter().flatten();
    uris.filter(|uri| memory_id(uri).is_some()).take(MAX_LISTENED).cloned().collect()
}

/// Forwards updates of the accepted memories among `uris` to a stateless
/// `subscriptions/listen` stream until it ends. Only the caller's tenant's memories
/// change under its name, so an id of another tenant hears nothing; without
/// `memory.search`, nothing.
pub(super) async fn listen(
    memories: &Memories,
    tools: &Tools,
    principal: &Principal,
    uris: Vec<String>,
    sink: rmcp::service::SubscriptionSink,
    stop: CancellationToken,
) {
    let uris: HashSet<String> = uris.into_iter().filter(|uri| memory_id(uri).is_some()).collect();
    if uris.is_empty() || !may_read(tools, principal) {
        return;
    }
    subscribe::listen(memories.changes(), uris, &principal.tenant_id, sink, stop).await;
}
