//! The plugin contract's versions: generated bindings for every `maestro:plugin`
//! version the host runs (0.1.0 and 0.2.0, from `sdk/wit/`), and the version-specific
//! glue — converting what a guest declares and returns into the core's types, and
//! calling its exports — written once ([`per_version!`]) and expanded for each.
//!
//! 0.2.0 keeps 0.1.0's `types`, `host`, `tools` and `personas` unchanged and adds the
//! `model` import, so the conversions read the same for both; the generated types are
//! distinct Rust types all the same, hence the macro.

use std::collections::HashMap;

use maestro_core::plugin::{PersonaSpec, ToolSpec};
use wasmtime::Store;

use crate::{Answer, SandboxError, State};

/// Generated host bindings, one module per contract version.
pub(crate) mod bindings {
    /// `maestro:plugin@0.1.0`.
    pub(crate) mod v1 {
        wasmtime::component::bindgen!({
            path: "../../sdk/wit/0.1.0",
            world: "plugin",
            exports: { default: async },
        });
    }

    /// `maestro:plugin@0.2.0`: the completion and question imports are async (they wait
    /// on a model, a person).
    pub(crate) mod v2 {
        wasmtime::component::bindgen!({
            path: "../../sdk/wit/0.2.0",
            world: "plugin",
            imports: { "maestro:plugin/model.complete": async, "maestro:plugin/user.ask": async },
            exports: { default: async },
        });
    }
}

