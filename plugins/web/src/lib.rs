//! `web`: fetch a page over `wasi:http` and return it as readable text or markdown.
//!
//! The plugin follows no redirects itself and holds no secrets: the host applies the
//! caller's network policy (a refused destination is `HTTP-request-denied`), handles
//! redirects and timeouts, and injects credentials.

mod html;

use std::time::Duration;

use maestro_sdk::http::{self, HttpError};
use maestro_sdk::{Structured, ToolError, export_plugin, tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::html::Flavor;

const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
const MAX_BYTES: usize = 8 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

/// How to render HTML: `text` (plain readable text) or `markdown` (headings, links,
/// lists, emphasis and code kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    Text,
    #[default]
    Markdown,
}

/// Arguments of `fetch`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FetchArgs {
    /// An absolute `http` or `https` URL.
    url: String,
    /// How to render HTML pages (default `markdown`); other text passes through.
    #[serde(default)]
    format: Format,
    /// Most bytes of the response to read (default 1 MiB, at most 8 MiB).
    #[serde(default)]
    max_bytes: Option<usize>,
}

/// Result of `fetch`.
#[derive(Debug, Serialize, JsonSchema)]
struct Fetched {
    /// The URL fetched.
    url: String,
    /// The HTTP status.
    status: u16,
    /// The response's media type, if given.
    content_type: Option<String>,
    /// The page title (HTML only).
    title: Option<String>,
    /// The readable content.
    content: String,
    /// Whether the response was cut at `max_bytes`.
    truncated: bool,
}

/// What the body is, from the content type (or a look at the body when there is none).
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Html,
    Text,
    Binary,
}

fn kind(content_type: Option<&str>, body: &[u8]) -> Kind {
    let Some(ct) = content_type else {
        let head = String::from_utf8_lossy(&body[..body.len().min(512)]).to_ascii_lowercase();
        return if head.contains("<html") || head.contains("<!doctype html") {
            Kind::Html
        } else if std::str::from_utf8(body).is_ok() {
            Kind::Text
        } else {
            Kind::Binary
        };
    };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "text/html" | "application/xhtml+xml" => Kind::Html,
        e if e.starts_with("text/")
            || e.ends_with("+json")
            || e.ends_with("+xml")
            || matches!(e, "application/json" | "application/xml" | "application/javascript") =>
        {
            Kind::Text
        }
        _ => Kind::Binary,
    }
}

fn describe(url: &str, error: &HttpError) -> ToolError {
    match error {
        e if e.is_denied() => {
            ToolError::failed(format!("fetching {url} was denied by the network policy (HTTP-request-denied)"))
        }
        e if e.is_timeout() => ToolError::failed(format!("fetching {url} timed out ({e})")),
        HttpError::InvalidUrl { .. } => ToolError::invalid(error),
        e => ToolError::failed(format!("fetching {url} failed: {e}")),
    }
}

fn fetch(args: FetchArgs) -> Result<(String, Structured<Fetched>), ToolError> {
    let max_bytes = args.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if max_bytes == 0 || max_bytes > MAX_BYTES {
        return Err(ToolError::invalid(format!("max_bytes must be 1..={MAX_BYTES}")));
    }
    let response = http::get(&args.url)
        .header("accept", "text/html, text/markdown, text/plain;q=0.9, */*;q=0.5")
        .header("user-agent", concat!("maestro-web/", env!("CARGO_PKG_VERSION")))
        .max_response_bytes(max_bytes)
        .timeout(TIMEOUT)
        .send()
        .map_err(|e| describe(&args.url, &e))?;
    let status = response.status;
    if (300..400).contains(&status) {
        let location = response.header("location").unwrap_or("nowhere");
        return Err(ToolError::failed(format!(
            "{} answered with a redirect (HTTP {status}) to {location}, which the host did not follow",
            args.url
        )));
    }
    if !response.is_success() {
        return Err(ToolError::failed(format!("{} answered HTTP {status}", args.url)));
    }
    let content_type = response.header("content-type").map(str::to_owned);
    let (title, content) = match kind(content_type.as_deref(), &response.body) {
        Kind::Html => {
            let flavor = match args.format {
                Format::Text => Flavor::Text,
                Format::Markdown => Flavor::Markdown,
            };
            let page = html::convert(&response.text(), flavor, &args.url);
            (page.title, page.content)
        }
        Kind::Text => (None, response.text()),
        Kind::Binary => {
            return Err(ToolError::failed(format!(
                "{} is not text (content type {}); only HTML and text can be fetched",
                args.url,
                content_type.as_deref().unwrap_or("unknown")
            )));
        }
    };
    let mut text = match (&title, args.format) {
        (Some(t), Format::Markdown) => format!("# {t}\n\n{content}"),
        (Some(t), Format::Text) => format!("{t}\n\n{content}"),
        (None, _) => content.clone(),
    };
    if response.truncated {
        text.push_str(&format!("\n\n[truncated at {max_bytes} bytes]"));
    }
    Ok((
        text,
        Structured(Fetched { url: args.url, status, content_type, title, content, truncated: response.truncated }),
    ))
}

