//! Artifacts: the metadata table on both backends (one row per tenant and digest,
//! tenant-scoped, immutable, the export cache), the disk blob store (atomic writes,
//! verified reads), the S3 blob store against a fake S3-compatible server on 127.0.0.1,
//! and `GET /v1/artifacts/{sha256}` (bytes, content type, `ETag`, 404 across tenants).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use maestro_core::artifact::{Artifact, BlobError, ExportFormat, ExportOrigin, Sha256};
use maestro_core::ports::BlobStore;
use maestro_core::{StoreError, TenantId};
use maestro_host::artifacts::disk::DiskBlobs;
use maestro_host::artifacts::s3::{S3Blobs, S3Options};
use sqlx::Connection as _;

use crate::harness::{Backend, TestDb, TestHost, backend_tests};
use crate::storage_runs::{fresh, t0, tenant};

backend_tests!(
    an_artifact_row_is_kept_once_per_tenant_and_digest,
    artifacts_are_visible_only_to_their_tenant,
    the_export_cache_finds_a_tenants_artifact_for_a_document_version_and_format,
    artifact_rows_refuse_update,
    the_artifacts_route_serves_bytes_with_type_and_etag_and_hides_other_tenants,
);

fn artifact(tenant: &TenantId, bytes: &[u8], origin: Option<ExportOrigin>) -> Artifact {
    Artifact {
        sha256: Sha256::of(bytes),
        tenant_id: tenant.clone(),
        size: bytes.len() as u64,
        content_type: "application/pdf".into(),
        origin,
        created_at: t0(),
    }
}

fn origin(document: &str, version: i64, format: ExportFormat) -> ExportOrigin {
    ExportOrigin { document: document.into(), version, format }
}

async fn an_artifact_row_is_kept_once_per_tenant_and_digest(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let acme = tenant(&store, "acme").await;
    let first = artifact(&acme, b"%PDF-1.7 one", Some(origin("doc_1", 3, ExportFormat::Pdf)));
    assert_eq!(store.insert_artifact(&first).await.expect("insert"), first);

    // The same bytes again (another export, later): the first row stands.
    let mut again = artifact(&acme, b"%PDF-1.7 one", Some(origin("doc_2", 1, ExportFormat::Pdf)));
    again.created_at = first.created_at + chrono::Duration::seconds(5);
    assert_eq!(store.insert_artifact(&again).await.expect("insert again"), first);
    assert_eq!(store.artifact(&acme, &first.sha256).await.expect("read"), Some(first.clone()));

    // A row without an export origin round-trips too.
    let plain = artifact(&acme, b"plain", None);
    assert_eq!(store.insert_artifact(&plain).await.expect("insert plain"), plain);
    assert_eq!(store.artifact(&acme, &plain.sha256).await.expect("read plain"), Some(plain));

    // A row for a tenant that does not exist is refused.
    let ghost = artifact(&fresh(), b"ghost", None);
    assert!(matches!(store.insert_artifact(&ghost).await, Err(StoreError::NotFound(_))));
}

async fn artifacts_are_visible_only_to_their_tenant(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let (acme, globex) = (tenant(&store, "acme").await, tenant(&store, "globex").await);
    let mine = artifact(&acme, b"shared bytes", None);
    store.insert_artifact(&mine).await.expect("insert");
    assert_eq!(store.artifact(&globex, &mine.sha256).await.expect("read"), None);

    // The same bytes made by the other tenant are its own row.
    let theirs = artifact(&globex, b"shared bytes", Some(origin("doc_g", 1, ExportFormat::Html)));
    assert_eq!(store.insert_artifact(&theirs).await.expect("insert"), theirs);
    assert_eq!(store.artifact(&acme, &mine.sha256).await.expect("read"), Some(mine));
    assert_eq!(store.artifact(&globex, &theirs.sha256).await.expect("read"), Some(theirs));
}

