//! The plugin registry: loads every plugin in the plugin directory, verifies it, and
//! keeps the set current as files change.
//!
//! Layout: `<plugin dir>/<any>/plugin.toml` plus the component it names. A plugin is
//! loaded only if its manifest is valid, its component's SHA-256 matches the manifest,
//! the component links against this host and its tool and persona names are valid and
//! unique. A plugin that fails is refused with a reason (logged, and listed by
//! [`Catalog::refused`]) while every other plugin keeps working; a replacement that
//! fails keeps the last good version running.
//!
//! # Noticing changes
//!
//! A plugin is identified by the content of its files: the SHA-256 of its manifest and
//! of its component. A scan (every 2 s by default) only stats the files; it re-hashes
//! a plugin's files when their size or modification time changed, and every
//! [`REHASH_EVERY`] scans anyway (a replacement that keeps both, like `cp -p` on a
//! coarse-clock filesystem, is still noticed within a minute). A touched but unchanged
//! file reloads nothing.
//!
//! A plugin refused at load (invalid component, a start-up that runs out of fuel or
//! time, bad specs) is remembered by that content fingerprint and not loaded again
//! until its files change (or the server restarts): a broken plugin costs one load, not
//! one per scan. A load that hits its deadline counts as the plugin's failure too.
//! Host-side failures (no sandbox slot free, the engine failing) are not remembered, so
//! the next scan retries.
//!
//! Loads run in parallel, at most [`LOAD_PARALLELISM`] at a time, outside the catalog
//! lock, and each finished load is published at once: a slow plugin delays neither the
//! others nor the requests served meanwhile.

pub mod manifest;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use maestro_core::plugin::{PersonaSpec, ToolSpec, qualified_name};

use crate::sandbox::{CallLimits, LoadedPlugin, Sandbox, SandboxError};
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
    content: ContentPrint,
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

    /// The plugin serving `uri`: the one declaring it, or a template matching it
    /// (plugins' resources never overlap, so there is at most one).
    pub fn resource_plugin(&self, uri: &str) -> Option<&Arc<InstalledPlugin>> {
        self.plugins.values().find(|p| p.loaded.resources.serves(uri))
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

/// Scans after which files are re-hashed even if their size and mtime look unchanged.
pub const REHASH_EVERY: u64 = 30;

/// At most this many plugins load at once.
pub const LOAD_PARALLELISM: usize = 4;

/// What a plugin's files contain: SHA-256 of the manifest and of the component (`None`
/// when unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContentPrint {
    manifest: Option<String>,
    component: Option<String>,
}

/// Sizes and modification times of a plugin's files: the cheap check before hashing.
type Stats = Vec<(PathBuf, Option<SystemTime>, Option<u64>)>;

fn stats(paths: &[PathBuf]) -> Stats {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            (p.clone(), meta.as_ref().and_then(|m| m.modified().ok()), meta.map(|m| m.len()))
        })
        .collect()
}

fn hash_file(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| sha256_hex(&bytes))
}

/// What the registry remembers between scans (guarded by the scan lock; scans run one
/// at a time, loads within a scan in parallel).
#[derive(Debug, Default)]
struct ScanState {
    scans: u64,
    /// Per manifest: its files' stats and content when last hashed.
    seen: HashMap<PathBuf, (Stats, ContentPrint)>,
    /// Per manifest: the content that was refused at load, and why.
    refused: HashMap<PathBuf, (ContentPrint, Refusal)>,
    /// Per manifest: the last version that loaded (serving, or refused only for its
    /// name being taken).
    installed: HashMap<PathBuf, Arc<InstalledPlugin>>,
}