/// The version-specific glue, expanded in a module that has `Plugin` (the version's
/// generated world) and `wit` (its `types` interface) in scope.
macro_rules! per_version {
    () => {
        use maestro_core::call::Failure;
        use maestro_core::plugin::{
            Annotations, Content, ModelTier, PersonaSpec, PromptArgument, ToolError, ToolOutput, ToolSpec,
        };
        use std::collections::HashMap;
        use wasmtime::Store;

        use crate::{Answer, SandboxError, State, checked_error, parse_schema};

        /// `list-tools` then `list-personas`, counted, converted and checked.
        pub(crate) async fn list(
            plugin: &Plugin,
            store: &mut Store<State>,
        ) -> wasmtime::Result<Result<(Vec<ToolSpec>, Vec<PersonaSpec>), SandboxError>> {
            let tools = plugin.maestro_plugin_tools().call_list_tools(&mut *store).await?;
            let personas = plugin.maestro_plugin_personas().call_list_personas(&mut *store).await?;
            // Counted before converting: each spec is parsed and checked below.
            let (tool_count, persona_count) = (tools.len(), personas.len());
            if tool_count > maestro_core::plugin::MAX_TOOLS || persona_count > maestro_core::plugin::MAX_PERSONAS {
                return Ok(Err(SandboxError::BadSpec {
                    what: "listing",
                    reason: format!(
                        "{tool_count} tools and {persona_count} personas, over the limits of {} and {}",
                        maestro_core::plugin::MAX_TOOLS,
                        maestro_core::plugin::MAX_PERSONAS
                    ),
                }));
            }
            let specs = (|| {
                let tools = tools.into_iter().map(tool_spec).collect::<Result<Vec<_>, _>>()?;
                let personas = personas.into_iter().map(persona_spec).collect::<Result<Vec<_>, _>>()?;
                Ok((tools, personas))
            })();
            Ok(specs)
        }

        /// `tools.call`, its answer measured, parsed and checked.
        pub(crate) async fn call(
            plugin: &Plugin,
            store: &mut Store<State>,
            tool: &str,
            arguments: &str,
            schemas: &HashMap<String, serde_json::Value>,
            limit: usize,
        ) -> wasmtime::Result<Answer> {
            let answer = plugin.maestro_plugin_tools().call_call(&mut *store, tool, arguments).await?;
            Ok(match answer {
                Ok(output) => Answer::Output(checked_output(output, schemas.get(tool), limit)),
                Err(error) => Answer::Error(checked_error(tool_error(error), limit)),
            })
        }

        /// The size of a guest's result before anything is parsed: every string's bytes. What
        /// leaves the host is at least this (JSON texts aside, whose whitespace is dropped).
        pub(crate) fn payload_len(output: &wit::ToolOutput) -> usize {
            let content: usize = output
                .content
                .iter()
                .map(|c| match c {
                    wit::Content::Text(text) | wit::Content::Json(text) => text.len(),
                    wit::Content::Image(wit::Image { data, mime_type })
                    | wit::Content::Audio(wit::Audio { data, mime_type }) => data.len() + mime_type.len(),
                    wit::Content::ResourceLink(link) => {
                        link.uri.len()
                            + link.name.len()
                            + link.description.as_ref().map_or(0, String::len)
                            + link.mime_type.as_ref().map_or(0, String::len)
                    }
                    wit::Content::EmbeddedResource(resource) => {
                        resource.uri.len()
                            + resource.mime_type.as_ref().map_or(0, String::len)
                            + match &resource.contents {
                                wit::ResourceContents::Text(text) | wit::ResourceContents::Blob(text) => text.len(),
                            }
                    }
                })
                .fold(0, usize::saturating_add);
            content.saturating_add(output.structured.as_ref().map_or(0, String::len))
        }

        /// Converts a guest's result and checks it: its payload, then its size as JSON,
        /// against `limit` (so nothing over the limit is ever parsed); the structured result
        /// must be JSON and satisfy the tool's output schema, if it declared one.
        pub(crate) fn checked_output(
            output: wit::ToolOutput,
            schema: Option<&serde_json::Value>,
            limit: usize,
        ) -> Result<(ToolOutput, usize), Failure> {
            let payload = payload_len(&output);
            if payload > limit {
                return Err(Failure::OutputTooLarge { size: payload, limit });
            }
            let structured = match &output.structured {
                None => None,
                Some(text) => Some(serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                    Failure::ToolError(ToolError::Failed(format!("structured output is not valid JSON: {e}")))
                })?),
            };
            let output = ToolOutput { content: output.content.into_iter().map(content).collect(), structured };
            let size = output.json_len();
            if size > limit {
                return Err(Failure::OutputTooLarge { size, limit });
            }
            if let (Some(schema), Some(structured)) = (schema, &output.structured) {
                maestro_core::plugin::schema::validate(schema, structured).map_err(|violation| {
                    Failure::ToolError(ToolError::Failed(format!(
                        "structured output does not match the tool's output schema: {violation}"
                    )))
                })?;
            }
            Ok((output, size))
        }

        pub(crate) fn tool_spec(spec: wit::ToolSpec) -> Result<ToolSpec, SandboxError> {
            if !maestro_core::plugin::valid_item_name(&spec.name) {
                return Err(SandboxError::BadSpec {
                    what: "tool",
                    reason: format!("name `{}` must match ^[A-Za-z0-9_-]{{1,48}}$", spec.name),
                });
            }
            let input_schema = parse_schema("tool", &spec.name, &spec.input_schema)?;
            let output_schema =
                spec.output_schema.as_deref().map(|s| parse_schema("tool", &spec.name, s)).transpose()?;
            let a = spec.annotations;
            let spec = ToolSpec {
                name: spec.name,
                title: spec.title,
                description: spec.description,
                input_schema,
                output_schema,
                annotations: Annotations {
                    read_only: a.read_only,
                    destructive: a.destructive,
                    idempotent: a.idempotent,
                    open_world: a.open_world,
                },
            };
            maestro_core::plugin::check_tool(&spec)
                .map_err(|e| SandboxError::BadSpec { what: "tool", reason: e.to_string() })?;
            Ok(spec)
        }

        pub(crate) fn persona_spec(spec: wit::PersonaSpec) -> Result<PersonaSpec, SandboxError> {
            if !maestro_core::plugin::valid_item_name(&spec.name) {
                return Err(SandboxError::BadSpec {
                    what: "persona",
                    reason: format!("name `{}` must match ^[A-Za-z0-9_-]{{1,48}}$", spec.name),
                });
            }
            let spec = PersonaSpec {
                name: spec.name,
                title: spec.title,
                role: spec.role,
                system_prompt: spec.system_prompt,
                model_tier: match spec.model_tier {
                    wit::ModelTier::Small => ModelTier::Small,
                    wit::ModelTier::Medium => ModelTier::Medium,
                    wit::ModelTier::Large => ModelTier::Large,
                },
                tools: spec.tools,
                arguments: spec
                    .arguments
                    .into_iter()
                    .map(|a| PromptArgument {
                        name: a.name,
                        description: a.description,
                        required: a.required,
                        values: a.values,
                    })
                    .collect(),
            };
            maestro_core::plugin::check_persona(&spec)
                .map_err(|e| SandboxError::BadSpec { what: "persona", reason: e.to_string() })?;
            Ok(spec)
        }

        fn content(content: wit::Content) -> Content {
            use maestro_core::plugin::ResourceContents;
            match content {
                wit::Content::Text(text) => Content::Text { text },
                wit::Content::Json(json) => match serde_json::from_str(&json) {
                    Ok(json) => Content::Json { json },
                    Err(_) => Content::Text { text: json },
                },
                wit::Content::Image(image) => Content::Image { data: image.data, mime_type: image.mime_type },
                wit::Content::ResourceLink(link) => Content::ResourceLink {
                    uri: link.uri,
                    name: link.name,
                    description: link.description,
                    mime_type: link.mime_type,
                },
                wit::Content::Audio(audio) => Content::Audio { data: audio.data, mime_type: audio.mime_type },
                wit::Content::EmbeddedResource(resource) => Content::EmbeddedResource {
                    uri: resource.uri,
                    mime_type: resource.mime_type,
                    contents: match resource.contents {
                        wit::ResourceContents::Text(text) => ResourceContents::Text(text),
                        wit::ResourceContents::Blob(blob) => ResourceContents::Blob(blob),
                    },
                },
            }
        }

        fn tool_error(error: wit::ToolError) -> ToolError {
            match error {
                wit::ToolError::InvalidArguments(m) => ToolError::InvalidArguments(m),
                wit::ToolError::NotFound(m) => ToolError::NotFound(m),
                wit::ToolError::Failed(m) => ToolError::Failed(m),
                wit::ToolError::Cancelled => ToolError::Cancelled,
            }
        }
    };
}

