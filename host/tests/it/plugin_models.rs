//! Plugins get the platform (`maestro:plugin@0.2.0`): the first-party `summarise`
//! plugin asks for a completion through the real sandbox, the tool pipeline and the
//! real model adapter against the fake model server, on both stores: the caller's
//! policy decides (tiers, tokens per completion, none by default), the caller's
//! credits pay exactly the reported usage × price, and no hold is left open. Components
//! built against 0.1.0 keep loading beside 0.2.0 ones.

use std::sync::Arc;

use maestro_core::call::{Failure, Observe};
use maestro_core::plugin::ToolError;
use maestro_core::policy::PolicySet;
use maestro_core::{Clock, KeyScope, Role};
use maestro_host::accounts::{Accounts, SystemClock};
use maestro_host::config::ModelPrice;
use maestro_host::credits::Credits;
use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;
use maestro_host::sandbox::{CallContext, CallLimits};
use maestro_host::tools::{Principal, SecretValues, Tools};
use maestro_llm::{Llm, ProviderKind};
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Script, model, usage};
use crate::harness::{Backend, TestDb, backend_tests};

/// One credit per prompt token, two per answer token.
fn prices() -> Vec<ModelPrice> {
    vec![ModelPrice { model: "m".into(), input_per_million: 1_000_000, output_per_million: 2_000_000 }]
}

fn policy(models: &str) -> String {
    format!(
        r#"
version = 1

[[grant]]
name = "summarise"
subjects = ["tenant:acme"]
tools = ["summarise.*"]
credits = 3
{models}
"#
    )
}

/// Tenant `acme` with credits, the `summarise` plugin under a policy, and the fake model
/// server behind the real adapter.
struct Rig {
    _db: TestDb,
    credits: Arc<Credits>,
    tools: Tools,
    principal: Principal,
    fake: FakeLlm,
}

impl Rig {
    async fn new(backend: Backend, models_policy: &str, credits_granted: i64) -> Self {
        let db = TestDb::new(backend).await;
        let store = db.open().await;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let accounts = Accounts::new(store.clone(), clock.clone());
        let tenant = accounts.create_tenant("acme").await.expect("tenant");
        let key = accounts
            .create_key(KeyScope::Tenant { tenant_id: tenant.id.clone(), role: Role::Member }, "member".into(), None)
            .await
            .expect("key");
        let credits = Arc::new(Credits::new(store.clone(), clock));
        credits.grant(&tenant.id, credits_granted, "grant-1", "test credits").await.expect("grant");
        let plugin_dir = db.dir().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        crate::fixtures::install(&plugin_dir, "summarise");
        let registry = Arc::new(PluginRegistry::new(crate::fixtures::sandbox(), plugin_dir.clone()));
        registry.refresh().await;
        let policies = PolicySet::parse([("test.toml", policy(models_policy).as_str())]).expect("policy");
        let fake = FakeLlm::start().await;
        let llm = Llm::new(vec![fake.provider("fake", ProviderKind::OpenAi)], vec![model("m", "fake", &[])])
            .expect("valid setup");
        let tools = Tools::new(
            registry,
            Arc::new(PolicyStore::fixed(policies)),
            SecretValues::new(Default::default(), plugin_dir.join("no-secrets")),
        )
        .with_credits(credits.clone())
        .with_models(Arc::new(llm), prices());
        let principal = Principal {
            tenant: "acme".into(),
            tenant_id: tenant.id.clone(),
            role: Role::Member,
            key_id: key.key.id.to_string(),
        };
        Self { _db: db, credits, tools, principal, fake }
    }

    async fn summarise(&self, arguments: Value) -> (Result<Value, Failure>, u64) {
        let call =
            self.tools.call(&self.principal, "summarise.text", arguments, Observe::default()).await.expect("ran");
        (call.outcome.result.map(|o| o.structured.unwrap_or(Value::Null)), call.charged)
    }

    /// Available credits, after checking the ledger is consistent with no hold open.
    async fn available(&self) -> i64 {
        let audit = self.credits.audit().await.expect("audit");
        assert!(audit.is_clean(), "{audit:?}");
        let balance = self.credits.balance(&self.principal.tenant_id).await.expect("balance");
        assert_eq!(balance.held, 0, "no hold is left open");
        balance.available
    }
}

