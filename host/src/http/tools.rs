//! `/v1/plugins`, `/v1/personas`, `/v1/tools` and `POST /v1/tools/{name}/call`: what
//! the caller's policy lets it use, and calls run in the sandbox under that policy.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use maestro_core::Caller;
use maestro_core::plugin::{Annotations, Content, ModelTier, PromptArgument, PromptMessage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::StrictJson;
use super::{AppState, Shared};
use crate::tools::{CallError, Observe, Principal, principal};
use maestro_core::call::{Code, Failure};

/// A tool the caller may use.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolView {
    /// `plugin.tool`.
    pub name: String,
    /// Short title.
    pub title: Option<String>,
    /// What it does.
    pub description: String,
    /// JSON Schema of the arguments.
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
    /// JSON Schema of the structured result.
    #[schema(value_type = Option<Object>)]
    pub output_schema: Option<serde_json::Value>,
    /// Behaviour hints.
    #[schema(value_type = Object)]
    pub annotations: Annotations,
    /// The plugin providing it.
    pub plugin: String,
    /// Credits one call costs under the caller's policy.
    pub credits: u64,
}

/// Answer of `GET /v1/tools`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList {
    /// Tools, by name.
    pub tools: Vec<ToolView>,
}

/// A persona the caller may use.
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonaView {
    /// `plugin.persona`.
    pub name: String,
    /// Short title.
    pub title: String,
    /// Role in a team.
    pub role: String,
    /// System prompt.
    pub system_prompt: String,
    /// Preferred model class.
    #[schema(value_type = String)]
    pub model_tier: ModelTier,
    /// Globs of the tools it wants.
    pub tools: Vec<String>,
    /// Prompt arguments.
    #[schema(value_type = Vec<Object>)]
    pub arguments: Vec<PromptArgument>,
    /// The plugin providing it.
    pub plugin: String,
}

/// Answer of `GET /v1/personas`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonaList {
    /// Personas, by name.
    pub personas: Vec<PersonaView>,
}

/// A loaded plugin.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// One line.
    pub description: String,
    /// SHA-256 of the component.
    pub sha256: String,
    /// Its tools (qualified names).
    pub tools: Vec<String>,
    /// Its personas (qualified names).
    pub personas: Vec<String>,
    /// Network destinations it asks for (policy decides).
    pub requested_network: Vec<String>,
    /// Secrets it expects (policy decides).
    pub requested_secrets: Vec<String>,
}

/// A plugin that failed to load (shown to platform admins).
#[derive(Debug, Serialize, ToSchema)]
pub struct RefusedPlugin {
    /// Its manifest.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Answer of `GET /v1/plugins`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    /// Plugins the caller may use something of (all, for platform admins).
    pub plugins: Vec<PluginView>,
    /// Refused plugins (platform admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Vec<RefusedPlugin>>,
}

/// Body of `POST /v1/tools/{name}/call`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// The arguments object (default `{}`).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    json!({})
}

/// What a call cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct Metering {
    /// Wall-clock time in microseconds.
    pub duration_us: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Argument bytes.
    pub bytes_in: usize,
    /// Result bytes.
    pub bytes_out: usize,
    /// Outgoing HTTP requests.
    pub http_requests: u32,
    /// Response bytes received over HTTP.
    pub http_bytes_received: u64,
    /// Credits the call is priced at by policy.
    pub credits: u64,
}

/// Answer of a successful call.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallResponse {
    /// Content for people and models.
    #[schema(value_type = Vec<Object>)]
    pub content: Vec<Content>,
    /// Structured result.
    #[schema(value_type = Option<Object>)]
    pub structured: Option<serde_json::Value>,
    /// What it cost.
    pub metering: Metering,
}

/// The caller as a tenant principal; `None` for platform keys.
pub(super) async fn principal_of(state: &AppState, caller: &Caller) -> Result<Option<Principal>, ApiError> {
    let Some(tenant_id) = caller.scope.tenant_id() else { return Ok(None) };
    let name = state.accounts.tenant_name(tenant_id).await?;
    Ok(Some(principal(caller, Some(name.as_str())).map_err(call_error)?))
}

/// Tools the caller may use.
#[utoipa::path(get, path = "/v1/tools", tag = "tools", security(("bearer" = [])),
    responses((status = 200, body = ToolList), (status = 401, body = ErrorBody)))]
