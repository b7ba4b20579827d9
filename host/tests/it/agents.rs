//! Agents end to end, in real `maestro serve` processes: a fake OpenAI-compatible model
//! server on 127.0.0.1 (the bytes of the real wire format), the first-party plugins in
//! the sandbox, policies from files, SSE over real sockets and the `maestro chat` client.
//! (A worker killed mid-run is in `orchestrator.rs`.)

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use maestro_host::llm::ProviderKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Script, usage};
use crate::harness::{Backend, TestDb};
use crate::runs_api::{Stream, data};
use crate::server::{Server, maestro};

/// Credits per million tokens of the fake models (prices are per configured model id).
const FAST_IN: i64 = 1_000;
const FAST_OUT: i64 = 3_000;
const BEST_IN: i64 = 2_000;
const BEST_OUT: i64 = 8_000;

/// A plugin and policy directory with `personas` and `calc` granted to members (calc at
/// 1 credit a call), and a config naming the fake as the only provider.
struct Site {
    db: TestDb,
    backend: Backend,
    config: std::path::PathBuf,
}

impl Site {
    async fn new(backend: Backend, fake: &FakeLlm) -> Self {
        let db = TestDb::new(backend).await;
        let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
        crate::fixtures::install(&plugins, "personas");
        crate::fixtures::install(&plugins, "calc");
        std::fs::create_dir_all(&policies).expect("policy dir");
        std::fs::write(
            policies.join("team.toml"),
            "version = 1\n\
             [[grant]]\nname = \"personas\"\nsubjects = [\"role:member+\"]\ntools = [\"personas.*\"]\n\
             [[grant]]\nname = \"calculator\"\nsubjects = [\"role:member+\"]\ntools = [\"calc.*\"]\ncredits = 1\n",
        )
        .expect("policy");
        let config = db.dir().join("maestro.toml");
        let text = format!(
            // No post-run distillation: these tests count every model call and hold of a
            // run (distillation's own call and charge are tested in `recall`).
            "[jobs]\npoll_interval = \"100ms\"\n\n[memory]\ndistil = false\n\n{provider}\n\
             [[llm.models]]\nid = \"fast\"\nprovider = \"fake\"\nmodel = \"upstream-fast\"\ntier = \"fast\"\n\
             context_window = 32000\nmax_output_tokens = 400\n\
             [[llm.models]]\nid = \"best\"\nprovider = \"fake\"\nmodel = \"upstream-best\"\ntier = \"best\"\n\
             context_window = 64000\nmax_output_tokens = 800\n\n\
             [[credits.models]]\nmodel = \"fast\"\ninput_per_million = {FAST_IN}\noutput_per_million = {FAST_OUT}\n\
             [[credits.models]]\nmodel = \"best\"\ninput_per_million = {BEST_IN}\noutput_per_million = {BEST_OUT}\n",
            provider = fake.provider_toml("fake", ProviderKind::OpenAi),
        );
        std::fs::write(&config, text).expect("config");
        Self { db, backend, config }
    }

    fn command(&self) -> std::process::Command {
        let mut command = maestro(&self.db, self.backend);
        command
            .env("MAESTRO_PLUGIN_DIR", self.db.dir().join("plugins"))
            .env("MAESTRO_POLICY_DIR", self.db.dir().join("policies"))
            .env("MAESTRO_CONFIG", &self.config);
        command
    }

    async fn start(&self, run: u32) -> Server {
        Server::start(self.command(), &self.db.dir(), run).await
    }
}

