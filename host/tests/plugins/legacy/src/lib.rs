//! Test fixture: a plugin built against `maestro:plugin@0.1.0` exactly as that version
//! ships, with plain `wit-bindgen` (not `maestro-sdk`, which targets the newest
//! version). The host must keep loading and calling components of every version it
//! supports: this one has a tool (`echo`, which also logs and reads its config) and a
//! persona.
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code)] // generated bindings

#[allow(missing_debug_implementations, unreachable_pub, clippy::all, clippy::pedantic)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../../sdk/wit/0.1.0",
        world: "plugin",
    });
}

use bindings::exports::maestro::plugin::{personas, tools};
use bindings::maestro::plugin::host;
use bindings::maestro::plugin::types::{
    Annotations, Content, LogLevel, ModelTier, PersonaSpec, ToolError, ToolOutput, ToolSpec,
};

struct Legacy;

impl tools::Guest for Legacy {
    fn list_tools() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "echo".into(),
            title: None,
            description: "Returns its text argument and the plugin's config".into(),
            input_schema: r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#.into(),
            output_schema: None,
            annotations: Annotations { read_only: true, destructive: false, idempotent: true, open_world: false },
        }]
    }

    fn call(name: String, arguments: String) -> Result<ToolOutput, ToolError> {
        if name != "echo" {
            return Err(ToolError::NotFound(name));
        }
        host::log(LogLevel::Info, "echoing");
        Ok(ToolOutput {
            content: vec![Content::Text(format!("built against 0.1.0: {arguments}")), Content::Json(host::config())],
            structured: None,
        })
    }
}

impl personas::Guest for Legacy {
    fn list_personas() -> Vec<PersonaSpec> {
        vec![PersonaSpec {
            name: "elder".into(),
            title: "Elder".into(),
            role: "remembers the first contract".into(),
            system_prompt: "You remember how things were.".into(),
            model_tier: ModelTier::Small,
            tools: vec!["legacy.*".into()],
            arguments: vec![],
        }]
    }

    fn render(_name: String, _context: String) -> Result<Option<String>, String> {
        Ok(None)
    }
}

bindings::export!(Legacy with_types_in bindings);
