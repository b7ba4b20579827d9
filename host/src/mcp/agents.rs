//! The agent runtime's resources: living documents (`maestro://documents/{id}`, and
//! `maestro://documents/{id}/versions/{version}`) and session transcripts
//! (`maestro://sessions/{id}/transcript`, the messages as Markdown), read for the
//! caller's tenant; documents need `documents.read` under the caller's policy. A
//! session (2025-11-25) may `resources/subscribe` to a document, and a stateless client
//! (2026-07-28) may name documents in `subscriptions/listen`'s `resourceSubscriptions`;
//! either then gets `notifications/resources/updated` when this process writes one of
//! their versions.

use std::sync::Arc;

use maestro_core::document::{DocumentId, DocumentKind, DocumentScope};
use maestro_core::run::{Author, SessionId};
use rmcp::model::{ErrorData, ReadResourceResult, Resource, ResourceContents, ResourceTemplate};
use rmcp::{Peer, RoleServer};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::subscribe;
use crate::documents::{Documents, DocumentsError};
use crate::orchestrator::tools::OrchestratorSlot;
use crate::tools::{Principal, Tools};

/// A document's current content.
pub const DOCUMENT_TEMPLATE: &str = "maestro://documents/{id}";
/// One version of a document.
pub const VERSION_TEMPLATE: &str = "maestro://documents/{id}/versions/{version}";
/// A session's messages as Markdown.
pub const TRANSCRIPT_TEMPLATE: &str = "maestro://sessions/{id}/transcript";
const DOCUMENT_PREFIX: &str = "maestro://documents/";
const SESSION_PREFIX: &str = "maestro://sessions/";
/// The tool whose grant lets a caller read documents as resources.
const READ_TOOL: &str = "documents.read";
/// Most documents and sessions listed.
const LISTED: u32 = 100;
/// Most messages a transcript holds (the newest are kept).
const TRANSCRIPT_MESSAGES: u32 = 500;

/// What the agent resources read: the documents and the orchestrator (sessions).
#[derive(Debug, Clone)]
pub struct Agents {
    /// The document use-cases (and their change signal).
    pub documents: Arc<Documents>,
    /// The orchestrator, once built.
    pub runs: OrchestratorSlot,
    /// The memory use-cases (`maestro://memories/{id}`), when memories are set up.
    pub memories: Option<Arc<crate::memory::Memories>>,
}

/// Whether `uri` is one of the agent resources.
pub(super) fn owns(uri: &str) -> bool {
    uri.starts_with(DOCUMENT_PREFIX) || uri.starts_with(SESSION_PREFIX)
}

fn may_read_documents(tools: &Tools, principal: &Principal) -> bool {
    tools.visible_tools(principal).iter().any(|t| t.name == READ_TOOL)
}

/// The documents and sessions the caller can read.
pub(super) async fn list(agents: &Agents, tools: &Tools, principal: &Principal) -> Vec<Resource> {
    let mut resources = Vec::new();
    if may_read_documents(tools, principal) {
        match agents.documents.list(&principal.tenant_id, &DocumentScope::All, None, LISTED).await {
            Ok(documents) => resources.extend(documents.iter().map(|d| {
                Resource::new(format!("{DOCUMENT_PREFIX}{}", d.id), format!("document-{}", d.id))
                    .with_title(d.title.clone())
                    .with_description(format!("{} document, version {}", d.kind.as_str(), d.version))
                    .with_mime_type(mime(d.kind))
            })),
            Err(err) => {
                tracing::warn!(tenant = %principal.tenant, error = %err, "documents left out of resources/list")
            }
        }
    }
    if let Some(orchestrator) = agents.runs.get() {
        match orchestrator.sessions(principal, None, LISTED).await {
            Ok(sessions) => resources.extend(sessions.iter().map(|s| {
                let title = if s.title.is_empty() { format!("Session {}", s.id) } else { s.title.clone() };
                Resource::new(format!("{SESSION_PREFIX}{}/transcript", s.id), format!("transcript-{}", s.id))
                    .with_title(format!("{title} (transcript)"))
                    .with_description(format!("The messages of session {} ({})", s.id, s.personas.join(", ")))
                    .with_mime_type(MARKDOWN)
            })),
            Err(err) => tracing::warn!(tenant = %principal.tenant, error = %err, "sessions left out of resources/list"),
        }
    }
    resources
}

/// The agent resource templates.
pub(super) fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(DOCUMENT_TEMPLATE, "document")
            .with_title("Living document")
            .with_description("A document's current content (Markdown or JSON); subscribe to hear of new versions"),
        ResourceTemplate::new(VERSION_TEMPLATE, "document-version")
            .with_title("Document version")
            .with_description("One version of a document, as it was written"),
        ResourceTemplate::new(TRANSCRIPT_TEMPLATE, "transcript")
            .with_title("Session transcript")
            .with_description("A session's messages, as Markdown")
            .with_mime_type(MARKDOWN),
    ]
}

const MARKDOWN: &str = "text/markdown";

fn mime(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Markdown => MARKDOWN,
        DocumentKind::Json => "application/json",
    }
}

fn not_found(uri: &str) -> ErrorData {
    ErrorData::resource_not_found(
        format!("no resource `{}`", uri.chars().take(256).collect::<String>()),
        Some(json!({ "uri": uri })),
    )
}

