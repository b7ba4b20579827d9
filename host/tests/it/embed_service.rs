//! The OpenAI-compatible `/v1/embeddings` client against a fake server on 127.0.0.1
//! (`fake_llm`) answering in the wire formats of OpenAI, Ollama, vLLM and TEI: batches of
//! floats, answers put back in input order, retries as the model providers do, clear
//! refusals, checked dimensions, and an API key that goes where it must and nowhere else.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_core::embed::{EmbedError, Embedder};
use maestro_host::config::{Config, Env, Overrides, RawConfig};
use maestro_llm::ApiKey;
use maestro_llm::embeddings::{EmbeddingsConfig, OpenAiEmbedder};
use serde_json::{Value, json};

use crate::fake_embed::FakeEmbedder;
use crate::fake_llm::{FakeLlm, Recorded, Script};

/// The client for `fake`: 384 dimensions, `batch` inputs per request, one retry.
fn client(fake: &FakeLlm, batch: usize) -> OpenAiEmbedder {
    OpenAiEmbedder::new(EmbeddingsConfig {
        allow_private: true,
        batch_size: batch,
        max_retries: 1,
        timeout: Duration::from_secs(5),
        ..EmbeddingsConfig::new(fake.openai_base(), "text-embedding-3-small", 384)
    })
    .expect("valid setup")
}

/// The inputs of a recorded request.
fn inputs(request: &Recorded) -> Vec<String> {
    serde_json::from_value(request.body["input"].clone()).expect("input is a list of strings")
}

/// A vector the fake answers for `text`: the fake embedder's, scaled (the client
/// normalises).
fn raw_vector(text: &str) -> Vec<f32> {
    FakeEmbedder::vector(text).iter().map(|x| x * 3.0).collect()
}

/// OpenAI's answer to `request`, its items in reverse order (servers may reorder).
fn openai_answer(request: &Recorded) -> Script {
    let data: Vec<Value> = inputs(request)
        .iter()
        .enumerate()
        .rev()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": raw_vector(text)}))
        .collect();
    Script::json(
        200,
        json!({"object": "list", "data": data, "model": "text-embedding-3-small",
               "usage": {"prompt_tokens": 8, "total_tokens": 8}}),
    )
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("text number {i} about topic {}", i % 3)).collect()
}

#[tokio::test]
async fn sends_batches_of_floats_and_answers_in_input_order_normalised() {
    let fake = FakeLlm::start().await;
    fake.keep_alive();
    fake.respond_with(|r| Some(openai_answer(r)));
    let embedder = client(&fake, 2);
    assert_eq!(embedder.info().key(), "openai/text-embedding-3-small@384");
    let texts = texts(5);
    let vectors = embedder.embed(&texts).await.expect("embeds");
    let expected: Vec<Vec<f32>> = texts.iter().map(|t| FakeEmbedder::vector(t)).collect();
    for (got, want) in vectors.iter().zip(&expected) {
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "in order and of unit length");
    }
    let requests = fake.requests();
    assert_eq!(requests.iter().map(|r| inputs(r).len()).collect::<Vec<_>>(), vec![2, 2, 1]);
    for request in &requests {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/embeddings"));
        assert_eq!(request.body["model"], "text-embedding-3-small");
        assert_eq!(request.body["encoding_format"], "float");
        assert!(request.body.get("dimensions").is_none(), "not asked unless configured");
        assert_eq!(request.credential("authorization"), None, "no key configured, none sent");
    }
    assert_eq!(fake.connections(), 1, "one kept-alive connection for every batch");
    assert!(embedder.embed(&[]).await.expect("nothing to do").is_empty());
    assert_eq!(fake.request_count(), 3, "no request for no texts");
}

