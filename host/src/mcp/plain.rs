//! The short way for the commonest stateless request: a 2026-07-28 `tools/call` whose
//! answer is one JSON-RPC response and nothing else.
//!
//! rmcp serves every stateless request as a one-message session: it builds a handler,
//! re-serialises the message to check its headers, starts a serve loop on its own task
//! with a peer and channels, spawns the request on another task and sends the answer
//! back through them: most of a no-op call's CPU. A request that can need none of that
//! (no progress token, no log level, a client that offers neither elicitation nor
//! sampling nor tasks, no input responses or request state, the standard headers
//! present and agreeing with the body) is answered here, by the same call and the same
//! mapping of outcomes as [`Handler::call_tool`](super::Handler), into the same bytes
//! rmcp would send. Every other request, and every request this module is not sure
//! about, goes to rmcp unchanged: [`plain_call`] answers `None` for it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, StatusCode, header};
use rmcp::model::{
    CallToolResponse, ErrorCode, ErrorData, JsonObject, JsonRpcMessage, ProtocolVersion, RequestId,
    ServerJsonRpcMessage, ServerResult,
};
use serde_json::Value;
use tracing::Instrument as _;

use maestro_core::call::CancelToken;

use super::{Mcp, content, log_call, tool_answer, truncate};
use crate::tools::{CallError, Observe, Principal};

/// A plain call's answer: the HTTP status and the JSON-RPC message, serialised.
#[derive(Debug)]
pub struct PlainAnswer {
    /// As rmcp maps the message (200, or 4xx for the errors it maps).
    pub status: StatusCode,
    /// The JSON-RPC response or error (`application/json`).
    pub body: Vec<u8>,
}

/// Answers `body` (a POST to `/mcp` without a session, from `principal`) when it is a
/// plain stateless `tools/call`; `None` sends it to rmcp.
pub(super) async fn plain_call(
    mcp: &Arc<Mcp>,
    principal: &Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<PlainAnswer> {
    if !plain_headers(headers) {
        return None;
    }
    let (id, name, arguments) = plain_request(headers, body)?;
    let span = tracing::info_span!("mcp", method = "tools/call");
    let observe = Observe::default();
    let cancel = observe.cancel.clone();
    let call = Box::pin(call(mcp.clone(), principal.clone(), name, arguments, observe).instrument(span));
    let mut call = FinishOnDrop { call: Some(call), cancel };
    let result = call.call.as_mut().expect("the call was set just above").await;
    // It ended: nothing is left to finish when the guard drops.
    call.call = None;
    let message: ServerJsonRpcMessage = match result {
        Ok(done) => JsonRpcMessage::response(ServerResult::from(CallToolResponse::from(done)), id),
        Err(error) => JsonRpcMessage::error(error, Some(id)),
    };
    let status = status_of(&message);
    match serde_json::to_vec(&message) {
        Ok(body) => Some(PlainAnswer { status, body }),
        Err(err) => {
            tracing::error!(error = %err, "cannot serialise an MCP response");
            let body = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}"#.to_vec();
            Some(PlainAnswer { status: StatusCode::INTERNAL_SERVER_ERROR, body })
        }
    }
}

/// `tools/call` as [`Handler::call_tool`](super::Handler) serves it to a client that
/// can be sent nothing but the answer.
async fn call(
    mcp: Arc<Mcp>,
    principal: Principal,
    name: String,
    arguments: Option<JsonObject>,
    observe: Observe,
) -> Result<rmcp::model::CallToolResult, ErrorData> {
    mcp.tools.registry().first_scan().await;
    let started = Instant::now();
    let principal = &principal;
    let result = match mcp.resolve_tool(principal, &name) {
        None => tool_answer(&CallError::UnknownTool(truncate(&name, 128)).into()),
        Some(qualified) => {
            let arguments = Value::Object(arguments.unwrap_or_default());
            tracing::debug!(tenant = %principal.tenant, tool = %qualified, arguments = %super::redact::redacted(&arguments), "mcp tools/call arguments");
            let called = mcp.tools.call(principal, &qualified, arguments, observe).await;
            match called {
                Ok(call) => match call.outcome.result {
                    Ok(output) => Ok(content::success(output)),
                    Err(failure) => tool_answer(&(&failure).into()),
                },
                Err(err) => tool_answer(&(&err).into()),
            }
        }
    };
    log_call(&principal.tenant, &name, started, &result);
    result
}

/// A call in progress. When the request goes away before it ends (the client closed
/// it), the call is told to stop and finishes on its own task, as rmcp's cancellation
/// does: its credits are settled and its outcome logged, never cut off half-way.
struct FinishOnDrop<F: Future<Output = Result<rmcp::model::CallToolResult, ErrorData>> + Send + 'static> {
    call: Option<Pin<Box<F>>>,
    cancel: CancelToken,
}

impl<F: Future<Output = Result<rmcp::model::CallToolResult, ErrorData>> + Send + 'static> Drop for FinishOnDrop<F> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            self.cancel.cancel();
            // Outside a runtime (it is being dropped) there is nothing left to finish on.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(call);
            }
        }
    }
}

