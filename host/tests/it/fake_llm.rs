//! A fake model server on 127.0.0.1 speaking the OpenAI Chat Completions and Anthropic
//! Messages wire formats, written over raw tokio TCP so a test controls every byte:
//! chunked encoding, line ends, writes split mid-character, delays, cut connections.
//!
//! Each request takes the next queued [`Script`] (a request with none queued gets a 500
//! saying so); every request is recorded (method, path, headers with credentials
//! redacted, JSON body).
//!
//! ```ignore
//! let fake = FakeLlm::start().await;
//! fake.push(Script::openai_text("hello", usage(10, 2)));
//! let llm = Llm::new(vec![fake.provider("fake", ProviderKind::OpenAi)], vec![model("m", "fake", &[])])?;
//! // … call it …
//! assert_eq!(fake.requests()[0].path, "/v1/chat/completions");
//! ```
#![allow(dead_code)] // a toolkit: each test uses part of it

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_core::llm::Usage;
use maestro_llm::{ModelConfig, ProviderConfig, ProviderKind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Headers whose values are credentials: recorded apart, never in `headers`.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key"];

/// One step of a scripted response body.
#[derive(Debug, Clone)]
pub(crate) enum Part {
    /// Write these bytes as one HTTP chunk (and flush).
    Bytes(Vec<u8>),
    /// Wait.
    Sleep(Duration),
    /// Close the connection now, mid-body (no terminating chunk).
    Cut,
    /// Keep the connection open until the client closes it (recorded in `closed`).
    AwaitClose,
}

/// A scripted response.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// HTTP status.
    pub(crate) status: u16,
    /// Response headers.
    pub(crate) headers: Vec<(String, String)>,
    /// The body, step by step.
    pub(crate) parts: Vec<Part>,
}

impl Script {
    /// A response of `status` with a JSON body.
    pub(crate) fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            parts: vec![Part::Bytes(body.to_string().into_bytes())],
        }
    }

    /// A 200 event stream whose chunks are exactly these strings.
    pub(crate) fn sse_raw(chunks: &[&str]) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            parts: chunks.iter().map(|c| Part::Bytes(c.as_bytes().to_vec())).collect(),
        }
    }

    /// A 200 event stream whose chunks are exactly these bytes (a character may be
    /// split between two), with a short pause between chunks so each is its own read.
    pub(crate) fn sse_bytes(chunks: &[&[u8]]) -> Self {
        let mut parts = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                parts.push(Part::Sleep(Duration::from_millis(20)));
            }
            parts.push(Part::Bytes(c.to_vec()));
        }
        Self { status: 200, headers: vec![("content-type".into(), "text/event-stream".into())], parts }
    }

    /// A 200 event stream of `data: <json>` events (one chunk each), then `data: [DONE]`.
    pub(crate) fn openai_events(events: &[Value]) -> Self {
        let mut chunks: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        chunks.push("data: [DONE]\n\n".into());
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        Self::sse_raw(&refs)
    }

    /// An OpenAI answer streaming `text` in small pieces, then `finish_reason: stop`,
    /// the usage chunk and `[DONE]`.
    pub(crate) fn openai_text(text: &str, usage: Usage) -> Self {
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        events.extend(pieces(text, 4).into_iter().map(|p| chunk(json!({"content": p}), None)));
        events.push(chunk(json!({}), Some("stop")));
        events.push(openai_usage(usage));
        Self::openai_events(&events)
    }

    /// An OpenAI answer calling tools `(id, name, arguments)`, each announced in one
    /// chunk and its arguments streamed in two fragments.
    pub(crate) fn openai_tool_calls(calls: &[(&str, &str, &str)], usage: Usage) -> Self {
        let mut events = vec![chunk(json!({"role": "assistant", "content": null}), None)];
        for (index, (id, name, arguments)) in calls.iter().enumerate() {
            events.push(chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                        "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            let half = arguments.len() / 2;
            let half = (0..=half).rev().find(|i| arguments.is_char_boundary(*i)).unwrap_or(0);
            for fragment in [&arguments[..half], &arguments[half..]] {
                events
                    .push(chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}), None));
            }
        }
        events.push(chunk(json!({}), Some("tool_calls")));
        events.push(openai_usage(usage));
        Self::openai_events(&events)
    }

    /// A 200 event stream of Anthropic events `(name, data)`, one chunk each.
    pub(crate) fn anthropic_events(events: &[(&str, Value)]) -> Self {
        let chunks: Vec<String> =
            events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect();
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        Self::sse_raw(&refs)
    }

    /// An Anthropic answer: `text`, then tool_use blocks `(id, name, input JSON)`,
    /// with usage split as Anthropic reports it (input, cache read, cache creation).
    pub(crate) fn anthropic_answer(text: &str, calls: &[(&str, &str, &str)], usage: Usage) -> Self {
        let uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens;
        let mut events = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                    "content": [], "model": "claude-test", "stop_reason": null,
                    "usage": {"input_tokens": uncached, "cache_read_input_tokens": usage.cached_input_tokens,
                              "cache_creation_input_tokens": usage.cache_write_tokens, "output_tokens": 1}}}),
            ),
            ("ping", json!({"type": "ping"})),
        ];
        let mut index = 0;
        if !text.is_empty() {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
            ));
            for piece in pieces(text, 4) {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
            events.push(("content_block_stop", json!({"type": "content_block_stop", "index": index})));
            index += 1;
        }
        for (id, name, input) in calls {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ));
            for piece in pieces(input, 5) {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
            events.push(("content_block_stop", json!({"type": "content_block_stop", "index": index})));
            index += 1;
        }
        let stop = if calls.is_empty() { "end_turn" } else { "tool_use" };
        events.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                   "usage": {"output_tokens": usage.output_tokens}}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        Self::anthropic_events(&events)
    }

    /// Adds a response header.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Waits before the body part at `index`.
    pub(crate) fn sleep_before(mut self, index: usize, wait: Duration) -> Self {
        self.parts.insert(index, Part::Sleep(wait));
        self
    }

    /// Pauses `wait` between every two body parts (a slow model, for cancelling
    /// mid-stream).
    pub(crate) fn paced(mut self, wait: Duration) -> Self {
        let mut parts = Vec::new();
        for (i, part) in self.parts.into_iter().enumerate() {
            if i > 0 {
                parts.push(Part::Sleep(wait));
            }
            parts.push(part);
        }
        self.parts = parts;
        self
    }

    /// Keeps only the first `parts` body parts, then cuts the connection.
    pub(crate) fn cut_after(mut self, parts: usize) -> Self {
        self.parts.truncate(parts);
        self.parts.push(Part::Cut);
        self
    }

    /// Keeps only the first `parts` body parts, then waits for the client to close.
    pub(crate) fn await_close_after(mut self, parts: usize) -> Self {
        self.parts.truncate(parts);
        self.parts.push(Part::AwaitClose);
        self
    }
}

