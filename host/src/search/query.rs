//! Queries: the user's text parsed leniently, ANDed outside with the tenant and the
//! filters, BM25 top-k with snippets.
//!
//! The tenant clause is a constant-score (0) term query on the untokenised `tenant`
//! field, required with the filters' clauses in a filter applied outside the parsed
//! query ([`Filtered`], which keeps tantivy's block-max WAND pruning that a boolean
//! intersection would lose): nothing the user writes (`tenant:other`, `OR`, `*`, a
//! range) can widen it, since at most it adds clauses inside its own subquery. Regexes stay disabled (the parser's default)
//! and no field is fuzzy, so no query expands into an automaton over the dictionary.

use std::ops::Bound;

use maestro_core::TenantId;
use maestro_core::search::SearchKind;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{TantivyDocument, Term};

use super::filtered::Filtered;
use super::{Inner, SearchError, TextFilters, TextHit};

/// Characters of a snippet.
const SNIPPET_CHARS: usize = 200;

/// A query text ready to parse: control characters blanked, within the cap.
#[derive(Debug, Clone)]
pub(super) struct Prepared(String);

/// Blanks control characters (so logged or echoed text cannot forge lines) and checks
/// the length.
pub(super) fn prepare(query: &str, max_chars: usize) -> Result<Prepared, SearchError> {
    if query.chars().count() > max_chars {
        return Err(SearchError::QueryTooLong { max: max_chars });
    }
    let text: String = query.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.trim().is_empty() {
        return Err(SearchError::EmptyQuery);
    }
    Ok(Prepared(text))
}

/// The best `k` matches of a query with what the index stores of each, snippets left
/// to [`Candidates::snippet`] (a caller fusing rankings needs only a few of them). The
/// stored documents are kept: a snippet reads its text from them rather than fetching
/// (and decompressing) the document again.
pub(super) struct Candidates {
    snippets: SnippetGenerator,
    text: tantivy::schema::Field,
    found: Vec<(TantivyDocument, TextHit)>,
}

impl Candidates {
    /// The hits, best first, with empty snippets.
    pub(super) fn hits(&self) -> impl Iterator<Item = &TextHit> {
        self.found.iter().map(|(_, hit)| hit)
    }

    /// The snippet of hit `i`: a fragment around the matched words and their byte ranges
    /// (the text's start when no word matched it, e.g. a title-only match).
    pub(super) fn snippet(&self, i: usize) -> (String, Vec<(usize, usize)>) {
        let Some((doc, _)) = self.found.get(i) else { return (String::new(), Vec::new()) };
        let snippet = self.snippets.snippet_from_doc(doc);
        if snippet.is_empty() {
            let text = doc.get_first(self.text).and_then(|v| v.as_str()).unwrap_or_default();
            return (prefix(text, SNIPPET_CHARS), Vec::new());
        }
        (snippet.fragment().to_owned(), snippet.highlighted().iter().map(|r| (r.start, r.end)).collect())
    }

    /// Every hit with its snippet.
    pub(super) fn into_hits(self) -> Result<Vec<TextHit>, SearchError> {
        let mut hits = Vec::with_capacity(self.found.len());
        for i in 0..self.found.len() {
            let (snippet, highlights) = self.snippet(i);
            let mut hit = self.found[i].1.clone();
            hit.snippet = snippet;
            hit.highlights = highlights;
            hits.push(hit);
        }
        Ok(hits)
    }
}

