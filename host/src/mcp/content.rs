//! Plugin results in MCP terms.

use maestro_core::plugin::{Content, Prompt, PromptRole, ResourceContents, ToolOutput};
use rmcp::model::{CallToolResult, ContentBlock, PromptMessage, Resource, Role};

/// One piece of plugin content as an MCP content block.
pub(super) fn block(content: Content) -> ContentBlock {
    match content {
        Content::Text { text } => ContentBlock::text(text),
        // JSON goes to models as its text; the structured result is separate.
        Content::Json { json } => ContentBlock::text(json.to_string()),
        Content::Image { data, mime_type } => ContentBlock::image(data, mime_type),
        Content::ResourceLink { uri, name, description, mime_type } => {
            let mut resource = Resource::new(uri, name);
            resource.description = description;
            resource.mime_type = mime_type;
            ContentBlock::resource_link(resource)
        }
        Content::Audio { data, mime_type } => ContentBlock::audio(data, mime_type),
        Content::EmbeddedResource { uri, mime_type, contents } => ContentBlock::resource(match contents {
            ResourceContents::Text(text) => {
                rmcp::model::ResourceContents::TextResourceContents { uri, mime_type, text, meta: None }
            }
            ResourceContents::Blob(blob) => {
                rmcp::model::ResourceContents::BlobResourceContents { uri, mime_type, blob, meta: None }
            }
        }),
    }
}

/// A rendered prompt as MCP prompt messages: the system prompt first, as a user message
/// (MCP prompts have no system role), then the plugin's messages in order, each with its
/// text, image or embedded resource.
pub(super) fn prompt_messages(prompt: Prompt) -> Vec<PromptMessage> {
    std::iter::once(PromptMessage::new_text(Role::User, prompt.system))
        .chain(prompt.messages.into_iter().map(|message| {
            let role = match message.role {
                PromptRole::User => Role::User,
                PromptRole::Assistant => Role::Assistant,
            };
            PromptMessage::new(role, block(message.content))
        }))
        .collect()
}

/// A successful call's result. With structured output and no content, the structured
/// value is also given as text (clients that ignore `structuredContent` still see it).
pub(super) fn success(output: ToolOutput) -> CallToolResult {
    let mut content: Vec<ContentBlock> = output.content.into_iter().map(block).collect();
    if content.is_empty()
        && let Some(structured) = &output.structured
    {
        content.push(ContentBlock::text(structured.to_string()));
    }
    let mut result = CallToolResult::success(content);
    result.structured_content = output.structured;
    result
}

/// A tool that ran and failed: an `isError` result the model can read.
pub(super) fn failure(kind: &str, message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!("{kind}: {message}"))])
}
