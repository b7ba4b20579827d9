//! Retrieval quality of `POST /v1/search` in its three modes, measured on a small public
//! labelled set: the Lee, Pincombe & Welsh (2005) document-similarity set, 50 short
//! news articles with the mean human similarity rating of every pair (`scripts/eval-set.sh`
//! takes both files from gensim's PyPI wheel; `scripts/test` exports their directory as
//! `MAESTRO_EVAL_SET_DIR`, and without it this test fails rather than skips, like the
//! MiniLM tests).
//!
//! It is a document-similarity set, not query→document relevance judgements, so it is
//! used as query-by-document retrieval: a real server with the real MiniLM stores the 50
//! articles as documents of one tenant, then each article's whole text (its punctuation
//! blanked, so that the full-text side reads words rather than query syntax; every article
//! fits the 1,024-character query cap and MiniLM's 256 tokens) is the query, in modes
//! `text`, `vector` and `hybrid`, 11 hits, the article itself dropped from the ranking.
//!
//! - **nDCG@10** with graded gains: the ratings were given on a 1–5 scale and scaled to
//!   0.2–1.0, so a pair's gain is `(similarity − 0.2) / 0.8` (0 for "unrelated", 1 for
//!   "identical"); the ideal ranking is the other 49 articles by that gain.
//! - **MRR@10**: an article is relevant to the query when its mean rating is at least
//!   0.5 (raters leaned to "similar": 143 of the 1,225 pairs); queries without any
//!   relevant article (2 of 50) are left out of the mean.
//! - **random**: the expected value of both for a random ranking, over seeded shuffles.
//!
//! The table (mode, nDCG@10, MRR@10, queries) goes to stdout (`-- --nocapture`). The test
//! asserts only what a working system must show: every mode beats random by a clear margin.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, TestDb, backend_tests};
use crate::server::{Server, maestro};

backend_tests!(every_search_mode_ranks_the_lee_articles_well_above_random);

/// The articles of the set.
const ARTICLES: usize = 50;
/// The rank cut of both metrics.
const CUT: usize = 10;
/// Rated at least this similar (0–1): relevant for MRR.
const RELEVANT: f64 = 0.5;
/// The lowest rating ("highly unrelated", 1 of 5), scaled.
const UNRELATED: f64 = 0.2;
/// Shuffles per query for the random baseline.
const SHUFFLES: usize = 2_000;

/// The set's directory, from `MAESTRO_EVAL_SET_DIR`.
fn set_dir() -> PathBuf {
    match std::env::var("MAESTRO_EVAL_SET_DIR") {
        Ok(dir) if !dir.trim().is_empty() => PathBuf::from(dir),
        _ => panic!(
            "MAESTRO_EVAL_SET_DIR is not set: the retrieval-quality test needs the Lee et al. set. Run \
             `export MAESTRO_EVAL_SET_DIR=$(scripts/eval-set.sh)` (or `scripts/test`, which does)"
        ),
    }
}

/// The set: the articles and the human similarity of every pair.
struct LeeSet {
    articles: Vec<String>,
    /// The upper triangle as given (row `i`, column `j > i`); 1 on the diagonal.
    ratings: Vec<Vec<f64>>,
}

