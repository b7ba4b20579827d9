//! The component side (only on `wasm32`): generated bindings for `sdk/wit/0.2.0`, the
//! host imports, the HTTP client over `wasi:http`, and conversions for the exports.
#![allow(unsafe_code)] // generated bindings; exports are wired by `export_plugin!`

/// Bindings generated from the WIT world `maestro:plugin/plugin@0.2.0`.
#[allow(missing_debug_implementations, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/0.2.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__maestro_export_world",
        default_bindings_module: "$crate::__private::bindings",
    });
}

use bindings::maestro::plugin::host;
use bindings::maestro::plugin::types as wit;

use crate::http::{HttpError, Request, Response, Target};
use crate::persona::{ModelTier, PromptContent, PromptRole};
use crate::plugin::Plugin;
use crate::tool::{Content, ResourceContents, ToolError, ToolOutput};

pub use bindings::exports::maestro::plugin::personas::Guest as PersonasGuest;
pub use bindings::exports::maestro::plugin::resources::{
    Contents as WitContents, Error as WitResourceError, Guest as ResourcesGuest, ResourceSpec as WitResourceSpec,
    ResourceTemplate as WitResourceTemplate,
};
pub use bindings::exports::maestro::plugin::tools::Guest as ToolsGuest;
pub use wit::{
    PersonaSpec as WitPersonaSpec, PromptMessage as WitPromptMessage, ToolError as WitToolError,
    ToolOutput as WitToolOutput, ToolSpec as WitToolSpec,
};

/// `tools.list-tools`.
pub fn tools_list(plugin: &Plugin) -> Vec<wit::ToolSpec> {
    plugin
        .tool_specs()
        .into_iter()
        .map(|spec| wit::ToolSpec {
            name: spec.name,
            title: spec.title,
            description: spec.description,
            input_schema: spec.input_schema.to_string(),
            output_schema: spec.output_schema.map(|s| s.to_string()),
            annotations: wit::Annotations {
                read_only: spec.annotations.read_only,
                destructive: spec.annotations.destructive,
                idempotent: spec.annotations.idempotent,
                open_world: spec.annotations.open_world,
            },
        })
        .collect()
}

/// `tools.call`.
pub fn tools_call(plugin: &Plugin, name: String, arguments: String) -> Result<wit::ToolOutput, wit::ToolError> {
    tool_result(plugin.call(&name, &arguments))
}

/// A call's result as `tools.call` returns it (see [`crate::Dispatch`]).
pub fn tool_result(result: Result<ToolOutput, ToolError>) -> Result<wit::ToolOutput, wit::ToolError> {
    match result {
        Ok(output) => Ok(output_to_wit(output)),
        Err(ToolError::InvalidArguments(m)) => Err(wit::ToolError::InvalidArguments(m)),
        Err(ToolError::NotFound(m)) => Err(wit::ToolError::NotFound(m)),
        Err(ToolError::Failed(m)) => Err(wit::ToolError::Failed(m)),
        Err(ToolError::Cancelled) => Err(wit::ToolError::Cancelled),
    }
}

fn output_to_wit(output: ToolOutput) -> wit::ToolOutput {
    let content = output
        .content
        .into_iter()
        .map(|c| match c {
            Content::Text(text) => wit::Content::Text(text),
            Content::Json(value) => wit::Content::Json(value.to_string()),
            Content::Image { data, mime_type } => wit::Content::Image(wit::Image { data, mime_type }),
            Content::ResourceLink { uri, name, description, mime_type } => {
                wit::Content::ResourceLink(wit::ResourceLink { uri, name, description, mime_type })
            }
            Content::Audio { data, mime_type } => wit::Content::Audio(wit::Audio { data, mime_type }),
            Content::EmbeddedResource { uri, mime_type, contents } => {
                let contents = match contents {
                    ResourceContents::Text(text) => wit::ResourceContents::Text(text),
                    ResourceContents::Blob(blob) => wit::ResourceContents::Blob(blob),
                };
                wit::Content::EmbeddedResource(wit::EmbeddedResource { uri, mime_type, contents })
            }
        })
        .collect();
    wit::ToolOutput { content, structured: output.structured.map(|v| v.to_string()) }
}

