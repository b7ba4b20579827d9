//! The index's schema and tokenizer.
//!
//! One document per indexed object, keyed by `key` (`kind:id`) so that an update is a
//! delete-by-term and an add. `tenant`, `kind`, `id`, `session`, `author` and a
//! memory's `tags` and `scope` are untokenised (`STRING`): exact filters, never matched
//! by the user's words (a memory's tags are also its `title`, so words find them). `title` and
//! `text` go through [`TOKENIZER`] (split on non-alphanumerics, very long tokens
//! dropped, lowercased, accents folded to ASCII), language-neutral because tenants write
//! in any language.

use maestro_core::search::Searchable;
use tantivy::schema::{DateOptions, DateTimePrecision, Field, IndexRecordOption, STORED, STRING, Schema};
use tantivy::schema::{TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer};
use tantivy::{DateTime, Index, TantivyDocument, Term};

/// The name the text fields' tokenizer is registered under.
pub(super) const TOKENIZER: &str = "maestro";

/// The fields of the schema.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fields {
    pub(super) key: Field,
    pub(super) tenant: Field,
    pub(super) kind: Field,
    pub(super) id: Field,
    pub(super) session: Field,
    pub(super) author: Field,
    pub(super) created: Field,
    pub(super) title: Field,
    pub(super) text: Field,
    /// A memory's tags (one value each), exact.
    pub(super) tags: Field,
    /// A memory's scope kind, exact.
    pub(super) scope: Field,
    /// 1 for a pinned memory (stored only).
    pub(super) pinned: Field,
}

/// The schema and its fields.
pub(super) fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let fields = Fields {
        key: builder.add_text_field("key", STRING),
        tenant: builder.add_text_field("tenant", STRING | STORED),
        kind: builder.add_text_field("kind", STRING | STORED),
        id: builder.add_text_field("id", STRING | STORED),
        session: builder.add_text_field("session", STRING | STORED),
        author: builder.add_text_field("author", STRING | STORED),
        created: builder.add_date_field(
            "created",
            DateOptions::default().set_indexed().set_fast().set_stored().set_precision(DateTimePrecision::Milliseconds),
        ),
        title: builder.add_text_field("title", text_options.clone()),
        text: builder.add_text_field("text", text_options),
        tags: builder.add_text_field("tags", STRING | STORED),
        scope: builder.add_text_field("scope", STRING | STORED),
        pinned: builder.add_u64_field("pinned", STORED),
    };
    (builder.build(), fields)
}

/// Registers [`TOKENIZER`] on an index (tokenizers are not stored with it).
pub(super) fn register_tokenizer(index: &Index) {
    index.tokenizers().register(TOKENIZER, analyzer());
}

/// The text fields' analyzer.
pub(super) fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The unique key of an object.
pub(super) fn key(fields: &Fields, kind: &str, id: &str) -> Term {
    Term::from_field_text(fields.key, &format!("{kind}:{id}"))
}

/// An object as an index document.
pub(super) fn document(fields: &Fields, object: &Searchable) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_text(fields.key, format!("{}:{}", object.kind.as_str(), object.id));
    doc.add_text(fields.tenant, object.tenant.as_str());
    doc.add_text(fields.kind, object.kind.as_str());
    doc.add_text(fields.id, &object.id);
    if let Some(session) = &object.session {
        doc.add_text(fields.session, session.as_str());
    }
    if let Some(author) = &object.author {
        doc.add_text(fields.author, author);
    }
    doc.add_date(fields.created, DateTime::from_timestamp_millis(object.at.timestamp_millis()));
    if !object.title.is_empty() {
        doc.add_text(fields.title, &object.title);
    }
    doc.add_text(fields.text, &object.text);
    for tag in &object.tags {
        doc.add_text(fields.tags, tag);
    }
    if let Some(scope) = &object.scope {
        doc.add_text(fields.scope, scope);
    }
    if object.pinned {
        doc.add_u64(fields.pinned, 1);
    }
    doc
}
