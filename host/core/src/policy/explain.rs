//! `maestro policy explain`: a decision rendered for a person.

use std::fmt;

use super::{Decision, Denial, RuleInfo, Setting, Source};
use crate::auth::Role;

/// A decision with the caller, the tool and the other rules that matched but did not
/// decide. `Display` renders the multi-line text `maestro policy explain` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The caller's tenant.
    pub tenant: String,
    /// The caller's role.
    pub role: Role,
    /// The caller's key id.
    pub key_id: String,
    /// The tool asked about.
    pub tool: String,
    /// What [`super::PolicySet::decide`] returns for this call.
    pub decision: Decision,
    /// Every other rule that matched (deny rules first, then grants, in file order).
    pub also_matched: Vec<RuleInfo>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.decision.is_allowed() { "ALLOW" } else { "DENY" };
        writeln!(f, "{verdict} {}", self.tool)?;
        writeln!(f, "  caller:  tenant {}, role {}, key {}", self.tenant, self.role, self.key_id)?;
        match &self.decision {
            Decision::Deny(Denial::NoGrant) => {
                writeln!(f, "  rule:    none: no rule grants this tool (default deny)")?;
            }
            Decision::Deny(Denial::Rule(rule)) => {
                writeln!(f, "  rule:    {rule} (deny rules beat grants)")?;
            }
            Decision::Allow(grant) => {
                writeln!(f, "  rule:    {}", grant.rule)?;
                writeln!(f, "  settings:")?;
                for setting in Setting::ALL {
                    let from = match grant.source(setting) {
                        Source::BuiltIn => "built-in".to_owned(),
                        other => format!("from {other}"),
                    };
                    writeln!(f, "    {:<20}{:<14}{from}", setting.key(), grant.display_value(setting))?;
                }
                if grant.network.is_empty() {
                    writeln!(f, "  network: none")?;
                } else {
                    writeln!(f, "  network:")?;
                    for rule in &grant.network {
                        let private = if rule.allow_private { " (private addresses allowed)" } else { "" };
                        writeln!(f, "    {rule}{private}")?;
                    }
                }
                if grant.secrets.is_empty() {
                    writeln!(f, "  secrets: none")?;
                } else {
                    writeln!(f, "  secrets:")?;
                    for secret in &grant.secrets {
                        writeln!(f, "    {} ({}, defined at {})", secret.name, secret.source, secret.location)?;
                        for (header, template) in &secret.headers {
                            writeln!(f, "      {header}: {template}")?;
                        }
                        let hosts: Vec<String> = secret.hosts.iter().map(ToString::to_string).collect();
                        writeln!(f, "      hosts: {}", hosts.join(", "))?;
                    }
                }
                match &grant.models {
                    None => writeln!(f, "  models:  none")?,
                    Some(models) => {
                        let tiers: Vec<&str> = models.tiers.iter().map(|t| crate::llm::tier_name(*t)).collect();
                        writeln!(
                            f,
                            "  models:  {} (at most {} answer tokens per completion)",
                            tiers.join(", "),
                            models.max_tokens
                        )?;
                    }
                }
                if grant.config.is_empty() {
                    writeln!(f, "  config:  none")?;
                } else {
                    writeln!(f, "  config:")?;
                    for (plugin, value) in &grant.config {
                        writeln!(f, "    {plugin}: {value}")?;
                    }
                }
            }
        }
        for rule in &self.also_matched {
            writeln!(f, "  also matched, not used: {rule}")?;
        }
        Ok(())
    }
}