/// One manifest's place in the catalog being built.
#[derive(Debug, Clone, Default)]
struct Slot {
    plugin: Option<Arc<InstalledPlugin>>,
    refusal: Option<Refusal>,
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
    scan: tokio::sync::Mutex<ScanState>,
    loads: AtomicU64,
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
            scan: tokio::sync::Mutex::default(),
            loads: AtomicU64::new(0),
        }
    }

    /// The limits a plugin's start-up and listing run under (default: 5 s, built-in
    /// fuel and memory).
    pub fn with_load_limits(mut self, limits: CallLimits) -> Self {
        self.load_limits = limits;
        self
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

    /// How many plugin loads (compile, start-up, listing) were attempted so far.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
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

    /// Scans the directory and (re)loads what changed, publishing each finished load at
    /// once. Returns whether the catalog changed.
    pub async fn refresh(&self) -> bool {
        let mut state = self.scan.lock().await;
        state.scans += 1;
        let rehash_all = state.scans % REHASH_EVERY == 0;
        let current = self.catalog();
        let manifests = find_manifests(&self.dir);
        state.seen.retain(|path, _| manifests.contains(path));
        state.refused.retain(|path, _| manifests.contains(path));
        state.installed.retain(|path, _| manifests.contains(path));

        let mut slots: BTreeMap<PathBuf, Slot> = BTreeMap::new();
        let mut to_load: Vec<(PathBuf, ContentPrint)> = Vec::new();
        for manifest_path in manifests {
            let previous = state.installed.get(&manifest_path).cloned();
            let component_path = Manifest::read(&manifest_path).ok().map(|m| m.component_path(&manifest_path));
            let paths: Vec<PathBuf> = std::iter::once(manifest_path.clone()).chain(component_path.clone()).collect();
            let stats = stats(&paths);
            let print = match state.seen.get(&manifest_path) {
                Some((seen_stats, print)) if *seen_stats == stats && !rehash_all => print.clone(),
                _ => ContentPrint {
                    manifest: hash_file(&manifest_path),
                    component: component_path.as_deref().and_then(hash_file),
                },
            };
            state.seen.insert(manifest_path.clone(), (stats, print.clone()));
            if let Some(previous) = previous.as_ref().filter(|p| p.content == print) {
                slots.insert(manifest_path, Slot { plugin: Some(previous.clone()), refusal: None });
                continue;
            }
            match state.refused.get(&manifest_path) {
                Some((refused_print, refusal)) if *refused_print == print => {
                    // Refused before with these very files: not loaded again.
                    slots.insert(manifest_path, Slot { plugin: previous, refusal: Some(refusal.clone()) });
                }
                _ => {
                    state.refused.remove(&manifest_path);
                    // Until the load finishes, the last good version (if any) serves.
                    slots.insert(manifest_path.clone(), Slot { plugin: previous, refusal: None });
                    to_load.push((manifest_path, print));
                }
            }
        }

        let mut changed = self.publish(&current, &slots);
        let mut loading = tokio::task::JoinSet::new();
        let mut queue = to_load.into_iter();
        loop {
            while loading.len() < LOAD_PARALLELISM {
                let Some((manifest_path, print)) = queue.next() else { break };
                self.loads.fetch_add(1, Ordering::Relaxed);
                let (sandbox, limits) = (self.sandbox.clone(), self.load_limits.clone());
                loading.spawn(async move {
                    let outcome = load_one(&sandbox, limits, &manifest_path, print.clone()).await;
                    (manifest_path, print, outcome)
                });
            }
            let Some(joined) = loading.join_next().await else { break };
            let (manifest_path, print, outcome) = match joined {
                Ok(done) => done,
                Err(err) => {
                    tracing::error!(%err, "a plugin load task failed");
                    continue;
                }
            };
            let slot = slots.entry(manifest_path.clone()).or_default();
            match outcome {
                Ok(installed) => {
                    tracing::info!(
                        plugin = %installed.manifest.name,
                        version = %installed.manifest.version,
                        tools = installed.loaded.tools.len(),
                        personas = installed.loaded.personas.len(),
                        resources = installed.loaded.resources.resources.len() + installed.loaded.resources.templates.len(),
                        "plugin loaded"
                    );
                    let installed = Arc::new(installed);
                    state.installed.insert(manifest_path, installed.clone());
                    *slot = Slot { plugin: Some(installed), refusal: None };
                }
                Err(LoadError { reason, remember }) => {
                    tracing::warn!(path = %manifest_path.display(), %reason, "plugin refused");
                    if let Some(previous) = &slot.plugin {
                        tracing::warn!(plugin = %previous.manifest.name, "keeping the last good version");
                    }
                    let refusal = Refusal { path: manifest_path.clone(), reason };
                    if remember {
                        state.refused.insert(manifest_path, (print, refusal.clone()));
                    }
                    slot.refusal = Some(refusal);
                }
            }
            changed |= self.publish(&self.catalog(), &slots);
        }
        drop(state);
        self.scanned.send_if_modified(|done| !std::mem::replace(done, true));
        changed
    }

    /// Builds the catalog the slots describe and publishes it if it differs from
    /// `current`. Returns whether it did.
    fn publish(&self, current: &Catalog, slots: &BTreeMap<PathBuf, Slot>) -> bool {
        let mut plugins = BTreeMap::new();
        let mut refused = Vec::new();
        for slot in slots.values() {
            if let Some(plugin) = &slot.plugin {
                insert(&mut plugins, &mut refused, plugin.clone());
            }
            refused.extend(slot.refusal.clone());
        }
        refuse_overlapping_resources(current, &mut plugins, &mut refused);
        let same_plugins = plugins.len() == current.plugins.len()
            && plugins.iter().zip(&current.plugins).all(|((a, pa), (b, pb))| a == b && Arc::ptr_eq(pa, pb));
        if same_plugins && refused == current.refused {
            return false;
        }
        let removed = current.plugins.keys().any(|name| !plugins.contains_key(name));
        if removed {
            tracing::info!("plugins removed from the plugin directory were unloaded");
        }
        let generation = current.generation + 1;
        let catalog = Arc::new(Catalog { plugins, refused, generation });
        *self.catalog.write().unwrap_or_else(std::sync::PoisonError::into_inner) = catalog;
        self.changes.send_replace(generation);
        true
    }

    /// Polls the directory every `interval` until the registry is dropped, reloading
    /// what changed.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        crate::poll::every(self, interval, |registry| async move {
            registry.refresh().await;
        })
    }
}

