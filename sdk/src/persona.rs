//! Personas: agent roles declared as data, with an optional prompt renderer.

use std::fmt;

use serde_json::{Map, Value};

use crate::tool::{ResourceContents, base64};

/// Which class of model a persona prefers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModelTier {
    /// Cheap and fast.
    Small,
    /// The default.
    #[default]
    Medium,
    /// The strongest available.
    Large,
}

/// An argument a persona's prompt takes (MCP prompt arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptArgument {
    /// Name, used as `{{name}}` in a template.
    pub name: String,
    /// What to give.
    pub description: String,
    /// Whether rendering fails without it.
    pub required: bool,
    /// The allowed values, when the set is fixed (empty: any value).
    pub values: Vec<String>,
}

impl PromptArgument {
    /// A required argument.
    pub fn required(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self { name: name.into(), description: description.into(), required: true, values: Vec::new() }
    }

    /// An optional argument.
    pub fn optional(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self { required: false, ..Self::required(name, description) }
    }

    /// Restricts the argument to a fixed set of values.
    #[must_use]
    pub fn values<S: Into<String>>(mut self, values: impl IntoIterator<Item = S>) -> Self {
        self.values = values.into_iter().map(Into::into).collect();
        self
    }
}

/// An agent persona (the WIT `persona-spec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonaSpec {
    /// Name within the plugin: `^[A-Za-z0-9_-]{1,48}$`.
    pub name: String,
    /// Short human title.
    pub title: String,
    /// The persona's role in a team, one line.
    pub role: String,
    /// The system prompt; with the default renderer, `{{argument}}` placeholders are
    /// filled from the context.
    pub system_prompt: String,
    /// Preferred model class.
    pub model_tier: ModelTier,
    /// Globs of the tools this persona wants (`calc.*`, `web.fetch`).
    pub tools: Vec<String>,
    /// Arguments its prompt takes.
    pub arguments: Vec<PromptArgument>,
}

impl PersonaSpec {
    /// A persona with the medium tier, no tools and no arguments.
    pub fn new(
        name: impl Into<String>,
        title: impl Into<String>,
        role: impl Into<String>,
        system_prompt: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            title: title.into(),
            role: role.into(),
            system_prompt: system_prompt.into(),
            model_tier: ModelTier::default(),
            tools: Vec::new(),
            arguments: Vec::new(),
        }
    }

    /// Sets the model tier.
    #[must_use]
    pub fn model_tier(mut self, tier: ModelTier) -> Self {
        self.model_tier = tier;
        self
    }

    /// Sets the tool globs.
    #[must_use]
    pub fn tools<S: Into<String>>(mut self, globs: impl IntoIterator<Item = S>) -> Self {
        self.tools = globs.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a prompt argument.
    #[must_use]
    pub fn argument(mut self, argument: PromptArgument) -> Self {
        self.arguments.push(argument);
        self
    }
}

/// The arguments a prompt is rendered with, checked against the persona's declared
/// arguments (required ones present, enumerated ones within their values).
#[derive(Debug, Clone)]
pub struct RenderContext<'a> {
    spec: &'a PersonaSpec,
    values: Map<String, Value>,
}

impl<'a> RenderContext<'a> {
    /// Parses and checks a context document.
    pub fn parse(spec: &'a PersonaSpec, context: &str) -> Result<Self, String> {
        let context = if context.trim().is_empty() { "{}" } else { context };
        let values = match serde_json::from_str::<Value>(context) {
            Ok(Value::Object(values)) => values,
            Ok(_) => return Err("the context must be a JSON object".to_owned()),
            Err(e) => return Err(format!("the context is not valid JSON: {e}")),
        };
        let rendered = Self { spec, values };
        for argument in &spec.arguments {
            match rendered.get(&argument.name) {
                None if argument.required => {
                    return Err(format!("missing required argument `{}` ({})", argument.name, argument.description));
                }
                Some(value) if !argument.values.is_empty() && !argument.values.contains(&value) => {
                    return Err(format!(
                        "argument `{}` must be one of {}, got `{value}`",
                        argument.name,
                        argument.values.join(", ")
                    ));
                }
                _ => {}
            }
        }
        Ok(rendered)
    }

    /// The persona being rendered.
    pub fn spec(&self) -> &PersonaSpec {
        self.spec
    }

