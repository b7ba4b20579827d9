//! Personas: agent roles declared as data, with an optional prompt renderer.

use std::fmt;

use serde_json::{Map, Value};

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
}

impl fmt::Debug for Persona {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let render = match self.render {
            Render::AsIs => "as-is",
            Render::Template => "template",
            Render::Custom(_) => "custom",
        };
        f.debug_struct("Persona").field("spec", &self.spec).field("render", &render).finish()
    }
}

impl Persona {
    /// A persona whose prompt is its system prompt with `{{argument}}` placeholders
    /// filled from the context (after checking required and enumerated arguments).
    pub fn new(spec: PersonaSpec) -> Self {
        Self { spec, render: Render::Template }
    }

    /// A persona whose prompt is its system prompt as is (`render` answers `none`).
    pub fn as_is(spec: PersonaSpec) -> Self {
        Self { spec, render: Render::AsIs }
    }

    /// A persona rendered by a function (arguments are checked before it runs).
    #[must_use]
    pub fn render_with(mut self, render: RenderFn) -> Self {
        self.render = Render::Custom(render);
        self
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

    #[test]
    fn as_is_persona_renders_none() {
        assert_eq!(Persona::as_is(spec()).render("not json"), Ok(None));
    }
}
