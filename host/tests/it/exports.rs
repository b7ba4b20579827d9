//! Document exports: the PDF opens in a real renderer (poppler's `pdftoppm` draws page 1
//! with ink on it, `pdftotext` finds the title there, `pdfinfo` reads it from the
//! metadata), the same version always gives the same bytes, a document's text cannot
//! drive the typesetter, and exports are stored as artifacts and reused.
//!
//! poppler-utils must be installed (`scripts/test` installs it); these tests fail, never
//! skip, without it.

use std::path::Path;
use std::process::Command;

use axum::http::{HeaderMap, Method, StatusCode};
use chrono::{DateTime, Utc};
use maestro_core::artifact::{ExportFormat, ExportOrigin, Sha256};
use maestro_host::export::{self, ExportSource, SourceKind};

use crate::harness::{Backend, TestHost, backend_tests};

backend_tests!(
    an_export_is_stored_as_an_artifact_and_reused_for_the_same_version,
    the_export_route_answers_each_version_in_each_format_as_a_stored_artifact,
);

/// Runs a poppler tool; a missing tool fails the test with how to install it.
fn poppler(tool: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|err| {
        panic!(
            "cannot run {tool} ({err}): the PDF export tests need poppler-utils \
             (apt-get install -y --no-install-recommends poppler-utils; scripts/test installs it)"
        )
    });
    assert!(output.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn version_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-29T02:30:00.123Z").expect("time").with_timezone(&Utc)
}

const TITLE: &str = "Quarterly plan — Q3 «draft»";

fn plan() -> ExportSource {
    ExportSource {
        title: TITLE.into(),
        kind: SourceKind::Markdown,
        content: "Intro paragraph with *emphasis*, **strong** text, `inline code` and a \
                  [link](https://example.com/plan).\n\n\
                  ## Goals\n\n\
                  1. Ship exports\n2. Keep every version\n   - nested point\n\n\
                  | Area | Owner | Due |\n|:-----|:-----:|----:|\n| Docs | Ada | 2026-12-01 |\n| PDF | Lin | 2026-12-15 |\n\n\
                  ```rust\nfn main() { println!(\"hi\"); }\n```\n\n\
                  > A quoted remark.\n\n\
                  Unicode: naïve café, Ελληνικά, Кириллица.\n\n\
                  Hostile text:\n\n\
                  - #set page(width: 1pt)\n\
                  - #read(\"/etc/passwd\")\n\
                  - $x^2$\n\
                  - <script>alert(1)</script>\n\
                  - [bad](javascript:alert(1))\n"
            .into(),
        created_at: version_time(),
    }
}

/// The PNG's pixels as 8-bit samples, and the number of channels.
fn decode_png(path: &Path) -> (png::OutputInfo, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("open png")));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut pixels).expect("a PNG frame");
    pixels.truncate(info.buffer_size());
    (info, pixels)
}

#[test]
fn a_pdf_export_renders_in_poppler_with_its_title_on_page_one() {
    let pdf = export::render(&plan(), ExportFormat::Pdf).expect("render");
    assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plan.pdf");
    std::fs::write(&file, &pdf).expect("write");
    let file_arg = file.to_str().expect("utf-8 path");

    // Page 1 drawn at 50 dpi: a PNG with ink on it.
    let prefix = dir.path().join("page");
    poppler("pdftoppm", &["-r", "50", "-png", "-f", "1", "-l", "1", file_arg, prefix.to_str().expect("utf-8")]);
    let page = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .expect("pdftoppm wrote a PNG");
    let (info, pixels) = decode_png(&page);
    // A4 at 50 dpi is about 413 × 585 pixels.
    assert!((400..430).contains(&info.width) && (570..600).contains(&info.height), "{}x{}", info.width, info.height);
    let dark = pixels.iter().filter(|&&sample| sample < 128).count();
    assert!(dark > 500, "page 1 is blank: {dark} dark samples");

    // The title is on page 1 (as text) and in the metadata.
    let text = String::from_utf8(poppler("pdftotext", &["-f", "1", "-l", "1", file_arg, "-"]).stdout).expect("utf-8");
    assert!(text.contains(TITLE), "page 1 does not show the title:\n{text}");
    for expected in ["Goals", "Ship exports", "nested point", "Owner", "println!", "naïve café", "Ελληνικά"] {
        assert!(text.contains(expected), "page 1 lacks {expected:?}:\n{text}");
    }
    // The document's text was typeset, not run: the hostile markup shows literally.
    for literal in ["#set page(width: 1pt)", "#read(\"/etc/passwd\")", "$x^2$", "<script>alert(1)</script>"] {
        assert!(text.contains(literal), "page 1 lacks the literal {literal:?}:\n{text}");
    }
    let info = String::from_utf8(poppler("pdfinfo", &[file_arg]).stdout).expect("utf-8");
    assert!(info.lines().any(|l| l.starts_with("Title:") && l.ends_with(TITLE)), "{info}");
    assert!(info.contains("Pages:"), "{info}");
}

