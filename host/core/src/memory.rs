//! Memories: short texts a tenant's people and agents want recalled later, each with the
//! embedding of its text, searched by meaning.
//!
//! A [`Memory`] belongs to a tenant and is scoped to the whole tenant, to one persona
//! (its qualified `plugin.persona` name) or to one session ([`MemoryScope`]). It keeps
//! its text (capped at [`MAX_TEXT_BYTES`]), tags (at most [`MAX_TAGS`] of at most
//! [`MAX_TAG_BYTES`] each), whether it is pinned (exempt from recency decay), where it
//! came from when an agent made it (run and step), when it was created, updated and
//! last recalled, and which embedder produced its vector ([`EmbedderInfo`]): vectors of
//! another embedder are never compared, they are re-embedded.
//!
//! The pure rules live here: validation ([`validate_text`], [`normalise_tags`]), the
//! filters a listing or search takes ([`MemoryFilter`]), and the f32 little-endian byte
//! form vectors are stored in on SQLite ([`vector_to_bytes`], [`vector_from_bytes`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::embed::EmbedderInfo;
use crate::id::{Id, IdKind, TenantId};
use crate::run::{RunId, SessionId};

/// Marker for memory identifiers (`mem_…`).
#[derive(Debug)]
pub enum MemoryIdKind {}
impl IdKind for MemoryIdKind {
    const PREFIX: &'static str = "mem";
}

/// A memory's identifier.
pub type MemoryId = Id<MemoryIdKind>;

/// Longest text, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most tags on one memory (and in one filter).
pub const MAX_TAGS: usize = 16;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;
/// Longest persona name in a scope, in bytes.
pub const MAX_PERSONA_BYTES: usize = 128;
/// Most hits one search returns.
pub const MAX_TOP_K: u32 = 100;

/// Who a memory is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum MemoryScope {
    /// The whole tenant.
    Tenant,
    /// One persona, by its qualified name (`plugin.persona`).
    Persona(String),
    /// One session.
    Session(SessionId),
}

impl MemoryScope {
    /// The scope's kind as stored: `tenant`, `persona` or `session`.
    pub fn kind(&self) -> &'static str {
        match self {
            MemoryScope::Tenant => "tenant",
            MemoryScope::Persona(_) => "persona",
            MemoryScope::Session(_) => "session",
        }
    }

    /// The persona's name or the session's id (`None` for the tenant scope).
    pub fn target(&self) -> Option<&str> {
        match self {
            MemoryScope::Tenant => None,
            MemoryScope::Persona(name) => Some(name),
            MemoryScope::Session(id) => Some(id.as_str()),
        }
    }

    /// Builds a scope from its kind and target, checking both.
    pub fn parse(kind: &str, target: Option<&str>) -> Result<Self, MemoryError> {
        match (kind, target) {
            ("tenant", None) => Ok(MemoryScope::Tenant),
            ("tenant", Some(_)) => Err(MemoryError::Scope("the tenant scope names nothing".into())),
            ("persona", Some(name)) => {
                let valid = !name.is_empty()
                    && name.len() <= MAX_PERSONA_BYTES
                    && crate::plugin::split_qualified(name).is_some();
                if !valid {
                    return Err(MemoryError::Scope(format!(
                        "`{}` is not a qualified persona name (plugin.persona)",
                        truncate(name, 64)
                    )));
                }
                Ok(MemoryScope::Persona(name.to_owned()))
            }
            ("session", Some(id)) => SessionId::parse(id)
                .map(MemoryScope::Session)
                .map_err(|_| MemoryError::Scope(format!("`{}` is not a session id", truncate(id, 64)))),
            ("persona" | "session", None) => Err(MemoryError::Scope(format!("a {kind} scope needs its name"))),
            (other, _) => {
                Err(MemoryError::Scope(format!("unknown scope `{}` (tenant, persona or session)", truncate(other, 32))))
            }
        }
    }
}

/// Where an agent's memory came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySource {
    /// The run.
    pub run: RunId,
    /// The step of the run.
    pub step: u32,
}

/// One memory, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    /// Its id.
    pub id: MemoryId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Who it is for.
    pub scope: MemoryScope,
    /// What is remembered.
    pub text: String,
    /// Its tags (sorted, unique).
    pub tags: Vec<String>,
    /// Exempt from recency decay.
    pub pinned: bool,
    /// The run and step that made it, when an agent did.
    pub source: Option<MemorySource>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its text, tags or pin last changed.
    pub updated_at: DateTime<Utc>,
    /// When a search last returned it.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Which embedder made its vector.
    pub embedder: EmbedderInfo,
}

/// A memory with its vector, to insert or re-embed.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryVector {
    /// The memory.
    pub id: MemoryId,
    /// Its text (what the vector embeds).
    pub text: String,
    /// The vector: unit length, [`EmbedderInfo::dimensions`] numbers.
    pub vector: Vec<f32>,
    /// Which embedder made it.
    pub embedder: EmbedderInfo,
}

