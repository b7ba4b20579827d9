//! Sessions, messages and runs over the HTTP API, and their event streams over real
//! sockets: replay from every `Last-Event-ID`, live follow while events are appended,
//! slow clients, the session stream across runs, heartbeats, and tenant isolation.
//! Events are appended the way the runner does it: a unit of work, `append_event`,
//! commit, then `hub.publish`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use maestro_core::run::{EventBody, NewEvent, Run, RunEvent, RunId, RunState, RunTotals};
use maestro_core::{Clock as _, Store};
use maestro_host::cli::chat::{SseDecoder, SseEvent, SseFrame};
use maestro_host::orchestrator::hub::EventHub;
use serde_json::{Value, json};

use crate::harness::{Backend, TestHost, backend_tests};

const POLICY: &str = r#"
version = 1

[[grant]]
name = "teams"
subjects = ["tenant:acme", "tenant:globex"]
tools = ["personas.*"]
"#;

/// A served host with an `acme` member, viewer and admin and a `globex` member.
struct Fx {
    host: TestHost,
    base: String,
    platform: String,
    member: String,
    viewer: String,
    globex: String,
}

impl Fx {
    async fn new(backend: Backend) -> Self {
        Self::with_intervals(backend, None).await
    }

    async fn with_intervals(backend: Backend, intervals: Option<(Duration, Duration)>) -> Self {
        let mut host = TestHost::with_plugins(backend, &["personas"], POLICY).await;
        if let Some((poll, heartbeat)) = intervals {
            host.set_event_intervals(poll, heartbeat);
        }
        let platform = host.platform_token().await;
        let member = host.tenant_with_key(&platform, "acme", "member").await;
        let viewer = host.key(&platform, json!({ "tenant": "acme", "role": "viewer" })).await;
        let globex = host.tenant_with_key(&platform, "globex", "member").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = host.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { host, base, platform, member, viewer, globex }
    }

    async fn session(&self, token: &str, personas: &[&str]) -> String {
        let reply = self.host.post("/v1/sessions", Some(token), json!({ "personas": personas })).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body["id"].as_str().expect("id").to_owned()
    }

    /// Posts a message; returns the run it started, as stored.
    async fn post(&self, token: &str, session: &str, content: &str) -> Run {
        let reply = self
            .host
            .post(&format!("/v1/sessions/{session}/messages"), Some(token), json!({ "content": content }))
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        let id = RunId::parse(reply.body["run"]["id"].as_str().expect("run id")).expect("a run id");
        self.host.store.run(None, &id).await.expect("store").expect("the run exists")
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.host.store
    }

    fn hub(&self) -> &Arc<EventHub> {
        self.host.hub()
    }

    /// Appends events to `run` in one unit of work (finishing it when the last one is
    /// terminal), then publishes them, as the runner does.
    async fn append(&self, run: &Run, bodies: Vec<EventBody>) -> Vec<RunEvent> {
        append(self.store(), self.hub(), &self.host.clock.now(), run, bodies).await
    }
}

async fn append(
    store: &Arc<dyn Store>,
    hub: &EventHub,
    at: &chrono::DateTime<chrono::Utc>,
    run: &Run,
    bodies: Vec<EventBody>,
) -> Vec<RunEvent> {
    let mut tx = store.begin().await.expect("begin");
    let mut events = Vec::new();
    let finished = bodies.last().is_some_and(EventBody::is_terminal);
    for body in bodies {
        let event = NewEvent { run: run.id.clone(), session: run.session.clone(), at: *at, body };
        events.push(tx.append_event(&event).await.expect("append"));
    }
    if finished {
        let mut done = run.clone();
        done.state = RunState::Completed;
        done.finished_at = Some(*at);
        tx.update_run(&done).await.expect("update run");
    }
    tx.commit().await.expect("commit");
    hub.publish(&events);
    events
}

fn delta(text: &str) -> EventBody {
    EventBody::MessageDelta { step: 1, call: 1, text: text.to_owned() }
}

fn completed() -> EventBody {
    EventBody::RunCompleted { totals: RunTotals::default() }
}

/// A server-sent event stream read over a real socket.
pub(crate) struct Stream {
    response: reqwest::Response,
    decoder: SseDecoder,
    pending: VecDeque<SseFrame>,
}

