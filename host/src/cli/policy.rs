//! `maestro policy check [DIR]` and `maestro policy explain`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use maestro_core::Role;
use maestro_core::policy::Subject;

use crate::config::Config;
use crate::policy::{PolicyLoadError, load_dir, policy_files};

/// `maestro policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory; every error is printed as file:line:column.
    Check {
        /// The directory (default: the configured policy directory).
        dir: Option<PathBuf>,
    },
    /// Show whether a caller may use a tool, the effective limits, and the rule that
    /// decided.
    Explain {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Role within the tenant: admin, member or viewer.
        #[arg(long)]
        role: Role,
        /// Key id (`key_…`), for rules that name keys.
        #[arg(long, default_value = "-")]
        key: String,
        /// Qualified tool name, e.g. `calc.evaluate`.
        #[arg(long, required_unless_present = "resources", conflicts_with = "resources")]
        tool: Option<String>,
        /// A plugin name: explain reading that plugin's resources instead of a tool.
        #[arg(long, value_name = "PLUGIN")]
        resources: Option<String>,
        /// The directory (default: the configured policy directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs a policy command.
pub(super) fn run(command: &PolicyCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { dir } => {
            let dir = dir.clone().unwrap_or_else(|| config.policy_dir.clone());
            let files = policy_files(&dir).map_err(anyhow::Error::new)?;
            match load_dir(&dir) {
                Ok(set) => {
                    let (grants, denies) = set.rule_counts();
                    println!(
                        "{}: {} file(s), {grants} grant(s), {denies} deny rule(s): ok",
                        dir.display(),
                        files.len()
                    );
                    Ok(())
                }
                Err(PolicyLoadError::Invalid(errors)) => {
                    for error in errors.iter() {
                        eprintln!("{error}");
                    }
                    bail!("{} error(s) in {}", errors.len(), dir.display())
                }
                Err(err) => Err(err.into()),
            }
        }
        PolicyCommand::Explain { tenant, role, key, tool, resources, dir } => {
            let dir = dir.clone().unwrap_or_else(|| config.policy_dir.clone());
            let set = match load_dir(&dir) {
                Ok(set) => set,
                Err(PolicyLoadError::Invalid(errors)) => {
                    for error in errors.iter() {
                        eprintln!("{error}");
                    }
                    bail!("the policies in {} do not compile; fix them first (maestro policy check)", dir.display())
                }
                Err(err) => return Err(err.into()),
            };
            let subject = Subject { tenant, role: *role, key_id: key };
            match (tool, resources) {
                (Some(tool), _) => print!("{}", set.explain(&subject, tool)),
                (None, Some(plugin)) => print!("{}", set.explain_resources(&subject, plugin)),
                (None, None) => bail!("name a --tool or the --resources of a plugin"),
            }
            Ok(())
        }
    }
}
