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
