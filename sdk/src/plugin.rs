//! The registry of a plugin's tools, personas and resources, which the WIT exports
//! dispatch to.

use std::fmt;

use crate::persona::{Persona, PersonaSpec, PromptMessage};
use crate::resource::{Contents, Resource, ResourceError, ResourceInfo, ResourceTemplate};
use crate::tool::{ErasedTool, Tool, ToolError, ToolOutput, ToolSet, ToolSpec};

/// A plugin's tools and personas. [`export_plugin!`](crate::export_plugin) builds one
/// and exports it; tests call it directly.
#[derive(Default)]
pub struct Plugin {
    tools: Vec<Box<dyn ErasedTool>>,
    personas: Vec<Persona>,
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tools: Vec<_> = self.tools.iter().map(|tool| tool.name()).collect();
        let personas: Vec<&str> = self.personas.iter().map(|p| p.spec().name.as_str()).collect();
        let resources: Vec<&str> = self
            .resources
            .iter()
            .map(|r| r.info().uri.as_str())
            .chain(self.templates.iter().map(|t| t.info().uri.as_str()))
            .collect();
        f.debug_struct("Plugin")
            .field("tools", &tools)
            .field("personas", &personas)
            .field("resources", &resources)
            .finish()
    }
}

/// Whether `name` is a valid tool or persona name: `^[A-Za-z0-9_-]{1,48}$`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=48).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Plugin {
    /// An empty plugin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool.
    ///
    /// # Panics
    /// When the name is invalid or already taken: a programming error that any test
    /// touching the plugin reveals.
    #[must_use]
    pub fn tool(mut self, tool: impl Tool) -> Self {
        let name = Tool::name(&tool);
        assert!(is_valid_name(&name), "invalid tool name `{name}`: must match ^[A-Za-z0-9_-]{{1,48}}$");
        assert!(self.tools.iter().all(|t| t.name() != name), "duplicate tool name `{name}`");
        drop(name);
        self.tools.push(Box::new(tool));
        self
    }

    /// Adds a persona.
    ///
    /// # Panics
    /// When the name is invalid or already taken.
    #[must_use]
    pub fn persona(mut self, persona: impl Into<Persona>) -> Self {
        let persona = persona.into();
        let name = &persona.spec().name;
        assert!(is_valid_name(name), "invalid persona name `{name}`: must match ^[A-Za-z0-9_-]{{1,48}}$");
        assert!(self.personas.iter().all(|p| p.spec().name != *name), "duplicate persona name `{name}`");
        self.personas.push(persona);
        self
    }

    /// The tools, with their derived schemas (the WIT `tools.list-tools`).
    pub fn tool_specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|tool| tool.spec()).collect()
    }

    /// Calls a tool with its arguments, a JSON object document (the WIT `tools.call`).
    pub fn call(&self, name: &str, arguments: &str) -> Result<ToolOutput, ToolError> {
        let tool = self.tools.iter().find(|t| t.name() == name).ok_or_else(|| ToolError::NotFound(name.to_owned()))?;
        tool.call_json(arguments)
    }

    /// The personas (the WIT `personas.list-personas`).
    pub fn persona_specs(&self) -> Vec<PersonaSpec> {
        self.personas.iter().map(|p| p.spec().clone()).collect()
    }

    /// Renders a persona's prompt from a context document (the WIT `personas.render`).
    pub fn render(&self, name: &str, context: &str) -> Result<Option<String>, String> {
        let persona =
            self.personas.iter().find(|p| p.spec().name == name).ok_or_else(|| format!("no persona named `{name}`"))?;
        persona.render(context)
    }

    /// Adds a resource with a fixed URI.
    ///
    /// # Panics
    /// When the URI is already declared.
    #[must_use]
    pub fn resource(mut self, resource: Resource) -> Self {
        let uri = &resource.info().uri;
        assert!(self.resources.iter().all(|r| r.info().uri != *uri), "duplicate resource `{uri}`");
        self.resources.push(resource);
        self
    }

    /// Adds a resource template.
    ///
    /// # Panics
    /// When the template is already declared.
    #[must_use]
    pub fn resource_template(mut self, template: ResourceTemplate) -> Self {
        let uri = &template.info().uri;
        assert!(self.templates.iter().all(|t| t.info().uri != *uri), "duplicate resource template `{uri}`");
        self.templates.push(template);
        self
    }

    /// The resources with fixed URIs (the WIT `resources.list-resources`).
    pub fn resource_infos(&self) -> Vec<ResourceInfo> {
        self.resources.iter().map(|r| r.info().clone()).collect()
    }

    /// The resource templates (the WIT `resources.list-resource-templates`; `uri` is
    /// the template).
    pub fn template_infos(&self) -> Vec<ResourceInfo> {
        self.templates.iter().map(|t| t.info().clone()).collect()
    }

    /// Reads a resource: a declared URI, else the first template it matches (the WIT
    /// `resources.read-resource`).
    pub fn read_resource(&self, uri: &str) -> Result<Vec<Contents>, ResourceError> {
        crate::resource::read(&self.resources, &self.templates, uri)
    }

    /// Renders the messages after a persona's system prompt (the WIT
    /// `personas.render-messages`).
    pub fn render_messages(&self, name: &str, context: &str) -> Result<Vec<PromptMessage>, String> {
        let persona =
            self.personas.iter().find(|p| p.spec().name == name).ok_or_else(|| format!("no persona named `{name}`"))?;
        persona.render_messages(context)
    }
}

impl ToolSet for Plugin {
    fn tool(self, tool: impl Tool) -> Self {
        Plugin::tool(self, tool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::{NoInput, Structured, tool};

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Add {
        a: i64,
        b: i64,
    }

    #[derive(serde::Serialize, schemars::JsonSchema)]
    struct Sum {
        sum: i64,
    }

    fn plugin() -> Plugin {
        Plugin::new().tool(tool("add", "adds", |x: Add| Ok(Structured(Sum { sum: x.a + x.b }))).read_only()).tool(tool(
            "hello",
            "says hello",
            |_: NoInput| Ok("hello"),
        ))
    }

    #[test]
    fn lists_tools_with_derived_schemas() {
        let specs = plugin().tool_specs();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].input_schema["properties"]["a"]["type"], "integer");
        assert_eq!(specs[0].output_schema.as_ref().expect("structured")["properties"]["sum"]["type"], "integer");
        assert!(specs[0].annotations.read_only);
        assert!(specs[1].output_schema.is_none());
    }

    #[test]
    fn calls_a_tool_and_returns_structured_output() {
        let out = plugin().call("add", r#"{"a":2,"b":3}"#).expect("adds");
        assert_eq!(out.structured, Some(serde_json::json!({"sum": 5})));
    }

    #[test]
    fn unknown_tool_is_not_found() {
        assert_eq!(plugin().call("nope", "{}"), Err(ToolError::NotFound("nope".into())));
    }

    #[test]
    #[should_panic(expected = "duplicate tool name `hello`")]
    fn refuses_duplicate_tool_names() {
        let _ = plugin().tool(tool("hello", "again", |_: NoInput| Ok("x")));
    }

    #[test]
    fn validates_names() {
        assert!(is_valid_name("regex_extract"));
        assert!(is_valid_name("a-B_9"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name(&"x".repeat(49)));
    }
}
