//! Embeddings: turning text into unit-length vectors for semantic search and memory.
//!
//! An [`Embedder`] is one model behind one port: the built-in offline all-MiniLM-L6-v2
//! (run in process, 384 dimensions) or an OpenAI-compatible `/v1/embeddings` service
//! (OpenAI, Ollama, vLLM, TEI). Every stored vector records which embedder produced it
//! ([`EmbedderInfo`]); vectors of different embedders are never compared (changing the
//! configured embedder re-embeds what is stored, in the background).

use std::fmt;

use async_trait::async_trait;

/// Which embedder, model and dimension produced a vector: stored beside every vector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmbedderInfo {
    /// The kind of embedder: `minilm` (built in) or `openai` (an OpenAI-compatible
    /// service), or `fake` in tests.
    pub provider: String,
    /// The model's name as the provider knows it (e.g. `all-MiniLM-L6-v2`,
    /// `text-embedding-3-small`).
    pub model: String,
    /// How many numbers each vector has.
    pub dimensions: u32,
}

impl EmbedderInfo {
    /// `provider/model@dimensions`: one string naming the vector space, for logs and
    /// for comparing a stored vector's origin with the configured embedder.
    pub fn key(&self) -> String {
        format!("{}/{}@{}", self.provider, self.model, self.dimensions)
    }
}

impl fmt::Display for EmbedderInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Why texts could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The request is malformed (e.g. an empty text, too many texts in one call).
    #[error("invalid embedding request: {0}")]
    Invalid(String),
    /// The model or service failed, or answered something that is not an embedding of
    /// the expected dimension (the message never carries secrets).
    #[error("embedding failed: {0}")]
    Failed(String),
    /// The service is unavailable or refused for now (retry later).
    #[error("embedding service unavailable: {0}")]
    Unavailable(String),
}

/// One embedding model. Implementations batch and retry internally as they need;
/// callers pass any number of texts.
#[async_trait]
pub trait Embedder: Send + Sync + fmt::Debug {
    /// Which embedder this is (constant for its lifetime).
    fn info(&self) -> &EmbedderInfo;
    /// One vector per text, in order, each of [`EmbedderInfo::dimensions`] numbers and of
    /// unit length (L2-normalised), so that the inner product is the cosine similarity.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
    /// Whether it can embed now, for readiness reports (`/readyz`); ready unless the
    /// implementation says otherwise (a model still loading, or missing).
    fn status(&self) -> EmbedderStatus {
        EmbedderStatus::Ready
    }
}

/// Whether an embedder can embed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedderStatus {
    /// Calls are answered.
    Ready,
    /// The model is loading; calls wait for it.
    Loading,
    /// Calls fail with [`EmbedError::Unavailable`]: why, for operators (never a secret,
    /// never a path).
    Unavailable(String),
}

/// Scales `vector` to unit length in place (a zero vector stays zero).
pub fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in vector.iter_mut() {
            *x /= norm;
        }
    }
}

/// The inner product of two vectors of equal length (the cosine similarity of unit
/// vectors). Written as a plain loop over fixed-width chunks so the compiler vectorises
/// it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_vectors_have_unit_length_and_zero_stays_zero() {
        let mut v = vec![3.0, 4.0];
        normalise(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut zero = vec![0.0; 4];
        normalise(&mut zero);
        assert_eq!(zero, vec![0.0; 4]);
    }

    #[test]
    fn dot_matches_the_naive_sum_for_lengths_around_the_chunk_width() {
        for len in [0, 1, 7, 8, 9, 17, 384] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn the_key_names_provider_model_and_dimension() {
        let info = EmbedderInfo { provider: "minilm".into(), model: "all-MiniLM-L6-v2".into(), dimensions: 384 };
        assert_eq!(info.key(), "minilm/all-MiniLM-L6-v2@384");
    }
}
