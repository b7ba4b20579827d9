//! `maestro index status|rebuild|ids`: the full-text index of this data directory.
//!
//! `status` reads the index without its writer (safe beside a running server): the
//! documents searchable, the watermark in the last commit against the outbox's head,
//! the last commit's time and the directory's size. `rebuild` rebuilds offline when no
//! server holds the index (it takes the writer, reads every message and current
//! document from the store, commits); when a server on this data directory holds it,
//! it leaves a request file in the index directory that the server's indexer picks up
//! within a poll interval and rebuilds while it keeps answering from the old commit.
//! `ids` lists every object the last commit holds (kind, id, tenant, a sha256 of its
//! title and text), to compare with the database after a crash or a rebuild.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::search::{Access, FullText, REBUILD_REQUEST, SearchError};

/// `maestro index …`.
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Documents indexed, watermark against the outbox head, last commit, size.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the index from the database: offline when no server holds it, else by
    /// asking the running server (on this data directory) to rebuild.
    Rebuild,
    /// Every object the index holds (kind, id, tenant, and a sha256 of its title and
    /// text), one per line or as JSON: to compare with the database.
    Ids {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an index command.
pub(super) async fn run(command: IndexCommand, config: &Config) -> anyhow::Result<()> {
    let store = super::open_store(config).await?;
    let clock: Arc<dyn maestro_core::Clock> = Arc::new(crate::accounts::SystemClock);
    match command {
        IndexCommand::Status { json } => {
            let (status, size) = read_retrying(|| async {
                let index = FullText::open(config.search.clone(), store.clone(), clock.clone(), Access::Read)
                    .with_context(|| format!("cannot read the search index in {}", config.search.dir.display()))?;
                Ok((index.status(), index.size_bytes()))
            })
            .await?;
            let outbox = store.outbox_status(status.watermark.unwrap_or_default()).await?;
            let behind_prune = status.watermark.is_none_or(|w| w < outbox.pruned_through);
            if json {
                let value = json!({
                    "dir": config.search.dir,
                    "docs": status.docs,
                    "watermark": status.watermark.map(|w| w.to_string()),
                    "outbox_head": outbox.head.map(|h| h.to_string()),
                    "pending": outbox.pending,
                    "pruned_through": outbox.pruned_through.to_string(),
                    "needs_rebuild": behind_prune,
                    "last_commit": status.last_commit,
                    "size_bytes": size,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
                println!("index:        {}", config.search.dir.display());
                println!("documents:    {}", status.docs);
                println!("watermark:    {}", or_none(status.watermark.map(|w| w.to_string())));
                println!("outbox head:  {} ({} pending)", or_none(outbox.head.map(|h| h.to_string())), outbox.pending);
                println!("last commit:  {}", or_none(status.last_commit.map(|t| t.to_rfc3339())));
                println!("size:         {} bytes", size);
                if behind_prune {
                    println!("the index will be rebuilt from the database when the server starts");
                }
            }
            Ok(())
        }
        IndexCommand::Rebuild => {
            match FullText::open(config.search.clone(), store, clock, Access::Write) {
                Ok(index) => {
                    let started = std::time::Instant::now();
                    let docs = index.rebuild().await?;
                    println!("rebuilt the index: {docs} documents in {:.1?}", started.elapsed());
                }
                Err(SearchError::Locked(dir)) => {
                    std::fs::write(dir.join(REBUILD_REQUEST), b"")
                        .with_context(|| format!("cannot write the rebuild request in {}", dir.display()))?;
                    println!(
                        "a running server holds the index; it rebuilds within a poll interval \
                         (follow with `maestro index status`)"
                    );
                }
                Err(err) => return Err(err).context("cannot open the search index"),
            }
            Ok(())
        }
        IndexCommand::Ids { json } => {
            let objects = read_retrying(|| async {
                let index = FullText::open(config.search.clone(), store.clone(), clock.clone(), Access::Read)
                    .with_context(|| format!("cannot read the search index in {}", config.search.dir.display()))?;
                Ok(index.indexed_objects().await?)
            })
            .await?;
            let rows: Vec<_> = objects
                .iter()
                .map(|o| {
                    let digest = content_digest(&o.title, &o.text);
                    (o.kind.as_str(), o.id.as_str(), o.tenant.as_str(), digest)
                })
                .collect();
            if json {
                let value: Vec<_> = rows
                    .iter()
                    .map(|(kind, id, tenant, digest)| json!({ "kind": kind, "id": id, "tenant": tenant, "sha256": digest }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                for (kind, id, tenant, digest) in rows {
                    println!("{kind}\t{id}\t{tenant}\t{digest}");
                }
            }
            Ok(())
        }
    }
}

/// Reads of the index made before giving up.
const READ_ATTEMPTS: u32 = 5;
/// The pause after the first failed read; it doubles after each (50 + 100 + 200 + 400 ms
/// in all at most).
const READ_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// `read` (open a reader and read through it), tried again with a growing pause when it
/// fails, up to [`READ_ATTEMPTS`] times: beside a running server, a reader can open a
/// commit whose files the writer deletes as it replaces that commit, and fail; a fresh
/// reader then opens the new commit. Any other failure is reported after the last try.
async fn read_retrying<T, F, Fut>(mut read: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut pause = READ_BACKOFF;
    let mut attempt = 1;
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt < READ_ATTEMPTS => {
                tracing::debug!(error = %format!("{err:#}"), attempt, "reading the index failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// The sha256 (hex) of an object's title and text as `maestro index ids` prints it:
/// `title`, a NUL, `text`.
fn content_digest(title: &str, text: &str) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(title.as_bytes());
    hash.update([0u8]);
    hash.update(text.as_bytes());
    hex::encode(hash.finalize())
}
