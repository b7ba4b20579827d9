//! The Markdown every format starts from: a Markdown document as stored, under its
//! title as a `# heading` when it does not open with one; a JSON document as one fenced
//! block under its title.

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag};

use super::{ExportSource, SourceKind};

/// The document as Markdown.
pub(super) fn normalise(source: &ExportSource) -> String {
    match source.kind {
        SourceKind::Markdown if opens_with_title(&source.content) => source.content.clone(),
        SourceKind::Markdown => format!("# {}\n\n{}", escape_inline(&source.title), source.content),
        SourceKind::Json => {
            let pretty = serde_json::from_str::<serde_json::Value>(&source.content)
                .ok()
                .and_then(|value| serde_json::to_string_pretty(&value).ok())
                .unwrap_or_else(|| source.content.clone());
            let fence = "`".repeat(longest_backtick_run(&pretty).max(2) + 1);
            format!("# {}\n\n{fence}json\n{pretty}\n{fence}\n", escape_inline(&source.title))
        }
    }
}

/// Whether the Markdown's first block is a level-1 heading.
pub(super) fn opens_with_title(markdown: &str) -> bool {
    matches!(
        Parser::new_ext(markdown, super::parser_options()).next(),
        Some(Event::Start(Tag::Heading { level: HeadingLevel::H1, .. }))
    )
}

/// `text` as one line of Markdown that reads literally: line breaks folded to spaces,
/// the punctuation that could start inline markup (emphasis, code, links, HTML,
/// entities, tables) backslash-escaped.
pub(super) fn escape_inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' | '\n' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '!' | '|' | '~' | '&' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    let trimmed = out.trim();
    if trimmed.is_empty() { "Untitled".to_owned() } else { trimmed.to_owned() }
}

fn longest_backtick_run(text: &str) -> usize {
    let (mut longest, mut run) = (0, 0);
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn source(kind: SourceKind, title: &str, content: &str) -> ExportSource {
        ExportSource { title: title.into(), kind, content: content.into(), created_at: Utc::now() }
    }

    #[test]
    fn adds_the_title_only_when_the_document_has_none() {
        assert_eq!(normalise(&source(SourceKind::Markdown, "Plan", "# Plan\n\nText")), "# Plan\n\nText");
        assert_eq!(normalise(&source(SourceKind::Markdown, "Plan", "Text")), "# Plan\n\nText");
        assert_eq!(normalise(&source(SourceKind::Markdown, "Plan", "## Part\n")), "# Plan\n\n## Part\n");
        assert_eq!(normalise(&source(SourceKind::Markdown, "A *b*\n# c", "x")), "# A \\*b\\* \\# c\n\nx");
    }

    #[test]
    fn json_becomes_a_fence_longer_than_any_backticks_inside() {
        let md = normalise(&source(SourceKind::Json, "Data", r#"{"a":"```x````"}"#));
        assert!(md.starts_with("# Data\n\n`````json\n{\n  \"a\": \"```x````\"\n}\n`````\n"), "{md}");
        let md = normalise(&source(SourceKind::Json, "Data", "[1]"));
        assert_eq!(md, "# Data\n\n```json\n[\n  1\n]\n```\n");
    }
}