async fn the_export_cache_finds_a_tenants_artifact_for_a_document_version_and_format(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let (acme, globex) = (tenant(&store, "acme").await, tenant(&store, "globex").await);
    let pdf = artifact(&acme, b"v2 pdf", Some(origin("doc_1", 2, ExportFormat::Pdf)));
    let html = artifact(&acme, b"v2 html", Some(origin("doc_1", 2, ExportFormat::Html)));
    store.insert_artifact(&pdf).await.expect("insert");
    store.insert_artifact(&html).await.expect("insert");

    let find = |tenant: TenantId, o: ExportOrigin| {
        let store = store.clone();
        async move { store.find_export(&tenant, &o).await.expect("find") }
    };
    assert_eq!(find(acme.clone(), origin("doc_1", 2, ExportFormat::Pdf)).await, Some(pdf));
    assert_eq!(find(acme.clone(), origin("doc_1", 2, ExportFormat::Html)).await, Some(html));
    assert_eq!(find(acme.clone(), origin("doc_1", 2, ExportFormat::Markdown)).await, None);
    assert_eq!(find(acme.clone(), origin("doc_1", 1, ExportFormat::Pdf)).await, None);
    assert_eq!(find(acme, origin("doc_2", 2, ExportFormat::Pdf)).await, None);
    assert_eq!(find(globex, origin("doc_1", 2, ExportFormat::Pdf)).await, None);
}

async fn raw_execute(db: &TestDb, backend: Backend, sql: &str) -> Result<u64, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&mut conn).await.map(|r| r.rows_affected())
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&mut conn).await.map(|r| r.rows_affected())
        }
    }
}

async fn artifact_rows_refuse_update(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let acme = tenant(&store, "acme").await;
    let kept = artifact(&acme, b"kept", None);
    store.insert_artifact(&kept).await.expect("insert");
    for sql in ["UPDATE artifacts SET size = 1", "UPDATE artifacts SET content_type = 'text/html'"] {
        let err = raw_execute(&db, backend, sql).await.expect_err(sql);
        assert!(err.to_string().contains("artifacts are immutable"), "{sql}: {err}");
    }
    assert_eq!(store.artifact(&acme, &kept.sha256).await.expect("read"), Some(kept));
}

