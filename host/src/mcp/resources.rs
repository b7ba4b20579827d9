//! Resources: what a caller can learn about its own access, under `maestro://`. Today
//! the manifests of the plugins it can use and its effective policy; documents,
//! sessions and memories join as further `maestro://` families (one `match` arm and a
//! template each).

use maestro_core::policy::{Decision, Grant};
use rmcp::model::{ErrorData, ReadResourceResult, Resource, ResourceContents, ResourceTemplate};
use serde_json::{Value, json};

use super::Mcp;
use crate::tools::{Principal, Tools};

/// The caller's effective policy.
pub const POLICY_URI: &str = "maestro://policy/effective";
/// A plugin the caller can use.
pub const PLUGIN_TEMPLATE: &str = "maestro://plugins/{name}";
const PLUGIN_PREFIX: &str = "maestro://plugins/";
const JSON: &str = "application/json";

/// Every concrete resource the principal can read.
pub(super) fn list(tools: &Tools, principal: &Principal) -> Vec<Resource> {
    let mut resources = vec![
        Resource::new(POLICY_URI, "effective-policy")
            .with_title("Effective policy")
            .with_description(format!(
                "What tenant {} with role {} may call, with limits, credits, rate and network",
                principal.tenant, principal.role
            ))
            .with_mime_type(JSON),
    ];
    resources.extend(tools.visible_plugins(principal).iter().map(|plugin| {
        let m = &plugin.manifest;
        Resource::new(format!("{PLUGIN_PREFIX}{}", m.name), format!("plugin-{}", m.name))
            .with_title(format!("Plugin {} {}", m.name, m.version))
            .with_description(m.description.clone())
            .with_mime_type(JSON)
    }));
    resources
}

/// The resource templates.
pub(super) fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(PLUGIN_TEMPLATE, "plugin")
            .with_title("Plugin manifest")
            .with_description(
                "A plugin you can use: version, hash, the tools and personas it gives you, what it asks for",
            )
            .with_mime_type(JSON),
        ResourceTemplate::new(POLICY_URI, "effective-policy")
            .with_title("Effective policy")
            .with_description("What you may call, with limits, credits, rate and network")
            .with_mime_type(JSON),
    ]
}

/// Reads one resource for the principal; a URI it cannot see is "not found".
pub(super) fn read(mcp: &Mcp, principal: &Principal, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let not_found = || {
        ErrorData::resource_not_found(
            format!("no resource `{}`", uri.chars().take(256).collect::<String>()),
            Some(json!({ "uri": uri })),
        )
    };
    let document = if uri == POLICY_URI {
        effective_policy(mcp, principal)
    } else if let Some(name) = uri.strip_prefix(PLUGIN_PREFIX) {
        plugin(mcp, principal, name).ok_or_else(not_found)?
    } else {
        return Err(not_found());
    };
    let text = serde_json::to_string_pretty(&document).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri).with_mime_type(JSON)]))
}

fn plugin(mcp: &Mcp, principal: &Principal, name: &str) -> Option<Value> {
    let plugin = mcp.tools.visible_plugins(principal).into_iter().find(|p| p.manifest.name == name)?;
    let tools: Vec<Value> = mcp
        .tools_for(principal)
        .into_iter()
        .filter(|(_, t)| t.plugin.as_ref().is_some_and(|p| p.manifest.name == name))
        .map(|(mcp_name, t)| {
            json!({
                "name": mcp_name,
                "qualified_name": t.name,
                "title": t.spec.title,
                "description": t.spec.description,
                "credits": t.credits,
            })
        })
        .collect();
    let personas: Vec<Value> = mcp
        .personas_for(principal)
        .into_iter()
        .filter(|(_, p)| p.plugin.manifest.name == name)
        .map(|(prompt, p)| {
            json!({ "prompt": prompt, "qualified_name": p.name, "title": p.spec.title, "role": p.spec.role })
        })
        .collect();
    let m = &plugin.manifest;
    Some(json!({
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "wit": m.wit,
        "sha256": plugin.sha256,
        "tools": tools,
        "personas": personas,
        "requested": { "network": m.capabilities.network, "secrets": m.capabilities.secrets },
    }))
}

