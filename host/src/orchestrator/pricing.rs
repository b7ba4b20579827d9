//! What model calls cost: the worst case a hold reserves (the prompt's token bound plus
//! `max_tokens`, at the dearest price of the model's fallback chain, since any model of
//! the chain may answer), `max_tokens` lowered to fit a run's remaining budget, and the
//! settlement (reported usage × the answering model's price, rounded up like
//! [`ModelPrice::cost`]). A model without a price costs nothing (logged once per model).

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use maestro_core::llm::{ModelInfo, Usage};

use crate::config::ModelPrice;

/// Prices by configured model id.
#[derive(Debug, Default)]
pub(crate) struct Pricing {
    prices: Vec<ModelPrice>,
    warned: Mutex<HashSet<String>>,
}

/// Why no `max_tokens` fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unaffordable {
    /// Not even the prompt and one answer token fit the room.
    Budget,
    /// The cost overflows the ledger's arithmetic.
    Overflow,
}

impl Pricing {
    /// Prices from `[[credits.models]]`.
    pub(crate) fn new(prices: Vec<ModelPrice>) -> Self {
        Self { prices, warned: Mutex::default() }
    }

    fn price(&self, model: &str) -> Option<&ModelPrice> {
        let price = self.prices.iter().find(|p| p.model == model);
        if price.is_none() && self.warned.lock().unwrap_or_else(PoisonError::into_inner).insert(model.to_owned()) {
            tracing::warn!(model, "no price is configured for this model ([[credits.models]]); its calls cost 0");
        }
        price
    }

    /// The cost of `input` and `output` tokens on `model` (`None` on overflow).
    pub(crate) fn cost(&self, model: &str, input: u64, output: u64) -> Option<i64> {
        match self.price(model) {
            Some(price) => price.cost(input, output),
            None => Some(0),
        }
    }

    /// What a call's reported usage costs on the model that answered.
    pub(crate) fn settlement(&self, model: &str, usage: &Usage) -> Option<i64> {
        self.cost(model, usage.input_tokens, usage.output_tokens)
    }

    /// The worst case of a call of `prompt` tokens answering up to `max_tokens` on any
    /// model of `chain`.
    pub(crate) fn worst_case(&self, chain: &[String], prompt: u64, max_tokens: u32) -> Option<i64> {
        chain.iter().try_fold(0i64, |worst, model| Some(worst.max(self.cost(model, prompt, u64::from(max_tokens))?)))
    }

    /// The largest `max_tokens` (at most `wanted`) whose worst case fits `room` credits,
    /// with that worst case.
    pub(crate) fn fit(
        &self,
        chain: &[String],
        prompt: u64,
        wanted: u32,
        room: i64,
    ) -> Result<(u32, i64), Unaffordable> {
        let worst = |m: u32| self.worst_case(chain, prompt, m).ok_or(Unaffordable::Overflow);
        let full = worst(wanted)?;
        if full <= room {
            return Ok((wanted, full));
        }
        if wanted == 0 || worst(1)? > room {
            return Err(Unaffordable::Budget);
        }
        // The cost grows with max_tokens: the largest m in [1, wanted) that fits.
        let (mut fits, mut too_big) = (1u32, wanted);
        while too_big - fits > 1 {
            let mid = fits + (too_big - fits) / 2;
            if worst(mid)? <= room { fits = mid } else { too_big = mid }
        }
        Ok((fits, worst(fits)?))
    }
}

/// A model and its fallbacks, transitively, each once, in order.
pub(crate) fn chain(models: &[ModelInfo], id: &str) -> Vec<String> {
    let mut chain = vec![id.to_owned()];
    let mut next = 0;
    while next < chain.len() {
        if let Some(model) = models.iter().find(|m| m.id == chain[next]) {
            for fallback in &model.fallbacks {
                if !chain.contains(fallback) {
                    chain.push(fallback.clone());
                }
            }
        }
        next += 1;
    }
    chain
}

#[cfg(test)]
mod tests {
    use maestro_core::plugin::ModelTier;

    use super::*;

    fn price(model: &str, input: i64, output: i64) -> ModelPrice {
        ModelPrice { model: model.into(), input_per_million: input, output_per_million: output }
    }

    #[test]
    fn the_worst_case_is_the_dearest_model_of_the_chain() {
        let pricing = Pricing::new(vec![price("a", 1_000_000, 2_000_000), price("b", 3_000_000, 1_000_000)]);
        let chain = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(pricing.worst_case(&chain, 10, 10), Some(40));
        assert_eq!(pricing.worst_case(&chain, 0, 10), Some(20));
        assert_eq!(pricing.worst_case(&["free".to_owned()], 10, 10), Some(0), "an unpriced model costs nothing");
    }

    #[test]
    fn max_tokens_is_lowered_to_fit_the_budget() {
        let pricing = Pricing::new(vec![price("a", 1_000_000, 1_000_000)]);
        let chain = vec!["a".to_owned()];
        assert_eq!(pricing.fit(&chain, 100, 1000, 10_000), Ok((1000, 1100)));
        assert_eq!(pricing.fit(&chain, 100, 1000, 150), Ok((50, 150)));
        assert_eq!(pricing.fit(&chain, 100, 1000, 100), Err(Unaffordable::Budget));
    }

    #[test]
    fn chains_follow_fallbacks_once() {
        let model = |id: &str, fallbacks: &[&str]| ModelInfo {
            id: id.into(),
            provider: "p".into(),
            tier: ModelTier::Small,
            context_window: 1,
            max_output_tokens: 1,
            fallbacks: fallbacks.iter().map(|f| (*f).to_owned()).collect(),
        };
        let models = [model("a", &["b"]), model("b", &["c", "a"]), model("c", &[])];
        assert_eq!(chain(&models, "a"), ["a", "b", "c"]);
    }
}
