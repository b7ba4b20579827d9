//! What a model sees: the session's messages turned into chat messages (a persona's own
//! answers as `assistant`, everyone else's as `user` messages prefixed with their author),
//! trimmed oldest-first to fit the model's window; the persona's prompt arguments filled
//! from the triggering message; the tools a persona's globs select.

use maestro_core::llm::{ChatMessage, ChatRequest, ChatRole, prompt_token_bound};
use maestro_core::plugin::PersonaSpec;
use maestro_core::run::{Author, Message};

/// The author label other speakers see in front of a message (`user`, or the persona's
/// `plugin.persona` name).
pub(crate) fn author_label(author: &Author) -> &str {
    match author {
        Author::User { .. } => "user",
        Author::Persona { name } => name,
    }
}

/// A session message as `speaker` sees it: its own answers as `assistant`, the rest as
/// `user` messages prefixed with their author (`speaker` `None`: the orchestrator, who
/// sees every message prefixed).
pub(crate) fn chat_message(message: &Message, speaker: Option<&str>) -> ChatMessage {
    match (&message.author, speaker) {
        (Author::Persona { name }, Some(me)) if name == me => ChatMessage::new(ChatRole::Assistant, &message.content),
        (author, _) => ChatMessage::new(ChatRole::User, format!("{}: {}", author_label(author), message.content)),
    }
}

/// A request assembled to fit its model: the conversation and how many of the session's
/// messages were left out.
#[derive(Debug, Clone)]
pub(crate) struct Fitted {
    /// The request.
    pub(crate) request: ChatRequest,
    /// Session messages in the context.
    pub(crate) context_messages: u32,
    /// Oldest session messages left out.
    pub(crate) trimmed_messages: u32,
}

/// Builds `system` + `history` + `tail` and drops the oldest history messages until the
/// prompt's token bound fits `context_window - max_tokens` (at least the newest history
/// message is kept: a model must see what it answers; if even that does not fit, the
/// provider's answer says so).
pub(crate) fn fit(
    template: ChatRequest,
    system: Option<String>,
    history: Vec<ChatMessage>,
    tail: Vec<ChatMessage>,
    context_window: u32,
    max_tokens: u32,
) -> Fitted {
    let room = u64::from(context_window.saturating_sub(max_tokens));
    let total = history.len();
    let mut request = template;
    let head: Vec<ChatMessage> = system.map(|s| ChatMessage::new(ChatRole::System, s)).into_iter().collect();
    // Bound of everything but the history, then add history newest-first while it fits:
    // one pass instead of re-measuring the whole request per dropped message.
    request.messages = head.iter().chain(tail.iter()).cloned().collect();
    let mut used = prompt_token_bound(&request);
    let mut kept = 0usize;
    for message in history.iter().rev() {
        let single =
            ChatRequest { messages: vec![message.clone()], tools: vec![], response_schema: None, ..request.clone() };
        // `prompt_token_bound` of one message adds a fixed allowance for the request; take
        // it out so that the sum matches the bound of the whole request.
        let cost = prompt_token_bound(&single).saturating_sub(EMPTY_REQUEST_BOUND);
        if kept > 0 && used + cost > room {
            break;
        }
        used += cost;
        kept += 1;
    }
    let trimmed = total - kept;
    request.messages = head.into_iter().chain(history.into_iter().skip(trimmed)).chain(tail).collect();
    Fitted {
        request,
        context_messages: u32::try_from(kept).unwrap_or(u32::MAX),
        trimmed_messages: u32::try_from(trimmed).unwrap_or(u32::MAX),
    }
}

/// A system prompt followed by the context blocks the built-in tools give (the
/// session's documents, …), separated by blank lines.
pub(crate) fn with_blocks(system: String, blocks: &[String]) -> String {
    blocks.iter().fold(system, |prompt, block| format!("{prompt}\n\n{block}"))
}

/// The bound of a request with no message, tool or schema.
const EMPTY_REQUEST_BOUND: u64 = 16;

/// Longest text of the triggering message put into a persona argument, in characters
/// (the whole message is in the context anyway; the prompt need not carry it twice).
pub(crate) const ARGUMENT_CHARS: usize = 2000;

/// The persona's prompt arguments: every required one is filled with the triggering
/// message's text (the personas' required arguments are what the team works on, like
/// `idea`; at most [`ARGUMENT_CHARS`] characters of it, `…` marking a cut), or with the
/// first allowed value when the argument is an enumeration; optional ones are left to the
/// persona's defaults.
pub(crate) fn persona_arguments(spec: &PersonaSpec, trigger: &str) -> serde_json::Value {
    let text = if trigger.chars().count() > ARGUMENT_CHARS {
        let mut cut: String = trigger.chars().take(ARGUMENT_CHARS).collect();
        cut.push('…');
        cut
    } else {
        trigger.to_owned()
    };
    let mut arguments = serde_json::Map::new();
    for argument in spec.arguments.iter().filter(|a| a.required) {
        let value = argument.values.first().cloned().unwrap_or_else(|| text.clone());
        arguments.insert(argument.name.clone(), serde_json::Value::String(value));
    }
    serde_json::Value::Object(arguments)
}