export_plugin! {
    tools: [
        tool(
            "fetch",
            "Fetches a web page (http/https) and returns its title and readable content as markdown or \
             plain text; other text (JSON, plain text) is returned as is",
            fetch,
        )
        .title("Fetch a web page")
        .read_only()
        .open_world(),
    ],
}

#[cfg(test)]
mod tests {
    use maestro_sdk::ToolOutput;
    use maestro_sdk::http::Response;
    use maestro_sdk::testing::FakeHost;
    use serde_json::{Value, json};

    use super::*;

    fn call(args: Value) -> Result<ToolOutput, ToolError> {
        maestro_plugin().call("fetch", &args.to_string())
    }

    fn serve(host: &FakeHost, status: u16, content_type: &'static str, body: &'static str) {
        host.on_http(move |request| {
            assert_eq!(request.method(), http::Method::Get);
            Ok(Response::new(status, body).with_header("content-type", content_type))
        });
    }

    #[test]
    fn is_marked_read_only_and_open_world() {
        let spec = &maestro_plugin().tool_specs()[0];
        assert!(spec.annotations.read_only && spec.annotations.open_world);
        assert_eq!(spec.input_schema["properties"]["format"]["enum"], json!(["text", "markdown"]));
    }

    #[test]
    fn converts_html_to_markdown_with_title() {
        let host = FakeHost::install();
        serve(
            &host,
            200,
            "text/html; charset=utf-8",
            "<html><head><title>Hi</title></head><body><h2>Sub</h2><p>Read <a href='/x'>this</a></p></body></html>",
        );
        let out = call(json!({"url": "https://example.com/page"})).expect("fetched");
        assert_eq!(out.text_content(), "# Hi\n\n## Sub\n\nRead [this](https://example.com/x)");
        let s = out.structured.expect("structured");
        assert_eq!(s["title"], "Hi");
        assert_eq!(s["status"], 200);
        assert_eq!(host.requests()[0].url(), "https://example.com/page");
    }

    #[test]
    fn plain_text_format_and_pass_through() {
        let host = FakeHost::install();
        serve(&host, 200, "text/html", "<p>a <b>b</b></p>");
        let out = call(json!({"url": "https://example.com/", "format": "text"})).expect("fetched");
        assert_eq!(out.text_content(), "a b");
        serve(&host, 200, "application/json", "{\"a\": \"<b>\"}");
        let out = call(json!({"url": "https://example.com/data"})).expect("fetched");
        assert_eq!(out.text_content(), "{\"a\": \"<b>\"}");
    }

    #[test]
    fn truncates_at_max_bytes() {
        let host = FakeHost::install();
        serve(&host, 200, "text/plain", "0123456789");
        let out = call(json!({"url": "https://example.com/", "max_bytes": 4})).expect("fetched");
        assert_eq!(out.text_content(), "0123\n\n[truncated at 4 bytes]");
        assert_eq!(out.structured.expect("structured")["truncated"], true);
    }

    #[test]
    fn surfaces_denials_timeouts_and_bad_statuses() {
        let host = FakeHost::install();
        let err = call(json!({"url": "http://10.0.0.1/"})).expect_err("denied");
        assert!(err.to_string().contains("denied by the network policy (HTTP-request-denied)"), "{err}");
        host.on_http(|_| Err(HttpError::transport("connection-timeout")));
        let err = call(json!({"url": "https://slow.test/"})).expect_err("timeout");
        assert!(err.to_string().contains("timed out"), "{err}");
        serve(&host, 404, "text/html", "nope");
        let err = call(json!({"url": "https://example.com/missing"})).expect_err("404");
        assert_eq!(err, ToolError::Failed("https://example.com/missing answered HTTP 404".into()));
        host.on_http(|_| Ok(Response::new(302, "").with_header("location", "https://elsewhere.test/")));
        let err = call(json!({"url": "https://example.com/old"})).expect_err("redirect");
        assert!(err.to_string().contains("redirect (HTTP 302) to https://elsewhere.test/"), "{err}");
        serve(&host, 200, "image/png", "\u{1}PNG");
        let err = call(json!({"url": "https://example.com/p.png"})).expect_err("binary");
        assert!(err.to_string().contains("not text"), "{err}");
    }

    #[test]
    fn rejects_bad_urls_and_limits_as_invalid_arguments() {
        FakeHost::install();
        assert!(matches!(call(json!({"url": "ftp://x/"})), Err(ToolError::InvalidArguments(_))));
        assert!(matches!(call(json!({"url": "https://x/", "max_bytes": 0})), Err(ToolError::InvalidArguments(_))));
        assert!(matches!(call(json!({"url": "https://x/", "format": "pdf"})), Err(ToolError::InvalidArguments(_))));
    }

    #[test]
    fn sniffs_html_without_a_content_type() {
        assert_eq!(kind(None, b"<!DOCTYPE html><html>"), Kind::Html);
        assert_eq!(kind(None, b"plain"), Kind::Text);
        assert_eq!(kind(None, &[0xff, 0xfe, 0x00]), Kind::Binary);
        assert_eq!(kind(Some("application/ld+json"), b""), Kind::Text);
    }
}
