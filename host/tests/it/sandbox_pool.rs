//! Pooled instances of stateless plugins: a canary one call writes into the guest's
//! memory (a global of the hostile fixture) never reaches another caller, nor any call
//! after one that did not end cleanly; an instance grown under a larger memory limit
//! never serves a call with a smaller one. Unpooled plugins get a fresh instance per call.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::call::{CancelToken, Failure};
use maestro_core::plugin::Content;
use maestro_host::sandbox::{CallContext, CallLimits, LoadedPlugin};
use serde_json::{Value, json};

use crate::fixtures::{component, hostile, sandbox};

/// A hostile plugin of its own (its own pool), declared stateless.
async fn pooled() -> LoadedPlugin {
    let bytes = std::fs::read(component("hostile")).expect("component");
    sandbox().load("hostile", bytes, CallLimits::default()).await.expect("hostile loads").stateless(true)
}

fn caller(name: &str) -> CallContext {
    CallContext { caller: Arc::from(name), ..CallContext::default() }
}

/// What the canary tool saw (the text of its result), after writing `write` if given.
async fn canary(plugin: &LoadedPlugin, context: &CallContext, write: Option<&str>) -> String {
    let args = match write {
        Some(write) => json!({ "write": write }),
        None => json!({}),
    };
    let outcome = sandbox().call_tool(plugin, "canary", args.to_string(), context).await;
    match outcome.result.expect("canary answers").content.as_slice() {
        [Content::Text { text }] => text.clone(),
        other => panic!("{other:?}"),
    }
}

async fn call(plugin: &LoadedPlugin, tool: &str, args: Value, context: &CallContext) -> Result<(), Failure> {
    sandbox().call_tool(plugin, tool, args.to_string(), context).await.result.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpooled_plugin_never_shows_a_call_what_the_previous_one_wrote() {
    let plugin = hostile().await;
    assert!(!plugin.is_stateless(), "plugins are not pooled unless they say so");
    let alice = caller("unpooled-alice");
    assert_eq!(canary(&plugin, &alice, Some("alice's secret")).await, "");
    assert_eq!(canary(&plugin, &alice, None).await, "", "a fresh instance for the same caller");
    assert_eq!(canary(&plugin, &caller("unpooled-bob"), None).await, "");
    assert_eq!(plugin.idle_instances(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_instance_serves_only_the_caller_and_configuration_that_left_it() {
    let plugin = pooled().await;
    let alice = caller("alice");
    assert_eq!(canary(&plugin, &alice, Some("alice's secret")).await, "");
    assert_eq!(plugin.idle_instances(), 1, "kept after a clean call");
    assert_eq!(canary(&plugin, &caller("bob"), None).await, "", "another caller never sees it");
    let other_config = CallContext { config_json: Arc::from(r#"{"role":"other"}"#), ..alice.clone() };
    assert_eq!(canary(&plugin, &other_config, None).await, "", "nor the same caller under another configuration");
    // The instance was reused: the same caller's next call sees what the plugin kept (a
    // stateless plugin promises not to depend on it).
    assert_eq!(canary(&plugin, &alice, None).await, "alice's secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_instance_is_dropped_after_a_call_that_did_not_end_cleanly() {
    let plugin = pooled().await;
    let alice = caller("alice");
    let spin = CallContext {
        limits: CallLimits { timeout: Duration::from_millis(200), fuel: u64::MAX, ..CallLimits::default() },
        ..alice.clone()
    };
    let small = CallContext { limits: CallLimits { memory_bytes: 32 << 20, ..CallLimits::default() }, ..alice.clone() };
    let fuel = CallContext { limits: CallLimits { fuel: 1_000_000, ..CallLimits::default() }, ..alice.clone() };
    let failing: [(&str, Value, &CallContext, &str); 5] = [
        ("trap", json!({}), &alice, "trap"),
        ("trap", json!({ "kind": "unreachable" }), &alice, "trap"),
        ("spin", json!({}), &spin, "timeout"),
        ("spin", json!({}), &fuel, "out_of_fuel"),
        ("grow_memory", json!({ "mb": 64 }), &small, "memory_limit"),
    ];
    for (tool, args, context, kind) in failing {
        assert_eq!(canary(&plugin, &alice, Some("left behind")).await, "", "before {tool}");
        let failure = call(&plugin, tool, args, context).await.expect_err(tool);
        assert_eq!(failure.kind(), kind, "{failure:?}");
        assert_eq!(canary(&plugin, &alice, None).await, "", "after {tool} {kind}, a fresh instance");
    }
    // Cancelled calls are not kept either.
    assert_eq!(canary(&plugin, &alice, Some("left behind")).await, "");
    let cancel = CancelToken::default();
    let cancelled = CallContext {
        cancel: cancel.clone(),
        limits: CallLimits { fuel: u64::MAX, ..CallLimits::default() },
        ..alice.clone()
    };
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
    });
    call(&plugin, "spin", json!({}), &cancelled).await.expect_err("cancelled");
    canceller.await.expect("canceller");
    assert_eq!(canary(&plugin, &alice, None).await, "", "after a cancelled call, a fresh instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_larger_than_the_calls_memory_limit_is_not_reused() {
    let plugin = pooled().await;
    let alice = caller("alice");
    assert_eq!(canary(&plugin, &alice, Some("grown")).await, "");
    // Grows the same instance's memory by 4 MiB, still small enough to be kept.
    call(&plugin, "grow_memory", json!({ "mb": 4 }), &alice).await.expect("grows");
    let tight = CallContext { limits: CallLimits { memory_bytes: 4 << 20, ..CallLimits::default() }, ..alice.clone() };
    assert_eq!(canary(&plugin, &tight, None).await, "", "a fresh instance under the smaller limit");
    assert_eq!(plugin.idle_instances(), 2, "the grown instance stays idle for calls it fits");
}

/// The guest's own start-up is what a fresh instance costs in fuel beyond a reused one:
/// the SDK builds nothing the call does not need (no registry, specs, schemas or boxes
/// for the other tools). It was about 44,500 units when every instance built its
/// `Plugin` registry before dispatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_spends_next_to_no_fuel_on_the_guests_start_up() {
    let plugin = pooled().await;
    let alice = caller("start-up");
    let fresh = sandbox().call_tool(&plugin, "noop", "{}".to_owned(), &alice).await;
    assert_eq!(plugin.idle_instances(), 1, "kept for the next call");
    let reused = sandbox().call_tool(&plugin, "noop", "{}".to_owned(), &alice).await;
    assert_eq!(plugin.idle_instances(), 1, "the same instance, kept again");
    let (fresh, reused) = (fresh.metering.fuel, reused.metering.fuel);
    assert!(reused > 0 && fresh >= reused, "fresh {fresh}, reused {reused}");
    assert!(fresh - reused < 5_000, "a fresh instance spent {fresh} fuel on hostile.noop, a reused one {reused}");
}
