//! Agents that remember, on both stores: a completed run's facts distilled into memories
//! by a job (a fake model server speaking the OpenAI wire format answers the facts as
//! JSON), recalled into a later run of another session (the model's request holds them,
//! a `memory.recalled` event lists them), never across tenants, within the budget, not
//! at all when recall is off, and nothing written for a malformed answer. Real runs,
//! real plugins (`personas`) under a real policy, real credits, a real full-text index;
//! the deterministic fake embedder, and the real MiniLM for recall by meaning.

use std::sync::Arc;

use maestro_core::embed::Embedder;
use maestro_core::memory::{MemoryFilter, MemoryScope};
use maestro_core::plugin::ModelTier;
use maestro_core::policy::PolicySet;
use maestro_core::run::{EventBody, Run, RunEvent, RunLimits, RunState, Session, Strategy};
use maestro_core::{Clock, Job, JobQuery, KeyScope, Role, Store, TenantId};
use maestro_host::accounts::{Accounts, SystemClock};
use maestro_host::credits::Credits;
use maestro_host::distil::{DISTIL_JOB, Distil, DistilPorts};
use maestro_host::jobs::{JobError, JobHandler};
use maestro_host::memory::{Memories, NewMemory};
use maestro_host::orchestrator::hub::EventHub;
use maestro_host::orchestrator::{NewSession, Orchestrator, Runner, RunnerPorts};
use maestro_host::recall::{MemorySettings, Recall, RecallPorts};
use maestro_host::search::{Access, FullText, SearchSettings};
use maestro_host::tools::{Principal, Tools};
use maestro_llm::{Llm, ProviderKind};
use serde_json::json;

use crate::fake_embed::FakeEmbedder;
use crate::fake_llm::{FakeLlm, Recorded, Script, model, usage};
use crate::harness::{Backend, TestDb, backend_tests, tools_with};
use crate::orchestrator::{WRITER, prices};

backend_tests!(
    a_fact_told_in_one_session_is_distilled_then_recalled_in_another_and_never_by_another_tenant,
    a_retried_distillation_updates_instead_of_inserting_again,
    the_recalled_block_stays_within_its_token_budget,
    recall_switched_off_or_skipped_for_a_persona_adds_nothing,
    nothing_relevant_records_no_recall_and_an_unavailable_embedder_never_fails_a_run,
    a_malformed_distillation_answer_writes_nothing_and_leaves_no_hold,
    a_distillation_retried_after_its_charge_reuses_the_recorded_answer,
    a_caller_the_policy_denies_memory_search_gets_no_recalled_block,
);

const POLICY: &str = r#"
version = 1

[[grant]]
name = "teams"
subjects = ["tenant:acme", "tenant:globex"]
tools = ["personas.*"]

[[grant]]
name = "recall"
subjects = ["role:member+"]
tools = ["memory.search"]

[[deny]]
name = "no-memories-for-one-key"
subjects = ["key:key_000000000000000000zz"]
tools = ["memory.*"]
"#;

/// What the fake model answers a distillation request.
const FACTS: &str = r#"{"facts": [{"text": "The office beehives are kept on the roof in Lisbon.", "tags": ["Bees"], "scope": "tenant", "persona": ""}]}"#;

/// Whether a request the fake received is a distillation (its response schema's name).
fn is_distillation(request: &Recorded) -> bool {
    request.body["response_format"]["json_schema"]["name"] == "maestro_facts"
}

/// The system message of a persona's request.
fn system_of(request: &Recorded) -> String {
    request.body["messages"][0]["content"].as_str().unwrap_or_default().to_owned()
}

/// Two tenants with credits and member keys, the `personas` plugin under [`POLICY`],
/// a fake model server behind the real provider client, memories on the fake embedder,
/// a full-text index, recall and distillation.
struct Fixture {
    _db: TestDb,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    credits: Arc<Credits>,
    tools: Arc<Tools>,
    hub: Arc<EventHub>,
    orchestrator: Orchestrator,
    acme: Principal,
    globex: Principal,
    fake: FakeLlm,
    llm: Arc<Llm>,
    embedder: Arc<dyn Embedder>,
    memories: Arc<Memories>,
    index: FullText,
}

impl Fixture {
    async fn new(backend: Backend) -> Self {
        Self::with_embedder(backend, Arc::new(FakeEmbedder::named("fake-a"))).await
    }

