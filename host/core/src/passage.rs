//! Passages: the pieces of messages and documents (their current version) that carry a
//! vector, so a search finds them by meaning as well as by words.
//!
//! A message is one passage (or a few, when long); a document's current version is cut
//! into passages of about [`PASSAGE_WORDS`] words overlapping by [`PASSAGE_OVERLAP`]
//! words ([`split`]). Each passage keeps its object's kind and id, its place in the
//! object (`chunk`, from 0), its session and author, its time and its text, and which
//! embedder made its vector (vectors of another embedder are never compared). A hit
//! names the object and the passage that matched; a caller wanting one hit per object
//! keeps the best passage of each.
//!
//! Vectors follow the same outbox the full-text index follows
//! ([`crate::search`]): the store keeps one follower position in the database, shared
//! by every replica.

use chrono::{DateTime, Utc};

use crate::embed::EmbedderInfo;
use crate::id::TenantId;
use crate::run::SessionId;
use crate::search::{OutboxPosition, SearchKind, Searchable};

/// About how many words one passage holds.
pub const PASSAGE_WORDS: usize = 180;
/// How many words consecutive passages share.
pub const PASSAGE_OVERLAP: usize = 30;
/// Most passages one object is cut into (the rest of a very long document is not
/// embedded; the full-text index still has all of it).
pub const MAX_PASSAGES: usize = 64;

/// One passage as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its object's kind ([`SearchKind::Message`] or [`SearchKind::Document`]).
    pub kind: SearchKind,
    /// Its object's id (`msg_…`, `doc_…`).
    pub object: String,
    /// Its place in the object, from 0.
    pub chunk: u32,
    /// Its object's session (a message's; a session document's).
    pub session: Option<SessionId>,
    /// Who wrote its object (a persona's name, a key id).
    pub author: Option<String>,
    /// When its object was written (a document: its current version).
    pub at: DateTime<Utc>,
    /// Its text.
    pub text: String,
}

/// Which passages a vector search considers. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassageFilter {
    /// Only these kinds (empty: messages and documents).
    pub kinds: Vec<SearchKind>,
    /// Only passages of this session.
    pub session: Option<SessionId>,
    /// Never passages of this session (e.g. the session a run is in, when recalling
    /// past sessions).
    pub exclude_session: Option<SessionId>,
    /// Only passages written by this persona or key.
    pub author: Option<String>,
    /// Written at or after.
    pub since: Option<DateTime<Utc>>,
    /// Written before.
    pub until: Option<DateTime<Utc>>,
}

impl PassageFilter {
    /// Whether `passage` passes this filter (the stores' SQL says the same; this is the
    /// reference their tests compare with).
    pub fn matches(&self, passage: &Passage) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&passage.kind))
            && self.session.as_ref().is_none_or(|s| passage.session.as_ref() == Some(s))
            && self.exclude_session.as_ref().is_none_or(|s| passage.session.as_ref() != Some(s))
            && self.author.as_ref().is_none_or(|a| passage.author.as_ref() == Some(a))
            && self.since.is_none_or(|t| passage.at >= t)
            && self.until.is_none_or(|t| passage.at < t)
    }
}

/// A vector search hit: the passage and its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct PassageHit {
    /// The passage.
    pub passage: Passage,
    /// Its similarity, in `[-1, 1]`.
    pub score: f32,
}

/// Where the passages stand against the search outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerState {
    /// The passages reflect every outbox row through here (one position for every
    /// replica, kept in the database).
    pub position: OutboxPosition,
    /// The outbox's pruning deleted every row through here: a position below it
    /// missed changes, and only a full reconcile catches up.
    pub pruned_through: OutboxPosition,
}

impl FollowerState {
    /// Whether the position fell behind the outbox's pruning.
    pub fn behind_pruning(&self) -> bool {
        self.position < self.pruned_through
    }
}

/// A passage as stored, with the embedder that made its vector and the vector (what
/// the follower compares new passages with: an unchanged text keeps its vector).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPassage {
    /// The passage.
    pub passage: Passage,
    /// Which embedder made its vector.
    pub embedder: EmbedderInfo,
    /// Its vector.
    pub vector: Vec<f32>,
}

/// One write of the passage follower, all or nothing: the position moves from
/// `expected` to `next`, and every object named in `objects` has exactly `passages`'
/// rows of it afterwards (none: its passages are deleted). Refused (nothing written)
/// when the stored position is not `expected`, and, when `follows_outbox`, when the
/// outbox was pruned past `expected` (the batch may have missed rows).
#[derive(Debug, Clone, PartialEq)]
pub struct PassageWrite {
    /// The position the writer read before reading the objects' content.
    pub expected: OutboxPosition,
    /// The position afterwards (`expected` again for a reconcile's page).
    pub next: OutboxPosition,
    /// Whether the write applies outbox rows after `expected` (refused once pruning
    /// passed `expected`), rather than a reconcile's page.
    pub follows_outbox: bool,
    /// The objects whose passages are replaced.
    pub objects: Vec<(SearchKind, String)>,
    /// The embedder that made `passages`' vectors.
    pub embedder: EmbedderInfo,
    /// The new passages (each of an object in `objects`) with their vectors.
    pub passages: Vec<(Passage, Vec<f32>)>,
}