/// A usage of `input` and `output` tokens.
pub(crate) fn usage(input: u64, output: u64) -> Usage {
    Usage { input_tokens: input, output_tokens: output, ..Usage::default() }
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn openai_usage(usage: Usage) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
           "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                     "total_tokens": usage.input_tokens + usage.output_tokens,
                     "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
                     "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}})
}

/// `text` in pieces of about `size` characters.
fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size.max(1)).map(|c| c.iter().collect()).collect()
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// `POST`.
    pub(crate) method: String,
    /// The path (with query).
    pub(crate) path: String,
    /// Headers, lowercase names, credentials left out (see [`Recorded::credential`]).
    pub(crate) headers: Vec<(String, String)>,
    /// The body as JSON (`Null` if it was not JSON).
    pub(crate) body: Value,
    credentials: Vec<(String, String)>,
}

impl Recorded {
    /// A header's value (not a credential).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A credential header's value (`authorization`, `x-api-key`).
    pub(crate) fn credential(&self, name: &str) -> Option<&str> {
        self.credentials.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Answers a request from what it holds (see [`FakeLlm::respond_with`]).
type Responder = Arc<dyn Fn(&Recorded) -> Option<Script> + Send + Sync>;

#[derive(Default)]
struct State {
    scripts: VecDeque<Script>,
    /// Consulted when no script is queued, before `always`.
    responder: Option<Responder>,
    /// Answered when no script is queued.
    always: Option<Script>,
    /// Whether connections stay open for more requests.
    keep_alive: bool,
    /// Connections accepted.
    connections: usize,
    requests: Vec<Recorded>,
    closed_by_client: usize,
}

/// The fake server; it stops when dropped.
pub(crate) struct FakeLlm {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLlm {
    /// Starts a fake on a free port of 127.0.0.1.
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake model server");
        let addr = listener.local_addr().expect("address");
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                // Each chunk leaves at once, as from a real streaming server.
                let _ = socket.set_nodelay(true);
                shared.lock().expect("fake state").connections += 1;
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL an OpenAI-compatible provider is configured with (`…/v1`).
    pub(crate) fn openai_base(&self) -> String {
        format!("{}/v1", self.origin())
    }

    /// A provider for this fake (private address allowed, short timeouts, one retry).
    pub(crate) fn provider(&self, name: &str, kind: ProviderKind) -> ProviderConfig {
        let base = match kind {
            ProviderKind::OpenAi => self.openai_base(),
            ProviderKind::Anthropic => self.origin(),
        };
        ProviderConfig {
            allow_private: true,
            connect_timeout: Duration::from_secs(2),
            first_token_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_retries: 1,
            ..ProviderConfig::new(name, kind, base)
        }
    }

    /// A `[[llm.providers]]` block for this fake, for a config file (no key).
    pub(crate) fn provider_toml(&self, name: &str, kind: ProviderKind) -> String {
        let (kind, base) = match kind {
            ProviderKind::OpenAi => ("openai", self.openai_base()),
            ProviderKind::Anthropic => ("anthropic", self.origin()),
        };
        format!(
            "[[llm.providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"{base}\"\nallow_private = true\n\
             first_token_timeout = \"5s\"\nidle_timeout = \"5s\"\n"
        )
    }

    /// A `maestro.toml` for a server whose every model tier (`fast`, `balanced`, `best`,
    /// models of the same ids) is served by this fake over the OpenAI wire format, with
    /// jobs polled every 100 ms.
    pub(crate) fn serve_config(&self) -> String {
        let mut text =
            format!("[jobs]\npoll_interval = \"100ms\"\n\n{}\n", self.provider_toml("fake", ProviderKind::OpenAi));
        for tier in ["fast", "balanced", "best"] {
            text.push_str(&format!(
                "[[llm.models]]\nid = \"{tier}\"\nprovider = \"fake\"\nmodel = \"upstream-{tier}\"\ntier = \"{tier}\"\n\
                 context_window = 32000\nmax_output_tokens = 400\n"
            ));
        }
        text
    }

    /// Queues the response to the next request.
    pub(crate) fn push(&self, script: Script) {
        self.state.lock().expect("fake state").scripts.push_back(script);
    }

    /// Answers requests that find no script queued with what `responder` makes of them
    /// (a script that depends on the request, e.g. on an id the server generated);
    /// `None` falls through to [`FakeLlm::always`].
    pub(crate) fn respond_with(&self, responder: impl Fn(&Recorded) -> Option<Script> + Send + Sync + 'static) {
        self.state.lock().expect("fake state").responder = Some(Arc::new(responder));
    }

    /// Answers `script` to every request that finds no script queued (many concurrent
    /// calls, benchmarks).
    pub(crate) fn always(&self, script: Script) {
        self.state.lock().expect("fake state").always = Some(script);
    }

    /// Keeps connections open for further requests (as real servers do) instead of
    /// answering `connection: close`.
    pub(crate) fn keep_alive(&self) {
        self.state.lock().expect("fake state").keep_alive = true;
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.state.lock().expect("fake state").connections
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("fake state").requests.clone()
    }

    /// How many requests arrived.
    pub(crate) fn request_count(&self) -> usize {
        self.state.lock().expect("fake state").requests.len()
    }

    /// How many connections the client closed while an [`Part::AwaitClose`] waited.
    pub(crate) fn closed_by_client(&self) -> usize {
        self.state.lock().expect("fake state").closed_by_client
    }

    /// Waits (up to 10 s) until the client closed `n` awaited connections.
    pub(crate) async fn wait_closed(&self, n: usize) -> bool {
        for _ in 0..1000 {
            if self.closed_by_client() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

/// A model of `provider` named `id` (upstream name `upstream-<id>`).
pub(crate) fn model(id: &str, provider: &str, fallbacks: &[&str]) -> ModelConfig {
    ModelConfig {
        id: id.into(),
        provider: provider.into(),
        upstream: format!("upstream-{id}"),
        tier: maestro_core::plugin::ModelTier::Medium,
        context_window: 8192,
        max_output_tokens: 512,
        fallbacks: fallbacks.iter().map(|f| (*f).to_owned()).collect(),
    }
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    while let Some(request) = read_request(&mut socket).await {
        let (script, keep_alive) = {
            let mut state = state.lock().expect("fake state");
            state.requests.push(request);
            let queued = state.scripts.pop_front();
            let script = queued
                .or_else(|| state.responder.as_ref().and_then(|f| state.requests.last().and_then(|r| f(r))))
                .or_else(|| state.always.clone());
            (script, state.keep_alive)
        };
        if !respond(&mut socket, script, keep_alive, &state).await || !keep_alive {
            return;
        }
    }
}

/// Writes one scripted response; whether the connection is still usable.
async fn respond(socket: &mut TcpStream, script: Option<Script>, keep_alive: bool, state: &Mutex<State>) -> bool {
    let script = script.unwrap_or_else(|| {
        Script::json(500, json!({"error": {"message": "fake model server: no script queued", "type": "fake"}}))
    });
    let mut head = format!("HTTP/1.1 {} Fake\r\n", script.status);
    for (name, value) in &script.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("transfer-encoding: chunked\r\n");
    head.push_str(if keep_alive { "\r\n" } else { "connection: close\r\n\r\n" });
    if socket.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for part in script.parts {
        match part {
            Part::Bytes(bytes) => {
                let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
                framed.extend_from_slice(&bytes);
                framed.extend_from_slice(b"\r\n");
                if socket.write_all(&framed).await.is_err() || socket.flush().await.is_err() {
                    return false;
                }
            }
            Part::Sleep(wait) => tokio::time::sleep(wait).await,
            Part::Cut => return false,
            Part::AwaitClose => {
                let mut buf = [0u8; 256];
                let closed = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await
                .is_ok();
                if closed {
                    state.lock().expect("fake state").closed_by_client += 1;
                }
                return false;
            }
        }
    }
    socket.write_all(b"0\r\n\r\n").await.is_ok() && socket.flush().await.is_ok()
}

async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let mut headers = Vec::new();
    let mut credentials = Vec::new();
    let mut length = 0usize;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        if name == "content-length" {
            length = value.parse().ok()?;
        }
        if CREDENTIAL_HEADERS.contains(&name.as_str()) {
            credentials.push((name, value));
        } else {
            headers.push((name, value));
        }
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(Recorded { method, path, headers, body, credentials })
}