/// `personas.list-personas`.
pub fn personas_list(plugin: &Plugin) -> Vec<wit::PersonaSpec> {
    plugin
        .persona_specs()
        .into_iter()
        .map(|spec| wit::PersonaSpec {
            name: spec.name,
            title: spec.title,
            role: spec.role,
            system_prompt: spec.system_prompt,
            model_tier: match spec.model_tier {
                ModelTier::Small => wit::ModelTier::Small,
                ModelTier::Medium => wit::ModelTier::Medium,
                ModelTier::Large => wit::ModelTier::Large,
            },
            tools: spec.tools,
            arguments: spec
                .arguments
                .into_iter()
                .map(|a| wit::PromptArgument {
                    name: a.name,
                    description: a.description,
                    required: a.required,
                    values: a.values,
                })
                .collect(),
        })
        .collect()
}

/// `personas.render`.
pub fn personas_render(plugin: &Plugin, name: String, context: String) -> Result<Option<String>, String> {
    plugin.render(&name, &context)
}

/// `personas.render-messages`.
pub fn personas_render_messages(
    plugin: &Plugin,
    name: String,
    context: String,
) -> Result<Vec<wit::PromptMessage>, String> {
    let messages = plugin.render_messages(&name, &context)?;
    Ok(messages
        .into_iter()
        .map(|message| wit::PromptMessage {
            role: match message.role {
                PromptRole::User => wit::PromptRole::User,
                PromptRole::Assistant => wit::PromptRole::Assistant,
            },
            content: match message.content {
                PromptContent::Text(text) => wit::PromptContent::Text(text),
                PromptContent::Image { data, mime_type } => wit::PromptContent::Image(wit::Image { data, mime_type }),
                PromptContent::EmbeddedResource { uri, mime_type, contents } => {
                    let contents = match contents {
                        ResourceContents::Text(text) => wit::ResourceContents::Text(text),
                        ResourceContents::Blob(blob) => wit::ResourceContents::Blob(blob),
                    };
                    wit::PromptContent::EmbeddedResource(wit::EmbeddedResource { uri, mime_type, contents })
                }
            },
        })
        .collect())
}

/// `resources.list-resources`.
pub fn resources_list(plugin: &Plugin) -> Vec<WitResourceSpec> {
    plugin
        .resource_infos()
        .into_iter()
        .map(|r| WitResourceSpec {
            uri: r.uri,
            name: r.name,
            title: r.title,
            description: r.description,
            mime_type: r.mime_type,
            size: r.size,
        })
        .collect()
}

/// `resources.list-resource-templates`.
pub fn resources_templates(plugin: &Plugin) -> Vec<WitResourceTemplate> {
    plugin
        .template_infos()
        .into_iter()
        .map(|t| WitResourceTemplate {
            uri_template: t.uri,
            name: t.name,
            title: t.title,
            description: t.description,
            mime_type: t.mime_type,
        })
        .collect()
}

/// `resources.read-resource`.
pub fn resources_read(plugin: &Plugin, uri: String) -> Result<Vec<WitContents>, WitResourceError> {
    use bindings::exports::maestro::plugin::resources::Data;
    match plugin.read_resource(&uri) {
        Ok(contents) => Ok(contents
            .into_iter()
            .map(|c| WitContents {
                uri: c.uri,
                mime_type: c.mime_type,
                data: match c.data {
                    ResourceContents::Text(text) => Data::Text(text),
                    ResourceContents::Blob(blob) => Data::Blob(blob),
                },
            })
            .collect()),
        Err(crate::resource::ResourceError::NotFound(m)) => Err(WitResourceError::NotFound(m)),
        Err(crate::resource::ResourceError::Failed(m)) => Err(WitResourceError::Failed(m)),
    }
}