    async fn with_embedder(backend: Backend, embedder: Arc<dyn Embedder>) -> Self {
        let db = TestDb::new(backend).await;
        let store = db.open().await;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let accounts = Accounts::new(store.clone(), clock.clone());
        let credits = Arc::new(Credits::new(store.clone(), clock.clone()));
        let mut principals = Vec::new();
        for name in ["acme", "globex"] {
            let tenant = accounts.create_tenant(name).await.expect("tenant");
            let key = accounts
                .create_key(KeyScope::Tenant { tenant_id: tenant.id.clone(), role: Role::Member }, "m".into(), None)
                .await
                .expect("key");
            credits.grant(&tenant.id, 10_000_000, &format!("grant-{name}"), "test credits").await.expect("grant");
            principals.push(Principal {
                tenant: name.into(),
                tenant_id: tenant.id,
                role: Role::Member,
                key_id: key.key.id.to_string(),
            });
        }
        let globex = principals.pop().expect("globex");
        let acme = principals.pop().expect("acme");
        let policies = PolicySet::parse([("test.toml", POLICY)]).expect("policy");
        let tools = tools_with(&db.dir().join("plugins"), &["personas"], policies, credits.clone()).await;
        let hub = Arc::new(EventHub::new(store.clone()));
        let orchestrator = Orchestrator::new(store.clone(), store.clone(), clock.clone(), tools.clone(), hub.clone());
        let fake = FakeLlm::start().await;
        fake.keep_alive();
        // One fast model: every persona's tier and the distillation's fall back to it.
        let fast = maestro_llm::ModelConfig {
            tier: ModelTier::Small,
            context_window: 32_000,
            max_output_tokens: 400,
            ..model("fast-m", "fake", &[])
        };
        let llm = Arc::new(Llm::new(vec![fake.provider("fake", ProviderKind::OpenAi)], vec![fast]).expect("llm"));
        fake.respond_with(|request| {
            Some(if is_distillation(request) {
                Script::openai_text(FACTS, usage(300, 40))
            } else {
                Script::openai_text("Noted, thank you.", usage(200, 10))
            })
        });
        let memories = Arc::new(Memories::new(store.clone(), embedder.clone(), clock.clone()));
        let settings = SearchSettings { writer_memory_bytes: 15_000_000, ..SearchSettings::under(&db.dir()) };
        let index = FullText::open(settings, store.clone(), clock.clone(), Access::Write).expect("index");
        Self {
            _db: db,
            store,
            clock,
            credits,
            tools,
            hub,
            orchestrator,
            acme,
            globex,
            fake,
            llm,
            embedder,
            memories,
            index,
        }
    }

    fn recall(&self, settings: MemorySettings) -> Arc<Recall> {
        Arc::new(Recall::new(
            RecallPorts {
                memories: self.store.clone(),
                passages: self.store.clone(),
                embedder: self.embedder.clone(),
                search: Some(self.index.clone()),
                clock: self.clock.clone(),
            },
            settings,
        ))
    }

    fn runner(&self, settings: MemorySettings) -> Runner {
        let distil = settings.distil;
        Runner::new(
            RunnerPorts {
                runs: self.store.clone(),
                unit: self.store.clone(),
                tenants: self.store.clone(),
                clock: self.clock.clone(),
                tools: self.tools.clone(),
                credits: self.credits.clone(),
                models: self.llm.clone(),
                prices: prices(),
                hub: self.hub.clone(),
            },
            crate::orchestrator::Rig::settings(),
        )
        .with_memory(Some(self.recall(settings)), distil)
    }

    fn distil(&self) -> Distil {
        Distil::new(
            DistilPorts {
                runs: self.store.clone(),
                models: self.llm.clone(),
                memories: self.memories.clone(),
                credits: self.credits.clone(),
                prices: prices(),
                clock: self.clock.clone(),
            },
            8,
        )
    }

    async fn session(&self, who: &Principal) -> Session {
        self.orchestrator
            .create_session(
                who,
                NewSession {
                    title: "t".into(),
                    personas: vec![WRITER.to_owned()],
                    strategy: Strategy::Sequence,
                    limits: Some(RunLimits::default()),
                },
            )
            .await
            .expect("session")
    }