/// The passages of an object's current content: a message's text, or a document's
/// title and text (the title in front of the first passage), cut by [`split`] with
/// [`PASSAGE_WORDS`], [`PASSAGE_OVERLAP`] and [`MAX_PASSAGES`]. Memories have their
/// own vectors: none.
pub fn passages_of(object: &Searchable) -> Vec<Passage> {
    if !matches!(object.kind, SearchKind::Message | SearchKind::Document) {
        return Vec::new();
    }
    let mut texts = split(&object.text, PASSAGE_WORDS, PASSAGE_OVERLAP, MAX_PASSAGES);
    let title = object.title.trim();
    if object.kind == SearchKind::Document && !title.is_empty() {
        match texts.first_mut() {
            Some(first) => *first = format!("{title}\n\n{first}"),
            None => texts.push(title.to_owned()),
        }
    }
    texts
        .into_iter()
        .enumerate()
        .map(|(chunk, text)| Passage {
            tenant: object.tenant.clone(),
            kind: object.kind,
            object: object.id.clone(),
            chunk: u32::try_from(chunk).unwrap_or(u32::MAX),
            session: object.session.clone(),
            author: object.author.clone(),
            at: object.at,
            text,
        })
        .collect()
}

/// Cuts `text` into passages of about `words` words, consecutive passages sharing
/// `overlap` words, at most `max` passages; whitespace between words is kept as
/// written inside a passage. An empty or blank text gives no passage.
pub fn split(text: &str, words: usize, overlap: usize, max: usize) -> Vec<String> {
    let words = words.max(1);
    let step = words.saturating_sub(overlap).max(1);
    // Byte spans of the words.
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    let mut passages = Vec::new();
    let mut first = 0;
    while first < spans.len() && passages.len() < max {
        let last = (first + words).min(spans.len()) - 1;
        passages.push(text[spans[first].0..spans[last].1].to_owned());
        if last + 1 == spans.len() {
            break;
        }
        first += step;
    }
    passages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_overlapping_passages_and_keeps_the_text_as_written() {
        let text = (0..10).map(|i| format!("w{i}")).collect::<Vec<_>>().join("  ");
        let parts = split(&text, 4, 1, 10);
        assert_eq!(parts, vec!["w0  w1  w2  w3", "w3  w4  w5  w6", "w6  w7  w8  w9"]);
        assert_eq!(split("  short text \n", 180, 30, 64), vec!["short text"]);
        assert!(split(" \n\t ", 180, 30, 64).is_empty());
        assert_eq!(split(&text, 4, 1, 2).len(), 2);
        // An overlap as large as the passage still moves forward.
        assert_eq!(split("a b c", 2, 5, 10), vec!["a b", "b c"]);
    }

    #[test]
    fn a_documents_title_leads_its_first_passage_and_memories_have_none() {
        let object = Searchable {
            tenant: TenantId::from_random([1; 16]),
            kind: SearchKind::Document,
            id: "doc_1".into(),
            session: None,
            author: Some("key_1".into()),
            title: " Plan ".into(),
            text: (0..200).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "),
            at: DateTime::from_timestamp(1_000, 0).expect("a valid time"),
            tags: Vec::new(),
            scope: None,
            pinned: false,
        };
        let passages = passages_of(&object);
        assert_eq!(passages.len(), 2);
        assert!(passages[0].text.starts_with("Plan\n\nw0 w1"));
        assert!(passages[1].text.starts_with("w150 "));
        assert_eq!((passages[1].chunk, passages[1].object.as_str()), (1, "doc_1"));
        let empty = Searchable { text: " ".into(), ..object.clone() };
        assert_eq!(passages_of(&empty).iter().map(|p| p.text.as_str()).collect::<Vec<_>>(), ["Plan"]);
        let message =
            Searchable { kind: SearchKind::Message, title: String::new(), text: "hi there".into(), ..object.clone() };
        assert_eq!(passages_of(&message)[0].text, "hi there");
        assert!(passages_of(&Searchable { kind: SearchKind::Memory, ..object }).is_empty());
    }

    #[test]
    fn the_filter_narrows_by_every_field() {
        let session = SessionId::from_random([3; 16]);
        let passage = Passage {
            tenant: TenantId::from_random([1; 16]),
            kind: SearchKind::Message,
            object: "msg_1".into(),
            chunk: 0,
            session: Some(session.clone()),
            author: Some("p.x".into()),
            at: DateTime::from_timestamp(1_000, 0).expect("a valid time"),
            text: "t".into(),
        };
        assert!(PassageFilter::default().matches(&passage));
        assert!(!PassageFilter { kinds: vec![SearchKind::Document], ..Default::default() }.matches(&passage));
        assert!(PassageFilter { session: Some(session.clone()), ..Default::default() }.matches(&passage));
        assert!(!PassageFilter { exclude_session: Some(session), ..Default::default() }.matches(&passage));
        assert!(!PassageFilter { author: Some("p.y".into()), ..Default::default() }.matches(&passage));
        assert!(!PassageFilter { since: DateTime::from_timestamp(1_001, 0), ..Default::default() }.matches(&passage));
        assert!(!PassageFilter { until: DateTime::from_timestamp(1_000, 0), ..Default::default() }.matches(&passage));
    }
}