/// Sends a GET and returns status, headers and the raw body.
async fn get_bytes(
    host: &TestHost,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    use tower::ServiceExt as _;
    let mut request = axum::http::Request::builder().method(Method::GET).uri(path);
    request = request.header("authorization", format!("Bearer {token}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response =
        host.router().oneshot(request.body(axum::body::Body::empty()).expect("request")).await.expect("infallible");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, headers, bytes.to_vec())
}

async fn the_artifacts_route_serves_bytes_with_type_and_etag_and_hides_other_tenants(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let acme = host.tenant_with_key(&platform, "acme", "viewer").await;
    let globex = host.tenant_with_key(&platform, "globex", "admin").await;
    let acme_id = host.accounts.tenant_named("acme").await.expect("acme").id;

    let bytes = b"<!DOCTYPE html><p>exported</p>".to_vec();
    let stored = host
        .artifacts
        .store(&acme_id, bytes.clone(), "text/html; charset=utf-8", Some(origin("doc_1", 1, ExportFormat::Html)))
        .await
        .expect("store");
    let path = format!("/v1/artifacts/{}", stored.sha256);

    let (status, headers, body) = get_bytes(&host, &path, &acme, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["etag"], format!("\"{}\"", stored.sha256).as_str());
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers["content-security-policy"].to_str().expect("ascii").contains("default-src 'none'"));

    let (status, _, body) =
        get_bytes(&host, &path, &acme, &[("if-none-match", &format!("\"{}\"", stored.sha256))]).await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));

    // Another tenant: 404, with or without If-None-Match; so is a malformed digest.
    for extra in [vec![], vec![("if-none-match", "*")]] {
        let (status, _, _) = get_bytes(&host, &path, &globex, &extra).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    for bad in ["abc", &stored.sha256.as_str().to_uppercase(), "..%2F..%2Fetc%2Fpasswd"] {
        let (status, _, _) = get_bytes(&host, &format!("/v1/artifacts/{bad}"), &acme, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    }
    // A platform key holds no artifacts; no key is 401.
    let (status, _, _) = get_bytes(&host, &path, &platform, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(host.get(&path, None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn disk_blobs_are_written_whole_and_read_back_verified() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blobs = DiskBlobs::new(dir.path().join("artifacts"));
    let bytes = b"%PDF-1.7 whole".to_vec();
    let sha = Sha256::of(&bytes);
    assert_eq!(blobs.get(&sha).await.expect("read missing"), None);

    blobs.put(&sha, bytes.clone()).await.expect("put");
    let path = blobs.path_of(&sha);
    assert_eq!(path, dir.path().join("artifacts").join(&sha.as_str()[..2]).join(sha.as_str()));
    assert_eq!(blobs.get(&sha).await.expect("read"), Some(bytes.clone()));
    blobs.put(&sha, bytes.clone()).await.expect("put again is a no-op");
    // No temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![sha.to_string()]);

    // A torn or edited file is refused, and the next put repairs it.
    std::fs::write(&path, b"%PDF-1.7 wh").expect("truncate");
    assert!(matches!(blobs.get(&sha).await, Err(BlobError::Corrupt(s)) if s == sha));
    blobs.put(&sha, bytes.clone()).await.expect("repair");
    assert_eq!(blobs.get(&sha).await.expect("read"), Some(bytes));
}

/// A fake S3-compatible server: path-style `PUT`, `GET` and `HEAD` of objects, with the
/// headers object_store reads (`ETag`, `Last-Modified`, `Content-Length`). It records
/// each request's method, path and whether it carried a SigV4 `Authorization` header.
#[derive(Debug, Clone, Default)]
struct FakeS3 {
    objects: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
}

/// A request the fake S3 server saw: method, object key, `Authorization` header.
type SeenRequest = (Method, String, Option<String>);

async fn fake_s3(
    State(s3): State<FakeS3>,
    method: Method,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    s3.requests.lock().expect("lock").push((method.clone(), key.clone(), authorization));
    let found = s3.objects.lock().expect("lock").get(&key).cloned();
    let etag = |bytes: &[u8]| format!("\"{}\"", &Sha256::of(bytes).as_str()[..32]);
    match (method, found) {
        (Method::PUT, _) => {
            let tag = etag(&body);
            s3.objects.lock().expect("lock").insert(key, body.to_vec());
            (StatusCode::OK, [("etag", tag)]).into_response()
        }
        (Method::GET | Method::HEAD, Some(bytes)) => {
            let headers = [
                ("etag", etag(&bytes)),
                ("last-modified", "Sun, 29 Nov 2026 02:30:00 GMT".to_owned()),
                ("content-length", bytes.len().to_string()),
                ("content-type", "application/octet-stream".to_owned()),
            ];
            (StatusCode::OK, headers, bytes).into_response()
        }
        (Method::GET | Method::HEAD, None) => (
            StatusCode::NOT_FOUND,
            [("content-type", "application/xml")],
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>not found</Message></Error>",
        )
            .into_response(),
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blobs_put_get_and_verify_through_a_fake_s3_compatible_server() {
    let s3 = FakeS3::default();
    let app = axum::Router::new().route("/{*key}", axum::routing::any(fake_s3)).with_state(s3.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let blobs = S3Blobs::new(S3Options {
        bucket: "exports".into(),
        endpoint: Some(format!("http://{address}")),
        region: "us-east-1".into(),
        allow_http: true,
        prefix: "artifacts/".into(),
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
    })
    .expect("client");
    assert!(!format!("{blobs:?}").contains("wJalrXUtnFEMI"), "{blobs:?}");

    let bytes = b"%PDF-1.7 in a bucket".to_vec();
    let sha = Sha256::of(&bytes);
    assert_eq!(blobs.get(&sha).await.expect("read missing"), None);
    blobs.put(&sha, bytes.clone()).await.expect("put");
    assert_eq!(blobs.get(&sha).await.expect("read"), Some(bytes.clone()));
    blobs.put(&sha, bytes.clone()).await.expect("put again");

    let key = format!("exports/artifacts/{sha}");
    assert_eq!(s3.objects.lock().expect("lock").get(&key), Some(&bytes));
    let requests = s3.requests.lock().expect("lock").clone();
    let methods: Vec<&Method> = requests.iter().map(|(m, _, _)| m).collect();
    // GET (missing), HEAD (missing) + PUT, GET, HEAD (present: no second PUT).
    assert_eq!(methods, vec![&Method::GET, &Method::HEAD, &Method::PUT, &Method::GET, &Method::HEAD], "{requests:?}");
    for (method, path, authorization) in &requests {
        assert_eq!(path, &key, "{method}");
        let authorization = authorization.as_deref().unwrap_or_else(|| panic!("{method} {path} is unsigned"));
        assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), "{authorization}");
        assert!(!authorization.contains("wJalrXUtnFEMI"), "the secret key never travels");
    }

    // An object whose bytes do not match its name is refused.
    s3.objects.lock().expect("lock").insert(key, b"tampered".to_vec());
    assert!(matches!(blobs.get(&sha).await, Err(BlobError::Corrupt(s)) if s == sha));
    server.abort();
}