    /// Posts `text` in `session` and runs it to its end.
    async fn run(&self, runner: &Runner, who: &Principal, session: &Session, text: &str) -> Run {
        let run = self.orchestrator.post_message(who, &session.id, text.into()).await.expect("posted").run;
        assert_eq!(runner.execute(&run.id).await.expect("executes"), RunState::Completed);
        run
    }

    async fn events(&self, run: &Run) -> Vec<RunEvent> {
        self.store.run_events(&run.id, 0, 10_000).await.expect("events")
    }

    /// The distillation jobs enqueued so far.
    async fn distil_jobs(&self) -> Vec<Job> {
        let query = JobQuery { kind: Some(DISTIL_JOB.into()), ..JobQuery::default() };
        self.store.jobs(&query).await.expect("jobs").jobs
    }

    /// The index caught up with everything written so far.
    async fn index_caught_up(&self) {
        self.index.catch_up().await.expect("the index catches up");
    }

    /// Requests of personas (not distillations) whose system message holds `text`.
    fn persona_requests_holding(&self, text: &str) -> usize {
        self.fake.requests().iter().filter(|r| !is_distillation(r) && system_of(r).contains(text)).count()
    }

    async fn tenant_memories(&self, tenant: &TenantId) -> Vec<maestro_core::memory::Memory> {
        self.memories.list(tenant, &MemoryFilter::default(), None, 100).await.expect("memories")
    }
}

fn recalled(events: &[RunEvent]) -> Vec<&EventBody> {
    events.iter().map(|e| &e.body).filter(|b| matches!(b, EventBody::MemoryRecalled { .. })).collect()
}

/// Test settings: the defaults, with a BM25 floor a tiny index reaches.
fn settings() -> MemorySettings {
    MemorySettings { recall_min_text_score: 0.1, ..MemorySettings::default() }
}

async fn a_fact_told_in_one_session_is_distilled_then_recalled_in_another_and_never_by_another_tenant(
    backend: Backend,
) {
    let fx = Fixture::new(backend).await;
    let runner = fx.runner(settings());
    let first = fx.session(&fx.acme).await;
    let told =
        fx.run(&runner, &fx.acme, &first, "For the record: our office beehives live on the roof in Lisbon.").await;
    assert!(recalled(&fx.events(&told).await).is_empty(), "nothing to recall yet");

    // The run's end enqueued its distillation, once.
    let jobs = fx.distil_jobs().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].key, format!("{DISTIL_JOB}:{}", told.id));
    fx.distil().handle(&jobs[0]).await.expect("distilled");
    let remembered = fx.tenant_memories(&fx.acme.tenant_id).await;
    assert_eq!(remembered.len(), 1, "{remembered:?}");
    let memory = &remembered[0];
    assert_eq!(memory.text, "The office beehives are kept on the roof in Lisbon.");
    assert_eq!(memory.scope, MemoryScope::Tenant);
    assert_eq!(memory.tags, vec!["bees".to_owned()]);
    assert_eq!(memory.source.as_ref().map(|s| &s.run), Some(&told.id), "the memory names its run");
    let distillation = fx.fake.requests().into_iter().find(is_distillation).expect("the distillation was asked");
    let transcript = distillation.body["messages"][1]["content"].as_str().unwrap_or_default().to_owned();
    assert!(transcript.contains("beehives live on the roof") && transcript.contains("Noted"), "{transcript}");
    // Paid by the tenant, named after the run.
    let ledger = fx
        .credits
        .transactions(&fx.acme.tenant_id, &maestro_core::TransactionQuery { limit: 500, ..Default::default() })
        .await
        .expect("ledger");
    assert!(
        ledger.transactions.iter().any(|t| t.memo.contains("memory distillation") && t.memo.contains(told.id.as_str()))
    );

    // A later run in another session recalls the memory and the earlier message.
    fx.index_caught_up().await;
    let second = fx.session(&fx.acme).await;
    let asked = fx.run(&runner, &fx.acme, &second, "Where do we keep the beehives?").await;
    let events = fx.events(&asked).await;
    let recalls = recalled(&events);
    assert_eq!(recalls.len(), 1, "{events:?}");
    let EventBody::MemoryRecalled { step, persona, memories, snippets, tokens } = recalls[0] else { unreachable!() };
    assert_eq!((*step, persona.as_str()), (1, WRITER));
    assert_eq!(memories.iter().map(|m| &m.id).collect::<Vec<_>>(), vec![&memory.id]);
    assert!(memories[0].score >= 0.3);
    let first_messages = fx.store.messages(&fx.acme.tenant_id, &first.id, 0, 100).await.expect("messages");
    assert!(
        snippets.iter().any(|s| s.id == first_messages[0].id.as_str()),
        "the earlier session's message is a snippet: {snippets:?}"
    );
    let second_messages = fx.store.messages(&fx.acme.tenant_id, &second.id, 0, 100).await.expect("messages");
    assert!(
        snippets.iter().all(|s| second_messages.iter().all(|m| m.id.as_str() != s.id)),
        "never the session's own messages"
    );
    assert!(*tokens > 0 && *tokens <= 800);
    // The model saw it, in its system message.
    assert_eq!(fx.persona_requests_holding("beehives are kept on the roof"), 1);
    let request = fx.fake.requests().into_iter().rev().find(|r| !is_distillation(r)).expect("asked");
    let system = system_of(&request);
    assert!(system.contains("What you remember:\n- The office beehives are kept on the roof in Lisbon."), "{system}");
    assert!(system.contains("From earlier sessions:"), "{system}");
    assert!(system.contains("live on the roof in Lisbon"), "{system}");

    // Another tenant asking the same never gets it.
    let theirs = fx.session(&fx.globex).await;
    let before = fx.fake.request_count();
    let other = fx.run(&runner, &fx.globex, &theirs, "Where do we keep the beehives?").await;
    assert!(recalled(&fx.events(&other).await).is_empty(), "nothing of acme's is recalled");
    let requests = fx.fake.requests();
    assert!(requests[before..].iter().all(|r| !system_of(r).contains("Lisbon")), "globex's model never sees acme's");
    assert!(fx.tenant_memories(&fx.globex.tenant_id).await.is_empty());
}

