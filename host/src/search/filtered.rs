//! A scored query restricted to the documents of a filter without losing tantivy's
//! top-k pruning.
//!
//! `BooleanQuery(Must scored, Must filter)` is an intersection: a top-k collector must
//! score every document of it, where the scored query alone would skip whole blocks
//! that cannot reach the current k-th score (block-max WAND). [`Filtered`] keeps the
//! pruning: it runs the scored query's own pruning loop and checks each document that
//! loop reports against the filter, moving the filter's postings forward only (the
//! loop reports documents in increasing order). A rejected document leaves the
//! threshold where it was, so the result is the same top k, with the same scores (the
//! filter scores nothing), as the intersection's.
//!
//! When the filter keeps only a small part of a segment (a small tenant beside a large
//! one) the pruning loop would wade through other documents before the threshold rises,
//! so such a segment runs as the plain intersection, led by the filter's postings.

use tantivy::query::{EnableScoring, Explanation, Query, Scorer, Weight, intersect_scorers};
use tantivy::{DocId, DocSet, Score, SegmentReader, TERMINATED, Term};

/// Below this share of a segment's documents (1 in N) the filter leads an intersection
/// instead of checking what the pruning loop reports.
const SPARSE_FILTER: u32 = 16;

/// `scored`, restricted to the documents `filter` matches; scores are `scored`'s.
#[derive(Debug)]
pub(super) struct Filtered {
    scored: Box<dyn Query>,
    filter: Box<dyn Query>,
}

impl Filtered {
    /// `scored` where `filter` matches (`filter` should score 0: its score is added).
    pub(super) fn new(scored: Box<dyn Query>, filter: Box<dyn Query>) -> Self {
        Self { scored, filter }
    }
}

impl Clone for Filtered {
    fn clone(&self) -> Self {
        Self { scored: self.scored.box_clone(), filter: self.filter.box_clone() }
    }
}

impl Query for Filtered {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(FilteredWeight {
            scored: self.scored.weight(enable_scoring)?,
            filter: self.filter.weight(enable_scoring)?,
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.scored.query_terms(visitor);
        self.filter.query_terms(visitor);
    }
}

struct FilteredWeight {
    scored: Box<dyn Weight>,
    filter: Box<dyn Weight>,
}

impl FilteredWeight {
    fn intersection(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let scorers = vec![self.scored.scorer(reader, boost)?, self.filter.scorer(reader, boost)?];
        Ok(intersect_scorers(scorers, reader.num_docs()))
    }
}

impl Weight for FilteredWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        self.intersection(reader, boost)
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut filter = self.filter.scorer(reader, 1.0)?;
        if filter.seek(doc) != doc {
            return Err(tantivy::TantivyError::InvalidArgument(format!("document {doc} does not match the filter")));
        }
        self.scored.explain(reader, doc)
    }

    fn for_each_pruning(
        &self,
        threshold: Score,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(DocId, Score) -> Score,
    ) -> tantivy::Result<()> {
        let mut filter = self.filter.scorer(reader, 1.0)?;
        if filter.doc() == TERMINATED {
            return Ok(());
        }
        if filter.size_hint().saturating_mul(SPARSE_FILTER) < reader.max_doc() {
            let mut scorer = self.intersection(reader, 1.0)?;
            let mut threshold = threshold;
            let mut doc = scorer.doc();
            while doc != TERMINATED {
                let score = scorer.score();
                if score > threshold {
                    threshold = callback(doc, score);
                }
                doc = scorer.advance();
            }
            return Ok(());
        }
        let mut current = threshold;
        self.scored.for_each_pruning(threshold, reader, &mut |doc, score| {
            let at = if filter.doc() < doc { filter.seek(doc) } else { filter.doc() };
            if at == doc {
                current = callback(doc, score + filter.score());
            }
            current
        })
    }
}

