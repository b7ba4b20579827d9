//! Loads administrator policies from the policy directory and keeps them current.
//!
//! The files (`*.toml` directly in the directory, in name order) are compiled by
//! `maestro_core::policy` into one immutable [`PolicySet`] swapped behind an `Arc`. A
//! change that compiles takes effect at once; one that does not keeps the last good set
//! and logs every error with its file and line.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use maestro_core::policy::{PolicyErrors, PolicySet};

/// Why the policy directory could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The files do not compile.
    #[error("{0}")]
    Invalid(PolicyErrors),
}

/// The policy files of a directory: `*.toml` directly inside it, sorted by name.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyLoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyLoadError::Read { path: dir.to_owned(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and compiles a policy directory. File names in errors are as given (relative
/// to the working directory when `dir` is).
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyLoadError> {
    let files = policy_files(dir)?;
    let mut texts = Vec::with_capacity(files.len());
    for path in &files {
        let text =
            std::fs::read_to_string(path).map_err(|source| PolicyLoadError::Read { path: path.clone(), source })?;
        texts.push((path.display().to_string(), text));
    }
    PolicySet::parse(texts.iter().map(|(name, text)| (name.as_str(), text.as_str()))).map_err(PolicyLoadError::Invalid)
}

/// The current policy set, reloaded when its files change.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    current: RwLock<Arc<PolicySet>>,
    fingerprint: RwLock<Vec<(PathBuf, String)>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl PolicyStore {
    /// Loads `dir`. A directory that does not exist means "no policies": everything is
    /// denied. Files that do not compile are an error at start.
    pub fn open(dir: PathBuf) -> Result<Self, PolicyLoadError> {
        let set = if dir.exists() { load_dir(&dir)? } else { PolicySet::deny_all() };
        let fingerprint = fingerprint(&dir);
        Ok(Self {
            dir,
            current: RwLock::new(Arc::new(set)),
            fingerprint: RwLock::new(fingerprint),
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    /// A store holding `set`, never reloaded (tests, embedding).
    pub fn fixed(set: PolicySet) -> Self {
        Self {
            dir: PathBuf::new(),
            current: RwLock::new(Arc::new(set)),
            fingerprint: RwLock::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// The current set.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Notified after every successful reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Re-reads the directory if any file changed. Returns `Ok(true)` when a new set
    /// took effect, `Err` (and keeps the last good set) when the files do not compile.
    pub fn refresh(&self) -> Result<bool, PolicyLoadError> {
        let now = fingerprint(&self.dir);
        if *self.fingerprint.read().unwrap_or_else(std::sync::PoisonError::into_inner) == now {
            return Ok(false);
        }
        *self.fingerprint.write().unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        let set = if self.dir.exists() { load_dir(&self.dir)? } else { PolicySet::deny_all() };
        let (grants, denies) = set.rule_counts();
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
        self.changes.send_modify(|generation| *generation += 1);
        tracing::info!(dir = %self.dir.display(), grants, denies, "policies reloaded");
        Ok(true)
    }

    /// Polls for changes every `interval` until the store is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        crate::poll::every(self, interval, |store| async move {
            if let Err(err) = store.refresh() {
                tracing::error!(dir = %store.dir.display(), errors = %err, "policy change rejected; keeping the last good policies");
            }
        })
    }
}

/// The files and a hash of their contents (policy files are small; a content hash
/// notices every edit, however quick).
fn fingerprint(dir: &Path) -> Vec<(PathBuf, String)> {
    policy_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let hash = std::fs::read(&path).map(|bytes| crate::plugins::sha256_hex(&bytes)).unwrap_or_default();
            (path, hash)
        })
        .collect()
}