async fn a_retried_distillation_updates_instead_of_inserting_again(backend: Backend) {
    let fx = Fixture::new(backend).await;
    let runner = fx.runner(settings());
    let session = fx.session(&fx.acme).await;
    fx.run(&runner, &fx.acme, &session, "Our office beehives live on the roof in Lisbon.").await;
    let job = fx.distil_jobs().await.pop().expect("job");
    let distil = fx.distil();
    distil.handle(&job).await.expect("first attempt");
    let first = fx.tenant_memories(&fx.acme.tenant_id).await;
    // The job runs again (a worker died after the work, before recording it).
    distil.handle(&Job { attempts: 2, ..job }).await.expect("second attempt");
    let again = fx.tenant_memories(&fx.acme.tenant_id).await;
    assert_eq!(again.len(), 1, "the near-duplicate updated the memory: {again:?}");
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(again[0].text, first[0].text);
    let balance = fx.credits.balance(&fx.acme.tenant_id).await.expect("balance");
    assert_eq!(balance.held, 0, "no hold is left open");
}

/// The first attempt asks the model, pays, then fails to write (the embedder is down);
/// the retries reuse the recorded answer: one model call, one hold settled once, the
/// memory written once.
async fn a_distillation_retried_after_its_charge_reuses_the_recorded_answer(backend: Backend) {
    let embedder = Arc::new(FakeEmbedder::named("fake-a"));
    let fx = Fixture::with_embedder(backend, embedder.clone()).await;
    let runner = fx.runner(settings());
    let session = fx.session(&fx.acme).await;
    fx.run(&runner, &fx.acme, &session, "Our office beehives live on the roof in Lisbon.").await;
    let job = fx.distil_jobs().await.pop().expect("job");
    let distil = fx.distil();
    let distillations = || fx.fake.requests().iter().filter(|r| is_distillation(r)).count();

    embedder.fail_with("down");
    assert!(distil.handle(&job).await.is_err(), "no memory could be written");
    assert_eq!(distillations(), 1);
    assert!(fx.tenant_memories(&fx.acme.tenant_id).await.is_empty());
    embedder.recover();
    for attempt in [2, 3] {
        distil.handle(&Job { attempts: attempt, ..job.clone() }).await.expect("a retry");
    }
    assert_eq!(distillations(), 1, "the model was asked once");
    let memories = fx.tenant_memories(&fx.acme.tenant_id).await;
    assert_eq!(memories.len(), 1, "{memories:?}");
    let ledger = fx
        .credits
        .transactions(&fx.acme.tenant_id, &maestro_core::TransactionQuery { limit: 500, ..Default::default() })
        .await
        .expect("ledger");
    let distil_keys: Vec<&str> =
        ledger.transactions.iter().map(|t| t.idempotency_key.as_str()).filter(|k| k.starts_with(DISTIL_JOB)).collect();
    assert_eq!(distil_keys.len(), 2, "one hold, one settlement: {distil_keys:?}");
    let balance = fx.credits.balance(&fx.acme.tenant_id).await.expect("balance");
    assert_eq!(balance.held, 0, "no hold is left open");
}