/// Whether the headers are what rmcp accepts without a word for a 2026-07-28 request:
/// JSON and SSE accepted (no quality weights to weigh), a JSON body, the version
/// header, and `Mcp-Method: tools/call`; no `Mcp-Param-*` headers.
fn plain_headers(headers: &HeaderMap) -> bool {
    let (mut json, mut sse) = (false, false);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { return false };
        for range in value.split(',').map(str::trim) {
            if range.contains(';') {
                return false;
            }
            json |= range.eq_ignore_ascii_case("application/json");
            sse |= range.eq_ignore_ascii_case("text/event-stream");
        }
    }
    let json_body = sole(headers, header::CONTENT_TYPE.as_str())
        .is_some_and(|v| v.split(';').next().is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json")));
    json && sse
        && json_body
        && sole(headers, "mcp-protocol-version") == Some(ProtocolVersion::V_2026_07_28.as_str())
        && sole(headers, "mcp-method") == Some("tools/call")
        && !headers.keys().any(|name| name.as_str().starts_with("mcp-param-"))
}

/// A plain stateless `tools/call` as it must be written to take the short way: every
/// part typed as rmcp types it, nothing else (an unknown member anywhere, or one rmcp
/// would read differently, makes the parse fail and the request go to rmcp). Reading
/// this is a fraction of the cost of reading rmcp's message enums.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainMessage<'a> {
    #[serde(rename = "jsonrpc")]
    _jsonrpc: rmcp::model::JsonRpcVersion2_0,
    id: RequestId,
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    params: PlainParams,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainParams {
    name: String,
    #[serde(default)]
    arguments: Option<JsonObject>,
    #[serde(rename = "_meta")]
    meta: PlainMeta,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainMeta {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: ProtocolVersion,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities")]
    client_capabilities: rmcp::model::ClientCapabilities,
    #[serde(rename = "io.modelcontextprotocol/clientInfo", default)]
    _client_info: Option<rmcp::model::Implementation>,
}

/// The id, tool name and arguments of a plain stateless `tools/call` in `body`.
fn plain_request(headers: &HeaderMap, body: &[u8]) -> Option<(RequestId, String, Option<JsonObject>)> {
    let message = serde_json::from_slice::<PlainMessage<'_>>(body).ok()?;
    let params = message.params;
    let capabilities = &params.meta.client_capabilities;
    if message.method != "tools/call"
        || params.meta.protocol_version != ProtocolVersion::V_2026_07_28
        || capabilities.elicitation.is_some()
        || capabilities.sampling.is_some()
        || capabilities.extensions.is_some()
        || capabilities.supports_tasks()
    {
        return None;
    }
    let plain_name =
        !params.name.is_empty() && params.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain_name || sole(headers, "mcp-name") != Some(params.name.as_str()) {
        return None;
    }
    let PlainParams { name, arguments, .. } = params;
    Some((message.id, name, arguments))
}

/// The one value of a header, when it has exactly one and it is text.
fn sole<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

/// The HTTP status rmcp gives a stateless request's answer.
fn status_of(message: &ServerJsonRpcMessage) -> StatusCode {
    let JsonRpcMessage::Error(error) = message else { return StatusCode::OK };
    match error.error.code {
        ErrorCode::UNSUPPORTED_PROTOCOL_VERSION
        | ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY
        | ErrorCode::HEADER_MISMATCH => StatusCode::BAD_REQUEST,
        ErrorCode::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::{plain_headers, plain_request};

    fn headers(extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "calc.evaluate"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        for (name, value) in extra {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn body(params: serde_json::Value) -> Vec<u8> {
        let mut params = params;
        let meta = params["_meta"].take();
        let mut all = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": { "name": "t", "version": "1" },
        });
        if let Some(meta) = meta.as_object() {
            all.as_object_mut().expect("object").extend(meta.clone());
        }
        params["_meta"] = all;
        serde_json::to_vec(&json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params }))
            .expect("json")
    }

    #[test]
    fn only_requests_that_need_nothing_but_their_answer_take_the_short_way() {
        let call = json!({ "name": "calc.evaluate", "arguments": { "expression": "1+1" } });
        assert!(plain_headers(&headers(&[])));
        let (id, name, arguments) = plain_request(&headers(&[]), &body(call.clone())).expect("a plain call");
        assert_eq!((id.to_string(), name.as_str()), ("3".to_owned(), "calc.evaluate"));
        assert_eq!(arguments.expect("arguments")["expression"], "1+1");

        // Headers rmcp weighs or checks further: its way.
        let mut weighted = headers(&[]);
        weighted.insert("accept", HeaderValue::from_static("application/json;q=0.9, text/event-stream"));
        assert!(!plain_headers(&weighted));
        assert!(!plain_headers(&headers(&[("mcp-method", "tools/call")])), "a repeated header");
        assert!(!plain_headers(&headers(&[("mcp-param-region", "eu")])));
        let mut older = headers(&[]);
        older.insert("mcp-protocol-version", HeaderValue::from_static("2025-11-25"));
        assert!(!plain_headers(&older));

        // Requests that may be sent more than their answer, or that say more: rmcp's way.
        for meta in [
            json!({ "progressToken": 1 }),
            json!({ "io.modelcontextprotocol/logLevel": "debug" }),
            json!({ "io.modelcontextprotocol/clientCapabilities": { "elicitation": {} } }),
            json!({ "io.modelcontextprotocol/clientCapabilities": { "sampling": {} } }),
            json!({ "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" }),
        ] {
            let mut params = call.clone();
            params["_meta"] = meta.clone();
            assert!(plain_request(&headers(&[]), &body(params)).is_none(), "{meta}");
        }
        let mut resumed = call.clone();
        resumed["requestState"] = json!("maestro-run:r1");
        assert!(plain_request(&headers(&[]), &body(resumed)).is_none());
        // A name the header does not carry as it is.
        let other = json!({ "name": "calc.other", "arguments": {} });
        assert!(plain_request(&headers(&[]), &body(other)).is_none());
    }
}
