//! What a persona recalls before it answers: the memories meant for it and snippets of
//! the tenant's earlier sessions relevant to the message it answers, given to its model
//! as one delimited block of the system prompt within a budget (`[memory]`).
//!
//! [`Recall::recall`] queries with the triggering message:
//! - memories by meaning: the query embedded once, then the nearest memories of the
//!   three scopes a persona sees (the tenant's, this persona's, this session's), each
//!   kept when its cosine similarity reaches `recall_min_score`;
//! - snippets of other sessions: full-text ([`FullText::full_text`], messages and
//!   documents, this session excluded; BM25 score at least `recall_min_text_score`) and
//!   vectors ([`PassageStore::search_passages`], the same filter, the best passage of
//!   each object, similarity at least `recall_min_score`), fused by reciprocal rank
//!   ([`maestro_core::retrieval::fuse`]).
//!
//! Memories first, then snippets, best first, are added while the block's size by the
//! prompt token bound the context fitting uses (a token per byte) stays within
//! `recall_tokens`; what does not fit is left out. The block sits in the system prompt,
//! which `fit` never trims. Nothing relevant: no block, and the runner records nothing.
//!
//! Recall reads what the run's caller could read through [`RECALL_TOOL`]: the runner
//! asks the policy for that tool and that caller before each persona step, and a denial
//! skips recall for the step (logged at info with the policy's reason; no block, no
//! `memory.recalled` event).
//!
//! Recall never fails a run: an embedder that is loading or unavailable, a store or
//! index that fails, or no index at all only leave that side out, with a warning.

use std::collections::HashMap;
use std::sync::Arc;

use maestro_core::embed::{Embedder, EmbedderStatus};
use maestro_core::memory::{MemoryFilter, MemoryHit, MemoryId};
use maestro_core::passage::PassageFilter;
use maestro_core::ports::{MemoryStore, PassageStore};
use maestro_core::retrieval::{RRF_K, fuse};
use maestro_core::run::{RecalledMemory, RecalledSnippet, SessionId};
use maestro_core::search::SearchKind;
use maestro_core::{Clock, TenantId};

use crate::search::{FullText, SearchError, TextFilters};

/// `[memory]`: recall into context and distillation after runs.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySettings {
    /// Whether personas recall memories and earlier sessions before answering.
    pub recall: bool,
    /// The most the recalled block may add to a prompt, by the prompt token bound.
    pub recall_tokens: u32,
    /// The least cosine similarity a memory or passage needs to be recalled.
    pub recall_min_score: f32,
    /// The least BM25 score a full-text hit of an earlier session needs.
    pub recall_min_text_score: f32,
    /// Personas (`plugin.persona`) that never recall.
    pub recall_skip: Vec<String>,
    /// Whether a completed run's durable facts are distilled into memories.
    pub distil: bool,
    /// The most facts one run's distillation stores.
    pub distil_max_facts: u32,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            recall: true,
            recall_tokens: 800,
            recall_min_score: 0.3,
            recall_min_text_score: 1.0,
            recall_skip: Vec::new(),
            distil: true,
            distil_max_facts: 8,
        }
    }
}

/// The tool whose policy decision for the run's caller gates recall.
pub const RECALL_TOOL: &str = "memory.search";

/// Candidates asked of each side (per memory scope; per snippet side).
const CANDIDATES: u32 = 10;
/// Longest snippet of an earlier session, in characters.
const SNIPPET_CHARS: usize = 300;
/// Longest query, in characters (the rest of a long message is not searched).
const QUERY_CHARS: usize = 1000;

const OPEN: &str = "--- recalled memory (from earlier work, not part of this conversation; it may be outdated) ---";
const MEMORIES: &str = "What you remember:";
const SNIPPETS: &str = "From earlier sessions:";
const CLOSE: &str = "--- end of recalled memory ---";

/// What a step recalled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recalled {
    /// The block for the system prompt (`None`: nothing relevant, or recall is off).
    pub block: Option<String>,
    /// The memories in it, best first.
    pub memories: Vec<RecalledMemory>,
    /// The snippets in it, best first.
    pub snippets: Vec<RecalledSnippet>,
    /// Its size by the prompt token bound.
    pub tokens: u64,
}

/// The ports recall reads.
#[derive(Debug, Clone)]
pub struct RecallPorts {
    /// Memories (searched by meaning; `last_used_at` noted for those recalled).
    pub memories: Arc<dyn MemoryStore>,
    /// Vectors of messages and documents.
    pub passages: Arc<dyn PassageStore>,
    /// The embedder of queries (the one memories and passages are embedded with).
    pub embedder: Arc<dyn Embedder>,
    /// The full-text index (`None`: snippets come from vectors only).
    pub search: Option<FullText>,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// The recall use-case.
#[derive(Debug, Clone)]
pub struct Recall {
    ports: RecallPorts,
    settings: MemorySettings,
}

/// One snippet candidate.
#[derive(Debug, Clone)]
struct Snippet {
    text: String,
    label: String,
}

impl Recall {
    /// Recall over `ports` as `settings` say.
    pub fn new(ports: RecallPorts, settings: MemorySettings) -> Self {
        Self { ports, settings }
    }

