//! Authorisation: what a principal's policy lets it see, the decision for one call, and
//! the check of a call's arguments before anything is charged or run.

use std::sync::Arc;

use maestro_core::plugin::PersonaSpec;
use maestro_core::policy::{Decision, Grant};

use super::{CallError, Principal, Tools, VisiblePersona, VisibleTool};
use crate::plugins::InstalledPlugin;

impl Tools {
    /// Tools the principal may see and call, by name: the plugins' and the host's
    /// built-in ones, under the same policy decision.
    pub fn visible_tools(&self, principal: &Principal) -> Vec<VisibleTool> {
        let (catalog, policies) = (self.registry.catalog(), self.policies.current());
        let plugin_tools = catalog.tools().map(|(name, plugin, spec)| (name, Some(plugin.clone()), spec.clone()));
        let host_tools = self.host_tools.iter().map(|tool| (tool.name().to_owned(), None, tool.spec().clone()));
        plugin_tools
            .chain(host_tools)
            .filter_map(|(name, plugin, spec)| match policies.decide(&principal.subject(), &name) {
                Decision::Allow(grant) => Some(VisibleTool { name, plugin, spec, credits: grant.credits }),
                Decision::Deny(_) => None,
            })
            .collect()
    }

    /// Personas the principal may use (policy globs match `plugin.persona` like tools).
    pub fn visible_personas(&self, principal: &Principal) -> Vec<VisiblePersona> {
        let (catalog, policies) = (self.registry.catalog(), self.policies.current());
        catalog
            .personas()
            .filter(|(name, _, _)| policies.decide(&principal.subject(), name).is_allowed())
            .map(|(name, plugin, spec)| VisiblePersona { name, plugin: plugin.clone(), spec: spec.clone() })
            .collect()
    }

    /// Plugins with at least one tool or persona the principal may use.
    pub fn visible_plugins(&self, principal: &Principal) -> Vec<Arc<InstalledPlugin>> {
        let policies = self.policies.current();
        let catalog = self.registry.catalog();
        catalog
            .plugins()
            .filter(|p| {
                let names = p.loaded.tools.iter().map(|t| &t.name).chain(p.loaded.personas.iter().map(|s| &s.name));
                names
                    .map(|n| format!("{}.{n}", p.manifest.name))
                    .any(|n| policies.decide(&principal.subject(), &n).is_allowed())
            })
            .cloned()
            .collect()
    }

    /// The policy decision for the principal and a tool or persona name.
    pub fn decide(&self, principal: &Principal, name: &str) -> Decision {
        self.policies.current().decide(&principal.subject(), name)
    }

    /// The grant that allows the principal to use `name`, or the denial.
    pub(super) fn authorize(&self, principal: &Principal, name: &str) -> Result<Arc<Grant>, CallError> {
        match self.decide(principal, name) {
            Decision::Allow(grant) => Ok(grant),
            deny @ Decision::Deny(_) => Err(CallError::Denied(deny.to_string())),
        }
    }
}

/// A persona's prompt arguments, checked against its spec: an object of strings, none
/// unknown, every required one present, enumerable ones among their values.
pub(super) fn persona_arguments(spec: &PersonaSpec, given: &serde_json::Value) -> Result<(), CallError> {
    let Some(given) = given.as_object() else { return Err(CallError::ArgumentsNotObject) };
    let invalid = |message: String| Err(CallError::InvalidArguments(message));
    for (name, value) in given {
        let Some(argument) = spec.arguments.iter().find(|a| a.name == *name) else {
            return invalid(format!("unknown argument `{}`", name.chars().take(64).collect::<String>()));
        };
        let Some(value) = value.as_str() else {
            return invalid(format!("argument `{name}` must be a string"));
        };
        if !argument.values.is_empty() && !argument.values.iter().any(|v| v == value) {
            return invalid(format!("argument `{name}` must be one of: {}", argument.values.join(", ")));
        }
    }
    if let Some(missing) = spec.arguments.iter().find(|a| a.required && !given.contains_key(&a.name)) {
        return invalid(format!("missing required argument `{}`", missing.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use maestro_core::plugin::{ModelTier, PromptArgument};
    use serde_json::json;

    use super::*;

    fn spec() -> PersonaSpec {
        PersonaSpec {
            name: "p".into(),
            title: "P".into(),
            role: "r".into(),
            system_prompt: "s".into(),
            model_tier: ModelTier::Small,
            tools: vec![],
            arguments: vec![
                PromptArgument { name: "idea".into(), description: String::new(), required: true, values: vec![] },
                PromptArgument {
                    name: "tone".into(),
                    description: String::new(),
                    required: false,
                    values: vec!["loud".into(), "quiet".into()],
                },
            ],
        }
    }

    #[test]
    fn persona_arguments_must_fit_the_spec() {
        assert!(persona_arguments(&spec(), &json!({ "idea": "x", "tone": "quiet" })).is_ok());
        for bad in [
            json!({}),
            json!({ "idea": 1 }),
            json!({ "idea": "x", "tone": "shrill" }),
            json!({ "idea": "x", "y": "z" }),
        ] {
            assert!(matches!(persona_arguments(&spec(), &bad), Err(CallError::InvalidArguments(_))), "{bad}");
        }
        assert!(matches!(persona_arguments(&spec(), &json!([])), Err(CallError::ArgumentsNotObject)));
    }
}