/// The real host imports.
pub(crate) mod sys {
    use super::*;
    use crate::host::LogLevel;

    pub(crate) fn log(level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Trace => wit::LogLevel::Trace,
            LogLevel::Debug => wit::LogLevel::Debug,
            LogLevel::Info => wit::LogLevel::Info,
            LogLevel::Warn => wit::LogLevel::Warn,
            LogLevel::Error => wit::LogLevel::Error,
        };
        host::log(level, message);
    }

    pub(crate) fn progress(done: u64, total: Option<u64>, message: Option<&str>) {
        host::progress(done, total, message);
    }

    pub(crate) fn cancelled() -> bool {
        host::cancelled()
    }

    pub(crate) fn config() -> String {
        host::config()
    }

    pub(crate) fn http_send(request: &Request, target: &Target) -> Result<Response, HttpError> {
        super::http::send(request, target)
    }

    pub(crate) fn complete(
        request: &crate::model::Request,
    ) -> Result<crate::model::Completion, crate::model::ModelError> {
        use super::bindings::maestro::plugin::model as m;
        use crate::model::{Completion, ModelError, Role};
        let request = m::Request {
            messages: request
                .messages
                .iter()
                .map(|message| m::Message {
                    role: match message.role {
                        Role::System => m::Role::System,
                        Role::User => m::Role::User,
                        Role::Assistant => m::Role::Assistant,
                    },
                    text: message.text.clone(),
                })
                .collect(),
            tier: match request.tier {
                ModelTier::Small => wit::ModelTier::Small,
                ModelTier::Medium => wit::ModelTier::Medium,
                ModelTier::Large => wit::ModelTier::Large,
            },
            max_tokens: request.max_tokens,
            schema: request.schema.as_ref().map(ToString::to_string),
        };
        match m::complete(&request) {
            Ok(answer) => Ok(Completion {
                text: answer.text,
                structured: answer.structured.and_then(|s| serde_json::from_str(&s).ok()),
                model: answer.model,
                input_tokens: answer.usage.input_tokens,
                output_tokens: answer.usage.output_tokens,
                credits: answer.credits,
            }),
            Err(m::Error::Denied(m)) => Err(ModelError::Denied(m)),
            Err(m::Error::InvalidRequest(m)) => Err(ModelError::InvalidRequest(m)),
            Err(m::Error::InsufficientCredits(m)) => Err(ModelError::InsufficientCredits(m)),
            Err(m::Error::Failed(m)) => Err(ModelError::Failed(m)),
            Err(m::Error::Cancelled) => Err(ModelError::Cancelled),
        }
    }

    pub(crate) fn ask(
        message: &str,
        schema: &serde_json::Value,
    ) -> Result<crate::user::Answer, crate::user::UserError> {
        use super::bindings::maestro::plugin::user as u;
        use crate::user::{Answer, UserError};
        match u::ask(message, &schema.to_string()) {
            Ok(u::Answer::Accepted(json)) => serde_json::from_str(&json)
                .map(Answer::Accepted)
                .map_err(|e| UserError::Failed(format!("the answer is not JSON: {e}"))),
            Ok(u::Answer::Declined) => Ok(Answer::Declined),
            Ok(u::Answer::Cancelled) => Ok(Answer::Cancelled),
            Err(u::Error::NeedsInput(question)) => Err(UserError::NeedsInput(question)),
            Err(u::Error::InvalidRequest(m)) => Err(UserError::InvalidRequest(m)),
            Err(u::Error::Failed(m)) => Err(UserError::Failed(m)),
        }
    }
}

/// The HTTP client over `wasi:http/outgoing-handler`.
mod http {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasip2::io::streams::StreamError;

    use super::{HttpError, Request, Response, Target};

    /// `wasi:io/streams` writes at most this much per blocking call.
    const WRITE_CHUNK: usize = 4096;
    const READ_CHUNK: u64 = 64 * 1024;

