//! The built-in memory tools, over the [`Memories`] use-cases:
//!
//! - `memory.search`: the memories nearest in meaning to a query (`k` ≤ [`MAX_K`],
//!   default [`DEFAULT_K`]), optionally narrowed by scope and tags: id, text, tags,
//!   scope and cosine score, best first.
//! - `memory.store`: remembers a text with tags in a scope (`tenant` by default,
//!   `persona` or `session`) through [`Memories::remember`]: a near-duplicate held in
//!   the same scope is updated instead of inserting another.
//! - `memory.forget`: deletes a memory by id.
//!
//! In a run, the persona and session of a scope are the run's own (naming others is
//! refused), a stored memory records the run and step as its source, and the run sees
//! only the tenant's memories, its persona's and its session's: a search without a
//! scope covers those three, and another session's or persona's memory is "not found"
//! to `memory.forget`. Outside a run (MCP), the caller names a persona or session for
//! those scopes, and a search without one covers every memory of the tenant.
//!
//! Bad arguments are error results the model can read, and nothing is written.

use std::sync::Arc;

use async_trait::async_trait;
use maestro_core::memory::{Memory, MemoryFilter, MemoryId, MemoryScope, MemorySource};
use maestro_core::plugin::{Annotations, ToolSpec};
use maestro_core::run::SessionId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::documents::{clip, parse};
use super::host::{HostCall, HostResult, HostTool, Origin};
use crate::memory::{Memories, MemoriesError, NewMemory, Remembered};

/// Most memories one `memory.search` returns.
pub const MAX_K: u32 = 20;
/// Memories `memory.search` returns when `k` is not given.
pub const DEFAULT_K: u32 = 5;

/// The memory tools, for [`super::Tools::with_host_tools`].
pub fn tools(memories: Arc<Memories>) -> Vec<Arc<dyn HostTool>> {
    vec![
        Arc::new(MemoryTool::new(Op::Search, memories.clone())),
        Arc::new(MemoryTool::new(Op::Store, memories.clone())),
        Arc::new(MemoryTool::new(Op::Forget, memories)),
    ]
}

/// A memory as the tools and MCP resources show it (the shape of `/v1/memories`,
/// without the embedder).
pub fn memory_json(m: &Memory) -> Value {
    let mut value = json!({
        "id": m.id, "scope": m.scope.kind(), "text": m.text, "tags": m.tags, "pinned": m.pinned,
        "created_at": m.created_at, "updated_at": m.updated_at,
    });
    match &m.scope {
        MemoryScope::Tenant => {}
        MemoryScope::Persona(name) => value["persona"] = json!(name),
        MemoryScope::Session(id) => value["session"] = json!(id),
    }
    if let Some(source) = &m.source {
        value["source"] = json!({ "run": source.run, "step": source.step });
    }
    value
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Search,
    Store,
    Forget,
}

/// One of the memory tools.
#[derive(Debug)]
struct MemoryTool {
    op: Op,
    name: String,
    spec: ToolSpec,
    memories: Arc<Memories>,
}

impl MemoryTool {
    fn new(op: Op, memories: Arc<Memories>) -> Self {
        let spec = spec(op);
        Self { op, name: format!("memory.{}", spec.name), spec, memories }
    }
}

#[async_trait]
impl HostTool for MemoryTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, call: HostCall) -> HostResult {
        match self.op {
            Op::Search => self.search(call).await,
            Op::Store => self.store(call).await,
            Op::Forget => self.forget(call).await,
        }
    }
}