    /// The settings.
    pub fn settings(&self) -> &MemorySettings {
        &self.settings
    }

    /// What `persona` working in `session` of `tenant` recalls for `query` (the message
    /// it answers). Never fails: a side that cannot answer is left out (logged).
    pub async fn recall(&self, tenant: &TenantId, persona: &str, session: &SessionId, query: &str) -> Recalled {
        if !self.settings.recall || self.settings.recall_skip.iter().any(|p| p == persona) {
            return Recalled::default();
        }
        let query: String =
            query.chars().map(|c| if c.is_control() { ' ' } else { c }).take(QUERY_CHARS).collect::<String>();
        let query = query.trim();
        if query.is_empty() {
            return Recalled::default();
        }
        let vector = self.embed(query).await;
        let memories = match &vector {
            Some(vector) => self.memories(tenant, persona, session, vector).await,
            None => Vec::new(),
        };
        let snippets = self.snippets(tenant, session, query, vector.as_deref()).await;
        let recalled = self.assemble(&memories, &snippets);
        if !recalled.memories.is_empty() {
            let ids: Vec<MemoryId> = recalled.memories.iter().map(|m| m.id.clone()).collect();
            if let Err(err) = self.ports.memories.touch_memories(tenant, &ids, self.ports.clock.now()).await {
                tracing::warn!(error = %err, "cannot note when recalled memories were used");
            }
        }
        recalled
    }

    /// The query's vector, or `None` (logged) when the embedder cannot answer now.
    async fn embed(&self, query: &str) -> Option<Vec<f32>> {
        let embedder = &self.ports.embedder;
        match embedder.status() {
            EmbedderStatus::Ready => {}
            EmbedderStatus::Loading => {
                tracing::warn!(embedder = %embedder.info(), "the embedder is still loading: recalling by words only");
                return None;
            }
            EmbedderStatus::Unavailable(why) => {
                tracing::warn!(embedder = %embedder.info(), reason = %why, "the embedder is unavailable: recalling by words only");
                return None;
            }
        }
        match embedder.embed(&[query.to_owned()]).await {
            Ok(mut vectors) => {
                let vector = vectors.pop().filter(|v| v.len() == embedder.info().dimensions as usize);
                if vector.is_none() {
                    tracing::warn!(embedder = %embedder.info(), "the embedder answered no vector of its dimension: recalling by words only");
                }
                vector
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot embed the recall query: recalling by words only");
                None
            }
        }
    }

    /// The relevant memories of the three scopes, best first, each once.
    async fn memories(&self, tenant: &TenantId, persona: &str, session: &SessionId, vector: &[f32]) -> Vec<MemoryHit> {
        let scopes = [
            MemoryFilter { scope_kind: Some("tenant"), ..MemoryFilter::default() },
            MemoryFilter { persona: Some(persona.to_owned()), ..MemoryFilter::default() },
            MemoryFilter { session: Some(session.clone()), ..MemoryFilter::default() },
        ];
        let info = self.ports.embedder.info();
        let mut hits: Vec<MemoryHit> = Vec::new();
        for filter in &scopes {
            match self.ports.memories.search_memories(tenant, info, vector, filter, CANDIDATES).await {
                Ok(found) => hits.extend(found.into_iter().filter(|h| h.score >= self.settings.recall_min_score)),
                Err(err) => tracing::warn!(error = %err, "cannot search memories to recall"),
            }
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.memory.id.as_str().cmp(b.memory.id.as_str())));
        hits.dedup_by(|a, b| a.memory.id == b.memory.id);
        hits
    }