/// A change to a memory: fields left `None` stay. A new text comes with its new vector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryPatch {
    /// The new text and its vector (and the embedder that made it).
    pub text: Option<(String, Vec<f32>, EmbedderInfo)>,
    /// The new tags (normalised).
    pub tags: Option<Vec<String>>,
    /// Pinned or not.
    pub pinned: Option<bool>,
}

/// How tags filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagMatch {
    /// A memory carrying any of the tags.
    #[default]
    Any,
    /// A memory carrying all of the tags.
    All,
}

/// Which of a tenant's memories a listing or search considers. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryFilter {
    /// Only this scope kind (`tenant`, `persona`, `session`) when given.
    pub scope_kind: Option<&'static str>,
    /// Only memories of this persona.
    pub persona: Option<String>,
    /// Only memories of this session.
    pub session: Option<SessionId>,
    /// Tags to match (normalised); empty: no tag filter.
    pub tags: Vec<String>,
    /// Any or all of [`MemoryFilter::tags`].
    pub tag_match: TagMatch,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
}

impl MemoryFilter {
    /// Whether `memory` passes this filter (the stores' SQL says the same; this is the
    /// reference their tests compare with).
    pub fn matches(&self, memory: &Memory) -> bool {
        if self.scope_kind.is_some_and(|kind| kind != memory.scope.kind()) {
            return false;
        }
        if let Some(persona) = &self.persona
            && memory.scope != MemoryScope::Persona(persona.clone())
        {
            return false;
        }
        if let Some(session) = &self.session
            && memory.scope != MemoryScope::Session(session.clone())
        {
            return false;
        }
        if !self.tags.is_empty() {
            let has = |tag: &String| memory.tags.contains(tag);
            let ok = match self.tag_match {
                TagMatch::Any => self.tags.iter().any(has),
                TagMatch::All => self.tags.iter().all(has),
            };
            if !ok {
                return false;
            }
        }
        if self.created_from.is_some_and(|from| memory.created_at < from) {
            return false;
        }
        if self.created_to.is_some_and(|to| memory.created_at >= to) {
            return false;
        }
        true
    }
}

/// A search hit: the memory and its cosine similarity to the query (inner product of
/// unit vectors, higher is closer).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryHit {
    /// The memory.
    pub memory: Memory,
    /// Its similarity, in `[-1, 1]`.
    pub score: f32,
}

/// Why a memory was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// Empty or blank text.
    #[error("the text is empty")]
    EmptyText,
    /// Text over [`MAX_TEXT_BYTES`].
    #[error("the text is {0} bytes, more than the {MAX_TEXT_BYTES} allowed")]
    TextTooLong(usize),
    /// Text holding control characters other than newlines and tabs.
    #[error("the text holds control characters")]
    ControlCharacters,
    /// A bad tag or too many.
    #[error("{0}")]
    Tags(String),
    /// An unknown scope or a bad target.
    #[error("{0}")]
    Scope(String),
    /// A bad filter value.
    #[error("{0}")]
    Filter(String),
}

/// Checks a memory's text: not blank, at most [`MAX_TEXT_BYTES`], no control characters
/// other than newlines and tabs. Returns it trimmed.
pub fn validate_text(text: &str) -> Result<String, MemoryError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(MemoryError::EmptyText);
    }
    if trimmed.len() > MAX_TEXT_BYTES {
        return Err(MemoryError::TextTooLong(trimmed.len()));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(MemoryError::ControlCharacters);
    }
    Ok(trimmed.to_owned())
}

