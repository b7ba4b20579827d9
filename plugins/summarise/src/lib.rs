//! `summarise`: summarises a text to about N words by asking the platform's models
//! (`maestro:plugin/model`). The completion runs on the caller's model providers and is
//! paid from the caller's credits; the administrator's policy must grant the plugin a
//! model tier (`model_tiers = ["fast"]`) and enough tokens per completion
//! (`model_max_tokens`, at least `2 × words + 16`).

use maestro_sdk::model::{self, Request};
use maestro_sdk::{ModelTier, Structured, ToolError, export_plugin, tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest text accepted, in bytes.
const MAX_TEXT: usize = 256 * 1024;
/// Most words a summary may be asked for.
const MAX_WORDS: u32 = 500;
/// Summary length when none is asked for.
const DEFAULT_WORDS: u32 = 50;

/// Arguments of `text`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SummariseArgs {
    /// The text to summarise.
    pub text: String,
    /// About how many words the summary may have (1 to 500, default 50).
    #[serde(default)]
    pub words: Option<u32>,
}

/// Result of `text`.
#[derive(Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Summary {
    /// The summary.
    pub summary: String,
    /// Its length in words.
    pub words: usize,
    /// The model that wrote it.
    pub model: String,
    /// Credits the completion cost the caller.
    pub credits: u64,
}

/// The answer-token cap for a summary of `words` words: about two tokens a word, plus
/// room for punctuation.
pub fn max_tokens(words: u32) -> u32 {
    words * 2 + 16
}

/// Summarises a text.
pub fn summarise(args: SummariseArgs) -> Result<Structured<Summary>, ToolError> {
    let text = args.text.trim();
    if text.is_empty() {
        return Err(ToolError::invalid("text must not be empty"));
    }
    if text.len() > MAX_TEXT {
        return Err(ToolError::invalid(format!("text is {} bytes, at most {MAX_TEXT}", text.len())));
    }
    let words = args.words.unwrap_or(DEFAULT_WORDS);
    if !(1..=MAX_WORDS).contains(&words) {
        return Err(ToolError::invalid(format!("words must be between 1 and {MAX_WORDS}")));
    }
    let request = Request::new(ModelTier::Small, max_tokens(words))
        .system(format!(
            "Summarise the user's text in at most {words} words. Answer with the summary only, in the text's \
             language, without a preamble."
        ))
        .user(text);
    let answer = model::complete(&request)?;
    let summary = answer.text.trim().to_owned();
    if summary.is_empty() {
        return Err(ToolError::failed("the model answered with an empty summary"));
    }
    Ok(Structured(Summary {
        words: summary.split_whitespace().count(),
        summary,
        model: answer.model,
        credits: answer.credits,
    }))
}

export_plugin! {
    tools: [
        tool("text", "Summarises a text to about N words with the platform's models (the caller pays for the completion)", summarise)
            .title("Summarise")
            .read_only(),
    ],
}

#[cfg(test)]
mod tests {
    use maestro_sdk::model::{Completion, ModelError, Role};
    use maestro_sdk::testing::FakeHost;
    use serde_json::json;

    use super::*;

    #[test]
    fn asks_a_small_model_for_n_words_and_returns_its_summary() {
        let host = FakeHost::install();
        host.on_complete(|_| Ok(Completion { credits: 7, ..Completion::text("  Cats sleep a lot.\n") }));
        let out = maestro_plugin().call("text", &json!({ "text": "Cats sleep. Cats nap.", "words": 5 }).to_string());
        let out = out.expect("summarised");
        assert_eq!(
            out.structured,
            Some(json!({ "summary": "Cats sleep a lot.", "words": 4, "model": "fake", "credits": 7 }))
        );
        let asked = host.completions();
        assert_eq!(asked.len(), 1);
        assert_eq!((asked[0].tier, asked[0].max_tokens), (ModelTier::Small, 26));
        assert_eq!(asked[0].messages[0].role, Role::System);
        assert!(asked[0].messages[0].text.contains("at most 5 words"));
        assert_eq!(
            (asked[0].messages[1].role, asked[0].messages[1].text.as_str()),
            (Role::User, "Cats sleep. Cats nap.")
        );
    }

    #[test]
    fn bad_arguments_are_refused_before_asking_any_model() {
        let host = FakeHost::install();
        for args in [json!({ "text": "  " }), json!({ "text": "x", "words": 0 }), json!({ "text": "x", "words": 501 })]
        {
            let err = maestro_plugin().call("text", &args.to_string()).expect_err("refused");
            assert!(matches!(err, ToolError::InvalidArguments(_)), "{args}: {err:?}");
        }
        assert!(host.completions().is_empty());
    }

    #[test]
    fn a_denied_or_failed_completion_fails_the_tool_with_the_reason() {
        let host = FakeHost::install();
        let err = maestro_plugin().call("text", r#"{"text":"hello"}"#).expect_err("no model access");
        assert!(err.to_string().contains("model access denied"), "{err}");
        host.on_complete(|_| Err(ModelError::InsufficientCredits("insufficient credits: up to 116".into())));
        let err = maestro_plugin().call("text", r#"{"text":"hello"}"#).expect_err("cannot pay");
        assert!(err.to_string().contains("insufficient credits"), "{err}");
        host.on_complete(|_| Err(ModelError::Cancelled));
        assert_eq!(maestro_plugin().call("text", r#"{"text":"hello"}"#), Err(ToolError::Cancelled));
        host.on_complete(|_| Ok(Completion::text(" ")));
        assert!(maestro_plugin().call("text", r#"{"text":"hello"}"#).is_err(), "an empty summary is a failure");
    }
}
