//! The offline embedder against the real all-MiniLM-L6-v2 (the files `scripts/model.sh`
//! fetches; `scripts/test` exports their directory as `MAESTRO_EMBEDDINGS_MODEL_DIR`,
//! and without it these tests fail rather than skip): its vectors match the reference
//! implementation's, texts are truncated at 256 tokens and batches padded to their
//! longest text without changing any vector, meanings rank as they should, and a server
//! without the model starts, says why, and reports it on `/readyz`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use maestro_core::embed::{EmbedError, Embedder, EmbedderStatus, dot};
use maestro_host::embed::{BackgroundMiniLm, MAX_TOKENS, MiniLm, MiniLmOptions};
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Backend, TestDb};
use crate::server::{Server, maestro};

/// The model directory, from `MAESTRO_EMBEDDINGS_MODEL_DIR`.
pub(crate) fn model_dir() -> PathBuf {
    match std::env::var("MAESTRO_EMBEDDINGS_MODEL_DIR") {
        Ok(dir) if !dir.trim().is_empty() => PathBuf::from(dir),
        _ => panic!(
            "MAESTRO_EMBEDDINGS_MODEL_DIR is not set: the offline embedder's tests need the model. Run \
             `export MAESTRO_EMBEDDINGS_MODEL_DIR=$(scripts/model.sh)` (or `scripts/test`, which does)"
        ),
    }
}

/// The model, loaded once for every test of this binary.
pub(crate) fn model() -> Arc<MiniLm> {
    static MODEL: OnceLock<Arc<MiniLm>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(MiniLm::load(&model_dir(), MiniLmOptions::default()).expect("the model loads")))
        .clone()
}

/// The texts and vectors of `golden/minilm_reference.json`, computed once with the
/// model's own Python package (sentence-transformers; see the file's `source`).
fn reference() -> (Vec<String>, Vec<Vec<f32>>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/golden/minilm_reference.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("reference file")).expect("json");
    let texts = serde_json::from_value(value["texts"].clone()).expect("texts");
    let vectors = serde_json::from_value(value["vectors"].clone()).expect("vectors");
    (texts, vectors)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[tokio::test]
async fn vectors_match_the_reference_implementation_to_1e4_cosine() {
    let (texts, expected) = reference();
    assert!(texts.len() >= 5, "a few sentences, one past the 256-token cut");
    let model = model();
    let got = model.embed(&texts).await.expect("embeds");
    assert_eq!(model.info().key(), "minilm/all-MiniLM-L6-v2@384");
    for ((text, got), expected) in texts.iter().zip(&got).zip(&expected) {
        assert_eq!(got.len(), 384);
        assert!((dot(got, got) - 1.0).abs() < 1e-5, "unit length");
        let similarity = cosine(got, expected);
        assert!(similarity >= 1.0 - 1e-4, "{text:?}: cosine {similarity} to the reference");
        let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{text:?}: a component differs by {worst}");
    }
}

#[tokio::test]
async fn a_text_gets_the_same_vector_alone_as_padded_in_a_batch() {
    let (texts, _) = reference();
    let model = model();
    let together = model.embed_blocking(&texts.iter().map(String::as_str).collect::<Vec<_>>()).expect("batch");
    for (text, in_batch) in texts.iter().zip(&together) {
        let alone = model.embed_blocking(&[text.as_str()]).expect("alone");
        let similarity = cosine(&alone[0], in_batch);
        assert!(similarity > 1.0 - 1e-5, "{text:?}: padding changed the vector (cosine {similarity})");
    }
}

#[tokio::test]
async fn texts_are_truncated_at_256_tokens_and_batches_padded_to_their_longest() {
    let model = model();
    let long = "word ".repeat(400);
    let counts = model.count_tokens(&["hello world", &long]).expect("tokens");
    assert_eq!(counts, vec![4, MAX_TOKENS], "[CLS] hello world [SEP]; the long text cut at 256, not 128");
    // Whatever follows the cut changes nothing.
    let a = format!("{long} the tail about cooking");
    let b = format!("{long} an entirely different ending on finance");
    let v = model.embed_blocking(&[&a, &b]).expect("embeds");
    assert!(cosine(&v[0], &v[1]) > 1.0 - 1e-6, "only the first 256 tokens count");
    // Before the cut, every token counts (the old 128 limit would ignore these).
    let words = "word ".repeat(150);
    let v = model.embed_blocking(&[&format!("{words} cooking"), &format!("{words} finance")]).expect("embeds");
    assert!(cosine(&v[0], &v[1]) < 1.0 - 1e-4, "token 151 still counts");
}

