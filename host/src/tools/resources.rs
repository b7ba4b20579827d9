//! Plugin resources for a caller: which plugins' resources its policy lets it list and
//! read (`resources` rules: [`maestro_core::policy::PolicySet::decide_resources`]), and
//! reads run through the one pipeline (rate → calls in flight → the executor's
//! `read_resource` in the sandbox, under the deciding grant's limits). Reads are not
//! charged: a grant's `credits` price tool calls. A URI no plugin serves, or one whose
//! plugin the caller may not read, is [`CallError::UnknownResource`]: a denied resource
//! looks exactly like a missing one.

use std::sync::Arc;

use maestro_core::call::Job;
use maestro_core::plugin::ReadContents;
use maestro_core::policy::Decision;

use super::{Call, CallError, Kind, Observe, Principal, Tools, limits, truncate};
use crate::plugins::InstalledPlugin;
use crate::sandbox::net::NetPolicy;

impl Tools {
    /// Plugins serving resources that the principal may list and read.
    pub fn resource_plugins(&self, principal: &Principal) -> Vec<Arc<InstalledPlugin>> {
        let (catalog, policies) = (self.registry.catalog(), self.policies.current());
        catalog
            .plugins()
            .filter(|p| !p.loaded.resources.is_empty())
            .filter(|p| policies.decide_resources(&principal.subject(), &p.manifest.name).is_allowed())
            .cloned()
            .collect()
    }

    /// The policy decision for the principal and a plugin's resources.
    pub fn decide_resources(&self, principal: &Principal, plugin: &str) -> Decision {
        self.policies.current().decide_resources(&principal.subject(), plugin)
    }

    /// The plugin that serves `uri` to the principal, if any (none when no plugin
    /// serves it or the principal may not read that plugin's resources).
    pub fn resource_plugin(&self, principal: &Principal, uri: &str) -> Option<Arc<InstalledPlugin>> {
        if !maestro_core::plugin::resource::readable_uri(uri) {
            return None;
        }
        let plugin = self.registry.catalog().resource_plugin(uri).cloned()?;
        self.decide_resources(principal, &plugin.manifest.name).is_allowed().then_some(plugin)
    }

    /// Reads a plugin resource for the principal, in the sandbox under the limits of
    /// the grant that lets it read the plugin's resources.
    pub async fn read_resource(
        &self,
        principal: &Principal,
        uri: &str,
        observe: Observe,
    ) -> Result<Call<Vec<ReadContents>>, CallError> {
        let unknown = || CallError::UnknownResource(truncate(uri));
        let plugin = self.resource_plugin(principal, uri).ok_or_else(unknown)?;
        let Decision::Allow(grant) = self.decide_resources(principal, &plugin.manifest.name) else {
            return Err(unknown());
        };
        // Reads are free: the grant's price is for tool calls.
        let mut free = (*grant).clone();
        free.credits = 0;
        let name = format!("{}:resources", plugin.manifest.name);
        let execute = |()| async {
            let job = Job {
                item: uri.to_owned(),
                arguments: String::new(),
                limits: limits(&free),
                // Reads get no network and no platform (models, questions).
                network: Arc::new(NetPolicy::deny_all()),
                config_json: Arc::from(
                    free.config_for(&plugin.manifest.name).map_or_else(|| "{}".to_owned(), |c| c.to_string()),
                ),
                caller: Arc::from(principal.tenant.as_str()),
                observe,
                platform: None,
            };
            (self.executor.read_resource(&plugin.loaded, job).await, Vec::new(), 0)
        };
        self.stages(principal, &name, Kind::Resource, &free, || Ok(()), execute).await
    }
}