    pub(super) fn send(request: &Request, target: &Target) -> Result<Response, HttpError> {
        let entries: Vec<(String, Vec<u8>)> =
            request.headers().iter().map(|(n, v)| (n.clone(), v.clone().into_bytes())).collect();
        let headers =
            Fields::from_list(&entries).map_err(|e| HttpError::InvalidRequest(format!("header refused: {e:?}")))?;
        let outgoing = OutgoingRequest::new(headers);
        let method = match request.method() {
            crate::http::Method::Get => Method::Get,
            crate::http::Method::Head => Method::Head,
            crate::http::Method::Post => Method::Post,
            crate::http::Method::Put => Method::Put,
            crate::http::Method::Patch => Method::Patch,
            crate::http::Method::Delete => Method::Delete,
        };
        let scheme = if target.https { Scheme::Https } else { Scheme::Http };
        let refused = |what: &str| HttpError::InvalidRequest(format!("{what} refused"));
        outgoing.set_method(&method).map_err(|()| refused("method"))?;
        outgoing.set_scheme(Some(&scheme)).map_err(|()| refused("scheme"))?;
        outgoing.set_authority(Some(&target.authority)).map_err(|()| refused("authority"))?;
        outgoing.set_path_with_query(Some(&target.path_with_query)).map_err(|()| refused("path"))?;
        let options = request.timeout_value().map(|timeout| {
            let options = RequestOptions::new();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            // A host that does not support a timeout keeps its own; nothing to do.
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
            options
        });
        let body = outgoing.body().map_err(|()| refused("body"))?;

        let future = outgoing_handler::handle(outgoing, options).map_err(transport)?;

        {
            let stream = body.write().map_err(|()| refused("body stream"))?;
            for chunk in request.body_bytes().chunks(WRITE_CHUNK) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::InvalidRequest(format!("writing the body failed: {}", stream_error(e))))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(transport)?;

        let incoming = loop {
            match future.get() {
                Some(Ok(Ok(response))) => break response,
                Some(Ok(Err(code))) => return Err(transport(code)),
                Some(Err(())) => return Err(HttpError::Body("response already taken".to_owned())),
                None => future.subscribe().block(),
            }
        };
        let status = incoming.status();
        let headers = incoming
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming_body = incoming.consume().map_err(|()| HttpError::Body("body already taken".to_owned()))?;
        let (body, truncated) = read_body(&incoming_body, request.response_limit())?;
        // The trailers are not needed; dropping the future discards them.
        drop(IncomingBody::finish(incoming_body));
        Ok(Response { status, headers, body, truncated })
    }

