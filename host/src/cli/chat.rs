//! `maestro chat`: a terminal client of a running server's sessions API.
//!
//! Creates a session (or reuses `--session`), reads lines from stdin (a terminal or a
//! pipe), posts each as a message and streams the run it starts: who speaks, tokens as
//! they come, tool calls and results, tokens and credits per step and per run, failures
//! with their code. A dropped stream is resumed with `Last-Event-ID`; Ctrl-C cancels the
//! current run and a second Ctrl-C exits. HTTP goes through the one outbound client,
//! allowed exactly the server's origin (private addresses included: it is the
//! operator's own server). The SSE decoder is [`SseDecoder`].

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use maestro_outbound::{NetPolicy, NetRule, OutboundClient, StreamTimeouts, empty_body, next_chunk};
use serde_json::{Value, json};

use crate::config::{Config, Env};

/// `maestro chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The server (default: the configured listen address).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A tenant API key (member or admin to post; or set MAESTRO_KEY, which keeps it out
    /// of the process list).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Continue this session instead of creating one.
    #[arg(long, value_name = "ID", conflicts_with_all = ["personas", "strategy", "title"])]
    pub session: Option<String>,
    /// The team of a new session: `plugin.persona` names, comma-separated.
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    pub personas: Vec<String>,
    /// How a new session picks who speaks: router, round_robin, sequence or parallel.
    #[arg(long, value_name = "STRATEGY")]
    pub strategy: Option<String>,
    /// A new session's title.
    #[arg(long)]
    pub title: Option<String>,
}

/// Silence on an event stream longer than this (the server sends a heartbeat every
/// 15 s) means the connection is gone: reconnect.
const STREAM_IDLE: Duration = Duration::from_secs(45);

/// Runs `maestro chat` until stdin ends or a second Ctrl-C.
pub async fn run(config: &Config, env: &Env, args: ChatArgs) -> anyhow::Result<()> {
    let key = args
        .key
        .clone()
        .or_else(|| env.get("MAESTRO_KEY").cloned())
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .context("give --key KEY or set MAESTRO_KEY (a tenant key with the member role)")?;
    let base = match &args.url {
        Some(url) => url.clone(),
        None => {
            let mut address = config.listen;
            if address.ip().is_unspecified() {
                address.set_ip([127, 0, 0, 1].into());
            }
            format!("http://{address}")
        }
    };
    let api = Api::new(&base, &key)?;
    let session = match &args.session {
        Some(id) => {
            let session = api.expect(Method::GET, &format!("/v1/sessions/{id}"), None, StatusCode::OK).await?;
            eprintln!("session {} ({})", id, team(&session));
            id.clone()
        }
        None => {
            if args.personas.is_empty() {
                bail!("give --personas a,b,c for a new session, or --session ID");
            }
            let mut body = json!({ "personas": args.personas });
            if let Some(strategy) = &args.strategy {
                body["strategy"] = json!(strategy);
            }
            if let Some(title) = &args.title {
                body["title"] = json!(title);
            }
            let session = api.expect(Method::POST, "/v1/sessions", Some(body), StatusCode::CREATED).await?;
            let id = session["id"].as_str().context("the server answered a session without an id")?.to_owned();
            eprintln!("session {id} ({}) — type a message, Ctrl-D to end", team(&session));
            id
        }
    };
    let mut interrupts = interrupts();
    let mut lines = stdin_lines();
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = interrupts.recv() => return Ok(()),
        };
        let Some(line) = line else { return Ok(()) };
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        // A message the server refuses (too long, rate-limited, the server away) is
        // reported and the session goes on with the next line.
        let posted = api
            .expect(
                Method::POST,
                &format!("/v1/sessions/{session}/messages"),
                Some(json!({ "content": line })),
                StatusCode::ACCEPTED,
            )
            .await;
        let posted = match posted {
            Ok(posted) => posted,
            Err(err) => {
                eprintln!("[message not sent: {err:#}]");
                continue;
            }
        };
        let run = posted["run"]["id"].as_str().context("the server answered without a run id")?.to_owned();
        let mut out = std::io::stdout().lock();
        let dim = std::io::IsTerminal::is_terminal(&out);
        match follow(&api, &run, &mut interrupts, &mut lines, &mut Printer::new(&mut out).dimmed(dim)).await {
            Ok(Followed::Quit) => return Ok(()),
            Ok(Followed::Ended) => {}
            Err(err) => eprintln!("[cannot follow run {run}: {err:#}]"),
        }
    }
}

