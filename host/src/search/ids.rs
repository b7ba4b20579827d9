//! What the index holds, object by object (`maestro index ids`): the view a consistency
//! check compares with the database's (every object once, none that the database lacks,
//! each with its current text). Reads the last commit through the reader, so it is safe
//! beside a running server.

use maestro_core::search::SearchKind;
use serde::Serialize;
use tantivy::TantivyDocument;
use tantivy::collector::DocSetCollector;
use tantivy::query::AllQuery;
use tantivy::schema::Value;

use super::{FullText, SearchError};

/// One indexed object as the last commit holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexedObject {
    /// Its tenant's id.
    pub tenant: String,
    /// What it is.
    pub kind: SearchKind,
    /// Its id.
    pub id: String,
    /// Its title (empty when it has none).
    pub title: String,
    /// Its text.
    pub text: String,
}

impl FullText {
    /// Every object in the last commit (duplicates included: an object indexed twice
    /// appears twice), ordered by kind, then id. Reads the whole index: for checks and
    /// operators, not for requests.
    pub async fn indexed_objects(&self) -> Result<Vec<IndexedObject>, SearchError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.indexed_objects_now())
            .await
            .map_err(|e| SearchError::Io(std::io::Error::other(e.to_string())))?
    }

    fn indexed_objects_now(&self) -> Result<Vec<IndexedObject>, SearchError> {
        let inner = &self.inner;
        inner.reader.reload()?;
        let searcher = inner.reader.searcher();
        let fields = &inner.fields;
        let mut objects = Vec::new();
        for address in searcher.search(&AllQuery, &DocSetCollector)? {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text = |field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let Some(kind) = SearchKind::parse(&text(fields.kind)) else {
                return Err(SearchError::Index(tantivy::TantivyError::SchemaError(format!(
                    "an indexed document of unknown kind {:?}",
                    text(fields.kind)
                ))));
            };
            objects.push(IndexedObject {
                tenant: text(fields.tenant),
                kind,
                id: text(fields.id),
                title: text(fields.title),
                text: text(fields.text),
            });
        }
        objects.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        Ok(objects)
    }
}