impl LeeSet {
    fn load() -> Self {
        let dir = set_dir();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e} (run scripts/eval-set.sh)", path.display()))
        };
        // Latin-1: every byte is the code point of the same value.
        let text: String = read("lee.cor").iter().map(|&b| char::from(b)).collect();
        let articles: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        assert_eq!(articles.len(), ARTICLES, "lee.cor holds one article a line");
        let ratings: Vec<Vec<f64>> = String::from_utf8(read("similarities0-1.txt"))
            .expect("ratings are ASCII")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(|x| x.parse().expect("a rating")).collect())
            .collect();
        assert_eq!(ratings.len(), ARTICLES, "a 50×50 matrix");
        for (i, row) in ratings.iter().enumerate() {
            assert_eq!(row.len(), ARTICLES, "row {i} of the 50×50 matrix");
            assert!((row[i] - 1.0).abs() < 1e-9, "1 on the diagonal");
            assert!(row[..i].iter().all(|&x| x == 0.0), "the upper triangle only: row {i}");
            assert!(row[i + 1..].iter().all(|&x| (UNRELATED..=1.0).contains(&x)), "ratings within 0.2–1: row {i}");
        }
        Self { articles, ratings }
    }

    fn similarity(&self, a: usize, b: usize) -> f64 {
        self.ratings[a.min(b)][a.max(b)]
    }

    /// The graded gain of `b` as a result for query `a`.
    fn gain(&self, a: usize, b: usize) -> f64 {
        ((self.similarity(a, b) - UNRELATED) / (1.0 - UNRELATED)).max(0.0)
    }
}

/// The discounted cumulative gain of the first `k` gains, best first.
fn dcg(gains: &[f64], k: usize) -> f64 {
    gains.iter().take(k).enumerate().map(|(i, g)| g / ((i + 2) as f64).log2()).sum()
}

/// nDCG@k of a ranking (the gains of its items, in order) among candidates of gains
/// `all` (the ranked ones included); `None` when no candidate has any gain.
fn ndcg(ranked: &[f64], all: &[f64], k: usize) -> Option<f64> {
    let mut ideal = all.to_vec();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let best = dcg(&ideal, k);
    (best > 0.0).then(|| dcg(ranked, k) / best)
}

/// The reciprocal rank of the first relevant item within the first `k` (0 if none).
fn reciprocal_rank(relevant: &[bool], k: usize) -> f64 {
    relevant.iter().take(k).position(|&r| r).map_or(0.0, |p| 1.0 / (p + 1) as f64)
}

/// The metrics of one mode: nDCG@10 and MRR@10 summed over the queries that count.
#[derive(Debug, Default, Clone, Copy)]
struct Score {
    ndcg: f64,
    ndcg_queries: usize,
    rr: f64,
    rr_queries: usize,
}

impl Score {
    /// Adds one query's ranking (article indices, best first, the query's own left out).
    fn add(&mut self, set: &LeeSet, query: usize, ranking: &[usize]) {
        let others: Vec<usize> = (0..ARTICLES).filter(|&j| j != query).collect();
        let all: Vec<f64> = others.iter().map(|&j| set.gain(query, j)).collect();
        let ranked: Vec<f64> = ranking.iter().map(|&j| set.gain(query, j)).collect();
        if let Some(n) = ndcg(&ranked, &all, CUT) {
            self.ndcg += n;
            self.ndcg_queries += 1;
        }
        if others.iter().any(|&j| set.similarity(query, j) >= RELEVANT) {
            let relevant: Vec<bool> = ranking.iter().map(|&j| set.similarity(query, j) >= RELEVANT).collect();
            self.rr += reciprocal_rank(&relevant, CUT);
            self.rr_queries += 1;
        }
    }

    /// Adds `other`, weighted (a random ranking's shuffles count as one query).
    fn add_mean(&mut self, other: &Score) {
        if other.ndcg_queries > 0 {
            self.ndcg += other.ndcg / other.ndcg_queries as f64;
            self.ndcg_queries += 1;
        }
        if other.rr_queries > 0 {
            self.rr += other.rr / other.rr_queries as f64;
            self.rr_queries += 1;
        }
    }

    fn mean_ndcg(&self) -> f64 {
        self.ndcg / self.ndcg_queries as f64
    }

    fn mrr(&self) -> f64 {
        self.rr / self.rr_queries as f64
    }
}

/// A small seeded generator (xorshift64*) for the random baseline.
struct Shuffler(u64);

