//! Living documents: titled Markdown or JSON texts of a tenant, attached to a session
//! or shared across the tenant, with an append-only history of versions.
//!
//! A [`Document`] names its current version; every [`DocumentVersion`] keeps the whole
//! content, the [`Edit`] that produced it and its [`DocAuthor`]. History is never
//! rewritten: a rollback is a new version holding an old one's content. Writers state
//! the version they edited (the *base*); the store moves the document from base to
//! base + 1 only if no one else did first (see `DocumentStore::append_version`).
//!
//! The pure rules live here: exact search-and-replace edits ([`apply_edits`]), content
//! checks ([`validate_content`], [`validate_title`]), the caps, and a unified diff
//! between two texts ([`unified_diff`], by the `similar` crate: Myers' algorithm with
//! the patience heuristic, well kept, no dependencies of its own).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{Id, IdKind, TenantId};
use crate::run::{RunId, SessionId};

/// Marker for document identifiers (`doc_…`).
#[derive(Debug)]
pub enum DocumentIdKind {}
impl IdKind for DocumentIdKind {
    const PREFIX: &'static str = "doc";
}

/// A document's identifier.
pub type DocumentId = Id<DocumentIdKind>;

/// Longest title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;
/// Largest content, in bytes.
pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;
/// Most search-and-replace edits in one call.
pub const MAX_EDITS: usize = 64;

/// What a document holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    /// Markdown text.
    Markdown,
    /// A JSON value (every version must parse).
    Json,
}

impl DocumentKind {
    /// The name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Markdown => "markdown",
            DocumentKind::Json => "json",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "markdown" => Some(DocumentKind::Markdown),
            "json" => Some(DocumentKind::Json),
            _ => None,
        }
    }
}

/// Who wrote a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DocAuthor {
    /// A persona, in a step of a run.
    Persona {
        /// `plugin.persona`.
        name: String,
        /// The run.
        run: RunId,
        /// The step.
        step: u32,
    },
    /// A person (or an assistant) through an API key.
    User {
        /// The key's id.
        key: String,
    },
}

impl DocAuthor {
    /// A short label: the persona's name or the key's id.
    pub fn label(&self) -> &str {
        match self {
            DocAuthor::Persona { name, .. } => name,
            DocAuthor::User { key } => key,
        }
    }
}

/// One exact search-and-replace: `old` must occur exactly once in the text as it is
/// when the edit applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEdit {
    /// The text to find (non-empty, exactly one occurrence).
    pub old: String,
    /// What replaces it.
    pub new: String,
}

/// The edit that produced a version. A replacement's text is the version's content,
/// so it is not kept twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Edit {
    /// The first version.
    Create,
    /// A full replacement of the content.
    Replace,
    /// Search-and-replace edits, applied in order.
    Patch {
        /// The edits.
        edits: Vec<TextEdit>,
    },
    /// The content of an earlier version, restored as a new one.
    Rollback {
        /// The version restored.
        to: i64,
    },
}

/// A document (its content lives in its versions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Document {
    /// Its id.
    pub id: DocumentId,
    /// Its tenant.
    pub tenant: TenantId,
    /// The session it is attached to; `None`: shared across the tenant.
    pub session: Option<SessionId>,
    /// Its title.
    pub title: String,
    /// What it holds.
    pub kind: DocumentKind,
    /// The current version, from 1.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last version was written.
    pub updated_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: DocAuthor,
}

/// A version: the whole content at that point, and how it came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentVersion {
    /// The document.
    pub document: DocumentId,
    /// The version, from 1.
    pub version: i64,
    /// The content.
    pub content: String,
    /// The edit that produced it.
    pub edit: Edit,
    /// Who wrote it.
    pub author: DocAuthor,
    /// When.
    pub at: DateTime<Utc>,
}

/// A version without its content, as history pages list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionSummary {
    /// The version.
    pub version: i64,
    /// The content's size in bytes.
    pub bytes: i64,
    /// The edit that produced it.
    pub edit: Edit,
    /// Who wrote it.
    pub author: DocAuthor,
    /// When.
    pub at: DateTime<Utc>,
}

/// Which of a tenant's documents a listing returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentScope {
    /// All of them.
    All,
    /// Those attached to this session.
    Session(SessionId),
    /// Those attached to this session, and the shared ones (what a run sees).
    SessionAndShared(SessionId),
}

/// What appending a version against a base did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The version was written; the document as it now stands.
    Written(Document),
    /// Someone wrote first: nothing was written; the document's current version.
    Stale {
        /// The current version.
        current: i64,
    },
}