/// A scope's kind, as the tools name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Tenant,
    Persona,
    Session,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
    k: Option<u32>,
    scope: Option<Kind>,
    persona: Option<String>,
    session: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreArgs {
    text: String,
    #[serde(default)]
    tags: Vec<String>,
    scope: Option<Kind>,
    persona: Option<String>,
    session: Option<String>,
    #[serde(default)]
    pinned: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgetArgs {
    id: String,
}

impl MemoryTool {
    async fn search(&self, mut call: HostCall) -> HostResult {
        let args: SearchArgs = match parse(std::mem::take(&mut call.arguments)) {
            Ok(args) => args,
            Err(invalid) => return invalid,
        };
        let k = args.k.unwrap_or(DEFAULT_K);
        if !(1..=MAX_K).contains(&k) {
            return HostResult::invalid(format!("k must be between 1 and {MAX_K}"));
        }
        let tags = match maestro_core::memory::normalise_tags(&args.tags) {
            Ok(tags) => tags,
            Err(err) => return HostResult::invalid(err.to_string()),
        };
        let scopes = match search_scopes(call.origin.as_ref(), args.scope, args.persona, args.session) {
            Ok(scopes) => scopes,
            Err(invalid) => return invalid,
        };
        let filters: Vec<MemoryFilter> =
            scopes.into_iter().map(|filter| MemoryFilter { tags: tags.clone(), ..filter }).collect();
        match self.memories.search_any(&call.principal.tenant_id, &args.query, &filters, k).await {
            Ok(hits) => {
                let listed: Vec<Value> = hits
                    .iter()
                    .map(|hit| {
                        let mut value = memory_json(&hit.memory);
                        value["score"] = json!(hit.score);
                        value
                    })
                    .collect();
                let text = if hits.is_empty() {
                    "no memories found".to_owned()
                } else {
                    hits.iter()
                        .map(|hit| format!("- {} (score {:.2}): {}", label(&hit.memory), hit.score, hit.memory.text))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                output(text, json!({ "memories": listed }))
            }
            Err(err) => failure(err),
        }
    }

    async fn store(&self, mut call: HostCall) -> HostResult {
        let args: StoreArgs = match parse(std::mem::take(&mut call.arguments)) {
            Ok(args) => args,
            Err(invalid) => return invalid,
        };
        let origin = call.origin.as_ref();
        let scope = match store_scope(origin, args.scope, args.persona, args.session) {
            Ok(scope) => scope,
            Err(invalid) => return invalid,
        };
        let source = origin.map(|o| MemorySource { run: o.run.clone(), step: o.step });
        let new = NewMemory { scope, text: args.text, tags: args.tags, pinned: args.pinned, source };
        match self.memories.remember(&call.principal.tenant_id, new).await {
            Ok((memory, how)) => {
                let (word, verb) = match how {
                    Remembered::Inserted => ("inserted", "remembered"),
                    Remembered::Updated => ("updated", "updated the near-duplicate"),
                };
                let mut value = memory_json(&memory);
                value["remembered"] = json!(word);
                output(format!("{verb} {}: {}", label(&memory), memory.text), value)
            }
            Err(err) => failure(err),
        }
    }

    async fn forget(&self, mut call: HostCall) -> HostResult {
        let args: ForgetArgs = match parse(std::mem::take(&mut call.arguments)) {
            Ok(args) => args,
            Err(invalid) => return invalid,
        };
        let Ok(id) = MemoryId::parse(&args.id) else { return not_found() };
        let tenant = &call.principal.tenant_id;
        if let Some(origin) = &call.origin {
            match self.memories.get(tenant, &id).await {
                Ok(memory) if visible_in_run(origin, &memory.scope) => {}
                Ok(_) => return not_found(),
                Err(err) => return failure(err),
            }
        }
        match self.memories.delete(tenant, &id).await {
            Ok(()) => output(format!("forgot memory {id}"), json!({ "id": id, "forgotten": true })),
            Err(err) => failure(err),
        }
    }
}

/// Whether a run sees a memory of `scope`: the tenant's, its persona's, its session's.
fn visible_in_run(origin: &Origin, scope: &MemoryScope) -> bool {
    match scope {
        MemoryScope::Tenant => true,
        MemoryScope::Persona(name) => *name == origin.persona,
        MemoryScope::Session(id) => *id == origin.session,
    }
}

/// The filters (without tags) a search covers.
fn search_scopes(
    origin: Option<&Origin>,
    kind: Option<Kind>,
    persona: Option<String>,
    session: Option<String>,
) -> Result<Vec<MemoryFilter>, HostResult> {
    let tenant = || MemoryFilter { scope_kind: Some("tenant"), ..MemoryFilter::default() };
    let of_persona = |name: String| MemoryFilter { persona: Some(name), ..MemoryFilter::default() };
    let of_session = |id: SessionId| MemoryFilter { session: Some(id), ..MemoryFilter::default() };
    if let Some(origin) = origin {
        refuse_names_in_run(persona.as_ref(), session.as_ref())?;
        return Ok(match kind {
            None => vec![tenant(), of_persona(origin.persona.clone()), of_session(origin.session.clone())],
            Some(Kind::Tenant) => vec![tenant()],
            Some(Kind::Persona) => vec![of_persona(origin.persona.clone())],
            Some(Kind::Session) => vec![of_session(origin.session.clone())],
        });
    }
    let kind = implied_kind(kind, persona.as_ref(), session.as_ref())?;
    Ok(vec![match (kind, persona, session) {
        (None, ..) => MemoryFilter::default(),
        (Some(Kind::Tenant), ..) => tenant(),
        (Some(Kind::Persona), Some(name), _) => of_persona(persona_name(&name)?),
        (Some(Kind::Persona), None, _) => MemoryFilter { scope_kind: Some("persona"), ..MemoryFilter::default() },
        (Some(Kind::Session), _, Some(raw)) => of_session(session_id(&raw)?),
        (Some(Kind::Session), _, None) => MemoryFilter { scope_kind: Some("session"), ..MemoryFilter::default() },
    }])
}

/// The scope a stored memory gets (`tenant` unless named or implied).
fn store_scope(
    origin: Option<&Origin>,
    kind: Option<Kind>,
    persona: Option<String>,
    session: Option<String>,
) -> Result<MemoryScope, HostResult> {
    if let Some(origin) = origin {
        refuse_names_in_run(persona.as_ref(), session.as_ref())?;
        return Ok(match kind.unwrap_or(Kind::Tenant) {
            Kind::Tenant => MemoryScope::Tenant,
            Kind::Persona => MemoryScope::Persona(origin.persona.clone()),
            Kind::Session => MemoryScope::Session(origin.session.clone()),
        });
    }
    let kind = implied_kind(kind, persona.as_ref(), session.as_ref())?.unwrap_or(Kind::Tenant);
    match (kind, persona, session) {
        (Kind::Tenant, ..) => Ok(MemoryScope::Tenant),
        (Kind::Persona, Some(name), _) => Ok(MemoryScope::Persona(persona_name(&name)?)),
        (Kind::Session, _, Some(raw)) => Ok(MemoryScope::Session(session_id(&raw)?)),
        (Kind::Persona, None, _) => Err(HostResult::invalid("a persona scope needs `persona` (plugin.persona)")),
        (Kind::Session, _, None) => Err(HostResult::invalid("a session scope needs `session` (ses_…)")),
    }
}

fn refuse_names_in_run(persona: Option<&String>, session: Option<&String>) -> Result<(), HostResult> {
    if persona.is_some() || session.is_some() {
        return Err(HostResult::invalid(
            "in a run, the persona and session scopes are this run's own: leave out `persona` and `session`",
        ));
    }
    Ok(())
}

/// The scope kind named, or implied by `persona` or `session`; refuses a mismatch.
fn implied_kind(
    kind: Option<Kind>,
    persona: Option<&String>,
    session: Option<&String>,
) -> Result<Option<Kind>, HostResult> {
    match (kind, persona.is_some(), session.is_some()) {
        (_, true, true) => Err(HostResult::invalid("give `persona` or `session`, not both")),
        (None | Some(Kind::Persona), true, false) => Ok(Some(Kind::Persona)),
        (None | Some(Kind::Session), false, true) => Ok(Some(Kind::Session)),
        (kind, false, false) => Ok(kind),
        (Some(_), ..) => {
            Err(HostResult::invalid("`persona` goes with the persona scope, `session` with the session scope"))
        }
    }
}

fn persona_name(name: &str) -> Result<String, HostResult> {
    match MemoryScope::parse("persona", Some(name)) {
        Ok(MemoryScope::Persona(name)) => Ok(name),
        Ok(_) => Err(HostResult::invalid("not a persona")),
        Err(err) => Err(HostResult::invalid(err.to_string())),
    }
}

fn session_id(raw: &str) -> Result<SessionId, HostResult> {
    SessionId::parse(raw).map_err(|_| HostResult::invalid(format!("`{}` is not a session id", clip(raw))))
}

/// `mem_… (tenant, tags: a, b)`, how the text results name a memory.
fn label(m: &Memory) -> String {
    let scope = match &m.scope {
        MemoryScope::Tenant => "tenant".to_owned(),
        MemoryScope::Persona(name) => format!("persona {name}"),
        MemoryScope::Session(id) => format!("session {id}"),
    };
    if m.tags.is_empty() {
        format!("{} ({scope})", m.id)
    } else {
        format!("{} ({scope}, tags: {})", m.id, m.tags.join(", "))
    }
}

/// The tool's spec.
fn spec(op: Op) -> ToolSpec {
    let scope_property =
        |what: &str| json!({"type": "string", "enum": ["tenant", "persona", "session"], "description": what});
    let tags = json!({"type": "array", "maxItems": maestro_core::memory::MAX_TAGS, "items": {
        "type": "string", "minLength": 1, "maxLength": maestro_core::memory::MAX_TAG_BYTES
    }});
    let persona =
        json!({"type": "string", "description": "outside a run: the persona (plugin.persona) of a persona scope"});
    let session = json!({"type": "string", "description": "outside a run: the session (ses_…) of a session scope"});
    let (name, title, description, schema, read_only, destructive) = match op {
        Op::Search => (
            "search",
            "Search memories",
            "Finds what was remembered, nearest in meaning to `query`, best first, with its id, text, tags, scope and score (cosine similarity). In a run it covers the tenant's memories, this persona's and this session's; `scope` narrows to one of them, `tags` to memories carrying any of them.",
            json!({"type": "object", "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": maestro_core::memory::MAX_TEXT_BYTES},
                "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K, "description": "how many memories at most"},
                "scope": scope_property("only memories of this scope"),
                "persona": persona,
                "session": session,
                "tags": tags,
            }, "required": ["query"], "additionalProperties": false}),
            true,
            false,
        ),
        Op::Store => (
            "store",
            "Remember something",
            "Remembers a durable fact, preference or decision for later runs and sessions: one short, self-contained statement. `scope` says who it is for: `tenant` (default: everyone of the organisation), `persona` (this persona only) or `session` (this session only). Restating something already remembered in the same scope updates it instead of adding a copy.",
            json!({"type": "object", "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": maestro_core::memory::MAX_TEXT_BYTES},
                "tags": tags,
                "scope": scope_property("who it is for (default tenant)"),
                "persona": persona,
                "session": session,
                "pinned": {"type": "boolean", "default": false, "description": "exempt from recency decay"},
            }, "required": ["text"], "additionalProperties": false}),
            false,
            false,
        ),
        Op::Forget => (
            "forget",
            "Forget a memory",
            "Deletes a memory by its id (mem_…), as memory.search returned it.",
            json!({"type": "object", "properties": {
                "id": {"type": "string", "description": "the memory's id (mem_…)"}
            }, "required": ["id"], "additionalProperties": false}),
            false,
            true,
        ),
    };
    ToolSpec {
        name: name.to_owned(),
        title: Some(title.to_owned()),
        description: description.to_owned(),
        input_schema: schema,
        output_schema: None,
        annotations: Annotations { read_only, destructive, idempotent: read_only || destructive, open_world: false },
    }
}

