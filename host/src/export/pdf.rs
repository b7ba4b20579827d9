//! Markdown → PDF, typeset by typst used as a library.
//!
//! The Markdown is turned into typst markup in which the document contributes nothing
//! but string literals: every run of text becomes `#"…";` (with `\` and `"` escaped),
//! code becomes `#raw("…")`, link targets `#link("…")`, and structure is built from
//! function calls (`#heading`, `#list`, `#enum`, `#table`, `#quote`, `#strong`, …). A
//! document therefore cannot run typst code, read files or change the layout. The
//! [`World`] we give typst has one source file and the fonts compiled into the binary
//! (Libertinus Serif for text, DejaVu Sans Mono for code); it can read no other file, and
//! "today" is the version's time.

use std::sync::OnceLock;

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use pulldown_cmark::{Alignment, CodeBlockKind, Event, HeadingLevel, Parser, Tag, TagEnd};
use typst::diag::{FileError, FileResult};
use typst::foundations::{Bytes, Datetime, Smart};
use typst::syntax::{FileId, Source};
use typst::text::{Font, FontBook};
use typst::utils::LazyHash;
use typst::{Library, LibraryExt as _, World};

use super::ExportError;

/// The fonts and standard library, loaded once per process.
struct Assets {
    library: LazyHash<Library>,
    book: LazyHash<FontBook>,
    fonts: Vec<Font>,
}

fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let fonts: Vec<Font> = typst_assets::fonts().flat_map(|data| Font::iter(Bytes::new(data))).collect();
        Assets { library: LazyHash::new(Library::default()), book: LazyHash::new(FontBook::from_fonts(&fonts)), fonts }
    })
}

/// One document's world: its source, the shared fonts, its time.
struct Page {
    source: Source,
    today: Datetime,
}

impl World for Page {
    fn library(&self) -> &LazyHash<Library> {
        &assets().library
    }

    fn book(&self) -> &LazyHash<FontBook> {
        &assets().book
    }

    fn main(&self) -> FileId {
        self.source.id()
    }

    fn source(&self, id: FileId) -> FileResult<Source> {
        if id == self.source.id() { Ok(self.source.clone()) } else { Err(FileError::AccessDenied) }
    }

    fn file(&self, _id: FileId) -> FileResult<Bytes> {
        Err(FileError::AccessDenied)
    }

    fn font(&self, index: usize) -> Option<Font> {
        assets().fonts.get(index).cloned()
    }

    fn today(&self, _offset: Option<typst::foundations::Duration>) -> Option<Datetime> {
        Some(self.today)
    }
}

fn datetime(at: DateTime<Utc>) -> Option<Datetime> {
    Datetime::from_ymd_hms(
        at.year(),
        u8::try_from(at.month()).ok()?,
        u8::try_from(at.day()).ok()?,
        u8::try_from(at.hour()).ok()?,
        u8::try_from(at.minute()).ok()?,
        u8::try_from(at.second()).ok()?,
    )
}