/// Why a plugin was not loaded, and whether that holds until its files change.
#[derive(Debug)]
struct LoadError {
    reason: String,
    remember: bool,
}

impl From<String> for LoadError {
    fn from(reason: String) -> Self {
        Self { reason, remember: true }
    }
}

async fn load_one(
    sandbox: &Sandbox,
    limits: CallLimits,
    manifest_path: &Path,
    content: ContentPrint,
) -> Result<InstalledPlugin, LoadError> {
    let manifest = Manifest::read(manifest_path)?;
    let component_path = manifest.component_path(manifest_path);
    let bytes = std::fs::read(&component_path).map_err(|e| format!("cannot read {}: {e}", component_path.display()))?;
    let sha256 = sha256_hex(&bytes);
    match &manifest.sha256 {
        None => {
            return Err(LoadError::from("the manifest has no sha256; build it with `maestro plugin build`".to_owned()));
        }
        Some(expected) if !expected.eq_ignore_ascii_case(&sha256) => {
            return Err(LoadError::from(format!(
                "sha256 mismatch: the manifest says {expected}, {} is {sha256}",
                component_path.display()
            )));
        }
        Some(_) => {}
    }
    let loaded = sandbox.load(&manifest.name, bytes, limits).await.map_err(|e| {
        let host_side = matches!(&e, SandboxError::Listing { failure, .. } if failure.is_host_side())
            || matches!(e, SandboxError::Engine(_));
        LoadError { reason: e.to_string(), remember: !host_side }
    })?;
    let loaded = loaded.stateless(manifest.stateless);
    let built_against = format!("maestro:plugin@{}", loaded.contract_version());
    if manifest.wit != built_against {
        return Err(LoadError::from(format!(
            "the manifest says wit `{}`, but the component is built against `{built_against}`",
            manifest.wit
        )));
    }
    let tools: Vec<&str> = loaded.tools.iter().map(|t| t.name.as_str()).collect();
    let personas: Vec<&str> = loaded.personas.iter().map(|p| p.name.as_str()).collect();
    check_names(&manifest.name, &tools, &personas)?;
    let manifest_path = manifest_path.to_owned();
    Ok(InstalledPlugin { manifest, manifest_path, sha256, loaded, content })
}