pub(super) async fn list_tools(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ToolList>, ApiError> {
    let tools = match principal_of(&state, &caller).await? {
        Some(principal) => state
            .tools
            .visible_tools(&principal)
            .into_iter()
            .map(|t| {
                let provider = t.provider().to_owned();
                tool_view(t.name, &provider, t.spec, t.credits)
            })
            .collect(),
        // Platform admins see everything that is loaded, unpriced.
        None => state
            .tools
            .catalog()
            .tools()
            .map(|(name, plugin, spec)| tool_view(name, &plugin.manifest.name, spec.clone(), 0))
            .collect(),
    };
    Ok(Json(ToolList { tools }))
}

fn tool_view(name: String, plugin: &str, spec: maestro_core::plugin::ToolSpec, credits: u64) -> ToolView {
    ToolView {
        name,
        title: spec.title,
        description: spec.description,
        input_schema: spec.input_schema,
        output_schema: spec.output_schema,
        annotations: spec.annotations,
        plugin: plugin.to_owned(),
        credits,
    }
}

/// Personas the caller may use.
#[utoipa::path(get, path = "/v1/personas", tag = "tools", security(("bearer" = [])),
    responses((status = 200, body = PersonaList), (status = 401, body = ErrorBody)))]
pub(super) async fn list_personas(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PersonaList>, ApiError> {
    let personas: Vec<(String, String, maestro_core::plugin::PersonaSpec)> = match principal_of(&state, &caller).await?
    {
        Some(principal) => state
            .tools
            .visible_personas(&principal)
            .into_iter()
            .map(|p| (p.name, p.plugin.manifest.name.clone(), p.spec))
            .collect(),
        None => state
            .tools
            .catalog()
            .personas()
            .map(|(name, plugin, spec)| (name, plugin.manifest.name.clone(), spec.clone()))
            .collect(),
    };
    let personas = personas
        .into_iter()
        .map(|(name, plugin, spec)| PersonaView {
            name,
            title: spec.title,
            role: spec.role,
            system_prompt: spec.system_prompt,
            model_tier: spec.model_tier,
            tools: spec.tools,
            arguments: spec.arguments,
            plugin,
        })
        .collect();
    Ok(Json(PersonaList { personas }))
}

/// Plugins the caller may use something of.
#[utoipa::path(get, path = "/v1/plugins", tag = "tools", security(("bearer" = [])),
    responses((status = 200, body = PluginList), (status = 401, body = ErrorBody)))]
pub(super) async fn list_plugins(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PluginList>, ApiError> {
    let catalog = state.tools.catalog();
    let (plugins, refused) = match principal_of(&state, &caller).await? {
        Some(principal) => (state.tools.visible_plugins(&principal), None),
        None => (
            catalog.plugins().cloned().collect(),
            Some(
                catalog
                    .refused()
                    .iter()
                    .map(|r| RefusedPlugin { path: r.path.display().to_string(), reason: r.reason.clone() })
                    .collect(),
            ),
        ),
    };
    let plugins = plugins
        .iter()
        .map(|p| PluginView {
            name: p.manifest.name.clone(),
            version: p.manifest.version.clone(),
            description: p.manifest.description.clone(),
            sha256: p.sha256.clone(),
            tools: p.loaded.tools.iter().map(|t| format!("{}.{}", p.manifest.name, t.name)).collect(),
            personas: p.loaded.personas.iter().map(|s| format!("{}.{}", p.manifest.name, s.name)).collect(),
            requested_network: p.manifest.capabilities.network.clone(),
            requested_secrets: p.manifest.capabilities.secrets.clone(),
        })
        .collect();
    Ok(Json(PluginList { plugins, refused }))
}

/// Calls a tool under the caller's policy; answers the result and its metering.
#[utoipa::path(post, path = "/v1/tools/{name}/call", tag = "tools", request_body = CallRequest, security(("bearer" = [])),
    params(("name" = String, Path, description = "qualified tool name (plugin.tool)")),
    responses(
        (status = 200, body = CallResponse),
        (status = 401, body = ErrorBody), (status = 402, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody),
    ))]
pub(super) async fn call_tool(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    StrictJson(body): StrictJson<CallRequest>,
) -> Result<Json<CallResponse>, ApiError> {
    let principal = principal_of(&state, &caller).await?.ok_or_else(|| call_error(CallError::NotATenant))?;
    // Dropping this future (the client went away) cancels the call in the sandbox.
    let call = state.tools.call(&principal, &name, body.arguments, Observe::default()).await.map_err(call_error)?;
    let metering = metering(&call.outcome.metering, call.charged);
    match call.outcome.result {
        Ok(output) => Ok(Json(CallResponse { content: output.content, structured: output.structured, metering })),
        Err(failure) => {
            Err(failure_error(&failure).with_details(json!({ "failure": failure.kind(), "metering": metering })))
        }
    }
}