#[tokio::test]
async fn similar_meanings_rank_above_unrelated_texts() {
    let model = model();
    let query = "How do I bake bread at home?".to_owned();
    let documents: Vec<String> = [
        "A simple recipe for a homemade sourdough loaf",
        "Quarterly earnings beat analysts' expectations",
        "The football match ended in a draw",
        "Kneading dough and letting it rise before baking",
    ]
    .map(String::from)
    .to_vec();
    let mut texts = vec![query];
    texts.extend(documents.iter().cloned());
    let v = model.embed(&texts).await.expect("embeds");
    let mut ranked: Vec<(f32, &str)> =
        v[1..].iter().zip(&documents).map(|(d, t)| (dot(&v[0], d), t.as_str())).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let order: Vec<&str> = ranked.iter().map(|(_, t)| *t).collect();
    assert!(order[..2].contains(&"A simple recipe for a homemade sourdough loaf"), "{ranked:?}");
    assert!(order[..2].contains(&"Kneading dough and letting it rise before baking"), "{ranked:?}");
    assert!(ranked[0].0 > ranked[3].0 + 0.3, "a clear margin: {ranked:?}");
}

#[tokio::test]
async fn blank_texts_are_refused_and_no_texts_get_no_vectors() {
    let model = model();
    let err = model.embed(&["fine".into(), "   ".into()]).await.expect_err("blank");
    assert!(matches!(err, EmbedError::Invalid(ref m) if m.contains("text 1")), "{err}");
    assert!(model.embed(&[]).await.expect("nothing to do").is_empty());
    // A 10 MB text costs no more than its first 64 Ki characters.
    let huge = "lorem ipsum ".repeat(900_000);
    let started = Instant::now();
    let v = model.embed(&[huge]).await.expect("a huge text embeds");
    assert_eq!(v[0].len(), 384);
    eprintln!("a 10 MB text embedded in {:?}", started.elapsed());
}

#[tokio::test]
async fn calls_made_while_the_model_loads_wait_for_it() {
    let loading = BackgroundMiniLm::spawn(model_dir(), MiniLmOptions { batch_size: 4, threads: 1 });
    let texts: Vec<String> = (0..9).map(|i| format!("sentence number {i}")).collect();
    let (a, b) = tokio::join!(loading.embed(&texts), loading.embed(&texts[..3]));
    let (a, b) = (a.expect("waits, then embeds"), b.expect("both callers"));
    assert_eq!(loading.status(), EmbedderStatus::Ready);
    assert_eq!((a.len(), b.len()), (9, 3));
    let direct = model().embed_blocking(&["sentence number 4"]).expect("embeds");
    assert!(cosine(&a[4], &direct[0]) > 1.0 - 1e-5, "answers stay in input order across batches");
    assert!(cosine(&a[1], &b[1]) > 1.0 - 1e-5);
}

#[tokio::test]
async fn a_missing_model_fails_calls_naming_the_script() {
    let missing = BackgroundMiniLm::spawn(PathBuf::from("/nonexistent/minilm"), MiniLmOptions::default());
    let err = missing.embed(&["hello".into()]).await.expect_err("no model");
    assert!(matches!(err, EmbedError::Unavailable(ref m) if m.contains("scripts/model.sh")), "{err}");
    assert_eq!(
        missing.status(),
        EmbedderStatus::Unavailable("the model files are missing: run scripts/model.sh".into()),
        "the public reason names no path"
    );
    // A directory holding something else is refused for what it is.
    let dir = tempfile::tempdir().expect("dir");
    for file in ["tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(model_dir().join(file), dir.path().join(file)).expect("link");
    }
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "bert", "hidden_size": 768}"#).expect("write");
    let err = MiniLm::load(dir.path(), MiniLmOptions::default()).expect_err("not MiniLM");
    assert!(err.to_string().contains("config.json is not the expected model"), "{err}");
}

/// `/readyz` of a server until its embedder is no longer loading.
async fn embedder_report(server: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = reqwest::get(format!("{}/readyz", server.base)).await.expect("readyz");
        assert_eq!(reply.status(), StatusCode::OK, "the server is ready whatever the embedder");
        let body: Value = reply.json().await.expect("json");
        if body["embedder"]["status"] != "loading" {
            return body["embedder"].clone();
        }
        assert!(Instant::now() < deadline, "the embedder is still loading: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_server_without_the_model_starts_warns_and_reports_it_on_readyz() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut command = maestro(&db, Backend::Sqlite);
    command.env("MAESTRO_EMBEDDINGS_MODEL_DIR", db.dir().join("no-model-here"));
    let server = Server::start(command, &db.dir(), 1).await;
    let report = embedder_report(&server).await;
    assert_eq!(report["name"], "minilm/all-MiniLM-L6-v2@384");
    assert_eq!(report["status"], "unavailable");
    assert_eq!(report["detail"], "the model files are missing: run scripts/model.sh");
    let log = server.stop().await;
    assert!(log.contains("offline embedder unavailable") && log.contains("scripts/model.sh"), "{log}");
}

#[tokio::test]
async fn a_server_with_the_model_reports_it_ready() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut command = maestro(&db, Backend::Sqlite);
    command.env("MAESTRO_EMBEDDINGS_MODEL_DIR", model_dir());
    let server = Server::start(command, &db.dir(), 1).await;
    let report = embedder_report(&server).await;
    assert_eq!(report["status"], "ready", "{report}");
    assert!(report.get("detail").is_none(), "{report}");
    let log = server.stop().await;
    assert!(log.contains("offline embedder loaded"), "{log}");
}