/// Tool and persona names are valid, and unique: no tool or persona twice, and no
/// persona named like a tool (policies match both by `plugin.name`, so they could not
/// be told apart).
fn check_names(plugin: &str, tools: &[&str], personas: &[&str]) -> Result<(), String> {
    for name in tools.iter().chain(personas) {
        if qualified_name(plugin, name).is_none() {
            return Err(format!("`{plugin}.{name}` is not a valid name (^[A-Za-z0-9_.-]{{1,64}}$)"));
        }
    }
    let mut seen_tools = HashSet::new();
    if let Some(dup) = tools.iter().find(|n| !seen_tools.insert(**n)) {
        return Err(format!("tool `{dup}` is declared twice"));
    }
    let mut seen_personas = HashSet::new();
    if let Some(dup) = personas.iter().find(|n| !seen_personas.insert(**n)) {
        return Err(format!("persona `{dup}` is declared twice"));
    }
    if let Some(clash) = personas.iter().find(|n| seen_tools.contains(**n)) {
        return Err(format!(
            "persona `{clash}` has the name of a tool; policies match both as `{plugin}.{clash}`, so rename one"
        ));
    }
    Ok(())
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

/// Refuses every plugin whose resources could name a URI another plugin's already
/// name (a URI must reach one plugin): the plugins serving in `current` keep theirs, so
/// a newcomer is the one refused; among newcomers, the first by name wins. The reason
/// names both plugins and both declarations.
fn refuse_overlapping_resources(
    current: &Catalog,
    plugins: &mut BTreeMap<String, Arc<InstalledPlugin>>,
    refused: &mut Vec<Refusal>,
) {
    let incumbent = |p: &Arc<InstalledPlugin>| current.plugin(&p.manifest.name).is_some_and(|c| Arc::ptr_eq(c, p));
    let mut order: Vec<Arc<InstalledPlugin>> = plugins.values().filter(|p| incumbent(p)).cloned().collect();
    order.extend(plugins.values().filter(|p| !incumbent(p)).cloned());
    let mut accepted: Vec<Arc<InstalledPlugin>> = Vec::with_capacity(order.len());
    for plugin in order {
        let clash = accepted.iter().find_map(|other| {
            plugin.loaded.resources.overlap(&other.loaded.resources).map(|(ours, theirs)| (other, ours, theirs))
        });
        match clash {
            Some((other, ours, theirs)) => {
                tracing::warn!(plugin = %plugin.manifest.name, other = %other.manifest.name, "plugin refused: its resources overlap another plugin's");
                plugins.remove(&plugin.manifest.name);
                refused.push(Refusal {
                    path: plugin.manifest_path.clone(),
                    reason: format!(
                        "resource `{ours}` of plugin `{}` overlaps resource `{theirs}` of plugin `{}` (loaded from {}): \
                         a URI must belong to one plugin",
                        plugin.manifest.name,
                        other.manifest.name,
                        other.manifest_path.display()
                    ),
                });
            }
            None => accepted.push(plugin),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_and_clashing_names_are_refused_with_a_reason() {
        assert_eq!(check_names("team", &["review", "plan"], &["architect", "critic"]), Ok(()));
        let twice = check_names("team", &["review"], &["architect", "architect"]).expect_err("duplicate persona");
        assert_eq!(twice, "persona `architect` is declared twice");
        let tool_twice = check_names("team", &["review", "review"], &[]).expect_err("duplicate tool");
        assert_eq!(tool_twice, "tool `review` is declared twice");
        let clash = check_names("team", &["review"], &["review"]).expect_err("persona named like a tool");
        assert!(clash.contains("persona `review` has the name of a tool"), "{clash}");
        let invalid = check_names("team", &["bad name"], &[]).expect_err("invalid");
        assert!(invalid.contains("is not a valid name"), "{invalid}");
    }
}
