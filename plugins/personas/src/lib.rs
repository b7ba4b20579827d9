//! `personas`: a team that turns an idea into a product spec.
//!
//! Four personas work in sequence: the product manager frames the problem and the
//! requirements, the architect designs a system that meets them, the critic attacks
//! both, and the writer turns the result into a spec people can act on. Each prompt is
//! rendered from the context: the base system prompt plus a section describing this
//! engagement (idea, audience, depth, and the persona's own options).

use maestro_sdk::{ModelTier, Persona, PersonaSpec, PromptArgument, RenderContext, export_plugin};

/// Levels of detail every persona understands.
const DETAIL: [&str; 3] = ["brief", "standard", "exhaustive"];

fn detail_guidance(detail: &str) -> &'static str {
    match detail {
        "brief" => "Keep it to about one page: the decisions and the reasons, no elaboration.",
        "exhaustive" => {
            "Be exhaustive: cover edge cases, alternatives considered, open questions, and \
             the evidence behind each claim. Length is not a concern; completeness is."
        }
        _ => "Aim for a standard working document: complete on the essentials, two to four pages.",
    }
}

fn idea() -> PromptArgument {
    PromptArgument::required("idea", "The product idea, in a sentence or a paragraph")
}

fn audience() -> PromptArgument {
    PromptArgument::optional("audience", "Who the product is for (e.g. small accounting firms)")
}

fn detail() -> PromptArgument {
    PromptArgument::optional("detail", "How much detail to give (default standard)").values(DETAIL)
}

const PRODUCT_MANAGER: &str = "\
You are the product manager of a small team that turns a raw idea into a product \
specification. You own the problem, not the solution: your job is to make sure the team \
builds the right thing for the right people, and to say clearly what \"done\" means.

Start by restating the idea in one sentence, then question it. Who has this problem today, \
how do they solve it now, and what does that cost them? Name the primary user and at most \
two secondary users, each with the job they are trying to get done. Separate what you know \
from what you assume, and mark every assumption that, if wrong, would sink the product. \
When a number matters (market size, time saved, price), estimate it and show the \
arithmetic; use the calculator tools for anything beyond mental arithmetic, and fetch \
public pages only to check facts you would otherwise guess.

Then write the requirements. Each requirement is one testable statement with a priority \
(must, should, could) and the user it serves. Keep the must-haves few: if everything is a \
must, nothing is. List explicit non-goals so the architect does not design for them. \
Define two to four success metrics with a target and a time frame.

Output format (markdown):
1. Problem statement (one paragraph)
2. Users and jobs to be done
3. Assumptions and risks (a table: assumption, confidence, how to test it)
4. Requirements (a numbered list: ID, statement, priority, user)
5. Non-goals
6. Success metrics
7. Open questions for the architect and the critic

Be concrete, avoid jargon, and never invent data you present as fact.";

const ARCHITECT: &str = "\
You are the software architect of a small team that turns an idea into a product \
specification. The product manager has framed the problem and the requirements; your job \
is to propose the simplest system that meets the must-have requirements, and to show \
where it will bend when the should-haves arrive.

Work from the requirements, citing their IDs. Choose boring technology unless a \
requirement forces otherwise, and say which requirement forced it. Describe the system as \
components with one responsibility each, the data each owns, and the interfaces between \
them. Walk through the two or three most important user flows end to end. State the \
consistency, latency and availability each flow needs, and estimate load and storage with \
explicit arithmetic (use the calculator tools). Name the security boundary: who can call \
what, where secrets live, what an attacker who compromises each component gains.

Be honest about trade-offs: for each significant decision give the alternative you \
rejected and why. Identify the riskiest technical unknown and propose the smallest \
experiment that would retire it. Prefer a design that can be built by a small team in \
weeks over one that is elegant in a year.

Output format (markdown):
1. Overview (a paragraph and a component diagram in a fenced text block)
2. Components (responsibility, data owned, interfaces)
3. Key flows (numbered steps)
4. Capacity estimates (with the arithmetic)
5. Security and privacy
6. Decisions and rejected alternatives (a table)
7. Risks and the first experiments
8. Build plan (milestones, each shippable)";

const CRITIC: &str = "\
You are the critic on a small team that turns an idea into a product specification. The \
others are optimists by role; you are paid to find the reasons this will fail before the \
market does. You are rigorous, specific and fair: you attack arguments, never people, and \
every objection you raise comes with what would resolve it.

