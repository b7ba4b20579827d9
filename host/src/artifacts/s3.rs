//! Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, …) through the
//! `object_store` crate: object `<prefix><sha256>`. A `PUT` is atomic on these stores
//! (an object is visible whole or not at all); reads hash the bytes all the same.
//!
//! object_store signs the requests (SigV4, with `ring`) and sends them through
//! [`OutboundConnector`], the host's one outbound client: no second HTTP and TLS stack
//! (object_store's own is reqwest over rustls with aws-lc, a C build of minutes). The
//! client reaches only the bucket's origin — the configured endpoint, which may be a
//! private address (a MinIO beside Maestro: the operator's, not a tenant's), or AWS's
//! public `https://s3.<region>.amazonaws.com` — and connects to the address it checked.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::artifact::{BlobError, Sha256};
use maestro_core::ports::BlobStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpResponseBody, HttpService,
};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStoreExt as _, PutPayload};

use crate::outbound::{NetPolicy, NetRule, OutboundClient, OutboundError};

/// Largest object sent or read in one request.
const MAX_OBJECT_BYTES: u64 = 256 << 20;

/// Longest one request may take, its body included (object_store retries failures).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Kept-alive connections to the bucket.
const MAX_IDLE_CONNECTIONS: usize = 8;

/// object_store's HTTP seam onto [`OutboundClient`]: one pooled client allowed to reach
/// the bucket's origin only.
#[derive(Debug, Clone)]
pub struct OutboundConnector {
    client: OutboundClient,
}

impl OutboundConnector {
    /// A connector for the bucket at `origin` (`scheme://host[:port]`); `allow_private`
    /// lets it be a loopback or private address.
    pub fn new(origin: &str, allow_private: bool) -> Result<Self, BlobError> {
        let rule = NetRule::parse(origin, allow_private, "artifacts.endpoint")
            .map_err(|reason| BlobError::Backend(format!("invalid s3 endpoint {origin}: {reason}").into()))?;
        let policy = NetPolicy {
            max_request_bytes: MAX_OBJECT_BYTES,
            max_response_bytes: MAX_OBJECT_BYTES,
            request_timeout: REQUEST_TIMEOUT,
            ..NetPolicy::allowing(vec![rule])
        };
        Ok(Self { client: OutboundClient::pooled("s3", Arc::new(policy), MAX_IDLE_CONNECTIONS) })
    }
}

impl HttpConnector for OutboundConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.clone()))
    }
}

#[async_trait]
impl HttpService for OutboundConnector {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = self.client.send_body(request).await.map_err(http_error)?;
        Ok(response.map(HttpResponseBody::from))
    }
}

/// The outbound client's failure as object_store classifies it (connection and timeout
/// failures are retried, a refusal is not).
fn http_error(err: OutboundError) -> HttpError {
    let kind = match &err {
        OutboundError::Connect(_) | OutboundError::Tls(_) => HttpErrorKind::Connect,
        OutboundError::Timeout(_) | OutboundError::ReadTimeout(_) => HttpErrorKind::Timeout,
        OutboundError::Protocol(_) => HttpErrorKind::Request,
        OutboundError::Body(_) => HttpErrorKind::Interrupted,
        _ => HttpErrorKind::Unknown,
    };
    HttpError::new(kind, err)
}

/// `scheme://host[:port]` of an http(s) URL (the path dropped).
fn origin_of(url: &str) -> &str {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    match url[authority_start..].find('/') {
        Some(end) => &url[..authority_start + end],
        None => url,
    }
}

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
        let connector = match &options.endpoint {
            Some(endpoint) => OutboundConnector::new(origin_of(endpoint), true)?,
            None => OutboundConnector::new(&format!("https://s3.{}.amazonaws.com", options.region), false)?,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_allow_http(options.allow_http)
            .with_access_key_id(&options.access_key_id)
            .with_secret_access_key(&options.secret_access_key)
            .with_http_connector(connector);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connector_reaches_the_endpoint_origin_only() {
        assert_eq!(origin_of("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(origin_of("https://minio.internal:9000/s3"), "https://minio.internal:9000");
        assert_eq!(origin_of("https://s3.eu-west-1.amazonaws.com"), "https://s3.eu-west-1.amazonaws.com");
        assert!(OutboundConnector::new("http://minio:9000", true).is_ok(), "a private endpoint is the operator's");
        assert!(OutboundConnector::new("https://s3.eu-west-1.amazonaws.com", false).is_ok());
        assert!(OutboundConnector::new("https://s3.eu west.amazonaws.com", false).is_err(), "a bad region");
    }
}
