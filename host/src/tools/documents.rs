//! The built-in document tools, over the [`Documents`] use-cases:
//!
//! - `documents.list`: the documents a run sees (its session's and the shared ones;
//!   outside a run, the tenant's or one session's): id, title, kind, version.
//! - `documents.read`: a document's content at its current (or a given) version.
//! - `documents.create`: a new Markdown or JSON document, attached to the run's session
//!   unless `shared`.
//! - `documents.edit`: exact search-and-replace `edits`, or a whole new `content`,
//!   against `base_version`. A stale base, or an edit that does not apply, is an error
//!   result carrying the current version (and its content when short, else a note to
//!   read it); nothing is written.
//!
//! In a run, the author of a version is the persona in its step, and every version
//! written yields a `document.updated` event recorded with the call's result; outside a
//! run (MCP, HTTP) the author is the caller's key.

use std::sync::Arc;

use async_trait::async_trait;
use maestro_core::document::{DocAuthor, Document, DocumentId, DocumentKind, DocumentScope, TextEdit};
use maestro_core::plugin::{Annotations, Content, ToolOutput, ToolSpec};
use maestro_core::run::{EventBody, SessionId};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Principal;
use super::host::{HostCall, HostResult, HostTool, Origin};
use crate::documents::{Current, Documents, DocumentsError, NewDocument};

/// Longest content an error result carries back to the model; longer ones are named
/// by version only, with a note to read them.
pub const INLINE_CONTENT_BYTES: usize = 8 * 1024;

/// Most documents `documents.list` returns.
const LIST_LIMIT: u32 = 100;

/// Most documents named in a model's context.
const CONTEXT_DOCUMENTS: u32 = 20;