fn not_found() -> HostResult {
    HostResult::error("memory not found")
}

fn output(text: String, structured: Value) -> HostResult {
    super::documents::output(text, structured, Vec::new())
}

/// A use-case error as the tool's result.
fn failure(err: MemoriesError) -> HostResult {
    match err {
        MemoriesError::Invalid(reason) => HostResult::invalid(reason.to_string()),
        MemoriesError::NotFound | MemoriesError::SessionNotFound => HostResult::error(err.to_string()),
        MemoriesError::Embedding(cause) => HostResult::unavailable(format!("embedder: {cause}")),
        MemoriesError::Store(store) => HostResult::unavailable(format!("memory store: {store}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maestro_core::run::RunId;

    fn origin() -> Origin {
        Origin {
            run: RunId::from_random([1; 16]),
            session: SessionId::from_random([2; 16]),
            step: 3,
            persona: "team.writer".into(),
        }
    }

    fn refused(result: Result<impl std::fmt::Debug, HostResult>) -> String {
        match result {
            Err(HostResult { outcome: Err(failure), .. }) => failure.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_run_searches_the_tenant_its_persona_and_its_session_and_names_no_other() {
        let o = origin();
        let all = search_scopes(Some(&o), None, None, None).expect("scopes");
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].scope_kind, Some("tenant"));
        assert_eq!(all[1].persona.as_deref(), Some("team.writer"));
        assert_eq!(all[2].session.as_ref(), Some(&o.session));
        let session = search_scopes(Some(&o), Some(Kind::Session), None, None).expect("scopes");
        assert_eq!(session.len(), 1);
        assert!(refused(search_scopes(Some(&o), None, Some("team.critic".into()), None)).contains("this run's own"));
        assert_eq!(
            store_scope(Some(&o), Some(Kind::Persona), None, None).ok(),
            Some(MemoryScope::Persona("team.writer".into()))
        );
        assert!(visible_in_run(&o, &MemoryScope::Tenant));
        assert!(!visible_in_run(&o, &MemoryScope::Persona("team.critic".into())));
        assert!(!visible_in_run(&o, &MemoryScope::Session(SessionId::from_random([9; 16]))));
    }

    #[test]
    fn outside_a_run_a_persona_or_session_implies_its_scope_and_a_mismatch_is_refused() {
        assert_eq!(search_scopes(None, None, None, None).expect("all"), vec![MemoryFilter::default()]);
        let persona = search_scopes(None, None, Some("team.writer".into()), None).expect("persona");
        assert_eq!(persona[0].persona.as_deref(), Some("team.writer"));
        let kind_only = search_scopes(None, Some(Kind::Session), None, None).expect("sessions");
        assert_eq!(kind_only[0].scope_kind, Some("session"));
        assert!(
            refused(search_scopes(None, Some(Kind::Tenant), Some("team.writer".into()), None)).contains("goes with")
        );
        assert!(refused(search_scopes(None, None, Some("writer".into()), None)).contains("plugin.persona"));
        assert!(refused(store_scope(None, Some(Kind::Session), None, None)).contains("needs `session`"));
        assert!(refused(store_scope(None, Some(Kind::Tenant), None, Some("nope".into()))).contains("goes with"));
        assert!(refused(store_scope(None, None, Some("a.b".into()), Some("c".into()))).contains("not both"));
        assert_eq!(store_scope(None, None, None, None).ok(), Some(MemoryScope::Tenant));
        let implied = store_scope(None, None, Some("team.writer".into()), None).ok();
        assert_eq!(implied, Some(MemoryScope::Persona("team.writer".into())));
    }

    #[test]
    fn schemas_are_strict_objects() {
        for op in [Op::Search, Op::Store, Op::Forget] {
            let spec = spec(op);
            assert_eq!(spec.input_schema["additionalProperties"], false, "{}", spec.name);
            assert_eq!(spec.input_schema["type"], "object");
        }
    }
}
