//! `maestro plugin new|build|inspect`: for plugin authors and operators.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::plugins::{Manifest, sha256_hex};
use crate::sandbox::{CallLimits, Sandbox, SandboxConfig};

/// `maestro plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate (Cargo.toml, plugin.toml, src/lib.rs with a tool, a persona
    /// and a native test).
    New {
        /// Plugin name: lowercase letters, digits, `_` and `-`, starting with a letter.
        name: String,
        /// Where to create `<name>/` (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the maestro-sdk crate to depend on (default: found from the current
        /// directory upwards, e.g. in a Maestro checkout).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build plugin crates for wasm32-wasip2, verify them, and install each with a
    /// manifest carrying its sha256 into the plugin directory.
    Build {
        /// Plugin crate directories (default: the current directory).
        paths: Vec<PathBuf>,
        /// Install into this directory (default: the configured plugin directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show what a component provides and asks for: tools with schemas, personas,
    /// resources, imports, requested capabilities.
    Inspect {
        /// A `.wasm` component, a `plugin.toml`, or a directory holding one.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a plugin command.
pub(super) async fn run(command: PluginCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, dir, sdk } => new(&name, &dir, sdk),
        PluginCommand::Build { paths, out } => {
            let out = out.unwrap_or_else(|| config.plugin_dir.clone());
            let paths = if paths.is_empty() { vec![PathBuf::from(".")] } else { paths };
            let sandbox = verifier(config)?;
            for (i, path) in paths.iter().enumerate() {
                eprintln!("[{}/{}] {}", i + 1, paths.len(), path.display());
                build(path, &out, &sandbox).await?;
            }
            Ok(())
        }
        PluginCommand::Inspect { file, json } => inspect(&file, json, &verifier(config)?).await,
    }
}

/// A sandbox for verifying components, sharing the server's compiled-code cache.
fn verifier(config: &Config) -> anyhow::Result<Sandbox> {
    let sandbox = SandboxConfig {
        cache_dir: Some(config.sandbox.cache_dir.clone()),
        workers: 1,
        max_instances: 8,
        ..SandboxConfig::default()
    };
    Ok(Sandbox::new(sandbox)?)
}

async fn build(path: &Path, out: &Path, sandbox: &Sandbox) -> anyhow::Result<()> {
    let manifest_path = path.join("plugin.toml");
    let mut manifest = Manifest::read(&manifest_path).map_err(anyhow::Error::msg)?;
    let cargo_toml = path.join("Cargo.toml");
    let (target_dir, lib_name) = cargo_target(&cargo_toml)?;

    eprintln!("  building {} for wasm32-wasip2 (release)…", manifest.name);
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(&cargo_toml)
        .status()
        .context("cannot run cargo (is the Rust toolchain installed?)")?;
    if !status.success() {
        bail!("cargo build failed for {} ({status}); `rustup target add wasm32-wasip2` may be missing", path.display());
    }
    let wasm = target_dir.join("wasm32-wasip2/release").join(format!("{lib_name}.wasm"));
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read the built component {}", wasm.display()))?;

    eprintln!("  verifying the component (compile, link, list tools, personas and resources)…");
    let loaded = sandbox
        .load(&manifest.name, bytes.clone(), CallLimits::default())
        .await
        .with_context(|| format!("{} is not a usable plugin", wasm.display()))?;
    let sha256 = sha256_hex(&bytes);
    eprintln!(
        "  {} tool(s), {} persona(s), {} KiB, sha256 {sha256}",
        loaded.tools.len(),
        loaded.personas.len(),
        bytes.len() / 1024
    );

    // Component first, manifest last (each renamed into place), so a server watching the
    // directory never sees a manifest whose hash does not match what is on disk for long.
    let dir = out.join(&manifest.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    manifest.component = format!("{}.wasm", manifest.name);
    manifest.sha256 = Some(sha256);
    write_atomically(&dir.join(&manifest.component), &bytes)?;
    write_atomically(&dir.join("plugin.toml"), toml::to_string(&manifest)?.as_bytes())?;
    eprintln!("  installed {}", dir.display());
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
}

/// Cargo's target directory and the crate's library name, from `cargo metadata`.
fn cargo_target(cargo_toml: &Path) -> anyhow::Result<(PathBuf, String)> {
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(cargo_toml)
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed for {}: {}", cargo_toml.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed no JSON")?;
    let target_dir = metadata["target_directory"].as_str().context("cargo metadata has no target_directory")?;
    let wanted = std::fs::canonicalize(cargo_toml).with_context(|| format!("cannot find {}", cargo_toml.display()))?;
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().and_then(|m| std::fs::canonicalize(m).ok()).as_deref() == Some(&*wanted))
        .with_context(|| format!("{} is not a package cargo knows", cargo_toml.display()))?;
    let lib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib")))
        .with_context(|| {
            format!("{} has no cdylib target (add crate-type = [\"cdylib\", \"rlib\"])", cargo_toml.display())
        })?;
    let name = lib["name"].as_str().context("target without a name")?.replace('-', "_");
    Ok((PathBuf::from(target_dir), name))
}

