//! An OpenAI-compatible `/v1/embeddings` client (OpenAI, Ollama, vLLM, TEI, llama.cpp
//! server) behind [`maestro_core::embed::Embedder`].
//!
//! It goes through the same outbound client as the model providers (only the base URL's
//! origin is reachable; loopback and private addresses only when allowed) and retries as
//! they do (`retry.rs`: `x-should-retry`, then 408/409/429/5xx and connection
//! errors, `retry-after-ms`/`retry-after` honoured, else exponential backoff; an exhausted
//! quota never). Texts are sent in batches of at most
//! [`EmbeddingsConfig::batch_size`] inputs with `encoding_format: "float"`; each answer
//! is read leniently (no `usage`, as Ollama; no `object` fields; extra fields ignored),
//! its items put back in order by `index` (servers may answer out of order), and checked:
//! one vector per input, each of the configured dimension and finite, then normalised.
//! The API key is read for each request, sent only as a sensitive `Authorization`
//! header, and taken out of any message a server echoes.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt as _;
use maestro_core::embed::{EmbedError, Embedder, EmbedderInfo, normalise};
use maestro_outbound::{OutboundClient, OutboundError, StreamTimeouts, full_body};
use serde::Deserialize;

use crate::{ApiKey, describe, error_summary, read_capped, retry};

/// Default inputs per request (OpenAI accepts up to 2048; local servers prefer fewer).
pub const DEFAULT_BATCH_SIZE: usize = 64;
/// Default time for one request (connect, send, and the whole answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer accepted: 2048 vectors of 3072 numbers as JSON text fit.
const MAX_RESPONSE_BYTES: u64 = 256 << 20;

/// An OpenAI-compatible embeddings service (`[embeddings]` with `provider = "openai"`).
#[derive(Debug, Clone)]
pub struct EmbeddingsConfig {
    /// Base URL (`https://api.openai.com/v1`, `http://127.0.0.1:11434/v1`); requests go
    /// to `{base_url}/embeddings`, and only its origin is reachable.
    pub base_url: String,
    /// The service's name for the model (`text-embedding-3-small`, `nomic-embed-text`).
    pub model: String,
    /// Numbers per vector the model answers; any other length is an error.
    pub dimensions: u32,
    /// Whether to ask for `dimensions` in the request (OpenAI's `text-embedding-3-*`
    /// shorten their vectors on request; most other servers refuse the field).
    pub send_dimensions: bool,
    /// Most inputs per request.
    pub batch_size: usize,
    /// Its API key, when it needs one.
    pub api_key: Option<ApiKey>,
    /// Whether the base URL may be loopback or private (Ollama, vLLM or TEI on the host).
    pub allow_private: bool,
    /// Connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// One request, from sending it to the end of its answer.
    pub timeout: Duration,
    /// Retries of one batch.
    pub max_retries: u32,
}

impl EmbeddingsConfig {
    /// A service with the default batch size, timeouts and retries, no key, public
    /// addresses only, `dimensions` not sent.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, dimensions: u32) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            dimensions,
            send_dimensions: false,
            batch_size: DEFAULT_BATCH_SIZE,
            api_key: None,
            allow_private: false,
            connect_timeout: crate::DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            max_retries: crate::DEFAULT_MAX_RETRIES,
        }
    }
}

/// A configuration [`OpenAiEmbedder::new`] cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("embeddings: invalid {key}: {reason}")]
pub struct EmbeddingsSetupError {
    /// The setting.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

/// The embedder of an OpenAI-compatible service.
#[derive(Debug)]
pub struct OpenAiEmbedder {
    info: EmbedderInfo,
    config: EmbeddingsConfig,
    /// `{base_url}/embeddings`.
    url: String,
    client: OutboundClient,
}

impl OpenAiEmbedder {
    /// Checks the configuration and builds an outbound client allowed to reach the base
    /// URL's origin only.
    pub fn new(config: EmbeddingsConfig) -> Result<Self, EmbeddingsSetupError> {
        let bad = |key, reason: String| EmbeddingsSetupError { key, reason };
        if config.model.trim().is_empty() {
            return Err(bad("model", "expected the service's model name".into()));
        }
        if !(1..=65_536).contains(&config.dimensions) {
            return Err(bad("dimensions", format!("{} is not from 1 to 65536", config.dimensions)));
        }
        if !(1..=2048).contains(&config.batch_size) {
            return Err(bad("batch_size", format!("{} is not from 1 to 2048", config.batch_size)));
        }
        let (client, _) = crate::origin_client(
            "embeddings",
            &config.base_url,
            config.allow_private,
            "embeddings.base_url".into(),
            MAX_RESPONSE_BYTES,
        )
        .map_err(|reason| bad("base_url", reason))?;
        let url = format!("{}/embeddings", config.base_url.trim_end_matches('/'));
        let info =
            EmbedderInfo { provider: "openai".into(), model: config.model.clone(), dimensions: config.dimensions };
        Ok(Self { info, config, url, client })
    }

