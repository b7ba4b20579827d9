//! Who acts next. `router`: a model answers a typed decision each turn (see
//! [`decision_schema`]), validated against the team; `round_robin`, `sequence` and
//! `parallel` follow fixed rules. The turn logic itself lives in `runner.rs`; this file
//! holds the rules and the router's contract.

use maestro_core::llm::ResponseSchema;
use serde::Deserialize;

/// The router's typed answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decision {
    /// Whether the user's request is satisfied by the conversation so far.
    pub(crate) satisfied: bool,
    /// Who speaks next (a team name), when not satisfied.
    #[serde(default)]
    pub(crate) next: Option<String>,
    /// What they should do.
    #[serde(default)]
    pub(crate) instruction: Option<String>,
    /// Why.
    #[serde(default)]
    pub(crate) reason: Option<String>,
    /// A question for the user, when the turn cannot be decided without their answer
    /// (the run waits for it; `""` and null mean none).
    #[serde(default)]
    pub(crate) ask_user: Option<String>,
}

/// The JSON Schema the router's answer must fit, in the subset every structured-output
/// implementation takes (OpenAI strict mode, llama.cpp and vLLM grammars, a forced tool
/// on Anthropic): plain string types, every property required, `next` an enumeration of
/// the team's names and `""` (satisfied), no nulls or type unions.
pub(crate) fn decision_schema(team: &[String]) -> ResponseSchema {
    let mut names: Vec<serde_json::Value> = team.iter().map(|n| serde_json::Value::String(n.clone())).collect();
    names.push(serde_json::Value::String(String::new()));
    ResponseSchema {
        name: "maestro_turn".to_owned(),
        schema: serde_json::json!({
            "type": "object",
            "properties": {
                "satisfied": { "type": "boolean", "description": "whether the user's request is fully answered" },
                "next": { "type": "string", "enum": names, "description": "who speaks next (empty when satisfied)" },
                "instruction": { "type": "string", "description": "what they should do next (empty when satisfied)" },
                "reason": { "type": "string", "description": "why, in one sentence" },
                "ask_user": {
                    "type": "string",
                    "description": "a question for the user when you cannot decide without their answer (else empty)"
                }
            },
            "required": ["satisfied", "next", "instruction", "reason", "ask_user"],
            "additionalProperties": false
        }),
    }
}

/// The router's system prompt: the team, and how to answer.
pub(crate) fn router_prompt(team: &[(String, String)], turn: u32, max_steps: u32) -> String {
    let mut prompt = String::from(
        "You are Maestro, the orchestrator of a team of AI personas working for a user. You do not answer \
         the user yourself: after reading the conversation, you decide whether the user's request is \
         satisfied and, if it is not, which persona of the team speaks next and what they should do.\n\n\
         The team (name: role):\n",
    );
    for (name, role) in team {
        prompt.push_str(&format!("- {name}: {role}\n"));
    }
    prompt.push_str(&format!(
        "\nThis is turn {turn}; at most {max_steps} turns are allowed in all, so finish when the work is \
         done. Answer with one JSON object and nothing else: {{\"satisfied\": true|false, \"next\": \
         \"<one of the team's names>\", \"instruction\": \"<what they should do>\", \"reason\": \
         \"<why>\", \"ask_user\": \"\"}}. When satisfied is true, next and instruction are empty strings. \
         Only when you cannot decide without the user's answer, put your question for the user in ask_user \
         (the team waits for the answer) and leave next empty; otherwise ask_user is an empty string."
    ));
    prompt
}