#[tokio::test]
async fn reads_the_answers_of_ollama_vllm_tei_and_servers_without_an_index() {
    let fake = FakeLlm::start().await;
    let embedder = client(&fake, 8);
    let texts = texts(2);
    let (a, b) = (raw_vector(&texts[0]), raw_vector(&texts[1]));
    let answers = [
        // Ollama: no usage.
        json!({"object": "list", "model": "nomic-embed-text",
               "data": [{"object": "embedding", "embedding": a, "index": 0},
                        {"object": "embedding", "embedding": b, "index": 1}]}),
        // vLLM: an id, a creation time, more usage fields.
        json!({"id": "embd-1", "object": "list", "created": 1_700_000_000, "model": "BAAI/bge-small-en-v1.5",
               "data": [{"index": 1, "object": "embedding", "embedding": b},
                        {"index": 0, "object": "embedding", "embedding": a}],
               "usage": {"prompt_tokens": 9, "total_tokens": 9, "completion_tokens": 0, "prompt_tokens_details": null}}),
        // TEI's OpenAI-compatible route.
        json!({"object": "list", "model": "BAAI/bge-small-en-v1.5",
               "data": [{"object": "embedding", "embedding": a, "index": 0},
                        {"object": "embedding", "embedding": b, "index": 1}],
               "usage": {"prompt_tokens": 9, "total_tokens": 9}}),
        // No index, no object: in order.
        json!({"data": [{"embedding": a}, {"embedding": b}]}),
    ];
    let expected = [FakeEmbedder::vector(&texts[0]), FakeEmbedder::vector(&texts[1])];
    for answer in answers {
        fake.push(Script::json(200, answer.clone()));
        let got = embedder.embed(&texts).await.unwrap_or_else(|e| panic!("{answer}: {e}"));
        for (g, e) in got.iter().zip(&expected) {
            assert!(g.iter().zip(e).all(|(x, y)| (x - y).abs() < 1e-6), "{answer}");
        }
    }
}

#[tokio::test]
async fn retries_429_and_5xx_as_the_model_providers_do_then_gives_up_as_unavailable() {
    let fake = FakeLlm::start().await;
    let mut config = EmbeddingsConfig::new(fake.openai_base(), "m", 384);
    (config.allow_private, config.max_retries) = (true, 2);
    let embedder = OpenAiEmbedder::new(config).expect("valid");
    fake.push(Script::json(429, json!({"error": {"message": "slow down"}})).header("retry-after-ms", "10"));
    fake.push(Script::json(503, json!({"error": "overloaded"})).header("retry-after", "0"));
    fake.respond_with(|r| Some(openai_answer(r)));
    let got = embedder.embed(&texts(1)).await.expect("the third attempt answers");
    assert_eq!(got.len(), 1);
    assert_eq!(fake.request_count(), 3);

    let down = FakeLlm::start().await;
    down.always(Script::json(502, json!({"error": {"message": "bad gateway"}})).header("retry-after-ms", "1"));
    let err = client(&down, 8).embed(&texts(1)).await.expect_err("down");
    assert!(
        matches!(err, EmbedError::Unavailable(ref m) if m.contains("2 attempts") && m.contains("bad gateway")),
        "{err}"
    );
    assert_eq!(down.request_count(), 2, "one retry configured");
}

#[tokio::test]
async fn refusals_are_not_retried_and_say_why() {
    let fake = FakeLlm::start().await;
    let embedder = client(&fake, 8);
    let cases = [
        (
            Script::json(
                400,
                json!({"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error"}}),
            ),
            "invalid embedding request: the service refused the input (status 400: This model's maximum context length is 8192 tokens)",
        ),
        (
            Script::json(404, json!({"error": "model \"nomic\" not found, try pulling it first"})),
            "embedding failed: the service refused the request (status 404: model \"nomic\" not found, try pulling it first)",
        ),
        (
            Script::json(
                429,
                json!({"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}),
            ),
            "embedding failed: quota exhausted (status 429: You exceeded your current quota)",
        ),
        (
            Script::json(200, json!({"data": [{"index": 0, "embedding": vec![0.5f32; 768]}]})),
            "embedding failed: the model answered vectors of 768 dimensions, not the configured 384 (set [embeddings] dimensions to the model's)",
        ),
        (
            Script::json(200, json!({"detail": "not found"})),
            "embedding failed: the answer is not an embeddings list: missing field `data`",
        ),
    ];
    for (i, (script, expected)) in cases.into_iter().enumerate() {
        fake.push(script);
        let err = embedder.embed(&texts(1)).await.expect_err(expected);
        assert!(err.to_string().starts_with(expected), "{err}\nexpected: {expected}");
        assert_eq!(fake.request_count(), i + 1, "not retried: {expected}");
    }
    let err = embedder.embed(&["ok".into(), "\n".into()]).await.expect_err("blank");
    assert_eq!(err.to_string(), "invalid embedding request: text 1 is empty");
    assert_eq!(fake.request_count(), 5, "refused before any request");
}

#[tokio::test]
async fn the_api_key_is_read_for_each_request_sent_as_a_bearer_and_never_echoed() {
    let fake = FakeLlm::start().await;
    let key = Arc::new(Mutex::new("sk-first-1234".to_owned()));
    let read = key.clone();
    let embedder = OpenAiEmbedder::new(EmbeddingsConfig {
        allow_private: true,
        send_dimensions: true,
        api_key: Some(ApiKey::new(move || Some(read.lock().expect("key").clone()))),
        ..EmbeddingsConfig::new(fake.openai_base(), "text-embedding-3-large", 384)
    })
    .expect("valid");
    fake.respond_with(|r| Some(openai_answer(r)));
    embedder.embed(&texts(1)).await.expect("embeds");
    *key.lock().expect("key") = "sk-rotated-5678".into();
    embedder.embed(&texts(1)).await.expect("embeds");
    let requests = fake.requests();
    assert_eq!(requests[0].credential("authorization"), Some("Bearer sk-first-1234"));
    assert_eq!(requests[1].credential("authorization"), Some("Bearer sk-rotated-5678"), "a rotated key is used");
    assert_eq!(requests[0].body["dimensions"], 384, "asked for when configured");

    fake.push(Script::json(401, json!({"error": {"message": "Incorrect API key provided: sk-rotated-5678"}})));
    let err = embedder.embed(&texts(1)).await.expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("Incorrect API key provided: <redacted>"), "{message}");
    assert!(!message.contains("sk-rotated") && !format!("{embedder:?}").contains("sk-rotated"), "{message}");
}

