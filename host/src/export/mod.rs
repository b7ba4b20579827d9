//! Document exports: one version of a document rendered to Markdown, a standalone HTML
//! page or a typeset PDF (the only module that uses pulldown-cmark and typst).
//!
//! Documents are written by models, so nothing in them is trusted: HTML in the Markdown
//! is shown as text, never passed through; links keep only `http`, `https` and `mailto`
//! targets (others become plain text); images become links (nothing is fetched). The PDF
//! is typeset by [typst](https://typst.app) used as a library: the Markdown becomes typst
//! markup in which every piece of text is a string literal (`#"…";`), so no character of
//! a document can reach typst's syntax; fonts are compiled into the binary
//! (`typst-assets`), nothing is read from the system or the network, and the creation
//! date is the version's time, so the same version always gives the same bytes.
//!
//! JSON documents export as Markdown holding one fenced `json` block (pretty-printed),
//! and from there to HTML and PDF like any Markdown.

mod html;
mod markdown;
mod pdf;

use chrono::{DateTime, Utc};
use maestro_core::artifact::ExportFormat;

/// What a document is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Markdown (CommonMark with tables, strikethrough and task lists).
    Markdown,
    /// A JSON value.
    Json,
}

/// One version of a document, as the renderers need it.
#[derive(Debug, Clone)]
pub struct ExportSource {
    /// The document's title.
    pub title: String,
    /// What the content is written in.
    pub kind: SourceKind,
    /// The version's content.
    pub content: String,
    /// The version's time: the PDF's creation date.
    pub created_at: DateTime<Utc>,
}

/// A rendering that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The PDF typesetter refused the generated markup (a bug of ours, never the
    /// document's: all its text is escaped).
    #[error("typesetting failed: {0}")]
    Typeset(String),
}

/// Renders `source` in `format`. CPU-bound (a PDF takes tens of milliseconds): call it
/// from a blocking task.
pub fn render(source: &ExportSource, format: ExportFormat) -> Result<Vec<u8>, ExportError> {
    let markdown = markdown::normalise(source);
    match format {
        ExportFormat::Markdown => Ok(markdown.into_bytes()),
        ExportFormat::Html => Ok(html::page(&source.title, &markdown).into_bytes()),
        ExportFormat::Pdf => pdf::typeset(&source.title, &markdown, source.created_at),
    }
}

/// A safe file name for a download of `title` in `format`: letters, digits, `-`, `_`
/// and `.` kept (other characters folded to `-`), at most 80 characters, never empty
/// nor hidden.
pub fn file_name(title: &str, format: ExportFormat) -> String {
    let mut stem = String::new();
    for c in title.chars() {
        let keep = c.is_ascii_alphanumeric() || matches!(c, '_' | '.');
        if keep {
            stem.push(c);
        } else if !stem.ends_with('-') {
            stem.push('-');
        }
        if stem.len() >= 80 {
            break;
        }
    }
    let stem = stem.trim_matches(['-', '.']);
    let stem = if stem.is_empty() { "document" } else { stem };
    format!("{stem}.{}", format.extension())
}

/// Whether a link target may stay a link: `http`, `https` and `mailto` only (compared
/// case-insensitively, after the whitespace and control characters browsers ignore).
pub(crate) fn allowed_link(url: &str) -> bool {
    let cleaned: String = url.chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect();
    let lower = cleaned.to_ascii_lowercase();
    ["http://", "https://", "mailto:"].iter().any(|scheme| lower.starts_with(scheme) && lower.len() > scheme.len())
}

/// The CommonMark extensions every format reads.
pub(crate) fn parser_options() -> pulldown_cmark::Options {
    use pulldown_cmark::Options;
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name("Quarterly plan: Q3/Q4", ExportFormat::Pdf), "Quarterly-plan-Q3-Q4.pdf");
        assert_eq!(file_name("../../etc/passwd", ExportFormat::Markdown), "etc-passwd.md");
        assert_eq!(file_name("\"; filename=evil.exe", ExportFormat::Html), "filename-evil.exe.html");
        assert_eq!(file_name("", ExportFormat::Pdf), "document.pdf");
        assert_eq!(file_name("Ünïcödé ✓", ExportFormat::Pdf), "n-c-d.pdf");
        assert_eq!(file_name(".hidden", ExportFormat::Pdf), "hidden.pdf");
        assert!(file_name(&"a".repeat(500), ExportFormat::Pdf).len() <= 84);
    }

    #[test]
    fn only_web_and_mail_links_are_allowed() {
        assert!(allowed_link("https://example.com/x"));
        assert!(allowed_link("HTTP://example.com"));
        assert!(allowed_link("mailto:a@example.com"));
        for bad in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            " javascript:alert(1)",
            "java\tscript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:x",
            "file:///etc/passwd",
            "/relative",
            "#fragment",
            "https://",
        ] {
            assert!(!allowed_link(bad), "{bad}");
        }
    }
}