/// Checks and normalises tags: each trimmed, lowercased, 1 to [`MAX_TAG_BYTES`] bytes of
/// letters, digits, `-`, `_`, `.`, `:` or `/`; at most [`MAX_TAGS`]; sorted and unique.
pub fn normalise_tags(tags: &[String]) -> Result<Vec<String>, MemoryError> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim().to_lowercase();
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
            return Err(MemoryError::Tags(format!("a tag must be 1 to {MAX_TAG_BYTES} bytes")));
        }
        if !tag.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')) {
            return Err(MemoryError::Tags(format!(
                "tag `{}` may hold only letters, digits and - _ . : /",
                truncate(&tag, 64)
            )));
        }
        out.push(tag);
    }
    out.sort();
    out.dedup();
    if out.len() > MAX_TAGS {
        return Err(MemoryError::Tags(format!("at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

/// A vector as stored on SQLite: its numbers as f32 little-endian bytes.
pub fn vector_to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A vector from its stored bytes; `None` when their length is not a multiple of 4.
pub fn vector_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// The inner product of `query` with a vector stored as f32 LE bytes, without
/// allocating (the SQLite scan's inner loop); `None` when the lengths differ.
pub fn dot_bytes(query: &[f32], bytes: &[u8]) -> Option<f32> {
    if bytes.len() != query.len() * 4 {
        return None;
    }
    let mut lanes = [0.0f32; 8];
    let chunks_q = query.chunks_exact(8);
    let chunks_b = bytes.chunks_exact(32);
    let tail: f32 = chunks_q
        .remainder()
        .iter()
        .zip(chunks_b.remainder().chunks_exact(4))
        .map(|(q, b)| q * f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .sum();
    for (cq, cb) in chunks_q.zip(chunks_b) {
        for i in 0..8 {
            let b = &cb[i * 4..i * 4 + 4];
            lanes[i] += cq[i] * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Some(lanes.iter().sum::<f32>() + tail)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(scope: MemoryScope, tags: &[&str], created_ms: i64) -> Memory {
        let at = DateTime::from_timestamp_millis(created_ms).expect("time");
        Memory {
            id: MemoryId::from_random([1; 16]),
            tenant: TenantId::from_random([2; 16]),
            scope,
            text: "x".into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            pinned: false,
            source: None,
            created_at: at,
            updated_at: at,
            last_used_at: None,
            embedder: EmbedderInfo { provider: "fake".into(), model: "m".into(), dimensions: 4 },
        }
    }

    #[test]
    fn text_is_trimmed_and_refused_when_blank_too_long_or_with_control_characters() {
        assert_eq!(validate_text("  hello\n").as_deref(), Ok("hello"));
        assert_eq!(validate_text(" \n\t "), Err(MemoryError::EmptyText));
        assert_eq!(validate_text(&"a".repeat(MAX_TEXT_BYTES + 1)), Err(MemoryError::TextTooLong(MAX_TEXT_BYTES + 1)));
        assert!(validate_text(&"a".repeat(MAX_TEXT_BYTES)).is_ok());
        assert!(validate_text("a\u{0}b").is_err());
        assert!(validate_text("line one\nline\ttwo").is_ok());
    }

    #[test]
    fn tags_are_lowercased_sorted_deduplicated_and_capped() {
        let tags = normalise_tags(&["B".into(), "a".into(), "b ".into()]).expect("valid");
        assert_eq!(tags, vec!["a", "b"]);
        assert!(normalise_tags(&["".into()]).is_err());
        assert!(normalise_tags(&["has space".into()]).is_err());
        assert!(normalise_tags(&["x".repeat(MAX_TAG_BYTES + 1)]).is_err());
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert!(normalise_tags(&many).is_err());
        assert!(normalise_tags(&many[..MAX_TAGS]).is_ok());
    }

    #[test]
    fn scopes_parse_from_kind_and_target_and_refuse_the_rest() {
        assert_eq!(MemoryScope::parse("tenant", None), Ok(MemoryScope::Tenant));
        assert_eq!(MemoryScope::parse("persona", Some("team.writer")), Ok(MemoryScope::Persona("team.writer".into())));
        assert!(MemoryScope::parse("persona", Some("writer")).is_err());
        assert!(MemoryScope::parse("persona", None).is_err());
        assert!(MemoryScope::parse("session", Some("nope")).is_err());
        assert!(MemoryScope::parse("galaxy", None).is_err());
        assert!(MemoryScope::parse("tenant", Some("x")).is_err());
        let session = SessionId::from_random([3; 16]);
        assert_eq!(MemoryScope::parse("session", Some(session.as_str())), Ok(MemoryScope::Session(session)));
    }

    #[test]
    fn filters_narrow_by_scope_tags_and_creation_time() {
        let m = memory(MemoryScope::Persona("p.a".into()), &["red", "round"], 1_000);
        assert!(MemoryFilter::default().matches(&m));
        assert!(MemoryFilter { scope_kind: Some("persona"), ..Default::default() }.matches(&m));
        assert!(!MemoryFilter { scope_kind: Some("tenant"), ..Default::default() }.matches(&m));
        assert!(MemoryFilter { persona: Some("p.a".into()), ..Default::default() }.matches(&m));
        assert!(!MemoryFilter { persona: Some("p.b".into()), ..Default::default() }.matches(&m));
        let any = MemoryFilter { tags: vec!["red".into(), "blue".into()], ..Default::default() };
        assert!(any.matches(&m));
        let all = MemoryFilter { tag_match: TagMatch::All, ..any };
        assert!(!all.matches(&m));
        let from = |ms| DateTime::from_timestamp_millis(ms);
        assert!(MemoryFilter { created_from: from(1_000), created_to: from(1_001), ..Default::default() }.matches(&m));
        assert!(!MemoryFilter { created_to: from(1_000), ..Default::default() }.matches(&m));
    }

    #[test]
    fn vectors_round_trip_through_bytes_and_dot_bytes_matches_dot() {
        let v: Vec<f32> = (0..19).map(|i| (i as f32 * 0.3).sin()).collect();
        let q: Vec<f32> = (0..19).map(|i| (i as f32 * 0.7).cos()).collect();
        let bytes = vector_to_bytes(&v);
        assert_eq!(vector_from_bytes(&bytes).as_deref(), Some(&v[..]));
        assert_eq!(vector_from_bytes(&bytes[..5]), None);
        let expected = crate::embed::dot(&q, &v);
        assert!((dot_bytes(&q, &bytes).expect("same length") - expected).abs() < 1e-5);
        assert_eq!(dot_bytes(&q[..3], &bytes), None);
    }
}
