//! Artifacts: immutable files Maestro produced for a tenant (document exports first),
//! addressed by the SHA-256 of their bytes.
//!
//! The bytes live once in a blob store ([`crate::ports::BlobStore`]: a directory under
//! the data dir, or an S3-compatible bucket), shared by every tenant that produced the
//! same bytes; what a tenant may see is its metadata rows
//! ([`crate::ports::ArtifactStore`]): one per tenant and digest.

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256 as Hasher};

use crate::id::TenantId;

/// A SHA-256 digest as 64 lowercase hexadecimal characters: an artifact's address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(String);

/// A string that is not a SHA-256 digest in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a sha256 digest: expected 64 lowercase hexadecimal characters")]
pub struct InvalidSha256;

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Hasher::digest(bytes)))
    }

    /// Parses 64 lowercase hex characters (uppercase is refused, so one artifact has one
    /// address).
    pub fn parse(text: &str) -> Result<Self, InvalidSha256> {
        if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidSha256)
        }
    }

    /// The digest as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.0)
    }
}

/// The formats a document exports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// Markdown (`text/markdown`).
    Markdown,
    /// A standalone HTML page.
    Html,
    /// A typeset PDF.
    Pdf,
}

impl ExportFormat {
    /// Every format, in the order the API lists them.
    pub const ALL: [ExportFormat; 3] = [ExportFormat::Markdown, ExportFormat::Html, ExportFormat::Pdf];

    /// The name in `?format=` and in stored rows: `md`, `html`, `pdf`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Markdown => "md",
            ExportFormat::Html => "html",
            ExportFormat::Pdf => "pdf",
        }
    }

    /// Parses `md`, `html` or `pdf`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Markdown => "text/markdown; charset=utf-8",
            ExportFormat::Html => "text/html; charset=utf-8",
            ExportFormat::Pdf => "application/pdf",
        }
    }

    /// The file extension (without the dot).
    pub fn extension(self) -> &'static str {
        self.as_str()
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an artifact came from: the export of one version of a document in a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOrigin {
    /// The document's id.
    pub document: String,
    /// The exported version.
    pub version: i64,
    /// The format.
    pub format: ExportFormat,
}

/// A tenant's artifact: the metadata row; the bytes are in the blob store under
/// [`Artifact::sha256`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The SHA-256 of the bytes.
    pub sha256: Sha256,
    /// The tenant that produced it.
    pub tenant_id: TenantId,
    /// Size in bytes.
    pub size: u64,
    /// The `Content-Type` it is served with.
    pub content_type: String,
    /// The export it is, when it is one.
    pub origin: Option<ExportOrigin>,
    /// When the tenant first produced it (milliseconds).
    pub created_at: DateTime<Utc>,
}

/// What can go wrong in a blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes stored under a digest do not hash to it (a torn or tampered file).
    #[error("blob {0} is corrupt: its bytes do not match its digest")]
    Corrupt(Sha256),
    /// The store failed (disk, network, the object store's answer).
    #[error("blob store failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lowercase_hex_of_the_bytes() {
        let empty = Sha256::of(b"");
        assert_eq!(empty.as_str(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Sha256::parse(empty.as_str()), Ok(empty.clone()));
        assert_eq!(Sha256::parse(&empty.as_str().to_uppercase()), Err(InvalidSha256));
        assert_eq!(Sha256::parse("abc"), Err(InvalidSha256));
        assert_eq!(Sha256::parse(&"g".repeat(64)), Err(InvalidSha256));
        assert_eq!(Sha256::parse(&format!("../{}", &empty.as_str()[3..])), Err(InvalidSha256));
    }

    #[test]
    fn formats_round_trip_their_names() {
        for format in ExportFormat::ALL {
            assert_eq!(ExportFormat::parse(format.as_str()), Some(format));
        }
        assert_eq!(ExportFormat::parse("PDF"), None);
        assert_eq!(ExportFormat::parse("docx"), None);
    }
}