/// A call's completions within a credit budget (a run's budget left, as the
/// orchestrator passes it): `max_tokens` lowered so the worst case fits what is left,
/// refused when not even the prompt fits, and the spend never above it.
async fn a_credit_budget_lowers_a_completions_max_tokens_to_fit_and_refuses_when_nothing_is_left(backend: Backend) {
    let rig = Rig::new(backend, "model_tiers = [\"fast\"]\nmodel_max_tokens = 100", 100_000).await;
    let args = json!({ "text": "Cats sleep. Then they nap. Then sleep.", "words": 5 });
    let within = |budget: u64| Observe { credit_budget: Some(budget), ..Observe::default() };
    let call = |observe: Observe| {
        let (tools, principal, args) = (&rig.tools, &rig.principal, args.clone());
        async move { tools.call(principal, "summarise.text", args, observe).await.expect("ran") }
    };
    // Plenty left: the plugin's 26 tokens are asked for as they are.
    rig.fake.push(Script::openai_text("Cats sleep.", usage(40, 2)));
    let plenty = call(within(100_000)).await;
    assert!(plenty.outcome.result.is_ok(), "{:?}", plenty.outcome.result);
    let body = rig.fake.requests()[0].body.clone();
    assert_eq!(body["max_tokens"], 26);
    // The prompt's token bound, as the host holds it (one credit a token on `m`).
    let messages = body["messages"].as_array().expect("messages");
    let bound: u64 = messages.iter().map(|m| m["content"].as_str().map_or(0, str::len) as u64 + 16).sum::<u64>() + 16;

    // Room for the prompt and 10 answer tokens (two credits each): 10 are asked for.
    rig.fake.push(Script::openai_text("Cats sleep.", usage(40, 2)));
    let tight = call(within(bound + 20)).await;
    assert!(tight.outcome.result.is_ok(), "{:?}", tight.outcome.result);
    assert_eq!(rig.fake.requests()[1].body["max_tokens"], 10, "lowered to fit the budget");
    assert!(tight.charged - 3 <= bound + 20, "spent within the budget: {}", tight.charged);

    // Not even the prompt fits: refused before any model is asked.
    let none = call(within(bound - 1)).await;
    failed_with(&none.outcome.result.map(|o| o.structured.unwrap_or(Value::Null)), "the run's credits budget has");
    assert_eq!(rig.fake.request_count(), 2, "no model was asked");
    assert_eq!(none.charged, 3, "the tool's price alone");
    rig.available().await;
}

fn failed_with(result: &Result<Value, Failure>, needle: &str) {
    match result {
        Err(Failure::ToolError(ToolError::Failed(message))) => assert!(message.contains(needle), "{message}"),
        other => panic!("expected a tool failure naming {needle:?}, got {other:?}"),
    }
}

backend_tests!(
    a_credit_budget_lowers_a_completions_max_tokens_to_fit_and_refuses_when_nothing_is_left,
    summarise_asks_the_callers_model_and_pays_exact_usage_from_its_credits,
    model_access_is_refused_unless_policy_grants_the_tier_and_the_tokens,
    a_completion_the_credits_cannot_cover_is_refused_before_the_model_is_asked,
);

async fn summarise_asks_the_callers_model_and_pays_exact_usage_from_its_credits(backend: Backend) {
    let rig = Rig::new(backend, "model_tiers = [\"fast\"]\nmodel_max_tokens = 100", 10_000).await;
    rig.fake.push(Script::openai_text("Cats sleep most of the day.", usage(40, 9)));
    let (result, charged) =
        rig.summarise(json!({ "text": "Cats sleep. Then they nap. Then sleep.", "words": 5 })).await;
    // 40 prompt tokens × 1 + 9 answer tokens × 2 = 58 credits, plus the tool's price of 3.
    let summary = result.expect("summarised");
    assert_eq!(summary, json!({ "summary": "Cats sleep most of the day.", "words": 6, "model": "m", "credits": 58 }));
    assert_eq!(charged, 3 + 58);
    assert_eq!(rig.available().await, 10_000 - 61);
    let requests = rig.fake.requests();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    assert_eq!(body["model"], "upstream-m");
    assert_eq!(body["max_tokens"], 26, "2 × 5 words + 16: {body}");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "Cats sleep. Then they nap. Then sleep.");
}