    /// One batch, retried as the model providers are.
    async fn batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let key =
            match &self.config.api_key {
                Some(source) => Some(source.read().ok_or_else(|| {
                    EmbedError::Failed("the embeddings API key is not available on this host".into())
                })?),
                None => None,
            };
        let redact = |message: &str| match &key {
            Some(key) if key.len() >= 4 => message.replace(key.as_str(), "<redacted>"),
            _ => message.to_owned(),
        };
        let mut body = serde_json::json!({ "model": self.config.model, "input": texts, "encoding_format": "float" });
        if self.config.send_dimensions {
            body["dimensions"] = self.config.dimensions.into();
        }
        let body = Bytes::from(body.to_string());
        let mut retry = 0;
        loop {
            let (failure, wait) = match self.send(body.clone(), key.as_deref()).await {
                Ok(answer) => return self.read(&answer, texts.len()).map_err(|e| redacted(e, &redact)),
                Err(Sent::Fatal(error)) => return Err(redacted(error, &redact)),
                Err(Sent::Again { message, wait }) => (message, wait),
            };
            if retry >= self.config.max_retries {
                return Err(EmbedError::Unavailable(redact(&format!(
                    "{} after {} attempts: {failure}",
                    self.config.model,
                    retry + 1
                ))));
            }
            tracing::info!(model = %self.config.model, attempt = retry + 1, error = %redact(&failure), "embedding request failed; retrying");
            tokio::time::sleep(wait.unwrap_or_else(|| retry::backoff(retry))).await;
            retry += 1;
        }
    }

    /// Sends one request and reads its whole answer.
    async fn send(&self, body: Bytes, key: Option<&str>) -> Result<Bytes, Sent> {
        let mut request = Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("maestro/", env!("CARGO_PKG_VERSION")))
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(full_body(body))
            .map_err(|e| Sent::Fatal(EmbedError::Failed(format!("cannot build the request: {e}"))))?;
        if let Some(key) = key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                Sent::Fatal(EmbedError::Failed("the embeddings API key is not a valid header value".into()))
            })?;
            value.set_sensitive(true);
            request.headers_mut().insert(http::header::AUTHORIZATION, value);
        }
        let timeouts = StreamTimeouts {
            connect: self.config.connect_timeout,
            head: self.config.timeout,
            body: Some(self.config.timeout),
        };
        let response = self.client.send_stream(request, timeouts).await.map_err(|e| match e {
            OutboundError::Denied { .. } | OutboundError::InvalidUri | OutboundError::RequestTooLarge { .. } => {
                Sent::Fatal(EmbedError::Failed(e.to_string()))
            }
            other => Sent::Again { message: describe(&other), wait: None },
        })?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let wait = retry::server_wait(&headers, SystemTime::now());
            let text =
                tokio::time::timeout(self.config.timeout, read_capped(response.into_body())).await.unwrap_or_default();
            let (message, quota) = error_summary(status, &text);
            let message = format!("status {}: {message}", status.as_u16());
            return Err(if quota {
                Sent::Fatal(EmbedError::Failed(format!("quota exhausted ({message})")))
            } else if retry::should_retry(status, &headers) {
                Sent::Again { message, wait }
            } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                // The server said not to retry.
                Sent::Fatal(EmbedError::Unavailable(message))
            } else if matches!(status.as_u16(), 400 | 413 | 422) {
                Sent::Fatal(EmbedError::Invalid(format!("the service refused the input ({message})")))
            } else {
                Sent::Fatal(EmbedError::Failed(format!("the service refused the request ({message})")))
            });
        }
        match response.into_body().collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e @ OutboundError::ResponseTooLarge { .. }) => Err(Sent::Fatal(EmbedError::Failed(e.to_string()))),
            Err(other) => Err(Sent::Again { message: describe(&other), wait: None }),
        }
    }

    /// The vectors of one answer, in input order, checked and normalised.
    fn read(&self, answer: &[u8], inputs: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let answer: Answer = serde_json::from_slice(answer)
            .map_err(|e| EmbedError::Failed(format!("the answer is not an embeddings list: {e}")))?;
        if answer.data.len() != inputs {
            return Err(EmbedError::Failed(format!(
                "the service answered {} vectors for {inputs} inputs",
                answer.data.len()
            )));
        }
        let expected = self.config.dimensions as usize;
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs];
        for (position, item) in answer.data.into_iter().enumerate() {
            // A server that sends no index answers in order.
            let index = item.index.unwrap_or(position);
            let slot = vectors
                .get_mut(index)
                .ok_or_else(|| EmbedError::Failed(format!("the answer's index {index} is out of range")))?;
            if slot.is_some() {
                return Err(EmbedError::Failed(format!("the answer has index {index} twice")));
            }
            let mut vector = item.embedding;
            if vector.len() != expected {
                return Err(EmbedError::Failed(format!(
                    "the model answered vectors of {} dimensions, not the configured {expected} (set [embeddings] \
                     dimensions to the model's)",
                    vector.len()
                )));
            }
            if vector.iter().any(|x| !x.is_finite()) || vector.iter().all(|&x| x == 0.0) {
                return Err(EmbedError::Failed(format!("the vector of input {index} is zero or not finite")));
            }
            normalise(&mut vector);
            *slot = Some(vector);
        }
        Ok(vectors.into_iter().map(|v| v.expect("every index was filled once: as many items as inputs")).collect())
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(EmbedError::Invalid(format!("text {i} is empty")));
        }
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.config.batch_size) {
            vectors.extend(self.batch(batch).await?);
        }
        Ok(vectors)
    }
}