async fn the_recalled_block_stays_within_its_token_budget(backend: Backend) {
    let fx = Fixture::new(backend).await;
    for n in 0..30 {
        let text = format!("Beehive number {n} on the Lisbon roof holds a colony of calm honey bees.");
        let new = NewMemory { scope: MemoryScope::Tenant, text, tags: vec![], pinned: false, source: None };
        fx.memories.store(&fx.acme.tenant_id, new).await.expect("stored");
    }
    let budget = 300;
    let runner = fx.runner(MemorySettings { recall_tokens: budget, distil: false, ..settings() });
    let session = fx.session(&fx.acme).await;
    let run = fx.run(&runner, &fx.acme, &session, "How calm are the honey bees of the Lisbon roof beehive?").await;
    let events = fx.events(&run).await;
    let recalls = recalled(&events);
    let EventBody::MemoryRecalled { memories, tokens, .. } = recalls[0] else { panic!("recalled: {events:?}") };
    assert!(!memories.is_empty() && memories.len() < 30, "the budget capped what was added: {}", memories.len());
    assert!(*tokens <= u64::from(budget), "{tokens}");
    let request = fx.fake.requests().into_iter().find(|r| !is_distillation(r)).expect("asked");
    let system = system_of(&request);
    let start = system.find("--- recalled memory").expect("the block");
    let block = &system[start..];
    assert_eq!(block.len() as u64, *tokens, "the event states the block's size");
    assert_eq!(block.matches("\n- Beehive number").count(), memories.len());
    assert!(fx.distil_jobs().await.is_empty(), "distillation off: no job");
}

async fn recall_switched_off_or_skipped_for_a_persona_adds_nothing(backend: Backend) {
    let fx = Fixture::new(backend).await;
    let new = NewMemory {
        scope: MemoryScope::Tenant,
        text: "The office beehives are kept on the roof in Lisbon.".into(),
        tags: vec![],
        pinned: false,
        source: None,
    };
    fx.memories.store(&fx.acme.tenant_id, new).await.expect("stored");
    let off = MemorySettings { recall: false, ..settings() };
    let skipped = MemorySettings { recall_skip: vec![WRITER.to_owned()], ..settings() };
    for settings in [off, skipped] {
        let runner = fx.runner(settings);
        let session = fx.session(&fx.acme).await;
        let run = fx.run(&runner, &fx.acme, &session, "Where are the office beehives kept?").await;
        assert!(recalled(&fx.events(&run).await).is_empty());
    }
    assert_eq!(fx.persona_requests_holding("Lisbon"), 0, "no request held a recalled block");
    // The same run with recall on does recall it.
    let runner = fx.runner(settings());
    let session = fx.session(&fx.acme).await;
    let run = fx.run(&runner, &fx.acme, &session, "Where are the office beehives kept?").await;
    assert_eq!(recalled(&fx.events(&run).await).len(), 1);
    assert_eq!(fx.persona_requests_holding("Lisbon"), 1);
}

/// Recall follows the policy of `memory.search` for the run's caller: a member whose
/// key [`POLICY`] denies `memory.*` gets no recalled block and no `memory.recalled`
/// event; another member asking the same does.
async fn a_caller_the_policy_denies_memory_search_gets_no_recalled_block(backend: Backend) {
    let fx = Fixture::new(backend).await;
    let new = NewMemory {
        scope: MemoryScope::Tenant,
        text: "The office beehives are kept on the roof in Lisbon.".into(),
        tags: vec![],
        pinned: false,
        source: None,
    };
    fx.memories.store(&fx.acme.tenant_id, new).await.expect("stored");
    let runner = fx.runner(MemorySettings { distil: false, ..settings() });
    let denied = Principal { key_id: "key_000000000000000000zz".into(), ..fx.acme.clone() };
    assert!(!fx.tools.decide(&denied, "memory.search").is_allowed(), "the fixture denies this key");
    let session = fx.session(&denied).await;
    let run = fx.run(&runner, &denied, &session, "Where are the office beehives kept?").await;
    assert!(recalled(&fx.events(&run).await).is_empty(), "no memory.recalled for the denied caller");
    assert_eq!(fx.persona_requests_holding("Lisbon"), 0, "the denied caller's model saw no recalled block");

    let session = fx.session(&fx.acme).await;
    let run = fx.run(&runner, &fx.acme, &session, "Where are the office beehives kept?").await;
    assert_eq!(recalled(&fx.events(&run).await).len(), 1, "a member's run recalls");
    assert_eq!(fx.persona_requests_holding("Lisbon"), 1);
}

