//! Hybrid retrieval's pure part: reciprocal rank fusion of a full-text (BM25) ranking
//! and a vector ranking, and an optional recency decay applied after fusion.
//!
//! Reciprocal rank fusion (Cormack, Clarke and Büttcher, 2009) scores a candidate
//! `Σ 1 / (k + rank)` over the rankings it appears in (ranks from 1, `k` =
//! [`RRF_K`]), so it needs no calibration between BM25 scores and cosine similarities
//! and a candidate both sides found beats one found by a single side at the same ranks.
//! Each [`Fused`] hit keeps its rank on each side (`None` where that side did not
//! return it) for debugging and for the API's `ranks`. Ties are broken by the best
//! rank, then by the key, so the result does not depend on which list is called
//! "lexical" and which "vector".
//!
//! [`decay`] multiplies each fused score by `0.5^(age / half_life)` (age from the
//! candidate's timestamp to now; a timestamp in the future counts as age 0), except for
//! pinned candidates, and re-sorts.

use std::collections::HashMap;
use std::hash::Hash;

use chrono::{DateTime, Utc};

/// The fusion constant `k` (the value the paper found robust, and the common default).
pub const RRF_K: f64 = 60.0;

/// One fused candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused<K> {
    /// What was found (a memory id, a document id, …).
    pub key: K,
    /// Its fused score (after decay, when applied): higher ranks first.
    pub score: f64,
    /// Its 1-based rank in the full-text ranking, `None` when that side missed it.
    pub lexical_rank: Option<u32>,
    /// Its 1-based rank in the vector ranking, `None` when that side missed it.
    pub vector_rank: Option<u32>,
}

impl<K> Fused<K> {
    /// The better of its two ranks.
    pub fn best_rank(&self) -> u32 {
        self.lexical_rank.into_iter().chain(self.vector_rank).min().unwrap_or(u32::MAX)
    }
}

/// Fuses two rankings (best first; a key repeated within one list counts at its first
/// position) by reciprocal rank with constant `k`. Returns every candidate, best first.
pub fn fuse<K: Eq + Hash + Ord + Clone>(lexical: &[K], vector: &[K], k: f64) -> Vec<Fused<K>> {
    let mut by_key: HashMap<K, Fused<K>> = HashMap::with_capacity(lexical.len() + vector.len());
    for (side, list) in [(Side::Lexical, lexical), (Side::Vector, vector)] {
        for (index, key) in list.iter().enumerate() {
            let rank = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let entry = by_key.entry(key.clone()).or_insert_with(|| Fused {
                key: key.clone(),
                score: 0.0,
                lexical_rank: None,
                vector_rank: None,
            });
            let slot = match side {
                Side::Lexical => &mut entry.lexical_rank,
                Side::Vector => &mut entry.vector_rank,
            };
            if slot.is_none() {
                *slot = Some(rank);
                entry.score += 1.0 / (k + f64::from(rank));
            }
        }
    }
    let mut fused: Vec<Fused<K>> = by_key.into_values().collect();
    sort(&mut fused);
    fused
}

#[derive(Clone, Copy)]
enum Side {
    Lexical,
    Vector,
}

/// Best first: score, then best rank, then key.
fn sort<K: Ord>(fused: &mut [Fused<K>]) {
    fused.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then_with(|| a.best_rank().cmp(&b.best_rank())).then_with(|| a.key.cmp(&b.key))
    });
}

/// The factor recency decay applies to something `age` old: `0.5^(age / half_life)`,
/// 1 for an age of zero or less (a zero half-life decays nothing).
pub fn decay_factor(age: chrono::Duration, half_life: chrono::Duration) -> f64 {
    let (age, half) = (age.num_milliseconds(), half_life.num_milliseconds());
    if age <= 0 || half <= 0 {
        return 1.0;
    }
    0.5f64.powf(age as f64 / half as f64)
}