#[cfg(test)]
mod tests {
    use tantivy::collector::TopDocs;
    use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, QueryParser, TermQuery};
    use tantivy::schema::{IndexRecordOption, STRING, Schema, TEXT};
    use tantivy::{DocAddress, Index, IndexWriter, TantivyDocument};

    use super::*;

    /// The same top k and scores as the intersection it replaces, for a large tenant (the
    /// pruning path), a small one (the intersection path) and a filter with an
    /// exclusion, over several segments with deleted documents. Block-max WAND adds a
    /// document's term scores in another order than the union does, so scores may differ
    /// in their last bit, and documents whose scores are that close may swap places.
    #[test]
    fn finds_the_same_top_k_as_the_intersection_it_replaces() {
        let mut builder = Schema::builder();
        let tenant = builder.add_text_field("tenant", STRING);
        let key = builder.add_text_field("key", STRING);
        let text = builder.add_text_field("text", TEXT);
        let index = Index::create_in_ram(builder.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).expect("writer");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..6000u64 {
            let owner = match i % 100 {
                0..=2 => "small",
                3 => "tiny",
                _ => "large",
            };
            let words: Vec<String> =
                (0..5 + next() % 20).map(|_| format!("w{}", (next() % 60).min(next() % 60))).collect();
            let mut doc = TantivyDocument::default();
            doc.add_text(tenant, owner);
            doc.add_text(key, format!("k{i}"));
            doc.add_text(text, words.join(" "));
            writer.add_document(doc).expect("add");
            if i % 1500 == 1499 {
                writer.commit().expect("commit");
            }
        }
        for i in (0..6000).step_by(7) {
            writer.delete_term(Term::from_field_text(key, &format!("k{i}")));
        }
        writer.commit().expect("commit");
        let searcher = index.reader().expect("reader").searcher();
        assert!(searcher.segment_readers().len() > 1);
        let parser = QueryParser::for_index(&index, vec![text]);
        let exact = |field, value: &str| -> Box<dyn Query> {
            let term = TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic);
            Box::new(ConstScoreQuery::new(Box::new(term), 0.0))
        };
        let top = |query: &dyn Query, k| -> Vec<(Score, DocAddress)> {
            searcher.search(query, &TopDocs::with_limit(k).order_by_score()).expect("search")
        };
        let mut compared = 0;
        for q in ["w0", "w1 w2", "w3 w0 w7", "w59", "+w1 +w4", "w2 -w0", "\"w0 w1\"", "nothing"] {
            let parsed = parser.parse_query(q).expect("query");
            for owner in ["large", "small", "tiny"] {
                let filters: [Box<dyn Query>; 2] = [
                    exact(tenant, owner),
                    Box::new(BooleanQuery::new(vec![
                        (Occur::Must, exact(tenant, owner)),
                        (Occur::MustNot, exact(key, "k1")),
                    ])),
                ];
                for filter in filters {
                    let intersection =
                        BooleanQuery::new(vec![(Occur::Must, parsed.box_clone()), (Occur::Must, filter.box_clone())]);
                    let filtered = Filtered::new(parsed.box_clone(), filter);
                    for k in [1, 10, 100] {
                        let expected = top(&intersection, k);
                        let found = top(&filtered, k);
                        assert_eq!(found.len(), expected.len(), "{q} for {owner}, top {k}");
                        let close = |a: Score, b: Score| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
                        for (i, (score, address)) in found.iter().enumerate() {
                            assert!(close(*score, expected[i].0), "{q} for {owner}, top {k}: rank {i}");
                            let tied = |(s, a): &(Score, DocAddress)| a == address || close(*s, *score);
                            assert!(expected.iter().any(tied), "{q} for {owner}, top {k}: {address:?} not expected");
                        }
                        assert_eq!(
                            filtered.count(&searcher).expect("count"),
                            intersection.count(&searcher).expect("count")
                        );
                        compared += expected.len();
                    }
                }
            }
        }
        assert!(compared > 1000, "the queries found too little to compare: {compared}");
    }
}