fn team(session: &Value) -> String {
    let personas: Vec<&str> =
        session["personas"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    format!("{}, {}", personas.join(" "), session["strategy"].as_str().unwrap_or("?"))
}

/// Ctrl-C presses, as they come.
fn interrupts() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if send.send(()).is_err() {
                break;
            }
        }
    });
    receive
}

/// Lines of stdin, as they come.
type Lines = tokio::sync::mpsc::Receiver<std::io::Result<String>>;

/// Lines of stdin, read on a thread of their own (stdin is blocking; a pipe works as a
/// terminal does).
fn stdin_lines() -> Lines {
    let (send, receive) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if send.blocking_send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// How following a run ended.
#[derive(Debug, PartialEq, Eq)]
enum Followed {
    /// The run reached its terminal event.
    Ended,
    /// A second Ctrl-C: leave.
    Quit,
}

/// Streams a run's events until its terminal event, resuming a dropped stream after
/// the last event seen; the first Ctrl-C cancels the run, a second one quits.
async fn follow(
    api: &Api,
    run: &str,
    interrupts: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    lines: &mut Lines,
    printer: &mut Printer<'_>,
) -> anyhow::Result<Followed> {
    let mut last_seen: i64 = 0;
    let mut cancelled = false;
    let mut retry = Duration::from_millis(250);
    loop {
        let opened = tokio::select! {
            opened = api.events(run, last_seen) => opened,
            _ = interrupts.recv() => {
                if interrupted(api, run, &mut cancelled).await? { return Ok(Followed::Quit) }
                continue;
            }
        };
        let mut body = match opened {
            Ok(body) => body,
            Err(err) if err.is::<Refused>() => return Err(err),
            Err(err) => {
                eprintln!("\n[stream unavailable: {err:#}; retrying]");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut decoder = SseDecoder::default();
        loop {
            let chunk = tokio::select! {
                chunk = tokio::time::timeout(STREAM_IDLE, next_chunk(&mut body)) => chunk,
                _ = interrupts.recv() => {
                    if interrupted(api, run, &mut cancelled).await? { return Ok(Followed::Quit) }
                    continue;
                }
            };
            let chunk = match chunk {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(err))) => {
                    eprintln!("\n[stream dropped: {err}; resuming after event {last_seen}]");
                    break;
                }
                Ok(None) => {
                    eprintln!("\n[stream ended early; resuming after event {last_seen}]");
                    break;
                }
                Err(_) => {
                    eprintln!("\n[no heartbeat for {}s; resuming after event {last_seen}]", STREAM_IDLE.as_secs());
                    break;
                }
            };
            retry = Duration::from_millis(250);
            for frame in decoder.push(&chunk) {
                let SseFrame::Event(event) = frame else { continue };
                if let Some(seq) = event.id.as_deref().and_then(|id| id.parse::<i64>().ok()) {
                    last_seen = seq;
                }
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                printer.event(&event.event, &data["data"])?;
                if event.event == "clarification.requested"
                    && answer_inline(api, run, &data["data"], lines, printer).await? == Followed::Quit
                {
                    return Ok(Followed::Quit);
                }
                if matches!(event.event.as_str(), "run.completed" | "run.failed" | "run.cancelled" | "run.expired") {
                    return Ok(Followed::Ended);
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// Reads the answer to a run's question from stdin and posts it (a number picks that
/// choice; other text is the answer), asking again while the server refuses it. A
/// question already answered (seen again in a replayed stream) is skipped. `Quit` when
/// stdin ends before an answer: the run keeps waiting, to be answered later.
async fn answer_inline(
    api: &Api,
    run: &str,
    question: &Value,
    lines: &mut Lines,
    printer: &mut Printer<'_>,
) -> anyhow::Result<Followed> {
    let (status, current) = api.call(Method::GET, &format!("/v1/runs/{run}"), None).await?;
    if status != StatusCode::OK || current["state"].as_str() != Some("waiting_input") {
        return Ok(Followed::Ended);
    }
    let choices: Vec<&str> =
        question["choices"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    loop {
        printer.prompt("answer> ")?;
        let Some(line) = lines.recv().await else {
            printer.line(&format!("[no answer given; run {run} waits for POST /v1/runs/{run}/answer]"))?;
            return Ok(Followed::Quit);
        };
        let line = line.context("cannot read stdin")?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let tool = question["asker"]["kind"].as_str() == Some("tool");
        let form = line.starts_with('{').then(|| serde_json::from_str::<Value>(line).ok()).flatten();
        let body = match line.parse::<usize>() {
            Ok(number) if (1..=choices.len()).contains(&number) => json!({ "choice": choices[number - 1] }),
            // A plugin tool's question: a JSON object is its form; /decline and /cancel say no.
            _ if tool && form.is_some() => json!({ "form": form }),
            _ if tool && line == "/decline" => json!({ "action": "decline" }),
            _ if tool && line == "/cancel" => json!({ "action": "cancel" }),
            _ => json!({ "answer": line }),
        };
        let (status, answered) = api.call(Method::POST, &format!("/v1/runs/{run}/answer"), Some(body)).await?;
        if status == StatusCode::ACCEPTED {
            return Ok(Followed::Ended);
        }
        printer.line(&format!("[answer refused: {}]", error_text(&answered)))?;
        if status == StatusCode::CONFLICT {
            // Not waiting any more (expired, cancelled, answered elsewhere).
            return Ok(Followed::Ended);
        }
    }
}

/// Handles a Ctrl-C while a run streams: the first cancels it, the next quits
/// (returns `true`).
async fn interrupted(api: &Api, run: &str, cancelled: &mut bool) -> anyhow::Result<bool> {
    if *cancelled {
        return Ok(true);
    }
    *cancelled = true;
    eprintln!("\n[cancelling {run}; Ctrl-C again to quit]");
    let (status, body) = api.call(Method::POST, &format!("/v1/runs/{run}/cancel"), None).await?;
    if !status.is_success() {
        eprintln!("[cancel refused: {}]", error_text(&body));
    }
    Ok(false)
}

/// A request the server refused (4xx): retrying will not help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

fn error_text(body: &Value) -> String {
    match (body["error"]["code"].as_str(), body["error"]["message"].as_str()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => body.to_string(),
    }
}

/// The server's API over the outbound client.
#[derive(Debug)]
struct Api {
    base: String,
    authorization: HeaderValue,
    /// Whole requests and answers.
    client: OutboundClient,
    /// Event streams (no whole-response deadline; idle streams are detected by the
    /// missing heartbeats instead).
    streams: OutboundClient,
}

impl Api {
    fn new(base: &str, key: &str) -> anyhow::Result<Self> {
        let uri: Uri = base.trim().parse().with_context(|| format!("invalid --url `{base}`"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            bail!("invalid --url `{base}`: expected http://host[:port]");
        };
        let origin = format!("{scheme}://{authority}");
        let rule = NetRule::parse(&origin, true, "maestro chat --url").map_err(anyhow::Error::msg)?;
        let client = OutboundClient::new("chat", Arc::new(NetPolicy::allowing(vec![rule.clone()])));
        // Event streams have no size or time bound of their own: `send_stream` with no body
        // deadline, and the heartbeats tell a dead stream.
        let mut streaming = NetPolicy::allowing(vec![rule]);
        streaming.max_response_bytes = u64::MAX;
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {key}")).context("the key is not a valid header value")?;
        authorization.set_sensitive(true);
        Ok(Self { base: origin, authorization, client, streams: OutboundClient::new("chat", Arc::new(streaming)) })
    }

    /// Sends a JSON request; answers the status and the body (JSON, or a string).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json");
        let bytes = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let response =
            self.client.send(request.body(bytes)?).await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status();
        let body = serde_json::from_slice(response.body())
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(response.body()).into_owned()));
        Ok((status, body))
    }

    /// Sends a JSON request and fails unless it answers `expected`.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.call(method.clone(), path, body).await?;
        if status != expected {
            bail!("{method} {path} answered {status}: {}", error_text(&body));
        }
        Ok(body)
    }

    /// Opens a run's event stream after `last_seen`.
    async fn events(&self, run: &str, last_seen: i64) -> anyhow::Result<maestro_outbound::OutboundBody> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(format!("{}/v1/runs/{run}/events", self.base))
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "text/event-stream");
        if last_seen > 0 {
            request = request.header("last-event-id", last_seen.to_string());
        }
        let timeouts = StreamTimeouts { connect: Duration::from_secs(10), head: Duration::from_secs(30), body: None };
        let response = self.streams.send_stream(request.body(empty_body())?, timeouts).await?;
        let status = response.status();
        if status.is_client_error() {
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(Ok(chunk)) = next_chunk(&mut body).await {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > 64 * 1024 {
                    break;
                }
            }
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(Refused(format!("the run's events answered {status}: {}", error_text(&body))).into());
        }
        if !status.is_success() {
            bail!("the run's events answered {status}");
        }
        Ok(response.into_body())
    }
}

/// Writes a run's events for people.
struct Printer<'a> {
    out: &'a mut dyn Write,
    /// Whether the cursor is mid-line (after streamed text).
    mid_line: bool,
    /// Whether secondary lines are dimmed (ANSI faint; only on a terminal).
    dim: bool,
}

impl std::fmt::Debug for Printer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer").field("mid_line", &self.mid_line).finish_non_exhaustive()
    }
}