async fn model_access_is_refused_unless_policy_grants_the_tier_and_the_tokens(backend: Backend) {
    let args = json!({ "text": "Some text to shorten.", "words": 5 });
    let none = Rig::new(backend, "", 1000).await;
    let (result, charged) = none.summarise(args.clone()).await;
    failed_with(&result, "policy gives `summarise.text` no model access");
    assert_eq!((charged, none.available().await), (3, 997), "the tool ran and costs its price, nothing more");

    let other_tier = Rig::new(backend, "model_tiers = [\"best\"]", 1000).await;
    failed_with(&other_tier.summarise(args.clone()).await.0, "does not grant the `fast` model tier");

    let few_tokens = Rig::new(backend, "model_tiers = [\"fast\"]\nmodel_max_tokens = 20", 1000).await;
    failed_with(&few_tokens.summarise(args).await.0, "max_tokens 26 is over the 20 tokens policy allows");

    for rig in [none, other_tier, few_tokens] {
        assert_eq!(rig.fake.request_count(), 0, "no model was asked");
    }
}

async fn a_completion_the_credits_cannot_cover_is_refused_before_the_model_is_asked(backend: Backend) {
    // The worst case of a 5-word summary holds the prompt bound plus 26 tokens × 2.
    let rig = Rig::new(backend, "model_tiers = [\"fast\"]", 40).await;
    let (result, charged) = rig.summarise(json!({ "text": "Some text to shorten.", "words": 5 })).await;
    failed_with(&result, "insufficient credits: the completion may cost up to");
    assert_eq!((charged, rig.available().await), (3, 37));
    assert_eq!(rig.fake.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_built_against_0_1_0_load_and_run_beside_0_2_0_ones() {
    let sandbox = crate::fixtures::sandbox();
    let load = |name: &'static str| {
        let sandbox = sandbox.clone();
        async move {
            let bytes = std::fs::read(crate::fixtures::component(name)).expect("component");
            sandbox.load(name, bytes, CallLimits::default()).await.expect("loads")
        }
    };
    let legacy = load("legacy").await;
    let summarise = load("summarise").await;
    assert_eq!((legacy.contract_version(), summarise.contract_version()), ("0.1.0", "0.2.0"));
    assert_eq!(legacy.personas[0].name, "elder");
    let context = CallContext { config_json: Arc::from(r#"{"mode":"old"}"#), ..CallContext::default() };
    let echoed = sandbox.call_tool(&legacy, "echo", r#"{"text":"hi"}"#.into(), &context).await;
    let output = echoed.result.expect("the 0.1.0 tool runs");
    assert_eq!(
        serde_json::to_value(&output.content).expect("json")[0]["text"],
        r#"built against 0.1.0: {"text":"hi"}"#
    );
    // Without a platform in the call's context, a 0.2.0 plugin's completion is denied.
    let denied = sandbox.call_tool(&summarise, "text", r#"{"text":"hi"}"#.into(), &CallContext::default()).await;
    failed_with(&denied.result.map(|o| o.structured.unwrap_or(Value::Null)), "model access is not available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_naming_another_contract_version_than_its_component_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let installed = crate::fixtures::install(dir.path(), "legacy");
    let manifest = installed.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace("maestro:plugin@0.1.0", "maestro:plugin@0.2.0")).expect("rewrite");
    let registry = PluginRegistry::new(crate::fixtures::sandbox(), dir.path().to_owned());
    registry.refresh().await;
    let catalog = registry.catalog();
    assert_eq!(catalog.plugins().count(), 0);
    let reason = &catalog.refused()[0].reason;
    assert_eq!(
        reason,
        "the manifest says wit `maestro:plugin@0.2.0`, but the component is built against `maestro:plugin@0.1.0`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_nobody_can_answer_fails_the_call_with_needs_input_and_the_question() {
    let sandbox = crate::fixtures::sandbox();
    let bytes = std::fs::read(crate::fixtures::component("conformance")).expect("component");
    let plugin = sandbox.load("conformance", bytes, CallLimits::default()).await.expect("loads");
    let args = r#"{"message":"Which plan?"}"#.to_owned();
    // No platform at all, and a platform without a person behind it: the same typed answer.
    let alone = sandbox.call_tool(&plugin, "test_elicitation", args.clone(), &CallContext::default()).await;
    failed_with(&alone.result.map(|_| Value::Null), "needs input from the user: Which plan?");
    #[derive(Debug)]
    struct NoOne;
    #[async_trait::async_trait]
    impl maestro_core::call::Platform for NoOne {
        async fn complete(
            &self,
            _: maestro_core::call::CompletionRequest,
        ) -> Result<maestro_core::call::Completion, maestro_core::call::PlatformError> {
            Err(maestro_core::call::PlatformError::Denied("none".into()))
        }
    }
    let context = CallContext { platform: Some(Arc::new(NoOne)), ..CallContext::default() };
    let nobody = sandbox.call_tool(&plugin, "test_elicitation", args, &context).await;
    failed_with(&nobody.result.map(|_| Value::Null), "needs input from the user: Which plan?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_2_0_persona_renders_messages_after_its_system_prompt_and_a_0_1_0_one_its_text_alone() {
    use maestro_core::plugin::{Content, PromptRole, ResourceContents};
    let sandbox = crate::fixtures::sandbox();
    let load = |name: &'static str| {
        let sandbox = sandbox.clone();
        async move {
            let bytes = std::fs::read(crate::fixtures::component(name)).expect("component");
            sandbox.load(name, bytes, CallLimits::default()).await.expect("loads")
        }
    };
    let (conformance, legacy) = (load("conformance").await, load("legacy").await);
    let ctx = CallContext::default();

    let image = sandbox.render_persona(&conformance, "test_prompt_with_image", "{}".into(), &ctx).await;
    let rendered = image.result.expect("renders");
    assert_eq!(rendered.system.as_deref(), Some("This prompt shows an image."));
    let roles: Vec<PromptRole> = rendered.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [PromptRole::User, PromptRole::User]);
    assert!(
        matches!(&rendered.messages[0].content, Content::Image { data, mime_type } if data.starts_with("iVBORw0KGgo") && mime_type == "image/png"),
        "{rendered:?}"
    );
    assert_eq!(rendered.messages[1].content, Content::Text { text: "Please analyze the image above.".into() });
    assert_eq!(image.metering.bytes_out as usize, rendered.size(), "metered as what it returned");

    let arguments = json!({ "resourceUri": "test://example-resource" }).to_string();
    let embedded = sandbox.render_persona(&conformance, "test_prompt_with_embedded_resource", arguments, &ctx).await;
    let rendered = embedded.result.expect("renders");
    assert_eq!(
        rendered.messages[0].content,
        Content::EmbeddedResource {
            uri: "test://example-resource".into(),
            mime_type: Some("text/plain".into()),
            contents: ResourceContents::Text("Embedded resource content for testing.".into()),
        }
    );
    // The messages check the arguments like the system prompt does.
    let missing = sandbox.render_persona(&conformance, "test_prompt_with_embedded_resource", "{}".into(), &ctx).await;
    failed_with(&missing.result.map(|_| Value::Null), "missing required argument `resourceUri`");

    // A 0.1.0 persona: one text, no messages after it.
    let elder = sandbox.render_persona(&legacy, "elder", "{}".into(), &ctx).await.result.expect("renders");
    assert!(elder.messages.is_empty(), "{elder:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_prompt_messages_count_against_the_call_output_limit() {
    let sandbox = crate::fixtures::sandbox();
    let bytes = std::fs::read(crate::fixtures::component("conformance")).expect("component");
    let conformance = sandbox.load("conformance", bytes, CallLimits::default()).await.expect("loads");
    // The system text alone (27 bytes) fits; with the image and the text after it, it does not.
    let limited =
        CallContext { limits: CallLimits { output_bytes: 64, ..CallLimits::default() }, ..CallContext::default() };
    let outcome = sandbox.render_persona(&conformance, "test_prompt_with_image", "{}".into(), &limited).await;
    match outcome.result {
        Err(Failure::OutputTooLarge { size, limit }) => assert!(size > limit && limit == 64, "{size}"),
        other => panic!("{other:?}"),
    }
    let simple = sandbox.render_persona(&conformance, "test_simple_prompt", "{}".into(), &limited).await;
    assert!(simple.result.expect("fits").messages.is_empty());
}