/// Reads a document or transcript for the caller; what it cannot see is "not found".
pub(super) async fn read(
    agents: &Agents,
    tools: &Tools,
    principal: &Principal,
    uri: &str,
) -> Result<ReadResourceResult, ErrorData> {
    if let Some(rest) = uri.strip_prefix(DOCUMENT_PREFIX) {
        if !may_read_documents(tools, principal) {
            return Err(not_found(uri));
        }
        let (id, version) = match rest.split_once("/versions/") {
            Some((id, version)) => (id, Some(version.parse::<i64>().map_err(|_| not_found(uri))?)),
            None => (rest, None),
        };
        let id = DocumentId::parse(id).map_err(|_| not_found(uri))?;
        let tenant = &principal.tenant_id;
        let current = agents.documents.get(tenant, &id).await.map_err(|e| failure(uri, &e))?;
        let content = match version {
            Some(v) if v != current.document.version => {
                agents.documents.version(tenant, &id, v).await.map_err(|e| failure(uri, &e))?.content
            }
            _ => current.content,
        };
        let contents = ResourceContents::text(content, uri).with_mime_type(mime(current.document.kind));
        return Ok(ReadResourceResult::new(vec![contents]));
    }
    let id = uri
        .strip_prefix(SESSION_PREFIX)
        .and_then(|rest| rest.strip_suffix("/transcript"))
        .and_then(|id| SessionId::parse(id).ok())
        .ok_or_else(|| not_found(uri))?;
    let orchestrator = agents.runs.get().ok_or_else(|| not_found(uri))?;
    let session = orchestrator.session(principal, &id).await.map_err(|_| not_found(uri))?;
    let mut messages = Vec::new();
    loop {
        let after = messages.last().map_or(0, |m: &maestro_core::run::Message| m.seq);
        let page = orchestrator
            .messages(principal, &id, after, maestro_core::run::MAX_PAGE)
            .await
            .map_err(|e| ErrorData::internal_error(format!("cannot read the transcript: {e}"), None))?;
        let done = page.len() < maestro_core::run::MAX_PAGE as usize;
        messages.extend(page);
        if done {
            break;
        }
    }
    let skip = messages.len().saturating_sub(TRANSCRIPT_MESSAGES as usize);
    let title = if session.title.is_empty() { format!("Session {}", session.id) } else { session.title.clone() };
    let mut text = format!("# {title}\n\nPersonas: {}\n", session.personas.join(", "));
    if skip > 0 {
        text.push_str(&format!("\n_{skip} earlier messages are not shown._\n"));
    }
    for message in &messages[skip..] {
        let who = match &message.author {
            Author::User { .. } => "user".to_owned(),
            Author::Persona { name } => name.clone(),
        };
        let at = message.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        text.push_str(&format!("\n## {who} · {at}\n\n{}\n", message.content));
    }
    Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri).with_mime_type(MARKDOWN)]))
}

fn failure(uri: &str, err: &DocumentsError) -> ErrorData {
    match err {
        DocumentsError::NotFound | DocumentsError::VersionNotFound(_) | DocumentsError::SessionNotFound => {
            not_found(uri)
        }
        other => {
            tracing::error!(error = %other, "a document resource could not be read");
            ErrorData::internal_error("the document could not be read", None)
        }
    }
}

/// One session's document subscriptions, and the task that forwards their changes.
#[derive(Debug, Default)]
pub(super) struct Subscriptions(subscribe::Subscriptions);

impl subscribe::Change for crate::documents::DocumentChanged {
    fn uri(&self, tenant: &maestro_core::TenantId) -> Option<String> {
        (self.tenant == *tenant).then(|| format!("{DOCUMENT_PREFIX}{}", self.document))
    }
}

impl Subscriptions {
    /// Subscribes to a document the caller can read (else "not found"), starting the
    /// forwarding task on the first subscription.
    pub(super) async fn subscribe(
        &self,
        agents: &Agents,
        tools: &Tools,
        principal: &Principal,
        uri: &str,
        peer: Peer<RoleServer>,
        stop: CancellationToken,
    ) -> Result<(), ErrorData> {
        let id = uri.strip_prefix(DOCUMENT_PREFIX).filter(|id| !id.contains('/')).ok_or_else(|| not_found(uri))?;
        let id = DocumentId::parse(id).map_err(|_| not_found(uri))?;
        if !may_read_documents(tools, principal) {
            return Err(not_found(uri));
        }
        agents.documents.get(&principal.tenant_id, &id).await.map_err(|e| failure(uri, &e))?;
        self.0.add(uri, || agents.documents.changes(), &principal.tenant_id, peer, stop);
        Ok(())
    }

    /// Drops a subscription (unknown ones are fine).
    pub(super) fn unsubscribe(&self, uri: &str) {
        self.0.remove(uri);
    }
}

/// Most documents one `subscriptions/listen` may name.
const MAX_LISTENED: usize = 100;

/// The document URIs of a `subscriptions/listen` request this server accepts.
pub(super) fn accepted(requested: &rmcp::model::SubscriptionFilter) -> Vec<String> {
    let uris = requested.resource_subscriptions.iter().flatten();
    let documents = uris.filter(|uri| {
        uri.strip_prefix(DOCUMENT_PREFIX).is_some_and(|id| !id.contains('/') && DocumentId::parse(id).is_ok())
    });
    documents.take(MAX_LISTENED).cloned().collect()
}

/// Forwards updates of the accepted documents to a stateless `subscriptions/listen`
/// stream until it ends. Only the caller's tenant's documents ever change under its
/// name, so an id of another tenant hears nothing; without `documents.read`, nothing.
pub(super) async fn listen(
    agents: &Agents,
    tools: &Tools,
    principal: &Principal,
    uris: Vec<String>,
    sink: rmcp::service::SubscriptionSink,
    stop: CancellationToken,
) {
    if uris.is_empty() || !may_read_documents(tools, principal) {
        return;
    }
    let uris = uris.into_iter().collect();
    subscribe::listen(agents.documents.changes(), uris, &principal.tenant_id, sink, stop).await;
}