#[test]
fn the_same_version_always_exports_to_the_same_bytes() {
    for format in ExportFormat::ALL {
        let first = export::render(&plan(), format).expect("render");
        let second = export::render(&plan(), format).expect("render again");
        assert_eq!(Sha256::of(&first), Sha256::of(&second), "{format} is not deterministic");
    }
    // The PDF's creation date is the version's time: another time, other bytes.
    let mut later = plan();
    later.created_at = version_time() + chrono::Duration::days(1);
    let pdf = export::render(&plan(), ExportFormat::Pdf).expect("render");
    assert_ne!(Sha256::of(&pdf), Sha256::of(&export::render(&later, ExportFormat::Pdf).expect("render")));
}

#[test]
fn a_json_document_exports_as_a_fenced_block_in_every_format() {
    let source = ExportSource {
        title: "Config".into(),
        kind: SourceKind::Json,
        content: r#"{"name":"maestro","tags":["a","<b>"]}"#.into(),
        created_at: version_time(),
    };
    let md = String::from_utf8(export::render(&source, ExportFormat::Markdown).expect("md")).expect("utf-8");
    assert!(md.starts_with("# Config\n\n```json\n{\n  \"name\": \"maestro\""), "{md}");
    let html = String::from_utf8(export::render(&source, ExportFormat::Html).expect("html")).expect("utf-8");
    assert!(html.contains("<pre><code class=\"language-json\">"), "{html}");
    assert!(html.contains("&lt;b&gt;") && !html.contains("<b>"), "{html}");
    let pdf = export::render(&source, ExportFormat::Pdf).expect("pdf");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("config.pdf");
    std::fs::write(&file, pdf).expect("write");
    let text = String::from_utf8(poppler("pdftotext", &[file.to_str().expect("utf-8"), "-"]).stdout).expect("utf-8");
    assert!(text.contains("Config") && text.contains("\"name\": \"maestro\""), "{text}");
}

async fn an_export_is_stored_as_an_artifact_and_reused_for_the_same_version(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    host.tenant_with_key(&platform, "acme", "member").await;
    host.tenant_with_key(&platform, "globex", "member").await;
    let acme = host.accounts.tenant_named("acme").await.expect("acme").id;
    let globex = host.accounts.tenant_named("globex").await.expect("globex").id;
    let origin = ExportOrigin { document: "doc_plan".into(), version: 4, format: ExportFormat::Pdf };

    let (first, bytes) = host.artifacts.export(&acme, origin.clone(), plan()).await.expect("export");
    assert_eq!(first.sha256, Sha256::of(&bytes));
    assert_eq!((first.size, first.content_type.as_str()), (bytes.len() as u64, "application/pdf"));
    assert_eq!(first.origin.as_ref(), Some(&origin));

    // The same version again: the stored artifact, not a new rendering (its source here
    // differs, so a rendering would change the digest).
    host.clock.advance(chrono::Duration::seconds(30));
    let mut edited = plan();
    edited.content.push_str("\nA line added later.\n");
    let (again, again_bytes) = host.artifacts.export(&acme, origin.clone(), edited.clone()).await.expect("export");
    assert_eq!((again, again_bytes), (first.clone(), bytes.clone()));

    // Another tenant exporting its own document renders and gets its own row.
    let (theirs, _) = host.artifacts.export(&globex, origin.clone(), edited).await.expect("export");
    assert_ne!(theirs.sha256, first.sha256);
    assert!(matches!(
        host.artifacts.open(&globex, &first.sha256).await,
        Err(maestro_host::artifacts::ArtifactError::NotFound)
    ));
    let (opened, opened_bytes) = host.artifacts.open(&acme, &first.sha256).await.expect("open");
    assert_eq!((opened, opened_bytes), (first, bytes));
}

/// Sends a GET and returns status, headers and the raw body.
async fn get_bytes(host: &TestHost, path: &str, token: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
    use tower::ServiceExt as _;
    let request = axum::http::Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .expect("request");
    let response = host.router().oneshot(request).await.expect("infallible");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, headers, bytes.to_vec())
}