/// The four document tools, for [`super::Tools::with_host_tools`].
pub fn tools(documents: Arc<Documents>) -> Vec<Arc<dyn HostTool>> {
    vec![
        Arc::new(DocumentTool::new(Op::List, documents.clone())),
        Arc::new(DocumentTool::new(Op::Read, documents.clone())),
        Arc::new(DocumentTool::new(Op::Create, documents.clone())),
        Arc::new(DocumentTool::new(Op::Edit, documents)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    List,
    Read,
    Create,
    Edit,
}

/// One of the document tools.
#[derive(Debug)]
struct DocumentTool {
    op: Op,
    name: String,
    spec: ToolSpec,
    documents: Arc<Documents>,
}

impl DocumentTool {
    fn new(op: Op, documents: Arc<Documents>) -> Self {
        let spec = spec(op);
        Self { op, name: format!("documents.{}", spec.name), spec, documents }
    }
}

#[async_trait]
impl HostTool for DocumentTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn context(&self, principal: &Principal, session: &SessionId) -> Option<String> {
        if self.op != Op::List {
            return None;
        }
        let scope = DocumentScope::SessionAndShared(session.clone());
        match self.documents.list(&principal.tenant_id, &scope, None, CONTEXT_DOCUMENTS + 1).await {
            Ok(documents) => context_block(&documents),
            Err(err) => {
                tracing::warn!(%session, error = %err, "the session's documents are left out of the context");
                None
            }
        }
    }

    async fn call(&self, call: HostCall) -> HostResult {
        match self.op {
            Op::List => self.list(call).await,
            Op::Read => self.read(call).await,
            Op::Create => self.create(call).await,
            Op::Edit => self.edit(call).await,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    session: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    id: String,
    version: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    title: String,
    #[serde(default = "markdown")]
    kind: DocumentKind,
    #[serde(default)]
    content: String,
    #[serde(default)]
    shared: bool,
    session: Option<String>,
}

fn markdown() -> DocumentKind {
    DocumentKind::Markdown
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditArgs {
    id: String,
    base_version: i64,
    edits: Option<Vec<TextEdit>>,
    content: Option<String>,
}

impl DocumentTool {
    async fn list(&self, mut call: HostCall) -> HostResult {
        let args: ListArgs = match parse(std::mem::take(&mut call.arguments)) {
            Ok(args) => args,
            Err(invalid) => return invalid,
        };
        let scope = match (&call.origin, args.session) {
            (Some(origin), _) => DocumentScope::SessionAndShared(origin.session.clone()),
            (None, Some(raw)) => match SessionId::parse(&raw) {
                Ok(session) => DocumentScope::Session(session),
                Err(_) => return HostResult::invalid(format!("`{}` is not a session id", clip(&raw))),
            },
            (None, None) => DocumentScope::All,
        };
        let tenant = &call.principal.tenant_id;
        match self.documents.list(tenant, &scope, None, LIST_LIMIT).await {
            Ok(documents) => {
                let listed: Vec<Value> = documents.iter().map(summary).collect();
                let value = json!({ "documents": listed });
                output(format_list(&documents), value, Vec::new())
            }
            Err(err) => failure(err),
        }
    }

    async fn read(&self, mut call: HostCall) -> HostResult {
        let args: ReadArgs = match parse(std::mem::take(&mut call.arguments)) {
            Ok(args) => args,
            Err(invalid) => return invalid,
        };
        let Some(id) = document_id(&args.id) else { return not_found() };
        let tenant = &call.principal.tenant_id;
        let current = match self.documents.get(tenant, &id).await {
            Ok(current) => current,
            Err(err) => return failure(err),
        };
        let (version, content) = match args.version {
            Some(version) if version != current.document.version => {
                match self.documents.version(tenant, &id, version).await {
                    Ok(found) => (found.version, found.content),
                    Err(err) => return failure(err),
                }
            }
            _ => (current.document.version, current.content.clone()),
        };
        let d = &current.document;
        let value = json!({
            "id": d.id, "title": d.title, "kind": d.kind.as_str(), "version": version,
            "current_version": d.version, "content": content,
        });
        let text = format!(
            "document {} \"{}\" ({}), version {version} (current: {}):\n{content}",
            d.id,
            d.title,
            d.kind.as_str(),
            d.version
        );
        output(text, value, Vec::new())
    }

    async fn create(&self, mut call: HostCall) -> HostResult {
        let args: CreateArgs = match parse(std::mem::take(&mut call.arguments)) {
            Ok(args) => args,
            Err(invalid) => return invalid,
        };
        let session = match (&call.origin, args.shared, args.session) {
            (_, true, _) => None,
            (Some(origin), false, _) => Some(origin.session.clone()),
            (None, false, Some(raw)) => match SessionId::parse(&raw) {
                Ok(session) => Some(session),
                Err(_) => return HostResult::invalid(format!("`{}` is not a session id", clip(&raw))),
            },
            (None, false, None) => None,
        };
        let new = NewDocument { title: args.title, kind: args.kind, content: args.content, session };
        let author = author(&call);
        match self.documents.create(&call.principal.tenant_id, new, author).await {
            Ok(created) => {
                let d = &created.document;
                let value = json!({ "id": d.id, "title": d.title, "kind": d.kind.as_str(), "version": d.version });
                let text = format!("created document {} \"{}\" at version {}", d.id, d.title, d.version);
                output(text, value, updated(call.origin.as_ref(), d))
            }
            Err(err) => failure(err),
        }
    }

    async fn edit(&self, mut call: HostCall) -> HostResult {
        let args: EditArgs = match parse(std::mem::take(&mut call.arguments)) {
            Ok(args) => args,
            Err(invalid) => return invalid,
        };
        let Some(id) = document_id(&args.id) else { return not_found() };
        let (tenant, author) = (&call.principal.tenant_id, author(&call));
        let written = match (args.edits, args.content) {
            (Some(edits), None) => self.documents.edit(tenant, &id, args.base_version, edits, author).await,
            (None, Some(content)) => self.documents.put(tenant, &id, args.base_version, content, author).await,
            _ => return HostResult::invalid("give either `edits` or `content`, not both"),
        };
        match written {
            Ok(now) => {
                let d = &now.document;
                let value = json!({ "id": d.id, "version": d.version });
                let text = format!("document {} is now at version {}", d.id, d.version);
                output(text, value, updated(call.origin.as_ref(), d))
            }
            Err(err) => failure(err),
        }
    }
}

/// The tool's spec.
fn spec(op: Op) -> ToolSpec {
    let (name, title, description, schema, read_only) = match op {
        Op::List => (
            "list",
            "List documents",
            "Lists the documents of this session and the documents shared across the tenant: id, title, kind and current version.",
            json!({"type": "object", "properties": {
                "session": {"type": "string", "description": "outside a run: only this session's documents (ses_…)"}
            }, "additionalProperties": false}),
            true,
        ),
        Op::Read => (
            "read",
            "Read a document",
            "Reads a document's content at its current version (or at `version`). Edit against the version you read.",
            json!({"type": "object", "properties": {
                "id": {"type": "string", "description": "the document's id (doc_…)"},
                "version": {"type": "integer", "minimum": 1, "description": "an older version to read"}
            }, "required": ["id"], "additionalProperties": false}),
            true,
        ),
        Op::Create => (
            "create",
            "Create a document",
            "Creates a Markdown or JSON document (version 1) attached to this session, or shared across the tenant with `shared: true`.",
            json!({"type": "object", "properties": {
                "title": {"type": "string", "maxLength": 256},
                "kind": {"type": "string", "enum": ["markdown", "json"], "default": "markdown"},
                "content": {"type": "string", "description": "the first version's text (JSON documents: valid JSON)"},
                "shared": {"type": "boolean", "default": false, "description": "share across the tenant instead of this session"},
                "session": {"type": "string", "description": "outside a run: the session to attach it to (ses_…)"}
            }, "required": ["title", "content"], "additionalProperties": false}),
            false,
        ),
        Op::Edit => (
            "edit",
            "Edit a document",
            "Writes the next version of a document against `base_version` (the version you read): either `edits`, exact search-and-replace pairs applied in order (each `old` must occur exactly once), or `content`, a full replacement. If the document moved on, or an edit does not apply, nothing is written and the error carries the current version.",
            json!({"type": "object", "properties": {
                "id": {"type": "string", "description": "the document's id (doc_…)"},
                "base_version": {"type": "integer", "minimum": 1},
                "edits": {"type": "array", "maxItems": 64, "items": {"type": "object", "properties": {
                    "old": {"type": "string", "minLength": 1}, "new": {"type": "string"}
                }, "required": ["old", "new"], "additionalProperties": false}},
                "content": {"type": "string", "description": "the whole new text (instead of edits)"}
            }, "required": ["id", "base_version"], "additionalProperties": false}),
            false,
        ),
    };
    ToolSpec {
        name: name.to_owned(),
        title: Some(title.to_owned()),
        description: description.to_owned(),
        input_schema: schema,
        output_schema: None,
        annotations: Annotations { read_only, destructive: false, idempotent: read_only, open_world: false },
    }
}

/// A tool's arguments as `T`, or the invalid-arguments result (the memory tools' too).
pub(super) fn parse<T: DeserializeOwned>(arguments: Value) -> Result<T, HostResult> {
    serde_json::from_value(arguments).map_err(|e| HostResult::invalid(e.to_string()))
}

fn document_id(raw: &str) -> Option<DocumentId> {
    DocumentId::parse(raw).ok()
}

/// At most 64 characters of a caller's input, to quote it in an error.
pub(super) fn clip(raw: &str) -> String {
    raw.chars().take(64).collect()
}

fn not_found() -> HostResult {
    HostResult::error("document not found")
}

/// The author of a version written by this call.
fn author(call: &HostCall) -> DocAuthor {
    match &call.origin {
        Some(origin) => DocAuthor::Persona { name: origin.persona.clone(), run: origin.run.clone(), step: origin.step },
        None => DocAuthor::User { key: call.principal.key_id.clone() },
    }
}

/// The `document.updated` event of a version written in a run.
fn updated(origin: Option<&Origin>, document: &Document) -> Vec<EventBody> {
    origin
        .map(|origin| EventBody::DocumentUpdated {
            document: document.id.clone(),
            version: document.version,
            title: document.title.clone(),
            persona: origin.persona.clone(),
            step: origin.step,
        })
        .into_iter()
        .collect()
}

fn summary(d: &Document) -> Value {
    json!({
        "id": d.id, "title": d.title, "kind": d.kind.as_str(), "version": d.version,
        "shared": d.session.is_none(),
    })
}

fn format_list(documents: &[Document]) -> String {
    if documents.is_empty() {
        return "no documents yet".to_owned();
    }
    documents
        .iter()
        .map(|d| {
            let shared = if d.session.is_none() { ", shared" } else { "" };
            format!("- {} \"{}\" ({}, version {}{shared})", d.id, d.title, d.kind.as_str(), d.version)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The block a model's context gets: the session's and shared documents, newest first.
fn context_block(documents: &[Document]) -> Option<String> {
    if documents.is_empty() {
        return None;
    }
    let shown = documents.len().min(CONTEXT_DOCUMENTS as usize);
    let mut block = String::from(
        "Documents of this session (read them with documents.read; edit against the version you read with documents.edit):\n",
    );
    block.push_str(&format_list(&documents[..shown]));
    if documents.len() > shown {
        block.push_str("\n- … more: documents.list names them all");
    }
    Some(block)
}

/// A successful result: `text` for the model, `structured` for clients, and `events`.
pub(super) fn output(text: String, structured: Value, events: Vec<EventBody>) -> HostResult {
    HostResult {
        outcome: Ok(ToolOutput { content: vec![Content::Text { text }], structured: Some(structured) }),
        events,
    }
}

/// The current version, and its content when short, for an error result.
fn current_note(current: &Current) -> String {
    let d = &current.document;
    if current.content.len() <= INLINE_CONTENT_BYTES {
        format!("current version {} of document {} is:\n{}", d.version, d.id, current.content)
    } else {
        format!(
            "the current version is {} ({} bytes); read it with documents.read before editing again",
            d.version,
            current.content.len()
        )
    }
}

/// A use-case error as the tool's result.
fn failure(err: DocumentsError) -> HostResult {
    match err {
        DocumentsError::Stale { base, current } => HostResult::error(format!(
            "stale base: version {base} is not the current version {}; nothing was written. Redo your edit against the current version. {}",
            current.document.version,
            current_note(&current)
        )),
        DocumentsError::Rejected { reason, current } => HostResult::error(format!(
            "the edit does not apply: {reason}; nothing was written (base and current version {}). {}",
            current.document.version,
            current_note(&current)
        )),
        DocumentsError::Invalid(reason) => HostResult::invalid(reason.to_string()),
        DocumentsError::NotFound | DocumentsError::VersionNotFound(_) | DocumentsError::SessionNotFound => {
            HostResult::error(err.to_string())
        }
        DocumentsError::Store(store) => HostResult::unavailable(format!("document store: {store}")),
    }
}