/// Whether one of a persona's tool globs (`*`, `plugin.*`, `plugin.tool`) selects `tool`.
pub(crate) fn persona_allows(globs: &[String], tool: &str) -> bool {
    globs.iter().any(|glob| match glob.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => prefix.ends_with('.') && tool.len() > prefix.len() && tool.starts_with(prefix),
        None => glob == tool,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use maestro_core::plugin::{ModelTier, PromptArgument};
    use maestro_core::run::{MessageId, SessionId};

    use super::*;

    fn message(author: Author, content: &str) -> Message {
        Message {
            id: MessageId::from_random([1; 16]),
            session: SessionId::from_random([2; 16]),
            seq: 1,
            author,
            content: content.into(),
            run: None,
            at: Utc::now(),
        }
    }

    fn template() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![],
            tools: vec![],
            max_tokens: None,
            temperature: None,
            response_schema: None,
        }
    }

    #[test]
    fn a_persona_sees_its_own_answers_as_assistant_and_others_prefixed() {
        let mine = message(Author::Persona { name: "team.a".into() }, "mine");
        let theirs = message(Author::Persona { name: "team.b".into() }, "theirs");
        let user = message(Author::User { key_id: "key_1".into() }, "hi");
        assert_eq!(chat_message(&mine, Some("team.a")), ChatMessage::new(ChatRole::Assistant, "mine"));
        assert_eq!(chat_message(&theirs, Some("team.a")), ChatMessage::new(ChatRole::User, "team.b: theirs"));
        assert_eq!(chat_message(&user, Some("team.a")), ChatMessage::new(ChatRole::User, "user: hi"));
        assert_eq!(chat_message(&mine, None).content, "team.a: mine");
    }

    #[test]
    fn the_oldest_messages_are_trimmed_first_until_the_prompt_fits() {
        let history: Vec<ChatMessage> =
            (0..10).map(|i| ChatMessage::new(ChatRole::User, format!("{i}").repeat(100))).collect();
        let all = fit(template(), Some("sys".into()), history.clone(), vec![], 1_000_000, 100);
        assert_eq!((all.context_messages, all.trimmed_messages), (10, 0));
        assert_eq!(prompt_token_bound(&all.request), {
            let mut r = template();
            r.messages = std::iter::once(ChatMessage::new(ChatRole::System, "sys")).chain(history.clone()).collect();
            prompt_token_bound(&r)
        });
        let some = fit(template(), Some("sys".into()), history.clone(), vec![], 700, 100);
        assert!(some.trimmed_messages > 0 && some.context_messages > 0, "{some:?}");
        assert!(prompt_token_bound(&some.request) <= 600, "fits the window minus the answer");
        assert_eq!(some.request.messages.last(), history.last(), "the newest are kept");
        let none = fit(template(), None, history.clone(), vec![], 10, 5);
        assert_eq!((none.context_messages, none.trimmed_messages), (1, 9), "the newest message is always kept");
    }

    #[test]
    fn required_arguments_are_filled_from_the_trigger() {
        let spec = PersonaSpec {
            name: "p".into(),
            title: "P".into(),
            role: "r".into(),
            system_prompt: "s".into(),
            model_tier: ModelTier::Small,
            tools: vec![],
            arguments: vec![
                PromptArgument { name: "idea".into(), description: String::new(), required: true, values: vec![] },
                PromptArgument { name: "opt".into(), description: String::new(), required: false, values: vec![] },
                PromptArgument {
                    name: "tone".into(),
                    description: String::new(),
                    required: true,
                    values: vec!["plain".into(), "loud".into()],
                },
            ],
        };
        assert_eq!(persona_arguments(&spec, "build x"), serde_json::json!({ "idea": "build x", "tone": "plain" }));
        let long = "é".repeat(ARGUMENT_CHARS + 1);
        let idea = persona_arguments(&spec, &long)["idea"].as_str().map(|s| s.chars().count());
        assert_eq!(idea, Some(ARGUMENT_CHARS + 1), "cut to the limit, with the mark");
    }

    #[test]
    fn persona_globs_select_tools() {
        let globs = vec!["calc.*".to_owned(), "web.fetch".to_owned()];
        assert!(persona_allows(&globs, "calc.evaluate"));
        assert!(persona_allows(&globs, "web.fetch"));
        assert!(!persona_allows(&globs, "web.search"));
        assert!(!persona_allows(&globs, "calculator.x"));
        assert!(persona_allows(&["*".to_owned()], "any.tool"));
        assert!(!persona_allows(&[], "calc.evaluate"));
    }
}