async fn the_export_route_answers_each_version_in_each_format_as_a_stored_artifact(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let member = host.tenant_with_key(&platform, "acme", "member").await;
    let viewer = host.tenant_with_key(&platform, "acme", "viewer").await;
    let other = host.tenant_with_key(&platform, "globex", "admin").await;
    let created = host
        .post(
            "/v1/documents",
            Some(&member),
            serde_json::json!({ "title": "Launch plan: v1/v2", "kind": "markdown", "content": "First *draft*.\n" }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_str().expect("id").to_owned();
    let put = host
        .send_raw(
            Method::PUT,
            &format!("/v1/documents/{id}"),
            Some(&member),
            Some((
                "application/json",
                serde_json::json!({ "content": "# Launch plan: v1/v2\n\nSecond draft.\n" }).to_string().into_bytes(),
            )),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");

    // The current version (2) as PDF, by a viewer.
    let (status, headers, pdf) = get_bytes(&host, &format!("/v1/documents/{id}/export?format=pdf"), &viewer).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&pdf));
    assert!(pdf.starts_with(b"%PDF-"));
    let sha = Sha256::of(&pdf);
    assert_eq!(headers["content-type"], "application/pdf");
    assert_eq!(headers["content-disposition"], "attachment; filename=\"Launch-plan-v1-v2.pdf\"");
    assert_eq!(headers["x-artifact-sha256"], sha.as_str());
    assert_eq!(headers["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(headers["link"], format!("</v1/artifacts/{sha}>; rel=\"alternate\"").as_str());
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("export.pdf");
    std::fs::write(&file, &pdf).expect("write");
    let text =
        String::from_utf8(poppler("pdftotext", &["-f", "1", "-l", "1", file.to_str().expect("utf-8"), "-"]).stdout)
            .expect("utf-8");
    assert!(text.contains("Launch plan: v1/v2") && text.contains("Second draft."), "{text}");

    // Again: the same artifact; and the artifact route serves the same bytes.
    let (_, again_headers, again) =
        get_bytes(&host, &format!("/v1/documents/{id}/export?format=pdf&version=2"), &member).await;
    assert_eq!(
        (Sha256::of(&again), again_headers["x-artifact-sha256"].clone()),
        (sha.clone(), headers["x-artifact-sha256"].clone())
    );
    let (status, _, stored) = get_bytes(&host, &format!("/v1/artifacts/{sha}"), &viewer).await;
    assert_eq!((status, Sha256::of(&stored)), (StatusCode::OK, sha.clone()));

    // Version 1 in Markdown (no heading: the title is added) and HTML.
    let (status, headers, md) =
        get_bytes(&host, &format!("/v1/documents/{id}/export?format=md&version=1"), &viewer).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/markdown; charset=utf-8");
    assert_eq!(String::from_utf8(md).expect("utf-8"), "# Launch plan: v1/v2\n\nFirst *draft*.\n");
    let (status, headers, html) =
        get_bytes(&host, &format!("/v1/documents/{id}/export?format=html&version=1"), &viewer).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(headers["content-security-policy"].to_str().expect("ascii").contains("default-src 'none'"));
    assert!(String::from_utf8(html).expect("utf-8").contains("<em>draft</em>"));

    // Refusals: an unknown format or version, another tenant's document, a bad id.
    let cases = [
        (format!("/v1/documents/{id}/export?format=docx"), &viewer, StatusCode::UNPROCESSABLE_ENTITY),
        (format!("/v1/documents/{id}/export"), &viewer, StatusCode::UNPROCESSABLE_ENTITY),
        (format!("/v1/documents/{id}/export?format=pdf&version=9"), &viewer, StatusCode::NOT_FOUND),
        (format!("/v1/documents/{id}/export?format=pdf"), &other, StatusCode::NOT_FOUND),
        (format!("/v1/artifacts/{sha}"), &other, StatusCode::NOT_FOUND),
        ("/v1/documents/doc_nope/export?format=pdf".to_owned(), &viewer, StatusCode::NOT_FOUND),
        (format!("/v1/documents/{id}/export?format=pdf"), &platform, StatusCode::FORBIDDEN),
    ];
    for (path, token, expected) in cases {
        let (status, _, body) = get_bytes(&host, &path, token).await;
        assert_eq!(status, expected, "{path}: {}", String::from_utf8_lossy(&body));
    }
}