/// `maestro:plugin@0.1.0`.
pub(crate) mod v1 {
    use super::bindings::v1::Plugin;
    pub(crate) use super::bindings::v1::maestro::plugin::types as wit;
    per_version!();

    /// `personas.render`: one text, the system prompt.
    pub(crate) async fn render(
        plugin: &Plugin,
        store: &mut Store<State>,
        persona: &str,
        context: &str,
        limit: usize,
    ) -> wasmtime::Result<Result<maestro_core::plugin::Rendered, Failure>> {
        let rendered = plugin.maestro_plugin_personas().call_render(&mut *store, persona, context).await?;
        Ok(crate::checked_rendering(rendered.map(|system| (system, Vec::new())), limit))
    }
}

/// `maestro:plugin@0.2.0`.
pub(crate) mod v2 {
    use super::bindings::v2::Plugin;
    pub(crate) use super::bindings::v2::maestro::plugin::types as wit;
    per_version!();

    use maestro_core::plugin::{PromptMessage, PromptRole, Rendered};

    /// `personas.render`, then `personas.render-messages` on the same instance.
    pub(crate) async fn render(
        plugin: &Plugin,
        store: &mut Store<State>,
        persona: &str,
        context: &str,
        limit: usize,
    ) -> wasmtime::Result<Result<Rendered, Failure>> {
        let personas = plugin.maestro_plugin_personas();
        let system = match personas.call_render(&mut *store, persona, context).await? {
            Ok(system) => system,
            Err(message) => return Ok(crate::checked_rendering(Err(message), limit)),
        };
        let messages = personas.call_render_messages(&mut *store, persona, context).await?;
        Ok(crate::checked_rendering(
            messages.map(|messages| (system, messages.into_iter().map(prompt_message).collect())),
            limit,
        ))
    }

    use super::bindings::v2::exports::maestro::plugin::resources as res;
    use maestro_core::plugin::{ReadContents, ResourceContents, ResourceListing, ResourceSpec, ResourceTemplateSpec};

