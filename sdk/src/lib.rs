//! `maestro-sdk`: write Maestro plugins — tools and personas — in Rust, built as
//! WebAssembly components for `wasm32-wasip2`.
//!
//! The contract between plugins and the host is the WIT package in `sdk/wit/`
//! ([`WIT_PACKAGE`]). This crate generates its bindings, and lets you write:
//!
//! - **tools** as typed functions (or [`Tool`] impls): the input is any
//!   `serde::Deserialize + schemars::JsonSchema` type; the SDK derives the input JSON
//!   Schema, deserialises the arguments (bad arguments become
//!   [`ToolError::InvalidArguments`] naming the field), derives an output schema when
//!   the tool returns [`Structured<T>`], and maps the result to the WIT `tool-output`;
//! - **personas** as data ([`PersonaSpec`]), rendered by filling `{{argument}}`
//!   placeholders or by your own function;
//! - **resources** served over MCP by URI: fixed ones ([`Resource`]) and families named
//!   by a URI template ([`ResourceTemplate`], `notes://pages/{page}`), each with the
//!   function that reads it (see [`resource`]);
//! - the host services: [`log`], [`progress`], [`cancelled`], [`config`], a small
//!   blocking [`http`] client over `wasi:http`, and the platform's models
//!   ([`model::complete`], paid by the caller, when policy grants it), and the person
//!   behind the call ([`user::ask`], MCP elicitation).
//!
//! [`export_plugin!`] implements the WIT exports for you. Off `wasm32`, the host
//! imports are an in-process fake ([`testing`]), so `cargo test` runs tools natively.
//!
//! # Example
//!
//! A plugin with one tool and one persona (`src/lib.rs` of a crate with
//! `crate-type = ["cdylib", "rlib"]`):
//!
//! ```
//! use maestro_sdk::{
//!     ModelTier, Persona, PersonaSpec, PromptArgument, Structured, ToolError, export_plugin, tool,
//! };
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! /// Arguments of `shout`; doc comments become schema descriptions.
//! #[derive(Deserialize, JsonSchema)]
//! struct ShoutArgs {
//!     /// What to shout.
//!     text: String,
//!     /// How many exclamation marks (default 1).
//!     #[serde(default = "one")]
//!     marks: u8,
//! }
//!
//! fn one() -> u8 {
//!     1
//! }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Shouted {
//!     text: String,
//! }
//!
//! fn shout(args: ShoutArgs) -> Result<Structured<Shouted>, ToolError> {
//!     if args.marks > 10 {
//!         return Err(ToolError::invalid("at most 10 marks"));
//!     }
//!     maestro_sdk::log::info(format!("shouting {} bytes", args.text.len()));
//!     let text = args.text.to_uppercase() + &"!".repeat(usize::from(args.marks));
//!     Ok(Structured(Shouted { text }))
//! }
//!
//! fn herald() -> Persona {
//!     Persona::new(
//!         PersonaSpec::new(
//!             "herald",
//!             "Herald",
//!             "announces news",
//!             "You are a herald. Announce {{news}} to the {{audience}}.",
//!         )
//!         .model_tier(ModelTier::Small)
//!         .tools(["loud.*"])
//!         .argument(PromptArgument::required("news", "what to announce"))
//!         .argument(PromptArgument::optional("audience", "who listens").values(["court", "town"])),
//!     )
//! }
//!
//! export_plugin! {
//!     tools: [tool("shout", "Upper-cases text", shout).read_only().idempotent()],
//!     personas: [herald()],
//! }
//!
//! // Natively, `export_plugin!` gives `maestro_plugin()`, the registry the exports use:
//! # fn main() {
//! let plugin = maestro_plugin();
//! let out = plugin.call("shout", r#"{"text":"hi","marks":2}"#).expect("shouts");
//! assert_eq!(out.structured, Some(serde_json::json!({ "text": "HI!!" })));
//! let err = plugin.call("shout", r#"{"marks":2}"#).expect_err("no text");
//! assert!(err.to_string().contains("missing field `text`"));
//! let prompt = plugin.render("herald", r#"{"news":"peace","audience":"town"}"#);
//! assert_eq!(prompt, Ok(Some("You are a herald. Announce peace to the town.".into())));
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2 -p NAME`; the component
//! is `target/wasm32-wasip2/release/NAME.wasm` (dashes become underscores).

mod host;
pub mod http;
pub mod model;
mod persona;
mod plugin;
pub mod resource;
mod tool;
pub mod user;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
mod wit;

pub use host::{LogLevel, cancelled, config, config_json, log, progress};
pub use persona::{
    Messages, ModelTier, Persona, PersonaSpec, PromptArgument, PromptContent, PromptMessage, PromptRole, RenderContext,
    RenderFn, RenderMessagesFn,
};
pub use plugin::{Plugin, is_valid_name};
pub use resource::{Body, Contents, Params, Resource, ResourceError, ResourceInfo, ResourceTemplate};
pub use tool::{
    Annotations, Content, Dispatch, FnTool, IntoToolOutput, NoInput, ResourceContents, Structured, Tool, ToolError,
    ToolInfo, ToolOutput, ToolSet, ToolSpec, schema_of, tool,
};

// Re-exported so plugins use the same versions as the SDK's schemas and values.
pub use schemars;
pub use serde_json;

/// The WIT package version this SDK targets.
pub const WIT_PACKAGE: &str = "maestro:plugin@0.2.0";

/// What [`export_plugin!`] expands to; not part of the API.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __private {
    pub use crate::wit::{
        PersonasGuest, ResourcesGuest, ToolsGuest, WitContents, WitPersonaSpec, WitPromptMessage, WitResourceError,
        WitResourceSpec, WitResourceTemplate, WitToolError, WitToolOutput, WitToolSpec, bindings, personas_list,
        personas_render, personas_render_messages, resources_list, resources_read, resources_templates, tool_result,
        tools_call, tools_list,
    };
}

/// Implements the plugin's WIT exports (`maestro:plugin/tools`,
/// `maestro:plugin/personas` and `maestro:plugin/resources`) from lists of tools,
/// personas, resources and resource templates.
///
/// ```text
/// export_plugin! {
///     tools: [tool("evaluate", "…", evaluate), MyTool::new()],
///     personas: [my_persona()],
///     resources: [Resource::new("notes://readme", "readme", read_me)],
///     resource_templates: [ResourceTemplate::new("notes://pages/{page}", "page", read_page)],
/// }
/// ```
///
/// Any list may be left out (the export then lists nothing), the others keep this
/// order. Each tool is a value
/// implementing [`Tool`]; each persona converts into a [`Persona`]. The macro also
/// defines `maestro_plugin() -> &'static Plugin` in the calling module, which the
/// exports use and native tests can call. Use it once per crate, at the crate root.
#[macro_export]
macro_rules! export_plugin {
    (
        $(tools: [$($tool:expr),* $(,)?] $(,)?)?
        $(personas: [$($persona:expr),* $(,)?] $(,)?)?
        $(resources: [$($resource:expr),* $(,)?] $(,)?)?
        $(resource_templates: [$($template:expr),* $(,)?] $(,)?)?
    ) => {
        /// This plugin's tools and personas, built on first use.
        #[allow(dead_code)]
        pub(crate) fn maestro_plugin() -> &'static $crate::Plugin {
            static PLUGIN: ::std::sync::OnceLock<$crate::Plugin> = ::std::sync::OnceLock::new();
            PLUGIN.get_or_init(|| {
                #[allow(unused_mut)]
                let mut plugin = $crate::Plugin::new();
                $($(plugin = plugin.tool($tool);)*)?
                $($(plugin = plugin.persona($persona);)*)?
                $($(plugin = plugin.resource($resource);)*)?
                $($(plugin = plugin.resource_template($template);)*)?
                plugin
            })
        }

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct MaestroPluginExports;

            impl $crate::__private::ToolsGuest for MaestroPluginExports {
                fn list_tools() -> ::std::vec::Vec<$crate::__private::WitToolSpec> {
                    $crate::__private::tools_list(maestro_plugin())
                }

                fn call(
                    name: ::std::string::String,
                    arguments: ::std::string::String,
                ) -> ::std::result::Result<$crate::__private::WitToolOutput, $crate::__private::WitToolError> {
                    // Only the called tool runs; the registry is not built.
                    $crate::__private::tool_result(
                        $crate::Dispatch::new(&name, &arguments)$($(.tool($tool))*)?.finish(),
                    )
                }
            }

            impl $crate::__private::PersonasGuest for MaestroPluginExports {
                fn list_personas() -> ::std::vec::Vec<$crate::__private::WitPersonaSpec> {
                    $crate::__private::personas_list(maestro_plugin())
                }

                fn render(
                    name: ::std::string::String,
                    context: ::std::string::String,
                ) -> ::std::result::Result<::std::option::Option<::std::string::String>, ::std::string::String> {
                    $crate::__private::personas_render(maestro_plugin(), name, context)
                }

                fn render_messages(
                    name: ::std::string::String,
                    context: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::__private::WitPromptMessage>,
                    ::std::string::String,
                > {
                    $crate::__private::personas_render_messages(maestro_plugin(), name, context)
                }
            }

            impl $crate::__private::ResourcesGuest for MaestroPluginExports {
                fn list_resources() -> ::std::vec::Vec<$crate::__private::WitResourceSpec> {
                    $crate::__private::resources_list(maestro_plugin())
                }

                fn list_resource_templates() -> ::std::vec::Vec<$crate::__private::WitResourceTemplate> {
                    $crate::__private::resources_templates(maestro_plugin())
                }

                fn read_resource(
                    uri: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::__private::WitContents>,
                    $crate::__private::WitResourceError,
                > {
                    $crate::__private::resources_read(maestro_plugin(), uri)
                }
            }

            $crate::__private::bindings::__maestro_export_world!(MaestroPluginExports with_types_in $crate::__private::bindings);
        };
    };
}