impl Stream {
    /// Opens `path`, optionally with a `Last-Event-ID`; an error answer as status and body.
    pub(crate) async fn open(
        base: &str,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self, (StatusCode, Value)> {
        let mut request = reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("the server answers");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("a status");
        if status != StatusCode::OK {
            let body = response.json().await.expect("an error body");
            return Err((status, body));
        }
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        assert_eq!(response.headers().get("x-accel-buffering").and_then(|v| v.to_str().ok()), Some("no"));
        Ok(Self { response, decoder: SseDecoder::default(), pending: VecDeque::new() })
    }

    /// The next event or comment; `None` when the server ended the stream.
    async fn frame(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            let chunk = self.response.chunk().await.expect("the stream reads")?;
            self.pending.extend(self.decoder.push(&chunk));
        }
    }

    /// The next event (comments skipped).
    pub(crate) async fn event(&mut self) -> Option<SseEvent> {
        loop {
            match self.frame().await? {
                SseFrame::Event(event) => return Some(event),
                SseFrame::Comment(_) => {}
            }
        }
    }

    /// Every event until the server ends the stream.
    pub(crate) async fn rest(mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.event().await {
            events.push(event);
        }
        events
    }
}

pub(crate) fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).expect("data is JSON")
}

fn ids(events: &[SseEvent]) -> Vec<i64> {
    events.iter().map(|e| e.id.as_deref().expect("an id").parse().expect("a number")).collect()
}