/// Typesets `markdown` (already under its title heading) as a PDF titled `title`,
/// created at `created_at`.
pub(super) fn typeset(title: &str, markdown: &str, created_at: DateTime<Utc>) -> Result<Vec<u8>, ExportError> {
    let today =
        datetime(created_at).ok_or_else(|| ExportError::Typeset("the version's time is out of range".into()))?;
    let page = Page { source: Source::detached(markup(title, markdown)), today };
    let messages = |errors: &[typst::diag::SourceDiagnostic]| {
        ExportError::Typeset(errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; "))
    };
    let pdf = typst::compile(&page).output.map_err(|errors| messages(&errors)).and_then(|document| {
        let options = typst_pdf::PdfOptions {
            ident: Smart::Auto,
            creator: Smart::Custom(Some("Maestro".to_owned())),
            timestamp: Some(typst_pdf::Timestamp::new_utc(today)),
            ..typst_pdf::PdfOptions::default()
        };
        typst_pdf::pdf(&document, &options).map_err(|errors| messages(&errors))
    });
    // typst memoises layout in a process-wide cache; in a long-running server, entries
    // unused by the last few renders are dropped so memory stays bounded.
    typst::comemo::evict(EVICT_AFTER);
    pdf
}

/// Renders after which an unused memoised result is evicted.
const EVICT_AFTER: usize = 8;

/// A typst string literal holding `text`.
fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The preamble: page, fonts, styles, and the title (document metadata and the first
/// thing on page 1).
fn preamble(title: &str) -> String {
    let title = string(title.trim());
    format!(
        "#set document(title: {title}, author: \"Maestro\")\n\
         #set page(paper: \"a4\", margin: (x: 2.2cm, y: 2.4cm), numbering: \"1\")\n\
         #set text(font: \"Libertinus Serif\", size: 11pt, lang: \"en\", hyphenate: false, fallback: true)\n\
         #set par(justify: true)\n\
         #set heading(numbering: none)\n\
         #show raw: set text(font: \"DejaVu Sans Mono\", size: 9pt)\n\
         #show raw.where(block: true): block.with(fill: luma(245), inset: 8pt, radius: 3pt, width: 100%)\n\
         #show link: underline\n\
         #set table(stroke: 0.5pt + luma(170), inset: 6pt)\n\
         #show quote.where(block: true): block.with(stroke: (left: 2pt + luma(190)), inset: (left: 10pt, y: 4pt))\n\
         #align(center, text(size: 20pt, weight: \"bold\", {title}))\n\
         #v(0.8em)\n"
    )
}

/// The whole typst source for the document. A leading level-1 heading whose text is
/// the title is left out (the title is already on top).
pub(super) fn markup(title: &str, markdown: &str) -> String {
    let mut out = preamble(title);
    let mut events: Vec<Event<'_>> = Parser::new_ext(markdown, super::parser_options()).collect();
    if let Some(end) = leading_title(&events, title) {
        events.drain(..=end);
    }
    let mut converter = Converter::default();
    for event in events {
        converter.event(event, &mut out);
    }
    out
}

/// The index of the end of a leading `# heading` whose text equals `title`, if any.
fn leading_title(events: &[Event<'_>], title: &str) -> Option<usize> {
    if !matches!(events.first(), Some(Event::Start(Tag::Heading { level: HeadingLevel::H1, .. }))) {
        return None;
    }
    let end = events.iter().position(|e| matches!(e, Event::End(TagEnd::Heading(_))))?;
    let text: String = events[1..end]
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) | Event::Code(t) => Some(t.as_ref()),
            Event::SoftBreak => Some(" "),
            _ => None,
        })
        .collect();
    (text.trim() == title.trim()).then_some(end)
}

/// Turns events into markup; remembers what it must close.
#[derive(Default)]
struct Converter {
    /// For each open link or image: whether it became a `#link` (else its end writes
    /// nothing).
    links: Vec<bool>,
    /// Text of the code block being read, and its language.
    code: Option<(String, String)>,
    /// The open lists: whether each has had an item.
    lists: Vec<bool>,
    /// Inside a table's header row (its cells are set in bold).
    in_table_head: bool,
}

impl Converter {
    fn event(&mut self, event: Event<'_>, out: &mut String) {
        if let Some((text, _)) = &mut self.code {
            match event {
                Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => {
                    text.push_str(&t);
                    return;
                }
                Event::End(TagEnd::CodeBlock | TagEnd::HtmlBlock) => {
                    let (text, lang) = self.code.take().unwrap_or_default();
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let lang = if lang.is_empty() { "none".to_owned() } else { string(&lang) };
                    out.push_str(&format!("#raw(block: true, lang: {lang}, {});\n\n", string(text)));
                    return;
                }
                _ => return,
            }
        }
        match event {
            Event::Start(tag) => self.start(tag, out),
            Event::End(tag) => self.end(tag, out),
            Event::Text(text) | Event::Html(text) | Event::InlineHtml(text) => {
                out.push('#');
                out.push_str(&string(&text));
                out.push(';');
            }
            Event::Code(text) => out.push_str(&format!("#raw({});", string(&text))),
            Event::InlineMath(text) | Event::DisplayMath(text) => out.push_str(&format!("#raw({});", string(&text))),
            Event::FootnoteReference(name) => out.push_str(&format!("#super({});", string(&name))),
            Event::SoftBreak => out.push(' '),
            Event::HardBreak => out.push_str("#linebreak();"),
            Event::Rule => out.push_str("#line(length: 100%, stroke: 0.5pt + luma(170));\n\n"),
            Event::TaskListMarker(done) => out.push_str(if done { "#\"[x] \";" } else { "#\"[ ] \";" }),
        }
    }

    fn item_separator(&mut self, out: &mut String) {
        if let Some(has_items) = self.lists.last_mut() {
            if *has_items {
                out.push_str(", ");
            }
            *has_items = true;
        }
    }