    /// Relevant snippets of the tenant's other sessions, fused, best first.
    async fn snippets(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        query: &str,
        vector: Option<&[f32]>,
    ) -> Vec<(RecalledSnippet, Snippet)> {
        let kinds = vec![SearchKind::Message, SearchKind::Document];
        let mut found: HashMap<(SearchKind, String), Snippet> = HashMap::new();
        let mut lexical = Vec::new();
        if let Some(search) = &self.ports.search {
            let filters =
                TextFilters { kinds: kinds.clone(), exclude_session: Some(session.clone()), ..TextFilters::default() };
            let max = search.settings().max_query_chars;
            let text: String = query.chars().take(max).collect();
            match search.full_text(tenant, &text, &filters, CANDIDATES as usize).await {
                Ok(hits) => {
                    for hit in hits.into_iter().filter(|h| h.score >= self.settings.recall_min_text_score) {
                        let key = (hit.kind, hit.id.clone());
                        let label = label(hit.kind, hit.author.as_deref(), hit.title.as_deref(), hit.at);
                        found.entry(key.clone()).or_insert(Snippet { text: hit.snippet, label });
                        lexical.push(key);
                    }
                }
                Err(SearchError::EmptyQuery) => {}
                Err(err) => tracing::warn!(error = %err, "cannot search earlier sessions by words to recall"),
            }
        }
        let mut by_meaning = Vec::new();
        if let Some(vector) = vector {
            let filter = PassageFilter { kinds, exclude_session: Some(session.clone()), ..PassageFilter::default() };
            let info = self.ports.embedder.info();
            match self.ports.passages.search_passages(tenant, info, vector, &filter, CANDIDATES * 2).await {
                Ok(hits) => {
                    // Nearest first: the first passage of an object is its best.
                    for hit in hits.into_iter().filter(|h| h.score >= self.settings.recall_min_score) {
                        let passage = hit.passage;
                        let key = (passage.kind, passage.object.clone());
                        if by_meaning.contains(&key) {
                            continue;
                        }
                        let label = label(passage.kind, passage.author.as_deref(), None, passage.at);
                        // The full-text snippet (around the matched words) wins when both found it.
                        found.entry(key.clone()).or_insert(Snippet { text: passage.text, label });
                        by_meaning.push(key);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot search earlier sessions by meaning to recall"),
            }
        }
        fuse(&lexical, &by_meaning, RRF_K)
            .into_iter()
            .filter_map(|fused| {
                let snippet = found.remove(&fused.key)?;
                let (kind, id) = fused.key;
                Some((RecalledSnippet { kind, id, score: fused.score }, snippet))
            })
            .collect()
    }

    /// The block: memories, then snippets, best first, while it fits the budget.
    fn assemble(&self, memories: &[MemoryHit], snippets: &[(RecalledSnippet, Snippet)]) -> Recalled {
        let budget = u64::from(self.settings.recall_tokens);
        // The frame and the two headings are counted as soon as a line needs them.
        let frame = (OPEN.len() + CLOSE.len() + 2) as u64;
        let mut used = frame;
        let mut recalled = Recalled::default();
        let mut memory_lines = Vec::new();
        for hit in memories {
            let line = format!("- {}", one_line(&hit.memory.text, usize::MAX));
            let cost = (line.len() + 1) as u64 + if memory_lines.is_empty() { (MEMORIES.len() + 1) as u64 } else { 0 };
            if used + cost > budget {
                continue;
            }
            used += cost;
            memory_lines.push(line);
            recalled.memories.push(RecalledMemory { id: hit.memory.id.clone(), score: hit.score });
        }
        let mut snippet_lines = Vec::new();
        for (recalled_snippet, snippet) in snippets {
            let line = format!("- ({}) {}", snippet.label, one_line(&snippet.text, SNIPPET_CHARS));
            let cost = (line.len() + 1) as u64 + if snippet_lines.is_empty() { (SNIPPETS.len() + 1) as u64 } else { 0 };
            if used + cost > budget {
                continue;
            }
            used += cost;
            snippet_lines.push(line);
            recalled.snippets.push(recalled_snippet.clone());
        }
        if memory_lines.is_empty() && snippet_lines.is_empty() {
            return Recalled::default();
        }
        let mut block = vec![OPEN.to_owned()];
        if !memory_lines.is_empty() {
            block.push(MEMORIES.to_owned());
            block.extend(memory_lines);
        }
        if !snippet_lines.is_empty() {
            block.push(SNIPPETS.to_owned());
            block.extend(snippet_lines);
        }
        block.push(CLOSE.to_owned());
        let block = block.join("\n");
        recalled.tokens = block.len() as u64;
        recalled.block = Some(block);
        recalled
    }
}

/// Who wrote a snippet's object and when, as a persona reads it (a user's key id is
/// shown as `user`).
fn label(kind: SearchKind, author: Option<&str>, title: Option<&str>, at: chrono::DateTime<chrono::Utc>) -> String {
    let date = at.format("%Y-%m-%d");
    match kind {
        SearchKind::Document => match title.filter(|t| !t.is_empty()) {
            Some(title) => format!("document \"{}\", {date}", one_line(title, 80)),
            None => format!("document, {date}"),
        },
        _ => {
            let who = match author {
                Some(name) if !name.starts_with("key_") => name,
                _ => "user",
            };
            format!("{who}, {date}")
        }
    }
}

/// `text` on one line (whitespace runs as one space), at most `chars` characters (`…`
/// marking a cut).
fn one_line(text: &str, chars: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= chars {
        return joined;
    }
    let mut cut: String = joined.chars().take(chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_whitespace_and_cuts_with_a_mark() {
        assert_eq!(one_line(" a\n b\t\tc ", 10), "a b c");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("abc", 3), "abc");
    }

    #[test]
    fn a_user_is_shown_as_user_and_a_document_by_its_title() {
        let at = chrono::DateTime::from_timestamp(86_400, 0).expect("time");
        assert_eq!(label(SearchKind::Message, Some("key_abc"), None, at), "user, 1970-01-02");
        assert_eq!(label(SearchKind::Message, Some("personas.critic"), None, at), "personas.critic, 1970-01-02");
        assert_eq!(label(SearchKind::Document, None, Some("Plan"), at), "document \"Plan\", 1970-01-02");
    }
}
