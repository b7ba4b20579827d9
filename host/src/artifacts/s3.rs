//! Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, …) through the
//! `object_store` crate: object `<prefix><sha256>`. A `PUT` is atomic on these stores
//! (an object is visible whole or not at all); reads hash the bytes all the same.

use async_trait::async_trait;
use maestro_core::artifact::{BlobError, Sha256};
use maestro_core::ports::BlobStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt as _, PutPayload};

/// Where the bucket is and how to reach it; the credentials are already read from their
/// `env:`/`file:` sources (never from the config file).
pub struct S3Options {
    /// The bucket.
    pub bucket: String,
    /// The endpoint (`https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`);
    /// `None`: AWS's for the region.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// Whether a plain `http://` endpoint is allowed (local MinIO, tests).
    pub allow_http: bool,
    /// Key prefix inside the bucket (e.g. `artifacts/`).
    pub prefix: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("prefix", &self.prefix)
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Blobs in a bucket.
#[derive(Debug)]
pub struct S3Blobs {
    store: AmazonS3,
    prefix: String,
}

fn backend(err: object_store::Error) -> BlobError {
    BlobError::Backend(Box::new(err))
}

impl S3Blobs {
    /// A client of the bucket (no request is sent until the first blob is).
    pub fn new(options: S3Options) -> Result<Self, BlobError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_allow_http(options.allow_http)
            .with_access_key_id(&options.access_key_id)
            .with_secret_access_key(&options.secret_access_key);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        Ok(Self { store: builder.build().map_err(backend)?, prefix: options.prefix })
    }

    fn location(&self, sha256: &Sha256) -> ObjectPath {
        ObjectPath::from(format!("{}{}", self.prefix, sha256.as_str()))
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, sha256: &Sha256, bytes: Vec<u8>) -> Result<(), BlobError> {
        let location = self.location(sha256);
        match self.store.head(&location).await {
            Ok(meta) if meta.size == bytes.len() as u64 => return Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => return Err(backend(err)),
        }
        self.store.put(&location, PutPayload::from(bytes)).await.map_err(backend)?;
        Ok(())
    }

    async fn get(&self, sha256: &Sha256) -> Result<Option<Vec<u8>>, BlobError> {
        let result = match self.store.get(&self.location(sha256)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(backend(err)),
        };
        let bytes = result.bytes().await.map_err(backend)?;
        if Sha256::of(&bytes) != *sha256 {
            return Err(BlobError::Corrupt(sha256.clone()));
        }
        Ok(Some(bytes.to_vec()))
    }
}