async fn sessions_are_created_listed_paginated_and_read_by_role(backend: Backend) {
    let fx = Fx::new(backend).await;
    let host = &fx.host;
    let created = host
        .post(
            "/v1/sessions",
            Some(&fx.member),
            json!({ "title": " Launch ", "personas": ["personas.critic", "personas.writer"],
                    "limits": { "max_steps": 3 } }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["title"], "Launch");
    assert_eq!(created.body["strategy"], "router", "router is the default strategy");
    assert_eq!(created.body["personas"], json!(["personas.critic", "personas.writer"]));
    assert_eq!(created.body["limits"]["max_steps"], 3);
    assert_eq!(created.body["limits"]["deadline_secs"], 600, "omitted limits take their defaults");
    let first = created.body["id"].as_str().expect("id").to_owned();
    assert!(first.starts_with("ses_"));
    let mut all = vec![first.clone()];
    for strategy in ["round_robin", "sequence"] {
        // Newest first is by creation time (then id): let time pass between them.
        host.clock.advance(chrono::Duration::milliseconds(5));
        let reply = host
            .post("/v1/sessions", Some(&fx.member), json!({ "personas": ["personas.critic"], "strategy": strategy }))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert_eq!(reply.body["strategy"], strategy);
        all.push(reply.body["id"].as_str().expect("id").to_owned());
    }

    // Viewers read, members create; platform keys are refused as for tool calls.
    let refused = host.post("/v1/sessions", Some(&fx.viewer), json!({ "personas": ["personas.critic"] })).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let platform = host.post("/v1/sessions", Some(&fx.platform), json!({ "personas": ["personas.critic"] })).await;
    assert_eq!((platform.status, platform.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(host.get("/v1/sessions", Some(&fx.platform)).await.status, StatusCode::FORBIDDEN);
    let read = host.get(&format!("/v1/sessions/{first}"), Some(&fx.viewer)).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created.body);

    // Newest first, two per page.
    let page = host.get("/v1/sessions?limit=2", Some(&fx.viewer)).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let listed: Vec<&str> =
        page.body["sessions"].as_array().expect("sessions").iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(listed.len(), 2);
    let next = page.body["next"].as_str().expect("a next page");
    let rest = host.get(&format!("/v1/sessions?limit=2&before={next}"), Some(&fx.viewer)).await;
    let mut seen: Vec<String> = listed.iter().map(|s| (*s).to_owned()).collect();
    seen.extend(
        rest.body["sessions"].as_array().expect("sessions").iter().filter_map(|s| s["id"].as_str().map(str::to_owned)),
    );
    assert_eq!(rest.body["next"], Value::Null, "the last page has no next");
    let mut expected = all.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    assert_eq!(host.get("/v1/sessions", Some(&fx.globex)).await.body["sessions"], json!([]), "tenants see their own");

    // Bad input: clear codes, nothing stored.
    for (body, code) in [
        (json!({ "personas": ["personas.nobody"] }), "unknown_persona"),
        (json!({ "personas": ["personas.critic"], "colour": "red" }), "invalid_request"),
        (json!({ "personas": ["personas.critic"], "strategy": "democracy" }), "invalid_request"),
        (json!({ "personas": ["personas.critic"], "limits": { "max_steps": 0 } }), "invalid_request"),
        (json!({ "personas": ["personas.critic"], "limits": { "steps": 2 } }), "invalid_request"),
        (json!({ "personas": [] }), "invalid_request"),
        (json!({ "personas": ["personas.critic", "personas.critic"] }), "invalid_request"),
        (json!({ "title": "no team" }), "invalid_request"),
    ] {
        let reply = host.post("/v1/sessions", Some(&fx.member), body.clone()).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNPROCESSABLE_ENTITY, code), "{body} → {reply:?}");
    }
    let malformed = host
        .send_raw(
            axum::http::Method::POST,
            "/v1/sessions",
            Some(&fx.member),
            Some(("application/json", b"{".to_vec())),
            &[],
        )
        .await;
    assert_eq!((malformed.status, malformed.code()), (StatusCode::BAD_REQUEST, "invalid_json"));
    for query in ["limit=0", "limit=201", "before=nonsense", "colour=red"] {
        let reply = host.get(&format!("/v1/sessions?{query}"), Some(&fx.member)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {reply:?}");
    }
    let listed = host.get("/v1/sessions?limit=200", Some(&fx.member)).await;
    assert_eq!(listed.body["sessions"].as_array().expect("sessions").len(), 3, "refused sessions were not stored");
}

async fn messages_start_runs_that_can_be_read_and_cancelled(backend: Backend) {
    let fx = Fx::new(backend).await;
    let host = &fx.host;
    let session = fx.session(&fx.member, &["personas.critic"]).await;
    let posted = host
        .post(
            &format!("/v1/sessions/{session}/messages"),
            Some(&fx.member),
            json!({ "content": "What could go wrong?" }),
        )
        .await;
    assert_eq!(posted.status, StatusCode::ACCEPTED, "{posted:?}");
    let message = &posted.body["message"];
    assert_eq!(message["seq"], 1);
    assert_eq!(message["content"], "What could go wrong?");
    assert_eq!(message["author"]["kind"], "user");
    let run = &posted.body["run"];
    let run_id = run["id"].as_str().expect("run id").to_owned();
    assert_eq!(message["run"], run_id.as_str());
    assert_eq!(run["state"], "queued");
    assert_eq!(run["session"], session.as_str());
    assert_eq!(run["links"]["self"], format!("/v1/runs/{run_id}"));
    assert_eq!(run["links"]["events"], format!("/v1/runs/{run_id}/events"));

    for (token, body, status) in [
        (&fx.viewer, json!({ "content": "hi" }), StatusCode::FORBIDDEN),
        (&fx.member, json!({ "content": "   " }), StatusCode::UNPROCESSABLE_ENTITY),
        (&fx.member, json!({ "content": "hi", "role": "system" }), StatusCode::UNPROCESSABLE_ENTITY),
        (&fx.member, json!({ "text": "hi" }), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let reply = host.post(&format!("/v1/sessions/{session}/messages"), Some(token), body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {reply:?}");
    }
    for i in 2..=5 {
        fx.post(&fx.member, &session, &format!("message {i}")).await;
    }

    // Messages: oldest first, paginated by seq.
    let page = host.get(&format!("/v1/sessions/{session}/messages?limit=3"), Some(&fx.viewer)).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let seqs: Vec<i64> =
        page.body["messages"].as_array().expect("messages").iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(page.body["next"], 3);
    let rest = host.get(&format!("/v1/sessions/{session}/messages?after=3&limit=3"), Some(&fx.viewer)).await;
    let seqs: Vec<i64> =
        rest.body["messages"].as_array().expect("messages").iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert_eq!(seqs, vec![4, 5]);
    assert_eq!(rest.body["next"], Value::Null);
    assert_eq!(
        host.get(&format!("/v1/sessions/{session}/messages?after=-1"), Some(&fx.viewer)).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // The run: viewers read it, members cancel it (idempotently).
    let read = host.get(&format!("/v1/runs/{run_id}"), Some(&fx.viewer)).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(read.body["state"], "queued");
    assert_eq!(read.body["totals"]["usage"]["input_tokens"], 0);
    assert_eq!(read.body["cancel_requested"], false);
    let refused = host.post(&format!("/v1/runs/{run_id}/cancel"), Some(&fx.viewer), json!({})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    for _ in 0..2 {
        let cancelled =
            host.send(axum::http::Method::POST, &format!("/v1/runs/{run_id}/cancel"), Some(&fx.member), None).await;
        assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{cancelled:?}");
        assert_eq!(cancelled.body["cancel_requested"], true);
        assert_eq!(cancelled.body["id"], run_id.as_str());
    }
    // Once the run is over, cancel answers it as it is.
    let stored = fx.store().run(None, &RunId::parse(&run_id).expect("id")).await.expect("store").expect("run");
    fx.append(&stored, vec![EventBody::RunCancelled { totals: RunTotals::default() }]).await;
    let over = host.send(axum::http::Method::POST, &format!("/v1/runs/{run_id}/cancel"), Some(&fx.member), None).await;
    assert_eq!(over.status, StatusCode::OK, "{over:?}");
    assert_eq!(over.body["last_seq"], 1);
}

async fn another_tenants_sessions_runs_and_streams_answer_404(backend: Backend) {
    let fx = Fx::new(backend).await;
    let host = &fx.host;
    let session = fx.session(&fx.member, &["personas.critic"]).await;
    let run = fx.post(&fx.member, &session, "private").await;
    let run_id = run.id.to_string();
    let gets = [
        format!("/v1/sessions/{session}"),
        format!("/v1/sessions/{session}/messages"),
        format!("/v1/runs/{run_id}"),
        "/v1/sessions/ses_nonsense".to_owned(),
        "/v1/runs/not-a-run".to_owned(),
    ];
    for path in &gets {
        let reply = host.get(path, Some(&fx.globex)).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"), "{path}");
    }
    let posted =
        host.post(&format!("/v1/sessions/{session}/messages"), Some(&fx.globex), json!({ "content": "hi" })).await;
    assert_eq!(posted.status, StatusCode::NOT_FOUND);
    let cancelled = host.post(&format!("/v1/runs/{run_id}/cancel"), Some(&fx.globex), json!({})).await;
    assert_eq!(cancelled.status, StatusCode::NOT_FOUND);
    for path in [format!("/v1/runs/{run_id}/events"), format!("/v1/sessions/{session}/events")] {
        let (status, body) = Stream::open(&fx.base, &path, &fx.globex, None).await.err().expect("refused");
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{path}");
    }
    // Nothing leaked into the other tenant's view, and the run was not cancelled.
    let run = host.get(&format!("/v1/runs/{run_id}"), Some(&fx.member)).await;
    assert_eq!(run.body["cancel_requested"], false);
    let messages = host.get(&format!("/v1/sessions/{session}/messages"), Some(&fx.member)).await;
    assert_eq!(messages.body["messages"].as_array().expect("messages").len(), 1);
}

async fn a_finished_runs_stream_replayed_from_every_last_event_id_equals_the_tail(backend: Backend) {
    let fx = Fx::new(backend).await;
    let session = fx.session(&fx.member, &["personas.critic"]).await;
    let run = fx.post(&fx.member, &session, "replay me").await;
    let mut bodies: Vec<EventBody> = vec![EventBody::RunStarted {
        trigger: run.trigger.clone(),
        strategy: run.strategy,
        personas: vec!["personas.critic".into()],
        limits: run.limits,
    }];
    bodies.extend(["Ri", "sk", "s: é\nline two", "", "done"].map(delta));
    fx.append(&run, bodies).await;
    fx.append(&run, vec![delta("more"), completed()]).await;
    let head = 8;
    let path = format!("/v1/runs/{}/events", run.id);
    let whole = Stream::open(&fx.base, &path, &fx.viewer, None).await.expect("opens").rest().await;
    assert_eq!(ids(&whole), (1..=head).collect::<Vec<_>>(), "the stream ends after the terminal event");
    assert_eq!(whole[0].event, "run.started");
    assert_eq!(whole[head as usize - 1].event, "run.completed");
    let third = data(&whole[3]);
    assert_eq!(third["type"], "message.delta");
    assert_eq!(third["run"], run.id.as_str());
    assert_eq!(
        (third["seq"].as_i64(), third["session_seq"].as_i64(), third["v"].as_i64()),
        (Some(4), Some(4), Some(1))
    );
    assert_eq!(third["data"]["text"], "s: é\nline two", "multi-line text survives SSE framing");
    for after in 0..=head {
        let tail =
            Stream::open(&fx.base, &path, &fx.viewer, Some(&after.to_string())).await.expect("opens").rest().await;
        assert_eq!(tail, whole[after as usize..], "Last-Event-ID {after}");
        let query = format!("{path}?after={after}");
        let tail = Stream::open(&fx.base, &query, &fx.viewer, None).await.expect("opens").rest().await;
        assert_eq!(tail, whole[after as usize..], "?after={after}");
    }
    // The header wins over a stale `after` (a browser's EventSource reconnecting).
    let both =
        Stream::open(&fx.base, &format!("{path}?after=2"), &fx.viewer, Some("6")).await.expect("opens").rest().await;
    assert_eq!(ids(&both), vec![7, 8]);
}

async fn malformed_or_beyond_head_last_event_ids_answer_400(backend: Backend) {
    let fx = Fx::new(backend).await;
    let session = fx.session(&fx.member, &["personas.critic"]).await;
    let run = fx.post(&fx.member, &session, "x").await;
    fx.append(&run, vec![delta("a"), delta("b"), completed()]).await;
    let run_path = format!("/v1/runs/{}/events", run.id);
    let session_path = format!("/v1/sessions/{session}/events");
    for path in [&run_path, &session_path] {
        for bad in ["abc", "-1", "1.5", "", "4", "99999999999999999999"] {
            let (status, body) = Stream::open(&fx.base, path, &fx.member, Some(bad)).await.err().expect("refused");
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_last_event_id")),
                "{path} Last-Event-ID `{bad}`: {body}"
            );
            let query = format!("{path}?after={bad}");
            let (status, body) = Stream::open(&fx.base, &query, &fx.member, None).await.err().expect("refused");
            assert_eq!(body["error"]["code"], "invalid_last_event_id", "{query}");
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
        // The head itself is fine.
        assert!(Stream::open(&fx.base, path, &fx.member, Some("3")).await.is_ok());
    }
}

async fn live_follow_while_events_are_appended_concurrently_yields_every_seq_once_in_order(backend: Backend) {
    let fx = Fx::new(backend).await;
    let session = fx.session(&fx.member, &["personas.critic"]).await;
    let run = fx.post(&fx.member, &session, "stream").await;
    fx.append(&run, vec![delta("before")]).await;
    let path = format!("/v1/runs/{}/events", run.id);
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let (base, path, token) = (fx.base.clone(), path.clone(), fx.viewer.clone());
            tokio::spawn(async move {
                let after = (i == 2).then_some("1");
                Stream::open(&base, &path, &token, after).await.expect("opens").rest().await
            })
        })
        .collect();
    let mut session_stream =
        Stream::open(&fx.base, &format!("/v1/sessions/{session}/events"), &fx.viewer, None).await.expect("opens");
    const BATCHES: usize = 60;
    let (store, hub, run2, at) = (fx.store().clone(), fx.hub().clone(), run.clone(), fx.host.clock.now());
    let writer = tokio::spawn(async move {
        for batch in 0..BATCHES {
            let bodies = (0..(batch % 3) + 1).map(|i| delta(&format!("{batch}.{i}"))).collect();
            append(&store, &hub, &at, &run2, bodies).await;
            if batch % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        append(&store, &hub, &at, &run2, vec![completed()]).await;
    });
    writer.await.expect("writer");
    let head = fx.store().run(None, &run.id).await.expect("store").expect("run").last_seq;
    for (i, reader) in readers.into_iter().enumerate() {
        let events = reader.await.expect("reader");
        let from = if i == 2 { 2 } else { 1 };
        assert_eq!(ids(&events), (from..=head).collect::<Vec<_>>(), "reader {i}");
    }
    let mut session_ids = Vec::new();
    while session_ids.len() < head as usize {
        let event = session_stream.event().await.expect("the session stream stays open");
        session_ids.push(data(&event)["session_seq"].as_i64().expect("session_seq"));
    }
    assert_eq!(session_ids, (1..=head).collect::<Vec<_>>());
}

async fn a_client_that_never_reads_does_not_block_publish_and_later_gets_every_event(backend: Backend) {
    let fx = Fx::new(backend).await;
    let session = fx.session(&fx.member, &["personas.critic"]).await;
    let run = fx.post(&fx.member, &session, "flood").await;
    let path = format!("/v1/runs/{}/events", run.id);
    // Opened (the server subscribed), then not read while far more than the live
    // buffer and the socket buffers is published.
    let mut stalled = Stream::open(&fx.base, &path, &fx.viewer, None).await.expect("opens");
    let text = "x".repeat(2048);
    let events_per_batch = 50;
    let batches = 80;
    let publishing = async {
        for _ in 0..batches {
            fx.append(&run, (0..events_per_batch).map(|_| delta(&text)).collect()).await;
        }
        fx.append(&run, vec![completed()]).await;
    };
    tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("publishing never waits for a stalled client");
    let mut seen = Vec::new();
    while let Some(event) = stalled.event().await {
        seen.push(event.id.expect("id").parse::<i64>().expect("number"));
    }
    let head = (events_per_batch * batches + 1) as i64;
    assert_eq!(seen, (1..=head).collect::<Vec<_>>(), "every event once, in order, after lagging");
    assert!(fx.hub().lagged() >= 1, "the stalled stream overflowed its live buffer and replayed");
}

async fn the_session_stream_interleaves_runs_by_session_seq_and_sends_heartbeats(backend: Backend) {
    let fx = Fx::with_intervals(backend, Some((Duration::from_millis(50), Duration::from_millis(100)))).await;
    let session = fx.session(&fx.member, &["personas.critic", "personas.writer"]).await;
    let first = fx.post(&fx.member, &session, "one").await;
    let second = fx.post(&fx.member, &session, "two").await;
    let mut stream =
        Stream::open(&fx.base, &format!("/v1/sessions/{session}/events"), &fx.viewer, None).await.expect("opens");
    let mut expected = Vec::new();
    for i in 0..6 {
        let run = if i % 2 == 0 { &first } else { &second };
        let body = if i >= 4 { completed() } else { delta(&format!("{i}")) };
        let event = fx.append(run, vec![body]).await.remove(0);
        expected.push((event.session_seq, event.run.to_string(), event.seq));
    }
    let mut seen = Vec::new();
    for _ in 0..6 {
        let event = stream.event().await.expect("an event");
        let data = data(&event);
        assert_eq!(event.id.as_deref(), Some(data["session_seq"].to_string().as_str()), "ids are session_seq");
        seen.push((
            data["session_seq"].as_i64().expect("n"),
            data["run"].as_str().expect("run").to_owned(),
            data["seq"].as_i64().expect("n"),
        ));
    }
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    // Both runs are over, the session stream stays open: idle, it sends heartbeats.
    assert_eq!(stream.frame().await, Some(SseFrame::Comment("heartbeat".into())));
    // Resuming the session stream replays from its Last-Event-ID.
    let resumed =
        Stream::open(&fx.base, &format!("/v1/sessions/{session}/events"), &fx.viewer, Some("4")).await.expect("opens");
    let mut resumed = resumed;
    let fifth = resumed.event().await.expect("an event");
    assert_eq!(fifth.id.as_deref(), Some("5"));
    // A running run's idle stream sends heartbeats too.
    let third = fx.post(&fx.member, &session, "three").await;
    let mut idle =
        Stream::open(&fx.base, &format!("/v1/runs/{}/events", third.id), &fx.viewer, None).await.expect("opens");
    assert_eq!(idle.frame().await, Some(SseFrame::Comment("heartbeat".into())));
}

backend_tests!(
    sessions_are_created_listed_paginated_and_read_by_role,
    messages_start_runs_that_can_be_read_and_cancelled,
    another_tenants_sessions_runs_and_streams_answer_404,
    a_finished_runs_stream_replayed_from_every_last_event_id_equals_the_tail,
    malformed_or_beyond_head_last_event_ids_answer_400,
    live_follow_while_events_are_appended_concurrently_yields_every_seq_once_in_order,
    a_client_that_never_reads_does_not_block_publish_and_later_gets_every_event,
    the_session_stream_interleaves_runs_by_session_seq_and_sends_heartbeats,
);

/// `maestro chat` against a real `maestro serve` on the embedded store: it creates the
/// session, posts stdin's line and prints the run as its events arrive. The events are
/// written into the server's store by the test (as a runner on another replica would),
/// so the server's stream finds them by polling the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maestro_chat_posts_stdin_and_prints_the_run_as_it_streams() {
    use std::io::Write as _;
    use std::process::Stdio;

    use crate::server::{Server, maestro};

    let db = crate::harness::TestDb::new(Backend::Sqlite).await;
    let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
    crate::fixtures::install(&plugins, "personas");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(policies.join("team.toml"), POLICY).expect("policy");
    let mut command = maestro(&db, Backend::Sqlite);
    // This test writes the run's events itself: the server's job worker claims once at
    // start and then not for an hour, so the server's own runner never races it (a
    // run with a real model provider is `agents::maestro_chat_…`).
    command
        .env("MAESTRO_PLUGIN_DIR", &plugins)
        .env("MAESTRO_POLICY_DIR", &policies)
        .env("MAESTRO_JOBS_POLL_INTERVAL", "1h");
    let server = Server::start(command, &db.dir(), 1).await;
    let platform = server.bootstrap_token();
    server.call(reqwest::Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    let (_, key) = server
        .call(reqwest::Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" })))
        .await;
    let member = key["token"].as_str().expect("token").to_owned();

    let mut chat = maestro(&db, Backend::Sqlite);
    chat.env("MAESTRO_KEY", &member)
        .args([
            "chat",
            "--url",
            &server.base,
            "--personas",
            "personas.critic,personas.writer",
            "--strategy",
            "sequence",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = chat.spawn().expect("maestro chat starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"What could go wrong?\n").expect("write a line");
    // Ends stdin: chat finishes the run it follows, then exits.
    drop(stdin);

    // The run the line started, found through the API.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let run = loop {
        let (_, sessions) = server.call(reqwest::Method::GET, "/v1/sessions", &member, None).await;
        if let Some(session) = sessions["sessions"][0]["id"].as_str() {
            let path = format!("/v1/sessions/{session}/messages");
            let (_, messages) = server.call(reqwest::Method::GET, &path, &member, None).await;
            if let Some(run) = messages["messages"][0]["run"].as_str() {
                break RunId::parse(run).expect("run id");
            }
        }
        assert!(std::time::Instant::now() < deadline, "chat never posted its line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The server's embedded store, under its data directory.
    let location = maestro_host::storage::StoreLocation::Sqlite(db.dir().join("data").join("maestro.db"));
    let store = maestro_host::storage::open(&location).await.expect("the server's store opens");
    let run = store.run(None, &run).await.expect("store").expect("the run");
    let hub = EventHub::new(store.clone());
    let at = chrono::Utc::now();
    let step = |persona: &str, step| EventBody::StepStarted {
        step,
        turn: step,
        persona: persona.into(),
        model: "fast-1".into(),
        tools: vec![],
        context_messages: 1,
        trimmed_messages: 0,
    };
    append(
        &store,
        &hub,
        &at,
        &run,
        vec![
            EventBody::TurnDecided {
                turn: 1,
                personas: vec!["personas.critic".into()],
                instruction: None,
                reason: "sequence: first".into(),
                satisfied: false,
                fallback: false,
            },
            step("personas.critic", 1),
            delta("Scope "),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    append(&store, &hub, &at, &run, vec![delta("creep."), completed()]).await;

    let output =
        tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(move || child.wait_with_output()))
            .await
            .expect("chat exits after the run and the end of stdin")
            .expect("join")
            .expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chat failed: {stderr}\n{stdout}");
    assert!(stderr.contains("session ses_"), "{stderr}");
    assert!(stdout.contains("turn 1: personas.critic"), "{stdout}");
    assert!(stdout.contains("[1] personas.critic · fast-1\nScope creep.\n"), "{stdout}");
    assert!(stdout.contains("■ run completed"), "{stdout}");
    drop(server);
}

/// What the fake server below saw.
#[derive(Debug, Default)]
struct Seen {
    last_event_ids: Vec<Option<String>>,
    cancels: u32,
}

/// A scripted stand-in for a server's sessions API: the first event stream drops after
/// three events; the resumed one sends one more and then waits for the cancel request
/// to end the run with `run.cancelled`.
async fn fake_chat_server() -> (String, Arc<std::sync::Mutex<Seen>>) {
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::{get, post};

    type Shared = (Arc<std::sync::Mutex<Seen>>, Arc<tokio::sync::Notify>);
    fn sse(id: i64, kind: &str, data: Value) -> String {
        let body = json!({ "run": "run_fake", "seq": id, "session_seq": id, "type": kind, "v": 1, "at": "2026-01-01T00:00:00Z", "data": data });
        // CRLF line endings, as some proxies write them.
        format!("id: {id}\r\nevent: {kind}\r\ndata: {body}\r\n\r\n")
    }
    async fn events(State((seen, cancelled)): State<Shared>, headers: HeaderMap) -> axum::response::Response {
        let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        seen.lock().expect("lock").last_event_ids.push(last.clone());
        let head = [("content-type", "text/event-stream")];
        if last.is_none() {
            let text = [
                sse(
                    1,
                    "turn.decided",
                    json!({ "turn": 1, "personas": ["personas.critic"], "reason": "first", "satisfied": false }),
                ),
                sse(
                    2,
                    "step.started",
                    json!({ "step": 1, "turn": 1, "persona": "personas.critic", "model": "fast-1" }),
                ),
                sse(3, "message.delta", json!({ "step": 1, "call": 1, "text": "Hel" })),
            ]
            .concat();
            // The connection ends here, before the run did.
            return axum::response::IntoResponse::into_response((head, text));
        }
        let first = sse(4, "message.delta", json!({ "step": 1, "call": 1, "text": "lo" }));
        let last = sse(
            5,
            "run.cancelled",
            json!({ "totals": { "steps": 1, "usage": { "input_tokens": 7, "output_tokens": 2 }, "credits": 4 } }),
        );
        let chunks = futures_util::stream::unfold(0, move |step| {
            let (first, last, cancelled) = (first.clone(), last.clone(), cancelled.clone());
            async move {
                match step {
                    0 => Some((Ok::<_, std::convert::Infallible>(first), 1)),
                    1 => {
                        cancelled.notified().await;
                        Some((Ok(last), 2))
                    }
                    _ => None,
                }
            }
        });
        axum::response::IntoResponse::into_response((head, Body::from_stream(chunks)))
    }
    async fn cancel(State((seen, cancelled)): State<Shared>) -> (StatusCode, axum::Json<Value>) {
        seen.lock().expect("lock").cancels += 1;
        cancelled.notify_one();
        (StatusCode::ACCEPTED, axum::Json(json!({ "id": "run_fake", "state": "running" })))
    }
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let shared: Shared = (seen.clone(), Arc::new(tokio::sync::Notify::new()));
    let app = axum::Router::new()
        .route(
            "/v1/sessions",
            post(|| async {
                (
                    StatusCode::CREATED,
                    axum::Json(json!({ "id": "ses_fake", "personas": ["personas.critic"], "strategy": "router" })),
                )
            }),
        )
        .route(
            "/v1/sessions/ses_fake/messages",
            post(|| async {
                (StatusCode::ACCEPTED, axum::Json(json!({ "message": {}, "run": { "id": "run_fake" } })))
            }),
        )
        .route("/v1/runs/run_fake/events", get(events))
        .route("/v1/runs/run_fake/cancel", post(cancel))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

/// `maestro chat` resumes a dropped stream after the last event it printed, and Ctrl-C
/// cancels the run it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maestro_chat_resumes_a_dropped_stream_and_cancels_on_ctrl_c() {
    use std::io::Write as _;
    use std::process::Stdio;

    let (base, seen) = fake_chat_server().await;
    let db = crate::harness::TestDb::new(Backend::Sqlite).await;
    let mut chat = crate::server::maestro(&db, Backend::Sqlite);
    chat.env("MAESTRO_KEY", "mk_fake")
        .args(["chat", "--url", &base, "--personas", "personas.critic"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = chat.spawn().expect("maestro chat starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write a line");
    drop(stdin);
    let stdout = child.stdout.take().expect("stdout");
    let printed = Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let printed = printed.clone();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buffer) {
                printed.lock().expect("lock").push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        })
    };
    // "Hel" came on the first connection, "lo" on the resumed one.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !printed.lock().expect("lock").contains("Hello") {
        assert!(std::time::Instant::now() < deadline, "the resumed stream never completed the text: {printed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.lock().expect("lock").last_event_ids, vec![None, Some("3".to_owned())]);
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let output =
        tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(move || child.wait_with_output()))
            .await
            .expect("chat exits after the cancelled run and the end of stdin")
            .expect("join")
            .expect("output");
    reader.join().expect("reader");
    let printed = printed.lock().expect("lock").clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chat failed: {stderr}\n{printed:?}");
    assert_eq!(seen.lock().expect("lock").cancels, 1);
    assert!(stderr.contains("resuming after event 3"), "{stderr}");
    assert!(stderr.contains("cancelling run_fake"), "{stderr}");
    assert!(
        printed
            .contains("[1] personas.critic · fast-1\nHello\n■ run cancelled: 1 steps, 7 in / 2 out tokens, 4 credits"),
        "{printed}"
    );
}