/// Searches the reader's current searcher: the best `k` with their stored fields.
pub(super) fn candidates(
    inner: &Inner,
    tenant: &TenantId,
    query: &Prepared,
    filters: &TextFilters,
    k: usize,
) -> Result<Candidates, SearchError> {
    let fields = &inner.fields;
    let mut parser = QueryParser::for_index(&inner.index, vec![fields.title, fields.text]);
    parser.set_field_boost(fields.title, 2.0);
    let (parsed, _ignored) = parser.parse_query_lenient(&query.0);
    let query = Filtered::new(parsed.box_clone(), filter(inner, tenant, filters));
    let searcher = inner.reader.searcher();
    let top = searcher.search(&query, &TopDocs::with_limit(k).order_by_score()).map_err(unsupported)?;
    let mut snippets = SnippetGenerator::create(&searcher, &*parsed, fields.text).map_err(unsupported)?;
    snippets.set_max_num_chars(SNIPPET_CHARS);
    let mut found = Vec::with_capacity(top.len());
    for (score, address) in top {
        let doc: TantivyDocument = searcher.doc(address)?;
        let text = |field| doc.get_first(field).and_then(|v| v.as_str()).map(str::to_owned);
        let Some(kind) = text(fields.kind).as_deref().and_then(SearchKind::parse) else { continue };
        let Some(id) = text(fields.id) else { continue };
        let at = doc
            .get_first(fields.created)
            .and_then(|v| v.as_datetime())
            .and_then(|d| chrono::DateTime::from_timestamp_millis(d.into_timestamp_millis()))
            .unwrap_or_default();
        let hit = TextHit {
            kind,
            id,
            score,
            rank: found.len() + 1,
            snippet: String::new(),
            highlights: Vec::new(),
            session: text(fields.session),
            // A memory's title field holds its tags (for matching): not a title.
            title: if kind == SearchKind::Memory { None } else { text(fields.title) },
            author: text(fields.author),
            at,
            tags: doc.get_all(fields.tags).filter_map(|v| v.as_str()).map(str::to_owned).collect(),
            scope: text(fields.scope),
            pinned: doc.get_first(fields.pinned).and_then(|v| v.as_u64()) == Some(1),
        };
        found.push((doc, hit));
    }
    Ok(Candidates { snippets, text: fields.text, found })
}

/// The documents a query may return: the tenant's, narrowed by the filters; every
/// clause scores 0.
fn filter(inner: &Inner, tenant: &TenantId, filters: &TextFilters) -> Box<dyn Query> {
    let fields = &inner.fields;
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, exact(fields.tenant, tenant.as_str()))];
    if !filters.kinds.is_empty() {
        let kinds: Vec<Box<dyn Query>> = filters.kinds.iter().map(|k| exact(fields.kind, k.as_str())).collect();
        clauses.push((Occur::Must, Box::new(BooleanQuery::union(kinds))));
    }
    if let Some(session) = &filters.session {
        clauses.push((Occur::Must, exact(fields.session, session.as_str())));
    }
    if let Some(session) = &filters.exclude_session {
        clauses.push((Occur::MustNot, exact(fields.session, session.as_str())));
    }
    if let Some(author) = &filters.author {
        clauses.push((Occur::Must, exact(fields.author, author)));
    }
    if let Some(scope) = &filters.scope {
        clauses.push((Occur::Must, exact(fields.scope, scope)));
    }
    if !filters.tags.is_empty() {
        let tags: Vec<Box<dyn Query>> = filters.tags.iter().map(|t| exact(fields.tags, t)).collect();
        let tags = if filters.all_tags { BooleanQuery::intersection(tags) } else { BooleanQuery::union(tags) };
        clauses.push((Occur::Must, Box::new(tags)));
    }
    if filters.since.is_some() || filters.until.is_some() {
        let date = |at: chrono::DateTime<chrono::Utc>| {
            Term::from_field_date(fields.created, tantivy::DateTime::from_timestamp_millis(at.timestamp_millis()))
        };
        let lower = filters.since.map_or(Bound::Unbounded, |at| Bound::Included(date(at)));
        let upper = filters.until.map_or(Bound::Unbounded, |at| Bound::Excluded(date(at)));
        clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(Box::new(RangeQuery::new(lower, upper)), 0.0))));
    }
    if clauses.len() == 1 {
        return clauses.remove(0).1;
    }
    Box::new(BooleanQuery::new(clauses))
}

/// What the user's query asked that this index cannot do is the query's fault (422);
/// anything else is the index's.
fn unsupported(err: tantivy::TantivyError) -> SearchError {
    use tantivy::TantivyError as E;
    match err {
        E::SchemaError(m) | E::InvalidArgument(m) | E::FieldNotFound(m) => SearchError::UnsupportedQuery(m),
        other => SearchError::Index(other),
    }
}

/// A required exact match that adds nothing to the score.
fn exact(field: tantivy::schema::Field, value: &str) -> Box<dyn Query> {
    let term = TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic);
    Box::new(ConstScoreQuery::new(Box::new(term), 0.0))
}

/// The first `chars` characters of `text`.
fn prefix(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_and_over_long_queries_and_blanks_control_characters() {
        assert!(matches!(prepare(" \u{0}\n", 10), Err(SearchError::EmptyQuery)));
        assert!(matches!(prepare(&"a".repeat(11), 10), Err(SearchError::QueryTooLong { max: 10 })));
        assert_eq!(prepare("a\u{7}b", 10).expect("short").0, "a b");
    }
}
