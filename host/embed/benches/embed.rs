//! Offline embedder benchmark: all-MiniLM-L6-v2 texts per second and milliseconds per
//! batch at batch sizes 1, 8 and 32, beside two floors measured in the same run:
//! tokenisation alone, and the model's arithmetic at candle's bare matrix-product rate on
//! this machine. Prints figures, never asserts timings. It lives in this crate rather than
//! among the host's benches because it needs only candle and the model: its release
//! build skips wasmtime, typst and the rest of the host.
//!
//! `scripts/model.sh` first, then
//! `MAESTRO_EMBEDDINGS_MODEL_DIR=$(scripts/model.sh) cargo bench -p maestro-embed --bench embed`
//! (without the variable, the directory `scripts/model.sh` uses by default).
//!
//! Method notes:
//! - Texts: 256 English sentences of 8 to 40 words (about 12 to 55 tokens, 27 on
//!   average), made deterministically from a word list; every case embeds the same ones.
//! - A case runs one warm-up pass, then embeds every text in batches of its size through
//!   `MiniLm::embed_blocking` (the work the async `embed` hands to its pool: tokenise,
//!   pad to the batch's longest, forward, pool, normalise), for at least the window.
//! - The arithmetic floor: the encoder's matrix products per token (6 layers of
//!   Q, K, V, output and the two feed-forward products, 2·10.6 M FLOPs, plus attention
//!   scores and mixing, 4·n·384 per layer for n tokens) at the rate candle multiplies
//!   two f32 matrices of the feed-forward shape (`[tokens, 384] × [384, 1536]`) on the
//!   same threads. Real inference also runs layer norms, GELU, softmax, the embedding
//!   gather and the copies between them, so it cannot reach the floor; the ratio says how
//!   much goes there.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use maestro_embed::{MiniLm, MiniLmOptions};

const WINDOW: Duration = Duration::from_secs(3);
const TEXTS: usize = 256;
const HIDDEN: usize = 384;
const FFN: usize = 1536;
const LAYERS: usize = 6;

fn main() {
    let dir = std::env::var("MAESTRO_EMBEDDINGS_MODEL_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp/maestro-cache/models/all-minilm-l6-v2-0.1.0"), PathBuf::from);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("cores: {cores}; model: {}", dir.display());
    let texts = sentences(TEXTS);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    let started = Instant::now();
    let model = MiniLm::load(&dir, MiniLmOptions { batch_size: 32, threads: 0 })
        .unwrap_or_else(|e| panic!("{e} (run scripts/model.sh first)"));
    println!("load: {:.0} ms (read and copy 91 MB of weights, build the tokenizer)", ms(started.elapsed()));

    let tokens: Vec<usize> = model.count_tokens(&refs).expect("tokenise");
    let total_tokens: usize = tokens.iter().sum();
    let mean_tokens = total_tokens as f64 / TEXTS as f64;
    println!(
        "texts: {TEXTS}, tokens per text {}..{} (mean {mean_tokens:.1}, [CLS] and [SEP] included)\n",
        tokens.iter().min().expect("texts"),
        tokens.iter().max().expect("texts")
    );

    // Floor 1: tokenisation alone.
    let rate = repeat(|| {
        model.count_tokens(&refs).expect("tokenise");
    });
    println!("tokenisation alone: {:>9.0} texts/s", rate * TEXTS as f64);

    // Floor 2: the arithmetic at candle's bare matrix-product rate, on the same threads.
    let flops_per_token = |n: f64| {
        let per_layer = 2.0 * (4.0 * (HIDDEN * HIDDEN) as f64 + 2.0 * (HIDDEN * FFN) as f64) + 4.0 * n * HIDDEN as f64;
        LAYERS as f64 * per_layer
    };
    let rows = 32 * mean_tokens.round() as usize;
    let gflops = matmul_gflops(rows);
    let model_gflop = flops_per_token(mean_tokens) * total_tokens as f64 / 1e9;
    let floor_rate = TEXTS as f64 / (model_gflop / gflops);
    println!(
        "candle f32 matmul [{rows}x{HIDDEN}]x[{HIDDEN}x{FFN}]: {gflops:.1} GFLOP/s -> the model's {:.1} MFLOP per token \
         allow at most {floor_rate:.0} texts/s\n",
        flops_per_token(mean_tokens) / 1e6
    );

    println!(
        "{:>6} {:>8} {:>10} {:>12} {:>12} {:>10}",
        "batch", "threads", "texts/s", "ms/batch", "tokens/s", "vs floor"
    );
    for (batch, threads) in [(1, 0), (8, 0), (32, 0), (32, 1)] {
        let other;
        let model = if (batch, threads) == (32, 0) {
            &model
        } else {
            other = MiniLm::load(&dir, MiniLmOptions { batch_size: batch, threads }).expect("load");
            &other
        };
        let passes = repeat(|| {
            for chunk in refs.chunks(batch) {
                model.embed_blocking(chunk).expect("embed");
            }
        });
        let texts_per_s = passes * TEXTS as f64;
        let batches = TEXTS.div_ceil(batch) as f64;
        println!(
            "{batch:>6} {:>8} {texts_per_s:>10.1} {:>12.2} {:>12.0} {:>9.0}%",
            model.threads(),
            1000.0 / (passes * batches),
            passes * total_tokens as f64,
            100.0 * texts_per_s / floor_rate
        );
    }
}

/// Runs `f` once to warm up, then repeatedly for at least [`WINDOW`]; runs per second.
fn repeat(mut f: impl FnMut()) -> f64 {
    f();
    let started = Instant::now();
    let mut runs = 0u32;
    while started.elapsed() < WINDOW {
        f();
        runs += 1;
    }
    f64::from(runs) / started.elapsed().as_secs_f64()
}

/// Candle's f32 matrix-product rate for `[rows, 384] × [384, 1536]`, in GFLOP/s.
fn matmul_gflops(rows: usize) -> f64 {
    let device = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (rows, HIDDEN), &device).expect("a");
    let b = Tensor::randn(0f32, 1.0, (HIDDEN, FFN), &device).expect("b");
    let per_s = repeat(|| {
        a.matmul(&b).expect("matmul");
    });
    per_s * 2.0 * (rows * HIDDEN * FFN) as f64 / 1e9
}

/// `n` deterministic English sentences of 8 to 40 words.
fn sentences(n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "agent",
        "remembers",
        "what",
        "users",
        "asked",
        "about",
        "their",
        "quarterly",
        "report",
        "and",
        "schedules",
        "a",
        "meeting",
        "with",
        "finance",
        "team",
        "to",
        "review",
        "budget",
        "for",
        "next",
        "year",
        "while",
        "document",
        "describes",
        "how",
        "deploy",
        "service",
        "on",
        "two",
        "cores",
        "memory",
        "search",
        "returns",
        "relevant",
        "notes",
        "from",
        "earlier",
        "sessions",
        "customer",
        "prefers",
        "short",
        "answers",
        "in",
        "german",
        "invoice",
        "was",
        "paid",
        "late",
        "because",
        "bank",
        "holiday",
        "project",
        "deadline",
        "moved",
        "friday",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let words = 8 + (next() % 33) as usize;
            let mut text: Vec<&str> = (0..words).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect();
            text[0] = "The";
            format!("{}.", text.join(" "))
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