fn effective_policy(mcp: &Mcp, principal: &Principal) -> Value {
    let decided = |qualified: &str| match mcp.tools.decide(principal, qualified) {
        Decision::Allow(grant) => Some(grant_view(&grant)),
        Decision::Deny(_) => None,
    };
    let tools: Vec<Value> = mcp
        .tools_for(principal)
        .into_iter()
        .filter_map(|(name, t)| {
            let mut view = decided(&t.name)?;
            view["name"] = json!(name);
            view["qualified_name"] = json!(t.name);
            Some(view)
        })
        .collect();
    let prompts: Vec<Value> = mcp
        .personas_for(principal)
        .into_iter()
        .filter_map(|(name, p)| {
            let mut view = decided(&p.name)?;
            view["name"] = json!(name);
            view["qualified_name"] = json!(p.name);
            Some(view)
        })
        .collect();
    json!({
        "tenant": principal.tenant,
        "role": principal.role.to_string(),
        "key_id": principal.key_id,
        "tools": tools,
        "prompts": prompts,
        "note": "Everything not listed is denied. Secret values are never shown.",
    })
}

fn grant_view(grant: &Grant) -> Value {
    let l = &grant.limits;
    json!({
        "rule": grant.rule.name,
        "defined_at": grant.rule.location.to_string(),
        "credits_per_call": grant.credits,
        "rate": grant.rate.map(|r| json!({ "calls": r.calls, "per_seconds": r.per.as_secs() })),
        "limits": {
            "fuel": l.fuel,
            "timeout_ms": u64::try_from(l.timeout.as_millis()).unwrap_or(u64::MAX),
            "memory_bytes": l.memory_bytes,
            "output_bytes": l.output_bytes,
            "max_requests": l.max_requests,
            "max_request_bytes": l.max_request_bytes,
            "max_response_bytes": l.max_response_bytes,
            "request_timeout_ms": u64::try_from(l.request_timeout.as_millis()).unwrap_or(u64::MAX),
        },
        "network": grant.network.iter().map(|n| json!({
            "scheme": n.scheme.as_str(),
            "host": n.host_pattern.to_string(),
            "port": n.port,
            "allow_private": n.allow_private,
        })).collect::<Vec<_>>(),
        "secrets": grant.secrets.iter().map(|s| json!({
            "name": s.name,
            "headers": s.headers.iter().map(|(h, _)| h).collect::<Vec<_>>(),
            "hosts": s.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Plugin resources: the resources and templates plugins declare, served under their
/// own URIs to callers whose policy lets them read the plugin's resources (a
/// `resources` rule); everything else about them answers "not found".
pub(super) mod plugins {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex, PoisonError};

    use maestro_core::call::Failure;
    use maestro_core::plugin::{ResourceContents as Data, ToolError};
    use rmcp::model::{ErrorData, ReadResourceResult, Resource, ResourceContents, ResourceTemplate};
    use rmcp::{Peer, RoleServer};
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use crate::tools::{CallError, Observe, Principal, Tools};

    /// Whether `uri` may be a plugin's (anything outside the host's `maestro:` scheme).
    pub(in crate::mcp) fn is_plugin_uri(uri: &str) -> bool {
        !uri.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("maestro:"))
    }

    /// The plugin resources the principal may read.
    pub(in crate::mcp) fn list(tools: &Tools, principal: &Principal) -> Vec<Resource> {
        let mut listed = Vec::new();
        for plugin in tools.resource_plugins(principal) {
            for r in &plugin.loaded.resources.resources {
                let mut resource = Resource::new(r.uri.clone(), r.name.clone());
                resource.title.clone_from(&r.title);
                resource.description.clone_from(&r.description);
                resource.mime_type.clone_from(&r.mime_type);
                resource.size = r.size;
                listed.push(resource);
            }
        }
        listed
    }

    /// The plugin resource templates the principal may read.
    pub(in crate::mcp) fn templates(tools: &Tools, principal: &Principal) -> Vec<ResourceTemplate> {
        let mut listed = Vec::new();
        for plugin in tools.resource_plugins(principal) {
            for t in &plugin.loaded.resources.templates {
                let mut template = ResourceTemplate::new(t.uri_template.clone(), t.name.clone());
                template.title.clone_from(&t.title);
                template.description.clone_from(&t.description);
                template.mime_type.clone_from(&t.mime_type);
                listed.push(template);
            }
        }
        listed
    }

    fn not_found(uri: &str) -> ErrorData {
        ErrorData::resource_not_found(
            format!("no resource `{}`", uri.chars().take(256).collect::<String>()),
            Some(json!({ "uri": uri })),
        )
    }

    /// Reads a plugin resource in the sandbox for the principal; `cancel` stops it.
    pub(in crate::mcp) async fn read(
        tools: &Tools,
        principal: &Principal,
        uri: &str,
        cancel: &CancellationToken,
    ) -> Result<ReadResourceResult, ErrorData> {
        let observe = Observe::default();
        let stop = observe.cancel.clone();
        let read = tools.read_resource(principal, uri, observe);
        tokio::pin!(read);
        let read = tokio::select! {
            read = &mut read => read,
            () = cancel.cancelled() => {
                stop.cancel();
                read.await
            }
        };
        let outcome = match read {
            Ok(call) => call.outcome.result,
            Err(CallError::UnknownResource(_)) => return Err(not_found(uri)),
            Err(err) => return Err(super::super::prompt_error(&(&err).into())),
        };
        match outcome {
            Ok(contents) => Ok(ReadResourceResult::new(
                contents
                    .into_iter()
                    .map(|c| {
                        let contents = match c.contents {
                            Data::Text(text) => ResourceContents::text(text, c.uri),
                            Data::Blob(blob) => ResourceContents::blob(blob, c.uri),
                        };
                        match c.mime_type {
                            Some(mime) => contents.with_mime_type(mime),
                            None => match contents {
                                // `text` assumes text/plain; the plugin said nothing.
                                ResourceContents::TextResourceContents { uri, text, meta, .. } => {
                                    ResourceContents::TextResourceContents { uri, mime_type: None, text, meta }
                                }
                                blob => blob,
                            },
                        }
                    })
                    .collect(),
            )),
            Err(Failure::ToolError(ToolError::NotFound(_))) => Err(not_found(uri)),
            Err(failure) => Err(super::super::prompt_error(&(&failure).into())),
        }
    }

    /// One session's plugin-resource subscriptions: `notifications/resources/updated`
    /// when the plugin serving a subscribed URI is reloaded, replaced or removed (a
    /// plugin's resources change only with the plugin: the operator installs a new
    /// version and the registry reloads it).
    #[derive(Debug, Default)]
    pub(in crate::mcp) struct Subscriptions {
        uris: Arc<Mutex<HashSet<String>>>,
        started: Mutex<bool>,
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    impl Subscriptions {
        /// Subscribes to a plugin resource the principal may read (else "not found"),
        /// starting the watcher on the first subscription.
        pub(in crate::mcp) fn subscribe(
            &self,
            tools: &Arc<Tools>,
            principal: &Principal,
            uri: &str,
            peer: Peer<RoleServer>,
            stop: CancellationToken,
        ) -> Result<(), ErrorData> {
            tools.resource_plugin(principal, uri).ok_or_else(|| not_found(uri))?;
            lock(&self.uris).insert(uri.to_owned());
            let mut started = lock(&self.started);
            if !*started {
                *started = true;
                tokio::spawn(watch(tools.clone(), principal.clone(), self.uris.clone(), peer, stop));
            }
            Ok(())
        }

        /// Drops a subscription (unknown ones are fine).
        pub(in crate::mcp) fn unsubscribe(&self, uri: &str) {
            lock(&self.uris).remove(uri);
        }
    }

    /// Which plugin build serves each subscribed URI to the principal now.
    fn serving(tools: &Tools, principal: &Principal, uris: &Mutex<HashSet<String>>) -> HashMap<String, Option<String>> {
        let uris: Vec<String> = lock(uris).iter().cloned().collect();
        uris.into_iter()
            .map(|uri| {
                let build = tools
                    .resource_plugin(principal, &uri)
                    .map(|p| format!("{} {} {}", p.manifest.name, p.manifest.version, p.sha256));
                (uri, build)
            })
            .collect()
    }

    /// Sends `notifications/resources/updated` for each subscribed URI whose serving
    /// plugin changed at a reload, until the session ends or the client is gone.
    async fn watch(
        tools: Arc<Tools>,
        principal: Principal,
        uris: Arc<Mutex<HashSet<String>>>,
        peer: Peer<RoleServer>,
        stop: CancellationToken,
    ) {
        let mut changes = tools.registry().subscribe();
        let mut policies = tools.policies().subscribe();
        let mut last = serving(&tools, &principal, &uris);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                changed = policies.changed() => if changed.is_err() { return },
            }
            let now = serving(&tools, &principal, &uris);
            for (uri, build) in &now {
                // A URI subscribed since the last look is not an update.
                let Some(before) = last.get(uri) else { continue };
                if before != build {
                    let param = rmcp::model::ResourceUpdatedNotificationParam::new(uri.clone());
                    if peer.notify_resource_updated(param).await.is_err() {
                        return;
                    }
                }
            }
            last = now;
        }
    }
}