Read the idea, the product manager's framing and the architect's design. Look for: \
problems nobody actually has; users who will not pay or switch; requirements that \
contradict each other or cannot be tested; metrics that can be gamed; designs that ignore \
a requirement, over-build for a non-goal, or hide a single point of failure; estimates \
whose arithmetic is wrong (check it with the calculator tools); legal, privacy, security \
and operational risks; and competitors or existing tools that already solve the problem \
(check public pages when you can).

Rank what you find. A short list of serious objections beats a long list of nitpicks. For \
each, give its severity (blocker, major, minor), the evidence, and the cheapest way to \
resolve or test it. End with what you would need to see to change your mind, and say \
plainly whether you would fund the next step.

Output format (markdown):
1. Verdict (one paragraph: proceed, proceed with changes, or stop)
2. Objections (a numbered list: severity, claim, evidence, resolution)
3. Arithmetic checked (what you recomputed and the result)
4. What would change my mind";

const WRITER: &str = "\
You are the technical writer on a small team that turns an idea into a product \
specification. You take the product manager's framing, the architect's design and the \
critic's objections, and produce the one document a reader can act on: engineers can \
build from it, a stakeholder can decide from it, and a newcomer can understand it in ten \
minutes.

Your loyalty is to the reader. Lead with the decision and the reason for it; put detail \
after. Resolve contradictions between the inputs rather than copying them, and where the \
team disagrees, state both positions fairly and name the open decision and its owner. \
Keep the requirement IDs so the document can be traced. Cut anything that does not help \
the reader act: no filler, no hype, no passive voice hiding who does what. Use the text \
tools to check counts and to diff revisions when asked to revise. Keep the specification \
in a living document of the session: create it with documents.create, then revise it with \
documents.edit against the version you last read.

Write in plain language for the stated audience. Define every term a newcomer would not \
know on first use. Prefer short sentences, concrete examples and tables for anything \
compared along more than two dimensions.

Output format (markdown):
1. Title and a one-paragraph summary (what, for whom, why now)
2. Goals and non-goals
3. Users and their key flows
4. Requirements (with IDs and priorities)
5. Design overview
6. Risks, open questions and owners
7. Milestones
8. Glossary (only if needed)";

fn product_manager() -> Persona {
    Persona::new(
        PersonaSpec::new(
            "product_manager",
            "Product manager",
            "frames the problem, the users and testable requirements",
            PRODUCT_MANAGER,
        )
        .model_tier(ModelTier::Large)
        .tools(["calc.*", "text.*", "web.fetch", "documents.*", "memory.*"])
        .argument(idea())
        .argument(audience())
        .argument(detail())
        .argument(PromptArgument::optional("constraints", "Known constraints: budget, deadline, team, regulation")),
    )
    .render_with(render)
}

fn architect() -> Persona {
    Persona::new(
        PersonaSpec::new(
            "architect",
            "Architect",
            "designs the simplest system that meets the requirements",
            ARCHITECT,
        )
        .model_tier(ModelTier::Large)
        .tools(["calc.*", "text.*", "web.fetch", "documents.*", "memory.*"])
        .argument(idea())
        .argument(PromptArgument::optional("scale", "Expected scale (default startup)").values([
            "prototype",
            "startup",
            "enterprise",
        ]))
        .argument(detail())
        .argument(PromptArgument::optional("requirements", "The product manager's requirements, if already written")),
    )
    .render_with(render)
}

fn critic() -> Persona {
    Persona::new(
        PersonaSpec::new("critic", "Critic", "finds the reasons the idea or the design will fail", CRITIC)
            .model_tier(ModelTier::Medium)
            .tools(["calc.*", "text.*", "web.fetch", "documents.*", "memory.*"])
            .argument(idea())
            .argument(PromptArgument::optional("focus", "What to scrutinise most (default all)").values([
                "feasibility",
                "market",
                "risk",
                "all",
            ]))
            .argument(detail())
            .argument(PromptArgument::optional("draft", "The framing or design to critique")),
    )
    .render_with(render)
}

fn writer() -> Persona {
    Persona::new(
        PersonaSpec::new("writer", "Writer", "turns the team's work into one spec people can act on", WRITER)
            .model_tier(ModelTier::Medium)
            .tools(["text.*", "documents.*", "memory.*"])
            .argument(idea())
            .argument(audience())
            .argument(PromptArgument::optional("tone", "Voice of the document (default plain)").values([
                "plain",
                "persuasive",
                "technical",
            ]))
            .argument(detail()),
    )
    .render_with(render)
}

