//! Secret values, read by the host: `env:VAR` from the environment `main` read once,
//! `file:KEY` from a file named KEY in the secrets directory. A file is read once and
//! then trusted for [`FILE_TTL`]; after that it is checked by modification time and
//! size, and read again only when it changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use maestro_core::policy::SecretSource;

use crate::config::Env;

/// How long a secret file's value is used without looking at the file again.
const FILE_TTL: Duration = Duration::from_secs(2);

/// Secret values from the environment and the secrets directory.
#[derive(Clone)]
pub struct SecretValues {
    env: Arc<Env>,
    dir: PathBuf,
    files: Arc<Mutex<HashMap<String, CachedFile>>>,
}

/// A secret file as last read.
struct CachedFile {
    value: Option<String>,
    /// Modification time and size when read (`None`: the file was missing).
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValues").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl SecretValues {
    /// Secrets from `env` and files in `dir`.
    pub fn new(env: Env, dir: PathBuf) -> Self {
        Self { env: Arc::new(env), dir, files: Arc::default() }
    }

    /// The value of a secret, if this host has it.
    pub(crate) fn get(&self, source: &SecretSource) -> Option<String> {
        self.get_at(source, Instant::now())
    }

    fn get_at(&self, source: &SecretSource, now: Instant) -> Option<String> {
        match source {
            SecretSource::Env(var) => self.env.get(var).filter(|v| !v.is_empty()).cloned(),
            SecretSource::File(key) => {
                let valid = !key.is_empty()
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
                    && !key.starts_with('.');
                if !valid {
                    return None;
                }
                self.file(key, now)
            }
        }
    }

    fn file(&self, key: &str, now: Instant) -> Option<String> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = files.get_mut(key) {
            if now.saturating_duration_since(cached.checked) < FILE_TTL {
                return cached.value.clone();
            }
            let stamp = stamp(&self.dir.join(key));
            if stamp.is_some() && stamp == cached.stamp {
                cached.checked = now;
                return cached.value.clone();
            }
        }
        let path = self.dir.join(key);
        let stamp = stamp(&path);
        let value = std::fs::read_to_string(&path).ok().map(|v| v.trim_end_matches(['\n', '\r']).to_owned());
        files.insert(key.to_owned(), CachedFile { value: value.clone(), stamp, checked: now });
        value
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_once_per_ttl_and_again_after_it_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("token"), "first\n").expect("write");
        let secrets = SecretValues::new(Env::default(), dir.path().to_owned());
        let source = SecretSource::File("token".into());
        let start = Instant::now();
        assert_eq!(secrets.get_at(&source, start).as_deref(), Some("first"));

        // Within the TTL the file is not read again, even though it changed.
        std::fs::write(dir.path().join("token"), "second, longer\n").expect("rewrite");
        assert_eq!(secrets.get_at(&source, start + Duration::from_millis(500)).as_deref(), Some("first"));
        // After the TTL the change (size and mtime) is seen.
        assert_eq!(secrets.get_at(&source, start + FILE_TTL * 2).as_deref(), Some("second, longer"));

        std::fs::remove_file(dir.path().join("token")).expect("remove");
        assert_eq!(secrets.get_at(&source, start + FILE_TTL * 4), None, "a removed secret is gone");
    }

    #[test]
    fn secret_keys_cannot_leave_the_secrets_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secrets = SecretValues::new(Env::default(), dir.path().join("secrets"));
        for key in ["../etc/passwd", ".hidden", "", "a/b"] {
            assert_eq!(secrets.get(&SecretSource::File(key.into())), None, "{key}");
        }
    }
}