/// Applies recency decay after fusion and re-sorts: `when(key)` gives a candidate's time
/// (e.g. last update) and whether it is pinned (pinned candidates keep their score).
/// A candidate `when` knows nothing of (`None`) keeps its score.
pub fn decay<K: Ord>(
    fused: &mut [Fused<K>],
    now: DateTime<Utc>,
    half_life: chrono::Duration,
    when: impl Fn(&K) -> Option<(DateTime<Utc>, bool)>,
) {
    for hit in fused.iter_mut() {
        if let Some((at, pinned)) = when(&hit.key)
            && !pinned
        {
            hit.score *= decay_factor(now - at, half_life);
        }
    }
    sort(fused);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_hit_on_both_sides_outranks_hits_on_one_side() {
        let fused = fuse(&["a", "b", "c"], &["c", "d"], RRF_K);
        let keys: Vec<&str> = fused.iter().map(|f| f.key).collect();
        assert_eq!(keys[0], "c");
        let c = &fused[0];
        assert_eq!((c.lexical_rank, c.vector_rank), (Some(3), Some(1)));
        assert!((c.score - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-12);
        // a (lexical 1) and d (vector 2): a first.
        assert_eq!(keys, vec!["c", "a", "b", "d"]);
        let d = fused.iter().find(|f| f.key == "d").expect("d");
        assert_eq!((d.lexical_rank, d.vector_rank), (None, Some(2)));
    }

    #[test]
    fn a_key_repeated_in_one_list_counts_once_at_its_first_rank() {
        let fused = fuse(&["a", "a", "b"], &[], RRF_K);
        assert_eq!(fused.len(), 2);
        assert_eq!(fused[0].lexical_rank, Some(1));
        assert!((fused[0].score - 1.0 / 61.0).abs() < 1e-12);
        assert_eq!(fused[1].lexical_rank, Some(3));
    }

    #[test]
    fn decay_halves_per_half_life_and_spares_pinned_and_unknown_candidates() {
        let now = DateTime::from_timestamp_millis(10 * 86_400_000).expect("time");
        let day = chrono::Duration::days(1);
        let mut fused = fuse(&[1, 2, 3], &[], RRF_K);
        let before: Vec<f64> = fused.iter().map(|f| f.score).collect();
        decay(&mut fused, now, day, |k| match k {
            1 => Some((now - day * 2, false)),
            2 => Some((now - day * 30, true)),
            _ => None,
        });
        let score = |k: i32| fused.iter().find(|f| f.key == k).expect("key").score;
        assert!((score(1) - before[0] / 4.0).abs() < 1e-12);
        assert_eq!(score(2), before[1]);
        assert_eq!(score(3), before[2]);
        assert_eq!(fused[0].key, 2, "the pinned one now leads");
        assert_eq!(decay_factor(-day, day), 1.0);
        assert_eq!(decay_factor(day, chrono::Duration::zero()), 1.0);
    }

    fn ranking() -> impl Strategy<Value = Vec<u16>> {
        proptest::collection::vec(0u16..40, 0..30)
    }

    proptest! {
        #[test]
        fn fusion_does_not_depend_on_which_side_is_which(a in ranking(), b in ranking()) {
            let ab = fuse(&a, &b, RRF_K);
            let ba = fuse(&b, &a, RRF_K);
            prop_assert_eq!(ab.len(), ba.len());
            for (x, y) in ab.iter().zip(&ba) {
                prop_assert_eq!(x.key, y.key);
                prop_assert!((x.score - y.score).abs() < 1e-12);
                prop_assert_eq!(x.lexical_rank, y.vector_rank);
                prop_assert_eq!(x.vector_rank, y.lexical_rank);
            }
        }

        #[test]
        fn every_candidate_appears_once_with_its_first_ranks_and_best_first(a in ranking(), b in ranking()) {
            let fused = fuse(&a, &b, RRF_K);
            let mut keys: Vec<u16> = a.iter().chain(&b).copied().collect();
            keys.sort();
            keys.dedup();
            let mut got: Vec<u16> = fused.iter().map(|f| f.key).collect();
            got.sort();
            prop_assert_eq!(got, keys);
            for f in &fused {
                let first = |list: &[u16]| list.iter().position(|k| *k == f.key).map(|i| i as u32 + 1);
                prop_assert_eq!(f.lexical_rank, first(&a));
                prop_assert_eq!(f.vector_rank, first(&b));
            }
            for pair in fused.windows(2) {
                prop_assert!(pair[0].score >= pair[1].score);
            }
        }

        #[test]
        fn both_sides_at_given_ranks_beat_one_side_at_the_same_rank(r1 in 1u32..500, r2 in 1u32..500) {
            let both = 1.0 / (RRF_K + f64::from(r1)) + 1.0 / (RRF_K + f64::from(r2));
            let one = 1.0 / (RRF_K + f64::from(r1.min(r2)));
            prop_assert!(both > one);
            // and in a fusion: key 0 at lexical r1 and vector r2, key 1 at vector r1 alone
            prop_assume!(r1 != r2);
            let filler = |base: u32, len: u32| -> Vec<u32> { (base..base + len).collect() };
            let mut lexical = filler(10_000, r1 - 1);
            lexical.push(0);
            let mut vector = filler(20_000, r1.max(r2));
            vector[r2 as usize - 1] = 0;
            vector[r1 as usize - 1] = 1;
            let fused = fuse(&lexical, &vector, RRF_K);
            let position = |key: u32| fused.iter().position(|f| f.key == key).expect("fused");
            prop_assert!(position(0) < position(1));
        }

        #[test]
        fn decay_never_raises_a_score_and_keeps_pinned_ones(ages in proptest::collection::vec((0i64..1_000_000, any::<bool>()), 1..20)) {
            let now = DateTime::from_timestamp_millis(2_000_000).expect("time");
            let keys: Vec<usize> = (0..ages.len()).collect();
            let mut fused = fuse(&keys, &[], RRF_K);
            let before: HashMap<usize, f64> = fused.iter().map(|f| (f.key, f.score)).collect();
            decay(&mut fused, now, chrono::Duration::milliseconds(100_000), |k| {
                let (age, pinned) = ages[*k];
                Some((now - chrono::Duration::milliseconds(age), pinned))
            });
            for f in &fused {
                prop_assert!(f.score <= before[&f.key]);
                if ages[f.key].1 { prop_assert_eq!(f.score, before[&f.key]); }
            }
            for pair in fused.windows(2) {
                prop_assert!(pair[0].score >= pair[1].score);
            }
        }
    }
}
