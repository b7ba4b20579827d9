//! The plugin registry: loads every plugin in the plugin directory, verifies it, and
//! keeps the set current as files change.
//!
//! Layout: `<plugin dir>/<any>/plugin.toml` plus the component it names. A plugin is
//! loaded only if its manifest is valid, its component's SHA-256 matches the manifest,
//! the component links against this host and its tool and persona names are valid and
//! unique. A plugin that fails is refused with a reason (logged, and listed by
//! [`Catalog::refused`]) while every other plugin keeps working; a replacement that
//! fails keeps the last good version running.

pub mod manifest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use maestro_core::plugin::{PersonaSpec, ToolSpec, qualified_name};

use crate::sandbox::{CallLimits, LoadedPlugin, Sandbox};
pub use manifest::{Manifest, sha256_hex};

/// A plugin that is loaded and serving.
#[derive(Debug)]
pub struct InstalledPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where the manifest is.
    pub manifest_path: PathBuf,
    /// SHA-256 of the component.
    pub sha256: String,
    /// The linked component with its specs.
    pub loaded: LoadedPlugin,
    fingerprint: Fingerprint,
}

/// A plugin directory that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The manifest path.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// The plugins in service at one moment (immutable; replaced whole on reload).
#[derive(Debug, Default)]
pub struct Catalog {
    plugins: BTreeMap<String, Arc<InstalledPlugin>>,
    refused: Vec<Refusal>,
    generation: u64,
}

impl Catalog {
    /// Loaded plugins by name.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<InstalledPlugin>> {
        self.plugins.values()
    }

    /// A plugin by name.
    pub fn plugin(&self, name: &str) -> Option<&Arc<InstalledPlugin>> {
        self.plugins.get(name)
    }

    /// Plugins that were refused, with reasons.
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }

    /// Every tool as `(qualified name, plugin, spec)`.
    pub fn tools(&self) -> impl Iterator<Item = (String, &Arc<InstalledPlugin>, &ToolSpec)> {
        self.plugins
            .values()
            .flat_map(|p| p.loaded.tools.iter().map(move |t| (format!("{}.{}", p.manifest.name, t.name), p, t)))
    }

    /// Every persona as `(qualified name, plugin, spec)`.
    pub fn personas(&self) -> impl Iterator<Item = (String, &Arc<InstalledPlugin>, &PersonaSpec)> {
        self.plugins
            .values()
            .flat_map(|p| p.loaded.personas.iter().map(move |s| (format!("{}.{}", p.manifest.name, s.name), p, s)))
    }

    /// The plugin and spec behind a qualified tool name.
    pub fn tool(&self, qualified: &str) -> Option<(&Arc<InstalledPlugin>, &ToolSpec)> {
        let (plugin, tool) = qualified.split_once('.')?;
        let plugin = self.plugins.get(plugin)?;
        plugin.loaded.tools.iter().find(|t| t.name == tool).map(|t| (plugin, t))
    }

    /// Bumped on every change, so listeners can tell clients their lists changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Modification times and sizes of a plugin's files, to notice replacements.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, Option<SystemTime>, u64)>);

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    Fingerprint(
        paths
            .iter()
            .map(|p| {
                let meta = std::fs::metadata(p).ok();
                (p.clone(), meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len()))
            })
            .collect(),
    )
}

/// Loads plugins and keeps them current.
#[derive(Debug)]
pub struct PluginRegistry {
    sandbox: Arc<Sandbox>,
    dir: PathBuf,
    load_limits: CallLimits,
    catalog: RwLock<Arc<Catalog>>,
    changes: tokio::sync::watch::Sender<u64>,
    /// Whether the directory has been scanned at least once.
    scanned: tokio::sync::watch::Sender<bool>,
}

impl PluginRegistry {
    /// A registry over `dir` (which may not exist yet: then there are no plugins).
    pub fn new(sandbox: Arc<Sandbox>, dir: PathBuf) -> Self {
        let load_limits = CallLimits { timeout: Duration::from_secs(5), ..CallLimits::default() };
        Self {
            sandbox,
            dir,
            load_limits,
            catalog: RwLock::default(),
            changes: tokio::sync::watch::channel(0).0,
            scanned: tokio::sync::watch::channel(false).0,
        }
    }

    /// The sandbox plugins run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// The plugin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Completes once the first scan of the directory has finished (at once after it).
    pub async fn first_scan(&self) {
        let mut scanned = self.scanned.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = scanned.wait_for(|done| *done).await;
    }