    /// `resources.list-resources` and `list-resource-templates`, counted before they are
    /// converted, then checked ([`ResourceListing::new`]).
    pub(crate) async fn list_resources(
        plugin: &Plugin,
        store: &mut Store<State>,
    ) -> wasmtime::Result<Result<ResourceListing, SandboxError>> {
        let exports = plugin.maestro_plugin_resources();
        let resources = exports.call_list_resources(&mut *store).await?;
        let templates = exports.call_list_resource_templates(&mut *store).await?;
        let resources: Vec<ResourceSpec> = resources
            .into_iter()
            .map(|r| ResourceSpec {
                uri: r.uri,
                name: r.name,
                title: r.title,
                description: r.description,
                mime_type: r.mime_type,
                size: r.size,
            })
            .collect();
        let templates: Vec<ResourceTemplateSpec> = templates
            .into_iter()
            .map(|t| ResourceTemplateSpec {
                uri_template: t.uri_template,
                name: t.name,
                title: t.title,
                description: t.description,
                mime_type: t.mime_type,
            })
            .collect();
        Ok(ResourceListing::new(resources, templates)
            .map_err(|e| SandboxError::BadSpec { what: "resource", reason: e.to_string() }))
    }

    /// `resources.read-resource`, measured against `limit` before anything is kept: its
    /// payload first, then its size as the JSON that leaves the host.
    pub(crate) async fn read_resource(
        plugin: &Plugin,
        store: &mut Store<State>,
        uri: &str,
        limit: usize,
    ) -> wasmtime::Result<Result<Vec<ReadContents>, Failure>> {
        let read = plugin.maestro_plugin_resources().call_read_resource(&mut *store, uri).await?;
        let contents = match read {
            Ok(contents) => contents,
            Err(res::Error::NotFound(message)) => {
                return Ok(Err(crate::checked_error(ToolError::NotFound(message), limit)));
            }
            Err(res::Error::Failed(message)) => {
                return Ok(Err(crate::checked_error(ToolError::Failed(message), limit)));
            }
        };
        let payload = contents
            .iter()
            .map(|c| {
                c.uri.len()
                    + c.mime_type.as_ref().map_or(0, String::len)
                    + match &c.data {
                        res::Data::Text(text) | res::Data::Blob(text) => text.len(),
                    }
            })
            .fold(0, usize::saturating_add);
        if payload > limit {
            return Ok(Err(Failure::OutputTooLarge { size: payload, limit }));
        }
        let contents: Vec<ReadContents> = contents
            .into_iter()
            .map(|c| ReadContents {
                uri: c.uri,
                mime_type: c.mime_type,
                contents: match c.data {
                    res::Data::Text(text) => ResourceContents::Text(text),
                    res::Data::Blob(blob) => ResourceContents::Blob(blob),
                },
            })
            .collect();
        let size = maestro_core::plugin::json_len(&contents);
        if size > limit {
            return Ok(Err(Failure::OutputTooLarge { size, limit }));
        }
        Ok(Ok(contents))
    }

    fn prompt_message(message: wit::PromptMessage) -> PromptMessage {
        let role = match message.role {
            wit::PromptRole::User => PromptRole::User,
            wit::PromptRole::Assistant => PromptRole::Assistant,
        };
        let content = content(match message.content {
            wit::PromptContent::Text(text) => wit::Content::Text(text),
            wit::PromptContent::Image(image) => wit::Content::Image(image),
            wit::PromptContent::EmbeddedResource(resource) => wit::Content::EmbeddedResource(resource),
        });
        PromptMessage { role, content }
    }
}

/// A linked plugin ready to instantiate, of either version.
#[derive(Clone)]
pub(crate) enum Pre {
    /// Built against 0.1.0.
    V1(bindings::v1::PluginPre<State>),
    /// Built against 0.2.0.
    V2(bindings::v2::PluginPre<State>),
}

/// A live instance of either version.
pub(crate) enum Instance {
    V1(bindings::v1::Plugin),
    V2(bindings::v2::Plugin),
}

/// The contract versions the host runs, newest first, by the name of the `tools`
/// export a component of that version has.
const TOOLS_EXPORTS: [(&str, u8); 2] = [("maestro:plugin/tools@0.2.0", 2), ("maestro:plugin/tools@0.1.0", 1)];

