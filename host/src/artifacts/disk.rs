//! Blobs on the local disk: `<root>/<first two hex digits>/<sha256>`.
//!
//! A blob is written to a temporary file beside its final name, flushed to disk
//! (`fsync`), renamed into place, and its directory synced, so a reader sees either no
//! file or the whole one. Reads hash the bytes and refuse a file that does not match its
//! name (a disk that lost a write, a file edited by hand).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use maestro_core::artifact::{BlobError, Sha256};
use maestro_core::ports::BlobStore;

/// Blobs under a directory (by default `<data_dir>/artifacts`).
#[derive(Debug)]
pub struct DiskBlobs {
    root: PathBuf,
    /// Distinguishes this process's temporary files from each other.
    counter: AtomicU64,
}

impl DiskBlobs {
    /// Blobs under `root` (created when the first blob is written).
    pub fn new(root: PathBuf) -> Self {
        Self { root, counter: AtomicU64::new(0) }
    }

    /// Where the blob with this digest lives.
    pub fn path_of(&self, sha256: &Sha256) -> PathBuf {
        let hex = sha256.as_str();
        self.root.join(&hex[..2]).join(hex)
    }
}

fn backend(err: std::io::Error) -> BlobError {
    BlobError::Backend(Box::new(err))
}

/// Reads and verifies a blob; `None` when there is no file.
fn read_verified(path: &Path, sha256: &Sha256) -> Result<Option<Vec<u8>>, BlobError> {
    match std::fs::read(path) {
        Ok(bytes) if Sha256::of(&bytes) == *sha256 => Ok(Some(bytes)),
        Ok(_) => Err(BlobError::Corrupt(sha256.clone())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(backend(err)),
    }
}

fn write_atomically(dir: &Path, path: &Path, temp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(temp, path)?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    result
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work).await.map_err(|err| BlobError::Backend(Box::new(err)))?
}

#[async_trait]
impl BlobStore for DiskBlobs {
    fn kind(&self) -> &'static str {
        "disk"
    }

    async fn put(&self, sha256: &Sha256, bytes: Vec<u8>) -> Result<(), BlobError> {
        let path = self.path_of(sha256);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        let temp = dir.join(format!(
            ".{}.{}.{}.tmp",
            sha256.as_str(),
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let sha256 = sha256.clone();
        blocking(move || {
            // A whole, verified copy is already there: content addressing makes it ours.
            match read_verified(&path, &sha256) {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                // A corrupt copy is replaced by the good bytes.
                Err(BlobError::Corrupt(_)) => tracing::warn!(sha256 = %sha256, "replacing a corrupt blob"),
                Err(err) => return Err(err),
            }
            write_atomically(&dir, &path, &temp, &bytes).map_err(backend)
        })
        .await
    }

    async fn get(&self, sha256: &Sha256) -> Result<Option<Vec<u8>>, BlobError> {
        let (path, sha256) = (self.path_of(sha256), sha256.clone());
        blocking(move || read_verified(&path, &sha256)).await
    }
}