    fn start(&mut self, tag: Tag<'_>, out: &mut String) {
        match tag {
            Tag::Paragraph => {}
            Tag::Heading { level, .. } => {
                let level = match level {
                    HeadingLevel::H1 => 1,
                    HeadingLevel::H2 => 2,
                    HeadingLevel::H3 => 3,
                    HeadingLevel::H4 => 4,
                    HeadingLevel::H5 => 5,
                    HeadingLevel::H6 => 6,
                };
                out.push_str(&format!("#heading(level: {level})["));
            }
            Tag::BlockQuote(_) => out.push_str("#quote(block: true)["),
            Tag::CodeBlock(kind) => {
                let lang = match kind {
                    CodeBlockKind::Fenced(info) => info.split_whitespace().next().unwrap_or_default().to_owned(),
                    CodeBlockKind::Indented => String::new(),
                };
                self.code = Some((String::new(), lang));
            }
            Tag::HtmlBlock => self.code = Some((String::new(), "html".to_owned())),
            Tag::List(None) => {
                out.push_str("#list(");
                self.lists.push(false);
            }
            Tag::List(Some(start)) => {
                out.push_str(&format!("#enum(start: {start}, "));
                self.lists.push(false);
            }
            Tag::Item => {
                self.item_separator(out);
                // An item is a content block argument of its list's call.
                out.push('[');
            }
            Tag::Table(alignments) => {
                let align: Vec<&str> = alignments
                    .iter()
                    .map(|a| match a {
                        Alignment::None | Alignment::Left => "left",
                        Alignment::Center => "center",
                        Alignment::Right => "right",
                    })
                    .collect();
                out.push_str(&format!(
                    "#table(columns: {}, align: ({},), ",
                    alignments.len().max(1),
                    if align.is_empty() { "left".to_owned() } else { align.join(", ") }
                ));
            }
            Tag::TableHead => {
                self.in_table_head = true;
                out.push_str("table.header(");
            }
            Tag::TableRow => {}
            Tag::TableCell => out.push_str(if self.in_table_head { "[#strong[" } else { "[" }),
            Tag::Emphasis => out.push_str("#emph["),
            Tag::Strong => out.push_str("#strong["),
            Tag::Strikethrough => out.push_str("#strike["),
            Tag::Superscript => out.push_str("#super["),
            Tag::Subscript => out.push_str("#sub["),
            Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                let keep = super::allowed_link(&dest_url);
                self.links.push(keep);
                if keep {
                    out.push_str(&format!("#link({})[", string(&dest_url)));
                }
            }
            Tag::FootnoteDefinition(name) => out.push_str(&format!("#block[#super({});", string(&name))),
            Tag::DefinitionList | Tag::DefinitionListTitle | Tag::DefinitionListDefinition => {}
            Tag::MetadataBlock(_) => {}
        }
    }

    fn end(&mut self, tag: TagEnd, out: &mut String) {
        match tag {
            TagEnd::Paragraph => out.push_str("\n\n"),
            TagEnd::Heading(_) => out.push_str("];\n\n"),
            TagEnd::BlockQuote(_) => out.push_str("];\n\n"),
            TagEnd::CodeBlock | TagEnd::HtmlBlock => {}
            TagEnd::List(_) => {
                self.lists.pop();
                out.push_str(");\n\n");
            }
            TagEnd::Item => out.push(']'),
            TagEnd::Table => out.push_str(");\n\n"),
            TagEnd::TableHead => {
                self.in_table_head = false;
                out.push_str("), ");
            }
            TagEnd::TableRow => {}
            TagEnd::TableCell => out.push_str(if self.in_table_head { "]], " } else { "], " }),
            TagEnd::Emphasis | TagEnd::Strong | TagEnd::Strikethrough | TagEnd::Superscript | TagEnd::Subscript => {
                out.push_str("];");
            }
            TagEnd::Link | TagEnd::Image => {
                if self.links.pop().unwrap_or(false) {
                    out.push_str("];");
                }
            }
            TagEnd::FootnoteDefinition => out.push_str("];\n\n"),
            TagEnd::DefinitionList | TagEnd::DefinitionListTitle | TagEnd::DefinitionListDefinition => {
                out.push_str("\n\n");
            }
            TagEnd::MetadataBlock(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_text_reaches_typst_only_as_string_literals() {
        let source = markup(
            "T\"itle\\",
            "Hi #set page(width: 1pt) $x$ @ref <label> `#code` *a* _b_ [l](javascript:x) [m](https://e.x/\")\n",
        );
        let body = &source[source.find("#v(0.8em)\n").expect("preamble end")..];
        assert!(body.contains(r##"#"Hi #set page(width: 1pt) $x$ @ref ";"##), "{body}");
        assert!(body.contains(r##"#"<label>";"##), "{body}");
        assert!(body.contains(r##"#raw("#code");"##), "{body}");
        assert!(body.contains(r##"#link("https://e.x/\"")["##), "{body}");
        assert!(!body.contains("javascript"), "{body}");
        assert!(source.contains(r#"title: "T\"itle\\""#), "{source}");
    }

    #[test]
    fn a_leading_title_heading_is_not_repeated() {
        let source = markup("Plan", "# Plan\n\nBody\n");
        assert!(!source.contains("#heading(level: 1)"), "{source}");
        let source = markup("Plan", "# Other\n\nBody\n");
        assert!(source.contains("#heading(level: 1)[#\"Other\";]"), "{source}");
    }
}