/// What one request came to.
enum Sent {
    /// Not worth trying again.
    Fatal(EmbedError),
    /// Try again (after `wait` when the server said).
    Again { message: String, wait: Option<Duration> },
}

fn redacted(error: EmbedError, redact: &impl Fn(&str) -> String) -> EmbedError {
    match error {
        EmbedError::Invalid(m) => EmbedError::Invalid(redact(&m)),
        EmbedError::Failed(m) => EmbedError::Failed(redact(&m)),
        EmbedError::Unavailable(m) => EmbedError::Unavailable(redact(&m)),
    }
}

/// An embeddings answer: `{"data": [{"index": 0, "embedding": [...]}, …]}`; every other
/// field (`object`, `model`, `usage`) is optional and ignored.
#[derive(Debug, Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct Item {
    index: Option<usize>,
    embedding: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedder(dimensions: u32) -> OpenAiEmbedder {
        OpenAiEmbedder::new(EmbeddingsConfig::new("https://api.openai.com/v1", "m", dimensions)).expect("valid")
    }

    #[test]
    fn answers_are_put_in_index_order_and_normalised() {
        let answer = br#"{"data":[{"index":1,"embedding":[0,2]},{"index":0,"embedding":[3,4]}]}"#;
        let vectors = embedder(2).read(answer, 2).expect("valid answer");
        assert_eq!(vectors, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
    }

    #[test]
    fn answers_of_the_wrong_shape_are_refused_clearly() {
        let e = embedder(2);
        let cases: [(&[u8], usize, &str); 6] = [
            (br#"{"data":[{"index":0,"embedding":[1,2,3]}]}"#, 1, "3 dimensions, not the configured 2"),
            (br#"{"data":[{"index":0,"embedding":[1,2]}]}"#, 2, "1 vectors for 2 inputs"),
            (br#"{"data":[{"index":0,"embedding":[1,2]},{"index":0,"embedding":[1,2]}]}"#, 2, "index 0 twice"),
            (br#"{"data":[{"index":5,"embedding":[1,2]}]}"#, 1, "index 5 is out of range"),
            (br#"{"data":[{"index":0,"embedding":[0,0]}]}"#, 1, "zero or not finite"),
            (br#"{"data":[{"index":0,"embedding":"AAAA"}]}"#, 1, "not an embeddings list"),
        ];
        for (answer, inputs, expected) in cases {
            let err = e.read(answer, inputs).expect_err(expected);
            assert!(err.to_string().contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn setup_refuses_bad_settings_naming_them() {
        let config = |f: fn(&mut EmbeddingsConfig)| {
            let mut c = EmbeddingsConfig::new("https://api.openai.com/v1", "m", 8);
            f(&mut c);
            OpenAiEmbedder::new(c).expect_err("invalid").to_string()
        };
        assert!(config(|c| c.batch_size = 0).contains("batch_size"));
        assert!(config(|c| c.dimensions = 0).contains("dimensions"));
        assert!(config(|c| c.model = " ".into()).contains("model"));
        assert!(config(|c| c.base_url = "http://127.0.0.1:11434/v1".into()).contains("allow_private"));
        let mut key = EmbeddingsConfig::new("https://api.openai.com/v1", "m", 8);
        key.api_key = Some(ApiKey::fixed("sk-secret-123"));
        assert!(!format!("{:?}", OpenAiEmbedder::new(key).expect("valid")).contains("sk-secret-123"));
    }
}