/// Body of `POST /v1/personas/{name}/render`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderRequest {
    /// The persona's prompt arguments, strings by name (default `{}`).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

/// Answer of a persona rendering.
#[derive(Debug, Serialize, ToSchema)]
pub struct RenderResponse {
    /// The prompt: the plugin's rendering, or the persona's system prompt when it has no
    /// renderer.
    pub prompt: String,
    /// The messages after the prompt (0.2.0 plugins' rich prompts): each a `role`
    /// (`user`, `assistant`) and a `content` (`text`, `image` or `embedded_resource`, as
    /// in a tool call's content); empty for a prompt that is the system prompt alone.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<PromptMessage>,
    /// What it cost.
    pub metering: Metering,
}

/// Renders a persona's prompt under the caller's policy (rate, calls in flight and
/// credits as for a tool call).
#[utoipa::path(post, path = "/v1/personas/{name}/render", tag = "tools", request_body = RenderRequest, security(("bearer" = [])),
    params(("name" = String, Path, description = "qualified persona name (plugin.persona)")),
    responses(
        (status = 200, body = RenderResponse),
        (status = 401, body = ErrorBody), (status = 402, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody),
    ))]
pub(super) async fn render_persona(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    StrictJson(body): StrictJson<RenderRequest>,
) -> Result<Json<RenderResponse>, ApiError> {
    let principal = principal_of(&state, &caller).await?.ok_or_else(|| call_error(CallError::NotATenant))?;
    let rendering =
        state.tools.render_persona(&principal, &name, &body.arguments, Observe::default()).await.map_err(call_error)?;
    let metering = metering(&rendering.outcome.metering, rendering.charged);
    match rendering.outcome.result {
        Ok(prompt) => Ok(Json(RenderResponse { prompt: prompt.system, messages: prompt.messages, metering })),
        Err(failure) => {
            Err(failure_error(&failure).with_details(json!({ "failure": failure.kind(), "metering": metering })))
        }
    }
}

fn metering(metering: &maestro_core::call::Metering, credits: u64) -> Metering {
    Metering {
        duration_us: u64::try_from(metering.duration.as_micros()).unwrap_or(u64::MAX),
        fuel: metering.fuel,
        bytes_in: metering.bytes_in,
        bytes_out: metering.bytes_out,
        http_requests: metering.http_requests,
        http_bytes_received: metering.http_bytes_received,
        credits,
    }
}

/// The HTTP error code of a code of the one call table ([`Code`]); the statuses agree
/// (a test checks every code).
pub(crate) fn error_code(code: Code) -> ErrorCode {
    match code {
        Code::NotFound => ErrorCode::NotFound,
        Code::Forbidden => ErrorCode::Forbidden,
        Code::InvalidRequest => ErrorCode::InvalidRequest,
        Code::RateLimited => ErrorCode::RateLimited,
        Code::TooManyCallsInFlight => ErrorCode::TooManyCallsInFlight,
        Code::InsufficientCredits => ErrorCode::InsufficientCredits,
        Code::Unavailable => ErrorCode::Unavailable,
        Code::ToolTimeout => ErrorCode::ToolTimeout,
        Code::ToolOutOfFuel => ErrorCode::ToolOutOfFuel,
        Code::ToolMemoryLimit => ErrorCode::ToolMemoryLimit,
        Code::ToolTrap => ErrorCode::ToolTrap,
        Code::NetworkDenied => ErrorCode::NetworkDenied,
        Code::ToolOutputTooLarge => ErrorCode::ToolOutputTooLarge,
        Code::ToolError => ErrorCode::ToolError,
        Code::Cancelled => ErrorCode::Cancelled,
        Code::NeedsInput => ErrorCode::NeedsInput,
    }
}

/// A call that ran and failed, answered through the one table (a host-side failure's
/// detail was logged by the pipeline; its message is generic).
pub(crate) fn failure_error(failure: &Failure) -> ApiError {
    ApiError::client_safe(error_code(failure.code()), failure.to_string())
}

/// A call refused before running, answered through the one table.
pub(crate) fn call_error(err: CallError) -> ApiError {
    let mut error = ApiError::client_safe(error_code(err.code()), err.to_string());
    if let Some(seconds) = err.retry_after_secs() {
        error = error.with_retry_after(seconds);
    }
    if let CallError::InsufficientCredits { available, price } = err {
        error = error.with_details(json!({ "balance": available, "price": price }));
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_follow_the_one_call_table() {
        for code in Code::ALL {
            let http = error_code(code);
            assert_eq!(http.status().as_u16(), code.http_status(), "{code}");
            assert_eq!(serde_json::to_value(http).expect("serialises"), code.as_str(), "{code}");
        }
    }
}