async fn inspect(file: &Path, as_json: bool, sandbox: &Sandbox) -> anyhow::Result<()> {
    let (manifest, wasm) = if file.is_dir() || file.extension().is_some_and(|e| e == "toml") {
        let manifest_path = if file.is_dir() { file.join("plugin.toml") } else { file.to_owned() };
        let manifest = Manifest::read(&manifest_path).map_err(anyhow::Error::msg)?;
        let wasm = manifest.component_path(&manifest_path);
        (Some(manifest), wasm)
    } else {
        let beside = file.with_file_name("plugin.toml");
        (Manifest::read(&beside).ok(), file.to_owned())
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let sha256 = sha256_hex(&bytes);
    let name = manifest.as_ref().map_or_else(
        || wasm.file_stem().map_or("plugin".to_owned(), |s| s.to_string_lossy().replace(['-', '.'], "_")),
        |m| m.name.clone(),
    );
    let imports = sandbox.imports(&bytes)?;
    let loaded = sandbox.load(&name, bytes.clone(), CallLimits::default()).await?;
    let hash_state = match manifest.as_ref().and_then(|m| m.sha256.as_deref()) {
        None => "no sha256 in a manifest (the server will refuse it until `maestro plugin build` installs it)",
        Some(expected) if expected.eq_ignore_ascii_case(&sha256) => "matches the manifest",
        Some(_) => "DOES NOT MATCH the manifest (the server will refuse it)",
    };
    if as_json {
        let value = json!({
            "name": name,
            "manifest": manifest,
            "component": { "path": wasm, "bytes": bytes.len(), "sha256": sha256, "hash": hash_state },
            "wit": format!("maestro:plugin@{}", loaded.contract_version()),
            "imports": imports,
            "tools": loaded.tools,
            "personas": loaded.personas,
            "resources": loaded.resources.resources,
            "resource_templates": loaded.resources.templates,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match &manifest {
        Some(m) => println!("{} {} — {}", m.name, m.version, m.description),
        None => println!("{name} (no plugin.toml beside the component)"),
    }
    println!("component  {} ({} KiB)\nsha256     {sha256} ({hash_state})", wasm.display(), bytes.len() / 1024);
    println!("built for  maestro:plugin@{}", loaded.contract_version());
    if let Some(m) = &manifest {
        let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
        println!("asks for   network: {}; secrets: {}", list(&m.capabilities.network), list(&m.capabilities.secrets));
    }
    println!("imports");
    for import in &imports {
        let note = if import.starts_with("wasi:http/outgoing-handler") {
            "  (outgoing HTTP, only where policy allows)"
        } else if import.starts_with("maestro:plugin/model") {
            "  (model completions on the caller's credits, only where policy allows)"
        } else {
            ""
        };
        println!("  {import}{note}");
    }
    println!("tools ({})", loaded.tools.len());
    for tool in &loaded.tools {
        let a = tool.annotations;
        let hints: Vec<&str> = [
            (a.read_only, "read-only"),
            (a.destructive, "destructive"),
            (a.idempotent, "idempotent"),
            (a.open_world, "open-world"),
        ]
        .into_iter()
        .filter_map(|(on, label)| on.then_some(label))
        .collect();
        println!("  {name}.{}{}", tool.name, tool.title.as_ref().map_or_else(String::new, |t| format!(" — {t}")));
        println!("    {}", tool.description);
        if !hints.is_empty() {
            println!("    hints: {}", hints.join(", "));
        }
        println!("    input schema: {}", serde_json::to_string(&tool.input_schema)?);
        if let Some(output) = &tool.output_schema {
            println!("    output schema: {}", serde_json::to_string(output)?);
        }
    }
    println!("personas ({})", loaded.personas.len());
    for persona in &loaded.personas {
        println!(
            "  {name}.{} — {} ({:?} model; tools: {})",
            persona.name,
            persona.title,
            persona.model_tier,
            persona.tools.join(", ")
        );
        println!("    {}", persona.role);
    }
    let (resources, templates) = (&loaded.resources.resources, &loaded.resources.templates);
    println!("resources ({}) and resource templates ({})", resources.len(), templates.len());
    let described = |uri: &str, title: &Option<String>, mime: &Option<String>| {
        let title = title.as_ref().map_or_else(String::new, |t| format!(" — {t}"));
        let mime = mime.as_ref().map_or_else(String::new, |m| format!(" ({m})"));
        println!("  {uri}{title}{mime}");
    };
    for r in resources {
        described(&r.uri, &r.title, &r.mime_type);
    }
    for t in templates {
        described(&t.uri_template, &t.title, &t.mime_type);
    }
    Ok(())
}

fn new(name: &str, dir: &Path, sdk: Option<PathBuf>) -> anyhow::Result<()> {
    if !maestro_core::plugin::valid_plugin_name(name) {
        bail!("plugin name `{name}` must match ^[a-z][a-z0-9_-]{{0,31}}$");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let sdk = match sdk {
        Some(path) => path,
        None => find_sdk(dir).context(
            "cannot find the maestro-sdk crate; pass --sdk PATH (the `sdk` directory of a Maestro checkout)",
        )?,
    };
    let sdk = std::fs::canonicalize(&sdk).with_context(|| format!("cannot find {}", sdk.display()))?;
    std::fs::create_dir_all(root.join("src"))?;
    let crate_name = format!("maestro-plugin-{name}");
    let files = [
        ("Cargo.toml", scaffold::cargo_toml(&crate_name, &sdk)),
        ("plugin.toml", scaffold::manifest(name)),
        ("src/lib.rs", scaffold::lib_rs(name)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, contents) in files {
        std::fs::write(root.join(file), contents).with_context(|| format!("cannot write {file}"))?;
    }
    println!("created {}", root.display());
    println!("  test natively:   cargo test --manifest-path {}/Cargo.toml", root.display());
    println!("  build + install: maestro plugin build {}", root.display());
    Ok(())
}

/// `sdk/Cargo.toml` of package `maestro-sdk`, looking upwards from `start`.
fn find_sdk(start: &Path) -> Option<PathBuf> {
    let start = std::fs::canonicalize(start).ok()?;
    start.ancestors().map(|dir| dir.join("sdk")).find(|sdk| {
        std::fs::read_to_string(sdk.join("Cargo.toml")).is_ok_and(|text| text.contains("name = \"maestro-sdk\""))
    })
}

mod scaffold {
    use std::path::Path;

    pub(super) fn cargo_toml(crate_name: &str, sdk: &Path) -> String {
        format!(
            r#"[package]
name = "{crate_name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the WebAssembly component; rlib: native unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
maestro-sdk = {{ path = "{sdk}" }}
schemars = {{ version = "1", default-features = false, features = ["derive", "std"] }}
serde = {{ version = "1", features = ["derive"] }}

[dev-dependencies]
serde_json = "1"

# A standalone crate, not a member of an enclosing workspace.
[workspace]
"#,
            sdk = sdk.display()
        )
    }

    pub(super) fn manifest(name: &str) -> String {
        format!(
            r#"name = "{name}"
version = "0.1.0"
description = "Describe what {name} does in one line"
component = "{name}.wasm"
wit = "maestro:plugin@0.2.0"

[capabilities]
# Destinations the plugin needs, e.g. ["https://api.example.com"]; the administrator's
# policy decides what it really gets.
network = []
# Secrets the host should inject into its requests (policy maps them to headers).
secrets = []
"#
        )
    }

    pub(super) fn lib_rs(name: &str) -> String {
        format!(
            r#"//! `{name}`: a Maestro plugin.

use maestro_sdk::{{
    Body, Persona, PersonaSpec, PromptArgument, Resource, Structured, ToolError, export_plugin, tool,
}};
use schemars::JsonSchema;
use serde::{{Deserialize, Serialize}};

/// Arguments of `greet`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct GreetArgs {{
    /// Who to greet.
    pub name: String,
}}

/// Result of `greet`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Greeting {{
    /// The greeting.
    pub text: String,
}}

/// Greets someone.
pub fn greet(args: GreetArgs) -> Result<Structured<Greeting>, ToolError> {{
    if args.name.trim().is_empty() {{
        return Err(ToolError::InvalidArguments("name must not be empty".into()));
    }}
    Ok(Structured(Greeting {{ text: format!("Hello, {{}}!", args.name.trim()) }}))
}}

// To ask the platform's models (paid by the caller; the administrator's policy must
// grant `model_tiers`), use `maestro_sdk::model::complete(&model::Request::new(...))`.

/// A resource MCP clients read by its URI (the administrator's policy must grant
/// `resources = ["{name}.*"]`). Use a URI scheme of your own; `ResourceTemplate` serves a
/// family of resources such as `{scheme}://notes/{{id}}`.
pub fn about() -> Resource {{
    Resource::new("{scheme}://about", "about", || Ok(Body::text("What {name} does, in a few lines.")))
        .title("About {name}")
        .mime_type("text/plain")
}}

export_plugin! {{
    tools: [tool("greet", "Greets someone by name", greet).title("Greeter").read_only().idempotent()],
    personas: [Persona::new(
        PersonaSpec::new("host", "Host", "Welcomes people", "You welcome {{{{guest}}}} warmly and briefly.")
            .argument(PromptArgument::required("guest", "who is arriving")),
    )],
    resources: [about()],
}}

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn greets_and_rejects_empty_names() {{
        let Structured(greeting) = greet(GreetArgs {{ name: "Ada".into() }}).expect("greets");
        assert_eq!(greeting.text, "Hello, Ada!");
        assert!(greet(GreetArgs {{ name: " ".into() }}).is_err());
    }}

    #[test]
    fn serves_its_about_resource() {{
        let contents = maestro_plugin().read_resource("{scheme}://about").expect("reads");
        assert_eq!(contents[0].text(), Some("What {name} does, in a few lines."));
    }}
}}
"#,
            scheme = name.replace('_', "-")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_plugin_targets_the_newest_contract_the_host_runs() {
        let manifest = Manifest::parse(&scaffold::manifest("weather")).expect("the scaffold's manifest is valid");
        let newest = crate::plugins::manifest::SUPPORTED_WIT.last().copied();
        assert_eq!(Some(manifest.wit.as_str()), newest);
        assert_eq!(newest, Some("maestro:plugin@0.2.0"));
    }
}