/// Why a document, title, content or edit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The title is empty (or blank).
    #[error("the title must not be empty")]
    EmptyTitle,
    /// The title is too long.
    #[error("the title is longer than {MAX_TITLE_BYTES} bytes")]
    TitleTooLong,
    /// The title holds a control character.
    #[error("the title must not contain control characters")]
    TitleControl,
    /// The content is too large.
    #[error("the content is {bytes} bytes, more than the {MAX_CONTENT_BYTES} allowed")]
    ContentTooLarge {
        /// Its size.
        bytes: usize,
    },
    /// A JSON document's content does not parse.
    #[error("the content is not valid JSON: {0}")]
    InvalidJson(String),
    /// A patch has no edit.
    #[error("no edits given")]
    NoEdits,
    /// A patch has too many edits.
    #[error("{count} edits given, at most {MAX_EDITS} allowed in one call")]
    TooManyEdits {
        /// How many.
        count: usize,
    },
    /// An edit's `old` is empty.
    #[error("edit {index}: `old` must not be empty")]
    EmptyOld {
        /// The edit's index, from 0.
        index: usize,
    },
    /// An edit's `old` does not occur in the text.
    #[error("edit {index}: `old` not found")]
    OldNotFound {
        /// The edit's index, from 0.
        index: usize,
    },
    /// An edit's `old` occurs more than once.
    #[error("edit {index}: `old` found {count} times; include more surrounding text so it occurs once")]
    OldAmbiguous {
        /// The edit's index, from 0.
        index: usize,
        /// Occurrences (overlapping ones counted).
        count: usize,
    },
}

/// Checks a title: non-blank, at most [`MAX_TITLE_BYTES`], no control characters.
pub fn validate_title(title: &str) -> Result<(), DocumentError> {
    if title.trim().is_empty() {
        return Err(DocumentError::EmptyTitle);
    }
    if title.len() > MAX_TITLE_BYTES {
        return Err(DocumentError::TitleTooLong);
    }
    if title.chars().any(char::is_control) {
        return Err(DocumentError::TitleControl);
    }
    Ok(())
}

/// Checks a content for its kind: at most [`MAX_CONTENT_BYTES`], and a JSON document's
/// content must parse.
pub fn validate_content(kind: DocumentKind, content: &str) -> Result<(), DocumentError> {
    if content.len() > MAX_CONTENT_BYTES {
        return Err(DocumentError::ContentTooLarge { bytes: content.len() });
    }
    if kind == DocumentKind::Json
        && let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(content)
    {
        return Err(DocumentError::InvalidJson(err.to_string()));
    }
    Ok(())
}

/// Applies exact search-and-replace edits in order, each to the text the previous ones
/// left: every `old` must be non-empty and occur exactly once. The first edit that does
/// not apply names its index; nothing is applied then. The result is not checked
/// against the caps (see [`validate_content`]).
pub fn apply_edits(text: &str, edits: &[TextEdit]) -> Result<String, DocumentError> {
    if edits.is_empty() {
        return Err(DocumentError::NoEdits);
    }
    if edits.len() > MAX_EDITS {
        return Err(DocumentError::TooManyEdits { count: edits.len() });
    }
    let mut text = text.to_owned();
    for (index, edit) in edits.iter().enumerate() {
        if edit.old.is_empty() {
            return Err(DocumentError::EmptyOld { index });
        }
        let at = match occurrences(&text, &edit.old) {
            (0, _) => return Err(DocumentError::OldNotFound { index }),
            (1, Some(at)) => at,
            (count, _) => return Err(DocumentError::OldAmbiguous { index, count }),
        };
        text.replace_range(at..at + edit.old.len(), &edit.new);
    }
    Ok(text)
}

/// How often `needle` occurs in `text`, overlapping occurrences counted (`aa` occurs
/// twice in `aaa`: replacing "the one" would be a guess), and where the first starts.
fn occurrences(text: &str, needle: &str) -> (usize, Option<usize>) {
    let mut count = 0;
    let mut first = None;
    let mut from = 0;
    while let Some(found) = text[from..].find(needle) {
        let at = from + found;
        first.get_or_insert(at);
        count += 1;
        // Step one character past the start, so overlapping matches count too.
        let step = text[at..].chars().next().map_or(1, char::len_utf8);
        from = at + step;
        if from > text.len() {
            break;
        }
    }
    (count, first)
}

