//! What plugins provide, as the rest of Maestro sees it: tool and persona specs, tool
//! results and typed tool errors. The sandbox converts the WIT types into these.

use serde::Serialize;

/// Hints for clients about a tool's behaviour (MCP annotations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Annotations {
    /// Modifies nothing.
    pub read_only: bool,
    /// May destroy or overwrite data.
    pub destructive: bool,
    /// Repeating a call has no further effect.
    pub idempotent: bool,
    /// Reaches outside systems.
    pub open_world: bool,
}

/// A tool, as its plugin declares it (name without the plugin prefix).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    /// Name within the plugin.
    pub name: String,
    /// Short title.
    pub title: Option<String>,
    /// What it does.
    pub description: String,
    /// JSON Schema of the arguments.
    pub input_schema: serde_json::Value,
    /// JSON Schema of the structured result.
    pub output_schema: Option<serde_json::Value>,
    /// Behaviour hints.
    pub annotations: Annotations,
}

/// Preferred model class of a persona.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelTier {
    /// Small, fast model.
    Small,
    /// Medium model.
    Medium,
    /// Large, capable model.
    Large,
}

/// An argument of a persona's prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptArgument {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Whether it must be given.
    pub required: bool,
    /// Enumerable values, if any (for completion).
    pub values: Vec<String>,
}

/// A persona, as its plugin declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersonaSpec {
    /// Name within the plugin.
    pub name: String,
    /// Short title.
    pub title: String,
    /// Role in a team.
    pub role: String,
    /// System prompt.
    pub system_prompt: String,
    /// Preferred model class.
    pub model_tier: ModelTier,
    /// Globs of the tools it wants.
    pub tools: Vec<String>,
    /// Prompt arguments.
    pub arguments: Vec<PromptArgument>,
}

/// One piece of a tool result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A JSON value.
    Json {
        /// The value.
        json: serde_json::Value,
    },
    /// An image, base64-encoded.
    Image {
        /// Base64 data.
        data: String,
        /// MIME type.
        mime_type: String,
    },
    /// A link to a resource.
    ResourceLink {
        /// URI.
        uri: String,
        /// Name.
        name: String,
        /// Description.
        description: Option<String>,
        /// MIME type.
        mime_type: Option<String>,
    },
    /// Audio, base64-encoded.
    Audio {
        /// Base64 data.
        data: String,
        /// MIME type.
        mime_type: String,
    },
    /// A resource with its contents (MCP embedded resource).
    EmbeddedResource {
        /// URI.
        uri: String,
        /// MIME type.
        mime_type: Option<String>,
        /// Text or base64 blob, serialised as a `text` or `blob` field.
        #[serde(flatten)]
        contents: ResourceContents,
    },
}

/// The contents of an embedded resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceContents {
    /// Text.
    Text(String),
    /// Binary, base64-encoded.
    Blob(String),
}

impl ResourceContents {
    /// The text or the base64 blob.
    pub fn as_str(&self) -> &str {
        match self {
            ResourceContents::Text(text) | ResourceContents::Blob(text) => text,
        }
    }
}

impl Content {
    /// Approximate size in bytes, for output limits and metering.
    pub fn size(&self) -> usize {
        match self {
            Content::Text { text } => text.len(),
            Content::Json { json } => json.to_string().len(),
            Content::Image { data, mime_type } => data.len() + mime_type.len(),
            Content::ResourceLink { uri, name, description, mime_type } => {
                uri.len()
                    + name.len()
                    + description.as_ref().map_or(0, String::len)
                    + mime_type.as_ref().map_or(0, String::len)
            }
            Content::Audio { data, mime_type } => data.len() + mime_type.len(),
            Content::EmbeddedResource { uri, mime_type, contents } => {
                uri.len() + mime_type.as_ref().map_or(0, String::len) + contents.as_str().len()
            }
        }
    }
}

/// A successful tool result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolOutput {
    /// Content for people and models.
    pub content: Vec<Content>,
    /// Structured result.
    pub structured: Option<serde_json::Value>,
}

/// Why a tool that ran reported failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ToolError {
    /// Arguments did not fit.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// No such tool in the plugin.
    #[error("no tool named {0}")]
    NotFound(String),
    /// The tool failed.
    #[error("{0}")]
    Failed(String),
    /// The tool stopped because the call was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Plugin names: `^[a-z][a-z0-9_-]{0,31}$`.
pub fn valid_plugin_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Tool and persona names within a plugin: `^[A-Za-z0-9_-]{1,48}$`.
pub fn valid_item_name(name: &str) -> bool {
    (1..=48).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The name a tool is exposed under: `plugin.tool`, at most 64 characters of
/// `[A-Za-z0-9_.-]`.
pub fn qualified_name(plugin: &str, item: &str) -> Option<String> {
    let name = format!("{plugin}.{item}");
    (valid_plugin_name(plugin) && valid_item_name(item) && name.len() <= 64).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_size_counts_every_field_and_serialises_flat() {
        let audio = Content::Audio { data: "UklGRg==".into(), mime_type: "audio/wav".into() };
        assert_eq!(audio.size(), 8 + 9);
        let embedded = Content::EmbeddedResource {
            uri: "test://r".into(),
            mime_type: Some("text/plain".into()),
            contents: ResourceContents::Text("hello".into()),
        };
        assert_eq!(embedded.size(), 8 + 10 + 5);
        assert_eq!(
            serde_json::to_value(&embedded).expect("serialises"),
            serde_json::json!({ "type": "embedded_resource", "uri": "test://r", "mime_type": "text/plain", "text": "hello" })
        );
        let blob = Content::EmbeddedResource {
            uri: "u".into(),
            mime_type: None,
            contents: ResourceContents::Blob("Zg==".into()),
        };
        assert_eq!(blob.size(), 1 + 4);
        assert_eq!(serde_json::to_value(&blob).expect("serialises")["blob"], "Zg==");
    }

    #[test]
    fn names_follow_the_documented_alphabets() {
        assert_eq!(qualified_name("calc", "evaluate").as_deref(), Some("calc.evaluate"));
        assert_eq!(qualified_name("Calc", "evaluate"), None);
        assert_eq!(qualified_name("calc", "eval.uate"), None);
        assert_eq!(qualified_name("calc", ""), None);
        assert_eq!(qualified_name("a", &"x".repeat(49)), None);
        assert_eq!(qualified_name(&"p".repeat(32), &"t".repeat(48)), None, "over 64 characters");
        assert!(valid_plugin_name("web-2") && !valid_plugin_name("2web") && !valid_plugin_name(""));
    }
}