/// Parses and validates the router's answer: JSON (a code fence around it is
/// tolerated), and, unless satisfied, a `next` that names a team member.
pub(crate) fn parse_decision(text: &str, team: &[String]) -> Result<Decision, String> {
    let trimmed = text.trim();
    let json = match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(start), Some(end)) if start < end => &trimmed[start..=end],
        _ => return Err("the answer is not a JSON object".to_owned()),
    };
    let mut decision: Decision =
        serde_json::from_str(json).map_err(|e| format!("the answer is not a valid decision: {e}"))?;
    // `""` and null both mean none.
    decision.next = decision.next.filter(|n| !n.trim().is_empty());
    decision.instruction = decision.instruction.filter(|i| !i.trim().is_empty());
    decision.ask_user = decision.ask_user.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty());
    if decision.satisfied {
        decision.ask_user = None;
        return Ok(decision);
    }
    if decision.ask_user.is_some() {
        return Ok(decision);
    }
    match decision.next.as_deref() {
        Some(next) if team.iter().any(|n| n == next) => Ok(decision),
        Some(next) => {
            Err(format!("`{}` is not in the team ({})", next.chars().take(64).collect::<String>(), team.join(", ")))
        }
        None => Err("`next` must name a persona of the team when the request is not satisfied".to_owned()),
    }
}

/// The persona after `last` in team order (the first when `last` is none or not in the
/// team).
pub(crate) fn after<'a>(team: &'a [String], last: Option<&str>) -> &'a str {
    let index = last.and_then(|l| team.iter().position(|n| n == l)).map_or(0, |i| (i + 1) % team.len().max(1));
    team.get(index).map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team() -> Vec<String> {
        vec!["t.a".into(), "t.b".into(), "t.c".into()]
    }

    #[test]
    fn a_decision_must_name_a_team_member_unless_satisfied() {
        let ok = parse_decision(r#"{"satisfied":false,"next":"t.b","instruction":"go","reason":"r"}"#, &team());
        assert_eq!(ok.map(|d| d.next), Ok(Some("t.b".into())));
        let fenced = "```json\n{\"satisfied\":true,\"next\":null,\"instruction\":null,\"reason\":\"done\"}\n```";
        assert!(parse_decision(fenced, &team()).is_ok_and(|d| d.satisfied));
        assert!(
            parse_decision(r#"{"satisfied":false,"next":"t.z","instruction":null,"reason":"r"}"#, &team()).is_err()
        );
        assert!(parse_decision(r#"{"satisfied":false,"next":null,"instruction":null,"reason":"r"}"#, &team()).is_err());
        assert!(parse_decision(r#"{"satisfied":false,"next":"","instruction":"","reason":"r"}"#, &team()).is_err());
        let done = parse_decision(r#"{"satisfied":true,"next":"","instruction":"","reason":"r"}"#, &team());
        assert_eq!(done.map(|d| (d.next, d.instruction)), Ok((None, None)), "empty strings mean none");
        assert!(parse_decision("I think t.b should go", &team()).is_err());
        assert!(parse_decision(r#"{"satisfied":"no"}"#, &team()).is_err());
        let ask = parse_decision(
            r#"{"satisfied":false,"next":"","instruction":"","reason":"r","ask_user":" Which? "}"#,
            &team(),
        );
        assert_eq!(ask.map(|d| d.ask_user), Ok(Some("Which?".into())), "a question needs no next");
        let none =
            parse_decision(r#"{"satisfied":false,"next":"t.a","instruction":"","reason":"r","ask_user":""}"#, &team());
        assert_eq!(none.map(|d| d.ask_user), Ok(None));
    }

    #[test]
    fn the_next_persona_follows_the_last_in_team_order() {
        assert_eq!(after(&team(), None), "t.a");
        assert_eq!(after(&team(), Some("t.a")), "t.b");
        assert_eq!(after(&team(), Some("t.c")), "t.a");
        assert_eq!(after(&team(), Some("other.x")), "t.a");
    }

    #[test]
    fn the_schema_lists_the_team_and_none() {
        let schema = decision_schema(&team());
        assert_eq!(schema.schema["properties"]["next"]["enum"].as_array().map(Vec::len), Some(4));
        assert!(!schema.schema.to_string().contains("null"), "no nulls: every implementation takes it");
    }
}