impl Shuffler {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fisher–Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// The expected metrics of a random ranking of the other articles, per query.
fn random_baseline(set: &LeeSet) -> Score {
    let mut shuffler = Shuffler(0x9E37_79B9_7F4A_7C15);
    let mut total = Score::default();
    for query in 0..ARTICLES {
        let mut others: Vec<usize> = (0..ARTICLES).filter(|&j| j != query).collect();
        let mut this = Score::default();
        for _ in 0..SHUFFLES {
            shuffler.shuffle(&mut others);
            this.add(set, query, &others[..CUT]);
        }
        total.add_mean(&this);
    }
    total
}

/// An article as a query: punctuation blanked (the full-text side reads `"`, `-`, `:`,
/// `(` as syntax), whitespace collapsed.
fn as_query(article: &str) -> String {
    let words: String = article.chars().map(|c| if c.is_alphanumeric() { c } else { ' ' }).collect();
    words.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn search(server: &Server, token: &str, query: &str, mode: &str, limit: usize) -> (StatusCode, Value) {
    let mut body = json!({ "query": query, "mode": mode, "kinds": ["document"], "limit": limit });
    if mode == "hybrid" {
        // No recency decay: the articles were stored seconds apart.
        body["half_life"] = json!("0s");
    }
    server.call(Method::POST, "/v1/search", token, Some(body)).await
}

fn hit_ids(reply: &Value) -> Vec<String> {
    reply["hits"].as_array().expect("hits").iter().map(|h| h["id"].as_str().expect("id").to_owned()).collect()
}

async fn every_search_mode_ranks_the_lee_articles_well_above_random(backend: Backend) {
    let set = LeeSet::load();
    let db = TestDb::new(backend).await;
    let mut command = maestro(&db, backend);
    command.env("MAESTRO_EMBEDDINGS_MODEL_DIR", crate::embed::model_dir());
    command.env("MAESTRO_LOG", "warn");
    let server = Server::start(command, &db.dir(), 1).await;
    let platform = server.bootstrap_token();
    let (status, _) = server.call(Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "lee" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, key) =
        server.call(Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "lee", "role": "member" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let token = key["token"].as_str().expect("token").to_owned();

    // Titles share no word with any article, so they add nothing to either side.
    let mut article_of: HashMap<String, usize> = HashMap::new();
    for (i, article) in set.articles.iter().enumerate() {
        let document = json!({ "title": format!("lee{i:02}"), "kind": "markdown", "content": article });
        let (status, created) = server.call(Method::POST, "/v1/documents", &token, Some(document)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        article_of.insert(created["id"].as_str().expect("id").to_owned(), i);
    }

    // Wait until the index and the passage vectors hold every article: "the" is in all
    // of them, and a vector search ranks every object that has a passage.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    for mode in ["text", "vector"] {
        loop {
            let (status, reply) = search(&server, &token, "the", mode, 100).await;
            assert!(!status.is_client_error(), "{mode} search: {status} {reply}");
            let found = if status == StatusCode::OK { hit_ids(&reply).len() } else { 0 };
            if found == ARTICLES {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{mode} search holds {found} of {ARTICLES} articles: {status} {reply}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let modes = ["text", "vector", "hybrid"];
    let mut scores = [Score::default(); 3];
    for (query, article) in set.articles.iter().enumerate() {
        let text = as_query(article);
        assert!(text.chars().count() <= 1024, "article {query} fits the query cap");
        for (mode, score) in modes.iter().zip(scores.iter_mut()) {
            let (status, reply) = search(&server, &token, &text, mode, CUT + 1).await;
            assert_eq!(status, StatusCode::OK, "{mode} search for article {query}: {reply}");
            assert_eq!(reply["mode"], *mode, "{reply}");
            assert!(reply.get("degraded").is_none(), "{mode} used both sides it has: {reply}");
            let ranking: Vec<usize> = hit_ids(&reply)
                .iter()
                .map(|id| *article_of.get(id).unwrap_or_else(|| panic!("{id} is one of the articles")))
                .filter(|&j| j != query)
                .take(CUT)
                .collect();
            score.add(&set, query, &ranking);
        }
    }
    let random = random_baseline(&set);

    println!("retrieval quality on the Lee et al. (2005) set ({backend:?}, MiniLM, {ARTICLES} articles):");
    println!("{:<8} {:>8} {:>8} {:>8}", "mode", "nDCG@10", "MRR@10", "queries");
    for (mode, score) in modes.iter().chain(["random"].iter()).zip(scores.iter().chain([&random])) {
        let queries = format!("{}/{}", score.ndcg_queries, score.rr_queries);
        println!("{mode:<8} {:>8.3} {:>8.3} {queries:>8}", score.mean_ndcg(), score.mrr());
    }
    println!("(queries: for nDCG / for MRR, those with an article rated at least {RELEVANT})");
    for (mode, score) in modes.iter().zip(&scores) {
        assert_eq!(score.ndcg_queries, ARTICLES, "{mode}: every article is a query");
        assert!(
            score.mean_ndcg() >= random.mean_ndcg() + 0.2,
            "{mode} nDCG@10 {:.3} is not clearly above random's {:.3}",
            score.mean_ndcg(),
            random.mean_ndcg()
        );
        assert!(
            score.mrr() >= random.mrr() + 0.3,
            "{mode} MRR@10 {:.3} is not clearly above random's {:.3}",
            score.mrr(),
            random.mrr()
        );
    }
    server.stop().await;
}

#[test]
fn dcg_discounts_each_gain_by_the_log_of_its_rank_plus_one() {
    // 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.26186 + 0.5
    assert!((dcg(&[3.0, 2.0, 1.0], 10) - 4.761_860).abs() < 1e-5);
    // Only the first k count.
    assert!((dcg(&[3.0, 2.0, 1.0], 1) - 3.0).abs() < 1e-12);
}

#[test]
fn ndcg_is_one_for_the_ideal_order_and_the_hand_computed_ratio_otherwise() {
    let all = [1.0, 1.0, 0.0];
    assert!((ndcg(&[1.0, 1.0], &all, 10).expect("gains") - 1.0).abs() < 1e-12);
    // (1 + 0/log2(3) + 1/log2(4)) / (1 + 1/log2(3)) = 1.5 / 1.63093
    assert!((ndcg(&[1.0, 0.0, 1.0], &all, 10).expect("gains") - 0.919_721).abs() < 1e-5);
    // Only the second of two relevant ones, at rank 2 of a cut at 2: (1/log2(3)) / (1 + 1/log2(3)).
    assert!((ndcg(&[0.0, 1.0], &all, 2).expect("gains") - 0.386_853).abs() < 1e-5);
    assert_eq!(ndcg(&[0.0], &[0.0, 0.0], 10), None, "nothing to find: no score");
}

#[test]
fn reciprocal_rank_is_one_over_the_first_relevant_rank_within_the_cut() {
    assert_eq!(reciprocal_rank(&[true, true], 10), 1.0);
    assert!((reciprocal_rank(&[false, false, true], 10) - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(reciprocal_rank(&[false, false, true], 2), 0.0, "past the cut");
    assert_eq!(reciprocal_rank(&[false; 4], 10), 0.0);
}

#[test]
fn the_shuffler_is_seeded_and_permutes() {
    let (mut a, mut b) = (Shuffler(7), Shuffler(7));
    let (mut x, mut y): (Vec<u32>, Vec<u32>) = ((0..20).collect(), (0..20).collect());
    a.shuffle(&mut x);
    b.shuffle(&mut y);
    assert_eq!(x, y, "same seed, same order");
    assert_ne!(x, (0..20).collect::<Vec<_>>(), "it moved something");
    x.sort_unstable();
    assert_eq!(x, (0..20).collect::<Vec<_>>(), "a permutation");
}