async fn nothing_relevant_records_no_recall_and_an_unavailable_embedder_never_fails_a_run(backend: Backend) {
    let embedder = Arc::new(FakeEmbedder::named("fake-a"));
    let fx = Fixture::with_embedder(backend, embedder.clone()).await;
    let new = NewMemory {
        scope: MemoryScope::Tenant,
        text: "The office beehives are kept on the roof in Lisbon.".into(),
        tags: vec![],
        pinned: false,
        source: None,
    };
    fx.memories.store(&fx.acme.tenant_id, new).await.expect("stored");
    let runner = fx.runner(MemorySettings { distil: false, ..settings() });
    let session = fx.session(&fx.acme).await;
    let run = fx.run(&runner, &fx.acme, &session, "Draft a haiku about autumn trains.").await;
    assert!(recalled(&fx.events(&run).await).is_empty(), "an unrelated question recalls nothing");
    // Another persona's and another session's memories are not this persona's.
    let other_session = fx.session(&fx.acme).await;
    for scope in [MemoryScope::Persona("personas.critic".into()), MemoryScope::Session(other_session.id.clone())] {
        let text = "Autumn trains haiku drafts are kept in the red folder.".into();
        let new = NewMemory { scope, text, tags: vec![], pinned: false, source: None };
        fx.memories.store(&fx.acme.tenant_id, new).await.expect("stored");
    }
    let session = fx.session(&fx.acme).await;
    let run = fx.run(&runner, &fx.acme, &session, "Draft a haiku about autumn trains.").await;
    assert!(recalled(&fx.events(&run).await).is_empty(), "memories of other scopes stay out");
    // The embedder goes away: the run still completes (recall by words only).
    embedder.fail_with("the model is missing");
    let session = fx.session(&fx.acme).await;
    let run = fx.run(&runner, &fx.acme, &session, "Where are the office beehives kept?").await;
    assert_eq!(fx.store.run(None, &run.id).await.expect("run").expect("run").state, RunState::Completed);
}

