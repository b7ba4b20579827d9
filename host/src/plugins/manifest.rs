//! `plugin.toml`: what a plugin is and what it asks for.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The WIT package versions this host runs.
pub const SUPPORTED_WIT: &[&str] = &["maestro:plugin@0.1.0", "maestro:plugin@0.2.0"];

/// A plugin manifest as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `^[a-z][a-z0-9_-]{0,31}$`; tools are exposed as `<name>.<tool>`.
    pub name: String,
    /// Semantic version of the plugin.
    pub version: String,
    /// One line.
    pub description: String,
    /// The component file, relative to the manifest.
    pub component: String,
    /// The WIT package the component targets.
    pub wit: String,
    /// SHA-256 (hex) of the component; required to load, written by `maestro plugin build`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// What the plugin asks for (the administrator's policy decides).
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The plugin promises that no tool depends on what an earlier call left in its
    /// memory, so the host may keep an instance after a clean call and reuse it for the
    /// same caller's next call (never another caller's); default `false`: a fresh
    /// instance per call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateless: bool,
}

/// Requested capabilities (informational: policy grants).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Network destinations (`scheme://host[:port]`).
    #[serde(default)]
    pub network: Vec<String>,
    /// Secret names it expects the host to inject.
    #[serde(default)]
    pub secrets: Vec<String>,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates manifest text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Self = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        if !maestro_core::plugin::valid_plugin_name(&manifest.name) {
            return Err(format!("name `{}` must match ^[a-z][a-z0-9_-]{{0,31}}$", manifest.name));
        }
        if maestro_core::plugin::RESERVED_PLUGIN_NAMES.contains(&manifest.name.as_str()) {
            return Err(format!(
                "name `{}` is reserved for the host's built-in tools; rename the plugin",
                manifest.name
            ));
        }
        if !SUPPORTED_WIT.contains(&manifest.wit.as_str()) {
            return Err(format!(
                "wit `{}` is not supported by this host (supported: {})",
                manifest.wit,
                SUPPORTED_WIT.join(", ")
            ));
        }
        let component = Path::new(&manifest.component);
        if manifest.component.is_empty()
            || component.is_absolute()
            || component.components().any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "component `{}` must be a relative path inside the plugin directory",
                manifest.component
            ));
        }
        if let Some(sha) = &manifest.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("sha256 `{sha}` is not 64 hex digits"));
        }
        Ok(manifest)
    }

    /// The component's path for a manifest at `manifest_path`.
    pub fn component_path(&self, manifest_path: &Path) -> PathBuf {
        manifest_path.parent().unwrap_or(Path::new(".")).join(&self.component)
    }
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name = \"calc\"\nversion = \"0.1.0\"\ndescription = \"d\"\ncomponent = \"calc.wasm\"\nwit = \"maestro:plugin@0.1.0\"\n";

    #[test]
    fn parses_a_minimal_manifest() {
        let manifest = Manifest::parse(GOOD).expect("valid");
        assert_eq!(manifest.name, "calc");
        assert_eq!(manifest.capabilities, Capabilities::default());
        assert!(!manifest.stateless, "instances are not pooled unless the plugin says so");
        let stateless = Manifest::parse(&format!("{GOOD}stateless = true\n")).expect("valid");
        assert!(stateless.stateless);
        assert!(toml::to_string(&stateless).expect("serialises").contains("stateless = true"));
        assert!(!toml::to_string(&manifest).expect("serialises").contains("stateless"));
    }

    #[test]
    fn rejects_bad_manifests_with_reasons() {
        let cases = [
            (GOOD.replace("\"calc\"", "\"Calc\""), "must match"),
            (format!("{GOOD}extra = 1\n"), "unknown field"),
            (GOOD.replace("maestro:plugin@0.1.0", "maestro:plugin@9.0.0"), "not supported"),
            (GOOD.replace("calc.wasm", "../../etc/passwd"), "relative path inside"),
            (format!("{GOOD}sha256 = \"abc\"\n"), "64 hex digits"),
            (GOOD.replace("\"calc\"", "\"documents\""), "reserved for the host's built-in tools"),
            (GOOD.replace("\"calc\"", "\"runs\""), "reserved for the host's built-in tools"),
            (GOOD.replace("\"calc\"", "\"maestro\""), "reserved for the host's built-in tools"),
            (GOOD.replace("\"calc\"", "\"memory\""), "reserved for the host's built-in tools"),
        ];
        for (text, expected) in cases {
            let err = Manifest::parse(&text).expect_err(expected);
            assert!(err.contains(expected), "{err}");
        }
    }
}