    fn read_body(body: &IncomingBody, limit: usize) -> Result<(Vec<u8>, bool), HttpError> {
        let stream = body.stream().map_err(|()| HttpError::Body("body stream already taken".to_owned()))?;
        let mut out = Vec::new();
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => {
                    if out.len() + chunk.len() > limit {
                        let keep = limit - out.len();
                        out.extend_from_slice(&chunk[..keep]);
                        return Ok((out, true));
                    }
                    out.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => return Ok((out, false)),
                Err(StreamError::LastOperationFailed(e)) => {
                    let detail = match wasip2::http::types::http_error_code(&e) {
                        Some(code) => error_code(&code),
                        None => e.to_debug_string(),
                    };
                    return Err(HttpError::Body(detail));
                }
            }
        }
    }

    fn stream_error(e: StreamError) -> String {
        match e {
            StreamError::Closed => "stream closed".to_owned(),
            StreamError::LastOperationFailed(e) => e.to_debug_string(),
        }
    }

    fn transport(code: ErrorCode) -> HttpError {
        HttpError::transport(error_code(&code))
    }

    /// The WIT name of an error code, with its payload when it has one.
    fn error_code(code: &ErrorCode) -> String {
        let with = |name: &str, detail: Option<String>| match detail {
            Some(d) => format!("{name} ({d})"),
            None => name.to_owned(),
        };
        match code {
            ErrorCode::DnsTimeout => "DNS-timeout".to_owned(),
            ErrorCode::DnsError(p) => with(
                "DNS-error",
                Some(format!(
                    "rcode {}, info-code {}",
                    p.rcode.as_deref().unwrap_or("-"),
                    p.info_code.map_or_else(|| "-".to_owned(), |c| c.to_string())
                )),
            ),
            ErrorCode::DestinationNotFound => "destination-not-found".to_owned(),
            ErrorCode::DestinationUnavailable => "destination-unavailable".to_owned(),
            ErrorCode::DestinationIpProhibited => "destination-IP-prohibited".to_owned(),
            ErrorCode::DestinationIpUnroutable => "destination-IP-unroutable".to_owned(),
            ErrorCode::ConnectionRefused => "connection-refused".to_owned(),
            ErrorCode::ConnectionTerminated => "connection-terminated".to_owned(),
            ErrorCode::ConnectionTimeout => "connection-timeout".to_owned(),
            ErrorCode::ConnectionReadTimeout => "connection-read-timeout".to_owned(),
            ErrorCode::ConnectionWriteTimeout => "connection-write-timeout".to_owned(),
            ErrorCode::ConnectionLimitReached => "connection-limit-reached".to_owned(),
            ErrorCode::TlsProtocolError => "TLS-protocol-error".to_owned(),
            ErrorCode::TlsCertificateError => "TLS-certificate-error".to_owned(),
            ErrorCode::TlsAlertReceived(p) => with("TLS-alert-received", p.alert_message.clone()),
            ErrorCode::HttpRequestDenied => "HTTP-request-denied".to_owned(),
            ErrorCode::HttpRequestLengthRequired => "HTTP-request-length-required".to_owned(),
            ErrorCode::HttpRequestBodySize(_) => "HTTP-request-body-size".to_owned(),
            ErrorCode::HttpRequestMethodInvalid => "HTTP-request-method-invalid".to_owned(),
            ErrorCode::HttpRequestUriInvalid => "HTTP-request-URI-invalid".to_owned(),
            ErrorCode::HttpRequestUriTooLong => "HTTP-request-URI-too-long".to_owned(),
            ErrorCode::HttpRequestHeaderSectionSize(_) => "HTTP-request-header-section-size".to_owned(),
            ErrorCode::HttpRequestHeaderSize(_) => "HTTP-request-header-size".to_owned(),
            ErrorCode::HttpRequestTrailerSectionSize(_) => "HTTP-request-trailer-section-size".to_owned(),
            ErrorCode::HttpRequestTrailerSize(_) => "HTTP-request-trailer-size".to_owned(),
            ErrorCode::HttpResponseIncomplete => "HTTP-response-incomplete".to_owned(),
            ErrorCode::HttpResponseHeaderSectionSize(_) => "HTTP-response-header-section-size".to_owned(),
            ErrorCode::HttpResponseHeaderSize(_) => "HTTP-response-header-size".to_owned(),
            ErrorCode::HttpResponseBodySize(_) => "HTTP-response-body-size".to_owned(),
            ErrorCode::HttpResponseTrailerSectionSize(_) => "HTTP-response-trailer-section-size".to_owned(),
            ErrorCode::HttpResponseTrailerSize(_) => "HTTP-response-trailer-size".to_owned(),
            ErrorCode::HttpResponseTransferCoding(d) => with("HTTP-response-transfer-coding", d.clone()),
            ErrorCode::HttpResponseContentCoding(d) => with("HTTP-response-content-coding", d.clone()),
            ErrorCode::HttpResponseTimeout => "HTTP-response-timeout".to_owned(),
            ErrorCode::HttpUpgradeFailed => "HTTP-upgrade-failed".to_owned(),
            ErrorCode::HttpProtocolError => "HTTP-protocol-error".to_owned(),
            ErrorCode::LoopDetected => "loop-detected".to_owned(),
            ErrorCode::ConfigurationError => "configuration-error".to_owned(),
            ErrorCode::InternalError(d) => with("internal-error", d.clone()),
        }
    }
}