async fn a_malformed_distillation_answer_writes_nothing_and_leaves_no_hold(backend: Backend) {
    let fx = Fixture::new(backend).await;
    fx.fake.respond_with(|request| {
        Some(if is_distillation(request) {
            Script::openai_text(
                r#"{"facts": [{"text": "fine", "tags": [], "scope": "tenant", "persona": ""}, {"text": 3}]}"#,
                usage(300, 40),
            )
        } else {
            Script::openai_text("Noted.", usage(200, 10))
        })
    });
    let runner = fx.runner(settings());
    let session = fx.session(&fx.acme).await;
    fx.run(&runner, &fx.acme, &session, "Our office beehives live on the roof in Lisbon.").await;
    let job = fx.distil_jobs().await.pop().expect("job");
    match fx.distil().handle(&job).await {
        Err(JobError::Permanent(message)) => {
            assert!(message.contains("distillation model's answer is unusable"), "{message}")
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert!(fx.tenant_memories(&fx.acme.tenant_id).await.is_empty(), "nothing written");
    let audit = fx.credits.audit().await.expect("audit");
    assert!(audit.is_clean(), "{audit:?}");
    assert_eq!(fx.credits.balance(&fx.acme.tenant_id).await.expect("balance").held, 0);
}

/// Recall by meaning with the real all-MiniLM-L6-v2: a memory sharing no content word
/// with the question is recalled, an unrelated one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_embedder_recalls_a_memory_by_meaning_alone() {
    let embedder: Arc<dyn Embedder> = crate::embed::model();
    let fx = Fixture::with_embedder(Backend::Sqlite, embedder).await;
    for text in ["The customer's dog is a golden retriever named Biscuit.", "Quarterly revenue grew by five percent."] {
        let new =
            NewMemory { scope: MemoryScope::Tenant, text: text.into(), tags: vec![], pinned: false, source: None };
        fx.memories.store(&fx.acme.tenant_id, new).await.expect("stored");
    }
    let runner = fx.runner(MemorySettings { distil: false, ..settings() });
    let session = fx.session(&fx.acme).await;
    let run = fx.run(&runner, &fx.acme, &session, "Which puppy breed does our client own?").await;
    let events = fx.events(&run).await;
    let recalls = recalled(&events);
    let EventBody::MemoryRecalled { memories, .. } = recalls.first().copied().expect("recalled") else {
        unreachable!()
    };
    assert_eq!(memories.len(), 1, "{memories:?}");
    let memory = fx.memories.get(&fx.acme.tenant_id, &memories[0].id).await.expect("memory");
    assert!(memory.text.contains("Biscuit"));
    assert_eq!(fx.persona_requests_holding("golden retriever named Biscuit"), 1);
    assert_eq!(fx.persona_requests_holding("Quarterly revenue"), 0);
}

/// Through `maestro serve` (the composition root's wiring, the real MiniLM, the real job
/// worker and index): a run's fact is distilled and listed by `GET /v1/memories`, and a
/// run of another session recalls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_run_s_fact_is_remembered_and_recalled_in_a_later_session() {
    use reqwest::{Method, StatusCode};

    use crate::server::Server;

    let fake = FakeLlm::start().await;
    fake.respond_with(|request| {
        Some(if is_distillation(request) {
            Script::openai_text(FACTS, usage(300, 40))
        } else {
            Script::openai_text("Noted, thank you.", usage(200, 10))
        })
    });
    let db = TestDb::new(Backend::Sqlite).await;
    let mut command = crate::server::serve_personas(&db, Backend::Sqlite, &fake, &["personas.*", "memory.search"]);
    let model_dir = std::env::var("MAESTRO_EMBEDDINGS_MODEL_DIR")
        .expect("MAESTRO_EMBEDDINGS_MODEL_DIR is not set: export MAESTRO_EMBEDDINGS_MODEL_DIR=$(scripts/model.sh)");
    command.env("MAESTRO_EMBEDDINGS_MODEL_DIR", model_dir);
    let server = Server::start(command, &db.dir(), 1).await;
    let platform = server.bootstrap_token();
    let (status, _) = server.call(Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, key) =
        server.call(Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" }))).await;
    let member = key["token"].as_str().expect("token").to_owned();
    let run_in_new_session = |text: &'static str| {
        let (server, member) = (&server, member.clone());
        async move {
            let body = json!({ "personas": [WRITER], "strategy": "sequence" });
            let (status, session) = server.call(Method::POST, "/v1/sessions", &member, Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{session}");
            let path = format!("/v1/sessions/{}/messages", session["id"].as_str().expect("id"));
            let (status, posted) = server.call(Method::POST, &path, &member, Some(json!({ "content": text }))).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
            let run = posted["run"]["id"].as_str().expect("run").to_owned();
            poll(|| async {
                let (_, run) = server.call(Method::GET, &format!("/v1/runs/{run}"), &member, None).await;
                (run["state"] == "completed").then_some(())
            })
            .await;
            run
        }
    };

    let told = run_in_new_session("For the record: our office beehives live on the roof in Lisbon.").await;
    let memories = poll(|| async {
        let (_, listed) = server.call(Method::GET, "/v1/memories", &member, None).await;
        listed["memories"].as_array().filter(|m| !m.is_empty()).cloned()
    })
    .await;
    assert_eq!(memories.len(), 1, "{memories:?}");
    assert_eq!(memories[0]["text"], "The office beehives are kept on the roof in Lisbon.");
    assert_eq!(memories[0]["source"]["run"], told.as_str());

    run_in_new_session("Where do our bee colonies live?").await;
    let recalled = fake.requests().iter().filter(|r| !is_distillation(r)).any(|r| {
        let system = system_of(r);
        system.contains("What you remember:\n- The office beehives are kept on the roof in Lisbon.")
    });
    assert!(recalled, "the later run's model saw the memory:\n{}", server.stderr_text());
    server.stop().await;
}

/// Polls `check` every 50 ms until it answers, for at most a minute.
async fn poll<T, F: std::future::Future<Output = Option<T>>>(mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
