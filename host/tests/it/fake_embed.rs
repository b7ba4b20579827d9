//! A deterministic fake embedder for tests that need vectors but not a real model
//! (memories, search, the runner's recall): each lowercase word of a text is hashed
//! (FNV-1a, stable across runs and machines) to one of 384 dimensions with a sign, the
//! counts are summed and the vector L2-normalised. Texts that share words therefore get
//! similar vectors (cosine = shared word weight), texts that share none are near
//! orthogonal, and the same text always gets the same vector.
//!
//! ```ignore
//! let embedder = FakeEmbedder::new();
//! let v = embedder.embed(&["the cat sat".into(), "a cat sat down".into()]).await?;
//! assert!(dot(&v[0], &v[1]) > 0.5);
//! ```
#![allow(dead_code)] // a toolkit: each test uses part of it

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use maestro_core::embed::{EmbedError, Embedder, EmbedderInfo, EmbedderStatus, normalise};

/// The fake's dimension, the offline model's.
pub(crate) const DIMENSIONS: usize = 384;

/// A deterministic bag-of-words embedder (see the module docs).
#[derive(Debug)]
pub(crate) struct FakeEmbedder {
    info: EmbedderInfo,
    /// Calls answered so far.
    calls: AtomicUsize,
    /// Texts embedded so far.
    texts: AtomicUsize,
    /// When set, every call fails as unavailable with this reason.
    unavailable: Mutex<Option<String>>,
}

impl Default for FakeEmbedder {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeEmbedder {
    /// `fake/hash-words@384`.
    pub(crate) fn new() -> Self {
        Self::named("hash-words")
    }

    /// The same vectors under another model name (a test changing the configured
    /// embedder: vectors of different [`EmbedderInfo`]s are never compared).
    pub(crate) fn named(model: &str) -> Self {
        Self {
            info: EmbedderInfo { provider: "fake".into(), model: model.into(), dimensions: DIMENSIONS as u32 },
            calls: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
            unavailable: Mutex::new(None),
        }
    }

    /// The vector of one text (what [`Embedder::embed`] answers for it).
    pub(crate) fn vector(text: &str) -> Vec<f32> {
        let mut vector = vec![0.0f32; DIMENSIONS];
        let mut words = 0;
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            let hash = fnv1a(word.to_lowercase().as_bytes());
            let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
            vector[(hash % DIMENSIONS as u64) as usize] += sign;
            words += 1;
        }
        if words == 0 {
            // Only punctuation: still a stable, non-zero vector.
            vector[(fnv1a(text.as_bytes()) % DIMENSIONS as u64) as usize] = 1.0;
        }
        normalise(&mut vector);
        vector
    }

    /// Makes every later call fail as unavailable (a missing model, a service down).
    pub(crate) fn fail_with(&self, reason: &str) {
        *self.unavailable.lock().expect("fake embedder state") = Some(reason.to_owned());
    }

    /// Makes later calls answer again.
    pub(crate) fn recover(&self) {
        *self.unavailable.lock().expect("fake embedder state") = None;
    }

    /// Calls answered so far (failed ones included).
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Texts embedded so far.
    pub(crate) fn texts(&self) -> usize {
        self.texts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Embedder for FakeEmbedder {
    fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(reason) = self.unavailable.lock().expect("fake embedder state").clone() {
            return Err(EmbedError::Unavailable(reason));
        }
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(EmbedError::Invalid(format!("text {i} is empty")));
        }
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        Ok(texts.iter().map(|t| Self::vector(t)).collect())
    }

    fn status(&self) -> EmbedderStatus {
        match self.unavailable.lock().expect("fake embedder state").clone() {
            Some(reason) => EmbedderStatus::Unavailable(reason),
            None => EmbedderStatus::Ready,
        }
    }
}

/// 64-bit FNV-1a: tiny, stable, good enough to spread words over 384 buckets.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[tokio::test]
async fn the_fake_is_deterministic_unit_length_and_similar_for_shared_words() {
    use maestro_core::embed::dot;
    let fake = FakeEmbedder::new();
    let texts: Vec<String> = ["The cat sat on the mat", "the cat sat on a mat today", "quarterly revenue grew", "!!!"]
        .map(String::from)
        .to_vec();
    let v = fake.embed(&texts).await.expect("embeds");
    assert_eq!(v, fake.embed(&texts).await.expect("again"), "deterministic");
    for vector in &v {
        assert_eq!(vector.len(), DIMENSIONS);
        assert!((dot(vector, vector) - 1.0).abs() < 1e-5, "unit length");
    }
    assert!(dot(&v[0], &v[1]) > 0.6, "shared words: {}", dot(&v[0], &v[1]));
    assert!(dot(&v[0], &v[2]).abs() < 0.3, "no shared words: {}", dot(&v[0], &v[2]));
    assert_eq!(fake.calls(), 2);
    assert!(matches!(fake.embed(&[" ".into()]).await, Err(EmbedError::Invalid(_))));
    fake.fail_with("down");
    assert!(matches!(fake.embed(&texts).await, Err(EmbedError::Unavailable(_))));
    assert_eq!(fake.status(), EmbedderStatus::Unavailable("down".into()));
}