#[tokio::test]
async fn the_server_builds_the_configured_service_embedder_with_its_key_from_the_environment() {
    let fake = FakeLlm::start().await;
    fake.respond_with(|r| Some(openai_answer(r)));
    let text = format!(
        "[embeddings]\nprovider = \"openai\"\nbase_url = \"{}\"\nallow_private = true\nmodel = \"nomic-embed-text\"\n\
         dimensions = 384\nbatch_size = 3\napi_key = \"env:EMBED_KEY\"\n",
        fake.openai_base()
    );
    let raw = RawConfig::parse(&text, std::path::Path::new("t.toml")).expect("parses");
    let config = Config::from_raw(raw, &Env::new(), &Overrides::default()).expect("valid");
    let err = maestro_host::open_embedder(&config, &Env::new()).expect_err("the key is not set");
    assert!(format!("{err:#}").contains("env:EMBED_KEY"), "{err:#}");
    let env: Env = [("EMBED_KEY".to_owned(), "sk-env-4321".to_owned())].into();
    let embedder = maestro_host::open_embedder(&config, &env).expect("builds");
    assert_eq!(embedder.info().key(), "openai/nomic-embed-text@384");
    assert_eq!(embedder.embed(&texts(4)).await.expect("embeds").len(), 4);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "batches of 3");
    assert_eq!(requests[0].credential("authorization"), Some("Bearer sk-env-4321"));
}

#[test]
fn the_shipped_openai_example_parses_and_documents_every_key() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/maestro.toml");
    let text = std::fs::read_to_string(path).expect("config/maestro.toml");
    let start = text.find("\n[embeddings]\n").expect("an [embeddings] section");
    let section = &text[start + 1..];
    let section = &section[..section[1..].find("\n[").map_or(section.len(), |i| i + 1)];
    // The commented example lines, uncommented, their trailing comments dropped.
    let example: String = section
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| {
            line.split_once(" = ").is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        })
        .map(|line| format!("{}\n", line.split("  #").next().unwrap_or(line).trim_end()))
        .collect();
    let toml = format!("[embeddings]\nprovider = \"openai\"\n{example}");
    let raw = RawConfig::parse(&toml, std::path::Path::new("example.toml")).expect("the example parses");
    let config = Config::from_raw(raw, &Env::new(), &Overrides::default()).expect("the example is valid");
    let maestro_host::config::EmbeddingSettings::OpenAi(service) = config.embeddings else { panic!("openai") };
    assert_eq!((service.model.as_str(), service.dimensions), ("text-embedding-3-small", 1536));
    for key in
        ["base_url", "model", "dimensions", "send_dimensions", "api_key", "allow_private", "timeout", "max_retries"]
    {
        assert!(example.contains(&format!("{key} = ")), "the example documents {key}");
    }
}