    /// An argument as text (numbers and booleans printed; empty strings and null count
    /// as absent).
    pub fn get(&self, name: &str) -> Option<String> {
        match self.values.get(name)? {
            Value::Null => None,
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    /// An argument, or an error naming it.
    pub fn require(&self, name: &str) -> Result<String, String> {
        self.get(name).ok_or_else(|| format!("missing required argument `{name}`"))
    }

    /// The raw context object.
    pub fn values(&self) -> &Map<String, Value> {
        &self.values
    }

    /// Replaces each `{{name}}` in `template` with the argument's value (empty when
    /// absent). Unknown placeholders are left as they are.
    pub fn fill(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                out.push_str(&rest[start..]);
                return out;
            };
            let name = after[..end].trim();
            if self.spec.arguments.iter().any(|a| a.name == name) {
                out.push_str(&self.get(name).unwrap_or_default());
            } else {
                out.push_str(&rest[start..start + 2 + end + 2]);
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out
    }
}

/// A function that renders a persona's prompt.
pub type RenderFn = fn(&RenderContext<'_>) -> Result<String, String>;

/// A function that renders the messages after a persona's system prompt.
pub type RenderMessagesFn = fn(&RenderContext<'_>) -> Result<Vec<PromptMessage>, String>;

/// Who speaks a prompt message after the system prompt (the WIT `prompt-role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptRole {
    /// The person.
    User,
    /// The model (an example answer, or a conversation to continue).
    Assistant,
}

/// What a prompt message holds (the WIT `prompt-content`): text, an image or an
/// embedded resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptContent {
    /// Plain text.
    Text(String),
    /// An image.
    Image {
        /// Base64 (standard alphabet, padded) of the bytes.
        data: String,
        /// e.g. `image/png`.
        mime_type: String,
    },
    /// A resource whose contents travel inside the prompt (an MCP embedded resource).
    EmbeddedResource {
        /// The resource's URI.
        uri: String,
        /// Its media type.
        mime_type: Option<String>,
        /// What it holds.
        contents: ResourceContents,
    },
}

impl PromptContent {
    /// Text.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// An image from raw bytes (base64-encoded here).
    pub fn image(bytes: &[u8], mime_type: impl Into<String>) -> Self {
        Self::Image { data: base64(bytes), mime_type: mime_type.into() }
    }

    /// An embedded text resource.
    pub fn embedded_text(uri: impl Into<String>, mime_type: impl Into<String>, text: impl Into<String>) -> Self {
        Self::EmbeddedResource {
            uri: uri.into(),
            mime_type: Some(mime_type.into()),
            contents: ResourceContents::Text(text.into()),
        }
    }

    /// An embedded binary resource from raw bytes (base64-encoded here).
    pub fn embedded_blob(uri: impl Into<String>, mime_type: impl Into<String>, bytes: &[u8]) -> Self {
        Self::EmbeddedResource {
            uri: uri.into(),
            mime_type: Some(mime_type.into()),
            contents: ResourceContents::Blob(base64(bytes)),
        }
    }
}

impl From<&str> for PromptContent {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for PromptContent {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

/// One message after a persona's system prompt (the WIT `prompt-message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage {
    /// Who speaks it.
    pub role: PromptRole,
    /// What it holds.
    pub content: PromptContent,
}

/// Builds the messages after a persona's system prompt, in order:
///
/// ```
/// use maestro_sdk::{Messages, PromptContent};
/// let messages = Messages::new()
///     .user("Review this diff.")
///     .user(PromptContent::embedded_text("file:///patch.diff", "text/x-diff", "+fn main() {}"))
///     .assistant("Looks fine; one question.")
///     .build();
/// assert_eq!(messages.len(), 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Messages(Vec<PromptMessage>);

impl Messages {
    /// No messages yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message of the person (text from a string, or any [`PromptContent`]).
    #[must_use]
    pub fn user(mut self, content: impl Into<PromptContent>) -> Self {
        self.0.push(PromptMessage { role: PromptRole::User, content: content.into() });
        self
    }

    /// Adds a message of the model.
    #[must_use]
    pub fn assistant(mut self, content: impl Into<PromptContent>) -> Self {
        self.0.push(PromptMessage { role: PromptRole::Assistant, content: content.into() });
        self
    }

    /// The messages.
    pub fn build(self) -> Vec<PromptMessage> {
        self.0
    }
}

#[derive(Clone, Copy)]
enum Render {
    AsIs,
    Template,
    Custom(RenderFn),
}

/// A persona as a plugin provides it: the spec and how to render its prompt.
#[derive(Clone)]
pub struct Persona {
    spec: PersonaSpec,
    render: Render,
    messages: Option<RenderMessagesFn>,
}

impl fmt::Debug for Persona {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let render = match self.render {
            Render::AsIs => "as-is",
            Render::Template => "template",
            Render::Custom(_) => "custom",
        };
        f.debug_struct("Persona")
            .field("spec", &self.spec)
            .field("render", &render)
            .field("messages", &self.messages.is_some())
            .finish()
    }
}

impl Persona {
    /// A persona whose prompt is its system prompt with `{{argument}}` placeholders
    /// filled from the context (after checking required and enumerated arguments).
    pub fn new(spec: PersonaSpec) -> Self {
        Self { spec, render: Render::Template, messages: None }
    }

    /// A persona whose prompt is its system prompt as is (`render` answers `none`).
    pub fn as_is(spec: PersonaSpec) -> Self {
        Self { spec, render: Render::AsIs, messages: None }
    }

    /// A persona rendered by a function (arguments are checked before it runs).
    #[must_use]
    pub fn render_with(mut self, render: RenderFn) -> Self {
        self.render = Render::Custom(render);
        self
    }

    /// Adds messages after the system prompt, rendered by a function (arguments are
    /// checked before it runs): user and assistant turns of text, images and embedded
    /// resources (a rich prompt; see [`Messages`]).
    #[must_use]
    pub fn messages_with(mut self, messages: RenderMessagesFn) -> Self {
        self.messages = Some(messages);
        self
    }

    /// Renders the messages after the system prompt from a context document (the WIT
    /// `personas.render-messages`); empty for a persona without
    /// [`messages_with`](Self::messages_with).
    pub fn render_messages(&self, context: &str) -> Result<Vec<PromptMessage>, String> {
        let Some(messages) = self.messages else { return Ok(Vec::new()) };
        messages(&RenderContext::parse(&self.spec, context)?)
    }

    /// The spec.
    pub fn spec(&self) -> &PersonaSpec {
        &self.spec
    }

    /// Renders the prompt from a context document (a JSON object); `Ok(None)` means
    /// "use the system prompt as is".
    pub fn render(&self, context: &str) -> Result<Option<String>, String> {
        if let Render::AsIs = self.render {
            return Ok(None);
        }
        let ctx = RenderContext::parse(&self.spec, context)?;
        match self.render {
            Render::AsIs => Ok(None),
            Render::Template => Ok(Some(ctx.fill(&self.spec.system_prompt))),
            Render::Custom(render) => render(&ctx).map(Some),
        }
    }
}

impl From<PersonaSpec> for Persona {
    fn from(spec: PersonaSpec) -> Self {
        Self::new(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PersonaSpec {
        PersonaSpec::new("pm", "PM", "owns the problem", "Idea: {{idea}}. Detail: {{detail}}. {{other}}")
            .argument(PromptArgument::required("idea", "the idea"))
            .argument(PromptArgument::optional("detail", "how much").values(["brief", "full"]))
    }

    #[test]
    fn fills_placeholders_and_leaves_unknown_ones() {
        let out = Persona::new(spec()).render(r#"{"idea":"a kite","detail":"brief"}"#).expect("renders");
        assert_eq!(out.as_deref(), Some("Idea: a kite. Detail: brief. {{other}}"));
    }

    #[test]
    fn rejects_missing_required_argument() {
        let err = Persona::new(spec()).render("{}").expect_err("missing idea");
        assert!(err.contains("missing required argument `idea`"), "{err}");
    }

    #[test]
    fn rejects_value_outside_the_enumeration() {
        let err = Persona::new(spec()).render(r#"{"idea":"x","detail":"huge"}"#).expect_err("bad detail");
        assert!(err.contains("must be one of brief, full"), "{err}");
    }

    fn rich(ctx: &RenderContext<'_>) -> Result<Vec<PromptMessage>, String> {
        Ok(Messages::new()
            .user(format!("About {}", ctx.require("idea")?))
            .user(PromptContent::image(b"\x89PNG", "image/png"))
            .user(PromptContent::embedded_text("note://idea", "text/plain", "notes"))
            .assistant("Understood.")
            .build())
    }

    #[test]
    fn rich_messages_follow_the_system_prompt_in_order() {
        let persona = Persona::new(spec()).messages_with(rich);
        let messages = persona.render_messages(r#"{"idea":"a kite"}"#).expect("renders");
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0], PromptMessage { role: PromptRole::User, content: PromptContent::text("About a kite") });
        assert_eq!(
            messages[1].content,
            PromptContent::Image { data: "iVBORw==".into(), mime_type: "image/png".into() }
        );
        assert!(matches!(&messages[2].content, PromptContent::EmbeddedResource { uri, .. } if uri == "note://idea"));
        assert_eq!(messages[3].role, PromptRole::Assistant);
        // The system prompt renders as before.
        assert_eq!(
            persona.render(r#"{"idea":"a kite"}"#).expect("renders").as_deref(),
            Some("Idea: a kite. Detail: . {{other}}")
        );
    }

    #[test]
    fn rich_messages_check_the_arguments_and_default_to_none() {
        let err = Persona::new(spec()).messages_with(rich).render_messages("{}").expect_err("missing idea");
        assert!(err.contains("missing required argument `idea`"), "{err}");
        assert_eq!(Persona::new(spec()).render_messages("{}"), Ok(Vec::new()));
    }

    #[test]
    fn as_is_persona_renders_none() {
        assert_eq!(Persona::as_is(spec()).render("not json"), Ok(None));
    }
}