fn short(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max { flat } else { format!("{}…", flat.chars().take(max).collect::<String>()) }
}

fn tokens(usage: &Value) -> String {
    format!(
        "{} in / {} out tokens",
        usage["input_tokens"].as_u64().unwrap_or(0),
        usage["output_tokens"].as_u64().unwrap_or(0)
    )
}

impl<'a> Printer<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self { out, mid_line: false, dim: false }
    }

    /// Dims secondary lines (`memory.recalled`) when `dim`.
    fn dimmed(mut self, dim: bool) -> Self {
        self.dim = dim;
        self
    }

    /// A secondary line: faint on a terminal, plain otherwise.
    fn faint(&mut self, text: &str) -> std::io::Result<()> {
        if self.dim { self.line(&format!("\x1b[2m{text}\x1b[0m")) } else { self.line(text) }
    }

    fn line(&mut self, text: &str) -> std::io::Result<()> {
        if self.mid_line {
            writeln!(self.out)?;
            self.mid_line = false;
        }
        writeln!(self.out, "{text}")
    }

    /// Writes `text` at the start of a line, without ending it.
    fn prompt(&mut self, text: &str) -> std::io::Result<()> {
        if self.mid_line {
            writeln!(self.out)?;
        }
        write!(self.out, "{text}")?;
        self.mid_line = false;
        self.out.flush()
    }

    /// Writes one event (`data`: its payload).
    fn event(&mut self, kind: &str, data: &Value) -> std::io::Result<()> {
        let s = |key: &str| data[key].as_str().unwrap_or_default().to_owned();
        let n = |key: &str| data[key].as_i64().unwrap_or(0);
        match kind {
            "run.started" => self.line(&format!("▶ run started ({})", s("strategy")))?,
            "turn.decided" => {
                let personas: Vec<&str> = data["personas"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if data["satisfied"].as_bool() == Some(true) {
                    self.line(&format!("✔ turn {}: satisfied — {}", n("turn"), short(&s("reason"), 120)))?;
                } else {
                    let fallback = if data["fallback"].as_bool() == Some(true) { " (fallback)" } else { "" };
                    self.line(&format!(
                        "→ turn {}: {}{fallback} — {}",
                        n("turn"),
                        personas.join(", "),
                        short(&s("reason"), 120)
                    ))?;
                }
            }
            "step.started" => self.line(&format!("[{}] {} · {}", n("step"), s("persona"), s("model")))?,
            "memory.recalled" => {
                let count = |key: &str| data[key].as_array().map_or(0, Vec::len);
                self.faint(&format!(
                    "  ◦ recalled {} memories and {} earlier snippets ({} tokens)",
                    count("memories"),
                    count("snippets"),
                    n("tokens")
                ))?;
            }
            "message.delta" => {
                write!(self.out, "{}", data["text"].as_str().unwrap_or_default())?;
                self.mid_line = true;
            }
            "tool.called" => self.line(&format!("  ⚙ {} {}", s("tool"), short(&s("arguments"), 160)))?,
            "tool.result" => {
                let status = if data["ok"].as_bool() == Some(true) {
                    "ok".to_owned()
                } else {
                    format!("failed [{}]", data["error"].as_str().unwrap_or("error"))
                };
                self.line(&format!("  ↳ {} {status}: {}", s("tool"), short(&s("content"), 160)))?;
            }
            "message.completed" if self.mid_line => {
                writeln!(self.out)?;
                self.mid_line = false;
            }
            "step.completed" => self.line(&format!(
                "  (step {}: {}, {} model calls, {} tool calls, {} credits)",
                n("step"),
                tokens(&data["usage"]),
                n("model_calls"),
                n("tool_calls"),
                n("credits")
            ))?,
            "run.interrupted" => self.line(&format!("… run resumed: {}", short(&s("reason"), 160)))?,
            "clarification.requested" => {
                let who = match data["asker"]["kind"].as_str() {
                    Some("persona") => data["asker"]["persona"].as_str().unwrap_or("a persona").to_owned(),
                    Some("tool") => format!(
                        "{} (through {})",
                        data["asker"]["persona"].as_str().unwrap_or("a persona"),
                        data["asker"]["tool"].as_str().unwrap_or("a tool")
                    ),
                    _ => "maestro".to_owned(),
                };
                self.line(&format!("? {who} asks: {}", s("question")))?;
                let fields = data["asker"]["schema"]["properties"].as_object().map_or(0, serde_json::Map::len);
                if fields > 1 {
                    let schema = &data["asker"]["schema"];
                    self.line(&format!("  (answer with a JSON object fitting {schema}, or /decline)"))?;
                }
                let choices = data["choices"].as_array().cloned().unwrap_or_default();
                for (index, choice) in choices.iter().enumerate() {
                    self.line(&format!("  {}. {}", index + 1, choice.as_str().unwrap_or_default()))?;
                }
                let how = match (choices.is_empty(), data["free_text"].as_bool() == Some(true)) {
                    (true, _) => "type your answer",
                    (false, true) => "type a number, or your own answer",
                    (false, false) => "type a number",
                };
                self.line(&format!("  ({how}; it expires at {})", s("expires_at")))?;
            }
            "clarification.answered" => self.line(&format!("  ↳ answered: {}", short(&s("answer"), 160)))?,
            "document.updated" => self.line(&format!(
                "  ✎ {} v{} by {} ({})",
                short(&s("title"), 120),
                n("version"),
                s("persona"),
                s("document")
            ))?,
            "run.completed" | "run.failed" | "run.cancelled" | "run.expired" => {
                let totals = &data["totals"];
                let summary = format!(
                    "{} steps, {}, {} credits",
                    totals["steps"].as_i64().unwrap_or(0),
                    tokens(&totals["usage"]),
                    totals["credits"].as_i64().unwrap_or(0)
                );
                match kind {
                    "run.completed" => self.line(&format!("■ run completed: {summary}"))?,
                    "run.cancelled" => self.line(&format!("■ run cancelled: {summary}"))?,
                    "run.expired" => self.line(&format!("■ run expired (its question was not answered): {summary}"))?,
                    _ => self.line(&format!(
                        "■ run failed [{}]: {} ({summary})",
                        data["error"]["code"].as_str().unwrap_or("error"),
                        data["error"]["message"].as_str().unwrap_or_default()
                    ))?,
                }
            }
            _ => {}
        }
        self.out.flush()
    }
}