/// A unified diff from `old` to `new` (three lines of context), with `---`/`+++` headers
/// naming the two sides; empty when the texts are equal.
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new).unified_diff().context_radius(3).header(old_name, new_name).to_string()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn edit(old: &str, new: &str) -> TextEdit {
        TextEdit { old: old.into(), new: new.into() }
    }

    #[test]
    fn edits_apply_in_order_each_to_the_text_the_previous_left() {
        let out = apply_edits("# Plan\n\nstep one\n", &[edit("one", "two"), edit("step two", "step 2")]);
        assert_eq!(out, Ok("# Plan\n\nstep 2\n".to_owned()));
    }

    #[test]
    fn an_edit_that_does_not_apply_names_its_index_and_why() {
        let text = "a cat and a dog";
        assert_eq!(
            apply_edits(text, &[edit("cat", "cow"), edit("bird", "x")]),
            Err(DocumentError::OldNotFound { index: 1 })
        );
        assert_eq!(apply_edits(text, &[edit("a ", "the ")]), Err(DocumentError::OldAmbiguous { index: 0, count: 2 }));
        assert_eq!(apply_edits("aaa", &[edit("aa", "b")]), Err(DocumentError::OldAmbiguous { index: 0, count: 2 }));
        assert_eq!(apply_edits(text, &[edit("", "x")]), Err(DocumentError::EmptyOld { index: 0 }));
        assert_eq!(apply_edits(text, &[]), Err(DocumentError::NoEdits));
        let many = vec![edit("a", "a"); MAX_EDITS + 1];
        assert_eq!(apply_edits(text, &many), Err(DocumentError::TooManyEdits { count: MAX_EDITS + 1 }));
        assert_eq!(DocumentError::OldNotFound { index: 1 }.to_string(), "edit 1: `old` not found");
        assert!(
            DocumentError::OldAmbiguous { index: 0, count: 2 }.to_string().starts_with("edit 0: `old` found 2 times")
        );
    }

    #[test]
    fn edits_handle_multibyte_text() {
        assert_eq!(apply_edits("héllo wörld", &[edit("ö", "o")]), Ok("héllo world".to_owned()));
        assert_eq!(apply_edits("ééé", &[edit("éé", "e")]), Err(DocumentError::OldAmbiguous { index: 0, count: 2 }));
    }

    #[test]
    fn json_documents_must_parse_and_content_is_capped() {
        assert!(validate_content(DocumentKind::Json, r#"{"a": [1, 2]}"#).is_ok());
        assert!(matches!(validate_content(DocumentKind::Json, "{"), Err(DocumentError::InvalidJson(_))));
        assert!(validate_content(DocumentKind::Markdown, "{").is_ok());
        let big = "x".repeat(MAX_CONTENT_BYTES + 1);
        assert_eq!(
            validate_content(DocumentKind::Markdown, &big),
            Err(DocumentError::ContentTooLarge { bytes: MAX_CONTENT_BYTES + 1 })
        );
    }

    #[test]
    fn titles_are_checked() {
        assert!(validate_title("Launch plan").is_ok());
        assert_eq!(validate_title("  "), Err(DocumentError::EmptyTitle));
        assert_eq!(validate_title(&"t".repeat(MAX_TITLE_BYTES + 1)), Err(DocumentError::TitleTooLong));
        assert_eq!(validate_title("a\u{7}b"), Err(DocumentError::TitleControl));
    }

    #[test]
    fn the_diff_is_unified_with_headers() {
        let diff = unified_diff("a\nb\nc\n", "a\nB\nc\n", "v1", "v2");
        assert!(diff.starts_with("--- v1\n+++ v2\n@@ -1,3 +1,3 @@\n"), "{diff}");
        assert!(diff.contains("\n-b\n+B\n"), "{diff}");
        assert_eq!(unified_diff("same", "same", "v1", "v2"), "");
    }

    #[test]
    fn edits_and_authors_serialise_with_their_tags() {
        let patch = Edit::Patch { edits: vec![edit("a", "b")] };
        assert_eq!(
            serde_json::to_value(&patch).ok(),
            Some(serde_json::json!({"op": "patch", "edits": [{"old": "a", "new": "b"}]}))
        );
        assert_eq!(
            serde_json::to_value(Edit::Rollback { to: 2 }).ok(),
            Some(serde_json::json!({"op": "rollback", "to": 2}))
        );
        let author = DocAuthor::User { key: "key_1".into() };
        assert_eq!(serde_json::to_value(&author).ok(), Some(serde_json::json!({"kind": "user", "key": "key_1"})));
    }

    proptest! {
        /// Replacing a unique marker keeps every byte outside the replaced span.
        #[test]
        fn applying_an_edit_never_loses_text_outside_the_replaced_span(
            before in "[a-z \n]{0,40}",
            after in "[a-z \n]{0,40}",
            new in "[a-zé \n]{0,20}",
        ) {
            let marker = "\u{1F600}MARK\u{1F600}";
            let text = format!("{before}{marker}{after}");
            let out = apply_edits(&text, &[edit(marker, &new)]).expect("a unique marker applies");
            prop_assert_eq!(out, format!("{before}{new}{after}"));
        }

        /// An edit applies exactly when its `old` occurs once.
        #[test]
        fn an_edit_applies_exactly_when_old_occurs_once(text in "[ab]{0,12}", old in "[ab]{1,3}") {
            let count = (0..text.len()).filter(|i| text[*i..].starts_with(&old)).count();
            let out = apply_edits(&text, &[edit(&old, "X")]);
            prop_assert_eq!(out.is_ok(), count == 1);
            if let Ok(out) = out {
                prop_assert_eq!(out.len(), text.len() - old.len() + 1);
            }
        }
    }
}