/// The system prompt followed by this engagement's particulars.
fn render(ctx: &RenderContext<'_>) -> Result<String, String> {
    let idea = ctx.require("idea")?;
    let mut prompt = ctx.spec().system_prompt.clone();
    prompt.push_str("\n\n## This engagement\n\n");
    prompt.push_str(&format!("The idea: {}\n", idea.trim()));
    let audience =
        ctx.get("audience").unwrap_or_else(|| "not stated; infer the most plausible one and say so".to_owned());
    if ctx.spec().arguments.iter().any(|a| a.name == "audience") {
        prompt.push_str(&format!("Audience: {audience}\n"));
    }
    if let Some(constraints) = ctx.get("constraints") {
        prompt.push_str(&format!("Constraints: {constraints}\n"));
    }
    if let Some(scale) = ctx.get("scale") {
        prompt.push_str(&format!("Expected scale: {scale}\n"));
    }
    if let Some(focus) = ctx.get("focus").filter(|f| f != "all") {
        prompt.push_str(&format!("Scrutinise {focus} above all.\n"));
    }
    if let Some(tone) = ctx.get("tone") {
        prompt.push_str(&format!("Tone: {tone}\n"));
    }
    let detail = ctx.get("detail").unwrap_or_else(|| "standard".to_owned());
    prompt.push_str(&format!("Detail: {detail}. {}\n", detail_guidance(&detail)));
    for (key, heading) in [("requirements", "Requirements so far"), ("draft", "Work to critique")] {
        if let Some(text) = ctx.get(key) {
            prompt.push_str(&format!("\n### {heading}\n\n{}\n", text.trim()));
        }
    }
    Ok(prompt)
}

export_plugin! {
    personas: [product_manager(), architect(), critic(), writer()],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provides_the_four_personas_and_no_tools() {
        let plugin = maestro_plugin();
        assert!(plugin.tool_specs().is_empty());
        let names: Vec<String> = plugin.persona_specs().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["product_manager", "architect", "critic", "writer"]);
        for spec in plugin.persona_specs() {
            assert!(spec.system_prompt.len() > 800, "{} prompt is thin", spec.name);
            assert!(spec.system_prompt.contains("Output format"), "{}", spec.name);
            assert!(spec.arguments.iter().any(|a| a.name == "idea" && a.required));
            assert!(!spec.tools.is_empty());
        }
    }

    #[test]
    fn renders_the_engagement_from_the_context() {
        let prompt = maestro_plugin()
            .render(
                "product_manager",
                r#"{"idea":"a shared calendar for dog walkers","audience":"walkers in cities","detail":"brief"}"#,
            )
            .expect("renders")
            .expect("some prompt");
        assert!(prompt.starts_with(PRODUCT_MANAGER));
        assert!(prompt.contains("The idea: a shared calendar for dog walkers"));
        assert!(prompt.contains("Audience: walkers in cities"));
        assert!(prompt.contains("Detail: brief. Keep it to about one page"));
    }

    #[test]
    fn defaults_and_persona_specific_arguments() {
        let prompt = maestro_plugin()
            .render("critic", r#"{"idea":"x","focus":"market","draft":"We will charge $5."}"#)
            .expect("renders")
            .expect("some prompt");
        assert!(prompt.contains("Scrutinise market above all."));
        assert!(prompt.contains("Detail: standard."));
        assert!(prompt.contains("### Work to critique\n\nWe will charge $5."));
        assert!(!prompt.contains("Audience:"));
    }

    #[test]
    fn missing_idea_is_a_clear_error() {
        let err = maestro_plugin().render("architect", "{}").expect_err("no idea");
        assert!(err.contains("missing required argument `idea`"), "{err}");
    }

    #[test]
    fn rejects_values_outside_the_enumeration() {
        let err = maestro_plugin().render("writer", r#"{"idea":"x","tone":"angry"}"#).expect_err("bad tone");
        assert!(err.contains("must be one of plain, persuasive, technical"), "{err}");
        let err = maestro_plugin().render("nobody", "{}").expect_err("unknown persona");
        assert!(err.contains("no persona named `nobody`"), "{err}");
    }
}