/// Tenant `acme` with `credits`, a member key and the platform key.
async fn acme(server: &Server, credits: i64) -> (String, String) {
    let platform = server.bootstrap_token();
    let (status, _) = server.call(Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, member) =
        server.call(Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" }))).await;
    let reply = reqwest::Client::new()
        .post(format!("{}/v1/credits/grants", server.base))
        .bearer_auth(&platform)
        .header("idempotency-key", "agents-test-grant")
        .json(&json!({ "tenant": "acme", "amount": credits, "memo": "test" }))
        .send()
        .await
        .expect("grant");
    assert!(reply.status().is_success(), "{:?}", reply.text().await);
    (member["token"].as_str().expect("token").to_owned(), platform)
}

async fn session(server: &Server, member: &str, personas: &[&str], strategy: &str) -> String {
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/sessions",
            member,
            Some(json!({ "title": "launch plan", "personas": personas, "strategy": strategy })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("session id").to_owned()
}

async fn post(server: &Server, member: &str, session: &str, content: &str) -> String {
    let (status, body) = server
        .call(Method::POST, &format!("/v1/sessions/{session}/messages"), member, Some(json!({ "content": content })))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["run"]["id"].as_str().expect("run id").to_owned()
}

/// Every event of a run, read to its terminal event (one connection).
async fn whole_stream(server: &Server, member: &str, run: &str) -> Vec<(i64, String, Value)> {
    let stream = Stream::open(&server.base, &format!("/v1/runs/{run}/events"), member, None).await.expect("stream");
    let events = tokio::time::timeout(Duration::from_secs(60), stream.rest()).await.expect("the run ends in time");
    events
        .iter()
        .map(|e| (e.id.as_deref().expect("id").parse().expect("numeric id"), e.event.clone(), data(e)))
        .collect()
}

fn text_of(events: &[(i64, String, Value)]) -> String {
    events
        .iter()
        .filter(|(_, kind, _)| kind == "message.delta")
        .map(|(_, _, e)| e["data"]["text"].as_str().unwrap_or(""))
        .collect()
}

fn kinds(events: &[(i64, String, Value)]) -> Vec<&str> {
    events.iter().map(|(_, kind, _)| kind.as_str()).collect()
}

/// Credits for `input`/`output` tokens at per-million prices, rounded up per part (as
/// `ModelPrice::cost`).
fn cost(input: i64, output: i64, per_in: i64, per_out: i64) -> i64 {
    (input * per_in + 999_999) / 1_000_000 + (output * per_out + 999_999) / 1_000_000
}

/// The router answer as the fake model writes it.
fn decide(next: Option<&str>, instruction: &str) -> String {
    json!({ "satisfied": next.is_none(), "next": next, "instruction": next.map(|_| instruction), "reason": "test" })
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_persona_router_session_answers_with_a_sandboxed_tool_and_exact_credits() {
    let fake = FakeLlm::start().await;
    let site = Site::new(Backend::Sqlite, &fake).await;
    let server = site.start(1).await;
    let (member, platform) = acme(&server, 1_000_000).await;
    let team = ["personas.product_manager", "personas.architect", "personas.critic"];
    let session = session(&server, &member, &team, "router").await;

    // Turn 1: the router picks the architect, who computes with the calculator and then
    // answers. Turn 2: the router is satisfied.
    fake.push(Script::openai_text(&decide(Some("personas.architect"), "size the cluster"), usage(300, 20)));
    fake.push(Script::openai_tool_calls(&[("call_1", "calc_evaluate", r#"{"expression":"6*7"}"#)], usage(900, 30)));
    fake.push(Script::openai_text("We need 42 nodes — ünïcode survives the stream.", usage(1000, 40)));
    fake.push(Script::openai_text(&decide(None, ""), usage(400, 15)));
    let run = post(&server, &member, &session, "How many nodes do we need for 6 racks of 7?").await;
    let events = whole_stream(&server, &member, &run).await;

    let seqs: Vec<i64> = events.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "dense ids from 1");
    let kinds = kinds(&events);
    assert_eq!(kinds.first(), Some(&"run.started"));
    assert_eq!(kinds.last(), Some(&"run.completed"), "{kinds:?}");
    let decided: Vec<&Value> =
        events.iter().filter(|(_, k, _)| k == "turn.decided").map(|(_, _, e)| &e["data"]).collect();
    assert_eq!(decided.len(), 2, "{kinds:?}");
    assert_eq!(decided[0]["personas"], json!(["personas.architect"]));
    assert_eq!(decided[1]["satisfied"], json!(true));
    let result = events.iter().find(|(_, k, _)| k == "tool.result").map(|(_, _, e)| &e["data"]).expect("a tool result");
    assert_eq!(result["tool"], "calc.evaluate");
    assert_eq!(result["ok"], json!(true), "{result}");
    assert!(result["content"].as_str().expect("content").contains("42"), "{result}");
    assert_eq!(text_of(&events), "We need 42 nodes — ünïcode survives the stream.");

    // The model saw the tool offered under policy and the tool's result.
    let requests = fake.requests();
    assert_eq!(requests.len(), 4);
    let offered: Vec<&str> = requests[1].body["tools"]
        .as_array()
        .expect("tools offered")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(offered.contains(&"calc_evaluate"), "{offered:?}");
    assert!(requests[2].body["messages"].to_string().contains("42"), "the result went back to the model");

    // Credits: each model call settled (its revenue leg) at exactly reported usage × its
    // model's price;
    // the tool call cost its policy price; nothing is left held.
    let expected_models = cost(300, 20, FAST_IN, FAST_OUT)
        + cost(900, 30, BEST_IN, BEST_OUT)
        + cost(1000, 40, BEST_IN, BEST_OUT)
        + cost(400, 15, FAST_IN, FAST_OUT);
    let (status, run_view) = server.call(Method::GET, &format!("/v1/runs/{run}"), &member, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run_view["state"], "completed", "{run_view}");
    let (_, ledger) = server.call(Method::GET, "/v1/credits/ledger?tenant=acme&limit=500", &platform, None).await;
    let transactions = ledger["transactions"].as_array().expect("transactions");
    let settled: i64 = transactions
        .iter()
        .filter(|t| t["kind"] == "settle")
        .filter(|t| t["memo"].as_str().unwrap_or("").contains(&run) || t["key"].as_str().unwrap_or("").contains(&run))
        .flat_map(|t| t["entries"].as_array().expect("entries"))
        .filter(|e| e["account"] == "platform:revenue")
        .map(|e| e["amount"].as_i64().expect("amount"))
        .sum();
    assert_eq!(settled, expected_models, "{ledger}");
    let holds = transactions.iter().filter(|t| t["kind"] == "reserve").count();
    assert_eq!(holds, 4, "a hold per model call: {ledger}");
    let (_, balance) = server.call(Method::GET, "/v1/credits", &member, None).await;
    assert_eq!(balance["held"], 0, "{balance}");
    assert_eq!(balance["available"], 1_000_000 - expected_models - 1, "{balance}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_at_random_points_reassembles_exactly_the_uninterrupted_stream() {
    let fake = FakeLlm::start().await;
    let site = Site::new(Backend::Sqlite, &fake).await;
    let server = site.start(1).await;
    let (member, _) = acme(&server, 1_000_000).await;
    let session = session(&server, &member, &["personas.writer"], "sequence").await;
    let words: String = (0..60).map(|i| format!("w{i}·ü ")).collect();
    fake.push(Script::openai_text(&words, usage(100, 90)).paced(Duration::from_millis(20)));
    let run = post(&server, &member, &session, "write").await;
    let path = format!("/v1/runs/{run}/events");

    // A client that drops after a pseudo-random number of events each time and resumes
    // with the last id it saw, while the run is live.
    let mut seen: Vec<(i64, String, String)> = Vec::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let deadline = Instant::now() + Duration::from_secs(60);
    'outer: loop {
        assert!(Instant::now() < deadline, "the run never ended");
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let take = 1 + (state % 5) as usize;
        let last = seen.last().map(|(seq, _, _)| seq.to_string());
        let mut stream = Stream::open(&server.base, &path, &member, last.as_deref()).await.expect("resumes");
        for _ in 0..take {
            match tokio::time::timeout(Duration::from_secs(20), stream.event()).await.expect("an event in time") {
                Some(event) => {
                    let seq = event.id.as_deref().expect("id").parse().expect("numeric");
                    let terminal = event.event.starts_with("run.") && event.event != "run.started";
                    seen.push((seq, event.event.clone(), event.data.clone()));
                    if terminal && event.event != "run.interrupted" {
                        break 'outer;
                    }
                }
                None => break 'outer,
            }
        }
    }
    let whole = Stream::open(&server.base, &path, &member, None).await.expect("stream").rest().await;
    let whole: Vec<(i64, String, String)> = whole
        .iter()
        .map(|e| (e.id.as_deref().expect("id").parse().expect("numeric"), e.event.clone(), e.data.clone()))
        .collect();
    assert_eq!(seen, whole, "the resumed client saw exactly the uninterrupted stream");
    let text: String = whole
        .iter()
        .filter(|(_, k, _)| k == "message.delta")
        .map(|(_, _, d)| {
            serde_json::from_str::<Value>(d).expect("json")["data"]["text"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(text, words);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maestro_chat_streams_a_run_against_a_real_server_on_the_embedded_store() {
    let fake = FakeLlm::start().await;
    let site = Site::new(Backend::Sqlite, &fake).await;
    let server = site.start(1).await;
    let (member, _) = acme(&server, 1_000_000).await;
    fake.push(Script::openai_tool_calls(&[("call_9", "calc_evaluate", r#"{"expression":"2+3"}"#)], usage(700, 20)));
    fake.push(Script::openai_text("Five, as computed.", usage(800, 6)));

    let mut chat = std::process::Command::new(env!("CARGO_BIN_EXE_maestro"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MAESTRO_KEY", &member)
        .args(["chat", "--url", &server.base, "--personas", "personas.architect", "--strategy", "sequence"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("maestro chat starts");
    // A line the server refuses (longer than a message may be) is reported, and the
    // next one is posted.
    let mut input = "x".repeat(70 * 1024);
    input.push_str("\nwhat is 2+3?\n");
    chat.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("type two lines");
    let output = tokio::task::spawn_blocking(move || chat.wait_with_output()).await.expect("join").expect("chat exits");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    for needle in
        ["message not sent", "invalid", "personas.architect", "calc.evaluate", "Five, as computed.", "credits"]
    {
        assert!(all.contains(needle), "`{needle}` missing from the chat's output:\n{all}");
    }
    assert_eq!(fake.request_count(), 2);
    server.stop().await;
}