impl Pre {
    /// Links `instance_pre` as the version the component was built against (told by
    /// its exports).
    pub(crate) fn new(
        engine: &wasmtime::Engine,
        instance_pre: wasmtime::component::InstancePre<State>,
    ) -> Result<Self, SandboxError> {
        let exports: Vec<String> =
            instance_pre.component().component_type().exports(engine).map(|(name, _)| name.to_owned()).collect();
        let version = TOOLS_EXPORTS.iter().find(|(name, _)| exports.iter().any(|e| e == name)).map(|(_, v)| *v);
        let invalid = |e: wasmtime::Error| SandboxError::Invalid(format!("{e:#}"));
        match version {
            Some(2) => Ok(Pre::V2(bindings::v2::PluginPre::new(instance_pre).map_err(invalid)?)),
            Some(_) => Ok(Pre::V1(bindings::v1::PluginPre::new(instance_pre).map_err(invalid)?)),
            None => Err(SandboxError::Invalid(format!(
                "the component exports none of {}: is it built against a maestro:plugin version this host runs \
                 (0.1.0, 0.2.0)?",
                TOOLS_EXPORTS.iter().map(|(name, _)| format!("`{name}`")).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The contract version, e.g. `0.2.0`.
    pub(crate) fn version(&self) -> &'static str {
        match self {
            Pre::V1(_) => "0.1.0",
            Pre::V2(_) => "0.2.0",
        }
    }

    pub(crate) async fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V1(pre) => Instance::V1(pre.instantiate_async(&mut *store).await?),
            Pre::V2(pre) => Instance::V2(pre.instantiate_async(&mut *store).await?),
        })
    }
}

impl Instance {
    /// The plugin's tools and personas, checked one by one.
    pub(crate) async fn list(
        &self,
        store: &mut Store<State>,
    ) -> wasmtime::Result<Result<(Vec<ToolSpec>, Vec<PersonaSpec>), SandboxError>> {
        match self {
            Instance::V1(plugin) => v1::list(plugin, store).await,
            Instance::V2(plugin) => v2::list(plugin, store).await,
        }
    }

    /// Calls a tool.
    pub(crate) async fn call(
        &self,
        store: &mut Store<State>,
        tool: &str,
        arguments: &str,
        schemas: &HashMap<String, serde_json::Value>,
        limit: usize,
    ) -> wasmtime::Result<Answer> {
        match self {
            Instance::V1(plugin) => v1::call(plugin, store, tool, arguments, schemas, limit).await,
            Instance::V2(plugin) => v2::call(plugin, store, tool, arguments, schemas, limit).await,
        }
    }

    /// The plugin's resources and templates, checked (0.1.0 components have none).
    pub(crate) async fn list_resources(
        &self,
        store: &mut Store<State>,
    ) -> wasmtime::Result<Result<maestro_core::plugin::ResourceListing, SandboxError>> {
        match self {
            Instance::V1(_) => Ok(Ok(maestro_core::plugin::ResourceListing::default())),
            Instance::V2(plugin) => v2::list_resources(plugin, store).await,
        }
    }

    /// Reads a resource, its contents checked against `limit` (a 0.1.0 component
    /// serves none: not found).
    pub(crate) async fn read_resource(
        &self,
        store: &mut Store<State>,
        uri: &str,
        limit: usize,
    ) -> wasmtime::Result<Result<Vec<maestro_core::plugin::ReadContents>, maestro_core::call::Failure>> {
        match self {
            Instance::V1(_) => Ok(Err(maestro_core::call::Failure::ToolError(
                maestro_core::plugin::ToolError::NotFound(uri.chars().take(256).collect()),
            ))),
            Instance::V2(plugin) => v2::read_resource(plugin, store, uri, limit).await,
        }
    }

    /// Renders a persona, its result checked against `limit`.
    pub(crate) async fn render(
        &self,
        store: &mut Store<State>,
        persona: &str,
        context: &str,
        limit: usize,
    ) -> wasmtime::Result<Result<maestro_core::plugin::Rendered, maestro_core::call::Failure>> {
        match self {
            Instance::V1(plugin) => v1::render(plugin, store, persona, context, limit).await,
            Instance::V2(plugin) => v2::render(plugin, store, persona, context, limit).await,
        }
    }
}