/// One decoded server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` (absent when the event had none).
    pub id: Option<String>,
    /// `event:` (`message` when absent, as the specification says).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseFrame {
    /// An event.
    Event(SseEvent),
    /// A comment line (`: heartbeat`), without the colon.
    Comment(String),
}

/// A server-sent events decoder: fed bytes as they arrive (chunks split anywhere, in a
/// line ending or a UTF-8 character too), lines end with LF, CRLF or CR; `data:` lines
/// of one event join with `\n`; comment lines are reported; a field's value loses one
/// leading space; unknown fields are ignored.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    /// The previous chunk ended in CR: a LF starting this one belongs to it.
    after_cr: bool,
    id: Option<String>,
    event: String,
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds a chunk; returns what it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        if chunk.is_empty() {
            return Vec::new();
        }
        let mut chunk = chunk;
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        self.buffer.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buffer.len() {
            let byte = self.buffer[i];
            if byte != b'\n' && byte != b'\r' {
                i += 1;
                continue;
            }
            let line = String::from_utf8_lossy(&self.buffer[start..i]).into_owned();
            if byte == b'\r' {
                if i + 1 == self.buffer.len() {
                    self.after_cr = true;
                } else if self.buffer[i + 1] == b'\n' {
                    i += 1;
                }
            }
            i += 1;
            start = i;
            if let Some(frame) = self.line(&line) {
                frames.push(frame);
            }
        }
        self.buffer.drain(..start);
        frames
    }

    fn line(&mut self, line: &str) -> Option<SseFrame> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = self.data.take()?;
            let event = if event.is_empty() { "message".to_owned() } else { event };
            return Some(SseFrame::Event(SseEvent { id: self.id.clone(), event, data }));
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(SseFrame::Comment(comment.strip_prefix(' ').unwrap_or(comment).to_owned()));
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = value.to_owned(),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, event: &str, data: &str) -> SseFrame {
        SseFrame::Event(SseEvent { id: id.map(str::to_owned), event: event.to_owned(), data: data.to_owned() })
    }

    #[test]
    fn decodes_events_split_anywhere_with_crlf_multiline_data_and_comments() {
        let stream = "id: 1\r\nevent: message.delta\r\ndata: {\"text\":\"h\u{e9}\"}\r\n\r\n: heartbeat\r\n\r\n\
                      id: 2\nevent: run.completed\ndata: line one\ndata:line two\n\n\
                      id: 3\rdata: cr only\r\r";
        let expected = vec![
            event(Some("1"), "message.delta", "{\"text\":\"h\u{e9}\"}"),
            SseFrame::Comment("heartbeat".into()),
            event(Some("2"), "run.completed", "line one\nline two"),
            event(Some("3"), "message", "cr only"),
        ];
        let bytes = stream.as_bytes();
        // Whole, then split at every position (inside CRLF and inside the two-byte é).
        for split in 0..=bytes.len() {
            let mut decoder = SseDecoder::default();
            let mut frames = decoder.push(&bytes[..split]);
            frames.extend(decoder.push(&bytes[split..]));
            assert_eq!(frames, expected, "split at {split}");
        }
        // One byte at a time.
        let mut decoder = SseDecoder::default();
        let frames: Vec<SseFrame> = bytes.iter().flat_map(|b| decoder.push(&[*b])).collect();
        assert_eq!(frames, expected);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_ids_carry_over() {
        let mut decoder = SseDecoder::default();
        let frames = decoder.push(b"id: 7\nevent: x\n\nretry: 10\ndata\n\n");
        assert_eq!(frames, vec![event(Some("7"), "message", "")]);
    }

    #[test]
    fn prints_who_speaks_streamed_text_tools_and_costs() {
        let mut out = Vec::new();
        let mut printer = Printer::new(&mut out);
        let events = [
            (
                "turn.decided",
                json!({ "turn": 1, "personas": ["team.writer"], "reason": "drafts first", "satisfied": false }),
            ),
            ("step.started", json!({ "step": 1, "turn": 1, "persona": "team.writer", "model": "fast-1" })),
            (
                "memory.recalled",
                json!({ "step": 1, "persona": "team.writer", "memories": [{ "id": "mem_1", "score": 0.8 }, { "id": "mem_2", "score": 0.5 }], "snippets": [{ "kind": "message", "id": "msg_1", "score": 0.03 }], "tokens": 212 }),
            ),
            ("message.delta", json!({ "step": 1, "call": 1, "text": "Hel" })),
            ("message.delta", json!({ "step": 1, "call": 1, "text": "lo" })),
            ("tool.called", json!({ "tool": "calc.add", "arguments": "{\"a\":1}" })),
            ("tool.result", json!({ "tool": "calc.add", "ok": false, "error": "not_offered", "content": "no" })),
            (
                "document.updated",
                json!({ "document": "doc_1", "version": 2, "title": "Plan", "persona": "team.writer", "step": 1 }),
            ),
            (
                "step.completed",
                json!({ "step": 1, "usage": { "input_tokens": 10, "output_tokens": 2 }, "model_calls": 1, "tool_calls": 1, "credits": 3 }),
            ),
            (
                "run.failed",
                json!({ "error": { "code": "budget_exceeded", "message": "over" }, "totals": { "steps": 1, "usage": { "input_tokens": 10, "output_tokens": 2 }, "credits": 3 } }),
            ),
        ];
        for (kind, data) in events {
            printer.event(kind, &data).expect("write");
        }
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("turn 1: team.writer"), "{text}");
        assert!(
            text.contains("[1] team.writer · fast-1\n  ◦ recalled 2 memories and 1 earlier snippets (212 tokens)\nHello\n  ⚙ calc.add"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "plain when not on a terminal: {text}");
        assert!(text.contains("failed [not_offered]"), "{text}");
        assert!(text.contains("✎ Plan v2 by team.writer (doc_1)"), "{text}");
        assert!(text.contains("10 in / 2 out tokens, 1 model calls, 1 tool calls, 3 credits"), "{text}");
        assert!(text.contains("run failed [budget_exceeded]: over"), "{text}");
    }

    #[test]
    fn a_recall_is_one_faint_line_on_a_terminal() {
        let mut out = Vec::new();
        let mut printer = Printer::new(&mut out).dimmed(true);
        let recalled =
            json!({ "step": 2, "persona": "p.x", "memories": [{ "id": "mem_1", "score": 0.8 }], "tokens": 40 });
        printer.event("memory.recalled", &recalled).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text, "\x1b[2m  ◦ recalled 1 memories and 0 earlier snippets (40 tokens)\x1b[0m\n");
    }
}