    /// Notified with the catalog generation after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Scans the directory and (re)loads what changed. Returns whether the catalog
    /// changed.
    pub async fn refresh(&self) -> bool {
        let current = self.catalog();
        let manifests = find_manifests(&self.dir);
        let mut plugins = BTreeMap::new();
        let mut refused = Vec::new();
        let mut changed = false;
        for manifest_path in manifests {
            let previous = current.plugins.values().find(|p| p.manifest_path == manifest_path);
            let component_path = Manifest::read(&manifest_path).ok().map(|m| m.component_path(&manifest_path));
            let paths: Vec<PathBuf> = std::iter::once(manifest_path.clone()).chain(component_path).collect();
            let print = fingerprint(&paths);
            if let Some(previous) = previous.filter(|p| p.fingerprint == print) {
                insert(&mut plugins, &mut refused, previous.clone());
                continue;
            }
            changed = true;
            match self.load_one(&manifest_path, print).await {
                Ok(installed) => {
                    tracing::info!(
                        plugin = %installed.manifest.name,
                        version = %installed.manifest.version,
                        tools = installed.loaded.tools.len(),
                        personas = installed.loaded.personas.len(),
                        "plugin loaded"
                    );
                    insert(&mut plugins, &mut refused, Arc::new(installed));
                }
                Err(reason) => {
                    tracing::warn!(path = %manifest_path.display(), %reason, "plugin refused");
                    if let Some(previous) = previous {
                        tracing::warn!(plugin = %previous.manifest.name, "keeping the last good version");
                        insert(&mut plugins, &mut refused, previous.clone());
                    }
                    refused.push(Refusal { path: manifest_path, reason });
                }
            }
        }
        let removed = current.plugins.keys().any(|name| !plugins.contains_key(name));
        if removed {
            tracing::info!("plugins removed from the plugin directory were unloaded");
        }
        let changed = changed || removed || refused != current.refused;
        if changed {
            let generation = current.generation + 1;
            let catalog = Arc::new(Catalog { plugins, refused, generation });
            *self.catalog.write().unwrap_or_else(std::sync::PoisonError::into_inner) = catalog;
            self.changes.send_replace(generation);
        }
        self.scanned.send_if_modified(|done| !std::mem::replace(done, true));
        changed
    }

    async fn load_one(&self, manifest_path: &Path, fingerprint: Fingerprint) -> Result<InstalledPlugin, String> {
        let manifest = Manifest::read(manifest_path)?;
        let component_path = manifest.component_path(manifest_path);
        let bytes =
            std::fs::read(&component_path).map_err(|e| format!("cannot read {}: {e}", component_path.display()))?;
        let sha256 = sha256_hex(&bytes);
        match &manifest.sha256 {
            None => {
                return Err("the manifest has no sha256; build it with `maestro plugin build`".to_owned());
            }
            Some(expected) if !expected.eq_ignore_ascii_case(&sha256) => {
                return Err(format!(
                    "sha256 mismatch: the manifest says {expected}, {} is {sha256}",
                    component_path.display()
                ));
            }
            Some(_) => {}
        }
        let loaded =
            self.sandbox.load(&manifest.name, bytes, self.load_limits.clone()).await.map_err(|e| e.to_string())?;
        for name in loaded.tools.iter().map(|t| &t.name).chain(loaded.personas.iter().map(|p| &p.name)) {
            if qualified_name(&manifest.name, name).is_none() {
                return Err(format!("`{}.{name}` is not a valid name (^[A-Za-z0-9_.-]{{1,64}}$)", manifest.name));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = loaded.tools.iter().map(|t| &t.name).find(|n| !seen.insert(*n)) {
            return Err(format!("tool `{dup}` is declared twice"));
        }
        let manifest_path = manifest_path.to_owned();
        Ok(InstalledPlugin { manifest, manifest_path, sha256, loaded, fingerprint })
    }

    /// Polls the directory every `interval` until the registry is dropped, reloading
    /// what changed.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        crate::poll::every(self, interval, |registry| async move {
            registry.refresh().await;
        })
    }
}

fn insert(
    plugins: &mut BTreeMap<String, Arc<InstalledPlugin>>,
    refused: &mut Vec<Refusal>,
    plugin: Arc<InstalledPlugin>,
) {
    let name = plugin.manifest.name.clone();
    if let Some(existing) = plugins.get(&name) {
        refused.push(Refusal {
            path: plugin.manifest_path.clone(),
            reason: format!("a plugin named `{name}` is already loaded from {}", existing.manifest_path.display()),
        });
        return;
    }
    plugins.insert(name, plugin);
}

/// `plugin.toml` files one level below `dir`, sorted.
fn find_manifests(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut manifests: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path().join("plugin.toml")).filter(|p| p.is_file()).collect();
    manifests.sort();
    manifests
}
